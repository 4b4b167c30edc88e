//! Builds the projects `benches/dashboard.sh` serves, from records (no command runs):
//!
//! - `DIR/graph`: a 1,000-node pipeline in 10 layers of 100 nodes (each node reads one or
//!   two outputs of the layer above, the first layer reads 100 sources), every node with
//!   one run: most succeeded on the current inputs, some failed, some ran on older inputs;
//! - `DIR/runs`: one node with 100,000 runs.
//!
//! ```sh
//! cargo run --release --example dashboard_data -- /tmp/dash
//! ```

use std::path::{Path, PathBuf};

use dtk::project::paths;
use dtk::{
    Command, InitOptions, Name, NodeSpec, Project, RunId, RunRecord, RunStatus, SourceSpec,
    SourceVersion, Version,
};

const NODES: usize = 1000;
const LAYER: usize = 100;
const RUNS: usize = 100_000;

fn version(i: usize) -> Version {
    format!("md5:{:032x}", i as u128 * 7919 + 1)
        .parse()
        .expect("a version")
}

fn name(s: &str) -> Name {
    Name::new(s).expect("a name")
}

fn run(node: &NodeSpec, inputs: Vec<SourceVersion>, status: RunStatus, t: u64) -> RunRecord {
    let id = node.id();
    let mut r = RunRecord {
        id: RunId::compute(&id, &inputs, 0),
        node: id,
        attempt: 0,
        inputs,
        outputs: vec![],
        status,
        exit_code: Some(if status == RunStatus::Success { 0 } else { 1 }),
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

fn put_source(tx: &mut dtk::store::Tx, n: &str, latest: &Version) -> dtk::Result<()> {
    let mut s = SourceSpec::new(name(n), "path", format!("/nonexistent/{n}"));
    s.latest = Some(latest.clone());
    dtk::records::put_source(tx, &s)
}

fn put_run(tx: &mut dtk::store::Tx, r: &RunRecord) -> dtk::Result<()> {
    let id = tx.put_json(&paths::run(&r.id), r)?;
    tx.put_id(&paths::node_run(&r.node, &r.id), id);
    for i in &r.inputs {
        tx.put_id(&paths::consumer(i, &r.id), id);
    }
    Ok(())
}

fn fresh(dir: &Path) -> Project {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("mkdir");
    Project::init(dir, dtk::default_registry(), InitOptions::new()).expect("init")
}

fn graph(dir: &Path) {
    let p = fresh(dir);
    p.store()
        .transact("a 1,000-node pipeline", |tx| {
            // Sources: s0..s99 (roots) and o0..o999 (the nodes' outputs).
            for i in 0..LAYER {
                put_source(tx, &format!("s{i}"), &version(i))?;
            }
            for i in 0..NODES {
                put_source(tx, &format!("o{i}"), &version(10_000 + i))?;
            }
            for i in 0..NODES {
                let mut inputs: Vec<(String, usize)> = if i < LAYER {
                    vec![(format!("s{i}"), i)]
                } else {
                    let a = i - LAYER;
                    let b = (i * 37) % (i - LAYER + 1);
                    vec![(format!("o{a}"), 10_000 + a), (format!("o{b}"), 10_000 + b)]
                };
                inputs.sort();
                inputs.dedup();
                let mut node = NodeSpec::new(Command::Argv(vec![format!("step-{i}")]));
                node.inputs = inputs.iter().map(|(n, _)| name(n)).collect();
                node.outputs = vec![name(&format!("o{i}"))];
                node.normalize();
                tx.put_json(&paths::node(&node.id()), &node)?;
                let mut ins: Vec<SourceVersion> = inputs
                    .iter()
                    .map(|(n, v)| SourceVersion {
                        source: name(n),
                        // Every 7th node ran on an older version: outdated.
                        version: version(if i % 7 == 3 { v + 50_000 } else { *v }),
                    })
                    .collect();
                ins.sort();
                let status = if i % 13 == 5 {
                    RunStatus::Failure
                } else {
                    RunStatus::Success
                };
                put_run(tx, &run(&node, ins, status, i as u64))?;
            }
            Ok(())
        })
        .expect("graph");
    p.store().pack().expect("pack");
}

fn runs(dir: &Path) {
    let p = fresh(dir);
    let mut node = NodeSpec::new(Command::Argv(vec!["big".into()]));
    node.inputs = vec![name("noise")];
    node.normalize();
    p.store()
        .transact("a node", |tx| {
            put_source(tx, "noise", &version(0))?;
            tx.put_json(&paths::node(&node.id()), &node)?;
            Ok(())
        })
        .expect("node");
    for batch in 0..RUNS / 10_000 {
        p.store()
            .transact(&format!("runs {batch}"), |tx| {
                for i in batch * 10_000..(batch + 1) * 10_000 {
                    let sv = SourceVersion {
                        source: name("noise"),
                        version: version(i),
                    };
                    put_run(tx, &run(&node, vec![sv], RunStatus::Success, i as u64))?;
                }
                Ok(())
            })
            .expect("runs");
    }
    p.store().pack().expect("pack");
    println!("{}", node.id().to_hex());
}

fn main() {
    let dir: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/bench-data/dashboard".into())
        .into();
    graph(&dir.join("graph"));
    runs(&dir.join("runs"));
}
