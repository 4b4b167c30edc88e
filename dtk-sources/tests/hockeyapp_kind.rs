//! The `hockeyapp` kind against a real local server speaking the HockeyApp API v2 shape
//! (`tests/py/http_fixture.py`).
#![cfg(feature = "hockeyapp")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use dtk_api::conformance::{check_all, Fixture};
use dtk_api::secrets::HOCKEYAPP_TOKEN;
use dtk_api::{Context, Error, Kind, Name, NewSource, Source, SourceSpec, Verification, Version};
use dtk_sources::hockeyapp::HockeyAppKind;
use serde_json::json;
use support::{closed_port, context, md5_hex, Server};

const APP: &str = "e63b4e58fd9d40e48e74f8f2e71c49a5";
const TOKEN: &str = "tok-c4nary-0123456789";

fn new_source(name: &str, location: &str) -> NewSource {
    NewSource {
        name: Name::new(name).unwrap(),
        kind: "hockeyapp".into(),
        location: Some(location.into()),
        tag: None,
        path: None,
    }
}

/// A server with the app and two builds (2245, then 2246, newest first).
fn server() -> Server {
    let s = Server::start();
    s.set_token(TOKEN);
    s.set_apps(json!([
        {"title": "Other", "public_identifier": "0123456789abcdef0123456789abcdef", "id": 1},
        {"title": "Docker", "public_identifier": APP, "id": 259320, "platform": "Mac OS"},
    ]));
    s.put_build_file(APP, "Docker-2245.dmg", b"dmg 2245");
    s.put_build_file(APP, "Docker-2246.dmg", b"dmg 2246 bytes");
    s.set_builds(
        APP,
        json!([
            {"id": 12, "version": "2246", "shortversion": "1.12.0", "timestamp": 1_500_000_200, "file": "Docker-2246.dmg"},
            {"id": 11, "version": "2245", "shortversion": "1.11.9", "timestamp": 1_500_000_100, "file": "Docker-2245.dmg"},
        ]),
    );
    s
}

fn ctx_for(server: &Server, dir: &std::path::Path, token: &str) -> Context {
    context(dir, &[(HOCKEYAPP_TOKEN, token)]).with_setting("hockeyapp", "url", server.base())
}

async fn add(ctx: &Context, name: &str, location: &str) -> Arc<dyn Source> {
    let spec = HockeyAppKind::new()
        .resolve(ctx, new_source(name, location))
        .await
        .unwrap();
    HockeyAppKind::new().open(ctx, &spec).unwrap()
}

fn md5v(content: &[u8]) -> Version {
    format!("md5:{}", md5_hex(content)).parse().unwrap()
}

/// How many times build files were downloaded.
fn build_downloads(server: &Server) -> usize {
    server
        .log()
        .iter()
        .filter(|l| l.contains("/app_versions/") && l.contains("format=zip"))
        .count()
}

#[tokio::test]
async fn resolve_finds_the_app() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx_for(&server, dir.path(), TOKEN);
    let kind = HockeyAppKind::new();

    let spec = kind
        .resolve(&ctx, new_source("dmg", &APP.to_ascii_uppercase()))
        .await
        .unwrap();
    assert_eq!(
        spec.location,
        format!("{}/manage/apps/259320", server.base())
    );
    assert_eq!(spec.kind, "hockeyapp");

    // A manage URL is a location too, and a fresh cache finds the App ID again.
    let other = tempfile::tempdir().unwrap();
    let ctx2 = ctx_for(&server, other.path(), TOKEN);
    let source = kind.open(&ctx2, &spec).unwrap();
    assert_eq!(
        source.latest().await.unwrap().version,
        md5v(b"dmg 2246 bytes")
    );
    let spec2 = kind
        .resolve(&ctx2, new_source("dmg2", &spec.location))
        .await
        .unwrap();
    assert_eq!(spec2.location, spec.location);

    // Without GET /api/2/apps the location stays the App ID.
    server.remove_apps();
    let spec = kind.resolve(&ctx, new_source("dmg", APP)).await.unwrap();
    assert_eq!(spec.location, APP);
    let source = kind.open(&ctx, &spec).unwrap();
    assert_eq!(
        source.latest().await.unwrap().version,
        md5v(b"dmg 2246 bytes")
    );

    // Bad input is quoted.
    let e = kind
        .resolve(&ctx, new_source("dmg", "not-an-app-id"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("\"not-an-app-id\""), "{e}");
    let missing = "ffffffffffffffffffffffffffffffff";
    let e = kind
        .resolve(&ctx, new_source("dmg", missing))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert!(e.to_string().contains(missing), "{e}");
    let mut tagged = new_source("dmg", APP);
    tagged.tag = Some("beta".into());
    assert!(kind.resolve(&ctx, tagged).await.is_err());
}

