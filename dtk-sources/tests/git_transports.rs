//! The `git` kind over each network transport the README names, against real servers
//! started on 127.0.0.1 by the tests themselves:
//!
//! - `git://`: `git daemon`;
//! - smart HTTP (plain `http://`, with the `https` cargo feature): `git http-backend`
//!   behind `tests/py/git_http_server.py`;
//! - ssh (`ssh://USER@127.0.0.1:PORT/PATH` and scp-like `USER@127.0.0.1:PATH`): OpenSSH's
//!   `sshd` with a configuration, host key and client key of its own.
//!
//! Each test resolves a repository made with the `git` CLI through `GitKind` and checks the
//! default branch, the latest commit, the versions in `git log` order (also for a tag and a
//! sub-path) and the materialized trees against `git archive`; where the test can push to
//! the served repository, also that `latest()` fetches a new commit.
//!
//! The tests of this binary run one at a time (see [`serial`]): the ssh test sets
//! `GIT_SSH_COMMAND`, which is process-wide.
#![cfg(feature = "git")]

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use dtk_api::{Context, Kind, Name, NewSource, Secrets, Source, SourceSpec, Version};
use dtk_sources::git::GitKind;

#[path = "support/trees.rs"]
mod trees;
use trees::{assert_same_tree, git_archive, git_env as git_at};

// ---------------------------------------------------------------------------------------
// Helpers

/// Hold this for a whole test: the tests of this binary then never overlap, so the ssh
/// test can set `GIT_SSH_COMMAND` while no other thread fetches.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    // A failed test poisons the lock; the next one may still run.
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run a test body on a runtime of its own (a sync test can hold [`serial`]'s guard
/// without holding it across an await point).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn git(dir: &Path, args: &[&str]) -> String {
    git_at(dir, args, None)
}

fn write(dir: &Path, path: &str, content: &str) {
    let p = dir.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// Commit everything at `date` and return the commit id.
fn commit(dir: &Path, msg: &str, date: u64) -> String {
    git(dir, &["add", "-A"]);
    git_at(
        dir,
        &["commit", "-q", "--allow-empty", "-m", msg],
        Some(date),
    );
    git(dir, &["rev-parse", "HEAD"])
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn hexes(vs: &[dtk_api::VersionInfo]) -> Vec<String> {
    vs.iter().map(|v| v.version.hex().to_owned()).collect()
}

fn sha1(hex: &str) -> Version {
    format!("sha1:{hex}").parse().unwrap()
}

/// A temporary root (canonical) and a context whose cache lives under it.
struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    ctx: Context,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let mut ctx = Context::new(&root.join("dkt"), Secrets::default());
    ctx.network_timeout = Duration::from_secs(20);
    ctx.cwd = root.clone();
    Env {
        _tmp: tmp,
        root,
        ctx,
    }
}

/// The repository under test: a work tree `work` (default branch `trunk`) and `bare`, a
/// bare clone of it that the git daemon and sshd serve.
struct Origin {
    work: PathBuf,
    bare: PathBuf,
}

/// Files at the root and in `sub/` (an executable, a symlink), a merge, an annotated tag
/// `v1`, and a newer branch `other` that must not be taken for the default branch.
fn make_origin(root: &Path) -> Origin {
    let work = root.join("origin");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "trunk"]);
    write(&work, "README", "hello\n");
    write(&work, "sub/a.txt", "a1\n");
    write(&work, "sub/run.sh", "#!/bin/sh\necho hi\n");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            work.join("sub/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("a.txt", work.join("sub/link")).unwrap();
    }
    let c1 = commit(&work, "one", 1_700_000_000);
    write(&work, "README", "hello again\n");
    let c2 = commit(&work, "two", 1_700_000_100);
    git_at(
        &work,
        &["tag", "-a", "v1", "-m", "version one"],
        Some(1_700_000_100),
    );
    git(&work, &["checkout", "-q", "-b", "side", &c1]);
    write(&work, "sub/a.txt", "a2\n");
    commit(&work, "side", 1_700_000_200);
    git(&work, &["checkout", "-q", "trunk"]);
    git_at(
        &work,
        &["merge", "-q", "--no-ff", "-m", "merge side", "side"],
        Some(1_700_000_300),
    );
    git(&work, &["checkout", "-q", "-b", "other", &c2]);
    write(&work, "other.txt", "other\n");
    commit(&work, "other", 1_700_000_400);
    git(&work, &["checkout", "-q", "trunk"]);
    let bare = root.join("served").join("repo.git");
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    Origin { work, bare }
}

