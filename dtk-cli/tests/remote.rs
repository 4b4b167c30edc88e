//! Workers on other machines: a real PostgreSQL run queue (Debian's `postgresql`, started
//! by each test with `initdb` in a temp dir, as the unprivileged `postgres` user when the
//! tests run as root), a content-addressed artifact store in a directory, `git daemon` for
//! an input the workers fetch themselves, and workers that run as another Unix user with
//! no access to the project directory (when the tests run as root, as CI does).

mod common;
#[path = "../../dtk-sources/tests/moto/mod.rs"]
mod moto;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use common::*;

/// The database password: a canary that must never appear in a log, a record or history.
const PASSWORD: &str = "pg-canary-Zq81xv";
/// The unprivileged user workers run as (made by the test when missing, as root).
const WORKER_USER: &str = "dkt-test-worker";

fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.retain(|b| b.join("postgres").exists());
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is needed (Debian package postgresql: /usr/lib/postgresql/*/bin/postgres); `bash scripts/test.sh` installs it"
        )
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `(uid, gid)` of `user`.
fn ids_of(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").arg(flag).arg(user).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// The identity workers run as: another user when root (made if missing), else ours.
fn worker_ids() -> Option<(u32, u32)> {
    static IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *IDS.get_or_init(|| {
        if !is_root() {
            eprintln!(
                "note: not root, so workers run as this user (the test that they cannot read the project needs root)"
            );
            return None;
        }
        if ids_of(WORKER_USER).is_none() {
            let made = Command::new("useradd")
                .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin"])
                .arg(WORKER_USER)
                .status()
                .expect("useradd (Debian package passwd) is needed to make the worker's user");
            assert!(made.success() || ids_of(WORKER_USER).is_some());
        }
        Some(ids_of(WORKER_USER).expect("the worker's user exists"))
    })
}

/// Give `path` to the workers' user.
fn give(path: &Path) {
    if let Some((uid, gid)) = worker_ids() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

/// `dkt` as the workers' user can run it: the built binary when that user can reach it,
/// else one copy (made once, kept for later runs) in the temporary directory.
fn shared_dkt() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let built = PathBuf::from(dkt_bin());
        let Some((uid, gid)) = worker_ids() else {
            return built;
        };
        let reachable = Command::new("test")
            .arg("-x")
            .arg(&built)
            .uid(uid)
            .gid(gid)
            .status()
            .is_ok_and(|s| s.success());
        if reachable {
            return built;
        }
        let md = std::fs::metadata(&built).unwrap();
        let stamp = md
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("dkt-test-bin-{}-{stamp}", md.len()));
        let bin = dir.join("dkt");
        if !bin.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let tmp = dir.join(format!("dkt.{}", std::process::id()));
            std::fs::copy(&built, &tmp).unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&tmp, &bin).unwrap();
        }
        bin
    })
}

/// A PostgreSQL server of the test's own, on a free loopback port, password auth.
struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// `-c` settings of the server's own (TLS).
    settings: Vec<String>,
}

impl Postgres {
    fn start() -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("dkt-pg-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("pw"), PASSWORD).unwrap();
        let owner = if is_root() {
            let ids = ids_of("postgres")
                .expect("the `postgres` user is needed (Debian package postgresql makes it)");
            for p in [dir.path().to_owned(), dir.path().join("pw")] {
                std::os::unix::fs::chown(&p, Some(ids.0), Some(ids.1)).unwrap();
            }
            Some(ids)
        } else {
            None
        };
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-U",
                "dkt",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", dir.path().join("pw").display()))
            .stdout(Stdio::null());
        if let Some((uid, gid)) = owner {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut pg = Postgres {
            dir,
            port,
            child: None,
            settings: Vec::new(),
        };
        pg.launch();
        pg
    }

    /// A server that also speaks TLS, with a certificate for 127.0.0.1 signed by a test CA
    /// (`ca.pem` in its directory; made with `openssl`).
    fn start_tls() -> Postgres {
        let mut pg = Postgres::start();
        pg.stop();
        let d = pg.dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl (Debian package openssl) is needed to make the test CA");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"],
                &ec[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-subj",
                    "/CN=dtk test CA",
                    "-days",
                    "2",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"],
                &ec[..],
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        std::fs::set_permissions(d.join("server.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        if is_root() {
            let (uid, gid) = ids_of("postgres").unwrap();
            for f in ["server.key", "server.crt"] {
                std::os::unix::fs::chown(d.join(f), Some(uid), Some(gid)).unwrap();
            }
        }
        pg.settings = vec![
            "ssl=on".to_owned(),
            format!("ssl_cert_file={}", d.join("server.crt").display()),
            format!("ssl_key_file={}", d.join("server.key").display()),
        ];
        pg.launch();
        pg
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(pg_bin().join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "max_connections=200"])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.path().join("log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            );
        if is_root() {
            let (uid, gid) = ids_of("postgres").unwrap();
            cmd.uid(uid).gid(gid);
        }
        self.child = Some(cmd.spawn().expect("postgres starts"));
        let port = self.port;
        wait_for("postgres to accept connections", || {
            Command::new(pg_bin().join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        });
    }

    /// Stop the server (a fast shutdown: sessions are cut).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's PID.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("postgres://dkt@127.0.0.1:{}/postgres", self.port)
    }

    fn psql(&self, sql: &str) -> std::process::Output {
        Command::new(pg_bin().join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "dkt"])
            .args(["-d", "postgres", "-Atc", sql])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap()
    }

    /// [`sql`](Self::sql), empty when it fails (the schema is not there yet).
    fn try_sql(&self, sql: &str) -> String {
        String::from_utf8_lossy(&self.psql(sql).stdout).into_owned()
    }

    /// Run SQL with psql; rows as `|`-separated lines.
    fn sql(&self, sql: &str) -> String {
        let out = self.psql(sql);
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A worker process (as the workers' user), killed when dropped.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    /// `host:pid`, as the worker names itself in run records.
    fn id(&self) -> String {
        let uname = Command::new("uname").arg("-n").output().unwrap();
        format!(
            "{}:{}",
            String::from_utf8_lossy(&uname.stdout).trim(),
            self.child.id()
        )
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A worker's home: its own directory and its secrets (PGPASSWORD and `extra`).
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new(extra: &[(&str, &str)]) -> Home {
        let dir = tempfile::Builder::new()
            .prefix("dkt-worker-")
            .tempdir()
            .unwrap();
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).unwrap();
        let mut all = vec![("PGPASSWORD", PASSWORD)];
        all.extend_from_slice(extra);
        for (k, v) in all {
            let f = secrets.join(k);
            std::fs::write(&f, v).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
            give(&f);
        }
        std::fs::create_dir(dir.path().join("work")).unwrap();
        for p in [dir.path().to_owned(), secrets, dir.path().join("work")] {
            give(&p);
        }
        Home { dir }
    }

    fn spawn(&self, pg: &Postgres, labels: &str, jobs: usize) -> Worker {
        let log = self.dir.path().join(format!("log-{}", free_port()));
        let mut cmd = Command::new(shared_dkt());
        cmd.args(["worker", "--queue", &pg.url(), "--labels", labels])
            .args(["-j", &jobs.to_string()])
            .arg("--secrets")
            .arg(self.dir.path().join("secrets"))
            .arg("--dir")
            .arg(self.dir.path().join("work"))
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("DKT_LOG", "warn")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ));
        if let Some((uid, gid)) = worker_ids() {
            cmd.uid(uid).gid(gid);
        }
        Worker {
            child: cmd.spawn().unwrap(),
            log,
        }
    }
}

/// A project whose runs go through `pg`, its artifact store in a directory the workers
/// can write to.
struct Coordinator {
    e: Env,
    _artifacts: tempfile::TempDir,
    store: PathBuf,
}

fn coordinator(pg: &Postgres, lease: &str) -> Coordinator {
    let e = Env::project();
    // Nobody else may enter the project (so a worker that needed it would fail).
    std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let artifacts = tempfile::Builder::new()
        .prefix("dkt-art-")
        .tempdir()
        .unwrap();
    let store = artifacts.path().join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::set_permissions(artifacts.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    give(&store);
    let config = e.path().join(".dkt/config");
    let mut text = std::fs::read_to_string(&config).unwrap_or_default();
    text.push_str(&format!(
        "\n[queue]\nurl = \"{}\"\n\n[artifacts]\nurl = \"file://{}\"\n\n[worker]\nlease = \"{lease}\"\n",
        pg.url(),
        store.display()
    ));
    std::fs::write(&config, text).unwrap();
    set_secret(&e, "PGPASSWORD", PASSWORD);
    Coordinator {
        e,
        _artifacts: artifacts,
        store,
    }
}

/// A git repository served by `git daemon` on loopback (the workers fetch it themselves).
struct Upstream {
    _dir: tempfile::TempDir,
    daemon: Child,
    url: String,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn upstream() -> Upstream {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("code");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("c.txt"), "code v1\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "v1"]);
    let port = free_port();
    // `git daemon` runs `git-daemon` as its child, which killing `git` would leave behind
    // (listening, after the test): run `git-daemon` itself.
    let exec_path = String::from_utf8(
        Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("git is needed")
            .stdout,
    )
    .unwrap();
    let daemon = Command::new(Path::new(exec_path.trim()).join("git-daemon"))
        .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", dir.path().display()))
        .arg(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .expect("git daemon (Debian package git) is needed");
    wait_for("git daemon to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Upstream {
        _dir: dir,
        daemon,
        url: format!("git://127.0.0.1:{port}/code"),
    }
}

/// The successful runs of every node, by node ID: (run, worker, inputs).
fn successes(e: &Env) -> Vec<(String, serde_json::Value)> {
    let nodes = e.dkt(&["--json", "node", "list"]).json();
    let mut out = Vec::new();
    for n in nodes.as_array().unwrap() {
        let id = n["id"].as_str().unwrap().to_owned();
        for r in runs(e, &id) {
            if r["status"] == "success" {
                out.push((id.clone(), r));
            }
        }
    }
    out
}

/// `dkt secret set NAME` with `value` on standard input.
fn set_secret(e: &Env, name: &str, value: &str) {
    use std::io::Write;
    let mut child = e
        .cmd()
        .args(["secret", "set", name])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(value.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "dkt secret set {name}");
}

/// Where source `name` is.
fn location(e: &Env, name: &str) -> PathBuf {
    let list = e.dkt(&["--json", "source", "list"]).json();
    let s = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no source {name}: {list}"));
    PathBuf::from(s["location"].as_str().unwrap())
}

/// Everything the metadata history holds, as text (for canary scans).
fn history_text(e: &Env) -> String {
    git(
        e.path(),
        &[
            "--git-dir",
            ".dkt/.git",
            "log",
            "-p",
            "--all",
            "--format=%B",
        ],
    )
}

#[test]
fn a_pipeline_runs_on_three_workers_by_label_and_they_never_touch_the_project() {
    let pg = Postgres::start();
    let up = upstream();
    let c = coordinator(&pg, "30s");
    let e = &c.e;
    e.write("data/d.txt", "data v1\n");
    // Ten build nodes (any linux builder) and ten test nodes (an osx test host), as in
    // the design: build_i reads the data and the code, test_i reads build_i.
    let mut yml = format!(
        "sources:\n  - name: data\n    location: ./data\n  - name: code\n    location: {}\n",
        up.url
    );
    for i in 0..10 {
        yml.push_str(&format!("  - name: b{i}\n  - name: t{i}\n"));
    }
    yml.push_str("nodes:\n");
    for i in 0..10 {
        yml.push_str(&format!(
            "  - labels: [build]\n    inputs: [data, code]\n    outputs: [b{i}]\n    run:\n      - cat ${{data:ROOT}}/d.txt ${{code:ROOT}}/c.txt > ${{b{i}:ROOT}}/built.txt\n      - echo {i} >> ${{b{i}:ROOT}}/built.txt\n"
        ));
        yml.push_str(&format!(
            "  - labels: [osx, test]\n    inputs: [b{i}]\n    outputs: [t{i}]\n    run:\n      - wc -l < ${{b{i}:ROOT}}/built.txt > ${{t{i}:ROOT}}/lines\n      - id -u >> ${{t{i}:ROOT}}/lines\n"
        ));
    }
    e.write("pipeline.yml", &yml);
    e.dkt(&["apply", "pipeline.yml"]).ok();

    let builders = Home::new(&[]);
    let testers = Home::new(&[]);
    let w1 = builders.spawn(&pg, "build,linux", 2);
    let w2 = builders.spawn(&pg, "build", 1);
    let w3 = testers.spawn(&pg, "osx,test", 2);
    // The workers' user cannot read the project: whatever they do, they do without it.
    if let Some((uid, gid)) = worker_ids() {
        let peek = Command::new("cat")
            .arg(e.path().join(".dkt/config"))
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap();
        assert!(
            !peek.status.success(),
            "the workers' user can read the project"
        );
    }
    wait_for("three workers in `dkt worker list`", || {
        let list = e.dkt(&["--json", "worker", "list"]);
        list.code() == 0 && list.json().as_array().unwrap().len() == 3
    });
    let workers = e.dkt(&["--json", "worker", "list"]).json();
    let labels_of = |w: &Worker| -> Vec<String> {
        workers
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == w.id())
            .unwrap_or_else(|| panic!("{} not listed: {workers}", w.id()))["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(labels_of(&w3), ["osx", "test"]);
    assert_eq!(labels_of(&w1), ["build", "linux"]);

    let ran = e.dkt(&["--json", "run"]);
    let report = ran.json();
    assert_eq!(
        report["items"].as_array().unwrap().len(),
        20,
        "{report}\n{}\n{}\n{}",
        w1.output(),
        w2.output(),
        w3.output()
    );
    // Each node ran once, on a worker with its labels; the outputs are what the command
    // made on the worker.
    let done = successes(e);
    assert_eq!(done.len(), 20, "{done:?}");
    let builder_ids = [w1.id(), w2.id()];
    let nodes = e.dkt(&["--json", "node", "list"]).json();
    for (node, run) in &done {
        let spec = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"].as_str() == Some(node))
            .unwrap();
        let worker = run["worker"].as_str().unwrap();
        if spec["spec"]["labels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "osx")
        {
            assert_eq!(worker, w3.id(), "{run}");
        } else {
            assert!(builder_ids.iter().any(|b| b == worker), "{run}");
        }
    }
    let built = std::fs::read_to_string(location(e, "b3").join("built.txt")).unwrap();
    assert_eq!(built, "data v1\ncode v1\n3\n");
    let lines = std::fs::read_to_string(location(e, "t3").join("lines")).unwrap();
    let expected_uid = worker_ids().map_or_else(
        // SAFETY: getuid has no preconditions.
        || unsafe { libc::getuid() },
        |(uid, _)| uid,
    );
    assert_eq!(lines, format!("3\n{expected_uid}\n"));
    // Provenance through the queue is whole: verify checks t3 back to the data and code.
    let latest_t3 = latest(e, "t3");
    e.dkt(&["verify", &format!("t3:{}", &latest_t3[4..12])])
        .ok();
    // A second pass has nothing to do.
    let again = e.dkt(&["--json", "run"]).json();
    assert!(again["items"].as_array().unwrap().is_empty(), "{again}");
    // The queue forgets what it delivered; no password anywhere.
    assert_eq!(pg.sql("SELECT count(*) FROM dkt_runs").trim(), "0");
    assert!(!history_text(e).contains(PASSWORD));
    for w in [&w1, &w2, &w3] {
        assert!(!w.output().contains(PASSWORD), "{}", w.output());
    }
}

#[test]
fn cancel_missing_secrets_and_corrupt_artifacts_are_clear() {
    let pg = Postgres::start();
    let c = coordinator(&pg, "30s");
    let e = &c.e;
    setup_io(e);
    let canary = "node-secret-canary-7Hq2";
    set_secret(e, "NODE_TOKEN", canary);

    // A worker without the secret the command uses: the run fails naming it.
    let lacking = Home::new(&[]);
    let mut w = lacking.spawn(&pg, "linux", 1);
    let node_cmd = "echo token=${NODE_TOKEN}; cp ${in:ROOT}/a.txt ${out:ROOT}/a.txt";
    let failed = e.dkt(&["node", "run", "--input=in", "--output=out", node_cmd]);
    let err = failed.fails(1);
    assert!(err.contains("NODE_TOKEN"), "{err}");
    assert!(err.contains("does not have"), "{err}");
    w.kill();
    // A worker with it: the run succeeds, the value is redacted from the log.
    let having = Home::new(&[("NODE_TOKEN", canary)]);
    let w = having.spawn(&pg, "linux", 1);
    let node = e.dkt(&["--json", "node", "list"]).json()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    e.dkt(&["node", "rerun", &node]).ok();
    let ok = runs(e, &node)[0].clone();
    assert_eq!(ok["status"], "success", "{ok}\n{}", w.output());
    let shown = e.dkt(&["node", "show", ok["id"].as_str().unwrap()]).ok();
    assert!(shown.contains("token=***"), "{shown}");
    assert!(!history_text(e).contains(canary));
    assert!(!w.output().contains(canary));

    // An artifact changed in the store is refused, named, and shipped again next time.
    let versions = c.store.join("versions/path/md5");
    let tar = std::fs::read_dir(&versions)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tar"))
        .expect("the input was shipped");
    let mut bytes = std::fs::read(&tar).unwrap();
    let at = bytes.windows(6).position(|w| w == b"hello\n").unwrap();
    bytes[at] = b'J';
    std::fs::write(&tar, bytes).unwrap();
    e.dkt(&["node", "rerun", &node]).fails(1);
    let bad = runs(e, &node)[0].clone();
    assert_eq!(bad["status"], "failure");
    let why = bad["error"].as_str().unwrap();
    assert!(
        why.contains("is corrupt") && why.contains("refused"),
        "{bad}"
    );
    e.dkt(&["node", "rerun", &node]).ok();
    assert_eq!(runs(e, &node)[0]["status"], "success");

    // Cancel: a running run is stopped by its worker and recorded interrupted.
    std::fs::create_dir_all(e.path().join("slow")).unwrap();
    e.dkt(&["source", "add", "slow", "slow"]).ok();
    let mut slow = e.cmd();
    slow.args([
        "node",
        "run",
        "--input=in",
        "--output=slow",
        "echo started; sleep 60; echo never > ${slow:ROOT}/never",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut slow = slow.spawn().unwrap();
    let mut running = String::new();
    wait_for("the slow run to be claimed", || {
        running = pg.try_sql("SELECT id FROM dkt_runs WHERE state = 'running'");
        !running.trim().is_empty()
    });
    let cancelled = e.dkt(&["node", "cancel", &running.trim()[..8]]).ok();
    assert!(cancelled.contains("cancelled"), "{cancelled}");
    let status = slow.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let rec = e
        .dkt(&["--json", "node", "show", &running.trim()[..8]])
        .json();
    assert_eq!(rec["status"], "interrupted", "{rec}");
    assert!(!e.path().join("slow/never").exists());
    // Bad IDs are clear.
    let unknown = e.dkt(&["node", "cancel", "ffffffff"]).fails(2);
    assert!(unknown.contains("ffffffff"), "{unknown}");

    // The dashboard cancels a run a remote worker executes, through the queue.
    let dash = common::serve::Server::start(e, &[]);
    let token = std::fs::read_to_string(e.path().join(".dkt/secrets/DKT_SERVE_TOKEN")).unwrap();
    let slow_node = e
        .dkt(&["--json", "node", "show", &running.trim()[..8]])
        .json()["node"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut slow = e
        .cmd()
        .args(["node", "rerun", &slow_node])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut second = String::new();
    wait_for("the second slow run to be claimed", || {
        second = pg.try_sql("SELECT id FROM dkt_runs WHERE state = 'running'");
        !second.trim().is_empty()
    });
    let second = second.trim().to_owned();
    assert_ne!(second, running.trim());
    let r = dash.post_with_token(
        &format!("/api/runs/{}/cancel", &second[..8]),
        token.trim(),
        "{}",
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.body.contains("\"via\":\"queue\""), "{}", r.body);
    assert_eq!(slow.wait().unwrap().code(), Some(1));
    let rec = e.dkt(&["--json", "node", "show", &second[..8]]).json();
    assert_eq!(rec["status"], "interrupted", "{rec}");
    assert!(!e.path().join("slow/never").exists());
    // An ended run cannot be cancelled.
    let again = dash.post_with_token(
        &format!("/api/runs/{}/cancel", &second[..8]),
        token.trim(),
        "{}",
    );
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(!r.body.contains(PASSWORD) && !again.body.contains(PASSWORD));
    drop(dash);
    drop(w);
}

#[test]
fn the_database_restarting_mid_pass_is_ridden_out() {
    let mut pg = Postgres::start();
    let c = coordinator(&pg, "30s");
    let e = &c.e;
    e.write("data/d.txt", "x\n");
    let mut yml = String::from("sources:\n  - name: data\n    location: ./data\n");
    for i in 0..6 {
        yml.push_str(&format!("  - name: o{i}\n"));
    }
    yml.push_str("nodes:\n");
    for i in 0..6 {
        yml.push_str(&format!(
            "  - inputs: [data]\n    outputs: [o{i}]\n    run:\n      - sleep 1\n      - cp ${{data:ROOT}}/d.txt ${{o{i}:ROOT}}/d{i}.txt\n"
        ));
    }
    e.write("pipeline.yml", &yml);
    e.dkt(&["apply", "pipeline.yml"]).ok();
    let home = Home::new(&[]);
    let w = home.spawn(&pg, "linux", 2);
    let mut pass = e.cmd();
    pass.args(["--json", "run"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let pass = pass.spawn().unwrap();
    wait_for("a run to be claimed", || {
        !pg.try_sql("SELECT id FROM dkt_runs WHERE state = 'running'")
            .trim()
            .is_empty()
    });
    pg.stop();
    std::thread::sleep(std::time::Duration::from_secs(2));
    pg.launch();
    let out = pass.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        w.output()
    );
    assert_eq!(successes(e).len(), 6);
    for i in 0..6 {
        let f = location(e, &format!("o{i}")).join(format!("d{i}.txt"));
        assert_eq!(std::fs::read_to_string(f).unwrap(), "x\n");
    }
}

#[test]
fn killed_workers_and_coordinators_never_record_a_run_twice_or_publish_a_dead_attempt() {
    let pg = Postgres::start();
    let c = coordinator(&pg, "2s");
    let e = &c.e;
    e.write("data/d.txt", "round 0\n");
    let n = 8;
    let mut yml = String::from("sources:\n  - name: data\n    location: ./data\n");
    for i in 0..n {
        yml.push_str(&format!("  - name: o{i}\n"));
    }
    yml.push_str("nodes:\n");
    for i in 0..n {
        yml.push_str(&format!(
            "  - inputs: [data]\n    outputs: [o{i}]\n    run:\n      - sleep 0.$((RANDOM % 9 + 1))\n      - cp ${{data:ROOT}}/d.txt ${{o{i}:ROOT}}/d.txt\n"
        ));
    }
    e.write("pipeline.yml", &yml);
    e.dkt(&["apply", "pipeline.yml"]).ok();
    let home = Home::new(&[]);
    let seed: u64 = std::env::var("DKT_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("seed {seed} (DKT_SOAK_SEED to repeat)");
    let mut rng = seed;
    let mut next = move |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let mut kills = (0, 0);
    for round in 1..=4 {
        e.write("data/d.txt", &format!("round {round}\n"));
        let mut workers = vec![home.spawn(&pg, "linux", 2), home.spawn(&pg, "linux", 2)];
        let mut daemon = e.cmd();
        daemon
            .args(["daemon", "--interval", "1s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut daemon = daemon.spawn().unwrap();
        // Kill at random moments: a worker (then start another), or the coordinator.
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(200 + next(1200)));
            if next(3) == 0 {
                let _ = daemon.kill();
                let _ = daemon.wait();
                kills.1 += 1;
                let mut again = e.cmd();
                again
                    .args(["daemon", "--interval", "1s"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                daemon = again.spawn().unwrap();
            } else {
                let i = next(workers.len() as u64) as usize;
                workers[i].kill();
                kills.0 += 1;
                workers[i] = home.spawn(&pg, "linux", 2);
            }
        }
        let _ = daemon.kill();
        let _ = daemon.wait();
        // A clean pass settles what the kills left: every node ends up current.
        let settle = e.dkt(&["--json", "run"]);
        assert_eq!(settle.code(), 0, "{}\n{}", settle.stdout(), settle.stderr());
        drop(workers);
    }
    eprintln!("killed {} workers and {} coordinators", kills.0, kills.1);
    assert!(kills.0 + kills.1 >= 12);
    // Every node: at most one success per input set; every interrupted attempt published
    // nothing; every output's versions were made by a recorded run.
    let nodes = e.dkt(&["--json", "node", "list"]).json();
    for node in nodes.as_array().unwrap() {
        let id = node["id"].as_str().unwrap();
        let all = runs(e, id);
        let mut seen = std::collections::BTreeSet::new();
        for r in &all {
            if r["status"] == "success" {
                assert!(
                    seen.insert(r["inputs"].to_string()),
                    "node {id} succeeded twice on {}: {}",
                    r["inputs"],
                    all.iter()
                        .map(|r| format!(
                            "\n  attempt {} on {} {} by {} queued {} ended {} {}",
                            r["attempt"],
                            &r["inputs"][0]["version"].as_str().unwrap_or("")[4..12],
                            r["status"],
                            r["worker"],
                            r["queued_ms"],
                            r["ended_ms"],
                            r["error"]
                        ))
                        .collect::<String>()
                );
            } else {
                assert!(
                    r["outputs"].as_array().is_none_or(|o| o.is_empty()),
                    "an attempt that did not succeed published: {r}"
                );
            }
        }
        // One success per round's data.
        assert_eq!(
            seen.len(),
            4,
            "node {id}: {}\n{}",
            all.iter()
                .map(|r| format!(
                    "\n  attempt {} on {} {} by {} queued {} ended {} {}",
                    r["attempt"],
                    &r["inputs"][0]["version"].as_str().unwrap_or("")[4..12],
                    r["status"],
                    r["worker"],
                    r["queued_ms"],
                    r["ended_ms"],
                    r["error"]
                ))
                .collect::<String>(),
            e.dkt(&["source", "log", "data"]).stdout()
        );
    }
    for i in 0..n {
        let name = format!("o{i}");
        let f = location(e, &name).join("d.txt");
        assert_eq!(std::fs::read_to_string(f).unwrap(), "round 4\n");
        let v = latest(e, &name);
        e.dkt(&["verify", &format!("{name}:{}", &v[4..12])]).ok();
    }
    let fsck = Command::new("git")
        .args(["--git-dir", ".dkt/.git", "fsck", "--strict"])
        .current_dir(e.path())
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
}

#[test]
fn queue_settings_refuse_passwords_and_a_wrong_password_fails_fast() {
    let pg = Postgres::start();
    let e = Env::project();
    // A password in the URL is refused without being echoed.
    let url = format!("postgres://dkt:{PASSWORD}@127.0.0.1:{}/postgres", pg.port);
    let err = e.dkt(&["worker", "--queue", &url]).fails(2);
    assert!(err.contains("PGPASSWORD"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
    let config = e.path().join(".dkt/config");
    std::fs::write(&config, format!("[queue]\nurl = \"{url}\"\n")).unwrap();
    let err = e.dkt(&["source", "list"]).fails(2);
    assert!(err.contains("[queue] url"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
    // A wrong password is the database's clear refusal, at once (not retried).
    std::fs::write(&config, format!("[queue]\nurl = \"{}\"\n", pg.url())).unwrap();
    let mut list = e.cmd();
    list.args(["worker", "list"]).env("PGPASSWORD", "wrong");
    let out = list.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(err.contains(&pg.url()), "{err}");
    // Not a postgres URL.
    std::fs::write(&config, "[queue]\nurl = \"mysql://h/db\"\n").unwrap();
    let err = e.dkt(&["source", "list"]).fails(2);
    assert!(err.contains("mysql://h/db"), "{err}");
}

#[test]
fn artifacts_travel_through_an_s3_store() {
    const KEY_ID: &str = "AKIAREMOTETESTKEY000";
    const SECRET: &str = "remote-s3-canary-secret-42";
    let m = moto::Moto::start();
    m.create_bucket("art");
    let pg = Postgres::start();
    let c = coordinator(&pg, "30s");
    let e = &c.e;
    let config = e.path().join(".dkt/config");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("url = \"file://{}\"", c.store.display()),
        "url = \"s3://art/dkt\"",
    );
    std::fs::write(
        &config,
        format!(
            "{text}\n[kind.s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\n",
            m.endpoint
        ),
    )
    .unwrap();
    set_secret(e, "AWS_ACCESS_KEY_ID", KEY_ID);
    set_secret(e, "AWS_SECRET_ACCESS_KEY", SECRET);
    setup_io(e);
    let home = Home::new(&[
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
    ]);
    let w = home.spawn(&pg, "linux", 1);
    e.dkt(&[
        "node",
        "run",
        "--input=in",
        "--output=out",
        "tr a-z A-Z < ${in:ROOT}/a.txt > ${out:ROOT}/A.txt",
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/A.txt")).unwrap(),
        "HELLO\n",
        "{}",
        w.output()
    );
    // The input went up once, content-addressed; the run's output was taken back.
    let keys = m.keys("art", "dkt/");
    assert!(
        keys.iter()
            .any(|k| k.starts_with("dkt/versions/path/md5/") && k.ends_with(".tar")),
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k.starts_with("dkt/runs/")), "{keys:?}");
    assert!(!w.output().contains(SECRET));
    assert!(!history_text(e).contains(SECRET));
}

#[test]
fn tls_to_the_database_verifies_the_server() {
    let pg = Postgres::start_tls();
    let url = format!("{}?sslmode=require", pg.url());
    let ca = pg.dir.path().join("ca.pem");
    let e = Env::new();
    // Without the CA, the server's certificate is refused, and said so.
    let mut list = e.cmd();
    list.args(["worker", "list", "--queue", &url])
        .env("PGPASSWORD", PASSWORD)
        .env_remove("PGSSLROOTCERT");
    let out = list.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate"), "{err}");
    // With it, a worker connects over TLS (the server says so).
    let mut worker = e.cmd();
    worker
        .args(["worker", "--queue", &url, "--labels", "tls"])
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLROOTCERT", &ca)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut worker = worker.spawn().unwrap();
    wait_for("the worker's TLS session", || {
        pg.try_sql(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE application_name = 'dkt' AND ssl",
        )
        .trim()
            != "0"
            && !pg.try_sql("SELECT 1").is_empty()
    });
    let listed = {
        let mut list = e.cmd();
        list.args(["--json", "worker", "list", "--queue", &url])
            .env("PGPASSWORD", PASSWORD)
            .env("PGSSLROOTCERT", &ca);
        Run {
            out: list.output().unwrap(),
        }
        .json()
    };
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let _ = worker.kill();
    let _ = worker.wait();
}

#[test]
fn a_run_whose_worker_dies_runs_again_on_another_in_the_same_pass() {
    let pg = Postgres::start();
    let c = coordinator(&pg, "2s");
    let e = &c.e;
    setup_io(e);
    e.write(
        "pipeline.yml",
        "nodes:\n  - inputs: [in]\n    outputs: [out]\n    run:\n      - sleep 3\n      - cp ${in:ROOT}/a.txt ${out:ROOT}/a.txt\n",
    );
    e.dkt(&["apply", "pipeline.yml"]).ok();
    let home = Home::new(&[]);
    let mut first = home.spawn(&pg, "linux", 1);
    let mut pass = e.cmd();
    pass.args(["--json", "run"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let pass = pass.spawn().unwrap();
    wait_for("the first worker to hold the run", || {
        pg.try_sql("SELECT worker FROM dkt_runs WHERE state = 'running'")
            .trim()
            == first.id()
    });
    let lost = first.id();
    first.kill();
    let second = home.spawn(&pg, "linux", 1);
    let out = pass.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{report}");
    let ran = &report["items"][0]["outcome"]["ran"];
    assert_eq!(ran["status"], "success", "{report}");
    assert_eq!(ran["attempt"], 1, "{report}");
    assert_eq!(ran["worker"], second.id(), "{report}");
    let node = report["items"][0]["node"].as_str().unwrap();
    let dead = runs(e, &node[..8])
        .into_iter()
        .find(|r| r["attempt"] == 0)
        .unwrap();
    assert_eq!(dead["status"], "interrupted", "{dead}");
    assert_eq!(dead["worker"], lost.as_str(), "{dead}");
    assert!(dead["error"]
        .as_str()
        .unwrap()
        .contains("stopped renewing its lease"));
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/a.txt")).unwrap(),
        "hello\n"
    );
}

impl Home {
    /// `dkt --json worker key` as the worker would run it (the key made on first ask, in
    /// its directory).
    fn key(&self) -> serde_json::Value {
        let mut cmd = Command::new(shared_dkt());
        cmd.args(["--json", "worker", "key", "--dir"])
            .arg(self.dir.path().join("work"))
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path());
        if let Some((uid, gid)) = worker_ids() {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "dkt worker key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// Install (or drop, with `None`) a trigger that changes what a worker sends before the
/// coordinator reads it: `set` is the jsonb path and `value` the new value.
fn tamper(pg: &Postgres, change: Option<(&str, &str)>) {
    pg.sql("DROP TRIGGER IF EXISTS dkt_tamper ON dkt_runs");
    if let Some((path, value)) = change {
        pg.sql(&format!(
            "CREATE OR REPLACE FUNCTION dkt_tamper() RETURNS trigger AS $$ BEGIN
               IF NEW.state = 'done' AND NEW.result IS NOT NULL THEN
                 NEW.result := jsonb_set(NEW.result, '{path}', to_jsonb('{value}'::text));
               END IF;
               RETURN NEW;
             END $$ LANGUAGE plpgsql"
        ));
        pg.sql(
            "CREATE TRIGGER dkt_tamper BEFORE UPDATE ON dkt_runs FOR EACH ROW EXECUTE FUNCTION dkt_tamper()",
        );
    }
}

#[test]
fn workers_sign_their_results_and_the_record_names_their_key() {
    let pg = Postgres::start();
    let c = coordinator(&pg, "30s");
    let e = &c.e;
    setup_io(e);
    let home = Home::new(&[]);
    let key = home.key();
    let fingerprint = key["fingerprint"].as_str().unwrap().to_owned();
    let line = key["allowed_signers"].as_str().unwrap().to_owned();
    assert!(fingerprint.starts_with("SHA256:"), "{key}");
    assert!(
        line.contains("namespaces=\"dtk-worker-result\" ssh-ed25519 "),
        "{line}"
    );
    let key_file = home.dir.path().join("work/worker-key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The private key's body: it must appear nowhere but in its file.
    let private = std::fs::read_to_string(&key_file).unwrap();
    let body: String = private
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let secret_part = &body[body.len() - 40..];
    assert_eq!(home.key()["fingerprint"], fingerprint, "the same key");

    let w = home.spawn(&pg, "linux", 1);
    let cmd = "cat ${in:ROOT}/a.txt; date +%s%N > ${out:ROOT}/stamp";
    e.dkt(&["node", "run", "--input=in", "--output=out", cmd])
        .ok();
    let node = e.dkt(&["--json", "node", "list"]).json()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = runs(e, &node)[0].clone();
    assert_eq!(run["status"], "success", "{run}\n{}", w.output());
    let run_id = run["id"].as_str().unwrap().to_owned();
    let rec = e.dkt(&["--json", "node", "show", &run_id]).json();
    assert_eq!(rec["worker_key"], fingerprint.as_str(), "{rec}");
    assert_eq!(rec["worker"], w.id());
    let st = &rec["worker_signature"]["statement"];
    assert_eq!(st["type"], "dtk-worker-result/1");
    assert_eq!(st["run"], run_id.as_str());
    assert_eq!(st["ending"], "success");
    assert_eq!(st["log"], rec["log_digest"]);
    assert!(
        st["outputs"]["out"]
            .as_str()
            .unwrap()
            .starts_with("blake3:"),
        "{st}"
    );
    let shown = e.dkt(&["node", "show", &run_id]).ok();
    assert!(
        shown.contains(&format!("signed   by worker key {fingerprint}")),
        "{shown}"
    );
    let manifest = e.dkt(&["--json", "inspect", &run_id]).json();
    assert!(manifest.to_string().contains(&fingerprint), "{manifest}");
    // dkt verify checks it again, and says which key signed.
    let verified = e.dkt(&["verify", &run_id]).ok();
    assert!(
        verified.contains(&format!("signed by worker key {fingerprint}")),
        "{verified}"
    );
    let report = e.dkt(&["--json", "verify", &run_id]).json();
    let check = |name: &str| -> serde_json::Value {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"].as_str().unwrap().starts_with(name))
            .cloned()
            .unwrap_or_else(|| panic!("no check {name}: {report}"))
    };
    assert_eq!(check("signed by worker key")["result"], "ok");
    assert_eq!(check("worker statement")["result"], "ok");
    assert_eq!(check("worker log")["result"], "ok");
    assert_eq!(check("worker key trusted")["result"], "skipped");
    // The independent verifier (written from docs/format.md) checks the same signature.
    let py = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/verifier/dtk_verify.py"
        ))
        .arg("--git-dir")
        .arg(e.path().join(".dkt/.git"))
        .args([run_id.as_str(), "--json"])
        .output()
        .expect("python3 runs the independent verifier");
    let py_report: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap_or_else(|err| {
        panic!(
            "independent verifier: {err}: {}{}",
            String::from_utf8_lossy(&py.stdout),
            String::from_utf8_lossy(&py.stderr)
        )
    });
    assert_eq!(py.status.code(), Some(0), "{py_report}");
    let py_checks = py_report["checks"].as_array().unwrap();
    for name in [
        format!("signed by worker key {fingerprint}"),
        "worker statement".to_owned(),
        "worker log".to_owned(),
    ] {
        assert!(
            py_checks
                .iter()
                .any(|c| c["check"] == name.as_str() && c["result"] == "ok"),
            "{name}: {py_report}"
        );
    }

    // The coordinator trusts only the workers its file lists.
    let config = e.path().join(".dkt/config");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("[queue]\n", "[queue]\nworkers = \"workers.allowed\"\n", 1),
    )
    .unwrap();
    std::fs::write(e.path().join("workers.allowed"), format!("{line}\n")).unwrap();
    let report = e.dkt(&["--json", "verify", &run_id]).json();
    let trusted = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["check"]
                .as_str()
                .unwrap()
                .starts_with("worker key trusted")
        })
        .cloned()
        .unwrap();
    assert_eq!(trusted["result"], "ok", "{trusted}");
    let stamp = || std::fs::read_to_string(e.path().join("out/stamp")).unwrap();
    let published = stamp();
    e.dkt(&["node", "rerun", &node]).ok();
    assert_eq!(runs(e, &node)[0]["status"], "success");
    assert_ne!(stamp(), published);
    let published = stamp();

    // A key the file does not list: refused, nothing published.
    let other = Home::new(&[]);
    let other_line = other.key()["allowed_signers"].as_str().unwrap().to_owned();
    std::fs::write(e.path().join("workers.allowed"), format!("{other_line}\n")).unwrap();
    let err = e.dkt(&["node", "rerun", &node]).fails(1);
    let refused = runs(e, &node)[0].clone();
    assert_eq!(refused["status"], "failure", "{refused}");
    let why = refused["error"].as_str().unwrap();
    assert!(
        why.contains(&fingerprint) && why.contains("does not list") && why.contains(&w.id()),
        "{why}\n{err}"
    );
    assert_eq!(stamp(), published, "nothing was published");
    assert!(refused.get("worker_key").is_none(), "{refused}");
    // ... and dkt verify now says the earlier run's key is not trusted.
    e.dkt(&["verify", &run_id]).fails(1);
    std::fs::write(e.path().join("workers.allowed"), format!("{line}\n")).unwrap();

    // What the worker sent, changed on the way (its log, an output's archive digest):
    // refused naming the worker, nothing published.
    for (path, value) in [
        ("{log}", "forged log"),
        (
            "{ending,outputs,out,blake3}",
            "blake3:0000000000000000000000000000000000000000000000000000000000000000",
        ),
    ] {
        tamper(&pg, Some((path, value)));
        e.dkt(&["node", "rerun", &node]).fails(1);
        let bad = runs(e, &node)[0].clone();
        assert_eq!(bad["status"], "failure", "{bad}");
        let why = bad["error"].as_str().unwrap();
        assert!(
            why.contains("does not match its signature") && why.contains(&w.id()),
            "{path}: {why}"
        );
        assert_eq!(stamp(), published, "nothing was published");
    }
    tamper(&pg, None);
    e.dkt(&["node", "rerun", &node]).ok();
    assert_eq!(runs(e, &node)[0]["status"], "success");

    // The private key is nowhere but in its file.
    let everything = format!(
        "{}{}{}",
        history_text(e),
        w.output(),
        e.dkt(&["--json", "node", "show", &run_id]).ok()
    );
    assert!(!everything.contains(secret_part));
    assert!(!everything.contains("PRIVATE KEY"));
    drop(w);
}

#[test]
fn a_sandboxed_node_runs_sandboxed_on_a_remote_worker() {
    let pg = Postgres::start();
    let c = coordinator(&pg, "30s");
    let e = &c.e;
    e.write("data/d.txt", "data\n");
    e.write(
        "pipeline.yml",
        "sources:\n  - name: data\n    location: ./data\n  - name: o\n  - name: plain\nnodes:\n  - inputs: [data]\n    outputs: [o]\n    sandbox: true\n    run:\n      - cp ${data:ROOT}/d.txt ${o:ROOT}/d.txt\n      - (echo x > ${data:ROOT}/new && echo wrote || echo denied) > ${o:ROOT}/input\n      - (echo x > /tmp/x && echo wrote || echo denied) > ${o:ROOT}/tmp\n      - (env | grep -c PGPASSWORD || true) > ${o:ROOT}/env\n  - inputs: [data]\n    outputs: [plain]\n    run:\n      - (echo x > ${data:ROOT}/new && echo wrote || echo denied) > ${plain:ROOT}/input\n",
    );
    e.dkt(&["apply", "pipeline.yml"]).ok();
    let home = Home::new(&[]);
    let _w = home.spawn(&pg, "linux", 1);
    wait_for("a worker in `dkt worker list`", || {
        let list = e.dkt(&["--json", "worker", "list"]);
        list.code() == 0 && list.json().as_array().unwrap().len() == 1
    });
    let ran = e.dkt(&["--json", "run"]);
    assert_eq!(ran.code(), 0, "{}\n{}", ran.stdout(), ran.stderr());
    let o = location(e, "o");
    let read = |f: &str| std::fs::read_to_string(o.join(f)).unwrap();
    assert_eq!(read("d.txt"), "data\n");
    assert_eq!(read("input"), "denied\n");
    assert_eq!(read("tmp"), "wrote\n");
    assert_eq!(read("env"), "0\n", "the worker's environment stays out");
    // The same write, unsandboxed on the same worker, works: the sandbox denied it.
    assert_eq!(
        std::fs::read_to_string(location(e, "plain").join("input")).unwrap(),
        "wrote\n"
    );
}
