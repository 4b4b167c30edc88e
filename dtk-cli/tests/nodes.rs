//! `dkt node run|list|log|show`: scope, variables, provenance, failures, kills, labels.

mod common;
use common::*;

fn latest(e: &Env, name: &str) -> String {
    let list = e.dkt(&["--json", "source", "list"]).json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()["latest"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn design_example_end_to_end() {
    let e = Env::project();
    let repo = e.path().join("pinata-src");
    let commits = pinata_repo(&repo);
    e.dkt(&["source", "add", "pinata", "pinata-src"]).ok();
    e.dkt(&[
        "source",
        "add",
        "pitfall",
        "pinata",
        "--path",
        "/v1/pitfall",
    ])
    .ok();
    e.write("dmg/build-2246/Docker.dmg", "dmg bytes\n");
    e.dkt(&["source", "add", "dmg", "dmg"]).ok();
    e.dkt(&["source", "add", "tests", "./results"]).fails(2); // does not exist yet
    std::fs::create_dir_all(e.path().join("results")).unwrap();
    e.dkt(&["source", "add", "tests", "./results"]).ok();
    // This machine has the node's label.
    std::fs::write(
        e.path().join(".dkt/config"),
        "[worker]\nlabels = [\"linux\", \"test\"]\n",
    )
    .unwrap();
    e.write(
        "test.sh",
        "mkdir -p ${tests:ROOT}/run\n${pitfall:ROOT}/pitfall --os=linux --commit=${pitfall:COMMIT} > ${tests:ROOT}/run/STDOUT\nls ${dmg:ROOT} >> ${tests:ROOT}/run/STDOUT\n",
    );
    let before = latest(&e, "tests");
    let id = e
        .dkt(&[
            "node",
            "run",
            "--labels=test",
            "--input=dmg,pitfall",
            "--output=tests",
            "test.sh",
        ])
        .ok();
    let id = id.trim().to_owned();
    assert_eq!(id.len(), 8);
    // Same node again: same ID, no new node, nothing rerun (inputs unchanged).
    let commits_before = e.commits();
    let again = e.dkt(&[
        "node",
        "run",
        "--labels=test",
        "--input=pitfall,dmg",
        "--output=tests",
        "test.sh",
    ]);
    assert_eq!(again.ok().trim(), id);
    assert!(again.stderr().contains("up to date"), "{}", again.stderr());
    assert_eq!(e.commits(), commits_before);
    // The script ran on the materialized sub-tree and wrote into the output.
    let out = std::fs::read_to_string(e.path().join("results/run/STDOUT")).unwrap();
    assert_eq!(
        out,
        format!("pitfall --os=linux --commit={}\nbuild-2246\n", commits[1])
    );
    // The user's script is not modified.
    assert!(std::fs::read_to_string(e.path().join("test.sh"))
        .unwrap()
        .contains("${tests:ROOT}"));
    let after = latest(&e, "tests");
    assert_ne!(before, after);
    // Listings.
    let list = e.dkt(&["node", "list"]).ok();
    let row: Vec<&str> = list.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row,
        [id.as_str(), "test.sh", "test", "dmg,pitfall", "tests"]
    );
    let log = e.dkt(&["node", "log", &id]).ok();
    let row: Vec<&str> = log.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[1], "success");
    let dmg = latest(&e, "dmg");
    assert_eq!(
        row[2],
        format!("dmg:{},pitfall:{}", &dmg[4..12], &commits[1][..8])
    );
    assert_eq!(row[3], format!("tests:{}", &after[4..12]));
    // The output version records its provenance.
    let versions = e.dkt(&["--json", "node", "log", &id]).json();
    assert_eq!(versions[0]["outputs"][0]["version"], after);
    let show = e.dkt(&["node", "show", row[0]]).ok();
    assert!(show.contains("status   success"), "{show}");
}

