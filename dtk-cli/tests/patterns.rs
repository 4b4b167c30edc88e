//! Tag patterns: a source whose tag is a glob follows every matching branch or tag, and
//! a node consuming it runs once per new tip (with `${SRC:REF}` naming the ref).

mod common;
use common::*;

use std::path::Path;

/// Commit a change to `README.md` on `branch` (created from `from` when given).
fn commit_on(repo: &Path, branch: &str, from: Option<&str>, text: &str) -> String {
    match from {
        Some(f) => git(repo, &["checkout", "-q", "-b", branch, f]),
        None => git(repo, &["checkout", "-q", branch]),
    };
    std::fs::write(repo.join("README.md"), text).unwrap();
    git(repo, &["commit", "-q", "-am", text]);
    let id = git(repo, &["rev-parse", "HEAD"]).trim().to_owned();
    git(repo, &["checkout", "-q", "master"]);
    id
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The rows of `dkt source log NAME` as (ID, REF), newest first; checks the header.
fn log_refs(e: &Env, name: &str) -> Vec<(String, String)> {
    let log = e.dkt(&["source", "log", name]).ok();
    let mut lines = log.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "REF", "FULL"], "{log}");
    lines
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[2].to_owned(), cols[1].to_owned())
        })
        .collect()
}

#[test]
fn a_pattern_source_follows_every_matching_branch_as_it_appears_moves_and_goes() {
    let e = Env::project();
    let repo = e.path().join("pinata-src");
    pinata_repo(&repo);
    let r1 = commit_on(&repo, "release/1", Some("master"), "release one\n");
    let r2 = commit_on(&repo, "release/2", Some("master"), "release two\n");
    commit_on(&repo, "feature/x", Some("master"), "feature\n");
    e.dkt(&["source", "add", "pinata", "pinata-src"]).ok();
    let out = e.dkt(&["source", "add", "prs", "pinata:release/*"]).ok();
    assert!(out.contains("release/*"), "{out}");
    let mut refs = log_refs(&e, "prs");
    refs.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        refs,
        [
            (format!("sha1:{r1}"), "release/1".to_owned()),
            (format!("sha1:{r2}"), "release/2".to_owned())
        ]
    );
    // One run per branch tip, each writing under its ref.
    std::fs::create_dir_all(e.path().join("results")).unwrap();
    e.dkt(&["source", "add", "tests", "results"]).ok();
    let node = e
        .dkt(&[
            "node",
            "run",
            "--no-run",
            "--input=prs",
            "--output=tests",
            "mkdir -p \"${tests:ROOT}/${prs:REF}\" && cp \"${prs:ROOT}/README.md\" \"${tests:ROOT}/${prs:REF}/\" && echo \"${prs:COMMIT}\" > \"${tests:ROOT}/${prs:REF}/COMMIT\"",
        ])
        .ok()
        .trim()
        .to_owned();
    e.dkt(&["run"]).ok();
    assert_eq!(statuses(&e, &node), ["success", "success"]);
    let results = e.path().join("results");
    assert_eq!(read(&results.join("release/1/README.md")), "release one\n");
    assert_eq!(read(&results.join("release/2/README.md")), "release two\n");
    assert_eq!(read(&results.join("release/1/COMMIT")).trim(), r1);
    assert!(!results.join("feature").exists());
    // Nothing new: nothing runs.
    e.dkt(&["run"]).ok();
    assert_eq!(runs(&e, &node).len(), 2);

    // release/1 moves, release/3 appears, release/2 is deleted, feature/x moves.
    let r1b = commit_on(&repo, "release/1", None, "release one, fixed\n");
    let r3 = commit_on(&repo, "release/3", Some("master"), "release three\n");
    git(&repo, &["branch", "-D", "release/2"]);
    commit_on(&repo, "feature/x", None, "feature moved\n");
    let up = e.dkt(&["source", "update", "prs"]).ok();
    assert!(up.contains("release/1 moved from"), "{up}");
    assert!(up.contains("release/2 deleted"), "{up}");
    assert!(up.contains("release/3 new"), "{up}");
    assert!(!up.contains("feature"), "{up}");
    let refs = log_refs(&e, "prs");
    assert_eq!(refs.len(), 4, "{refs:?}");
    assert!(refs.contains(&(format!("sha1:{r1b}"), "release/1".to_owned())));
    assert!(refs.contains(&(format!("sha1:{r3}"), "release/3".to_owned())));
    // The pass runs the two new tips, and only them.
    let pass = e.dkt(&["--json", "run"]).json();
    assert_eq!(pass["items"].as_array().unwrap().len(), 2, "{pass}");
    let inputs: Vec<String> = runs(&e, &node)
        .iter()
        .map(|r| r["inputs"][0]["version"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(inputs.len(), 4);
    for v in [&r1, &r2, &r1b, &r3] {
        assert!(inputs.contains(&format!("sha1:{v}")), "{inputs:?}");
    }
    assert_eq!(
        read(&results.join("release/1/README.md")),
        "release one, fixed\n"
    );
    assert_eq!(
        read(&results.join("release/3/README.md")),
        "release three\n"
    );
    // The deleted branch is no longer followed: a new pass runs nothing.
    e.dkt(&["run"]).ok();
    assert_eq!(runs(&e, &node).len(), 4);
    // The state lists the followed refs only.
    let state = e.dkt(&["--json", "source", "update", "prs"]).json();
    assert_eq!(state[0]["refs"], serde_json::json!(null), "{state}");
}

#[test]
fn tags_with_slashes_and_derived_sources_overriding_the_tag() {
    let e = Env::project();
    let repo = e.path().join("pinata-src");
    pinata_repo(&repo);
    let fx = commit_on(&repo, "feature/x", Some("master"), "feature\n");
    git(&repo, &["tag", "beta12", "master~1"]);
    let beta = git(&repo, &["rev-parse", "beta12^{commit}"])
        .trim()
        .to_owned();
    e.dkt(&["source", "add", "pinata", "pinata-src"]).ok();
    // -t with a `/`.
    let j = e
        .dkt(&[
            "--json",
            "source",
            "add",
            "fx",
            "pinata-src",
            "-t",
            "feature/x",
        ])
        .json();
    assert_eq!(j["tag"], "feature/x");
    assert_eq!(latest(&e, "fx"), format!("sha1:{fx}"));
    // A derived source with its own tag, as the design shows.
    let out = e.dkt(&["source", "add", "beta12", "pinata:beta12"]).ok();
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[0], "beta12");
    assert_eq!(row[1], "git");
    assert!(row[2].ends_with("/pinata-src"), "{out}");
    assert_eq!(row[3], "beta12");
    assert_eq!(latest(&e, "beta12"), format!("sha1:{beta}"));
    let j = e.dkt(&["--json", "source", "list"]).json();
    let derived = j
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "beta12")
        .unwrap()
        .clone();
    assert_eq!(derived["tag"], "beta12");
    // -t on a derived source works the same.
    let j = e
        .dkt(&[
            "--json",
            "source",
            "add",
            "fx2",
            "pinata",
            "-t",
            "feature/x",
        ])
        .json();
    assert_eq!(j["tag"], "feature/x");
}

