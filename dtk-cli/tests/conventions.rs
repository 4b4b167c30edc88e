//! What users expect of a command-line tool: shell completions and man pages generated from
//! the command definitions, `--color` and `NO_COLOR`, and `--json` from every command that
//! changes something.

mod common;
use common::*;

use std::process::{Command, Stdio};

fn has_escapes(s: &str) -> bool {
    s.contains('\u{1b}')
}

#[test]
fn bash_completions_parse_and_register_dkt() {
    let e = Env::new();
    let script = e.dkt(&["completions", "bash"]).ok();
    assert!(
        script.contains("source") && script.contains("node"),
        "{script}"
    );
    let file = e.write("dkt.bash", &script);
    // bash parses it, and sourcing it registers a completion for dkt.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -e; bash -n '{0}'; source '{0}'; complete -p dkt",
            file.display()
        ))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("dkt"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Asking for completions of `dkt source ` offers its subcommands.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}'; COMP_WORDS=(dkt source ''); COMP_CWORD=2; COMP_LINE='dkt source '; \
             COMP_POINT=${{#COMP_LINE}}; _dkt dkt '' source; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .output()
        .unwrap();
    let offered = String::from_utf8_lossy(&out.stdout);
    for sub in ["add", "pin", "freeze", "update"] {
        assert!(offered.lines().any(|l| l == sub), "no {sub} in: {offered}");
    }
}

#[test]
fn zsh_and_fish_completions_name_the_commands() {
    let e = Env::new();
    let zsh = e.dkt(&["completions", "zsh"]).ok();
    assert!(zsh.starts_with("#compdef dkt"), "{zsh}");
    assert!(zsh.contains("'add:"), "{zsh}");
    let fish = e.dkt(&["completions", "fish"]).ok();
    assert!(fish.contains("complete -c dkt"), "{fish}");
    assert!(fish.contains("-a \"add\""), "{fish}");
    for (shell, script) in [("zsh", &zsh), ("fish", &fish)] {
        // Where the shell is installed, it parses the script too.
        if let Ok(out) = Command::new(shell)
            .arg("-n")
            .arg(e.write(&format!("dkt.{shell}"), script))
            .output()
        {
            assert!(out.status.success(), "{shell}: {out:?}");
        }
    }
    e.dkt(&["completions", "tcsh"]).fails(2);
}

#[test]
fn man_pages_come_from_the_command_definitions() {
    let e = Env::new();
    let page = e.dkt(&["man"]).ok();
    assert!(page.contains(".TH dkt 1"), "{page}");
    assert!(page.contains("Datakit"), "{page}");
    let listed = e.dkt(&["--json", "man", "--dir", "man1"]).json();
    let pages: Vec<&str> = listed["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for want in [
        "dkt.1",
        "dkt-source.1",
        "dkt-source-add.1",
        "dkt-node-run.1",
    ] {
        assert!(pages.contains(&want), "{want} not in {pages:?}");
        assert!(e.path().join("man1").join(want).is_file());
    }
    let add = std::fs::read_to_string(e.path().join("man1/dkt-source-add.1")).unwrap();
    assert!(add.contains(".TH dkt-source-add 1"), "{add}");
    assert!(add.contains("LOCATION"), "{add}");
}

#[test]
fn color_follows_the_flag_and_no_color_and_never_reaches_a_log_file() {
    let e = Env::project();
    // A debug log has lines; `--color always` colors them, to make sure there is
    // something to color.
    let run = |args: &[&str], no_color: bool| {
        let mut cmd = e.cmd();
        cmd.env("DKT_LOG", "debug").env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.args(args).output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let colored = run(&["--color", "always", "source", "list"], false);
    assert!(has_escapes(&colored), "{colored}");
    for (args, no_color) in [
        (&["--color", "never", "source", "list"][..], false),
        (&["--color=never", "source", "list"][..], false),
        // stderr is a pipe here, as when it is redirected to a log file.
        (&["source", "list"][..], false),
        (&["--color", "auto", "source", "list"][..], true),
    ] {
        let err = run(args, no_color);
        assert!(!err.trim().is_empty(), "{args:?}: no log");
        assert!(!has_escapes(&err), "{args:?}: {err}");
    }
    // A log written to a file has no escape codes.
    let log = e.path().join("dkt.log");
    let status = e
        .cmd()
        .env("DKT_LOG", "debug")
        .env_remove("NO_COLOR")
        .args(["source", "list"])
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.is_empty() && !has_escapes(&text), "{text}");
    // clap's own errors follow the flag too.
    let err = e.dkt(&["--color", "always", "nosuchcommand"]).stderr();
    assert!(has_escapes(&err), "{err}");
    let err = e.dkt(&["--color", "never", "nosuchcommand"]).stderr();
    assert!(!has_escapes(&err), "{err}");
    e.dkt(&["--color", "sometimes", "source", "list"]).fails(2);
}

#[test]
fn every_mutating_command_answers_json() {
    let e = Env::new();
    let j = |args: &[&str]| {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        e.dkt(&all).json()
    };
    assert!(j(&["init"])["dkt_dir"].is_string());
    e.write("in/a.txt", "hello\n");
    std::fs::create_dir_all(e.path().join("out")).unwrap();
    let added = j(&["source", "add", "in", "in"]);
    assert_eq!(added["name"], "in");
    j(&["source", "add", "out", "out"]);
    let latest = j(&["source", "update", "in"]);
    let version = latest[0]["latest"].as_str().unwrap().to_owned();
    assert!(version.starts_with("md5:"), "{latest}");
    let pinned = j(&["source", "pin", "in", &version]);
    assert_eq!(pinned["pinned"], version.as_str());
    assert_eq!(
        j(&["source", "unpin", "in"]),
        serde_json::json!({"name": "in", "pinned": null})
    );
    assert_eq!(j(&["source", "freeze", "in"])["frozen"], true);
    assert_eq!(j(&["source", "thaw", "in"])["frozen"], false);

    let node = j(&[
        "node",
        "run",
        "--name",
        "copy",
        "--input=in",
        "--output=out",
        "cp -r ${in:ROOT}/. ${out:ROOT}/",
    ]);
    let id = node["node_full"].as_str().unwrap().to_owned();
    assert_eq!(
        node["outcome"]["ran"]["node"].as_str(),
        Some(id.as_str()),
        "{node}"
    );
    let rerun = j(&["node", "rerun", "copy"]);
    assert!(rerun[0]["outcome"].is_object(), "{rerun}");
    let pass = j(&["run"]);
    assert!(pass.is_object(), "{pass}");

    // The daemon writes one JSON object per line: runs as they happen, then each pass.
    e.write("in/b.txt", "more\n");
    let out = e
        .cmd()
        .args(["--json", "daemon", "--passes", "1", "--interval", "1s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|v| v["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["run_started", "run_finished", "pass"], "{text}");
    assert_eq!(events[1]["status"], "success", "{text}");
    assert_eq!(events[1]["node"].as_str(), Some(id.as_str()));

    let removed = j(&["node", "rm", "copy"]);
    assert_eq!(removed["removed"], true);
    let rm = j(&["source", "rm", "out"]);
    assert_eq!(rm["name"], "out");
    let mut set = e.cmd();
    let out = set
        .args(["--json", "secret", "set", "API_KEY"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"value\n")?;
            c.wait_with_output()
        })
        .unwrap();
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said, serde_json::json!({"name": "API_KEY", "set": true}));
    assert_eq!(j(&["secret", "rm", "API_KEY"])["removed"], true);
}