#[tokio::test]
async fn versions_are_builds_hashed_once() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx_for(&server, dir.path(), TOKEN);
    let source = add(&ctx, "dmg", APP).await;
    assert!(source.capabilities().history);

    let latest = source.latest().await.unwrap();
    assert_eq!(latest.version, md5v(b"dmg 2246 bytes"));
    assert_eq!(latest.extra["BUILD"], "2246");
    let versions = source.versions().await.unwrap();
    let got: Vec<(String, &str)> = versions
        .iter()
        .map(|v| (v.version.to_string(), v.extra["BUILD"].as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (md5v(b"dmg 2246 bytes").to_string(), "2246"),
            (md5v(b"dmg 2245").to_string(), "2245"),
        ]
    );
    // Each build's file was downloaded once; later polls only list.
    assert_eq!(build_downloads(&server), 2);
    assert_eq!(source.latest().await.unwrap().version, latest.version);
    let reopened = HockeyAppKind::new().open(&ctx, source.spec()).unwrap();
    assert_eq!(reopened.versions().await.unwrap(), versions);
    assert_eq!(reopened.latest().await.unwrap().version, latest.version);
    assert_eq!(build_downloads(&server), 2);
    // Every API request carried the token.
    assert!(
        server.log().iter().all(|l| l.ends_with("token-ok")),
        "{:?}",
        server.log()
    );

    // A new build: only it is downloaded.
    server.put_build_file(APP, "Docker-2247.dmg", b"dmg 2247");
    server.set_builds(
        APP,
        json!([
            {"id": 13, "version": "2247", "shortversion": "1.12.1", "timestamp": 1_500_000_300, "file": "Docker-2247.dmg"},
            {"id": 12, "version": "2246", "shortversion": "1.12.0", "timestamp": 1_500_000_200, "file": "Docker-2246.dmg"},
            {"id": 11, "version": "2245", "shortversion": "1.11.9", "timestamp": 1_500_000_100, "file": "Docker-2245.dmg"},
            {"id": 10, "version": "2244", "timestamp": 1_500_000_000, "file": "none", "no_url": true},
        ]),
    );
    let newer = source.latest().await.unwrap();
    assert_eq!(newer.version, md5v(b"dmg 2247"));
    assert_eq!(newer.extra["BUILD"], "2247");
    assert_eq!(build_downloads(&server), 3);
    assert_eq!(source.versions().await.unwrap().len(), 3);

    // Pagination.
    server.set("per_page", "1");
    server.clear_log();
    let fresh = tempfile::tempdir().unwrap();
    let paged = HockeyAppKind::new()
        .open(&ctx_for(&server, fresh.path(), TOKEN), source.spec())
        .unwrap();
    assert_eq!(paged.versions().await.unwrap().len(), 3);
    assert!(
        server.log().iter().any(|l| l.contains("page=3")),
        "{:?}",
        server.log()
    );
}

