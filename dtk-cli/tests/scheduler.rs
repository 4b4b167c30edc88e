//! `dkt run`, `dkt daemon`, `dkt worker`, `dkt node rerun`, `dkt source update NAME VERSION`,
//! and a chaos test killing daemon and workers.

mod common;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn chain(e: &Env) -> (String, String) {
    e.write("a/x", "1\n");
    for d in ["b", "c"] {
        std::fs::create_dir_all(e.path().join(d)).unwrap();
    }
    for s in ["a", "b", "c"] {
        e.dkt(&["source", "add", s, s]).ok();
    }
    let n1 = e
        .dkt(&[
            "node",
            "run",
            "--no-run",
            "--input=a",
            "--output=b",
            "cat ${a:ROOT}/x > ${b:ROOT}/y",
        ])
        .ok();
    let n2 = e
        .dkt(&[
            "node",
            "run",
            "--no-run",
            "--input=b",
            "--output=c",
            "cat ${b:ROOT}/y > ${c:ROOT}/z",
        ])
        .ok();
    (n1.trim().to_owned(), n2.trim().to_owned())
}

fn successes(e: &Env, node: &str) -> usize {
    runs(e, node)
        .iter()
        .filter(|r| r["status"] == "success")
        .count()
}

#[test]
fn a_pass_runs_what_changed_in_topological_order() {
    let e = Env::project();
    let (n1, n2) = chain(&e);
    let commits = e.commits();
    let dry = e.dkt(&["run", "--dry-run"]).ok();
    assert!(
        dry.contains(&n1) && dry.contains(&n2) && dry.contains("never ran"),
        "{dry}"
    );
    assert_eq!(e.commits(), commits, "a dry run changes nothing");
    let out = e.dkt(&["run"]).ok();
    assert_eq!(out.matches("success").count(), 2, "{out}");
    // Within one pass the downstream node saw the upstream node's output.
    assert_eq!(
        std::fs::read_to_string(e.path().join("c/z")).unwrap(),
        "1\n"
    );
    assert_eq!(e.dkt(&["run"]).ok(), "nothing to run\n");
    // The no-op pass remembered which run records say `success` (derived data, outside
    // the store); a torn memo is not trusted: the records are read again.
    let memo = e.path().join(".dkt/cache/succeeded");
    let text = std::fs::read_to_string(&memo).unwrap();
    assert_eq!(
        text.lines().count(),
        4,
        "a header, two records, the end: {text}"
    );
    std::fs::write(&memo, text.replace("end\n", "")).unwrap();
    // (The pass is also remembered as one with nothing to run at this commit: without
    // that memo, the next pass plans again.)
    std::fs::remove_file(e.path().join(".dkt/cache/noop")).unwrap();
    assert_eq!(e.dkt(&["run"]).ok(), "nothing to run\n");
    assert_eq!(std::fs::read_to_string(&memo).unwrap(), text);
    // A change upstream: the dry run says which input moved, and that n2 follows.
    e.write("a/x", "2\n");
    let dry = e.dkt(&["run", "--dry-run"]).ok();
    let line1 = dry.lines().find(|l| l.starts_with(&n1)).unwrap();
    assert!(line1.contains("a ") && line1.contains(" -> "), "{dry}");
    let line2 = dry.lines().find(|l| l.starts_with(&n2)).unwrap();
    assert!(line2.contains(&format!("upstream node {n1}")), "{dry}");
    e.dkt(&["run", "-j", "2"]).ok();
    assert_eq!(
        std::fs::read_to_string(e.path().join("c/z")).unwrap(),
        "2\n"
    );
    assert_eq!(successes(&e, &n1), 2);
    assert_eq!(successes(&e, &n2), 2);
    // Impact query: which nodes would run if `a` moved to some version.
    let v = format!("md5:{}", "0".repeat(32));
    let dry = e.dkt(&["run", "--dry-run", "--if", &format!("a={v}")]).ok();
    assert!(dry.contains(&n1) && dry.contains(&n2), "{dry}");
    e.dkt(&["run", "--if", &format!("a={v}")]).fails(2);
    e.dkt(&["run", "--dry-run", "--if", "nosuch=md5:0"])
        .fails(2);
}

