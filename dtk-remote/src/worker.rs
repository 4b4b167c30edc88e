//! A worker of a remote run queue: claims runs whose labels it has, materializes their
//! inputs, runs them, ships their outputs to the artifact store and sends the result.
//! It needs no copy of the project, and reads secrets only from its own directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dtk_core::remote::{self, Ending, Materialize, Ticket, TicketResult};
use dtk_core::{Context, Error, IoResultExt, Name, Progress, Registry, Result, Secrets};
use tokio_util::sync::CancellationToken;

use crate::artifacts::ArtifactStore;
use crate::pg::PgQueue;

/// How often a worker says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often an idle worker looks for work without a notification.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// The lease of a fresh claim, until the run's own lease applies.
const CLAIM_LEASE: Duration = Duration::from_secs(30);

/// What a worker is (see [`serve`]).
#[derive(Debug, Clone)]
pub struct WorkerSetup {
    /// The queue.
    pub queue: PgQueue,
    /// The worker's labels: it takes runs whose labels are all among these.
    pub labels: Vec<String>,
    /// At most this many runs at once.
    pub jobs: usize,
    /// Stop after this many runs.
    pub max_runs: Option<usize>,
    /// Its own directory (scratch areas, caches).
    pub dir: PathBuf,
    /// Its secrets (the kinds' credentials, the secrets commands use).
    pub secrets: Secrets,
    /// The artifact store to use instead of the one each run names.
    pub artifacts: Option<String>,
    /// The kinds it can materialize.
    pub registry: Arc<Registry>,
    /// Where transfers report progress.
    pub progress: Arc<dyn Progress>,
    /// Its own key, which signs every result it sends (see
    /// [`dtk_core::remote::ResultStatement`]); its `Debug` shows the fingerprint only.
    pub key: Arc<dtk_core::SigningKey>,
}

/// Something a worker did, for its output.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// It took a run.
    Started {
        /// The run.
        run: String,
        /// Its node.
        node: String,
    },
    /// A run ended and its result was sent.
    Finished {
        /// The run.
        run: String,
        /// `success`, `failed`, `cancelled`, `error`.
        status: String,
        /// What went wrong, if anything.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Its claim on a run was taken back (it was cut off past its lease): the result was
    /// discarded and nothing was sent.
    Superseded {
        /// The run.
        run: String,
    },
}

/// What a worker did before it stopped.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerSummary {
    /// Runs whose result it sent.
    pub finished: usize,
    /// Runs whose claim it lost.
    pub superseded: usize,
}

