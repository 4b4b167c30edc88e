//! The `docker` kind against a real registry (CNCF distribution, Debian's
//! `docker-registry`), with images built here as OCI layouts and pushed with `skopeo`.
#![cfg(feature = "docker")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dtk_api::conformance::{check_all, Fixture};
use dtk_api::source::{Progress, Transfer};
use dtk_api::{
    Context, Error, Kind, Name, NewSource, Secrets, Source, SourceSpec, Verification, Version,
};
use dtk_sources::docker::DockerKind;
use sha2::Digest as _;

// ---------------------------------------------------------------------------------------
// A real registry

const INSTALL: &str = "`bash scripts/test.sh` installs it (apt-get install docker-registry skopeo)";

/// `tester` / `s3cret-pass`, bcrypt (made with libxcrypt's `crypt`).
const HTPASSWD: &str = "tester:$2b$04$xZjSFytewRz1fx5IA2ckhOK7KPSCJGfo3JRTSE/uLerAe5HVbzncm\n";
const USER: &str = "tester";
const PASSWORD: &str = "s3cret-pass";

fn find_bin(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    let p = Path::new("/usr/bin").join(name);
    if p.is_file() {
        return p;
    }
    panic!("{name} is not installed: the docker kind's tests need it ({INSTALL})");
}

/// A free port on `ip` (bound then released).
fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How a test registry authenticates.
enum Auth {
    /// Anonymous access to everything.
    None,
    /// Basic, `USER`/`PASSWORD` in an htpasswd file.
    Htpasswd,
    /// Bearer tokens from a [`TokenServer`] (`auth: token`).
    Token,
}

/// A `docker-registry serve` on a free loopback port with its storage in a temp dir;
/// killed on drop (with its token server, if any).
struct Registry {
    dir: tempfile::TempDir,
    ip: &'static str,
    port: u16,
    child: Child,
    /// Pushes need `USER`/`PASSWORD`.
    auth: bool,
    /// The realm of an `auth: token` registry.
    tokens: Option<TokenServer>,
}

impl Registry {
    fn start() -> Registry {
        Registry::start_with(Auth::None, "127.0.0.1")
    }

    fn start_htpasswd() -> Registry {
        Registry::start_with(Auth::Htpasswd, "127.0.0.1")
    }

    /// A registry with `auth: token` and its token server, both on 127.0.0.1.
    fn start_token() -> Registry {
        Registry::start_with(Auth::Token, "127.0.0.1")
    }

    fn start_with(auth: Auth, ip: &'static str) -> Registry {
        let bin = find_bin("docker-registry");
        let mut tokens = match auth {
            Auth::Token => Some(TokenServer::start()),
            _ => None,
        };
        let mut dir = tempfile::tempdir().unwrap();
        let mut last = String::new();
        for _attempt in 0..5 {
            let port = free_port(ip);
            let mut config = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {ip}:{port}\n",
                dir.path().join("data").display()
            );
            match (&auth, &tokens) {
                (Auth::Htpasswd, _) => {
                    let h = dir.path().join("htpasswd");
                    std::fs::write(&h, HTPASSWD).unwrap();
                    config.push_str(&format!(
                        "auth:\n  htpasswd:\n    realm: dtk-test\n    path: {}\n",
                        h.display()
                    ));
                }
                (Auth::Token, Some(t)) => config.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    \
                     issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    t.realm(),
                    t.cert().display()
                )),
                _ => {}
            }
            let cfg = dir.path().join("config.yml");
            std::fs::write(&cfg, config).unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let child = Command::new(&bin)
                .arg("serve")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e} ({INSTALL})", bin.display()));
            let mut reg = Registry {
                dir,
                ip,
                port,
                child,
                auth: !matches!(auth, Auth::None),
                tokens: None,
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Some(status) = http_status(ip, port, "/v2/") {
                    assert!(status == 200 || status == 401, "registry answered {status}");
                    reg.tokens = tokens.take();
                    return reg;
                }
                if let Ok(Some(_)) = reg.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // The port may have been taken in between: try another.
            last = std::fs::read_to_string(reg.dir.path().join("registry.log")).unwrap_or_default();
            dir = tempfile::tempdir().unwrap();
            drop(reg);
        }
        panic!("docker-registry did not start: {last}");
    }

    fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    fn location(&self, repo: &str) -> String {
        format!("{}/{repo}", self.host())
    }

    /// Push the layout at `dir` (its manifest named `tag`) to `repo:tag` with skopeo.
    fn push(&self, dir: &Path, tag: &str, repo: &str) {
        let mut cmd = Command::new(find_bin("skopeo"));
        cmd.args(["--insecure-policy", "copy", "--quiet", "--preserve-digests"])
            .args(["--all", "--dest-tls-verify=false"]);
        if self.auth {
            cmd.arg(format!("--dest-creds={USER}:{PASSWORD}"));
        }
        cmd.arg(format!("oci:{}:{tag}", dir.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.host()));
        run(cmd);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[track_caller]
fn run(mut cmd: Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} ({INSTALL})"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status of `GET path` on the loopback port, if something answers HTTP.
fn http_status(ip: &str, port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect((ip, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    head.split_whitespace().nth(1)?.parse().ok()
}

/// `GET path` on the loopback port over HTTP/1.0: the status, the headers (names in lower
/// case) and the body.
fn http_get(ip: &str, port: u16, path: &str) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect((ip, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {all:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

// ---------------------------------------------------------------------------------------
// A real token server (`tests/py/token_server.py`) for registries with `auth: token`

/// The registry's `auth.token.service`: the audience of its tokens.
const TOKEN_SERVICE: &str = "dtk-test-registry";
/// The registry's `auth.token.issuer`.
const TOKEN_ISSUER: &str = "dtk-test-token-issuer";

/// The token service of `tests/py/token_server.py` (its docstring says what it grants),
/// on a free port of 127.0.0.1, granting `USER`/`PASSWORD` everything they ask for and
/// anonymous requests `pull`; killed on drop.
struct TokenServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// One line of the token server's log.
#[derive(Debug, Clone, serde::Deserialize)]
struct TokenRequest {
    method: String,
    path: String,
    #[serde(default)]
    service: String,
    #[serde(default)]
    scopes: Vec<String>,
    /// `anonymous`, `valid` or `invalid` Basic credentials.
    #[serde(default)]
    auth: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    granted: Vec<String>,
    status: u16,
}

impl TokenServer {
    fn start() -> TokenServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/token_server.py");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ctl")).unwrap();
        let mut child = Command::new("python3")
            .arg(&script)
            .arg("--cert")
            .arg(dir.path().join("cert.pem"))
            .arg("--log")
            .arg(dir.path().join("requests.log"))
            .arg("--ctl")
            .arg(dir.path().join("ctl"))
            .args(["--issuer", TOKEN_ISSUER, "--service", TOKEN_SERVICE])
            .args(["--user", USER, "--password", PASSWORD])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 {}: {e}", script.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Ok(port) = line.trim().parse() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the token server printed {line:?} (it needs python3 with the `cryptography` \
                 package: python3 -m pip install cryptography)"
            );
        };
        TokenServer { child, port, dir }
    }

    /// `http://127.0.0.1:PORT/token`.
    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The certificate of the key signing the tokens (the registry's rootcertbundle).
    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// The raw request log.
    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("requests.log")).unwrap_or_default()
    }

    /// Every request so far.
    fn log(&self) -> Vec<TokenRequest> {
        self.log_text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Turn switch `name` on (see the script's docstring).
    fn set(&self, name: &str, value: &str) {
        std::fs::write(self.dir.path().join("ctl").join(name), value).unwrap();
    }

    /// Turn switch `name` off.
    fn clear(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.path().join("ctl").join(name));
    }

    /// A token for `scope`, asked for anonymously (as `curl` would).
    fn anonymous_token(&self, scope: &str) -> String {
        let (status, _, body) = http_get(
            "127.0.0.1",
            self.port,
            &format!("/token?service={TOKEN_SERVICE}&scope={scope}"),
        );
        assert_eq!(status, 200, "{body}");
        let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
        reply["token"].as_str().unwrap().to_owned()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Images, built by hand as OCI layouts

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

fn sha256(bytes: &[u8]) -> String {
    let d = sha2::Sha256::digest(bytes);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// A tar archive of `files`, written by hand (ustar).
fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, content) in files {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = len - 1);
            h[at..at + len].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, 0o644);
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, content.len() as u64);
        octal(&mut h, 136, 12, 1_700_000_000);
        h[148..156].copy_from_slice(b"        ");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": sha256(bytes), "size": bytes.len()})
}

