//! Running the real git with a fixed identity, and comparing directory trees with what git
//! itself checks out: shared by the git kind's tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Compare two directory trees: same names, bytes, executable bits and link targets.
pub fn assert_same_tree(a: &Path, b: &Path) {
    fn list(root: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_owned()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                if rel == ".git" {
                    continue;
                }
                let meta = std::fs::symlink_metadata(&p).unwrap();
                let desc = if meta.file_type().is_symlink() {
                    format!("link -> {}", std::fs::read_link(&p).unwrap().display())
                } else if meta.is_dir() {
                    stack.push(p.clone());
                    "dir".to_owned()
                } else {
                    #[cfg(unix)]
                    let exec = {
                        use std::os::unix::fs::PermissionsExt;
                        meta.permissions().mode() & 0o111 != 0
                    };
                    #[cfg(not(unix))]
                    let exec = false;
                    format!("file exec={exec} {:?}", std::fs::read(&p).unwrap())
                };
                out.insert(rel, desc);
            }
        }
        out
    }
    assert_eq!(list(a), list(b), "{} vs {}", a.display(), b.display());
}

/// Extract `git archive TREEISH` of `repo` into `dest`.
pub fn git_archive(repo: &Path, treeish: &str, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    let archive = Command::new("git")
        .current_dir(repo)
        .args(["archive", "--format=tar", treeish])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(archive.status.success());
    let mut tar = Command::new("tar")
        .current_dir(dest)
        .args(["-xf", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    tar.stdin
        .take()
        .unwrap()
        .write_all(&archive.stdout)
        .unwrap();
    assert!(tar.wait().unwrap().success());
}

/// Run git in `dir` with a fixed identity and no user or system configuration.
pub fn git_env(dir: &Path, args: &[&str], date: Option<u64>) -> String {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE");
    if let Some(d) = date {
        cmd.env("GIT_AUTHOR_DATE", format!("@{d} +0000"))
            .env("GIT_COMMITTER_DATE", format!("@{d} +0000"));
    }
    let out = cmd.output().expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim_end()
        .to_owned()
}
