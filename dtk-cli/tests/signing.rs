//! Signed history: dtk's commits carry git SSH signatures that `git verify-commit` accepts,
//! `dkt verify` checks them against the keys the user trusts and catches a re-sealed
//! history, and the SLSA statement's DSSE envelope verifies with securesystemslib.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{git, setup_io, Env, Run};

/// A project whose commands run with their own empty user configuration
/// (`XDG_CONFIG_HOME`), so that no allowed-signers file of the machine is read.
struct Signed {
    e: Env,
    config: tempfile::TempDir,
}

impl Signed {
    fn new() -> Signed {
        Signed {
            e: Env::new(),
            config: tempfile::tempdir().unwrap(),
        }
    }
    fn init(args: &[&str]) -> Signed {
        let s = Signed::new();
        let mut a = vec!["init"];
        a.extend_from_slice(args);
        s.dkt(&a).ok();
        s
    }
    fn dkt(&self, args: &[&str]) -> Run {
        Run {
            out: self
                .e
                .cmd()
                .env("XDG_CONFIG_HOME", self.config.path())
                .env_remove("DKT_ALLOWED_SIGNERS")
                .args(args)
                .output()
                .unwrap(),
        }
    }
    fn path(&self) -> &Path {
        self.e.path()
    }
    fn git(&self, args: &[&str]) -> String {
        let mut a = vec!["--git-dir", ".dkt/.git"];
        a.extend_from_slice(args);
        git(self.path(), &a)
    }
    /// `in` -> node -> `out`; returns the output version as `out:HEX`.
    fn artifact(&self) -> String {
        setup_io(&self.e);
        self.dkt(&[
            "node",
            "run",
            "--input",
            "in",
            "--output",
            "out",
            "cp ${in:ROOT}/a.txt ${out:ROOT}/b.txt",
        ])
        .ok();
        let log = self.dkt(&["--json", "source", "log", "out"]).json();
        format!("out:{}", log[0]["version"].as_str().unwrap())
    }
    /// `dkt --json verify WHAT`, with its exit code.
    fn verify(&self, what: &str, extra: &[&str]) -> (i32, Vec<serde_json::Value>) {
        let mut a = vec!["--json", "verify", what];
        a.extend_from_slice(extra);
        let r = self.dkt(&a);
        let v: serde_json::Value = serde_json::from_str(&r.stdout())
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {}{}", r.stdout(), r.stderr()));
        (r.code(), v["checks"].as_array().unwrap().clone())
    }
}

fn signature_checks(checks: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    checks
        .iter()
        .filter(|c| c["subject"].as_str().unwrap().starts_with("commit "))
        .collect()
}

fn mismatches(checks: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    checks
        .iter()
        .filter(|c| c["result"] == "mismatch")
        .collect()
}

