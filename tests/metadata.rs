//! What publishing needs from each crate's manifest, and crate docs that name every cargo
//! feature.

use std::path::Path;

fn manifest(dir: &str) -> toml::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join("Cargo.toml");
    std::fs::read_to_string(&path)
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_crate_has_the_metadata_crates_io_and_docs_rs_use() {
    let workspace = manifest(".");
    let shared = workspace["workspace"]["package"].as_table().unwrap();
    for dir in [".", "dtk-core", "dtk-sources", "dtk-cli"] {
        let m = manifest(dir);
        let package = m["package"].as_table().unwrap();
        for field in [
            "description",
            "license",
            "repository",
            "keywords",
            "categories",
            "rust-version",
        ] {
            let value = package
                .get(field)
                .unwrap_or_else(|| panic!("{dir}: no `{field}`"));
            // `field.workspace = true`, or the value itself.
            let inherited = value
                .get("workspace")
                .and_then(toml::Value::as_bool)
                .unwrap_or(false);
            assert!(
                !inherited || shared.contains_key(field),
                "{dir}: `{field}` inherited but not in [workspace.package]"
            );
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        for licence in ["LICENSE-MIT", "LICENSE-APACHE"] {
            assert!(root.join(licence).is_file(), "{dir}: no {licence}");
        }
        if dir != "dtk-cli" {
            assert_eq!(
                m["package"]["metadata"]["docs"]["rs"]["all-features"].as_bool(),
                Some(true),
                "{dir}: docs.rs should build every kind"
            );
        }
    }
    let keywords = shared["keywords"].as_array().unwrap();
    assert!(keywords.len() <= 5, "crates.io takes at most 5 keywords");
}

#[test]
fn the_crate_docs_name_every_feature() {
    for (dir, lib) in [
        (".", "src/lib.rs"),
        ("dtk-sources", "dtk-sources/src/lib.rs"),
        ("dtk-core", "dtk-core/src/lib.rs"),
    ] {
        let features = manifest(dir)
            .get("features")
            .and_then(|f| f.as_table().cloned())
            .unwrap_or_default();
        let docs = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(lib))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        for name in features.keys().filter(|k| *k != "default") {
            assert!(
                docs.contains(&format!("`{name}`")),
                "{lib} does not document the feature `{name}`"
            );
        }
    }
}
