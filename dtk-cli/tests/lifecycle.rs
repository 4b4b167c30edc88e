//! The life of a node: `dkt node rm`, names, `dkt apply` replacing named nodes and
//! `--prune`, one writer per source, and failed runs that are not retried forever.

mod common;
use common::*;

fn setup(e: &Env) {
    e.write("in/a.txt", "hello\n");
    for d in ["out", "other"] {
        std::fs::create_dir_all(e.path().join(d)).unwrap();
    }
    for s in ["in", "out", "other"] {
        e.dkt(&["source", "add", s, s]).ok();
    }
}

fn node_list(e: &Env, all: bool) -> Vec<serde_json::Value> {
    let mut args = vec!["--json", "node", "list"];
    if all {
        args.push("--all");
    }
    e.dkt(&args).json().as_array().unwrap().clone()
}

#[test]
fn node_rm_retires_a_node_and_keeps_its_history() {
    let e = Env::project();
    setup(&e);
    let id = e
        .dkt(&[
            "node",
            "run",
            "--input=in",
            "--output=out",
            "cp ${in:ROOT}/a.txt ${out:ROOT}/",
        ])
        .ok();
    let id = id.trim().to_owned();
    let err = e.dkt(&["source", "rm", "in"]).fails(2);
    assert!(err.contains(&id), "{err}");
    let out_version = e
        .dkt(&["--json", "source", "list"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "out")
        .unwrap()["latest"]
        .as_str()
        .unwrap()
        .to_owned();
    e.dkt(&["node", "rm", &id]).ok();
    assert!(node_list(&e, false).is_empty());
    let all = node_list(&e, true);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["retired"], true);
    assert!(e.dkt(&["node", "list", "--all"]).ok().contains("removed"));
    // History stays: runs, and the provenance of what it made.
    assert_eq!(statuses(&e, &id), ["success"]);
    let target = format!("out:{}", &out_version[4..12]);
    let manifest = e.dkt(&["--json", "inspect", &target]).json();
    assert!(manifest.to_string().contains(&id), "{manifest}");
    e.dkt(&["verify", &target]).ok();
    // It no longer runs; removing it twice is an error.
    let err = e.dkt(&["node", "rerun", &id]).fails(2);
    assert!(err.contains("removed"), "{err}");
    e.write("in/b.txt", "new\n");
    let pass = e.dkt(&["run"]).ok();
    assert!(pass.contains("nothing to run"), "{pass}");
    let err = e.dkt(&["node", "rm", &id]).fails(2);
    assert!(err.contains("already removed"), "{err}");
    // Its input can now be removed.
    e.dkt(&["source", "rm", "in"]).ok();
    let err = e.dkt(&["node", "rm", "nosuchnode"]).fails(2);
    assert!(err.contains("nosuchnode"), "{err}");
}

#[test]
fn a_named_node_is_found_by_name_and_replaced_by_a_new_definition() {
    let e = Env::project();
    setup(&e);
    let first = e
        .dkt(&[
            "node",
            "run",
            "--name",
            "copy",
            "--input=in",
            "--output=out",
            "cp ${in:ROOT}/a.txt ${out:ROOT}/one",
        ])
        .ok();
    let first = first.trim().to_owned();
    let list = e.dkt(&["node", "list"]).ok();
    assert!(
        list.lines().nth(1).unwrap().trim_end().ends_with("copy"),
        "{list}"
    );
    assert_eq!(node_list(&e, false)[0]["name"], "copy");
    assert_eq!(statuses(&e, "copy"), ["success"]);
    // A new definition under the same name replaces the node (same output: allowed).
    let second = e
        .dkt(&[
            "node",
            "run",
            "--name",
            "copy",
            "--input=in",
            "--output=out",
            "cp ${in:ROOT}/a.txt ${out:ROOT}/two",
        ])
        .ok();
    let second = second.trim().to_owned();
    assert_ne!(first, second);
    let active = node_list(&e, false);
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0]["id"], second.as_str());
    assert_eq!(active[0]["name"], "copy");
    let all = node_list(&e, true);
    let old = all.iter().find(|n| n["id"] == first.as_str()).unwrap();
    assert_eq!(old["retired"], true);
    assert!(old["name"].is_null());
    // The old node's runs are still there, by ID.
    assert_eq!(statuses(&e, &first), ["success"]);
    assert_eq!(statuses(&e, "copy"), ["success"]);
    // A bad name is refused as a node name, quoting it.
    let err = e
        .dkt(&[
            "node",
            "run",
            "--name",
            "a/b",
            "--input=in",
            "--output=other",
            "true",
        ])
        .fails(2);
    assert!(err.contains("node name") && err.contains("a/b"), "{err}");
}