/// `git verify-commit` with `allowed` as the allowed-signers file: (success, stderr).
fn git_verify_commit(dir: &Path, allowed: &Path, commit: &str) -> (bool, String) {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .args(["--git-dir", ".dkt/.git", "-c", "gpg.format=ssh", "-c"])
        .arg(format!("gpg.ssh.allowedSignersFile={}", allowed.display()))
        .args(["verify-commit", commit])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ssh_keygen(args: &[&str]) -> String {
    let out = Command::new("ssh-keygen")
        .args(args)
        .output()
        .expect("ssh-keygen (openssh-client) is needed by this test");
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_commit_is_signed_and_git_verify_commit_accepts_it() {
    let s = Signed::init(&[]);
    s.artifact();
    let key = s.path().join(".dkt/signing-key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the private key is private");

    let allowed = s.path().join(".dkt/allowed_signers");
    let commits = s.git(&["rev-list", "main"]);
    assert!(commits.lines().count() >= 5, "{commits}");
    for c in commits.lines() {
        let (ok, err) = git_verify_commit(s.path(), &allowed, c);
        assert!(ok, "git verify-commit {c}: {err}");
        assert!(err.contains("Good \"git\" signature"), "{err}");
    }
    // Every commit names the same key, by git's own reading of the signature.
    let info = s.dkt(&["--json", "key", "show"]).json();
    let fp = info["fingerprint"].as_str().unwrap();
    let seen = s.git(&[
        "-c",
        &format!("gpg.ssh.allowedSignersFile={}", allowed.display()),
        "log",
        "--format=%G? %GK",
    ]);
    for line in seen.lines() {
        assert_eq!(line, format!("G {fp}"), "{seen}");
    }
    // The objects are well-formed for git's strictest check.
    s.git(&["fsck", "--strict", "--no-dangling"]);

    // The key's public half is in the history; the private key never is.
    let record = info["record"].as_str().unwrap();
    let public = s.git(&["show", &format!("main:{record}")]);
    assert!(
        public.contains("namespaces=\"git\" ssh-ed25519 "),
        "{public}"
    );
    let private = std::fs::read_to_string(&key).unwrap();
    let body: String = private
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let all = Command::new("git")
        .current_dir(s.path())
        .args([
            "--git-dir",
            ".dkt/.git",
            "cat-file",
            "--batch-all-objects",
            "--batch",
        ])
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&all.stdout);
    assert!(!all.contains("PRIVATE KEY"));
    assert!(!all.contains(&body[..40.min(body.len())]));
    assert!(!s.dkt(&["key", "show"]).ok().contains(&body[..40]));
}

#[test]
fn verify_names_the_signer_and_a_resealed_history_fails() {
    let s = Signed::init(&[]);
    let target = s.artifact();
    let (code, checks) = s.verify(&target, &[]);
    assert_eq!(code, 0, "{checks:#?}");
    let fp = s.dkt(&["--json", "key", "show"]).json()["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let sigs = signature_checks(&checks);
    assert!(!sigs.is_empty());
    for c in &sigs {
        assert_eq!(c["result"], "ok");
        assert!(c["check"].as_str().unwrap().contains(&fp), "{c}");
    }

    // A full re-seal on top: the run gets another worker, its digest is recomputed, and
    // so is the output version's record (its run digest and its own digest), at every
    // path that holds them. The hash chain is consistent again.
    let resealed = reseal(&s, &target, None);
    let (code, checks) = s.verify(&target, &[]);
    assert_eq!(code, 1, "{checks:#?}");
    let bad = mismatches(&checks);
    assert_eq!(bad.len(), 1, "only the signature check fails: {bad:#?}");
    assert_eq!(bad[0]["subject"], format!("commit {}", &resealed[..8]));
    assert_eq!(bad[0]["found"], "no signature");
    let human = s.dkt(&["verify", &target]);
    assert_eq!(human.code(), 1);
    assert!(human.stdout().contains("MISMATCH"), "{}", human.stdout());

    // Signed by an attacker's key (which even records itself under signers/): valid, but
    // nobody trusts it.
    s.git(&["update-ref", "refs/heads/main", "HEAD~1"]);
    let evil = s.path().join("evil");
    ssh_keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "evil@x",
        "-f",
        evil.to_str().unwrap(),
    ]);
    let resealed = reseal(&s, &target, Some(&evil));
    let (code, checks) = s.verify(&target, &[]);
    assert_eq!(code, 1);
    let bad = mismatches(&checks);
    assert_eq!(bad.len(), 1, "{bad:#?}");
    assert_eq!(bad[0]["subject"], format!("commit {}", &resealed[..8]));
    assert!(
        bad[0]["found"]
            .as_str()
            .unwrap()
            .starts_with("a valid signature by untrusted key SHA256:"),
        "{}",
        bad[0]
    );
    let (ok, _) = git_verify_commit(s.path(), &s.path().join(".dkt/allowed_signers"), &resealed);
    assert!(!ok, "git does not trust it either");
}