/// An image: its top manifest (or index) and every blob it needs, by digest.
#[derive(Clone)]
struct Image {
    media_type: &'static str,
    manifest: Vec<u8>,
    blobs: BTreeMap<String, Vec<u8>>,
}

impl Image {
    fn digest(&self) -> String {
        sha256(&self.manifest)
    }

    fn version(&self) -> Version {
        self.digest().parse().unwrap()
    }

    /// A single-platform image whose content depends on `seed`, with two layers.
    fn single(seed: &str, arch: &str) -> Image {
        let l1 = tar(&[("hello.txt", format!("hello {seed}\n").as_bytes())]);
        let l2 = tar(&[
            ("data/a.bin", &vec![seed.len() as u8; 3000]),
            ("data/seed", seed.as_bytes()),
        ]);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Env": [format!("SEED={seed}")]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&l1), sha256(&l2)]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": [descriptor(OCI_LAYER, &l1), descriptor(OCI_LAYER, &l2)],
        }))
        .unwrap();
        let blobs = [config, l1, l2]
            .into_iter()
            .map(|b| (sha256(&b), b))
            .collect();
        Image {
            media_type: OCI_MANIFEST,
            manifest,
            blobs,
        }
    }

    /// A multi-arch index of amd64 and arm64 images.
    fn multi(seed: &str) -> Image {
        let a = Image::single(&format!("{seed}-amd64"), "amd64");
        let b = Image::single(&format!("{seed}-arm64"), "arm64");
        let entry = |i: &Image, arch: &str| {
            let mut d = descriptor(OCI_MANIFEST, &i.manifest);
            d["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
            d
        };
        let manifest = serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [entry(&a, "amd64"), entry(&b, "arm64")],
        }))
        .unwrap();
        let mut blobs = BTreeMap::new();
        for i in [a, b] {
            blobs.insert(i.digest(), i.manifest.clone());
            blobs.extend(i.blobs);
        }
        Image {
            media_type: OCI_INDEX,
            manifest,
            blobs,
        }
    }

    /// Write the image as an OCI layout at `dir`, named `tag`.
    fn write_layout(&self, dir: &Path, tag: &str) -> PathBuf {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        for (d, b) in self.blobs.iter().chain([(&self.digest(), &self.manifest)]) {
            std::fs::write(blobs.join(&d[7..]), b).unwrap();
        }
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let mut top = descriptor(self.media_type, &self.manifest);
        top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [top]});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        dir.to_owned()
    }
}

// ---------------------------------------------------------------------------------------
// Contexts and sources

struct Env {
    tmp: tempfile::TempDir,
    ctx: Context,
}

fn env() -> Env {
    env_with(None)
}

fn env_with(token: Option<&str>) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let mut secrets = Secrets::default();
    if let Some(t) = token {
        secrets
            .set(&root.join("secrets"), dtk_api::secrets::DOCKER_TOKEN, t)
            .unwrap();
    }
    let mut ctx = Context::new(&root.join("dkt"), secrets);
    ctx.network_timeout = Duration::from_secs(5);
    ctx.cwd = root;
    Env { tmp, ctx }
}

