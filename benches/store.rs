//! Metadata store: commit throughput and record lookup on a store holding 100,000 run
//! records (the store is built once and cached under `target/bench-data/`; each run of the
//! bench works on a fresh copy of it, so a rerun commits new records, not no-op ones).

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use dtk::{Command, NodeSpec, RunId, RunRecord, RunStatus, SourceVersion, Store};

const RECORDS: usize = 100_000;

fn record(i: usize) -> RunRecord {
    let node = NodeSpec::new(Command::Argv(vec![format!("step-{}", i % 1000)])).id();
    let inputs = vec![SourceVersion {
        source: dtk::Name::new("src").unwrap(),
        version: format!("sha1:{:040x}", i).parse().unwrap(),
    }];
    RunRecord {
        id: RunId::compute(&node, &inputs, 0),
        node,
        attempt: 0,
        inputs,
        outputs: vec![],
        status: RunStatus::Success,
        exit_code: Some(0),
        error: None,
        worker: Some("bench:1".into()),
        queued_ms: i as u64,
        started_ms: Some(i as u64),
        ended_ms: Some(i as u64 + 1),
        lease_until_ms: None,
        input_digests: vec![],
        log_digest: None,
        staging: None,
        read_files: Default::default(),
        worker_key: None,
        worker_signature: None,
        digest: None,
    }
}

fn path(id: &RunId) -> String {
    dtk::project::paths::run(id)
}

fn big_store() -> Store {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/store-100k");
    let git = dir.join(".git");
    if let Ok(s) = Store::open(&git) {
        if s.snapshot()
            .and_then(|s| s.read("complete"))
            .ok()
            .flatten()
            .is_some()
        {
            return s;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::init(&git).unwrap();
    for batch in 0..RECORDS / 1000 {
        store
            .transact(&format!("batch {batch}"), |tx| {
                for i in batch * 1000..(batch + 1) * 1000 {
                    let r = record(i);
                    tx.put_json(&path(&r.id), &r)?;
                }
                Ok(())
            })
            .unwrap();
    }
    // Pack the loose objects, as `git gc` would in a long-lived project.
    store.pack().unwrap();
    store
        .transact("complete", |tx| {
            tx.put("complete", b"1")?;
            Ok(())
        })
        .unwrap();
    Store::open(&git).unwrap()
}

/// A copy of the cached store in a new temporary directory: the commits of one run of the
/// bench are not seen by the next (they would make its commits no-ops).
fn fresh_copy() -> (tempfile::TempDir, Store) {
    drop(big_store());
    let from = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/store-100k/.git");
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&from)
        .arg(dir.path().join(".git"))
        .status()
        .unwrap();
    assert!(status.success(), "cp -a {}", from.display());
    let store = Store::open(&dir.path().join(".git")).unwrap();
    (dir, store)
}

fn bench(c: &mut Criterion) {
    let (_copy, store) = fresh_copy();
    let mut g = c.benchmark_group("store-100k-runs");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    let mut n = RECORDS;
    g.bench_function("commit one run record", |b| {
        b.iter(|| {
            n += 1;
            let r = record(n);
            store
                .transact("bench", |tx| {
                    tx.put_json(&path(&r.id), &r)?;
                    Ok(())
                })
                .unwrap()
        })
    });
    let ids: Vec<RunId> = (0..1000).map(|i| record(i * 97).id).collect();
    let mut k = 0;
    g.bench_function("lookup one run record by id", |b| {
        b.iter(|| {
            k = (k + 1) % ids.len();
            let snap = store.snapshot().unwrap();
            let r: RunRecord = snap.read_json(&path(&ids[k])).unwrap().unwrap();
            assert_eq!(r.id, ids[k]);
        })
    });
    g.bench_function("lookup by 8-digit prefix", |b| {
        b.iter(|| {
            k = (k + 1) % ids.len();
            let hex = ids[k].to_hex();
            let snap = store.snapshot().unwrap();
            let m: Vec<_> = snap
                .list(&dtk::project::paths::run_dir(&hex))
                .unwrap()
                .into_iter()
                .filter(|e| e.name.starts_with(&hex[..8]))
                .collect();
            assert_eq!(m.len(), 1);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
