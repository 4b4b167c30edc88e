//! The independent verifier (`tests/verifier/dtk_verify.py`, written from docs/format.md
//! alone) agrees with `dkt verify`: on an intact project, on a store written by the
//! format-2 release (legacy seals), and on each kind of forgery, both exit the same way,
//! make the same record-level checks with the same results, and both catch the forgery.
//!
//! The Python verifier needs python3 with the PyPI modules `blake3` and `rfc8785`
//! (`scripts/test.sh` installs them); without them these tests fail, naming what is
//! missing.

mod common;
use common::*;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const VERIFIER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/verifier/dtk_verify.py"
);

/// The checks the Python verifier does not make: it does not re-read origins nor re-hash
/// data (check 9 needs the kinds); it reports them `skipped`.
const NOT_RECORD_LEVEL: &[&str] = &["origin", "content"];

/// Fail (never pass silently) when python3 or a module the verifier needs is absent.
fn require_python() {
    let out = Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u\n\
             m = [n for n in ('blake3', 'rfc8785') if u.find_spec(n) is None]\n\
             print(' '.join(m))",
        ])
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => panic!(
            "python3 is missing ({e}): the independent verifier needs python3 with the PyPI \
             modules blake3 and rfc8785 (bash scripts/test.sh --install-only)"
        ),
    };
    assert!(
        out.status.success(),
        "python3 does not run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        missing.is_empty(),
        "the independent verifier needs the Python modules blake3 and rfc8785; missing: \
         {missing} (pip install {missing}, or bash scripts/test.sh --install-only)"
    );
}

/// One verifier's answer: its exit status and its record-level checks, (subject, check)
/// to result.
#[derive(Debug)]
struct Report {
    code: i32,
    checks: BTreeMap<(String, String), String>,
    raw: String,
}

impl Report {
    fn parse(code: i32, stdout: &[u8], stderr: &[u8], who: &str) -> Report {
        let raw = String::from_utf8_lossy(stdout).into_owned();
        let json: Value = serde_json::from_str(&raw).unwrap_or_else(|e| {
            panic!(
                "{who}: bad JSON ({e}), exit {code}:\n{raw}\n{}",
                String::from_utf8_lossy(stderr)
            )
        });
        let mut checks = BTreeMap::new();
        for c in json["checks"].as_array().expect("checks") {
            let check = c["check"].as_str().unwrap().to_owned();
            // Commit signatures (subjects `commit ...`, `history`) are git's to check (`git
            // verify-commit`, tested in signing.rs), not the record format's.
            let subject = c["subject"].as_str().unwrap_or_default();
            if NOT_RECORD_LEVEL.contains(&check.as_str())
                || subject.starts_with("commit ")
                || subject == "history"
            {
                continue;
            }
            let key = (c["subject"].as_str().unwrap().to_owned(), check);
            let result = c["result"].as_str().unwrap().to_owned();
            assert!(
                checks.insert(key.clone(), result).is_none(),
                "{who} made {key:?} twice:\n{raw}"
            );
        }
        Report { code, checks, raw }
    }

