//! Faults that lose data or stop a project: hostile node commands, locks left by killed
//! processes (or held by `git gc`), runs paused for longer than their lease.

mod common;
use common::*;

use std::path::Path;
use std::time::Duration;

fn fsck(e: &Env) {
    git(e.path(), &["--git-dir", ".dkt/.git", "fsck", "--strict"]);
}

/// A node that replaces its output's ROOT with a symbolic link must not make dtk move the
/// link's target (here: the node's own input, and a directory elsewhere) into the output.
#[test]
fn a_symlink_at_an_output_root_is_refused_and_moves_nothing() {
    let e = Env::project();
    setup_io(&e);
    e.write("victim/keep.txt", "precious\n");
    let out_before = std::fs::read_dir(e.path().join("out")).unwrap().count();
    for target in ["${in:ROOT}", &e.path().join("victim").display().to_string()] {
        let cmd = format!("rm -rf ${{out:ROOT}} && ln -s {target} ${{out:ROOT}}");
        let r = e.dkt(&[
            "node",
            "run",
            "--name",
            "linker",
            "--input=in",
            "--output=out",
            &cmd,
        ]);
        let err = r.fails(1);
        assert!(err.contains("symbolic link"), "{err}");
        assert!(err.contains("nothing was published"), "{err}");
        let id = e
            .dkt(&[
                "node",
                "run",
                "--no-run",
                "--name",
                "linker",
                "--input=in",
                "--output=out",
                &cmd,
            ])
            .ok();
        let log = runs(&e, id.trim());
        assert_eq!(log[0]["status"], "failure", "{log:?}");
    }
    // The input and the unrelated directory are where they were, untouched.
    assert_eq!(
        std::fs::read_to_string(e.path().join("in/a.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        std::fs::read_to_string(e.path().join("victim/keep.txt")).unwrap(),
        "precious\n"
    );
    let out = e.path().join("out");
    assert!(!out.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), out_before);
    fsck(&e);
}

/// Set `path`'s modification time `secs` seconds in the past.
fn age(path: &Path, secs: u64) {
    let t = std::time::SystemTime::now() - Duration::from_secs(secs);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// After `git gc` packs the branch, a `packed-refs.lock` left by a killed process is
/// recovered like the branch's own lock; a fresh one (a live writer or `git gc`) is waited
/// for, not failed on.
#[test]
fn a_stale_packed_refs_lock_does_not_stop_the_project() {
    let e = Env::project();
    setup_io(&e);
    let git_dir = e.path().join(".dkt/.git");
    git(e.path(), &["--git-dir", ".dkt/.git", "gc", "--quiet"]);
    let packed = std::fs::read_to_string(git_dir.join("packed-refs")).unwrap();
    assert!(packed.contains("refs/heads/main"), "{packed}");
    assert!(
        !git_dir.join("refs/heads/main").exists(),
        "the branch is packed"
    );

    // Left by a process killed a minute ago.
    let lock = git_dir.join("packed-refs.lock");
    std::fs::write(&lock, packed.as_bytes()).unwrap();
    age(&lock, 60);
    let commits = e.commits();
    e.write("d1/x", "1");
    e.dkt(&["source", "add", "d1", "d1"]).ok();
    assert_eq!(e.commits(), commits + 1);
    assert!(!lock.exists(), "the stale lock was removed");

    // Held right now by a live writer, released a moment later: the write waits.
    git(e.path(), &["--git-dir", ".dkt/.git", "pack-refs", "--all"]);
    std::fs::write(&lock, b"").unwrap();
    let release = {
        let lock = lock.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            std::fs::remove_file(lock).unwrap();
        })
    };
    e.write("d2/x", "2");
    e.dkt(&["source", "add", "d2", "d2"]).ok();
    release.join().unwrap();
    assert_eq!(e.commits(), commits + 2);
    // git itself can work on the store again.
    git(e.path(), &["--git-dir", ".dkt/.git", "gc", "--quiet"]);
    fsck(&e);
}

