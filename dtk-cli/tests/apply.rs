//! `dkt apply FILE.yml`: sources and nodes from a pipeline file, in one commit.

mod common;
use common::*;

use std::path::PathBuf;

const PIPELINE: &str = "\
# The design's example, as a pipeline file.
sources:
  - name: pinata
    location: ./pinata
    kind: git
    tag: master
  - name: pitfall
    location: pinata          # the source above, not the directory
    path: v1/pitfall
  - name: dmg
    location: ./dmg
  - name: tests               # a new temporary directory
nodes:
  - labels: [test]
    inputs: [dmg, pitfall]
    outputs: [tests]
    run:
      - ${pitfall:ROOT}/pitfall --commit=${pitfall:COMMIT} > ${tests:ROOT}/STDOUT
      - ls ${dmg:ROOT} >> ${tests:ROOT}/STDOUT
    on-success: echo ok
";

/// The project's fixtures; returns the pinata commits, newest first.
fn fixtures(e: &Env) -> Vec<String> {
    let commits = pinata_repo(&e.path().join("pinata"));
    e.write("dmg/build-2246/Docker.dmg", "dmg bytes\n");
    commits
}

/// A private temporary directory for the `tests` source, so a test can see what is left.
fn tmp(e: &Env) -> PathBuf {
    let t = e.path().join("tmp");
    std::fs::create_dir_all(&t).unwrap();
    t
}

fn dkt_tmp(e: &Env, args: &[&str]) -> Run {
    Run {
        out: e.cmd().env("TMPDIR", tmp(e)).args(args).output().unwrap(),
    }
}

/// `(WHAT, NAME, STATUS)` rows of `dkt apply`'s table.
fn rows(table: &str) -> Vec<(String, String, String)> {
    let mut lines = table.lines();
    assert_eq!(
        lines
            .next()
            .map(|h| h.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["WHAT", "NAME", "STATUS"]),
        "{table}"
    );
    lines
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(c.len(), 3, "{l}");
            (c[0].to_owned(), c[1].to_owned(), c[2].to_owned())
        })
        .collect()
}

fn last_commit_message(e: &Env) -> String {
    git(
        e.path(),
        &["--git-dir", ".dkt/.git", "log", "-1", "--format=%s", "main"],
    )
    .trim()
    .to_owned()
}

fn source_json(e: &Env, name: &str) -> serde_json::Value {
    let list = e.dkt(&["--json", "source", "list"]).json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no source {name} in {list}"))
        .clone()
}

