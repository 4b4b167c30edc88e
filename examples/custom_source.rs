//! A custom source kind in a dtk project, from registration to provenance.
//!
//! The kind itself, `feed` (a local JSON release feed whose versions are the `sha256:` of
//! each release's artifact), is in `examples/feed/mod.rs`: copy that module to start a
//! plugin of your own. This program:
//!
//! 1. writes a feed of two releases and their artifacts in a temporary directory;
//! 2. builds a [`Registry`] with the built-in kinds plus `feed`, and creates a project;
//! 3. adds a `feed` source (its kind inferred from the `.feed.json` suffix) and a `path`
//!    output, and defines a node that checksums the release's artifact into the output;
//! 4. runs the node, then prints the output's provenance and verifies it;
//! 5. publishes a third release: `update_sources` sees it and the node runs again.
//!
//! Run it with `cargo run -p dtk --example custom_source`.

#[path = "feed/mod.rs"]
mod feed;

use std::error::Error;
use std::path::Path;
use std::sync::Arc;

use dtk::inspect::InspectOptions;
use dtk::{
    AddSource, Command, InitOptions, NodeSpec, Project, Registry, RunOptions, RunOutcome, RunStatus,
};

use feed::FeedKind;

type Res<T> = Result<T, Box<dyn Error>>;

/// A release to list in the feed: its label, how the feed refers to its artifact, and the
/// artifact's file name and content.
struct Artifact<'a> {
    label: &'a str,
    file: &'a str,
    content: &'a [u8],
    /// Refer to the artifact by a `file://` URL (else by a path relative to the feed).
    by_url: bool,
}

const V110: Artifact<'static> = Artifact {
    label: "1.1.0",
    file: "app-1.1.0.txt",
    content: b"app, release 1.1.0\n",
    by_url: false,
};
const V120: Artifact<'static> = Artifact {
    label: "1.2.0",
    file: "app-1.2.0.txt",
    content: b"app, release 1.2.0\n",
    by_url: true,
};
const V130: Artifact<'static> = Artifact {
    label: "1.3.0",
    file: "app-1.3.0.txt",
    content: b"app, release 1.3.0\n",
    by_url: true,
};