impl Env {
    fn dir(&self, name: &str) -> PathBuf {
        let d = self.tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

fn new_source(location: &str, tag: Option<&str>) -> NewSource {
    NewSource {
        name: Name::new("src").unwrap(),
        kind: "docker".to_owned(),
        location: Some(location.to_owned()),
        tag: tag.map(str::to_owned),
        path: None,
    }
}

async fn resolve(ctx: &Context, location: &str, tag: Option<&str>) -> dtk_api::Result<SourceSpec> {
    DockerKind::default()
        .resolve(ctx, new_source(location, tag))
        .await
}

async fn open(ctx: &Context, location: &str, tag: Option<&str>) -> Arc<dyn Source> {
    let spec = resolve(ctx, location, tag).await.expect("resolve");
    DockerKind::default().open(ctx, &spec).expect("open")
}

/// A registry with `team/app:latest` = image "one" and `team/app:v1` = image "v1".
fn seeded(env: &Env) -> (Registry, Image, Image) {
    let reg = Registry::start();
    let one = Image::single("one", "amd64");
    let v1 = Image::single("v1", "amd64");
    reg.push(
        &one.write_layout(&env.dir("l-one"), "latest"),
        "latest",
        "team/app",
    );
    reg.push(&v1.write_layout(&env.dir("l-v1"), "v1"), "v1", "team/app");
    (reg, one, v1)
}

/// Every blob of the layout at `dir` hashes to its name; returns the digests.
fn check_layout(dir: &Path) -> Vec<String> {
    assert!(dir.join("oci-layout").is_file());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(e.path()).unwrap();
        assert_eq!(sha256(&bytes), format!("sha256:{name}"), "blob {name}");
        out.push(format!("sha256:{name}"));
    }
    out.sort();
    out
}

fn expected_blobs(img: &Image) -> Vec<String> {
    let mut v: Vec<String> = img.blobs.keys().cloned().collect();
    v.push(img.digest());
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// Resolve

#[tokio::test]
async fn resolve_forms_and_default_tag() {
    let env = env();
    let (reg, _, _) = seeded(&env);
    let loc = reg.location("team/app");
    let spec = resolve(&env.ctx, &loc, None).await.unwrap();
    assert_eq!(spec.kind, "docker");
    assert_eq!(spec.location, loc);
    assert_eq!(spec.tag.as_deref(), Some("latest"));
    let spec = resolve(&env.ctx, &format!("{loc}:v1"), None).await.unwrap();
    assert_eq!(
        (spec.location.as_str(), spec.tag.as_deref()),
        (loc.as_str(), Some("v1"))
    );
    let spec = resolve(&env.ctx, &loc, Some("v1")).await.unwrap();
    assert_eq!(spec.tag.as_deref(), Some("v1"));
    let spec = resolve(&env.ctx, &format!("docker://{loc}:v1"), Some("v1"))
        .await
        .unwrap();
    assert_eq!(spec.location, loc);
    // Conflicting tags.
    let e = resolve(&env.ctx, &format!("{loc}:v1"), Some("v2"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
}

#[tokio::test]
async fn resolve_rejects_bad_locations_quoting_them() {
    let env = env();
    for bad in [
        "127.0.0.1:5000/Team/App",
        "https://127.0.0.1:5000/team/app",
        "127.0.0.1:5000/team/app@sha256:0000",
        "",
    ] {
        let e = resolve(&env.ctx, bad, None).await.unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{bad}: {e}");
        assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
    }
    let e = resolve(&env.ctx, "127.0.0.1:5000/team/app:-bad", None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("\"-bad\""), "{e}");
    let e = resolve(&env.ctx, "127.0.0.1:5000/team/app", Some("bad tag"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    let mut with_path = new_source("127.0.0.1:5000/team/app", None);
    with_path.path = Some("sub".into());
    let e = DockerKind::default()
        .resolve(&env.ctx, with_path)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotSupported { .. }), "{e}");
}

#[tokio::test]
async fn resolve_missing_tag_or_repository() {
    // A tag (or repository) that does not exist yet resolves (a node may publish it
    // first); `latest` then says it is not there, quoting it.
    let env = env();
    let (reg, _, _) = seeded(&env);
    let spec = resolve(&env.ctx, &reg.location("team/app:nope"), None)
        .await
        .unwrap();
    assert_eq!(spec.tag.as_deref(), Some("nope"));
    let src = DockerKind::default().open(&env.ctx, &spec).unwrap();
    let e = src.latest().await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("\"nope\""), "{e}");
    assert!(e.to_string().contains(&reg.location("team/app")), "{e}");
    let spec = resolve(&env.ctx, &reg.location("team/none"), None)
        .await
        .unwrap();
    let src = DockerKind::default().open(&env.ctx, &spec).unwrap();
    let e = src.latest().await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("team/none"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Polling, fields

#[tokio::test]
async fn latest_is_the_manifest_digest_and_follows_pushes() {
    let env = env();
    let (reg, one, v1) = seeded(&env);
    let src = open(&env.ctx, &reg.location("team/app"), None).await;
    let a = src.latest().await.unwrap();
    assert_eq!(a.version, one.version());
    assert_eq!(src.latest().await.unwrap().version, a.version);
    let tagged = open(&env.ctx, &reg.location("team/app:v1"), None).await;
    assert_eq!(tagged.latest().await.unwrap().version, v1.version());
    // A new push to the tag: a new digest.
    let two = Image::single("two", "amd64");
    reg.push(
        &two.write_layout(&env.dir("l-two"), "latest"),
        "latest",
        "team/app",
    );
    let b = src.latest().await.unwrap();
    assert_eq!(b.version, two.version());
    assert_ne!(a.version, b.version);
    // No remote history: dtk lists what it recorded.
    assert!(!src.capabilities().history);
    assert!(matches!(
        src.versions().await.unwrap_err(),
        Error::NotSupported { .. }
    ));
}

#[tokio::test]
async fn multi_arch_index_digest_is_the_version() {
    let env = env();
    let reg = Registry::start();
    let multi = Image::multi("m");
    reg.push(
        &multi.write_layout(&env.dir("l-multi"), "multi"),
        "multi",
        "team/multi",
    );
    let src = open(&env.ctx, &reg.location("team/multi:multi"), None).await;
    let v = src.latest().await.unwrap().version;
    assert_eq!(v, multi.version());
    // Materialize writes the index, both manifests and all their blobs.
    let out = env.dir("m-out");
    let root = src.materialize(&v, &out).await.unwrap();
    assert_eq!(check_layout(&root), expected_blobs(&multi));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], multi.digest());
    assert_eq!(index["manifests"][0]["mediaType"], OCI_INDEX);
    // And it publishes back under another tag with the same digest.
    let other = open(&env.ctx, &reg.location("team/multi:multi"), None).await;
    let spec = SourceSpec {
        tag: Some("copy".into()),
        ..other.spec().clone()
    };
    let copy = DockerKind::default().open(&env.ctx, &spec).unwrap();
    assert_eq!(copy.publish(&root).await.unwrap().version, multi.version());
    assert_eq!(copy.latest().await.unwrap().version, multi.version());
}

#[tokio::test]
async fn fields_name_the_image() {
    let env = env();
    let (reg, one, _) = seeded(&env);
    let src = open(&env.ctx, &reg.location("team/app"), None).await;
    let f = src
        .fields(Some(&one.version()), Path::new("/some/root"))
        .unwrap();
    assert_eq!(f["ROOT"], "/some/root");
    assert_eq!(
        f["IMAGE"],
        format!("{}@{}", reg.location("team/app"), one.digest())
    );
    assert_eq!(f["DIGEST"], one.digest());
    assert_eq!(f["TAG"], "latest");
    assert_eq!(f["REGISTRY"], reg.host());
    let f = src.fields(None, Path::new("/out")).unwrap();
    assert_eq!(f["IMAGE"], format!("{}:latest", reg.location("team/app")));
    assert_eq!(f["DIGEST"], "");
    // Docker Hub names: no registry in IMAGE.
    let hub = DockerKind::default()
        .open(
            &env.ctx,
            &SourceSpec {
                tag: Some("22.04".into()),
                ..SourceSpec::new(
                    Name::new("hub").unwrap(),
                    "docker",
                    "docker.io/library/ubuntu",
                )
            },
        )
        .unwrap();
    let f = hub.fields(Some(&one.version()), Path::new("/r")).unwrap();
    assert_eq!(f["IMAGE"], format!("library/ubuntu@{}", one.digest()));
    assert_eq!(f["REGISTRY"], "docker.io");
    // A version of another algorithm is refused.
    let md5: Version = "md5:00000000000000000000000000000000".parse().unwrap();
    assert!(matches!(
        src.fields(Some(&md5), Path::new("/r")).unwrap_err(),
        Error::Invalid { .. }
    ));
}

// ---------------------------------------------------------------------------------------
// Materialize, publish, verify

#[tokio::test]
async fn materialize_writes_a_layout_skopeo_accepts() {
    let env = env();
    let (reg, one, _) = seeded(&env);
    let src = open(&env.ctx, &reg.location("team/app"), None).await;
    let scratch = env.dir("scratch");
    let root = src.materialize(&one.version(), &scratch).await.unwrap();
    assert_eq!(root, scratch);
    assert_eq!(check_layout(&root), expected_blobs(&one));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    // No leftovers.
    for e in std::fs::read_dir(root.join("blobs/sha256")).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert_eq!(n.len(), 64, "{n}");
    }
    // skopeo reads it and pushes it elsewhere, unchanged.
    reg.push(&root, "latest", "team/other");
    let other = open(&env.ctx, &reg.location("team/other"), None).await;
    assert_eq!(other.latest().await.unwrap().version, one.version());
}

#[tokio::test]
async fn materialize_unknown_version_is_not_found() {
    let env = env();
    let (reg, _, _) = seeded(&env);
    let src = open(&env.ctx, &reg.location("team/app"), None).await;
    let bogus: Version = format!("sha256:{}", "5a".repeat(32)).parse().unwrap();
    let scratch = env.dir("scratch");
    let e = src.materialize(&bogus, &scratch).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert!(e.to_string().contains(&bogus.to_string()), "{e}");
    assert!(!scratch.join("index.json").exists());
}

#[tokio::test]
async fn publish_round_trip() {
    let env = env();
    let (reg, one, _) = seeded(&env);
    let src = open(&env.ctx, &reg.location("team/app"), None).await;
    let new = Image::single("published", "amd64");
    let dir = new.write_layout(&env.dir("pub"), "whatever");
    let v = src.publish(&dir).await.unwrap().version;
    assert_eq!(v, new.version());
    assert_eq!(src.latest().await.unwrap().version, v);
    let back = src.materialize(&v, &env.dir("back")).await.unwrap();
    assert_eq!(check_layout(&back), expected_blobs(&new));
    // Publishing again (every blob already there) gives the same version.
    assert_eq!(src.publish(&dir).await.unwrap().version, v);
    // The old version is still there by digest.
    assert_eq!(
        src.verify(&one.version()).await.unwrap(),
        Verification::Verified
    );
}

#[tokio::test]
async fn publish_picks_the_manifest_named_after_the_tag() {
    let env = env();
    let (reg, one, _) = seeded(&env);
    let src = open(&env.ctx, &reg.location("team/app"), None).await;
    let a = Image::single("a", "amd64");
    let b = Image::single("b", "amd64");
    let dir = env.dir("two");
    a.write_layout(&dir, "latest");
    let index_a: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    b.write_layout(&dir, "other");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let first = index_a["manifests"][0].clone();
    index["manifests"].as_array_mut().unwrap().push(first);
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    assert_eq!(src.publish(&dir).await.unwrap().version, a.version());
    // Two manifests and none named after the tag: refused, nothing pushed.
    let tagged = open(&env.ctx, &reg.location("team/app:v1"), None).await;
    let before = tagged.latest().await.unwrap().version;
    let e = tagged.publish(&dir).await.unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("index.json"), "{e}");
    assert_eq!(tagged.latest().await.unwrap().version, before);
    let _ = one;
}

#[tokio::test]
async fn publish_refuses_what_is_not_a_layout() {
    let env = env();
    let (reg, one, _) = seeded(&env);
    let src = open(&env.ctx, &reg.location("team/app"), None).await;
    let empty = env.dir("empty");
    let e = src.publish(&empty).await.unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    assert!(e.to_string().contains(&empty.display().to_string()), "{e}");
    // Garbage index.json.
    let bad = env.dir("bad");
    std::fs::write(bad.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(bad.join("index.json"), "<html>").unwrap();
    let e = src.publish(&bad).await.unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    // A layer whose bytes do not match its digest: refused before the tag moves.
    let img = Image::single("corrupt", "amd64");
    let dir = img.write_layout(&env.dir("corrupt"), "latest");
    let layer = img
        .blobs
        .iter()
        .find(|(_, b)| b.len() > 3000)
        .map(|(d, _)| d.clone())
        .unwrap();
    let p = dir.join("blobs/sha256").join(&layer[7..]);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[600] ^= 0xff;
    std::fs::write(&p, bytes).unwrap();
    let e = src.publish(&dir).await.unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    eprintln!("{e}");
    assert!(e.to_string().contains(&layer), "{e}");
    // A missing blob.
    let img = Image::single("missing", "amd64");
    let dir = img.write_layout(&env.dir("missing"), "latest");
    let (d, _) = img.blobs.iter().next().unwrap();
    std::fs::remove_file(dir.join("blobs/sha256").join(&d[7..])).unwrap();
    let e = src.publish(&dir).await.unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    assert_eq!(src.latest().await.unwrap().version, one.version());
}

#[tokio::test]
async fn verify_rehashes_the_manifest() {
    let env = env();
    let (reg, one, _) = seeded(&env);
    let src = open(&env.ctx, &reg.location("team/app"), None).await;
    assert_eq!(
        src.verify(&one.version()).await.unwrap(),
        Verification::Verified
    );
    let gone: Version = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
    assert!(matches!(
        src.verify(&gone).await.unwrap(),
        Verification::Unavailable(_)
    ));
}

#[tokio::test]
async fn conformance() {
    let env = env();
    let (reg, _, _) = seeded(&env);
    let src = open(&env.ctx, &reg.location("team/app"), None).await;
    let publish = Image::single("conformance", "amd64").write_layout(&env.dir("pub"), "latest");
    // Materializing writes its own index.json, naming the source's tag.
    let fixture = Fixture::new(env.dir("fixture"))
        .with_publish_dir(publish)
        .with_rewritten(["index.json"]);
    check_all(&*src, &fixture).await.unwrap();
}

/// Counts the bytes reported through `Context::progress`.
#[derive(Debug, Default)]
struct Counting(Arc<Mutex<(usize, u64)>>);

impl Progress for Counting {
    fn start(&self, _what: &str, _total: Option<u64>) -> Box<dyn Transfer> {
        struct T(Arc<Mutex<(usize, u64)>>);
        impl Transfer for T {
            fn advance(&mut self, bytes: u64) {
                self.0.lock().unwrap().1 += bytes;
            }
        }
        self.0.lock().unwrap().0 += 1;
        Box::new(T(self.0.clone()))
    }
}

#[tokio::test]
async fn transfers_report_progress() {
    let mut env = env();
    let (reg, one, _) = seeded(&env);
    let counter = Counting::default();
    let seen = counter.0.clone();
    env.ctx.progress = Arc::new(counter);
    let src = open(&env.ctx, &reg.location("team/app"), None).await;
    src.materialize(&one.version(), &env.dir("m"))
        .await
        .unwrap();
    let blob_bytes: usize = one.blobs.values().map(Vec::len).sum();
    assert_eq!(*seen.lock().unwrap(), (3, blob_bytes as u64));
    let other = Image::single("progress", "amd64");
    src.publish(&other.write_layout(&env.dir("p"), "latest"))
        .await
        .unwrap();
    let pushed: usize = other.blobs.values().map(Vec::len).sum();
    let (n, bytes) = *seen.lock().unwrap();
    assert_eq!(n, 6);
    assert_eq!(bytes, (blob_bytes + pushed) as u64);
}

// ---------------------------------------------------------------------------------------
// Failures

#[tokio::test]
async fn unreachable_registry_fails_quickly() {
    let env = env();
    let port = free_port("127.0.0.1");
    let e = resolve(&env.ctx, &format!("127.0.0.1:{port}/team/app"), None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Backend { .. }), "{e}");
    eprintln!("{e}");
    assert!(e.to_string().contains("cannot connect"), "{e}");
    // An opened source too.
    let spec = SourceSpec {
        tag: Some("v1".into()),
        ..SourceSpec::new(
            Name::new("src").unwrap(),
            "docker",
            format!("127.0.0.1:{port}/a"),
        )
    };
    let src = DockerKind::default().open(&env.ctx, &spec).unwrap();
    assert!(matches!(
        src.latest().await.unwrap_err(),
        Error::Backend { .. }
    ));
}

/// A loopback server answering every connection with `reply` (then closing).
fn junk_server(reply: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = s.read(&mut buf);
            let _ = s.write_all(reply);
        }
    });
    port
}

