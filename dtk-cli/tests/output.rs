//! What a run prints and how one watches it: stdout and stderr in order in one log, the
//! log of a timed-out run kept, a bounded log for a huge output, `--follow`, `node log
//! --follow`, Ctrl-C ending the node's process group, and a worker saying what it does.

mod common;
use common::*;

use std::process::Stdio;

fn newest_run(e: &Env, node: &str) -> Option<serde_json::Value> {
    e.dkt(&["--json", "node", "log", node])
        .json()
        .as_array()
        .and_then(|a| a.first().cloned())
}

fn log_of(e: &Env, node: &str) -> String {
    let run = newest_run(e, node).unwrap();
    e.dkt(&["--json", "node", "show", run["id"].as_str().unwrap()])
        .json()["log"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Define a node (each under the name `probe`, so each replaces the one before: a source
/// has one writer).
fn define(e: &Env, cmd: &str) -> String {
    e.dkt(&[
        "node",
        "run",
        "--no-run",
        "--name",
        "probe",
        "--input=in",
        "--output=out",
        cmd,
    ])
    .ok()
    .trim()
    .to_owned()
}

/// A command that leaves something in the background holding its output: the run ends
/// with the command, keeping what the background process printed until it let go of the
/// output, and a line without a newline at the end.
#[test]
fn output_a_background_process_prints_after_the_command_is_kept() {
    let e = Env::project();
    setup_io(&e);
    let id = define(
        &e,
        "(sleep 1; echo late) & printf 'first\\n'; printf 'no newline'",
    );
    e.dkt(&["node", "rerun", &id]).ok();
    assert_eq!(newest_run(&e, &id).unwrap()["status"], "success");
    let log = log_of(&e, &id);
    assert!(log.contains("first\n"), "{log:?}");
    assert!(log.contains("no newline"), "{log:?}");
    assert!(log.contains("late\n"), "{log:?}");
}

#[test]
fn stdout_and_stderr_keep_their_order_and_a_timeout_keeps_the_log() {
    let e = Env::project();
    setup_io(&e);
    let cmd = "for i in 1 2 3; do echo out$i; echo err$i >&2; done";
    let id = define(&e, cmd);
    e.dkt(&["node", "rerun", &id]).ok();
    assert_eq!(log_of(&e, &id), "out1\nerr1\nout2\nerr2\nout3\nerr3\n");
    let cmd = "echo before-the-limit; sleep 30; echo never";
    let id = define(&e, cmd);
    let r = e.dkt(&["node", "rerun", "--timeout", "1s", &id]);
    r.fails(1);
    assert!(r.stdout().contains("failure"), "{}", r.stdout());
    let log = log_of(&e, &id);
    assert!(log.starts_with("before-the-limit\n"), "{log}");
    assert!(log.contains("[dkt: timed out after 1s"), "{log}");
    assert!(!log.contains("never"), "{log}");
}

#[test]
fn a_huge_output_is_kept_bounded() {
    let e = Env::project();
    setup_io(&e);
    // 24 MB of output.
    let id = define(
        &e,
        "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 24000000; echo; echo LAST-LINE",
    );
    e.dkt(&["node", "rerun", &id]).ok();
    let log = log_of(&e, &id);
    assert!(log.len() < 9_000_000, "{}", log.len());
    assert!(log.contains("bytes of output left out]"));
    assert!(log.starts_with("0123456789abcdefghijklmnopqrstuvwxyz\n"));
    assert!(log.ends_with("LAST-LINE\n"), "{}", &log[log.len() - 100..]);
}

#[test]
fn follow_streams_lines_with_the_node_prefix() {
    let e = Env::project();
    setup_io(&e);
    let r = e.dkt(&[
        "node",
        "run",
        "--follow",
        "--input=in",
        "--output=out",
        "echo hello-follow; echo second-line >&2",
    ]);
    let id = r.ok().trim().to_owned();
    let err = r.stderr();
    assert!(err.contains(&format!("[{id}] hello-follow")), "{err}");
    assert!(err.contains(&format!("[{id}] second-line")), "{err}");
    // Without --follow (stderr is not a terminal here), no lines.
    let r = e.dkt(&["node", "rerun", &id]);
    r.ok();
    assert!(!r.stderr().contains("hello-follow"), "{}", r.stderr());
}

#[test]
fn node_log_follow_attaches_to_a_running_run() {
    let e = Env::project();
    setup_io(&e);
    e.write("gate", "");
    let gate = e.path().join("gate");
    let cmd = format!(
        "echo first-part; while [ -e '{}' ]; do sleep 0.05; done; echo second-part",
        gate.display()
    );
    let id = define(&e, &cmd);
    let mut running = e
        .cmd()
        .args(["node", "rerun", &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the run to start", || {
        newest_run(&e, &id).is_some_and(|r| r["status"] == "running")
    });
    let follower = e
        .cmd()
        .args(["node", "log", "--follow", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first line in the live log", || {
        std::fs::read_dir(e.path().join(".dkt/logs"))
            .map(|d| {
                d.filter_map(|x| x.ok()).any(|x| {
                    std::fs::read_to_string(x.path())
                        .unwrap_or_default()
                        .contains("first-part")
                })
            })
            .unwrap_or(false)
    });
    std::fs::remove_file(&gate).unwrap();
    assert!(running.wait().unwrap().success());
    let out = follower.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "first-part\nsecond-part\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ended: success"));
    // The live log is gone once the run is recorded.
    let left: Vec<_> = std::fs::read_dir(e.path().join(".dkt/logs"))
        .unwrap()
        .filter_map(|x| x.ok())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn ctrl_c_ends_the_commands_process_group_and_records_the_run_interrupted() {
    let e = Env::project();
    setup_io(&e);
    let pid_file = e.path().join("pid");
    let cmd = format!(
        "echo $$ > '{}'; sleep 30; touch ${{out:ROOT}}/side-effect",
        pid_file.display()
    );
    let id = define(&e, &cmd);
    let dkt = e
        .cmd()
        .args(["node", "rerun", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the command to start", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let shell: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(dkt.id() as i32, libc::SIGINT) }, 0);
    let out = dkt.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    // The node's shell is gone (its process group was ended), and it published nothing.
    // SAFETY: signal 0 only checks whether the process exists.
    let alive = unsafe { libc::kill(shell, 0) } == 0;
    assert!(!alive, "the node's shell {shell} outlived dkt");
    assert!(!e.path().join("out/side-effect").exists());
    let run = newest_run(&e, &id).unwrap();
    assert_eq!(run["status"], "interrupted");
    assert!(log_of(&e, &id).contains("cancelled"));
    git(e.path(), &["--git-dir", ".dkt/.git", "fsck", "--strict"]);
}

#[test]
fn a_worker_writes_what_it_does_as_it_happens() {
    let e = Env::project();
    setup_io(&e);
    let log = e.path().join("worker.log");
    let file = std::fs::File::create(&log).unwrap();
    let worker = e
        .cmd()
        .args(["worker", "--labels", "a,b"])
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the worker to say it waits", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("waiting: no pending run"))
    });
    // A run it cannot take: it says which labels are missing.
    e.dkt(&[
        "node",
        "run",
        "--labels=zzz",
        "--input=in",
        "--output=out",
        "echo needs-zzz",
    ])
    .ok();
    wait_for("the worker to name the labels", || {
        std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("matches labels a,b") && t.contains("(zzz)"))
    });
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) }, 0);
    let status = worker.wait_with_output().unwrap().status;
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_daemon_writes_runs_as_they_happen() {
    let e = Env::project();
    setup_io(&e);
    let gate = e.path().join("gate");
    e.write("gate", "");
    let cmd = format!(
        "while [ -e '{}' ]; do sleep 0.05; done; cp ${{in:ROOT}}/a.txt ${{out:ROOT}}/",
        gate.display()
    );
    let id = define(&e, &cmd);
    let log = e.path().join("daemon.log");
    let daemon = e
        .cmd()
        .args(["daemon", "--interval", "1s"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The start of the run is in the file while the run is still going.
    wait_for("the run's start in the daemon's output", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains(&format!("of node {id}: started")))
    });
    assert!(!std::fs::read_to_string(&log).unwrap().contains("success"));
    std::fs::remove_file(&gate).unwrap();
    wait_for("the run's end", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("next pass in"))
    });
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains(&format!("of node {id}: success")));
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(daemon.id() as i32, libc::SIGINT) }, 0);
    assert!(daemon.wait_with_output().unwrap().status.success());
}