/// Add a commit on top of `main` that re-seals `target`'s producing run with another
/// worker (unsigned, or signed with the SSH key `signing_key`). Returns the commit.
fn reseal(s: &Signed, target: &str, signing_key: Option<&Path>) -> String {
    let tree = s.git(&["ls-tree", "-r", "main"]);
    let blob = |path_prefix: &str, name_has: &str| -> (String, Vec<String>) {
        let mut id = None;
        for l in tree.lines() {
            let (meta, path) = l.split_once('\t').unwrap();
            if path.starts_with(path_prefix) && path.contains(name_has) {
                id = Some(meta.split_whitespace().nth(2).unwrap().to_owned());
            }
        }
        let id = id.unwrap_or_else(|| panic!("no {path_prefix}*{name_has}* in\n{tree}"));
        let paths = tree
            .lines()
            .filter(|l| l.contains(&id))
            .map(|l| l.split_once('\t').unwrap().1.to_owned())
            .collect();
        (id, paths)
    };
    let hex = target.split_once(':').unwrap().1;
    let hex = hex.split_once(':').map_or(hex, |(_, h)| h);
    let (vblob, vpaths) = blob("versions/", hex);
    let mut version: dtk::VersionRecord =
        serde_json::from_str(&s.git(&["cat-file", "blob", &vblob])).unwrap();
    let run_id = version.run.unwrap();
    let (rblob, rpaths) = blob("runs/", &format!("{}.json", run_id.to_hex()));
    let mut run: dtk::RunRecord =
        serde_json::from_str(&s.git(&["cat-file", "blob", &rblob])).unwrap();
    run.worker = Some("attacker:666".into());
    run.seal().unwrap();
    version.run_digest = run.digest.clone();
    version.seal().unwrap();

    let index = s.path().join("forge.index");
    let write = |value: &str| -> String {
        let f = s.path().join("forge.blob");
        std::fs::write(&f, value).unwrap();
        s.git(&["hash-object", "-w", f.to_str().unwrap()])
            .trim()
            .to_owned()
    };
    let new_run = write(&(serde_json::to_string_pretty(&run).unwrap() + "\n"));
    let new_version = write(&(serde_json::to_string_pretty(&version).unwrap() + "\n"));
    let mut updates = vec![];
    for p in rpaths {
        updates.push((new_run.clone(), p));
    }
    for p in vpaths {
        updates.push((new_version.clone(), p));
    }
    if let Some(key) = signing_key {
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let fields: Vec<&str> = public.split_whitespace().collect();
        let line = format!("evil@x namespaces=\"git\" {} {}\n", fields[0], fields[1]);
        updates.push((write(&line), "signers/evil.pub".to_owned()));
    }
    let with_index = |args: &[&str]| -> String {
        let out = Command::new("git")
            .current_dir(s.path())
            .env("GIT_INDEX_FILE", &index)
            .env("GIT_AUTHOR_NAME", "dtk")
            .env("GIT_AUTHOR_EMAIL", "dtk@localhost")
            .env("GIT_COMMITTER_NAME", "dtk")
            .env("GIT_COMMITTER_EMAIL", "dtk@localhost")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", s.path())
            .arg("--git-dir")
            .arg(s.path().join(".dkt/.git"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    with_index(&["read-tree", "main"]);
    for (id, path) in &updates {
        with_index(&[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("100644,{id},{path}"),
        ]);
    }
    let tree = with_index(&["write-tree"]);
    let mut args: Vec<String> = vec![];
    if let Some(key) = signing_key {
        args.extend([
            "-c".into(),
            "gpg.format=ssh".into(),
            "-c".into(),
            format!("user.signingkey={}", key.display()),
        ]);
    }
    args.extend([
        "commit-tree".into(),
        tree,
        "-p".into(),
        "main".into(),
        "-m".into(),
        format!("run {} of node x: success", run_id.short()),
    ]);
    if signing_key.is_some() {
        args.push("-S".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let commit = with_index(&args);
    s.git(&["update-ref", "refs/heads/main", &commit]);
    commit
}

#[test]
fn a_project_without_a_key_keeps_working_and_can_get_one() {
    let s = Signed::init(&["--no-signing-key"]);
    assert!(!s.path().join(".dkt/signing-key").exists());
    let target = s.artifact();
    let (code, checks) = s.verify(&target, &[]);
    assert_eq!(code, 0, "{checks:#?}");
    let skipped: Vec<_> = checks.iter().filter(|c| c["result"] == "skipped").collect();
    assert_eq!(skipped.len(), 1, "{checks:#?}");
    assert!(skipped[0]["found"]
        .as_str()
        .unwrap()
        .contains("does not sign its history"));
    assert!(s
        .dkt(&["key", "show"])
        .fails(2)
        .contains("dkt key generate"));
    assert!(s.dkt(&["key", "--help"]).ok().contains("generate"));

    let info = s
        .dkt(&["--json", "key", "generate", "--principal", "ci@build-1"])
        .json();
    assert_eq!(info["principal"], "ci@build-1");
    let fp = info["fingerprint"].as_str().unwrap().to_owned();
    let last = s.git(&["log", "-1", "--format=%s"]);
    assert_eq!(last.trim(), format!("signing: key {fp} (ci@build-1)"));
    // The artifact was recorded before signing was set up: the signed commit that set it
    // up covers it (its tree holds every earlier record).
    let (code, checks) = s.verify(&target, &[]);
    assert_eq!(code, 0, "{checks:#?}");
    let sigs = signature_checks(&checks);
    assert_eq!(sigs.len(), 1, "{sigs:#?}");
    assert!(sigs[0]["check"]
        .as_str()
        .unwrap()
        .contains(&format!("ci@build-1 {fp}")));
    // A second key is refused.
    assert!(s
        .dkt(&["key", "generate"])
        .fails(2)
        .contains("already exists"));

    // Commits made now are signed.
    s.dkt(&["source", "add", "more"]).ok();
    let (ok, err) = git_verify_commit(s.path(), &s.path().join(".dkt/allowed_signers"), "main");
    assert!(ok, "{err}");
}

#[test]
fn bad_principal_and_encrypted_keys_are_refused() {
    let s = Signed::init(&["--no-signing-key"]);
    let err = s.dkt(&["key", "generate", "--principal", "a b"]).fails(2);
    assert!(err.contains("invalid principal \"a b\""), "{err}");
    let enc = s.path().join("enc");
    ssh_keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "secret-pass",
        "-f",
        enc.to_str().unwrap(),
    ]);
    let err = s.dkt(&["key", "import", enc.to_str().unwrap()]).fails(2);
    assert!(err.contains(enc.to_str().unwrap()), "{err}");
    assert!(err.contains("encrypted"), "{err}");
    assert!(!err.contains("secret-pass"));
    let rsa = s.path().join("rsa");
    ssh_keygen(&[
        "-q",
        "-t",
        "rsa",
        "-b",
        "2048",
        "-N",
        "",
        "-f",
        rsa.to_str().unwrap(),
    ]);
    let err = s.dkt(&["key", "import", rsa.to_str().unwrap()]).fails(2);
    assert!(err.contains("ed25519"), "{err}");
}

#[test]
fn init_with_a_given_key_signs_with_it() {
    let s = Signed::new();
    let key = s.config.path().join("id_ed25519");
    ssh_keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "alice@example.org",
        "-f",
        key.to_str().unwrap(),
    ]);
    let out = s
        .dkt(&["--json", "init", "--signing-key", key.to_str().unwrap()])
        .json();
    let expected = ssh_keygen(&["-l", "-E", "sha256", "-f", key.to_str().unwrap()]);
    let fp = out["signing_key"].as_str().unwrap();
    assert!(expected.contains(fp), "{expected} vs {fp}");
    let info = s.dkt(&["--json", "key", "show"]).json();
    assert_eq!(info["principal"], "alice@example.org");
    let seen = s.git(&[
        "-c",
        &format!(
            "gpg.ssh.allowedSignersFile={}",
            s.path().join(".dkt/allowed_signers").display()
        ),
        "log",
        "--format=%G? %GS",
    ]);
    assert_eq!(seen.trim(), "G alice@example.org");
}

#[test]
fn a_clone_trusts_the_signers_it_first_saw_and_the_users_file() {
    let origin = Signed::init(&[]);
    let target = origin.artifact();
    let fp = origin.dkt(&["--json", "key", "show"]).json()["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = Signed::new();
    c.dkt(&["clone", origin.path().to_str().unwrap(), "."]).ok();
    let tofu = std::fs::read_to_string(c.path().join(".dkt/allowed_signers")).unwrap();
    let origin_tofu = std::fs::read_to_string(origin.path().join(".dkt/allowed_signers")).unwrap();
    // The signers first seen, then the clone's own key (made at clone, never copied).
    assert!(tofu.starts_with(&origin_tofu), "{tofu}");
    assert_eq!(
        tofu.lines().count(),
        origin_tofu.lines().count() + 1,
        "{tofu}"
    );
    let own = c.dkt(&["--json", "key", "show"]).json();
    assert_ne!(own["fingerprint"].as_str().unwrap(), fp, "no key travels");
    assert!(
        tofu.contains(
            own["public_key"]
                .as_str()
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap()
        ),
        "{tofu}"
    );
    let (code, checks) = c.verify(&target, &[]);
    assert_eq!(code, 0, "{checks:#?}");

    // Without the clone's own trust file, nothing is trusted: verify fails and says
    // which key signed.
    std::fs::remove_file(c.path().join(".dkt/allowed_signers")).unwrap();
    let (code, checks) = c.verify(&target, &[]);
    assert_eq!(code, 1);
    let bad = mismatches(&checks);
    assert!(
        bad.iter()
            .any(|c| c["found"].as_str().unwrap().contains(&fp)),
        "{bad:#?}"
    );

    // The user's own allowed-signers file (XDG_CONFIG_HOME/dtk/allowed_signers) trusts
    // them (the origin's key, and the clone's own, which signed its first commit).
    let origin_tofu = tofu;
    let user = c.config.path().join("dtk/allowed_signers");
    std::fs::create_dir_all(user.parent().unwrap()).unwrap();
    std::fs::write(&user, &origin_tofu).unwrap();
    let (code, checks) = c.verify(&target, &[]);
    assert_eq!(code, 0, "{checks:#?}");
    std::fs::remove_file(&user).unwrap();

    // So does a file given with --allowed-signers (or DKT_ALLOWED_SIGNERS).
    let elsewhere: PathBuf = c.config.path().join("trusted");
    std::fs::write(&elsewhere, format!("# team keys\n{origin_tofu}")).unwrap();
    let (code, _) = c.verify(&target, &["--allowed-signers", elsewhere.to_str().unwrap()]);
    assert_eq!(code, 0);
    let r =
        c.e.cmd()
            .env("XDG_CONFIG_HOME", c.config.path())
            .env("DKT_ALLOWED_SIGNERS", &elsewhere)
            .args(["verify", &target])
            .output()
            .unwrap();
    assert!(r.status.success());
}

#[test]
fn the_dsse_envelope_verifies_with_securesystemslib() {
    let s = Signed::init(&[]);
    let target = s.artifact();
    let env = s
        .dkt(&["inspect", "--format", "slsa", "--sign", &target])
        .json();
    assert_eq!(env["payloadType"], "application/vnd.in-toto+json");
    let info = s.dkt(&["--json", "key", "show"]).json();
    let fp = info["fingerprint"].as_str().unwrap();
    assert_eq!(env["signatures"][0]["keyid"], fp);
    let envelope = s.e.write("envelope.json", &env.to_string());
    let public = s.e.write(
        "key.pub",
        &format!("{}\n", info["public_key"].as_str().unwrap()),
    );
    let check = |file: &Path| {
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/py/check_dsse.py"
            ))
            .arg(file)
            .arg(&public)
            .arg(fp)
            .output()
            .expect("python3")
    };
    let out = check(&envelope);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(3), "{stderr}");
    assert!(
        out.status.success(),
        "securesystemslib rejected it: {stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "https://in-toto.io/Statement/v1"
    );

    // A statement altered after signing does not verify.
    let mut forged = env.clone();
    let statement = s.dkt(&["inspect", "--format", "slsa", &target]).json();
    let mut altered = statement.clone();
    altered["subject"][0]["name"] = "out:forged".into();
    forged["payload"] = base64(&serde_json::to_vec(&altered).unwrap()).into();
    let bad = s.e.write("forged.json", &forged.to_string());
    assert_eq!(check(&bad).status.code(), Some(1));

    // --sign needs a key and the slsa format.
    assert!(s
        .dkt(&["inspect", "--sign", &target])
        .fails(2)
        .contains("--format slsa"));
    let unsigned = Signed::init(&["--no-signing-key"]);
    let t = unsigned.artifact();
    let err = unsigned
        .dkt(&["inspect", "--format", "slsa", "--sign", &t])
        .fails(2);
    assert!(err.contains("dkt key generate"), "{err}");
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
