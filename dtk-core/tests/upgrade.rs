//! A store written in an earlier format is brought to the current one (format 3) when the
//! project is opened: format 1 (flat index directories) through format 2, one commit per
//! step; every record moves to its fanned-out path with its bytes unchanged, indexes
//! format 3 does not keep are dropped, nothing else is lost, and opening again changes
//! nothing.

use std::sync::Arc;

use dtk_core::project::paths::fan;
use dtk_core::{InitOptions, Project, Registry};

const RUN: &str = "5e0f6bd1cd9fd0ad6a1bb3d2e4ac5c6e2a5a3b4c8d9e0f1a2b3c4d5e6f708192";
const NODE: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const KEY: &str = "0123456789abcdef0123456789abcdef";
const MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";

#[test]
fn format_1_is_upgraded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::new());
    let project = Project::init(dir.path(), registry.clone(), InitOptions::new()).unwrap();
    let version = |seq: u64| format!("{{\"seq\": {seq}}}\n");
    project
        .store()
        .transact("write a format 1 store", |tx| {
            tx.put("format", b"dtk-store 1\n")?;
            tx.put(
                &format!("versions/data/md5-{MD5}.json"),
                version(0).as_bytes(),
            )?;
            tx.put(
                "versions/data/md5-ffffffffffffffffffffffffffffffff.json",
                version(7).as_bytes(),
            )?;
            tx.put(&format!("node-runs/{NODE}/{RUN}.json"), b"{}\n")?;
            tx.put(&format!("done/{NODE}/{KEY}.json"), b"{}\n")?;
            tx.put(&format!("consumers/data/md5-{MD5}/{RUN}.json"), b"{}\n")?;
            Ok(())
        })
        .unwrap();
    let before = project.store().history(100).unwrap().len();

    let opened = Project::open(dir.path(), registry.clone()).unwrap();
    let snap = opened.store().snapshot().unwrap();
    assert_eq!(snap.read("format").unwrap().unwrap(), b"dtk-store 4\n");
    let data = fan("data");
    for (old, new) in [
        (
            format!("versions/data/md5-{MD5}.json"),
            format!("versions/{data}/data/d/4/md5-{MD5}.json"),
        ),
        (
            format!("node-runs/{NODE}/{RUN}.json"),
            format!("node-runs/a/1/{NODE}/5/e/{RUN}.json"),
        ),
        (
            format!("consumers/data/md5-{MD5}/{RUN}.json"),
            format!("consumers/{data}/data/d/4/md5-{MD5}/{RUN}.json"),
        ),
    ] {
        assert!(snap.read(&old).unwrap().is_none(), "{old} is still there");
        assert!(snap.read(&new).unwrap().is_some(), "{new} is missing");
    }
    // The records keep their bytes.
    assert_eq!(
        snap.read(&format!(
            "versions/{data}/data/f/f/md5-ffffffffffffffffffffffffffffffff.json"
        ))
        .unwrap()
        .unwrap(),
        b"{\"seq\": 7}\n"
    );
    // Indexes format 3 derives instead of keeping, and sequence counters, are gone.
    assert!(snap.list("done").unwrap().is_empty());
    assert!(snap.read("versions/data/seq").unwrap().is_none());
    for top in ["versions", "node-runs", "consumers"] {
        let names: Vec<String> = snap
            .list(top)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(names.iter().all(|n| n.len() == 1), "{top}: {names:?}");
    }
    let history = opened.store().history(100).unwrap();
    assert_eq!(history.len(), before + 2);
    assert!(history[0].1.starts_with("upgrade: store format 4"));
    assert!(history[1].1.starts_with("upgrade: store format 2"));

    // Opening again: nothing to do, no commit.
    let again = Project::open(dir.path(), registry).unwrap();
    assert_eq!(again.store().history(100).unwrap().len(), before + 2);
}

#[test]
fn a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::new());
    let project = Project::init(dir.path(), registry.clone(), InitOptions::new()).unwrap();
    project
        .store()
        .transact("from the future", |tx| {
            tx.put("format", b"dtk-store 9\n")?;
            Ok(())
        })
        .unwrap();
    let err = Project::open(dir.path(), registry).unwrap_err().to_string();
    assert!(err.contains("\"dtk-store 9\""), "{err}");
    assert!(err.contains("use a newer dkt"), "{err}");
}
