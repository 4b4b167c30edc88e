//! Options and paths of `dkt` that other tests do not reach: `source log -n`, several names
//! in one `source update`, `-v`/`-vv`/`DKT_LOG`, the `DKT_*_TOKEN` variables, `[run]
//! timeout` and `run --timeout`, `dkt run`'s exit code, `worker --max-runs`, `verify` of
//! node and run IDs, unknown IDs, and `clone` from a git URL with tokens.

mod common;
use common::*;

/// The rows of a table printed by `dkt` (its header dropped).
fn rows(table: &str) -> Vec<&str> {
    table.lines().skip(1).collect()
}

#[test]
fn source_log_n_shows_the_newest_n_versions() {
    let e = Env::project();
    let repo = e.path().join("repo");
    let commits = pinata_repo(&repo);
    e.dkt(&["source", "add", "r", "repo"]).ok();
    let all = e.dkt(&["source", "log", "r"]).ok();
    assert_eq!(rows(&all).len(), 2, "{all}");
    for n in ["1", "2", "5"] {
        let out = e.dkt(&["source", "log", "-n", n, "r"]).ok();
        let want = n.parse::<usize>().unwrap().min(2);
        assert_eq!(rows(&out), rows(&all)[..want], "-n {n}: {out}");
    }
    let out = e.dkt(&["source", "log", "--max-count=1", "r"]).ok();
    assert!(rows(&out)[0].contains(&commits[0][..8]), "{out}");
    let json = e.dkt(&["--json", "source", "log", "-n", "1", "r"]).json();
    assert_eq!(json.as_array().unwrap().len(), 1, "{json}");
    e.dkt(&["source", "log", "-n", "many", "r"]).fails(2);
}

#[test]
fn source_update_polls_every_source_it_names_and_only_those() {
    let e = Env::project();
    for s in ["a", "b", "c"] {
        e.write(&format!("{s}/x"), "1\n");
        e.dkt(&["source", "add", s, s]).ok();
    }
    let latest = |e: &Env| -> Vec<String> {
        e.dkt(&["--json", "source", "list"])
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["latest"].as_str().unwrap().to_owned())
            .collect()
    };
    let before = latest(&e);
    for s in ["a", "b", "c"] {
        e.write(&format!("{s}/x"), "2\n");
    }
    // An unknown name among them: bad input, nothing polled, nothing recorded.
    let commits = e.commits();
    let err = e.dkt(&["source", "update", "a", "nope", "b"]).fails(2);
    assert!(err.contains("\"nope\""), "{err}");
    assert_eq!(latest(&e), before);
    assert_eq!(e.commits(), commits);
    // Two names: both polled, the third left as it was.
    let out = e.dkt(&["source", "update", "a", "b"]).ok();
    assert!(out.contains('a') && out.contains('b'), "{out}");
    let after = latest(&e);
    assert_ne!(after[0], before[0]);
    assert_ne!(after[1], before[1]);
    assert_eq!(after[2], before[2], "c was not named");
}

