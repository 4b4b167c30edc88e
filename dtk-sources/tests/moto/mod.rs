//! A real S3-compatible server for tests: `moto_server` (PyPI `moto[server]`) on a free
//! loopback port, killed on drop. Buckets and objects are made with `curl`, so the tests
//! exercise dtk's client against requests it did not make itself.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// moto refuses anonymous reads, overwrites and deletes of existing objects, and does not
/// check signatures (unless told to): any SigV4-looking header will do.
const FAKE_AUTH: &str = "Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00";

/// A running `moto_server`.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    log: tempfile::NamedTempFile,
}

/// A free loopback port (bound then released: the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Moto {
    /// Start a server that accepts any credentials.
    pub fn start() -> Moto {
        Moto::start_with(&[])
    }

    /// Start a server with extra environment variables (`INITIAL_NO_AUTH_ACTION_COUNT=0`
    /// makes moto check credentials). moto binds port 0 itself and logs the port it got, so
    /// tests running at once never race for a port.
    pub fn start_with(env: &[(&str, &str)]) -> Moto {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            // Killed with the test thread that started it, should the test not unwind.
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "moto_server is not installed; the s3 tests need it: `bash scripts/test.sh` installs it (python3 -m pip install 'moto[server]')"
            ),
            Err(e) => panic!("cannot start moto_server: {e}"),
        };
        let mut moto = Moto {
            child,
            endpoint: String::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(moto.log.path()).unwrap_or_default();
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited ({status}) before answering:\n{text}");
            }
            if moto.endpoint.is_empty() {
                if let Some(port) = text
                    .split("Running on http://127.0.0.1:")
                    .nth(1)
                    .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|p| p.parse::<u16>().ok())
                {
                    moto.endpoint = format!("http://127.0.0.1:{port}");
                }
            }
            if !moto.endpoint.is_empty() && moto.answers() {
                return moto;
            }
            if Instant::now() > deadline {
                let _ = moto.child.kill();
                panic!("moto_server did not answer within 30 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn answers(&self) -> bool {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "2", &self.endpoint])
            .status()
            .is_ok_and(|s| s.success())
    }

    fn curl(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let mut child = Command::new("curl")
            .args([
                "-sS",
                "-f",
                "--path-as-is",
                "--max-time",
                "20",
                "-H",
                FAKE_AUTH,
            ])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("curl is needed by the s3 tests");
        if let Some(data) = stdin {
            child.stdin.take().unwrap().write_all(data).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "curl {args:?} failed: {}\nmoto's log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.log.path()).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Create `bucket` (a plain `PUT /bucket`).
    pub fn create_bucket(&self, bucket: &str) {
        self.curl(&["-X", "PUT", &format!("{}/{bucket}", self.endpoint)], None);
    }

    /// Put an object (`key` is used as is: no encoding, `..` kept).
    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        self.curl(
            &[
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                "@-",
                &format!("{}/{bucket}/{key}", self.endpoint),
            ],
            Some(data),
        );
    }

    /// Get an object's content.
    pub fn get(&self, bucket: &str, key: &str) -> String {
        self.curl(&[&format!("{}/{bucket}/{key}", self.endpoint)], None)
    }

    /// An object's response headers (`HEAD`), lower-cased names, one `name: value` a line.
    pub fn headers(&self, bucket: &str, key: &str) -> String {
        self.curl(&["-I", &format!("{}/{bucket}/{key}", self.endpoint)], None)
            .lines()
            .map(|l| match l.split_once(':') {
                Some((k, v)) => format!("{}: {}", k.to_ascii_lowercase(), v.trim()),
                None => l.trim().to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Delete an object.
    pub fn delete(&self, bucket: &str, key: &str) {
        self.curl(
            &["-X", "DELETE", &format!("{}/{bucket}/{key}", self.endpoint)],
            None,
        );
    }

    /// The keys of `bucket` below `prefix` (raw ListObjectsV2 XML, keys extracted).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let xml = self.curl(
            &[&format!(
                "{}/{bucket}?list-type=2&prefix={prefix}",
                self.endpoint
            )],
            None,
        );
        let mut keys: Vec<String> = xml
            .split("<Key>")
            .skip(1)
            .map(|s| s.split("</Key>").next().unwrap().to_owned())
            .collect();
        keys.sort();
        keys
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
