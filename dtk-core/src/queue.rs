//! The run queue: runs waiting for a worker (`pending`), runs being executed (`running`,
//! with a lease) and runs publishing their outputs. It is not part of the shared history:
//! the history records a run once, when it has ended (`success`, `failure`,
//! `interrupted`), so two clones never conflict over claims, and a run costs one commit.
//!
//! [`RunQueue`] is the contract; [`LocalQueue`] keeps it in `.dkt/queue/` for the
//! processes of one machine:
//!
//! - `pending/<run-id>.json`: a pending run (its [`RunRecord`]);
//! - `running/<run-id>.json`: a claimed run; the file's modification time is the lease,
//!   renewed while the run executes;
//! - `publishing/<run-id>.json`: a run whose outputs are being published;
//! - `intents/<run-id>.json`: the publish intent of such a run ([`PublishIntent`]),
//!   written before its first output is published and updated after each one, so that a
//!   process killed between publishing and recording the result leaves enough behind for
//!   the next one to complete the run (or roll it back);
//! - `settling/<run-id>.json`: a run whose (dead) holder's claim was taken over, being
//!   recorded by the process named in it.
//!
//! Every transition is one `rename(2)` (or an exclusive create), so exactly one process
//! wins it: a run is never claimed twice, a dead worker's run is settled by one process,
//! and a run whose claim was taken over (its process stopped past its lease) cannot start
//! publishing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::IoResultExt;
use crate::{Error, Name, Result, RunId, RunRecord, Version, VersionInfo};

/// What a run is about to publish, recorded before its first output is published: the
/// run (as claimed), and for each output the version it had and, once published, the
/// version the kind returned. A run found with an intent and a dead holder is completed
/// from it (every output published: the result is recorded with those versions and their
/// provenance) or rolled back (nothing published: recorded `interrupted`), never left for
/// a poll to record as a version without provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishIntent {
    /// The run, as claimed (status `running`).
    pub run: RunRecord,
    /// The outputs, in publishing order.
    pub outputs: Vec<IntentOutput>,
}

/// One output of a [`PublishIntent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentOutput {
    /// The output source.
    pub source: Name,
    /// Its latest recorded version when publishing began.
    pub before: Option<Version>,
    /// Where the run staged its content.
    pub stage: PathBuf,
    /// What publishing it returned, once it has.
    pub published: Option<VersionInfo>,
}

/// A queue of runs (see the [module docs](self)).
pub trait RunQueue: std::fmt::Debug + Send + Sync {
    /// Add a pending run; `false` if the run is queued or running already.
    fn enqueue(&self, run: &RunRecord) -> Result<bool>;

    /// The pending runs, oldest first.
    fn pending(&self) -> Result<Vec<RunRecord>>;

    /// Claim `run` for execution with its lease starting now: a pending run moves to
    /// running; a run not queued (executed at once) is created running. `false` when
    /// another process has it.
    fn claim(&self, run: &RunRecord) -> Result<bool>;

    /// Renew the lease of a claimed run; `false` when the claim is gone.
    fn renew(&self, run: &RunId) -> Result<bool>;

    /// Fence before publishing: the claim becomes "publishing" if (and only if) it is
    /// still held; `false` when it was taken over.
    fn begin_publish(&self, run: &RunId) -> Result<bool>;

    /// The run has ended and its result is recorded: forget it.
    fn finish(&self, run: &RunId) -> Result<()>;

    /// Forget `run` if it is still pending (never a claimed one); `true` when it was.
    fn cancel(&self, run: &RunId) -> Result<bool>;

    /// The runs claimed (running or publishing), each with the age of its lease.
    fn claimed(&self) -> Result<Vec<(RunRecord, Duration)>>;

    /// Take the claim of `run` away from its (dead) holder, exclusively: `Some` for the one
    /// caller that gets it, who then records it `interrupted` and calls
    /// [`finish`](Self::finish).
    fn take_over(&self, run: &RunId) -> Result<Option<RunRecord>>;

    /// [`take_over`](Self::take_over), only while `run` has not begun publishing (a
    /// holder that may be alive is never cut off in the middle of publishing).
    fn take_over_running(&self, run: &RunId) -> Result<Option<RunRecord>>;

    /// The queued or claimed record of `run`, if any.
    fn get(&self, run: &RunId) -> Result<Option<RunRecord>>;

    /// How long ago the lease of claimed `run` was renewed; `None` when it is not claimed.
    fn lease_age(&self, run: &RunId) -> Result<Option<Duration>>;

