//! `dkt` with `docker` sources against a real registry (Debian's `docker-registry`), images
//! built here as OCI layouts and pushed with `skopeo`.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str = "`bash scripts/test.sh` installs it (apt-get install docker-registry skopeo)";
/// `tester` / `s3cret-pass`, bcrypt (made with libxcrypt's `crypt`).
const HTPASSWD: &str = "tester:$2b$04$xZjSFytewRz1fx5IA2ckhOK7KPSCJGfo3JRTSE/uLerAe5HVbzncm\n";
const CREDS: &str = "tester:s3cret-pass";

fn bin(name: &str) -> PathBuf {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .chain([Path::new("/usr/bin").join(name)])
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: these tests need it ({INSTALL})"))
}

/// A `docker-registry serve` on a free loopback port, killed on drop.
struct Registry {
    _dir: tempfile::TempDir,
    port: u16,
    child: Child,
    auth: bool,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/"))
}

impl Registry {
    fn start(auth: bool) -> Registry {
        let exe = bin("docker-registry");
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut config = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            );
            if auth {
                std::fs::write(dir.path().join("htpasswd"), HTPASSWD).unwrap();
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: dtk-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                ));
            }
            std::fs::write(dir.path().join("config.yml"), config).unwrap();
            let child = Command::new(&exe)
                .arg("serve")
                .arg(dir.path().join("config.yml"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start docker-registry: {e} ({INSTALL})"));
            let mut reg = Registry {
                _dir: dir,
                port,
                child,
                auth,
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if answers(port) {
                    return reg;
                }
                if let Ok(Some(_)) = reg.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("docker-registry did not start");
    }

    fn location(&self, repo: &str) -> String {
        format!("127.0.0.1:{}/{repo}", self.port)
    }

    /// Push the layout at `dir` (its manifest named `tag`) to `repo:tag` with skopeo.
    fn push(&self, dir: &Path, repo: &str, tag: &str) {
        let mut cmd = Command::new(bin("skopeo"));
        cmd.args(["--insecure-policy", "copy", "--quiet", "--preserve-digests"])
            .arg("--dest-tls-verify=false");
        if self.auth {
            cmd.arg(format!("--dest-creds={CREDS}"));
        }
        cmd.arg(format!("oci:{}:{tag}", dir.display()))
            .arg(format!("docker://{}:{tag}", self.location(repo)));
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "skopeo failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// sha256 of `bytes`, through `sha256sum`.
fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    let hex = String::from_utf8_lossy(&out.stdout)[..64].to_owned();
    format!("sha256:{hex}")
}

/// A one-file tar archive, written by hand (ustar).
fn tar(name: &str, content: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let mut put = |at: usize, len: usize, v: u64| {
        h[at..at + len].copy_from_slice(format!("{v:0w$o}\0", w = len - 1).as_bytes());
    };
    put(100, 8, 0o644);
    put(108, 8, 0);
    put(116, 8, 0);
    put(124, 12, content.len() as u64);
    put(136, 12, 1_700_000_000);
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..265].copy_from_slice(b"ustar\x0000");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

/// Write a one-layer image whose content depends on `seed` as an OCI layout at `dir`,
/// named `tag`; returns its manifest digest.
fn image_layout(dir: &Path, seed: &str, tag: &str) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> serde_json::Value {
        let d = sha256(bytes);
        std::fs::write(blobs.join(&d[7..]), bytes).unwrap();
        serde_json::json!({"digest": d, "size": bytes.len()})
    };
    let layer = tar("seed.txt", format!("{seed}\n").as_bytes());
    let mut l = put(&layer);
    l["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [l["digest"].clone()]},
    });
    let mut c = put(&serde_json::to_vec(&config).unwrap());
    c["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": c, "layers": [l],
    });
    let mut m = put(&serde_json::to_vec(&manifest).unwrap());
    m["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    m["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [m.clone()]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    m["digest"].as_str().unwrap().to_owned()
}

fn source<'a>(list: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no source {name} in {list}"))
}

/// Follow `team/pub:v1` of `reg` as source `pub`.
fn add_pub(e: &Env, reg: &Registry) {
    e.dkt(&[
        "source",
        "add",
        "pub",
        &reg.location("team/pub:v1"),
        "-k",
        "docker",
    ])
    .ok();
}

/// Run a node that copies the image of source `img` into the docker output `pub`
/// (which pushes it); its ID.
fn copy_img_to_pub(e: &Env) -> String {
    e.dkt(&[
        "node",
        "run",
        "--input=img",
        "--output=pub",
        "rm -rf ${pub:ROOT}/* && cp -R ${img:ROOT}/. ${pub:ROOT}/",
    ])
    .ok()
    .trim()
    .to_owned()
}

