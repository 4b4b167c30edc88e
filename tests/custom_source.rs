//! The `feed` kind of `examples/feed/mod.rs`, tested as a third-party plugin would test
//! itself: the whole conformance suite, then what is particular to the kind.

#[path = "../examples/feed/mod.rs"]
mod feed;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dtk::conformance::{check_all, Fixture};
use dtk::{
    AddSource, Command, Context, Error, InitOptions, Kind, Name, NewSource, NodeSpec, Project,
    Registry, RunOptions, RunStatus, Secrets, Source, SourceSpec, Verification, Version,
};
use feed::FeedKind;

/// Write `releases` (label, artifact content), newest first, as `app-LABEL.bin` files and
/// the feed `app.feed.json` listing them in `dir`; artifacts are referred to by `file://`
/// URL when `by_url`, else by a path relative to the feed. Returns the feed's path and the
/// versions, in feed order.
fn write_feed(dir: &Path, releases: &[(&str, &[u8])], by_url: bool) -> (PathBuf, Vec<Version>) {
    let mut list = Vec::new();
    let mut versions = Vec::new();
    for (label, content) in releases {
        let file = format!("app-{label}.bin");
        std::fs::write(dir.join(&file), content).unwrap();
        let url = if by_url {
            format!("file://{}", dir.join(&file).display())
        } else {
            file
        };
        let v = feed::sha256_version(content).unwrap();
        list.push(serde_json::json!({ "version": label, "url": url, "sha256": v.hex() }));
        versions.push(v);
    }
    let path = dir.join("app.feed.json");
    std::fs::write(&path, serde_json::json!({ "releases": list }).to_string()).unwrap();
    (path, versions)
}

const TWO: &[(&str, &[u8])] = &[("1.2.0", b"release 1.2.0\n"), ("1.1.0", b"release 1.1.0\n")];

fn context(dir: &Path) -> Context {
    let mut ctx = Context::new(&dir.join(".dkt"), Secrets::default());
    ctx.cwd = dir.to_owned();
    ctx
}

fn new_source(location: &str) -> NewSource {
    NewSource {
        name: Name::new("app").unwrap(),
        kind: "feed".into(),
        location: Some(location.into()),
        tag: None,
        path: None,
    }
}

async fn open(dir: &Path, location: &str) -> (SourceSpec, Arc<dyn Source>) {
    let ctx = context(dir);
    let spec = FeedKind.resolve(&ctx, new_source(location)).await.unwrap();
    let source = FeedKind.open(&ctx, &spec).unwrap();
    (spec, source)
}

