//! `dkt reproduce` (a recorded run again, compared with what it published, the result
//! recorded and exported as a SLSA verification summary) and sandboxed runs (bubblewrap).

mod common;
use common::*;

use std::io::Write;

/// A git source `pinata` (the design's repository) and a path source `in`, an empty path
/// output `out`, and a node reading both that runs `lines`. Returns the node's short ID.
fn project(e: &Env, lines: &[&str], extra: &str) -> String {
    pinata_repo(&e.path().join("pinata-src"));
    e.dkt(&["source", "add", "pinata", "pinata-src"]).ok();
    e.write("in/a.txt", "hello\n");
    e.write("in/sub/b.txt", "world\n");
    std::fs::create_dir_all(e.path().join("out")).unwrap();
    e.dkt(&["source", "add", "in", "in"]).ok();
    e.dkt(&["source", "add", "out", "out"]).ok();
    let mut file = String::from("inputs: [pinata, in]\noutputs: [out]\n");
    file.push_str(extra);
    file.push_str("run:\n");
    for l in lines {
        file.push_str(&format!("  - '{}'\n", l.replace('\'', "''")));
    }
    e.write("node.yml", &file);
    e.dkt(&["node", "run", "node.yml"]).ok().trim().to_owned()
}

fn last_run(e: &Env, node: &str) -> String {
    runs(e, node)[0]["id"].as_str().unwrap().to_owned()
}

fn check_vsa(e: &Env, file: &std::path::Path, expected: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/check_provenance.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg("vsa")
        .arg(file)
        .arg(expected)
        .current_dir(e.path())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "consumer rejected the statement (pip install in-toto-attestation):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const DETERMINISTIC: &[&str] = &[
    "cp ${in:ROOT}/a.txt ${out:ROOT}/a.txt",
    "mkdir -p ${out:ROOT}/deep && cat ${in:ROOT}/sub/b.txt ${pinata:ROOT}/README.md > ${out:ROOT}/deep/both.txt",
    "echo ${pinata:COMMIT} > ${out:ROOT}/commit",
];

#[test]
fn a_deterministic_node_reproduces_identically_and_the_result_is_recorded_and_exported() {
    let e = Env::project();
    let node = project(&e, DETERMINISTIC, "");
    let run = last_run(&e, &node);
    let commits = e.commits();
    let runs_before = runs(&e, &node).len();
    let rep = e.dkt(&["--json", "reproduce", &run[..8]]).json();
    assert_eq!(rep["outcome"], "identical", "{rep}");
    assert_eq!(rep["run"], run.as_str());
    assert_eq!(rep["outputs"][0]["source"], "out");
    assert_eq!(rep["outputs"][0]["identical"], true);
    assert!(rep["digest"].as_str().unwrap().starts_with("blake3-jcs:"));
    // One commit (the reproduction), no run recorded, nothing published.
    assert_eq!(e.commits(), commits + 1);
    assert_eq!(runs(&e, &node).len(), runs_before);
    let files = git(
        e.path(),
        &[
            "--git-dir",
            ".dkt/.git",
            "ls-tree",
            "-r",
            "--name-only",
            "main",
            "reproductions",
        ],
    );
    assert!(
        files.contains(&format!("/{run}/{}.json", rep["id"].as_str().unwrap())),
        "{files}"
    );
    // By a version it made, too; text report and exit 0.
    let out = latest(&e, "out");
    let text = e.dkt(&["reproduce", &format!("out:{}", &out[4..12])]).ok();
    assert!(text.contains("identical"), "{text}");
    // Shown by node show and inspect.
    let show = e.dkt(&["node", "show", &run[..8]]).ok();
    assert!(
        show.contains("reproduced ") && show.contains(" identical"),
        "{show}"
    );
    let shown = e.dkt(&["--json", "node", "show", &run[..8]]).json();
    assert_eq!(shown["reproductions"].as_array().unwrap().len(), 2);
    let manifest = e.dkt(&["inspect", &format!("out:{}", &out[4..12])]).ok();
    assert!(
        manifest
            .lines()
            .any(|l| l.starts_with("# ") && l.contains("identical")),
        "{manifest}"
    );
    // Exported as a verification summary, loaded by the reference consumer.
    let vsa = e.dkt(&["inspect", "--format", "vsa", &run[..8]]).json();
    assert_eq!(
        vsa["predicateType"],
        "https://slsa.dev/verification_summary/v1"
    );
    assert_eq!(vsa["predicate"]["verificationResult"], "PASSED");
    assert_eq!(vsa["subject"][0]["name"], format!("out:{out}"));
    let file = e.path().join("vsa.json");
    e.dkt(&["reproduce", &run[..8], "--vsa-out", file.to_str().unwrap()])
        .ok();
    check_vsa(&e, &file, "PASSED");
    // The store still verifies (reproductions are outside the provenance chain).
    e.dkt(&["verify", &format!("out:{}", &out[4..12])]).ok();
}

