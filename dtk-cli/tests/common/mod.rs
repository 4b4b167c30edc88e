//! Helpers shared by the CLI tests: a project in a temp dir, the real `dkt` binary, and
//! git repositories made with the real `git`.
#![allow(dead_code)]

pub mod serve;
pub mod world;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Env {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub out: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    /// Assert success and return stdout.
    #[track_caller]
    pub fn ok(&self) -> String {
        assert!(
            self.out.status.success(),
            "expected success, got {:?}\nstdout:\n{}\nstderr:\n{}",
            self.out.status,
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }
    /// Assert exit code `code` and return stderr.
    #[track_caller]
    pub fn fails(&self, code: i32) -> String {
        assert_eq!(
            self.code(),
            code,
            "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self.stderr()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok())
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", self.stdout()))
    }
}

pub fn dkt_bin() -> &'static str {
    env!("CARGO_BIN_EXE_dkt")
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A new env with an initialized project.
    pub fn project() -> Env {
        let e = Env::new();
        e.dkt(&["init"]).ok();
        e
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(dkt_bin());
        c.current_dir(self.path())
            .env_remove("DKT_GITHUB_TOKEN")
            .env_remove("DKT_DOCKER_TOKEN")
            .env("DKT_LOG", "warn");
        c
    }

    pub fn dkt(&self, args: &[&str]) -> Run {
        Run {
            out: self.cmd().args(args).output().unwrap(),
        }
    }

    /// The metadata repository's commit count.
    pub fn commits(&self) -> usize {
        let out = git(
            self.path(),
            &["--git-dir", ".dkt/.git", "rev-list", "--count", "main"],
        );
        out.trim().parse().unwrap()
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }
}

/// Run git in `dir` with a fixed identity; returns stdout.
#[track_caller]
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A git repository at `dir` with the design's layout: `v1/pitfall/pitfall` (a script)
/// and a README, on branch `master`, two commits. Returns the commit ids, newest first.
pub fn pinata_repo(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir.join("v1/pitfall")).unwrap();
    git(dir, &["init", "-q", "-b", "master"]);
    std::fs::write(dir.join("README.md"), "pinata\n").unwrap();
    std::fs::write(
        dir.join("v1/pitfall/pitfall"),
        "#!/bin/sh\necho \"pitfall $*\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("v1/pitfall/pitfall"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "first"]);
    std::fs::write(dir.join("README.md"), "pinata v2\n").unwrap();
    git(dir, &["commit", "-q", "-am", "second"]);
    git(dir, &["log", "--format=%H"])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Sources `in` (a directory holding `a.txt`) and `out` (an empty directory) in `e`.
pub fn setup_io(e: &Env) {
    e.write("in/a.txt", "hello\n");
    std::fs::create_dir_all(e.path().join("out")).unwrap();
    e.dkt(&["source", "add", "in", "in"]).ok();
    e.dkt(&["source", "add", "out", "out"]).ok();
}

/// Wait (at most a minute) until `f` holds, checking every 50 ms; panics naming `what`.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A node's runs as `dkt --json node log` lists them, newest first.
pub fn runs(e: &Env, node: &str) -> Vec<serde_json::Value> {
    e.dkt(&["--json", "node", "log", node])
        .json()
        .as_array()
        .unwrap()
        .clone()
}

/// The statuses of a node's runs, newest first.
pub fn statuses(e: &Env, node: &str) -> Vec<String> {
    runs(e, node)
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect()
}

/// The latest version of source `name`, from `dkt --json source list`.
pub fn latest(e: &Env, name: &str) -> String {
    let list = e.dkt(&["--json", "source", "list"]).json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no source {name}: {list}"))["latest"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The design's pipeline in `e`: pinata (git, `pinata-src`) / pitfall (its sub-path
/// `v1/pitfall`) and dmg (path) -> a node -> tests (path, `results`), run once. Returns
/// what `dkt node run` printed (the node's short ID).
pub fn design_pipeline(e: &Env) -> String {
    pinata_repo(&e.path().join("pinata-src"));
    e.write("dmg/2246.dmg", "dmg\n");
    std::fs::create_dir_all(e.path().join("results")).unwrap();
    e.dkt(&["source", "add", "pinata", "pinata-src"]).ok();
    e.dkt(&["source", "add", "pitfall", "pinata", "-p", "v1/pitfall"])
        .ok();
    e.dkt(&["source", "add", "dmg", "dmg"]).ok();
    e.dkt(&["source", "add", "tests", "results"]).ok();
    e.dkt(&[
        "node",
        "run",
        "--input=dmg,pitfall",
        "--output=tests",
        "${pitfall:ROOT}/pitfall ${dmg:ROOT} > ${tests:ROOT}/out",
    ])
    .ok()
    .trim()
    .to_owned()
}

/// An emptied scratch area kept for the next run: `.dkt/tmp/free-<k>` holding only an
/// empty `work/`.
pub fn free_scratch(p: &std::path::Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("free-"))
        && std::fs::read_dir(p).is_ok_and(|d| {
            d.flatten()
                .map(|e| e.path())
                .collect::<Vec<_>>()
                .iter()
                .all(|w| {
                    w.ends_with("work")
                        && std::fs::read_dir(w).is_ok_and(|mut w| w.next().is_none())
                })
        })
}
