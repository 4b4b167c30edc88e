//! Tests of the `path` kind on real files: the conformance suite, the digest's encoding and
//! what changes it, the stat cache, and resolving locations.
#![cfg(feature = "path")]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use dtk_api::conformance::{check_all, Fixture};
use dtk_api::{Context, Error, Kind, Name, NewSource, Secrets, Source, Version};
use dtk_sources::path::{digest, PathKind, PathSource, TREE_HEADER};
use md5::{Digest as _, Md5};

fn ctx(dir: &Path) -> Context {
    let mut c = Context::new(&dir.join(".dkt"), Secrets::default());
    c.cwd = dir.to_owned();
    c
}

fn new_source(name: &str, location: Option<&str>, path: Option<&str>) -> NewSource {
    NewSource {
        name: Name::new(name).unwrap(),
        kind: "path".into(),
        location: location.map(str::to_owned),
        tag: None,
        path: path.map(str::to_owned),
    }
}

async fn open(ctx: &Context, location: &Path, path: Option<&str>) -> PathSource {
    let spec = PathKind::default()
        .resolve(ctx, new_source("src", location.to_str(), path))
        .await
        .unwrap();
    PathSource::new(ctx, &spec).unwrap()
}

fn write(path: &Path, content: &[u8], mode: u32) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Version without any cache.
fn v(root: &Path) -> Version {
    digest(root, None).unwrap().version
}

/// The small tree whose digest is fixed below (and in docs/path-digest.md).
fn fixed_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    write(&root.join("README"), b"hello\n", 0o644);
    write(&root.join("bin/run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write(&root.join("data/a.csv"), b"x,y\n1,2\n", 0o644);
    write(&root.join("data-b"), b"", 0o600);
    fs::create_dir_all(root.join("data/empty")).unwrap();
    symlink("a.csv", root.join("data/link")).unwrap();
    write(
        &root.join(OsStr::from_bytes(b"caf\xe9")),
        b"latin-1 name\n",
        0o644,
    );
}

/// The fixed tree's version. If this changes, the encoding changed: every recorded path
/// version would change with it. Bump the header's version number instead, and update
/// docs/path-digest.md.
const FIXED_TREE_VERSION: &str = "md5:5e336a49d79fa5b2eb9b4bacb5d54b9f";

#[test]
fn fixed_tree_has_a_fixed_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    fixed_tree(&root);
    let d = digest(&root, None).unwrap();
    assert_eq!(d.version.to_string(), FIXED_TREE_VERSION);
    assert_eq!((d.files, d.dirs, d.symlinks, d.others), (5, 3, 1, 0));
    // The same through the cache, cold and warm.
    let cache = tmp.path().join("cache/c");
    assert_eq!(
        digest(&root, Some(&cache)).unwrap().version.to_string(),
        FIXED_TREE_VERSION
    );
    assert_eq!(
        digest(&root, Some(&cache)).unwrap().version.to_string(),
        FIXED_TREE_VERSION
    );
}

#[test]
fn fixed_tree_encoding_spelled_out() {
    // The encoding written by hand, as docs/path-digest.md specifies it.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    fixed_tree(&root);
    let md5hex = |b: &[u8]| format!("{:x}", Md5::digest(b));
    let mut enc = TREE_HEADER.to_vec();
    let mut rec = |ty: &str, path: &[u8], payload: &[u8]| {
        enc.extend_from_slice(ty.as_bytes());
        enc.push(b' ');
        enc.extend_from_slice(path);
        enc.push(0);
        enc.extend_from_slice(payload);
        enc.push(0);
    };
    rec("f", b"README", md5hex(b"hello\n").as_bytes());
    rec("d", b"bin", b"");
    rec(
        "x",
        b"bin/run.sh",
        md5hex(b"#!/bin/sh\necho hi\n").as_bytes(),
    );
    rec("f", b"caf\xe9", md5hex(b"latin-1 name\n").as_bytes());
    rec("d", b"data", b"");
    rec("f", b"data-b", md5hex(b"").as_bytes()); // '-' sorts before '/'
    rec("f", b"data/a.csv", md5hex(b"x,y\n1,2\n").as_bytes());
    rec("d", b"data/empty", b"");
    rec("l", b"data/link", b"a.csv");
    assert_eq!(v(&root).to_string(), format!("md5:{}", md5hex(&enc)));
}