/// A `dkt` stopped (SIGSTOP: Ctrl-Z, a suspended laptop) for longer than its lease while
/// its run executes: another process declares the run interrupted and runs it again; when
/// the first resumes, it publishes nothing, records nothing, and says so.
#[test]
fn a_paused_run_that_was_taken_over_publishes_nothing() {
    let e = Env::project();
    setup_io(&e);
    std::fs::write(e.path().join(".dkt/config"), "[worker]\nlease = \"1s\"\n").unwrap();
    // The command waits to be let go, so the first run is still going when it is stopped.
    let cmd = "while [ ! -e $DKT_PROJECT_ROOT/go ]; do sleep 0.05; done; \
               echo $DKT_RUN_ID > ${out:ROOT}/who";
    let id = e
        .dkt(&["node", "run", "--no-run", "--input=in", "--output=out", cmd])
        .ok();
    let id = id.trim().to_owned();
    let first = e
        .cmd()
        .args(["node", "rerun", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = first.id() as i32;
    wait_for("the first run to start", || {
        runs(&e, &id)
            .first()
            .is_some_and(|r| r["status"] == "running")
    });
    // SAFETY: stopping our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    wait_for("the stopped run's lease to expire", || {
        runs(&e, &id)
            .first()
            .is_some_and(|r| r["status"] == "interrupted")
    });
    // Another process runs the node again.
    e.write("go", "");
    e.dkt(&["node", "rerun", &id]).ok();
    let log = runs(&e, &id);
    assert_eq!(log[0]["status"], "success", "{log:?}");
    let second_run = log[0]["id"].as_str().unwrap().to_owned();
    let who = std::fs::read_to_string(e.path().join("out/who")).unwrap();
    assert!(who.trim().starts_with(&second_run), "{who} vs {second_run}");
    let published = e.dkt(&["--json", "source", "list"]).ok();
    let commits = e.commits();

    // SAFETY: resuming our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let out = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("taken over"), "{stderr}");
    assert!(stderr.contains("nothing was published"), "{stderr}");
    // The newer result stands: same output, same records, no flip back to success.
    let who_after = std::fs::read_to_string(e.path().join("out/who")).unwrap();
    assert_eq!(who_after, who);
    assert_eq!(e.dkt(&["--json", "source", "list"]).ok(), published);
    assert_eq!(e.commits(), commits);
    let statuses: Vec<String> = runs(&e, &id)
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["success", "interrupted"]);
    fsck(&e);
}

/// `-C` naming no directory is an error (as with git), never the enclosing project; a bad
/// `[run] timeout` is refused before anything is claimed or recorded.
#[test]
fn bad_input_is_refused_before_anything_happens() {
    let e = Env::project();
    setup_io(&e);
    let err = e.dkt(&["-C", "typo-dir", "source", "list"]).fails(2);
    assert!(err.contains("typo-dir"), "{err}");
    std::fs::write(e.path().join(".dkt/config"), "[run]\ntimeout = \"soon\"\n").unwrap();
    let commits = e.commits();
    let id = e
        .dkt(&[
            "node",
            "run",
            "--no-run",
            "--input=in",
            "--output=out",
            "true",
        ])
        .ok();
    let commits_after_define = e.commits();
    assert_eq!(commits_after_define, commits + 1);
    let err = e.dkt(&["node", "rerun", id.trim()]).fails(2);
    assert!(err.contains("timeout") && err.contains("soon"), "{err}");
    assert_eq!(e.commits(), commits_after_define, "nothing recorded");
    assert!(runs(&e, id.trim()).is_empty(), "no run claimed");
}

/// A run record whose attempt counter is at its maximum (only a forged record can be):
/// the next run is refused with a clear error, never numbered 0 again (a wrap-around
/// would reuse the first attempt's run ID).
#[test]
fn an_attempt_counter_at_its_maximum_is_refused_not_wrapped() {
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
    let run: dtk::RunId = runs(&e, &node)[0]["id"].as_str().unwrap().parse().unwrap();
    let store = dtk::Store::open(&e.path().join(".dkt/.git")).unwrap();
    let path = dtk::project::paths::run(&run);
    let mut rec: serde_json::Value = store.snapshot().unwrap().read_json(&path).unwrap().unwrap();
    rec["attempt"] = serde_json::json!(u32::MAX);
    store
        .transact("forge an attempt counter", |tx| {
            tx.put_json(&path, &rec)?;
            Ok(())
        })
        .unwrap();
    let before = e.commits();
    let r = e.dkt(&["node", "rerun", &node]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(r.stderr().contains("4294967295"), "{}", r.stderr());
    assert_eq!(e.commits(), before, "nothing recorded");
    assert_eq!(runs(&e, &node).len(), 1);
}

/// Whether process `pid` is stopped (SIGSTOP), from `/proc/PID/stat`.
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
        .unwrap_or(false)
}

/// The run a recorded version names as its producer (`None`: a polled version).
fn producer(e: &Env, source: &str, version: &str) -> Option<String> {
    let store = dtk::Store::open(&e.path().join(".dkt/.git")).unwrap();
    let name = dtk::Name::new(source).unwrap();
    let version: dtk::Version = version.parse().unwrap();
    let rec: dtk::VersionRecord = store
        .snapshot()
        .unwrap()
        .read_json(&dtk::project::paths::version(&name, &version))
        .unwrap()
        .unwrap_or_else(|| panic!("no record of {source}:{version}"));
    rec.run.map(|r| r.to_hex())
}

/// A node that counts its executions in `count` and writes `result` into `out`; returns
/// its ID (defined, not run).
fn counting_node(e: &Env) -> String {
    let cmd = "echo ran >> $DKT_PROJECT_ROOT/count; \
               echo made by $DKT_RUN_ID > ${out:ROOT}/result";
    e.dkt(&[
        "node",
        "run",
        "--no-run",
        "--name",
        "maker",
        "--input=in",
        "--output=out",
        cmd,
    ])
    .ok()
    .trim()
    .to_owned()
}

