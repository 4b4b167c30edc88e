//! `dkt` with `s3` sources end to end, against `moto_server` on loopback: add, list,
//! update after a remote change, log, a node reading one prefix and publishing into
//! another, and the provenance of what it wrote.

mod common;
#[path = "../../dtk-sources/tests/moto/mod.rs"]
mod moto;

use common::*;
use moto::Moto;
use serde_json::Value;

const KEY_ID: &str = "AKIACLITESTKEY000000";
const SECRET: &str = "cli-canary-secret-0123456789";

fn latest(e: &Env, name: &str) -> String {
    let list = e.dkt(&["--json", "source", "list"]).json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no source {name} in {list}"))["latest"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A new project with the S3 credentials as secrets and `m` as the kind's endpoint.
fn project_on(m: &Moto) -> Env {
    let e = Env::new();
    e.dkt(&[
        "init",
        "--aws-access-key-id",
        KEY_ID,
        "--aws-secret-access-key",
        SECRET,
    ])
    .ok();
    let config = e.path().join(".dkt/config");
    let mut text = std::fs::read_to_string(&config).unwrap_or_default();
    text.push_str(&format!(
        "\n[kind.s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\n",
        m.endpoint
    ));
    std::fs::write(&config, text).unwrap();
    e
}

#[test]
fn s3_sources_feed_a_node_that_publishes_to_s3() {
    let m = Moto::start();
    m.create_bucket("bkt");
    m.put("bkt", "in/a.txt", b"a-");
    m.put("bkt", "elsewhere/x", b"x");

    let e = project_on(&m);

    // Add and list.
    let out = e
        .dkt(&["--json", "source", "add", "data", "s3://bkt/in"])
        .json();
    assert_eq!(out["kind"], "s3");
    assert_eq!(out["location"], "s3://bkt/in");
    let v1 = latest(&e, "data");
    assert!(v1.starts_with("md5:") && v1.len() == 36, "{v1}");
    // A bare bucket name with -k s3, and -p.
    e.dkt(&["source", "add", "whole", "bkt", "-k", "s3", "-p", "in"])
        .ok();
    assert_eq!(latest(&e, "whole"), v1);
    // Bad input is quoted; a missing bucket is named.
    let err = e.dkt(&["source", "add", "bad", "s3://Bad_Bucket"]).fails(2);
    assert!(err.contains("\"s3://Bad_Bucket\""), "{err}");
    let err = e
        .dkt(&["source", "add", "bad", "s3://no-such-bkt"])
        .stderr();
    assert!(err.contains("no-such-bkt"), "{err}");

    // A remote change is a new version after update; log lists both.
    m.put("bkt", "in/b.txt", b"b");
    let up = e.dkt(&["source", "update", "data"]).ok();
    assert!(up.contains("updated"), "{up}");
    let v2 = latest(&e, "data");
    assert_ne!(v1, v2);
    let log = e.dkt(&["--json", "source", "log", "data"]).json();
    let versions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, [v2.as_str(), v1.as_str()], "{log}");
    // Outside the prefix: unchanged.
    m.put("bkt", "elsewhere/y", b"y");
    let up = e.dkt(&["source", "update", "data"]).ok();
    assert!(up.contains("unchanged"), "{up}");

    // A node reads data and publishes into an s3 output.
    e.dkt(&["source", "add", "out", "s3://bkt/out"]).ok();
    let node = e
        .dkt(&[
            "node",
            "run",
            "--input=data",
            "--output=out",
            "cat ${data:ROOT}/a.txt ${data:ROOT}/b.txt > ${out:ROOT}/joined.txt; echo ${data:URL} > ${out:ROOT}/from.txt",
        ])
        .ok()
        .trim()
        .to_owned();
    assert!(!node.is_empty());
    assert_eq!(m.get("bkt", "out/joined.txt"), "a-b");
    assert_eq!(m.get("bkt", "out/from.txt"), "s3://bkt/in\n");
    let out_v = latest(&e, "out");

    // The objects a run uploaded carry its provenance as metadata, and a provenance
    // object beside the prefix names the run and the version.
    let run = &runs(&e, &node)[0];
    let run_id = run["id"].as_str().unwrap();
    let headers = m.headers("bkt", "out/joined.txt");
    assert!(
        headers.contains(&format!("x-amz-meta-dkt-run: {run_id}")),
        "{headers}"
    );
    assert!(
        headers.contains("x-amz-meta-dkt-manifest: blake3:"),
        "{headers}"
    );
    let prov: Value = serde_json::from_str(&m.get("bkt", "out.dkt-provenance.json")).unwrap();
    assert_eq!(prov["run"], run_id);
    assert_eq!(prov["version"], out_v);
    assert_eq!(prov["url"], "s3://bkt/out");
    assert!(prov["manifest"].as_str().unwrap().starts_with("blake3:"));
    assert_eq!(
        m.keys("bkt", "out/"),
        ["out/from.txt", "out/joined.txt"],
        "not inside the prefix"
    );

    // An S3 URL of a published object finds the same manifest as the version.
    let by_url = e
        .dkt(&["--json", "inspect", "s3://bkt/out/joined.txt"])
        .json();
    let by_version = e
        .dkt(&["--json", "inspect", &format!("out:{}", &out_v[4..12])])
        .json();
    assert_eq!(by_url, by_version);
    let err = e.dkt(&["inspect", "s3://other-bucket/x"]).fails(2);
    assert!(err.contains("s3://other-bucket/x"), "{err}");
    // An object no source's prefix holds is found by its metadata (a HEAD): the provenance
    // object beside the prefix names the run, whose manifest this is.
    let beside = e
        .dkt(&["--json", "inspect", "s3://bkt/out.dkt-provenance.json"])
        .json();
    let runs_in: Vec<&Value> = beside
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x.get("command").is_some())
        .collect();
    assert_eq!(runs_in.len(), 1, "{beside}");
    assert!(
        run_id.starts_with(runs_in[0]["ID"].as_str().unwrap()),
        "{beside}"
    );
    // A project without the run's records says which run the object names.
    let fresh = project_on(&m);
    let err = fresh.dkt(&["inspect", "s3://bkt/out/joined.txt"]).fails(2);
    assert!(err.contains(run_id) && err.contains("metadata"), "{err}");

    // Provenance: the output's manifest names the s3 input at its version.
    let manifest = e
        .dkt(&["--json", "inspect", &format!("out:{}", &out_v[4..12])])
        .json();
    let entries = manifest.as_array().unwrap();
    let find = |id: &str| -> &Value {
        entries
            .iter()
            .find(|x| x["ID"] == id)
            .unwrap_or_else(|| panic!("no {id} in {manifest}"))
    };
    let input = find(&v2[4..12]);
    assert_eq!(input["kind"], "s3");
    assert_eq!(input["source"], "data");
    assert_eq!(input["digest"], v2);
    assert_eq!(input["url"], "s3://bkt/in");
    let output = find(&out_v[4..12]);
    assert_eq!(output["kind"], "s3");
    assert_eq!(output["inputs"][0], &v2[4..12]);
    let human = e.dkt(&["inspect", &format!("out:{}", &out_v[4..12])]).ok();
    assert!(human.contains("s3://bkt/out"), "{human}");

    // verify re-lists and re-checks the content.
    let verify = e.dkt(&["verify", &format!("out:{}", &out_v[4..12])]);
    assert!(verify.out.status.success(), "{}", verify.stderr());

    // Someone adds an object by hand and the prefix moves on: an object the run wrote
    // still finds the run's own version (its metadata names the run), not the prefix's
    // current one; the object without metadata finds the current version.
    m.put("bkt", "out/by-hand.txt", b"h");
    e.dkt(&["source", "update", "out"]).ok();
    let current = latest(&e, "out");
    assert_ne!(current, out_v);
    let by_url = e
        .dkt(&["--json", "inspect", "s3://bkt/out/joined.txt"])
        .json();
    assert_eq!(by_url, by_version, "the exact version the run wrote");
    let by_hand = e
        .dkt(&["--json", "inspect", "s3://bkt/out/by-hand.txt"])
        .json();
    let last = by_hand.as_array().unwrap().last().unwrap();
    assert_eq!(last["digest"], current, "{by_hand}");

    // The secret key never reaches the records.
    let history = git(e.path(), &["--git-dir", ".dkt/.git", "log", "-p", "--all"]);
    assert!(!history.contains(SECRET));
}

