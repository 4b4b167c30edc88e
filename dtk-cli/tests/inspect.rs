//! `dkt inspect` (manifest, `--dot`, `--downstream`, SLSA, PROV) and `dkt verify`.

mod common;
use common::*;
use serde_json::Value;

struct Pipeline {
    e: Env,
    node: String,
    tests: String,
    dmg: String,
    pitfall: String,
}

/// pinata (git) / pitfall (sub-path) and dmg (path) -> node -> tests (path), run once.
fn pipeline() -> Pipeline {
    let e = Env::project();
    let node = design_pipeline(&e);
    Pipeline {
        node,
        tests: latest(&e, "tests"),
        dmg: latest(&e, "dmg"),
        pitfall: latest(&e, "pitfall"),
        e,
    }
}

fn manifest(text: &str) -> Vec<Value> {
    let json: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    serde_json::from_str::<Value>(&json)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn manifest_lists_the_whole_ancestry() {
    let p = pipeline();
    let target = format!("tests:{}", &p.tests[4..12]);
    let out = p.e.dkt(&["inspect", &target]).ok();
    assert!(
        out.starts_with(&format!("# manifest for {target}\n")),
        "{out}"
    );
    let entries = manifest(&out);
    let find = |id: &str| {
        entries
            .iter()
            .find(|e| e["ID"] == id)
            .unwrap_or_else(|| panic!("no {id} in {out}"))
    };
    let pitfall = find(&p.pitfall[5..13]);
    assert_eq!(pitfall["source"], "pitfall");
    assert_eq!(pitfall["kind"], "git");
    assert_eq!(pitfall["commit"], p.pitfall);
    let dmg = find(&p.dmg[4..12]);
    assert_eq!(dmg["digest"], p.dmg);
    assert_eq!(dmg["kind"], "path");
    let tests = find(&p.tests[4..12]);
    let mut inputs: Vec<&str> = tests["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    inputs.sort();
    let mut expected = vec![&p.dmg[4..12], &p.pitfall[5..13]];
    expected.sort();
    assert_eq!(inputs, expected);
    let run = entries
        .iter()
        .find(|e| e["node"] == p.node.as_str())
        .expect("a run entry");
    assert_eq!(run["status"], "success");
    assert!(run["started"].as_str().unwrap().ends_with('Z'));
    // Ancestors first: the run after its inputs, the artifact last.
    let pos = |id: &str| entries.iter().position(|e| e["ID"] == id).unwrap();
    assert!(pos(&p.dmg[4..12]) < pos(run["ID"].as_str().unwrap()));
    assert_eq!(entries.last().unwrap()["ID"], &p.tests[4..12]);
    // --json is the array alone, deterministic; prefixes work.
    let j1 =
        p.e.dkt(&["--json", "inspect", &format!("tests:{}", &p.tests[4..9])])
            .json();
    let j2 = p.e.dkt(&["--json", "inspect", &target]).json();
    assert_eq!(j1, j2);
    assert_eq!(j1.as_array().unwrap().len(), entries.len());
    // A node and a run can be inspected too.
    let by_node = p.e.dkt(&["--json", "inspect", &p.node]).json();
    assert!(by_node
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["ID"] == p.tests[4..12]));
    let run_id = run["ID"].as_str().unwrap();
    let by_run = p.e.dkt(&["--json", "inspect", run_id]).json();
    assert!(by_run
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["ID"] == p.tests[4..12]));
    // Unknown targets are usage errors quoting the value.
    let err = p.e.dkt(&["inspect", "tests:ffffffff"]).fails(2);
    assert!(err.contains("tests:ffffffff"), "{err}");
    let err = p.e.dkt(&["inspect", "zz"]).fails(2);
    assert!(err.contains("\"zz\""), "{err}");
}

#[test]
fn links_are_asserted_relations_and_downstream_works() {
    let p = pipeline();
    let commits = git(&p.e.path().join("pinata-src"), &["log", "--format=%H"]);
    let head = commits.lines().next().unwrap();
    p.e.dkt(&[
        "source",
        "link",
        &format!("pinata:{}", &head[..8]),
        &format!("dmg:{}", &p.dmg[4..12]),
    ])
    .ok();
    let m =
        p.e.dkt(&["--json", "inspect", &format!("tests:{}", &p.tests[4..12])])
            .json();
    let link = m
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["relation"] == "asserted")
        .expect("link entry");
    assert_eq!(link["from"], format!("pinata:{}", &head[..8]));
    assert!(
        m.as_array()
            .unwrap()
            .iter()
            .any(|e| e["source"] == "pinata"),
        "linked version included"
    );
    // Downstream of the dmg version: the run and the tests version.
    let down =
        p.e.dkt(&[
            "--json",
            "inspect",
            "--downstream",
            &format!("dmg:{}", &p.dmg[4..12]),
        ])
        .json();
    let ids: Vec<&str> = down
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["ID"].as_str())
        .collect();
    assert_eq!(ids[0], &p.dmg[4..12]);
    assert!(ids.contains(&&p.tests[4..12]), "{ids:?}");
}

