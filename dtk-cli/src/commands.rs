//! What each command does: parse, call the library, print.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use dtk::{AddSource, InitOptions, Project};
use serde_json::json;

use crate::cli::{
    Cli, Command, Format, KeyCommand, NodeCommand, SecretCommand, SourceCommand, Tokens,
    WorkerCommand,
};
use crate::exit;
use crate::output::{json, or_dash, Table};

/// Bad usage found by the CLI itself (exit code 2).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn cwd(cli_dir: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let here = std::env::current_dir().context("cannot read the current directory")?;
    let dir = match cli_dir {
        Some(d) if d.is_absolute() => d.clone(),
        Some(d) => here.join(d),
        None => return Ok(here),
    };
    // Like git: a -C that names no directory is an error, never the enclosing project.
    if !dir.is_dir() {
        return Err(UsageError(format!(
            "-C {}: no such directory",
            cli_dir.as_deref().unwrap_or(&dir).display()
        ))
        .into());
    }
    Ok(dir)
}

fn init_options(t: Tokens) -> InitOptions {
    use dtk::config::{AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, HOCKEYAPP_TOKEN};
    let mut o = InitOptions {
        github_token: t.github_token,
        docker_token: t.docker_token,
        ..InitOptions::default()
    };
    for (name, value) in [
        (HOCKEYAPP_TOKEN, t.hockeyapp_token),
        (AWS_ACCESS_KEY_ID, t.aws_access_key_id),
        (AWS_SECRET_ACCESS_KEY, t.aws_secret_access_key),
    ] {
        if let Some(v) = value {
            o = o.with_secret(name, v);
        }
    }
    o
}

fn open(dir: &Path) -> anyhow::Result<Project> {
    let mut p = Project::discover(dir, dtk::default_registry())?
        .with_cwd(dir)
        .with_progress(crate::progress::for_terminal());
    crate::remote::attach(&mut p)?;
    Ok(p)
}