/// Start `dkt node rerun ID` that stops itself at `point` of publishing, and wait until it
/// is stopped there; returns the child.
fn stopped_at(e: &Env, id: &str, point: &str) -> std::process::Child {
    let child = e
        .cmd()
        .args(["node", "rerun", id])
        .env("DKT_TEST_PAUSE_AT", point)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for(&format!("the run to stop at {point:?}"), || stopped(pid));
    child
}

fn kill9(mut child: std::process::Child) {
    // SAFETY: killing our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    child.wait().unwrap();
}

/// Killed after publishing its output and before recording its result (at each of the
/// two moments: after the intent says so, and before it does), a run is completed by the
/// next command: its output's version is recorded with the run as its provenance, the
/// run `success`, nothing runs twice, and `dkt verify` passes. While its process is alive
/// (stopped) in that window, polling the output records nothing and says why.
#[test]
fn a_run_killed_between_publishing_and_recording_is_completed_with_its_provenance() {
    for point in ["record", "published"] {
        let e = Env::project();
        setup_io(&e);
        let id = counting_node(&e);
        let before = latest(&e, "out");
        let child = stopped_at(&e, &id, point);
        // Published: the content is there, the result not recorded.
        assert!(e.path().join("out/result").exists(), "{point}");
        assert!(runs(&e, &id)[0]["status"] == "running", "{point}");

        // A poll in this window leaves the output to its run.
        let update = e.dkt(&["source", "update", "out"]).ok();
        assert!(update.contains("is publishing to it"), "{point}: {update}");
        assert_eq!(latest(&e, "out"), before, "{point}: nothing recorded");
        let json = e.dkt(&["--json", "source", "update", "out"]).json();
        assert!(json[0]["publishing"].is_string(), "{point}: {json}");

        kill9(child);
        // The next pass completes it instead of recording a plain polled version or
        // running the node again.
        e.dkt(&["run"]).ok();
        let log = runs(&e, &id);
        assert_eq!(log.len(), 1, "{point}: {log:?}");
        assert_eq!(log[0]["status"], "success", "{point}: {log:?}");
        let run = log[0]["id"].as_str().unwrap().to_owned();
        let now = latest(&e, "out");
        assert_ne!(now, before, "{point}");
        let made_by = producer(&e, "out", &now).unwrap_or_else(|| panic!("{point}: no run"));
        assert!(made_by.starts_with(&run), "{point}: {made_by} vs {run}");
        let result = std::fs::read_to_string(e.path().join("out/result")).unwrap();
        assert!(result.contains(&run[..8]), "{point}: {result}");
        let count = std::fs::read_to_string(e.path().join("count")).unwrap();
        assert_eq!(count.lines().count(), 1, "{point}: executed once");
        let verified = e.dkt(&["verify", &format!("out:{now}")]).ok();
        assert!(verified.contains("verified"), "{point}: {verified}");
        let shown = e.dkt(&["node", "show", &run[..8]]).ok();
        assert!(shown.contains("recorded by"), "{point}: {shown}");
        // Nothing left behind: no intent, no claim, no scratch copy (an emptied scratch
        // area kept for the next run, `tmp/free-*`, holds nothing but an empty `work/`).
        for dir in ["queue/intents", "queue/publishing", "queue/settling", "tmp"] {
            let left: Vec<_> = std::fs::read_dir(e.path().join(".dkt").join(dir))
                .map(|d| {
                    d.flatten()
                        .filter(|e| !free_scratch(&e.path()))
                        .map(|e| e.file_name())
                        .collect()
                })
                .unwrap_or_default();
            assert!(left.is_empty(), "{point}: {dir} holds {left:?}");
        }
        // Up to date from here on.
        e.dkt(&["run"]).ok();
        assert_eq!(runs(&e, &id).len(), 1, "{point}");
        fsck(&e);
    }
}

/// Killed after recording its intent and before publishing anything, a run is rolled
/// back (`interrupted`, nothing published) and the next pass runs the node again; the
/// version it makes carries that run.
#[test]
fn a_run_killed_before_publishing_is_rolled_back_and_run_again() {
    let e = Env::project();
    setup_io(&e);
    let id = counting_node(&e);
    let before = latest(&e, "out");
    let child = stopped_at(&e, &id, "publish");
    assert!(!e.path().join("out/result").exists());
    kill9(child);
    e.dkt(&["source", "update", "out"]).ok();
    assert_eq!(latest(&e, "out"), before, "nothing was published");
    e.dkt(&["run"]).ok();
    assert_eq!(statuses(&e, &id), ["success", "interrupted"]);
    let log = runs(&e, &id);
    assert!(
        log[1]["error"]
            .as_str()
            .is_some_and(|m| m.contains("nothing was published")),
        "{log:?}"
    );
    let run = log[0]["id"].as_str().unwrap().to_owned();
    let now = latest(&e, "out");
    assert!(producer(&e, "out", &now).is_some_and(|r| r.starts_with(&run)));
    e.dkt(&["verify", &format!("out:{now}")]).ok();
    fsck(&e);
}
