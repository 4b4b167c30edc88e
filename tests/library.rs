//! The library API, as an embedding program uses it.

use std::sync::Arc;

use dtk::{AddSource, Error, InitOptions, NodeSpec, Project, Registry, RunOptions, RunOutcome};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn init_open_discover() {
    let dir = tempfile::tempdir().unwrap();
    let p = Project::init(dir.path(), dtk::default_registry(), InitOptions::new()).unwrap();
    assert_eq!(p.dkt_dir().file_name().unwrap(), ".dkt");
    assert!(matches!(
        Project::init(dir.path(), dtk::default_registry(), InitOptions::new()),
        Err(Error::AlreadyExists { .. })
    ));
    std::fs::create_dir_all(dir.path().join("deep/er")).unwrap();
    let found = Project::discover(&dir.path().join("deep/er"), dtk::default_registry()).unwrap();
    assert_eq!(found.root(), p.root());
    let elsewhere = tempfile::tempdir().unwrap();
    assert!(matches!(
        Project::discover(elsewhere.path(), dtk::default_registry()),
        Err(Error::NoProject(_))
    ));
}

#[test]
fn unregistered_kinds_are_named_when_opening() {
    let dir = tempfile::tempdir().unwrap();
    let p = Project::init(dir.path(), dtk::default_registry(), InitOptions::new()).unwrap();
    p.store()
        .transact("plugin source", |tx| {
            let spec =
                dtk::SourceSpec::new(dtk::Name::new("feed").unwrap(), "rss", "file:///feed.json");
            tx.put_json("sources/feed.json", &spec)?;
            Ok(())
        })
        .unwrap();
    let err = Project::open(dir.path(), dtk::default_registry()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("\"rss\"") && msg.contains("feed"), "{msg}");
    // With no kinds at all, every kind is unknown, including the built-in ones.
    let empty = Arc::new(Registry::new());
    assert!(Project::open(dir.path(), empty).is_err());
}

#[test]
fn define_and_run_a_node_with_provenance() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    std::fs::write(dir.path().join("in/x"), "data").unwrap();
    let p = Project::init(dir.path(), dtk::default_registry(), InitOptions::new())
        .unwrap()
        .with_cwd(dir.path());
    rt().block_on(async {
        let input = p
            .add_source(AddSource::new("in", Some("in".into())))
            .await
            .unwrap();
        p.add_source(AddSource::new("out", Some("out".into())))
            .await
            .unwrap();
        let mut node = NodeSpec::new(dtk::Command::Argv(vec![
            "cp ${in:ROOT}/x ${out:ROOT}/y".into()
        ]));
        node.inputs = vec![input.name.clone()];
        node.outputs = vec![dtk::Name::new("out").unwrap()];
        let id = p.define_node(node.clone()).unwrap();
        assert_eq!(p.define_node(node).unwrap(), id, "idempotent");
        let outcome = p.run_node(&id, RunOptions::new()).await.unwrap();
        let RunOutcome::Ran(run) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(run.status, dtk::RunStatus::Success);
        assert_eq!(run.inputs[0].version, input.latest.clone().unwrap());
        let out_v = &run.outputs[0].version;
        let rec = p
            .recorded_versions("out")
            .unwrap()
            .into_iter()
            .find(|r| &r.version == out_v)
            .unwrap();
        assert_eq!(rec.run, Some(run.id));
        assert_eq!(rec.node, Some(id));
        assert_eq!(rec.inputs, run.inputs);
        assert!(matches!(
            p.run_node(&id, RunOptions::new()).await.unwrap(),
            RunOutcome::UpToDate(_)
        ));
    });
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/y")).unwrap(),
        "data"
    );
}