#[test]
fn docker_sources_poll_feed_nodes_and_publish() {
    let reg = Registry::start(false);
    let e = Env::project();
    let d1 = image_layout(&e.path().join("img1"), "one", "v1");
    reg.push(&e.path().join("img1"), "team/app", "v1");
    let loc = reg.location("team/app");
    e.dkt(&["source", "add", "img", &format!("{loc}:v1"), "-k", "docker"])
        .ok();
    let list = e.dkt(&["--json", "source", "list"]).json();
    let img = source(&list, "img");
    assert_eq!(img["kind"], "docker");
    assert_eq!(img["location"], loc);
    assert_eq!(img["tag"], "v1");
    assert_eq!(img["latest"], d1);
    // The kind is inferred for a location naming a registry.
    let j = e
        .dkt(&["--json", "source", "add", "inferred", &format!("{loc}:v1")])
        .json();
    assert_eq!(j["kind"], "docker");
    // A new push to the tag: update finds it, log lists both, newest first.
    let d2 = image_layout(&e.path().join("img2"), "two", "v1");
    reg.push(&e.path().join("img2"), "team/app", "v1");
    let up = e.dkt(&["source", "update", "img"]).ok();
    assert!(up.contains("updated"), "{up}");
    let log = e.dkt(&["--json", "source", "log", "img"]).json();
    let versions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, [d2.as_str(), d1.as_str()], "{log}");
    // A node reads the image's fields and its materialized layout.
    std::fs::create_dir_all(e.path().join("out")).unwrap();
    e.dkt(&["source", "add", "out", "out"]).ok();
    let id = e
        .dkt(&[
            "node",
            "run",
            "--input=img",
            "--output=out",
            "echo ${img:IMAGE} > ${out:ROOT}/image; cat ${img:ROOT}/index.json > ${out:ROOT}/index.json; ls ${img:ROOT}/blobs/sha256 | wc -l > ${out:ROOT}/blobs",
        ])
        .ok()
        .trim()
        .to_owned();
    let read = |p: &str| std::fs::read_to_string(e.path().join(p)).unwrap();
    assert_eq!(read("out/image").trim(), format!("{loc}@{d2}"));
    assert!(read("out/index.json").contains(&d2));
    assert_eq!(read("out/blobs").trim(), "3");
    // Provenance: the run records the image's digest as its input.
    let runs = e.dkt(&["--json", "node", "log", &id]).json();
    let inputs = runs[0]["inputs"].to_string();
    assert!(inputs.contains(&d2), "{runs}");
    // A node writing an OCI layout into a docker output publishes it.
    let d0 = image_layout(&e.path().join("img0"), "zero", "v1");
    reg.push(&e.path().join("img0"), "team/pub", "v1");
    add_pub(&e, &reg);
    let list = e.dkt(&["--json", "source", "list"]).json();
    assert_eq!(source(&list, "pub")["latest"], d0);
    let pub_node = copy_img_to_pub(&e);
    let run = e.dkt(&["--json", "node", "log", &pub_node]).json()[0].clone();
    let run_id = run["id"].as_str().unwrap().to_owned();
    // The image pushed carries the run's provenance as annotations, so its digest is not
    // the layout's: the version recorded is the digest of the manifest actually pushed.
    let list = e.dkt(&["--json", "source", "list"]).json();
    let pushed = source(&list, "pub")["latest"].as_str().unwrap().to_owned();
    assert_ne!(pushed, d2);
    assert_eq!(run["outputs"][0]["version"], pushed, "{run}");
    let out = Command::new(bin("skopeo"))
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}", reg.location("team/pub:v1")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sha256(&out.stdout),
        pushed,
        "the tag holds the recorded digest"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = &manifest["annotations"];
    assert_eq!(a["dev.dtk.run"], run_id, "{manifest}");
    assert_eq!(
        a["dev.dtk.node"].as_str().map(|n| n.starts_with(&pub_node)),
        Some(true),
        "{manifest}"
    );
    let m = a["dev.dtk.manifest"].as_str().unwrap_or_default();
    assert!(m.starts_with("blake3:") && m.len() == 71, "{manifest}");
    let created = a["org.opencontainers.image.created"]
        .as_str()
        .unwrap_or_default();
    assert!(created.len() == 20 && created.ends_with('Z'), "{manifest}");
    // The rest of the manifest is the layout's (same config and layers).
    let original: serde_json::Value = serde_json::from_slice(
        &std::fs::read(e.path().join("img2/blobs/sha256").join(&d2[7..])).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["layers"], original["layers"]);
    assert_eq!(manifest["config"], original["config"]);
    let log = e.dkt(&["--json", "source", "log", "pub"]).json();
    let versions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, [pushed.as_str(), d0.as_str()], "{log}");
    // The image reference (what `${pub:IMAGE}` says) finds the manifest of the run's output.
    let image = format!("{}@{pushed}", reg.location("team/pub"));
    let m = e.dkt(&["--json", "inspect", &image]).json();
    let last = m.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["source"], "pub", "{m}");
    assert!(last["run"].is_string(), "{m}");
    let up = e.dkt(&["source", "update", "pub"]).ok();
    assert!(up.contains("unchanged"), "{up}");
    // A bad location is a user error quoting it.
    let err = e
        .dkt(&[
            "source",
            "add",
            "bad",
            "127.0.0.1:1/Bad/Name",
            "-k",
            "docker",
        ])
        .fails(2);
    assert!(err.contains("127.0.0.1:1/Bad/Name"), "{err}");
    // A tag that does not exist yet is added without a version, with a note (a node may
    // publish it first), in JSON too.
    let j = e
        .dkt(&[
            "--json",
            "source",
            "add",
            "fresh",
            &format!("{loc}:nope"),
            "-k",
            "docker",
        ])
        .json();
    assert_eq!(j["tag"], "nope", "{j}");
    assert!(j["latest"].is_null(), "{j}");
    let note = j["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("\"nope\"") && note.contains("does not exist yet"),
        "{j}"
    );
    let list = e.dkt(&["--json", "source", "list"]).json();
    assert!(source(&list, "fresh")["latest"].is_null(), "{list}");
    // Polling it again is a note, not a failure.
    let up = e.dkt(&["--json", "source", "update", "fresh"]).json();
    assert!(up[0]["error"].is_null(), "{up}");
    assert!(
        up[0]["note"].as_str().unwrap_or_default().contains("nope"),
        "{up}"
    );
    let up = e.dkt(&["source", "update", "fresh"]).ok();
    assert!(up.contains("no version yet"), "{up}");
    // A node publishes it for the first time: the tag is created, its digest recorded.
    e.dkt(&[
        "node",
        "run",
        "--input=img",
        "--output=fresh",
        "rm -rf ${fresh:ROOT}/* && cp -R ${img:ROOT}/. ${fresh:ROOT}/",
    ])
    .ok();
    let list = e.dkt(&["--json", "source", "list"]).json();
    let created = source(&list, "fresh")["latest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(created.starts_with("sha256:"), "{list}");
    let up = e.dkt(&["source", "update", "fresh"]).ok();
    assert!(up.contains("unchanged"), "{up}");
    // An unreachable registry is still an error, quoting the source.
    let err = e
        .dkt(&[
            "source",
            "add",
            "gone",
            "127.0.0.1:1/team/app:v1",
            "-k",
            "docker",
        ])
        .fails(1);
    assert!(err.contains("\"gone\""), "{err}");
}