#[tokio::test]
async fn fields_materialize_verify() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx_for(&server, dir.path(), TOKEN);
    let source = add(&ctx, "dmg", APP).await;
    let latest = source.latest().await.unwrap().version;
    let old = md5v(b"dmg 2245");

    let scratch = dir.path().join("s");
    std::fs::create_dir_all(&scratch).unwrap();
    let root = source.materialize(&old, &scratch).await.unwrap();
    assert_eq!(root, scratch);
    assert_eq!(
        std::fs::read(root.join("Docker-2245.dmg")).unwrap(),
        b"dmg 2245"
    );
    let f = source.fields(Some(&old), &root).unwrap();
    assert_eq!(f["BUILD"], "2245");
    assert_eq!(f["VERSION"], "1.11.9");
    assert_eq!(f["ROOT"], root.to_str().unwrap());
    assert_eq!(f["FILE"], root.join("Docker-2245.dmg").to_str().unwrap());
    assert_eq!(
        f["URL"],
        format!("{}/manage/apps/259320/app_versions/11", server.base())
    );
    assert_eq!(
        source.fields(Some(&latest), &root).unwrap()["BUILD"],
        "2246"
    );

    assert_eq!(
        source.verify(&latest).await.unwrap(),
        Verification::Verified
    );
    // The file of build 2246 changes behind the service's back (same size).
    server.put_build_file(APP, "Docker-2246.dmg", b"dmg 2246 BYTES");
    match source.verify(&latest).await.unwrap() {
        Verification::Mismatch { expected, found } => {
            assert_eq!(expected, latest);
            assert_eq!(found, md5v(b"dmg 2246 BYTES"));
        }
        other => panic!("{other:?}"),
    }
    let s2 = dir.path().join("s2");
    std::fs::create_dir_all(&s2).unwrap();
    let e = source.materialize(&latest, &s2).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert!(
        e.to_string().contains(&latest.to_string()) && e.to_string().contains("2246"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(&s2).unwrap().count(), 0, "nothing left");
    // The changed build is hashed again at the next poll.
    assert_eq!(
        source.latest().await.unwrap().version,
        md5v(b"dmg 2246 BYTES")
    );

    let unknown: Version = format!("md5:{}", "5a".repeat(16)).parse().unwrap();
    assert!(matches!(
        source.verify(&unknown).await.unwrap(),
        Verification::Unavailable(_)
    ));
}

#[tokio::test]
async fn conformance() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx_for(&server, dir.path(), TOKEN);
    let source = add(&ctx, "dmg", APP).await;
    let scratch = dir.path().join("fixture");
    std::fs::create_dir_all(&scratch).unwrap();
    let publish = dir.path().join("publish");
    std::fs::create_dir_all(&publish).unwrap();
    std::fs::write(publish.join("Docker-2247.dmg"), b"dmg 2247, published").unwrap();
    check_all(&*source, &Fixture::new(&scratch).with_publish_dir(&publish))
        .await
        .unwrap();
}

