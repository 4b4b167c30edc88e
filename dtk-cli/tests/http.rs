//! `dkt` with an `http` source against a local HTTP server.

mod common;
#[path = "../../dtk-sources/tests/support/server.rs"]
mod fixture_server;

use common::*;
use fixture_server::Server;

fn latest(e: &Env, name: &str) -> serde_json::Value {
    let list = e.dkt(&["--json", "source", "list"]).json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
        .clone()
}

#[test]
fn tarball_feeds_a_node() {
    let server = Server::start();
    server.put_file("x.tar.gz", b"release one\n");
    let e = Env::project();
    let url = format!("{}/x.tar.gz", server.base());

    // The kind is inferred from the URL (a file, not a repository).
    e.dkt(&["source", "add", "tarball", &url]).ok();
    let s = latest(&e, "tarball");
    assert_eq!(s["kind"], "http");
    assert_eq!(s["location"], url.as_str());
    let v1 = s["latest"].as_str().unwrap().to_owned();
    assert!(v1.starts_with("sha256:"), "{v1}");

    std::fs::create_dir_all(e.path().join("out")).unwrap();
    e.dkt(&["source", "add", "out", "./out"]).ok();
    let cmd = "cp ${tarball:FILE} ${out:ROOT}/copy && ls ${tarball:ROOT} > ${out:ROOT}/ls && echo ${tarball:URL} > ${out:ROOT}/url";
    let id = e
        .dkt(&["node", "run", "--input=tarball", "--output=out", cmd])
        .ok()
        .trim()
        .to_owned();
    assert_eq!(
        std::fs::read(e.path().join("out/copy")).unwrap(),
        b"release one\n"
    );
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/ls")).unwrap(),
        "x.tar.gz\n"
    );
    assert_eq!(
        std::fs::read_to_string(e.path().join("out/url")).unwrap(),
        format!("{url}\n")
    );
    let runs = e.dkt(&["--json", "node", "log", &id]).ok();
    assert!(runs.contains(&v1), "{runs}");

    // Unchanged: the poll is a conditional GET answered 304.
    let up = e.dkt(&["source", "update", "tarball"]).ok();
    assert!(up.contains("unchanged"), "{up}");
    assert!(
        server.log().last().unwrap().contains(" 304 "),
        "{:?}",
        server.log()
    );

    // New content: a new version, and the node runs on it.
    server.put_file("x.tar.gz", b"release two\n");
    let up = e.dkt(&["source", "update", "tarball"]).ok();
    assert!(up.contains("updated"), "{up}");
    let v2 = latest(&e, "tarball")["latest"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    e.dkt(&["node", "run", "--input=tarball", "--output=out", cmd])
        .ok();
    assert_eq!(
        std::fs::read(e.path().join("out/copy")).unwrap(),
        b"release two\n"
    );
    let runs = e.dkt(&["--json", "node", "log", &id]).ok();
    assert!(runs.contains(&v2), "{runs}");

    // The recorded versions, with their size.
    let log = e.dkt(&["source", "log", "tarball"]).ok();
    assert!(log.lines().next().unwrap().contains("SIZE"), "{log}");
    assert!(log.contains(&v1) && log.contains(&v2), "{log}");

    // A server refusing access: a clear error naming the source.
    server.set("status", "401");
    let r = e.dkt(&["source", "update", "tarball"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let all = format!("{}{}", r.stdout(), r.stderr());
    assert!(
        all.contains("unauthorized") && all.contains("tarball"),
        "{all}"
    );
}

#[test]
fn missing_url_is_refused() {
    let server = Server::start();
    let e = Env::project();
    let r = e.dkt(&[
        "source",
        "add",
        "t",
        &format!("{}/nope.tgz", server.base()),
        "-k",
        "http",
    ]);
    // Like every failure of the server (docs/http-kind.md): exit 1.
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let err = r.stderr();
    assert!(
        err.contains("not found") && err.contains("/nope.tgz"),
        "{err}"
    );
    let list = e.dkt(&["--json", "source", "list"]).json();
    assert!(list.as_array().unwrap().is_empty(), "nothing recorded");
}

#[test]
fn an_http_source_is_read_only() {
    let server = Server::start();
    server.put_file("a.tgz", b"tarball");
    let e = Env::project();
    e.dkt(&[
        "source",
        "add",
        "t",
        &format!("{}/a.tgz", server.base()),
        "-k",
        "http",
    ])
    .ok();
    let before = e.commits();
    let err = e.dkt(&["node", "run", "--output=t", "true"]).fails(2);
    assert!(
        err.contains("\"http\" does not support publishing"),
        "{err}"
    );
    assert_eq!(e.commits(), before, "nothing recorded");
}
