//! `dkt init`, `dkt clone`, project discovery, exit codes, `--json`, closed pipes.

mod common;
use common::*;

#[test]
fn init_prints_the_design_message_and_lays_out_dkt() {
    let e = Env::new();
    let out = e.dkt(&["init"]).ok();
    let dkt = std::fs::canonicalize(e.path()).unwrap().join(".dkt");
    assert_eq!(
        out,
        format!(
            "Initialized empty Datakit repository in {}/\n",
            dkt.display()
        )
    );
    assert!(dkt.join(".git/HEAD").is_file());
    assert!(dkt.join("config").is_file());
    assert!(dkt.join("secrets").is_dir());
    // The history is plain git and needs no identity.
    let log = git(
        e.path(),
        &["--git-dir", ".dkt/.git", "log", "--format=%an %s"],
    );
    assert_eq!(log, "dtk init: empty Datakit project\n");
}

#[test]
fn init_twice_is_an_error_and_changes_nothing() {
    let e = Env::project();
    let before = git(e.path(), &["--git-dir", ".dkt/.git", "rev-parse", "main"]);
    let err = e.dkt(&["init"]).fails(2);
    assert!(err.contains("already exists"), "{err}");
    let after = git(e.path(), &["--git-dir", ".dkt/.git", "rev-parse", "main"]);
    assert_eq!(before, after);
}

#[test]
fn commands_outside_a_project_say_how_to_make_one() {
    let e = Env::new();
    let err = e.dkt(&["source", "list"]).fails(2);
    assert!(err.contains("not a dtk project"), "{err}");
    assert!(err.contains("dkt init"), "{err}");
}

#[test]
fn project_is_found_from_subdirectories_and_with_dash_c() {
    let e = Env::project();
    std::fs::create_dir_all(e.path().join("a/b")).unwrap();
    let out = e
        .cmd()
        .current_dir(e.path().join("a/b"))
        .args(["source", "list"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("NAME"));
    let other = Env::new();
    let r = other.dkt(&["-C", e.path().to_str().unwrap(), "--json", "source", "list"]);
    assert_eq!(r.json(), serde_json::json!([]));
}

#[test]
fn tokens_are_secret_files_never_committed() {
    let e = Env::new();
    e.dkt(&[
        "init",
        "--github-token=ghp_CANARY_init_1234",
        "--docker-token",
        "dck_CANARY_5678",
    ])
    .ok();
    use std::os::unix::fs::PermissionsExt;
    let f = e.path().join(".dkt/secrets/GITHUB_TOKEN");
    assert_eq!(
        std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "ghp_CANARY_init_1234");
    let all = git(e.path(), &["--git-dir", ".dkt/.git", "log", "-p", "--all"]);
    assert!(!all.contains("CANARY"));
    let objects = git(
        e.path(),
        &[
            "--git-dir",
            ".dkt/.git",
            "cat-file",
            "--batch-all-objects",
            "--batch",
        ],
    );
    assert!(!objects.contains("CANARY"));
}

#[test]
fn clone_copies_the_metadata() {
    let a = Env::project();
    std::fs::create_dir_all(a.path().join("data")).unwrap();
    a.write("data/x", "1");
    a.dkt(&["source", "add", "data", "data"]).ok();
    let b = Env::new();
    let src = a.path().to_str().unwrap();
    let out = b.dkt(&["clone", src, "copy"]).ok();
    assert!(out.contains("Cloned"), "{out}");
    let list = b.dkt(&["-C", "copy", "--json", "source", "list"]).json();
    assert_eq!(list[0]["name"], "data");
    // Also from the .dkt/.git path, and into the current directory.
    let c = Env::new();
    let git_dir = a.path().join(".dkt/.git");
    c.dkt(&["clone", git_dir.to_str().unwrap()]).ok();
    assert!(c.path().join(".dkt/.git").is_dir());
    // A clone over an existing project is refused; a missing repo is an error.
    c.dkt(&["clone", src]).fails(2);
    let d = Env::new();
    let err = d.dkt(&["clone", "/nonexistent/project"]).stderr();
    assert!(err.contains("/nonexistent/project"), "{err}");
    assert!(!d.path().join(".dkt").exists());
}

#[test]
fn clone_of_a_non_dtk_repository_is_refused() {
    let plain = Env::new();
    pinata_repo(plain.path());
    let d = Env::new();
    let err = d
        .dkt(&["clone", plain.path().to_str().unwrap(), "x"])
        .fails(2);
    assert!(err.contains("not a dtk project"), "{err}");
    assert!(!d.path().join("x/.dkt").exists());
}

#[test]
fn usage_errors_exit_2() {
    let e = Env::project();
    e.dkt(&["source", "frobnicate"]).fails(2);
    e.dkt(&["nosuchcommand"]).fails(2);
    assert!(e.dkt(&["--help"]).ok().contains("Exit codes"));
}

/// A stdout whose reading end is already closed, so dkt's first write fails with EPIPE.
fn closed_pipe() -> std::process::Stdio {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are ours and open; each is closed once.
    unsafe {
        libc::close(fds[0]);
        std::process::Stdio::from(std::os::fd::OwnedFd::from_raw_fd(fds[1]))
    }
}

#[test]
fn a_closed_pipe_is_quiet() {
    let e = Env::project();
    for i in 0..3 {
        std::fs::create_dir_all(e.path().join(format!("d{i}"))).unwrap();
        e.dkt(&["source", "add", &format!("s{i}"), &format!("d{i}")])
            .ok();
    }
    for args in [
        &["source", "list"][..],
        &["--json", "source", "list"],
        &["--json", "source", "log", "s0"],
        &["node", "list"],
    ] {
        let out = e.cmd().args(args).stdout(closed_pipe()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "dkt {args:?}: {stderr}");
        assert_eq!(stderr, "", "dkt {args:?}");
    }
}