#[test]
fn yaml_node_file() {
    let e = Env::project();
    setup_io(&e);
    e.write(
        "node.yml",
        "name: yaml\ninputs: [in]\noutputs: [out]\nrun:\n  - cp ${in:ROOT}/a.txt ${out:ROOT}/b.txt\n  - echo second >> ${out:ROOT}/b.txt\n  - exit 3\n  - echo never > ${out:ROOT}/c.txt\n",
    );
    let r = e.dkt(&["node", "run", "node.yml"]);
    r.fails(1);
    assert!(r.stderr().contains("exit status 3"), "{}", r.stderr());
    assert!(
        !e.path().join("out/b.txt").exists(),
        "nothing published on failure"
    );
    e.write(
        "node.yml",
        "name: yaml\ninputs: [in]\noutputs: [out]\nrun:\n  - cp ${in:ROOT}/a.txt ${out:ROOT}/b.txt\n  - echo second >> ${out:ROOT}/b.txt\n",
    );
    e.dkt(&["node", "run", "node.yml"]).ok();
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/b.txt")).unwrap(),
        "hello\nsecond\n"
    );
    e.write("bad.yml", "inputs: [in]\nrun: [\"true\"]\nlabelz: [x]\n");
    let err = e.dkt(&["node", "run", "bad.yml"]).fails(2);
    assert!(
        err.contains("bad.yml") && err.contains("labelz") && err.contains("line"),
        "{err}"
    );
}

#[test]
fn hostile_values_are_never_code() {
    let e = Env::project();
    // Were any of these run as shell code, it would create INJECTED* in the project's
    // root (DKT_PROJECT_ROOT is set for every command), where the scan below looks; the
    // command's own working directory is deleted after the run.
    let evil_dir =
        "d i'r\";$(cd $DKT_PROJECT_ROOT && touch INJECTED1)`cd $DKT_PROJECT_ROOT && touch INJECTED2`";
    std::fs::create_dir_all(e.path().join(evil_dir)).unwrap();
    e.write(&format!("{evil_dir}/f"), "x");
    std::fs::create_dir_all(e.path().join("out")).unwrap();
    e.dkt(&["source", "add", "evil", &format!("./{evil_dir}")])
        .ok();
    e.dkt(&["source", "add", "out", "out"]).ok();
    let value = "v; cd $DKT_PROJECT_ROOT && touch INJECTED3 $(cd $DKT_PROJECT_ROOT && touch INJECTED4) `cd $DKT_PROJECT_ROOT && touch INJECTED5` \"q\" 'q' # c\nline2 && cd $DKT_PROJECT_ROOT && touch INJECTED6";
    let config = format!("[vars]\nEVIL = {}\n", toml_string(value));
    std::fs::write(e.path().join(".dkt/config"), config).unwrap();
    e.dkt(&[
        "node", "run", "--name", "hostile", "--input=evil", "--output=out",
        "printf '%s\\n' \"${EVIL}\" > \"${out:ROOT}/quoted\"; echo ${EVIL} > \"${out:ROOT}/bare\"; ls \"${evil:ROOT}\" > \"${out:ROOT}/ls\"",
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/quoted")).unwrap(),
        format!("{value}\n")
    );
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/ls")).unwrap(),
        "f\n"
    );
    assert!(std::fs::read_to_string(e.path().join("out/bare"))
        .unwrap()
        .contains("$(cd $DKT_PROJECT_ROOT && touch INJECTED4)"));
    // Programs with arguments get the values as arguments, no shell at all.
    e.dkt(&[
        "node",
        "run",
        "--name",
        "hostile",
        "--output=out",
        "--",
        "sh",
        "-c",
        "printf %s \"$1\" > \"$2\"",
        "sh",
        "${EVIL}",
        "${out:ROOT}/argv",
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/argv")).unwrap(),
        value
    );
    let found = walk_names(e.path());
    assert!(
        !found.iter().any(|n| n.starts_with("INJECTED")),
        "{found:?}"
    );
    // The scan sees what a command run as code would create there.
    e.dkt(&[
        "node",
        "run",
        "--name",
        "hostile",
        "--output=out",
        "cd $DKT_PROJECT_ROOT && touch CONTROL",
    ])
    .ok();
    assert!(walk_names(e.path()).contains(&"CONTROL".to_owned()));
    // Unknown source, field or variable: an error before anything runs.
    let commits = e.commits();
    for (cmd, quoted) in [
        ("echo ${nosuch:ROOT} > /tmp/dkt-never", "${nosuch:ROOT}"),
        ("echo ${out:NOFIELD}", "${out:NOFIELD}"),
    ] {
        let err = e
            .dkt(&["node", "run", "--name", "hostile", "--output=out", cmd])
            .fails(2);
        assert!(err.contains(quoted), "{cmd}: {err}");
    }
    // (Defining a node is recorded; no run of them is.)
    let runs = git(
        e.path(),
        &[
            "--git-dir",
            ".dkt/.git",
            "log",
            "--format=%s",
            &format!("HEAD~{}..HEAD", e.commits() - commits),
        ],
    );
    assert!(!runs.contains("started"), "{runs}");
    // Shell defaults are the shell's business.
    e.dkt(&[
        "node",
        "run",
        "--name",
        "hostile",
        "--output=out",
        "echo ${UNSET_THING:-fallback} > ${out:ROOT}/def",
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/def")).unwrap(),
        "fallback\n"
    );
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn walk_names(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk_names(&e.path()));
            }
        }
    }
    out
}