#[test]
fn independent_nodes_run_in_parallel() {
    let e = Env::project();
    // Each node waits (up to 20 s) until all three have started: only a parallel pass
    // lets them all finish.
    for i in 0..3 {
        std::fs::create_dir_all(e.path().join(format!("o{i}"))).unwrap();
        e.dkt(&["source", "add", &format!("o{i}"), &format!("o{i}")])
            .ok();
        let cmd = format!(
            "touch $DKT_PROJECT_ROOT/started-{i}; for k in $(seq 200); do [ -e $DKT_PROJECT_ROOT/started-0 ] && [ -e $DKT_PROJECT_ROOT/started-1 ] && [ -e $DKT_PROJECT_ROOT/started-2 ] && exit 0; sleep 0.1; done; exit 1"
        );
        e.dkt(&["node", "run", "--no-run", &format!("--output=o{i}"), &cmd])
            .ok();
    }
    let out = e.dkt(&["run", "-j", "3"]).ok();
    assert_eq!(out.matches("success").count(), 3, "{out}");
}

#[test]
fn rerun_forces_a_node_and_optionally_what_is_below() {
    let e = Env::project();
    let (n1, n2) = chain(&e);
    e.dkt(&["run"]).ok();
    e.dkt(&["node", "rerun", &n1]).ok();
    assert_eq!(successes(&e, &n1), 2);
    assert_eq!(successes(&e, &n2), 1);
    let out = e.dkt(&["node", "rerun", &n1, "--downstream"]).ok();
    assert!(out.contains(&n2), "{out}");
    assert_eq!(successes(&e, &n1), 3);
    assert_eq!(successes(&e, &n2), 2);
    e.dkt(&["node", "rerun", "ffff"]).fails(2);
}

#[test]
fn update_records_a_given_version() {
    let e = Env::project();
    let commits = pinata_repo(&e.path().join("r"));
    e.dkt(&["source", "add", "r", "r"]).ok();
    e.dkt(&["source", "freeze", "r"]).ok();
    let out = e.dkt(&["source", "update", "r", &commits[1][..8]]).ok();
    assert!(out.contains(&commits[1]), "{out}");
    let list = e.dkt(&["--json", "source", "list"]).json();
    assert_eq!(list[0]["latest"], format!("sha1:{}", commits[1]));
    // Frozen: a pass does not poll it back to the newest commit.
    e.dkt(&["run"]).ok();
    assert_eq!(
        e.dkt(&["--json", "source", "list"]).json()[0]["latest"],
        format!("sha1:{}", commits[1])
    );
    let err = e.dkt(&["source", "update", "r", "ffffffff"]).fails(2);
    assert!(err.contains("ffffffff"), "{err}");
}