#[test]
fn docs_reference_implementation_agrees() {
    // docs/path-digest.md holds a reference implementation in Python; run it when python3
    // is here, on a tree with every kind of entry.
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/path-digest.md"))
            .expect("docs/path-digest.md");
    let script = doc
        .split("```python\n")
        .nth(1)
        .and_then(|s| s.split("\n```").next())
        .expect("a python block in docs/path-digest.md");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    fixed_tree(&root);
    symlink(
        "/nonexistent/target with spaces\nand newline",
        root.join("odd"),
    )
    .unwrap();
    mkfifo(&root.join("data/pipe"));
    // Names that sort differently as whole paths than directory by directory.
    for p in ["x/y/z", "x-y/q", "x.z", "x0", "x/y.w", "x/y-/k", "x/y/"] {
        write(&root.join(p).join("f"), p.as_bytes(), 0o644);
    }
    let single = root.join("bin/run.sh");
    let py = tmp.path().join("ref.py");
    fs::write(&py, script).unwrap();
    for target in [&root, &single] {
        let out = std::process::Command::new("python3")
            .arg(&py)
            .arg(target)
            .output()
            .unwrap_or_else(|e| {
                panic!("python3 runs the reference implementation ({e}); `bash scripts/test.sh` installs it")
            });
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            theirs.trim(),
            v(target).to_string(),
            "for {}",
            target.display()
        );
    }
}

#[test]
fn single_file_version_is_its_md5sum() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("model.bin");
    write(&f, b"weights", 0o644);
    let d = digest(&f, None).unwrap();
    assert!(d.single_file);
    assert_eq!(
        d.version.to_string(),
        format!("md5:{:x}", Md5::digest(b"weights"))
    );
}

#[test]
fn what_changes_the_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    fixed_tree(&root);
    let base = v(&root);
    assert_eq!(v(&root), base, "unchanged tree, same digest");

    let mut seen = vec![base.clone()];
    let mut expect_new = |what: &str, change: &dyn Fn()| {
        change();
        let now = v(&root);
        assert!(!seen.contains(&now), "{what} did not change the digest");
        seen.push(now);
    };
    expect_new("a same-size content change", &|| {
        fs::write(root.join("README"), b"HELLO\n").unwrap()
    });
    expect_new("setting the exec bit", &|| {
        fs::set_permissions(root.join("README"), fs::Permissions::from_mode(0o744)).unwrap()
    });
    expect_new("a symlink's new target", &|| {
        fs::remove_file(root.join("data/link")).unwrap();
        symlink("../README", root.join("data/link")).unwrap();
    });
    expect_new("a rename", &|| {
        fs::rename(root.join("data/a.csv"), root.join("data/b.csv")).unwrap()
    });
    expect_new("a new empty directory", &|| {
        fs::create_dir(root.join("data/empty2")).unwrap()
    });
    expect_new("a file moved to another directory", &|| {
        fs::rename(root.join("data/b.csv"), root.join("bin/b.csv")).unwrap()
    });
    expect_new("a file replaced by a link to itself", &|| {
        fs::remove_file(root.join("data-b")).unwrap();
        symlink("data-b", root.join("data-b")).unwrap();
    });
    // Group and other bits, and time stamps, are not recorded.
    let before = v(&root);
    fs::set_permissions(root.join("README"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::File::options()
        .write(true)
        .open(root.join("bin/run.sh"))
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1))
        .unwrap();
    assert_eq!(v(&root), before);
}

#[test]
fn non_utf8_names_are_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    write(
        &a.join(OsStr::from_bytes(b"\xff\xfe/\x80.bin")),
        b"x",
        0o644,
    );
    write(&b.join("ok/x.bin"), b"x", 0o644);
    let da = digest(&a, None).unwrap();
    assert_eq!((da.files, da.dirs), (1, 1));
    assert_ne!(da.version, v(&b));
}

/// Wait until the wall clock's second changes, so files written before are strictly older
/// than the racy threshold of a digest started after.
fn next_second() {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(
        Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos()))
            + Duration::from_millis(20),
    );
}

