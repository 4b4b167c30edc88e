//! Sharing a project between copies: `dkt remote`, `fetch`, `push`, `pull` (a record-level
//! merge), `status`, on real git remotes (a bare repository, a path, `git daemon`).

mod common;
use common::world::{world, World};
use common::*;
use serde_json::Value;
use std::path::Path;

/// The tree of a project's records: two copies with the same tree hold the same records.
fn records_tree(e: &Env) -> String {
    git(
        e.path(),
        &["--git-dir", ".dkt/.git", "rev-parse", "main^{tree}"],
    )
    .trim()
    .to_owned()
}

fn commit_upstream(w: &World, text: &str) -> String {
    std::fs::write(w.upstream.join("README.md"), text).unwrap();
    git(&w.upstream, &["commit", "-q", "-am", text]);
    git(&w.upstream, &["rev-parse", "HEAD"]).trim().to_owned()
}

#[test]
fn a_clone_tracks_its_origin_and_locations_inside_the_project_are_relative() {
    let w = world();
    let remotes = w.b.dkt(&["--json", "remote", "list"]).json();
    assert_eq!(remotes[0]["name"], "origin");
    // `out` is stored relative to the project, so each copy finds it under its own root.
    let stored = git(
        w.b.path(),
        &[
            "--git-dir",
            ".dkt/.git",
            "grep",
            "-h",
            "location",
            "main",
            "--",
            "sources",
        ],
    );
    assert!(stored.contains("\"./out\""), "{stored}");
    let list = w.b.dkt(&["--json", "source", "list"]).json();
    let out = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "out")
        .unwrap();
    let shown = Path::new(out["location"].as_str().unwrap());
    assert_eq!(
        shown.canonicalize().unwrap(),
        w.b.path().join("out").canonicalize().unwrap()
    );
    // The copy signs with a key of its own, recorded in its first commit: the only one
    // the hub does not have yet.
    let status = w.b.dkt(&["--json", "status"]).json();
    assert_eq!(status["remotes"][0]["unpushed"], 1, "{status}");
    assert_eq!(status["remotes"][0]["unpulled"], 0, "{status}");
    let head = git(
        w.b.path(),
        &["--git-dir", ".dkt/.git", "log", "-1", "--format=%s", "main"],
    );
    assert!(head.starts_with("signing: key"), "{head}");
    let key_a = w.a.dkt(&["--json", "key", "show"]).json();
    let key_b = w.b.dkt(&["--json", "key", "show"]).json();
    assert_ne!(
        key_a["fingerprint"], key_b["fingerprint"],
        "{key_a} {key_b}"
    );
    // Bad input is refused, changing nothing.
    let err = w.b.dkt(&["remote", "add", "bad/name", "x"]).fails(2);
    assert!(err.contains("bad/name"), "{err}");
    let err =
        w.b.dkt(&[
            "remote",
            "add",
            "tok",
            "https://ghp_secret@example.invalid/x.git",
        ])
        .fails(2);
    assert!(
        !err.contains("ghp_secret") && err.contains("credentials"),
        "{err}"
    );
    let err = w.b.dkt(&["push", "nowhere"]).fails(2);
    assert!(err.contains("nowhere"), "{err}");
    // A remote that cannot be reached: exit 1, naming the remote and what git said.
    w.b.dkt(&["remote", "add", "gone", "/nonexistent/hub.git"])
        .ok();
    let err = w.b.dkt(&["fetch", "gone"]).fails(1);
    assert!(
        err.contains("remote \"gone\"") && err.contains("/nonexistent/hub.git"),
        "{err}"
    );
    w.b.dkt(&["remote", "rm", "gone"]).ok();
    assert_eq!(
        w.b.dkt(&["--json", "remote", "list"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn two_copies_merge_record_by_record_in_either_order() {
    let w = world();
    let (a, b) = (&w.a, &w.b);
    // Each copy can pull from the other directly.
    a.dkt(&["remote", "add", "b", b.path().to_str().unwrap()])
        .ok();
    b.dkt(&["remote", "add", "a", a.path().to_str().unwrap()])
        .ok();
    // Both poll the same new upstream commit, define the same node and run it; A also
    // defines another node; both pin `up`, to different commits (a real conflict).
    let old = latest(a, "up");
    let new = commit_upstream(&w, "three");
    for e in [a, b] {
        e.dkt(&["source", "update", "up"]).ok();
        assert_eq!(latest(e, "up"), format!("sha1:{new}"));
        e.dkt(&[
            "node",
            "run",
            "--input=up",
            "--output=out",
            "cp ${up:ROOT}/README.md ${out:ROOT}/README.md",
        ])
        .ok();
    }
    a.dkt(&["node", "run", "--input=up", "ls ${up:ROOT} > /dev/null"])
        .ok();
    a.dkt(&["source", "pin", "up", &old[5..13]]).ok();
    b.dkt(&["source", "pin", "up", &new[..8]]).ok();
    let (ta, tb) = (records_tree(a), records_tree(b));
    assert_ne!(ta, tb);

    // Merge both ways from the diverged states: B into a copy of A, A into B. The same
    // records either way.
    let a2 = Env::new();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(a.path().join("."))
        .arg(a2.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let pulled_into_a = a2.dkt(&["--json", "pull", "b"]).json();
    let pulled_into_b = b.dkt(&["--json", "pull", "a"]).json();
    assert_eq!(pulled_into_a["how"], "merged", "{pulled_into_a}");
    assert_eq!(pulled_into_b["how"], "merged", "{pulled_into_b}");
    assert_eq!(records_tree(&a2), records_tree(b), "merging is commutative");
    a.dkt(&["pull", "b"]).ok();
    assert_eq!(records_tree(a), records_tree(b));

    // The same node run on both sides under one run ID became two attempts.
    for pulled in [&pulled_into_a, &pulled_into_b] {
        assert_eq!(
            pulled["renumbered"].as_array().unwrap().len(),
            1,
            "{pulled}"
        );
        let conflicts = pulled["conflicts"].as_array().unwrap();
        assert_eq!(conflicts.len(), 1, "only the pin conflicts: {pulled}");
        assert_eq!(conflicts[0]["what"], "pinned of source up");
        let values: Vec<&str> = conflicts[0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(values.iter().any(|v| v.contains(&old[5..])), "{values:?}");
        assert!(values.iter().any(|v| v.contains(&new)), "{values:?}");
    }
    let nodes = a.dkt(&["--json", "node", "list"]).json();
    assert_eq!(nodes.as_array().unwrap().len(), 2, "{nodes}");
    let node = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["spec"]["command"].to_string().contains("cp "))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for e in [a, b] {
        let statuses = statuses(e, &node);
        assert_eq!(statuses, ["success", "success"], "two attempts kept");
    }

    // The conflict shows in status until a command changes the record again.
    let status = a.dkt(&["status"]).ok();
    assert!(status.contains("CONFLICT pinned of source up"), "{status}");
    a.dkt(&["source", "pin", "up", &new[..8]]).ok();
    let status = a.dkt(&["--json", "status"]).json();
    assert_eq!(status["conflicts"], Value::Array(vec![]), "{status}");

    // Provenance survives on both sides, with the same root digest.
    let out = latest(a, "out");
    let target = format!("out:{}", &out[4..12]);
    let root = |e: &Env| {
        let text = e.dkt(&["inspect", &target]).ok();
        text.lines()
            .find(|l| l.contains("root record digest"))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(!root(a).is_empty());
    assert_eq!(root(a), root(b));
    for e in [a, b] {
        let r = e.dkt(&["--json", "verify", &target]);
        assert_eq!(r.code(), 0, "{}", r.stdout());
        let git_dir = e.path().join(".dkt/.git");
        git(
            e.path(),
            &["--git-dir", git_dir.to_str().unwrap(), "fsck", "--strict"],
        );
    }
}

#[test]
fn a_push_is_refused_until_what_the_remote_has_is_merged() {
    let w = world();
    let (a, b) = (&w.a, &w.b);
    commit_upstream(&w, "three");
    a.dkt(&["source", "update", "up"]).ok();
    b.dkt(&["source", "freeze", "out"]).ok();
    a.dkt(&["push"]).ok();
    let hub_before = git(
        Path::new(&w.hub),
        &["--git-dir", &w.hub, "rev-parse", "main"],
    );
    let err = b.dkt(&["push"]).fails(2);
    assert!(err.contains("dkt pull origin"), "{err}");
    let hub_after = git(
        Path::new(&w.hub),
        &["--git-dir", &w.hub, "rev-parse", "main"],
    );
    assert_eq!(hub_before, hub_after, "a refused push changes nothing");
    let fetched = b.dkt(&["--json", "fetch"]).json();
    assert!(fetched["incoming"].as_u64().unwrap() > 0, "{fetched}");
    let status = b.dkt(&["--json", "status"]).json();
    assert!(status["remotes"][0]["unpulled"].as_u64().unwrap() > 0);
    b.dkt(&["pull"]).ok();
    b.dkt(&["push"]).ok();
    a.dkt(&["pull"]).ok();
    assert_eq!(records_tree(a), records_tree(b));
    assert_eq!(latest(b, "up"), latest(a, "up"));
    let list = a.dkt(&["--json", "source", "list"]).json();
    let out = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "out")
        .unwrap();
    assert_eq!(out["frozen"], true, "B's freeze reached A");
    // Nothing new: pull and push say so.
    assert!(a.dkt(&["pull"]).ok().contains("up to date"));
    assert!(b.dkt(&["pull"]).ok().contains("up to date"));
}

#[test]
fn three_copies_pushing_to_one_remote_lose_nothing() {
    let w = world();
    let c = Env::new();
    c.dkt(&["clone", &format!("file://{}", w.hub), "."]).ok();
    std::fs::create_dir_all(c.path().join("out")).unwrap();
    let copies = [&w.a, &w.b, &c];
    // Each copy defines its own nodes, then all push at once, pulling and pushing again
    // when refused.
    for (i, e) in copies.iter().enumerate() {
        for j in 0..2 {
            e.dkt(&[
                "node",
                "run",
                "--input=up",
                &format!("echo copy{i} node{j}"),
            ])
            .ok();
        }
    }
    std::thread::scope(|s| {
        for e in copies {
            s.spawn(move || {
                for _ in 0..20 {
                    if e.dkt(&["push"]).code() == 0 {
                        return;
                    }
                    e.dkt(&["pull"]).ok();
                }
                panic!("could not push in 20 rounds");
            });
        }
    });
    for e in copies {
        e.dkt(&["pull"]).ok();
    }
    let hub_nodes = {
        let d = Env::new();
        d.dkt(&["clone", &w.hub, "."]).ok();
        d.dkt(&["--json", "node", "list"]).json()
    };
    assert_eq!(hub_nodes.as_array().unwrap().len(), 6, "{hub_nodes}");
    for e in copies {
        assert_eq!(
            e.dkt(&["--json", "node", "list"])
                .json()
                .as_array()
                .unwrap()
                .len(),
            6
        );
    }
}

/// `git daemon` serving `dir` on a loopback port, with pushes enabled.
struct Daemon(std::process::Child, u16);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn git_daemon(dir: &Path) -> Daemon {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // `git daemon` runs `git-daemon` as its child, which killing `git` would leave
    // behind (holding the port and the test's output): run `git-daemon` itself.
    let exec_path = git(dir, &["--exec-path"]);
    let child = std::process::Command::new(Path::new(exec_path.trim()).join("git-daemon"))
        .args([
            "--reuseaddr",
            "--export-all",
            "--enable=receive-pack",
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            &format!("--base-path={}", dir.display()),
        ])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("git daemon (Debian package git) is needed");
    wait_for("git daemon to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Daemon(child, port)
}

#[test]
fn push_and_pull_over_the_git_protocol_and_a_killed_push_leaves_both_readable() {
    let w = world();
    let hub_dir = Path::new(&w.hub).parent().unwrap().to_owned();
    let daemon = git_daemon(&hub_dir);
    let url = format!("git://127.0.0.1:{}/hub.git", daemon.1);
    w.a.dkt(&["remote", "add", "net", &url]).ok();
    commit_upstream(&w, "three");
    w.a.dkt(&["source", "update", "up"]).ok();
    // A remote added to a project it already has records of (the hub, under another
    // name): the push looks at what it holds first, and goes ahead since it has nothing
    // this project has not merged.
    w.a.dkt(&["push", "net"]).ok();
    w.b.dkt(&["remote", "add", "net", &url]).ok();
    // B has its own key's commit, so this is a merge.
    let pulled = w.b.dkt(&["--json", "pull", "net"]).json();
    assert_eq!(pulled["how"], "merged", "{pulled}");
    assert_eq!(latest(&w.b, "up"), latest(&w.a, "up"));

    // A push killed at some point of its life: both sides stay readable and a push
    // again completes.
    for delay_ms in [0u64, 5, 20, 60] {
        w.b.dkt(&["node", "run", "--input=up", &format!("echo {delay_ms}")])
            .ok();
        let mut child = w.b.cmd().args(["push", "net"]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        git(&hub_dir, &["--git-dir", &w.hub, "fsck", "--strict"]);
        let git_dir = w.b.path().join(".dkt/.git");
        git(
            w.b.path(),
            &["--git-dir", git_dir.to_str().unwrap(), "fsck", "--strict"],
        );
        w.b.dkt(&["status"]).ok();
        w.b.dkt(&["push", "net"]).ok();
    }
    w.a.dkt(&["pull", "net"]).ok();
    assert_eq!(records_tree(&w.a), records_tree(&w.b));
}
