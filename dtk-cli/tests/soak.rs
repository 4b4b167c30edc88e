//! The soak test of issue 20: writers, `dkt run -j 4`, a worker and `git gc` in a loop
//! while random `dkt` processes are killed (SIGKILL) or paused (SIGSTOP, then SIGCONT,
//! sometimes for longer than the lease); then no run executed twice to a published
//! result, no version of a node's output without its run, no lock or queue entry left,
//! the store writable, every output verified, and `git fsck --strict` clean.
//!
//! It lasts about 40 s of chaos (`DKT_SOAK_SECS` to change it) with a seeded random
//! generator: the seed is printed, and `DKT_SOAK_SEED=N` replays a schedule. `git gc` is
//! paused but never killed: it is git's own maintenance, which dtk must live beside, not
//! repair.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODES: usize = 6;

/// xorshift64*: a small, seeded generator (the schedule replays from its seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }
}

/// What may be signalled: the live children of the actors, by pid, with whether chaos
/// may kill them (never `git gc`).
#[derive(Default)]
struct Live {
    procs: BTreeMap<u32, bool>,
    stopped: BTreeMap<u32, Instant>,
}

#[derive(Default)]
struct Tally {
    kills: AtomicUsize,
    stops: AtomicUsize,
    long_stops: AtomicUsize,
    spawned: AtomicUsize,
}

