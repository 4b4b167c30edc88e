//! A project whose store was written by the release of store format 2 (the fixture
//! `fixtures/format2.tar.gz`, made by `fixtures/make-format2.sh` with that release's dkt)
//! is upgraded to format 3 when this dkt opens it, and then reads exactly as that release
//! read it: the same sources, versions, runs, manifest (same root digest) and verify
//! result. New work on it records and verifies too.

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

/// Where the fixture project lives (its path sources record absolute locations).
const ROOT: &str = "/tmp/dtk-format2-fixture";

fn dkt(args: &[&str]) -> Run {
    let out = Command::new(dkt_bin())
        .current_dir(ROOT)
        .env("DKT_LOG", "warn")
        .env("TMPDIR", Path::new(ROOT).join("tmp"))
        .args(args)
        .output()
        .unwrap();
    Run { out }
}

fn expected(name: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join("expected").join(name)).unwrap()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON ({e}): {text}"))
}

#[test]
fn a_format_2_store_is_upgraded_and_reads_the_same() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format2.tar.gz");
    let _ = std::fs::remove_dir_all(ROOT);
    let status = Command::new("tar")
        .arg("-C")
        .arg("/")
        .arg("-xzf")
        .arg(&fixture)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(expected("format"), "dtk-store 2\n");
    let git_dir = Path::new(ROOT).join(".dkt/.git");
    let commits = |dir: &Path| -> usize {
        git(
            dir,
            &["--git-dir", ".dkt/.git", "rev-list", "--count", "main"],
        )
        .trim()
        .parse()
        .unwrap()
    };
    let before = commits(Path::new(ROOT));

    // Every listing reads as the format-2 release printed it.
    let list = dkt(&["--json", "source", "list"]).ok();
    assert_eq!(json(&list), json(&expected("source-list.json")));
    assert_eq!(commits(Path::new(ROOT)), before + 1, "one upgrade commit");
    let format = git(
        Path::new(ROOT),
        &["--git-dir", ".dkt/.git", "show", "main:format"],
    );
    assert_eq!(format, "dtk-store 4\n");
    for s in ["pinata", "pitfall", "dmg", "tests", "scratch"] {
        let log = dkt(&["--json", "source", "log", s]).ok();
        assert_eq!(
            json(&log),
            json(&expected(&format!("source-log-{s}.json"))),
            "source log {s}"
        );
    }
    let node = expected("node");
    let node = node.trim();
    assert_eq!(
        json(&dkt(&["--json", "node", "log", node]).ok()),
        json(&expected("node-log.json"))
    );
    let target = expected("target");
    let target = target.trim();
    assert_eq!(
        json(&dkt(&["--json", "inspect", target]).ok()),
        json(&expected("inspect.json"))
    );
    let head = dkt(&["inspect", target]).ok();
    assert!(
        head.starts_with(&expected("inspect-head.txt")),
        "same root digest:\n{head}\nvs\n{}",
        expected("inspect-head.txt")
    );
    // Every check the format-2 release made passes the same way; the checks added since
    // (a version against its run, logs, indexes, links, origins) pass or say why they
    // cannot be made on an old record.
    let now = json(&dkt(&["--json", "verify", target]).ok());
    let then = json(&expected("verify.json"));
    assert_eq!(now["target"], then["target"]);
    let checks = now["checks"].as_array().unwrap();
    for old in then["checks"].as_array().unwrap() {
        assert!(checks.contains(old), "{old} is no longer made:\n{now:#}");
    }
    for c in checks {
        assert_ne!(c["result"], "mismatch", "{c}");
    }
    assert!(checks.len() > then["checks"].as_array().unwrap().len());
    git(
        Path::new(ROOT),
        &["--git-dir", git_dir.to_str().unwrap(), "fsck", "--strict"],
    );
    // Opening again changes nothing.
    dkt(&["source", "list"]).ok();
    assert_eq!(commits(Path::new(ROOT)), before + 1);

    // New work on the upgraded store: new versions are recorded in format 3 and verify.
    dkt(&["source", "thaw", "dmg"]).ok();
    dkt(&["source", "unpin", "pinata"]).ok();
    std::fs::write(Path::new(ROOT).join("dmg/Docker.dmg"), "build 3\n").unwrap();
    dkt(&["run"]).ok();
    let list = json(&dkt(&["--json", "source", "list"]).ok());
    let tests = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "tests")
        .unwrap()["latest"]
        .as_str()
        .unwrap()
        .to_owned();
    let target = format!("tests:{}", &tests[4..12]);
    assert_ne!(target, expected("target").trim());
    dkt(&["verify", &target]).ok();
    assert_eq!(
        json(&dkt(&["--json", "source", "log", "dmg"]).ok())
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // The temporary directory dtk made is still known as its own, and removed with it.
    let scratch = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "scratch")
        .unwrap()["location"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(Path::new(&scratch).is_dir());
    dkt(&["source", "rm", "scratch"]).ok();
    assert!(!Path::new(&scratch).exists());
    git(
        Path::new(ROOT),
        &["--git-dir", git_dir.to_str().unwrap(), "fsck", "--strict"],
    );
    std::fs::remove_dir_all(ROOT).unwrap();
}
