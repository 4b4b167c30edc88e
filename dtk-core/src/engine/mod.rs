//! Running compute nodes: inputs in scope, variables, outputs with provenance.
//!
//! This module claims a run, executes it locally ([`Project::execute_claimed`]) and
//! records it; the rest is split by job: the node file (`nodefile`), reading nodes and
//! runs (`queries`), the command's scope and steps (`scope`), publishing outputs and
//! recovering interrupted publishes (`publish`), and dispatch to remote workers
//! (`dispatch`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::IoResultExt;
use crate::model::now_ms;
use crate::project::{paths, read_source, record_version};
use crate::store::{Snapshot, Tx};
use crate::{
    resolve_version, Command, Error, Fields, Name, NodeId, NodeSpec, Project, Result, RunId,
    RunRecord, RunStatus, Source, SourceSpec, SourceVersion,
};

mod dispatch;
mod nodefile;
mod publish;
mod queries;
mod scope;
mod scratch;

use scratch::Scratch;

pub use nodefile::{
    parse_duration, parse_wait, validate_labels, NodeFile, RetryDecl, StringOrList,
};
pub use queries::resolve_recorded;
pub(crate) use queries::{
    current_inputs, current_inputs_of, last_attempt, last_attempt_number, succeeded_on,
    success_up_to,
};
pub use scope::env_name;
pub(crate) use scope::{plan_steps, run_steps, Scope, Staged, StepsEnded};

/// How long a claim on a run holds without renewal.
pub const LEASE: Duration = Duration::from_secs(30);

/// Options of [`Project::run_node`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunOptions {
    /// Run even if a successful run on the same input versions exists.
    pub force: bool,
    /// End the run (and its process group) after this long.
    pub timeout: Option<Duration>,
    /// The labels of the machine running it (default: configured, else OS and arch).
    pub labels: Option<Vec<String>>,
    /// Only queue the run (`pending`) for a worker (`dkt worker`) to execute.
    pub queue: bool,
    /// Run on these input versions instead of the current ones (a scheduling pass runs a
    /// node once per followed ref of a pattern input this way). Each must be a recorded
    /// version of one of the node's inputs, every input named once.
    pub inputs: Option<Vec<SourceVersion>>,
}

impl RunOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Run even if an earlier run succeeded on the same inputs.
    pub fn with_force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }
    /// With a time limit.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }
    /// As a machine with these labels.
    pub fn with_labels(mut self, labels: Vec<String>) -> Self {
        self.labels = Some(labels);
        self
    }
    /// Only queue the run for a worker.
    pub fn with_queue(mut self, queue: bool) -> Self {
        self.queue = queue;
        self
    }
    /// On these input versions instead of the current ones.
    pub fn with_inputs(mut self, inputs: Vec<SourceVersion>) -> Self {
        self.inputs = Some(inputs);
        self
    }
}

/// What [`Project::run_node`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RunOutcome {
    /// The node ran; here is its record.
    Ran(RunRecord),
    /// A run on the same inputs already succeeded; nothing was run.
    UpToDate(RunRecord),
    /// The run waits, `pending`, for a worker (queued, or this machine lacks some of the
    /// node's labels).
    Pending(RunRecord),
    /// Another worker is running it right now.
    Busy(RunRecord),
}

impl RunOutcome {
    /// The run's record.
    pub fn record(&self) -> &RunRecord {
        match self {
            RunOutcome::Ran(r)
            | RunOutcome::UpToDate(r)
            | RunOutcome::Pending(r)
            | RunOutcome::Busy(r) => r,
        }
    }
}

/// `host:pid` of this process.
pub fn worker_id() -> String {
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy();
    let host = if host.is_empty() { "localhost" } else { &host };
    format!("{host}:{}", std::process::id())
}

pub(crate) fn pid_alive(worker: &str) -> Option<bool> {
    let me = worker_id();
    let (host, pid) = worker.rsplit_once(':')?;
    let (my_host, _) = me.rsplit_once(':')?;
    if host != my_host {
        return None;
    }
    let pid = rustix::process::Pid::from_raw(pid.parse().ok()?)?;
    // Signal 0 only checks for existence; EPERM means it exists but is someone else's.
    match rustix::process::test_kill_process(pid) {
        Ok(()) => Some(true),
        Err(e) => Some(e == rustix::io::Errno::PERM),
    }
}

impl Project {
    /// The status of a run as it stands: a `running` run whose worker is gone (dead
    /// process, or lease not renewed in time, or no claim in the queue any more) is
    /// `interrupted`.
    pub fn effective_status(&self, run: &RunRecord) -> RunStatus {
        if run.status != RunStatus::Running {
            return run.status;
        }
        if let Some(false) = run.worker.as_deref().and_then(pid_alive) {
            return RunStatus::Interrupted;
        }
        match self.run_queue().lease_age(&run.id) {
            Ok(Some(age)) if age < self.config().lease() => RunStatus::Running,
            _ => RunStatus::Interrupted,
        }
    }

    /// The record of an attempt of `node` on `inputs` that is queued or claimed, with the
    /// highest attempt number from `from` on.
    fn queued_attempt(
        &self,
        node: &NodeId,
        inputs: &[SourceVersion],
        from: u32,
    ) -> Result<Option<RunRecord>> {
        let mut found = None;
        let mut a = from;
        while let Some(r) = self.run_queue().get(&RunId::compute(node, inputs, a))? {
            found = Some(r);
            a += 1;
        }
        Ok(found)
    }

