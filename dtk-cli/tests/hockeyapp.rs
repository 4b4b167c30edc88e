//! `dkt` with a `hockeyapp` source against a local HockeyApp API v2 server.

mod common;
#[path = "../../dtk-sources/tests/support/server.rs"]
mod fixture_server;

use common::*;
use fixture_server::Server;
use serde_json::json;

const APP: &str = "e63b4e58fd9d40e48e74f8f2e71c49a5";
const TOKEN: &str = "hockey-c4nary-token-42";

fn server() -> Server {
    let s = Server::start();
    s.set_token(TOKEN);
    s.set_apps(json!([{"title": "Docker", "public_identifier": APP, "id": 259320}]));
    s.put_build_file(APP, "Docker-2245.dmg", b"dmg 2245");
    s.put_build_file(APP, "Docker-2246.dmg", b"dmg 2246 bytes");
    s.set_builds(
        APP,
        json!([
            {"id": 12, "version": "2246", "shortversion": "1.12.0", "timestamp": 200, "file": "Docker-2246.dmg"},
            {"id": 11, "version": "2245", "shortversion": "1.11.9", "timestamp": 100, "file": "Docker-2245.dmg"},
        ]),
    );
    s
}

fn project(server: &Server, token: &str) -> Env {
    let e = Env::new();
    e.dkt(&["init", "--hockeyapp-token", token]).ok();
    std::fs::write(
        e.path().join(".dkt/config"),
        format!("[kind.hockeyapp]\nurl = \"{}\"\n", server.base()),
    )
    .unwrap();
    e
}

fn source_json(e: &Env, name: &str) -> serde_json::Value {
    let list = e.dkt(&["--json", "source", "list"]).json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
        .clone()
}

#[test]
fn design_flow_with_builds() {
    let server = server();
    let e = project(&server, TOKEN);
    let manage = format!("{}/manage/apps/259320", server.base());

    let added = e
        .dkt(&["source", "add", "dmg", APP, "-k", "hockeyapp"])
        .ok();
    let row: Vec<&str> = added.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row, ["dmg", "hockeyapp", manage.as_str(), "-", "-"]);
    let s = source_json(&e, "dmg");
    assert_eq!(s["location"], manage);
    assert_eq!(s["kind"], "hockeyapp");
    let first = s["latest"].as_str().unwrap().to_owned();
    assert!(first.starts_with("md5:"), "{first}");
    let list = e.dkt(&["source", "list"]).ok();
    assert!(list.contains("dmg") && list.contains(&first), "{list}");

    // The log lists the builds with a BUILD column, newest first.
    let log = e.dkt(&["source", "log", "dmg"]).ok();
    let lines: Vec<Vec<&str>> = log
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["ID", "BUILD", "FULL"], "{log}");
    assert_eq!(lines[1][1], "2246");
    assert_eq!(lines[1][2], first);
    assert_eq!(lines[2][1], "2245");
    assert_eq!(lines.len(), 3, "{log}");

    // A new build, then an update and a node using its fields.
    server.put_build_file(APP, "Docker-2247.dmg", b"dmg 2247");
    server.set_builds(
        APP,
        json!([
            {"id": 13, "version": "2247", "shortversion": "1.12.1", "timestamp": 300, "file": "Docker-2247.dmg"},
            {"id": 12, "version": "2246", "shortversion": "1.12.0", "timestamp": 200, "file": "Docker-2246.dmg"},
            {"id": 11, "version": "2245", "shortversion": "1.11.9", "timestamp": 100, "file": "Docker-2245.dmg"},
        ]),
    );
    let up = e.dkt(&["source", "update", "dmg"]).ok();
    assert!(up.contains("updated"), "{up}");
    let newest = source_json(&e, "dmg")["latest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(newest, first);
    assert!(e
        .dkt(&["source", "log", "dmg"])
        .ok()
        .lines()
        .nth(1)
        .unwrap()
        .contains("2247"));

    std::fs::create_dir_all(e.path().join("tests")).unwrap();
    e.dkt(&["source", "add", "tests", "./tests"]).ok();
    let id = e
        .dkt(&[
            "node",
            "run",
            "--input=dmg",
            "--output=tests",
            "mkdir ${tests:ROOT}/${dmg:BUILD} && cat ${dmg:ROOT}/Docker-${dmg:BUILD}.dmg > ${tests:ROOT}/${dmg:BUILD}/STDOUT && echo \" ${dmg:VERSION}\" >> ${tests:ROOT}/${dmg:BUILD}/STDOUT",
        ])
        .ok()
        .trim()
        .to_owned();
    assert_eq!(
        std::fs::read_to_string(e.path().join("tests/2247/STDOUT")).unwrap(),
        "dmg 2247 1.12.1\n"
    );
    // The run's provenance names the build's version.
    let runs = e.dkt(&["--json", "node", "log", &id]).ok();
    assert!(runs.contains(&newest) && runs.contains("\"dmg\""), "{runs}");
    let log = e.dkt(&["node", "log", &id]).ok();
    assert!(log.contains(&format!("dmg:{}", &newest[4..12])), "{log}");

    // The token is in no record; it went in the header of every API request (the fixture
    // logs whether each carried the right one), and never in a URL (it logs every path).
    let history = git(e.path(), &["--git-dir", ".dkt/.git", "log", "-p", "--all"]);
    assert!(!history.contains(TOKEN));
    let requests = server.log();
    let api: Vec<&String> = requests.iter().filter(|l| l.contains(" /api/")).collect();
    assert!(!api.is_empty(), "{requests:?}");
    assert!(api.iter().all(|l| l.ends_with(" token-ok")), "{api:?}");
    assert!(requests.iter().all(|l| !l.contains(TOKEN)), "{requests:?}");
}

#[test]
fn wrong_token_is_unauthorized_and_never_shown() {
    let server = server();
    let wrong = "wrong-c4nary-token-99";
    let e = project(&server, wrong);
    let r = e.dkt(&["source", "add", "dmg", APP, "-k", "hockeyapp"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let err = r.stderr();
    assert!(err.contains("unauthorized") && err.contains("dmg"), "{err}");
    assert!(!err.contains(wrong) && !r.stdout().contains(wrong), "{err}");

    // A project whose token went bad: the update fails and says why, without the token.
    let good = project(&server, TOKEN);
    good.dkt(&["source", "add", "dmg", APP, "-k", "hockeyapp"])
        .ok();
    std::fs::write(good.path().join(".dkt/secrets/HOCKEYAPP_TOKEN"), wrong).unwrap();
    let r = good.dkt(&["source", "update", "dmg"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let all = format!("{}{}", r.stdout(), r.stderr());
    assert!(all.contains("unauthorized") && all.contains("dmg"), "{all}");
    assert!(!all.contains(wrong), "{all}");
}

#[test]
fn an_unknown_app_is_bad_input_and_a_dead_service_is_not() {
    let server = server();
    let e = project(&server, TOKEN);
    // The documented exit codes (docs/hockeyapp-kind.md): 2 for an unknown App ID ...
    let unknown = "0123456789abcdef0123456789abcdef";
    let err = e
        .dkt(&["source", "add", "dmg", unknown, "-k", "hockeyapp"])
        .fails(2);
    assert!(err.contains("not found") && err.contains(unknown), "{err}");
    // ... 1 for a service that cannot be reached.
    drop(server);
    let err = e
        .dkt(&["source", "add", "dmg", APP, "-k", "hockeyapp"])
        .fails(1);
    assert!(err.contains("cannot connect"), "{err}");
    assert!(e.dkt(&["--json", "source", "list"]).json() == serde_json::json!([]));
}