#[test]
fn two_nodes_cannot_write_one_source() {
    let e = Env::project();
    setup(&e);
    let first = e
        .dkt(&[
            "node",
            "run",
            "--no-run",
            "--input=in",
            "--output=out",
            "true",
        ])
        .ok();
    let commits = e.commits();
    let err = e
        .dkt(&[
            "node",
            "run",
            "--no-run",
            "--input=in",
            "--output=out",
            "false",
        ])
        .fails(2);
    assert!(
        err.contains(first.trim()) && err.contains("\"out\""),
        "{err}"
    );
    assert_eq!(e.commits(), commits);
    // In a pipeline file too, naming the line.
    e.write(
        "p.yml",
        "nodes:\n  - inputs: [in]\n    outputs: [out]\n    run: echo again\n",
    );
    let err = e.dkt(&["apply", "p.yml"]).fails(2);
    assert!(
        err.contains("p.yml:") && err.contains(first.trim()),
        "{err}"
    );
    assert_eq!(e.commits(), commits);
}

#[test]
fn apply_replaces_named_nodes_and_prunes() {
    let e = Env::project();
    setup(&e);
    let file = |cmd: &str, extra: &str| {
        format!(
            "nodes:\n  - name: copy\n    inputs: [in]\n    outputs: [out]\n    run: {cmd}\n{extra}"
        )
    };
    let other = "  - inputs: [in]\n    outputs: [other]\n    run: echo other\n";
    e.write("p.yml", &file("cp ${in:ROOT}/a.txt ${out:ROOT}/", other));
    let first = e.dkt(&["--json", "apply", "p.yml"]).json();
    assert_eq!(first["nodes"][0]["status"], "added");
    let copy1 = first["nodes"][0]["id"].as_str().unwrap().to_owned();
    let other_id = first["nodes"][1]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        e.dkt(&["--json", "apply", "p.yml"]).json()["commit"],
        serde_json::Value::Null
    );
    // The named node's command changes: the node is replaced, not doubled.
    e.write("p.yml", &file("cp -r ${in:ROOT}/. ${out:ROOT}/", other));
    let second = e.dkt(&["--json", "apply", "p.yml"]).json();
    assert_eq!(second["nodes"][0]["status"], "updated");
    let copy2 = second["nodes"][0]["id"].as_str().unwrap().to_owned();
    assert_ne!(copy1, copy2);
    assert_eq!(second["retired"][0]["id"], copy1.as_str());
    let active: Vec<String> = node_list(&e, false)
        .iter()
        .map(|n| n["id_full"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(active.len(), 2);
    assert!(active.contains(&copy2) && active.contains(&other_id));
    // Dropped from the file: kept without --prune, retired with it.
    e.write("p.yml", &file("cp -r ${in:ROOT}/. ${out:ROOT}/", ""));
    let kept = e.dkt(&["--json", "apply", "p.yml"]).json();
    assert_eq!(kept["commit"], serde_json::Value::Null);
    assert_eq!(node_list(&e, false).len(), 2);
    let pruned = e.dkt(&["apply", "--prune", "p.yml"]).ok();
    assert!(pruned.contains("removed (pruned)"), "{pruned}");
    let active = node_list(&e, false);
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["id_full"], copy2.as_str());
}

#[test]
fn a_failed_run_is_not_retried_on_every_pass() {
    let e = Env::project();
    setup(&e);
    // Plain: fails once; passes leave it alone until its inputs move.
    let id = e
        .dkt(&[
            "node",
            "run",
            "--no-run",
            "--input=in",
            "--output=out",
            "exit 3",
        ])
        .ok();
    let id = id.trim().to_owned();
    e.dkt(&["run"]).fails(1);
    assert_eq!(statuses(&e, &id), ["failure"]);
    let pass = e.dkt(&["run"]).ok();
    assert!(pass.contains("nothing to run"), "{pass}");
    assert_eq!(statuses(&e, &id), ["failure"]);
    // `node rerun` runs it again; so do new inputs.
    e.dkt(&["node", "rerun", &id]).fails(1);
    assert_eq!(statuses(&e, &id).len(), 2);
    e.write("in/c.txt", "c\n");
    e.dkt(&["run"]).fails(1);
    assert_eq!(statuses(&e, &id).len(), 3);
    e.dkt(&["node", "rm", &id]).ok();
    // With a retry policy: retried as often as it says, then left alone.
    e.write(
        "node.yml",
        "inputs: [in]\noutputs: [other]\nrun: exit 4\nretry: {count: 2, backoff: 0s}\n",
    );
    let id = e.dkt(&["node", "run", "--no-run", "node.yml"]).ok();
    let id = id.trim().to_owned();
    let first = e.dkt(&["run"]);
    first.fails(1);
    let retry = e.dkt(&["run", "--dry-run"]).ok();
    assert!(retry.contains("retry 1 of 2"), "{retry}");
    e.dkt(&["run"]).fails(1);
    e.dkt(&["run"]).fails(1);
    assert_eq!(statuses(&e, &id), ["failure", "failure", "failure"]);
    let pass = e.dkt(&["run"]).ok();
    assert!(pass.contains("nothing to run"), "{pass}");
    // A bad backoff is refused, quoting it.
    e.write(
        "bad.yml",
        "inputs: [in]\noutputs: [out]\nrun: echo x\nretry: {count: 1, backoff: soon}\n",
    );
    let err = e.dkt(&["node", "run", "--no-run", "bad.yml"]).fails(2);
    assert!(err.contains("soon"), "{err}");
}
