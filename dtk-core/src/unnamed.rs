//! Files made without a name (`O_TMPFILE`) and named once complete; work left for
//! later, off the thread that waits ([`later`]); and work done beside it, on threads kept
//! for that ([`beside`]).
//!
//! A record, a pack or a lock must never be seen half-written, so each is written first
//! and named after. The usual way is a temporary name renamed into place; a file without
//! a name gets its name by `link(2)` instead, which fails when the name exists (so it
//! doubles as an exclusive create of a complete file), leaves nothing behind when the
//! process is killed, and can be made ahead of need ([`Spares`]). That matters where
//! making a file is slow: ext4 without a journal looks past every inode freed in the last
//! half-minute for each new one, and a busy store frees a few with each commit.
//!
//! Linux only: elsewhere (and on filesystems without unnamed files, or without `/proc`
//! to name them through) [`unnamed`] fails with `Unsupported` and callers use temporary
//! names.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Files of a directory made ahead of need, without names: a commit then takes no time
/// to make its pack's two files and its branch's lock. Kept by the store, filled by
/// [`later`] after each commit.
#[derive(Debug)]
pub(crate) struct Spares {
    dir: PathBuf,
    keep: usize,
    /// The mode of the files (less the umask).
    mode: u32,
    files: std::sync::Mutex<Vec<std::fs::File>>,
}

impl Spares {
    /// Keep `keep` files made ahead in `dir`, whose mode will be `mode` less the umask.
    pub(crate) fn new(dir: PathBuf, keep: usize, mode: u32) -> Spares {
        Spares {
            dir,
            keep,
            mode,
            files: Default::default(),
        }
    }

    /// Make files until there are as many as kept. Nothing when the filesystem has no
    /// unnamed files (they are then made when needed, the usual way).
    pub(crate) fn fill(&self) {
        let missing = self.keep.saturating_sub(self.lock().len());
        for _ in 0..missing {
            match unnamed(&self.dir, self.mode) {
                Ok(f) => self.lock().push(f),
                Err(_) => return,
            }
        }
    }

    /// A file made ahead, or a new one (without a name if the filesystem allows).
    pub(crate) fn take(&self) -> std::io::Result<std::fs::File> {
        match self.lock().pop() {
            Some(f) => Ok(f),
            None => unnamed(&self.dir, self.mode),
        }
    }