/// `-j`: as given, else 1 run at once here, or 64 in a remote queue.
fn jobs_for(p: &Project, jobs: Option<usize>) -> usize {
    jobs.unwrap_or(if p.dispatcher().is_some() { 64 } else { 1 })
        .max(1)
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<u8> {
    let dir = cwd(&cli.chdir)?;
    tracing::debug!(dir = %dir.display(), version = env!("CARGO_PKG_VERSION"), "dkt starting");
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let out: &mut dyn Write = &mut out;
    let as_json = cli.json;
    match cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "dkt", out);
        }
        Command::Man { dir: None } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(out)?;
        }
        Command::Man { dir: Some(into) } => {
            let into = dir.join(into);
            let written = crate::man::write_pages(&into)?;
            if as_json {
                json(out, &json!({ "dir": into, "pages": written }))?;
            } else {
                writeln!(
                    out,
                    "wrote {} man pages into {}",
                    written.len(),
                    into.display()
                )?;
            }
        }
        Command::Init {
            tokens,
            signing_key,
            no_signing_key,
        } => {
            let signing = match (signing_key, no_signing_key) {
                (_, true) => dtk::KeySetup::Unsigned,
                (Some(path), _) => dtk::KeySetup::Import(dir.join(path)),
                (None, false) => dtk::KeySetup::Generate,
            };
            let options = init_options(tokens).with_signing(signing);
            let p = Project::init(&dir, dtk::default_registry(), options)?;
            let key = p.signing_key();
            if as_json {
                json(
                    out,
                    &json!({
                        "dkt_dir": p.dkt_dir(),
                        "signing_key": key.as_ref().map(|k| k.fingerprint()),
                    }),
                )?;
            } else {
                writeln!(
                    out,
                    "Initialized empty Datakit repository in {}/",
                    p.dkt_dir().display()
                )?;
                // The design's message alone on stdout; the key is a note on stderr.
                if let Some(k) = key {
                    eprintln!(
                        "Commits are signed by {} {} (.dkt/signing-key)",
                        k.principal(),
                        k.fingerprint()
                    );
                }
            }
        }
        Command::Key(cmd) => return key(open(&dir)?, cmd, as_json, out),
        Command::Clone {
            repo,
            into: target,
            tokens,
        } => {
            let target = match target {
                Some(t) if t.is_absolute() => t,
                Some(t) => dir.join(t),
                None => dir.clone(),
            };
            let p = Project::clone_from(
                &repo,
                &target,
                dtk::default_registry(),
                init_options(tokens),
            )?;
            if as_json {
                json(out, &json!({ "dkt_dir": p.dkt_dir(), "from": repo }))?;
            } else {
                writeln!(
                    out,
                    "Cloned Datakit repository {repo} into {}/",
                    p.dkt_dir().display()
                )?;
            }
        }
        Command::Source(cmd) => return source(open(&dir)?, cmd, as_json, out).await,
        Command::Node(cmd) => return node(open(&dir)?, cmd, as_json, out).await,
        Command::Secret(cmd) => return secret(open(&dir)?, cmd, as_json, out),
        Command::Remote(cmd) => return crate::sharing::remote(&open(&dir)?, cmd, as_json, out),
        Command::Fetch { remote } => {
            return crate::sharing::fetch(&open(&dir)?, &remote, as_json, out).await
        }
        Command::Push { remote } => {
            return crate::sharing::push(&open(&dir)?, &remote, as_json, out).await
        }
        Command::Pull { remote } => {
            return crate::sharing::pull(&open(&dir)?, &remote, as_json, out).await
        }
        Command::Status => return crate::sharing::status(&open(&dir)?, as_json, out).await,
        Command::Apply { file, prune } => {
            let p = open(&dir)?;
            let path = p.cwd().join(&file);
            let text = std::fs::read_to_string(&path).map_err(|e| dtk::Error::io(&path, e))?;
            let report = p
                .apply_with(
                    &file.display().to_string(),
                    &text,
                    dtk::pipeline::ApplyOptions::new().with_prune(prune),
                )
                .await?;
            if as_json {
                json(out, &report)?;
            } else {
                let mut t = Table::new(&["WHAT", "NAME", "STATUS"]);
                for s in &report.sources {
                    t.row(vec![
                        "source".into(),
                        s.name.to_string(),
                        s.status.to_string(),
                    ]);
                }
                for n in &report.nodes {
                    t.row(vec!["node".into(), n.id.short(), n.status.to_string()]);
                }
                for r in &report.retired {
                    t.row(vec![
                        "node".into(),
                        r.id.short(),
                        format!("removed ({})", r.reason),
                    ]);
                }
                t.print(out)?;
            }
        }
        Command::Inspect {
            what,
            dot,
            downstream,
            format,
            sign,
            files,
        } => {
            if sign && (dot || format != Format::Slsa) {
                return Err(UsageError(
                    "--sign signs the SLSA statement: use it with --format slsa".into(),
                )
                .into());
            }
            let p = open(&dir)?;
            if files {
                let run = p.run_of(&what)?;
                if as_json {
                    json(
                        out,
                        &json!({ "run": run.id.to_hex(), "read_files": run.read_files }),
                    )?;
                } else if run.read_files.is_empty() {
                    eprintln!(
                        "run {} recorded no list of the files it opened (only sandboxed runs do, with strace on PATH; or it opened none of its inputs' files)",
                        run.id.short()
                    );
                } else {
                    let mut t = Table::new(&["INPUT", "FILE"]);
                    for (source, paths) in &run.read_files {
                        for f in paths {
                            t.row(vec![source.to_string(), f.clone()]);
                        }
                    }
                    t.print(out)?;
                }
                return Ok(exit::OK);
            }
            if format == Format::Vsa && !dot {
                let run = p.run_of(&what)?;
                let rep = p
                    .reproductions(&run.id)?
                    .pop()
                    .ok_or_else(|| dtk::Error::NotFound {
                        what: "reproduction",
                        name: format!("of run {}", run.id.short()),
                        hint: format!(": run `dkt reproduce {}` first", run.id.short()),
                    })?;
                json(out, &rep.to_vsa(&p)?)?;
                return Ok(exit::OK);
            }
            let m = p
                .inspect(
                    &what,
                    dtk::inspect::InspectOptions::new().with_downstream(downstream),
                )
                .await?;
            let format = if dot { Format::Dot } else { format };
            match format {
                Format::Dot => write!(out, "{}", m.to_dot())?,
                Format::Slsa if sign => {
                    let key = p.signing_key().ok_or_else(|| dtk::Error::NotFound {
                        what: "signing key",
                        name: p
                            .dkt_dir()
                            .join(dtk::signing::KEY_FILE)
                            .display()
                            .to_string(),
                        hint: ": this project has no key (create one with `dkt key generate`)"
                            .into(),
                    })?;
                    json(out, &dtk::signing::dsse_envelope(&key, &m.to_slsa(&p)?)?)?
                }
                Format::Slsa => json(out, &m.to_slsa(&p)?)?,
                Format::Prov => json(out, &m.to_prov())?,
                Format::Vsa => unreachable!("handled above"),
                Format::Manifest => {
                    if !as_json {
                        writeln!(
                            out,
                            "# manifest for {what}{}",
                            if downstream { " (downstream)" } else { "" }
                        )?;
                        if let Ok(run) = p.run_of(&what) {
                            for r in p.reproductions(&run.id)? {
                                writeln!(out, "# {}", reproduction_line(&r))?;
                            }
                        }
                        if let Some(d) = &m.root_digest {
                            // Seals name their scheme (`blake3-jcs:`); older ones are
                            // bare BLAKE3 hex.
                            if d.contains(':') {
                                writeln!(out, "# root record digest {d}")?;
                            } else {
                                writeln!(out, "# root record digest blake3:{d}")?;
                            }
                        }
                    }
                    json(out, &m.to_json())?;
                }
            }
        }
        Command::Run {
            jobs,
            dry_run,
            assume,
            timeout,
            follow,
            sandbox,
        } => {
            let p = open(&dir)?.with_sandbox(sandbox);
            let jobs = jobs_for(&p, jobs);
            let follower = Follower::start(&p, follow);
            let interrupted = cancel_on_signals(&p)?;
            let timeout = timeout
                .as_deref()
                .map(dtk::engine::parse_duration)
                .transpose()?;
            if !assume.is_empty() && !dry_run {
                return Err(
                    UsageError("--if is an impact query: use it with --dry-run".into()).into(),
                );
            }
            let mut options = dtk::scheduler::PassOptions::new()
                .with_jobs(jobs)
                .with_dry_run(dry_run);
            options.run = dtk::RunOptions::new().with_timeout(timeout);
            for a in &assume {
                let (src, ver) = a
                    .split_once('=')
                    .ok_or_else(|| UsageError(format!("--if {a:?}: expected SRC=VERSION")))?;
                let version = match ver.parse::<dtk::Version>() {
                    Ok(v) => v,
                    Err(_) => {
                        p.resolve_source_version(&format!("{src}:{ver}"))
                            .await?
                            .version
                    }
                };
                options = options.assuming(dtk::Name::new(src)?, version);
            }
            let report = p.run_pass(options).await;
            follower.finish().await;
            let report = report?;
            if as_json {
                json(out, &report)?;
            } else {
                for o in report.polled.iter().filter(|o| o.error.is_some()) {
                    eprintln!(
                        "poll {}: {}",
                        o.source,
                        o.error.as_deref().unwrap_or_default()
                    );
                }
                let mut t = Table::new(&["NODE", "RUN", "STATUS", "WHY"]);
                for i in &report.items {
                    let (run, status) = match (&i.outcome, &i.error) {
                        (_, Some(e)) => ("-".to_owned(), format!("error: {e}")),
                        (None, None) => ("-".to_owned(), "would run".to_owned()),
                        (Some(o), None) => {
                            let r = o.record();
                            let s = match o {
                                dtk::RunOutcome::UpToDate(_) => "up to date".to_owned(),
                                _ => r.status.to_string(),
                            };
                            (r.id.short(), s)
                        }
                    };
                    t.row(vec![i.node.short(), run, status, i.reason.to_string()]);
                }
                if report.items.is_empty() {
                    writeln!(out, "nothing to run")?;
                } else {
                    t.print(out)?;
                }
            }
            if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(exit::INTERRUPTED);
            }
            if !report.is_ok() {
                return Ok(exit::FAILURE);
            }
        }
        Command::Worker {
            action: Some(WorkerCommand::List { queue }),
            ..
        } => return crate::remote::list(&dir, queue, as_json, out).await,
        Command::Worker {
            action:
                Some(WorkerCommand::Key {
                    key,
                    dir: worker_dir,
                }),
            ..
        } => return crate::remote::print_key(&dir, key, worker_dir, as_json, out),
        Command::Worker {
            action: None,
            labels,
            jobs,
            max_runs,
            queue: Some(queue),
            artifacts,
            secrets,
            dir: worker_dir,
            key,
        } => {
            let stop = stop_on_signals()?;
            let args = crate::remote::WorkerArgs {
                queue,
                labels,
                jobs,
                max_runs,
                artifacts,
                secrets,
                dir: worker_dir,
                key,
            };
            return crate::remote::worker(&dir, args, stop, as_json, out).await;
        }
        Command::Worker {
            action: None,
            labels,
            jobs,
            max_runs,
            queue: None,
            ..
        } => {
            let p = open(&dir)?;
            dtk::engine::validate_labels(&labels)?;
            let mut options = dtk::worker::WorkerOptions::new()
                .with_jobs(jobs)
                .with_max_runs(max_runs);
            if !labels.is_empty() {
                options = options.with_labels(labels);
            }
            let stop = stop_on_signals()?;
            // Lines as things happen (flushed each, so a log file follows along).
            let mut feed = p.subscribe();
            let work = p.work(options, stop);
            tokio::pin!(work);
            let line = |event: dtk::events::Event| -> Option<String> {
                use dtk::events::Event;
                match event {
                    Event::RunStarted { run, node } => Some(format!(
                        "run {} of node {}: started",
                        run.short(),
                        node.short()
                    )),
                    Event::RunFinished { run, node, status } => Some(format!(
                        "run {} of node {}: {status}",
                        run.short(),
                        node.short()
                    )),
                    Event::Waiting { message } => Some(message),
                    _ => None,
                }
            };
            let report = loop {
                tokio::select! {
                    report = &mut work => break report,
                    event = feed.recv() => {
                        if let (false, Ok(event)) = (as_json, event) {
                            if let Some(l) = line(event) {
                                writeln!(out, "{l}")?;
                                out.flush()?;
                            }
                        }
                    }
                }
            };
            if !as_json {
                while let Ok(event) = feed.try_recv() {
                    if let Some(l) = line(event) {
                        writeln!(out, "{l}")?;
                    }
                }
            }
            let report = report?;
            if as_json {
                json(out, &report)?;
            } else {
                writeln!(
                    out,
                    "worker done: {} run(s), {} requeued",
                    report.runs.len(),
                    report.requeued.len()
                )?;
            }
        }
        Command::Serve {
            listen,
            token_file,
            read_only,
        } => {
            let p = open(&dir)?;
            let options = crate::serve::ServeOptions {
                listen,
                token_file,
                read_only,
            };
            return crate::serve::serve(p, options, out).await;
        }
        Command::Daemon {
            interval,
            jobs,
            passes,
        } => {
            let p = open(&dir)?;
            let jobs = jobs_for(&p, jobs);
            let interval = dtk::engine::parse_duration(&interval)?;
            return daemon(p, interval, jobs, passes, as_json, out).await;
        }
        Command::Reproduce {
            what,
            sandbox,
            vsa_out,
        } => {
            let p = open(&dir)?;
            let _interrupted = cancel_on_signals(&p)?;
            let rep = p.reproduce(&what, sandbox).await?;
            if let Some(file) = &vsa_out {
                let text = serde_json::to_string_pretty(&rep.to_vsa(&p)?)? + "\n";
                std::fs::write(file, text).map_err(|e| dtk::Error::io(file, e))?;
            }
            if as_json {
                json(out, &rep)?;
            } else {
                write_reproduction(out, &rep)?;
            }
            return Ok(rep.exit_code());
        }
        Command::Verify {
            what,
            allowed_signers,
        } => {
            let mut p = open(&dir)?;
            if let Some(f) = allowed_signers {
                p = p.with_allowed_signers(dir.join(f));
            }
            let report = p.verify(&what).await?;
            if as_json {
                json(out, &report)?;
            } else {
                let mut t = Table::new(&["SUBJECT", "CHECK", "RESULT"]);
                for c in &report.checks {
                    let result = match (c.result, &c.expected, &c.found) {
                        ("mismatch", Some(e), Some(f)) => {
                            format!("MISMATCH: expected {e}, found {f}")
                        }
                        ("skipped", _, Some(why)) => format!("skipped ({why})"),
                        (r, _, _) => r.to_owned(),
                    };
                    t.row(vec![c.subject.clone(), c.check.clone(), result]);
                }
                t.print(out)?;
                let bad = report.mismatches().count();
                if bad == 0 {
                    writeln!(
                        out,
                        "verified: {} checks passed, {} skipped",
                        report.checks.iter().filter(|c| c.result == "ok").count(),
                        report
                            .checks
                            .iter()
                            .filter(|c| c.result == "skipped")
                            .count()
                    )?;
                } else {
                    writeln!(out, "FAILED: {bad} mismatch(es)")?;
                }
            }
            if !report.is_ok() {
                return Ok(exit::FAILURE);
            }
        }
    }
    Ok(exit::OK)
}