#[test]
fn unchanged_tree_is_digested_without_reading_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    fixed_tree(&root);
    for i in 0..50 {
        write(
            &root.join(format!("many/{i}.txt")),
            format!("{i}").as_bytes(),
            0o644,
        );
    }
    let cache = tmp.path().join("cache/c");
    next_second();
    let cold = digest(&root, Some(&cache)).unwrap();
    assert_eq!(cold.hashed_files, 55);
    assert!(cold.cache_written);
    let warm = digest(&root, Some(&cache)).unwrap();
    assert_eq!(warm.version, cold.version);
    assert_eq!((warm.hashed_files, warm.hashed_bytes), (0, 0), "{warm:?}");
    assert!(!warm.cache_written, "nothing changed, nothing to write");
    assert_eq!(warm.version, v(&root));

    // One changed file: only it is read.
    fs::write(root.join("many/7.txt"), b"seven").unwrap();
    let one = digest(&root, Some(&cache)).unwrap();
    assert_eq!(one.hashed_files, 1);
    assert_eq!(one.version, v(&root));
    assert_ne!(one.version, cold.version);
    // A removed file changes the set: the cache is rewritten.
    fs::remove_file(root.join("many/8.txt")).unwrap();
    let removed = digest(&root, Some(&cache)).unwrap();
    assert_eq!(removed.version, v(&root));
    assert!(removed.cache_written);
}

#[test]
fn same_size_edit_with_mtime_restored_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    let file = root.join("data.csv");
    write(&file, b"1,2,3\n", 0o644);
    let cache = tmp.path().join("cache/c");
    next_second();
    let first = digest(&root, Some(&cache)).unwrap();
    assert_eq!(
        digest(&root, Some(&cache)).unwrap().hashed_files,
        0,
        "the cache is warm"
    );
    let mtime = fs::metadata(&file).unwrap().modified().unwrap();
    fs::write(&file, b"1,2,4\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(fs::metadata(&file).unwrap().modified().unwrap(), mtime);
    let after = digest(&root, Some(&cache)).unwrap();
    assert_eq!(
        after.hashed_files, 1,
        "the ctime changed, so the file is read again"
    );
    assert_ne!(after.version, first.version);
    assert_eq!(after.version, v(&root));
}

#[test]
fn edits_in_the_same_second_as_the_digest_are_checked_again() {
    // Racy git: a digest right after writing cannot trust what it cached, so the next one
    // reads the files again even though their stat did not change.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    write(&root.join("a"), b"a", 0o644);
    let cache = tmp.path().join("cache/c");
    next_second();
    write(&root.join("b"), b"b", 0o644);
    let first = digest(&root, Some(&cache)).unwrap();
    assert_eq!(first.hashed_files, 2);
    let second = digest(&root, Some(&cache)).unwrap();
    // `b` was written in the second the first digest started in: not trusted. (If the
    // clock's second turned meanwhile, `a` is trusted all the same.)
    assert!(second.hashed_files >= 1, "{second:?}");
    assert_eq!(second.version, first.version);
}

/// The files of `dir` and below with their stat (inode, size, mtime): what a no-op poll
/// must leave alone.
fn files_with_stat(dir: &Path) -> Vec<(PathBuf, u64, u64, SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let md = fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            out.extend(files_with_stat(&p));
        } else {
            out.push((p, md.ino(), md.size(), md.modified().unwrap()));
        }
    }
    out.sort();
    out
}

