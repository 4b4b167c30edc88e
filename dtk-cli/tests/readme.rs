//! The README's walkthrough is a real run: every `$ COMMAND` of the first transcript under
//! "## Using `dkt`" is run (by `sh`, with this build's `dkt` first on `PATH`) on the data of
//! `examples/demo.sh`, and what it prints must be what the README shows, up to:
//! - runs of spaces (column widths depend on path lengths);
//! - the project's directory, shown as `/tmp/foo`, and temporary directories
//!   (`.../dkt-tests-XXXXXX`);
//! - hex IDs and digests (8 digits or more): they depend on the machine and the time, but
//!   each one shown must stand for one real value throughout (an ID printed by one command
//!   and typed into the next must be the same), and the README's IDs in commands are
//!   replaced by the real ones before the commands run.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

/// `(command, expected output lines)` of the walkthrough.
fn transcript() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Using `dkt`\n")
        .nth(1)
        .expect("a \"## Using `dkt`\" section");
    let block = section
        .split("```text\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a ```text block in that section");
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines() {
        if let Some(cmd) = line.strip_prefix("$ ") {
            steps.push((cmd.to_owned(), Vec::new()));
        } else if let Some((_, out)) = steps.last_mut() {
            out.push(line.to_owned());
        } else {
            panic!("text before the first command: {line:?}");
        }
    }
    for (_, out) in &mut steps {
        while out.last().is_some_and(|l| l.trim().is_empty()) {
            out.pop();
        }
    }
    steps
}

/// The data of `examples/demo.sh`: a git repository `pinata` with `v1/pitfall`, builds
/// under `dmg`, and the node's script `test.sh`.
fn demo_data(dir: &Path) {
    std::fs::create_dir_all(dir.join("pinata/v1/pitfall")).unwrap();
    for b in ["2245", "2246"] {
        std::fs::create_dir_all(dir.join("dmg").join(b)).unwrap();
        std::fs::write(
            dir.join("dmg").join(b).join("Docker.dmg"),
            format!("build {b}\n"),
        )
        .unwrap();
    }
    let script = dir.join("pinata/v1/pitfall/pitfall");
    std::fs::write(
        &script,
        "#!/bin/sh\n# A stand-in for pinata's test driver: reports what it was asked to test.\n\
         echo \"pitfall: testing $*\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("pinata/README.md"), "Docker for Mac\n").unwrap();
    let repo = dir.join("pinata");
    git(&repo, &["init", "-q", "-b", "master"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "pitfall v1"]);
    std::fs::write(
        dir.join("test.sh"),
        "for build in $(ls ${dmg:ROOT}); do\n  mkdir -p ${tests:ROOT}/$build\n  \
         ${pitfall:ROOT}/pitfall --os=linux --build=$build > ${tests:ROOT}/$build/STDOUT\ndone\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
}

/// `line` with the project directory and temporary directories replaced, and runs of
/// spaces made one.
fn normalize(line: &str, project: &str) -> String {
    let line = line.replace(project, "/tmp/foo");
    let words: Vec<String> = line
        .split_whitespace()
        .map(|w| match w.find("/dkt-tests-") {
            Some(i) if w.starts_with('/') => {
                let _ = i;
                "TMP/dkt-tests-*".to_owned()
            }
            // A signing key's principal (dtk@HOST) and fingerprint differ on every run.
            _ if w.starts_with("dtk@") => "dtk@HOST".to_owned(),
            _ if w.starts_with("SHA256:") => "SHA256:...".to_owned(),
            _ => w.to_owned(),
        })
        .collect();
    words.join(" ")
}

/// `text` split into literal parts and hex runs of 8 digits or more.
fn hex_runs(text: &str) -> (String, Vec<String>) {
    let (mut skeleton, mut runs) = (String::new(), Vec::new());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
        let mut j = i;
        while j < b.len() && hex(b[j]) {
            j += 1;
        }
        let bounded = (i == 0 || !b[i - 1].is_ascii_alphanumeric())
            && (j == b.len() || !b[j].is_ascii_alphanumeric());
        if j - i >= 8 && bounded {
            skeleton.push_str("<hex>");
            runs.push(text[i..j].to_owned());
            i = j;
        } else {
            skeleton.push(b[i] as char);
            i += 1;
        }
    }
    (skeleton, runs)
}

/// The README's IDs and the real ones, both ways, by their first 8 digits.
#[derive(Default)]
struct Ids {
    to_real: BTreeMap<String, String>,
    to_readme: BTreeMap<String, String>,
}

impl Ids {
    fn pair(&mut self, readme: &str, real: &str, context: &str) {
        let (r, a) = (&readme[..8], &real[..8]);
        assert_eq!(readme.len(), real.len(), "{context}: {readme} vs {real}");
        let known = self
            .to_real
            .entry(r.to_owned())
            .or_insert_with(|| a.to_owned());
        assert_eq!(
            known, a,
            "{context}: the README's {r} stands for {known} earlier and for {a} here"
        );
        let known = self
            .to_readme
            .entry(a.to_owned())
            .or_insert_with(|| r.to_owned());
        assert_eq!(
            known, r,
            "{context}: {a} is shown as {known} earlier and as {r} here"
        );
    }

    /// `cmd` with the README's IDs replaced by the real ones.
    fn substitute(&self, cmd: &str) -> String {
        let (_, runs) = hex_runs(cmd);
        let mut out = cmd.to_owned();
        for run in runs {
            let real = self
                .to_real
                .get(&run[..8])
                .unwrap_or_else(|| panic!("{cmd}: {run} was not printed before"));
            out = out.replace(&run[..8], real);
        }
        out
    }
}

#[test]
fn the_readme_walkthrough_is_what_dkt_prints() {
    let steps = transcript();
    assert!(steps.len() >= 8, "{steps:?}");
    let e = Env::new();
    demo_data(e.path());
    let project = std::fs::canonicalize(e.path()).unwrap();
    let project = project.to_str().unwrap();
    let bin = Path::new(dkt_bin())
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let mut ids = Ids::default();
    for (cmd, expected) in &steps {
        let real_cmd = ids.substitute(cmd);
        let out = std::process::Command::new("sh")
            // What a terminal shows: stdout and stderr together.
            .args(["-c", &format!("exec 2>&1; {real_cmd}")])
            .current_dir(project)
            .env("PATH", format!("{bin}:{}", std::env::var("PATH").unwrap()))
            .env("TMPDIR", e.path().join("tmp"))
            .env("DKT_LOG", "warn")
            .env_remove("DKT_GITHUB_TOKEN")
            .env_remove("DKT_DOCKER_TOKEN")
            .env_remove("DKT_HOCKEYAPP_TOKEN")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "$ {real_cmd}\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<String> = stdout.lines().map(|l| normalize(l, project)).collect();
        let want: Vec<String> = expected.iter().map(|l| normalize(l, project)).collect();
        let shown = format!("$ {cmd}\nREADME:\n{}\nreal:\n{stdout}", expected.join("\n"));
        assert_eq!(got.len(), want.len(), "{shown}");
        for (g, w) in got.iter().zip(&want) {
            let ((gs, gr), (ws, wr)) = (hex_runs(g), hex_runs(w));
            assert_eq!(gs, ws, "{shown}");
            for (real, readme) in gr.iter().zip(&wr) {
                ids.pair(readme, real, &shown);
            }
        }
    }
}
