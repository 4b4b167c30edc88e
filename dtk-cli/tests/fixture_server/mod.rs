//! The local HTTP / HockeyApp API server of `dtk-sources/tests/py/http_fixture.py` (see
//! its docstring for the layout of its root), on a free port, killed when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Server {
    child: Child,
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
    pub fn start() -> Server {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../dtk-sources/tests/py/http_fixture.py");
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("python3")
            .arg(script)
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

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn put_file(&self, rel: &str, content: &[u8]) {
        let p = self.root().join("files").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn set(&self, name: &str, value: &str) {
        std::fs::write(self.root().join("ctl").join(name), value).unwrap();
    }

    pub fn clear(&self, name: &str) {
        let _ = std::fs::remove_file(self.root().join("ctl").join(name));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root().join("requests.log")).unwrap_or_default()
    }

    pub fn set_token(&self, token: &str) {
        std::fs::write(self.root().join("token"), token).unwrap();
    }

    fn hockeyapp(&self) -> PathBuf {
        self.root().join("hockeyapp")
    }

    pub fn set_apps(&self, apps: serde_json::Value) {
        std::fs::create_dir_all(self.hockeyapp()).unwrap();
        std::fs::write(self.hockeyapp().join("apps.json"), apps.to_string()).unwrap();
    }

    pub fn set_builds(&self, app: &str, builds: serde_json::Value) {
        let d = self.hockeyapp().join(app);
        std::fs::create_dir_all(d.join("files")).unwrap();
        std::fs::write(d.join("builds.json"), builds.to_string()).unwrap();
    }

    pub fn put_build_file(&self, app: &str, name: &str, content: &[u8]) {
        let d = self.hockeyapp().join(app).join("files");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), content).unwrap();
    }
}
