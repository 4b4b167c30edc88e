//! The commands of remote execution: a project's coordinator set-up, `dkt worker --queue`,
//! `dkt worker list`, `dkt node cancel`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dtk::Project;
use dtk_remote::{PgQueue, RemoteDispatcher};
use serde_json::json;

use crate::output::{json, Table};

/// The database password: the secret PGPASSWORD, else the environment variable.
fn password(secrets: &dtk::Secrets) -> Option<String> {
    secrets
        .get("PGPASSWORD")
        .map(str::to_owned)
        .or_else(|| std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()))
}

/// With `[queue] url` in its configuration, `p` becomes a coordinator: its runs execute on
/// the queue's workers.
pub(crate) fn attach(p: &mut Project) -> anyhow::Result<()> {
    let Some(url) = p.config().queue.url.clone() else {
        return Ok(());
    };
    let queue = PgQueue::new(&url, password(p.secrets()))?;
    let artifacts_url = match &p.config().artifacts.url {
        Some(u) => u.clone(),
        None => format!("file://{}", p.dkt_dir().join("artifacts").display()),
    };
    p.set_dispatcher(Arc::new(RemoteDispatcher::new(
        queue,
        &artifacts_url,
        p.context(),
    )));
    Ok(())
}

/// The project's queue, or the one given.
fn queue_of(dir: &Path, given: Option<String>) -> anyhow::Result<PgQueue> {
    if let Some(url) = given {
        let secrets = dtk::Secrets::default();
        return Ok(PgQueue::new(&url, password(&secrets))?);
    }
    let p = Project::discover(dir, dtk::default_registry())?;
    let url = p.config().queue.url.clone().ok_or_else(|| {
        crate::commands::UsageError(
            "no run queue: give --queue URL, or set [queue] url in .dkt/config".into(),
        )
    })?;
    Ok(PgQueue::new(&url, password(p.secrets()))?)
}

/// Options of `dkt worker --queue`.
pub(crate) struct WorkerArgs {
    pub(crate) queue: String,
    pub(crate) labels: Vec<String>,
    pub(crate) jobs: usize,
    pub(crate) max_runs: Option<usize>,
    pub(crate) artifacts: Option<String>,
    pub(crate) secrets: Option<PathBuf>,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
}

/// The worker's directory: the one given, else `dkt-worker` in the user's cache directory.
fn worker_dir(cwd: &Path, given: Option<PathBuf>) -> PathBuf {
    match given {
        Some(d) => cwd.join(d),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("dkt-worker"),
    }
}

/// The name of a worker's key file in its directory.
const WORKER_KEY: &str = "worker-key";

/// The worker's signing key: the file given, else `worker-key` in its directory, made
/// (mode 0600) when absent. The principal of a new key is `dkt-worker@HOST`.
fn worker_key(
    cwd: &Path,
    given: Option<PathBuf>,
    dir: &Path,
) -> anyhow::Result<(dtk::SigningKey, PathBuf)> {
    let path = match given {
        Some(f) => {
            let f = cwd.join(f);
            if !f.is_file() {
                return Err(crate::commands::UsageError(format!(
                    "--key {}: no such file (make one with ssh-keygen -t ed25519 -N '' -f FILE, or leave --key out for a key kept in the worker's directory)",
                    f.display()
                ))
                .into());
            }
            f
        }
        None => dir.join(WORKER_KEY),
    };
    let principal = dtk::signing::default_principal().replacen("dtk@", "dkt-worker@", 1);
    let (key, made) = dtk::SigningKey::load_or_generate(&path, &principal)?;
    if made {
        tracing::info!(
            "made the worker's signing key {} ({})",
            path.display(),
            key.fingerprint()
        );
    }
    Ok((key, path))
}

/// `dkt worker key`: the worker key's public half, as an allowed-signers line.
pub(crate) fn print_key(
    cwd: &Path,
    key: Option<PathBuf>,
    dir: Option<PathBuf>,
    as_json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let dir = worker_dir(cwd, dir);
    std::fs::create_dir_all(&dir)?;
    let (key, path) = worker_key(cwd, key, &dir)?;
    let line = key.allowed_signers_line_for(dtk::signing::WORKER_NAMESPACE)?;
    if as_json {
        json(
            out,
            &json!({
                "fingerprint": key.fingerprint(),
                "principal": key.principal(),
                "public_key": key.public_openssh()?,
                "allowed_signers": line.trim_end(),
                "path": path,
            }),
        )?;
    } else {
        write!(out, "{line}")?;
    }
    Ok(crate::exit::OK)
}