#[tokio::test]
async fn garbage_answers_fail_cleanly() {
    let env = env();
    for reply in [
        &b"\x00\x01garbage that is not HTTP\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 14\r\n\r\n<html>hi</html",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"schemaVersion\":2,",
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops!",
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"not a url\"\r\nContent-Length: 0\r\n\r\n",
    ] {
        let port = junk_server(reply);
        let e = resolve(&env.ctx, &format!("127.0.0.1:{port}/team/app"), None)
            .await
            .unwrap_err();
        eprintln!("{e}");
        assert!(matches!(e, Error::Backend { .. }), "{e}");
        assert!(e.to_string().contains("docker source \"src\""), "{e}");
    }
}

/// A loopback server that reads each request and hands the connection and the request's
/// number (from 0) to `answer`.
fn scripted_server(
    answer: impl Fn(usize, &mut std::net::TcpStream) + Send + Sync + 'static,
) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for (n, s) in l.incoming().enumerate() {
            let Ok(mut s) = s else { return };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let _ = s.read(&mut buf);
                answer(n, &mut s);
            });
        }
    });
    port
}

#[tokio::test]
async fn a_busy_registry_is_waited_out_and_a_trickle_aborts() {
    let mut env = env();
    env.ctx.network_timeout = Duration::from_secs(1);
    // 503 with Retry-After: 1, always; a request that comes back sooner than told is
    // answered 400 instead, so the error shows whether the waits were kept.
    let seen = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let s = seen.clone();
    let port = scripted_server(move |_, conn| {
        let now = Instant::now();
        let early = {
            let mut seen = s.lock().unwrap();
            let early = seen
                .last()
                .is_some_and(|t| now.duration_since(*t) < Duration::from_millis(950));
            seen.push(now);
            early
        };
        let status = if early {
            "400 Too Early"
        } else {
            "503 Service Unavailable"
        };
        let _ = conn.write_all(
            format!(
                "HTTP/1.1 {status}\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
    });
    let e = resolve(&env.ctx, &format!("127.0.0.1:{port}/team/app"), None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Backend { .. }), "{e}");
    assert!(e.to_string().contains("503"), "{e}");
    assert_eq!(seen.lock().unwrap().len(), 3, "one request and two retries");

    // A registry that trickles a byte every half second passes every read timeout: the
    // low-speed limit ends the answer (were it not to, it would take half an hour).
    let port = scripted_server(|_, conn| {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                    Docker-Distribution-API-Version: registry/2.0\r\nContent-Length: 4000\r\n\r\n";
        if conn.write_all(head.as_bytes()).is_err() {
            return;
        }
        for _ in 0..4000 {
            if conn.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let e = resolve(&env.ctx, &format!("127.0.0.1:{port}/team/app"), None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Backend { .. }), "{e}");
    assert!(e.to_string().contains("too slow"), "{e}");
}

#[tokio::test]
async fn silent_server_times_out() {
    let mut env = env();
    env.ctx.network_timeout = Duration::from_secs(1);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // Accept, never answer, hang up after a minute: were our timeout not to end the wait,
    // the error would be the hang-up, not a timeout.
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(60));
                drop(s);
            });
        }
    });
    let e = resolve(&env.ctx, &format!("127.0.0.1:{port}/team/app"), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("timed out"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Authentication

#[tokio::test]
async fn basic_auth_with_docker_token() {
    let reg = Registry::start_htpasswd();
    let good = env_with(Some(&format!("{USER}:{PASSWORD}")));
    let img = Image::single("auth", "amd64");
    reg.push(&img.write_layout(&good.dir("l"), "v1"), "v1", "team/secure");
    let loc = reg.location("team/secure:v1");
    // Anonymous: unauthorized, with a hint.
    let anon = env();
    let e = resolve(&anon.ctx, &loc, None).await.unwrap_err();
    eprintln!("{e}");
    assert!(e.to_string().contains("unauthorized"), "{e}");
    assert!(e.to_string().contains("DOCKER_TOKEN"), "{e}");
    // Good credentials: everything works.
    let src = open(&good.ctx, &loc, None).await;
    assert_eq!(src.latest().await.unwrap().version, img.version());
    let root = src
        .materialize(&img.version(), &good.dir("m"))
        .await
        .unwrap();
    assert_eq!(check_layout(&root), expected_blobs(&img));
    let new = Image::single("auth-2", "amd64");
    let v = src
        .publish(&new.write_layout(&good.dir("p"), "v1"))
        .await
        .unwrap()
        .version;
    assert_eq!(v, new.version());
    assert!(!format!("{src:?}").contains(PASSWORD));
    // A wrong password: unauthorized, naming the source, never the password.
    let wrong_pass = "wr0ng-Pa55word";
    let bad = env_with(Some(&format!("{USER}:{wrong_pass}")));
    let e = resolve(&bad.ctx, &loc, None).await.unwrap_err();
    let msg = format!("{e} {e:?}");
    eprintln!("{msg}");
    assert!(msg.contains("unauthorized"), "{msg}");
    assert!(msg.contains("\"src\""), "{msg}");
    assert!(!msg.contains(wrong_pass), "{msg}");
    let spec = SourceSpec {
        tag: Some("v1".into()),
        ..SourceSpec::new(
            Name::new("src").unwrap(),
            "docker",
            reg.location("team/secure"),
        )
    };
    let src = DockerKind::default().open(&bad.ctx, &spec).unwrap();
    for e in [
        src.latest().await.unwrap_err(),
        src.materialize(&img.version(), &bad.dir("x"))
            .await
            .unwrap_err(),
        src.publish(&new.write_layout(&bad.dir("p"), "v1"))
            .await
            .unwrap_err(),
    ] {
        let msg = format!("{e} {e:?}");
        assert!(msg.contains("unauthorized"), "{msg}");
        assert!(!msg.contains(wrong_pass), "{msg}");
    }
    assert!(!format!("{src:?}").contains(wrong_pass));
}

/// The token server's requests after the first `n`.
fn token_requests_since(tokens: &TokenServer, n: usize) -> Vec<TokenRequest> {
    tokens.log().split_off(n)
}

/// The bearer-token dance against a real `auth: token` registry and a real token service:
/// anonymous pulls with anonymous tokens, pushes with the `DOCKER_TOKEN` credentials sent
/// to the realm, tokens cached per source and scope, refused tokens fetched again once.
#[tokio::test]
async fn bearer_token_from_a_token_server() {
    let reg = Registry::start_token();
    let tokens = reg.tokens.as_ref().unwrap();
    let pull = "repository:team/public:pull";
    let push = "repository:team/public:pull,push";
    let loc = reg.location("team/public");

    // The registry wants a token from the realm: a bare request gets a Bearer challenge.
    let (status, headers, _) = http_get(reg.ip, reg.port, "/v2/team/public/manifests/latest");
    assert_eq!(status, 401);
    let challenge = headers
        .iter()
        .find(|(k, _)| k == "www-authenticate")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(&format!("realm=\"{}\"", tokens.realm())),
        "{challenge}"
    );
    assert!(
        challenge.contains(&format!("service=\"{TOKEN_SERVICE}\"")),
        "{challenge}"
    );

    // skopeo pushes through the realm with the credentials (and the registry trusts the
    // token server's signatures).
    let good = env_with(Some(&format!("{USER}:{PASSWORD}")));
    let img = Image::single("bearer", "amd64");
    reg.push(
        &img.write_layout(&good.dir("l"), "latest"),
        "latest",
        "team/public",
    );
    let log = tokens.log();
    assert!(
        log.iter()
            .any(|r| r.auth == "valid" && r.granted.iter().any(|g| g == push)),
        "{log:#?}"
    );

    // Anonymous polling and materializing: the registry's 401, an anonymous pull token from
    // the realm, the retry with it.
    let n = tokens.log().len();
    let anon = env();
    let src = open(&anon.ctx, &loc, None).await;
    assert_eq!(src.latest().await.unwrap().version, img.version());
    let root = src
        .materialize(&img.version(), &anon.dir("m"))
        .await
        .unwrap();
    assert_eq!(check_layout(&root), expected_blobs(&img));
    let log = token_requests_since(tokens, n);
    // One token for `resolve`'s client, one for the source's: its five requests share it.
    assert_eq!(log.len(), 2, "{log:#?}");
    for r in &log {
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.status),
            ("GET", "/token", 200),
            "{r:?}"
        );
        assert_eq!(r.service, TOKEN_SERVICE, "{r:?}");
        assert_eq!(r.auth, "anonymous", "{r:?}");
        assert_eq!(r.scopes, [pull], "{r:?}");
        assert_eq!(r.granted, [pull], "{r:?}");
    }

    // Anonymous publishing: the realm grants `pull` only, the registry refuses the upload.
    let n = tokens.log().len();
    let new = Image::single("bearer-pushed", "amd64");
    let new_dir = new.write_layout(&anon.dir("p"), "latest");
    let e = src.publish(&new_dir).await.unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(matches!(e, Error::Backend { .. }), "{msg}");
    assert!(msg.contains("unauthorized"), "{msg}");
    assert!(msg.contains("docker source \"src\""), "{msg}");
    assert!(msg.contains("DOCKER_TOKEN"), "{msg}");
    let log = token_requests_since(tokens, n);
    assert!(
        log.iter().any(|r| r.scopes.iter().any(|s| s == push)),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .all(|r| r.auth == "anonymous" && r.granted == [pull]),
        "{log:#?}"
    );
    assert_eq!(src.latest().await.unwrap().version, img.version());

    // With the credentials of `dkt init --docker-token USER:PASSWORD`: one token for
    // `resolve`, one (pull,push) for the whole publish, both with valid Basic credentials.
    let n = tokens.log().len();
    let pusher = open(&good.ctx, &loc, None).await;
    let v = pusher.publish(&new_dir).await.unwrap().version;
    assert_eq!(v, new.version());
    let log = token_requests_since(tokens, n);
    assert_eq!(log.len(), 2, "{log:#?}");
    for r in &log {
        assert_eq!((r.auth.as_str(), r.user.as_str()), ("valid", USER), "{r:?}");
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(log[0].granted, [pull], "{log:#?}");
    assert_eq!(log[1].scopes, [push], "{log:#?}");
    assert_eq!(log[1].granted, [push], "{log:#?}");
    assert!(!format!("{pusher:?}").contains(PASSWORD));
    // The anonymous source sees the new version (its cached token still serves).
    let n = tokens.log().len();
    assert_eq!(src.latest().await.unwrap().version, v);
    assert_eq!(tokens.log().len(), n);

    // A wrong password: the realm answers 401; unauthorized, naming the source and the
    // realm, never the password.
    let wrong_pass = "wr0ng-Pa55word";
    let bad = env_with(Some(&format!("{USER}:{wrong_pass}")));
    let n = tokens.log().len();
    let spec = SourceSpec {
        tag: Some("latest".into()),
        ..SourceSpec::new(Name::new("src").unwrap(), "docker", loc.clone())
    };
    let bad_src = DockerKind::default().open(&bad.ctx, &spec).unwrap();
    let other = Image::single("bearer-refused", "amd64");
    for e in [
        resolve(&bad.ctx, &loc, None).await.unwrap_err(),
        bad_src.latest().await.unwrap_err(),
        bad_src
            .publish(&other.write_layout(&bad.dir("p"), "latest"))
            .await
            .unwrap_err(),
    ] {
        let msg = format!("{e} {e:?}");
        eprintln!("{e}");
        assert!(matches!(e, Error::Backend { .. }), "{msg}");
        assert!(msg.contains("unauthorized"), "{msg}");
        assert!(msg.contains("docker source \"src\""), "{msg}");
        assert!(msg.contains(&tokens.realm()), "{msg}");
        assert!(!msg.contains(wrong_pass), "{msg}");
    }
    let log = token_requests_since(tokens, n);
    assert_eq!(log.len(), 3, "{log:#?}");
    for r in &log {
        assert_eq!((r.auth.as_str(), r.status), ("invalid", 401), "{r:?}");
        assert!(r.granted.is_empty(), "{r:?}");
    }
    assert!(!format!("{bad_src:?}").contains(wrong_pass));
    assert_eq!(src.latest().await.unwrap().version, v);

    // A token given as DOCKER_TOKEN (no `:`) is sent as it is: no trip to the realm. This
    // one grants pull only, so publishing with it is refused, saying so.
    let raw = tokens.anonymous_token(pull);
    let viewer = env_with(Some(&raw));
    let n = tokens.log().len();
    let raw_src = open(&viewer.ctx, &loc, None).await;
    assert_eq!(raw_src.latest().await.unwrap().version, v);
    let e = raw_src
        .publish(&other.write_layout(&viewer.dir("p"), "latest"))
        .await
        .unwrap_err();
    let msg = format!("{e} {e:?}");
    eprintln!("{e}");
    assert!(msg.contains("unauthorized"), "{msg}");
    assert!(msg.contains("insufficient_scope"), "{msg}");
    assert!(!msg.contains(&raw), "{msg}");
    assert!(!format!("{raw_src:?}").contains(&raw));
    assert_eq!(tokens.log().len(), n);

    // A realm answering as an OAuth2 endpoint (`access_token` only) will do; one answering
    // no token at all is an error naming it.
    tokens.set("fields", "access_token");
    let n = tokens.log().len();
    let oauth = open(&anon.ctx, &loc, None).await;
    assert_eq!(oauth.latest().await.unwrap().version, v);
    assert_eq!(token_requests_since(tokens, n).len(), 2);
    tokens.set("fields", "none");
    let e = resolve(&anon.ctx, &loc, None).await.unwrap_err();
    eprintln!("{e}");
    assert!(e.to_string().contains("answered no token"), "{e}");
    assert!(e.to_string().contains(&tokens.realm()), "{e}");
    tokens.clear("fields");

    // Tokens the registry refuses (expired): fetched once per challenge, then the error
    // says so, with no loop; a refused cached token is fetched again.
    tokens.set("expired", "1");
    let n = tokens.log().len();
    let later = DockerKind::default().open(&anon.ctx, &spec).unwrap();
    let e = later.latest().await.unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(msg.contains("unauthorized"), "{msg}");
    assert!(msg.contains("invalid_token"), "{msg}");
    assert!(msg.contains(&tokens.realm()), "{msg}");
    assert_eq!(token_requests_since(tokens, n).len(), 1);
    tokens.clear("expired");
    let n = tokens.log().len();
    assert_eq!(later.latest().await.unwrap().version, v);
    assert_eq!(token_requests_since(tokens, n).len(), 1);

    // The log names who asked, never a password.
    let text = tokens.log_text();
    assert!(text.contains(USER));
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(!text.contains(wrong_pass), "{text}");
}