    /// Run `node` on the current versions of its inputs, recording the run, its log and,
    /// on success, the new versions of its outputs with their provenance.
    ///
    /// A run whose output moved while it ran is recorded [`RunStatus::Conflict`] with
    /// nothing published; a node with `on-conflict: rerun` then polls its outputs and runs
    /// again (a new attempt, up to [`crate::model::OnConflict::RERUNS`] times).
    pub async fn run_node(&self, node_id: &NodeId, options: RunOptions) -> Result<RunOutcome> {
        let mut outcome = self.run_node_once(node_id, options.clone()).await?;
        let mut reruns = 0;
        while let RunOutcome::Ran(r) = &outcome {
            if r.status != RunStatus::Conflict || reruns >= crate::model::OnConflict::RERUNS {
                break;
            }
            let (_, node) = self.node(&node_id.to_hex())?;
            if node.on_conflict != Some(crate::model::OnConflict::Rerun) {
                break;
            }
            let outputs: Vec<String> = node.outputs.iter().map(|n| n.to_string()).collect();
            self.update_sources(&outputs).await?;
            reruns += 1;
            outcome = self
                .run_node_once(node_id, options.clone().with_force(true))
                .await?;
        }
        Ok(outcome)
    }

    async fn run_node_once(&self, node_id: &NodeId, options: RunOptions) -> Result<RunOutcome> {
        // A run of this node may have died publishing: it is completed (or rolled back)
        // before anything else looks at the node's runs.
        if let Err(e) = self.recover_publishing().await {
            tracing::warn!(error = %crate::project::error_chain(&e), "cannot recover runs that died publishing");
        }
        let snap = self.store().snapshot()?;
        let node: NodeSpec = snap
            .read_json(&paths::node(node_id))?
            .ok_or_else(|| Error::not_found("node", node_id.short()))?;
        if snap
            .blob_id(&crate::records::paths::retired(node_id))?
            .is_some()
        {
            return Err(Error::Conflict(format!(
                "node {} was removed (`dkt node rm`); it no longer runs",
                node_id.short()
            )));
        }
        let inputs = match &options.inputs {
            None => current_inputs(&snap, &node)?,
            Some(given) => given_inputs(&snap, &node, given)?,
        };
        // Ended attempts are in the history; the newest attempt may still be queued or
        // executing (a new attempt starts only once the one before it has ended, or was
        // found dead and settled).
        let last = last_attempt(&snap, node_id, &inputs)?;
        if !options.force {
            if let Some(ok) = success_up_to(&snap, node_id, &inputs, last.as_ref())? {
                return Ok(RunOutcome::UpToDate(ok));
            }
        }
        let next_free = match &last {
            Some(r) => r.next_attempt()?,
            None => 0,
        };
        let mut queued = self.queued_attempt(node_id, &inputs, next_free)?;
        self.check_variables(&node)?;
        let labels = options
            .labels
            .clone()
            .unwrap_or_else(|| self.config().labels());
        // With a remote run queue, the queue's workers match labels.
        let runnable = self.dispatcher.is_some() || node.labels.iter().all(|l| labels.contains(l));
        // Settle a claim whose worker died before going on; one still running on these
        // inputs (another worker, another `dkt`) is not started twice.
        let mut after = next_free;
        if let Some(q) = queued.clone() {
            if q.status == RunStatus::Running {
                let publishing = self.run_queue().intents()?.iter().any(|i| i.run.id == q.id);
                match self.effective_status(&q) {
                    RunStatus::Running => return Ok(RunOutcome::Busy(q)),
                    // Died publishing and not recovered yet: never run beside it.
                    _ if publishing => return Ok(RunOutcome::Busy(q)),
                    _ => {
                        self.settle_interrupted(&[&q])?;
                        // It may have succeeded just before its process died.
                        if !options.force {
                            let fresh = self.store().snapshot()?;
                            if let Some(ok) = succeeded_on(&fresh, node_id, &inputs)? {
                                return Ok(RunOutcome::UpToDate(ok));
                            }
                        }
                        after = q.next_attempt()?;
                        queued = None;
                    }
                }
            }
        }
        if !runnable {
            if let Some(p) = queued.iter().find(|r| r.status == RunStatus::Pending) {
                return Ok(RunOutcome::Pending(p.clone()));
            }
        }
        let attempt = match &queued {
            Some(q) => q.next_attempt()?,
            None => {
                // The first attempt number nobody has: not queued, not being settled (a
                // dead holder's claim someone is recording), not recorded.
                let mut a = after;
                loop {
                    let id = RunId::compute(node_id, &inputs, a);
                    let taken = self.run_queue().get(&id)?.is_some()
                        || self.run_queue().settling(&id)?
                        || snap.blob_id(&paths::run(&id))?.is_some();
                    if !taken {
                        break;
                    }
                    a += 1;
                }
                a
            }
        };
        let reuse_pending = queued.filter(|r| r.status == RunStatus::Pending);
        let mut record = reuse_pending.unwrap_or_else(|| RunRecord {
            id: RunId::compute(node_id, &inputs, attempt),
            node: *node_id,
            attempt,
            inputs: inputs.clone(),
            outputs: Vec::new(),
            status: RunStatus::Pending,
            exit_code: None,
            error: None,
            worker: None,
            queued_ms: now_ms(),
            started_ms: None,
            ended_ms: None,
            lease_until_ms: None,
            input_digests: Vec::new(),
            log_digest: None,
            staging: None,
            read_files: Default::default(),
            worker_key: None,
            worker_signature: None,
            digest: None,
        });
        record.input_digests = input_digests(&snap, &record.inputs)?;
        if !runnable || options.queue {
            // Pending runs live in the queue (not in the history) until they end.
            record.status = RunStatus::Pending;
            self.run_queue().enqueue(&record)?;
            return Ok(RunOutcome::Pending(record));
        }
        // Everything that can be refused is checked before the claim.
        let timeout = match options.timeout {
            Some(t) => Some(t),
            None => self
                .config()
                .run
                .timeout
                .as_deref()
                .map(|t| {
                    parse_duration(t).map_err(|e| {
                        Error::invalid("setting", format!("[run] timeout = {t:?}"), e.to_string())
                    })
                })
                .transpose()?,
        };
        if !self.claim(&mut record)? {
            return Ok(RunOutcome::Busy(record));
        }
        self.execute_claimed(&node, record, timeout)
            .await
            .map(RunOutcome::Ran)
    }