/// The poll dtk runs on its blocking threads agrees with `latest`; once the cache is
/// warm it creates, writes or leaves behind no file; and an edit made right after it, in
/// the same second and of the same size, is seen by the next one.
#[tokio::test]
async fn blocking_poll_agrees_writes_nothing_and_sees_edits_right_after() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    let root = tmp.path().join("t");
    fixed_tree(&root);
    let src = open(&ctx, &root, None).await;
    let poll = |s: &PathSource| s.blocking_latest().expect("a blocking poll")().unwrap();
    next_second();
    let first = poll(&src);
    assert_eq!(first, src.latest().await.unwrap());
    assert_eq!(first.version, v(&root));
    // (Files written in the second of a digest are hashed again, and cached with a later
    // threshold, by the first digest of a later second.)
    next_second();
    assert_eq!(poll(&src), first);
    let cache_dir = src.cache_path().parent().unwrap().to_owned();
    let before = files_with_stat(&cache_dir);
    assert_eq!(before.len(), 1, "one cache file: {before:?}");
    for _ in 0..3 {
        assert_eq!(poll(&src), first);
    }
    assert_eq!(
        files_with_stat(&cache_dir),
        before,
        "a no-op poll writes nothing"
    );

    // Same size, right after a poll (within its second, as like as not): seen.
    let file = root.join("data/a.csv");
    fs::write(&file, b"x,y\n1,3\n").unwrap();
    let edited = poll(&src);
    assert_ne!(edited, first);
    assert_eq!(edited.version, v(&root));
    // And again, at once: the cache written by the poll just now is not trusted blindly.
    fs::write(&file, b"x,y\n1,4\n").unwrap();
    let again = poll(&src);
    assert_ne!(again, edited);
    assert_eq!(again.version, v(&root));
}

#[test]
fn corrupt_cache_is_ignored_and_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    fixed_tree(&root);
    let cache = tmp.path().join("cache/c");
    next_second();
    digest(&root, Some(&cache)).unwrap();
    let good = fs::read(&cache).unwrap();
    let corruptions: Vec<(&str, Vec<u8>)> = vec![
        ("a flipped byte in the last entry's md5", {
            let mut b = good.clone();
            let n = b.len();
            b[n - 10] ^= 1;
            b
        }),
        ("truncation", good[..good.len() / 2].to_vec()),
        ("garbage", b"not a cache at all".to_vec()),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in corruptions {
        fs::write(&cache, &bytes).unwrap();
        let d = digest(&root, Some(&cache)).unwrap();
        assert_eq!(d.version.to_string(), FIXED_TREE_VERSION, "{what}");
        assert_eq!(d.hashed_files, d.files, "{what}: the cache was trusted");
        assert!(d.cache_written, "{what}: not rebuilt");
        assert_eq!(
            digest(&root, Some(&cache)).unwrap().hashed_files,
            0,
            "{what}: rebuilt cache"
        );
    }
}

#[test]
fn symlinks_are_recorded_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    fs::create_dir(&root).unwrap();
    symlink("/etc/hostname", root.join("host")).unwrap();
    let d = digest(&root, None).unwrap();
    assert_eq!((d.files, d.symlinks, d.hashed_bytes), (0, 1, 0), "{d:?}");
    let mut enc = TREE_HEADER.to_vec();
    enc.extend_from_slice(b"l host\0/etc/hostname\0");
    assert_eq!(
        d.version.to_string(),
        format!("md5:{:x}", Md5::digest(&enc))
    );

    // What a link points to does not matter, only where.
    let outside = tmp.path().join("outside.txt");
    write(&outside, b"one", 0o644);
    symlink(&outside, root.join("out")).unwrap();
    let before = v(&root);
    fs::write(&outside, b"two, longer").unwrap();
    assert_eq!(v(&root), before);
}

#[test]
fn symlink_loops_are_harmless() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    fs::create_dir(&root).unwrap();
    symlink("b", root.join("a")).unwrap();
    symlink("a", root.join("b")).unwrap();
    symlink("self", root.join("self")).unwrap();
    symlink("..", root.join("up")).unwrap();
    symlink(".", root.join("here")).unwrap();
    let d = digest(&root, None).unwrap();
    assert_eq!((d.symlinks, d.files, d.dirs), (5, 0, 0));
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn special_files_are_recorded_not_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    fs::create_dir(&root).unwrap();
    mkfifo(&root.join("pipe"));
    // Opening a fifo would block forever: the digest must not.
    let d = digest(&root, None).unwrap();
    assert_eq!(d.others, 1);
    let mut enc = TREE_HEADER.to_vec();
    enc.extend_from_slice(b"o pipe\0fifo\0");
    assert_eq!(
        d.version.to_string(),
        format!("md5:{:x}", Md5::digest(&enc))
    );
}

