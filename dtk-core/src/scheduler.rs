//! One scheduling pass: poll the sources, then run every node whose current inputs have
//! no successful run yet, in topological order, independent nodes in parallel.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use crate::engine::{RunOptions, RunOutcome};
use crate::project::UpdateOutcome;
use crate::{Error, Name, NodeId, NodeSpec, Project, Result, RunStatus, SourceVersion, Version};

/// How many times a pass runs a node again whose remote worker was lost mid-run.
const REMOTE_RETRIES: usize = 3;

/// Options of [`Project::run_pass`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PassOptions {
    /// At most this many runs at once (at least 1).
    pub jobs: usize,
    /// Only say what would run and why; change nothing (sources are polled, but nothing
    /// is recorded).
    pub dry_run: bool,
    /// Suppose these sources moved to these versions (with `dry_run`: an impact query).
    pub assume: Vec<(Name, Version)>,
    /// Skip polling (use the versions already known).
    pub no_poll: bool,
    /// Options for each run.
    pub run: RunOptions,
}

impl Default for PassOptions {
    fn default() -> Self {
        PassOptions {
            jobs: 1,
            dry_run: false,
            assume: Vec::new(),
            no_poll: false,
            run: RunOptions::new(),
        }
    }
}

impl PassOptions {
    /// One job at a time, for real.
    pub fn new() -> Self {
        Self::default()
    }
    /// At most `jobs` runs at once.
    pub fn with_jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }
    /// Only report what would run.
    pub fn with_dry_run(mut self, yes: bool) -> Self {
        self.dry_run = yes;
        self
    }
    /// Suppose `source` moved to `version`.
    pub fn assuming(mut self, source: Name, version: Version) -> Self {
        self.assume.push((source, version));
        self
    }
    /// Do not poll the sources first.
    pub fn without_polling(mut self, yes: bool) -> Self {
        self.no_poll = yes;
        self
    }
}

/// Why a node runs (or would).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "why")]
pub enum Reason {
    /// The node never ran successfully.
    NeverRan,
    /// Inputs moved since its last successful run.
    InputsMoved {
        /// Each input that moved: source, from, to.
        changes: Vec<InputChange>,
    },
    /// Its run on the current inputs failed, and its retry policy runs it again.
    Retry {
        /// Which retry this is (1 for the first).
        attempt: u32,
        /// How many the policy allows.
        of: u32,
    },
    /// A node upstream runs (or would) first, so its outputs will move.
    Upstream {
        /// The upstream nodes.
        nodes: Vec<String>,
    },
}

/// One input that moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputChange {
    /// The input source.
    pub source: Name,
    /// Its version at the last successful run.
    pub from: Option<Version>,
    /// Its version now.
    pub to: Version,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NeverRan => f.write_str("never ran"),
            Reason::InputsMoved { changes } => {
                let parts: Vec<String> = changes
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {} -> {}",
                            c.source,
                            c.from
                                .as_ref()
                                .map(|v| v.short().to_owned())
                                .unwrap_or_else(|| "-".into()),
                            c.to.short()
                        )
                    })
                    .collect();
                write!(f, "{}", parts.join(", "))
            }
            Reason::Retry { attempt, of } => {
                write!(f, "failed on these inputs; retry {attempt} of {of}")
            }
            Reason::Upstream { nodes } => {
                write!(f, "upstream node {} runs first", nodes.join(", "))
            }
        }
    }
}

/// One node of a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PassItem {
    /// The node.
    pub node: NodeId,
    /// Why it runs.
    pub reason: Reason,
    /// What happened (`None` in a dry run).
    pub outcome: Option<RunOutcome>,
    /// Why it could not run (an input with no version, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a pass did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PassReport {
    /// The polls.
    pub polled: Vec<UpdateOutcome>,
    /// The nodes that ran (or would), in the order they started.
    pub items: Vec<PassItem>,
}

impl PassReport {
    /// True when every run succeeded or is pending for another machine.
    pub fn is_ok(&self) -> bool {
        self.items.iter().all(|i| {
            i.error.is_none()
                && !matches!(&i.outcome, Some(RunOutcome::Ran(r)) if r.status != RunStatus::Success)
        })
    }
}