#[test]
fn dot_renders_without_warnings() {
    let p = pipeline();
    let dot =
        p.e.dkt(&["inspect", "--dot", &format!("tests:{}", &p.tests[4..12])])
            .ok();
    assert!(dot.starts_with("digraph"), "{dot}");
    assert!(dot.contains("shape=box") && dot.contains("shape=ellipse"));
    assert!(dot.contains(&format!("tests:{}", &p.tests[4..12])));
    let path = p.e.write("g.dot", &dot);
    let out = std::process::Command::new("dot")
        .arg("-Tsvg")
        .arg(&path)
        .output()
        .expect("graphviz `dot` is installed (.ci/run installs it)");
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "dot warned: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("<svg"));
}

/// Two sources at the same commit (a repository and a sub-path of it) are two versions,
/// so two graph nodes; a link starts from the source it names.
#[test]
fn dot_keeps_distinct_sources_at_one_commit_apart() {
    let e = Env::project();
    let repo = e.path().join("pinata");
    std::fs::create_dir_all(repo.join("v1/pitfall")).unwrap();
    std::fs::write(repo.join("v1/pitfall/x"), "x\n").unwrap();
    git(&repo, &["init", "-q", "-b", "master"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "only"]);
    let commit = git(&repo, &["rev-parse", "HEAD"]).trim().to_owned();
    e.dkt(&["source", "add", "pinata", "pinata"]).ok();
    e.dkt(&["source", "add", "pitfall", "pinata", "-p", "v1/pitfall"])
        .ok();
    e.write("dmg/a", "a");
    e.dkt(&["source", "add", "dmg", "dmg"]).ok();
    std::fs::create_dir_all(e.path().join("out")).unwrap();
    e.dkt(&["source", "add", "out", "out"]).ok();
    let dmg = latest(&e, "dmg");
    e.dkt(&[
        "source",
        "link",
        &format!("pinata:{}", &commit[..8]),
        &format!("dmg:{}", &dmg[4..12]),
    ])
    .ok();
    e.dkt(&[
        "node",
        "run",
        "--input=pinata,pitfall,dmg",
        "--output=out",
        "echo built > ${out:ROOT}/r",
    ])
    .ok();
    let out = latest(&e, "out");
    let dot = e
        .dkt(&["inspect", "--dot", &format!("out:{}", &out[4..12])])
        .ok();
    let ellipses: Vec<&str> = dot
        .lines()
        .filter(|l| l.contains("shape=ellipse"))
        .collect();
    assert_eq!(ellipses.len(), 4, "pinata, pitfall, dmg, out: {dot}");
    for name in ["pinata", "pitfall"] {
        assert!(
            ellipses
                .iter()
                .any(|l| l.contains(&format!("label=\"{name}:{}", &commit[..8]))),
            "{name}: {dot}"
        );
    }
    let link = dot.lines().find(|l| l.contains("asserted")).expect(&dot);
    assert!(link.trim_start().starts_with("\"v_pinata_"), "{link}");
    let edges = dot
        .lines()
        .filter(|l| l.contains("->") && !l.contains("asserted"))
        .count();
    assert_eq!(edges, 4, "three inputs and one output: {dot}");
}

fn python(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/check_provenance.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "consumer rejected the document (pip install prov in-toto-attestation):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn slsa_and_prov_load_in_the_reference_consumers() {
    let p = pipeline();
    let target = format!("tests:{}", &p.tests[4..12]);
    let slsa = p.e.dkt(&["inspect", "--format", "slsa", &target]).json();
    assert_eq!(slsa["subject"][0]["digest"]["md5"], &p.tests[4..]);
    let f = p.e.write("slsa.json", &slsa.to_string());
    let said = python(&["slsa", f.to_str().unwrap(), "2"]);
    assert!(said.contains("2 dependencies"), "{said}");
    let prov = p.e.dkt(&["inspect", "--format", "prov", &target]).json();
    let f = p.e.write("prov.json", &prov.to_string());
    // 3 versions (dmg, pitfall, tests), 1 run, 2 derivations (tests from each input).
    let said = python(&["prov", f.to_str().unwrap(), "3", "1", "2"]);
    assert!(said.contains("1 activities"), "{said}");
    // A global source's version has no build to describe.
    let err =
        p.e.dkt(&[
            "inspect",
            "--format",
            "slsa",
            &format!("dmg:{}", &p.dmg[4..12]),
        ])
        .fails(2);
    assert!(err.contains("not produced by a run"), "{err}");
}

