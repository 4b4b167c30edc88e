//! The `s3` kind against a real S3-compatible server (`moto_server` on loopback, see
//! `tests/moto/mod.rs`), and against tiny loopback servers that misbehave.

mod moto;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use dtk_api::conformance::{check_all, Fixture};
use dtk_api::secrets::{AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY};
use dtk_api::{
    Context, Error, Kind, Name, NewSource, Secrets, Source, SourceSpec, Verification, Version,
};
use dtk_sources::s3::{S3Kind, CONTENT_DIR};
use moto::{free_port, Moto};

const SECRET_KEY: &str = "canary-secret-key-0123456789";

struct Env {
    _dir: tempfile::TempDir,
    ctx: Context,
    root: std::path::PathBuf,
}

/// A context pointing at `endpoint`, with credentials in the secrets.
fn env(endpoint: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let dkt = dir.path().join(".dkt");
    let mut secrets = Secrets::default();
    secrets
        .set(
            &dkt.join("secrets"),
            AWS_ACCESS_KEY_ID,
            "AKIATESTKEYID0000000",
        )
        .unwrap();
    secrets
        .set(&dkt.join("secrets"), AWS_SECRET_ACCESS_KEY, SECRET_KEY)
        .unwrap();
    let mut ctx = Context::new(&dkt, secrets)
        .with_setting("s3", "endpoint", endpoint)
        .with_setting("s3", "allow_http", "true")
        .with_setting("s3", "region", "us-east-1");
    ctx.network_timeout = Duration::from_secs(5);
    ctx.cwd = dir.path().to_owned();
    let root = dir.path().to_owned();
    Env {
        _dir: dir,
        ctx,
        root,
    }
}

fn new(name: &str, location: &str, path: Option<&str>) -> NewSource {
    NewSource {
        name: Name::new(name).unwrap(),
        kind: "s3".to_owned(),
        location: Some(location.to_owned()),
        tag: None,
        path: path.map(str::to_owned),
    }
}

async fn open(e: &Env, location: &str, path: Option<&str>) -> std::sync::Arc<dyn Source> {
    let spec = S3Kind::new()
        .resolve(&e.ctx, new("data", location, path))
        .await
        .unwrap();
    S3Kind::new().open(&e.ctx, &spec).unwrap()
}

async fn latest(s: &dyn Source) -> Version {
    s.latest().await.unwrap().version
}

