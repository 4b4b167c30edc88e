//! Running one process of a node: its own process group, stdout and stderr as one stream
//! (so their order is kept), the output captured as it comes (to the run's live log file,
//! to [`Event::LogLine`](crate::events::Event) subscribers, and, bounded, to memory), a
//! time limit and cancellation that end the whole process group.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::Signal;

use tokio_util::sync::CancellationToken;

use crate::config::Secrets;
use crate::events::{Event, Events};
use crate::{NodeId, RunId};

/// How much of a run's output is kept for its record: the first half and the last half
/// of this; what lies between is replaced by a line saying how much was left out.
pub(crate) const LOG_LIMIT: usize = 8 << 20;

/// How long a process group gets between SIGTERM and SIGKILL when a run is cancelled.
const GRACE: Duration = Duration::from_secs(5);

/// The output of a run, bounded in memory.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    omitted: u64,
}

impl Captured {
    fn push(&mut self, bytes: &[u8]) {
        let half = LOG_LIMIT / 2;
        let room = half.saturating_sub(self.head.len());
        let (to_head, rest) = bytes.split_at(room.min(bytes.len()));
        self.head.extend_from_slice(to_head);
        self.tail.extend(rest);
        while self.tail.len() > half {
            let over = self.tail.len() - half;
            self.tail.drain(..over);
            self.omitted += over as u64;
        }
    }

    /// Append a line of dtk's own (`[dkt: ...]`).
    pub(crate) fn note(&mut self, text: &str) {
        let mut line = String::new();
        if !self.is_empty() && !self.ends_with_newline() {
            line.push('\n');
        }
        line.push_str(text);
        line.push('\n');
        self.push(line.as_bytes());
    }

    fn is_empty(&self) -> bool {
        self.head.is_empty() && self.tail.is_empty()
    }

    fn ends_with_newline(&self) -> bool {
        match self.tail.back() {
            Some(b) => *b == b'\n',
            None => self.head.last() == Some(&b'\n'),
        }
    }

    /// The text kept (lossy UTF-8).
    pub(crate) fn text(&self) -> String {
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        if self.omitted > 0 {
            out.push_str(&format!(
                "\n[dkt: {} bytes of output left out]\n",
                self.omitted
            ));
        }
        let (a, b) = self.tail.as_slices();
        out.push_str(&String::from_utf8_lossy(a));
        out.push_str(&String::from_utf8_lossy(b));
        out
    }
}

/// Where a run's output goes while it runs.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    pub(crate) run: RunId,
    pub(crate) node: NodeId,
    pub(crate) captured: Arc<Mutex<Captured>>,
    /// `.dkt/logs/<run-id>.log`: the live log, for `dkt node log --follow`.
    pub(crate) live: Option<Arc<Mutex<LiveLog>>>,
    pub(crate) events: Events,
    pub(crate) secrets: Secrets,
}

impl Sink {
    /// A sink for `run`, with its live log file at `live`.
    pub(crate) fn new(
        run: RunId,
        node: NodeId,
        live: Option<PathBuf>,
        events: Events,
        secrets: Secrets,
    ) -> Sink {
        Sink {
            run,
            node,
            captured: Arc::new(Mutex::new(Captured::default())),
            live: live.map(|path| Arc::new(Mutex::new(LiveLog::Unmade(path)))),
            events,
            secrets,
        }
    }

    /// One chunk of output (a line, or part of a very long one).
    fn write(&self, bytes: &[u8]) {
        if let Ok(mut c) = self.captured.lock() {
            c.push(bytes);
        }
        let text = self.secrets.redact(&String::from_utf8_lossy(bytes));
        if let Some(live) = &self.live {
            if let Ok(mut f) = live.lock() {
                f.write(text.as_bytes());
            }
        }
        self.events.send(Event::LogLine {
            run: self.run,
            node: self.node,
            line: text.trim_end_matches('\n').to_owned(),
        });
    }