#[tokio::test]
async fn insecure_setting_allows_plain_http() {
    // 127.0.0.2 is not among the hosts reached over plain HTTP by default.
    let reg = Registry::start_with(Auth::None, "127.0.0.2");
    let env = env();
    let img = Image::single("insecure", "amd64");
    reg.push(
        &img.write_layout(&env.dir("l"), "latest"),
        "latest",
        "team/app",
    );
    let loc = reg.location("team/app");
    let e = resolve(&env.ctx, &loc, None).await.unwrap_err();
    assert!(matches!(e, Error::Backend { .. }), "{e}");
    assert!(e.to_string().contains("https://"), "{e}");
    let ctx = env.ctx.clone().with_setting(
        "docker",
        "insecure",
        format!("other.example.com, {}", reg.host()),
    );
    let src = open(&ctx, &loc, None).await;
    assert_eq!(src.latest().await.unwrap().version, img.version());
    let ctx = env
        .ctx
        .clone()
        .with_setting("docker", "insecure", "127.0.0.2");
    let src = open(&ctx, &loc, None).await;
    assert_eq!(src.latest().await.unwrap().version, img.version());
}

#[test]
fn infer_only_clear_registries() {
    let k = DockerKind::default();
    assert_eq!(k.infer("127.0.0.1:5000/team/app:v1"), Some(15));
    assert_eq!(k.infer("registry.example.com/team/app"), Some(15));
    assert_eq!(k.infer("docker://ubuntu"), Some(30));
    assert_eq!(k.infer("user/repo"), None);
    assert_eq!(k.infer("github.com/user/repo"), None);
    // The git kind is surer of git URLs; the path kind of local paths.
    assert_eq!(k.infer("https://example.com/repo.git"), None);
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("data.v1/x");
    std::fs::create_dir_all(&local).unwrap();
    assert_eq!(k.infer(&local.display().to_string()), None);
}