fn new_source(location: &str, tag: Option<&str>, path: Option<&str>) -> NewSource {
    NewSource {
        name: Name::new("src").unwrap(),
        kind: "git".to_owned(),
        location: Some(location.to_owned()),
        tag: tag.map(str::to_owned),
        path: path.map(str::to_owned),
    }
}

async fn resolve(
    ctx: &Context,
    location: &str,
    tag: Option<&str>,
    path: Option<&str>,
) -> SourceSpec {
    GitKind::default()
        .resolve(ctx, new_source(location, tag, path))
        .await
        .unwrap_or_else(|e| panic!("resolve {location} (tag {tag:?}, path {path:?}): {e:#}"))
}

/// Materialize `commit` of `source` and compare it with `git archive` of the origin.
async fn assert_materializes(e: &Env, source: &dyn Source, origin: &Origin, commit: &str) {
    // A new empty directory each time: a test may materialize one commit more than once.
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let scratch = e.root.join("scratch").join(format!("{n}-{commit}"));
    std::fs::create_dir_all(&scratch).unwrap();
    let got = source
        .materialize(&sha1(commit), &scratch)
        .await
        .unwrap_or_else(|err| panic!("materialize {commit}: {err:#}"));
    assert_eq!(got, scratch);
    let expected = e.root.join("archive").join(format!("{n}-{commit}"));
    git_archive(&origin.work, commit, &expected);
    assert_same_tree(&got, &expected);
}

/// Everything one transport must do with `location`, which serves `origin`. With `push`,
/// the served repository is `origin.bare`, and a new commit pushed there must be fetched.
async fn check_transport(e: &Env, location: &str, origin: &Origin, push: bool) {
    // The default branch is the remote's HEAD, not the newest branch.
    let spec = resolve(&e.ctx, location, None, None).await;
    assert_eq!(spec.kind, "git");
    assert_eq!(spec.location, location);
    assert_eq!(spec.tag.as_deref(), Some("trunk"), "{location}");
    let source = GitKind::default().open(&e.ctx, &spec).unwrap();

    let tip = git(&origin.work, &["rev-parse", "trunk"]);
    let latest = source
        .latest()
        .await
        .unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(latest.version.hex(), tip, "latest of {location}");

    let log = lines(&git(&origin.work, &["log", "--format=%H", "trunk"]));
    let versions = source
        .versions()
        .await
        .unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(hexes(&versions), log, "versions of {location}");
    assert!(log.len() >= 4, "one, two, side and the merge: {log:?}");
    for commit in &log {
        assert_materializes(e, source.as_ref(), origin, commit).await;
    }

    // An annotated tag peels to its commit; a sub-path lists what `git log -- sub` lists.
    let spec = resolve(&e.ctx, location, Some("v1"), None).await;
    let tagged = GitKind::default().open(&e.ctx, &spec).unwrap();
    assert_eq!(
        tagged.latest().await.unwrap().version.hex(),
        git(&origin.work, &["rev-parse", "v1^{commit}"])
    );
    assert_eq!(
        hexes(&tagged.versions().await.unwrap()),
        lines(&git(&origin.work, &["log", "--format=%H", "v1"]))
    );
    let spec = resolve(&e.ctx, location, None, Some("sub")).await;
    let sub = GitKind::default().open(&e.ctx, &spec).unwrap();
    assert_eq!(
        hexes(&sub.versions().await.unwrap()),
        lines(&git(
            &origin.work,
            &["log", "--format=%H", "trunk", "--", "sub"]
        ))
    );

    if push {
        // An incremental fetch over the same transport brings a new commit.
        write(&origin.work, "sub/new.txt", location);
        let new = commit(&origin.work, "four", 1_700_000_500);
        git(
            &origin.work,
            &["push", "-q", origin.bare.to_str().unwrap(), "trunk"],
        );
        assert_eq!(source.latest().await.unwrap().version.hex(), new);
        assert_eq!(
            hexes(&source.versions().await.unwrap()),
            lines(&git(&origin.work, &["log", "--format=%H", "trunk"]))
        );
        assert_materializes(e, source.as_ref(), origin, &new).await;
    }
}