#[test]
fn unreachable_endpoint_is_a_clear_error() {
    let e = Env::new();
    e.dkt(&[
        "init",
        "--aws-access-key-id",
        KEY_ID,
        "--aws-secret-access-key",
        SECRET,
    ])
    .ok();
    let port = moto::free_port();
    let config = e.path().join(".dkt/config");
    let mut text = std::fs::read_to_string(&config).unwrap_or_default();
    text.push_str(&format!(
        "\n[kind.s3]\nendpoint = \"http://127.0.0.1:{port}\"\nallow_http = \"true\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    // Outside the user's control: exit 1.
    let err = e.dkt(&["source", "add", "data", "s3://bkt/in"]).fails(1);
    assert!(
        err.contains("cannot connect") && err.contains("\"data\""),
        "{err}"
    );
    assert!(!err.contains(SECRET), "{err}");
}

#[test]
fn aws_profile_from_the_shared_config_files() {
    let m = Moto::start();
    m.create_bucket("prof");
    m.put("prof", "in/a.txt", b"profile");
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".aws")).unwrap();
    // Keys in the credentials file, region and endpoint in the config file, as the AWS CLI
    // writes them; the default profile has nothing usable.
    std::fs::write(
        home.path().join(".aws/credentials"),
        format!(
            "[default]\nregion = nowhere-1\n\n[dtk-test]\naws_access_key_id = {KEY_ID}\n\
             aws_secret_access_key = {SECRET}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        home.path().join(".aws/config"),
        format!(
            "[profile dtk-test]\nregion = us-east-1\nendpoint_url = {}\ns3 =\n  addressing_style = path\n",
            m.endpoint
        ),
    )
    .unwrap();
    let e = Env::project();
    let config = e.path().join(".dkt/config");
    let mut text = std::fs::read_to_string(&config).unwrap_or_default();
    text.push_str("\n[kind.s3]\nallow_http = true\n");
    std::fs::write(&config, text).unwrap();
    let dkt = |profile: Option<&str>, args: &[&str]| {
        let mut cmd = e.cmd();
        cmd.env("HOME", home.path());
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
            cmd.env_remove(k);
        }
        if let Some(p) = profile {
            cmd.env("AWS_PROFILE", p);
        }
        Run {
            out: cmd.args(args).output().unwrap(),
        }
    };
    // Without AWS_PROFILE: the default profile has no keys nor endpoint.
    let err = dkt(None, &["source", "add", "data", "s3://prof/in"]).fails(1);
    assert!(err.contains("AWS_PROFILE"), "{err}");
    // A profile that does not exist is named.
    let err = dkt(Some("nosuch"), &["source", "add", "data", "s3://prof/in"]).fails(2);
    assert!(
        err.contains("nosuch") && err.contains("no such profile"),
        "{err}"
    );
    // With it: its keys, region and endpoint.
    let out = dkt(
        Some("dtk-test"),
        &["--json", "source", "add", "data", "s3://prof/in"],
    )
    .json();
    assert_eq!(out["kind"], "s3");
    let list = dkt(Some("dtk-test"), &["--json", "source", "list"]).json();
    let v = list[0]["latest"].as_str().unwrap();
    assert!(v.starts_with("md5:"), "{list}");
    // The keys are nowhere in the metadata.
    let history = git(e.path(), &["--git-dir", ".dkt/.git", "log", "-p", "--all"]);
    assert!(!history.contains(SECRET) && !history.contains(KEY_ID));
}