    /// A line of dtk's own, in the log and to followers.
    pub(crate) fn note(&self, text: &str) {
        if let Ok(mut c) = self.captured.lock() {
            c.note(text);
        }
        if let Some(live) = &self.live {
            if let Ok(mut f) = live.lock() {
                f.write(format!("{text}\n").as_bytes());
            }
        }
        self.events.send(Event::LogLine {
            run: self.run,
            node: self.node,
            line: text.to_owned(),
        });
    }

    /// Everything kept so far.
    pub(crate) fn text(&self) -> String {
        self.captured.lock().map(|c| c.text()).unwrap_or_default()
    }
}

/// A run's live log file, made when the run first has something to say: a run that
/// prints nothing makes (and removes) no file. Readers take a missing one as empty.
#[derive(Debug)]
pub(crate) enum LiveLog {
    /// Not made yet: where it goes.
    Unmade(PathBuf),
    /// Made (or `None`: it could not be).
    Made(Option<std::fs::File>),
}

impl LiveLog {
    fn write(&mut self, bytes: &[u8]) {
        if let LiveLog::Unmade(path) = self {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            *self = LiveLog::Made(std::fs::File::create(&*path).ok());
        }
        if let LiveLog::Made(Some(f)) = self {
            let _ = f.write_all(bytes);
        }
    }
}

/// How a process ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// It exited (or was killed by a signal not of dtk's).
    Exited(std::process::ExitStatus),
    /// Its time limit passed: the process group was killed.
    TimedOut(Duration),
    /// The run was cancelled (Ctrl-C, SIGTERM, `cancel`): the process group was ended.
    Cancelled,
    /// It could not start.
    NotStarted(String),
}

/// What to run.
#[derive(Debug)]
pub(crate) struct Step<'a> {
    pub(crate) argv: &'a [String],
    pub(crate) cwd: &'a Path,
    pub(crate) env: Vec<(String, String)>,
    /// Run through bubblewrap with this view of the file system; the environment is then
    /// `env` alone.
    pub(crate) sandbox: Option<&'a Sandbox>,
}

/// The environment variable naming the bubblewrap program to use (default: `bwrap`
/// found on `PATH`).
pub(crate) const BWRAP_ENV: &str = "DKT_BWRAP";

/// What a sandboxed command sees: the whole file system read-only, a private `/tmp`,
/// `hide` replaced by empty directories, `read_only` and `writable` bound over that (in
/// that order, so they may lie under a hidden directory or `/tmp`), no network unless
/// `network`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sandbox {
    /// Bound read-only before `hide` is hidden (the project's directory).
    pub(crate) visible: Vec<PathBuf>,
    /// Replaced by an empty directory (the project's `.dkt`).
    pub(crate) hide: Vec<PathBuf>,
    /// Bound read-only (inputs, the rendered script).
    pub(crate) read_only: Vec<PathBuf>,
    /// Bound writable (outputs' staging directories, the work directory).
    pub(crate) writable: Vec<PathBuf>,
    /// Keep the host's network.
    pub(crate) network: bool,
    /// Trace the files the command opens with strace (when it is on `PATH`) into this
    /// directory (bound writable), one file per process.
    pub(crate) trace: Option<PathBuf>,
}

