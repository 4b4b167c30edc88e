//! The shapes that programs read: `dkt --json` prints them and `dkt serve`'s JSON API
//! returns them, from this one definition, so the two never drift apart.
//!
//! Each view is built from records of one snapshot of the store plus the local run
//! queue; none carries a secret (records never hold one: credentials live in
//! `.dkt/secrets/`, and logs are redacted before they are stored).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::{Name, NodeId, NodeSpec, Project, Result, RunRecord, RunStatus, SourceSpec, Version};

/// A source as `dkt source list --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceView {
    /// Its name.
    pub name: Name,
    /// Its kind (`git`, `path`, ...).
    pub kind: String,
    /// Where it is.
    pub location: String,
    /// The tag (branch, image tag) it follows, if any.
    pub tag: Option<String>,
    /// The sub-path it is restricted to, if any.
    pub path: Option<String>,
    /// Whether it is pinned to a version.
    pub pinned: bool,
    /// Whether polling it is stopped.
    pub frozen: bool,
    /// The version nodes read: the pinned one, else the latest.
    pub latest: Option<Version>,
}

impl From<&SourceSpec> for SourceView {
    fn from(s: &SourceSpec) -> Self {
        SourceView {
            name: s.name.clone(),
            kind: s.kind.clone(),
            location: s.location.clone(),
            tag: s.tag.clone(),
            path: s.path.clone(),
            pinned: s.pinned.is_some(),
            frozen: s.frozen,
            latest: s.current().cloned(),
        }
    }
}

/// A node as `dkt node list --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    /// The short ID (8 hex digits).
    pub id: String,
    /// The full ID.
    pub id_full: String,
    /// Its name, if it has one.
    pub name: Option<Name>,
    /// Whether it was removed (`dkt node rm`): it no longer runs.
    pub retired: bool,
    /// Its definition.
    pub spec: NodeSpec,
}

impl NodeView {
    /// The view of node `id`.
    pub fn new(id: &NodeId, spec: NodeSpec, name: Option<Name>, retired: bool) -> Self {
        NodeView {
            id: id.short(),
            id_full: id.to_hex(),
            name,
            retired,
            spec,
        }
    }
}

/// A run as `dkt node log --json` shows it: its record, with the status as it stands
/// (a `running` run whose worker is gone shows `interrupted`, see
/// [`Project::effective_status`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RunView(pub RunRecord);

impl RunView {
    /// The view of `run` in `project`.
    pub fn new(project: &Project, mut run: RunRecord) -> Self {
        run.status = project.effective_status(&run);
        RunView(run)
    }
}

/// Where a node stands, for colouring a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Its last run succeeded on the inputs it would read now.
    UpToDate,
    /// Its inputs changed since its last successful run, or it never ran: a pass would run it.
    Outdated,
    /// A run is queued, waiting for a worker.
    Pending,
    /// A run is executing.
    Running,
    /// Its last run failed, was interrupted or found its output moved (`conflict`).
    Failed,
}

/// A node of the pipeline graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphNode {
    /// The node.
    #[serde(flatten)]
    pub node: NodeView,
    /// Where it stands.
    pub state: NodeState,
    /// Its newest run, if any.
    pub last_run: Option<String>,
}

/// The pipeline: every source and every active node (edges are the nodes' `inputs` and
/// `outputs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphView {
    /// Every source, by name.
    pub sources: Vec<SourceView>,
    /// Every active node, by ID.
    pub nodes: Vec<GraphNode>,
}

/// One page of a listing, and where the next page starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// How many items the whole listing has.
    pub total: usize,
    /// The cursor of the next page (`after=` this), `None` on the last page.
    pub next: Option<String>,
}

impl Project {
    /// Every source, as [`SourceView`]s.
    pub fn source_views(&self) -> Result<Vec<SourceView>> {
        Ok(self.sources()?.iter().map(SourceView::from).collect())
    }

    /// Every node (removed ones too with `all`), as [`NodeView`]s.
    pub fn node_views(&self, all: bool) -> Result<Vec<NodeView>> {
        let names = self.node_names()?;
        Ok(self
            .all_nodes()?
            .into_iter()
            .filter(|(_, _, retired)| all || !retired)
            .map(|(id, spec, retired)| {
                let name = names.get(&id).cloned();
                NodeView::new(&id, spec, name, retired)
            })
            .collect())
    }

    /// Where `node` stands, from its runs (newest first, as [`Project::node_runs`] gives
    /// them).
    pub fn node_state(&self, spec: &NodeSpec, runs: &[RunRecord]) -> Result<NodeState> {
        Ok(self.state_of(runs, self.current_inputs(spec).ok().as_deref()))
    }

    /// Where a node stands from its runs (newest first) and the inputs it would read now
    /// (`None`: an input has no version yet).
    fn state_of(&self, runs: &[RunRecord], now: Option<&[crate::SourceVersion]>) -> NodeState {
        let Some(last) = runs.first() else {
            return NodeState::Outdated;
        };
        match self.effective_status(last) {
            RunStatus::Pending => NodeState::Pending,
            RunStatus::Running => NodeState::Running,
            RunStatus::Failure | RunStatus::Interrupted | RunStatus::Conflict => NodeState::Failed,
            RunStatus::Success => {
                let done = now.is_some_and(|now| {
                    runs.iter()
                        .any(|r| r.status == RunStatus::Success && r.inputs == now)
                });
                if done {
                    NodeState::UpToDate
                } else {
                    NodeState::Outdated
                }
            }
        }
    }

