//! The `http` kind against a real local server (`tests/py/http_fixture.py`).
#![cfg(feature = "http")]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dtk_api::conformance::{check_all, Fixture};
use dtk_api::{Context, Error, Kind, Name, NewSource, Source, SourceSpec, Verification, Version};
use dtk_sources::http::{HttpKind, HttpSource};
use support::{closed_port, context, sha256_hex, Server};

fn new_source(name: &str, location: &str) -> NewSource {
    NewSource {
        name: Name::new(name).unwrap(),
        kind: "http".into(),
        location: Some(location.into()),
        tag: None,
        path: None,
    }
}

async fn add(ctx: &Context, name: &str, url: &str) -> Arc<dyn Source> {
    let spec = HttpKind::new()
        .resolve(ctx, new_source(name, url))
        .await
        .unwrap();
    HttpKind::new().open(ctx, &spec).unwrap()
}

fn version(content: &[u8]) -> Version {
    format!("sha256:{}", sha256_hex(content)).parse().unwrap()
}

/// Requests for `path` in the log, with their statuses.
fn requests(server: &Server, path: &str) -> Vec<String> {
    server
        .log()
        .into_iter()
        .filter(|l| l.split(' ').nth(1) == Some(path))
        .map(|l| l.split(' ').nth(2).unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn resolve_checks_the_location() {
    let server = Server::start();
    server.put_file("x.tar.gz", b"tarball v1");
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), &[]);
    let kind = HttpKind::new();

    let e = kind
        .resolve(&ctx, new_source("t", "ftp://example.com/x.tar.gz"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("ftp://example.com/x.tar.gz"), "{e}");

    let e = kind
        .resolve(&ctx, new_source("t", "not a url"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("\"not a url\""), "{e}");

    let e = kind
        .resolve(&ctx, new_source("t", "https://me:s3cr3t-pw@example.com/x"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    assert!(!e.to_string().contains("s3cr3t-pw"), "{e}");
    // A token as the user name (`https://TOKEN@host/...`) is refused the same way.
    let e = kind
        .resolve(&ctx, new_source("t", "https://tok3n-as-user@example.com/x"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    assert!(!e.to_string().contains("tok3n-as-user"), "{e}");

    let mut tagged = new_source("t", &server.url("/x.tar.gz"));
    tagged.tag = Some("v1".into());
    let e = kind.resolve(&ctx, tagged).await.unwrap_err();
    assert!(e.to_string().contains("v1"), "{e}");

    let e = kind
        .resolve(&ctx, new_source("t", &server.url("/missing.tgz")))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Backend { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("not found") && msg.contains("/missing.tgz") && msg.contains("\"t\""),
        "{msg}"
    );

    let spec = kind
        .resolve(&ctx, new_source("t", &server.url("/x.tar.gz#frag")))
        .await
        .unwrap();
    assert_eq!(spec.location, server.url("/x.tar.gz"));
    assert_eq!(spec.kind, "http");
}

#[tokio::test]
async fn latest_is_the_content_and_conditional_get_skips_downloads() {
    let server = Server::start();
    server.put_file("x.tar.gz", b"tarball v1");
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), &[]);
    let source = add(&ctx, "tarball", &server.url("/x.tar.gz")).await;
    assert_eq!(requests(&server, "/x.tar.gz"), ["200"]);

    let a = source.latest().await.unwrap();
    let b = source.latest().await.unwrap();
    assert_eq!(a.version, version(b"tarball v1"));
    assert_eq!(a.version, b.version);
    assert_eq!(a.extra["SIZE"], "10");
    // Both polls were answered 304: nothing downloaded again.
    assert_eq!(requests(&server, "/x.tar.gz"), ["200", "304", "304"]);

    // A new process (a new source object on the same cache) also polls conditionally.
    let again = HttpKind::new().open(&ctx, source.spec()).unwrap();
    assert_eq!(again.latest().await.unwrap().version, a.version);
    assert_eq!(requests(&server, "/x.tar.gz").last().unwrap(), "304");

    server.put_file("x.tar.gz", b"tarball v2, longer");
    let c = source.latest().await.unwrap();
    assert_eq!(c.version, version(b"tarball v2, longer"));
    assert_eq!(requests(&server, "/x.tar.gz").last().unwrap(), "200");

    // Without validators every poll downloads, and the version still follows the content.
    server.set("no-validators", "");
    server.clear_log();
    assert_eq!(source.latest().await.unwrap().version, c.version);
    assert_eq!(source.latest().await.unwrap().version, c.version);
    assert_eq!(requests(&server, "/x.tar.gz"), ["200", "200"]);
}

#[tokio::test]
async fn fields_materialize_and_verify() {
    let server = Server::start();
    server.put_file("dir/x-1.2.tar.gz", b"release 1.2");
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), &[]);
    let url = server.url("/dir/x-1.2.tar.gz");
    let source = add(&ctx, "tarball", &url).await;
    let v1 = source.latest().await.unwrap().version;

    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let root = source.materialize(&v1, &scratch).await.unwrap();
    assert_eq!(root, scratch);
    assert_eq!(
        std::fs::read(root.join("x-1.2.tar.gz")).unwrap(),
        b"release 1.2"
    );
    let fields = source.fields(Some(&v1), &root).unwrap();
    assert_eq!(fields["ROOT"], root.to_str().unwrap());
    assert_eq!(fields["FILE"], root.join("x-1.2.tar.gz").to_str().unwrap());
    assert_eq!(fields["URL"], url);
    assert!(fields["ETAG"].starts_with('"'), "{fields:?}");
    assert!(fields["LAST_MODIFIED"].ends_with("GMT"), "{fields:?}");

    assert_eq!(source.verify(&v1).await.unwrap(), Verification::Verified);

    // The content changes on the server: the cached copy still has v1, without a request.
    server.put_file("dir/x-1.2.tar.gz", b"release 1.2, rebuilt");
    server.clear_log();
    let s2 = dir.path().join("scratch2");
    std::fs::create_dir_all(&s2).unwrap();
    source.materialize(&v1, &s2).await.unwrap();
    assert_eq!(
        std::fs::read(s2.join("x-1.2.tar.gz")).unwrap(),
        b"release 1.2"
    );
    assert!(server.log().is_empty(), "{:?}", server.log());
    assert!(matches!(
        source.verify(&v1).await.unwrap(),
        Verification::Unavailable(_)
    ));

    // Once polled, only the new content is kept: v1 is not found, naming the version.
    let v2 = source.latest().await.unwrap().version;
    assert_ne!(v1, v2);
    let s3 = dir.path().join("scratch3");
    std::fs::create_dir_all(&s3).unwrap();
    let e = source.materialize(&v1, &s3).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert!(e.to_string().contains(&v1.to_string()), "{e}");
    assert!(e.to_string().contains(v2.hex()), "{e}");
    assert_eq!(
        std::fs::read_dir(&s3).unwrap().count(),
        0,
        "nothing written"
    );
    source.materialize(&v2, &s3).await.unwrap();
    assert_eq!(
        std::fs::read(s3.join("x-1.2.tar.gz")).unwrap(),
        b"release 1.2, rebuilt"
    );

    // A corrupt cached copy is noticed and replaced by a download.
    let cache = HttpSource::new(&ctx, source.spec()).unwrap();
    std::fs::write(cache.cache_dir().join(v2.hex()), b"bit rot").unwrap();
    let s4 = dir.path().join("scratch4");
    std::fs::create_dir_all(&s4).unwrap();
    source.materialize(&v2, &s4).await.unwrap();
    assert_eq!(
        std::fs::read(s4.join("x-1.2.tar.gz")).unwrap(),
        b"release 1.2, rebuilt"
    );

    // The same strong ETag with other bytes is tampering.
    server.set("etag", "\"fixed\"");
    let v3 = source.latest().await.unwrap().version;
    assert_eq!(v3, v2);
    server.put_file("dir/x-1.2.tar.gz", b"tampered!");
    match source.verify(&v3).await.unwrap() {
        Verification::Mismatch { expected, found } => {
            assert_eq!(expected, v3);
            assert_eq!(found, version(b"tampered!"));
        }
        other => panic!("{other:?}"),
    }
    // Read-only, and the error says so.
    let err = source.publish(dir.path()).await.unwrap_err();
    assert!(matches!(err, Error::NotSupported { .. }));
    assert_eq!(
        err.to_string(),
        "source kind \"http\" does not support publish"
    );
    let err = source
        .publish_with(dir.path(), &dtk_api::PublishOptions::new().expecting(None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotSupported { .. }), "{err}");
    assert!(matches!(
        source.versions().await.unwrap_err(),
        Error::NotSupported { .. }
    ));
    source.remove().await.unwrap();
    assert!(!cache.cache_dir().exists());
}

#[tokio::test]
async fn conformance() {
    let server = Server::start();
    server.put_file("x.zip", b"zip bytes");
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), &[]);
    let source = add(&ctx, "z", &server.url("/x.zip")).await;
    let scratch = dir.path().join("fixture");
    std::fs::create_dir_all(&scratch).unwrap();
    check_all(&*source, &Fixture::new(&scratch)).await.unwrap();
}