/// Each transfer's name and the sizes of its steps.
type StepLog = Arc<Mutex<Vec<(String, Vec<u64>)>>>;

/// A [`Progress`] that keeps a [`StepLog`].
#[derive(Debug, Default, Clone)]
struct Steps(StepLog);

impl Progress for Steps {
    fn start(&self, what: &str, _total: Option<u64>) -> Box<dyn Transfer> {
        struct T(StepLog, usize);
        impl Transfer for T {
            fn advance(&mut self, bytes: u64) {
                self.0.lock().unwrap()[self.1].1.push(bytes);
            }
        }
        let mut all = self.0.lock().unwrap();
        all.push((what.to_owned(), Vec::new()));
        Box::new(T(self.0.clone(), all.len() - 1))
    }
}

#[tokio::test]
async fn blobs_larger_than_chunk_size_are_uploaded_in_chunks() {
    let mut env = env();
    let (reg, _, _) = seeded(&env);
    env.ctx = env.ctx.clone().with_setting("docker", "chunk_size", "1KiB");
    let steps = Steps::default();
    env.ctx.progress = Arc::new(steps.clone());
    let src = open(&env.ctx, &reg.location("team/app"), None).await;
    let new = Image::single("chunked", "amd64");
    let biggest = new.blobs.values().map(Vec::len).max().unwrap() as u64;
    assert!(biggest > 3 * 1024, "{biggest}");
    let v = src
        .publish(&new.write_layout(&env.dir("pub"), "latest"))
        .await
        .unwrap()
        .version;
    assert_eq!(v, new.version());
    // One transfer per blob; the big ones went up 1 KiB at a time (a PATCH each), all of
    // every blob's bytes counted once.
    let uploads = steps.0.lock().unwrap().clone();
    assert_eq!(uploads.len(), new.blobs.len(), "{uploads:?}");
    let mut sizes: Vec<u64> = uploads.iter().map(|(_, s)| s.iter().sum()).collect();
    let mut want: Vec<u64> = new.blobs.values().map(|b| b.len() as u64).collect();
    sizes.sort();
    want.sort();
    assert_eq!(sizes, want);
    let big = uploads
        .iter()
        .find(|(_, s)| s.iter().sum::<u64>() == biggest)
        .unwrap();
    assert_eq!(big.1.len() as u64, biggest.div_ceil(1024), "{big:?}");
    assert!(big.1.iter().all(|n| *n <= 1024), "{big:?}");
    // What the registry assembled is the image, byte for byte.
    let back = src.materialize(&v, &env.dir("back")).await.unwrap();
    assert_eq!(check_layout(&back), expected_blobs(&new));

    // A chunk size that is not one is refused, naming the setting.
    let bad = env
        .ctx
        .clone()
        .with_setting("docker", "chunk_size", "12 parsecs");
    let e = DockerKind::default()
        .resolve(&bad, new_source(&reg.location("team/app"), None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("chunk_size"), "{e}");
}

/// An image with `base`'s layers and a config of its own, its manifest naming `base_name`
/// as its base image (`org.opencontainers.image.base.name`), if given.
fn based_on(base: &Image, base_name: Option<&str>, seed: &str) -> Image {
    let m: serde_json::Value = serde_json::from_slice(&base.manifest).unwrap();
    let layers = m["layers"].clone();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [format!("SEED={seed}")]},
    }))
    .unwrap();
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": layers,
    });
    if let Some(name) = base_name {
        manifest["annotations"] = serde_json::json!({ "org.opencontainers.image.base.name": name });
    }
    let mut blobs: BTreeMap<String, Vec<u8>> = layers
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let d = l["digest"].as_str().unwrap().to_owned();
            let b = base.blobs[&d].clone();
            (d, b)
        })
        .collect();
    blobs.insert(sha256(&config), config);
    Image {
        media_type: OCI_MANIFEST,
        manifest: serde_json::to_vec_pretty(&manifest).unwrap(),
        blobs,
    }
}

#[tokio::test]
async fn layers_of_a_base_image_in_the_registry_are_mounted_not_uploaded() {
    let mut env = env();
    let (reg, one, _) = seeded(&env);
    let steps = Steps::default();
    env.ctx.progress = Arc::new(steps.clone());
    let app = open(&env.ctx, &reg.location("team/app"), None).await;
    let to = |repo: &str| {
        let spec = SourceSpec {
            location: reg.location(repo),
            tag: Some("latest".into()),
            ..app.spec().clone()
        };
        DockerKind::default().open(&env.ctx, &spec).unwrap()
    };
    // Based on team/app:latest: its two layers are mounted, only the config goes up.
    let base_name = format!("{}:latest", reg.location("team/app"));
    let derived = based_on(&one, Some(&base_name), "derived");
    let dst = to("team/derived");
    let v = dst
        .publish(&derived.write_layout(&env.dir("d"), "latest"))
        .await
        .unwrap()
        .version;
    assert_eq!(v, derived.version());
    let uploads = std::mem::take(&mut *steps.0.lock().unwrap());
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    // The new repository serves the whole image, mounted layers included.
    let back = dst.materialize(&v, &env.dir("back")).await.unwrap();
    assert_eq!(check_layout(&back), expected_blobs(&derived));
    let downloads = std::mem::take(&mut *steps.0.lock().unwrap());
    assert_eq!(downloads.len(), derived.blobs.len(), "{downloads:?}");

    // Without the annotation (or naming another registry) every blob is uploaded.
    for (repo, name) in [
        ("team/plain", None),
        (
            "team/elsewhere",
            Some("registry.example:5000/team/app:latest"),
        ),
    ] {
        let image = based_on(&one, name, repo);
        let v = to(repo)
            .publish(&image.write_layout(&env.dir(repo), "latest"))
            .await
            .unwrap()
            .version;
        assert_eq!(v, image.version());
        let uploads = std::mem::take(&mut *steps.0.lock().unwrap());
        assert_eq!(uploads.len(), image.blobs.len(), "{repo}: {uploads:?}");
    }
}