fn source_row(s: &dtk::SourceSpec) -> Vec<String> {
    vec![
        s.name.to_string(),
        s.kind.clone(),
        s.location.clone(),
        or_dash(s.tag.as_ref()),
        or_dash(s.path.as_ref().map(|p| format!("/{p}"))),
    ]
}

async fn source(
    p: Project,
    cmd: SourceCommand,
    as_json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    match cmd {
        SourceCommand::Add {
            name,
            location,
            kind,
            path,
            tag,
        } => {
            let add = AddSource {
                name,
                location,
                kind,
                path,
                tag,
            };
            let (spec, note) = p.add_source_noted(add).await?;
            if as_json {
                let mut v = serde_json::to_value(&spec)?;
                if let (Some(n), Some(obj)) = (&note, v.as_object_mut()) {
                    obj.insert("note".to_owned(), json!(n));
                }
                json(out, &v)?;
            } else {
                let mut t = Table::new(&["NAME", "KIND", "LOCATION", "TAG", "PATH"]);
                t.row(source_row(&spec));
                t.print(out)?;
                if let Some(n) = &note {
                    eprintln!("note: {n}");
                }
            }
        }
        SourceCommand::List => {
            let sources = p.sources()?;
            if as_json {
                let list: Vec<dtk::views::SourceView> =
                    sources.iter().map(dtk::views::SourceView::from).collect();
                json(out, &list)?;
            } else {
                let mut t = Table::new(&["NAME", "LATEST"]);
                for s in &sources {
                    let name = if s.pinned.is_some() {
                        format!("{}*", s.name)
                    } else {
                        s.name.to_string()
                    };
                    let mut latest = or_dash(s.current());
                    if s.frozen {
                        latest.push_str(" (frozen)");
                    }
                    t.row(vec![name, latest]);
                }
                t.print(out)?;
            }
        }
        SourceCommand::Log { name, max_count } => {
            let mut versions = p.source_log(&name).await?;
            if let Some(n) = max_count {
                versions.truncate(n);
            }
            if as_json {
                json(out, &versions)?;
            } else {
                let extra: Vec<String> = versions
                    .iter()
                    .flat_map(|v| v.extra.keys().cloned())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let mut header = vec!["ID"];
                header.extend(extra.iter().map(String::as_str));
                header.push("FULL");
                let mut t = Table::new(&header);
                for v in &versions {
                    let mut row = vec![v.version.short().to_owned()];
                    row.extend(extra.iter().map(|k| or_dash(v.extra.get(k))));
                    row.push(v.version.to_string());
                    t.row(row);
                }
                t.print(out)?;
            }
        }
        SourceCommand::Pin { name, target, kind } => {
            match Project::pin_request(&target, kind.as_deref()) {
                dtk::PinRequest::Version(version) => {
                    let v = p.pin(&name, &version).await?;
                    if as_json {
                        json(out, &json!({ "name": name, "pinned": v }))?;
                    }
                }
                dtk::PinRequest::Relocate { location, kind } => {
                    let spec = p.relocate(&name, &location, kind.as_deref()).await?;
                    if as_json {
                        json(out, &spec)?;
                    } else {
                        let mut t = Table::new(&["NAME", "KIND", "LOCATION", "TAG", "PATH"]);
                        t.row(source_row(&spec));
                        t.print(out)?;
                    }
                }
            }
        }
        SourceCommand::Unpin { name } => {
            p.unpin(&name)?;
            if as_json {
                json(out, &json!({ "name": name, "pinned": null }))?;
            }
        }
        SourceCommand::Link { from, to } => {
            let link = p.link(&from, &to).await?;
            if as_json {
                json(out, &link)?;
            }
        }
        SourceCommand::Rm { name } => {
            let spec = p.remove_source(&name).await?;
            if as_json {
                json(out, &spec)?;
            }
        }
        SourceCommand::Update { names } => {
            let names = match p.update_request(&names) {
                dtk::UpdateRequest::SetLatest { name, version } => {
                    let v = p.set_latest(&name, &version).await?;
                    if as_json {
                        json(out, &json!({ "name": name, "latest": v }))?;
                    } else {
                        let mut t = Table::new(&["NAME", "STATUS", "LATEST"]);
                        t.row(vec![name, "set".into(), v.to_string()]);
                        t.print(out)?;
                    }
                    return Ok(exit::OK);
                }
                dtk::UpdateRequest::Poll(names) => names,
            };
            let outcomes = p.update_sources(&names).await?;
            let failed = outcomes.iter().any(|o| o.error.is_some());
            if as_json {
                json(out, &outcomes)?;
            } else {
                let mut t = Table::new(&["NAME", "STATUS", "LATEST"]);
                for o in &outcomes {
                    let status = match (&o.error, o.skipped, o.previous == o.latest) {
                        _ if o.publishing.is_some() => format!(
                            "not polled: run {} is publishing to it",
                            o.publishing.map(|r| r.short()).unwrap_or_default()
                        ),
                        (Some(e), _, _) => format!("error: {e}"),
                        (None, false, _) if !o.refs.is_empty() => o
                            .refs
                            .iter()
                            .map(|r| match (&r.from, &r.to) {
                                (None, _) => format!("{} new", r.name),
                                (Some(_), None) => format!("{} deleted", r.name),
                                (Some(f), Some(_)) => {
                                    format!("{} moved from {}", r.name, f.short())
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(", "),
                        (None, true, _) => "frozen".to_owned(),
                        (None, false, true) if o.note.is_some() => {
                            "no version yet: the tag does not exist".to_owned()
                        }
                        (None, false, true) => "unchanged".to_owned(),
                        (None, false, false) => format!(
                            "updated from {}",
                            or_dash(o.previous.as_ref().map(|v| v.short().to_owned()))
                        ),
                    };
                    t.row(vec![
                        o.source.to_string(),
                        status,
                        or_dash(o.latest.as_ref()),
                    ]);
                }
                t.print(out)?;
            }
            if failed {
                return Ok(exit::FAILURE);
            }
        }
        SourceCommand::Freeze { name } => {
            p.set_frozen(&name, true)?;
            if as_json {
                json(out, &json!({ "name": name, "frozen": true }))?;
            }
        }
        SourceCommand::Thaw { name } => {
            p.set_frozen(&name, false)?;
            if as_json {
                json(out, &json!({ "name": name, "frozen": false }))?;
            }
        }
    }
    Ok(exit::OK)
}

fn sv_list(list: &[dtk::SourceVersion]) -> String {
    if list.is_empty() {
        return "-".to_owned();
    }
    list.iter()
        .map(|sv| format!("{}:{}", sv.source, sv.version.short()))
        .collect::<Vec<_>>()
        .join(",")
}

fn names(list: &[dtk::Name]) -> String {
    if list.is_empty() {
        return "-".to_owned();
    }
    list.iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

async fn node(
    p: Project,
    cmd: NodeCommand,
    as_json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    match cmd {
        NodeCommand::Run {
            name,
            follow,
            labels,
            input,
            output,
            on_success,
            on_failure,
            on_conflict,
            sandbox,
            network,
            no_run,
            force,
            timeout,
            command,
        } => {
            let on_conflict = on_conflict
                .as_deref()
                .map(str::parse::<dtk::OnConflict>)
                .transpose()?;
            let is_file = command.len() == 1
                && (command[0].ends_with(".yml") || command[0].ends_with(".yaml"));
            let mut node_name = name.clone();
            let spec = if is_file {
                if !labels.is_empty()
                    || !input.is_empty()
                    || !output.is_empty()
                    || on_success.is_some()
                    || on_failure.is_some()
                    || on_conflict.is_some()
                    || sandbox
                    || network
                {
                    return Err(UsageError(format!(
                        "{}: a node file holds the labels, inputs, outputs and hooks; do not give them as options too",
                        command[0]
                    ))
                    .into());
                }
                let path = p.cwd().join(&command[0]);
                let text = std::fs::read_to_string(&path).map_err(|e| dtk::Error::io(&path, e))?;
                let file = dtk::NodeFile::parse(&command[0], &text)?;
                if let (Some(a), Some(b)) = (&name, &file.name) {
                    if a != b {
                        return Err(UsageError(format!(
                            "{}: the file names the node {b:?}, --name says {a:?}",
                            command[0]
                        ))
                        .into());
                    }
                }
                node_name = file.name.clone().or(name.clone());
                file.to_spec()?
            } else {
                dtk::engine::validate_labels(&labels)?;
                let to_names = |v: &[String]| {
                    v.iter()
                        .map(|s| dtk::Name::new(s))
                        .collect::<Result<Vec<_>, _>>()
                };
                let mut spec = dtk::NodeSpec::new(dtk::Command::Argv(command));
                spec.labels = labels;
                spec.inputs = to_names(&input)?;
                spec.outputs = to_names(&output)?;
                spec.on_success = on_success;
                spec.on_failure = on_failure;
                spec.on_conflict = on_conflict;
                spec.sandbox = sandbox;
                spec.network = network;
                spec
            };
            let timeout = timeout
                .as_deref()
                .map(dtk::engine::parse_duration)
                .transpose()?;
            let id = p.define_named_node(spec, node_name.as_deref())?;
            if no_run {
                if as_json {
                    json(
                        out,
                        &json!({ "node": id.short(), "node_full": id.to_hex() }),
                    )?;
                } else {
                    writeln!(out, "{}", id.short())?;
                }
                return Ok(exit::OK);
            }
            if !as_json {
                writeln!(out, "{}", id.short())?;
                out.flush()?;
            }
            let follower = Follower::start(&p, follow);
            let interrupted = cancel_on_signals(&p)?;
            let outcome = p
                .run_node(
                    &id,
                    dtk::RunOptions::new()
                        .with_force(force)
                        .with_timeout(timeout),
                )
                .await;
            follower.finish().await;
            let outcome = outcome?;
            let rec = outcome.record();
            if as_json {
                json(
                    out,
                    &json!({ "node": id.short(), "node_full": id.to_hex(), "outcome": outcome }),
                )?;
            } else {
                let what = match &outcome {
                    dtk::RunOutcome::UpToDate(_) => {
                        "up to date (a run on these inputs succeeded)".to_owned()
                    }
                    dtk::RunOutcome::Pending(_) => {
                        "pending: waiting for a worker with the node's labels (`dkt worker`)"
                            .to_owned()
                    }
                    dtk::RunOutcome::Busy(r) => {
                        format!("already running on {}", or_dash(r.worker.as_ref()))
                    }
                    dtk::RunOutcome::Ran(r) => match (&r.status, r.exit_code, &r.error) {
                        (dtk::RunStatus::Success, _, _) => {
                            format!("success, outputs {}", sv_list(&r.outputs))
                        }
                        (dtk::RunStatus::Conflict, _, e) => format!(
                            "conflict ({}); what it wrote is kept in {}; see `dkt node show {}`",
                            e.as_deref().unwrap_or("an output moved"),
                            r.staging.as_deref().unwrap_or("-"),
                            r.id.short()
                        ),
                        (_, Some(c), _) => format!(
                            "{} (exit status {c}); see `dkt node show {}`",
                            r.status,
                            r.id.short()
                        ),
                        (_, None, Some(e)) => {
                            format!("{} ({e}); see `dkt node show {}`", r.status, r.id.short())
                        }
                        (s, None, None) => s.to_string(),
                    },
                    other => other.record().status.to_string(),
                };
                eprintln!("run {}: {what}", rec.id.short());
            }
            if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(exit::INTERRUPTED);
            }
            if matches!(&outcome, dtk::RunOutcome::Ran(r) if r.status != dtk::RunStatus::Success) {
                return Ok(exit::FAILURE);
            }
        }
        NodeCommand::Rerun {
            id,
            downstream,
            sandbox,
            timeout,
            follow,
        } => {
            let p = p.with_sandbox(sandbox);
            let (id, _) = p.node(&id)?;
            let timeout = timeout
                .as_deref()
                .map(dtk::engine::parse_duration)
                .transpose()?;
            let follower = Follower::start(&p, follow);
            let interrupted = cancel_on_signals(&p)?;
            let runs = p
                .rerun(
                    &id,
                    downstream,
                    dtk::RunOptions::new().with_timeout(timeout),
                )
                .await;
            follower.finish().await;
            let runs = runs?;
            if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(exit::INTERRUPTED);
            }
            let failed = runs.iter().any(|(_, o)| matches!(o, dtk::RunOutcome::Ran(r) if r.status != dtk::RunStatus::Success));
            if as_json {
                let list: Vec<_> = runs
                    .iter()
                    .map(|(n, o)| json!({ "node": n.short(), "outcome": o }))
                    .collect();
                json(out, &list)?;
            } else {
                let mut t = Table::new(&["NODE", "RUN", "STATUS", "OUTPUT(S)"]);
                for (n, o) in &runs {
                    let r = o.record();
                    t.row(vec![
                        n.short(),
                        r.id.short(),
                        r.status.to_string(),
                        sv_list(&r.outputs),
                    ]);
                }
                t.print(out)?;
            }
            if failed {
                return Ok(exit::FAILURE);
            }
        }
        NodeCommand::List { all } => {
            let nodes: Vec<_> = p
                .all_nodes()?
                .into_iter()
                .filter(|(_, _, retired)| all || !retired)
                .collect();
            let node_names = p.node_names()?;
            if as_json {
                let list: Vec<_> = nodes
                    .iter()
                    .map(|(id, n, retired)| {
                        dtk::views::NodeView::new(
                            id,
                            n.clone(),
                            node_names.get(id).cloned(),
                            *retired,
                        )
                    })
                    .collect();
                json(out, &list)?;
            } else {
                // The design's columns; NAME only once some node has a name.
                let named = nodes.iter().any(|(id, _, _)| node_names.contains_key(id));
                let mut header = vec!["ID", "CMD", "LABEL(S)", "INPUT(S)", "OUTPUT(S)"];
                if named {
                    header.push("NAME");
                }
                if all {
                    header.push("STATE");
                }
                let mut t = Table::new(&header);
                for (id, n, retired) in &nodes {
                    let labels = if n.labels.is_empty() {
                        "-".to_owned()
                    } else {
                        n.labels.join(",")
                    };
                    let mut row = vec![
                        id.short(),
                        n.command.display_line(),
                        labels,
                        names(&n.inputs),
                        names(&n.outputs),
                    ];
                    if named {
                        row.push(or_dash(node_names.get(id)));
                    }
                    if all {
                        row.push(if *retired { "removed" } else { "active" }.to_owned());
                    }
                    t.row(row);
                }
                t.print(out)?;
            }
        }
        NodeCommand::Rm { id } => {
            let id = p.remove_node(&id)?;
            if as_json {
                json(
                    out,
                    &json!({ "node": id.short(), "node_full": id.to_hex(), "removed": true }),
                )?;
            }
        }
        NodeCommand::Log { id, follow: true } => {
            return follow_run(&p, &id, out).await;
        }
        NodeCommand::Log { id, follow: false } => {
            let (id, _) = p.node(&id)?;
            let runs = p.node_runs(&id)?;
            if as_json {
                let list: Vec<_> = runs
                    .iter()
                    .map(|r| dtk::views::RunView::new(&p, r.clone()))
                    .collect();
                json(out, &list)?;
            } else {
                let mut t = Table::new(&["ID", "STATUS", "INPUT(S)", "OUTPUT(S)"]);
                for r in &runs {
                    t.row(vec![
                        r.id.short(),
                        p.effective_status(r).to_string(),
                        sv_list(&r.inputs),
                        sv_list(&r.outputs),
                    ]);
                }
                t.print(out)?;
            }
        }
        NodeCommand::Cancel { run } => {
            return crate::remote::cancel(p.root(), &run, as_json, out).await;
        }
        NodeCommand::Show { run } => {
            let rec = p.run_record(&run)?;
            let log = p.run_log(&rec.id)?;
            let status = p.effective_status(&rec);
            let script = p.node(&rec.node.to_hex()).ok().and_then(|(_, n)| n.script);
            let reproductions = p.reproductions(&rec.id)?;
            if as_json {
                let mut v = serde_json::to_value(&rec)?;
                v["status"] = json!(status);
                v["log"] = json!(log);
                if let Some(s) = &script {
                    v["script"] = json!(s);
                }
                v["reproductions"] = json!(reproductions);
                json(out, &v)?;
            } else {
                writeln!(out, "run      {}", rec.id.to_hex())?;
                writeln!(out, "node     {}", rec.node.to_hex())?;
                if let Some(s) = &script {
                    writeln!(out, "script   {} {}", s.path, s.digest)?;
                }
                writeln!(out, "status   {status}")?;
                if let Some(c) = rec.exit_code {
                    writeln!(out, "exit     {c}")?;
                }
                if let Some(e) = &rec.error {
                    writeln!(out, "error    {e}")?;
                }
                writeln!(out, "worker   {}", or_dash(rec.worker.as_ref()))?;
                if let Some(k) = &rec.worker_key {
                    writeln!(out, "signed   by worker key {k}")?;
                }
                writeln!(out, "inputs   {}", sv_list(&rec.inputs))?;
                writeln!(out, "outputs  {}", sv_list(&rec.outputs))?;
                if let Some(s) = &rec.staging {
                    writeln!(out, "staging  {s}  (what the run wrote: out-SOURCE per output; nothing was published)")?;
                }
                for r in &reproductions {
                    writeln!(out, "reproduced {}", reproduction_line(r))?;
                }
                writeln!(out, "--- log")?;
                write!(out, "{log}")?;
                if !log.is_empty() && !log.ends_with('\n') {
                    writeln!(out)?;
                }
            }
        }
    }
    Ok(exit::OK)
}

/// Passes forever (or `passes` times); SIGINT/SIGTERM end it after the current pass.
async fn daemon(
    p: Project,
    interval: std::time::Duration,
    jobs: usize,
    passes: Option<u64>,
    as_json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    use dtk::daemon::DaemonOptions;
    // The first SIGINT/SIGTERM lets the pass in progress finish; a second exits at once.
    let stop = tokio_util::sync::CancellationToken::new();
    let on_stop = stop.clone();
    on_signals(
        "dkt: stopping: finishing what is in progress (signal again to exit now)",
        move || on_stop.cancel(),
    )?;
    let mut options =
        DaemonOptions::new(interval).with_pass(dtk::scheduler::PassOptions::new().with_jobs(jobs));
    options.passes = passes;
    // With --json, one JSON object per line: each run started or ended, then the pass's
    // report. The first failed write ends the output (and is reported once it ends).
    let mut written: std::io::Result<()> = Ok(());
    let summary = p
        .daemon(options, stop, |event| {
            if written.is_ok() {
                written = daemon_line(out, as_json, event).and_then(|()| out.flush());
            }
        })
        .await;
    written?;
    Ok(if summary.failed && passes.is_some() {
        exit::FAILURE
    } else {
        exit::OK
    })
}

/// What `dkt daemon` prints for `event`.
fn daemon_line(
    out: &mut dyn Write,
    as_json: bool,
    event: dtk::daemon::DaemonEvent<'_>,
) -> std::io::Result<()> {
    use dtk::daemon::DaemonEvent;
    match event {
        DaemonEvent::RunStarted { run, node } if as_json => writeln!(
            out,
            "{}",
            json!({ "event": "run_started", "run": run.to_hex(), "node": node.to_hex() })
        ),
        DaemonEvent::RunFinished { run, node, status } if as_json => writeln!(
            out,
            "{}",
            json!({
                "event": "run_finished",
                "run": run.to_hex(),
                "node": node.to_hex(),
                "status": status,
            })
        ),
        DaemonEvent::RunStarted { run, node } => {
            writeln!(out, "run {} of node {}: started", run.short(), node.short())
        }
        DaemonEvent::RunFinished { run, node, status } => writeln!(
            out,
            "run {} of node {}: {status}",
            run.short(),
            node.short()
        ),
        DaemonEvent::PassEnded { number, result } if as_json => {
            let pass = match result {
                Ok(report) => json!({ "event": "pass", "pass": number, "report": report }),
                Err(e) => json!({
                    "event": "pass",
                    "pass": number,
                    "error": dtk::project::error_chain(e),
                }),
            };
            writeln!(out, "{pass}")
        }
        DaemonEvent::PassEnded {
            result: Ok(report), ..
        } => {
            for o in report.polled.iter().filter(|o| o.error.is_some()) {
                writeln!(
                    out,
                    "poll {}: {}",
                    o.source,
                    o.error.as_deref().unwrap_or_default()
                )?;
            }
            for i in &report.items {
                let what = match (&i.outcome, &i.error) {
                    (_, Some(e)) => format!("error: {e}"),
                    (Some(o), None) => {
                        format!("run {} {}", o.record().id.short(), o.record().status)
                    }
                    (None, None) => "skipped".into(),
                };
                writeln!(out, "node {} ({}): {what}", i.node.short(), i.reason)?;
            }
            Ok(())
        }
        DaemonEvent::PassEnded { result: Err(e), .. } => {
            writeln!(out, "pass failed: {}", dtk::project::error_chain(e))
        }
        DaemonEvent::Waiting { .. } if as_json => Ok(()),
        DaemonEvent::Waiting { next, wait } => writeln!(
            out,
            "pass {} done; next pass in {}s",
            next - 1,
            wait.as_secs()
        ),
        _ => Ok(()),
    }
}

/// A flag set by the first SIGINT/SIGTERM; a second one exits at once.
fn stop_on_signals() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    on_signals(
        "dkt: stopping: finishing what is in progress (signal again to exit now)",
        || {},
    )
}

/// On the first SIGINT or SIGTERM: say `first` and call `on_first`; on a second, exit at
/// once (130). The flag says whether a signal came.
fn on_signals(
    first: &'static str,
    on_first: impl Fn() + Send + 'static,
) -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let hit = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let flag = hit.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sigint.recv() => {}
                _ = sigterm.recv() => {}
            }
            if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
                eprintln!("dkt: second signal, exiting now");
                std::process::exit(i32::from(exit::INTERRUPTED));
            }
            eprintln!("{first}");
            on_first();
        }
    });
    Ok(hit)
}