#[test]
fn bad_patterns_are_refused_quoting_them_and_change_nothing() {
    let e = Env::project();
    pinata_repo(&e.path().join("pinata-src"));
    e.write("data/a", "a");
    e.dkt(&["source", "add", "pinata", "pinata-src"]).ok();
    e.dkt(&["source", "add", "data", "data"]).ok();
    let before = e.commits();
    let err = e
        .dkt(&["source", "add", "bad", "pinata-src", "-t", "v[1"])
        .fails(2);
    assert!(err.contains("\"v[1\""), "{err}");
    let err = e.dkt(&["source", "add", "bad", "data:x*"]).fails(2);
    assert!(err.contains("\"x*\""), "{err}");
    let err = e
        .dkt(&["source", "add", "bad", "pinata:beta", "-t", "master"])
        .fails(2);
    assert!(err.contains("\"beta\""), "{err}");
    assert_eq!(e.commits(), before);
    // (By name: a commit ID in the table may well contain "bad".)
    let list = e.dkt(&["--json", "source", "list"]).json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["data", "pinata"], "{list}");
}

#[test]
fn pipeline_files_declare_tag_patterns() {
    let e = Env::project();
    let repo = e.path().join("pinata-src");
    pinata_repo(&repo);
    let r1 = commit_on(&repo, "release/1", Some("master"), "one\n");
    e.write(
        "pipeline.yml",
        "sources:\n  - name: prs\n    location: ./pinata-src\n    tag: 'release/*'\n",
    );
    e.dkt(&["apply", "pipeline.yml"]).ok();
    assert_eq!(
        log_refs(&e, "prs"),
        [(format!("sha1:{r1}"), "release/1".to_owned())]
    );
    // A pattern no branch matches yet is followed from its first match on.
    e.write(
        "pipeline.yml",
        "sources:\n  - name: prs\n    location: ./pinata-src\n    tag: 'release/*'\n  - name: hot\n    location: ./pinata-src\n    tag: 'hotfix/*'\n",
    );
    e.dkt(&["apply", "pipeline.yml"]).ok();
    let up = e.dkt(&["source", "update", "hot"]).ok();
    assert!(up.contains("unchanged"), "{up}");
    let h = commit_on(&repo, "hotfix/a", Some("master"), "hot\n");
    let up = e.dkt(&["source", "update", "hot"]).ok();
    assert!(up.contains("hotfix/a new"), "{up}");
    assert_eq!(latest(&e, "hot"), format!("sha1:{h}"));
}