impl Project {
    /// One scheduling pass (see the module docs).
    pub async fn run_pass(&self, options: PassOptions) -> Result<PassReport> {
        for (name, _) in &options.assume {
            crate::project::read_source(&self.store().snapshot()?, name)?;
        }
        // Every source's declaration and state is read and decoded once a pass: the view
        // they come from serves the rest of the pass unless the polls recorded something.
        let before = self.store().snapshot()?;
        let specs = crate::records::all_sources(&before)?;
        let polled = if options.no_poll {
            if !options.dry_run {
                self.recover_publishing().await?;
            }
            Vec::new()
        } else {
            let to_poll = specs
                .iter()
                .filter(|s| s.pinned.is_none())
                .map(|s| self.localized(s))
                .collect();
            self.poll(to_poll, !options.dry_run).await?
        };
        // In a dry run, polled-but-unrecorded versions count as current.
        let mut assumed: BTreeMap<Name, Version> = BTreeMap::new();
        if options.dry_run {
            for o in &polled {
                if let Some(v) = &o.latest {
                    assumed.insert(o.source.clone(), v.clone());
                }
            }
        }
        for (n, v) in &options.assume {
            assumed.insert(n.clone(), v.clone());
        }
        // With local workers alive, the pass queues runs for them instead of running them
        // here (with a remote queue, every run goes to the remote workers).
        let mut options = options;
        if !options.dry_run && self.dispatcher.is_none() && !self.live_workers()?.is_empty() {
            options.run.queue = true;
        }
        // One view of the records until something runs (then the next level needs a new one).
        let mut snap = self.store().snapshot()?;
        // What a pass plans depends only on the records (and the clock, for retries): a
        // pass that found nothing to run at this very commit, and that the clock did not
        // hold back, is not planned again.
        let noop_memo = self.dkt_dir().join("cache").join(NOOP_MEMO);
        let plain = !options.dry_run && options.assume.is_empty();
        let unchanged = snap.commit() == before.commit();
        if plain && unchanged && read_noop_memo(&noop_memo) == Some(snap.commit()) {
            return Ok(PassReport {
                polled,
                items: Vec::new(),
            });
        }
        let active = crate::project::active_nodes(&snap)?;
        let mut sources = if unchanged {
            specs
                .into_iter()
                .map(|s| {
                    let state = crate::records::SourceState {
                        latest: s.latest,
                        pinned: s.pinned,
                        frozen: s.frozen,
                        heads: s.heads,
                    };
                    (s.name, state)
                })
                .collect()
        } else {
            crate::records::all_states(&snap)?
        };
        let graph = if unchanged {
            crate::project::graph_of(&snap, sources.keys(), &active)?
        } else {
            crate::project::build_graph(&snap)?
        };
        let nodes: BTreeMap<NodeId, NodeSpec> = active.into_iter().collect();
        let order = graph.topo_nodes();
        // Level of each node: 1 + the highest level of the nodes writing its inputs.
        let mut level: BTreeMap<NodeId, usize> = BTreeMap::new();
        for id in &order {
            let spec = &nodes[id];
            let l = spec
                .inputs
                .iter()
                .flat_map(|i| graph.writers(i))
                .filter_map(|w| level.get(&w))
                .map(|l| l + 1)
                .max()
                .unwrap_or(0);
            level.insert(*id, l);
        }
        let mut by_level: BTreeMap<usize, Vec<NodeId>> = BTreeMap::new();
        for id in &order {
            by_level.entry(level[id]).or_default().push(*id);
        }
        let mut items = Vec::new();
        let mut moving: BTreeSet<NodeId> = BTreeSet::new();
        let mut held_back = false;
        let mut succeeded = SucceededMemo::load(self.dkt_dir().join("cache").join(SUCCEEDED_MEMO));
        let semaphore = Arc::new(tokio::sync::Semaphore::new(options.jobs.max(1)));
        for (_, ids) in by_level {
            let mut planned = Vec::new();
            for id in ids {
                let spec = &nodes[&id];
                let upstream: Vec<String> = spec
                    .inputs
                    .iter()
                    .flat_map(|i| graph.writers(i))
                    .filter(|w| moving.contains(w))
                    .map(|w| w.short())
                    .collect();
                let candidates = match candidate_inputs(&sources, spec, &assumed) {
                    Ok(c) => c,
                    Err(e) => {
                        items.push(PassItem {
                            node: id,
                            reason: Reason::NeverRan,
                            outcome: None,
                            error: Some(crate::project::error_chain(&e)),
                        });
                        continue;
                    }
                };
                // More than one candidate: a pattern input follows several refs, and the
                // node runs on each tip that has no successful run.
                let several = candidates.len() > 1;
                let mut any = false;
                for inputs in candidates {
                    match self.reason(&snap, &id, spec, &inputs, &mut succeeded, &mut held_back) {
                        Ok(Some(reason)) => {
                            any = true;
                            planned.push((id, reason, several.then_some(inputs)))
                        }
                        Ok(None) => {}
                        Err(e) => items.push(PassItem {
                            node: id,
                            reason: Reason::NeverRan,
                            outcome: None,
                            error: Some(crate::project::error_chain(&e)),
                        }),
                    }
                }
                if !any && !upstream.is_empty() && options.dry_run {
                    planned.push((id, Reason::Upstream { nodes: upstream }, None))
                }
            }
            if options.dry_run {
                for (id, reason, _) in planned {
                    moving.insert(id);
                    items.push(PassItem {
                        node: id,
                        reason,
                        outcome: None,
                        error: None,
                    });
                }
                continue;
            }
            let runs = planned.into_iter().map(|(id, reason, inputs)| {
                let sem = semaphore.clone();
                let mut run = options.run.clone();
                if let Some(inputs) = inputs {
                    run = run.with_inputs(inputs);
                }
                async move {
                    let _permit = sem.acquire().await;
                    let mut r = self.run_node(&id, run.clone()).await;
                    // A remote worker that died (its lease expired) put the run back: it
                    // runs again at once, on another worker, a few times.
                    for _ in 0..REMOTE_RETRIES {
                        let lost = matches!(&r, Ok(RunOutcome::Ran(rec))
                            if rec.status == RunStatus::Interrupted
                                && rec.error.as_deref().is_some_and(|e| e.contains(crate::remote::WORKER_LOST)));
                        if !lost || self.dispatcher.is_none() || self.cancel_token().is_cancelled() {
                            break;
                        }
                        r = self.run_node(&id, run.clone()).await;
                    }
                    (id, reason, r)
                }
            });
            let results = futures::future::join_all(runs).await;
            if !results.is_empty() {
                snap = self.store().snapshot()?;
                sources = crate::records::all_states(&snap)?;
            }
            for (id, reason, r) in results {
                match r {
                    Ok(outcome) => {
                        if matches!(&outcome, RunOutcome::Ran(rec) if rec.status == RunStatus::Success)
                        {
                            moving.insert(id);
                        }
                        items.push(PassItem {
                            node: id,
                            reason,
                            outcome: Some(outcome),
                            error: None,
                        });
                    }
                    Err(e) => items.push(PassItem {
                        node: id,
                        reason,
                        outcome: None,
                        error: Some(crate::project::error_chain(&e)),
                    }),
                }
            }
        }
        if !options.dry_run {
            succeeded.save();
        }
        if plain && unchanged && items.is_empty() && !held_back {
            write_noop_memo(&noop_memo, snap.commit());
        }
        Ok(PassReport { polled, items })
    }

