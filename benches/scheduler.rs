//! Scheduling: a no-op pass (nothing changed) over 1,000 nodes and 1,000 sources, through
//! the library and through the `dkt` binary; and the overhead dkt adds to one run.
//!
//! The project is built once under `target/bench-data/` (1,000 path sources, 1,000 nodes,
//! each with a successful run on the current versions).

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use dtk::project::paths;
use dtk::scheduler::PassOptions;
use dtk::{
    AddSource, Command, InitOptions, Name, NodeSpec, Project, RunId, RunOptions, RunRecord,
    RunStatus, SourceVersion,
};

const N: usize = 1000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn project(rt: &tokio::runtime::Runtime) -> (PathBuf, Project) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/scheduler-1000");
    if let Ok(p) = Project::open(&dir, dtk::default_registry()) {
        if p.store()
            .snapshot()
            .and_then(|s| s.read("bench-complete"))
            .ok()
            .flatten()
            .is_some()
        {
            return (dir.clone(), p.with_cwd(&dir));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = Project::init(&dir, dtk::default_registry(), InitOptions::new())
        .unwrap()
        .with_cwd(&dir);
    rt.block_on(async {
        for i in 0..N {
            let d = dir.join(format!("data/s{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("f"), format!("{i}\n")).unwrap();
            p.add_source(AddSource::new(format!("s{i}"), Some(format!("data/s{i}"))))
                .await
                .unwrap();
        }
    });
    // Node i reads s{i} and writes s{i+1} (the last one writes nothing): a 1,000-deep chain,
    // each with a successful run on the current versions.
    let sources: Vec<_> = p.sources().unwrap();
    let version = |i: usize| {
        sources
            .iter()
            .find(|s| s.name.as_str() == format!("s{i}"))
            .unwrap()
            .latest
            .clone()
            .unwrap()
    };
    p.store()
        .transact("bench nodes", |tx| {
            for i in 0..N {
                let mut node = NodeSpec::new(Command::Argv(vec![format!("step {i}")]));
                node.inputs = vec![Name::new(&format!("s{i}")).unwrap()];
                if i + 1 < N {
                    node.outputs = vec![Name::new(&format!("s{}", i + 1)).unwrap()];
                }
                node.normalize();
                let id = node.id();
                tx.put_json(&paths::node(&id), &node)?;
                let inputs = vec![SourceVersion {
                    source: node.inputs[0].clone(),
                    version: version(i),
                }];
                let mut r = RunRecord {
                    id: RunId::compute(&id, &inputs, 0),
                    node: id,
                    attempt: 0,
                    inputs: inputs.clone(),
                    outputs: vec![],
                    status: RunStatus::Success,
                    exit_code: Some(0),
                    error: None,
                    worker: None,
                    queued_ms: 0,
                    started_ms: Some(0),
                    ended_ms: Some(0),
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
                let blob = tx.put_json(&paths::run(&r.id), &r)?;
                tx.put_id(&paths::node_run(&id, &r.id), blob);
            }
            tx.put("bench-complete", b"1")?;
            Ok(())
        })
        .unwrap();
    p.store().pack().unwrap();
    (
        dir.clone(),
        Project::open(&dir, dtk::default_registry())
            .unwrap()
            .with_cwd(&dir),
    )
}

fn dkt() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let release = root.join("target/release/dkt");
    assert!(
        release.exists(),
        "build the CLI first: cargo build --release -p dtk-cli"
    );
    release
}

fn bench(c: &mut Criterion) {
    let rt = rt();
    let (dir, p) = project(&rt);
    // It really is a no-op.
    let report = rt.block_on(p.run_pass(PassOptions::new())).unwrap();
    assert!(report.items.is_empty(), "{:?}", report.items.first());
    assert!(report
        .polled
        .iter()
        .all(|o| o.error.is_none() && o.previous == o.latest));

    let mut g = c.benchmark_group("scheduler");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("no-op pass, 1000 nodes + 1000 sources (library)", |b| {
        b.iter(|| rt.block_on(p.run_pass(PassOptions::new())).unwrap())
    });
    let bin = dkt();
    g.bench_function(
        "no-op `dkt run`, 1000 nodes + 1000 sources (process)",
        |b| {
            b.iter(|| {
                let out = std::process::Command::new(&bin)
                    .arg("-C")
                    .arg(&dir)
                    .arg("run")
                    .output()
                    .unwrap();
                assert!(out.status.success());
            })
        },
    );
    g.finish();

    // Overhead of one run: a node running `true`, forced, minus `sh -c true` itself.
    let small = tempfile::tempdir().unwrap();
    let q = Project::init(small.path(), dtk::default_registry(), InitOptions::new()).unwrap();
    let id = q
        .define_node(NodeSpec::new(Command::Argv(vec!["true".into()])))
        .unwrap();
    let mut g = c.benchmark_group("run-overhead");
    g.sample_size(30).measurement_time(Duration::from_secs(10));
    g.bench_function(
        "one forced run of `true` (define, claim, execute, record)",
        |b| {
            b.iter(|| {
                rt.block_on(q.run_node(&id, RunOptions::new().with_force(true)))
                    .unwrap()
            })
        },
    );
    g.bench_function("`sh -c true` alone", |b| {
        b.iter(|| {
            std::process::Command::new("sh")
                .args(["-c", "true"])
                .status()
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
