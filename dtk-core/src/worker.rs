//! Workers: long-running processes that take pending runs whose node labels they have,
//! claim them atomically, run them and record the results.
//!
//! A claim is a compare-and-swap commit that turns a `pending` run into `running` with
//! the worker's ID; two workers never run the same run. A running run holds a lease: the
//! file `.dkt/leases/<run-id>`, renewed while it runs. A run whose worker died (its process
//! is gone, or its lease was not renewed for [`LEASE`](crate::engine::LEASE)) is recorded
//! `interrupted` by the next worker that looks, and a new attempt goes back to `pending`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::engine::{parse_duration, worker_id};
use crate::error::IoResultExt;
use crate::model::now_ms;
use crate::project::paths;
use crate::{NodeSpec, Project, Result, RunId, RunRecord, RunStatus};

/// A worker's heartbeat older than this means the worker is gone.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Options of [`Project::work`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// The worker's labels (default: configured, else OS and architecture).
    pub labels: Option<Vec<String>>,
    /// At most this many runs at once.
    pub jobs: usize,
    /// How often to look for work.
    pub poll: Duration,
    /// Stop after finishing this many runs (default: never).
    pub max_runs: Option<usize>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            labels: None,
            jobs: 1,
            poll: Duration::from_millis(500),
            max_runs: None,
        }
    }
}

impl WorkerOptions {
    /// One run at a time, the machine's labels.
    pub fn new() -> Self {
        Self::default()
    }
    /// With these labels.
    pub fn with_labels(mut self, labels: Vec<String>) -> Self {
        self.labels = Some(labels);
        self
    }
    /// At most `jobs` runs at once.
    pub fn with_jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }
    /// Stop after `n` runs.
    pub fn with_max_runs(mut self, n: Option<usize>) -> Self {
        self.max_runs = n;
        self
    }
}

/// What a worker did before it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WorkerReport {
    /// The runs it finished.
    pub runs: Vec<RunRecord>,
    /// Runs of dead workers it sent back to pending.
    pub requeued: Vec<RunId>,
}

impl Project {
    fn workers_dir(&self) -> PathBuf {
        self.dkt_dir().join("workers")
    }