#[test]
fn missing_root_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let gone = tmp.path().join("gone");
    let e = digest(&gone, None).unwrap_err();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("gone"),
        "{e}"
    );
}

#[tokio::test]
async fn conformance_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    let root = tmp.path().join("data");
    fixed_tree(&root);
    let publish = tmp.path().join("out");
    write(&publish.join("result.txt"), b"42\n", 0o644);
    let scratch = tmp.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    let source = open(&ctx, &root, None).await;
    check_all(&source, &Fixture::new(&scratch).with_publish_dir(&publish))
        .await
        .unwrap();
    // The published content is in place, moved (same file system), the old one gone.
    assert_eq!(fs::read(root.join("result.txt")).unwrap(), b"42\n");
    assert!(!root.join("README").exists());
    assert!(!publish.exists());
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".dkt-publish"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn conformance_sub_path() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    let loc = tmp.path().join("repo");
    fixed_tree(&loc);
    let publish = tmp.path().join("out");
    write(&publish.join("new.csv"), b"a\n", 0o644);
    let source = open(&ctx, &loc, Some("data")).await;
    assert_eq!(source.spec().path.as_deref(), Some("data"));
    assert_eq!(source.root(), fs::canonicalize(&loc).unwrap().join("data"));
    check_all(
        &source,
        &Fixture::new(tmp.path().join("s")).with_publish_dir(&publish),
    )
    .await
    .unwrap();
    assert!(loc.join("data/new.csv").exists());
    assert!(loc.join("README").exists(), "only the sub-path is replaced");
}

#[tokio::test]
async fn a_sub_path_may_be_a_link_inside_the_location() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    let loc = tmp.path().join("repo");
    fixed_tree(&loc);
    symlink("data/a.csv", loc.join("current.csv")).unwrap();
    symlink("data", loc.join("current")).unwrap();
    let file = open(&ctx, &loc, Some("current.csv")).await;
    assert_eq!(
        file.latest().await.unwrap().version.to_string(),
        format!("md5:{:x}", Md5::digest(b"x,y\n1,2\n"))
    );
    let dir = open(&ctx, &loc, Some("current")).await;
    assert_eq!(dir.latest().await.unwrap().version, v(&loc.join("data")));
}

#[tokio::test]
async fn conformance_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    let file = tmp.path().join("model.bin");
    write(&file, b"v1", 0o644);
    let publish = tmp.path().join("out");
    write(&publish.join("anything.bin"), b"v2", 0o644);
    let source = open(&ctx, &file, None).await;
    check_all(
        &source,
        &Fixture::new(tmp.path().join("s")).with_publish_dir(&publish),
    )
    .await
    .unwrap();
    assert_eq!(fs::read(&file).unwrap(), b"v2");
    assert_eq!(
        source.latest().await.unwrap().version.to_string(),
        format!("md5:{:x}", Md5::digest(b"v2"))
    );
}

/// A directory on another file system than the temp dir, if there is one.
fn other_fs_dir() -> Option<tempfile::TempDir> {
    use std::os::unix::fs::MetadataExt;
    let here = fs::metadata(std::env::temp_dir()).ok()?.dev();
    let shm = Path::new("/dev/shm");
    (fs::metadata(shm).ok()?.dev() != here)
        .then(|| tempfile::tempdir_in(shm).ok())
        .flatten()
}

#[tokio::test]
async fn publish_across_file_systems_copies() {
    let other = other_fs_dir().expect(
        "this test needs /dev/shm on another file system than the temp dir (a tmpfs, as \
         Linux mounts it), to publish across file systems",
    );
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    let root = tmp.path().join("data");
    fixed_tree(&root);
    let out = other.path().join("out");
    write(&out.join("run.sh"), b"#!/bin/sh\n", 0o755);
    write(&out.join("sub/x"), b"x", 0o600);
    symlink("sub/x", out.join("lx")).unwrap();
    let expected = v(&out);
    let source = open(&ctx, &root, None).await;
    let published = source.publish(&out).await.unwrap();
    assert_eq!(
        published.version, expected,
        "exec bits and links survive the copy"
    );
    assert_eq!(v(&root), expected);
    assert!(out.exists(), "a copy leaves the caller's directory alone");

    // A copy that fails leaves the previous content in place.
    let bad = other.path().join("bad");
    write(&bad.join("ok"), b"ok", 0o644);
    mkfifo(&bad.join("pipe"));
    let e = source.publish(&bad).await.unwrap_err();
    assert!(e.to_string().contains("pipe"), "{e}");
    assert_eq!(v(&root), expected);
}