#[tokio::test]
async fn publish_uploads_a_build_and_its_number_comes_back() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx_for(&server, dir.path(), TOKEN);
    let source = add(&ctx, "dmg", APP).await;
    let before = source.latest().await.unwrap().version;
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("Docker-2247.dmg"), b"dmg 2247").unwrap();
    std::fs::write(out.join("notes.md"), "Fixed *everything*.").unwrap();
    let options = dtk_api::PublishOptions::new().expecting(Some(before.clone()));
    let v = source.publish_with(&out, &options).await.unwrap();
    assert_eq!(v.version, md5v(b"dmg 2247"));
    assert_eq!(v.extra["BUILD"], "2247", "the number the service gave");
    // Through the documented endpoint, with the token, the file and the notes.
    let log = server.log();
    assert!(
        log.iter().any(|l| l.starts_with(&format!(
            "POST /api/2/apps/{APP}/app_versions/upload 201 token-ok"
        ))),
        "{log:?}"
    );
    let builds: serde_json::Value = serde_json::from_slice(
        &std::fs::read(server.root().join(format!("hockeyapp/{APP}/builds.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(builds[0]["version"], "2247");
    assert_eq!(builds[0]["notes"], "Fixed *everything*.");
    assert_eq!(builds[0]["notes_type"], "1");
    assert_eq!(
        std::fs::read(
            server
                .root()
                .join(format!("hockeyapp/{APP}/files/Docker-2247.dmg"))
        )
        .unwrap(),
        b"dmg 2247"
    );
    // Another build arrives behind dtk's back: publishing on the old version is refused.
    server.put_build_file(APP, "Docker-2248.dmg", b"dmg 2248");
    let mut list = builds.as_array().unwrap().clone();
    list.insert(0, json!({"id": 99, "version": "2248", "timestamp": 4_000_000_000_u64, "file": "Docker-2248.dmg"}));
    server.set_builds(APP, serde_json::Value::Array(list));
    std::fs::remove_file(out.join("notes.md")).unwrap();
    std::fs::write(out.join("Docker-2247.dmg"), b"dmg 2247").unwrap();
    let options = dtk_api::PublishOptions::new().expecting(Some(v.version.clone()));
    let err = source.publish_with(&out, &options).await.unwrap_err();
    assert!(matches!(err, Error::OutputMoved { .. }), "{err}");
    assert_eq!(source.latest().await.unwrap().version, md5v(b"dmg 2248"));
    // What is not one build file is refused, quoting the directory.
    std::fs::write(out.join("other.dmg"), b"x").unwrap();
    let err = source.publish(&out).await.unwrap_err().to_string();
    assert!(err.contains("2 files"), "{err}");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = source.publish(&empty).await.unwrap_err().to_string();
    assert!(err.contains("no build file"), "{err}");
}

#[tokio::test]
async fn a_busy_service_is_waited_out_and_a_trickle_aborts() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = ctx_for(&server, dir.path(), TOKEN);
    ctx.network_timeout = Duration::from_secs(2);
    let source = add(&ctx, "dmg", APP).await;
    let latest = source.latest().await.unwrap().version;

    // 503 or 429 with Retry-After: waited out (the fixture logs a request that comes back
    // too early as "early"), then answered.
    for status in ["503", "429"] {
        server.clear_log();
        server.set("busy", &format!("1 1 {status}"));
        assert_eq!(source.latest().await.unwrap().version, latest);
        let statuses: Vec<String> = server
            .log()
            .iter()
            .map(|l| l.split(' ').nth(2).unwrap().to_owned())
            .collect();
        assert_eq!(statuses[..2], [status, "200"], "{statuses:?}");
        assert!(!statuses.contains(&"early".to_owned()), "{statuses:?}");
    }
    // Busy for longer than we wait: the status is the error.
    server.set("busy", "5 0 503");
    let e = source.latest().await.unwrap_err();
    assert!(e.to_string().contains("503"), "{e}");
    server.clear("busy");

    // Answers that trickle a byte every half second pass every read timeout: the
    // low-speed limit ends them, the API's JSON as well as a build's file (were it not
    // to, the answers would all arrive, minutes later, and the polls succeed).
    server.set("trickle", "0.5");
    let e = source.latest().await.unwrap_err();
    assert!(matches!(e, Error::Backend { .. }), "{e}");
    assert!(e.to_string().contains("too slow"), "{e}");
    let fresh = tempfile::tempdir().unwrap();
    let fsource = HockeyAppKind::new()
        .open(&ctx_for(&server, fresh.path(), TOKEN), source.spec())
        .unwrap();
    let e = fsource.latest().await.unwrap_err();
    assert!(e.to_string().contains("too slow"), "{e}");
    server.clear("trickle");
}

#[tokio::test]
async fn failures_are_clear_bounded_and_never_show_the_token() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = ctx_for(&server, dir.path(), TOKEN);
    ctx.network_timeout = Duration::from_secs(2);
    let source = add(&ctx, "dmg", APP).await;
    let latest = source.latest().await.unwrap().version;
    let mut errors = Vec::new();
    let check = |e: &Error, errors: &mut Vec<String>| {
        let s = format!("{e} {e:?}");
        assert!(!s.contains(TOKEN), "token leaked: {s}");
        errors.push(e.to_string());
    };
    assert!(!format!("{source:?}").contains(TOKEN));

    // A wrong token.
    let bad = tempfile::tempdir().unwrap();
    let wrong = "wrong-c4nary-token";
    let bctx = ctx_for(&server, bad.path(), wrong);
    let e = HockeyAppKind::new()
        .resolve(&bctx, new_source("dmg", APP))
        .await
        .unwrap_err();
    check(&e, &mut errors);
    let msg = e.to_string();
    assert!(
        msg.contains("unauthorized") && msg.contains("\"dmg\""),
        "{msg}"
    );
    assert!(!msg.contains(wrong), "{msg}");
    let reopened = HockeyAppKind::new().open(&bctx, source.spec()).unwrap();
    assert!(!format!("{reopened:?}").contains(wrong));
    let e = reopened.latest().await.unwrap_err();
    check(&e, &mut errors);
    assert!(e.to_string().contains("unauthorized"), "{e}");
    // No token at all.
    let none = tempfile::tempdir().unwrap();
    let nctx = context(none.path(), &[]).with_setting("hockeyapp", "url", server.base());
    let e = HockeyAppKind::new()
        .open(&nctx, source.spec())
        .unwrap()
        .latest()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unauthorized"), "{e}");

    // Unreachable service.
    let gone = ctx_for(&server, dir.path(), TOKEN).with_setting(
        "hockeyapp",
        "url",
        format!("http://127.0.0.1:{}", closed_port()),
    );
    let e = HockeyAppKind::new()
        .resolve(&gone, new_source("dmg", APP))
        .await
        .unwrap_err();
    check(&e, &mut errors);
    assert!(e.to_string().contains("cannot connect"), "{e}");

    // Garbage JSON.
    server.set("garbage", "");
    let e = source.latest().await.unwrap_err();
    check(&e, &mut errors);
    assert!(e.to_string().contains("not JSON"), "{e}");
    server.clear("garbage");

    // An HTML page instead of a build.
    let fresh = tempfile::tempdir().unwrap();
    let fctx = ctx_for(&server, fresh.path(), TOKEN);
    let fsource = HockeyAppKind::new().open(&fctx, source.spec()).unwrap();
    server.set("html", "");
    let e = fsource.latest().await.unwrap_err();
    check(&e, &mut errors);
    assert!(e.to_string().contains("HTML"), "{e}");
    server.clear("html");

    // A truncated build download: an error, nothing half-written.
    server.set("truncate", "");
    let e = fsource.latest().await.unwrap_err();
    check(&e, &mut errors);
    let scratch = dir.path().join("s");
    std::fs::create_dir_all(&scratch).unwrap();
    let e = source.materialize(&latest, &scratch).await.unwrap_err();
    check(&e, &mut errors);
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    let leftovers: Vec<_> = std::fs::read_dir(fresh.path().join(".dkt/cache/hockeyapp"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    server.clear("truncate");

    // A stalled service: our timeout ends the request (were it not to, the service would
    // answer after 20 s and the poll would succeed).
    server.set("stall", "20");
    let e = source.latest().await.unwrap_err();
    check(&e, &mut errors);
    assert!(e.to_string().contains("timed out"), "{e}");
    server.clear("stall");

    // A deleted app.
    let spec = SourceSpec::new(
        Name::new("old").unwrap(),
        "hockeyapp",
        "ffffffffffffffffffffffffffffffff",
    );
    let e = HockeyAppKind::new()
        .open(&ctx, &spec)
        .unwrap()
        .latest()
        .await
        .unwrap_err();
    check(&e, &mut errors);
    assert!(matches!(e, Error::NotFound { .. }), "{e}");

    assert!(errors.iter().all(|e| !e.contains(TOKEN)), "{errors:?}");
    // The token never reached the request log either (the fixture logs only whether it
    // matched) and no cache file holds it.
    let cache = std::fs::read_dir(dir.path().join(".dkt/cache/hockeyapp")).unwrap();
    for f in cache.flatten() {
        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
        assert!(!text.contains(TOKEN), "{}", f.path().display());
    }
}