#[test]
fn docker_token_from_init() {
    let reg = Registry::start(true);
    let tmp = tempfile::tempdir().unwrap();
    let digest = image_layout(tmp.path(), "secure", "v1");
    reg.push(tmp.path(), "team/secure", "v1");
    let loc = format!("{}:v1", reg.location("team/secure"));
    // With the right credentials.
    let e = Env::new();
    e.dkt(&["init", "--docker-token", CREDS]).ok();
    e.dkt(&["source", "add", "img", &loc, "-k", "docker"]).ok();
    let list = e.dkt(&["--json", "source", "list"]).json();
    assert_eq!(source(&list, "img")["latest"], digest);
    // The password is nowhere in the metadata history.
    let history = git(e.path(), &["--git-dir", ".dkt/.git", "log", "-p", "--all"]);
    assert!(!history.contains("s3cret-pass"));
    // A wrong password: unauthorized, naming the source, never the password.
    let bad = Env::new();
    bad.dkt(&["init", "--docker-token", "tester:Wr0ngPass"])
        .ok();
    let err = bad
        .dkt(&["source", "add", "img", &loc, "-k", "docker"])
        .fails(1);
    assert!(err.contains("unauthorized"), "{err}");
    assert!(err.contains("\"img\""), "{err}");
    assert!(!err.contains("Wr0ngPass"), "{err}");
    // No token at all.
    let anon = Env::project();
    let err = anon
        .dkt(&["source", "add", "img", &loc, "-k", "docker"])
        .fails(1);
    assert!(
        err.contains("unauthorized") && err.contains("DOCKER_TOKEN"),
        "{err}"
    );
}