#[test]
fn a_node_writing_the_date_or_a_random_number_is_reported_differing_naming_the_file() {
    let e = Env::project();
    let mut lines = DETERMINISTIC.to_vec();
    lines.push("date +%s%N > ${out:ROOT}/stamp.txt");
    lines.push("od -An -N16 -tx8 /dev/urandom > ${out:ROOT}/deep/random");
    let node = project(&e, &lines, "");
    let run = last_run(&e, &node);
    let r = e.dkt(&["--json", "reproduce", &run[..8]]);
    assert_eq!(r.code(), 1, "{}{}", r.stdout(), r.stderr());
    let rep: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(rep["outcome"], "differs");
    let changed: Vec<&str> = rep["outputs"][0]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["deep/random", "stamp.txt"], "{rep}");
    let r = e.dkt(&["reproduce", &run[..8]]);
    assert_eq!(r.code(), 1);
    let text = r.stdout();
    assert!(text.contains("changed  stamp.txt"), "{text}");
    assert!(text.contains("changed  deep/random"), "{text}");
    assert!(
        !text.contains("a.txt"),
        "identical files are not listed: {text}"
    );
    let file = e.path().join("vsa.json");
    let r = e.dkt(&["reproduce", &run[..8], "--vsa-out", file.to_str().unwrap()]);
    assert_eq!(r.code(), 1);
    check_vsa(&e, &file, "FAILED");
}

#[test]
fn a_node_whose_input_version_is_gone_reports_it() {
    let e = Env::project();
    let node = project(&e, DETERMINISTIC, "");
    let run = last_run(&e, &node);
    let before = latest(&e, "in");
    // A path source keeps only its current content: the run's version is gone.
    e.write("in/a.txt", "changed\n");
    let r = e.dkt(&["--json", "reproduce", &run[..8]]);
    assert_eq!(r.code(), 3, "{}{}", r.stdout(), r.stderr());
    let rep: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(rep["outcome"], "unavailable");
    assert_eq!(rep["unavailable"]["version"]["source"], "in");
    assert_eq!(rep["unavailable"]["version"]["version"], before.as_str());
    let r = e.dkt(&["reproduce", &run[..8]]);
    assert_eq!(r.code(), 3);
    assert!(
        r.stdout()
            .contains(&format!("in:{before} is no longer available")),
        "{}",
        r.stdout()
    );
    // A failed run cannot be reproduced: a usage error, nothing recorded.
    e.write("f.yml", "inputs: [in]\nrun: 'false'\n");
    let failing = e.dkt(&["node", "run", "f.yml"]);
    assert_eq!(failing.code(), 1);
    let frun = last_run(&e, failing.stdout().trim());
    let err = e.dkt(&["reproduce", &frun[..8]]).fails(2);
    assert!(err.contains("only a successful run"), "{err}");
    let shown = e.dkt(&["--json", "node", "show", &frun[..8]]).json();
    assert_eq!(shown["reproductions"].as_array().unwrap().len(), 0);
}

#[test]
fn a_git_input_whose_commit_was_removed_upstream_reproduces_from_the_mirror_or_names_it() {
    let e = Env::project();
    let node = project(&e, DETERMINISTIC, "");
    let run = last_run(&e, &node);
    let src = e.path().join("pinata-src");
    let old = git(&src, &["rev-parse", "HEAD"]).trim().to_owned();
    // Force-push the branch back one commit and garbage-collect the dropped one.
    git(&src, &["reset", "-q", "--hard", "HEAD~1"]);
    git(&src, &["reflog", "expire", "--expire=now", "--all"]);
    git(&src, &["gc", "-q", "--prune=now"]);
    assert!(std::process::Command::new("git")
        .current_dir(&src)
        .args(["cat-file", "-e", &old])
        .status()
        .map(|s| !s.success())
        .unwrap());
    // The project's mirror still has it: the run reproduces.
    e.dkt(&["reproduce", &run[..8]]).ok();
    // Without the mirror, the commit is named.
    std::fs::remove_dir_all(e.path().join(".dkt/cache")).unwrap();
    let r = e.dkt(&["reproduce", &run[..8]]);
    assert_eq!(r.code(), 3, "{}{}", r.stdout(), r.stderr());
    assert!(
        r.stdout()
            .contains(&format!("pinata:sha1:{old} is no longer available")),
        "{}",
        r.stdout()
    );
}