    /// Record (or update) the publish intent of its run, atomically; with `durable`, synced
    /// to disk (with its directory) before this returns. The first write, before anything
    /// is published, must be durable; later updates are hints (recovery also finds a
    /// published output by its content), so they need not cost a sync.
    fn write_intent(&self, intent: &PublishIntent, durable: bool) -> Result<()>;

    /// Every publish intent left (runs publishing now, or whose holder died publishing).
    fn intents(&self) -> Result<Vec<PublishIntent>>;

    /// Runs taken over for settling whose settler is gone (dead, or, where that cannot be
    /// checked, silent for longer than `lease`), each taken over again exclusively by this process: `Some` for the one
    /// caller that gets it, who then records it and calls [`finish`](Self::finish).
    fn take_over_settling(&self, lease: Duration) -> Result<Vec<RunRecord>>;

    /// Put back to pending the claims whose claimer died between taking the run and
    /// writing its claim (the entry still holds the pending record), once older than
    /// `lease`: the run never started. Returns how many. (Claims are made complete before
    /// they appear in `running/`; such entries come from earlier releases.)
    fn requeue_unstarted(&self, lease: Duration) -> Result<usize>;

    /// Whether `run` is being settled (taken over from its holder).
    fn settling(&self, run: &RunId) -> Result<bool>;

    /// The runs being settled.
    fn settling_runs(&self) -> Result<Vec<RunId>>;

    /// Adopt the run of a publish intent that has no claim at all (its process died
    /// between taking a claim over and settling it) once the intent is older than
    /// `lease`: `true` for the one caller that gets it, now settling it.
    fn adopt(&self, intent: &PublishIntent, lease: Duration) -> Result<bool>;
}

/// The queue of one machine, in `.dkt/queue/` (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct LocalQueue {
    dir: PathBuf,
    /// Claims of finished runs, kept under `free/` to be written over by the next claims
    /// (see [`LocalQueue::recycle`]).
    recycled: Arc<Recycled>,
}

/// Entry files a [`LocalQueue`] keeps for reuse, by their names in `free/`.
#[derive(Debug, Default)]
struct Recycled {
    names: Mutex<Vec<PathBuf>>,
    /// `free/` was made, and cleared of what dead processes left there.
    ready: std::sync::OnceLock<()>,
}

const PENDING: &str = "pending";
const RUNNING: &str = "running";
const PUBLISHING: &str = "publishing";
const SETTLING: &str = "settling";
const INTENTS: &str = "intents";
/// Claims of finished runs, each named `<pid>-<n>` after the process that keeps it.
const FREE: &str = "free";
/// How many finished claims a queue keeps for reuse.
const RECYCLE: usize = 4;