    /// The pipeline graph with each node's state, read from one snapshot (and the run
    /// queue, once).
    pub fn graph_view(&self) -> Result<GraphView> {
        let snap = self.store().snapshot()?;
        let sources = self.source_views()?;
        let current: BTreeMap<&Name, &Version> = sources
            .iter()
            .filter_map(|s| s.latest.as_ref().map(|v| (&s.name, v)))
            .collect();
        let queue = self.run_queue();
        let queued: Vec<RunRecord> = queue
            .pending()?
            .into_iter()
            .chain(queue.claimed()?.into_iter().map(|(r, _)| r))
            .collect();
        let mut nodes = Vec::new();
        for view in self.node_views(false)? {
            let id: NodeId = view.spec.id();
            let mut runs =
                crate::records::indexed_runs(&snap, &crate::project::paths::node_runs_dir(&id))?;
            for r in queued.iter().filter(|r| r.node == id) {
                match runs.iter_mut().find(|x| x.id == r.id) {
                    Some(x) => *x = r.clone(),
                    None => runs.push(r.clone()),
                }
            }
            runs.sort_by(|a, b| {
                b.queued_ms
                    .cmp(&a.queued_ms)
                    .then(b.attempt.cmp(&a.attempt))
                    .then(b.id.cmp(&a.id))
            });
            let now: Option<Vec<crate::SourceVersion>> = view
                .spec
                .inputs
                .iter()
                .map(|n| {
                    current.get(n).map(|v| crate::SourceVersion {
                        source: n.clone(),
                        version: (*v).clone(),
                    })
                })
                .collect();
            let now = now.map(|mut v| {
                v.sort();
                v
            });
            let state = self.state_of(&runs, now.as_deref());
            nodes.push(GraphNode {
                last_run: runs.first().map(|r| r.id.to_hex()),
                node: view,
                state,
            });
        }
        Ok(GraphView { sources, nodes })
    }

    /// One page of runs, in run-ID order, of at most `limit` runs after the run whose
    /// full ID is `after`: of `node` (its `node-runs/` index), or of the whole project
    /// (`runs/`) when `node` is `None`, with the runs still queued or executing here.
    /// Only the names of the index are listed; only the page's records are read, so a
    /// page costs the same whatever the number of runs.
    pub fn runs_page(
        &self,
        node: Option<&NodeId>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<RunView>> {
        let snap = self.store().snapshot()?;
        let dir = match node {
            Some(n) => crate::project::paths::node_runs_dir(n),
            None => "runs".to_owned(),
        };
        // The runs still queued or executing here, which the index does not hold yet.
        let queue = self.run_queue();
        let mut queued = BTreeMap::new();
        for r in queue
            .pending()?
            .into_iter()
            .chain(queue.claimed()?.into_iter().map(|(r, _)| r))
            .filter(|r| node.is_none_or(|n| r.node == *n))
        {
            queued.insert(r.id.to_hex(), r);
        }
        let mut unrecorded = 0;
        for r in queued.values() {
            let path = match node {
                Some(n) => crate::project::paths::node_run(n, &r.id),
                None => crate::project::paths::run(&r.id),
            };
            if snap.blob_id(&path)?.is_none() {
                unrecorded += 1;
            }
        }
        let total = snap.count_records(&dir)? + unrecorded;
        let (stored, more) = snap.page_records(&dir, after, limit)?;
        let mut ids: BTreeSet<String> = stored
            .into_iter()
            .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect();
        // Queued runs after the cursor join the page where they sort; anything beyond
        // the page's last stored run waits for the next page (unless the index is done).
        let bound = if more { ids.last().cloned() } else { None };
        ids.extend(
            queued
                .keys()
                .filter(|id| after.is_none_or(|a| id.as_str() > a))
                .filter(|id| bound.as_ref().is_none_or(|b| *id <= b))
                .cloned(),
        );
        let page: Vec<String> = ids.iter().take(limit).cloned().collect();
        let mut items = Vec::with_capacity(page.len());
        for id in &page {
            let record = match queued.remove(id.as_str()) {
                Some(r) => Some(r),
                None => match id.parse::<crate::RunId>() {
                    Ok(rid) => snap.read_json(&crate::project::paths::run(&rid))?,
                    Err(_) => None,
                },
            };
            if let Some(r) = record {
                items.push(RunView::new(self, r));
            }
        }
        let rest_queued = match page.last() {
            Some(last) => queued.keys().any(|id| id > last),
            None => false,
        };
        let next = match page.last() {
            Some(last) if more || ids.len() > page.len() || rest_queued => Some(last.clone()),
            _ => None,
        };
        Ok(Page { items, total, next })
    }

    /// The runs that read each of `versions` of a source (`consumers/` index), by version.
    pub fn consumers(
        &self,
        source: &Name,
        versions: &[Version],
    ) -> Result<BTreeMap<Version, Vec<String>>> {
        let snap = self.store().snapshot()?;
        let mut out = BTreeMap::new();
        for v in versions {
            let sv = crate::SourceVersion {
                source: source.clone(),
                version: v.clone(),
            };
            let dir = crate::project::paths::consumers_dir(&sv);
            let ids: BTreeSet<String> = snap
                .walk(&dir)?
                .into_iter()
                .filter_map(|(p, _)| {
                    p.rsplit('/')
                        .next()
                        .and_then(|f| f.strip_suffix(".json"))
                        .map(str::to_owned)
                })
                .collect();
            out.insert(v.clone(), ids.into_iter().collect());
        }
        Ok(out)
    }
}