/// Behind a token service the mount needs `pull` on the base's repository too: the
/// registry's challenge names it, and the token asked for it covers both.
#[tokio::test]
async fn mounts_behind_a_token_service_ask_for_the_base_repository() {
    let reg = Registry::start_token();
    let tokens = reg.tokens.as_ref().unwrap();
    let mut env = env_with(Some(&format!("{USER}:{PASSWORD}")));
    let one = Image::single("tokened", "amd64");
    reg.push(
        &one.write_layout(&env.dir("l-one"), "latest"),
        "latest",
        "team/app",
    );
    let steps = Steps::default();
    env.ctx.progress = Arc::new(steps.clone());
    let app = open(&env.ctx, &reg.location("team/app"), None).await;
    let spec = SourceSpec {
        location: reg.location("team/derived"),
        tag: Some("latest".into()),
        ..app.spec().clone()
    };
    let dst = DockerKind::default().open(&env.ctx, &spec).unwrap();
    let derived = based_on(
        &one,
        Some(&format!("{}:latest", reg.location("team/app"))),
        "derived",
    );
    let n = tokens.log().len();
    let v = dst
        .publish(&derived.write_layout(&env.dir("d"), "latest"))
        .await
        .unwrap()
        .version;
    assert_eq!(v, derived.version());
    let uploads = steps.0.lock().unwrap().clone();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    let log = token_requests_since(tokens, n);
    assert!(
        log.iter().any(
            |r| r.granted.iter().any(|g| g == "repository:team/app:pull")
                && r.granted
                    .iter()
                    .any(|g| g == "repository:team/derived:pull,push")
        ),
        "{log:#?}"
    );
    let back = dst.materialize(&v, &env.dir("back")).await.unwrap();
    assert_eq!(check_layout(&back), expected_blobs(&derived));
}

/// How many transfers run at once, at most.
#[derive(Debug, Default, Clone)]
struct Overlap(Arc<Mutex<(usize, usize)>>);

impl Progress for Overlap {
    fn start(&self, _what: &str, _total: Option<u64>) -> Box<dyn Transfer> {
        struct T(Arc<Mutex<(usize, usize)>>);
        impl Transfer for T {
            fn advance(&mut self, _bytes: u64) {}
        }
        impl Drop for T {
            fn drop(&mut self) {
                self.0.lock().unwrap().0 -= 1;
            }
        }
        let mut g = self.0.lock().unwrap();
        g.0 += 1;
        g.1 = g.1.max(g.0);
        Box::new(T(self.0.clone()))
    }
}

#[tokio::test]
async fn blobs_move_several_at_a_time() {
    let mut env = env();
    let (reg, _, _) = seeded(&env);
    let overlap = Overlap::default();
    env.ctx.progress = Arc::new(overlap.clone());
    let src = open(&env.ctx, &reg.location("team/app"), None).await;
    // Three layers of 4 MiB each: each takes many reads, so transfers overlap.
    let layers: Vec<Vec<u8>> = (0..3u8)
        .map(|i| {
            let data: Vec<u8> = (0..4u32 << 20)
                .map(|n| (n.wrapping_mul(2654435761) >> 13) as u8 ^ i)
                .collect();
            tar(&[("big.bin", &data)])
        })
        .collect();
    let config =
        serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux"})).unwrap();
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect::<Vec<_>>(),
    }))
    .unwrap();
    let mut blobs: BTreeMap<String, Vec<u8>> =
        layers.into_iter().map(|b| (sha256(&b), b)).collect();
    blobs.insert(sha256(&config), config);
    let big = Image {
        media_type: OCI_MANIFEST,
        manifest,
        blobs,
    };
    let v = src
        .publish(&big.write_layout(&env.dir("big"), "latest"))
        .await
        .unwrap()
        .version;
    let up = std::mem::take(&mut *overlap.0.lock().unwrap());
    let back = src.materialize(&v, &env.dir("back")).await.unwrap();
    assert_eq!(check_layout(&back), expected_blobs(&big));
    let down = *overlap.0.lock().unwrap();
    assert_eq!((up.0, down.0), (0, 0), "every transfer ended");
    assert!(up.1 >= 2, "uploads ran one at a time: {up:?}");
    assert!(down.1 >= 2, "downloads ran one at a time: {down:?}");
}

/// Delete `repo:tag` from the registry (the manifest it names, with skopeo).
fn skopeo_delete(reg: &Registry, repo: &str, tag: &str) {
    let mut cmd = Command::new(find_bin("skopeo"));
    cmd.args(["delete", "--tls-verify=false"])
        .arg(format!("docker://{}/{repo}:{tag}", reg.host()));
    run(cmd);
}

#[tokio::test]
async fn a_tag_pattern_follows_every_matching_tag() {
    let env = env();
    let (reg, _one, _v1) = seeded(&env);
    let push = |seed: &str, tag: &str| {
        let img = Image::single(seed, "amd64");
        reg.push(
            &img.write_layout(&env.dir(&format!("l-{seed}")), tag),
            tag,
            "team/app",
        );
        img
    };
    let a = push("a", "v1.1");
    let b = push("b", "v1.2");
    push("c", "v2.0");
    let spec = resolve(&env.ctx, &reg.location("team/app:v1.*"), None)
        .await
        .unwrap();
    assert_eq!(spec.tag.as_deref(), Some("v1.*"));
    let src = DockerKind::default().open(&env.ctx, &spec).unwrap();
    assert!(src.capabilities().patterns);
    let heads = |hs: Vec<dtk_api::VersionInfo>| -> Vec<(Version, String)> {
        hs.into_iter()
            .map(|h| (h.version, h.extra["REF"].clone()))
            .collect()
    };
    assert_eq!(
        heads(src.heads().await.unwrap()),
        [
            (b.version(), "v1.2".to_owned()),
            (a.version(), "v1.1".to_owned())
        ]
    );
    assert_eq!(src.latest().await.unwrap().version, b.version());
    // v1.1 moves, v1.2 goes, v1.3 appears.
    let d = push("d", "v1.1");
    skopeo_delete(&reg, "team/app", "v1.2");
    let e = push("e", "v1.3");
    assert_eq!(
        heads(src.heads().await.unwrap()),
        [
            (e.version(), "v1.3".to_owned()),
            (d.version(), "v1.1".to_owned())
        ]
    );
    // The fields name the ref (dtk sets it per version from the record).
    let f = src.fields(Some(&d.version()), Path::new("/r")).unwrap();
    assert_eq!(f["REF"], "v1.*");
    // Nothing published to a pattern.
    let err = src
        .publish(&a.write_layout(&env.dir("l-pub"), "v1.*"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"v1.*\""), "{err}");
    // No match yet: an empty list, and `latest` says why.
    let none = open(&env.ctx, &reg.location("team/app:v9.*"), None).await;
    assert!(none.heads().await.unwrap().is_empty());
    let err = none.latest().await.unwrap_err().to_string();
    assert!(err.contains("v9.*"), "{err}");
    // A bad pattern is refused quoting it.
    let err = resolve(&env.ctx, &reg.location("team/app:v[1"), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"v[1\""), "{err}");
}

#[tokio::test]
async fn publishing_to_a_tag_that_does_not_exist_creates_it_and_a_moved_tag_is_refused() {
    let env = env();
    let (reg, one, _v1) = seeded(&env);
    let existing = open(&env.ctx, &reg.location("team/app"), None).await;
    let spec = SourceSpec {
        tag: Some("fresh".into()),
        ..existing.spec().clone()
    };
    let fresh = DockerKind::default().open(&env.ctx, &spec).unwrap();
    assert!(matches!(
        fresh.latest().await.unwrap_err(),
        Error::NotFound { .. }
    ));
    let two = Image::single("two", "amd64");
    let layout = two.write_layout(&env.dir("l-two"), "fresh");
    // Expecting no version: the tag is created.
    let options = dtk_api::PublishOptions::new().expecting(None);
    let v = fresh.publish_with(&layout, &options).await.unwrap();
    assert_eq!(v.version, two.version());
    assert_eq!(fresh.latest().await.unwrap().version, two.version());
    // Expecting no version again, or the old one, now that the tag exists: refused, and
    // the tag stays where it is.
    let three = Image::single("three", "amd64");
    let layout = three.write_layout(&env.dir("l-three"), "fresh");
    for expected in [None, Some(one.version())] {
        let options = dtk_api::PublishOptions::new().expecting(expected.clone());
        match fresh.publish_with(&layout, &options).await.unwrap_err() {
            Error::OutputMoved {
                expected: e, found, ..
            } => {
                assert_eq!(e, expected);
                assert_eq!(found, Some(two.version()));
            }
            other => panic!("{other}"),
        }
        assert_eq!(fresh.latest().await.unwrap().version, two.version());
    }
}