// ---------------------------------------------------------------------------------------
// Servers

/// A free port on 127.0.0.1 (bound, then released for a server to take).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process in a process group of its own, killed with every process it forked
/// (`git daemon` and `sshd` fork one per connection) and reaped when dropped.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `make(port)` on free ports until one accepts connections on 127.0.0.1 (a few
/// tries: another process may take a port between its release and the server's bind).
/// The server's stderr goes to `dir/NAME.log`, quoted when it fails.
fn start_server(name: &str, dir: tempfile::TempDir, make: impl Fn(u16) -> Command) -> Server {
    let log_path = dir.path().join(format!("{name}.log"));
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port();
        let log = File::create(&log_path).unwrap();
        let mut child = make(port)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        // Bounded wait: up to 200 × 50 ms for the port to accept a connection.
        for _ in 0..200 {
            if let Some(status) = child.try_wait().unwrap() {
                last = format!(
                    "{name} exited ({status}) before listening on {addr}: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
                break;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return Server {
                    child,
                    port,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if last.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} never accepted connections on {addr}: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
    }
    panic!("{last}");
}

/// `git daemon` exporting every repository under `base` (as `git://127.0.0.1:PORT/REL`).
///
/// Started as `$(git --exec-path)/git-daemon` rather than `git daemon`: `git` runs the
/// daemon as a child process of its own, which killing `git` would leave running.
fn git_daemon(base: &Path) -> Server {
    let exec_path = run(Command::new("git").arg("--exec-path"), "git");
    let daemon = Path::new(&exec_path).join("git-daemon");
    assert!(
        daemon.exists(),
        "{} is missing: `git daemon` comes with the Debian package git",
        daemon.display()
    );
    let base = base.to_owned();
    start_server("git-daemon", tempfile::tempdir().unwrap(), move |port| {
        let mut cmd = Command::new(&daemon);
        cmd.arg("--reuseaddr")
            .arg(format!("--base-path={}", base.display()))
            .arg("--export-all")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(&base)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null");
        cmd
    })
}

const SSHD: &str = "/usr/sbin/sshd";

/// Run a command that must succeed, naming the package it comes from when it is missing.
fn run(cmd: &mut Command, package: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (install {package}): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An `sshd` on 127.0.0.1 with its own configuration and host key, letting in the current
/// user with `client_key` only, and the command line of an `ssh` client that uses that
/// key and trusts the host without a known_hosts file.
struct Sshd {
    server: Server,
    user: String,
    client_key: PathBuf,
}

impl Sshd {
    fn start() -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install the Debian package openssh-server (bash scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        let keygen = |file: &Path| {
            run(
                Command::new("ssh-keygen")
                    .args(["-q", "-N", "", "-t", "ed25519", "-f"])
                    .arg(file),
                "openssh-client",
            );
        };
        let host_key = d.join("host_key");
        let client_key = d.join("client_key");
        keygen(&host_key);
        keygen(&client_key);
        let authorized = d.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "HostKey {host}\n\
                 AuthorizedKeysFile {authorized}\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PidFile {pid}\n\
                 ListenAddress 127.0.0.1\n",
                host = host_key.display(),
                authorized = authorized.display(),
                pid = d.join("sshd.pid").display(),
            ),
        )
        .unwrap();
        // sshd's privilege separation directory (run as root, it refuses to start without).
        let _ = std::fs::create_dir_all("/run/sshd");
        let user = run(Command::new("id").arg("-un"), "coreutils");
        let server = start_server("sshd", dir, move |port| {
            let mut cmd = Command::new(SSHD);
            cmd.args(["-D", "-e", "-f"])
                .arg(&config)
                .arg("-p")
                .arg(port.to_string());
            cmd
        });
        Sshd {
            server,
            user,
            client_key,
        }
    }

    /// The value of `GIT_SSH_COMMAND`: the client key only, no user configuration, no
    /// known_hosts, no prompts, and the server's port (for scp-like locations, which
    /// cannot name one).
    fn ssh_command(&self) -> String {
        format!(
            "ssh -F /dev/null -i '{}' -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -p {}",
            self.client_key.display(),
            self.server.port
        )
    }
}

/// Sets an environment variable for as long as it lives, then restores it.
struct EnvVar {
    name: &'static str,
    old: Option<std::ffi::OsString>,
}

impl EnvVar {
    /// The caller holds [`serial`]: no other test of this binary runs meanwhile.
    fn set(name: &'static str, value: &str) -> EnvVar {
        let old = std::env::var_os(name);
        std::env::set_var(name, value);
        EnvVar { name, old }
    }
}

impl Drop for EnvVar {
    fn drop(&mut self) {
        match &self.old {
            Some(v) => std::env::set_var(self.name, v),
            None => std::env::remove_var(self.name),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn git_protocol() {
    let _serial = serial();
    let e = env();
    let origin = make_origin(&e.root);
    let daemon = git_daemon(origin.bare.parent().unwrap());
    let location = format!("git://127.0.0.1:{}/repo.git", daemon.port);
    block_on(check_transport(&e, &location, &origin, true));
    // A repository the daemon does not have is an error quoting the URL.
    let missing = format!("git://127.0.0.1:{}/missing.git", daemon.port);
    let err =
        block_on(GitKind::default().resolve(&e.ctx, new_source(&missing, None, None))).unwrap_err();
    assert!(err.to_string().contains(&missing), "{err}");
}

#[path = "support/git_server.rs"]
#[cfg(feature = "https")]
mod git_server;

/// Plain `http://` (no TLS) through the smart HTTP protocol of `git http-backend`.
#[cfg(feature = "https")]
#[test]
fn smart_http() {
    let _serial = serial();
    let e = env();
    let origin = make_origin(&e.root);
    let server = git_server::GitServer::start(false, None);
    // The server serves its own bare clone of the work tree, out of reach of `git push`.
    server.serve("user/repo", &origin.work);
    let location = format!("{}/user/repo", server.base());
    assert!(location.starts_with("http://127.0.0.1:"), "{location}");
    block_on(check_transport(&e, &location, &origin, false));
    let missing = format!("{}/user/missing", server.base());
    let err =
        block_on(GitKind::default().resolve(&e.ctx, new_source(&missing, None, None))).unwrap_err();
    assert!(err.to_string().contains(&missing), "{err}");
}

/// A busy smart-HTTP server (`503` or `429` with `Retry-After`) is waited out: the kind
/// asks it whether it is busy before fetching, and asks again once it said to come back,
/// never sooner (the server flags a request that comes back early); one that stays busy,
/// or asks for more than a minute, is an error naming the status, without a fetch.
#[cfg(feature = "https")]
#[test]
fn a_busy_smart_http_server_is_waited_out() {
    let _serial = serial();
    let e = env();
    let origin = make_origin(&e.root);
    let server = git_server::GitServer::start(false, None);
    server.serve("user/repo", &origin.work);
    let location = format!("{}/user/repo", server.base());
    let tip = git(&origin.work, &["rev-parse", "trunk"]);
    let spec = block_on(resolve(&e.ctx, &location, None, None));
    let source = GitKind::default().open(&e.ctx, &spec).unwrap();
    let since = |from: usize| server.requests()[from..].to_vec();
    for status in ["503", "429"] {
        // Busy for two requests, each saying to come back in a second.
        let from = server.requests().len();
        server.set("busy", &format!("2 1 {status}"));
        let latest = block_on(source.latest()).unwrap_or_else(|e| panic!("{status}: {e:#}"));
        assert_eq!(latest.version.hex(), tip, "{status}");
        let log = since(from);
        let refs = "GET /user/repo/info/refs?service=git-upload-pack";
        assert_eq!(
            log[..3],
            [
                format!("{refs} {status}"),
                format!("{refs} {status}"),
                format!("{refs} 200"),
            ],
            "{status}: asked three times, then fetched: {log:?}"
        );
        assert!(
            log[3..].iter().any(|l| l.starts_with("POST ")),
            "{status}: then fetched: {log:?}"
        );
        assert!(
            !log.iter().any(|l| l.ends_with(" early")),
            "{status}: came back before Retry-After: {log:?}"
        );
    }
    // Busy for good: asked three times (two waits), no fetch, an error naming the status.
    let from = server.requests().len();
    server.set("busy", "100 1 503");
    let err = format!("{:#}", block_on(source.latest()).unwrap_err());
    assert!(err.contains("busy") && err.contains("503"), "{err}");
    assert!(err.contains(&location), "{err}");
    let log = since(from);
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(!log.iter().any(|l| l.ends_with(" early")), "{log:?}");
    // Asked to come back in two minutes: no waiting that long, an error at once.
    let from = server.requests().len();
    server.set("busy", "100 120 503");
    let err = format!("{:#}", block_on(source.latest()).unwrap_err());
    assert!(err.contains("Retry-After: 120"), "{err}");
    assert_eq!(since(from).len(), 1, "{:?}", since(from));
    server.clear("busy");
    assert_eq!(block_on(source.latest()).unwrap().version.hex(), tip);
}

/// A smart-HTTP server that trickles the pack (a byte every 0.2 s, after the first 200)
/// passes every read timeout; the fetch is given up once it makes no progress for the
/// network timeout (gix sees the pack a packet of up to 65,520 bytes at a time, so a
/// trickle below that per timeout is no progress), with an error that says so.
#[cfg(feature = "https")]
#[test]
fn a_trickling_smart_http_server_is_given_up() {
    let _serial = serial();
    let mut e = env();
    e.ctx.network_timeout = Duration::from_secs(2);
    let origin = make_origin(&e.root);
    let server = git_server::GitServer::start(false, None);
    server.serve("user/repo", &origin.work);
    let location = format!("{}/user/repo", server.base());
    server.set("trickle", "0.2 200");
    let err = block_on(GitKind::default().resolve(&e.ctx, new_source(&location, None, None)))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("no progress for 2s"), "{msg}");
    assert!(msg.contains(&location), "{msg}");
    let log = server.requests();
    assert!(
        log.iter()
            .any(|l| l.starts_with("POST ") && l.ends_with(" trickled")),
        "the pack was being trickled: {log:?}"
    );
    // The same server at full speed serves the same fetch.
    server.clear("trickle");
    let spec = block_on(resolve(&e.ctx, &location, None, None));
    assert_eq!(spec.tag.as_deref(), Some("trunk"));
}

/// Without the `https` feature there is no HTTP transport: `http://` fails before any
/// connection, saying which feature to enable.
#[cfg(not(feature = "https"))]
#[test]
fn smart_http_needs_the_https_feature() {
    let _serial = serial();
    let e = env();
    // Port 1 on loopback: nothing is sent, and nothing listens there anyway.
    let location = "http://127.0.0.1:1/user/repo";
    let err =
        block_on(GitKind::default().resolve(&e.ctx, new_source(location, None, None))).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(location), "{msg}");
    assert!(msg.contains("feature \"https\""), "{msg}");
}

/// ssh through the `ssh` program that gix runs, told by `GIT_SSH_COMMAND` (which the git
/// kind passes on as `core.sshCommand`) which key to use.
#[test]
fn ssh() {
    let _serial = serial();
    let e = env();
    let origin = make_origin(&e.root);
    let sshd = Sshd::start();
    let _ssh_command = EnvVar::set("GIT_SSH_COMMAND", &sshd.ssh_command());
    let path = origin.bare.display().to_string();
    // An ssh:// URL with the port in it, then the scp-like form (port from GIT_SSH_COMMAND).
    let url = format!("ssh://{}@127.0.0.1:{}{path}", sshd.user, sshd.server.port);
    block_on(check_transport(&e, &url, &origin, true));
    let scp_like = format!("{}@127.0.0.1:{path}", sshd.user);
    block_on(check_transport(&e, &scp_like, &origin, true));
    // A path with no repository: the error quotes the location.
    let missing = format!("{}@127.0.0.1:{}/missing.git", sshd.user, e.root.display());
    let err =
        block_on(GitKind::default().resolve(&e.ctx, new_source(&missing, None, None))).unwrap_err();
    assert!(err.to_string().contains(&missing), "{err}");
}
