//! Publish conflicts: a run publishes only to outputs still at the version it started
//! from; otherwise it is recorded `conflict`, publishes nothing and keeps what it wrote.

mod common;
use common::*;

use std::path::Path;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A node that copies `in/a.txt` into its output and, the first time only (a marker
/// file), writes `intruder` into the output's real directory while it runs: another
/// writer publishing meanwhile.
fn racing_node(e: &Env, policy: Option<&str>) -> Vec<String> {
    let out = e.path().join("out");
    let marker = e.path().join("raced");
    let cmd = format!(
        "cp \"${{in:ROOT}}/a.txt\" \"${{out:ROOT}}/a.txt\" && if [ ! -e '{m}' ]; then touch '{m}'; echo intruder > '{o}/y'; fi",
        m = marker.display(),
        o = out.display()
    );
    let mut args = vec![
        "node".to_owned(),
        "run".to_owned(),
        "--input=in".to_owned(),
        "--output=out".to_owned(),
    ];
    if let Some(p) = policy {
        args.push(format!("--on-conflict={p}"));
    }
    args.push(cmd);
    args
}

#[test]
fn a_path_output_written_while_a_node_runs_is_never_replaced() {
    let e = Env::project();
    setup_io(&e);
    let before = latest(&e, "out");
    let args = racing_node(&e, None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = e.dkt(&args);
    let said = r.fails(1);
    assert!(said.contains("conflict"), "{said}");
    assert!(said.contains("output \"out\" moved"), "{said}");
    // Nothing published: the intruder's file is there, the run's is not.
    let out = e.path().join("out");
    assert_eq!(read(&out.join("y")), "intruder\n");
    assert!(!out.join("a.txt").exists());
    assert_eq!(latest(&e, "out"), before, "no output version recorded");
    // The run is recorded `conflict`, and `node show` says where its outputs are.
    let node = r.stdout().trim().to_owned();
    let run = &runs(&e, &node)[0];
    assert_eq!(run["status"], "conflict");
    assert_eq!(run["outputs"], serde_json::json!([]));
    let id = run["id"].as_str().unwrap();
    let show = e.dkt(&["node", "show", id]).ok();
    let staging = show
        .lines()
        .find_map(|l| l.strip_prefix("staging  "))
        .unwrap_or_else(|| panic!("{show}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(show.contains("status   conflict"), "{show}");
    assert_eq!(
        read(&Path::new(&staging).join("out-out/a.txt")),
        "hello\n",
        "what the run wrote is kept"
    );
    let j = e.dkt(&["--json", "node", "show", id]).json();
    assert_eq!(j["staging"], staging);
    // A pass does not run it again on the same inputs (it is `conflict`, not "never ran").
    e.dkt(&["run"]).ok();
    assert_eq!(runs(&e, &node).len(), 1);
}

#[test]
fn on_conflict_rerun_runs_again_on_the_new_version() {
    let e = Env::project();
    setup_io(&e);
    let args = racing_node(&e, Some("rerun"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = e.dkt(&args);
    let node = r.ok().trim().to_owned();
    assert!(r.stderr().contains("success"), "{}", r.stderr());
    let statuses = statuses(&e, &node);
    assert_eq!(statuses, ["success", "conflict"]);
    // The second attempt started from the intruder's version: both files are there.
    let out = e.path().join("out");
    assert_eq!(read(&out.join("y")), "intruder\n");
    assert_eq!(read(&out.join("a.txt")), "hello\n");
}

#[test]
fn on_conflict_overwrite_publishes_anyway() {
    let e = Env::project();
    setup_io(&e);
    let args = racing_node(&e, Some("overwrite"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = e.dkt(&args);
    r.ok();
    assert!(r.stderr().contains("success"), "{}", r.stderr());
    let out = e.path().join("out");
    assert_eq!(read(&out.join("a.txt")), "hello\n");
    assert!(!out.join("y").exists(), "overwrite replaces what was there");
}

#[test]
fn node_files_declare_on_conflict_and_bad_values_are_refused() {
    let e = Env::project();
    setup_io(&e);
    e.write(
        "n.yml",
        "inputs: [in]\noutputs: [out]\non-conflict: rerun\nrun: cp ${in:ROOT}/a.txt ${out:ROOT}/\n",
    );
    let id = e.dkt(&["node", "run", "--no-run", "n.yml"]).ok();
    let id = id.trim();
    let j = e.dkt(&["--json", "node", "list"]).json();
    assert!(j.to_string().contains(id), "{j}");
    // The policy is part of the node: the same node without it has another ID.
    e.write(
        "m.yml",
        "inputs: [in]\noutputs: [out]\nrun: cp ${in:ROOT}/a.txt ${out:ROOT}/\n",
    );
    e.dkt(&["node", "rm", id]).ok();
    let before = e.commits();
    let err = e
        .dkt(&[
            "node",
            "run",
            "--no-run",
            "--on-conflict=later",
            "--input=in",
            "--output=out",
            "true",
        ])
        .fails(2);
    assert!(err.contains("\"later\""), "{err}");
    assert_eq!(e.commits(), before);
    let other = e.dkt(&["node", "run", "--no-run", "m.yml"]).ok();
    assert_ne!(other.trim(), id);
}