fn read_tree(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for de in std::fs::read_dir(&d).unwrap() {
            let p = de.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn write(dir: &Path, rel: &str, content: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

#[tokio::test]
async fn resolve_forms_and_bad_locations() {
    let m = Moto::start();
    m.create_bucket("bkt");
    let e = env(&m.endpoint);
    let kind = S3Kind::new();
    assert_eq!(kind.infer("s3://bkt/x"), Some(50));
    assert_eq!(kind.infer("bkt"), None);
    assert_eq!(kind.infer("./bkt"), None);

    let spec = kind.resolve(&e.ctx, new("a", "bkt", None)).await.unwrap();
    assert_eq!(spec.location, "s3://bkt");
    assert_eq!(spec.path, None);
    let spec = kind
        .resolve(&e.ctx, new("a", "s3://bkt//in/./x/", None))
        .await
        .unwrap();
    assert_eq!(spec.location, "s3://bkt/in/x");
    let spec = kind
        .resolve(&e.ctx, new("a", "s3://bkt/in", Some("sub/dir")))
        .await
        .unwrap();
    assert_eq!(
        (spec.location.as_str(), spec.path.as_deref()),
        ("s3://bkt/in", Some("sub/dir"))
    );
    let source = kind.open(&e.ctx, &spec).unwrap();
    let f = source.fields(None, Path::new("/r")).unwrap();
    assert_eq!(f["URL"], "s3://bkt/in/sub/dir");
    assert_eq!(f["PREFIX"], "in/sub/dir");

    // Bad input, quoted.
    for (loc, path) in [
        ("Bad_Bucket", None),
        ("s3://bkt/../x", None),
        ("https://bkt/x", None),
        ("s3://bkt", Some("../up")),
    ] {
        let err = kind.resolve(&e.ctx, new("a", loc, path)).await.unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{loc}: {err}");
        let quoted = format!("{:?}", path.unwrap_or(loc));
        assert!(err.to_string().contains(&quoted), "{err}");
    }
    let mut tagged = new("a", "s3://bkt", None);
    tagged.tag = Some("v1".into());
    assert!(kind.resolve(&e.ctx, tagged).await.is_err());

    // A missing bucket is a clear NotFound; an empty prefix of an existing one is fine.
    let err = kind
        .resolve(&e.ctx, new("a", "s3://no-such-bucket/x", None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-bucket") && msg.contains("NoSuchBucket"),
        "{msg}"
    );
    kind.resolve(&e.ctx, new("a", "s3://bkt/empty/prefix", None))
        .await
        .unwrap();

    // Plain HTTP needs allow_http.
    let ctx = e.ctx.clone().with_setting("s3", "allow_http", "false");
    let err = kind
        .resolve(&ctx, new("a", "s3://bkt", None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("allow_http"), "{err}");
}

#[tokio::test]
async fn versions_follow_every_change_below_the_prefix_only() {
    let m = Moto::start();
    m.create_bucket("bkt");
    let e = env(&m.endpoint);
    let s = open(&e, "s3://bkt/in", None).await;
    let empty = latest(&*s).await;
    assert_eq!(empty, latest(&*s).await);
    // The documented encoding of an empty listing.
    let header = md5_hex(b"dtk-s3-listing v1\n");
    assert_eq!(empty.to_string(), format!("md5:{header}"));

    m.put("bkt", "in/a.txt", b"hello");
    let v1 = latest(&*s).await;
    assert_ne!(v1, empty);
    let expected =
        md5_hex(format!("dtk-s3-listing v1\na.txt\x005\x00{}\n", md5_hex(b"hello")).as_bytes());
    assert_eq!(v1.to_string(), format!("md5:{expected}"));

    // Outside the prefix, or a sibling sharing its first letters: no change.
    m.put("bkt", "out/x", b"x");
    m.put("bkt", "inbox/x", b"x");
    m.put("bkt", "in.txt", b"x");
    assert_eq!(latest(&*s).await, v1);

    m.put("bkt", "in/d/b.txt", b"b");
    let v2 = latest(&*s).await;
    assert_ne!(v2, v1);
    // Same size, other content.
    m.put("bkt", "in/a.txt", b"HELLO");
    let v3 = latest(&*s).await;
    assert_ne!(v3, v2);
    m.delete("bkt", "in/d/b.txt");
    let v4 = latest(&*s).await;
    assert!(![v1.clone(), v2, v3].contains(&v4));
    // Back to the first content: the first version again.
    m.put("bkt", "in/a.txt", b"hello");
    assert_eq!(latest(&*s).await, v1);
    assert!(matches!(
        s.versions().await.unwrap_err(),
        Error::NotSupported { .. }
    ));

    // -p narrows the prefix.
    let sub = open(&e, "s3://bkt", Some("in/d")).await;
    assert_eq!(latest(&*sub).await, empty);
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn fields_materialize_and_stale_versions() {
    let m = Moto::start();
    m.create_bucket("bkt");
    m.put("bkt", "in/a.txt", b"a");
    m.put("bkt", "in/d/e/b.txt", b"bb");
    m.put("bkt", "in/folder/", b"");
    let e = env(&m.endpoint);
    let s = open(&e, "s3://bkt/in", None).await;
    let v = latest(&*s).await;

    let scratch = tempfile::tempdir().unwrap();
    let root = s.materialize(&v, scratch.path()).await.unwrap();
    assert_eq!(root, scratch.path().join(CONTENT_DIR));
    assert_eq!(
        read_tree(&root),
        [
            ("a.txt".to_owned(), "a".to_owned()),
            ("d/e/b.txt".to_owned(), "bb".to_owned()),
            // A folder marker with nothing below it: an empty file (object_store cannot
            // tell `folder/` from `folder`).
            ("folder".to_owned(), String::new()),
        ]
    );
    // No temporary file left next to the content.
    let names: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    assert_eq!(names, [CONTENT_DIR]);

    let f = s.fields(Some(&v), &root).unwrap();
    assert_eq!(f["ROOT"], root.to_str().unwrap());
    assert_eq!(f["BUCKET"], "bkt");
    assert_eq!(f["PREFIX"], "in");
    assert_eq!(f["URL"], "s3://bkt/in");

    // Changed since: NotFound naming the version, nothing written.
    m.put("bkt", "in/a.txt", b"z");
    let scratch = tempfile::tempdir().unwrap();
    let err = s.materialize(&v, scratch.path()).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains(&v.to_string()), "{err}");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn publish_round_trip_with_deletes_and_a_multipart_file() {
    let m = Moto::start();
    m.create_bucket("bkt");
    m.put("bkt", "out/old.txt", b"old");
    m.put("bkt", "out/keep.txt", b"keep");
    m.put("bkt", "other/x", b"untouched");
    let e = env(&m.endpoint);
    let s = open(&e, "s3://bkt/out", None).await;
    let before = latest(&*s).await;

    let dir = e.root.join("publish");
    write(&dir, "keep.txt", "keep");
    write(&dir, "new.txt", "new");
    write(&dir, "sub/deep/n.txt", "deep");
    let big: Vec<u8> = (0..6 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    std::fs::create_dir_all(dir.join("empty-dir")).unwrap();

    let published = s.publish(&dir).await.unwrap().version;
    assert_ne!(published, before);
    assert_eq!(latest(&*s).await, published);
    assert_eq!(
        m.keys("bkt", "out/"),
        [
            "out/big.bin",
            "out/keep.txt",
            "out/new.txt",
            "out/sub/deep/n.txt"
        ]
    );
    assert_eq!(m.keys("bkt", "other/"), ["other/x"]);

    let scratch = tempfile::tempdir().unwrap();
    let root = s.materialize(&published, scratch.path()).await.unwrap();
    assert_eq!(std::fs::read(root.join("big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read_to_string(root.join("sub/deep/n.txt")).unwrap(),
        "deep"
    );
    assert!(!root.join("old.txt").exists());

    // Publishing the same content again changes nothing.
    assert_eq!(s.publish(&dir).await.unwrap().version, published);
    // An empty directory empties the prefix: the empty version.
    let empty = e.root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let v = s.publish(&empty).await.unwrap().version;
    assert_eq!(
        v.to_string(),
        format!("md5:{}", md5_hex(b"dtk-s3-listing v1\n"))
    );
    assert!(m.keys("bkt", "out/").is_empty());

    // A symbolic link is refused before anything is uploaded.
    let linked = e.root.join("linked");
    write(&linked, "f", "f");
    std::os::unix::fs::symlink("/etc/hostname", linked.join("l")).unwrap();
    let err = s.publish(&linked).await.unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert!(m.keys("bkt", "out/").is_empty());
}

#[tokio::test]
async fn verify_detects_changes() {
    let m = Moto::start();
    m.create_bucket("bkt");
    m.put("bkt", "p/a", b"a");
    let e = env(&m.endpoint);
    let spec = S3Kind::new()
        .resolve(&e.ctx, new("data", "s3://bkt/p", None))
        .await
        .unwrap();
    let s = S3Kind::new().open(&e.ctx, &spec).unwrap();
    let v = latest(&*s).await;
    assert_eq!(s.verify(&v).await.unwrap(), Verification::Verified);
    m.put("bkt", "p/a", b"b");
    let now = latest(&*s).await;
    // Not the recorded latest: unavailable; the recorded latest: a mismatch.
    assert!(matches!(
        s.verify(&v).await.unwrap(),
        Verification::Unavailable(_)
    ));
    let mut recorded = spec.clone();
    recorded.latest = Some(v.clone());
    let s = S3Kind::new().open(&e.ctx, &recorded).unwrap();
    assert_eq!(
        s.verify(&v).await.unwrap(),
        Verification::Mismatch {
            expected: v,
            found: now
        }
    );
}

#[tokio::test]
async fn conformance() {
    let m = Moto::start();
    m.create_bucket("bkt");
    m.put("bkt", "c/a.txt", b"a");
    let e = env(&m.endpoint);
    let s = open(&e, "s3://bkt/c", None).await;
    let scratch = tempfile::tempdir().unwrap();
    let publish = e.root.join("publish");
    write(&publish, "b.txt", "b");
    check_all(
        &*s,
        &Fixture::new(scratch.path()).with_publish_dir(&publish),
    )
    .await
    .unwrap();
    // A kind that publishes is not checked without content to publish: the suite says so.
    let scratch = tempfile::tempdir().unwrap();
    let err = check_all(&*s, &Fixture::new(scratch.path()))
        .await
        .unwrap_err();
    assert!(err.contains("with_publish_dir"), "{err}");
}

#[tokio::test]
async fn keys_that_would_escape_are_refused() {
    let m = Moto::start();
    m.create_bucket("bkt");
    m.put("bkt", "in/ok.txt", b"ok");
    m.put("bkt", "in/../evil", b"evil");
    let e = env(&m.endpoint);
    let spec = SourceSpec::new(Name::new("data").unwrap(), "s3", "s3://bkt/in");
    let s = S3Kind::new().open(&e.ctx, &spec).unwrap();
    let err = s.latest().await.unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("\"in/../evil\""), "{err}");
    let scratch = tempfile::tempdir().unwrap();
    let bogus: Version = "md5:00000000000000000000000000000000".parse().unwrap();
    assert!(s.materialize(&bogus, scratch.path()).await.is_err());
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    assert!(!scratch.path().parent().unwrap().join("evil").exists());
}

#[tokio::test]
async fn unreachable_endpoint_fails_quickly() {
    let port = free_port();
    let e = env(&format!("http://127.0.0.1:{port}"));
    let spec = SourceSpec::new(Name::new("data").unwrap(), "s3", "s3://bkt/in");
    let s = S3Kind::new().open(&e.ctx, &spec).unwrap();
    let err = s.latest().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Backend { .. }), "{msg}");
    assert!(
        msg.contains("\"data\"") && msg.contains("cannot connect"),
        "{msg}"
    );
    assert!(!msg.contains(SECRET_KEY), "{msg}");
}

#[tokio::test]
async fn bad_credentials_are_unauthorized_without_the_secret() {
    // moto checks credentials when INITIAL_NO_AUTH_ACTION_COUNT is 0: ours are unknown.
    let m = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let e = env(&m.endpoint);
    let spec = SourceSpec::new(Name::new("data").unwrap(), "s3", "s3://bkt/in");
    let s = S3Kind::new().open(&e.ctx, &spec).unwrap();
    let err = s.latest().await.unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("unauthorized") && msg.contains("\"data\""),
        "{msg}"
    );
    assert!(!msg.contains(SECRET_KEY), "{msg}");
    assert!(!msg.contains("AKIATESTKEYID0000000"), "{msg}");
    assert!(!format!("{s:?}").contains(SECRET_KEY));
    let err = S3Kind::new()
        .resolve(&e.ctx, new("data", "s3://bkt", None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");
}

/// A loopback server answering every request with `response`; returns its endpoint.
fn canned(response: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 8192];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(response);
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn garbage_truncated_and_forbidden_responses_are_clear_errors() {
    let cases: [(&'static [u8], &str); 3] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 27\r\nConnection: close\r\n\r\n<html>not a listing</html>\n",
            "listing",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n<?xml version=\"1.0\"?><ListBucketResult><Contents><Key>a",
            "listing",
        ),
        (
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: 74\r\nConnection: close\r\n\r\n<Error><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error>\n\n\n\n",
            "unauthorized",
        ),
    ];
    for (response, expected) in cases {
        let e = env(&canned(response));
        let spec = SourceSpec::new(Name::new("data").unwrap(), "s3", "s3://bkt/in");
        let s = S3Kind::new().open(&e.ctx, &spec).unwrap();
        let err = s.latest().await.unwrap_err();
        let msg = err.to_string();
        eprintln!("{msg}");
        assert!(matches!(err, Error::Backend { .. }), "{msg}");
        assert!(msg.contains(expected) && msg.contains("\"data\""), "{msg}");
        assert!(!msg.contains(SECRET_KEY), "{msg}");
    }
}

#[tokio::test]
async fn no_credentials_at_all_is_a_clear_error_without_any_request() {
    // A listener that counts connections: without credentials, nothing may be sent, not
    // to the endpoint and not to the cloud's metadata address.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = Context::new(&dir.path().join(".dkt"), Secrets::default())
        .with_setting("s3", "endpoint", format!("http://127.0.0.1:{port}"))
        .with_setting("s3", "allow_http", "true");
    ctx.network_timeout = Duration::from_secs(3);
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_EC2_METADATA_DISABLED",
    ] {
        assert!(
            std::env::var_os(var).is_none(),
            "{var} is set for this test"
        );
    }
    let spec = SourceSpec::new(Name::new("data").unwrap(), "s3", "s3://bkt/in");
    let s = S3Kind::new().open(&ctx, &spec).unwrap();
    let err = s.latest().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Backend { .. }), "{msg}");
    assert!(msg.contains("no credentials"), "{msg}");
    assert!(
        msg.contains("imds = true"),
        "says how to use a metadata service: {msg}"
    );
    assert!(msg.contains("\"data\""), "{msg}");
    assert!(!msg.contains("169.254"), "{msg}");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a request reached the endpoint"
    );
    // A bad value of the switch is refused, quoting it.
    let ctx = ctx.with_setting("s3", "imds", "maybe");
    let err = S3Kind::new().open(&ctx, &spec).unwrap_err().to_string();
    assert!(err.contains("imds") && err.contains("maybe"), "{err}");
}

/// A loopback server that reads each request (its first line) and hands it, with the
/// connection, to `answer`; returns the endpoint and the request lines seen.
fn scripted(
    answer: impl Fn(&str, &mut std::net::TcpStream) + Send + Sync + 'static,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (s, answer) = (seen.clone(), std::sync::Arc::new(answer));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let (s, answer) = (s.clone(), answer.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let n = stream.read(&mut buf).unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let line = text.lines().next().unwrap_or_default().to_owned();
                s.lock().unwrap().push(line.clone());
                answer(&line, &mut stream);
            });
        }
    });
    (format!("http://127.0.0.1:{port}"), seen)
}