    /// The workers alive on this machine (their heartbeat is fresh), as `host:pid`.
    pub fn live_workers(&self) -> Result<Vec<String>> {
        let dir = self.workers_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(crate::Error::io(&dir, e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let fresh = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age < HEARTBEAT);
            let name = e.file_name().to_string_lossy().into_owned();
            let alive = crate::engine::pid_alive(&name).unwrap_or(true);
            if fresh && alive {
                out.push(name);
            } else {
                let _ = std::fs::remove_file(e.path());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Send the runs of dead workers back to `pending` (recording the dead attempt
    /// `interrupted`). Returns the new pending runs.
    pub fn requeue_dead(&self) -> Result<Vec<RunId>> {
        let claimed: Vec<RunRecord> = self
            .run_queue()
            .claimed()?
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        let refs: Vec<&RunRecord> = claimed.iter().collect();
        let dead = self.settle_interrupted(&refs)?;
        self.requeue(dead)
    }

    /// Queue a new attempt of each run of `dead` (recorded `interrupted`).
    fn requeue(&self, dead: Vec<RunRecord>) -> Result<Vec<RunId>> {
        let mut out = Vec::new();
        for dead in dead {
            if dead.status != RunStatus::Interrupted {
                continue;
            }
            let attempt = dead.next_attempt()?;
            let mut next = dead.clone();
            next.id = RunId::compute(&dead.node, &dead.inputs, attempt);
            next.attempt = attempt;
            next.status = RunStatus::Pending;
            next.worker = None;
            next.started_ms = None;
            next.ended_ms = None;
            next.exit_code = None;
            next.error = None;
            next.digest = None;
            next.queued_ms = now_ms();
            if self.run_queue().enqueue(&next)? {
                out.push(next.id);
            }
        }
        Ok(out)
    }

    /// Work until `stop` is set (or `max_runs` runs are done): take pending runs whose
    /// labels this worker has, claim, run and record them. When stopped, runs in progress
    /// finish and are recorded before it returns.
    pub async fn work(
        &self,
        options: WorkerOptions,
        stop: Arc<AtomicBool>,
    ) -> Result<WorkerReport> {
        let labels = options
            .labels
            .clone()
            .unwrap_or_else(|| self.config().labels());
        let me = worker_id();
        let dir = self.workers_dir();
        std::fs::create_dir_all(&dir).at(&dir)?;
        let beat = dir.join(&me);
        std::fs::write(&beat, labels.join(",")).at(&beat)?;
        let heartbeat = tokio::spawn({
            let beat = beat.clone();
            async move {
                loop {
                    tokio::time::sleep(HEARTBEAT / 4).await;
                    let _ = std::fs::File::options()
                        .write(true)
                        .open(&beat)
                        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                }
            }
        });
        let timeout = self
            .config()
            .run
            .timeout
            .as_deref()
            .map(parse_duration)
            .transpose()?;
        let permits = Arc::new(tokio::sync::Semaphore::new(options.jobs.max(1)));
        let mut tasks: tokio::task::JoinSet<Result<RunRecord>> = tokio::task::JoinSet::new();
        let mut report = WorkerReport::default();
        let mut started = 0usize;
        let mut last_wait: Option<String> = None;
        let result: Result<()> = async {
            loop {
                while let Some(done) = tasks.try_join_next() {
                    settle(done, &mut report);
                }
                let limit_hit = options.max_runs.is_some_and(|m| started >= m);
                if stop.load(Ordering::SeqCst) || limit_hit {
                    break;
                }
                match self.recover_publishing().await {
                    Ok(recovered) => report.requeued.extend(self.requeue(recovered)?),
                    Err(e) => tracing::warn!(error = %crate::project::error_chain(&e), "cannot recover runs that died publishing"),
                }
                report.requeued.extend(self.requeue_dead()?);
                let snap = self.store().snapshot()?;
                let queued: Vec<RunRecord> = self.run_queue().pending()?;
                let mut took = false;
                let mut unmatched: Vec<String> = Vec::new();
                let pending = queued.len();
                for mut run in queued {
                    if options.max_runs.is_some_and(|m| started >= m) || stop.load(Ordering::SeqCst)
                    {
                        break;
                    }
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        break;
                    };
                    let Some(node) = snap.read_json::<NodeSpec>(&paths::node(&run.node))? else {
                        continue;
                    };
                    // Done meanwhile (another attempt succeeded on the same inputs).
                    if crate::engine::succeeded_on(&snap, &run.node, &run.inputs)?.is_some() {
                        self.run_queue().finish(&run.id)?;
                        continue;
                    }
                    // Superseded: its inputs moved on and the node already succeeded on
                    // the new ones; executing it would publish an older result over that.
                    if let Ok(current) = crate::engine::current_inputs_of(&snap, &node) {
                        if current != run.inputs
                            && crate::engine::succeeded_on(&snap, &run.node, &current)?.is_some()
                        {
                            self.run_queue().cancel(&run.id)?;
                            continue;
                        }
                    }
                    if !node.labels.iter().all(|l| labels.contains(l)) {
                        unmatched.push(format!("{} ({})", run.id.short(), node.labels.join(",")));
                        continue;
                    }
                    if !self.claim(&mut run)? {
                        continue;
                    }
                    started += 1;
                    took = true;
                    let project = self.clone();
                    tasks.spawn(async move {
                        let _permit = permit;
                        project.execute_claimed(&node, run, timeout).await
                    });
                }
                if !took && tasks.is_empty() {
                    // Say what it waits for, once per change of situation.
                    let message = if pending == 0 {
                        format!("waiting: no pending run (labels {})", labels.join(","))
                    } else if !unmatched.is_empty() {
                        format!(
                            "waiting: no pending run matches labels {} ({} pending need other labels: {})",
                            labels.join(","),
                            unmatched.len(),
                            unmatched.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                        )
                    } else {
                        format!("waiting: {pending} pending run(s) being claimed by other workers")
                    };
                    if last_wait.as_deref() != Some(message.as_str()) {
                        self.events().send(crate::events::Event::Waiting {
                            message: message.clone(),
                        });
                        last_wait = Some(message);
                    }
                } else {
                    last_wait = None;
                }
                if !took {
                    tokio::select! {
                        _ = tokio::time::sleep(options.poll) => {}
                        Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                            settle(done, &mut report);
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        while let Some(done) = tasks.join_next().await {
            settle(done, &mut report);
        }
        heartbeat.abort();
        let _ = std::fs::remove_file(&beat);
        result.map(|()| report)
    }
}

/// Count a finished run task in `report`; a run that ended in an error (its attempt taken
/// over while this worker was stopped, the store failing) is said on stderr, not dropped.
fn settle(
    done: std::result::Result<crate::Result<crate::RunRecord>, tokio::task::JoinError>,
    report: &mut WorkerReport,
) {
    match done {
        Ok(Ok(r)) => report.runs.push(r),
        Ok(Err(e)) => tracing::warn!("{}", crate::project::error_chain(&e)),
        Err(e) => tracing::warn!(error = %e, "a run's task ended abnormally"),
    }
}