/// `dkt secret set|list|rm`.
fn secret(
    mut p: Project,
    cmd: SecretCommand,
    as_json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    match cmd {
        SecretCommand::Set { name } => {
            use std::io::IsTerminal;
            let value = if std::io::stdin().is_terminal() {
                rpassword::prompt_password(format!("value of secret {name}: "))?
            } else {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
                text.trim_end_matches(['\n', '\r']).to_owned()
            };
            p.set_secret(&name, &value)?;
            if as_json {
                json(out, &json!({ "name": name, "set": true }))?;
            }
        }
        SecretCommand::List => {
            let names: Vec<&str> = p.secrets().iter().map(|(k, _)| k).collect();
            if as_json {
                json(out, &names)?;
            } else {
                let mut t = Table::new(&["NAME", "USED BY"]);
                for n in &names {
                    let by = if dtk::config::KIND_CREDENTIALS.contains(n) {
                        "source kinds"
                    } else {
                        "commands (${NAME})"
                    };
                    t.row(vec![(*n).to_owned(), by.to_owned()]);
                }
                t.print(out)?;
            }
        }
        SecretCommand::Rm { name } => {
            p.remove_secret(&name)?;
            if as_json {
                json(out, &json!({ "name": name, "removed": true }))?;
            }
        }
    }
    Ok(exit::OK)
}