/// A `config.json` in a docker config directory of its own (given as `DOCKER_CONFIG`).
fn docker_config(dir: &Path, config: serde_json::Value) -> PathBuf {
    let conf = dir.join("docker-config");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("config.json"), config.to_string()).unwrap();
    conf
}

#[test]
fn docker_credentials_from_docker_config_and_helpers() {
    use std::os::unix::fs::PermissionsExt;
    let reg = Registry::start(true);
    let tmp = tempfile::tempdir().unwrap();
    let digest = image_layout(tmp.path(), "dockercfg", "v1");
    reg.push(tmp.path(), "team/cfg", "v1");
    let loc = format!("{}:v1", reg.location("team/cfg"));
    let host = format!("127.0.0.1:{}", reg.port);
    let add = |e: &Env, conf: &Path, path: Option<&Path>| {
        let mut cmd = e.cmd();
        cmd.env("DOCKER_CONFIG", conf)
            .args(["--json", "source", "add", "img", &loc, "-k", "docker"]);
        if let Some(p) = path {
            let old = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{old}", p.display()));
        }
        Run {
            out: cmd.output().unwrap(),
        }
    };

    // `docker login` writes `auths` with base64 USER:PASSWORD; no DOCKER_TOKEN secret.
    let e = Env::project();
    let auth = base64(CREDS.as_bytes());
    let conf = docker_config(
        tmp.path(),
        serde_json::json!({ "auths": { &host: { "auth": auth } } }),
    );
    add(&e, &conf, None).ok();
    let list = e.dkt(&["--json", "source", "list"]).json();
    assert_eq!(source(&list, "img")["latest"], digest);
    let history = git(e.path(), &["--git-dir", ".dkt/.git", "log", "-p", "--all"]);
    assert!(!history.contains("s3cret-pass"));

    // A credential helper named for the registry (`credHelpers`), found on PATH.
    let bin_dir = tmp.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let helper = bin_dir.join("docker-credential-dtktest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" > {}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"tester\",\"Secret\":\"s3cret-pass\"}}' \"$server\"\n",
            tmp.path().join("asked").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let helped = tmp.path().join("helped");
    std::fs::create_dir_all(&helped).unwrap();
    let conf = docker_config(
        &helped,
        serde_json::json!({ "credHelpers": { &host: "dtktest" } }),
    );
    let e = Env::project();
    add(&e, &conf, Some(&bin_dir)).ok();
    let asked = std::fs::read_to_string(tmp.path().join("asked")).unwrap();
    assert_eq!(asked.trim(), host);
    let list = e.dkt(&["--json", "source", "list"]).json();
    assert_eq!(source(&list, "img")["latest"], digest);

    // A wrong password in config.json: refused, never printed.
    let wrong = tmp.path().join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    let bad = base64(b"tester:Wr0ngPass");
    let conf = docker_config(
        &wrong,
        serde_json::json!({ "auths": { &host: { "auth": bad } } }),
    );
    let e = Env::project();
    let err = add(&e, &conf, None).fails(1);
    assert!(err.contains("unauthorized"), "{err}");
    assert!(!err.contains("Wr0ngPass"), "{err}");
}

/// Standard base64 with padding (what `docker login` writes).
fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `GET path` of the registry on loopback port `port` (plain HTTP/1.0, no credentials):
/// the status and the body.
fn http_get(port: u16, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: application/vnd.oci.image.index.v1+json\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, raw[end + 4..].to_vec())
}