    /// Claim `record` for this process: atomically, it becomes `running` with this worker
    /// and a lease, unless someone else claimed or finished it first (then `false`).
    pub fn claim(&self, record: &mut RunRecord) -> Result<bool> {
        // An attempt already in the history has ended: it is never claimed again.
        if self
            .store()
            .snapshot()?
            .read_json::<RunRecord>(&paths::run(&record.id))?
            .is_some_and(|r| r.status != RunStatus::Pending && r.status != RunStatus::Running)
        {
            return Ok(false);
        }
        record.status = RunStatus::Running;
        record.worker = Some(worker_id());
        record.started_ms = Some(now_ms());
        record.lease_until_ms = Some(now_ms() + self.config().lease().as_millis() as u64);
        self.run_queue().claim(record)
    }

    /// Execute a run this process claimed and record how it ended (with its outputs and
    /// their provenance on success). The lease is renewed while it runs.
    pub async fn execute_claimed(
        &self,
        node: &NodeSpec,
        mut record: RunRecord,
        timeout: Option<Duration>,
    ) -> Result<RunRecord> {
        let node_id = &record.node.clone();
        let node = node.clone();
        let mut read_files = BTreeMap::new();
        let execution = async {
            match self.dispatcher.clone() {
                Some(d) => self.execute_remote(&d, &node, &record, timeout).await,
                None => self
                    .execute(&node, &record, timeout, &mut read_files)
                    .await
                    .map(|(log, exec)| (log, exec, None)),
            }
        };
        // The lease is renewed every sixth of it, on a task of its own (so that a long
        // stretch of work on this one delays no renewal), started once a run outlasts
        // the first sixth: most runs end before, and starting and stopping that task
        // woke another thread twice per run.
        let every = self.config().lease() / 6;
        let mut renew = None;
        let result = {
            tokio::pin!(execution);
            tokio::select! {
                done = &mut execution => done,
                () = tokio::time::sleep(every) => {
                    let queue = self.run_queue().clone();
                    let run = record.id;
                    renew = Some(tokio::spawn(async move {
                        loop {
                            let _ = queue.renew(&run);
                            tokio::time::sleep(every).await;
                        }
                    }));
                    execution.await
                }
            }
        };
        if let Some(renew) = renew {
            renew.abort();
        }
        record.read_files = read_files;
        // The claim as this process holds it: the fence of the result commit.
        let claim = record.clone();
        let (log, outcome) = match result {
            Ok((log, exec, executed_by)) => {
                // A remote run's record names the worker (the machine) that executed it,
                // and the key that signed its result.
                if let Some(by) = executed_by {
                    record.worker = Some(by.worker);
                    if let Some((key, signature)) = by.key {
                        record.worker_key = Some(key);
                        record.worker_signature = Some(signature);
                    }
                }
                (log, exec)
            }
            Err(e) => (String::new(), Exec::Error(crate::project::error_chain(&e))),
        };
        let log = self.secrets().redact(&log);
        record.ended_ms = Some(now_ms());
        record.lease_until_ms = None;
        match outcome {
            Exec::Success(outputs) => {
                record.status = RunStatus::Success;
                record.exit_code = Some(0);
                record.outputs = outputs.iter().map(|(sv, _)| sv.clone()).collect();
                let message = format!(
                    "run {} of node {}: success{}",
                    record.id.short(),
                    node_id.short(),
                    if record.outputs.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " -> {}",
                            record
                                .outputs
                                .iter()
                                .map(|o| format!("{}:{}", o.source, o.version.short()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                );
                let rec = sealed_run(&record, Some(&log))?;
                self.finish_run(&claim, &rec, &log, &message, |tx| {
                    record_outputs(tx, &outputs, &rec)
                })?;
                for o in &record.outputs {
                    self.events().send(crate::events::Event::VersionRecorded {
                        source: o.source.clone(),
                        version: o.version.clone(),
                    });
                }
                self.drop_obsolete_pending(&record);
                self.attach_statements(&record).await;
                if let Some(hook) = &node.on_success {
                    self.hook(hook, &record, "success").await;
                }
            }
            Exec::Failed { code, error } => {
                record.exit_code = code;
                self.record_failure(&claim, &mut record, &log, &node, error)
                    .await?;
            }
            // A run that could not be executed at all is recorded as one whose command failed.
            Exec::Error(e) => {
                self.record_failure(&claim, &mut record, &log, &node, Some(e))
                    .await?;
            }
            Exec::Conflict {
                why,
                staging,
                published,
            } => {
                record.status = RunStatus::Conflict;
                record.exit_code = Some(0);
                record.error = Some(self.secrets().redact(&why));
                record.staging = Some(staging.display().to_string());
                record.outputs = published.iter().map(|(sv, _)| sv.clone()).collect();
                let rec = sealed_run(&record, Some(&log))?;
                self.finish_run(
                    &claim,
                    &rec,
                    &log,
                    &format!(
                        "run {} of node {}: conflict",
                        record.id.short(),
                        node_id.short()
                    ),
                    |tx| record_outputs(tx, &published, &rec),
                )?;
            }
            Exec::Superseded(why) => {
                tracing::warn!(run = %record.id.short(), "{why}; its result is discarded");
                let _ = std::fs::remove_file(self.live_log_path(&record.id));
                return Err(superseded(&record, &why, false));
            }
            exec @ (Exec::Cancelled | Exec::Interrupted(_)) => {
                record.status = RunStatus::Interrupted;
                record.error = Some(match exec {
                    // The remote worker executing it was lost.
                    Exec::Interrupted(why) => self.secrets().redact(&why),
                    _ if self.dispatcher.is_some() => {
                        "cancelled: the worker ended the process group and nothing was published"
                            .to_owned()
                    }
                    _ => "cancelled (SIGINT/SIGTERM): the process group was ended and nothing was published".to_owned(),
                });
                self.finish_run(
                    &claim,
                    &record,
                    &log,
                    &format!(
                        "run {} of node {}: interrupted",
                        record.id.short(),
                        node_id.short()
                    ),
                    |_| Ok(()),
                )?;
            }
        }
        let _ = std::fs::remove_file(self.live_log_path(&record.id));
        self.events().send(crate::events::Event::RunFinished {
            run: record.id,
            node: record.node,
            status: record.status,
        });
        Ok(record)
    }

    /// Forget the pending runs of `done`'s node queued before it started on other inputs:
    /// the newer result `done` published supersedes them, and executing one later would
    /// publish an older result over it.
    /// Record `record` as failed with `error`, and run the node's `on_failure` hook.
    async fn record_failure(
        &self,
        claim: &RunRecord,
        record: &mut RunRecord,
        log: &str,
        node: &NodeSpec,
        error: Option<String>,
    ) -> Result<()> {
        record.status = RunStatus::Failure;
        record.error = error.map(|e| self.secrets().redact(&e));
        let message = format!(
            "run {} of node {}: failure",
            record.id.short(),
            record.node.short()
        );
        self.finish_run(claim, record, log, &message, |_| Ok(()))?;
        if let Some(hook) = &node.on_failure {
            self.hook(hook, record, "failure").await;
        }
        Ok(())
    }

    fn drop_obsolete_pending(&self, done: &RunRecord) {
        let started = done.started_ms.unwrap_or(done.queued_ms);
        let Ok(pending) = self.run_queue().pending() else {
            return;
        };
        for p in pending {
            if p.node == done.node && p.inputs != done.inputs && p.queued_ms <= started {
                tracing::info!(run = %p.id.short(), by = %done.id.short(), "a pending run on older inputs is superseded");
                let _ = self.run_queue().cancel(&p.id);
            }
        }
    }

    /// Remove what a dead run left on disk: its scratch directories (each may hold a copy
    /// of its outputs) and its live log.
    fn remove_leftovers(&self, run: &RunId) {
        let tmp = self.dkt_dir().join("tmp");
        let prefix = format!("run-{}-", run.short());
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    if let Err(err) = std::fs::remove_dir_all(e.path()) {
                        tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove a dead run's scratch directory");
                    }
                }
            }
        }
        let _ = std::fs::remove_file(self.live_log_path(run));
    }

    /// `.dkt/logs/<run-id>.log`: the output of a run while it runs (removed once its log
    /// is recorded), for `dkt node log --follow`.
    pub fn live_log_path(&self, run: &RunId) -> PathBuf {
        self.dkt_dir()
            .join("logs")
            .join(format!("{}.log", run.to_hex()))
    }

    /// Check that the claim of `record` is still this process's: renew its lease first
    /// (so nobody declares it dead from here on), then read the stored record, which must
    /// still be `running` with this worker. `Err` says who took it over.
    fn confirm_claim(&self, record: &RunRecord) -> std::result::Result<(), String> {
        // The claim moves from running to publishing only if this process still holds it:
        // once it has, nobody can take it over (a publishing run is waited for).
        let held = self
            .run_queue()
            .get(&record.id)
            .ok()
            .flatten()
            .is_some_and(|q| still_ours(&q, record).is_ok());
        match self.run_queue().begin_publish(&record.id) {
            Ok(true) if held => Ok(()),
            Ok(_) => Err(format!(
                "run {} (attempt {}) was taken over while this process held it: its claim is gone",
                record.id.short(),
                record.attempt
            )),
            Err(e) => Err(format!(
                "cannot check the claim of run {}: {}",
                record.id.short(),
                crate::project::error_chain(&e)
            )),
        }
    }

    /// Record how the claimed run `record` ended, as a compare-and-swap on its attempt:
    /// only if the stored record is still `running` with this worker. `extra` stages what
    /// goes with the result (the outputs' versions) in the same commit.
    fn finish_run(
        &self,
        claim: &RunRecord,
        record: &RunRecord,
        log: &str,
        message: &str,
        mut extra: impl FnMut(&mut Tx) -> Result<()>,
    ) -> Result<()> {
        // The claim must still be this process's (running or publishing, same worker and
        // attempt), and the history must not hold an ended record of this attempt.
        let queued = self.run_queue().get(&record.id)?;
        let held = match &queued {
            Some(q) => still_ours(q, claim),
            None => Err(format!(
                "run {} (attempt {}) was taken over while this process held it: its claim is gone",
                record.id.short(),
                record.attempt
            )),
        };
        let (fenced, _) = self.store().transact(message, |tx| {
            if let Err(why) = &held {
                return Ok(Some(why.clone()));
            }
            if let Some(now) = tx.read_json::<RunRecord>(&paths::run(&record.id))? {
                if matches!(
                    now.status,
                    RunStatus::Success
                        | RunStatus::Failure
                        | RunStatus::Interrupted
                        | RunStatus::Conflict
                ) {
                    return Ok(Some(format!(
                        "run {} (attempt {}) is already recorded {}",
                        record.id.short(),
                        record.attempt,
                        now.status
                    )));
                }
            }
            write_run(tx, record, Some(log))?;
            extra(tx)?;
            Ok(None)
        })?;
        if fenced.is_none() {
            // The next search for the last attempt on these inputs starts here.
            self.store().remember_hint(
                RunId::compute(&record.node, &record.inputs, 0).0,
                record.attempt,
            );
            self.run_queue().finish(&record.id)?;
        }
        match fenced {
            None => Ok(()),
            Some(why) => Err(superseded(
                record,
                &why,
                record.status == RunStatus::Success && !record.outputs.is_empty(),
            )),
        }
    }

    /// Record `interrupted` the claimed runs among `runs` whose worker is gone: the
    /// claim is taken over first (one process wins it), then the ended attempt is recorded
    /// and forgotten by the queue.
    pub(crate) fn settle_interrupted(&self, runs: &[&RunRecord]) -> Result<Vec<RunRecord>> {
        let mut settled = Vec::new();
        // A run that died publishing is completed or rolled back from its intent
        // ([`Project::recover_publishing`]), never simply recorded `interrupted`.
        let intents: Vec<RunId> = self
            .run_queue()
            .intents()?
            .into_iter()
            .map(|i| i.run.id)
            .collect();
        for r in runs {
            if r.status != RunStatus::Running
                || self.effective_status(r) != RunStatus::Interrupted
                || intents.contains(&r.id)
            {
                continue;
            }
            // A dead holder's claim is taken wherever it is (a dead process publishes
            // nothing more); a live one's (stopped past its lease) only before it began
            // publishing: its resumed process then finds its claim gone and publishes
            // nothing, whereas one cut off while publishing would publish anyway.
            let taken = if self.holder_gone(r) && r.worker.as_deref().and_then(pid_alive).is_some()
            {
                self.run_queue().take_over(&r.id)?
            } else {
                self.run_queue().take_over_running(&r.id)?
            };
            let Some(rec) = taken else {
                continue; // another process settled it, it ended meanwhile, or it publishes
            };
            if let Some(rec) = self.record_interrupted(rec, |rec| {
                format!(
                    "its worker {} died or stopped renewing its lease",
                    rec.worker.as_deref().unwrap_or("-")
                )
            })? {
                settled.push(rec);
            }
        }
        Ok(settled)
    }

    /// Record `interrupted` the run `rec` this process took over (with the error `why`
    /// gives), unless its process recorded how it ended just before dying; then forget it
    /// in the queue and remove what it left on disk. `Some` when this recorded it.
    fn record_interrupted(
        &self,
        mut rec: RunRecord,
        why: impl FnOnce(&RunRecord) -> String,
    ) -> Result<Option<RunRecord>> {
        {
            rec.error = Some(why(&rec));
            rec.status = RunStatus::Interrupted;
            rec.lease_until_ms = None;
            rec.ended_ms = Some(now_ms());
            // Its process may have died after recording how it ended and before leaving the
            // queue: then the record stands and only the queue entry goes.
            let message = format!(
                "run {} of node {}: interrupted",
                rec.id.short(),
                rec.node.short()
            );
            let (recorded, _) = self.store().transact(&message, |tx| {
                if let Some(now) = tx.read_json::<RunRecord>(&paths::run(&rec.id))? {
                    if matches!(
                        now.status,
                        RunStatus::Success
                            | RunStatus::Failure
                            | RunStatus::Interrupted
                            | RunStatus::Conflict
                    ) {
                        return Ok(false);
                    }
                }
                write_run(tx, &rec, None)?;
                Ok(true)
            })?;
            self.run_queue().finish(&rec.id)?;
            if let Some(d) = &self.dispatcher {
                d.forget(&rec.id);
            }
            self.remove_leftovers(&rec.id);
            Ok(recorded.then_some(rec))
        }
    }

    /// Run a hook (`on-success`/`on-failure`) in the project's root. Its output (stdout
    /// and stderr, in order, redacted) is recorded beside the run's log
    /// (`<run-id>.hook.log`: the hook runs after the run's record was sealed, so its
    /// output is not part of the sealed log), never printed: dkt's own output (`--json`
    /// above all) stays its own.
    async fn hook(&self, hook: &str, record: &RunRecord, status: &str) {
        let mut cmd = tokio::process::Command::new("sh");
        // One pipe for both streams keeps their order.
        cmd.arg("-c")
            .arg(format!("exec 2>&1; {hook}"))
            .current_dir(self.root())
            .env("DKT_RUN_ID", record.id.to_hex())
            .env("DKT_NODE_ID", record.node.to_hex())
            .env("DKT_RUN_STATUS", status)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let (text, outcome) = match cmd.output().await {
            Ok(o) => {
                let outcome = if o.status.success() {
                    "done".to_owned()
                } else {
                    tracing::warn!(hook, status = %o.status, "hook failed");
                    format!("failed ({})", o.status)
                };
                (String::from_utf8_lossy(&o.stdout).into_owned(), outcome)
            }
            Err(e) => {
                tracing::warn!(hook, error = %e, "hook could not start");
                (String::new(), format!("could not start: {e}"))
            }
        };
        let which = if status == "success" {
            "on-success"
        } else {
            "on-failure"
        };
        let text = self.secrets().redact(&text);
        let message = format!(
            "run {} of node {}: {which} hook",
            record.id.short(),
            record.node.short()
        );
        let path = paths::run_hook_log(&record.id);
        let appended = self.store().transact(&message, |tx| {
            let mut log = tx
                .read(&path)?
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            log.push_str(&format!("[dkt: {which} hook: {hook}]\n{text}"));
            if !text.is_empty() && !text.ends_with('\n') {
                log.push('\n');
            }
            log.push_str(&format!("[dkt: {which} hook {outcome}]\n"));
            tx.put(&path, log.as_bytes())?;
            Ok(())
        });
        if let Err(e) = appended {
            tracing::warn!(hook, error = %e, "cannot record the hook's output in the run's log");
        }
    }

    async fn execute(
        &self,
        node: &NodeSpec,
        record: &RunRecord,
        timeout: Option<Duration>,
        read_files: &mut BTreeMap<Name, Vec<String>>,
    ) -> Result<(String, Exec)> {
        let snap = self.store().snapshot()?;
        let scratch = Scratch::new(&self.dkt_dir().join("tmp"), &record.id)?;
        let work = scratch.work();
        // The scratch area as it really is, before any command ran.
        let scratch_real = std::fs::canonicalize(scratch.path()).at(scratch.path())?;
        let mut scope = Scope::default();
        let mut input_roots = Vec::new();
        let mut named_roots = Vec::new();
        // Inputs at their versions.
        for sv in &record.inputs {
            let spec = read_source(&snap, &sv.source)?;
            let source = self.open_source(&spec)?;
            let dir = ensure_dir(&scratch.path().join(format!("in-{}", sv.source)))?;
            let root = source.materialize(&sv.version, &dir).await?;
            input_roots.push(dir.clone());
            input_roots.push(root.clone());
            named_roots.push((
                sv.source.clone(),
                std::fs::canonicalize(&root).unwrap_or_else(|_| root.clone()),
            ));
            let mut fields = source.fields(Some(&sv.version), &root)?;
            // A version of a pattern source names the ref it was the tip of: that is its
            // REF, not the pattern.
            if let Some(r) = snap
                .read_json::<crate::VersionRecord>(&paths::version(&sv.source, &sv.version))?
                .and_then(|r| r.extra.get(crate::pattern::REF_FIELD).cloned())
            {
                fields.insert(crate::pattern::REF_FIELD.to_owned(), r);
            }
            scope.add(&sv.source, fields)?;
        }
        // Outputs: a staging copy of their current content, published on success.
        let mut outputs: Vec<Staged> = Vec::new();
        for name in &node.outputs {
            let spec = read_source(&snap, name)?;
            let source = self.open_source(&spec)?;
            let stage = scratch.path().join(format!("out-{name}"));
            if let Some(v) = spec.current() {
                let tmp = ensure_dir(&scratch.path().join(format!("cur-{name}")))?;
                match source.materialize(v, &tmp).await {
                    Ok(root) => copy_tree(&root, &stage)?,
                    Err(e) => {
                        return Ok((
                            String::new(),
                            Exec::Error(format!(
                                "output {name}: its current version {v} cannot be read back: {}",
                                crate::project::error_chain(&e)
                            )),
                        ))
                    }
                }
            }
            ensure_dir(&stage)?;
            let fields = source.fields(None, &stage)?;
            scope.add(name, fields)?;
            outputs.push((name.clone(), source, stage, spec.current().cloned()));
        }
        self.add_private(&mut scope);
        let steps = self.plan(node, &scope, Some(scratch.path()))?;
        // Only the variables and secrets the command names reach it.
        let private = scope.used_private();
        let sink = crate::process::Sink::new(
            record.id,
            record.node,
            Some(self.live_log_path(&record.id)),
            self.events().clone(),
            self.secrets().clone(),
        );
        self.events().send(crate::events::Event::RunStarted {
            run: record.id,
            node: record.node,
        });
        let mut env = self.run_env(record.id, record.node, &scope, private);
        let sandbox = self.sandboxed(node).then(|| {
            let writable = outputs.iter().map(|o| o.2.clone()).collect::<Vec<_>>();
            let mut view =
                self.sandbox_view(node, scratch.path(), &work, input_roots, writable, &mut env);
            // What the command opens of its inputs, when strace is there to say.
            let trace = scratch.path().join("trace");
            if std::fs::create_dir_all(&trace).is_ok() {
                view.trace = std::fs::canonicalize(&trace).ok();
            }
            view
        });
        let cancel = self.cancel_token();
        let ended = run_steps(
            &steps,
            &work,
            &env,
            sandbox.as_ref(),
            timeout,
            &cancel,
            &sink,
        )
        .await;
        if let Some(trace) = sandbox.as_ref().and_then(|s| s.trace.as_ref()) {
            let work_real = std::fs::canonicalize(&work).unwrap_or_else(|_| work.clone());
            *read_files = crate::process::opened_files(trace, &work_real, &named_roots);
            tracing::debug!(run = %record.id, files = ?read_files, "input files the run opened");
        }
        match ended {
            None => {}
            Some(StepsEnded::Failed { code, error }) => {
                return Ok((sink.text(), Exec::Failed { code, error }))
            }
            Some(StepsEnded::Cancelled) => return Ok((sink.text(), Exec::Cancelled)),
        }
        let log = sink.text();
        self.publish_staged(node, record, log, scratch, &scratch_real, outputs)
            .await
    }
}

