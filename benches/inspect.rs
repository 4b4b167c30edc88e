//! `dkt inspect` (the library's `Project::manifest`) on an artifact whose ancestry is a
//! chain of 1,000 runs, and on one made from a fan-in of 1,000 inputs, in a project that
//! also holds 100,000 other run records. The project is built once from records (no
//! commands are run) and cached under `target/bench-data/`.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use dtk::inspect::{InspectOptions, Target};
use dtk::project::paths;
use dtk::{
    Command, InitOptions, Name, NodeSpec, Project, RunId, RunRecord, RunStatus, SourceSpec,
    SourceVersion, Version, VersionRecord,
};

const FILLER: usize = 100_000;
const CHAIN: usize = 1000;
const FAN_IN: usize = 1000;

fn version(i: usize) -> Version {
    format!("md5:{:032x}", i as u128 * 7919 + 1)
        .parse()
        .unwrap()
}

fn run(
    node: &NodeSpec,
    inputs: Vec<SourceVersion>,
    outputs: Vec<SourceVersion>,
    t: u64,
) -> RunRecord {
    let id = node.id();
    let mut r = RunRecord {
        id: RunId::compute(&id, &inputs, 0),
        node: id,
        attempt: 0,
        inputs,
        outputs,
        status: RunStatus::Success,
        exit_code: Some(0),
        error: None,
        worker: Some("bench:1".into()),
        queued_ms: t,
        started_ms: Some(t),
        ended_ms: Some(t + 1),
        lease_until_ms: None,
        input_digests: vec![],
        log_digest: None,
        staging: None,
        read_files: Default::default(),
        worker_key: None,
        worker_signature: None,
        digest: None,
    };
    r.seal().expect("seal");
    r
}

fn vrec(sv: &SourceVersion, run: Option<&RunRecord>) -> VersionRecord {
    let mut v = VersionRecord {
        source: sv.source.clone(),
        version: sv.version.clone(),
        recorded_ms: None,
        seq: None,
        run: run.map(|r| r.id),
        node: run.map(|r| r.node),
        inputs: run.map(|r| r.inputs.clone()).unwrap_or_default(),
        extra: Default::default(),
        run_digest: run.and_then(|r| r.digest.clone()),
        origin: None,
        digest: None,
    };
    v.seal().expect("seal");
    v
}

fn sv(source: &str, i: usize) -> SourceVersion {
    SourceVersion {
        source: Name::new(source).unwrap(),
        version: version(i),
    }
}

fn put_source(tx: &mut dtk::store::Tx, name: &str, latest: &Version) -> dtk::Result<()> {
    let mut s = SourceSpec::new(
        Name::new(name).unwrap(),
        "path",
        format!("/nonexistent/{name}"),
    );
    s.latest = Some(latest.clone());
    dtk::records::put_source(tx, &s)?;
    Ok(())
}

fn put_run(tx: &mut dtk::store::Tx, r: &RunRecord) -> dtk::Result<()> {
    let id = tx.put_json(&paths::run(&r.id), r)?;
    tx.put_id(&paths::node_run(&r.node, &r.id), id);
    for i in &r.inputs {
        tx.put_id(&paths::consumer(i, &r.id), id);
    }
    Ok(())
}