fn registry() -> Arc<Registry> {
    let mut r = Registry::new();
    dtk::dtk_sources::register_all(&mut r);
    r.register(Arc::new(FeedKind));
    Arc::new(r)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn sha256_matches_the_standard_vectors() {
    let hex = |data: &[u8]| feed::sha256_version(data).unwrap().to_string();
    assert_eq!(
        hex(b""),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        hex(b"abc"),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
        "sha256:248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
    assert_eq!(
        hex(&vec![b'a'; 1_000_000]),
        "sha256:cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
    );
}

#[tokio::test]
async fn conforms() {
    for by_url in [false, true] {
        for releases in [TWO, &TWO[..1]] {
            let dir = tempfile::tempdir().unwrap();
            let (feed_file, _) = write_feed(dir.path(), releases, by_url);
            let (_, source) = open(dir.path(), &feed_file.display().to_string()).await;
            let scratch = dir.path().join("scratch");
            std::fs::create_dir(&scratch).unwrap();
            let result = check_all(&*source, &Fixture::new(&scratch)).await;
            assert_eq!(
                result,
                Ok(()),
                "by_url={by_url}, {} releases",
                releases.len()
            );
        }
    }
}

#[tokio::test]
async fn versions_are_artifact_digests_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let (_, versions) = write_feed(dir.path(), TWO, false);
    let (_, source) = open(dir.path(), "app.feed.json").await;
    assert_eq!(source.latest().await.unwrap().version, versions[0]);
    let listed = source.versions().await.unwrap();
    let summary: Vec<(Version, Option<&str>)> = listed
        .iter()
        .map(|i| {
            (
                i.version.clone(),
                i.extra.get(feed::RELEASE).map(String::as_str),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (versions[0].clone(), Some("1.2.0")),
            (versions[1].clone(), Some("1.1.0"))
        ]
    );

    // An older release, bigger than the copy buffer: copied whole, checked, fields named.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (_, versions) = write_feed(dir.path(), &[("2.0.0", &big), ("1.0.0", b"old")], false);
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let root = source.materialize(&versions[0], &scratch).await.unwrap();
    assert_eq!(root, scratch);
    assert_eq!(files_in(&scratch), ["app-2.0.0.bin"]);
    assert_eq!(std::fs::read(scratch.join("app-2.0.0.bin")).unwrap(), big);
    let fields = source.fields(Some(&versions[1]), &root).unwrap();
    assert_eq!(fields.get("ROOT").map(String::as_str), root.to_str());
    assert_eq!(fields.get(feed::RELEASE).map(String::as_str), Some("1.0.0"));
}

#[tokio::test]
async fn locations_are_inferred_and_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let (feed_file, _) = write_feed(dir.path(), TWO, false);
    let canonical = std::fs::canonicalize(&feed_file).unwrap();

    // Inference: a feed beats `path` for *.feed.json, and claims nothing else.
    let abs = canonical.display().to_string();
    assert!(FeedKind.infer("app.feed.json").is_some());
    assert_eq!(FeedKind.infer("app.json"), None);
    assert_eq!(registry().infer(&abs).unwrap().name(), "feed");
    assert_eq!(
        registry()
            .infer(&dir.path().display().to_string())
            .unwrap()
            .name(),
        "path"
    );

    // A relative path and a file:// URL both become the absolute path.
    let (spec, _) = open(dir.path(), "app.feed.json").await;
    assert_eq!(
        (spec.kind.as_str(), Path::new(&spec.location)),
        ("feed", canonical.as_path())
    );
    let (spec, _) = open(dir.path(), &format!("file://{abs}")).await;
    assert_eq!(Path::new(&spec.location), canonical.as_path());

    // Errors quote the bad value.
    let ctx = context(dir.path());
    let err = FeedKind
        .resolve(&ctx, new_source("missing.feed.json"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("\"missing.feed.json\""), "{err}");
    let cases: &[(&str, &str, &str)] = &[
        ("garbage.feed.json", "{ not json", "not JSON"),
        ("norel.feed.json", r#"{"items": []}"#, "\"releases\""),
        ("empty.feed.json", r#"{"releases": []}"#, "no release"),
        (
            "badsum.feed.json",
            r#"{"releases": [{"version": "1", "url": "a.bin", "sha256": "xyz"}]}"#,
            "\"xyz\"",
        ),
        (
            "http.feed.json",
            r#"{"releases": [{"version": "1", "url": "https://example.com/a.bin",
                "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}]}"#,
            "\"https://example.com/a.bin\"",
        ),
    ];
    for (file, text, quoted) in cases {
        std::fs::write(dir.path().join(file), text).unwrap();
        let err = FeedKind.resolve(&ctx, new_source(file)).await.unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{file}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(quoted), "{file}: {msg}");
        assert!(
            msg.contains(file) || *file == "http.feed.json",
            "{file}: {msg}"
        );
    }
    let mut tagged = new_source("app.feed.json");
    tagged.tag = Some("beta".into());
    let err = FeedKind.resolve(&ctx, tagged).await.unwrap_err();
    assert!(err.to_string().contains("\"beta\""), "{err}");
}

#[tokio::test]
async fn a_sha256_mismatch_fails_materialize() {
    let dir = tempfile::tempdir().unwrap();
    let (_, versions) = write_feed(dir.path(), TWO, true);
    let (_, source) = open(dir.path(), "app.feed.json").await;
    let tampered = b"release 1.2.0, tampered with\n";
    std::fs::write(dir.path().join("app-1.2.0.bin"), tampered).unwrap();
    let found = feed::sha256_version(tampered).unwrap();

    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let err = source
        .materialize(&versions[0], &scratch)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Backend { .. }), "{msg}");
    assert!(
        msg.contains(&versions[0].to_string()) && msg.contains(&found.to_string()),
        "{msg}"
    );
    assert!(
        files_in(&scratch).is_empty(),
        "left behind: {:?}",
        files_in(&scratch)
    );
    assert_eq!(
        source.verify(&versions[0]).await.unwrap(),
        Verification::Mismatch {
            expected: versions[0].clone(),
            found
        }
    );
    // The untouched release still materializes and verifies.
    assert!(source.materialize(&versions[1], &scratch).await.is_ok());
    assert_eq!(
        source.verify(&versions[1]).await.unwrap(),
        Verification::Verified
    );
}

#[tokio::test]
async fn a_tampered_artifact_fails_the_run_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_feed(dir.path(), TWO, false);
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let project = Project::init(dir.path(), registry(), InitOptions::new())
        .unwrap()
        .with_cwd(dir.path());
    project
        .add_source(AddSource::new("app", Some("app.feed.json".into())))
        .await
        .unwrap();
    project
        .add_source(AddSource::new("out", Some("out".into())))
        .await
        .unwrap();
    let mut node = NodeSpec::new(Command::Argv(vec!["cp ${app:ROOT}/* ${out:ROOT}/".into()]));
    node.inputs = vec![Name::new("app").unwrap()];
    node.outputs = vec![Name::new("out").unwrap()];
    let id = project.define_node(node).unwrap();
    std::fs::write(dir.path().join("app-1.2.0.bin"), b"not what the feed says").unwrap();

    let outcome = project.run_node(&id, RunOptions::new()).await.unwrap();
    let run = outcome.record();
    assert_eq!(run.status, RunStatus::Failure);
    let error = run.error.as_deref().unwrap_or_default();
    assert!(error.contains("the feed says"), "{error}");
    assert!(run.outputs.is_empty());
    assert!(files_in(&dir.path().join("out")).is_empty());
}