/// Serve the queue until `stop` is set (then finish the runs in progress) or `max_runs`
/// runs are done; `on_event` hears what happens.
pub async fn serve(
    setup: WorkerSetup,
    stop: Arc<AtomicBool>,
    on_event: impl Fn(WorkerEvent) + Send + Sync + 'static,
) -> Result<WorkerSummary> {
    let setup = Arc::new(setup);
    let on_event = Arc::new(on_event);
    let me = dtk_core::engine::worker_id();
    let queue = setup.queue.clone();
    queue.check().await?;
    queue.heartbeat(&me, &setup.labels, setup.jobs).await?;
    let beat = tokio::spawn({
        let (queue, me, labels, jobs) =
            (queue.clone(), me.clone(), setup.labels.clone(), setup.jobs);
        async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                if let Err(e) = queue.heartbeat(&me, &labels, jobs).await {
                    tracing::warn!("{}", dtk_core::project::error_chain(&e));
                }
            }
        }
    });
    let mut tasks: tokio::task::JoinSet<Result<Option<TicketResult>>> = tokio::task::JoinSet::new();
    let mut summary = WorkerSummary::default();
    let mut started = 0usize;
    let outcome: Result<()> = async {
        loop {
            while let Some(done) = tasks.try_join_next() {
                settle(done, &mut summary);
            }
            let limit = setup.max_runs.is_some_and(|m| started >= m);
            if stop.load(Ordering::SeqCst) || limit {
                break;
            }
            while tasks.len() < setup.jobs.max(1) && setup.max_runs.is_none_or(|m| started < m) {
                let Some(claimed) = queue.claim(&me, &setup.labels, CLAIM_LEASE).await? else {
                    break;
                };
                started += 1;
                let ticket = claimed.ticket;
                on_event(WorkerEvent::Started {
                    run: ticket.run.to_hex(),
                    node: ticket.node.to_hex(),
                });
                let (setup, me, on_event) = (setup.clone(), me.clone(), on_event.clone());
                tasks.spawn(async move {
                    let run = ticket.run.to_hex();
                    let result = execute(&setup, &me, ticket).await?;
                    match &result {
                        Some(r) => on_event(WorkerEvent::Finished {
                            run,
                            status: match &r.ending {
                                Ending::Success { .. } => "success",
                                Ending::Failed { .. } => "failed",
                                Ending::Cancelled => "cancelled",
                                Ending::Interrupted { .. } => "interrupted",
                                Ending::Error { .. } => "error",
                            }
                            .to_owned(),
                            error: match &r.ending {
                                Ending::Error { message } => Some(message.clone()),
                                Ending::Failed { error, code } => error
                                    .clone()
                                    .or_else(|| code.map(|c| format!("exit code {c}"))),
                                _ => None,
                            },
                        }),
                        None => on_event(WorkerEvent::Superseded { run }),
                    }
                    Ok(result)
                });
            }
            let wakeups = queue.wakeups().clone();
            let idle = tokio::time::sleep(IDLE_POLL);
            tokio::pin!(idle);
            // Look at `stop` often; at the queue when told or now and then.
            loop {
                tokio::select! {
                    _ = wakeups.queued.notified() => break,
                    _ = &mut idle => break,
                    Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                        settle(done, &mut summary);
                        break;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if stop.load(Ordering::SeqCst) { break; }
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    while let Some(done) = tasks.join_next().await {
        settle(done, &mut summary);
    }
    beat.abort();
    let _ = queue.leave(&me).await;
    outcome.map(|()| summary)
}

fn settle(
    done: std::result::Result<Result<Option<TicketResult>>, tokio::task::JoinError>,
    summary: &mut WorkerSummary,
) {
    match done {
        Ok(Ok(Some(_))) => summary.finished += 1,
        Ok(Ok(None)) => summary.superseded += 1,
        Ok(Err(e)) => tracing::warn!("{}", dtk_core::project::error_chain(&e)),
        Err(e) => tracing::warn!(error = %e, "a run's task ended abnormally"),
    }
}

/// Execute one claimed run and send its result; `None` when the claim was lost (nothing
/// sent).
async fn execute(setup: &WorkerSetup, me: &str, ticket: Ticket) -> Result<Option<TicketResult>> {
    let queue = &setup.queue;
    let lease = Duration::from_millis(ticket.lease_ms.max(1000));
    let cancel = CancellationToken::new();
    let lost = Arc::new(AtomicBool::new(false));
    // Renew now (the run's own lease), then every sixth of it, and when a run is cancelled.
    let renew = tokio::spawn({
        let (queue, me, run) = (queue.clone(), me.to_owned(), ticket.run);
        let (cancel, lost) = (cancel.clone(), lost.clone());
        async move {
            loop {
                match queue.renew(&run, &me, lease).await {
                    Ok(None) => {
                        lost.store(true, Ordering::SeqCst);
                        cancel.cancel();
                        return;
                    }
                    Ok(Some(true)) => cancel.cancel(),
                    Ok(Some(false)) => {}
                    Err(e) => tracing::warn!("{}", dtk_core::project::error_chain(&e)),
                }
                let wakeups = queue.wakeups().clone();
                tokio::select! {
                    _ = tokio::time::sleep(lease / 6) => {}
                    _ = wakeups.cancelled.notified() => {}
                }
            }
        }
    });
    let (log, ending, corrupt) = match prepare_and_run(setup, &ticket, &cancel).await {
        Ok(x) => x,
        Err((e, corrupt)) => (
            String::new(),
            Ending::Error {
                message: setup.secrets.redact(&dtk_core::project::error_chain(&e)),
            },
            corrupt,
        ),
    };
    renew.abort();
    if lost.load(Ordering::SeqCst) {
        tracing::warn!(
            run = %ticket.run.short(),
            "its claim was taken back while it ran (its lease expired): the result is discarded"
        );
        return Ok(None);
    }
    let statement = remote::ResultStatement::new(&ticket, &ending, &log, me);
    let (signer, signature) = statement.sign(&setup.key)?;
    let result = TicketResult {
        ending,
        log,
        worker: me.to_owned(),
        corrupt,
        signer: Some(signer),
        signature: Some(signature),
    };
    if !queue.finish(&ticket.run, me, &result).await? {
        tracing::warn!(
            run = %ticket.run.short(),
            "its claim was taken back before the result was sent: the result is discarded"
        );
        return Ok(None);
    }
    Ok(Some(result))
}

/// [`run_prepared`], with the keys of the archives found corrupt on the way.
async fn prepare_and_run(
    setup: &WorkerSetup,
    ticket: &Ticket,
    cancel: &CancellationToken,
) -> std::result::Result<(String, Ending, Vec<String>), (Error, Vec<String>)> {
    let mut ctx = Context::new(&setup.dir, setup.secrets.clone());
    ctx.settings = ticket.settings.clone();
    ctx.progress = setup.progress.clone();
    ctx.cwd = setup.dir.clone();
    let url = setup.artifacts.as_deref().unwrap_or(&ticket.artifacts);
    let artifacts = ArtifactStore::open(url, &ctx).map_err(|e| (e, Vec::new()))?;
    match run_prepared(setup, ticket, cancel, &ctx, &artifacts).await {
        Ok((log, ending)) => Ok((log, ending, artifacts.corrupt())),
        Err(e) => Err((e, artifacts.corrupt())),
    }
}

async fn run_prepared(
    setup: &WorkerSetup,
    ticket: &Ticket,
    cancel: &CancellationToken,
    ctx: &Context,
    artifacts: &ArtifactStore,
) -> Result<(String, Ending)> {
    if ticket.format != remote::TICKET_FORMAT && ticket.format != remote::TICKET_FORMAT_SANDBOX {
        return Ok((
            String::new(),
            Ending::Error {
                message: format!(
                    "the run's ticket is format {}, this worker reads format {} (run the same dkt version on the coordinator and the workers)",
                    ticket.format,
                    remote::TICKET_FORMAT
                ),
            },
        ));
    }
    let runs = setup.dir.join("runs");
    std::fs::create_dir_all(&runs).at(&runs)?;
    let scratch = tempfile::Builder::new()
        .prefix(&format!("run-{}-", ticket.run.short()))
        .tempdir_in(&runs)
        .at(&runs)?;
    let mut inputs = Vec::new();
    for input in &ticket.inputs {
        let dir = scratch.path().join(format!("in-{}", input.name));
        std::fs::create_dir_all(&dir).at(&dir)?;
        let fields = match &input.from {
            Materialize::Artifact { artifact, fields } => {
                artifacts
                    .fetch(artifact, &dir)
                    .await
                    .map_err(|e| in_input(&input.name, e))?;
                remote::place(fields, &dir)
            }
            Materialize::Kind { spec } => {
                let source = setup
                    .registry
                    .get(&spec.kind)
                    .and_then(|k| k.open(ctx, spec))
                    .map_err(|e| in_input(&input.name, e))?;
                let root = source
                    .materialize(&input.version, &dir)
                    .await
                    .map_err(|e| in_input(&input.name, e))?;
                source.fields(Some(&input.version), &root)?
            }
        };
        inputs.push((input.name.clone(), fields));
    }
    let mut outputs = Vec::new();
    let mut stages: BTreeMap<Name, PathBuf> = BTreeMap::new();
    for output in &ticket.outputs {
        let stage = scratch.path().join(format!("out-{}", output.name));
        std::fs::create_dir_all(&stage).at(&stage)?;
        if let Some(current) = &output.current {
            artifacts.fetch(current, &stage).await.map_err(|e| {
                Error::service(
                    format!("output {}", output.name),
                    dtk_core::project::error_chain(&e),
                )
            })?;
        }
        outputs.push((output.name.clone(), remote::place(&output.fields, &stage)));
        stages.insert(output.name.clone(), stage);
    }
    let (log, mut ending) = remote::run_ticket(
        ticket,
        inputs,
        outputs,
        &setup.secrets,
        scratch.path(),
        cancel,
        None,
    )
    .await?;
    if let Ending::Success { outputs } = &mut ending {
        for (name, stage) in &stages {
            if !is_real_dir(stage) {
                return Ok((
                    log,
                    Ending::Error {
                        message: format!(
                            "output {name}: the command replaced its directory ${{{name}:ROOT}} (with a link, or removed it); nothing was sent"
                        ),
                    },
                ));
            }
            let shipped = artifacts
                .ship(&remote::output_key(&ticket.run, name), stage)
                .await?;
            outputs.insert(name.clone(), shipped);
        }
    }
    Ok((log, ending))
}

fn is_real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

fn in_input(name: &Name, e: Error) -> Error {
    Error::service(format!("input {name}"), dtk_core::project::error_chain(&e))
}
