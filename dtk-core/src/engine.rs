//! Running compute nodes: inputs in scope, variables, outputs with provenance.

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

/// A node described in a YAML file (`dkt node run FILE.yml`, and the `nodes:` of a
/// pipeline file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeFile {
    /// A name for the node (accepted wherever its ID is); not part of its ID.
    #[serde(default)]
    pub name: Option<String>,
    /// Labels a worker must have.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Input sources.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Output sources.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Shell lines, run in order, stopping at the first failure.
    pub run: StringOrList,
    /// Shell command after success.
    #[serde(default)]
    pub on_success: Option<String>,
    /// Shell command after failure.
    #[serde(default)]
    pub on_failure: Option<String>,
    /// Retry a failed run on the same inputs: a count (`retry: 3`) or
    /// `{count: 3, backoff: 30s}`.
    #[serde(default)]
    pub retry: Option<RetryDecl>,
    /// What a run does when an output moved while it ran: `rerun` or `overwrite`
    /// (default: record the run `conflict`, publish nothing).
    #[serde(default)]
    pub on_conflict: Option<crate::model::OnConflict>,
    /// Run through bubblewrap (inputs read-only, no network, a clean environment).
    #[serde(default)]
    pub sandbox: bool,
    /// A sandboxed node may use the network.
    #[serde(default)]
    pub network: bool,
}

/// `retry:` of a node file: a count, or a count and a backoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RetryDecl {
    /// `retry: 3`
    Count(u32),
    /// `retry: {count: 3, backoff: 30s}`
    Policy(crate::model::Retry),
}