fn bwrap_works() {
    let ok = std::process::Command::new("bwrap")
        .args([
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "true",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "these tests need bubblewrap working (apt-get install bubblewrap; user namespaces)"
    );
}

/// A loopback TCP server accepting (and dropping) connections; returns its port.
fn server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(b"hi\n");
        }
    });
    port
}

#[test]
fn the_sandbox_denies_the_network_unless_the_node_declares_it() {
    bwrap_works();
    let port = server();
    let connect = format!(
        "bash -c \"exec 3<>/dev/tcp/127.0.0.1/{port}\" && echo connected > ${{out:ROOT}}/net"
    );
    // Unsandboxed, the connection works.
    let e = Env::project();
    setup_io(&e);
    e.write(
        "n.yml",
        &format!("inputs: [in]\noutputs: [out]\nrun: '{connect}'\n"),
    );
    e.dkt(&["node", "run", "n.yml"]).ok();
    // Sandboxed: it fails (a network namespace of its own).
    let e = Env::project();
    setup_io(&e);
    e.write(
        "n.yml",
        &format!("inputs: [in]\noutputs: [out]\nsandbox: true\nrun: '{connect}'\n"),
    );
    let r = e.dkt(&["node", "run", "n.yml"]);
    assert_eq!(r.code(), 1, "{}{}", r.stdout(), r.stderr());
    assert!(!e.path().join("out/net").exists());
    // Sandboxed with `network: true`: it works.
    let e = Env::project();
    setup_io(&e);
    e.write(
        "n.yml",
        &format!("inputs: [in]\noutputs: [out]\nsandbox: true\nnetwork: true\nrun: '{connect}'\n"),
    );
    e.dkt(&["node", "run", "n.yml"]).ok();
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/net")).unwrap(),
        "connected\n"
    );
    // `network` without `sandbox` is an error.
    e.write(
        "bad.yml",
        "inputs: [in]\noutputs: [out]\nnetwork: true\nrun: 'true'\n",
    );
    e.dkt(&["node", "run", "bad.yml"]).fails(2);
}

#[test]
fn the_sandbox_denies_writes_outside_the_outputs_hides_secrets_and_cleans_the_environment() {
    bwrap_works();
    let e = Env::project();
    e.write("in/unread.txt", "never opened\n");
    e.write("in/deep/c.txt", "opened by a relative path\n");
    setup_io(&e);
    let mut secret = e
        .cmd()
        .args(["secret", "set", "API_TOKEN"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    secret
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cr3t-value")
        .unwrap();
    assert!(secret.wait().unwrap().success());
    let o = "${out:ROOT}";
    let lines = [
        format!("(echo x > ${{in:ROOT}}/new && echo wrote || echo denied) > {o}/input"),
        format!("(echo x > $DKT_PROJECT_ROOT/new && echo wrote || echo denied) > {o}/project"),
        format!("(echo x > /tmp/new && echo wrote || echo denied) > {o}/tmp"),
        format!("(cat $DKT_PROJECT_ROOT/.dkt/secrets/API_TOKEN || echo hidden) > {o}/secret"),
        format!("(ls $DKT_PROJECT_ROOT/.dkt/secrets || echo hidden) > {o}/secrets"),
        format!("(test -e $DKT_PROJECT_ROOT/.dkt/config && echo seen || echo hidden) > {o}/config"),
        format!("cat ${{in:ROOT}}/a.txt > {o}/read"),
        "cd ${in:ROOT} && cat deep/c.txt > /dev/null".to_owned(),
        format!("(env | grep -c LEAK_ME || true) > {o}/env"),
    ];
    let mut file = String::from("inputs: [in]\noutputs: [out]\nsandbox: true\nrun:\n");
    for l in &lines {
        file.push_str(&format!("  - '{l}'\n"));
    }
    e.write("n.yml", &file);
    let r = e
        .cmd()
        .args(["node", "run", "n.yml"])
        .env("LEAK_ME", "1")
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let read = |f: &str| std::fs::read_to_string(e.path().join("out").join(f)).unwrap();
    assert_eq!(read("input"), "denied\n");
    assert_eq!(read("project"), "denied\n");
    assert_eq!(read("tmp"), "wrote\n", "a private /tmp is writable");
    assert_eq!(read("secret"), "hidden\n");
    assert_eq!(read("secrets"), "hidden\n");
    assert_eq!(read("config"), "hidden\n");
    assert_eq!(read("read"), "hello\n");
    assert_eq!(
        read("env"),
        "0\n",
        "dkt's environment does not reach the command"
    );
    assert!(!e.path().join("in/new").exists());
    assert!(!e.path().join("new").exists());
    // The sandboxed node's ID (which covers `sandbox`) verifies, in dkt and in the
    // independent verifier written from docs/format.md.
    let out = latest(&e, "out");
    let target = format!("out:{}", &out[4..12]);
    e.dkt(&["verify", &target]).ok();
    let py = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/verifier/dtk_verify.py"
        ))
        .arg("--git-dir")
        .arg(e.path().join(".dkt/.git"))
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "dtk_verify.py (pip install blake3 rfc8785):\n{}{}",
        String::from_utf8_lossy(&py.stdout),
        String::from_utf8_lossy(&py.stderr)
    );
    // What it opened of its input (strace is installed with the test tools).
    let files = e.dkt(&["--json", "inspect", "--files", &target]).json();
    assert_eq!(
        files["read_files"],
        serde_json::json!({ "in": ["a.txt", "deep/c.txt"] }),
        "{files}"
    );
    let table = e.dkt(&["inspect", "--files", &target]).ok();
    assert!(table.contains("in") && table.contains("a.txt"), "{table}");
    // A sandboxed run reproduces, sandboxed, identically.
    let node = e.dkt(&["--json", "node", "list"]).json()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = last_run(&e, &node);
    let rep = e.dkt(&["--json", "reproduce", &run[..8]]).json();
    assert_eq!(rep["sandbox"], true);
    assert_eq!(rep["outcome"], "identical", "{rep}");
}

