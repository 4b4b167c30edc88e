//! `dkt remote`, `dkt fetch`, `dkt push`, `dkt pull`, `dkt status`: printing what the
//! library's sharing methods return.

use std::io::Write;

use dtk::sync::Conflict;
use dtk::Project;

use crate::cli::RemoteCommand;
use crate::output::{json, Table};

pub(crate) fn remote(
    p: &Project,
    cmd: RemoteCommand,
    as_json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    match cmd {
        RemoteCommand::Add { name, url } => {
            let r = p.add_remote(&name, &url)?;
            if as_json {
                json(out, &r)?;
            } else {
                writeln!(out, "Added remote {} ({})", r.name, r.url)?;
            }
        }
        RemoteCommand::List => {
            let remotes = p.remotes()?;
            if as_json {
                json(out, &remotes)?;
            } else {
                let mut t = Table::new(&["NAME", "URL"]);
                for r in remotes {
                    t.row(vec![r.name, r.url]);
                }
                t.print(out)?;
            }
        }
        RemoteCommand::Rm { name } => {
            let r = p.remove_remote(&name)?;
            if as_json {
                json(out, &r)?;
            } else {
                writeln!(out, "Removed remote {}", r.name)?;
            }
        }
    }
    Ok(0)
}

pub(crate) async fn fetch(
    p: &Project,
    remote: &str,
    as_json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let f = p.fetch(remote).await?;
    if as_json {
        json(out, &f)?;
    } else if f.incoming == 0 {
        writeln!(out, "{remote}: nothing new")?;
    } else {
        writeln!(
            out,
            "{remote}: {} new commit(s); `dkt pull {remote}` merges them",
            f.incoming
        )?;
    }
    Ok(0)
}

pub(crate) async fn push(
    p: &Project,
    remote: &str,
    as_json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let r = p.push(remote).await?;
    if as_json {
        json(out, &r)?;
    } else if r.pushed == 0 {
        writeln!(out, "{remote}: up to date")?;
    } else {
        writeln!(out, "{remote}: pushed {} commit(s)", r.pushed)?;
    }
    Ok(0)
}

fn print_conflicts(out: &mut dyn Write, conflicts: &[Conflict]) -> std::io::Result<()> {
    for c in conflicts {
        writeln!(
            out,
            "CONFLICT {}: {} (kept {})",
            c.what,
            c.values.join(" vs "),
            c.kept
        )?;
    }
    Ok(())
}

pub(crate) async fn pull(
    p: &Project,
    remote: &str,
    as_json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let r = p.pull(remote).await?;
    if as_json {
        json(out, &r)?;
        return Ok(0);
    }
    match r.how {
        "up to date" => writeln!(out, "{remote}: up to date")?,
        how => writeln!(out, "{remote}: {how}, {} record(s) taken", r.records)?,
    }
    for (old, new) in &r.renumbered {
        writeln!(
            out,
            "run {old} was recorded on both sides: the later one is now run {new}"
        )?;
    }
    print_conflicts(out, &r.conflicts)?;
    if !r.conflicts.is_empty() {
        writeln!(
            out,
            "{} conflict(s): the later change was kept; change the record again (e.g. `dkt source pin`) to settle it",
            r.conflicts.len()
        )?;
    }
    Ok(0)
}

pub(crate) async fn status(p: &Project, as_json: bool, out: &mut dyn Write) -> anyhow::Result<u8> {
    let s = p.status().await?;
    if as_json {
        json(out, &s)?;
        return Ok(0);
    }
    let mut t = Table::new(&["SOURCE", "KIND", "LATEST", "PINNED", "FROZEN"]);
    for src in &s.sources {
        t.row(vec![
            src.name.to_string(),
            src.kind.clone(),
            src.latest
                .as_ref()
                .map_or("-".into(), |v| v.short().to_owned()),
            src.pinned
                .as_ref()
                .map_or("-".into(), |v| v.short().to_owned()),
            if src.frozen { "yes" } else { "no" }.into(),
        ]);
    }
    t.print(out)?;
    if s.stale.is_empty() {
        writeln!(out, "\nnodes: all up to date")?;
    } else {
        writeln!(out)?;
        let mut t = Table::new(&["NODE", "NAME", "WHY IT WOULD RUN", "LAST RUN"]);
        for n in &s.stale {
            t.row(vec![
                n.node.short(),
                n.name.as_ref().map_or("-".into(), |n| n.to_string()),
                n.reason.to_string(),
                n.failed
                    .map_or("-".into(), |r| format!("{} failed", r.short())),
            ]);
        }
        t.print(out)?;
    }
    writeln!(
        out,
        "\nruns: {} pending, {} running",
        s.pending.len(),
        s.running.len()
    )?;
    for r in &s.remotes {
        writeln!(
            out,
            "remote {} ({}): {} unpushed, {} unpulled commit(s)",
            r.name, r.url, r.unpushed, r.unpulled
        )?;
    }
    print_conflicts(out, &s.conflicts)?;
    Ok(0)
}