/// Run `cmd` to its end (or until killed), registered in `live` so chaos can signal it;
/// the child is reaped under the lock, so a pid is never signalled after its reuse.
fn supervised(live: &Mutex<Live>, mut cmd: Command, killable: bool) {
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    live.lock().unwrap().procs.insert(pid, killable);
    loop {
        {
            let mut l = live.lock().unwrap();
            if child.try_wait().unwrap().is_some() {
                l.procs.remove(&pid);
                l.stopped.remove(&pid);
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `dkt ARGS` in `root`, as [`Env::cmd`] sets it up.
fn dkt_at(root: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(dkt_bin());
    c.current_dir(root)
        .args(args)
        .env_remove("DKT_GITHUB_TOKEN")
        .env_remove("DKT_DOCKER_TOKEN")
        .env("DKT_LOG", "warn");
    c
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling a child of this test, still unreaped (the caller holds the lock
    // under which children are reaped).
    unsafe { libc::kill(pid as i32, sig) };
}

#[test]
fn soak_kill_and_pause_everything_then_check_the_store() {
    let secs: u64 = std::env::var("DKT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let seed: u64 = std::env::var("DKT_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("soak: seed {seed} (DKT_SOAK_SEED={seed} replays it), {secs} s of chaos");

    // DKT_SOAK_KEEP=1 keeps the project for a post-mortem.
    let keep = std::env::var_os("DKT_SOAK_KEEP").is_some();
    let e = Env {
        dir: tempfile::Builder::new()
            .prefix("dkt-soak-")
            .disable_cleanup(keep)
            .tempdir()
            .unwrap(),
    };
    e.dkt(&["init"]).ok();
    if keep {
        eprintln!("soak: project in {}", e.path().display());
    }
    // A short lease, so that a pause can outlast it and be taken over (the fenced path).
    std::fs::write(
        e.path().join(".dkt/config"),
        "[worker]\nlease = \"2s\"\nlabels = [\"soak\"]\n",
    )
    .unwrap();
    let execs = e.path().join("execs");
    std::fs::create_dir_all(&execs).unwrap();
    let mut initial = BTreeMap::new();
    for i in 0..NODES {
        e.write(&format!("in{i}/data"), &format!("start {i}\n"));
        std::fs::create_dir_all(e.path().join(format!("out{i}"))).unwrap();
        e.dkt(&["source", "add", &format!("in{i}"), &format!("in{i}")])
            .ok();
        e.dkt(&["source", "add", &format!("out{i}"), &format!("out{i}")])
            .ok();
        initial.insert(format!("out{i}"), latest(&e, &format!("out{i}")));
        // Each execution leaves its run ID in execs/ (outside the project's sources), and
        // the output names the run that made it.
        let cmd = format!(
            "echo $DKT_RUN_ID >> {}/n{i}; cp ${{in{i}:ROOT}}/data ${{out{i}:ROOT}}/data; \
             echo $DKT_RUN_ID > ${{out{i}:ROOT}}/run",
            execs.display()
        );
        e.dkt(&[
            "node",
            "run",
            "--no-run",
            "--name",
            &format!("n{i}"),
            &format!("--input=in{i}"),
            &format!("--output=out{i}"),
            &cmd,
        ])
        .ok();
    }

    let live = Arc::new(Mutex::new(Live::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut rng = Rng(seed);
    let mut actors = Vec::new();
    // Writers: change an input, then record it.
    for w in 0..2u64 {
        let (live, stop, tally) = (live.clone(), stop.clone(), tally.clone());
        let root = e.path().to_owned();
        let mut rng = Rng(seed ^ (0x9E37_79B9 + w));
        actors.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let i = rng.below(NODES as u64);
                n += 1;
                std::fs::write(root.join(format!("in{i}/data")), format!("w{w} {n}\n")).unwrap();
                tally.spawned.fetch_add(1, Ordering::SeqCst);
                supervised(
                    &live,
                    dkt_at(&root, &["source", "update", &format!("in{i}")]),
                    true,
                );
                std::thread::sleep(rng.millis(100, 600));
            }
        }));
    }
    // Passes, and a worker (restarted whenever it was killed or done).
    for (k, args) in [
        &["run", "-j", "4"][..],
        &["worker", "-j", "2", "--max-runs", "8"][..],
    ]
    .into_iter()
    .enumerate()
    {
        let (live, stop, tally) = (live.clone(), stop.clone(), tally.clone());
        let root = e.path().to_owned();
        let mut rng = Rng(seed ^ (k as u64 + 7));
        actors.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                tally.spawned.fetch_add(1, Ordering::SeqCst);
                supervised(&live, dkt_at(&root, args), true);
                std::thread::sleep(rng.millis(50, 400));
            }
        }));
    }
    // git's own maintenance, concurrently (paused at times, never killed).
    {
        let (live, stop) = (live.clone(), stop.clone());
        let root = e.path().to_owned();
        actors.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let mut c = Command::new("git");
                c.current_dir(&root)
                    .args(["--git-dir", ".dkt/.git", "gc", "--quiet"])
                    .env("GIT_CONFIG_NOSYSTEM", "1")
                    .env("HOME", &root);
                supervised(&live, c, false);
                std::thread::sleep(Duration::from_millis(700));
            }
        }));
    }

    // Chaos.
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(rng.millis(100, 500));
        let mut l = live.lock().unwrap();
        let now = Instant::now();
        let due: Vec<u32> = l
            .stopped
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| *p)
            .collect();
        for pid in due {
            signal(pid, libc::SIGCONT);
            l.stopped.remove(&pid);
        }
        let pids: Vec<(u32, bool)> = l.procs.iter().map(|(p, k)| (*p, *k)).collect();
        if pids.is_empty() {
            continue;
        }
        let (pid, killable) = pids[rng.below(pids.len() as u64) as usize];
        if killable && rng.below(2) == 0 {
            signal(pid, libc::SIGKILL);
            l.stopped.remove(&pid);
            tally.kills.fetch_add(1, Ordering::SeqCst);
        } else if let std::collections::btree_map::Entry::Vacant(slot) = l.stopped.entry(pid) {
            // Mostly short pauses; one in four outlasts the 2 s lease.
            let pause = if rng.below(4) == 0 {
                tally.long_stops.fetch_add(1, Ordering::SeqCst);
                rng.millis(2500, 4000)
            } else {
                rng.millis(50, 1000)
            };
            signal(pid, libc::SIGSTOP);
            slot.insert(now + pause);
            tally.stops.fetch_add(1, Ordering::SeqCst);
        }
    }
    stop.store(true, Ordering::SeqCst);
    {
        let mut l = live.lock().unwrap();
        for pid in std::mem::take(&mut l.stopped).into_keys() {
            signal(pid, libc::SIGCONT);
        }
        // The worker stops at once (a run it holds is settled below, as for a kill).
        for (pid, killable) in l.procs.clone() {
            if killable {
                signal(pid, libc::SIGKILL);
            }
        }
    }
    for a in actors {
        a.join().unwrap();
    }
    let (kills, stops, long_stops) = (
        tally.kills.load(Ordering::SeqCst),
        tally.stops.load(Ordering::SeqCst),
        tally.long_stops.load(Ordering::SeqCst),
    );
    eprintln!(
        "soak: {} processes started, {kills} killed, {stops} paused ({long_stops} past the lease)",
        tally.spawned.load(Ordering::SeqCst)
    );
    assert!(kills > 0 && stops > 0, "chaos did nothing (seed {seed})");

    // Settle: the live workers' heartbeats go stale, then passes complete or roll back
    // what the kills left and bring every node up to date.
    std::fs::remove_dir_all(e.path().join(".dkt/workers")).ok();
    for _ in 0..3 {
        e.dkt(&["run", "-j", "4"]).ok();
    }
    let report = e.dkt(&["--json", "run", "--dry-run"]).json();
    assert!(
        report["items"].as_array().is_some_and(|a| a.is_empty()),
        "seed {seed}: not up to date: {report}"
    );

    let store = dtk::Store::open(&e.path().join(".dkt/.git")).unwrap();
    let snap = store.snapshot().unwrap();
    let mut published = 0;
    let mut obsolete = 0;
    for i in 0..NODES {
        let node = format!("n{i}");
        let log = runs(&e, &node);
        // No run executed twice: each run ID ran at most once.
        let executed = std::fs::read_to_string(execs.join(&node)).unwrap_or_default();
        let mut seen = BTreeSet::new();
        for id in executed.lines() {
            assert!(
                seen.insert(id),
                "seed {seed}: run {id} of {node} executed twice"
            );
        }
        // ...and no two results published for the same inputs.
        let mut by_inputs: BTreeMap<String, String> = BTreeMap::new();
        for r in &log {
            assert_ne!(r["status"], "running", "seed {seed}: {node}: {r}");
            // A run still pending (no worker is left to take it) is one queued on inputs
            // that have moved on since, which the node has succeeded on: a worker drops it.
            if r["status"] == "pending" {
                assert_ne!(
                    r["inputs"],
                    log.iter().find(|x| x["status"] == "success").unwrap()["inputs"],
                    "seed {seed}: {node}: a pending run on current inputs: {r}"
                );
                obsolete += 1;
            }
            if r["status"] == "success" {
                let inputs = r["inputs"].to_string();
                let id = r["id"].as_str().unwrap().to_owned();
                if let Some(other) = by_inputs.insert(inputs.clone(), id.clone()) {
                    panic!("seed {seed}: {node}: runs {other} and {id} both published a result for {inputs}");
                }
            }
        }
        // Every version of the output after the first (a node's) names its run, which
        // names it back; the latest one verifies.
        let out = format!("out{i}");
        let name = dtk::Name::new(&out).unwrap();
        for v in e
            .dkt(&["--json", "source", "log", &out])
            .json()
            .as_array()
            .unwrap()
        {
            let version = v["version"].as_str().unwrap();
            if initial[&out] == version {
                continue;
            }
            let parsed: dtk::Version = version.parse().unwrap();
            let rec: dtk::VersionRecord = snap
                .read_json(&dtk::project::paths::version(&name, &parsed))
                .unwrap()
                .unwrap();
            assert!(
                rec.run.is_some(),
                "seed {seed}: {out}:{version} has no provenance"
            );
            published += 1;
        }
        let now = latest(&e, &out);
        e.dkt(&["verify", &format!("{out}:{now}")]).ok();
        let made_by = std::fs::read_to_string(e.path().join(format!("out{i}/run"))).unwrap();
        let last_ok = log.iter().find(|r| r["status"] == "success").unwrap();
        assert!(
            made_by.trim().starts_with(last_ok["id"].as_str().unwrap()),
            "seed {seed}: {out} holds {made_by} but the last success is {last_ok}"
        );
    }
    eprintln!(
        "soak: {published} versions published by runs, each with its run; \
         {obsolete} pending run(s) on superseded inputs"
    );

    // No lock and no queue entry left...
    let mut left = Vec::new();
    let mut stack = vec![e.path().join(".dkt/.git")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "lock") {
                left.push(p);
            }
        }
    }
    // ...nor a killed run's scratch copy or live log.
    for dir in [
        "queue/running",
        "queue/publishing",
        "queue/settling",
        "queue/intents",
        "tmp",
        "logs",
    ] {
        if let Ok(d) = std::fs::read_dir(e.path().join(".dkt").join(dir)) {
            // (An emptied scratch area kept for the next run is not a leftover.)
            left.extend(d.flatten().map(|e| e.path()).filter(|p| !free_scratch(p)));
        }
    }
    assert!(left.is_empty(), "seed {seed}: left behind: {left:?}");
    // The store is writable and git finds it sound.
    e.write("after/x", "after\n");
    e.dkt(&["source", "add", "after", "after"]).ok();
    git(
        e.path(),
        &[
            "--git-dir",
            ".dkt/.git",
            "fsck",
            "--strict",
            "--no-progress",
        ],
    );
}