#[tokio::test]
async fn reopening_without_the_kind_names_it_and_the_source() {
    let dir = tempfile::tempdir().unwrap();
    write_feed(dir.path(), TWO, false);
    let project = Project::init(dir.path(), registry(), InitOptions::new())
        .unwrap()
        .with_cwd(dir.path());
    let spec = project
        .add_source(AddSource::new("releases", Some("app.feed.json".into())))
        .await
        .unwrap();
    assert_eq!(spec.kind, "feed");

    let err = Project::open(dir.path(), dtk::default_registry()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::UnknownKind { kind, .. } if kind == "feed"),
        "{msg}"
    );
    assert!(
        msg.contains("\"feed\"") && msg.contains("releases"),
        "{msg}"
    );

    let reopened = Project::open(dir.path(), registry()).unwrap();
    assert_eq!(reopened.source("releases").unwrap().kind, "feed");

    // Opening with the kind remembered the kinds in use; without it, the open still
    // fails, and names the source.
    let err = Project::open(dir.path(), dtk::default_registry()).unwrap_err();
    assert!(
        matches!(&err, Error::UnknownKind { kind, .. } if kind == "feed"),
        "{err}"
    );
    assert!(err.to_string().contains("releases"), "{err}");
    // A memo that is torn or of another directory is not trusted.
    let memo = dir.path().join(".dkt/cache/kinds");
    let text = std::fs::read_to_string(&memo).unwrap();
    assert!(text.contains("\nfeed\n"), "{text}");
    std::fs::write(&memo, text.replace("feed\nend\n", "")).unwrap();
    assert!(Project::open(dir.path(), dtk::default_registry()).is_err());
}

