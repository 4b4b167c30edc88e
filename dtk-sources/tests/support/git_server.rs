//! A git smart-HTTP(S) server on 127.0.0.1 (`tests/py/git_http_server.py`: the real
//! `git http-backend` behind a small server; with TLS, a certificate from a test CA made at
//! start-up). Shared by the tests of dtk-sources and of the CLI.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// A running server with its own root; killed when dropped, and ends by itself when the
/// test process does (its standard input closes).
pub struct GitServer {
    child: Child,
    _stdin: ChildStdin,
    /// Its port on 127.0.0.1.
    pub port: u16,
    tls: bool,
    dir: tempfile::TempDir,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GitServer {
    /// Start a server; `tls` for HTTPS, `require_auth` to refuse requests without exactly
    /// that `Authorization` header value.
    pub fn start(tls: bool, require_auth: Option<&str>) -> GitServer {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../dtk-sources/tests/py/git_http_server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg("--root").arg(dir.path());
        if tls {
            cmd.arg("--tls");
        }
        if let Some(a) = require_auth {
            cmd.arg("--require-auth").arg(a);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!("git_http_server.py printed {line:?} (it needs python3 and, for TLS, the `cryptography` package)")
        });
        GitServer {
            child,
            _stdin: stdin,
            port,
            tls,
            dir,
        }
    }

    /// `https://127.0.0.1:PORT` (or `http://`).
    pub fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The test CA's certificate (PEM), for `SSL_CERT_FILE`.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Serve a bare clone of the repository `from` as `NAME` (`user/repo`).
    pub fn serve(&self, name: &str, from: &Path) {
        let to = self.dir.path().join("repos").join(name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let out = Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(from)
            .arg(&to)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Write the control file `name` (`busy`, `trickle`: see the script's docstring).
    pub fn set(&self, name: &str, value: &str) {
        std::fs::write(self.dir.path().join(name), value).unwrap();
    }

    /// Remove the control file `name`.
    pub fn clear(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.path().join(name));
    }

    /// Every request so far as `METHOD PATH STATUS[ early]`, in order.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("requests.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The `Authorization` header of every request so far (`-` for none), in order.
    pub fn authorizations(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("auth.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}