/// `dkt worker --queue URL`: serve a remote run queue.
pub(crate) async fn worker(
    cwd: &Path,
    args: WorkerArgs,
    stop: Arc<std::sync::atomic::AtomicBool>,
    as_json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    dtk::engine::validate_labels(&args.labels)?;
    let labels = if args.labels.is_empty() {
        dtk::config::default_labels()
    } else {
        args.labels
    };
    let secrets = match &args.secrets {
        Some(d) => {
            let d = cwd.join(d);
            if !d.is_dir() {
                return Err(crate::commands::UsageError(format!(
                    "--secrets {}: no such directory",
                    d.display()
                ))
                .into());
            }
            dtk::Secrets::load(&d)?
        }
        None => dtk::Secrets::default(),
    };
    let dir = worker_dir(cwd, args.dir);
    std::fs::create_dir_all(&dir)?;
    let (key, _) = worker_key(cwd, args.key, &dir)?;
    let queue = PgQueue::new(&args.queue, password(&secrets))?;
    let setup = dtk_remote::WorkerSetup {
        queue,
        labels: labels.clone(),
        jobs: args.jobs.max(1),
        max_runs: args.max_runs,
        dir,
        secrets,
        artifacts: args.artifacts,
        registry: dtk::default_registry(),
        progress: crate::progress::for_terminal(),
        key: Arc::new(key),
    };
    if !as_json {
        eprintln!(
            "dkt worker {}: serving {} (labels {}), signing with {}",
            dtk::engine::worker_id(),
            args.queue,
            labels.join(","),
            setup.key.fingerprint()
        );
    }
    // Lines as things happen, on stdout (one JSON object each with --json), written here:
    // the command holds the lock of stdout.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let serve = dtk_remote::serve(setup, stop, move |event| {
        let _ = tx.send(event);
    });
    tokio::pin!(serve);
    let line = |event: dtk_remote::WorkerEvent| -> String {
        if as_json {
            return serde_json::to_string(&event).unwrap_or_default();
        }
        match event {
            dtk_remote::WorkerEvent::Started { run, node } => {
                format!("run {} of node {}: started", &run[..8], &node[..8])
            }
            dtk_remote::WorkerEvent::Finished { run, status, error } => match error {
                Some(e) => format!("run {}: {status}: {e}", &run[..8]),
                None => format!("run {}: {status}", &run[..8]),
            },
            dtk_remote::WorkerEvent::Superseded { run } => format!(
                "run {}: its claim was taken back (lease expired): result discarded, nothing sent",
                &run[..8]
            ),
        }
    };
    let summary = loop {
        tokio::select! {
            summary = &mut serve => break summary?,
            Some(event) = rx.recv() => {
                writeln!(out, "{}", line(event))?;
                out.flush()?;
            }
        }
    };
    while let Ok(event) = rx.try_recv() {
        writeln!(out, "{}", line(event))?;
    }
    if as_json {
        json(
            out,
            &json!({ "event": "stopped", "finished": summary.finished, "superseded": summary.superseded }),
        )?;
    } else {
        writeln!(
            out,
            "worker done: {} run(s), {} superseded",
            summary.finished, summary.superseded
        )?;
    }
    Ok(crate::exit::OK)
}

/// `dkt worker list`.
pub(crate) async fn list(
    dir: &Path,
    given: Option<String>,
    as_json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let queue = queue_of(dir, given)?;
    let workers = queue.workers(std::time::Duration::from_secs(300)).await?;
    if as_json {
        json(out, &workers)?;
        return Ok(crate::exit::OK);
    }
    let mut t = Table::new(&["WORKER", "LABELS", "JOBS", "HEARTBEAT", "RUNS"]);
    for w in &workers {
        let age = if w.heartbeat_age_s > 3.0 * dtk_remote::worker::HEARTBEAT.as_secs_f64() {
            format!("{:.0}s ago (stale)", w.heartbeat_age_s)
        } else {
            format!("{:.0}s ago", w.heartbeat_age_s)
        };
        t.row(vec![
            w.id.clone(),
            w.labels.join(","),
            w.capacity.to_string(),
            age,
            if w.runs.is_empty() {
                "-".to_owned()
            } else {
                w.runs
                    .iter()
                    .map(|r| r[..8].to_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            },
        ]);
    }
    t.print(out)?;
    Ok(crate::exit::OK)
}

/// Cancel `run` in the project's remote run queue (`[queue] url`): `None` when the
/// project has no queue, else whether the run was still pending or running there.
pub(crate) async fn cancel_in_queue(p: &Project, run: &dtk::RunId) -> anyhow::Result<Option<bool>> {
    let Some(url) = p.config().queue.url.clone() else {
        return Ok(None);
    };
    let queue = PgQueue::new(&url, password(p.secrets()))?;
    Ok(Some(queue.cancel(&run.to_hex()).await?))
}

/// `dkt node cancel RUN`.
pub(crate) async fn cancel(
    dir: &Path,
    run: &str,
    as_json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let p = Project::discover(dir, dtk::default_registry())?;
    let prefix = run.to_ascii_lowercase();
    if prefix.len() < 4 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(dtk::Error::invalid("run ID", run, "expected at least 4 hex digits").into());
    }
    if p.config().queue.url.is_none() {
        return Err(crate::commands::UsageError(format!(
            "run {run}: this project has no remote run queue ([queue] url); a local run is stopped with Ctrl-C (or SIGTERM) to the dkt running it"
        ))
        .into());
    }
    let queue = queue_of(dir, None)?;
    let matching: Vec<_> = queue
        .runs(&prefix)
        .await?
        .into_iter()
        .filter(|r| r.state == "pending" || r.state == "running")
        .collect();
    let target = match matching.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(dtk::Error::NotFound {
                what: "run",
                name: run.to_owned(),
                hint: " among the pending and running runs of the queue".to_owned(),
            }
            .into())
        }
        _ => {
            return Err(dtk::Error::invalid(
                "run ID",
                run,
                format!(
                    "ambiguous: {}",
                    matching
                        .iter()
                        .map(|r| r.id[..12].to_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .into())
        }
    };
    let done = queue.cancel(&target.id).await?;
    if as_json {
        json(
            out,
            &json!({ "run": target.id, "was": target.state, "cancelled": done }),
        )?;
    } else if done {
        writeln!(
            out,
            "run {}: cancelled ({}{})",
            &target.id[..8],
            target.state,
            target
                .worker
                .as_deref()
                .map(|w| format!(" on {w}"))
                .unwrap_or_default()
        )?;
    } else {
        writeln!(out, "run {}: it had already ended", &target.id[..8])?;
    }
    Ok(crate::exit::OK)
}