impl Sandbox {
    /// The bubblewrap program: `$DKT_BWRAP` if set, else `bwrap` on `PATH`; an error
    /// saying how to get it when there is none (a sandboxed node never runs unsandboxed).
    pub(crate) fn program() -> std::result::Result<PathBuf, String> {
        if let Some(p) = std::env::var_os(BWRAP_ENV).filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            return if is_executable(&p) {
                Ok(p)
            } else {
                Err(format!(
                    "this node runs sandboxed, but the bubblewrap program {} ({BWRAP_ENV}) is not an executable file; it is not run unsandboxed",
                    p.display()
                ))
            };
        }
        find_on_path("bwrap")
            .ok_or_else(|| {
                "this node runs sandboxed (sandbox: true, or --sandbox), but bubblewrap (`bwrap`) is not on PATH: install it (Debian/Ubuntu: apt-get install bubblewrap); it is not run unsandboxed".to_owned()
            })
    }

    /// The bubblewrap arguments that run `argv` in `cwd` inside this sandbox.
    pub(crate) fn wrap(&self, bwrap: &Path, argv: &[String], cwd: &Path) -> Vec<String> {
        let s = |p: &Path| p.display().to_string();
        let mut out = vec![s(bwrap), "--die-with-parent".into(), "--unshare-all".into()];
        if self.network {
            out.push("--share-net".into());
        }
        out.extend(
            ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
                .iter()
                .map(|a| a.to_string()),
        );
        out.extend(["--tmpfs".into(), "/tmp".into()]);
        for p in self.visible.iter().filter(|p| p.exists()) {
            out.extend(["--ro-bind".into(), s(p), s(p)]);
        }
        for p in self.hide.iter().filter(|p| p.exists()) {
            out.extend(["--tmpfs".into(), s(p)]);
        }
        for p in self.read_only.iter().filter(|p| p.exists()) {
            out.extend(["--ro-bind".into(), s(p), s(p)]);
        }
        for p in self.writable.iter().filter(|p| p.exists()) {
            out.extend(["--bind".into(), s(p), s(p)]);
        }
        let strace = self.trace.as_ref().and_then(|t| Some((t, strace()?)));
        if let Some((dir, _)) = &strace {
            out.extend(["--bind".into(), s(dir), s(dir)]);
        }
        out.extend(["--chdir".into(), s(cwd), "--".into()]);
        if let Some((dir, strace)) = &strace {
            out.extend([
                s(strace),
                "-ff".into(),
                "-qq".into(),
                "-y".into(),
                "-e".into(),
                "trace=open,openat,openat2".into(),
                "-e".into(),
                "status=successful".into(),
                "-o".into(),
                // Each step is a PID namespace of its own: its PIDs repeat, so each step's
                // files get a prefix of their own.
                s(&dir.join(format!(
                    "step{}",
                    TRACE_STEP.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ))),
                "--".into(),
            ]);
        }
        out.extend(argv.iter().cloned());
        out
    }
}

/// strace, when it is on `PATH` and can trace here (checked once: a machine whose
/// ptrace is locked down would otherwise fail every sandboxed run); `DKT_TRACE=0`
/// turns tracing off.
fn strace() -> Option<PathBuf> {
    static FOUND: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            if std::env::var("DKT_TRACE").is_ok_and(|v| v == "0") {
                return None;
            }
            let p = find_on_path("strace")?;
            let works = std::process::Command::new(&p)
                .args(["-f", "-qq", "-o", "/dev/null", "--", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            works.then_some(p)
        })
        .clone()
}

