//! The dashboard in a real browser: Debian's headless `chromium`, driven through
//! `chromedriver` over the W3C WebDriver protocol (a few JSON requests on 127.0.0.1,
//! sent with the tests' own HTTP client), against the design's pinata pipeline.
//!
//! Without `chromium` or `chromedriver` the tests fail, naming what is missing and
//! `scripts/test.sh`, which installs both.

mod common;
use common::serve::{request, Server};
use common::*;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_program(names: &[&str]) -> String {
    for n in names {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let p = std::path::Path::new(dir).join(n);
            if p.is_file() {
                return p.to_string_lossy().into_owned();
            }
        }
        for dir in ["/usr/bin", "/usr/lib/chromium"] {
            let p = std::path::Path::new(dir).join(n);
            if p.is_file() {
                return p.to_string_lossy().into_owned();
            }
        }
    }
    panic!(
        "the browser tests need {} (Debian packages chromium and chromium-driver): \
         run scripts/test.sh, which installs them",
        names[0]
    );
}

/// A headless Chromium session through chromedriver; both end when dropped.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

impl Browser {
    fn start() -> Browser {
        let chromium = find_program(&["chromium", "chromium-browser"]);
        let chromedriver = find_program(&["chromedriver"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for("chromedriver", || {
            std::net::TcpStream::connect(addr).is_ok()
                && request(addr, "GET", "/status", &[], "").status == 200
        });
        let caps = json!({ "capabilities": { "alwaysMatch": { "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,900"],
        }}}});
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
        };
        let v = b.call("POST", "/session", caps);
        b.session = v["sessionId"].as_str().unwrap().to_owned();
        b
    }

    /// A WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = if path == "/session" {
            path.to_owned()
        } else {
            format!("/session/{}{path}", self.session)
        };
        let r = request(
            self.addr,
            method,
            &path,
            &[("Content-Type", "application/json")],
            &body.to_string(),
        );
        let v: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", r.body));
        assert_eq!(r.status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    /// Run `script` (a function body) in the page; its return value.
    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
    }

    /// Wait (at most a minute) until `script` returns something truthy; return it.
    fn wait_js(&self, what: &str, script: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Click the first element matching `css`.
    fn click(&self, css: &str) {
        let el = self.call(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": css }),
        );
        let id = el[ELEMENT].as_str().unwrap().to_owned();
        self.call("POST", &format!("/element/{id}/click"), json!({}));
    }

    /// Type `text` into the first element matching `css`.
    fn type_into(&self, css: &str, text: &str) {
        let el = self.call(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": css }),
        );
        let id = el[ELEMENT].as_str().unwrap().to_owned();
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = std::panic::catch_unwind(|| request(self.addr, "DELETE", &path, &[], ""));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn token(e: &Env) -> String {
    std::fs::read_to_string(e.path().join(".dkt/secrets/DKT_SERVE_TOKEN"))
        .unwrap()
        .trim()
        .to_owned()
}

fn run_rows(b: &Browser) -> Vec<String> {
    let v = b.js("return [...document.querySelectorAll('#runs .run-row')].map(r => r.dataset.run)");
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_dashboard_shows_the_pipeline_runs_and_live_logs() {
    let e = Env::project();
    design_pipeline(&e);
    // A second node that waits on a gate file, so a run can be watched while it runs.
    let gate = e.path().join("gate");
    std::fs::create_dir_all(e.path().join("gout")).unwrap();
    e.dkt(&["source", "add", "gout", "gout"]).ok();
    let cmd = format!(
        "echo first-line; while [ ! -e {} ]; do sleep 0.05; done; echo second-line; date > ${{gout:ROOT}}/t",
        gate.display()
    );
    let gated = e
        .dkt(&[
            "node",
            "run",
            "--no-run",
            "--input=tests",
            "--output=gout",
            &cmd,
        ])
        .ok()
        .trim()
        .to_owned();
    let nodes = e.dkt(&["--json", "node", "list"]).json();
    let full = |short: &str| -> String {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == short)
            .unwrap()["id_full"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let gated_full = full(&gated);
    let pitfall_node = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] != gated.as_str())
        .unwrap()["id_full"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = Server::start(&e, &[]);
    let base = format!("http://{}", s.addr);
    let b = Browser::start();

    // The graph: every source and node of the pipeline.
    b.goto(&format!("{base}/"));
    b.wait_js("the graph", "return document.body.dataset.graphReady");
    let keys =
        b.js("return [...document.querySelectorAll('#graph .v')].map(v => v.dataset.key).sort()");
    let mut want = vec![
        "n:".to_owned() + &pitfall_node,
        "n:".to_owned() + &gated_full,
        "s:dmg".into(),
        "s:gout".into(),
        "s:pinata".into(),
        "s:pitfall".into(),
        "s:tests".into(),
    ];
    want.sort();
    assert_eq!(keys, json!(want));
    let state = b.js(&format!(
        "return document.querySelector('[data-key=\"n:{pitfall_node}\"]').getAttribute('class')"
    ));
    assert!(state.as_str().unwrap().contains("up-to-date"), "{state}");
    // Search by ID prefix marks the node.
    b.type_into("#search", &format!("{}\n", &gated[..6]));
    let hits = b.wait_js(
        "a search hit",
        "return [...document.querySelectorAll('#graph .v.hit')].map(v => v.dataset.key)",
    );
    assert_eq!(hits, json!([format!("n:{gated_full}")]));

    // Clicking a node opens its runs.
    b.click(&format!("[data-key=\"n:{pitfall_node}\"] rect"));
    b.wait_js(
        "the node page",
        "return document.querySelector('#runs .run-row')",
    );
    let hash = b.js("return location.hash");
    assert_eq!(hash, json!(format!("#/node/{pitfall_node}")));
    let runs = e.dkt(&["--json", "node", "log", &pitfall_node]).json();
    assert_eq!(
        run_rows(&b),
        vec![runs[0]["id"].as_str().unwrap().to_owned()]
    );

    // A run started while the page is open appears, and its lines arrive live.
    b.goto(&format!("{base}/#/node/{gated_full}"));
    b.wait_js(
        "the gated node's page",
        &format!("return document.querySelector('main').dataset.page === 'node:{gated_full}'"),
    );
    assert!(run_rows(&b).is_empty());
    let r = s.post_with_token(&format!("/api/nodes/{gated}/rerun"), &token(&e), "");
    assert_eq!(r.status, 202, "{}", r.body);
    b.wait_js(
        "the new run in the table",
        "return document.querySelectorAll('#runs .run-row').length === 1",
    );
    b.wait_js(
        "the first line, live",
        "return document.querySelector('#live-log').textContent.includes('first-line')",
    );
    let text = b.js("return document.querySelector('#live-log').textContent");
    assert!(!text.as_str().unwrap().contains("second-line"), "{text}");
    std::fs::write(&gate, "").unwrap();
    b.wait_js(
        "the second line and the end",
        "return document.querySelector('#live-log').textContent.includes('success')",
    );
    assert!(b
        .js("return document.querySelector('#live-log').textContent")
        .as_str()
        .unwrap()
        .contains("second-line"));

    // An action without the token is refused; with it, the node reruns.
    b.goto(&format!("{base}/#/node/{pitfall_node}"));
    b.wait_js(
        "the node page",
        &format!("return document.querySelector('main').dataset.page === 'node:{pitfall_node}'"),
    );
    b.click("#rerun");
    let flash = b.wait_js(
        "the refusal",
        "return document.querySelector('#flash').textContent",
    );
    assert!(flash.as_str().unwrap().contains("refused"), "{flash}");
    assert_eq!(
        e.dkt(&["--json", "node", "log", &pitfall_node])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    b.type_into("#token", &token(&e));
    b.click("#login");
    b.wait_js(
        "the unlocked session",
        "return document.querySelector('#authorized')",
    );
    b.click("#rerun");
    b.wait_js(
        "the rerun in the table",
        "return document.querySelectorAll('#runs .run-row').length === 2",
    );
    wait_for("the rerun to succeed", || {
        e.dkt(&["--json", "node", "log", &pitfall_node]).json()[0]["status"] == "success"
    });
    // No token anywhere in the page.
    let html = b.js("return document.documentElement.outerHTML");
    assert!(!html.as_str().unwrap().contains(&token(&e)));
}