#[test]
fn verbosity_flags_and_dkt_log_choose_what_is_logged() {
    let e = Env::project();
    pinata_repo(&e.path().join("repo"));
    e.dkt(&["source", "add", "r", "repo"]).ok();
    // The git kind logs each fetch at debug level.
    let stderr = |args: &[&str], dkt_log: Option<&str>| {
        let mut c = e.cmd();
        c.env_remove("DKT_LOG");
        if let Some(l) = dkt_log {
            c.env("DKT_LOG", l);
        }
        let out = c.args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let update = ["source", "update", "r"];
    assert!(!stderr(&update, None).contains("fetching"));
    assert!(!stderr(&[&["-v"][..], &update].concat(), None).contains("fetching"));
    let vv = stderr(&[&["-vv"][..], &update].concat(), None);
    assert!(vv.contains("DEBUG") && vv.contains("fetching"), "{vv}");
    let verbose = stderr(&[&["--verbose", "--verbose"][..], &update].concat(), None);
    assert!(verbose.contains("fetching"), "{verbose}");
    // DKT_LOG overrides both ways.
    assert!(stderr(&update, Some("debug")).contains("fetching"));
    assert!(!stderr(&[&["-vv"][..], &update].concat(), Some("warn")).contains("fetching"));
    assert!(stderr(&update, Some("dtk_sources=debug")).contains("fetching"));
}

#[test]
fn token_variables_are_kept_as_secrets_and_never_committed() {
    let e = Env::new();
    let tokens = [
        ("DKT_GITHUB_TOKEN", "GITHUB_TOKEN", "ghp-c4nary-env-1"),
        ("DKT_DOCKER_TOKEN", "DOCKER_TOKEN", "dock-c4nary-env-2"),
        (
            "DKT_HOCKEYAPP_TOKEN",
            "HOCKEYAPP_TOKEN",
            "hock-c4nary-env-3",
        ),
    ];
    let mut c = e.cmd();
    for (var, _, value) in tokens {
        c.env(var, value);
    }
    let out = c.arg("init").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = format!("{out:?}");
    for (var, file, value) in tokens {
        let kept = std::fs::read_to_string(e.path().join(".dkt/secrets").join(file));
        assert_eq!(kept.unwrap().trim(), value, "{var}");
        assert!(!printed.contains(value), "{var} printed: {printed}");
    }
    let history = git(
        e.path(),
        &[
            "--git-dir",
            ".dkt/.git",
            "log",
            "-p",
            "--all",
            "--format=%B",
        ],
    );
    for (var, _, value) in tokens {
        assert!(!history.contains(value), "{var} committed");
    }
    // A flag wins over its variable.
    let f = Env::new();
    let out = f
        .cmd()
        .env("DKT_HOCKEYAPP_TOKEN", "from-env")
        .args(["init", "--hockeyapp-token", "from-flag"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let kept = std::fs::read_to_string(f.path().join(".dkt/secrets/HOCKEYAPP_TOKEN")).unwrap();
    assert_eq!(kept.trim(), "from-flag");
}

/// A node whose run sleeps until killed, writing nothing: `(node id)`.
fn sleeper(e: &Env) -> String {
    setup_io(e);
    e.dkt(&[
        "node",
        "run",
        "--no-run",
        "--input=in",
        "--output=out",
        "sleep 600; touch ${out:ROOT}/never",
    ])
    .ok()
    .trim()
    .to_owned()
}

#[test]
fn run_timeouts_from_the_config_and_the_flag_fail_the_run_and_exit_1() {
    let e = Env::project();
    let id = sleeper(&e);
    // [run] timeout in .dkt/config.
    std::fs::write(e.path().join(".dkt/config"), "[run]\ntimeout = \"1s\"\n").unwrap();
    let r = e.dkt(&["run"]);
    r.fails(1);
    assert!(r.stdout().contains("failure"), "{}", r.stdout());
    assert_eq!(statuses(&e, &id), ["failure"]);
    let log = runs(&e, &id);
    assert!(
        log[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out"),
        "{log:?}"
    );
    // The flag wins over the config: a longer limit lets a quick command through.
    std::fs::write(e.path().join(".dkt/config"), "[run]\ntimeout = \"600s\"\n").unwrap();
    e.dkt(&["node", "rerun", "--timeout", "1s", &id]).fails(1);
    assert_eq!(runs(&e, &id)[0]["error"], "timed out after 1s");
    assert!(!e.path().join("out/never").exists());
    // `dkt run --timeout`.
    std::fs::remove_file(e.path().join(".dkt/config")).unwrap();
    e.write("in/b.txt", "a new input version\n");
    e.dkt(&["run", "--timeout", "1s"]).fails(1);
    e.dkt(&["run", "--timeout", "soon"]).fails(2);
    let log = runs(&e, &id);
    assert!(log.len() >= 2, "{log:?}");
    for r in &log {
        assert_eq!(r["status"], "failure", "{log:?}");
        assert!(
            r["error"]
                .as_str()
                .unwrap_or_default()
                .contains("timed out"),
            "{log:?}"
        );
    }
}

#[test]
fn dkt_run_exits_1_when_a_run_fails_and_0_when_all_succeed() {
    let e = Env::project();
    setup_io(&e);
    let bad = e
        .dkt(&[
            "node",
            "run",
            "--no-run",
            "--input=in",
            "--output=out",
            "exit 3",
        ])
        .ok()
        .trim()
        .to_owned();
    let r = e.dkt(&["run"]);
    r.fails(1);
    let row = r.stdout().lines().nth(1).unwrap_or_default().to_owned();
    assert!(
        row.starts_with(&bad[..8]) && row.contains("failure"),
        "{}",
        r.stdout()
    );
    assert_eq!(statuses(&e, &bad)[0], "failure");
    // Once the failing node is gone, a pass that runs nothing, and one that succeeds, exit 0.
    e.dkt(&["node", "rm", &bad]).ok();
    e.dkt(&["run"]).ok();
    let good = e
        .dkt(&[
            "node",
            "run",
            "--no-run",
            "--input=in",
            "--output=out",
            "cp ${in:ROOT}/a.txt ${out:ROOT}/",
        ])
        .ok()
        .trim()
        .to_owned();
    e.dkt(&["run"]).ok();
    assert_eq!(statuses(&e, &good), ["success"]);
}

#[test]
fn a_worker_with_max_runs_stops_after_that_many() {
    let e = Env::project();
    e.write("in/x", "1\n");
    e.dkt(&["source", "add", "in", "in"]).ok();
    let mut nodes = Vec::new();
    for i in 0..3 {
        std::fs::create_dir_all(e.path().join(format!("o{i}"))).unwrap();
        e.dkt(&["source", "add", &format!("o{i}"), &format!("o{i}")])
            .ok();
        let cmd = format!("cat ${{in:ROOT}}/x > ${{o{i}:ROOT}}/y");
        let id = e
            .dkt(&[
                "node",
                "run",
                "--no-run",
                "--labels=gpu",
                "--input=in",
                &format!("--output=o{i}"),
                &cmd,
            ])
            .ok();
        nodes.push(id.trim().to_owned());
    }
    let queued = e.dkt(&["run"]).ok();
    assert_eq!(queued.matches("pending").count(), 3, "{queued}");
    let done = |e: &Env| {
        nodes
            .iter()
            .filter(|n| statuses(e, n).first().is_some_and(|s| s == "success"))
            .count()
    };
    // The worker exits by itself (0) after two runs; the third stays queued.
    e.dkt(&["worker", "--labels=gpu", "--max-runs", "2"]).ok();
    assert_eq!(done(&e), 2);
    e.dkt(&["worker", "--labels=gpu", "--max-runs=1"]).ok();
    assert_eq!(done(&e), 3);
}

#[test]
fn verify_takes_node_and_run_ids_and_refuses_unknown_targets() {
    let e = Env::project();
    setup_io(&e);
    let node = e
        .dkt(&[
            "node",
            "run",
            "--input=in",
            "--output=out",
            "cp ${in:ROOT}/a.txt ${out:ROOT}/",
        ])
        .ok()
        .trim()
        .to_owned();
    let run = runs(&e, &node)[0]["id"].as_str().unwrap().to_owned();
    for target in [&node[..8], node.as_str(), &run[..8], run.as_str()] {
        let report = e.dkt(&["--json", "verify", target]).json();
        let checks = report["checks"]
            .as_array()
            .unwrap_or_else(|| panic!("{report}"));
        assert!(!checks.is_empty(), "{target}: {report}");
        assert!(
            checks.iter().all(|c| c["result"] != "mismatch"),
            "{target}: {report}"
        );
        e.dkt(&["verify", target]).ok();
    }
    for (unknown, quoted) in [
        ("ffffffff", "ffffffff"),
        ("out:ffffffff", "out:ffffffff"),
        ("nosuch:1234", "nosuch"),
        ("zz", "zz"),
    ] {
        let err = e.dkt(&["verify", unknown]).fails(2);
        assert!(err.contains(&format!("\"{quoted}\"")), "{unknown}: {err}");
    }
}

#[test]
fn node_log_and_show_refuse_unknown_ids_quoting_them() {
    let e = Env::project();
    setup_io(&e);
    e.dkt(&["node", "run", "--input=in", "--output=out", "true"])
        .ok();
    for cmd in [&["node", "log"][..], &["node", "show"]] {
        for id in ["ffffffff", "nosuch-name", "12"] {
            let err = e.dkt(&[cmd, &[id]].concat()).fails(2);
            assert!(err.contains(&format!("\"{id}\"")), "{cmd:?} {id}: {err}");
        }
    }
}

#[test]
fn clone_from_a_git_url_keeps_the_tokens_given() {
    let src = Env::project();
    setup_io(&src);
    let url = format!("file://{}", src.path().join(".dkt/.git").display());
    let dst = Env::new();
    let out = dst
        .cmd()
        .env("DKT_DOCKER_TOKEN", "dock-c4nary-clone")
        .args(["clone", &url, "copy", "--github-token", "ghp-c4nary-clone"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!format!("{out:?}").contains("c4nary"), "{out:?}");
    let copy = dst.path().join("copy");
    let secret = |name: &str| std::fs::read_to_string(copy.join(".dkt/secrets").join(name));
    assert_eq!(secret("GITHUB_TOKEN").unwrap().trim(), "ghp-c4nary-clone");
    assert_eq!(secret("DOCKER_TOKEN").unwrap().trim(), "dock-c4nary-clone");
    // The clone has the sources of the original.
    let list = dst
        .cmd()
        .current_dir(&copy)
        .args(["--json", "source", "list"])
        .output()
        .unwrap();
    let names: Vec<String> = serde_json::from_slice::<serde_json::Value>(&list.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["in", "out"]);
    // A git URL that leads nowhere: a failure outside the user's control is exit 1, and
    // no half-made project is left.
    let gone = format!("file://{}", dst.path().join("nowhere.git").display());
    let err = dst.dkt(&["clone", &gone, "other"]).fails(1);
    assert!(err.contains(&format!("\"{gone}\"")), "{err}");
    assert!(!dst.path().join("other/.dkt").exists());
}

/// A node in `e` (with `in` and `out`) whose command waits for the file `go` in the
/// project, then writes its run ID to `out/who`.
fn gated(e: &Env, labels: Option<&str>) -> String {
    setup_io(e);
    let cmd = "while [ ! -e $DKT_PROJECT_ROOT/go ]; do sleep 0.05; done; \
               echo $DKT_RUN_ID > ${out:ROOT}/who";
    let mut args = vec!["node", "run", "--no-run", "--input=in", "--output=out"];
    let l;
    if let Some(labels) = labels {
        l = format!("--labels={labels}");
        args.push(&l);
    }
    args.push(cmd);
    e.dkt(&args).ok().trim().to_owned()
}

fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

#[test]
fn sigint_mid_pass_lets_the_daemon_finish_the_pass_and_a_second_one_exits_130() {
    let e = Env::project();
    let id = gated(&e, None);
    let spawn = || {
        e.cmd()
            .args(["daemon", "--interval", "1s"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let running = |e: &Env| {
        runs(e, &id)
            .first()
            .is_some_and(|r| r["status"] == "running")
    };

    // One signal while the run goes: the run finishes and is published, then the daemon
    // exits 0 without starting another pass.
    let daemon = spawn();
    wait_for("the run to start", || running(&e));
    signal(&daemon, libc::SIGINT);
    e.write("go", "");
    let out = daemon.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("finishing what is in progress"), "{stderr}");
    assert!(
        stdout.contains(&format!("of node {id}: success")),
        "{stdout}"
    );
    assert!(!stdout.contains("next pass"), "{stdout}");
    assert_eq!(statuses(&e, &id), ["success"]);
    let who = std::fs::read_to_string(e.path().join("out/who")).unwrap();
    assert!(who.starts_with(runs(&e, &id)[0]["id"].as_str().unwrap()));

    // Two signals: exit 130 at once, the run left unfinished (recorded interrupted by the
    // next process), nothing published.
    std::fs::remove_file(e.path().join("go")).unwrap();
    e.write("in/b.txt", "new input\n");
    let out_before = latest_of(&e, "out");
    let log = e.path().join("daemon.err");
    let daemon = e
        .cmd()
        .args(["daemon", "--interval", "1s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("the second run to start", || running(&e));
    signal(&daemon, libc::SIGINT);
    wait_for("the daemon to take the first signal", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("finishing what is in progress"))
    });
    signal(&daemon, libc::SIGINT);
    let out = daemon.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("second signal"), "{stderr}");
    e.write("go", "");
    assert_eq!(statuses(&e, &id)[0], "interrupted");
    assert_eq!(latest_of(&e, "out"), out_before, "out was not published");
}

fn latest_of(e: &Env, source: &str) -> serde_json::Value {
    let list = e.dkt(&["--json", "source", "list"]).json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == source)
        .unwrap()["latest"]
        .clone()
}

/// A run that takes longer than its lease keeps it while its process lives: the lease is
/// renewed as the command runs, and the passes other processes make meanwhile (each looks
/// for runs whose holder stopped renewing) leave it alone.
#[test]
fn a_run_that_outlasts_its_lease_renews_it_and_is_left_alone() {
    let e = Env::project();
    setup_io(&e);
    std::fs::write(e.path().join(".dkt/config"), "[worker]\nlease = \"1s\"\n").unwrap();
    let id = e
        .dkt(&[
            "node",
            "run",
            "--no-run",
            "--input=in",
            "--output=out",
            "sleep 3; echo $DKT_RUN_ID > ${out:ROOT}/who",
        ])
        .ok()
        .trim()
        .to_owned();
    let first = e
        .cmd()
        .args(["run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the run to start", || {
        runs(&e, &id)
            .first()
            .is_some_and(|r| r["status"] == "running")
    });
    // Past its lease twice over, while other passes look for dead runs.
    let until = std::time::Instant::now() + std::time::Duration::from_millis(2200);
    while std::time::Instant::now() < until {
        e.dkt(&["run"]).ok();
        assert_eq!(statuses(&e, &id), ["running"]);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = runs(&e, &id);
    assert_eq!(statuses(&e, &id), ["success"], "{log:?}");
    let who = std::fs::read_to_string(e.path().join("out/who")).unwrap();
    assert!(who.starts_with(log[0]["id"].as_str().unwrap()), "{who}");
}

#[test]
fn a_stopped_worker_loses_its_lease_and_publishes_nothing_when_it_resumes() {
    let e = Env::project();
    let id = gated(&e, Some("gpu"));
    std::fs::write(e.path().join(".dkt/config"), "[worker]\nlease = \"1s\"\n").unwrap();
    let queued = e.dkt(&["run"]).ok();
    assert!(queued.contains("pending"), "{queued}");
    let (first_out, first_err) = (e.path().join("worker.out"), e.path().join("worker.err"));
    let first = e
        .cmd()
        .args(["worker", "--labels=gpu"])
        .stdout(std::fs::File::create(&first_out).unwrap())
        .stderr(std::fs::File::create(&first_err).unwrap())
        .spawn()
        .unwrap();
    let said = || {
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&first_out), read(&first_err))
    };
    wait_for("the first worker's run to start", || {
        runs(&e, &id)
            .first()
            .is_some_and(|r| r["status"] == "running")
    });
    // Stopped, alive: its lease runs out and the run is declared interrupted.
    signal(&first, libc::SIGSTOP);
    wait_for("the stopped worker's lease to expire", || {
        runs(&e, &id)
            .first()
            .is_some_and(|r| r["status"] == "interrupted")
    });
    // A second worker runs the node again, to the end.
    e.write("go", "");
    e.dkt(&["worker", "--labels=gpu", "--max-runs=1"]).ok();
    let log = runs(&e, &id);
    assert_eq!(log[0]["status"], "success", "{log:?}");
    let second = log[0]["id"].as_str().unwrap().to_owned();
    let who = std::fs::read_to_string(e.path().join("out/who")).unwrap();
    assert!(who.starts_with(&second), "{who} vs {second}");
    let published = e.dkt(&["--json", "source", "list"]).ok();
    let commits = e.commits();

    // The first resumes: its command has ended, its result is discarded.
    signal(&first, libc::SIGCONT);
    wait_for("the resumed worker to say its run was taken over", || {
        said().contains("taken over")
    });
    signal(&first, libc::SIGTERM);
    let status = first.wait_with_output().unwrap().status;
    assert!(status.success(), "{}", said());
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/who")).unwrap(),
        who
    );
    assert_eq!(e.dkt(&["--json", "source", "list"]).ok(), published);
    assert_eq!(e.commits(), commits);
    assert_eq!(statuses(&e, &id), ["success", "interrupted"]);
}

#[test]
fn git_failures_exit_with_their_documented_codes() {
    let e = Env::project();
    pinata_repo(&e.path().join("repo"));
    // A remote nobody answers at: outside the user's control, exit 1 (docs/git-kind.md).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("git://127.0.0.1:{port}/repo.git");
    let err = e.dkt(&["source", "add", "r", &url]).fails(1);
    assert!(
        err.contains(&url) && err.contains("cannot connect"),
        "{err}"
    );
    // Bad input: exit 2, quoting it.
    let err = e
        .dkt(&["source", "add", "r", "./repo:no-such-tag", "-k", "git"])
        .fails(2);
    assert!(err.contains("\"no-such-tag\""), "{err}");
    let err = e
        .dkt(&["source", "add", "r", "./no-such-dir", "-k", "git"])
        .fails(2);
    assert!(err.contains("no-such-dir"), "{err}");
    assert_eq!(
        e.dkt(&["--json", "source", "list"]).json(),
        serde_json::json!([])
    );
}
