//! How fast the `path` kind digests: an unchanged 100,000-file tree with a warm stat cache
//! against `git status` on the same tree, the same tree with no cache, a single 1 GiB file,
//! and one core's md5 throughput for reference.
//!
//! ```text
//! cargo bench --bench path_digest --no-default-features --features path
//! ```
//!
//! The data is generated once under `target/bench-data/` (about 210 MB of small files and
//! a 1 GiB file; the first run takes a minute or two) and reused. Set
//! `DTK_BENCH_DATA=/some/dir` to put it elsewhere.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dtk_sources::path::digest;
use md5::{Digest as _, Md5};

const DIRS: usize = 1_000;
const FILES_PER_DIR: usize = 100;
const BIG: u64 = 1 << 30;

fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DTK_BENCH_DATA") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-data")
}

/// A deterministic pseudo-random generator (xorshift), so every run digests the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn git(git_dir: &Path, tree: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .arg("--work-tree")
        .arg(tree)
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The 100,000-file tree (1,000 directories of 100 files of 0 to 4 KiB), committed to a
/// git repository whose `.git` is beside it, not in it.
fn tree() -> (PathBuf, PathBuf) {
    let base = data_dir();
    let tree = base.join("tree-100k");
    let git_dir = base.join("tree-100k.git");
    let done = base.join("tree-100k.done");
    if done.exists() {
        return (tree, git_dir);
    }
    eprintln!("generating {} (once)...", tree.display());
    let _ = fs::remove_dir_all(&tree);
    let _ = fs::remove_dir_all(&git_dir);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; 4096];
    for d in 0..DIRS {
        let dir = tree.join(format!("d{:02}/s{:03}", d / 100, d % 100));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..FILES_PER_DIR {
            let len = (rng.next() % 4097) as usize;
            rng.fill(&mut buf[..len]);
            fs::write(dir.join(format!("f{f:03}.bin")), &buf[..len]).unwrap();
        }
    }
    git(&git_dir, &tree, &["init", "-q"]);
    git(&git_dir, &tree, &["add", "-A"]);
    git(
        &git_dir,
        &tree,
        &[
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
            "commit",
            "-q",
            "-m",
            "data",
        ],
    );
    fs::write(&done, b"").unwrap();
    (tree, git_dir)
}

fn big_file() -> PathBuf {
    let base = data_dir();
    let file = base.join("big-1gib.bin");
    if fs::metadata(&file).is_ok_and(|m| m.len() == BIG) {
        return file;
    }
    eprintln!("generating {} (once)...", file.display());
    fs::create_dir_all(&base).unwrap();
    let mut w = BufWriter::new(fs::File::create(&file).unwrap());
    let mut rng = Rng(42);
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..(BIG >> 20) {
        rng.fill(&mut buf);
        w.write_all(&buf).unwrap();
    }
    w.flush().unwrap();
    file
}

/// Digest until the cache is fully trusted (the racy rule makes a cache written within
/// the same second as the files were changed be checked once more).
fn warm(tree: &Path, cache: &Path) {
    for _ in 0..5 {
        if digest(tree, Some(cache)).unwrap().hashed_files == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(1_100));
    }
    panic!("the stat cache never became warm");
}

fn bench_tree(c: &mut Criterion) {
    let (tree, git_dir) = tree();
    let cache = data_dir().join("cache").join("tree-100k");
    warm(&tree, &cache);
    git(&git_dir, &tree, &["status", "--porcelain"]);
    let unchanged = digest(&tree, Some(&cache)).unwrap();
    assert_eq!(unchanged.files, (DIRS * FILES_PER_DIR) as u64);
    eprintln!("tree version {}", unchanged.version);

    let mut g = c.benchmark_group("unchanged-100k-files");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("dtk digest (warm stat cache)", |b| {
        b.iter(|| {
            let d = digest(&tree, Some(&cache)).unwrap();
            assert_eq!(d.hashed_files, 0);
            d
        })
    });
    g.bench_function("git status (committed, warm index)", |b| {
        b.iter(|| {
            let out = git(&git_dir, &tree, &["status", "--porcelain"]);
            assert!(out.stdout.is_empty(), "the tree is clean");
        })
    });
    g.finish();

    let mut g = c.benchmark_group("first-digest");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(unchanged.files));
    g.bench_function("100k files (no stat cache, OS page cache warm)", |b| {
        b.iter(|| digest(&tree, None).unwrap())
    });
    g.finish();
}

fn bench_big_file(c: &mut Criterion) {
    let file = big_file();
    let mut g = c.benchmark_group("first-digest");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Bytes(BIG));
    g.bench_function("1 GiB file (no stat cache, OS page cache warm)", |b| {
        b.iter(|| digest(&file, None).unwrap())
    });
    g.finish();
}

fn bench_md5(c: &mut Criterion) {
    let mut buf = vec![0u8; 1 << 20];
    Rng(7).fill(&mut buf);
    let mut g = c.benchmark_group("md5-one-core");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_with_input(BenchmarkId::from_parameter("1 MiB"), &buf, |b, buf| {
        b.iter(|| Md5::digest(buf))
    });
    g.finish();
}

criterion_group!(benches, bench_md5, bench_tree, bench_big_file);
criterion_main!(benches);
