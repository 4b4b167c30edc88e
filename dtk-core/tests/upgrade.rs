//! A store written in format 1 (flat index directories) is brought to format 2 when the
//! project is opened: every record moves to its fanned-out path in one commit, nothing is
//! lost, and opening again changes nothing.

use std::sync::Arc;

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
    assert_eq!(snap.read("format").unwrap().unwrap(), b"dtk-store 2\n");
    for (old, new) in [
        (
            format!("versions/data/md5-{MD5}.json"),
            format!("versions/data/d4/md5-{MD5}.json"),
        ),
        (
            format!("node-runs/{NODE}/{RUN}.json"),
            format!("node-runs/{NODE}/5e/{RUN}.json"),
        ),
        (
            format!("done/{NODE}/{KEY}.json"),
            format!("done/{NODE}/01/{KEY}.json"),
        ),
        (
            format!("consumers/data/md5-{MD5}/{RUN}.json"),
            format!("consumers/data/d4/md5-{MD5}/{RUN}.json"),
        ),
    ] {
        assert!(snap.read(&old).unwrap().is_none(), "{old} is still there");
        assert!(snap.read(&new).unwrap().is_some(), "{new} is missing");
    }
    assert!(snap
        .read("versions/data/ff/md5-ffffffffffffffffffffffffffffffff.json")
        .unwrap()
        .is_some());
    // The next version of `data` continues after the highest seq seen.
    assert_eq!(snap.read("versions/data/seq").unwrap().unwrap(), b"8\n");
    // The flat directories that emptied are gone.
    assert!(snap
        .list("consumers/data")
        .unwrap()
        .iter()
        .all(|e| e.name == "d4"));
    let history = opened.store().history(100).unwrap();
    assert_eq!(history.len(), before + 1);
    assert!(history[0].1.starts_with("upgrade: store format 2"));

    // Opening again: nothing to do, no commit.
    let again = Project::open(dir.path(), registry).unwrap();
    assert_eq!(again.store().history(100).unwrap().len(), before + 1);
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