#[test]
fn verify_passes_then_catches_tampered_records_and_data() {
    let p = pipeline();
    let target = format!("tests:{}", &p.tests[4..12]);
    let out = p.e.dkt(&["verify", &target]).ok();
    assert!(out.contains("verified"), "{out}");
    assert!(!out.contains("MISMATCH"));
    // The git commit and the path contents were re-hashed, not skipped.
    let report = p.e.dkt(&["--json", "verify", &target]).json();
    let content = |subject: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| {
                c["check"] == "content" && c["subject"].as_str().unwrap().starts_with(subject)
            })
            .unwrap()["result"]
            .clone()
    };
    assert_eq!(content("pitfall:"), "ok");
    assert_eq!(content("dmg:"), "ok");
    assert_eq!(content("tests:"), "ok");
    // Tamper with the output data: the recorded latest version no longer matches.
    std::fs::write(p.e.path().join("results/out"), "forged\n").unwrap();
    let r = p.e.dkt(&["verify", &target]);
    assert_eq!(r.code(), 1, "{}", r.stdout());
    assert!(
        r.stdout().contains("MISMATCH") && r.stdout().contains(&p.tests),
        "{}",
        r.stdout()
    );
}

#[test]
fn verify_detects_a_record_altered_in_git() {
    let p = pipeline();
    let target = format!("tests:{}", &p.tests[4..12]);
    // Alter the run record by hand (as `git` plumbing would), keeping it valid JSON.
    let store = dtk::Store::open(&p.e.path().join(".dkt/.git")).unwrap();
    let snap = store.snapshot().unwrap();
    let run = p.e.dkt(&["--json", "node", "log", &p.node]).json()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = dtk::project::paths::run(&run.parse().unwrap());
    let mut rec: Value = snap.read_json(&path).unwrap().unwrap();
    rec["worker"] = Value::String("someone-else:1".into());
    store
        .transact("tamper", |tx| {
            tx.put_json(&path, &rec)?;
            Ok(())
        })
        .unwrap();
    let r = p.e.dkt(&["--json", "verify", &target]);
    assert_eq!(r.code(), 1);
    let report: Value = serde_json::from_str(&r.stdout()).unwrap();
    let bad: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["result"] == "mismatch")
        .collect();
    assert!(
        bad.iter()
            .any(|c| c["check"] == "record digest"
                && c["subject"].as_str().unwrap().starts_with("run ")),
        "{bad:?}"
    );
}

/// Rewrite the record at `path` with `edit`, as `git` plumbing would (one commit).
fn tamper(e: &Env, path: &str, edit: impl FnOnce(&mut Value)) {
    let store = dtk::Store::open(&e.path().join(".dkt/.git")).unwrap();
    let mut rec: Value = store.snapshot().unwrap().read_json(path).unwrap().unwrap();
    edit(&mut rec);
    store
        .transact("tamper", |tx| {
            tx.put_json(path, &rec)?;
            Ok(())
        })
        .unwrap();
}