fn project() -> Project {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/inspect-project");
    if let Ok(p) = Project::open(&dir, dtk::default_registry()) {
        if p.store()
            .snapshot()
            .and_then(|s| s.read("bench-complete"))
            .ok()
            .flatten()
            .is_some()
        {
            return p;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = Project::init(&dir, dtk::default_registry(), InitOptions::new()).unwrap();
    let store = p.store();
    // 100,000 unrelated runs of 1,000 nodes reading the source "noise".
    store
        .transact("noise source", |tx| put_source(tx, "noise", &version(0)))
        .unwrap();
    for batch in 0..FILLER / 5000 {
        store
            .transact(&format!("filler {batch}"), |tx| {
                for i in batch * 5000..(batch + 1) * 5000 {
                    let node = NodeSpec::new(Command::Argv(vec![format!("noise-{}", i % 1000)]));
                    let r = run(&node, vec![sv("noise", i)], vec![], i as u64);
                    let id = tx.put_json(&paths::run(&r.id), &r)?;
                    tx.put_id(&paths::node_run(&r.node, &r.id), id);
                }
                Ok(())
            })
            .unwrap();
    }
    // A chain: c0 -> n1 -> c1 -> n2 -> ... -> c1000.
    store
        .transact("chain", |tx| {
            for i in 0..=CHAIN {
                put_source(tx, &format!("c{i}"), &version(i))?;
            }
            tx.put_json(
                &paths::version(&Name::new("c0").unwrap(), &version(0)),
                &vrec(&sv("c0", 0), None),
            )?;
            for i in 1..=CHAIN {
                let mut node = NodeSpec::new(Command::Argv(vec![format!("step {i}")]));
                node.inputs = vec![Name::new(&format!("c{}", i - 1)).unwrap()];
                node.outputs = vec![Name::new(&format!("c{i}")).unwrap()];
                tx.put_json(&paths::node(&node.id()), &node)?;
                let r = run(
                    &node,
                    vec![sv(&format!("c{}", i - 1), i - 1)],
                    vec![sv(&format!("c{i}"), i)],
                    i as u64,
                );
                put_run(tx, &r)?;
                let out = sv(&format!("c{i}"), i);
                tx.put_json(
                    &paths::version(&out.source, &out.version),
                    &vrec(&out, Some(&r)),
                )?;
            }
            Ok(())
        })
        .unwrap();
    // A fan-in: f0..f999 -> one node -> fan.
    store
        .transact("fan-in", |tx| {
            let mut node = NodeSpec::new(Command::Argv(vec!["merge".into()]));
            let mut inputs = Vec::new();
            for i in 0..FAN_IN {
                let name = format!("f{i}");
                put_source(tx, &name, &version(10_000 + i))?;
                let s = sv(&name, 10_000 + i);
                tx.put_json(&paths::version(&s.source, &s.version), &vrec(&s, None))?;
                node.inputs.push(s.source.clone());
                inputs.push(s);
            }
            put_source(tx, "fan", &version(99_999))?;
            node.outputs = vec![Name::new("fan").unwrap()];
            node.normalize();
            inputs.sort();
            tx.put_json(&paths::node(&node.id()), &node)?;
            let out = sv("fan", 99_999);
            let r = run(&node, inputs, vec![out.clone()], 1);
            put_run(tx, &r)?;
            tx.put_json(
                &paths::version(&out.source, &out.version),
                &vrec(&out, Some(&r)),
            )?;
            tx.put("bench-complete", b"1")?;
            Ok(())
        })
        .unwrap();
    // The steady state of a long-lived project: dtk packs in the background as git does.
    p.store().pack().unwrap();
    Project::open(&dir, dtk::default_registry()).unwrap()
}

fn bench(c: &mut Criterion) {
    let p = project();
    let mut g = c.benchmark_group("inspect-100k-runs");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    let chain = Target::Version(sv(&format!("c{CHAIN}"), CHAIN));
    let m = p.manifest(chain.clone(), InspectOptions::new()).unwrap();
    assert_eq!(
        m.entries.len(),
        2 * CHAIN + 1,
        "1001 versions and 1000 runs"
    );
    g.bench_function("chain of 1000 runs", |b| {
        b.iter(|| p.manifest(chain.clone(), InspectOptions::new()).unwrap())
    });
    let fan = Target::Version(sv("fan", 99_999));
    let m = p.manifest(fan.clone(), InspectOptions::new()).unwrap();
    assert_eq!(m.entries.len(), FAN_IN + 2, "1000 inputs, 1 run, 1 output");
    g.bench_function("fan-in of 1000 inputs", |b| {
        b.iter(|| p.manifest(fan.clone(), InspectOptions::new()).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