/// Prints the running nodes' output lines to stderr (`[NODE] line`) while work goes on:
/// with `--follow`, or by default when stderr is a terminal.
struct Follower {
    task: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
}

impl Follower {
    fn start(p: &Project, follow: bool) -> Follower {
        use std::io::IsTerminal;
        if !(follow || std::io::stderr().is_terminal()) {
            return Follower { task: None };
        }
        let mut feed = p.subscribe();
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
        let print = |event: dtk::events::Event| {
            if let dtk::events::Event::LogLine { node, line, .. } = event {
                eprintln!("[{}] {line}", node.short());
            }
        };
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = feed.recv() => match event {
                        Ok(e) => print(e),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            eprintln!("[dkt] ({n} lines skipped)");
                        }
                        Err(_) => return,
                    },
                    _ = &mut done_rx => {
                        // The work is done: print what is left, then stop.
                        while let Ok(e) = feed.try_recv() {
                            print(e);
                        }
                        return;
                    }
                }
            }
        });
        Follower {
            task: Some((task, done_tx)),
        }
    }

    async fn finish(self) {
        if let Some((task, done)) = self.task {
            let _ = done.send(());
            let _ = task.await;
        }
    }
}

/// On SIGINT or SIGTERM, cancel the project's runs (their process groups are ended and
/// they are recorded `interrupted`); a second signal exits at once. The flag says whether
/// it happened.
fn cancel_on_signals(p: &Project) -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let cancel = p.cancel_token();
    on_signals(
        "dkt: interrupted: ending the running commands and recording their runs (signal again to exit now)",
        move || cancel.cancel(),
    )
}

