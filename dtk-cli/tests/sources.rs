//! `dkt source add|list|log|pin|unpin|link|rm|update|freeze|thaw` with `path` and `git`.

mod common;
use common::*;

fn table_row<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in\n{out}"))
        .split_whitespace()
        .collect()
}

#[test]
fn path_sources_add_list_log() {
    let e = Env::project();
    e.write("data/a.txt", "a");
    let out = e.dkt(&["source", "add", "data", "./data"]).ok();
    assert!(out.starts_with("NAME"), "{out}");
    let row = table_row(&out, "data");
    assert_eq!(row[1], "path");
    assert!(row[2].ends_with("/data"), "{out}");
    assert_eq!(&row[3..], ["-", "-"]);
    let list = e.dkt(&["source", "list"]).ok();
    let latest = table_row(&list, "data")[1].to_owned();
    assert!(latest.starts_with("md5:") && latest.len() == 36, "{list}");
    // A change is a new version after update; log lists both, newest first.
    e.write("data/a.txt", "changed");
    let up = e.dkt(&["source", "update"]).ok();
    assert!(up.contains("updated"), "{up}");
    let log = e.dkt(&["source", "log", "data"]).ok();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ID", "FULL"]
    );
    assert_eq!(lines.len(), 3, "{log}");
    assert!(lines[2].ends_with(&latest), "{log}");
    let newest = lines[1].split_whitespace().nth(1).unwrap();
    assert_ne!(newest, latest);
    assert_eq!(&lines[1][..8], &newest[4..12]);
    // Unchanged: no new commit.
    let commits = e.commits();
    let up = e.dkt(&["source", "update", "data"]).ok();
    assert!(up.contains("unchanged"), "{up}");
    assert_eq!(e.commits(), commits);
    // --json forms.
    let j = e.dkt(&["--json", "source", "log", "data"]).json();
    assert_eq!(j.as_array().unwrap().len(), 2);
    let j = e.dkt(&["--json", "source", "list"]).json();
    assert_eq!(j[0]["latest"], newest);
}

#[test]
fn temporary_source_when_no_location() {
    let e = Env::project();
    let out = e.dkt(&["--json", "source", "add", "tests"]).json();
    assert_eq!(out["kind"], "path");
    let loc = out["location"].as_str().unwrap().to_owned();
    assert!(std::path::Path::new(&loc).is_dir());
    e.dkt(&["source", "rm", "tests"]).ok();
    assert!(
        !std::path::Path::new(&loc).exists(),
        "owned temp dir removed with the source"
    );
}

#[test]
fn bad_input_is_rejected_quoted_and_changes_nothing() {
    let e = Env::project();
    e.write("data/a", "a");
    e.dkt(&["source", "add", "data", "data"]).ok();
    let commits = e.commits();
    let cases: &[(&[&str], &str)] = &[
        (&["source", "add", "a:b", "data"], "\"a:b\""),
        (&["source", "add", "a/b", "data"], "\"a/b\""),
        (&["source", "add", "a*", "data"], "\"a*\""),
        (&["source", "add", "--", "-x", "data"], "\"-x\""),
        (&["source", "add", "data", "data"], "\"data\""),
        (&["source", "add", "x", "./no/such/dir"], "no/such/dir"),
        (
            &["source", "add", "x", "data", "-p", "../etc"],
            "\"../etc\"",
        ),
        (&["source", "add", "x", "data", "-p", "missing"], "missing"),
        (
            &["source", "add", "x", "data", "-k", "nosuchkind"],
            "\"nosuchkind\"",
        ),
        (&["source", "pin", "data", "md5:ffff"], "md5:ffff"),
        (&["source", "pin", "nosuch", "md5:ffff"], "\"nosuch\""),
        (&["source", "log", "nosuch"], "\"nosuch\""),
        (&["source", "link", "data:zz", "data:00"], "data:zz"),
        (&["source", "rm", "nosuch"], "\"nosuch\""),
    ];
    for (args, quoted) in cases {
        let err = e.dkt(args).fails(2);
        assert!(err.contains(quoted), "{args:?}: {err}");
        assert!(!err.contains("panicked"));
    }
    assert_eq!(e.commits(), commits, "nothing was recorded");
}

