//! A git source as a node's output: what the node wrote is committed on the branch and
//! pushed with a lease; a branch that moved meanwhile is a conflict.

mod common;
use common::*;

use std::path::Path;

/// `up.git`, a bare repository with pinata's two commits on `master`, and `work`, a clone
/// of it to push from as another writer would.
fn upstream(e: &Env) -> (std::path::PathBuf, std::path::PathBuf) {
    let src = e.path().join("pinata-src");
    pinata_repo(&src);
    let up = e.path().join("up.git");
    git(e.path(), &["clone", "-q", "--bare", "pinata-src", "up.git"]);
    let work = e.path().join("work");
    git(e.path(), &["clone", "-q", "up.git", "work"]);
    (up, work)
}

fn tip(up: &Path) -> String {
    git(up, &["rev-parse", "refs/heads/master"])
        .trim()
        .to_owned()
}

#[test]
fn a_node_publishes_a_commit_to_a_branch() {
    let e = Env::project();
    let (up, _work) = upstream(&e);
    e.write("in/a.txt", "hello\n");
    e.dkt(&["source", "add", "in", "in"]).ok();
    e.dkt(&["source", "add", "site", "./up.git"]).ok();
    let before = tip(&up);
    std::fs::OpenOptions::new()
        .append(true)
        .open(e.path().join(".dkt/config"))
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(
                b"[kind.git]\nauthor = \"Build Bot <bot@example.com>\"\ncommitter = \"CI <ci@example.com>\"\n",
            )
        })
        .unwrap();
    let r = e.dkt(&[
        "node",
        "run",
        "--input=in",
        "--output=site",
        "cp \"${in:ROOT}/a.txt\" \"${site:ROOT}/a.txt\"",
    ]);
    let node = r.ok().trim().to_owned();
    assert!(r.stderr().contains("success"), "{}", r.stderr());
    let run = &runs(&e, &node)[0];
    let run_id = run["id"].as_str().unwrap().to_owned();
    // The branch moved to a commit on top of the old tip holding the old files and the new.
    let now = tip(&up);
    assert_ne!(now, before);
    assert_eq!(
        git(&up, &["rev-parse", "master^"]).trim(),
        before,
        "committed on top of the tip"
    );
    let files = git(&up, &["ls-tree", "-r", "--name-only", "master"]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        ["README.md", "a.txt", "v1/pitfall/pitfall"]
    );
    assert_eq!(git(&up, &["show", "master:a.txt"]), "hello\n");
    // As the configured identities, with a message naming the run.
    let who = git(
        &up,
        &["log", "-1", "--format=%an <%ae>|%cn <%ce>", "master"],
    );
    assert_eq!(
        who.trim(),
        "Build Bot <bot@example.com>|CI <ci@example.com>"
    );
    let message = git(&up, &["log", "-1", "--format=%B", "master"]);
    assert!(message.contains(&format!("Dkt-Run: {run_id}")), "{message}");
    assert!(
        message.starts_with(&format!("dkt: run {}", &run_id[..8])),
        "{message}"
    );
    // The new commit is the output's version.
    assert_eq!(run["outputs"][0]["version"], format!("sha1:{now}"));
    assert_eq!(latest(&e, "site"), format!("sha1:{now}"));
    // Its Dkt-Manifest trailer is the run's input manifest digest, which anyone holding
    // the run record recomputes.
    let shown = e.dkt(&["--json", "node", "show", &run_id]).json();
    let record: dtk::RunRecord = serde_json::from_value(serde_json::json!({
        "id": shown["id"], "node": shown["node"], "attempt": shown["attempt"],
        "inputs": shown["inputs"], "outputs": shown["outputs"], "status": shown["status"],
        "queued_ms": shown["queued_ms"], "input_digests": shown["input_digests"],
    }))
    .unwrap();
    let manifest = dtk::digest::input_manifest(&record).unwrap();
    assert!(
        manifest.starts_with("blake3:") && manifest.len() == 71,
        "{manifest}"
    );
    assert!(
        message.contains(&format!("\nDkt-Manifest: {manifest}\n")),
        "{message}"
    );
    // `dkt inspect` takes the commit itself and finds its manifest.
    for reference in [now.clone(), format!("sha1:{now}")] {
        let m = e.dkt(&["--json", "inspect", &reference]).json();
        let last = m.as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["source"], "site", "{m}");
        assert_eq!(last["run"], run_id[..8], "{m}");
    }
    let err = e.dkt(&["inspect", &"ab".repeat(20)]).fails(2);
    assert!(err.contains(&"ab".repeat(20)), "{err}");
    // Run again on the same content: nothing to commit, the version stays.
    e.dkt(&["node", "rerun", &node]).ok();
    assert_eq!(tip(&up), now);
    // Another project follows the branch after someone else committed on top, so the run's
    // commit is in its mirror but not in its records: the commit's own trailers name the
    // run, its node and its manifest, which that project has no record of.
    let (_, work) = (&up, _work);
    git(&work, &["pull", "-q", "origin", "master"]);
    std::fs::write(work.join("b.txt"), "by hand\n").unwrap();
    git(&work, &["add", "b.txt"]);
    git(&work, &["commit", "-q", "-m", "by hand"]);
    git(&work, &["push", "-q", "origin", "HEAD:master"]);
    let other = Env::project();
    other
        .dkt(&["source", "add", "site", up.to_str().unwrap()])
        .ok();
    assert_ne!(latest(&other, "site"), format!("sha1:{now}"));
    let err = other.dkt(&["inspect", &now]).fails(2);
    assert!(err.contains(&run_id), "{err}");
    assert!(err.contains("commit trailers"), "{err}");
    assert!(err.contains(&manifest), "{err}");
    // A commit dtk did not make says nothing: it is simply not found.
    let err = other.dkt(&["inspect", &format!("sha1:{before}")]).fails(2);
    assert!(!err.contains(&run_id) && err.contains(&before), "{err}");
}

