//! `dkt secret set|list|rm`, secrets and private variables in commands: exported only to
//! the commands that name them, redacted everywhere, never in the history; ordinary shell
//! variables left to the shell.

mod common;
use common::*;

use std::io::Write;
use std::process::Stdio;

const CANARY: &str = "s3cr3t-CANARY-esx-5150";
const OTHER: &str = "0ther-CANARY-never-named";
const VAR_CANARY: &str = "vars-CANARY-pass-77";

fn secret_set(e: &Env, name: &str, value: &str) -> Run {
    let mut child = e
        .cmd()
        .args(["secret", "set", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{value}\n").as_bytes())
        .unwrap();
    Run {
        out: child.wait_with_output().unwrap(),
    }
}

/// The log of the newest run of the node defined by `args` (`dkt node run ...`).
fn last_log(e: &Env, args: &[&str]) -> String {
    let mut define = vec!["node", "run", "--no-run"];
    define.extend_from_slice(args);
    let id = e.dkt(&define).ok();
    let runs = e.dkt(&["--json", "node", "log", id.trim()]).json();
    let run = runs[0]["id"].as_str().unwrap().to_owned();
    e.dkt(&["--json", "node", "show", &run]).json()["log"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn history(e: &Env) -> String {
    let mut all = git(e.path(), &["--git-dir", ".dkt/.git", "log", "-p", "--all"]);
    let objects = std::process::Command::new("git")
        .args([
            "--git-dir",
            ".dkt/.git",
            "cat-file",
            "--batch-all-objects",
            "--batch",
        ])
        .current_dir(e.path())
        .output()
        .unwrap();
    all.push_str(&String::from_utf8_lossy(&objects.stdout));
    all
}

#[test]
fn secrets_are_set_from_stdin_listed_by_name_and_removed() {
    let e = Env::project();
    secret_set(&e, "ESX_PASS", CANARY).ok();
    secret_set(&e, "OTHER_SECRET", OTHER).ok();
    let list = e.dkt(&["secret", "list"]).ok();
    assert!(
        list.contains("ESX_PASS") && list.contains("OTHER_SECRET"),
        "{list}"
    );
    assert!(!list.contains(CANARY) && !list.contains(OTHER), "{list}");
    let names = e.dkt(&["--json", "secret", "list"]).json();
    assert_eq!(names, serde_json::json!(["ESX_PASS", "OTHER_SECRET"]));
    use std::os::unix::fs::PermissionsExt;
    let file = e.path().join(".dkt/secrets/ESX_PASS");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), CANARY);
    // Bad names and empty values are refused, quoting the name.
    let err = secret_set(&e, "../x", "v").fails(2);
    assert!(err.contains("../x"), "{err}");
    // The name is checked first, whatever the value.
    let err = secret_set(&e, "../y", "").fails(2);
    assert!(err.contains("secret name") && err.contains("../y"), "{err}");
    let err = secret_set(&e, "EMPTY", "").fails(2);
    assert!(err.contains("EMPTY"), "{err}");
    // Removed, then gone; removing again is an error naming it.
    e.dkt(&["secret", "rm", "OTHER_SECRET"]).ok();
    assert!(!e.path().join(".dkt/secrets/OTHER_SECRET").exists());
    let err = e.dkt(&["secret", "rm", "OTHER_SECRET"]).fails(2);
    assert!(err.contains("OTHER_SECRET"), "{err}");
    assert_eq!(
        e.dkt(&["--json", "secret", "list"]).json(),
        serde_json::json!(["ESX_PASS"])
    );
    assert!(!history(&e).contains(CANARY));
}

#[test]
fn a_command_gets_only_the_secrets_it_names_and_they_are_redacted() {
    let e = Env::project();
    setup_io(&e);
    secret_set(&e, "ESX_PASS", CANARY).ok();
    secret_set(&e, "OTHER_SECRET", OTHER).ok();
    // A docker credential: its password half is redacted too.
    secret_set(&e, "DOCKER_TOKEN", "alice:docker-pw-CANARY").ok();
    let cmd = "echo pass=${ESX_PASS}; env; echo docker-pw-$(echo CANARY)";
    let r = e.dkt(&["node", "run", "--input=in", "--output=out", cmd]);
    r.ok();
    let log = last_log(&e, &["--input=in", "--output=out", cmd]);
    assert!(log.contains("pass=***"), "{log}");
    assert!(
        log.contains("ESX_PASS=***"),
        "exported because named: {log}"
    );
    assert!(
        !log.contains("OTHER_SECRET="),
        "not named, not exported: {log}"
    );
    assert!(
        !log.contains("DOCKER_TOKEN="),
        "a kind's credential is never exported: {log}"
    );
    for canary in [CANARY, OTHER, "docker-pw-CANARY"] {
        assert!(!log.contains(canary), "{canary} in {log}");
        assert!(!r.stdout().contains(canary) && !r.stderr().contains(canary));
        assert!(!history(&e).contains(canary), "{canary} in the history");
    }
    // A kind's credential named in a command is refused before anything runs.
    let commits = e.commits();
    let err = e
        .dkt(&[
            "node",
            "run",
            "--input=in",
            "--output=out",
            "echo ${DOCKER_TOKEN}",
        ])
        .fails(2);
    assert!(
        err.contains("DOCKER_TOKEN") && err.contains("credential"),
        "{err}"
    );
    assert_eq!(e.commits(), commits);
}

#[test]
fn private_variables_named_like_secrets_are_redacted_and_flagged() {
    let e = Env::project();
    setup_io(&e);
    std::fs::write(
        e.path().join(".dkt/config"),
        format!("[vars]\nESX_USER = \"builder\"\nESX_PASSWORD = \"{VAR_CANARY}\"\n"),
    )
    .unwrap();
    let cmd = "echo user=${ESX_USER} pass=${ESX_PASSWORD}";
    let r = e.dkt(&["node", "run", "--input=in", "--output=out", cmd]);
    r.ok();
    assert!(
        r.stderr().contains("ESX_PASSWORD") && r.stderr().contains("dkt secret set"),
        "says to move it: {}",
        r.stderr()
    );
    assert!(!r.stderr().contains("ESX_USER"), "{}", r.stderr());
    let log = last_log(&e, &["--input=in", "--output=out", cmd]);
    assert!(log.contains("user=builder pass=***"), "{log}");
    assert!(!history(&e).contains(VAR_CANARY));
}

/// `${f}` in a loop, `${1}`, `${X#*:}`, `${PATH//:/ }`, `${V:-default}`: the shell's.
#[test]
fn ordinary_shell_variables_are_the_shells() {
    let e = Env::project();
    setup_io(&e);
    // (`${PATH//:/ }` is bash syntax: sh is not asked to expand it, only dtk to leave it.)
    let cmd = "X=a:b; for f in one two; do echo f=${f}; done; set -- p1; \
               echo arg=${1} cut=${X#*:} ${UNSET_VAR:-dflt}; \
               [ -n \"\" ] && echo ${PATH//:/ }; cp ${in:ROOT}/a.txt ${out:ROOT}/";
    e.dkt(&[
        "node",
        "run",
        "--name",
        "shell",
        "--input=in",
        "--output=out",
        cmd,
    ])
    .ok();
    let log = last_log(&e, &["--name", "shell", "--input=in", "--output=out", cmd]);
    assert!(log.contains("f=one\nf=two\narg=p1 cut=b dflt\n"), "{log}");
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/a.txt")).unwrap(),
        "hello\n"
    );
    // The same in a script file.
    e.write(
        "loop.sh",
        "for f in x y; do echo got=${f}; done\necho ${1:-none} > ${out:ROOT}/arg\n",
    );
    e.dkt(&[
        "node",
        "run",
        "--name",
        "shell",
        "--input=in",
        "--output=out",
        "loop.sh",
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/arg")).unwrap(),
        "none\n"
    );
    // A source's field that does not exist is still an error naming it.
    let err = e
        .dkt(&[
            "node",
            "run",
            "--input=in",
            "--output=out",
            "echo ${in:NOPE}",
        ])
        .fails(2);
    assert!(err.contains("in:NOPE"), "{err}");
}