/// A statement naming run `run` of node `node`, as `dkt inspect --format slsa` does.
fn statement(run: &str, node: &str) -> dtk_api::source::Attestation {
    let s = serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": { "externalParameters": { "node": node } },
            "runDetails": { "metadata": { "invocationId": run } },
        },
    });
    dtk_api::source::Attestation::new(
        dtk_api::source::Attestation::IN_TOTO,
        serde_json::to_vec(&s).unwrap(),
    )
}

#[tokio::test]
async fn statements_attach_as_referrers_and_name_the_run() {
    let env = env();
    let (reg, one, v1) = seeded(&env);
    let src = open(&env.ctx, &reg.location("team/app"), None).await;
    assert!(src.capabilities().attestations);
    let image = format!("{}@{}", reg.location("team/app"), one.digest());
    // Pushed by skopeo: no annotations, no referrers, so nothing to say.
    assert_eq!(src.provenance_of(&image).await.unwrap(), None);
    src.attach(&one.version(), &statement("aaaa1111", "n1"))
        .await
        .unwrap();
    let p = src
        .provenance_of(&image)
        .await
        .unwrap()
        .expect("provenance");
    assert_eq!(p.run.as_deref(), Some("aaaa1111"));
    assert_eq!(p.node.as_deref(), Some("n1"));
    assert_eq!(p.version, Some(one.version()));
    assert!(p.found_in.contains("referrer"), "{}", p.found_in);
    // Attaching the same statement again lists it once; a newer one is listed after it
    // and is the one read.
    src.attach(&one.version(), &statement("aaaa1111", "n1"))
        .await
        .unwrap();
    src.attach(&one.version(), &statement("bbbb2222", "n2"))
        .await
        .unwrap();
    let p = src
        .provenance_of(&image)
        .await
        .unwrap()
        .expect("provenance");
    assert_eq!(p.run.as_deref(), Some("bbbb2222"));
    let (status, _, body) = http_get(
        reg.ip,
        reg.port,
        &format!("/v2/team/app/referrers/{}", one.digest()),
    );
    assert_eq!(
        status, 404,
        "the registry offers the referrers API now: {body}"
    );
    let tag = format!("sha256-{}", &one.digest()[7..]);
    let tags = src_tags(&reg).await;
    assert!(tags.contains(&tag), "{tags:?}");
    let mut cmd = Command::new(find_bin("skopeo"));
    cmd.args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}:{tag}", reg.location("team/app")));
    let index: serde_json::Value = serde_json::from_str(&run(cmd)).unwrap();
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{index}");
    assert!(listed
        .iter()
        .all(|m| m["artifactType"] == dtk_api::source::Attestation::IN_TOTO));
    // The other image of the repository has none; another repository is not this
    // source's; a digest the registry does not have is not found.
    let other = format!("{}@{}", reg.location("team/app"), v1.digest());
    assert_eq!(src.provenance_of(&other).await.unwrap(), None);
    let elsewhere = format!("{}@{}", reg.location("team/other"), one.digest());
    assert_eq!(src.provenance_of(&elsewhere).await.unwrap(), None);
    let missing = format!("{}@sha256:{}", reg.location("team/app"), "0".repeat(64));
    assert!(matches!(
        src.provenance_of(&missing).await,
        Err(Error::NotFound { .. })
    ));
    let absent: Version = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
    let err = src.attach(&absent, &statement("c", "n")).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

/// The tags of `team/app` (from the distribution API's tag list).
async fn src_tags(reg: &Registry) -> Vec<String> {
    let (_, _, body) = http_get(reg.ip, reg.port, "/v2/team/app/tags/list");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

/// A registry that offers the referrers API (as distribution 3 and zot do), scripted:
/// it serves one image manifest and every blob asked for, answers a manifest pushed with
/// a `subject` with `OCI-Subject`, and lists it at `GET /v2/team/app/referrers/DIGEST`.
/// Every request line is kept.
struct ApiRegistry {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl ApiRegistry {
    fn start(image: Vec<u8>, statement: Vec<u8>) -> ApiRegistry {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let pushed = Arc::new(Mutex::new(None::<Vec<u8>>));
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0u8; length];
                let _ = r.read_exact(&mut body);
                let line = line.trim().to_owned();
                seen.lock().unwrap().push(line.clone());
                let mut parts = line.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let image_digest = sha256(&image);
                let statement_digest = sha256(&statement);
                let referrer = pushed.lock().unwrap().clone();
                let (status, headers, reply): (&str, String, Vec<u8>) = match (method, path) {
                    ("GET", "/v2/") => ("200 OK", String::new(), Vec::new()),
                    ("HEAD", p) if p.starts_with("/v2/team/app/blobs/") => {
                        ("200 OK", String::new(), Vec::new())
                    }
                    ("GET", p) if p == format!("/v2/team/app/blobs/{statement_digest}") => {
                        ("200 OK", String::new(), statement.clone())
                    }
                    ("GET", p) if p == format!("/v2/team/app/manifests/{image_digest}") => (
                        "200 OK",
                        "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n".into(),
                        image.clone(),
                    ),
                    ("PUT", p) if p.starts_with("/v2/team/app/manifests/sha256:") => {
                        *pushed.lock().unwrap() = Some(body.clone());
                        (
                            "201 Created",
                            format!(
                                "OCI-Subject: {image_digest}\r\nDocker-Content-Digest: {}\r\n",
                                sha256(&body)
                            ),
                            Vec::new(),
                        )
                    }
                    ("GET", p)
                        if referrer.as_ref().is_some_and(|m| {
                            p == format!("/v2/team/app/manifests/{}", sha256(m))
                        }) =>
                    {
                        (
                            "200 OK",
                            "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n".into(),
                            referrer.clone().unwrap(),
                        )
                    }
                    ("GET", p) if p == format!("/v2/team/app/referrers/{image_digest}") => {
                        let manifests: Vec<serde_json::Value> = referrer
                            .iter()
                            .map(|m| {
                                let mut d =
                                    descriptor("application/vnd.oci.image.manifest.v1+json", m);
                                d["artifactType"] = "application/vnd.in-toto+json".into();
                                d
                            })
                            .collect();
                        let index = serde_json::json!({
                            "schemaVersion": 2,
                            "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": manifests,
                        });
                        (
                            "200 OK",
                            "Content-Type: application/vnd.oci.image.index.v1+json\r\n".into(),
                            serde_json::to_vec(&index).unwrap(),
                        )
                    }
                    _ => ("404 Not Found", String::new(), Vec::new()),
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    reply.len()
                );
                if method != "HEAD" {
                    let _ = s.write_all(&reply);
                }
            }
        });
        ApiRegistry { port, requests }
    }
}

#[tokio::test]
async fn with_the_referrers_api_no_fallback_tag_is_written() {
    let env = env();
    let config = descriptor("application/vnd.oci.image.config.v1+json", b"{}");
    let image = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [],
    }))
    .unwrap();
    let attestation = statement("cccc3333", "n3");
    let reg = ApiRegistry::start(image.clone(), attestation.bytes.clone());
    let location = format!("127.0.0.1:{}/team/app", reg.port);
    let spec = SourceSpec::new(Name::new("src").unwrap(), "docker", &location);
    let src = DockerKind::default().open(&env.ctx, &spec).unwrap();
    let version: Version = sha256(&image).parse().unwrap();
    src.attach(&version, &attestation).await.unwrap();
    let p = src
        .provenance_of(&format!("{location}@{version}"))
        .await
        .unwrap()
        .expect("provenance");
    assert_eq!(p.run.as_deref(), Some("cccc3333"));
    let requests = reg.requests.lock().unwrap().clone();
    let tag = format!("sha256-{}", &sha256(&image)[7..]);
    assert!(
        !requests.iter().any(|r| r.contains(&tag)),
        "the fallback tag was used: {requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET /v2/team/app/referrers/sha256:")),
        "{requests:#?}"
    );
}