/// `dkt node log --follow X`: X is a run, or a node (its newest run). Prints the output so
/// far and then as it comes, until the run ends.
async fn follow_run(p: &Project, what: &str, out: &mut dyn Write) -> anyhow::Result<u8> {
    let run = match p.run_record(what) {
        Ok(r) => r,
        Err(run_err) => match p.node(what) {
            Ok((node, _)) => p
                .node_runs(&node)?
                .into_iter()
                .next()
                .ok_or_else(|| dtk::Error::not_found("run of node", node.short()))?,
            Err(_) => return Err(run_err.into()),
        },
    };
    let live = p.live_log_path(&run.id);
    let mut printed = 0usize;
    let mut said_pending = false;
    loop {
        let rec = p.run_record(&run.id.to_hex())?;
        let status = p.effective_status(&rec);
        if let Ok(bytes) = std::fs::read(&live) {
            if bytes.len() > printed {
                out.write_all(&bytes[printed..])?;
                out.flush()?;
                printed = bytes.len();
            }
        }
        match status {
            dtk::RunStatus::Pending => {
                if !said_pending {
                    eprintln!(
                        "dkt: run {} is pending (waiting for a worker)",
                        rec.id.short()
                    );
                    said_pending = true;
                }
            }
            dtk::RunStatus::Running => {}
            done => {
                let log = p.run_log(&rec.id)?;
                if log.len() > printed {
                    out.write_all(&log.as_bytes()[printed..])?;
                }
                out.flush()?;
                eprintln!("dkt: run {} ended: {done}", rec.id.short());
                return Ok(if done == dtk::RunStatus::Success {
                    exit::OK
                } else {
                    exit::FAILURE
                });
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn key(p: Project, cmd: KeyCommand, as_json: bool, out: &mut dyn Write) -> anyhow::Result<u8> {
    let path = p.dkt_dir().join(dtk::signing::KEY_FILE);
    let info = match cmd {
        KeyCommand::Generate { principal } => {
            p.add_signing_key(&dtk::KeySetup::Generate, principal.as_deref())?
        }
        KeyCommand::Import {
            path: from,
            principal,
        } => p.add_signing_key(
            &dtk::KeySetup::Import(p.cwd().join(from)),
            principal.as_deref(),
        )?,
        KeyCommand::Show => match p.signing_key() {
            Some(k) => dtk::signing::key_info(&k, &path)?,
            None => {
                return Err(dtk::Error::NotFound {
                    what: "signing key",
                    name: path.display().to_string(),
                    hint: ": commits are unsigned (create a key with `dkt key generate`)".into(),
                }
                .into())
            }
        },
    };
    if as_json {
        json(out, &info)?;
    } else {
        writeln!(out, "fingerprint  {}", info.fingerprint)?;
        writeln!(out, "principal    {}", info.principal)?;
        writeln!(out, "public key   {}", info.public_key)?;
        writeln!(
            out,
            "private key  {} (never committed)",
            info.path.display()
        )?;
        writeln!(out, "record       {}", info.record)?;
    }
    Ok(exit::OK)
}

/// One line about a reproduction: when, how it came out, what differed.
fn reproduction_line(r: &dtk::reproduce::Reproduction) -> String {
    let mut line = format!(
        "{} {} {}{}",
        r.id.get(..8).unwrap_or(&r.id),
        fmt_ms(r.ended_ms),
        r.outcome,
        if r.sandbox { " (sandboxed)" } else { "" }
    );
    let differing: Vec<String> = r
        .outputs
        .iter()
        .filter(|o| !o.identical)
        .map(|o| {
            let files: Vec<&str> = o
                .added
                .iter()
                .map(|f| f.path.as_str())
                .chain(o.removed.iter().map(|f| f.path.as_str()))
                .chain(o.changed.iter().map(|f| f.path.as_str()))
                .collect();
            format!("{}: {}", o.source, files.join(", "))
        })
        .collect();
    if !differing.is_empty() {
        line.push_str(&format!(" ({})", differing.join("; ")));
    }
    if let Some(u) = &r.unavailable {
        line.push_str(&format!(" ({} unavailable)", u.version));
    }
    line
}

fn fmt_ms(ms: u64) -> String {
    dtk::inspect::rfc3339(ms)
}

/// The report of `dkt reproduce`.
fn write_reproduction(
    out: &mut dyn Write,
    r: &dtk::reproduce::Reproduction,
) -> std::io::Result<()> {
    use dtk::reproduce::Outcome;
    writeln!(
        out,
        "reproduction {} of run {} (node {}){}: {}",
        r.id.get(..8).unwrap_or(&r.id),
        r.run.short(),
        r.node.short(),
        if r.sandbox { ", sandboxed" } else { "" },
        r.outcome
    )?;
    if let Some(u) = &r.unavailable {
        writeln!(out, "  {} is no longer available: {}", u.version, u.error)?;
    }
    if r.outcome == Outcome::Failed {
        match (r.exit_code, &r.error) {
            (Some(c), _) => writeln!(out, "  the command failed (exit status {c})")?,
            (None, Some(e)) => writeln!(out, "  the command failed: {e}")?,
            (None, None) => writeln!(out, "  the command failed")?,
        }
    }
    for o in &r.outputs {
        if let Some(e) = &o.error {
            writeln!(out, "  {}:{} cannot be compared: {e}", o.source, o.recorded)?;
            continue;
        }
        if let Some(n) = &o.note {
            writeln!(out, "  {}: {n}", o.source)?;
        }
        if o.identical {
            writeln!(out, "  {}:{} identical", o.source, o.recorded)?;
            continue;
        }
        writeln!(out, "  {}:{} differs:", o.source, o.recorded)?;
        for f in &o.added {
            writeln!(out, "    added    {} ({} bytes)", f.path, f.size)?;
        }
        for f in &o.removed {
            writeln!(out, "    removed  {} ({} bytes)", f.path, f.size)?;
        }
        for f in &o.changed {
            writeln!(
                out,
                "    changed  {} ({} -> {} bytes)",
                f.path, f.recorded_size, f.reproduced_size
            )?;
        }
    }
    Ok(())
}