    fn mismatches(&self) -> Vec<(String, String)> {
        self.checks
            .iter()
            .filter(|(_, r)| *r == "mismatch")
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// `dkt --json verify TARGET` in `dir`, then the Python verifier on the same store (dkt
/// first: it upgrades an old store, which the Python verifier, a format-4 reader, needs).
fn both(dir: &Path, target: &str) -> (Report, Report) {
    require_python();
    let out = Command::new(dkt_bin())
        .current_dir(dir)
        .env("DKT_LOG", "warn")
        .args(["--json", "verify", target])
        .output()
        .unwrap();
    let dkt = Report::parse(
        out.status.code().unwrap_or(-1),
        &out.stdout,
        &out.stderr,
        "dkt verify",
    );
    let out = Command::new("python3")
        .arg(VERIFIER)
        .arg("--git-dir")
        .arg(dir.join(".dkt/.git"))
        .arg("--json")
        .arg(target)
        .output()
        .unwrap();
    let py = Report::parse(
        out.status.code().unwrap_or(-1),
        &out.stdout,
        &out.stderr,
        "dtk_verify.py",
    );
    (dkt, py)
}

/// Both verifiers agree on `target`: same exit status, same record-level checks with the
/// same results (so the same mismatches). Returns the mismatches.
#[track_caller]
fn agree(dir: &Path, target: &str) -> Vec<(String, String)> {
    let (dkt, py) = both(dir, target);
    let only_dkt: Vec<_> = dkt
        .checks
        .iter()
        .filter(|(k, r)| py.checks.get(*k) != Some(*r))
        .collect();
    let only_py: Vec<_> = py
        .checks
        .iter()
        .filter(|(k, r)| dkt.checks.get(*k) != Some(*r))
        .collect();
    assert!(
        only_dkt.is_empty() && only_py.is_empty(),
        "the verifiers disagree on {target}\nonly dkt: {only_dkt:#?}\nonly python: \
         {only_py:#?}\ndkt:\n{}\npython:\n{}",
        dkt.raw,
        py.raw
    );
    assert_eq!(
        dkt.code, py.code,
        "exit status differs on {target}\ndkt:\n{}\npython:\n{}",
        dkt.raw, py.raw
    );
    assert!(
        !dkt.checks.is_empty(),
        "no record-level checks: {:?}",
        dkt.checks
    );
    let bad = dkt.mismatches();
    assert_eq!(dkt.code, if bad.is_empty() { 0 } else { 1 }, "{}", dkt.raw);
    bad
}

/// Both verifiers agree on `target` and both caught the forgery: exit 1, and `subject`
/// (a prefix) has `check` (a prefix) mismatched.
#[track_caller]
fn both_catch(dir: &Path, target: &str, subject: &str, check: &str) -> Vec<(String, String)> {
    let bad = agree(dir, target);
    assert!(
        bad.iter()
            .any(|(s, c)| s.starts_with(subject) && c.starts_with(check)),
        "{subject} {check} not caught: {bad:?}"
    );
    bad
}

struct Pipeline {
    e: Env,
    node: String,
    run: String,
    tests: String,
    dmg: String,
    pitfall: String,
}

/// `SOURCE:` and the first 8 hex digits of `version` (`ALGO:HEX`).
fn short(source: &str, version: &str) -> String {
    let hex = version.split_once(':').unwrap().1;
    format!("{source}:{}", &hex[..8])
}

impl Pipeline {
    fn target(&self) -> String {
        short("tests", &self.tests)
    }
    fn git_dir(&self) -> std::path::PathBuf {
        self.e.path().join(".dkt/.git")
    }
}

/// pinata (git) / pitfall (sub-path) and dmg (path) -> node -> tests (path), run once;
/// a link dmg -> tests.
fn pipeline() -> Pipeline {
    let e = Env::project();
    let node = design_pipeline(&e);
    let first = &runs(&e, &node)[0];
    let run = first["id"].as_str().unwrap().to_owned();
    let node = first["node"].as_str().unwrap().to_owned();
    let p = Pipeline {
        node,
        run,
        tests: latest(&e, "tests"),
        dmg: latest(&e, "dmg"),
        pitfall: latest(&e, "pitfall"),
        e,
    };
    p.e.dkt(&["source", "link", &short("dmg", &p.dmg), &p.target()])
        .ok();
    p
}

/// Rewrite the record at `path` with `edit`, as `git` plumbing would (one commit).
fn tamper(git_dir: &Path, path: &str, edit: impl FnOnce(&mut Value)) {
    let store = dtk::Store::open(git_dir).unwrap();
    let mut rec: Value = store
        .snapshot()
        .unwrap()
        .read_json(path)
        .unwrap()
        .unwrap_or_else(|| panic!("no record at {path}"));
    edit(&mut rec);
    store
        .transact("tamper", |tx| {
            tx.put_json(path, &rec)?;
            Ok(())
        })
        .unwrap();
}

fn reseal(rec: &mut Value) {
    rec.as_object_mut().unwrap().remove("digest");
    rec["digest"] = Value::String(dtk::digest::seal(&*rec).unwrap());
}

fn tests_path(p: &Pipeline) -> String {
    dtk::project::paths::version(&dtk::Name::new("tests").unwrap(), &p.tests.parse().unwrap())
}

fn run_path(p: &Pipeline) -> String {
    dtk::project::paths::run(&p.run.parse().unwrap())
}

#[test]
fn an_intact_project_verifies_the_same_for_every_target() {
    let p = pipeline();
    let dir = p.e.path();
    for target in [
        p.target(),
        format!("tests:{}", p.tests),
        short("dmg", &p.dmg),
        short("pitfall", &p.pitfall),
        p.run[..8].to_owned(),
        p.node[..8].to_owned(),
    ] {
        let bad = agree(dir, &target);
        assert!(bad.is_empty(), "{target}: {bad:?}");
    }
    // A second run of the node on new inputs, and a node with a recorded script, labels,
    // a hook and a retry policy (every optional field of the node ID's encoding).
    p.e.write("dmg/2247.dmg", "dmg 2\n");
    p.e.dkt(&["run"]).ok();
    assert!(agree(dir, &p.node[..8]).is_empty());
    let script = p.e.write("build.sh", "#!/bin/sh\necho \"built $*\"\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(dir.join("out2")).unwrap();
    std::fs::create_dir_all(dir.join("out3")).unwrap();
    p.e.dkt(&["source", "add", "out2", "out2"]).ok();
    p.e.dkt(&["source", "add", "out3", "out3"]).ok();
    let scripted =
        p.e.dkt(&[
            "node",
            "run",
            "--labels=zz,aa",
            "--input=dmg",
            "--output=out2",
            "--on-failure=echo failed",
            "./build.sh",
            "${dmg:ROOT}",
        ])
        .ok()
        .trim()
        .to_owned();
    p.e.write(
        "retry.yml",
        "inputs: [dmg, pitfall]\noutputs: [out3]\nlabels: [x]\n\
         run: |\n  echo ${dmg:ROOT} > ${out3:ROOT}/x\n  echo done\n\
         retry: {count: 2, backoff: 30s}\n",
    );
    let retrying =
        p.e.dkt(&["node", "run", "retry.yml"])
            .ok()
            .trim()
            .to_owned();
    p.e.dkt(&["worker", "--labels", "aa,zz,x", "--max-runs", "2"])
        .ok();
    let store = dtk::Store::open(&p.git_dir()).unwrap();
    assert_eq!(
        store.snapshot().unwrap().walk("scripts").unwrap().len(),
        1,
        "the script node records its script"
    );
    for node in [&scripted, &retrying] {
        let node = node.lines().last().unwrap();
        assert_eq!(runs(&p.e, node)[0]["status"], "success", "{node}");
        let bad = agree(dir, &node[..8]);
        assert!(bad.is_empty(), "{node}: {bad:?}");
    }
    // A node with a conflict policy, and a run recorded `conflict` (its output written
    // into while it ran) with its staging directory.
    for out in ["out4", "out5"] {
        std::fs::create_dir_all(dir.join(out)).unwrap();
        p.e.dkt(&["source", "add", out, out]).ok();
    }
    let overwriting =
        p.e.dkt(&[
            "node",
            "run",
            "--input=dmg",
            "--output=out4",
            "--on-conflict=overwrite",
            "true",
        ])
        .ok()
        .trim()
        .to_owned();
    let racing = format!("echo x > '{}/intruder'", dir.join("out5").display());
    let r =
        p.e.dkt(&["node", "run", "--input=dmg", "--output=out5", &racing]);
    r.fails(1);
    let conflicted = r.stdout().trim().to_owned();
    let run = &runs(&p.e, &conflicted)[0];
    assert_eq!(run["status"], "conflict");
    assert!(run["staging"].is_string(), "{run}");
    let run = run["id"].as_str().unwrap().to_owned();
    for target in [&overwriting[..8], &conflicted[..8], &run[..8]] {
        let bad = agree(dir, target);
        assert!(bad.is_empty(), "{target}: {bad:?}");
    }
}

#[test]
fn a_store_written_by_the_format_2_release_verifies_the_same() {
    require_python();
    let e = Env::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format2.tar.gz");
    let status = Command::new("tar")
        .arg("-C")
        .arg(e.path())
        .arg("--strip-components=2")
        .arg("-xzf")
        .arg(&fixture)
        .status()
        .unwrap();
    assert!(status.success());
    let dir = e.path();
    let target = std::fs::read_to_string(dir.join("expected/target")).unwrap();
    let target = target.trim();
    // dkt upgrades the store when it first opens it (records keep their bytes and their
    // stored-order seals); the Python verifier then reads the format-4 store.
    let bad = agree(dir, target);
    assert!(bad.is_empty(), "{bad:?}");
    let node = std::fs::read_to_string(dir.join("expected/node")).unwrap();
    assert!(agree(dir, &node.trim()[..8]).is_empty());
    // The legacy seals are checked, not skipped: a member changed in an old record is
    // caught by both.
    let store = dtk::Store::open(&dir.join(".dkt/.git")).unwrap();
    let versions = store.snapshot().unwrap().walk("versions").unwrap();
    let (dmg, _) = versions
        .iter()
        .find(|(path, _)| path.contains("/dmg/") && path.ends_with(".json"))
        .expect("a dmg version");
    let old: Value = store.snapshot().unwrap().read_json(dmg).unwrap().unwrap();
    let digest = old["digest"].as_str().unwrap().to_owned();
    assert!(
        digest.len() == 64 && !digest.contains(':'),
        "a legacy seal: {digest}"
    );
    let dmg_version = old["version"].as_str().unwrap().to_owned();
    tamper(&dir.join(".dkt/.git"), dmg, |rec| {
        rec["source"] = Value::String("dmg".into());
        rec["extra"] = serde_json::json!({"BUILD": "forged"});
    });
    let dmg_target = short("dmg", &dmg_version);
    both_catch(dir, &dmg_target, "dmg:", "record digest");
}

#[test]
fn a_changed_record_member_is_caught_by_both() {
    let p = pipeline();
    tamper(&p.git_dir(), &run_path(&p), |rec| {
        rec["exit_code"] = Value::from(3);
    });
    both_catch(p.e.path(), &p.target(), "run ", "record digest");
}

#[test]
fn an_unknown_member_is_caught_by_both() {
    let p = pipeline();
    tamper(&p.git_dir(), &tests_path(&p), |rec| {
        rec["approved_by"] = Value::String("security team".into());
    });
    both_catch(p.e.path(), &p.target(), "tests:", "record digest");
}

#[test]
fn resealed_version_inputs_are_caught_by_both() {
    let p = pipeline();
    tamper(&p.git_dir(), &tests_path(&p), |rec| {
        rec["inputs"].as_array_mut().unwrap().pop();
        reseal(rec);
    });
    let bad = both_catch(p.e.path(), &p.target(), "tests:", "inputs are the run's");
    assert!(!bad
        .iter()
        .any(|(s, c)| s.starts_with("tests:") && c == "record digest"));
}

#[test]
fn a_rewritten_run_log_is_caught_by_both() {
    let p = pipeline();
    let store = dtk::Store::open(&p.git_dir()).unwrap();
    let run: dtk::RunId = p.run.parse().unwrap();
    store
        .transact("tamper log", |tx| {
            tx.put(&dtk::project::paths::run_log(&run), b"nothing to see\n")?;
            Ok(())
        })
        .unwrap();
    both_catch(p.e.path(), &p.target(), "run ", "log digest");
}

#[test]
fn a_forged_node_runs_entry_is_caught_by_both() {
    let p = pipeline();
    let index = dtk::project::paths::node_run(&p.node.parse().unwrap(), &p.run.parse().unwrap());
    tamper(&p.git_dir(), &index, |rec| {
        rec["status"] = Value::String("failure".into());
    });
    both_catch(p.e.path(), &p.target(), "run ", "node-runs index");
    both_catch(p.e.path(), &p.node[..8], "run ", "node-runs index");
}

#[test]
fn a_link_whose_content_is_not_its_id_is_caught_by_both() {
    let p = pipeline();
    let store = dtk::Store::open(&p.git_dir()).unwrap();
    let links = store.snapshot().unwrap().walk("links").unwrap();
    assert_eq!(links.len(), 1);
    let pitfall = p.pitfall.clone();
    tamper(&p.git_dir(), &links[0].0, |rec| {
        rec["from"]["source"] = Value::String("pitfall".into());
        rec["from"]["version"] = Value::String(pitfall);
    });
    both_catch(p.e.path(), &p.target(), "link pitfall:", "link ID");
    // Seen from the link's other end too.
    both_catch(
        p.e.path(),
        &short("pitfall", &p.pitfall),
        "link pitfall:",
        "link ID",
    );
}

#[test]
fn a_resealed_run_record_is_caught_by_both() {
    let p = pipeline();
    tamper(&p.git_dir(), &run_path(&p), |rec| {
        rec["worker"] = Value::String("someone-else:1".into());
        reseal(rec);
    });
    let bad = both_catch(p.e.path(), &p.target(), "tests:", "producing run's digest");
    assert!(!bad
        .iter()
        .any(|(s, c)| s.starts_with("run ") && c == "record digest"));
    // The run's own index entries are no longer its blob either.
    assert!(bad.iter().any(|(_, c)| c.starts_with("node-runs index")));
    // Verified from the run, the same.
    agree(p.e.path(), &p.run[..8]);
}
