//! How a Rust build tool embeds dtk: declare a small pipeline in code, run a scheduling
//! pass, and report what changed.
//!
//! ```text
//! cargo run --example build_tool
//! ```
//!
//! The pipeline: `src` (a local directory of "sources") -> `compile` -> `objects` ->
//! `link` -> `bin`. The first pass runs both steps; a second pass with nothing changed
//! runs nothing; after an edit of `src` both run again, and the artifact's provenance is
//! printed.

use std::path::Path;

use dtk::inspect::InspectOptions;
use dtk::scheduler::PassOptions;
use dtk::{AddSource, Command, InitOptions, Name, NodeSpec, Project, RunOutcome};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn node(command: &str, inputs: &[&str], outputs: &[&str]) -> Result<NodeSpec, Error> {
    let mut n = NodeSpec::new(Command::Argv(vec![command.to_owned()]));
    n.inputs = inputs
        .iter()
        .map(|s| Name::new(s))
        .collect::<Result<_, _>>()?;
    n.outputs = outputs
        .iter()
        .map(|s| Name::new(s))
        .collect::<Result<_, _>>()?;
    Ok(n)
}

/// Print one pass the way a build tool would: which step ran, why, and what it made.
fn report(label: &str, pass: &dtk::scheduler::PassReport) {
    println!("{label}:");
    if pass.items.is_empty() {
        println!("  nothing to do");
    }
    for item in &pass.items {
        match &item.outcome {
            Some(RunOutcome::Ran(run)) => println!(
                "  node {} ran ({}): {} -> {}",
                item.node.short(),
                item.reason,
                run.status,
                run.outputs
                    .iter()
                    .map(|o| format!("{}:{}", o.source, o.version.short()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(other) => println!("  node {}: {:?}", item.node.short(), other.record().status),
            None => println!(
                "  node {}: {}",
                item.node.short(),
                item.error.as_deref().unwrap_or("")
            ),
        }
    }
}

async fn run(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join("objects"))?;
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::write(dir.join("src/main.c"), "int main() { return 0; }\n")?;
    std::fs::write(dir.join("src/util.c"), "int util() { return 1; }\n")?;

    let project = Project::init(dir, dtk::default_registry(), InitOptions::new())?.with_cwd(dir);
    for name in ["src", "objects", "bin"] {
        project
            .add_source(AddSource::new(name, Some(format!("./{name}"))))
            .await?;
    }
    // "Compile" each file and "link" the objects: stand-ins any shell has.
    project.define_node(node(
        "for f in ${src:ROOT}/*.c; do wc -c < $f > ${objects:ROOT}/$(basename $f .c).o; done",
        &["src"],
        &["objects"],
    )?)?;
    project.define_node(node(
        "cat ${objects:ROOT}/*.o > ${bin:ROOT}/app",
        &["objects"],
        &["bin"],
    )?)?;

    report(
        "first build",
        &project.run_pass(PassOptions::new().with_jobs(2)).await?,
    );
    report("no change", &project.run_pass(PassOptions::new()).await?);
    std::fs::write(dir.join("src/util.c"), "int util() { return 2 + 2; }\n")?;
    report(
        "after editing src/util.c",
        &project.run_pass(PassOptions::new()).await?,
    );

    let bin = project.source("bin")?;
    let latest = bin.latest.ok_or("bin has no version")?;
    let manifest = project
        .inspect(&format!("bin:{}", latest.short()), InspectOptions::new())
        .await?;
    println!("provenance of bin:{}:", latest.short());
    println!("{}", serde_json::to_string_pretty(&manifest.to_json())?);
    let verified = project.verify(&format!("bin:{}", latest.short())).await?;
    println!(
        "verify: {} ({} checks)",
        if verified.is_ok() { "ok" } else { "MISMATCH" },
        verified.checks.len()
    );
    if !verified.is_ok() {
        return Err("verification failed".into());
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    // dtk's API is async; a synchronous program drives it with a Tokio runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(dir.path()))
}