#[test]
fn applies_a_pipeline_in_one_commit_and_again_changes_nothing() {
    let e = Env::project();
    let commits = fixtures(&e);
    e.write("pipeline.yml", PIPELINE);
    let before = e.commits();
    let out = dkt_tmp(&e, &["apply", "pipeline.yml"]).ok();
    let rows = rows(&out);
    let node_id = rows[4].1.clone();
    assert_eq!(node_id.len(), 8, "{out}");
    let expected: Vec<(String, String, String)> = [
        ("source", "pinata"),
        ("source", "pitfall"),
        ("source", "dmg"),
        ("source", "tests"),
        ("node", node_id.as_str()),
    ]
    .iter()
    .map(|(w, n)| (w.to_string(), n.to_string(), "added".to_owned()))
    .collect();
    assert_eq!(rows, expected);
    // Exactly one commit, named after the file.
    assert_eq!(e.commits(), before + 1);
    let message = last_commit_message(&e);
    assert!(
        message
            .starts_with("apply pipeline.yml: source add pinata, pitfall, dmg, tests; node add "),
        "{message}"
    );
    // The sources are what `dkt source add` would have made.
    let pinata = source_json(&e, "pinata");
    assert_eq!(pinata["kind"], "git");
    assert_eq!(pinata["tag"], "master");
    assert_eq!(pinata["latest"], format!("sha1:{}", commits[0]));
    let pitfall = source_json(&e, "pitfall");
    assert_eq!(pitfall["kind"], "git");
    assert_eq!(pitfall["location"], pinata["location"]);
    assert_eq!(pitfall["path"], "v1/pitfall");
    assert_eq!(source_json(&e, "dmg")["kind"], "path");
    let tests = source_json(&e, "tests");
    assert_eq!(tests["kind"], "path");
    let tests_dir = PathBuf::from(tests["location"].as_str().unwrap());
    assert!(
        tests_dir.starts_with(std::fs::canonicalize(tmp(&e)).unwrap()),
        "{tests_dir:?}"
    );
    assert!(tests_dir.is_dir());
    // The node.
    let list = e.dkt(&["node", "list"]).ok();
    let row = list
        .lines()
        .find(|l| l.starts_with(&node_id))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        row.contains(" test ") && row.ends_with("dmg,pitfall tests"),
        "{row}"
    );

    // Again: nothing changes, no commit.
    let again = dkt_tmp(&e, &["--json", "apply", "pipeline.yml"]).json();
    assert_eq!(again["commit"], serde_json::Value::Null);
    let statuses: Vec<&str> = again["sources"]
        .as_array()
        .unwrap()
        .iter()
        .chain(again["nodes"].as_array().unwrap())
        .map(|x| x["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["unchanged"; 5]);
    assert_eq!(again["nodes"][0]["id"].as_str().unwrap()[..8], node_id);
    assert_eq!(e.commits(), before + 1);
    // The temporary directory of `tests` was made once.
    assert_eq!(std::fs::read_dir(tmp(&e)).unwrap().count(), 1);

    // The applied pipeline runs.
    std::fs::write(
        e.path().join(".dkt/config"),
        "[worker]\nlabels = [\"test\"]\n",
    )
    .unwrap();
    e.dkt(&["run"]).ok();
    let out = std::fs::read_to_string(tests_dir.join("STDOUT")).unwrap();
    assert_eq!(
        out,
        format!("pitfall --commit={}\nbuild-2246\n", commits[1])
    );
}

#[test]
fn a_changed_location_updates_the_source_and_keeps_its_history() {
    let e = Env::project();
    e.write("one/a.txt", "one\n");
    e.write("two/a.txt", "two\n");
    e.write(
        "pipeline.yml",
        "sources:\n  - name: data\n    location: ./one\n",
    );
    e.dkt(&["apply", "pipeline.yml"]).ok();
    e.dkt(&["source", "freeze", "data"]).ok();
    let first = source_json(&e, "data")["latest"].clone();
    let before = e.commits();

    e.write(
        "pipeline.yml",
        "sources:\n  - name: data\n    location: ./two\n",
    );
    let out = e.dkt(&["apply", "pipeline.yml"]).ok();
    assert_eq!(
        rows(&out),
        [("source".into(), "data".into(), "updated".into())]
    );
    assert_eq!(e.commits(), before + 1);
    assert!(last_commit_message(&e).starts_with("apply pipeline.yml: source update data"));
    let data = source_json(&e, "data");
    assert!(
        data["location"].as_str().unwrap().ends_with("/two"),
        "{data}"
    );
    assert_eq!(data["frozen"], true, "the frozen flag is kept");
    assert_ne!(data["latest"], first);
    // Both versions are in its history, newest first.
    let log = e.dkt(&["--json", "source", "log", "data"]).json();
    let versions: Vec<&serde_json::Value> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["version"])
        .collect();
    assert_eq!(versions, [&data["latest"], &first]);

    // The same file again: unchanged.
    let out = e.dkt(&["apply", "pipeline.yml"]).ok();
    assert_eq!(
        rows(&out),
        [("source".into(), "data".into(), "unchanged".into())]
    );
    assert_eq!(e.commits(), before + 1);
}