/// Who executed a remote run: the worker (`host:pid`) and, once its result's signature
/// was checked, its key's fingerprint and the signature its record keeps.
#[derive(Debug)]
struct ExecutedBy {
    worker: String,
    key: Option<(String, crate::remote::WorkerSignature)>,
}

enum Exec {
    Success(Vec<(SourceVersion, crate::VersionInfo)>),
    /// An output moved while the run ran: `why`, what was kept where, and what was
    /// published before the move was seen (outputs checked at once are never partly
    /// published, but a kind's own check may still find a move after an earlier output
    /// went out).
    Conflict {
        why: String,
        staging: PathBuf,
        published: Vec<(SourceVersion, crate::VersionInfo)>,
    },
    Failed {
        code: Option<i32>,
        error: Option<String>,
    },
    Error(String),
    /// The attempt was taken over by another process before its outputs were published.
    Superseded(String),
    /// The run was cancelled (its process group ended): nothing was published.
    Cancelled,
    /// The remote worker executing it stopped renewing its lease.
    Interrupted(String),
}

/// `Ok` when the stored record `now` is still the claim `mine`: the same attempt, still
/// `running`, by the same worker.
fn still_ours(now: &RunRecord, mine: &RunRecord) -> std::result::Result<(), String> {
    if now.status == RunStatus::Running && now.worker == mine.worker && now.attempt == mine.attempt
    {
        return Ok(());
    }
    Err(format!(
        "run {} (attempt {}) was taken over while this process held it: it is now recorded {}{}",
        mine.id.short(),
        mine.attempt,
        now.status,
        now.worker
            .as_deref()
            .filter(|w| Some(*w) != mine.worker.as_deref())
            .map(|w| format!(" by {w}"))
            .unwrap_or_default()
    ))
}

