//! The `git` kind against real repositories made with the `git` CLI.
#![cfg(feature = "git")]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dtk_api::conformance::{check_all, Fixture};
use dtk_api::{Context, Error, Kind, Name, NewSource, Secrets, Source, SourceSpec, Version};
use dtk_sources::git::{GitKind, GitSource};

// ---------------------------------------------------------------------------------------
// Helpers

#[path = "support/trees.rs"]
mod trees;
use trees::{assert_same_tree, git_archive, git_env};

fn git(dir: &Path, args: &[&str]) -> String {
    git_env(dir, args, None)
}

/// A work tree repository whose first branch is `branch`.
fn init_repo(dir: &Path, branch: &str) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", branch]);
}

fn write(dir: &Path, path: &str, content: &str) {
    let p = dir.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// Commit everything with message `msg` (at `date` if given) and return the commit id.
fn commit(dir: &Path, msg: &str, date: Option<u64>) -> String {
    git(dir, &["add", "-A"]);
    git_env(dir, &["commit", "-q", "--allow-empty", "-m", msg], date);
    git(dir, &["rev-parse", "HEAD"])
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    ctx: Context,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let mut ctx = Context::new(&root.join("dkt"), Secrets::default());
    ctx.network_timeout = Duration::from_secs(20);
    ctx.cwd = root.clone();
    Env {
        _tmp: tmp,
        root,
        ctx,
    }
}

fn new_source(kind: &str, location: &str, tag: Option<&str>, path: Option<&str>) -> NewSource {
    NewSource {
        name: Name::new("src").unwrap(),
        kind: kind.to_owned(),
        location: Some(location.to_owned()),
        tag: tag.map(str::to_owned),
        path: path.map(str::to_owned),
    }
}

async fn resolve(
    ctx: &Context,
    location: &str,
    tag: Option<&str>,
    path: Option<&str>,
) -> dtk_api::Result<SourceSpec> {
    GitKind::default()
        .resolve(ctx, new_source("git", location, tag, path))
        .await
}

async fn open(
    ctx: &Context,
    location: &str,
    tag: Option<&str>,
    path: Option<&str>,
) -> Arc<dyn Source> {
    let spec = resolve(ctx, location, tag, path).await.expect("resolve");
    GitKind::default().open(ctx, &spec).expect("open")
}

fn hexes(vs: &[dtk_api::VersionInfo]) -> Vec<String> {
    vs.iter().map(|v| v.version.hex().to_owned()).collect()
}

fn sha1(hex: &str) -> Version {
    format!("sha1:{hex}").parse().unwrap()
}

/// A small repository: files at the root and in `sub/`, an executable, a symlink, three
/// commits on `main`, a branch `dev`, a lightweight tag `light` and an annotated tag `v1`.
struct Small {
    dir: PathBuf,
    commits: Vec<String>,
    dev: String,
}

fn small_repo(root: &Path) -> Small {
    let dir = root.join("origin");
    init_repo(&dir, "main");
    write(&dir, "README", "hello\n");
    write(&dir, "sub/a.txt", "a1\n");
    let c1 = commit(&dir, "one", Some(1_700_000_000));
    git(&dir, &["tag", "light"]);
    write(&dir, "sub/run.sh", "#!/bin/sh\necho hi\n");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("sub/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("a.txt", dir.join("sub/link")).unwrap();
    }
    let c2 = commit(&dir, "two", Some(1_700_000_100));
    git_env(
        &dir,
        &["tag", "-a", "v1", "-m", "version one"],
        Some(1_700_000_100),
    );
    write(&dir, "README", "hello again\n");
    let c3 = commit(&dir, "three", Some(1_700_000_200));
    git(&dir, &["checkout", "-q", "-b", "dev", &c1]);
    write(&dir, "dev.txt", "dev\n");
    let dev = commit(&dir, "dev", Some(1_700_000_300));
    git(&dir, &["checkout", "-q", "main"]);
    Small {
        dir,
        commits: vec![c1, c2, c3],
        dev,
    }
}

// ---------------------------------------------------------------------------------------
// Contract

#[tokio::test]
async fn conformance_whole_repository() {
    let e = env();
    let r = small_repo(&e.root);
    // Publishing pushes: to a bare repository (a non-bare one refuses a push to its
    // checked-out branch).
    let bare = e.root.join("whole.git");
    git(
        &e.root,
        &[
            "clone",
            "-q",
            "--bare",
            r.dir.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let source = open(&e.ctx, bare.to_str().unwrap(), None, None).await;
    let scratch = e.root.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let publish = e.root.join("publish");
    write(&publish, "new/file.txt", "published\n");
    check_all(&*source, &Fixture::new(&scratch).with_publish_dir(&publish))
        .await
        .unwrap();
}

#[tokio::test]
async fn conformance_sub_path_and_bare_file_url() {
    let e = env();
    let r = small_repo(&e.root);
    let bare = e.root.join("bare.git");
    git(
        &e.root,
        &[
            "clone",
            "-q",
            "--bare",
            r.dir.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let url = format!("file://{}", bare.display());
    let source = open(&e.ctx, &url, None, Some("sub")).await;
    assert_eq!(source.spec().location, url);
    let scratch = e.root.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let publish = e.root.join("publish");
    write(&publish, "only.txt", "the sub-path's new content\n");
    check_all(&*source, &Fixture::new(&scratch).with_publish_dir(&publish))
        .await
        .unwrap();
}

#[test]
fn kind_metadata() {
    let k = GitKind::default();
    assert_eq!(k.name(), "git");
    assert_eq!(k.aliases(), &["github"]);
    let c = k.capabilities();
    assert!(c.history && c.subpath && c.tags && c.publish && c.patterns);
    let mut registry = dtk_api::Registry::new();
    registry.register(Arc::new(GitKind::default()));
    assert_eq!(registry.get("GitHub").unwrap().name(), "git");
}

#[test]
fn infer_cases() {
    let e = env();
    let r = small_repo(&e.root);
    let bare = e.root.join("bare");
    git(
        &e.root,
        &[
            "clone",
            "-q",
            "--bare",
            r.dir.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let plain = e.root.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let k = GitKind::default();
    for yes in [
        "https://github.com/user/repo",
        "http://host/x",
        "ssh://git@host/x.git",
        "git://host/x",
        "file:///srv/x",
        "git@github.com:user/repo.git",
        "some/where/repo.git",
        r.dir.to_str().unwrap(),
        bare.to_str().unwrap(),
    ] {
        assert_eq!(k.infer(yes), Some(20), "{yes}");
    }
    for no in [
        plain.to_str().unwrap(),
        "/does/not/exist",
        "ubuntu:22.04",
        "alpine@sha256:0123abcd",
        "s3://bucket/key",
        "data.csv",
    ] {
        assert_eq!(k.infer(no), None, "{no}");
    }
}

// ---------------------------------------------------------------------------------------
// resolve

#[cfg(feature = "https")]
#[path = "support/git_server.rs"]
mod git_server;

#[cfg(feature = "https")]
/// One HTTPS git server for this test binary, trusted through `SSL_CERT_FILE` (which the
/// HTTPS transport reads once per client, so every test must use the same CA).
fn https_server() -> &'static git_server::GitServer {
    static SERVER: std::sync::OnceLock<git_server::GitServer> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        let server = git_server::GitServer::start(true, None);
        std::env::set_var("SSL_CERT_FILE", server.ca());
        server
    })
}

/// The `github` shortcut expands under `[kind.git] github_url`: here a local HTTPS git
/// server (never github.com: tests send traffic to loopback only).
#[tokio::test]
async fn github_shortcut_expands_and_rejects() {
    let mut e = env();
    e.ctx.network_timeout = Duration::from_secs(10);
    #[cfg(feature = "https")]
    {
        let server = https_server();
        let r = small_repo(&e.root);
        server.serve("someone/some-repo", &r.dir);
        e.ctx = e
            .ctx
            .clone()
            .with_setting("git", "github_url", format!("{}/", server.base()));
        let spec = GitKind::default()
            .resolve(
                &e.ctx,
                new_source("github", "someone/some-repo", None, None),
            )
            .await
            .unwrap();
        assert_eq!(spec.kind, "git");
        assert_eq!(
            spec.location,
            format!("{}/someone/some-repo", server.base())
        );
        assert_eq!(spec.tag.as_deref(), Some("main"));
        let source = GitKind::default().open(&e.ctx, &spec).unwrap();
        assert_eq!(source.latest().await.unwrap().version.hex(), r.commits[2]);
        let err = GitKind::default()
            .resolve(&e.ctx, new_source("github", "someone/missing", None, None))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Backend { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("{}/someone/missing", server.base())),
            "{err}"
        );
    }
    #[cfg(not(feature = "https"))]
    {
        // Without HTTPS support the fetch fails before any connection, naming the URL.
        e.ctx = e
            .ctx
            .clone()
            .with_setting("git", "github_url", "https://127.0.0.1:1");
        let err = GitKind::default()
            .resolve(
                &e.ctx,
                new_source("github", "someone/some-repo", None, None),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("https://127.0.0.1:1/someone/some-repo"),
            "{err}"
        );
    }
    for bad in [
        "http://127.0.0.1:1",
        "ftp://x",
        "https://user:pw@127.0.0.1:1",
        "nonsense",
    ] {
        let ctx = e.ctx.clone().with_setting("git", "github_url", bad);
        let err = GitKind::default()
            .resolve(&ctx, new_source("github", "a/b", None, None))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{bad}: {err}");
        assert!(err.to_string().contains("github_url"), "{err}");
    }
    for bad in [
        "someone",
        "a/b/c",
        "https://github.com/a/b",
        "a b/c",
        "a/..",
    ] {
        let err = GitKind::default()
            .resolve(&e.ctx, new_source("github", bad, None, None))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{bad}: {err}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
}

#[tokio::test]
async fn default_branch_is_the_remote_head() {
    let e = env();
    for branch in ["master", "main", "trunk"] {
        let dir = e.root.join(branch);
        init_repo(&dir, branch);
        write(&dir, "f", branch);
        let c = commit(&dir, "c", None);
        // Another branch, newer, that must not be picked.
        git(&dir, &["checkout", "-q", "-b", "zzz"]);
        write(&dir, "f", "other");
        commit(&dir, "other", None);
        git(&dir, &["checkout", "-q", branch]);
        let spec = resolve(&e.ctx, dir.to_str().unwrap(), None, None)
            .await
            .unwrap();
        assert_eq!(spec.tag.as_deref(), Some(branch));
        assert_eq!(spec.kind, "git");
        assert_eq!(spec.location, dir.display().to_string());
        let s = GitKind::default().open(&e.ctx, &spec).unwrap();
        assert_eq!(s.latest().await.unwrap().version.hex(), c);
    }
}

#[tokio::test]
async fn relative_locations_become_absolute() {
    let e = env();
    let r = small_repo(&e.root);
    let spec = resolve(&e.ctx, "./origin/../origin", None, None)
        .await
        .unwrap();
    assert_eq!(Path::new(&spec.location), r.dir);
    let spec = resolve(&e.ctx, "file://origin", None, None).await.unwrap();
    assert_eq!(spec.location, format!("file://{}", r.dir.display()));
}

#[tokio::test]
async fn tags_branches_and_commit_ids_resolve() {
    let e = env();
    let r = small_repo(&e.root);
    let loc = r.dir.to_str().unwrap();
    let cases = [
        ("main", &r.commits[2]),
        ("dev", &r.dev),
        ("light", &r.commits[0]),
        ("v1", &r.commits[1]),
        ("refs/tags/v1", &r.commits[1]),
        (&r.commits[1][..7], &r.commits[1]),
        (&r.commits[0][..], &r.commits[0]),
    ];
    for (tag, expected) in cases {
        let spec = resolve(&e.ctx, loc, Some(tag), None).await.unwrap();
        assert_eq!(spec.tag.as_deref(), Some(tag));
        let s = GitKind::default().open(&e.ctx, &spec).unwrap();
        assert_eq!(
            &s.latest().await.unwrap().version.hex(),
            expected,
            "tag {tag}"
        );
        let vs = s.versions().await.unwrap();
        assert_eq!(&vs[0].version.hex(), expected, "tag {tag}");
    }
}

#[tokio::test]
async fn unknown_tag_and_path_are_not_found_quoting_them() {
    let e = env();
    let r = small_repo(&e.root);
    let loc = r.dir.to_str().unwrap();
    for tag in ["nope", "v9.9", "deadbeef", "bad..name"] {
        let err = resolve(&e.ctx, loc, Some(tag), None).await.unwrap_err();
        assert!(
            matches!(err, Error::NotFound { what: "tag", .. }),
            "{tag}: {err}"
        );
        assert!(err.to_string().contains(&format!("{tag:?}")), "{err}");
    }
    for path in ["missing", "sub/missing.txt", "README/x"] {
        let err = resolve(&e.ctx, loc, None, Some(path)).await.unwrap_err();
        assert!(
            matches!(err, Error::NotFound { what: "path", .. }),
            "{path}: {err}"
        );
        assert!(err.to_string().contains(&format!("{path:?}")), "{err}");
    }
    // `sub/run.sh` exists only from the second commit on.
    let err = resolve(&e.ctx, loc, Some("light"), Some("sub/run.sh"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    resolve(&e.ctx, loc, Some("v1"), Some("sub/run.sh"))
        .await
        .unwrap();
}

#[tokio::test]
async fn missing_or_invalid_locations_fail_fast() {
    let e = env();
    let missing = e.root.join("nowhere/repo");
    let err = resolve(&e.ctx, missing.to_str().unwrap(), None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
    let err = resolve(&e.ctx, "file:///nowhere/at/all", None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let plain = e.root.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let err = resolve(&e.ctx, plain.to_str().unwrap(), None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert!(err.to_string().contains(plain.to_str().unwrap()), "{err}");
    let err = GitKind::default()
        .resolve(
            &e.ctx,
            NewSource {
                location: None,
                ..new_source("git", "", None, None)
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    // An empty repository has no default branch to follow.
    let empty = e.root.join("empty");
    init_repo(&empty, "main");
    let err = resolve(&e.ctx, empty.to_str().unwrap(), None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("no commits"), "{err}");
}

#[tokio::test]
async fn unreachable_remotes_fail_within_the_timeout() {
    let mut e = env();
    e.ctx.network_timeout = Duration::from_secs(2);
    // Connection refused: a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("git://127.0.0.1:{port}/repo.git");
    let err = resolve(&e.ctx, &url, None, None).await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
    assert!(err.to_string().contains("cannot connect"), "{err}");
    // A server that accepts and never answers, and hangs up after a minute: were our
    // stall timer not to end the wait, the error would be the hang-up. The message names
    // the configured timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("git://{}/repo.git", silent.local_addr().unwrap());
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        drop(silent);
    });
    let err = resolve(&e.ctx, &url, None, None).await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
    assert!(
        err.to_string().contains("no answer or no progress for 2s"),
        "{err}"
    );
    // Nothing half-made is left where the mirror would be.
    let git_cache = e.ctx.cache_dir.join("git");
    let leftovers: Vec<_> = std::fs::read_dir(&git_cache)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers
            .iter()
            .all(|n| n.to_string_lossy().ends_with(".lock")
                || n.to_string_lossy().starts_with(".tmp-")),
        "{leftovers:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Secrets

/// Standard base64 with padding (RFC 4648), for expected headers.
#[cfg(feature = "https")]
fn base64(input: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn token_never_shows() {
    const CANARY: &str = "ghp_CanaryToken0123456789";
    let mut e = env();
    let mut secrets = Secrets::default();
    secrets
        .set(
            &e.root.join("secrets"),
            dtk_api::secrets::GITHUB_TOKEN,
            CANARY,
        )
        .unwrap();
    e.ctx.secrets = secrets;
    e.ctx.network_timeout = Duration::from_secs(3);
    let r = small_repo(&e.root);
    let spec = resolve(&e.ctx, r.dir.to_str().unwrap(), None, None)
        .await
        .unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    assert!(!json.contains(CANARY));
    let source = GitKind::default().open(&e.ctx, &spec).unwrap();
    assert!(!format!("{source:?}").contains(CANARY), "{source:?}");
    let direct = GitSource::new(&e.ctx, &spec);
    assert!(!format!("{direct:?}").contains(CANARY));
    assert!(!format!("{:?}", GitKind::default()).contains(CANARY));
    let fields = source.fields(None, &e.root).unwrap();
    assert!(!format!("{fields:?}").contains(CANARY));
    let mut errors = Vec::new();
    errors.push(
        resolve(&e.ctx, r.dir.to_str().unwrap(), Some("nope"), None)
            .await
            .unwrap_err(),
    );
    // The GitHub host here is a local HTTPS server: the token goes there, and the error of
    // a missing repository does not show it.
    #[cfg(feature = "https")]
    {
        let server = https_server();
        let ctx = e
            .ctx
            .clone()
            .with_setting("git", "github_url", server.base());
        let before = server.authorizations().len();
        errors.push(
            GitKind::default()
                .resolve(&ctx, new_source("github", "someone/private", None, None))
                .await
                .unwrap_err(),
        );
        let sent = server.authorizations()[before..].to_vec();
        let basic = format!("Basic {}", base64(&format!("x-access-token:{CANARY}")));
        assert!(
            sent.contains(&basic),
            "the token reached the GitHub host: {sent:?}"
        );
    }
    errors.push(
        resolve(
            &e.ctx,
            &format!("https://x-access-token:{CANARY}@127.0.0.1:1/a/b"),
            None,
            None,
        )
        .await
        .unwrap_err(),
    );
    for err in errors {
        let mut chain = format!("{err} {err:?}");
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(&err);
        while let Some(c) = cur {
            chain.push_str(&format!(" {c} {c:?}"));
            cur = c.source();
        }
        assert!(!chain.contains(CANARY), "{chain}");
    }
}

// ---------------------------------------------------------------------------------------
// latest, versions, fields

#[tokio::test]
async fn latest_sees_new_commits() {
    let e = env();
    let r = small_repo(&e.root);
    let source = open(&e.ctx, r.dir.to_str().unwrap(), None, None).await;
    let sub = open(&e.ctx, r.dir.to_str().unwrap(), None, Some("sub")).await;
    assert_eq!(source.latest().await.unwrap().version.hex(), r.commits[2]);
    assert_eq!(sub.latest().await.unwrap().version.hex(), r.commits[1]);
    write(&r.dir, "sub/a.txt", "a2\n");
    let c4 = commit(&r.dir, "four", Some(1_700_000_400));
    // versions() does not fetch.
    assert_eq!(
        source.versions().await.unwrap()[0].version.hex(),
        r.commits[2]
    );
    assert_eq!(source.latest().await.unwrap().version.hex(), c4);
    assert_eq!(sub.latest().await.unwrap().version.hex(), c4);
    assert_eq!(
        hexes(&source.versions().await.unwrap())[..2],
        [c4.clone(), r.commits[2].clone()]
    );
    assert_eq!(
        hexes(&sub.versions().await.unwrap()),
        [c4, r.commits[1].clone(), r.commits[0].clone()]
    );
    // A force-moved tag is followed too.
    git(&r.dir, &["tag", "-f", "light", &r.commits[1]]);
    let light = open(&e.ctx, r.dir.to_str().unwrap(), Some("light"), None).await;
    assert_eq!(light.latest().await.unwrap().version.hex(), r.commits[1]);
}

#[tokio::test]
async fn concurrent_fetches_of_one_mirror() {
    let e = env();
    let r = small_repo(&e.root);
    let loc = r.dir.to_str().unwrap().to_owned();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let ctx = e.ctx.clone();
        let loc = loc.clone();
        tasks.push(tokio::spawn(async move {
            let path = (i % 2 == 0).then_some("sub");
            let spec = GitKind::default()
                .resolve(&ctx, new_source("git", &loc, None, path))
                .await?;
            GitKind::default().open(&ctx, &spec)?.latest().await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let entries: Vec<_> = std::fs::read_dir(e.ctx.cache_dir.join("git"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries.len(), 2, "one mirror and its lock: {entries:?}");
}

#[tokio::test]
async fn stale_temporaries_are_removed_and_lost_mirrors_refetched() {
    let e = env();
    let r = small_repo(&e.root);
    let spec = resolve(&e.ctx, r.dir.to_str().unwrap(), None, None)
        .await
        .unwrap();
    let source = GitSource::new(&e.ctx, &spec);
    let mirror = source.mirror_dir().to_owned();
    let name = mirror.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::remove_dir_all(&mirror).unwrap();
    let stale = mirror.with_file_name(format!(".tmp-{name}-killed"));
    std::fs::create_dir_all(stale.join("mirror/objects")).unwrap();
    // versions() on a missing mirror fetches it once.
    assert_eq!(source.versions().await.unwrap().len(), 3);
    assert!(mirror.is_dir());
    assert!(!stale.exists());
}

#[tokio::test]
async fn ref_locks_left_by_a_killed_fetch_do_not_stop_the_next_ones() {
    let e = env();
    let r = small_repo(&e.root);
    let source = open(&e.ctx, r.dir.to_str().unwrap(), None, None).await;
    let first = source.latest().await.unwrap().version;
    // A fetch killed while moving the mirror's refs leaves their lock files; git and gix
    // then refuse to move those refs ("might need manual deletion").
    let mirror = GitSource::new(
        &e.ctx,
        &resolve(&e.ctx, r.dir.to_str().unwrap(), None, None)
            .await
            .unwrap(),
    )
    .mirror_dir()
    .to_owned();
    let locks = [
        "refs/heads/main.lock",
        "refs/tags/light.lock",
        "packed-refs.lock",
    ];
    for lock in locks {
        std::fs::write(
            mirror.join(lock),
            "0000000000000000000000000000000000000000\n",
        )
        .unwrap();
    }
    write(&r.dir, "README", "after the kill\n");
    let next = commit(&r.dir, "after", None);
    git(&r.dir, &["tag", "-f", "light"]);
    let latest = source.latest().await.unwrap().version;
    assert_ne!(latest, first);
    assert_eq!(latest, sha1(&next));
    for lock in locks {
        assert!(!mirror.join(lock).exists(), "{lock} is still there");
    }
    // The moved tag came through too.
    assert_eq!(git(&mirror, &["rev-parse", "refs/tags/light"]), next);
}

#[tokio::test]
async fn fields_name_root_commit_ref_and_url() {
    let e = env();
    let r = small_repo(&e.root);
    let source = open(&e.ctx, r.dir.to_str().unwrap(), Some("v1"), None).await;
    let v = source.latest().await.unwrap().version;
    let f = source.fields(Some(&v), Path::new("/some/root")).unwrap();
    assert_eq!(f["ROOT"], "/some/root");
    assert_eq!(f["COMMIT"], r.commits[1]);
    assert_eq!(f["REF"], "v1");
    assert_eq!(f["URL"], r.dir.display().to_string());
    let f = source.fields(None, Path::new("/r")).unwrap();
    assert!(!f.contains_key("COMMIT"));
}

// ---------------------------------------------------------------------------------------
// materialize

#[tokio::test]
async fn materialize_matches_git_archive() {
    let e = env();
    let r = small_repo(&e.root);
    let loc = r.dir.to_str().unwrap();
    let whole = open(&e.ctx, loc, None, None).await;
    let sub = open(&e.ctx, loc, None, Some("sub")).await;
    let file = open(&e.ctx, loc, None, Some("sub/run.sh")).await;
    for (i, c) in r.commits.iter().enumerate().skip(1) {
        let v = sha1(c);
        let scratch = e.root.join(format!("m{i}"));
        std::fs::create_dir_all(&scratch).unwrap();
        let got = whole.materialize(&v, &scratch).await.unwrap();
        assert_eq!(got, scratch);
        let expected = e.root.join(format!("a{i}"));
        git_archive(&r.dir, c, &expected);
        assert_same_tree(&got, &expected);

        let scratch = e.root.join(format!("s{i}"));
        std::fs::create_dir_all(&scratch).unwrap();
        let got = sub.materialize(&v, &scratch).await.unwrap();
        assert_same_tree(&got, &expected.join("sub"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(got.join("run.sh"))
                .unwrap()
                .permissions()
                .mode();
            assert_ne!(mode & 0o100, 0, "exec bit kept");
            assert_eq!(
                std::fs::read_link(got.join("link")).unwrap(),
                Path::new("a.txt")
            );
        }

        let scratch = e.root.join(format!("f{i}"));
        std::fs::create_dir_all(&scratch).unwrap();
        let got = file.materialize(&v, &scratch).await.unwrap();
        assert_eq!(got, scratch.join("run.sh"));
        assert_eq!(
            std::fs::read(&got).unwrap(),
            std::fs::read(expected.join("sub/run.sh")).unwrap()
        );
    }
}

#[tokio::test]
async fn materialize_rejects_foreign_and_unknown_commits() {
    let e = env();
    let r = small_repo(&e.root);
    let main = open(&e.ctx, r.dir.to_str().unwrap(), Some("main"), None).await;
    let scratch = e.root.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    // `dev` is in the mirror but not on main's history.
    let err = main.materialize(&sha1(&r.dev), &scratch).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains(&r.dev), "{err}");
    let bogus = "5a".repeat(20);
    let err = main.materialize(&sha1(&bogus), &scratch).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains(&bogus), "{err}");
    let md5: Version = format!("md5:{}", "ab".repeat(16)).parse().unwrap();
    assert!(main.materialize(&md5, &scratch).await.is_err());
    // A sub-path that did not exist yet at that commit.
    let run = open(&e.ctx, r.dir.to_str().unwrap(), None, Some("sub/run.sh")).await;
    let err = run
        .materialize(&sha1(&r.commits[0]), &scratch)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn materialize_fetches_commits_recorded_elsewhere() {
    let e = env();
    let r = small_repo(&e.root);
    let source = open(&e.ctx, r.dir.to_str().unwrap(), None, None).await;
    write(&r.dir, "new.txt", "new\n");
    let c4 = commit(&r.dir, "four", None);
    let scratch = e.root.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    source.materialize(&sha1(&c4), &scratch).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(scratch.join("new.txt")).unwrap(),
        "new\n"
    );
}

// ---------------------------------------------------------------------------------------
// Log order against git

/// Resolve `loc` (with `path`) and compare `versions()` with `git log --format=%H`.
async fn assert_log_matches(ctx: &Context, repo: &Path, branch: &str, path: Option<&str>) {
    // Built by hand rather than resolved: the path may not exist at the tip any more.
    let mut spec = SourceSpec::new(Name::new("log").unwrap(), "git", repo.display().to_string());
    spec.tag = Some(branch.to_owned());
    spec.path = path.map(str::to_owned);
    let source = GitKind::default().open(ctx, &spec).unwrap();
    let ours = hexes(&source.versions().await.unwrap());
    let mut args = vec!["log", "--format=%H", branch];
    if let Some(p) = path {
        args.extend(["--", p]);
    }
    let theirs = lines(&git(repo, &args));
    assert_eq!(ours, theirs, "git log {args:?}");
    match theirs.first() {
        Some(first) => assert_eq!(&source.latest().await.unwrap().version.hex(), first),
        None => assert!(matches!(source.latest().await, Err(Error::NotFound { .. }))),
    }
}

#[tokio::test]
async fn log_order_linear_with_equal_timestamps() {
    let e = env();
    let dir = e.root.join("linear");
    init_repo(&dir, "main");
    for i in 0..12 {
        write(&dir, if i % 3 == 0 { "sub/f" } else { "g" }, &i.to_string());
        // Groups of equal timestamps, one going back in time.
        let date = [100, 100, 100, 200, 200, 150, 300, 300, 300, 300, 250, 400][i];
        commit(&dir, &format!("c{i}"), Some(1_600_000_000 + date));
    }
    assert_log_matches(&e.ctx, &dir, "main", None).await;
    assert_log_matches(&e.ctx, &dir, "main", Some("sub")).await;
    assert_log_matches(&e.ctx, &dir, "main", Some("sub/f")).await;
    assert_log_matches(&e.ctx, &dir, "main", Some("g")).await;
}

#[tokio::test]
async fn log_order_merges_with_equal_timestamps() {
    let e = env();
    let dir = e.root.join("merges");
    init_repo(&dir, "main");
    let t = 1_600_000_000;
    write(&dir, "sub/a", "0");
    commit(&dir, "base", Some(t));
    // Three branches, every commit at the same second.
    for b in ["x", "y", "z"] {
        git(&dir, &["checkout", "-q", "-b", b, "main"]);
        for i in 0..3 {
            let file = match b {
                "x" => "top",
                "y" => "sub/b",
                _ => "zfile",
            };
            write(&dir, file, &format!("{b}{i}"));
            commit(&dir, &format!("{b}{i}"), Some(t + 10));
        }
    }
    git(&dir, &["checkout", "-q", "main"]);
    write(&dir, "main-only", "m");
    commit(&dir, "main1", Some(t + 10));
    for b in ["x", "y", "z"] {
        git_env(
            &dir,
            &["merge", "-q", "--no-ff", "-m", &format!("merge {b}"), b],
            Some(t + 10),
        );
    }
    // A merge that keeps the other side's version of sub/ (TREESAME to the second parent).
    git(&dir, &["checkout", "-q", "-b", "w", "main~3"]);
    write(&dir, "sub/a", "w");
    commit(&dir, "w1", Some(t + 5));
    git(&dir, &["checkout", "-q", "main"]);
    git_env(
        &dir,
        &[
            "merge", "-q", "--no-ff", "-X", "theirs", "-m", "merge w", "w",
        ],
        Some(t + 20),
    );
    // An octopus merge.
    for b in ["o1", "o2"] {
        git(&dir, &["checkout", "-q", "-b", b, "main~2"]);
        write(&dir, &format!("sub/{b}"), b);
        commit(&dir, b, Some(t + 20));
    }
    git(&dir, &["checkout", "-q", "main"]);
    git_env(
        &dir,
        &["merge", "-q", "--no-ff", "-m", "octopus", "o1", "o2"],
        Some(t + 20),
    );
    for path in [
        None,
        Some("sub"),
        Some("sub/a"),
        Some("sub/b"),
        Some("top"),
        Some("zfile"),
        Some("main-only"),
        Some("none"),
    ] {
        assert_log_matches(&e.ctx, &dir, "main", path).await;
    }
    assert_log_matches(&e.ctx, &dir, "x", None).await;
}

/// A deterministic pseudo-random generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random history written with `git fast-import`: forks, merges (some keeping the
/// other side's files), equal and backwards timestamps, files in and out of `sub/`.
fn random_history(dir: &Path, seed: u64, commits: usize) {
    const FILES: [&str; 5] = ["a", "sub/x", "sub/y", "sub/deep/z", "other/w"];
    let mut rng = Rng(seed);
    let mut stream = Vec::new();
    // Per commit mark: the files' contents.
    let mut states: Vec<BTreeMap<&str, String>> = vec![BTreeMap::new()];
    let mut heads: Vec<usize> = Vec::new();
    let mut time = 1_500_000_000u64;
    for mark in 1..=commits {
        time = match rng.below(4) {
            0 => time,
            1 => time.saturating_sub(rng.below(30)),
            _ => time + rng.below(20),
        };
        let mut parents = Vec::new();
        if !heads.is_empty() {
            let h = rng.below(heads.len() as u64) as usize;
            parents.push(heads[h]);
            if heads.len() > 1 && rng.below(3) == 0 {
                let mut o = rng.below(heads.len() as u64) as usize;
                if o == h {
                    o = (o + 1) % heads.len();
                }
                let merged = heads[o];
                parents.push(merged);
                heads.retain(|&x| x != merged);
            }
            // Fork: keep the old head as a branch of its own.
            if rng.below(5) != 0 {
                heads.retain(|&x| x != parents[0]);
            }
        }
        let base = parents
            .first()
            .map(|&p| states[p].clone())
            .unwrap_or_default();
        let mut state = base.clone();
        if let Some(&other) = parents.get(1) {
            for f in FILES {
                if rng.below(2) == 0 {
                    match states[other].get(f) {
                        Some(c) => state.insert(f, c.clone()),
                        None => state.remove(f),
                    };
                }
            }
        }
        for _ in 0..rng.below(3) {
            let f = FILES[rng.below(FILES.len() as u64) as usize];
            if rng.below(6) == 0 {
                state.remove(f);
            } else {
                state.insert(f, format!("{f} at {mark} {}\n", rng.below(3)));
            }
        }
        let msg = format!("c{mark}");
        write!(
            stream,
            "commit refs/heads/main\nmark :{mark}\nauthor A <a@x> {time} +0000\ncommitter C <c@x> {time} +0000\ndata {}\n{msg}\n",
            msg.len()
        )
        .unwrap();
        match parents.first() {
            Some(p) => writeln!(stream, "from :{p}").unwrap(),
            None => writeln!(stream, "from 0000000000000000000000000000000000000000").unwrap(),
        }
        for p in parents.iter().skip(1) {
            writeln!(stream, "merge :{p}").unwrap();
        }
        for f in FILES {
            match (base.get(f), state.get(f)) {
                (_, Some(c)) if base.get(f) != Some(c) => {
                    write!(stream, "M 100644 inline {f}\ndata {}\n{c}\n", c.len()).unwrap()
                }
                (Some(_), None) => writeln!(stream, "D {f}").unwrap(),
                _ => {}
            }
        }
        stream.push(b'\n');
        states.push(state);
        heads.push(mark);
    }
    // Merge every remaining head into the last commit, so everything is reachable.
    let last = commits;
    let others: Vec<usize> = heads.iter().copied().filter(|&h| h != last).collect();
    if !others.is_empty() {
        let mark = commits + 1;
        write!(
            stream,
            "commit refs/heads/main\nmark :{mark}\nauthor A <a@x> {time} +0000\ncommitter C <c@x> {time} +0000\ndata 3\nend\nfrom :{last}\n"
        )
        .unwrap();
        for h in others {
            writeln!(stream, "merge :{h}").unwrap();
        }
        stream.push(b'\n');
    }
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "--bare", "-b", "main"]);
    let mut child = Command::new("git")
        .current_dir(dir)
        .args(["fast-import", "--quiet", "--force"])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn log_order_random_histories() {
    let e = env();
    for seed in 1..=12u64 {
        let dir = e.root.join(format!("random{seed}"));
        random_history(&dir, seed * 7919, 150);
        for path in [
            None,
            Some("sub"),
            Some("sub/x"),
            Some("sub/deep"),
            Some("a"),
            Some("other/w"),
        ] {
            assert_log_matches(&e.ctx, &dir, "main", path).await;
        }
    }
}