#[tokio::test]
async fn a_new_release_is_seen_by_latest_and_update_sources() {
    let dir = tempfile::tempdir().unwrap();
    let (_, old) = write_feed(dir.path(), TWO, false);
    let project = Project::init(dir.path(), registry(), InitOptions::new())
        .unwrap()
        .with_cwd(dir.path());
    let spec = project
        .add_source(AddSource::new("app", Some("app.feed.json".into())))
        .await
        .unwrap();
    assert_eq!(spec.latest.as_ref(), Some(&old[0]));
    let source = project.open_source(&spec).unwrap();
    assert_eq!(source.latest().await.unwrap().version, old[0]);

    let (_, new) = write_feed(
        dir.path(),
        &[("1.3.0", b"release 1.3.0\n"), TWO[0], TWO[1]],
        false,
    );
    assert_eq!(&new[1..], &old[..]);
    let latest = source.latest().await.unwrap();
    assert_eq!(latest.version, new[0]);
    assert_eq!(
        latest.extra.get(feed::RELEASE).map(String::as_str),
        Some("1.3.0")
    );
    assert_eq!(source.versions().await.unwrap().len(), 3);

    let outcomes = project.update_sources(&[]).await.unwrap();
    let app = outcomes
        .iter()
        .find(|o| o.source.as_str() == "app")
        .unwrap();
    assert_eq!(app.error, None);
    assert_eq!(
        (app.previous.as_ref(), app.latest.as_ref()),
        (Some(&old[0]), Some(&new[0]))
    );
    assert_eq!(
        project.source("app").unwrap().latest.as_ref(),
        Some(&new[0])
    );
    let log = project.source_log("app").await.unwrap();
    assert_eq!(
        log.iter().map(|i| i.version.clone()).collect::<Vec<_>>(),
        new
    );
    let recorded = project.recorded_versions("app").unwrap();
    assert_eq!(recorded[0].version, new[0]);
    assert_eq!(
        recorded[0].extra.get(feed::RELEASE).map(String::as_str),
        Some("1.3.0")
    );
}

#[tokio::test]
async fn a_feed_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    write_feed(dir.path(), TWO, false);
    let (_, source) = open(dir.path(), "app.feed.json").await;
    let err = source.publish(dir.path()).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotSupported { kind, operation: "publish" } if kind == "feed"),
        "{err}"
    );

    let project = Project::init(dir.path(), registry(), InitOptions::new())
        .unwrap()
        .with_cwd(dir.path());
    project
        .add_source(AddSource::new("app", Some("app.feed.json".into())))
        .await
        .unwrap();
    let mut node = NodeSpec::new(Command::Argv(vec!["true".into()]));
    node.outputs = vec![Name::new("app").unwrap()];
    let err = project.define_node(node).unwrap_err();
    assert!(
        matches!(&err, Error::NotSupported { kind, .. } if kind == "feed"),
        "{err}"
    );
}

#[tokio::test]
async fn a_node_reads_a_release_with_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let (_, versions) = write_feed(dir.path(), TWO, true);
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let project = Project::init(dir.path(), registry(), InitOptions::new())
        .unwrap()
        .with_cwd(dir.path());
    project
        .add_source(AddSource::new("app", Some("app.feed.json".into())))
        .await
        .unwrap();
    project
        .add_source(AddSource::new("out", Some("out".into())))
        .await
        .unwrap();
    // Pin the older release: the node must get that one.
    project.pin("app", versions[1].short()).await.unwrap();
    let mut node = NodeSpec::new(Command::Argv(vec![
        r#"cp "${app:ROOT}"/* "${out:ROOT}/" && echo "${app:RELEASE}" > "${out:ROOT}/release""#
            .into(),
    ]));
    node.inputs = vec![Name::new("app").unwrap()];
    node.outputs = vec![Name::new("out").unwrap()];
    let id = project.define_node(node).unwrap();

    let outcome = project.run_node(&id, RunOptions::new()).await.unwrap();
    let run = outcome.record();
    assert_eq!(run.status, RunStatus::Success, "{:?}", run.error);
    assert_eq!(run.inputs[0].version, versions[1]);
    let out = dir.path().join("out");
    assert_eq!(files_in(&out), ["app-1.1.0.bin", "release"]);
    assert_eq!(
        std::fs::read_to_string(out.join("release")).unwrap(),
        "1.1.0\n"
    );

    let target = format!("out:{}", run.outputs[0].version.short());
    let manifest = project
        .inspect(&target, dtk::inspect::InspectOptions::new())
        .await
        .unwrap();
    let json = manifest.to_json();
    let kinds: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.get("kind").and_then(|k| k.as_str()))
        .collect();
    assert_eq!(kinds, ["feed", "path"]);
    let report = project.verify(&target).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    let app_content = format!("app:{}", versions[1].short());
    assert!(
        report
            .checks
            .iter()
            .any(|c| c.subject == app_content && c.check == "content" && c.result == "ok"),
        "{report:?}"
    );
}