fn no_partial_files(dir: &Path) {
    let cache = dir.join(".dkt/cache/http");
    let mut bad = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&cache) {
        for d in rd.flatten() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                let n = f.file_name().to_string_lossy().into_owned();
                if n.starts_with('.') {
                    bad.push(n);
                }
            }
        }
    }
    assert!(bad.is_empty(), "left behind: {bad:?}");
}

#[tokio::test]
async fn failures_are_clear_bounded_and_leave_nothing() {
    let server = Server::start();
    server.put_file("x.tar.gz", b"0123456789abcdef");
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = context(dir.path(), &[]);
    ctx.network_timeout = Duration::from_secs(2);
    let source = add(&ctx, "tarball", &server.url("/x.tar.gz")).await;
    let v = source.latest().await.unwrap().version;

    // Unreachable.
    let spec = SourceSpec::new(
        Name::new("gone").unwrap(),
        "http",
        format!("http://127.0.0.1:{}/x.tar.gz", closed_port()),
    );
    let gone = HttpKind::new().open(&ctx, &spec).unwrap();
    let e = gone.latest().await.unwrap_err().to_string();
    assert!(
        e.contains("cannot connect") && e.contains("\"gone\""),
        "{e}"
    );

    // Refused credentials.
    server.set("status", "403");
    let e = source.latest().await.unwrap_err().to_string();
    assert!(
        e.contains("unauthorized") && e.contains("\"tarball\""),
        "{e}"
    );
    server.set("status", "500");
    let e = source.latest().await.unwrap_err().to_string();
    assert!(e.contains("500"), "{e}");
    server.clear("status");

    // Truncated download (the server announces more than it sends): an error, and no
    // partial file, in the cache or in the scratch directory.
    server.set("no-validators", "");
    server.set("truncate", "");
    let e = source.latest().await.unwrap_err().to_string();
    assert!(e.contains("truncated download"), "{e}");
    no_partial_files(dir.path());
    server.put_file("x.tar.gz", b"new content that is not cached");
    let scratch = dir.path().join("s");
    std::fs::create_dir_all(&scratch).unwrap();
    let other: Version = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
    assert!(source.materialize(&other, &scratch).await.is_err());
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    no_partial_files(dir.path());
    server.clear("truncate");

    // A stalled server: our timeout ends the request (were it not to, the server would
    // answer after 20 s and the poll would succeed).
    server.set("stall", "20");
    let e = source.latest().await.unwrap_err().to_string();
    assert!(e.contains("timed out"), "{e}");
    server.clear("stall");

    // The cached version is still there and still materializes.
    let ok = dir.path().join("ok");
    std::fs::create_dir_all(&ok).unwrap();
    source.materialize(&v, &ok).await.unwrap();
    assert_eq!(
        std::fs::read(ok.join("x.tar.gz")).unwrap(),
        b"0123456789abcdef"
    );
}