/// Write the artifacts into `dir` and the feed listing them (newest first) as `feed`.
fn write_feed(dir: &Path, feed: &Path, artifacts: &[Artifact<'_>]) -> Res<()> {
    let mut releases = Vec::new();
    for a in artifacts {
        let path = dir.join(a.file);
        std::fs::write(&path, a.content)?;
        let url = if a.by_url {
            format!("file://{}", path.display())
        } else {
            a.file.to_owned()
        };
        releases.push(serde_json::json!({
            "version": a.label,
            "url": url,
            "sha256": feed::sha256_version(a.content)?.hex(),
        }));
    }
    let text = serde_json::to_string_pretty(&serde_json::json!({ "releases": releases }))?;
    std::fs::write(feed, text)?;
    Ok(())
}

/// Run the node and print what happened; the run's record.
async fn run(project: &Project, node: &dtk::NodeId) -> Res<dtk::RunRecord> {
    let outcome = project.run_node(node, RunOptions::new()).await?;
    let how = match &outcome {
        RunOutcome::Ran(_) => "ran".to_owned(),
        RunOutcome::UpToDate(_) => "was up to date".to_owned(),
        // Pending (waiting for a worker with the node's labels), or another worker has it.
        other => format!("did not run here ({})", other.record().status),
    };
    let run = outcome.record().clone();
    let list = |svs: &[dtk::SourceVersion]| {
        svs.iter()
            .map(|sv| format!("{}:{}", sv.source, sv.version.short()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "node {node} {how}: run {} {}, inputs [{}], outputs [{}]",
        run.id,
        run.status,
        list(&run.inputs),
        list(&run.outputs)
    );
    if run.status != RunStatus::Success {
        println!("{}", project.run_log(&run.id)?);
        return Err(format!("run {} did not succeed: {:?}", run.id, run.error).into());
    }
    Ok(run)
}

#[tokio::main]
async fn main() -> Res<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let releases = dir.join("releases");
    std::fs::create_dir(&releases)?;
    let feed_file = releases.join("app.feed.json");

    println!(
        "== 1. A release feed with two releases, in {}",
        dir.display()
    );
    write_feed(&releases, &feed_file, &[V120, V110])?;
    println!("{}", std::fs::read_to_string(&feed_file)?);

    println!("\n== 2. A registry with the built-in kinds and `feed`, and a project");
    let mut registry = Registry::new();
    dtk::dtk_sources::register_all(&mut registry);
    registry.register(Arc::new(FeedKind));
    println!("kinds: {}", registry.names().join(", "));
    let project = Project::init(dir, Arc::new(registry), InitOptions::new())?.with_cwd(dir);
    println!("project in {}", project.dkt_dir().display());

    println!("\n== 3. Sources and a node");
    let app = project
        .add_source(AddSource::new("app", Some("releases/app.feed.json".into())))
        .await?;
    println!(
        "source {} (kind {}, inferred from the .feed.json suffix): {}",
        app.name, app.kind, app.location
    );
    println!("`dkt source log app`:");
    for v in project.source_log("app").await? {
        let release = v.extra.get(feed::RELEASE).map_or("-", String::as_str);
        println!("  {}  RELEASE {release}", v.version);
    }
    std::fs::create_dir(dir.join("out"))?;
    let out = project
        .add_source(AddSource::new("out", Some("out".into())))
        .await?;
    println!("source {} (kind {}): {}", out.name, out.kind, out.location);
    let mut node = NodeSpec::new(Command::Argv(vec![
        r#"cd "${app:ROOT}" && sha256sum * > "${out:ROOT}/sums" && echo "${app:RELEASE}" > "${out:ROOT}/release""#
            .into(),
    ]));
    node.inputs = vec![app.name.clone()];
    node.outputs = vec![out.name.clone()];
    let node_id = project.define_node(node)?;
    println!("node {node_id}: checksums the artifact of the current release into `out`");

    println!("\n== 4. Run, provenance, verification");
    let first = run(&project, &node_id).await?;
    let sums = std::fs::read_to_string(dir.join("out/sums"))?;
    print!("out/sums: {sums}");
    let app_version = app.latest.as_ref().ok_or("app has no version")?;
    if !sums.starts_with(app_version.hex()) {
        return Err(format!("the node saw another artifact than {app_version}").into());
    }
    println!("(the node's sha256sum agrees with the version of `app`)");
    let produced = first.outputs.first().ok_or("the run published nothing")?;
    let target = format!("out:{}", produced.version.short());
    let manifest = project.inspect(&target, InspectOptions::new()).await?;
    println!("`dkt inspect {target}`:");
    println!("{}", serde_json::to_string_pretty(&manifest.to_json())?);
    if let Some(d) = &manifest.root_digest {
        println!("root digest (covers the whole ancestry): {d}");
    }
    let report = project.verify(&target).await?;
    println!("`dkt verify {target}`:");
    for c in &report.checks {
        let detail = match (&c.expected, &c.found) {
            (Some(e), Some(f)) => format!(" (expected {e}, found {f})"),
            (None, Some(why)) => format!(" ({why})"),
            _ => String::new(),
        };
        println!("  {:<16} {:<28} {}{detail}", c.subject, c.check, c.result);
    }
    if !report.is_ok() {
        return Err("verification found mismatches".into());
    }

    println!("\n== 5. A new release");
    write_feed(&releases, &feed_file, &[V130, V120, V110])?;
    for o in project.update_sources(&[]).await? {
        let short = |v: &Option<dtk::Version>| {
            v.as_ref()
                .map_or_else(|| "-".to_owned(), |v| v.short().to_owned())
        };
        println!(
            "update {}: {} -> {}{}",
            o.source,
            short(&o.previous),
            short(&o.latest),
            o.error.map(|e| format!(" ({e})")).unwrap_or_default()
        );
    }
    let second = run(&project, &node_id).await?;
    println!(
        "out/release now says {}",
        std::fs::read_to_string(dir.join("out/release"))?.trim()
    );
    if second.outputs == first.outputs {
        return Err("the new release did not change the output".into());
    }
    println!("\ndone: the temporary directory is removed on exit");
    Ok(())
}