#[test]
fn a_branch_that_moved_while_the_node_ran_is_a_conflict() {
    let e = Env::project();
    let (up, work) = upstream(&e);
    e.write("in/a.txt", "hello\n");
    e.dkt(&["source", "add", "in", "in"]).ok();
    e.dkt(&["source", "add", "site", "./up.git"]).ok();
    // The command pushes another commit to the branch (the first time only).
    let marker = e.path().join("raced");
    let cmd = format!(
        "cp \"${{in:ROOT}}/a.txt\" \"${{site:ROOT}}/\" && if [ ! -e '{m}' ]; then touch '{m}'; cd '{w}' && echo other > other.txt && git add other.txt && git -c user.name=o -c user.email=o@example.com commit -qm other && git push -q origin master; fi",
        m = marker.display(),
        w = work.display()
    );
    let r = e.dkt(&["node", "run", "--input=in", "--output=site", &cmd]);
    let said = r.fails(1);
    assert!(said.contains("conflict"), "{said}");
    let theirs = tip(&up);
    assert_eq!(
        git(&up, &["log", "-1", "--format=%s", "master"]).trim(),
        "other",
        "the other writer's commit stays the tip: nothing was pushed over it"
    );
    let node = r.stdout().trim().to_owned();
    assert_eq!(statuses(&e, &node), ["conflict"]);
    // rerun on the new version: committed on top of the other writer's commit.
    e.dkt(&["source", "update", "site"]).ok();
    e.dkt(&["node", "rerun", &node]).ok();
    assert_eq!(git(&up, &["rev-parse", "master^"]).trim(), theirs);
    let files = git(&up, &["ls-tree", "-r", "--name-only", "master"]);
    assert!(
        files.contains("other.txt") && files.contains("a.txt"),
        "{files}"
    );
}

#[test]
fn a_sub_path_output_replaces_only_its_sub_tree() {
    let e = Env::project();
    let (up, work) = upstream(&e);
    e.write("in/a.txt", "hello\n");
    e.dkt(&["source", "add", "in", "in"]).ok();
    e.dkt(&["source", "add", "site", "./up.git"]).ok();
    e.dkt(&["source", "add", "pit", "site", "-p", "v1/pitfall"])
        .ok();
    // Another writer commits outside the sub-path: no conflict for it.
    std::fs::write(work.join("README.md"), "elsewhere\n").unwrap();
    git(&work, &["commit", "-qam", "elsewhere"]);
    git(&work, &["push", "-q", "origin", "master"]);
    let r = e.dkt(&[
        "node",
        "run",
        "--input=in",
        "--output=pit",
        "cp \"${in:ROOT}/a.txt\" \"${pit:ROOT}/\"",
    ]);
    r.ok();
    assert!(r.stderr().contains("success"), "{}", r.stderr());
    let files = git(&up, &["ls-tree", "-r", "--name-only", "master"]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        ["README.md", "v1/pitfall/a.txt", "v1/pitfall/pitfall"]
    );
    assert_eq!(git(&up, &["show", "master:README.md"]), "elsewhere\n");
    assert_eq!(
        git(&up, &["log", "-1", "--format=%s", "master^"]).trim(),
        "elsewhere"
    );
}

#[test]
fn a_bad_identity_is_refused_and_nothing_is_pushed() {
    let e = Env::project();
    let (up, _work) = upstream(&e);
    e.write("in/a.txt", "hello\n");
    e.dkt(&["source", "add", "in", "in"]).ok();
    e.dkt(&["source", "add", "site", "./up.git"]).ok();
    let before = tip(&up);
    std::fs::OpenOptions::new()
        .append(true)
        .open(e.path().join(".dkt/config"))
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(b"[kind.git]\nauthor = \"no email\"\n")
        })
        .unwrap();
    let r = e.dkt(&[
        "node",
        "run",
        "--input=in",
        "--output=site",
        "cp \"${in:ROOT}/a.txt\" \"${site:ROOT}/\"",
    ]);
    let said = r.fails(1);
    assert!(said.contains("no email"), "{said}");
    assert_eq!(tip(&up), before);
}
