//! `dkt serve`: every API route against a project made here, bad and hostile
//! parameters, paging, the live event feed, actions with and without the token, and no
//! secret in any answer.

mod common;
use common::serve::Server;
use common::*;

use std::io::Write;
use std::process::Stdio;

const CANARY: &str = "canary-7f3a9c1e5b";

fn secret_set(e: &Env, name: &str, value: &str) {
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
        .write_all(value.as_bytes())
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
}

/// The design's pipeline, run once, and the node's full ID.
fn pipeline() -> (Env, String) {
    let e = Env::project();
    let short = design_pipeline(&e);
    let list = e.dkt(&["--json", "node", "list"]).json();
    let full = list[0]["id_full"].as_str().unwrap().to_owned();
    assert!(full.starts_with(&short));
    (e, full)
}

fn token(e: &Env) -> String {
    std::fs::read_to_string(e.path().join(".dkt/secrets/DKT_SERVE_TOKEN"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn every_read_route_answers_with_the_cli_views() {
    let (e, node) = pipeline();
    let s = Server::start(&e, &[]);

    let graph = s.json("/api/graph");
    let mut sources: Vec<&str> = graph["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    sources.sort();
    assert_eq!(sources, ["dmg", "pinata", "pitfall", "tests"]);
    assert_eq!(graph["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(graph["nodes"][0]["id_full"], node.as_str());
    assert_eq!(graph["nodes"][0]["state"], "up-to-date");
    assert_eq!(graph["nodes"][0]["spec"]["inputs"][0], "dmg");

    // One definition: the API answers what --json prints.
    assert_eq!(
        s.json("/api/sources"),
        e.dkt(&["--json", "source", "list"]).json()
    );
    assert_eq!(
        s.json("/api/nodes"),
        e.dkt(&["--json", "node", "list", "--all"]).json()
    );
    let log = e.dkt(&["--json", "node", "log", &node]).json();
    let run_id = log[0]["id"].as_str().unwrap().to_owned();

    // IDs by unique prefix, as on the command line.
    let n = s.json(&format!("/api/nodes/{}", &node[..6]));
    assert_eq!(n["node"]["id_full"], node.as_str());
    assert_eq!(n["state"], "up-to-date");
    assert_eq!(n["recent_runs"][0], log[0]);
    assert!(n["would_run"].is_null(), "{n}");
    let runs = s.json(&format!("/api/nodes/{node}/runs"));
    assert_eq!(runs["total"], 1);
    assert_eq!(runs["items"][0], log[0]);

    let run = s.json(&format!("/api/runs/{}", &run_id[..8]));
    assert_eq!(run, log[0]);
    assert_eq!(run["status"], "success");
    let all = s.json("/api/runs");
    assert_eq!(all["items"][0]["id"], run_id.as_str());
    let text = s.get(&format!("/api/runs/{run_id}/log"));
    assert_eq!(text.status, 200);
    assert!(text
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));

    let dmg = s.json("/api/sources/dmg");
    assert_eq!(dmg["source"]["name"], "dmg");
    assert_eq!(dmg["versions"]["total"], 1);
    assert_eq!(dmg["versions"]["items"][0]["consumers"][0], run_id.as_str());
    let tests = s.json("/api/sources/tests");
    let produced = tests["versions"]["items"][0].clone();
    assert_eq!(produced["run"], run_id.as_str());
    let version = produced["version"].as_str().unwrap();

    let target = format!("tests:{}", &version[4..12]);
    let manifest = s.json(&format!("/api/provenance/{target}"));
    let ids: Vec<&str> = manifest
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["ID"].as_str())
        .collect();
    assert!(ids.contains(&&run_id[..8]), "{manifest}");
    let verify = s.json(&format!("/api/provenance/{target}/verify"));
    let checks = verify["checks"].as_array().unwrap();
    assert!(!checks.is_empty());
    assert!(checks.iter().all(|c| c["result"] != "mismatch"), "{verify}");
    let slsa = s.json(&format!("/api/provenance/{target}/slsa"));
    assert_eq!(slsa["_type"], "https://in-toto.io/Statement/v1");
    let prov = s.json(&format!("/api/provenance/{target}/prov"));
    assert!(prov["entity"].is_object(), "{prov}");
    let dmg_v = dmg["versions"]["items"][0]["version"].as_str().unwrap();
    let down = s.json(&format!(
        "/api/provenance/dmg:{}?downstream=true",
        &dmg_v[4..12]
    ));
    assert!(down.to_string().contains(&run_id[..8]), "{down}");

    let session = s.json("/api/session");
    assert_eq!(session["actions_enabled"], true);
    assert_eq!(session["authorized"], false);
    assert!(session["csrf"].is_null());

    // The app and its assets are served from the binary.
    let page = s.get("/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/assets/app.js"));
    assert!(!page.body.contains("http://") && !page.body.contains("https://"));
    let js = s.get("/assets/app.js");
    assert_eq!(js.status, 200);
    assert!(js.body.contains("function layout"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'self'"));
    assert_eq!(s.get("/assets/app.css").status, 200);
}

#[test]
fn bad_ids_are_404_and_hostile_parameters_are_refused() {
    let (e, _) = pipeline();
    let s = Server::start(&e, &[]);
    for (path, what) in [
        ("/api/nodes/ffffffff", "node"),
        ("/api/nodes/ffffffff/runs", "node"),
        ("/api/runs/ffffffff", "run"),
        ("/api/runs/ffffffff/log", "run"),
        ("/api/sources/nope", "source"),
        ("/api/provenance/nope:1234", "source"),
        ("/api/no-such-route", "no such"),
    ] {
        let r = s.get(path);
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        let msg = r.json()["error"].as_str().unwrap().to_owned();
        assert!(msg.contains(what), "{path}: {msg}");
    }
    let r = s.get("/api/nodes/ffffffff");
    assert!(r.body.contains("not found"), "{}", r.body);
    for path in [
        "/api/sources/..%2F..%2Fetc%2Fpasswd",
        "/api/sources/%2e%2e",
        "/api/sources/a%5Cb",
        "/api/sources/a%00b",
        "/api/nodes/..%2F..%2Fx",
        "/api/runs/%2e%2e%2f%2e%2e",
        "/api/runs/zz",
        "/api/provenance/..%2Fsecrets",
        "/api/nodes/x%0Ay",
        "/api/runs?after=..%2F..",
        "/api/events?run=..%2F",
    ] {
        let r = s.get(path);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(
            r.json()["error"].as_str().unwrap().contains("invalid"),
            "{path}"
        );
    }
    // Paths the router never matches are 404, whatever they try to reach.
    for path in [
        "/../../etc/passwd",
        "/assets/../../.dkt/secrets/DKT_SERVE_TOKEN",
        "/.dkt/config",
    ] {
        let r = s.get(path);
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert!(!r.body.contains(&token(&e)));
    }
}

#[test]
fn runs_are_listed_a_page_at_a_time() {
    let (e, node) = pipeline();
    for _ in 0..4 {
        e.dkt(&["node", "rerun", &node]).ok();
    }
    let s = Server::start(&e, &[]);
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &after {
            Some(a) => format!("/api/nodes/{node}/runs?limit=2&after={a}"),
            None => format!("/api/nodes/{node}/runs?limit=2"),
        };
        let page = s.json(&q);
        assert_eq!(page["total"], 5);
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        pages += 1;
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "pages in ID order, without repeats");
    assert_eq!(seen.len(), 5);
    let all = s.json("/api/runs?limit=1000");
    assert_eq!(all["total"], 5);
    assert!(all["next"].is_null());
    // A limit of 0 still gives one item per page.
    assert_eq!(
        s.json("/api/runs?limit=0")["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// A node that prints a line, waits for `gate` to exist, then prints another.
fn gated_node(e: &Env) -> (String, std::path::PathBuf) {
    let gate = e.path().join("gate");
    std::fs::create_dir_all(e.path().join("gout")).unwrap();
    e.dkt(&["source", "add", "gout", "gout"]).ok();
    let cmd = format!(
        "echo first-line; while [ ! -e {} ]; do sleep 0.05; done; echo second-line; date > ${{gout:ROOT}}/t",
        gate.display()
    );
    let id = e
        .dkt(&[
            "node",
            "run",
            "--no-run",
            "--input=dmg",
            "--output=gout",
            &cmd,
        ])
        .ok()
        .trim()
        .to_owned();
    (id, gate)
}

#[test]
fn events_push_runs_and_log_lines_as_they_happen() {
    let (e, _) = pipeline();
    let (node, gate) = gated_node(&e);
    let s = Server::start(&e, &[]);
    let full = s.json(&format!("/api/nodes/{node}"))["node"]["id_full"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut feed = s.events(&format!("node={full}"));
    let r = s.post_with_token(&format!("/api/nodes/{node}/rerun"), &token(&e), "{}");
    assert_eq!(r.status, 202, "{}", r.body);
    let started = feed.until(|ev| ev["event"] == "run-started");
    let run = started.last().unwrap()["run"].as_str().unwrap().to_owned();
    let lines = feed.until(|ev| ev["event"] == "log-line" && ev["line"] == "first-line");
    assert!(lines.iter().all(|ev| ev["event"] != "run-finished"));
    // While it waits on the gate, the run is running and its log so far is served.
    let live = s.json(&format!("/api/runs/{run}"));
    assert_eq!(live["status"], "running");
    wait_for("the live log", || {
        s.get(&format!("/api/runs/{run}/log"))
            .body
            .contains("first-line")
    });
    std::fs::write(&gate, "").unwrap();
    let rest = feed.until(|ev| ev["event"] == "run-finished");
    assert!(rest
        .iter()
        .any(|ev| ev["event"] == "log-line" && ev["line"] == "second-line"));
    assert_eq!(rest.last().unwrap()["status"], "success");
    assert_eq!(rest.last().unwrap()["run"], run.as_str());

    // Another process recording a run: the feed says the history changed.
    let mut all = s.events("");
    e.dkt(&["node", "rerun", &node]).ok();
    all.until(|ev| ev["event"] == "changed");
}

#[test]
fn a_burst_of_log_lines_arrives_in_few_messages_in_order() {
    let (e, _) = pipeline();
    std::fs::create_dir_all(e.path().join("bout")).unwrap();
    e.dkt(&["source", "add", "bout", "bout"]).ok();
    let node = e
        .dkt(&[
            "node",
            "run",
            "--no-run",
            "--input=dmg",
            "--output=bout",
            "seq 1 2000; seq 1 3 > ${bout:ROOT}/n",
        ])
        .ok()
        .trim()
        .to_owned();
    let s = Server::start(&e, &[]);
    let mut feed = s.events(&format!("node={node}"));
    let r = s.post_with_token(&format!("/api/nodes/{node}/rerun"), &token(&e), "{}");
    assert_eq!(r.status, 202, "{}", r.body);
    let mut lines = Vec::new();
    let mut messages = 0;
    'read: loop {
        let batch = feed.next_message();
        messages += 1;
        for ev in batch {
            if ev["event"] == "log-line" {
                lines.push(ev["line"].as_str().unwrap().to_owned());
            }
            if ev["event"] == "run-finished" {
                assert_eq!(ev["status"], "success");
                break 'read;
            }
        }
    }
    let want: Vec<String> = (1..=2000).map(|i| i.to_string()).collect();
    assert_eq!(lines, want, "every line, once, in order");
    assert!(
        messages < 1000,
        "2,000 lines printed at once arrive batched, not one message each: {messages}"
    );
}

#[test]
fn actions_need_the_token_and_the_csrf_token() {
    let (e, node) = pipeline();
    let s = Server::start(&e, &[]);
    let tok = token(&e);
    assert!(tok.len() >= 32);
    assert!(!s.banner.contains(&tok));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(e.path().join(".dkt/secrets/DKT_SERVE_TOKEN"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the token file is private");

    let rerun = format!("/api/nodes/{node}/rerun");
    let runs_before = e.dkt(&["--json", "node", "log", &node]).json();
    // No token, a wrong token, a GET: refused.
    let r = s.request("POST", &rerun, &[], "");
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].as_str().unwrap().contains("token"));
    assert_eq!(
        s.post_with_token(&rerun, "wrong-token-wrong-token", "")
            .status,
        403
    );
    assert_eq!(s.get(&rerun).status, 405);
    // The right token from another site: refused.
    let auth = format!("Bearer {tok}");
    let r = s.request(
        "POST",
        &rerun,
        &[("Authorization", &auth), ("Origin", "http://evil.example")],
        "",
    );
    assert_eq!(r.status, 403);
    assert!(r.body.contains("cross-origin"));
    assert_eq!(
        e.dkt(&["--json", "node", "log", &node]).json(),
        runs_before,
        "nothing ran"
    );

    // A session: log in with the token, then act with the cookie and the CSRF token.
    let r = s.request(
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        r#"{"token":"nope"}"#,
    );
    assert_eq!(r.status, 403);
    let login = serde_json::json!({ "token": tok }).to_string();
    let r = s.request(
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        &login,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(r.header("set-cookie").unwrap().contains("HttpOnly"));
    assert!(r.header("set-cookie").unwrap().contains("SameSite=Strict"));
    assert!(!cookie.contains(&tok), "the cookie is not the token");
    let csrf = r.json()["csrf"].as_str().unwrap().to_owned();
    let r = s.request("POST", &rerun, &[("Cookie", &cookie)], "");
    assert_eq!(r.status, 403, "a cookie without the CSRF token");
    assert!(r.body.contains("CSRF"));
    let r = s.request(
        "POST",
        &rerun,
        &[("Cookie", &cookie), ("X-CSRF-Token", "x")],
        "",
    );
    assert_eq!(r.status, 403);
    let session = serde_json::from_str::<serde_json::Value>(
        &s.request("GET", "/api/session", &[("Cookie", &cookie)], "")
            .body,
    )
    .unwrap();
    assert_eq!(session["authorized"], true);
    assert_eq!(session["csrf"], csrf.as_str());
    let r = s.request(
        "POST",
        &rerun,
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        "",
    );
    assert_eq!(r.status, 202, "{}", r.body);
    wait_for("the rerun", || {
        let log = e.dkt(&["--json", "node", "log", &node]).json();
        log.as_array().unwrap().len() == 2 && log[0]["status"] == "success"
    });

    // Source actions.
    let src = |name: &str| -> serde_json::Value {
        let l = e.dkt(&["--json", "source", "list"]).json();
        l.as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        s.post_with_token("/api/sources/dmg/freeze", &tok, "")
            .status,
        200
    );
    assert_eq!(src("dmg")["frozen"], true);
    assert_eq!(
        s.post_with_token("/api/sources/dmg/thaw", &tok, "").status,
        200
    );
    assert_eq!(src("dmg")["frozen"], false);
    let v = src("pinata")["latest"].as_str().unwrap().to_owned();
    let body = serde_json::json!({ "version": &v[..12] }).to_string();
    let r = s.post_with_token("/api/sources/pinata/pin", &tok, &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(src("pinata")["pinned"], true);
    assert_eq!(
        s.post_with_token("/api/sources/pinata/unpin", &tok, "")
            .status,
        200
    );
    assert_eq!(src("pinata")["pinned"], false);
    e.write("dmg/2247.dmg", "new build\n");
    let r = s.post_with_token("/api/sources/dmg/update", &tok, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_ne!(
        src("dmg")["latest"],
        s.json("/api/sources/dmg")["versions"]["items"][1]["version"]
    );
    assert_eq!(s.json("/api/sources/dmg")["versions"]["total"], 2);
    let r = s.post_with_token("/api/sources/dmg/explode", &tok, "");
    assert_eq!(r.status, 404);
    let r = s.post_with_token("/api/sources/nope/freeze", &tok, "");
    assert_eq!(r.status, 404, "{}", r.body);

    // Read-only: no action at all, even with the token.
    drop(s);
    let ro = Server::start(&e, &["--read-only"]);
    let r = ro.post_with_token(&rerun, &tok, "");
    assert_eq!(r.status, 403);
    assert!(r.body.contains("read-only"));
    assert_eq!(ro.json("/api/session")["actions_enabled"], false);
}

#[test]
fn a_token_file_and_cancelling_a_run() {
    let (e, _) = pipeline();
    let (node, gate) = gated_node(&e);
    let file = e.write("my-token", "0123456789abcdef-my-token\n");
    let s = Server::start(&e, &["--token-file", file.to_str().unwrap()]);
    assert!(!e.path().join(".dkt/secrets/DKT_SERVE_TOKEN").exists());
    let tok = "0123456789abcdef-my-token";
    let mut feed = s.events(&format!("node={}", &node));
    assert_eq!(
        s.post_with_token(&format!("/api/nodes/{node}/rerun"), tok, "")
            .status,
        202
    );
    let run = feed
        .until(|ev| ev["event"] == "run-started")
        .last()
        .unwrap()["run"]
        .as_str()
        .unwrap()
        .to_owned();
    feed.until(|ev| ev["event"] == "log-line");
    let r = s.request("POST", &format!("/api/runs/{run}/cancel"), &[], "");
    assert_eq!(r.status, 403);
    let r = s.post_with_token(&format!("/api/runs/{run}/cancel"), tok, "");
    assert_eq!(r.status, 202, "{}", r.body);
    let end = feed.until(|ev| ev["event"] == "run-finished");
    assert_eq!(end.last().unwrap()["status"], "interrupted");
    assert!(!gate.exists());
    let r = s.post_with_token(&format!("/api/runs/{run}/cancel"), tok, "");
    assert_eq!(r.status, 409, "a finished run: {}", r.body);
}

#[test]
fn no_secret_in_any_page_answer_or_log() {
    let e = Env::project();
    secret_set(&e, "CANARY", CANARY);
    design_pipeline(&e);
    std::fs::create_dir_all(e.path().join("sout")).unwrap();
    e.dkt(&["source", "add", "sout", "sout"]).ok();
    let node = e
        .dkt(&[
            "node",
            "run",
            "--input=dmg",
            "--output=sout",
            "echo leaked ${CANARY}; echo ${CANARY} > ${sout:ROOT}/x",
        ])
        .ok()
        .trim()
        .to_owned();
    let mut s = Server::start(&e, &[]);
    let tok = token(&e);
    let list = e.dkt(&["--json", "node", "log", &node]).json();
    let run = list[0]["id"].as_str().unwrap().to_owned();
    let sout = s.json("/api/sources/sout")["versions"]["items"][0]["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let target = format!("sout:{}", &sout[4..12]);
    let mut feed = s.events(&format!("node={node}"));
    assert_eq!(
        s.post_with_token(&format!("/api/nodes/{node}/rerun"), &tok, "")
            .status,
        202
    );
    let events = feed.until(|ev| ev["event"] == "run-finished");
    let all_events = serde_json::to_string(&events).unwrap();
    assert!(all_events.contains("leaked ***"), "{all_events}");
    let mut bodies = vec![all_events];
    for path in [
        "/".to_owned(),
        "/assets/app.js".to_owned(),
        "/api/graph".to_owned(),
        "/api/sources".to_owned(),
        "/api/sources/sout".to_owned(),
        "/api/sources/dmg".to_owned(),
        "/api/nodes".to_owned(),
        format!("/api/nodes/{node}"),
        format!("/api/nodes/{node}/runs"),
        "/api/runs".to_owned(),
        format!("/api/runs/{run}"),
        format!("/api/runs/{run}/log"),
        format!("/api/provenance/{target}"),
        format!("/api/provenance/{target}/verify"),
        format!("/api/provenance/{target}/slsa"),
        format!("/api/provenance/{target}/prov"),
        "/api/session".to_owned(),
        "/api/nope".to_owned(),
        "/api/sources/nope".to_owned(),
    ] {
        let r = s.get(&path);
        assert!(r.status == 200 || r.status == 404, "{path}: {}", r.status);
        bodies.push(r.body);
    }
    assert!(
        bodies[12].contains("leaked ***"),
        "the log is served, redacted"
    );
    for b in &bodies {
        assert!(!b.contains(CANARY), "a secret in an answer: {b}");
        assert!(!b.contains(&tok), "the token in an answer: {b}");
    }
    // Nor in what the server printed.
    drop(feed);
    let banner = s.banner.clone();
    let out = format!("{banner}{}", s.stop());
    assert!(!out.contains(CANARY) && !out.contains(&tok), "{out}");
}

#[test]
fn the_graph_colours_nodes_by_state() {
    let (e, node) = pipeline();
    std::fs::create_dir_all(e.path().join("fout")).unwrap();
    e.dkt(&["source", "add", "fout", "fout"]).ok();
    let failing = e
        .dkt(&["node", "run", "--input=tests", "--output=fout", "exit 3"])
        .fails(1);
    assert!(failing.contains("failure"), "{failing}");
    let s = Server::start(&e, &[]);
    let state = |g: &serde_json::Value, id: &str| -> String {
        g["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id_full"] == id || n["id"] == id)
            .unwrap_or_else(|| panic!("no node {id} in {g}"))["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let g = s.json("/api/graph");
    assert_eq!(state(&g, &node), "up-to-date");
    let failed: Vec<_> = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{g}");
    // A new input version: the node is outdated until it runs again.
    e.write("dmg/2247.dmg", "new build\n");
    e.dkt(&["source", "update", "dmg"]).ok();
    assert_eq!(state(&s.json("/api/graph"), &node), "outdated");
    let n = s.json(&format!("/api/nodes/{node}"));
    assert_eq!(n["state"], "outdated");
    assert_eq!(n["would_run"]["reason"]["why"], "inputs-moved", "{n}");
}
