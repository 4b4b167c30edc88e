//! The metadata store: round trips, concurrent writers (threads and processes), and a
//! writer killed with SIGKILL in the middle of commits.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dtk_core::{Error, Store};

fn counter(store: &Store) -> u64 {
    store
        .snapshot()
        .unwrap()
        .read("counter")
        .unwrap()
        .map(|b| String::from_utf8(b).unwrap().trim().parse().unwrap())
        .unwrap_or(0)
}

/// One increment: read the counter, write it plus one, and add a file of our own.
fn increment(store: &Store, who: &str, i: u64) {
    store
        .transact(&format!("increment by {who} #{i}"), |tx| {
            let n: u64 = tx
                .read("counter")?
                .map(|b| String::from_utf8_lossy(&b).trim().parse().unwrap_or(0))
                .unwrap_or(0);
            tx.put("counter", format!("{}\n", n + 1).as_bytes())?;
            tx.put(&format!("writes/{who}-{i}"), b"x")?;
            Ok(())
        })
        .unwrap();
}

/// `git fsck` of the store, once no merge or repack of a live process is deleting packs
/// (git reads every pack, and fails on one deleted under it): the test drops its own
/// handles first, whose merges are joined then; a background repack (a process of its
/// own) is waited for.
fn git_fsck(git_dir: &Path) {
    let started = Instant::now();
    for lock in ["dtk-merge.lock", "dtk-merge-new.lock"] {
        let lock = git_dir.join("objects/pack").join(lock);
        let held_by_live = || {
            let Ok(holder) = std::fs::read_to_string(&lock) else {
                return false;
            };
            let pid = holder
                .split_whitespace()
                .next()
                .and_then(|w| w.rsplit_once(':'))
                .map(|(_, pid)| pid.to_owned())
                .unwrap_or_default();
            Path::new("/proc").join(pid).exists()
        };
        // (A guard against a hang, not a timing.)
        while held_by_live() && started.elapsed() < Duration::from_secs(300) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(["fsck", "--strict", "--no-dangling"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git fsck failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn round_trip_and_no_empty_commits() {
    let dir = tempfile::tempdir().unwrap();
    let git = dir.path().join(".git");
    let store = Store::init(&git).unwrap();
    assert!(matches!(
        Store::init(&git),
        Err(Error::AlreadyExists { .. })
    ));
    let (_, c1) = store
        .transact("add a", |tx| {
            tx.put_json("things/a.json", &serde_json::json!({"v": 1}))?;
            tx.put("things/b.txt", b"bee")?;
            Ok(())
        })
        .unwrap();
    assert!(c1.is_some());
    let snap = store.snapshot().unwrap();
    assert_eq!(snap.read("things/b.txt").unwrap().unwrap(), b"bee");
    let v: serde_json::Value = snap.read_json("things/a.json").unwrap().unwrap();
    assert_eq!(v["v"], 1);
    let names: Vec<String> = snap
        .list("things")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["a.json", "b.txt"]);
    assert!(snap.read("things/missing").unwrap().is_none());
    assert!(snap.list("nowhere").unwrap().is_empty());

    // Writing what is already there makes no commit.
    let (_, c2) = store
        .transact("same again", |tx| {
            tx.put("things/b.txt", b"bee")?;
            Ok(())
        })
        .unwrap();
    assert_eq!(c2, None);
    // An error inside the change leaves the store as it was.
    let before = store.snapshot().unwrap().commit();
    let r: Result<((), _), _> = store.transact("fails", |tx| {
        tx.put("things/c.txt", b"sea")?;
        Err(Error::Conflict("no".into()))
    });
    assert!(r.is_err());
    assert_eq!(store.snapshot().unwrap().commit(), before);

    // Removal, and the history is git's own log.
    store
        .transact("remove b", |tx| {
            tx.remove("things/b.txt");
            Ok(())
        })
        .unwrap();
    assert!(store
        .snapshot()
        .unwrap()
        .read("things/b.txt")
        .unwrap()
        .is_none());
    let log = Command::new("git")
        .arg("--git-dir")
        .arg(&git)
        .args(["log", "--format=%s"])
        .output()
        .unwrap();
    let log = String::from_utf8(log.stdout).unwrap();
    assert_eq!(log, "remove b\nadd a\ninit: empty Datakit project\n");
    let hist: Vec<String> = store
        .history(10)
        .unwrap()
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(hist, ["remove b", "add a", "init: empty Datakit project"]);
    git_fsck(&git);
}

#[test]
fn corrupt_record_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join(".git")).unwrap();
    store
        .transact("bad", |tx| {
            tx.put("sources/x.json", b"{not json")?;
            Ok(())
        })
        .unwrap();
    let e = store
        .snapshot()
        .unwrap()
        .read_json::<serde_json::Value>("sources/x.json")
        .unwrap_err();
    assert!(e.to_string().contains("sources/x.json"), "{e}");
}

#[test]
fn concurrent_threads_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join(".git")).unwrap();
    let threads = 8;
    let per = 25;
    std::thread::scope(|s| {
        for t in 0..threads {
            let store = store.clone();
            s.spawn(move || {
                for i in 0..per {
                    increment(&store, &format!("t{t}"), i);
                }
            });
        }
    });
    assert_eq!(counter(&store), threads * per);
    assert_eq!(
        store.snapshot().unwrap().list("writes").unwrap().len() as u64,
        threads * per
    );
    let git = store.git_dir().to_owned();
    drop(store);
    git_fsck(&git);
}