    /// Why `node` needs a run on `inputs`, if it does.
    fn reason(
        &self,
        snap: &crate::store::Snapshot,
        id: &NodeId,
        node: &NodeSpec,
        inputs: &[SourceVersion],
        succeeded: &mut SucceededMemo,
        held_back: &mut bool,
    ) -> Result<Option<Reason>> {
        // One probe of the attempts serves both questions below.
        let last_number = crate::engine::last_attempt_number(snap, id, inputs)?;
        let last_blob = match last_number {
            Some(a) => snap.blob_id(&crate::project::paths::run(&crate::RunId::compute(
                id, inputs, a,
            )))?,
            None => None,
        };
        // A record known to say `success` (its blob ID names its bytes) is not read again.
        if let Some(blob) = last_blob {
            if succeeded.contains(blob) {
                return Ok(None);
            }
        }
        let last: Option<crate::RunRecord> = match last_number {
            Some(a) => snap.read_json(&crate::project::paths::run(&crate::RunId::compute(
                id, inputs, a,
            )))?,
            None => None,
        };
        if crate::engine::success_up_to(snap, id, inputs, last.as_ref())?.is_some() {
            if let (Some(blob), Some(RunStatus::Success)) =
                (last_blob, last.as_ref().map(|l| l.status))
            {
                succeeded.insert(blob);
            }
            return Ok(None);
        }
        // A run on these very inputs failed: the node is `failed`, not "never ran". It runs
        // again on new inputs, on `dkt node rerun`, or as its retry policy says.
        if let Some(last) = &last {
            // An output moved while it ran: it stays `conflict` (its outputs kept in its
            // staging area) until new inputs or `dkt node rerun`.
            if last.status == RunStatus::Conflict {
                return Ok(None);
            }
        }
        if let Some(last) = last {
            if last.status == RunStatus::Failure {
                let failures = last.attempt.saturating_add(1);
                let Some(retry) = &node.retry else {
                    return Ok(None);
                };
                if failures > retry.count {
                    return Ok(None);
                }
                let backoff = crate::engine::parse_wait(&retry.backoff).unwrap_or_default();
                let wait = backoff.saturating_mul(1u32 << (failures - 1).min(20));
                let due = last
                    .ended_ms
                    .unwrap_or(0)
                    .saturating_add(wait.as_millis() as u64);
                if crate::model::now_ms() < due {
                    // Not yet: a later pass on the same records may run it.
                    *held_back = true;
                    return Ok(None);
                }
                return Ok(Some(Reason::Retry {
                    attempt: failures,
                    of: retry.count,
                }));
            }
        }
        let mut runs =
            crate::records::indexed_runs(snap, &crate::project::paths::node_runs_dir(id))?;
        runs.sort_by_key(|r| std::cmp::Reverse((r.queued_ms, r.attempt)));
        let last_ok = runs.iter().find(|r| r.status == RunStatus::Success);
        Ok(Some(match last_ok {
            None => Reason::NeverRan,
            Some(r) => Reason::InputsMoved {
                changes: inputs
                    .iter()
                    .filter(|i| !r.inputs.contains(i))
                    .map(|i| InputChange {
                        source: i.source.clone(),
                        from: r
                            .inputs
                            .iter()
                            .find(|o| o.source == i.source)
                            .map(|o| o.version.clone()),
                        to: i.version.clone(),
                    })
                    .collect(),
            },
        }))
    }
}