#[tokio::test]
async fn debug_shows_no_query() {
    let server = Server::start();
    server.put_file("x.bin", b"x");
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), &[]);
    let source = add(&ctx, "signed", &server.url("/x.bin?signature=c4nary")).await;
    assert!(!format!("{source:?}").contains("c4nary"));
    server.set("status", "401");
    let e = source.latest().await.unwrap_err().to_string();
    assert!(e.contains("unauthorized") && !e.contains("c4nary"), "{e}");
}

#[tokio::test]
async fn busy_servers_are_waited_out_and_trickles_abort() {
    let server = Server::start();
    server.put_file("x.bin", b"0123456789abcdef");
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = context(dir.path(), &[]);
    ctx.network_timeout = Duration::from_secs(2);
    let source = add(&ctx, "nightly", &server.url("/x.bin")).await;
    server.set("no-validators", "");

    // 429 or 503 with Retry-After: waited out (the server logs a request that comes back
    // too early as "early"), then the request goes through.
    for (status, content) in [("429", &b"a new build"[..]), ("503", b"another build")] {
        server.clear_log();
        server.put_file("x.bin", content);
        server.set("busy", &format!("1 1 {status}"));
        let v = source.latest().await.unwrap().version;
        assert_eq!(v, version(content));
        assert_eq!(requests(&server, "/x.bin"), [status, "200"]);
    }

    // Busy for longer than we retry: the 429 is the error, clearly.
    server.set("busy", "5 0");
    let e = source.latest().await.unwrap_err().to_string();
    assert!(e.contains("429") && e.contains("\"nightly\""), "{e}");
    server.clear("busy");

    // A server that trickles a byte every half second passes every read timeout; the
    // low-speed limit ends the download (were it not to, the whole 64 bytes would arrive
    // after 32 s and the poll would succeed).
    server.put_file("x.bin", &[7u8; 64]);
    server.set("trickle", "0.5");
    let e = source.latest().await.unwrap_err().to_string();
    assert!(e.contains("too slow") && e.contains("\"nightly\""), "{e}");
    server.clear("trickle");
    no_partial_files(dir.path());
}