static TRACE_STEP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `name` found in a directory of `PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// The files under `roots` (by name) that the processes traced into `dir` opened
/// successfully (not directories), as paths relative to their root; a relative path is
/// taken relative to `cwd` (the command's starting directory).
pub(crate) fn opened_files(
    dir: &Path,
    cwd: &Path,
    roots: &[(crate::Name, PathBuf)],
) -> std::collections::BTreeMap<crate::Name, Vec<String>> {
    let mut out: std::collections::BTreeMap<crate::Name, std::collections::BTreeSet<String>> =
        Default::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::debug!(dir = %dir.display(), "no trace of the files opened");
        return Default::default();
    };
    for e in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines() {
            let Some(path) = opened_path(line) else {
                continue;
            };
            let path = cwd.join(path);
            if !path.is_file() {
                continue;
            }
            for (name, root) in roots {
                if let Ok(rel) = path.strip_prefix(root) {
                    let rel: Vec<String> = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    if !rel.is_empty() && !rel.iter().any(|c| c == "..") {
                        out.entry(name.clone()).or_default().insert(rel.join("/"));
                    }
                }
            }
        }
    }
    out.into_iter()
        .map(|(k, v)| (k, v.into_iter().collect()))
        .collect()
}

/// The path of one strace line `openat(AT_FDCWD</cwd>, "PATH", FLAGS) = FD</real/path>`
/// (also `open`, `openat2`; strace `-y` decodes the descriptor returned into the path
/// opened, symbolic links resolved, whatever the directory the process was in) that
/// opened something other than a directory: that decoded path, else the quoted one;
/// `None` for anything else (failed calls, paths strace had to escape, directories).
fn opened_path(line: &str) -> Option<&str> {
    let call = ["openat2(", "openat(", "open("]
        .iter()
        .find_map(|c| line.find(c).map(|i| &line[i..]))?;
    let (_, rest) = call.split_once('"')?;
    let (quoted, rest) = rest.split_once('"')?;
    if rest.contains("O_DIRECTORY") {
        return None;
    }
    let (_, result) = rest.rsplit_once(") = ")?;
    let digits = result.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let path = match result[digits..].strip_prefix('<') {
        Some(decoded) => decoded.rsplit_once('>')?.0,
        None => quoted,
    };
    if path.contains('\\') {
        return None;
    }
    Some(path)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Run `step` in a process group of its own, its output into `sink`, until it exits, its
/// `timeout` passes or `cancel` fires.
pub(crate) async fn run(
    step: Step<'_>,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
    sink: &Sink,
) -> Ended {
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return Ended::NotStarted(format!("cannot make a pipe: {e}")),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return Ended::NotStarted(format!("cannot make a pipe: {e}")),
    };
    let wrapped;
    let argv = match step.sandbox {
        None => step.argv,
        Some(sandbox) => {
            let bwrap = match Sandbox::program() {
                Ok(p) => p,
                Err(e) => return Ended::NotStarted(e),
            };
            wrapped = sandbox.wrap(&bwrap, step.argv, step.cwd);
            &wrapped[..]
        }
    };
    let mut cmd = tokio::process::Command::new(&argv[0]);
    if step.sandbox.is_some() {
        cmd.env_clear();
    }
    cmd.args(&argv[1..])
        .current_dir(step.cwd)
        .envs(step.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .process_group(0)
        .kill_on_drop(true);
    let spawned = cmd.spawn();
    // The command holds the pipe's writing ends: close them, or the output never ends.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Ended::NotStarted(format!("cannot start {:?}: {e}", step.argv[0])),
    };
    let pgid = child.id().map(|p| p as i32);
    // The output is read on this task, beside the wait: when the command ends, its exit
    // and the end of its output are seen in one wake-up (a thread of its own to read it
    // was one more thread to wake, then to wait for, at the end of every run).
    let reading = async move {
        let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()) else {
            return;
        };
        let mut r = tokio::io::BufReader::with_capacity(64 << 10, pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            // Lines, or 64 KiB pieces of longer ones.
            let mut piece = tokio::io::AsyncReadExt::take(&mut r, 64 << 10);
            match tokio::io::AsyncBufReadExt::read_until(&mut piece, b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => sink.write(&line),
            }
        }
    };
    let mut reading = std::pin::pin!(reading);
    let mut read = false;
    let mut limit = std::pin::pin!(async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending::<()>().await,
        }
    });
    let ended = loop {
        tokio::select! {
            () = &mut reading, if !read => read = true,
            status = child.wait() => break match status {
                Ok(s) => Ended::Exited(s),
                Err(e) => Ended::NotStarted(format!("cannot wait for {:?}: {e}", step.argv[0])),
            },
            () = &mut limit => {
                kill_group(pgid, Signal::KILL);
                let _ = child.wait().await;
                break Ended::TimedOut(timeout.unwrap_or_default());
            }
            () = cancel.cancelled() => {
                kill_group(pgid, Signal::TERM);
                if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
                    kill_group(pgid, Signal::KILL);
                    let _ = child.wait().await;
                }
                break Ended::Cancelled;
            }
        }
    };
    if !matches!(ended, Ended::Exited(_)) {
        // Whatever the group left behind (a background child holding the pipe) goes too.
        kill_group(pgid, Signal::KILL);
    }
    // The output ends when every process holding the pipe is gone; a background process
    // that outlives its command keeps it open, so do not wait for it forever.
    if !read {
        let _ = tokio::time::timeout(Duration::from_secs(10), reading).await;
    }
    ended
}

fn kill_group(pgid: Option<i32>, signal: Signal) {
    // Signalling the process group of a child this process started; a group already gone
    // (ESRCH) is what was wanted.
    if let Some(pg) = pgid.and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pg, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command's output is read while it runs and up to its end; a background process
    /// it left holding the output does not hold the run for more than ten seconds (the
    /// clock is paused: the wait passes at once when nothing else is left to do).
    #[tokio::test(start_paused = true)]
    async fn output_is_read_to_the_end_and_a_background_holder_is_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        // How `sh -c script` ended, and the output its sink kept.
        let output_of = |script: &str| {
            let argv = vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
            let cwd = dir.path().to_owned();
            async move {
                let sink = Sink::new(
                    RunId([7; 32]),
                    NodeId([7; 32]),
                    None,
                    Events::default(),
                    Secrets::default(),
                );
                let step = Step {
                    argv: &argv,
                    cwd: &cwd,
                    env: Vec::new(),
                    sandbox: None,
                };
                let ended = run(step, None, &CancellationToken::new(), &sink).await;
                (ended, sink.text())
            }
        };
        let (ended, text) = output_of(
            "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done; echo err >&2",
        )
        .await;
        assert!(matches!(ended, Ended::Exited(s) if s.success()));
        assert!(
            text.contains("line 0\n") && text.contains("line 1999\nerr\n"),
            "{text}"
        );
        // The background `sleep` keeps the pipe open after its shell exits.
        let (ended, text) = output_of("echo before; (sleep 30; echo late) & echo after").await;
        assert!(matches!(ended, Ended::Exited(s) if s.success()));
        assert!(
            text.contains("before\n") && text.contains("after\n"),
            "{text}"
        );
        assert!(!text.contains("late"), "{text}");
    }

    #[test]
    fn strace_lines_give_the_files_opened() {
        assert_eq!(
            opened_path(r#"openat(AT_FDCWD, "/in/a.txt", O_RDONLY|O_CLOEXEC) = 3"#),
            Some("/in/a.txt")
        );
        assert_eq!(opened_path(r#"open("rel", O_RDONLY) = 4"#), Some("rel"));
        assert_eq!(
            opened_path(
                r#"openat(AT_FDCWD, "/in", O_RDONLY|O_NONBLOCK|O_CLOEXEC|O_DIRECTORY) = 3"#
            ),
            None
        );
        assert_eq!(
            opened_path(
                r#"openat(AT_FDCWD, "/x", O_RDONLY) = -1 ENOENT (No such file or directory)"#
            ),
            None
        );
        assert_eq!(opened_path("+++ exited with 0 +++"), None);
        assert_eq!(
            opened_path(r#"openat(AT_FDCWD</in/d>, "deep/c.txt", O_RDONLY) = 3</in/d/deep/c.txt>"#),
            Some("/in/d/deep/c.txt")
        );
    }

    #[test]
    fn captured_output_is_bounded_and_says_what_was_left_out() {
        let mut c = Captured::default();
        let line = vec![b'x'; 1000];
        for _ in 0..20_000 {
            c.push(&line);
            c.push(b"\n");
        }
        let text = c.text();
        assert!(text.len() <= LOG_LIMIT + 100, "{}", text.len());
        let total = 20_000 * 1001;
        let omitted = total - LOG_LIMIT;
        assert!(text.contains(&format!("[dkt: {omitted} bytes of output left out]")));
        let mut small = Captured::default();
        small.push(b"a\nb");
        small.note("[dkt: done]");
        assert_eq!(small.text(), "a\nb\n[dkt: done]\n");
    }
}