#[test]
fn pin_unpin_freeze_thaw() {
    let e = Env::project();
    e.write("data/a", "1");
    e.dkt(&["source", "add", "data", "data"]).ok();
    let first = e.dkt(&["--json", "source", "list"]).json()[0]["latest"]
        .as_str()
        .unwrap()
        .to_owned();
    e.write("data/a", "2");
    e.dkt(&["source", "update"]).ok();
    e.dkt(&["source", "pin", "data", &first[..10]]).ok();
    let list = e.dkt(&["source", "list"]).ok();
    assert_eq!(table_row(&list, "data*")[1], first);
    e.dkt(&["source", "unpin", "data"]).ok();
    let list = e.dkt(&["source", "list"]).ok();
    assert_ne!(table_row(&list, "data")[1], first);
    // Frozen: never polled.
    e.dkt(&["source", "freeze", "data"]).ok();
    e.write("data/a", "3");
    let up = e.dkt(&["source", "update"]).ok();
    assert!(up.contains("frozen"), "{up}");
    let list = e.dkt(&["source", "list"]).ok();
    assert_eq!(table_row(&list, "data")[2], "(frozen)", "{list}");
    assert_eq!(
        e.dkt(&["--json", "source", "list"]).json()[0]["frozen"],
        true
    );
    assert_eq!(
        e.dkt(&["--json", "source", "log", "data"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    e.dkt(&["source", "thaw", "data"]).ok();
    e.dkt(&["source", "update"]).ok();
    assert_eq!(
        e.dkt(&["--json", "source", "log", "data"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn ambiguous_prefix_lists_matches() {
    let e = Env::project();
    e.write("data/a", "0");
    e.dkt(&["source", "add", "data", "data"]).ok();
    // Make versions until two share a first hex digit.
    let mut i = 1;
    loop {
        let log = e.dkt(&["--json", "source", "log", "data"]).json();
        let firsts: Vec<char> = log
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_str().unwrap().chars().nth(4).unwrap())
            .collect();
        if let Some(c) = firsts
            .iter()
            .find(|c| firsts.iter().filter(|d| d == c).count() > 1)
        {
            let err = e.dkt(&["source", "pin", "data", &c.to_string()]).fails(2);
            assert!(err.contains("ambiguous"), "{err}");
            assert!(err.contains(", "), "lists the matches: {err}");
            break;
        }
        e.write("data/a", &i.to_string());
        e.dkt(&["source", "update"]).ok();
        i += 1;
    }
}

#[test]
fn git_sources_design_example() {
    let e = Env::project();
    let repo = e.path().join("pinata");
    let commits = pinata_repo(&repo);
    let out = e.dkt(&["source", "add", "pinata", "pinata"]).ok();
    let row = table_row(&out, "pinata");
    assert_eq!(row[1], "git");
    let location = repo.canonicalize().unwrap().display().to_string();
    assert_eq!(row[2], location);
    assert_eq!(row[3], "master");
    // Derived source: inherits kind, location and tag; -p relative to the parent's path.
    let out = e
        .dkt(&[
            "source",
            "add",
            "pitfall",
            "pinata",
            "--path",
            "/v1/pitfall",
        ])
        .ok();
    let row = table_row(&out, "pitfall");
    assert_eq!(&row[1..], ["git", &location, "master", "/v1/pitfall"]);
    let out = e.dkt(&["source", "add", "v1", "pinata", "-p", "v1"]).ok();
    assert_eq!(table_row(&out, "v1")[4], "/v1");
    let out = e.dkt(&["source", "add", "pf2", "v1", "-p", "pitfall"]).ok();
    assert_eq!(table_row(&out, "pf2")[4], "/v1/pitfall");
    let list = e.dkt(&["source", "list"]).ok();
    assert_eq!(
        table_row(&list, "pinata")[1],
        format!("sha1:{}", commits[0])
    );
    // pitfall's newest commit is the one that changed v1/pitfall: the first.
    assert_eq!(
        table_row(&list, "pitfall")[1],
        format!("sha1:{}", commits[1])
    );
    let log = e.dkt(&["source", "log", "pinata"]).ok();
    let ids: Vec<&str> = log
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(
        ids,
        commits
            .iter()
            .map(|c| format!("sha1:{c}"))
            .collect::<Vec<_>>()
    );
    // A tag in LOCATION:TAG form and pins by prefix.
    git(&repo, &["tag", "beta12", &commits[1]]);
    let loc = format!("file://{}:beta12", repo.display());
    let out = e.dkt(&["source", "add", "beta12", &loc]).ok();
    assert_eq!(table_row(&out, "beta12")[3], "beta12");
    e.dkt(&["source", "pin", "pinata", &commits[1][..8]]).ok();
    let list = e.dkt(&["source", "list"]).ok();
    assert_eq!(
        table_row(&list, "pinata*")[1],
        format!("sha1:{}", commits[1])
    );
    // Links need both versions to exist.
    e.write("dmg/app.dmg", "dmg");
    e.dkt(&["source", "add", "dmg", "dmg"]).ok();
    let dmg = e.dkt(&["--json", "source", "list"]).json();
    let dmg_v = dmg
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "dmg")
        .unwrap()["latest"]
        .as_str()
        .unwrap()[4..12]
        .to_owned();
    e.dkt(&[
        "source",
        "link",
        &format!("pinata:{}", &commits[1][..8]),
        &format!("dmg:{dmg_v}"),
    ])
    .ok();
    let msg = git(
        e.path(),
        &["--git-dir", ".dkt/.git", "log", "-1", "--format=%s"],
    );
    assert!(msg.starts_with("source link pinata:"), "{msg}");
    e.dkt(&["source", "link", "pinata:ffffffff", &format!("dmg:{dmg_v}")])
        .fails(2);
}

#[test]
fn git_source_sees_new_commits_and_moves_to_a_mirror() {
    let e = Env::project();
    let repo = e.path().join("up");
    pinata_repo(&repo);
    e.dkt(&["source", "add", "up", "up"]).ok();
    std::fs::write(repo.join("new"), "x").unwrap();
    git(&repo, &["add", "new"]);
    git(&repo, &["commit", "-q", "-m", "third"]);
    let head = git(&repo, &["rev-parse", "HEAD"]).trim().to_owned();
    let up = e.dkt(&["source", "update", "up"]).ok();
    assert!(up.contains("updated"), "{up}");
    assert_eq!(
        e.dkt(&["--json", "source", "list"]).json()[0]["latest"],
        format!("sha1:{head}")
    );
    // Move it to a mirror: same name, same history.
    let mirror = e.path().join("mirror.git");
    git(
        e.path(),
        &[
            "clone",
            "-q",
            "--mirror",
            repo.to_str().unwrap(),
            mirror.to_str().unwrap(),
        ],
    );
    let out = e
        .dkt(&["source", "pin", "up", mirror.to_str().unwrap(), "-k", "git"])
        .ok();
    assert!(out.contains("mirror.git"), "{out}");
    assert_eq!(
        e.dkt(&["--json", "source", "log", "up"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn bad_git_input() {
    let e = Env::project();
    let repo = e.path().join("r");
    pinata_repo(&repo);
    let commits = e.commits();
    let err = e.dkt(&["source", "add", "x", "r:nosuchtag"]).stderr();
    assert!(err.contains("nosuchtag"), "{err}");
    let err = e
        .dkt(&["source", "add", "x", "r", "-p", "no/such/dir"])
        .fails(2);
    assert!(err.contains("no/such/dir"), "{err}");
    let err = e
        .dkt(&["source", "add", "x", "file:///no/such/repo.git"])
        .stderr();
    assert!(err.contains("/no/such/repo.git"), "{err}");
    let err = e
        .dkt(&["source", "add", "x", "not a repo!", "-k", "github"])
        .fails(2);
    assert!(err.contains("not a repo!"), "{err}");
    assert_eq!(e.commits(), commits);
}

/// The design's "manually update a data source" while automatic updates are stopped: a
/// frozen git source is given a commit that appeared upstream after it was frozen.
#[test]
fn update_name_version_works_on_a_frozen_source() {
    let e = Env::project();
    let repo = e.path().join("r");
    pinata_repo(&repo);
    e.dkt(&["source", "add", "r", "r"]).ok();
    e.dkt(&["source", "freeze", "r"]).ok();
    git(&repo, &["commit", "-q", "--allow-empty", "-m", "third"]);
    let new = git(&repo, &["rev-parse", "HEAD"]).trim().to_owned();
    // Polling skips it...
    e.dkt(&["source", "update", "r"]).ok();
    assert_ne!(
        table_row(&e.dkt(&["source", "list"]).ok(), "r")[1],
        format!("sha1:{new}")
    );
    // ...but a given version is fetched and recorded.
    e.dkt(&["source", "update", "r", &new[..10]]).ok();
    let list = e.dkt(&["source", "list"]).ok();
    assert_eq!(
        &table_row(&list, "r")[1..],
        [format!("sha1:{new}").as_str(), "(frozen)"]
    );
    // A version that exists nowhere is still an error naming it, and changes nothing.
    let commits = e.commits();
    let err = e.dkt(&["source", "update", "r", "deadbeef"]).fails(2);
    assert!(err.contains("deadbeef"), "{err}");
    assert_eq!(e.commits(), commits);
}

#[path = "../../dtk-sources/tests/support/git_server.rs"]
mod git_server;

/// `-k github USER/REPO` against a local HTTPS server configured as the GitHub host
/// (`[kind.git] github_url`); the GitHub token is sent there, and only there.
#[test]
fn github_shortcut_expands() {
    const TOKEN: &str = "ghp_CanaryForTheGithubHost01";
    let server = git_server::GitServer::start(true, None);
    let e = Env::new();
    e.dkt(&["init", &format!("--github-token={TOKEN}")]).ok();
    let repo = e.path().join("pinata");
    let commits = pinata_repo(&repo);
    server.serve("docker/pinata", &repo);
    let config = e.path().join(".dkt/config");
    let mut text = std::fs::read_to_string(&config).unwrap_or_default();
    text.push_str(&format!(
        "\n[kind.git]\ngithub_url = \"{}\"\n",
        server.base()
    ));
    std::fs::write(&config, text).unwrap();
    let dkt = |args: &[&str]| {
        let out = e
            .cmd()
            .env("SSL_CERT_FILE", server.ca())
            .args(args)
            .output()
            .unwrap();
        Run { out }
    };
    let out = dkt(&["source", "add", "pinata", "docker/pinata", "-k", "github"]).ok();
    let row = table_row(&out, "pinata");
    assert_eq!(
        &row[1..],
        [
            "git",
            &format!("{}/docker/pinata", server.base()),
            "master",
            "-"
        ]
    );
    let list = dkt(&["source", "list"]).ok();
    assert_eq!(
        table_row(&list, "pinata")[1],
        format!("sha1:{}", commits[0])
    );
    let sent = server.authorizations();
    assert!(!sent.is_empty());
    assert!(
        sent.iter().all(|a| a.starts_with("Basic ")),
        "every request carried the token: {sent:?}"
    );
    // A missing repository: a clear error naming the URL, exit 1, nothing recorded.
    let commits_before = e.commits();
    let r = dkt(&["source", "add", "gone", "docker/gone", "-k", "github"]);
    let err = r.fails(1);
    assert!(
        err.contains(&format!("{}/docker/gone", server.base())),
        "{err}"
    );
    assert!(!err.contains(TOKEN), "{err}");
    assert_eq!(e.commits(), commits_before);
    // The same server under another name is not the GitHub host: no token.
    let other = server.base().replace("127.0.0.1", "localhost");
    let before = server.authorizations().len();
    dkt(&["source", "add", "again", &format!("{other}/docker/pinata")]).ok();
    let sent = server.authorizations()[before..].to_vec();
    assert!(
        !sent.is_empty() && sent.iter().all(|a| a == "-"),
        "{sent:?}"
    );
}

#[test]
fn rm_refuses_while_a_node_uses_the_source() {
    let e = Env::project();
    e.write("in/a", "a");
    std::fs::create_dir_all(e.path().join("out")).unwrap();
    e.dkt(&["source", "add", "in", "in"]).ok();
    e.dkt(&["source", "add", "out", "out"]).ok();
    let id = e
        .dkt(&[
            "node",
            "run",
            "--no-run",
            "--input=in",
            "--output=out",
            "true",
        ])
        .ok();
    let err = e.dkt(&["source", "rm", "in"]).fails(2);
    assert!(err.contains(id.trim()), "names the node: {err}");
    assert!(e.dkt(&["source", "list"]).ok().contains("in"));
}

/// An HTTPS git server that wants Basic credentials gets those of git's own credential
/// helpers (here `credential.helper = store` in the global git config), never a prompt.
#[test]
fn git_credential_helpers_answer_an_https_server() {
    // `tester:gitpass-0123`, as git sends it.
    const AUTH: &str = "Basic dGVzdGVyOmdpdHBhc3MtMDEyMw==";
    let server = git_server::GitServer::start(true, Some(AUTH));
    let e = Env::project();
    let repo = e.path().join("pinata");
    let commits = pinata_repo(&repo);
    server.serve("team/pinata", &repo);
    let url = format!("{}/team/pinata", server.base());
    let home = tempfile::tempdir().unwrap();
    let store = home.path().join("git-credentials");
    let gitconfig = home.path().join("gitconfig");
    std::fs::write(
        &gitconfig,
        format!(
            "[credential]\n\thelper = store --file={}\n",
            store.display()
        ),
    )
    .unwrap();
    let dkt = |args: &[&str]| {
        let out = e
            .cmd()
            .env("SSL_CERT_FILE", server.ca())
            .env("HOME", home.path())
            .env("GIT_CONFIG_GLOBAL", &gitconfig)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        Run { out }
    };
    // No credential stored: refused, without prompting, nothing recorded.
    let commits_before = e.commits();
    let err = dkt(&["source", "add", "p", &url]).fails(1);
    assert!(err.contains(&url), "{err}");
    assert_eq!(e.commits(), commits_before);
    // The helper has it.
    let with_port = server
        .base()
        .replace("https://", "https://tester:gitpass-0123@");
    std::fs::write(&store, format!("{with_port}\n")).unwrap();
    let added = dkt(&["--json", "source", "add", "p", &url]).json();
    assert_eq!(added["location"], url.as_str());
    let list = dkt(&["--json", "source", "list"]).json();
    assert_eq!(list[0]["latest"], format!("sha1:{}", commits[0]));
    assert!(
        server.authorizations().iter().any(|a| a == AUTH),
        "{:?}",
        server.authorizations()
    );
    // The password is nowhere in the project's metadata.
    let history = git(e.path(), &["--git-dir", ".dkt/.git", "log", "-p", "--all"]);
    assert!(!history.contains("gitpass-0123"));
}