/// The file under `.dkt/cache` naming the commit at which a whole pass found nothing to
/// run (derived data: the plan of a pass is a function of the commit it reads, but for
/// retries waiting on the clock, which keep a pass from writing it).
const NOOP_MEMO: &str = "noop";
/// Its first line, naming its format.
const NOOP_HEADER: &str = "dtk noop 1";

/// The commit `.dkt/cache/noop` names, if it is whole (ends with a line `end`).
fn read_noop_memo(path: &std::path::Path) -> Option<crate::store::Oid> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    if lines.next()? != NOOP_HEADER {
        return None;
    }
    let id = crate::store::Oid::from_hex(lines.next()?).ok()?;
    (lines.next()? == "end").then_some(id)
}

/// Name `commit` in `.dkt/cache/noop`, unless it already does; failing only costs the
/// next pass its planning.
fn write_noop_memo(path: &std::path::Path, commit: crate::store::Oid) {
    if read_noop_memo(path) == Some(commit) {
        return;
    }
    let Some(dir) = path.parent() else {
        return;
    };
    let text = format!("{NOOP_HEADER}\n{commit}\nend\n");
    let written = tempfile::NamedTempFile::new_in(dir).and_then(|mut f| {
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.persist(path).map_err(|e| e.error)?;
        Ok(())
    });
    if let Err(e) = written {
        tracing::debug!(error = %e, "cannot write {}", path.display());
    }
}

/// The file under `.dkt/cache` remembering which run records say `success`.
const SUCCEEDED_MEMO: &str = "succeeded";
/// Its first line, naming its format.
const SUCCEEDED_HEADER: &str = "dtk succeeded 1";

/// The run records a pass found to say `success`, by blob ID: derived data kept outside
/// the store (`.dkt/cache/succeeded`), like git's commit-graph. A blob ID names the
/// record's bytes, so what it says never changes and the memo never goes stale; it only
/// spares the next no-op pass reading and decoding the last record of every node. A
/// memo that is missing, torn (no final `end` line) or not understood is ignored.
struct SucceededMemo {
    path: std::path::PathBuf,
    loaded: std::collections::HashSet<crate::store::Oid>,
    /// The records this pass found successful (what the memo holds next time).
    used: std::collections::HashSet<crate::store::Oid>,
}

