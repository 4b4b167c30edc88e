//! The local HTTP / HockeyApp API server of `tests/py/http_fixture.py` (its docstring
//! describes the layout of its root), started per test on a free port of 127.0.0.1 and
//! killed when dropped. Shared by the tests of dtk-sources and of the CLI.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The fixture script.
pub fn script() -> PathBuf {
    // Through the workspace root, so the CLI's tests can include this file too.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dtk-sources/tests/py/http_fixture.py")
}

/// A running fixture server with its own root directory.
pub struct Server {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Start a server on a free port.
    pub fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("python3")
            .arg(script())
            .arg("--root")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("fixture printed {line:?}"));
        Server { child, port, dir }
    }

    /// Its root directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The URL of `path` (starting with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// Serve `content` at `/rel`.
    pub fn put_file(&self, rel: &str, content: &[u8]) {
        let p = self.root().join("files").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
    }

    /// Turn switch `name` on, with `value`.
    pub fn set(&self, name: &str, value: &str) {
        if name == "busy" {
            // A new busy spell: forget when the last one said to come back.
            self.clear("busy-until");
        }
        std::fs::write(self.root().join("ctl").join(name), value).unwrap();
    }

    /// Turn switch `name` off.
    pub fn clear(&self, name: &str) {
        let _ = std::fs::remove_file(self.root().join("ctl").join(name));
    }

    /// The request log: `METHOD PATH STATUS AUTH` lines.
    pub fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.root().join("requests.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Empty the request log.
    pub fn clear_log(&self) {
        let _ = std::fs::remove_file(self.root().join("requests.log"));
    }

    /// Require `token` on the API.
    pub fn set_token(&self, token: &str) {
        std::fs::write(self.root().join("token"), token).unwrap();
    }

    /// The apps of `GET /api/2/apps`.
    pub fn set_apps(&self, apps: serde_json::Value) {
        let d = self.root().join("hockeyapp");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("apps.json"), apps.to_string()).unwrap();
    }

    /// Remove the `GET /api/2/apps` endpoint.
    pub fn remove_apps(&self) {
        let _ = std::fs::remove_file(self.root().join("hockeyapp/apps.json"));
    }

    /// The builds of `app` (newest first), as the fixture describes them.
    pub fn set_builds(&self, app: &str, builds: serde_json::Value) {
        let d = self.root().join("hockeyapp").join(app).join("files");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            self.root().join("hockeyapp").join(app).join("builds.json"),
            builds.to_string(),
        )
        .unwrap();
    }

    /// The file `name` of a build of `app`.
    pub fn put_build_file(&self, app: &str, name: &str, content: &[u8]) {
        let d = self.root().join("hockeyapp").join(app).join("files");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), content).unwrap();
    }
}