/// The checks of `dkt --json verify TARGET` that did not pass, as (subject, check, result).
fn failed_checks(e: &Env, target: &str) -> (i32, Vec<(String, String, String)>) {
    let r = e.dkt(&["--json", "verify", target]);
    let report: Value = serde_json::from_str(&r.stdout()).unwrap();
    let bad = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["result"] != "ok")
        .map(|c| {
            (
                c["subject"].as_str().unwrap().to_owned(),
                c["check"].as_str().unwrap().to_owned(),
                c["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (r.code(), bad)
}

fn has(bad: &[(String, String, String)], subject: &str, check: &str, result: &str) -> bool {
    bad.iter()
        .any(|(s, c, r)| s.starts_with(subject) && c.starts_with(check) && r == result)
}

#[test]
fn verify_checks_a_produced_version_against_its_run_even_when_resealed() {
    let p = pipeline();
    let target = format!("tests:{}", &p.tests[4..12]);
    let (code, bad) = failed_checks(&p.e, &target);
    assert_eq!(code, 0, "{bad:?}");
    assert!(!bad.iter().any(|(_, _, r)| r == "mismatch"), "{bad:?}");
    // Forge the version's inputs (drop one) and re-seal the record with a correct digest.
    let path =
        dtk::project::paths::version(&dtk::Name::new("tests").unwrap(), &p.tests.parse().unwrap());
    tamper(&p.e, &path, |rec| {
        rec["inputs"].as_array_mut().unwrap().pop();
        rec.as_object_mut().unwrap().remove("digest");
        rec["digest"] = Value::String(dtk::digest::seal(&*rec).unwrap());
    });
    let (code, bad) = failed_checks(&p.e, &target);
    assert_eq!(code, 1, "{bad:?}");
    assert!(
        has(&bad, "tests:", "inputs are the run's", "mismatch"),
        "{bad:?}"
    );
    assert!(!has(&bad, "tests:", "record digest", "mismatch"), "{bad:?}");
}

#[test]
fn verify_covers_members_the_reader_does_not_know() {
    let p = pipeline();
    let target = format!("tests:{}", &p.tests[4..12]);
    let path =
        dtk::project::paths::version(&dtk::Name::new("tests").unwrap(), &p.tests.parse().unwrap());
    tamper(&p.e, &path, |rec| {
        rec["approved_by"] = Value::String("security team".into());
    });
    let (code, bad) = failed_checks(&p.e, &target);
    assert_eq!(code, 1, "{bad:?}");
    assert!(has(&bad, "tests:", "record digest", "mismatch"), "{bad:?}");
}

#[test]
fn verify_checks_run_logs_and_index_entries() {
    let p = pipeline();
    let target = format!("tests:{}", &p.tests[4..12]);
    let run = p.e.dkt(&["--json", "node", "log", &p.node]).json()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run_id: dtk::RunId = run.parse().unwrap();
    let store = dtk::Store::open(&p.e.path().join(".dkt/.git")).unwrap();
    let record: dtk::RunRecord = store
        .snapshot()
        .unwrap()
        .read_json(&dtk::project::paths::run(&run_id))
        .unwrap()
        .unwrap();
    let node_id = record.node;
    // A forged index entry: the run index says the run failed.
    let index = dtk::project::paths::node_run(&node_id, &run_id);
    tamper(&p.e, &index, |rec| {
        rec["status"] = Value::String("failure".into());
    });
    // `node log` reads the run's own record, not the index copy.
    let log = p.e.dkt(&["--json", "node", "log", &p.node]).json();
    assert_eq!(log[0]["status"], "success", "{log}");
    // A rewritten log.
    store
        .transact("tamper log", |tx| {
            tx.put(&dtk::project::paths::run_log(&run_id), b"nothing to see\n")?;
            Ok(())
        })
        .unwrap();
    let (code, bad) = failed_checks(&p.e, &target);
    assert_eq!(code, 1, "{bad:?}");
    assert!(has(&bad, "run ", "node-runs index", "mismatch"), "{bad:?}");
    assert!(has(&bad, "run ", "log digest", "mismatch"), "{bad:?}");
}

#[test]
fn verify_checks_link_ids_and_uses_the_sealed_origin() {
    let p = pipeline();
    let target = format!("tests:{}", &p.tests[4..12]);
    p.e.dkt(&[
        "source",
        "link",
        &format!("dmg:{}", &p.dmg[4..12]),
        &format!("tests:{}", &p.tests[4..12]),
    ])
    .ok();
    let (code, bad) = failed_checks(&p.e, &target);
    assert_eq!(code, 0, "{bad:?}");
    // A link rewritten to claim another origin, under its old ID.
    let store = dtk::Store::open(&p.e.path().join(".dkt/.git")).unwrap();
    let links = store.snapshot().unwrap().walk("links").unwrap();
    assert_eq!(links.len(), 1);
    tamper(&p.e, &links[0].0, |rec| {
        rec["from"]["source"] = Value::String("pitfall".into());
        rec["from"]["version"] = Value::String(p.pitfall.clone());
    });
    let (code, bad) = failed_checks(&p.e, &target);
    assert_eq!(code, 1, "{bad:?}");
    assert!(has(&bad, "link pitfall:", "link ID", "mismatch"), "{bad:?}");
    // The source's declaration moved by hand: the version keeps the origin sealed into
    // its record, which inspect shows and verify re-reads.
    let declaration = dtk::project::paths::source(&dtk::Name::new("tests").unwrap());
    tamper(&p.e, &declaration, |rec| {
        rec["location"] = Value::String("/nowhere/forged".into());
    });
    let shown = p.e.dkt(&["inspect", &target]).ok();
    assert!(!shown.contains("/nowhere/forged"), "{shown}");
    assert!(shown.contains("results"), "{shown}");
    let (_, bad) = failed_checks(&p.e, &target);
    assert!(has(&bad, "tests:", "origin", "skipped"), "{bad:?}");
    assert!(!has(&bad, "tests:", "content", "skipped"), "{bad:?}");
}