fn superseded(record: &RunRecord, why: &str, published: bool) -> Error {
    let what = if published {
        "this older result was not recorded by this process (its outputs were published \
         just before the takeover; the process that took the run over records them with \
         this run)"
    } else {
        "this older result was discarded and nothing was published"
    };
    Error::Superseded(format!(
        "{why}; this process was stopped or cut off for longer than its lease, so another \
         process ran node {} again: {what}",
        record.node.short()
    ))
}

/// A pause point for the crash tests: with `DKT_TEST_PAUSE_AT=POINT` in its environment,
/// the process stops itself (SIGSTOP) at `POINT` (`publish`: the intent is recorded and
/// nothing published; `published`: an output was published and the intent not yet
/// updated; `record`: everything published, the result not recorded), so that a test can
/// see it there and kill it. Without the variable it does nothing.
fn test_pause(point: &str) {
    if std::env::var("DKT_TEST_PAUSE_AT").is_ok_and(|p| p == point) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
    }
}

/// Check that `stage` is still a real directory (not a symbolic link) at the place dtk
/// made it inside the scratch area `scratch_real` (canonical, taken before the node ran).
fn check_stage(scratch_real: &Path, stage: &Path) -> std::result::Result<(), String> {
    let md = std::fs::symlink_metadata(stage)
        .map_err(|e| format!("its staging directory {} is gone ({e})", stage.display()))?;
    if md.file_type().is_symlink() {
        let target = std::fs::read_link(stage)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".to_owned());
        return Err(format!(
            "the node replaced its staging directory {} with a symbolic link (to {target})",
            stage.display()
        ));
    }
    if !md.is_dir() {
        return Err(format!(
            "the node replaced its staging directory {} with a file",
            stage.display()
        ));
    }
    let expected = stage.file_name().map(|n| scratch_real.join(n));
    let real = std::fs::canonicalize(stage).ok();
    if real.is_none() || real != expected {
        return Err(format!(
            "the scratch area around {} was replaced (it now resolves to {})",
            stage.display(),
            real.map(|r| r.display().to_string())
                .unwrap_or_else(|| "nothing".to_owned())
        ));
    }
    Ok(())
}