#[test]
fn daemon_stops_cleanly_on_sigterm() {
    let e = Env::project();
    let (n1, n2) = chain(&e);
    let mut daemon = e
        .cmd()
        .args(["daemon", "--interval", "1s"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the first pass", || successes(&e, &n2) == 1);
    e.write("a/x", "3\n");
    wait_for("the second pass", || successes(&e, &n2) == 2);
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(successes(&e, &n1), 2);
    git(e.path(), &["--git-dir", ".dkt/.git", "fsck", "--strict"]);
}

#[test]
fn workers_take_queued_runs_and_recover_from_a_dead_worker() {
    let e = Env::project();
    e.write("in/x", "1\n");
    e.dkt(&["source", "add", "in", "in"]).ok();
    let mut nodes = Vec::new();
    for i in 0..4 {
        std::fs::create_dir_all(e.path().join(format!("o{i}"))).unwrap();
        e.dkt(&["source", "add", &format!("o{i}"), &format!("o{i}")])
            .ok();
        // Runs wait to be let go, so the first worker is killed mid-run.
        let cmd = format!(
            "while [ ! -e $DKT_PROJECT_ROOT/go ]; do sleep 0.05; done; \
             cat ${{in:ROOT}}/x > ${{o{i}:ROOT}}/y"
        );
        nodes.push(
            e.dkt(&[
                "node",
                "run",
                "--no-run",
                "--labels=gpu",
                "--input=in",
                &format!("--output=o{i}"),
                &cmd,
            ])
            .ok()
            .trim()
            .to_owned(),
        );
    }
    // A worker that will be killed mid-run, and one that stays.
    let mut doomed = e
        .cmd()
        .args(["worker", "--labels=gpu"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the worker's heartbeat", || {
        e.path()
            .join(".dkt/workers")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    });
    let out = e.dkt(&["run"]).ok();
    assert_eq!(
        out.matches("pending").count(),
        4,
        "queued for workers: {out}"
    );
    wait_for("a claimed run", || {
        nodes
            .iter()
            .any(|n| runs(&e, n).iter().any(|r| r["status"] == "running"))
    });
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    std::fs::write(e.path().join("go"), "").unwrap();
    let mut w1 = e
        .cmd()
        .args(["worker", "--labels=gpu", "-j", "2"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut w2 = e
        .cmd()
        .args(["worker", "--labels=gpu"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("every node to succeed", || {
        nodes.iter().all(|n| successes(&e, n) == 1)
    });
    for w in [&mut w1, &mut w2] {
        unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
        assert!(w.wait().unwrap().success());
    }
    let all: Vec<Value> = nodes.iter().flat_map(|n| runs(&e, n)).collect();
    // Exactly one success per node, and the killed worker's run was recorded interrupted.
    for n in &nodes {
        assert_eq!(successes(&e, n), 1, "{n}: {:?}", runs(&e, n));
    }
    assert!(all.iter().any(|r| r["status"] == "interrupted"), "{all:?}");
    assert!(all
        .iter()
        .filter(|r| r["status"] == "interrupted")
        .all(|r| r["outputs"].as_array().unwrap().is_empty()));
    git(e.path(), &["--git-dir", ".dkt/.git", "fsck", "--strict"]);
}

/// Where a SIGKILL landed in a dkt process (daemon or worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// No run of the process had its command going or done: polling, scheduling,
    /// materializing inputs, waiting.
    BetweenRuns,
    /// A command the process had started was still running.
    Command,
    /// A command had ended, and its run's result was not recorded yet (publishing the
    /// outputs, committing the result).
    Recording,
}

/// The chaos test's node commands mark their runs in `marks/`: `begin-RUN` holding the pid
/// of the dkt process running them (the shell's parent), `end-RUN` when they are done.
/// Returns (run, pid) of begun runs and the set of ended runs.
fn read_marks(dir: &std::path::Path) -> (Vec<(String, u32)>, std::collections::BTreeSet<String>) {
    let (mut begun, mut ended) = (Vec::new(), std::collections::BTreeSet::new());
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(run) = name.strip_prefix("end-") {
            ended.insert(run.to_owned());
        } else if let Some(run) = name.strip_prefix("begin-") {
            // Being written: read again next time.
            if let Ok(pid) = std::fs::read_to_string(entry.path())
                .unwrap_or_default()
                .trim()
                .parse()
            {
                begun.push((run.to_owned(), pid));
            }
        }
    }
    (begun, ended)
}

/// Kill the daemon and workers with SIGKILL over many passes of a 20-node pipeline fed by
/// a git source that gets new commits, at random moments and at moments chosen to land
/// while a command runs and while a result is being recorded; where each kill landed is
/// recorded, and some kill must have landed in each [`Phase`]. No run is doubled, killed
/// runs publish nothing, and the store stays readable.
#[test]
fn chaos_kills_lose_and_double_nothing() {
    let e = Env::project();
    let repo = e.path().join("upstream");
    pinata_repo(&repo);
    e.dkt(&["source", "add", "up", "upstream"]).ok();
    let marks = e.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let mark = |cmd: String| {
        format!(
            "echo $PPID > $DKT_PROJECT_ROOT/marks/begin-$DKT_RUN_ID; {cmd}; \
             touch $DKT_PROJECT_ROOT/marks/end-$DKT_RUN_ID"
        )
    };
    let mut nodes = Vec::new();
    for i in 0..20 {
        let out = format!("p{i}");
        std::fs::create_dir_all(e.path().join(&out)).unwrap();
        e.dkt(&["source", "add", &out, &out]).ok();
        // Five first-level nodes read the git source; the others read a first-level output.
        let (input, cmd) = if i < 5 {
            (
                "up".to_owned(),
                format!(
                    "cat ${{up:ROOT}}/README.md > ${{{out}:ROOT}}/r; echo {i} >> ${{{out}:ROOT}}/r"
                ),
            )
        } else {
            let up = format!("p{}", i % 5);
            (up.clone(), format!("sleep 0.$(( $$ % 3 )); cat ${{{up}:ROOT}}/r > ${{{out}:ROOT}}/r; echo {i} >> ${{{out}:ROOT}}/r"))
        };
        nodes.push(
            e.dkt(&[
                "node",
                "run",
                "--no-run",
                &format!("--input={input}"),
                &format!("--output={out}"),
                &mark(cmd),
            ])
            .ok()
            .trim()
            .to_owned(),
        );
    }
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut landed: Vec<(u64, &str, Phase)> = Vec::new();
    let mut round = 0;
    let hit = |landed: &[(u64, &str, Phase)], p: Phase| landed.iter().any(|l| l.2 == p);
    while round < 6
        || (round < 60
            && ![Phase::BetweenRuns, Phase::Command, Phase::Recording]
                .iter()
                .all(|p| hit(&landed, *p)))
    {
        std::fs::write(repo.join("README.md"), format!("round {round}\n")).unwrap();
        git(&repo, &["commit", "-q", "-am", &format!("round {round}")]);
        let mut procs = vec![e
            .cmd()
            .args(["daemon", "--interval", "200ms", "-j", "2"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()];
        if round % 2 == 1 {
            for _ in 0..2 {
                procs.push(
                    e.cmd()
                        .args(["worker", "-j", "2"])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .unwrap(),
                );
            }
        }
        let pids: Vec<u32> = procs.iter().map(|p| p.id()).collect();
        let ours = |pid: &u32| pids.contains(pid);
        // Choose the moment: at random, or as soon as a command runs, or as soon as a
        // command has ended (its result is then being recorded).
        let deadline = Instant::now() + Duration::from_secs(10);
        let delay = Duration::from_millis(300 + rand(1500));
        let started = Instant::now();
        let target = round % 3;
        let mut seen_ended = read_marks(&marks).1;
        let snapshot = loop {
            let (begun, ended) = read_marks(&marks);
            let ready = match target {
                0 => started.elapsed() >= delay,
                1 => begun.iter().any(|(r, pid)| ours(pid) && !ended.contains(r)),
                _ => ended.iter().any(|r| {
                    !seen_ended.contains(r) && begun.iter().any(|(b, pid)| b == r && ours(pid))
                }),
            };
            if ready || Instant::now() >= deadline {
                break (begun, ended);
            }
            seen_ended = if target == 2 { seen_ended } else { ended };
            std::thread::sleep(Duration::from_millis(1));
        };
        for p in &mut procs {
            p.kill().unwrap();
            p.wait().unwrap();
        }
        // Where the kill landed, for each process: a command of its own still running
        // (begun, not ended, when the kill was sent), or ended with its result not recorded.
        let (begun, ended) = snapshot;
        let status: std::collections::BTreeMap<String, String> =
            if begun.iter().any(|(r, pid)| ours(pid) && ended.contains(r)) {
                nodes
                    .iter()
                    .flat_map(|n| runs(&e, n))
                    .map(|r| {
                        (
                            r["id"].as_str().unwrap().to_owned(),
                            r["status"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect()
            } else {
                Default::default()
            };
        for (i, pid) in pids.iter().enumerate() {
            let mine = begun.iter().filter(|(_, p)| p == pid).map(|(r, _)| r);
            let mut phase = Phase::BetweenRuns;
            for r in mine {
                let recorded = matches!(
                    status.get(r).map(String::as_str),
                    Some("success" | "failure")
                );
                let now = if !ended.contains(r) {
                    Phase::Command
                } else if !recorded {
                    Phase::Recording
                } else {
                    Phase::BetweenRuns
                };
                phase = phase.max(now);
            }
            landed.push((round, if i == 0 { "daemon" } else { "worker" }, phase));
        }
        // Whatever the kill hit, the store reads.
        e.dkt(&["source", "list"]).ok();
        round += 1;
    }
    eprintln!("where the kills landed: {landed:?}");
    for p in [Phase::BetweenRuns, Phase::Command, Phase::Recording] {
        assert!(hit(&landed, p), "no kill landed in {p:?}: {landed:?}");
    }
    let last_round = round - 1;
    // A last pass, undisturbed, brings everything up to date.
    e.dkt(&["run", "-j", "2"]).ok();
    e.dkt(&["run"]).ok();
    assert_eq!(e.dkt(&["run", "--dry-run"]).ok(), "nothing to run\n");
    for n in &nodes {
        let rs = runs(&e, n);
        let mut seen = std::collections::BTreeMap::new();
        for r in rs.iter().filter(|r| r["status"] == "success") {
            *seen.entry(r["inputs"].to_string()).or_insert(0) += 1;
        }
        assert!(
            seen.values().all(|c| *c == 1),
            "node {n}: a run was doubled: {}",
            serde_json::to_string_pretty(&rs).unwrap()
        );
        assert!(!seen.is_empty(), "node {n} never succeeded");
        for r in rs.iter().filter(|r| r["status"] != "success") {
            assert!(
                r["outputs"].as_array().unwrap().is_empty(),
                "an unsuccessful run published: {r}"
            );
        }
    }
    // The final outputs come from the last upstream commit, through both levels.
    let last = std::fs::read_to_string(e.path().join("p7/r")).unwrap();
    assert_eq!(last, format!("round {last_round}\n2\n7\n"));
    git(e.path(), &["--git-dir", ".dkt/.git", "fsck", "--strict"]);
}

#[test]
fn concurrent_commands_lose_nothing() {
    let e = Env::project();
    let before = e.commits();
    let mut children = Vec::new();
    for i in 0..8 {
        e.write(&format!("d{i}/f"), &i.to_string());
        children.push(
            e.cmd()
                .args(["source", "add", &format!("s{i}"), &format!("d{i}")])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    // Meanwhile, passes and listings.
    for _ in 0..3 {
        children.push(
            e.cmd()
                .args(["run"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let list = e.dkt(&["--json", "source", "list"]).json();
    assert_eq!(list.as_array().unwrap().len(), 8);
    assert_eq!(
        e.commits(),
        before + 8,
        "one commit per source add, none lost"
    );
    git(e.path(), &["--git-dir", ".dkt/.git", "fsck", "--strict"]);
}

#[test]
fn a_retry_held_back_by_its_backoff_runs_once_due() {
    let e = Env::project();
    e.write("in/a.txt", "a\n");
    std::fs::create_dir_all(e.path().join("out")).unwrap();
    e.dkt(&["source", "add", "in", "in"]).ok();
    e.dkt(&["source", "add", "out", "out"]).ok();
    e.write(
        "node.yml",
        "inputs: [in]\noutputs: [out]\nrun: exit 4\nretry: {count: 1, backoff: 1s}\n",
    );
    let id = e.dkt(&["node", "run", "--no-run", "node.yml"]).ok();
    let id = id.trim().to_owned();
    e.dkt(&["run"]).fails(1);
    assert_eq!(statuses(&e, &id), ["failure"]);
    // Passes on the same records run nothing until the backoff has passed; none of them
    // may be remembered as a pass with nothing to run.
    wait_for("the retry", || {
        let pass = e.dkt(&["run"]);
        match pass.code() {
            0 => false,
            1 => true,
            _ => panic!("{}{}", pass.stdout(), pass.stderr()),
        }
    });
    assert_eq!(statuses(&e, &id), ["failure", "failure"]);
    assert_eq!(e.dkt(&["run"]).ok(), "nothing to run\n");
}

/// The files below `dir` with their inode, size and modification time.
fn files_with_stat(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64, u64, u128)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            out.extend(files_with_stat(&p));
        } else {
            let mtime = md
                .modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            out.push((p, md.ino(), md.size(), mtime));
        }
    }
    out.sort();
    out
}

/// Sleep into the next second of the wall clock.
fn next_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(
        Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos()))
            + Duration::from_millis(20),
    );
}

/// Many path sources, polled together on a few threads: a no-op pass writes nothing to
/// their stat caches, and an edit of the same size made right after a pass is seen by
/// the next one, in that source only.
#[test]
fn many_path_sources_a_noop_pass_writes_nothing_and_the_next_sees_an_edit() {
    let e = Env::project();
    let n = 40;
    let mut yml = String::from("sources:\n");
    for i in 0..n {
        e.write(&format!("s{i}/x"), &format!("{i:03}\n"));
        yml += &format!("  - name: s{i}\n    location: ./s{i}\n");
    }
    e.write("sources.yml", &yml);
    e.dkt(&["apply", "sources.yml"]).ok();
    let before: Vec<String> = (0..n).map(|i| latest(&e, &format!("s{i}"))).collect();
    // Caches written in the second of their files are hashed again (and rewritten) by the
    // first pass of a later second; after that, a pass only reads them.
    next_second();
    assert_eq!(e.dkt(&["run"]).ok(), "nothing to run\n");
    let caches = e.path().join(".dkt/cache/path");
    let stat = files_with_stat(&caches);
    assert_eq!(stat.len(), n, "one cache per source: {stat:?}");
    assert_eq!(e.dkt(&["run"]).ok(), "nothing to run\n");
    assert_eq!(
        files_with_stat(&caches),
        stat,
        "a no-op pass writes nothing"
    );

    // Right after that pass (likely within its second), the same size.
    e.write("s17/x", "917\n");
    e.dkt(&["run"]).ok();
    for (i, was) in before.iter().enumerate() {
        let now = latest(&e, &format!("s{i}"));
        assert_eq!(&now != was, i == 17, "source s{i}: {was} -> {now}");
    }
}