#[tokio::test]
async fn publish_refuses_bad_input_and_keeps_content() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    let root = tmp.path().join("data");
    fixed_tree(&root);
    let before = v(&root);
    let source = open(&ctx, &root, None).await;
    for (dir, what) in [
        (root.join("data"), "inside the root"),
        (tmp.path().to_owned(), "holding the root"),
    ] {
        let e = source.publish(&dir).await.unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{what}: {e}");
        assert!(e.to_string().contains("overlaps"), "{what}: {e}");
    }
    let file = tmp.path().join("f");
    write(&file, b"f", 0o644);
    let e = source.publish(&file).await.unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    let e = source
        .publish(&tmp.path().join("missing"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    // A symbolic link is never followed: its target stays where it is.
    let elsewhere = tmp.path().join("elsewhere");
    write(&elsewhere.join("keep.txt"), b"keep", 0o644);
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let e = source.publish(&link).await.unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert_eq!(fs::read(elsewhere.join("keep.txt")).unwrap(), b"keep");
    assert_eq!(v(&root), before);
}

#[tokio::test]
async fn materialize_in_place_or_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    let root = tmp.path().join("data");
    fixed_tree(&root);
    let source = open(&ctx, &root, None).await;
    let scratch = tmp.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    let old = source.latest().await.unwrap().version;
    let at = source.materialize(&old, &scratch).await.unwrap();
    assert_eq!(at, fs::canonicalize(&root).unwrap(), "in place, no copy");
    assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);
    fs::write(root.join("README"), b"changed").unwrap();
    let e = source.materialize(&old, &scratch).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::NotFound {
                what: "version",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains(&old.to_string()), "{e}");
    let fields = source.fields(Some(&old), &at).unwrap();
    assert_eq!(fields.get("ROOT").map(String::as_str), at.to_str());
    assert!(matches!(
        source.versions().await,
        Err(Error::NotSupported { .. })
    ));
}

#[tokio::test]
async fn resolve_makes_locations_absolute() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    fixed_tree(&tmp.path().join("rel/dir"));
    let kind = PathKind::default();
    let spec = kind
        .resolve(&ctx, new_source("s", Some("rel/dir"), Some("./data/")))
        .await
        .unwrap();
    let canonical = fs::canonicalize(tmp.path().join("rel/dir")).unwrap();
    assert_eq!(spec.kind, "path");
    assert_eq!(Path::new(&spec.location), canonical);
    assert_eq!(spec.path.as_deref(), Some("data"));
    assert!(!spec.owned);
    let spec = kind
        .resolve(&ctx, new_source("s", Some("./rel/../rel/dir/README"), None))
        .await
        .unwrap();
    assert_eq!(Path::new(&spec.location), canonical.join("README"));
    if let Some(home) = std::env::var_os("HOME").and_then(|h| fs::canonicalize(h).ok()) {
        let spec = kind
            .resolve(&ctx, new_source("s", Some("~"), None))
            .await
            .unwrap();
        assert_eq!(Path::new(&spec.location), home);
    }
}