/// The child process of the multi-process tests (not a test of its own: ignored unless
/// they run it, with `--ignored` and DTK_STORE_CHILD set).
#[test]
#[ignore = "the child process of the multi-process tests"]
fn child_writer() {
    let git = std::env::var("DTK_STORE_CHILD").expect("DTK_STORE_CHILD names the store");
    let n: u64 = std::env::var("DTK_STORE_N").unwrap().parse().unwrap();
    let store = Store::open(Path::new(&git)).unwrap();
    let me = std::process::id().to_string();
    for i in 0..n {
        increment(&store, &me, i);
    }
}

fn spawn_child(git: &Path, n: u64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DTK_STORE_CHILD", git)
        .env("DTK_STORE_N", n.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn concurrent_processes_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let git = dir.path().join(".git");
    let store = Store::init(&git).unwrap();
    let procs = 4;
    let per = 40;
    let children: Vec<_> = (0..procs).map(|_| spawn_child(&git, per)).collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(counter(&store), procs * per);
    let commits = store.history(usize::MAX).unwrap().len() as u64;
    assert_eq!(commits, procs * per + 1, "one commit per change, plus init");
    git_fsck(&git);
}

#[test]
fn sigkill_mid_commit_leaves_a_readable_store() {
    let dir = tempfile::tempdir().unwrap();
    let git = dir.path().join(".git");
    let store = Store::init(&git).unwrap();
    for round in 0..6u64 {
        let mut child = spawn_child(&git, 100_000);
        // Let it commit for a while, then kill it at an arbitrary point.
        std::thread::sleep(Duration::from_millis(150 + round * 37));
        child.kill().unwrap();
        child.wait().unwrap();
        // Whatever it managed, the store reads, and the counter agrees with the records.
        let snap = store.snapshot().unwrap();
        let writes = snap.list("writes").unwrap().len() as u64;
        assert_eq!(counter(&store), writes);
        git_fsck(&git);
    }
    // A new writer gets through even if the kill left a lock behind (stale-lock recovery).
    let start = Instant::now();
    increment(&store, "after", 0);
    assert!(start.elapsed() < Duration::from_secs(60));
    let writes = store.snapshot().unwrap().list("writes").unwrap().len() as u64;
    assert_eq!(counter(&store), writes);
}

#[test]
fn stale_lock_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let git = dir.path().join(".git");
    let store = Store::init(&git).unwrap();
    let lock = git.join("refs/heads/main.lock");
    std::fs::write(&lock, b"").unwrap();
    // Age the lock as if its process died long ago.
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&lock)
        .unwrap()
        .set_modified(old)
        .unwrap();
    increment(&store, "x", 0);
    assert_eq!(counter(&store), 1);
    assert!(!lock.exists());
}

/// Every commit writes a small pack, and the smallest packs are merged as they pile up,
/// while this handle keeps reading and writing. Nothing goes missing, the packs stay few,
/// no loose object is written, and git agrees that the repository is sound.
#[test]
fn commits_stay_readable_while_packs_are_merged() {
    let dir = tempfile::tempdir().unwrap();
    let git = dir.path().join("store.git");
    let store = Store::init(&git).unwrap();
    let n = 1500u64;
    for i in 0..n {
        increment(&store, "me", i);
        assert_eq!(counter(&store), i + 1, "after commit {i}");
    }
    // The flat `writes/` directory makes this store grow quadratically, so the store
    // starts a background `git repack` (delta compression), which holds the merge lock
    // while it runs and on a loaded machine may outlast the loop: let it finish (a
    // few minutes at most, as a guard against a hang), then one more commit merges what
    // piled up meanwhile.
    let lock = git.join("objects/pack/dtk-merge.lock");
    let waited = Instant::now();
    while lock.exists() && waited.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(50));
    }
    increment(&store, "me", n);
    let n = n + 1;
    let snap = store.snapshot().unwrap();
    assert_eq!(snap.list("writes").unwrap().len() as u64, n);
    // (Dropping the handle joins the merge that commit may have started.)
    drop((store, snap));
    let packs = std::fs::read_dir(git.join("objects/pack"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "idx")
        })
        .count();
    // The store merges when there are more than 24.
    assert!((2..=25).contains(&packs), "{packs} packs after {n} commits");
    let loose = std::fs::read_dir(git.join("objects"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().len() == 2)
        .count();
    assert_eq!(loose, 0, "loose object directories");
    git_fsck(&git);
    // A fresh handle reads everything too.
    let again = Store::open(&git).unwrap();
    assert_eq!(counter(&again), n);
}

/// A pack whose bytes were damaged is never merged into a new pack (which would carry the
/// damage under a valid checksum) nor deleted: merging skips it and names it, the other
/// packs go on being merged, and the damage stays visible to `git fsck`.
#[test]
fn a_damaged_pack_is_not_merged_away() {
    let dir = tempfile::tempdir().unwrap();
    let git = dir.path().join(".git");
    let store = Store::init(&git).unwrap();
    for i in 0..5 {
        increment(&store, "a", i);
    }
    let pack_dir = git.join("objects/pack");
    let packs = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&pack_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "pack"))
            .collect();
        v.sort();
        v
    };
    // Damage one byte inside the first object of the oldest pack (the first commit's,
    // which later commits no longer read).
    let victim = packs()
        .into_iter()
        .min_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[14] ^= 0x55;
    std::fs::write(&victim, &bytes).unwrap();
    // Enough commits to make the store merge its packs several times.
    for i in 5..80 {
        increment(&store, "b", i);
    }
    assert!(victim.exists(), "the damaged pack was deleted");
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        bytes,
        "it is kept as it was"
    );
    let count = packs().len();
    assert!(
        count < 40,
        "the other packs were still merged ({count} packs)"
    );
    let fsck = Command::new("git")
        .arg("--git-dir")
        .arg(&git)
        .args(["fsck", "--strict"])
        .output()
        .unwrap();
    assert!(!fsck.status.success(), "git fsck still sees the damage");
}