impl SucceededMemo {
    fn load(path: std::path::PathBuf) -> Self {
        let loaded = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| {
                let mut lines = text.lines();
                if lines.next()? != SUCCEEDED_HEADER {
                    return None;
                }
                let mut ids = std::collections::HashSet::new();
                for line in lines {
                    if line == "end" {
                        return Some(ids);
                    }
                    ids.insert(crate::store::Oid::from_hex(line).ok()?);
                }
                None
            })
            .unwrap_or_default();
        SucceededMemo {
            path,
            loaded,
            used: Default::default(),
        }
    }

    /// True when the record `blob` is known to say `success`.
    fn contains(&mut self, blob: crate::store::Oid) -> bool {
        let known = self.loaded.contains(&blob);
        if known {
            self.used.insert(blob);
        }
        known
    }

    /// Remember that the record `blob` says `success`.
    fn insert(&mut self, blob: crate::store::Oid) {
        self.used.insert(blob);
    }

    /// Write the records this pass found successful, if that is not what was loaded (so
    /// records no longer current drop out); failing only costs the next pass some reads.
    fn save(&self) {
        if self.used == self.loaded {
            return;
        }
        let Some(dir) = self.path.parent() else {
            return;
        };
        let mut ids: Vec<&crate::store::Oid> = self.used.iter().collect();
        ids.sort();
        let mut text = String::with_capacity(16 + 41 * ids.len());
        text.push_str(SUCCEEDED_HEADER);
        text.push('\n');
        for id in ids {
            text.push_str(&id.to_string());
            text.push('\n');
        }
        text.push_str("end\n");
        let written = tempfile::NamedTempFile::new_in(dir).and_then(|mut f| {
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.persist(&self.path).map_err(|e| e.error)?;
            Ok(())
        });
        if let Err(e) = written {
            tracing::debug!(error = %e, "cannot write {}", self.path.display());
        }
    }
}

/// The input versions `node` should be up to date on: one list, unless an input is a
/// pattern source following several refs (then one list per tip; several such inputs
/// give every combination). `assumed` versions replace the current ones.
fn candidate_inputs(
    sources: &BTreeMap<Name, crate::records::SourceState>,
    node: &NodeSpec,
    assumed: &BTreeMap<Name, Version>,
) -> Result<Vec<Vec<SourceVersion>>> {
    let mut combos: Vec<Vec<SourceVersion>> = vec![Vec::new()];
    for name in &node.inputs {
        let versions = match assumed.get(name) {
            Some(v) => vec![v.clone()],
            None => {
                let all = sources
                    .get(name)
                    .ok_or_else(|| Error::not_found("source", name.as_str()))?
                    .current_all();
                if all.is_empty() {
                    return Err(Error::Conflict(format!(
                        "input {name:?} has no version yet"
                    )));
                }
                all
            }
        };
        let mut next = Vec::with_capacity(combos.len() * versions.len());
        for c in &combos {
            for v in &versions {
                let mut c = c.clone();
                c.push(SourceVersion {
                    source: name.clone(),
                    version: v.clone(),
                });
                next.push(c);
            }
        }
        combos = next;
    }
    for c in &mut combos {
        c.sort();
    }
    Ok(combos)
}

impl Project {
    /// Run `node` again on its current inputs even where a successful run exists; with
    /// `downstream`, then every node below it, in topological order. Stops at the first
    /// run that does not succeed.
    pub async fn rerun(
        &self,
        node: &NodeId,
        downstream: bool,
        options: RunOptions,
    ) -> Result<Vec<(NodeId, RunOutcome)>> {
        let options = options.with_force(true);
        let mut order = vec![*node];
        if downstream {
            let graph = self.graph()?;
            let below: BTreeSet<NodeId> = graph.downstream_nodes(node).into_iter().collect();
            order.extend(graph.topo_nodes().into_iter().filter(|n| below.contains(n)));
        }
        let mut out = Vec::new();
        for id in order {
            let outcome = self.run_node(&id, options.clone()).await?;
            let failed = matches!(&outcome, RunOutcome::Ran(r) if r.status != RunStatus::Success);
            out.push((id, outcome));
            if failed {
                break;
            }
        }
        Ok(out)
    }
}