/// Apply `text` as `pipeline.yml`: it must exit 2 without a commit nor a leftover
/// temporary directory; returns stderr.
#[track_caller]
fn refused(e: &Env, text: &str) -> String {
    e.write("pipeline.yml", text);
    let before = e.commits();
    let sources = e.dkt(&["--json", "source", "list"]).json();
    let err = dkt_tmp(e, &["apply", "pipeline.yml"]).fails(2);
    assert_eq!(e.commits(), before, "{err}");
    assert_eq!(e.dkt(&["--json", "source", "list"]).json(), sources);
    assert_eq!(std::fs::read_dir(tmp(e)).unwrap().count(), 0, "{err}");
    err
}

#[test]
fn unknown_fields_are_refused_with_file_and_line() {
    let e = Env::project();
    e.write("a/x", "x\n");
    let err = refused(
        &e,
        "sources:\n  - name: a\n    location: ./a\n    colour: red\n",
    );
    assert!(
        err.contains("pipeline.yml:4: sources[0]: unknown field `colour`"),
        "{err}"
    );
    let err = refused(&e, "source:\n  - name: a\n");
    assert!(
        err.contains("pipeline.yml:1: unknown field `source`"),
        "{err}"
    );
}

#[test]
fn undeclared_inputs_are_refused_with_file_line_and_field() {
    let e = Env::project();
    e.write("a/x", "x\n");
    let err = refused(
        &e,
        "sources:\n  - name: a\n    location: ./a\n  - name: out\nnodes:\n  - inputs:\n      - a\n      - nosuch\n    outputs: [out]\n    run: cp -r ${a:ROOT} ${out:ROOT}\n",
    );
    assert!(
        err.contains(
            "pipeline.yml:8: nodes[0].inputs: source \"nosuch\" is not declared nor in the project"
        ),
        "{err}"
    );
}

#[test]
fn unknown_variables_are_refused_even_for_sources_being_added() {
    let e = Env::project();
    e.write("a/x", "x\n");
    e.dkt(&["source", "add", "a", "./a"]).ok();
    // `out` would get a temporary directory: it must be removed again.
    let err = refused(
        &e,
        "sources:\n  - name: out\nnodes:\n  - inputs: [a]\n    outputs: [out]\n    run: cp ${a:NOPE} ${out:ROOT}\n",
    );
    assert!(err.contains("pipeline.yml:6: nodes[0].run: "), "{err}");
    assert!(err.contains("a:NOPE"), "{err}");
}

#[test]
fn cycles_are_refused() {
    let e = Env::project();
    let err = refused(
        &e,
        "sources:\n  - name: a\n  - name: b\nnodes:\n  - inputs: [a]\n    outputs: [b]\n    run: 'true'\n  - inputs: [b]\n    outputs: [a]\n    run: 'true'\n",
    );
    assert!(err.contains("pipeline.yml:8: nodes[1]: "), "{err}");
    assert!(err.contains("cycle"), "{err}");
}

#[test]
fn yaml_syntax_errors_are_refused() {
    let e = Env::project();
    // A mis-indented key.
    let err = refused(&e, "sources:\n  - name: a\n   location: ./a\n");
    assert!(err.starts_with("dkt: error: pipeline.yml:3: "), "{err}");
    assert!(err.contains("did not find expected"), "{err}");
    // A value of the wrong type.
    let err = refused(&e, "sources:\n  - name: a\n    location: [./a]\n");
    assert!(
        err.starts_with("dkt: error: pipeline.yml:3: sources[0].location: invalid type: sequence"),
        "{err}"
    );
}

#[test]
fn a_source_cannot_derive_from_one_declared_after_it() {
    let e = Env::project();
    e.write("b/x", "x\n");
    let err = refused(
        &e,
        "sources:\n  - name: a\n    location: b\n  - name: b\n    location: ./b\n",
    );
    assert!(
        err.contains("pipeline.yml:3: sources[0].location: source \"a\" derives from source \"b\", which is declared after it"),
        "{err}"
    );
}
