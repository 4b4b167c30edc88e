//! Two copies of one project sharing a hub (the `sharing` and `reproduce` tests).

use super::{git, pinata_repo, Env};

/// A bare hub, an upstream git repository (outside every copy), and copy A with a git
/// source `up` and a path output `out` inside the project, pushed to the hub; copy B
/// cloned from the hub.
pub struct World {
    pub _hub_dir: tempfile::TempDir,
    pub hub: String,
    pub upstream: std::path::PathBuf,
    pub a: Env,
    pub b: Env,
}

pub fn world() -> World {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = hub_dir.path().join("hub.git");
    git(hub_dir.path(), &["init", "-q", "--bare", "hub.git"]);
    let upstream = hub_dir.path().join("upstream");
    pinata_repo(&upstream);
    let a = Env::project();
    std::fs::create_dir_all(a.path().join("out")).unwrap();
    a.dkt(&["remote", "add", "origin", hub.to_str().unwrap()])
        .ok();
    a.dkt(&["source", "add", "up", upstream.to_str().unwrap()])
        .ok();
    a.dkt(&["source", "add", "out", "out"]).ok();
    a.dkt(&["push"]).ok();
    let b = Env::new();
    b.dkt(&["clone", hub.to_str().unwrap(), "."]).ok();
    std::fs::create_dir_all(b.path().join("out")).unwrap();
    World {
        hub: hub.display().to_string(),
        _hub_dir: hub_dir,
        upstream,
        a,
        b,
    }
}