    /// How many are made ahead now.
    #[cfg(test)]
    pub(crate) fn ready(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<std::fs::File>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether files without a name can be made and named here: cleared the first time one
/// cannot (a filesystem without `O_TMPFILE`, no `/proc` to name one through).
static WORKS: AtomicBool = AtomicBool::new(cfg!(target_os = "linux"));

/// Whether files without names still work here (see [`unnamed`]).
pub(crate) fn works() -> bool {
    WORKS.load(Ordering::Relaxed)
}

/// Turn files without names off (or back on) for this process, as if the filesystem had
/// none: the tests of the paths taken then.
#[cfg(test)]
pub(crate) fn set_works(on: bool) {
    WORKS.store(on && cfg!(target_os = "linux"), Ordering::Relaxed);
}

/// A new file in `dir` without a name, open for writing, whose mode will be `mode` less
/// the umask; `Unsupported` where there are none.
pub(crate) fn unnamed(dir: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    if !works() {
        return Err(std::io::ErrorKind::Unsupported.into());
    }
    open_unnamed(dir, mode)
}

#[cfg(target_os = "linux")]
fn open_unnamed(dir: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    match rustix::fs::open(
        dir,
        OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    ) {
        Ok(fd) => Ok(std::fs::File::from(fd)),
        Err(e) => {
            if e != rustix::io::Errno::NOENT {
                WORKS.store(false, Ordering::Relaxed);
            }
            Err(e.into())
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn open_unnamed(_dir: &Path, _mode: u32) -> std::io::Result<std::fs::File> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Give the unnamed file `f` the name `path`, which must not exist (`AlreadyExists`
/// otherwise: exactly one process gets a name, as with `O_EXCL`).
pub(crate) fn name(f: &std::fs::File, path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let proc = format!("/proc/self/fd/{}", f.as_raw_fd());
    match rustix::fs::linkat(
        rustix::fs::CWD,
        proc.as_str(),
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    ) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => Err(std::io::ErrorKind::AlreadyExists.into()),
        Err(e) => {
            // Unless the directory is missing, naming does not work here (no `/proc`).
            let no_dir =
                e == rustix::io::Errno::NOENT && path.parent().is_some_and(|d| !d.exists());
            if !no_dir {
                WORKS.store(false, Ordering::Relaxed);
            }
            Err(e.into())
        }
    }
}

/// Run `job` on this process's thread for work nobody waits for (closing files whose
/// freeing takes time, making [`Spares`]), in order; on the calling thread when that
/// thread cannot be had. Work still queued when the process exits is dropped: it must
/// be such that nothing is lost without it.
pub(crate) fn later(job: Box<dyn FnOnce() + Send>) {
    type Job = Box<dyn FnOnce() + Send>;
    static QUEUE: std::sync::OnceLock<Option<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("dtk-later".into())
            .spawn(move || {
                // At the lowest priority: this work must not take a core from the
                // process it serves, or from the command it runs next (a Linux thread has
                // its own priority; elsewhere this would lower the whole process).
                #[cfg(target_os = "linux")]
                let _ = rustix::process::setpriority_process(None, 19);
                rx.into_iter().for_each(|job| job())
            })
            .ok()
            .map(|_| tx)
    });
    match queue {
        Some(tx) => {
            if let Err(unsent) = tx.send(job) {
                (unsent.0)();
            }
        }
        None => job(),
    }
}

/// Wait until the work given to [`later`] so far is done.
pub(crate) fn settle() {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    later(Box::new(move || {
        let _ = tx.send(());
    }));
    let _ = rx.recv();
}

/// Work started on another thread, whose result the caller takes with [`Beside::join`].
pub(crate) struct Beside<T>(std::sync::mpsc::Receiver<std::thread::Result<T>>);

impl<T> Beside<T> {
    /// Wait for the work and take its result; `None` if it panicked.
    pub(crate) fn join(self) -> Option<T> {
        self.0.recv().ok().and_then(|r| r.ok())
    }
}

/// Run `job` beside the calling thread, at once, on a thread kept for such work (a few
/// are kept idle between jobs: making one costs more than a short job, such as a flush
/// that the caller wants to overlap with its own). On the calling thread, before
/// returning, when no thread can be had.
pub(crate) fn beside<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Beside<T> {
    type Job = Box<dyn FnOnce() + Send>;
    /// Threads kept idle, by the sending end of their queue.
    static IDLE: std::sync::Mutex<Vec<std::sync::mpsc::Sender<Job>>> =
        std::sync::Mutex::new(Vec::new());
    const KEEP: usize = 4;
    let idle = || IDLE.lock().unwrap_or_else(|e| e.into_inner());
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let mut job: Job = Box::new(move || {
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        let _ = tx.send(done);
    });
    loop {
        let kept = idle().pop();
        let thread = match kept {
            Some(t) => t,
            None => {
                let (to, jobs) = std::sync::mpsc::channel::<Job>();
                let me = to.clone();
                let made = std::thread::Builder::new()
                    .name("dtk-beside".into())
                    .spawn(move || {
                        for job in jobs {
                            job();
                            let mut idle = idle();
                            if idle.len() >= KEEP {
                                return;
                            }
                            idle.push(me.clone());
                        }
                    });
                if made.is_err() {
                    job();
                    break;
                }
                to
            }
        };
        match thread.send(job) {
            Ok(()) => break,
            // (That thread has ended: another.)
            Err(unsent) => job = unsent.0,
        }
    }
    Beside(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file made without a name shows nowhere until it is named, gets its name complete,
    /// and cannot take a name that exists.
    #[test]
    fn an_unnamed_file_appears_complete_and_only_under_a_free_name() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::new(dir.path().to_owned(), 2, 0o644);
        spares.fill();
        if !works() {
            // (A filesystem without unnamed files: nothing more to check here.)
            return;
        }
        assert_eq!(spares.ready(), 2);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let f = spares.take().unwrap();
        std::io::Write::write_all(&mut &f, b"complete\n").unwrap();
        name(&f, &dir.path().join("a")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"complete\n");
        let g = spares.take().unwrap();
        let taken = name(&g, &dir.path().join("a")).unwrap_err();
        assert_eq!(taken.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"complete\n");
        assert_eq!(spares.ready(), 0);
        // Taken past what was made ahead: made now.
        let h = spares.take().unwrap();
        name(&h, &dir.path().join("b")).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    /// Work left for later is done, in order, off the calling thread.
    #[test]
    fn later_work_is_done_in_order_on_another_thread() {
        let (tx, rx) = std::sync::mpsc::channel();
        let me = std::thread::current().id();
        for i in 0..3 {
            let tx = tx.clone();
            later(Box::new(move || {
                tx.send((i, std::thread::current().id() != me)).unwrap();
            }));
        }
        let got: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(got, [(0, true), (1, true), (2, true)]);
    }

    /// `settle` returns once the work queued before it is done.
    #[test]
    fn settle_waits_for_the_work_queued_before_it() {
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&done);
        later(Box::new(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            flag.store(true, Ordering::SeqCst);
        }));
        settle();
        assert!(done.load(Ordering::SeqCst));
    }

    /// Work beside the caller runs on another thread and gives its result back; one that
    /// panics gives none, and the threads kept for such work go on serving.
    #[test]
    fn beside_work_runs_on_another_thread_and_survives_a_panic() {
        let me = std::thread::current().id();
        let two = [
            beside(move || std::thread::current().id() != me),
            beside(|| true),
        ];
        assert_eq!(two.map(|b| b.join()), [Some(true), Some(true)]);
        let panicked = beside(|| -> u32 { panic!("a job that fails") });
        assert_eq!(panicked.join(), None);
        let after: Vec<_> = (0..8u32).map(|i| beside(move || i * 2)).collect();
        let got: Vec<_> = after.into_iter().map(|b| b.join()).collect();
        assert_eq!(got, (0..8).map(|i| Some(i * 2)).collect::<Vec<_>>());
    }
}