fn ensure_dir(p: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(p).at(p)?;
    Ok(p.to_owned())
}

fn input_digests(snap: &Snapshot, inputs: &[SourceVersion]) -> Result<Vec<String>> {
    inputs
        .iter()
        .map(|sv| {
            let r: Option<crate::VersionRecord> =
                snap.read_json(&paths::version(&sv.source, &sv.version))?;
            Ok(r.and_then(|r| r.digest).unwrap_or_default())
        })
        .collect()
}

/// Write an ended run record (sealing it first) and its indexes (by node; the consumers
/// of versions), and its log if given. Runs pending or executing live in the run queue,
/// not in the history.
pub(crate) fn write_run(
    tx: &mut crate::store::Tx,
    record: &RunRecord,
    log: Option<&str>,
) -> Result<()> {
    let record = sealed_run(record, log)?;
    let id = tx.put_json(&paths::run(&record.id), &record)?;
    tx.put_id(&paths::node_run(&record.node, &record.id), id);
    if record.status == RunStatus::Success {
        for sv in &record.inputs {
            tx.put_id(&paths::consumer(sv, &record.id), id);
        }
    }
    if let Some(log) = log {
        tx.put(&paths::run_log(&record.id), log.as_bytes())?;
    }
    Ok(())
}

/// Record the versions `run` published as its outputs' latest, with their provenance.
pub(crate) fn record_outputs(
    tx: &mut Tx,
    published: &[(SourceVersion, crate::VersionInfo)],
    run: &RunRecord,
) -> Result<()> {
    for (sv, info) in published {
        crate::records::update_state(tx, &sv.source, |spec| {
            spec.latest = Some(sv.version.clone());
        })?;
        record_version(tx, &sv.source, info, Some(run))?;
    }
    Ok(())
}