#[tokio::test]
async fn a_busy_store_is_retried_then_named() {
    let (endpoint, seen) = scripted(|_, conn| {
        let _ = conn.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/xml\r\nContent-Length: 67\r\nConnection: close\r\n\r\n<Error><Code>SlowDown</Code><Message>busy</Message></Error>\n\n\n\n\n\n\n\n",
        );
    });
    let mut e = env(&endpoint);
    e.ctx.network_timeout = Duration::from_secs(5);
    let spec = SourceSpec::new(Name::new("data").unwrap(), "s3", "s3://bkt/in");
    let s = S3Kind::new().open(&e.ctx, &spec).unwrap();
    let err = s.latest().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Backend { .. }), "{msg}");
    assert!(msg.contains("503") && msg.contains("\"data\""), "{msg}");
    // The retries happened: the first request and two more.
    assert_eq!(seen.lock().unwrap().len(), 3, "{:?}", seen.lock().unwrap());
}

#[tokio::test]
async fn a_trickling_download_is_given_up() {
    const SIZE: usize = 4000;
    let listing = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
         <Name>bkt</Name><Prefix>in/</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>\
         <IsTruncated>false</IsTruncated><Contents><Key>in/a.bin</Key>\
         <LastModified>2024-01-01T00:00:00.000Z</LastModified>\
         <ETag>&quot;0123456789abcdef0123456789abcdef&quot;</ETag><Size>{SIZE}</Size>\
         <StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>"
    );
    let (endpoint, seen) = scripted(move |line, conn| {
        if line.contains("list-type=2") {
            let _ = conn.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{listing}",
                    listing.len()
                )
                .as_bytes(),
            );
            return;
        }
        // The object: a byte every half second (half an hour in all).
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {SIZE}\r\n\
             ETag: \"0123456789abcdef0123456789abcdef\"\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n"
        );
        if conn.write_all(head.as_bytes()).is_err() {
            return;
        }
        for _ in 0..SIZE {
            if conn.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let mut e = env(&endpoint);
    e.ctx.network_timeout = Duration::from_secs(1);
    let spec = SourceSpec::new(Name::new("data").unwrap(), "s3", "s3://bkt/in");
    let s = S3Kind::new().open(&e.ctx, &spec).unwrap();
    let v = s.latest().await.unwrap().version;
    let scratch = tempfile::tempdir().unwrap();
    let err = s.materialize(&v, scratch.path()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Backend { .. }), "{msg}");
    assert!(
        msg.contains("too slow") && msg.contains("\"data\""),
        "{msg}"
    );
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("/bkt/in/a.bin")),
        "{:?}",
        seen.lock().unwrap()
    );
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}