/// `skopeo inspect --raw` of `reference` (on the test registry).
fn raw_manifest(reference: &str) -> Vec<u8> {
    let out = Command::new(bin("skopeo"))
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Check an in-toto statement with the reference consumer (as `dkt inspect --format slsa`
/// output is checked in `inspect.rs`).
fn check_slsa(e: &Env, statement: &[u8], deps: usize) -> String {
    let f = e.write("statement.json", std::str::from_utf8(statement).unwrap());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/check_provenance.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["slsa", f.to_str().unwrap(), &deps.to_string()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "consumer rejected the statement (pip install in-toto-attestation):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn published_images_carry_their_statement_as_a_referrer() {
    let reg = Registry::start(false);
    let e = Env::project();
    image_layout(&e.path().join("img1"), "one", "v1");
    reg.push(&e.path().join("img1"), "team/app", "v1");
    e.dkt(&[
        "source",
        "add",
        "img",
        &reg.location("team/app:v1"),
        "-k",
        "docker",
    ])
    .ok();
    let d0 = image_layout(&e.path().join("img0"), "zero", "v1");
    reg.push(&e.path().join("img0"), "team/pub", "v1");
    add_pub(&e, &reg);
    let node = copy_img_to_pub(&e);
    let run = e.dkt(&["--json", "node", "log", &node]).json()[0].clone();
    let run_id = run["id"].as_str().unwrap().to_owned();
    let pushed = run["outputs"][0]["version"].as_str().unwrap().to_owned();
    assert!(pushed.starts_with("sha256:") && pushed != d0, "{run}");
    // Debian's docker-registry 2.8 has no referrers API: the referrer is listed under the
    // fallback tag of the distribution spec, `sha256-HEX` of the image's digest.
    let (status, _) = http_get(reg.port, &format!("/v2/team/pub/referrers/{pushed}"));
    assert_eq!(status, 404, "this registry offers the referrers API now");
    let tag = format!("sha256-{}", &pushed[7..]);
    let index: serde_json::Value =
        serde_json::from_slice(&raw_manifest(&reg.location(&format!("team/pub:{tag}")))).unwrap();
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{index}");
    assert_eq!(listed[0]["artifactType"], "application/vnd.in-toto+json");
    let referrer = listed[0]["digest"].as_str().unwrap().to_owned();
    // The referrer: an artifact manifest whose subject is the image.
    let bytes = raw_manifest(&format!("{}@{referrer}", reg.location("team/pub")));
    assert_eq!(sha256(&bytes), referrer);
    assert_eq!(listed[0]["size"], bytes.len());
    let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(m["artifactType"], "application/vnd.in-toto+json", "{m}");
    assert_eq!(m["subject"]["digest"], pushed, "{m}");
    let image = raw_manifest(&format!("{}@{pushed}", reg.location("team/pub")));
    assert_eq!(m["subject"]["size"], image.len(), "{m}");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    assert_eq!(m["config"]["digest"], sha256(b"{}"));
    let layer = &m["layers"][0];
    assert_eq!(layer["mediaType"], "application/vnd.in-toto+json", "{m}");
    // Its one layer is the statement `dkt inspect --format slsa` prints for the version,
    // and it loads in the reference consumer.
    let (status, statement) = http_get(
        reg.port,
        &format!("/v2/team/pub/blobs/{}", layer["digest"].as_str().unwrap()),
    );
    assert_eq!(status, 200);
    assert_eq!(sha256(&statement), layer["digest"].as_str().unwrap());
    let said: serde_json::Value = serde_json::from_slice(&statement).unwrap();
    let slsa = e
        .dkt(&["inspect", "--format", "slsa", &format!("pub:{pushed}")])
        .json();
    assert_eq!(said, slsa);
    assert_eq!(said["subject"][0]["digest"]["sha256"], &pushed[7..]);
    assert_eq!(
        said["predicate"]["runDetails"]["metadata"]["invocationId"],
        run_id
    );
    let ok = check_slsa(&e, &statement, 1);
    assert!(ok.contains("1 dependencies"), "{ok}");
    // A copy of the image in a repository no source follows: its annotations name the run,
    // so `dkt inspect` finds the version the run published.
    let out = Command::new(bin("skopeo"))
        .args(["--insecure-policy", "copy", "--quiet", "--preserve-digests"])
        .args(["--src-tls-verify=false", "--dest-tls-verify=false"])
        .arg(format!("docker://{}@{pushed}", reg.location("team/pub")))
        .arg(format!("docker://{}:copy", reg.location("team/mirror")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copy = format!("{}@{pushed}", reg.location("team/mirror"));
    let m = e.dkt(&["--json", "inspect", &copy]).json();
    let last = m.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["source"], "pub", "{m}");
    assert_eq!(last["digest"], pushed, "{m}");
    // A project without the run's records says which run the image names.
    let fresh = Env::project();
    let err = fresh.dkt(&["inspect", &copy]).fails(2);
    assert!(
        err.contains(&run_id) && err.contains("annotations"),
        "{err}"
    );
    // An image without provenance is simply not found.
    let plain = format!("{}@{d0}", reg.location("team/pub"));
    let err = fresh.dkt(&["inspect", &plain]).fails(2);
    assert!(
        err.contains("no source of the project recorded it"),
        "{err}"
    );
}