#[test]
fn a_sandboxed_node_without_bubblewrap_fails_clearly_and_does_not_run() {
    let e = Env::project();
    setup_io(&e);
    e.write(
        "n.yml",
        "inputs: [in]\noutputs: [out]\nsandbox: true\nrun: 'echo ran > ${out:ROOT}/ran'\n",
    );
    let r = e
        .cmd()
        .args(["node", "run", "n.yml"])
        .env("DKT_BWRAP", e.path().join("no-bwrap"))
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    let node = e.dkt(&["--json", "node", "list"]).json()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rec = &runs(&e, &node)[0];
    assert_eq!(rec["status"], "failure");
    let error = rec["error"].as_str().unwrap();
    assert!(error.contains("bubblewrap"), "{error}");
    assert!(error.contains("not run unsandboxed"), "{error}");
    assert!(!e.path().join("out/ran").exists());
    // PATH without bwrap: the same.
    let dir = e.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let r = e
        .cmd()
        .args(["node", "rerun", &node, "--sandbox"])
        .env("PATH", &dir)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    let rec = &runs(&e, &node)[0];
    assert!(
        rec["error"].as_str().unwrap().contains("not on PATH"),
        "{rec}"
    );
    assert!(!e.path().join("out/ran").exists());
}

#[test]
fn reproductions_made_in_two_copies_merge_as_a_union() {
    // `_hub_dir` keeps the hub alive until the end of the test.
    let common::world::World { a, b, _hub_dir, .. } = common::world::world();
    let node = a
        .dkt(&[
            "node",
            "run",
            "--input=up",
            "--output=out",
            "cp ${up:ROOT}/README.md ${out:ROOT}/README.md",
        ])
        .ok()
        .trim()
        .to_owned();
    let run = last_run(&a, &node);
    a.dkt(&["push"]).ok();
    b.dkt(&["pull"]).ok();
    // B's copy of the output directory holds what the run published.
    std::fs::copy(
        a.path().join("out/README.md"),
        b.path().join("out/README.md"),
    )
    .unwrap();
    for e in [&a, &b] {
        let rep = e.dkt(&["--json", "reproduce", &run[..8]]).json();
        assert_eq!(rep["outcome"], "identical", "{rep}");
    }
    a.dkt(&["remote", "add", "b", b.path().to_str().unwrap()])
        .ok();
    b.dkt(&["remote", "add", "a", a.path().to_str().unwrap()])
        .ok();
    let pulled = a.dkt(&["--json", "pull", "b"]).json();
    assert_eq!(pulled["how"], "merged", "{pulled}");
    b.dkt(&["pull", "a"]).ok();
    for e in [&a, &b] {
        let shown = e.dkt(&["--json", "node", "show", &run[..8]]).json();
        assert_eq!(
            shown["reproductions"].as_array().unwrap().len(),
            2,
            "{shown}"
        );
        let status = e.dkt(&["--json", "status"]).json();
        assert!(
            status["conflicts"].as_array().is_none_or(|c| c.is_empty()),
            "{status}"
        );
    }
}