/// `record` sealed with the digest of its log (when it has one), as [`write_run`] stores it.
pub(crate) fn sealed_run(record: &RunRecord, log: Option<&str>) -> Result<RunRecord> {
    let mut record = record.clone();
    record.log_digest = log.map(|l| crate::digest::blob(l.as_bytes()));
    record.seal()?;
    Ok(record)
}

/// `given` checked against `node`: each of its inputs once, at a recorded version; sorted
/// as run IDs want them.
fn given_inputs(
    snap: &Snapshot,
    node: &NodeSpec,
    given: &[SourceVersion],
) -> Result<Vec<SourceVersion>> {
    let mut out = Vec::with_capacity(node.inputs.len());
    for name in &node.inputs {
        let mut found = given.iter().filter(|sv| &sv.source == name);
        let sv = found.next().ok_or_else(|| {
            Error::invalid("inputs", name.as_str(), "no version given for this input")
        })?;
        if found.next().is_some() {
            return Err(Error::invalid(
                "inputs",
                name.as_str(),
                "more than one version given for this input",
            ));
        }
        if snap.blob_id(&paths::version(name, &sv.version))?.is_none() {
            return Err(Error::NotFound {
                what: "version",
                name: sv.to_string(),
                hint: " (not recorded)".to_owned(),
            });
        }
        out.push(sv.clone());
    }
    if let Some(extra) = given.iter().find(|sv| !node.inputs.contains(&sv.source)) {
        return Err(Error::invalid(
            "inputs",
            extra.to_string(),
            "not an input of the node",
        ));
    }
    out.sort();
    Ok(out)
}

/// Copy a tree (files, directories, symlinks as symlinks, permissions).
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(from).at(from)?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from).at(from)?;
        std::os::unix::fs::symlink(&target, to).at(to)?;
    } else if meta.is_dir() {
        std::fs::create_dir_all(to).at(to)?;
        for entry in std::fs::read_dir(from).at(from)? {
            let entry = entry.at(from)?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        std::fs::set_permissions(to, meta.permissions()).at(to)?;
    } else {
        std::fs::copy(from, to).at(to)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_humantime_does() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_millis());
        assert_eq!(secs("90").ok(), Some(90_000));
        assert_eq!(secs("90s").ok(), Some(90_000));
        assert_eq!(secs("500ms").ok(), Some(500));
        assert_eq!(secs("1h30m").ok(), Some(5_400_000));
        assert_eq!(secs("2h 15m").ok(), Some(8_100_000));
        assert_eq!(secs("1d").ok(), Some(86_400_000));
        for bad in ["", "0", "0s", "1x", "-5s", "s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(parse_wait("0s").ok(), Some(Duration::ZERO));
        assert_eq!(parse_wait("0").ok(), Some(Duration::ZERO));
        let e = parse_duration("1x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("1x") && e.contains("1h30m"), "{e}");
    }
}