#[test]
fn secrets_never_reach_records_logs_or_history() {
    let e = Env::new();
    e.dkt(&["init", "--github-token=ghp_CANARY_kind_credential_1"])
        .ok();
    // A secret of the node's own, from standard input.
    let mut set = e
        .cmd()
        .args(["secret", "set", "NODE_TOKEN"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    set.stdin
        .take()
        .unwrap()
        .write_all(b"ghp_CANARY_node_secret_42\n")
        .unwrap();
    assert!(set.wait().unwrap().success());
    setup_io(&e);
    let id = e
        .dkt(&["node", "run", "--input=in", "--output=out", "echo token=${NODE_TOKEN}; echo ${NODE_TOKEN} >&2; printf %s ${NODE_TOKEN} | wc -c > ${out:ROOT}/len"])
        .ok();
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/len"))
            .unwrap()
            .trim(),
        "25"
    );
    let log = e.dkt(&["node", "log", id.trim()]).ok();
    let run = log
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let show = e.dkt(&["node", "show", &run]).ok();
    assert!(show.contains("token=***"), "{show}");
    assert!(!show.contains("CANARY"));
    // A failing run's error and hooks too.
    e.dkt(&[
        "node",
        "run",
        "--on-failure=echo ${NODE_TOKEN}",
        "echo ${NODE_TOKEN}; exit 1",
    ])
    .fails(1);
    let history = git(e.path(), &["--git-dir", ".dkt/.git", "log", "-p", "--all"]);
    assert!(!history.contains("CANARY"));
    let objects = git(
        e.path(),
        &[
            "--git-dir",
            ".dkt/.git",
            "cat-file",
            "--batch-all-objects",
            "--batch",
        ],
    );
    assert!(!objects.contains("CANARY"), "a git object holds the secret");
}

#[test]
fn failing_command_records_failure_and_publishes_nothing() {
    let e = Env::project();
    setup_io(&e);
    let before = latest(&e, "out");
    let r = e.dkt(&[
        "node",
        "run",
        "--input=in",
        "--output=out",
        "--on-failure=touch hook-ran",
        "echo partial > ${out:ROOT}/p; echo oops >&2; exit 7",
    ]);
    r.fails(1);
    let id = r.stdout().trim().to_owned();
    assert_eq!(latest(&e, "out"), before);
    assert!(!e.path().join("out/p").exists());
    assert!(e.path().join("hook-ran").exists());
    let log = e.dkt(&["--json", "node", "log", &id]).json();
    assert_eq!(log[0]["status"], "failure");
    assert_eq!(log[0]["exit_code"], 7);
    let run = log[0]["id"].as_str().unwrap()[..8].to_owned();
    assert!(e.dkt(&["node", "show", &run]).ok().contains("oops"));
    // Running again retries (a new attempt), since nothing succeeded.
    e.dkt(&[
        "node",
        "run",
        "--input=in",
        "--output=out",
        "--on-failure=touch hook-ran",
        "echo partial > ${out:ROOT}/p; echo oops >&2; exit 7",
    ])
    .fails(1);
    assert_eq!(
        e.dkt(&["--json", "node", "log", &id])
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn timeout_ends_the_process_group() {
    let e = Env::project();
    setup_io(&e);
    let r = e.dkt(&[
        "node",
        "run",
        "--timeout=1s",
        "--output=out",
        "sleep 600 & sleep 600; echo done > ${out:ROOT}/x",
    ]);
    r.fails(1);
    assert!(r.stderr().contains("timed out"), "{}", r.stderr());
    assert!(!e.path().join("out/x").exists());
    let id = r.stdout().trim().to_owned();
    assert_eq!(
        e.dkt(&["--json", "node", "log", &id]).json()[0]["status"],
        "failure"
    );
    e.dkt(&["node", "run", "--timeout=soon", "true"]).fails(2);
}

#[test]
fn a_killed_run_is_interrupted_and_publishes_nothing() {
    let e = Env::project();
    setup_io(&e);
    let before = latest(&e, "out");
    // The command says when it has written its output, then waits to be let go: dkt is
    // killed while the command runs, whatever the machine's speed.
    let cmd = "echo x > ${out:ROOT}/x; touch $DKT_PROJECT_ROOT/wrote; \
               while [ ! -e $DKT_PROJECT_ROOT/go ]; do sleep 0.05; done";
    let mut child = e
        .cmd()
        .args(["node", "run", "--input=in", "--output=out", cmd])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the command to write its output", || {
        e.path().join("wrote").exists()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // Let the orphaned command end.
    std::fs::write(e.path().join("go"), "").unwrap();
    let nodes = e.dkt(&["--json", "node", "list"]).json();
    let id = nodes[0]["id"].as_str().unwrap().to_owned();
    let log = e.dkt(&["--json", "node", "log", &id]).json();
    assert_eq!(log[0]["status"], "interrupted");
    assert_eq!(latest(&e, "out"), before);
    assert!(!e.path().join("out/x").exists());
    // Running again records the interruption and then runs.
    e.dkt(&["node", "run", "--input=in", "--output=out", cmd])
        .ok();
    let log = e.dkt(&["--json", "node", "log", &id]).json();
    let statuses: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["success", "interrupted"]);
    // What the killed run left on disk (its scratch copy of the output) is gone.
    let killed = log.as_array().unwrap()[1]["id"].as_str().unwrap()[..8].to_owned();
    let left: Vec<String> = std::fs::read_dir(e.path().join(".dkt/tmp"))
        .map(|d| {
            d.filter_map(|x| x.ok())
                .map(|x| x.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("run-{killed}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    git(e.path(), &["--git-dir", ".dkt/.git", "fsck", "--strict"]);
}

#[test]
fn labels_that_do_not_match_leave_the_run_pending() {
    let e = Env::project();
    setup_io(&e);
    let r = e.dkt(&[
        "node",
        "run",
        "--labels=osx,test",
        "--input=in",
        "--output=out",
        "touch ${out:ROOT}/ran",
    ]);
    let id = r.ok().trim().to_owned();
    assert!(r.stderr().contains("pending"), "{}", r.stderr());
    assert!(!e.path().join("out/ran").exists());
    let log = e.dkt(&["node", "log", &id]).ok();
    assert!(log.lines().nth(1).unwrap().contains("pending"), "{log}");
    // Same again: still one pending run.
    e.dkt(&[
        "node",
        "run",
        "--labels=osx,test",
        "--input=in",
        "--output=out",
        "touch ${out:ROOT}/ran",
    ])
    .ok();
    assert_eq!(
        e.dkt(&["--json", "node", "log", &id])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A machine with those labels runs it.
    std::fs::write(
        e.path().join(".dkt/config"),
        "[worker]\nlabels = [\"osx\", \"test\", \"linux\"]\n",
    )
    .unwrap();
    e.dkt(&[
        "node",
        "run",
        "--labels=osx,test",
        "--input=in",
        "--output=out",
        "touch ${out:ROOT}/ran",
    ])
    .ok();
    assert!(e.path().join("out/ran").exists());
    let log = e.dkt(&["--json", "node", "log", &id]).json();
    assert_eq!(log.as_array().unwrap().len(), 1);
    assert_eq!(log[0]["status"], "success");
}

#[test]
fn unchanged_inputs_do_nothing_and_new_inputs_run_again() {
    let e = Env::project();
    setup_io(&e);
    let id = e
        .dkt(&[
            "node",
            "run",
            "--input=in",
            "--output=out",
            "cat ${in:ROOT}/a.txt >> ${out:ROOT}/all",
        ])
        .ok();
    let commits = e.commits();
    e.dkt(&[
        "node",
        "run",
        "--input=in",
        "--output=out",
        "cat ${in:ROOT}/a.txt >> ${out:ROOT}/all",
    ])
    .ok();
    assert_eq!(e.commits(), commits);
    e.write("in/a.txt", "again\n");
    e.dkt(&["source", "update", "in"]).ok();
    e.dkt(&[
        "node",
        "run",
        "--input=in",
        "--output=out",
        "cat ${in:ROOT}/a.txt >> ${out:ROOT}/all",
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/all")).unwrap(),
        "hello\nagain\n"
    );
    assert_eq!(
        e.dkt(&["--json", "node", "log", id.trim()])
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // --force runs again on the same inputs.
    e.dkt(&[
        "node",
        "run",
        "--force",
        "--input=in",
        "--output=out",
        "cat ${in:ROOT}/a.txt >> ${out:ROOT}/all",
    ])
    .ok();
    assert_eq!(
        e.dkt(&["--json", "node", "log", id.trim()])
            .json()
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn graph_rules() {
    let e = Env::project();
    setup_io(&e);
    let err = e
        .dkt(&["node", "run", "--input=in", "--output=in", "true"])
        .fails(2);
    assert!(err.contains("cycle"), "{err}");
    e.dkt(&[
        "node",
        "run",
        "--no-run",
        "--input=in",
        "--output=out",
        "true",
    ])
    .ok();
    let err = e
        .dkt(&[
            "node",
            "run",
            "--no-run",
            "--input=out",
            "--output=in",
            "true",
        ])
        .fails(2);
    assert!(
        err.contains("cycle") && err.contains("source in") && err.contains("source out"),
        "{err}"
    );
    let err = e.dkt(&["node", "run", "--input=nosuch", "true"]).fails(2);
    assert!(err.contains("\"nosuch\""), "{err}");
    let repo = e.path().join("g");
    pinata_repo(&repo);
    e.dkt(&["source", "add", "g", "g"]).ok();
    // A git source is a sink (tests/git_sink.rs); a node that writes nothing into it
    // commits nothing, and its version stays.
    let before = latest(&e, "g");
    e.dkt(&["node", "run", "--output=g", "true"]).ok();
    assert_eq!(latest(&e, "g"), before);
    let err = e.dkt(&["node", "run", "--labels=a b", "true"]).fails(2);
    assert!(err.contains("\"a b\""), "{err}");
}

/// Hooks run, and their output goes to the run's log, never to dkt's stdout: `--json`
/// output stays valid JSON alone.
#[test]
fn hook_output_goes_to_the_run_log() {
    let e = Env::project();
    setup_io(&e);
    for (cmd, flag, said) in [
        (
            "true",
            "--on-success=echo HOOK-OK; echo HOOK-ERR >&2; touch ok-ran",
            "HOOK-OK",
        ),
        (
            "exit 3",
            "--on-failure=echo HOOK-FAILED; touch failed-ran",
            "HOOK-FAILED",
        ),
    ] {
        let r = e.dkt(&[
            "--json",
            "node",
            "run",
            "--name",
            "hooked",
            "--input=in",
            "--output=out",
            flag,
            cmd,
        ]);
        let stdout = r.stdout();
        let parsed: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|err| panic!("not JSON alone ({err}): {stdout}"));
        assert!(!stdout.contains(said), "{stdout}");
        assert!(!r.stderr().contains(said), "{}", r.stderr());
        let id = e
            .dkt(&[
                "node",
                "run",
                "--no-run",
                "--name",
                "hooked",
                "--input=in",
                "--output=out",
                flag,
                cmd,
            ])
            .ok();
        let run = runs(&e, id.trim())[0]["id"].as_str().unwrap().to_owned();
        let show = e.dkt(&["--json", "node", "show", &run]).json();
        let log = show["log"].as_str().unwrap();
        assert!(log.contains(said), "{log}");
        if said == "HOOK-OK" {
            assert!(log.contains("HOOK-ERR"), "{log}");
            assert!(log.contains("on-success hook"), "{log}");
        }
        assert!(parsed.is_object() || parsed.is_array(), "{parsed}");
    }
    assert!(e.path().join("ok-ran").exists());
    assert!(e.path().join("failed-ran").exists());
}

/// A script file's content is part of its node: editing it makes a new node, and runs
/// execute the recorded content (so a clone, or a deleted file, runs what was recorded).
#[test]
fn a_script_file_is_recorded_with_its_node() {
    let e = Env::project();
    setup_io(&e);
    e.write("test.sh", "echo one > ${out:ROOT}/v\n");
    let run = |e: &Env| {
        e.dkt(&[
            "node",
            "run",
            "--name",
            "script",
            "--input=in",
            "--output=out",
            "test.sh",
        ])
        .ok()
        .trim()
        .to_owned()
    };
    let first = run(&e);
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/v")).unwrap(),
        "one\n"
    );
    // Same content: same node, nothing to do.
    assert_eq!(run(&e), first);
    // Edited: another node, which runs the new content.
    e.write("test.sh", "echo two > ${out:ROOT}/v\n");
    let second = run(&e);
    assert_ne!(second, first);
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/v")).unwrap(),
        "two\n"
    );
    // The first node was replaced under the name; the new one, its file gone, still runs
    // what was recorded for it.
    std::fs::write(e.path().join("out/v"), "clobbered\n").unwrap();
    e.dkt(&["source", "update", "out"]).ok();
    std::fs::remove_file(e.path().join("test.sh")).unwrap();
    e.dkt(&["node", "rerun", "script"]).ok();
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/v")).unwrap(),
        "two\n"
    );
    // `node show` and the manifest say which content ran.
    let runs = runs(&e, &second);
    let show = e
        .dkt(&["--json", "node", "show", runs[0]["id"].as_str().unwrap()])
        .json();
    let digest = show["script"]["digest"].as_str().unwrap().to_owned();
    assert_eq!(show["script"]["path"], "test.sh");
    assert!(digest.starts_with("blake3:"), "{digest}");
    let text = e
        .dkt(&["node", "show", runs[0]["id"].as_str().unwrap()])
        .ok();
    assert!(
        text.contains(&format!("script   test.sh {digest}")),
        "{text}"
    );
    let out = latest(&e, "out");
    let manifest = e
        .dkt(&["--json", "inspect", &format!("out:{}", &out[4..12])])
        .json();
    let run_entry = manifest
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x.get("node").is_some())
        .unwrap();
    assert_eq!(run_entry["script"]["digest"], digest.as_str());
    // The recorded content is in the store under its digest.
    let blob = git(
        e.path(),
        &[
            "--git-dir",
            ".dkt/.git",
            "show",
            &format!(
                "main:scripts/{}",
                dtk_core_fan_hex(&digest["blake3:".len()..])
            ),
        ],
    );
    assert_eq!(blob, "echo two > ${out:ROOT}/v\n");
}

/// `x/y/HEX`: where the store keeps a script (fanned out by its first two hex digits).
fn dtk_core_fan_hex(hex: &str) -> String {
    format!("{}/{}/{hex}", &hex[..1], &hex[1..2])
}
