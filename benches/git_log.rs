//! `versions()` of a `git` source over 80,000 commits, with and without a sub-path, side by
//! side with `git log --format=%H` (and `-- PATH`) run on the same mirror.
//!
//! The repository is generated once with `git fast-import` and cached, with dtk's mirror of
//! it, under `target/tmp/dtk-git-log-bench` (delete that directory to rebuild). Run with
//! `cargo bench --bench git_log`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use dtk_core::{Context, Kind, Name, NewSource, Secrets, Source};
use dtk_sources::git::{GitKind, GitSource};

const COMMITS: usize = 80_000;
/// The sub-path measured; about one commit in seven touches it.
const SUB_PATH: &str = "data/sub";
/// Bump to rebuild a cached repository after changing the generator.
const FORMAT: &str = "v1";

fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null");
    c
}

/// A fast-import stream: a main line of `COMMITS` commits, each changing one file out of
/// 400 spread over 20 directories (every 7th one under `data/sub/`), with a three-commit
/// side branch merged every 1,000 commits and runs of equal timestamps.
fn stream() -> Vec<u8> {
    let mut out = Vec::with_capacity(COMMITS * 200);
    let mut time = 1_400_000_000u64;
    let mut mark = 0usize;
    let mut main_tip = 0usize;
    let mut n = 0usize;
    let mut commit = |out: &mut Vec<u8>,
                      branch: &str,
                      from: usize,
                      merge: Option<usize>,
                      path: String,
                      time: u64| {
        mark += 1;
        let msg = format!("commit {mark}");
        write!(
            out,
            "commit refs/heads/{branch}\nmark :{mark}\nauthor A <a@example.com> {time} +0000\n\
             committer C <c@example.com> {time} +0000\ndata {}\n{msg}\n",
            msg.len()
        )
        .unwrap();
        if from > 0 {
            writeln!(out, "from :{from}").unwrap();
        }
        if let Some(m) = merge {
            writeln!(out, "merge :{m}").unwrap();
        }
        let content = format!("{path} changed by commit {mark}\n");
        write!(
            out,
            "M 100644 inline {path}\ndata {}\n{content}\n\n",
            content.len()
        )
        .unwrap();
        mark
    };
    while n < COMMITS {
        n += 1;
        // Runs of equal timestamps, now and then.
        if !n.is_multiple_of(5) {
            time += 1 + (n as u64 * 7919) % 60;
        }
        let path = if n.is_multiple_of(7) {
            format!("{SUB_PATH}/f{}", n % 13)
        } else {
            format!("dir{}/file{}", n % 20, (n * 31) % 20)
        };
        if n.is_multiple_of(1000) && main_tip > 0 {
            let mut side = main_tip;
            for i in 0..3 {
                let p = if i == 1 {
                    format!("{SUB_PATH}/side")
                } else {
                    format!("side/f{i}")
                };
                side = commit(&mut out, "side", side, None, p, time);
                n += 1;
            }
            main_tip = commit(&mut out, "main", main_tip, Some(side), path, time);
        } else {
            main_tip = commit(&mut out, "main", main_tip, None, path, time);
        }
    }
    out
}

/// The cached origin repository and a project cache holding dtk's mirror of it.
fn fixture() -> (PathBuf, Context) {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dtk-git-log-bench");
    let origin = root.join("origin.git");
    let done = root.join(format!("complete-{FORMAT}"));
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&origin).unwrap();
        assert!(git(&origin)
            .args(["init", "-q", "--bare", "-b", "main"])
            .status()
            .unwrap()
            .success());
        eprintln!("generating {COMMITS} commits in {}", origin.display());
        let mut child = git(&origin)
            .args(["fast-import", "--quiet"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&stream()).unwrap();
        assert!(child.wait().unwrap().success());
        std::fs::write(&done, "").unwrap();
    }
    let mut ctx = Context::new(&root, Secrets::default());
    ctx.network_timeout = Duration::from_secs(120);
    ctx.cwd = root.clone();
    (origin, ctx)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (origin, ctx) = fixture();
    let open = |path: Option<&str>| -> Arc<dyn Source> {
        let new = NewSource {
            name: Name::new("bench").unwrap(),
            kind: "git".into(),
            location: Some(origin.display().to_string()),
            tag: Some("main".into()),
            path: path.map(str::to_owned),
        };
        let spec = rt.block_on(GitKind::default().resolve(&ctx, new)).unwrap();
        GitKind::default().open(&ctx, &spec).unwrap()
    };
    let whole = open(None);
    let sub = open(Some(SUB_PATH));
    let spec = whole.spec().clone();
    let mirror = GitSource::new(&ctx, &spec).mirror_dir().to_owned();

    let git_log = |path: Option<&str>| -> usize {
        let mut cmd = git(&mirror);
        cmd.args(["log", "--format=%H", "main"]);
        if let Some(p) = path {
            cmd.args(["--", p]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        out.stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
    };
    let n_whole = rt.block_on(whole.versions()).unwrap().len();
    let n_sub = rt.block_on(sub.versions()).unwrap().len();
    assert_eq!(n_whole, git_log(None));
    assert_eq!(n_sub, git_log(Some(SUB_PATH)));
    eprintln!(
        "{n_whole} commits, {n_sub} of them change {SUB_PATH}; mirror {}",
        mirror.display()
    );

    let mut g = c.benchmark_group("git_log_80k");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("dtk versions", |b| {
        b.iter(|| rt.block_on(whole.versions()).unwrap().len())
    });
    g.bench_function("git log --format=%H", |b| b.iter(|| git_log(None)));
    g.bench_function("dtk versions -p data/sub", |b| {
        b.iter(|| rt.block_on(sub.versions()).unwrap().len())
    });
    g.bench_function("git log --format=%H -- data/sub", |b| {
        b.iter(|| git_log(Some(SUB_PATH)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
