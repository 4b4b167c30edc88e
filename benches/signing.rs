//! The cost of signing the history: one SSHSIG signature of a commit, checking one, and a
//! whole store commit (one run record) with and without signing, on the same machine.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use dtk::signing::{verify_commit, AllowedSigners, SigningKey};
use dtk::{Command, NodeSpec, RunId, RunRecord, RunStatus, SourceVersion, Store};

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

fn bench(c: &mut Criterion) {
    let key = Arc::new(SigningKey::generate("bench@localhost").unwrap());
    let mut g = c.benchmark_group("signing");
    g.sample_size(30).measurement_time(Duration::from_secs(5));

    // A commit as dtk writes one for a run.
    let payload = format!(
        "tree {:040x}\nparent {:040x}\nauthor dtk <dtk@localhost> 1700000000 +0000\n\
         committer dtk <dtk@localhost> 1700000000 +0000\n\n\
         run 1a2b3c4d of node 02da6ad3: success -> tests:d41d8cd9",
        1, 2
    );
    g.bench_function("sign one commit (SSHSIG, ed25519, sha512)", |b| {
        b.iter(|| key.sign_commit(payload.as_bytes()).unwrap())
    });
    let armored = key.sign_commit(payload.as_bytes()).unwrap();
    let (head, body) = payload.split_once("\n\n").unwrap();
    let signed = format!("{head}\ngpgsig {}\n\n{body}", armored.replace('\n', "\n "));
    let trusted = AllowedSigners::default();
    g.bench_function("check one commit's signature", |b| {
        b.iter(|| verify_commit(signed.as_bytes(), &trusted))
    });

    for signed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join(".git")).unwrap();
        if signed {
            store.set_signer(Some(key.clone()));
        }
        let mut n = 0;
        let name = if signed {
            "commit one run record, signed"
        } else {
            "commit one run record, unsigned"
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                let r = record(n);
                store
                    .transact("bench", |tx| {
                        tx.put_json(&dtk::project::paths::run(&r.id), &r)?;
                        Ok(())
                    })
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