impl LocalQueue {
    /// The queue kept in `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> LocalQueue {
        LocalQueue {
            dir: dir.into(),
            recycled: Default::default(),
        }
    }

    /// `free/`, made (and cleared of the files of dead processes, and of an earlier
    /// process with this one's ID) on first use.
    fn free_dir(&self) -> PathBuf {
        let dir = self.dir.join(FREE);
        self.recycled.ready.get_or_init(|| {
            let _ = std::fs::create_dir_all(&dir);
            let me = std::process::id();
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name();
                let pid = name
                    .to_str()
                    .and_then(|n| n.split_once('-'))
                    .and_then(|(pid, _)| pid.parse::<i32>().ok());
                if pid.is_none_or(|p| p == me as i32 || process_gone(p)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        });
        dir
    }

    /// Keep the finished claim at `entry` for reuse instead of removing it (`false`
    /// when it is not there or enough are kept): making a file and freeing one cost more
    /// than writing over one on some filesystems (ext4 without a journal looks past every
    /// inode freed in the last half-minute for each new one, and mounted with `discard`
    /// waits for the device to trim each freed block), and a run makes and frees its
    /// claim. An error when it could not be moved (it is not there, say).
    fn recycle(&self, entry: &Path) -> std::io::Result<bool> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut names = self
            .recycled
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if names.len() >= RECYCLE {
            return Ok(false);
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = self.free_dir().join(format!("{}-{n}", std::process::id()));
        std::fs::rename(entry, &name)?;
        names.push(name);
        Ok(true)
    }

    /// Claim `run` at `to` with a kept file (see [`recycle`](Self::recycle)): written
    /// over where nobody reads it, then linked into place, which fails if the name
    /// exists: an exclusive create of a complete file. `None` when none is kept (or it
    /// went: then the usual way).
    fn claim_recycled(&self, to: &Path, run: &RunRecord) -> Option<Result<bool>> {
        let name = self
            .recycled
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()?;
        let bytes = match serde_json::to_vec(run) {
            Ok(b) => b,
            Err(e) => {
                return Some(Err(Error::store(
                    format!("cannot write {}", to.display()),
                    e,
                )))
            }
        };
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(&name)
            .and_then(|f| {
                // Only a file of its own (a claim linked elsewhere too, say by a process
                // killed while claiming from `pending/`, is not written over).
                if std::os::unix::fs::MetadataExt::nlink(&f.metadata()?) != 1 {
                    return Err(std::io::ErrorKind::AlreadyExists.into());
                }
                std::os::unix::fs::FileExt::write_all_at(&f, &bytes, 0)?;
                f.set_len(bytes.len() as u64)
            });
        if written.is_err() {
            let _ = std::fs::remove_file(&name);
            return None;
        }
        match std::fs::hard_link(&name, to) {
            Ok(()) => {
                let _ = std::fs::remove_file(&name);
                Some(Ok(true))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.recycled
                    .names
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(name);
                Some(Ok(false))
            }
            Err(_) => {
                let _ = std::fs::remove_file(&name);
                None
            }
        }
    }

    fn path(&self, state: &str, run: &RunId) -> PathBuf {
        self.dir.join(state).join(format!("{}.json", run.to_hex()))
    }

    fn ensure(&self, state: &str) -> Result<PathBuf> {
        let d = self.dir.join(state);
        std::fs::create_dir_all(&d).at(&d)?;
        Ok(d)
    }

    /// Write `run` to `to` through a temporary file, so no reader sees half a record;
    /// synced to the disk first (see [`write_volatile`](Self::write_volatile)).
    fn write(&self, to: &Path, run: &RunRecord) -> Result<()> {
        self.write_file(to, run, true)
    }

    /// Like [`write`](Self::write), without waiting for the disk: for an entry that is
    /// worth nothing after a power loss (the claim of a run this process executes at once,
    /// which dies with it). A power loss may leave such an entry torn; a listing removes
    /// it (see `list`).
    fn write_volatile(&self, to: &Path, run: &RunRecord) -> Result<()> {
        self.write_file(to, run, false)
    }

    /// Write `value` as JSON to `to` through a temporary file (in one `write`).
    fn write_file<T: Serialize>(&self, to: &Path, value: &T, durable: bool) -> Result<()> {
        let dir = to.parent().unwrap_or(&self.dir);
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Error::store(format!("cannot write {}", to.display()), e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".tmp-{}-", std::process::id()))
            .tempfile_in(dir)
            .at(dir)?;
        std::io::Write::write_all(&mut tmp, &bytes).at(to)?;
        if durable {
            tmp.as_file().sync_all().at(to)?;
        }
        tmp.persist(to).map_err(|e| Error::io(to, e.error))?;
        Ok(())
    }

    /// `run` as a new file at `to`, complete when it appears; `false` if `to` exists. A
    /// file without a name gets the record, then the name (see `crate::unnamed`): one
    /// file made, none renamed or removed. `None` where such files cannot be had.
    fn create_unnamed(to: &Path, run: &RunRecord) -> Option<Result<bool>> {
        let dir = to.parent()?;
        let file = crate::unnamed::unnamed(dir, 0o666).ok()?;
        let written = serde_json::to_vec(run)
            .map_err(|e| Error::store(format!("cannot write {}", to.display()), e))
            .and_then(|bytes| std::io::Write::write_all(&mut &file, &bytes).at(to));
        if let Err(e) = written {
            return Some(Err(e));
        }
        match crate::unnamed::name(&file, to) {
            Ok(()) => Some(Ok(true)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Some(Ok(false)),
            Err(_) => None,
        }
    }

    fn read(path: &Path) -> Result<Option<RunRecord>> {
        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(r) => Ok(Some(r)),
                // Only a power loss tears a claim (every entry is complete before it has
                // its name, and a claim is not synced: see `write_volatile`), and its
                // holder died with it: it is removed, and the run is planned afresh.
                Err(e) if path.parent().and_then(|d| d.file_name()) == Some(RUNNING.as_ref()) => {
                    tracing::warn!(entry = %path.display(), error = %e, "removing a claim torn by a power loss");
                    match std::fs::remove_file(path) {
                        Ok(()) => Ok(None),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                        Err(e) => Err(Error::io(path, e)),
                    }
                }
                Err(e) => Err(Error::store(
                    format!("queue entry {} is corrupt", path.display()),
                    e,
                )),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn list(&self, state: &str) -> Result<Vec<(PathBuf, RunRecord, SystemTime)>> {
        let d = self.dir.join(state);
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&d, e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.at(&d)?;
            let path = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                sweep(&path, &name);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let modified = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            // A file renamed away meanwhile is simply not there any more.
            if let Some(r) = Self::read(&path)? {
                out.push((path, r, modified));
            }
        }
        Ok(out)
    }

    /// Rename `from` to `to`; `Ok(false)` when `from` is gone (another process won).
    fn take(from: &Path, to: &Path) -> Result<bool> {
        match std::fs::rename(from, to) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(from, e)),
        }
    }

    /// Take the claim of `run` away from its holder, from the first of `states` holding it.
    fn take_over_from(&self, run: &RunId, states: &[&str]) -> Result<Option<RunRecord>> {
        self.ensure(SETTLING)?;
        let settling = self.path(SETTLING, run);
        for state in states {
            let from = self.path(state, run);
            let Some(record) = Self::read(&from)? else {
                continue;
            };
            // One rename wins (to a name no listing reads); the winner then writes the
            // settling entry naming itself, so that a settler killed in turn is recognized
            // and its work taken over again.
            let aside = self.dir.join(SETTLING).join(format!(
                ".taking-{}-{}",
                run.to_hex(),
                std::process::id()
            ));
            if Self::take(&from, &aside)? {
                let mut mine = record.clone();
                mine.worker = Some(crate::engine::worker_id());
                self.write(&settling, &mine)?;
                let _ = std::fs::remove_file(&aside);
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    fn touch(path: &Path) -> Result<bool> {
        match std::fs::File::options().write(true).open(path) {
            Ok(f) => {
                f.set_modified(SystemTime::now()).at(path)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(path, e)),
        }
    }
}

/// Clean up `path`, a file a process writes aside before renaming or linking it into
/// place (`.tmp-PID-*`, `.new-RUN-PID`, `.claiming-RUN-PID`, `.taking-RUN-PID`,
/// `.adopt-RUN-PID`, `.retake-RUN-PID`), when the process that wrote it is gone: it was
/// killed between the two steps. A run being claimed goes back to pending, a claim being
/// taken over back to settling; the rest go.
fn sweep(path: &Path, name: &str) {
    let pid = if let Some(rest) = name.strip_prefix(".tmp-") {
        rest.split('-').next()
    } else {
        name.rsplit('-').next()
    };
    if !pid
        .and_then(|p| p.parse::<i32>().ok())
        .is_some_and(process_gone)
    {
        return;
    }
    // A claim its taker died holding (`.taking-RUN-PID` or `.retake-RUN-PID`, between
    // taking it and writing the settling entry) becomes a settling entry whose settler is
    // dead, taken over again; anything else written aside is only a temporary copy.
    if let Some(run) = name
        .strip_prefix(".taking-")
        .or_else(|| name.strip_prefix(".retake-"))
        .and_then(|rest| rest.rsplit_once('-'))
        .map(|(run, _)| run)
    {
        let _ = std::fs::rename(path, path.with_file_name(format!("{run}.json")));
        return;
    }
    // A pending run its claimer died taking (`.claiming-RUN-PID`) never started: it is
    // pending again.
    if let Some((run, _)) = name
        .strip_prefix(".claiming-")
        .and_then(|rest| rest.rsplit_once('-'))
    {
        if let Some(queue) = path.parent().and_then(Path::parent) {
            let pending = queue.join(PENDING);
            let _ = std::fs::create_dir_all(&pending);
            let _ = std::fs::rename(path, pending.join(format!("{run}.json")));
        }
        return;
    }
    let _ = std::fs::remove_file(path);
}

impl RunQueue for LocalQueue {
    fn enqueue(&self, run: &RunRecord) -> Result<bool> {
        self.ensure(PENDING)?;
        if self.get(&run.id)?.is_some() {
            return Ok(false);
        }
        self.write(&self.path(PENDING, &run.id), run)?;
        Ok(true)
    }

    fn pending(&self) -> Result<Vec<RunRecord>> {
        let mut runs: Vec<RunRecord> = self.list(PENDING)?.into_iter().map(|(_, r, _)| r).collect();
        runs.sort_by_key(|r| (r.queued_ms, r.id));
        Ok(runs)
    }

    fn claim(&self, run: &RunRecord) -> Result<bool> {
        self.ensure(RUNNING)?;
        let running = self.path(RUNNING, &run.id);
        let pending = self.path(PENDING, &run.id);
        if pending.exists() {
            // Whoever renames it owns it (to a name no listing reads); the claim record is
            // written over it, then linked into place complete. Killed in between, the
            // aside file goes back to pending once this process is gone (see `sweep`).
            let aside = self.dir.join(RUNNING).join(format!(
                ".claiming-{}-{}",
                run.id.to_hex(),
                std::process::id()
            ));
            if !Self::take(&pending, &aside)? {
                return Ok(false);
            }
            self.write(&aside, run)?;
            let linked = std::fs::hard_link(&aside, &running);
            let _ = std::fs::remove_file(&aside);
            return match linked {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(Error::io(&running, e)),
            };
        }
        // Executed at once: the record is written aside, then hard-linked into place,
        // which fails if the name exists: an exclusive create of a complete file.
        if self.path(PUBLISHING, &run.id).exists() || self.path(SETTLING, &run.id).exists() {
            return Ok(false);
        }
        // Not synced: the run lives only in this process, and a power loss ends both.
        if let Some(claimed) = self.claim_recycled(&running, run) {
            return claimed;
        }
        if let Some(created) = Self::create_unnamed(&running, run) {
            return created;
        }
        let aside =
            self.dir
                .join(RUNNING)
                .join(format!(".new-{}-{}", run.id.to_hex(), std::process::id()));
        self.write_volatile(&aside, run)?;
        let linked = std::fs::hard_link(&aside, &running);
        let _ = std::fs::remove_file(&aside);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(&running, e)),
        }
    }

    fn renew(&self, run: &RunId) -> Result<bool> {
        if Self::touch(&self.path(RUNNING, run))? {
            return Ok(true);
        }
        Self::touch(&self.path(PUBLISHING, run))
    }

    fn begin_publish(&self, run: &RunId) -> Result<bool> {
        self.ensure(PUBLISHING)?;
        let publishing = self.path(PUBLISHING, run);
        if !Self::take(&self.path(RUNNING, run), &publishing)? {
            return Ok(false);
        }
        Self::touch(&publishing)?;
        Ok(true)
    }

    fn finish(&self, run: &RunId) -> Result<()> {
        // The intent goes last: while it is there, the run is known to have published.
        for state in [PENDING, RUNNING, PUBLISHING, SETTLING, INTENTS] {
            let p = self.path(state, run);
            // The claim (in one of the two) is kept for the next one.
            if (state == RUNNING || state == PUBLISHING) && self.recycle(&p).unwrap_or(false) {
                continue;
            }
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&p, e)),
            }
        }
        Ok(())
    }

    fn cancel(&self, run: &RunId) -> Result<bool> {
        let p = self.path(PENDING, run);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(&p, e)),
        }
    }

    fn claimed(&self) -> Result<Vec<(RunRecord, Duration)>> {
        let now = SystemTime::now();
        let mut out = Vec::new();
        for state in [RUNNING, PUBLISHING] {
            for (_, r, modified) in self.list(state)? {
                out.push((r, now.duration_since(modified).unwrap_or_default()));
            }
        }
        Ok(out)
    }

    fn take_over(&self, run: &RunId) -> Result<Option<RunRecord>> {
        self.take_over_from(run, &[RUNNING, PUBLISHING])
    }

    fn take_over_running(&self, run: &RunId) -> Result<Option<RunRecord>> {
        self.take_over_from(run, &[RUNNING])
    }

    fn write_intent(&self, intent: &PublishIntent, durable: bool) -> Result<()> {
        self.ensure(INTENTS)?;
        let to = self.path(INTENTS, &intent.run.id);
        let dir = to.parent().unwrap_or(&self.dir);
        self.write_file(&to, intent, durable)?;
        if durable {
            // The rename itself must survive a crash before anything is published.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .at(dir)?;
        }
        Ok(())
    }

    fn intents(&self) -> Result<Vec<PublishIntent>> {
        let d = self.dir.join(INTENTS);
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&d, e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let path = e.at(&d)?.path();
            if let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) {
                if name.starts_with('.') {
                    sweep(&path, &name);
                    continue;
                }
            }
            if path.extension() != Some(std::ffi::OsStr::new("json")) {
                continue;
            }
            match std::fs::read(&path) {
                Ok(bytes) => out.push(serde_json::from_slice(&bytes).map_err(|e| {
                    Error::store(format!("publish intent {} is corrupt", path.display()), e)
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Ok(out)
    }

    fn requeue_unstarted(&self, lease: Duration) -> Result<usize> {
        let now = SystemTime::now();
        let mut n = 0;
        for (path, record, modified) in self.list(RUNNING)? {
            let old = now.duration_since(modified).unwrap_or_default() > lease;
            if record.status != crate::RunStatus::Pending || record.worker.is_some() || !old {
                continue;
            }
            self.ensure(PENDING)?;
            if Self::take(&path, &self.path(PENDING, &record.id))? {
                n += 1;
            }
        }
        Ok(n)
    }

    fn settling(&self, run: &RunId) -> Result<bool> {
        Ok(Self::read(&self.path(SETTLING, run))?.is_some())
    }

    fn settling_runs(&self) -> Result<Vec<RunId>> {
        Ok(self
            .list(SETTLING)?
            .into_iter()
            .map(|(_, r, _)| r.id)
            .collect())
    }

    fn adopt(&self, intent: &PublishIntent, lease: Duration) -> Result<bool> {
        let path = self.path(INTENTS, &intent.run.id);
        let age = match std::fs::metadata(&path).and_then(|m| m.modified()) {
            Ok(t) => SystemTime::now().duration_since(t).unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(&path, e)),
        };
        if age <= lease {
            return Ok(false);
        }
        // An exclusive create of the settling entry: written aside, hard-linked into place.
        self.ensure(SETTLING)?;
        let settling = self.path(SETTLING, &intent.run.id);
        let aside = self.dir.join(SETTLING).join(format!(
            ".adopt-{}-{}",
            intent.run.id.to_hex(),
            std::process::id()
        ));
        let mut mine = intent.run.clone();
        mine.worker = Some(crate::engine::worker_id());
        self.write(&aside, &mine)?;
        let linked = std::fs::hard_link(&aside, &settling);
        let _ = std::fs::remove_file(&aside);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(&settling, e)),
        }
    }

    fn take_over_settling(&self, lease: Duration) -> Result<Vec<RunRecord>> {
        let now = SystemTime::now();
        let mut out = Vec::new();
        for (path, record, modified) in self.list(SETTLING)? {
            // A settler on this machine is waited for while it lives (it may be
            // publishing); one whose liveness cannot be checked, until it is silent for
            // longer than `lease`.
            let gone = match record.worker.as_deref().and_then(crate::engine::pid_alive) {
                Some(alive) => !alive,
                None => now.duration_since(modified).unwrap_or_default() > lease,
            };
            if !gone {
                continue;
            }
            // One rename wins; the winner puts the entry back under its own name.
            let aside = self.dir.join(SETTLING).join(format!(
                ".retake-{}-{}",
                record.id.to_hex(),
                std::process::id()
            ));
            if !Self::take(&path, &aside)? {
                continue;
            }
            let mut mine = record.clone();
            mine.worker = Some(crate::engine::worker_id());
            self.write(&path, &mine)?;
            let _ = std::fs::remove_file(&aside);
            out.push(record);
        }
        Ok(out)
    }

    fn lease_age(&self, run: &RunId) -> Result<Option<Duration>> {
        for state in [RUNNING, PUBLISHING] {
            match std::fs::metadata(self.path(state, run)).and_then(|m| m.modified()) {
                Ok(t) => {
                    return Ok(Some(
                        SystemTime::now().duration_since(t).unwrap_or_default(),
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(self.path(state, run), e)),
            }
        }
        Ok(None)
    }

    fn get(&self, run: &RunId) -> Result<Option<RunRecord>> {
        for state in [RUNNING, PUBLISHING, PENDING] {
            if let Some(r) = Self::read(&self.path(state, run))? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }
}

/// Whether no process `pid` exists on this machine (signal 0 only checks; a process of
/// another user answers `EPERM`, and is there).
fn process_gone(pid: i32) -> bool {
    rustix::process::Pid::from_raw(pid).is_some_and(|pid| {
        matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeId, RunStatus};

    fn run(n: u8) -> RunRecord {
        let node = NodeId([n; 32]);
        RunRecord {
            id: RunId::compute(&node, &[], 0),
            node,
            attempt: 0,
            inputs: Vec::new(),
            outputs: Vec::new(),
            status: RunStatus::Pending,
            exit_code: None,
            error: None,
            worker: None,
            queued_ms: u64::from(n),
            started_ms: None,
            ended_ms: None,
            lease_until_ms: None,
            input_digests: Vec::new(),
            log_digest: None,
            staging: None,
            read_files: Default::default(),
            worker_key: None,
            worker_signature: None,
            digest: None,
        }
    }

    /// A claim torn by a power loss (claims are not synced) is removed when read, so the
    /// run is planned afresh; a torn pending entry (those are synced: a power loss cannot
    /// tear one) is an error that names it.
    #[test]
    fn a_torn_claim_is_removed_and_a_torn_pending_entry_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let q = LocalQueue::new(dir.path());
        let (a, b) = (run(7), run(8));
        assert!(q.claim(&a).unwrap());
        assert!(q.enqueue(&b).unwrap());
        let claim = q.path(RUNNING, &a.id);
        std::fs::write(&claim, b"{\"id\": \"").unwrap();
        assert!(q.claimed().unwrap().is_empty());
        assert!(!claim.exists());
        assert!(q.get(&a.id).unwrap().is_none());
        let pending = q.path(PENDING, &b.id);
        std::fs::write(&pending, b"").unwrap();
        let err = q.pending().unwrap_err().to_string();
        assert!(err.contains(&pending.display().to_string()), "{err}");
        assert!(pending.exists());
    }

    /// A finished claim is kept and written over by the next claim (the same file, so
    /// none is made or freed), which reads back whole and is still claimed exclusively;
    /// what a dead process kept goes at first use.
    #[test]
    fn finished_claims_are_written_over_by_the_next_ones() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let free = dir.path().join(FREE);
        std::fs::create_dir_all(&free).unwrap();
        // (No process has pid 2^22 + 1: pids stop at 2^22.)
        std::fs::write(free.join("4194305-0"), b"left by a dead process").unwrap();
        let q = LocalQueue::new(dir.path());
        let mut a = run(1);
        a.error = Some("x".repeat(3000));
        assert!(q.claim(&a).unwrap());
        let first = std::fs::metadata(q.path(RUNNING, &a.id)).unwrap().ino();
        assert!(q.begin_publish(&a.id).unwrap());
        q.finish(&a.id).unwrap();
        assert!(q.get(&a.id).unwrap().is_none());
        assert!(q.claimed().unwrap().is_empty());
        let kept: Vec<_> = std::fs::read_dir(&free)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert!(!kept[0].ends_with("4194305-0"));
        // A shorter claim over the longer one: it reads back as itself.
        let b = run(2);
        assert!(q.claim(&b).unwrap());
        assert_eq!(
            std::fs::metadata(q.path(RUNNING, &b.id)).unwrap().ino(),
            first
        );
        assert_eq!(q.get(&b.id).unwrap(), Some(b.clone()));
        assert!(!q.claim(&b).unwrap(), "claimed once");
        assert!(std::fs::read_dir(&free).unwrap().next().is_none());
        // Finished while still running (a failure, say), it is kept all the same.
        q.finish(&b.id).unwrap();
        assert!(q.get(&b.id).unwrap().is_none());
        let c = run(3);
        assert!(q.claim(&c).unwrap());
        assert_eq!(
            std::fs::metadata(q.path(RUNNING, &c.id)).unwrap().ino(),
            first
        );
        assert_eq!(q.claimed().unwrap().len(), 1);
    }

    #[test]
    fn one_claim_wins_and_a_taken_claim_cannot_publish() {
        let dir = tempfile::tempdir().unwrap();
        let q = LocalQueue::new(dir.path());
        let (a, b) = (run(1), run(2));
        assert!(q.enqueue(&b).unwrap());
        assert!(q.enqueue(&a).unwrap());
        assert!(!q.enqueue(&a).unwrap(), "queued once");
        let pending: Vec<RunId> = q.pending().unwrap().iter().map(|r| r.id).collect();
        assert_eq!(pending, [a.id, b.id], "oldest first");
        assert!(q.claim(&a).unwrap());
        assert!(!q.claim(&a).unwrap(), "claimed once");
        assert!(q.renew(&a.id).unwrap());
        // Its holder is taken for dead: one process takes it over...
        assert!(q.take_over(&a.id).unwrap().is_some());
        assert!(q.take_over(&a.id).unwrap().is_none());
        // ...and the holder, resuming, can neither renew nor publish.
        assert!(!q.renew(&a.id).unwrap());
        assert!(!q.begin_publish(&a.id).unwrap());
        q.finish(&a.id).unwrap();
        assert!(q.get(&a.id).unwrap().is_none());
        // A run executed at once is claimed by creating it.
        let c = run(3);
        assert!(q.claim(&c).unwrap());
        assert!(!q.claim(&c).unwrap());
        assert!(q.begin_publish(&c.id).unwrap());
        assert_eq!(q.claimed().unwrap().len(), 1);
        q.finish(&c.id).unwrap();
        assert!(q.claimed().unwrap().is_empty());
        // The same where files cannot be made without names (written aside, then linked):
        // one claim wins, it reads back whole, and nothing is left beside it. (A queue of
        // its own, which keeps no finished claim to write over.)
        let q = LocalQueue::new(dir.path());
        let d = run(4);
        crate::unnamed::set_works(false);
        let (first, second) = (q.claim(&d), q.claim(&d));
        crate::unnamed::set_works(true);
        assert!(first.unwrap());
        assert!(!second.unwrap());
        assert_eq!(q.get(&d.id).unwrap().map(|r| r.id), Some(d.id));
        let names: Vec<String> = std::fs::read_dir(dir.path().join(RUNNING))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [format!("{}.json", d.id.to_hex())]);
    }

    #[test]
    fn a_publishing_claim_is_taken_only_by_a_full_take_over_and_intents_stay_until_finish() {
        let dir = tempfile::tempdir().unwrap();
        let q = LocalQueue::new(dir.path());
        let a = run(4);
        assert!(q.claim(&a).unwrap());
        assert!(q.begin_publish(&a.id).unwrap());
        // A live holder's claim is never cut off while it publishes...
        assert!(q.take_over_running(&a.id).unwrap().is_none());
        let intent = PublishIntent {
            run: a.clone(),
            outputs: Vec::new(),
        };
        q.write_intent(&intent, true).unwrap();
        assert_eq!(q.intents().unwrap(), vec![intent]);
        // ...a dead one's is, once, and the settling entry names the settler.
        assert!(q.take_over(&a.id).unwrap().is_some());
        assert!(q.settling(&a.id).unwrap());
        let settler: RunRecord = serde_json::from_slice(
            &std::fs::read(
                dir.path()
                    .join("settling")
                    .join(format!("{}.json", a.id.to_hex())),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(settler.worker, Some(crate::engine::worker_id()));
        // This process is alive: its settling is not taken from it.
        assert!(q.take_over_settling(Duration::ZERO).unwrap().is_empty());
        assert_eq!(
            q.intents().unwrap().len(),
            1,
            "the intent outlives the claim"
        );
        q.finish(&a.id).unwrap();
        assert!(q.intents().unwrap().is_empty());
        assert!(!q.settling(&a.id).unwrap());
    }

    #[test]
    fn a_half_made_claim_goes_back_to_pending_and_leftovers_of_dead_processes_go() {
        let dir = tempfile::tempdir().unwrap();
        let q = LocalQueue::new(dir.path());
        let a = run(5);
        assert!(q.enqueue(&a).unwrap());
        // A claimer killed between its rename and its rewrite left the pending record in
        // running/.
        std::fs::create_dir_all(dir.path().join("running")).unwrap();
        let name = format!("{}.json", a.id.to_hex());
        std::fs::rename(
            dir.path().join("pending").join(&name),
            dir.path().join("running").join(&name),
        )
        .unwrap();
        assert_eq!(q.requeue_unstarted(Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(q.requeue_unstarted(Duration::ZERO).unwrap(), 1);
        assert_eq!(q.pending().unwrap().len(), 1);
        // Files written aside by a process that is gone are removed; a live one's stay.
        let dead = dir.path().join("pending").join(".tmp-999999999-x");
        let mine = dir
            .path()
            .join("pending")
            .join(format!(".tmp-{}-x", std::process::id()));
        std::fs::write(&dead, b"").unwrap();
        std::fs::write(&mine, b"").unwrap();
        q.pending().unwrap();
        assert!(!dead.exists());
        assert!(mine.exists());
        // A run whose claimer died claiming it is pending again.
        let c = run(7);
        std::fs::write(
            dir.path()
                .join("running")
                .join(format!(".claiming-{}-999999999", c.id.to_hex())),
            serde_json::to_vec(&c).unwrap(),
        )
        .unwrap();
        assert!(q.claimed().unwrap().is_empty());
        assert!(q.pending().unwrap().iter().any(|r| r.id == c.id));
        // A claim whose taker died mid-take-over is put back for settling.
        let b = run(6);
        std::fs::create_dir_all(dir.path().join("settling")).unwrap();
        std::fs::write(
            dir.path()
                .join("settling")
                .join(format!(".taking-{}-999999999", b.id.to_hex())),
            serde_json::to_vec(&b).unwrap(),
        )
        .unwrap();
        let retaken = q.take_over_settling(Duration::from_secs(3600)).unwrap();
        assert!(
            retaken.is_empty(),
            "put back first, its settler then checked"
        );
        assert!(q.settling(&b.id).unwrap());
    }
}