#[tokio::test]
async fn bad_locations_and_sub_paths_are_quoted() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    fixed_tree(&tmp.path().join("d"));
    let outside = tempfile::tempdir().unwrap();
    symlink(outside.path(), tmp.path().join("d/escape")).unwrap();
    let kind = PathKind::default();
    let resolve = |loc: Option<&'static str>, sub: Option<&'static str>| {
        kind.resolve(&ctx, new_source("s", loc, sub))
    };

    let e = resolve(Some("no/such/dir"), None).await.unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what: "path", name, .. } if name == "no/such/dir"),
        "{e}"
    );
    assert!(e.to_string().contains("\"no/such/dir\""), "{e}");

    let e = resolve(Some("d"), Some("nope/x")).await.unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { name, .. } if name == "nope/x"),
        "{e}"
    );

    for (sub, quoted) in [
        ("../d", "\"../d\""),
        ("escape", "\"escape\""),
        ("/etc", "\"/etc\""),
    ] {
        let e = resolve(Some("d"), Some(sub)).await.unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{sub}: {e}");
        assert!(e.to_string().contains(quoted), "{sub}: {e}");
    }

    let e = resolve(Some("d/README"), Some("x")).await.unwrap_err();
    assert!(
        matches!(e, Error::Invalid { .. }) && e.to_string().contains("only a directory"),
        "{e}"
    );

    let mut tagged = new_source("s", Some("d"), None);
    tagged.tag = Some("v1.0".into());
    let e = kind.resolve(&ctx, tagged).await.unwrap_err();
    assert!(
        matches!(e, Error::Invalid { .. }) && e.to_string().contains("\"v1.0\""),
        "{e}"
    );

    let e = resolve(Some(""), None).await.unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    let e = resolve(Some("/dev/null"), None).await.unwrap_err();
    assert!(
        matches!(e, Error::Invalid { .. }) && e.to_string().contains("/dev/null"),
        "{e}"
    );
}

#[tokio::test]
async fn no_location_creates_an_owned_temp_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    let kind = PathKind::default();
    let spec = kind
        .resolve(&ctx, new_source("results", None, None))
        .await
        .unwrap();
    assert!(spec.owned);
    let loc = PathBuf::from(&spec.location);
    assert!(loc.is_dir());
    assert!(
        loc.starts_with(fs::canonicalize(std::env::temp_dir()).unwrap()),
        "{}",
        loc.display()
    );
    let name = loc.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("dkt-results-") && name.len() == "dkt-results-".len() + 6,
        "{name}"
    );
    assert_eq!(fs::read_dir(&loc).unwrap().count(), 0);

    let source = kind.open(&ctx, &spec).unwrap();
    let v = source.latest().await.unwrap().version;
    assert_eq!(
        v.to_string(),
        format!("md5:{:x}", Md5::digest(TREE_HEADER)),
        "the empty tree"
    );
    source.remove().await.unwrap();
    assert!(
        !loc.exists(),
        "an owned location is removed with the source"
    );

    let e = kind
        .resolve(&ctx, new_source("r", None, Some("sub")))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
}

#[tokio::test]
async fn remove_keeps_what_dtk_did_not_create() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    let root = tmp.path().join("data");
    fixed_tree(&root);
    let source = open(&ctx, &root, None).await;
    source.latest().await.unwrap();
    assert!(source.cache_path().exists());
    assert!(source
        .cache_path()
        .starts_with(tmp.path().join(".dkt/cache/path")));
    source.remove().await.unwrap();
    assert!(root.join("README").exists());
    assert!(
        !source.cache_path().exists(),
        "the cache goes with the source"
    );

    // An owned spec whose location was not made by dtk is not deleted.
    let mut spec = source.spec().clone();
    spec.owned = true;
    let e = PathKind::default()
        .open(&ctx, &spec)
        .unwrap()
        .remove()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    assert!(root.join("README").exists());
}

#[test]
fn infer_scores_local_paths_only() {
    let kind = PathKind::default();
    for yes in [
        "/abs/x",
        "./x",
        "../x",
        "~/x",
        ".",
        "~",
        "Cargo.toml",
        "src",
    ] {
        assert_eq!(kind.infer(yes), Some(10), "{yes}");
    }
    for no in [
        "https://github.com/a/b",
        "s3://bucket/key",
        "git@github.com:a/b.git",
        "no-such-file-here",
        "",
    ] {
        assert_eq!(kind.infer(no), None, "{no}");
    }
}

#[test]
fn open_rejects_relative_locations() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = dtk_api::SourceSpec::new(Name::new("s").unwrap(), "path", "relative/dir");
    let e = PathKind::default()
        .open(&ctx(tmp.path()), &spec)
        .unwrap_err();
    assert!(
        matches!(e, Error::Invalid { .. }) && e.to_string().contains("relative/dir"),
        "{e}"
    );
}