/// One string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum StringOrList {
    /// One line.
    One(String),
    /// Several lines.
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StringOrList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a shell line or a list of shell lines (quote lines such as \"true\")")
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<Self::Value, E> {
                Ok(StringOrList::One(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(StringOrList::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl NodeFile {
    /// Parse a node file; errors name `file`, the line and the field.
    pub fn parse(file: &str, text: &str) -> Result<NodeFile> {
        yaml_serde::from_str(text).map_err(|e| Error::invalid("node file", file, e.to_string()))
    }

    /// The node it describes.
    pub fn to_spec(&self) -> Result<NodeSpec> {
        let lines = match &self.run {
            StringOrList::One(s) => vec![s.clone()],
            StringOrList::Many(v) => v.clone(),
        };
        if lines.is_empty() {
            return Err(Error::invalid("node file", "run", "`run` lists no command"));
        }
        let names = |v: &[String]| v.iter().map(|s| Name::new(s)).collect::<Result<Vec<_>>>();
        let mut spec = NodeSpec::new(Command::Script(lines));
        spec.labels = self.labels.clone();
        spec.inputs = names(&self.inputs)?;
        spec.outputs = names(&self.outputs)?;
        spec.on_success = self.on_success.clone();
        spec.on_failure = self.on_failure.clone();
        spec.on_conflict = self.on_conflict;
        spec.sandbox = self.sandbox;
        spec.network = self.network;
        if self.network && !self.sandbox {
            return Err(Error::invalid(
                "node file",
                "network",
                "`network: true` only means something with `sandbox: true` (a node that is not sandboxed has the network)",
            ));
        }
        spec.retry = match &self.retry {
            None => None,
            Some(RetryDecl::Count(count)) => Some(crate::model::Retry {
                count: *count,
                backoff: "0s".to_owned(),
            }),
            Some(RetryDecl::Policy(p)) => {
                parse_wait(&p.backoff).map_err(|_| {
                    Error::invalid(
                        "retry backoff",
                        &p.backoff,
                        "expected a duration such as 30s, 5m or 1h",
                    )
                })?;
                Some(p.clone())
            }
        };
        validate_labels(&spec.labels)?;
        Ok(spec)
    }
}

/// Labels are non-empty and made of letters, digits, `_`, `-`, `.`.
pub fn validate_labels(labels: &[String]) -> Result<()> {
    for l in labels {
        if l.is_empty() || !l.chars().all(|c| c.is_alphanumeric() || "_-.".contains(c)) {
            return Err(Error::invalid(
                "label",
                l,
                "use letters, digits, '_', '-' and '.'",
            ));
        }
    }
    Ok(())
}

/// Parse a duration such as `90` (seconds), `90s`, `500ms`, `30m`, `1h30m`, `2h 15m` or
/// `1d`, through [`humantime`]; it must be more than zero.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let d = parse_wait(s)?;
    if d.is_zero() {
        return Err(Error::invalid("duration", s, "must be more than zero"));
    }
    Ok(d)
}

/// [`parse_duration`], where zero (`0s`) is allowed too (a backoff).
pub fn parse_wait(s: &str) -> Result<Duration> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        // A bare number is seconds, as it always was.
        return t
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| Error::invalid("duration", s, "the number is too large"));
    }
    humantime::parse_duration(t).map_err(|e| {
        Error::invalid(
            "duration",
            s,
            format!("{e}; expected a number with ms, s, m, h or d (e.g. 30s, 1h30m)"),
        )
    })
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

    /// Find a node by ID prefix (at least 4 hex digits, or the full ID).
    pub fn node(&self, prefix: &str) -> Result<(NodeId, NodeSpec)> {
        // A name first (names are not hex-only... but may be: the name wins).
        let snap = self.store().snapshot()?;
        if let Some(id) = crate::lifecycle::named(&snap, prefix)? {
            if let Some(spec) = snap.read_json::<NodeSpec>(&paths::node(&id))? {
                return Ok((id, spec));
            }
        }
        let p = prefix.to_ascii_lowercase();
        if p.len() < 4 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::invalid(
                "node",
                prefix,
                "expected a node name or at least 4 hex digits of a node ID",
            ));
        }
        // The prefix names the fanned-out directory holding its node (retired nodes too:
        // their history stays readable), so only that directory is read.
        let dir = format!("nodes/{}/{}", &p[..1], &p[1..2]);
        let candidates: Vec<String> = snap
            .list(&dir)?
            .into_iter()
            .filter(|e| !e.is_dir && e.name.starts_with(&p) && e.name.ends_with(".json"))
            .map(|e| e.name)
            .collect();
        let name =
            crate::id::resolve_prefix("node", &p, &candidates, |n| n[..8].to_owned(), |_, _| true)?;
        let spec: NodeSpec = snap
            .read_json(&format!("{dir}/{name}"))?
            .ok_or_else(|| Error::not_found("node", prefix))?;
        Ok((spec.id(), spec))
    }

    /// Every run of `node`, newest first.
    pub fn node_runs(&self, node: &NodeId) -> Result<Vec<RunRecord>> {
        let snap = self.store().snapshot()?;
        let mut runs = crate::records::indexed_runs(&snap, &paths::node_runs_dir(node))?;
        // Runs queued or executing are in the queue until they end.
        let queue = self.run_queue();
        let queued = queue
            .pending()?
            .into_iter()
            .chain(queue.claimed()?.into_iter().map(|(r, _)| r))
            .filter(|r| r.node == *node);
        for r in queued {
            match runs.iter_mut().find(|x| x.id == r.id) {
                // An ended record stands: a queue entry beside it was left by a process
                // that died after recording the run and before leaving the queue.
                Some(x) if x.status.is_ended() => {}
                Some(x) => *x = r,
                None => runs.push(r),
            }
        }
        runs.sort_by(|a, b| {
            b.queued_ms
                .cmp(&a.queued_ms)
                .then(b.attempt.cmp(&a.attempt))
                .then(b.id.cmp(&a.id))
        });
        Ok(runs)
    }

    /// Find a run by ID prefix (at least 4 hex digits).
    pub fn run_record(&self, prefix: &str) -> Result<RunRecord> {
        let p = prefix.to_ascii_lowercase();
        if p.len() < 4 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::invalid(
                "run ID",
                prefix,
                "expected at least 4 hex digits",
            ));
        }
        let snap = self.store().snapshot()?;
        let dir = paths::run_dir(&p);
        let mut candidates: Vec<String> = snap
            .list(&dir)?
            .into_iter()
            .filter(|e| e.name.ends_with(".json") && e.name.starts_with(&p))
            .map(|e| e.name)
            .collect();
        // Runs still queued or executing.
        let queue = self.run_queue();
        let queued: Vec<RunRecord> = queue
            .pending()?
            .into_iter()
            .chain(queue.claimed()?.into_iter().map(|(r, _)| r))
            .filter(|r| r.id.to_hex().starts_with(&p))
            .collect();
        for r in &queued {
            let name = format!("{}.json", r.id.to_hex());
            if !candidates.contains(&name) {
                candidates.push(name);
            }
        }
        let name =
            crate::id::resolve_prefix("run", &p, &candidates, |n| n[..8].to_owned(), |_, _| true)?;
        let recorded: Option<RunRecord> = snap.read_json(&format!("{dir}/{name}"))?;
        if let Some(r) = recorded.filter(|r| r.status.is_ended()) {
            return Ok(r);
        }
        if let Some(r) = queued
            .into_iter()
            .find(|r| format!("{}.json", r.id.to_hex()) == *name)
        {
            return Ok(r);
        }
        snap.read_json(&format!("{dir}/{name}"))?
            .ok_or_else(|| Error::not_found("run", prefix))
    }

    /// The captured output of a run (secrets replaced by `***`), followed by its hook's
    /// output when a hook ran.
    pub fn run_log(&self, run: &RunId) -> Result<String> {
        let snap = self.store().snapshot()?;
        let mut log = snap
            .read(&paths::run_log(run))?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if let Some(hook) = snap.read(&paths::run_hook_log(run))? {
            if !log.is_empty() && !log.ends_with('\n') {
                log.push('\n');
            }
            log.push_str(&String::from_utf8_lossy(&hook));
        }
        Ok(log)
    }

    /// The input versions a node would run on now (pinned where pinned, else latest).
    pub fn current_inputs(&self, node: &NodeSpec) -> Result<Vec<SourceVersion>> {
        let snap = self.store().snapshot()?;
        current_inputs(&snap, node)
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
            .blob_id(&crate::lifecycle::retired_path(node_id))?
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
        let every = self.config().lease() / 6;
        let renew = tokio::spawn({
            let queue = self.run_queue().clone();
            let run = record.id;
            async move {
                loop {
                    tokio::time::sleep(every).await;
                    let _ = queue.renew(&run);
                }
            }
        });
        let node = node.clone();
        let mut read_files = BTreeMap::new();
        let result = match self.dispatcher.clone() {
            Some(d) => self.execute_remote(&d, &node, &record, timeout).await,
            None => self
                .execute(&node, &record, timeout, &mut read_files)
                .await
                .map(|(log, exec)| (log, exec, None)),
        };
        renew.abort();
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
                    for (sv, info) in &outputs {
                        crate::records::update_state(tx, &sv.source, |spec| {
                            spec.latest = Some(sv.version.clone());
                        })?;
                        record_version(tx, &sv.source, info, Some(&rec))?;
                    }
                    Ok(())
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
                record.status = RunStatus::Failure;
                record.exit_code = code;
                record.error = error.map(|e| self.secrets().redact(&e));
                self.finish_run(
                    &claim,
                    &record,
                    &log,
                    &format!(
                        "run {} of node {}: failure",
                        record.id.short(),
                        node_id.short()
                    ),
                    |_| Ok(()),
                )?;
                if let Some(hook) = &node.on_failure {
                    self.hook(hook, &record, "failure").await;
                }
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
                    |tx| {
                        for (sv, info) in &published {
                            crate::records::update_state(tx, &sv.source, |spec| {
                                spec.latest = Some(sv.version.clone());
                            })?;
                            record_version(tx, &sv.source, info, Some(&rec))?;
                        }
                        Ok(())
                    },
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
            Exec::Error(e) => {
                record.status = RunStatus::Failure;
                record.error = Some(self.secrets().redact(&e));
                self.finish_run(
                    &claim,
                    &record,
                    &log,
                    &format!(
                        "run {} of node {}: failure",
                        record.id.short(),
                        node_id.short()
                    ),
                    |_| Ok(()),
                )?;
                if let Some(hook) = &node.on_failure {
                    self.hook(hook, &record, "failure").await;
                }
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

    /// Complete or roll back the runs whose process died while publishing their outputs
    /// (a [`PublishIntent`](crate::queue::PublishIntent) with a dead holder), settle the
    /// runs whose settler died in turn, and record `interrupted` the other runs whose
    /// worker died. A run whose every output was published is recorded
    /// `success` with those versions as its outputs, each with its provenance (as its own
    /// process would have); a run that published nothing is recorded `interrupted`. Returns
    /// the records written. Called before polls, passes and runs, so that a version made by
    /// a node always carries its run.
    pub async fn recover_publishing(&self) -> Result<Vec<RunRecord>> {
        let queue = self.run_queue().clone();
        queue.requeue_unstarted(self.config().lease())?;
        let intents: BTreeMap<RunId, crate::queue::PublishIntent> = queue
            .intents()?
            .into_iter()
            .map(|i| (i.run.id, i))
            .collect();
        let mut mine: Vec<(RunRecord, Option<crate::queue::PublishIntent>)> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (claim, _) in queue.claimed()? {
            seen.insert(claim.id);
            let Some(intent) = intents.get(&claim.id) else {
                continue;
            };
            // A run publishing is waited for while its process lives, however long it was
            // stopped: publishing cannot be fenced, so taking it over could leave its
            // process to publish after the run was settled.
            if !self.holder_gone(&claim) {
                continue;
            }
            if let Some(rec) = queue.take_over(&claim.id)? {
                mine.push((rec, Some(intent.clone())));
            }
        }
        for rec in queue.take_over_settling(self.config().lease())? {
            seen.insert(rec.id);
            let intent = intents.get(&rec.id).cloned();
            mine.push((rec, intent));
        }
        // An intent left without any claim: its process died while leaving the queue
        // (the result is recorded), or between taking the claim over and settling it.
        let snap = self.store().snapshot()?;
        for (id, intent) in &intents {
            if seen.contains(id) || queue.settling(id)? {
                continue;
            }
            let ended = snap
                .read_json::<RunRecord>(&paths::run(id))?
                .is_some_and(|r| r.status != RunStatus::Running && r.status != RunStatus::Pending);
            if ended {
                queue.finish(id)?;
            } else if queue.adopt(intent, self.config().lease())? {
                mine.push((intent.run.clone(), Some(intent.clone())));
            }
        }
        let mut out = Vec::new();
        for (rec, intent) in mine {
            let done = match intent {
                None => self.record_interrupted(rec, |rec| {
                    format!(
                        "its worker {} died or stopped renewing its lease",
                        rec.worker.as_deref().unwrap_or("-")
                    )
                })?,
                Some(intent) => self.complete_publish(intent).await?,
            };
            out.extend(done);
        }
        // And the runs whose worker died before publishing, whatever their inputs (a run
        // on inputs that have moved on is otherwise never looked at again).
        let claimed: Vec<RunRecord> = queue.claimed()?.into_iter().map(|(r, _)| r).collect();
        let refs: Vec<&RunRecord> = claimed.iter().collect();
        out.extend(self.settle_interrupted(&refs)?);
        self.sweep_leftovers()?;
        Ok(out)
    }

    /// Remove the scratch directories and live logs of runs no one holds any more: a
    /// process whose claim was taken over while it was stopped may go on to create them
    /// after its run was settled, then be killed. The directories are listed before the
    /// claims, so a run claimed meanwhile (claims come first) is never swept.
    fn sweep_leftovers(&self) -> Result<()> {
        let entries = |dir: &Path| -> Vec<(String, PathBuf)> {
            std::fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let scratch = entries(&self.dkt_dir().join("tmp"));
        let logs = entries(&self.dkt_dir().join("logs"));
        if scratch.is_empty() && logs.is_empty() {
            return Ok(());
        }
        let queue = self.run_queue();
        let mut held: Vec<String> = queue
            .claimed()?
            .into_iter()
            .map(|(r, _)| r.id.to_hex())
            .collect();
        held.extend(queue.intents()?.into_iter().map(|i| i.run.id.to_hex()));
        held.extend(queue.settling_runs()?.into_iter().map(|r| r.to_hex()));
        for (name, path) in scratch {
            let Some(short) = name.strip_prefix("run-").and_then(|r| r.get(..8)) else {
                continue;
            };
            if !held.iter().any(|h| h.starts_with(short)) {
                tracing::info!(dir = %path.display(), "removing the scratch directory of a run no one holds");
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        for (name, path) in logs {
            let Some(hex) = name.strip_suffix(".log") else {
                continue;
            };
            if !held.iter().any(|h| h == hex) {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(())
    }

    /// Whether the process holding `claim` is gone: dead, or (on another machine, where
    /// that cannot be checked) silent for longer than the lease.
    fn holder_gone(&self, claim: &RunRecord) -> bool {
        match claim.worker.as_deref().and_then(pid_alive) {
            Some(alive) => !alive,
            None => self.effective_status(claim) == RunStatus::Interrupted,
        }
    }

    /// Complete (or roll back) the run of `intent`, taken over from its dead holder.
    async fn complete_publish(
        &self,
        intent: crate::queue::PublishIntent,
    ) -> Result<Option<RunRecord>> {
        let snap = self.store().snapshot()?;
        // Which outputs were published: those the intent says, and those whose content
        // moved since publishing began (killed after publishing, before saying so).
        let mut state: Vec<(crate::queue::IntentOutput, Option<crate::VersionInfo>)> = Vec::new();
        for o in &intent.outputs {
            let info = match &o.published {
                Some(info) => Some(info.clone()),
                None => {
                    // Content that moved since, and that no one recorded yet (a version
                    // already recorded is another run's or a poll's, not this one's).
                    let spec = read_source(&snap, &o.source)?;
                    let now = self.open_source(&spec)?.latest().await?;
                    let moved = Some(&now.version) != o.before.as_ref();
                    let recorded = snap
                        .blob_id(&paths::version(&o.source, &now.version))?
                        .is_some();
                    (moved && !recorded).then_some(now)
                }
            };
            state.push((o.clone(), info));
        }
        let published = state.iter().filter(|(_, i)| i.is_some()).count();
        let who = worker_id();
        let dead = intent.run.worker.clone().unwrap_or_else(|| "-".to_owned());
        if published == 0 {
            return self.record_interrupted(intent.run, |_| {
                format!(
                    "its worker {dead} died or stopped while publishing its outputs, before any \
                     was published: nothing was published (rolled back by {who})"
                )
            });
        }
        // Some but not all: the rest are published now from where the run staged them.
        let mut lost = Vec::new();
        for (o, info) in state.iter_mut() {
            if info.is_some() {
                continue;
            }
            let spec = read_source(&snap, &o.source)?;
            let source = self.open_source(&spec)?;
            if std::fs::symlink_metadata(&o.stage).is_ok() {
                match source.publish(&o.stage).await {
                    Ok(i) => *info = Some(i),
                    Err(e) => {
                        lost.push(format!("{}: {}", o.source, crate::project::error_chain(&e)))
                    }
                }
            } else {
                lost.push(format!("{}: its staged content is gone", o.source));
            }
        }
        let mut record = intent.run.clone();
        record.ended_ms = Some(now_ms());
        record.lease_until_ms = None;
        let outputs: Vec<(SourceVersion, crate::VersionInfo)> = state
            .into_iter()
            .filter_map(|(o, info)| {
                info.map(|info| {
                    (
                        SourceVersion {
                            source: o.source,
                            version: info.version.clone(),
                        },
                        info,
                    )
                })
            })
            .collect();
        record.outputs = outputs.iter().map(|(sv, _)| sv.clone()).collect();
        let mut log = std::fs::read_to_string(self.live_log_path(&record.id)).unwrap_or_default();
        if !log.is_empty() && !log.ends_with('\n') {
            log.push('\n');
        }
        if lost.is_empty() {
            record.status = RunStatus::Success;
            record.exit_code = Some(0);
            log.push_str(&format!(
                "[dkt: worker {dead} died after publishing the outputs and before recording the run; \
                 recorded by {who}]\n"
            ));
        } else {
            record.status = RunStatus::Failure;
            record.exit_code = Some(0);
            record.error = Some(format!(
                "its worker {dead} died while publishing its outputs; {} could not be completed ({})",
                lost.len(),
                lost.join("; ")
            ));
        }
        let log = self.secrets().redact(&log);
        let rec = sealed_run(&record, Some(&log))?;
        let message = format!(
            "run {} of node {}: {} (recovered after its worker died publishing)",
            rec.id.short(),
            rec.node.short(),
            rec.status
        );
        let (recorded, _) = self.store().transact(&message, |tx| {
            if let Some(now) = tx.read_json::<RunRecord>(&paths::run(&rec.id))? {
                if now.status != RunStatus::Running && now.status != RunStatus::Pending {
                    return Ok(false);
                }
            }
            write_run(tx, &rec, Some(&log))?;
            for (sv, info) in &outputs {
                crate::records::update_state(tx, &sv.source, |spec| {
                    spec.latest = Some(sv.version.clone());
                })?;
                record_version(tx, &sv.source, info, Some(&rec))?;
            }
            Ok(true)
        })?;
        self.run_queue().finish(&rec.id)?;
        self.remove_leftovers(&rec.id);
        if !recorded {
            return Ok(None);
        }
        tracing::warn!(run = %rec.id.short(), status = %rec.status, "recovered a run whose worker died publishing its outputs");
        if rec.status == RunStatus::Success {
            self.drop_obsolete_pending(&rec);
            self.attach_statements(&rec).await;
        }
        for o in &rec.outputs {
            self.events().send(crate::events::Event::VersionRecorded {
                source: o.source.clone(),
                version: o.version.clone(),
            });
        }
        Ok(Some(rec))
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
        let scratch = tempfile::Builder::new()
            .prefix(&format!("run-{}-", record.id.short()))
            .tempdir_in(ensure_dir(&self.dkt_dir().join("tmp"))?)
            .at(self.dkt_dir().join("tmp"))?;
        let work = ensure_dir(&scratch.path().join("work"))?;
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

    /// Execute a run on a remote worker through `d` (see [`crate::remote`]): ship what
    /// the worker cannot reach, dispatch the ticket, wait, bring the outputs back into
    /// staging directories and publish them as a local run does. Also returns the worker
    /// that executed it.
    async fn execute_remote(
        &self,
        d: &Arc<dyn crate::remote::Dispatcher>,
        node: &NodeSpec,
        record: &RunRecord,
        timeout: Option<Duration>,
    ) -> Result<(String, Exec, Option<ExecutedBy>)> {
        use crate::remote::{self, Materialize, Ticket, TicketInput, TicketOutput};
        // Refused before anything is shipped: a workers file that is set but missing.
        let trusted = crate::signing::coordinator_workers(self)?;
        let snap = self.store().snapshot()?;
        let scratch = tempfile::Builder::new()
            .prefix(&format!("run-{}-", record.id.short()))
            .tempdir_in(ensure_dir(&self.dkt_dir().join("tmp"))?)
            .at(self.dkt_dir().join("tmp"))?;
        let scratch_real = std::fs::canonicalize(scratch.path()).at(scratch.path())?;
        let mut scope = Scope::default();
        let mut inputs = Vec::new();
        for sv in &record.inputs {
            let spec = self.localized(&read_source(&snap, &sv.source)?);
            let source = self.open_source(&spec)?;
            let from = if remote::shipped_kind(&spec) {
                let key = remote::version_key(&spec, &sv.version);
                let tree = match d.shipped(&key).await? {
                    Some(t) => t,
                    None => {
                        let dir = ensure_dir(&scratch.path().join(format!("in-{}", sv.source)))?;
                        let root = source.materialize(&sv.version, &dir).await?;
                        d.ship(&key, &root).await?
                    }
                };
                let mut root = PathBuf::from(remote::ROOT_PLACEHOLDER);
                if let Some(f) = &tree.file {
                    root.push(f);
                }
                let fields = source.fields(Some(&sv.version), &root)?;
                scope.add(&sv.source, fields.clone())?;
                Materialize::Artifact {
                    artifact: tree,
                    fields,
                }
            } else {
                let fields =
                    source.fields(Some(&sv.version), Path::new(remote::ROOT_PLACEHOLDER))?;
                scope.add(&sv.source, fields)?;
                Materialize::Kind { spec: spec.clone() }
            };
            inputs.push(TicketInput {
                name: sv.source.clone(),
                version: sv.version.clone(),
                from,
            });
        }
        let mut outputs = Vec::new();
        let mut staged: Vec<Staged> = Vec::new();
        for name in &node.outputs {
            let spec = self.localized(&read_source(&snap, name)?);
            let source = self.open_source(&spec)?;
            let current = match spec.current() {
                None => None,
                Some(v) => {
                    let key = remote::version_key(&spec, v);
                    Some(match d.shipped(&key).await? {
                        Some(t) => t,
                        None => {
                            let tmp = ensure_dir(&scratch.path().join(format!("cur-{name}")))?;
                            let root = match source.materialize(v, &tmp).await {
                                Ok(root) => root,
                                Err(e) => {
                                    return Ok((
                                        String::new(),
                                        Exec::Error(format!(
                                            "output {name}: its current version {v} cannot be read back: {}",
                                            crate::project::error_chain(&e)
                                        )),
                                        None,
                                    ))
                                }
                            };
                            d.ship(&key, &root).await?
                        }
                    })
                }
            };
            let fields = source.fields(None, Path::new(remote::ROOT_PLACEHOLDER))?;
            scope.add(name, fields.clone())?;
            outputs.push(TicketOutput {
                name: name.clone(),
                current,
                fields,
            });
            staged.push((
                name.clone(),
                source,
                scratch.path().join(format!("out-{name}")),
                spec.current().cloned(),
            ));
        }
        // Which variables and secrets the command uses: the values of variables travel,
        // secrets only by name (the worker has its own).
        self.add_private(&mut scope);
        self.plan(node, &scope, None)?;
        let mut vars = BTreeMap::new();
        let mut secrets = Vec::new();
        for (k, v) in scope.used_private() {
            if self.secrets().get(&k).is_some() {
                secrets.push(k);
            } else {
                vars.insert(k, v);
            }
        }
        let sandbox = self.sandboxed(node);
        let ticket = Ticket {
            format: if sandbox {
                remote::TICKET_FORMAT_SANDBOX
            } else {
                remote::TICKET_FORMAT
            },
            sandbox,
            network: sandbox && node.network,
            run: record.id,
            node: record.node,
            attempt: record.attempt,
            labels: node.labels.clone(),
            command: node.command.clone(),
            script: self.node_script(node)?,
            inputs,
            outputs,
            vars,
            secrets,
            settings: self.config().kind.clone(),
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
            artifacts: d.artifacts_url(),
            lease_ms: self.config().lease().as_millis() as u64,
        };
        self.events().send(crate::events::Event::RunStarted {
            run: record.id,
            node: record.node,
        });
        let sent = ticket.clone();
        let result = d.dispatch(ticket, self.cancel_token()).await?;
        let log = self.secrets().redact(&result.log);
        let mut by = ExecutedBy {
            worker: result.worker.clone(),
            key: None,
        };
        // A result from a worker is signed by its key, over what it ran and produced; the
        // dispatcher's own (a run cancelled, or whose worker was lost) is not.
        let made_here = result.signature.is_none()
            && matches!(
                result.ending,
                remote::Ending::Cancelled | remote::Ending::Interrupted { .. }
            );
        if !made_here {
            match remote::check_result(&sent, &result, trusted.as_ref()) {
                Ok(key) => by.key = Some(key),
                Err(why) => {
                    tracing::warn!(run = %record.id.short(), "{why}");
                    return Ok((log, Exec::Error(why), Some(by)));
                }
            }
        }
        let worker = Some(by);
        let exec = match result.ending {
            remote::Ending::Success { outputs: shipped } => {
                for (name, _, stage, _) in &staged {
                    let Some(tree) = shipped.get(name) else {
                        return Ok((
                            log,
                            Exec::Error(format!(
                                "worker {} sent no content for output {name}",
                                result.worker
                            )),
                            worker,
                        ));
                    };
                    ensure_dir(stage)?;
                    if let Err(e) = d.fetch(tree, stage).await {
                        return Ok((
                            log,
                            Exec::Error(format!(
                                "output {name}: {}; nothing was published",
                                crate::project::error_chain(&e)
                            )),
                            worker,
                        ));
                    }
                }
                let (log, exec) = self
                    .publish_staged(node, record, log, scratch, &scratch_real, staged)
                    .await?;
                return Ok((log, exec, worker));
            }
            remote::Ending::Failed { code, error } => Exec::Failed { code, error },
            remote::Ending::Cancelled => Exec::Cancelled,
            remote::Ending::Interrupted { why } => Exec::Interrupted(why),
            remote::Ending::Error { message } => Exec::Error(message),
        };
        Ok((log, exec, worker))
    }

    /// After a run's command succeeded: check the claim is still this process's, check
    /// each output's staging directory, and publish them.
    async fn publish_staged(
        &self,
        node: &NodeSpec,
        record: &RunRecord,
        log: String,
        scratch: tempfile::TempDir,
        scratch_real: &Path,
        outputs: Vec<Staged>,
    ) -> Result<(String, Exec)> {
        // The claim must still be this process's: if it was paused for longer than its
        // lease, another process may have declared it interrupted and run it again, and
        // this older result must not be published over the newer one.
        if let Err(why) = self.confirm_claim(record) {
            return Ok((log, Exec::Superseded(why)));
        }
        // A node may have replaced an output's ROOT (or the scratch area around it) with a
        // symbolic link: publishing would then move whatever it points to. Only a real
        // directory at the very path dtk made is published.
        for (name, _, stage, _) in &outputs {
            if let Err(why) = check_stage(scratch_real, stage) {
                return Ok((
                    log,
                    Exec::Error(format!(
                        "output {name}: {why}; nothing was published (a node writes into ${{{name}:ROOT}}, it does not replace it)"
                    )),
                ));
            }
        }
        // Publish only to outputs still at the version the run started from (unless the
        // node says `on-conflict: overwrite`): all are checked before any is published,
        // and each kind checks again as it publishes.
        let overwrite = node.on_conflict == Some(crate::model::OnConflict::Overwrite);
        let manifest = crate::digest::input_manifest(record)?;
        let options = |expected: &Option<crate::Version>| {
            crate::source::PublishOptions::new()
                .expecting(expected.clone())
                .with_overwrite(overwrite)
                .for_run(record.id.to_hex(), record.node.to_hex())
                .with_manifest(manifest.clone())
        };
        let mut moved = None;
        if !overwrite {
            for (_, source, _, expected) in &outputs {
                if !source.capabilities().publish {
                    continue; // its publish says so, clearly
                }
                match crate::source::check_expected(source.as_ref(), &options(expected)).await {
                    Ok(()) => {}
                    Err(e @ Error::OutputMoved { .. }) => {
                        moved = Some(e);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let mut published = Vec::new();
        if moved.is_none() {
            // The intent goes first: killed from here on, this run is completed (or rolled
            // back) by the next process that looks, never left for a poll to record its
            // outputs as versions without provenance.
            let fresh = self.store().snapshot()?;
            let mut intent = crate::queue::PublishIntent {
                run: record.clone(),
                outputs: Vec::new(),
            };
            for (name, _, stage, _) in &outputs {
                intent.outputs.push(crate::queue::IntentOutput {
                    source: name.clone(),
                    before: read_source(&fresh, name)?.latest,
                    stage: stage.clone(),
                    published: None,
                });
            }
            if !outputs.is_empty() {
                self.run_queue().write_intent(&intent, true)?;
            }
            for (i, (name, source, stage, expected)) in outputs.into_iter().enumerate() {
                // Fenced before each output: a claim taken over meanwhile (this process
                // was stopped past its lease) publishes nothing more; its taker completes
                // it.
                let held = self
                    .run_queue()
                    .get(&record.id)?
                    .is_some_and(|q| still_ours(&q, record).is_ok());
                if !held {
                    return Ok((
                        log,
                        Exec::Superseded(format!(
                            "run {} (attempt {}) was taken over while it published its outputs \
                             ({i} of {} published; the process that took it over records them)",
                            record.id.short(),
                            record.attempt,
                            intent.outputs.len()
                        )),
                    ));
                }
                test_pause("publish");
                match source.publish_with(&stage, &options(&expected)).await {
                    Ok(info) => {
                        test_pause("published");
                        intent.outputs[i].published = Some(info.clone());
                        self.run_queue().write_intent(&intent, false)?;
                        published.push((
                            SourceVersion {
                                source: name,
                                version: info.version.clone(),
                            },
                            info,
                        ));
                    }
                    Err(e @ Error::OutputMoved { .. }) => {
                        moved = Some(e);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(e) = moved {
            // What the run wrote stays where it is, for the user to look at or merge.
            let staging = scratch.keep();
            return Ok((
                log,
                Exec::Conflict {
                    why: e.to_string(),
                    staging,
                    published,
                },
            ));
        }
        test_pause("record");
        Ok((log, Exec::Success(published)))
    }

    /// Check every `${...}` of the node's command (and script file) against the fields of
    /// its sources and the known variables, without running anything.
    pub fn check_variables(&self, node: &NodeSpec) -> Result<()> {
        let snap = self.store().snapshot()?;
        self.check_variables_with(node, |name| read_source(&snap, name))
    }

    /// [`Project::check_variables`] with the node's sources looked up by `lookup` (so
    /// that sources not recorded yet, as in a pipeline file, can be checked too).
    pub(crate) fn check_variables_with(
        &self,
        node: &NodeSpec,
        lookup: impl Fn(&Name) -> Result<SourceSpec>,
    ) -> Result<()> {
        let mut scope = Scope::default();
        for name in node.inputs.iter().chain(&node.outputs) {
            let spec = lookup(name)?;
            let source = self.open_source(&spec)?;
            let fields = source.fields(spec.current(), Path::new("/nonexistent"))?;
            scope.add(name, fields)?;
        }
        self.add_private(&mut scope);
        self.plan(node, &scope, None).map(|_| ())
    }

    /// The sandbox a run of `node` executes in (`sandbox: true`, `--sandbox`): the
    /// project's directory read-only with its `.dkt` hidden, the inputs (`inputs`) and
    /// the scratch area's rendered script read-only, `writable` (the outputs' staging
    /// directories) and the work directory writable, the network only if the node
    /// declares it. `env` becomes the whole environment: it gets `PATH` (dkt's own) and
    /// `HOME`/`TMPDIR` (`/tmp`), nothing else of dkt's environment.
    pub(crate) fn sandbox_view(
        &self,
        node: &NodeSpec,
        scratch: &Path,
        work: &Path,
        inputs: Vec<PathBuf>,
        mut writable: Vec<PathBuf>,
        env: &mut Vec<(String, String)>,
    ) -> crate::process::Sandbox {
        let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        let mut read_only: Vec<PathBuf> = inputs.iter().map(|p| real(p)).collect();
        read_only.push(real(&scratch.join("script")));
        writable.push(work.to_owned());
        let path =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned());
        env.push(("PATH".to_owned(), path));
        env.push(("HOME".to_owned(), "/tmp".to_owned()));
        env.push(("TMPDIR".to_owned(), "/tmp".to_owned()));
        crate::process::Sandbox {
            visible: vec![real(self.root())],
            hide: vec![real(self.dkt_dir())],
            read_only,
            writable: writable.iter().map(|p| real(p)).collect(),
            network: node.network,
            trace: None,
        }
    }

    pub(crate) fn add_private(&self, scope: &mut Scope) {
        for (k, v) in &self.config().vars {
            scope.private.insert(k.clone(), v.clone());
        }
        for (k, v) in self.secrets().iter() {
            if crate::config::KIND_CREDENTIALS.contains(&k) {
                scope.credentials.insert(k.to_owned());
                continue;
            }
            scope.private.insert(k.to_owned(), v.to_owned());
        }
    }

    /// The processes to run, as argv lists; script files are rendered into `scratch`
    /// (with `None`, only checked).
    pub(crate) fn plan(
        &self,
        node: &NodeSpec,
        scope: &Scope,
        scratch: Option<&Path>,
    ) -> Result<Vec<Vec<String>>> {
        plan_steps(
            &node.command,
            self.node_script(node)?.as_deref(),
            scope,
            scratch,
        )
    }

    /// The recorded content of the node's script file (never today's file); a node
    /// defined before scripts were recorded (or being checked before it is defined) reads
    /// the file.
    fn node_script(&self, node: &NodeSpec) -> Result<Option<String>> {
        if !matches!(&node.command, Command::Argv(_)) {
            return Ok(None);
        }
        Ok(match self.script_content(node)? {
            Some(text) => Some(text),
            None => self
                .script_file(node)?
                .map(|(_, content)| String::from_utf8(content).unwrap_or_default()),
        })
    }
}

/// The processes to run for `command`, as argv lists: shell lines through `sh -c`, a
/// script (its content `script`) rendered into `scratch` (with `None`, only checked).
pub(crate) fn plan_steps(
    command: &Command,
    script: Option<&str>,
    scope: &Scope,
    scratch: Option<&Path>,
) -> Result<Vec<Vec<String>>> {
    match command {
        Command::Script(lines) => lines
            .iter()
            .map(|l| Ok(vec!["sh".into(), "-c".into(), scope.rewrite(l)?]))
            .collect(),
        Command::Argv(argv) => {
            let first = argv
                .first()
                .ok_or_else(|| Error::invalid("command", "", "empty command"))?;
            if let Some(text) = script {
                let rendered = scope.rewrite(text)?;
                let copy = scratch.unwrap_or(Path::new("/nonexistent")).join("script");
                if scratch.is_some() {
                    std::fs::write(&copy, rendered).at(&copy)?;
                }
                let mut out = if text.starts_with("#!") {
                    use std::os::unix::fs::PermissionsExt;
                    if scratch.is_some() {
                        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
                            .at(&copy)?;
                    }
                    vec![copy.display().to_string()]
                } else {
                    vec!["sh".into(), copy.display().to_string()]
                };
                for a in &argv[1..] {
                    out.push(scope.substitute(a)?);
                }
                Ok(vec![out])
            } else if argv.len() == 1 {
                Ok(vec![vec!["sh".into(), "-c".into(), scope.rewrite(first)?]])
            } else {
                Ok(vec![argv
                    .iter()
                    .map(|a| scope.substitute(a))
                    .collect::<Result<_>>()?])
            }
        }
    }
}

/// How a run's steps ended, when not all of them succeeded.
#[derive(Debug)]
pub(crate) enum StepsEnded {
    /// A step failed: its exit code, or what happened.
    Failed {
        code: Option<i32>,
        error: Option<String>,
    },
    /// The run was cancelled.
    Cancelled,
}

impl Project {
    /// The environment of a run's command: `DKT_PROJECT_ROOT`, `DKT_RUN_ID` and
    /// `DKT_NODE_ID`, then the scope's variables, then the private values it uses (the
    /// same for a run and for its reproduction).
    pub(crate) fn run_env(
        &self,
        run: RunId,
        node: NodeId,
        scope: &Scope,
        private: impl IntoIterator<Item = (String, String)>,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            (
                "DKT_PROJECT_ROOT".to_owned(),
                self.root().display().to_string(),
            ),
            ("DKT_RUN_ID".to_owned(), run.to_hex()),
            ("DKT_NODE_ID".to_owned(), node.to_hex()),
        ];
        env.extend(scope.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(private);
        env
    }
}

/// Run `steps` in order in `work`, stopping at the first that does not succeed; `None`
/// when all succeeded.
pub(crate) async fn run_steps(
    steps: &[Vec<String>],
    work: &Path,
    env: &[(String, String)],
    sandbox: Option<&crate::process::Sandbox>,
    timeout: Option<Duration>,
    cancel: &tokio_util::sync::CancellationToken,
    sink: &crate::process::Sink,
) -> Option<StepsEnded> {
    for step in steps {
        let ended = crate::process::run(
            crate::process::Step {
                argv: step,
                cwd: work,
                env: env.to_vec(),
                sandbox,
            },
            timeout,
            cancel,
            sink,
        )
        .await;
        match ended {
            crate::process::Ended::Exited(status) if status.success() => {}
            crate::process::Ended::Exited(status) => {
                use std::os::unix::process::ExitStatusExt;
                let error = status.signal().map(|s| format!("killed by signal {s}"));
                return Some(StepsEnded::Failed {
                    code: status.code(),
                    error,
                });
            }
            crate::process::Ended::NotStarted(error) => {
                return Some(StepsEnded::Failed {
                    code: None,
                    error: Some(error),
                })
            }
            crate::process::Ended::TimedOut(t) => {
                let shown = format!("{}s", t.as_secs());
                sink.note(&format!(
                    "[dkt: timed out after {shown}; process group killed]"
                ));
                return Some(StepsEnded::Failed {
                    code: None,
                    error: Some(format!("timed out after {shown}")),
                });
            }
            crate::process::Ended::Cancelled => {
                sink.note("[dkt: cancelled (SIGINT/SIGTERM); process group ended]");
                return Some(StepsEnded::Cancelled);
            }
        }
    }
    None
}

/// An output being staged: its name, its source, its staging directory and the version
/// the run started from.
type Staged = (Name, Arc<dyn Source>, PathBuf, Option<crate::Version>);

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

/// The input versions `node` would run on in `snap` (pinned where pinned, else latest).
pub(crate) fn current_inputs_of(snap: &Snapshot, node: &NodeSpec) -> Result<Vec<SourceVersion>> {
    current_inputs(snap, node)
}

fn current_inputs(snap: &Snapshot, node: &NodeSpec) -> Result<Vec<SourceVersion>> {
    let mut inputs = Vec::new();
    for name in &node.inputs {
        let spec = read_source(snap, name)?;
        let version = spec.current().cloned().ok_or_else(|| {
            Error::Conflict(format!(
                "input {name:?} has no version yet: run `dkt source update {name}`"
            ))
        })?;
        inputs.push(SourceVersion {
            source: name.clone(),
            version,
        });
    }
    inputs.sort();
    Ok(inputs)
}

/// The variables of a run.
#[derive(Default)]
pub(crate) struct Scope {
    /// `${SOURCE:FIELD}` -> environment variable name.
    names: BTreeMap<(String, String), String>,
    /// Exported variables `DKT_SOURCE_FIELD` -> value.
    pub(crate) env: BTreeMap<String, String>,
    /// `${NAME}` private variables and secrets.
    pub(crate) private: BTreeMap<String, String>,
    /// The names of the kinds' credentials held as secrets (never given to a command).
    credentials: std::collections::BTreeSet<String>,
    /// The private names the command referred to (filled while planning).
    used: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Which variable name came from which `SOURCE:FIELD`, to detect collisions.
    owners: BTreeMap<String, String>,
}

/// `DKT_<SOURCE>_<FIELD>`: upper case, other characters as `_`.
pub fn env_name(source: &str, field: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("DKT_{}_{}", clean(source), clean(field))
}

impl Scope {
    pub(crate) fn add(&mut self, source: &Name, fields: Fields) -> Result<()> {
        for (field, value) in fields {
            let var = env_name(source.as_str(), &field);
            let owner = format!("{source}:{field}");
            if let Some(other) = self.owners.get(&var) {
                if other != &owner {
                    return Err(Error::Conflict(format!(
                        "${{{owner}}} and ${{{other}}} would both be exported as {var}: rename one of the sources"
                    )));
                }
            }
            self.owners.insert(var.clone(), owner);
            self.names.insert((source.to_string(), field), var.clone());
            self.env.insert(var, value);
        }
        Ok(())
    }

    /// Visit each `${...}` of `text`, replacing it with what `f` returns (`None`: keep).
    fn each_var(
        &self,
        text: &str,
        mut f: impl FnMut(&str) -> Result<Option<String>>,
    ) -> Result<String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                return Ok(out);
            };
            let inner = &after[..end];
            match f(inner)? {
                Some(rep) => out.push_str(&rep),
                None => out.push_str(&rest[start..start + 2 + end + 1]),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Classify `${inner}`: Some(var name) to export, None to leave to the shell.
    ///
    /// dtk's are `${SOURCE:FIELD}` (a valid source name, a field name) and `${NAME}` for a
    /// private variable or a secret; everything else (`${f}`, `${1}`, `${X#*:}`,
    /// `${PATH//:/ }`, `${VAR:-default}`, ...) is the shell's, untouched.
    fn resolve(&self, inner: &str) -> Result<Option<(String, String)>> {
        let identifier = |s: &str| {
            s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if let Some((src, field)) = inner.split_once(':') {
            if let Some(var) = self.names.get(&(src.to_owned(), field.to_owned())) {
                return Ok(Some((var.clone(), self.env[var].clone())));
            }
            if !identifier(field) || Name::new(src).is_err() {
                return Ok(None);
            }
            if self.names.keys().any(|(s, _)| s == src) {
                let known: Vec<&str> = self
                    .names
                    .keys()
                    .filter(|(s, _)| s == src)
                    .map(|(_, f)| f.as_str())
                    .collect();
                return Err(Error::invalid(
                    "variable",
                    format!("${{{inner}}}"),
                    format!(
                        "source {src:?} has no field {field:?} (it has {})",
                        known.join(", ")
                    ),
                ));
            }
            return Err(Error::invalid(
                "variable",
                format!("${{{inner}}}"),
                format!("{src:?} is not an input or output of this node"),
            ));
        }
        if identifier(inner) {
            if crate::config::KIND_CREDENTIALS.contains(&inner) && self.credentials.contains(inner)
            {
                return Err(Error::invalid(
                    "variable",
                    format!("${{{inner}}}"),
                    "is a source kind's credential, which commands never receive; store a secret of the node's own with `dkt secret set NAME`",
                ));
            }
            if let Some(v) = self.private.get(inner) {
                if let Ok(mut used) = self.used.lock() {
                    used.insert(inner.to_owned());
                }
                return Ok(Some((inner.to_owned(), v.clone())));
            }
        }
        Ok(None)
    }

    /// The private variables and secrets the command named, with their values: the only
    /// ones exported to it.
    pub(crate) fn used_private(&self) -> Vec<(String, String)> {
        let used = self.used.lock().map(|u| u.clone()).unwrap_or_default();
        self.private
            .iter()
            .filter(|(k, _)| used.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// For shell text: `${SRC:FIELD}` becomes `${DKT_SRC_FIELD}`, expanded by the shell.
    fn rewrite(&self, text: &str) -> Result<String> {
        self.each_var(text, |inner| {
            Ok(self.resolve(inner)?.map(|(var, _)| format!("${{{var}}}")))
        })
    }

    /// For an argument passed without a shell: the value itself.
    fn substitute(&self, text: &str) -> Result<String> {
        self.each_var(text, |inner| {
            Ok(self.resolve(inner)?.map(|(_, value)| value))
        })
    }
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

/// Resolve `SRC:PREFIX` among recorded versions only (no kind history).
pub fn resolve_recorded(project: &Project, text: &str) -> Result<SourceVersion> {
    let (name, prefix) = text
        .split_once(':')
        .ok_or_else(|| Error::invalid("source version", text, "expected SOURCE:VERSION"))?;
    let versions: Vec<_> = project
        .recorded_versions(name)?
        .into_iter()
        .map(|r| r.version)
        .collect();
    let v = resolve_version(prefix, &versions)?;
    Ok(SourceVersion {
        source: Name::new(name)?,
        version: v.clone(),
    })
}

/// The newest attempt of `node` on `inputs`, if any. Attempts are numbered 0, 1, 2, ...
/// without gaps and their IDs are computed, so this probes O(log n) paths instead of
/// reading every run of the node.
/// A successful run of `node` on exactly `inputs`, if there is one: run IDs are derived
/// from the node, the inputs and the attempt number, so the attempts are found by probing
/// (see [`last_attempt`]) and read newest first; no index is kept.
pub(crate) fn succeeded_on(
    snap: &Snapshot,
    node: &NodeId,
    inputs: &[SourceVersion],
) -> Result<Option<RunRecord>> {
    success_up_to(
        snap,
        node,
        inputs,
        last_attempt(snap, node, inputs)?.as_ref(),
    )
}

/// [`succeeded_on`] for a caller that already probed the last attempt, `last`.
pub(crate) fn success_up_to(
    snap: &Snapshot,
    node: &NodeId,
    inputs: &[SourceVersion],
    last: Option<&RunRecord>,
) -> Result<Option<RunRecord>> {
    let Some(last) = last else {
        return Ok(None);
    };
    if last.status == RunStatus::Success {
        return Ok(Some(last.clone()));
    }
    for attempt in (0..last.attempt).rev() {
        let path = paths::run(&RunId::compute(node, inputs, attempt));
        if let Some(r) = snap.read_json::<RunRecord>(&path)? {
            if r.status == RunStatus::Success {
                return Ok(Some(r));
            }
        }
    }
    Ok(None)
}

pub(crate) fn last_attempt(
    snap: &Snapshot,
    node: &NodeId,
    inputs: &[SourceVersion],
) -> Result<Option<RunRecord>> {
    match last_attempt_number(snap, node, inputs)? {
        Some(a) => snap.read_json(&paths::run(&RunId::compute(node, inputs, a))),
        None => Ok(None),
    }
}

/// The number of the last recorded attempt of `node` on `inputs` (see [`last_attempt`]),
/// found by probing which records exist, without reading any.
pub(crate) fn last_attempt_number(
    snap: &Snapshot,
    node: &NodeId,
    inputs: &[SourceVersion],
) -> Result<Option<u32>> {
    let path = |a: u32| paths::run(&RunId::compute(node, inputs, a));
    let exists = |a: u32| -> Result<bool> { Ok(snap.blob_id(&path(a))?.is_some()) };
    // Attempts are recorded in order, except one whose process died: it stays unrecorded
    // until someone settles it, and a later attempt may be recorded first. Such gaps are
    // few; they are looked past.
    let mut first = None;
    for a in 0..ATTEMPT_GAP {
        if exists(a)? {
            first = Some(a);
            break;
        }
    }
    let Some(first) = first else {
        return Ok(None);
    };
    let mut lo = first;
    loop {
        // The end of the run of recorded attempts from `lo`: gallop, then bisect.
        let mut hi = lo.saturating_add(1);
        while exists(hi)? {
            lo = hi;
            hi = hi.saturating_mul(2);
            if lo == u32::MAX {
                break;
            }
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if exists(mid)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        // Then past a gap (one probe a pass: gaps are one dead claim wide), if a later
        // attempt was recorded.
        let next = lo.saturating_add(2);
        if next > lo && exists(next)? {
            lo = next;
        } else {
            return Ok(Some(lo));
        }
    }
}

/// How many unrecorded attempts at the start [`last_attempt`] looks past.
const ATTEMPT_GAP: u32 = 3;

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
