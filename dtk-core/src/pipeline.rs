//! Pipeline files: the sources and nodes of a pipeline, declared in one reviewed YAML file
//! and applied in one commit (`dkt apply FILE.yml`, [`Project::apply`]).
//!
//! ```yaml
//! sources:
//!   - name: pinata
//!     location: ./pinata      # optional: kind, tag, path
//!     kind: git
//!     tag: master
//!   - name: pitfall
//!     location: pinata        # another source: derive from it
//!     path: v1/pitfall
//!   - name: tests             # no location: a new temporary directory
//! nodes:
//!   - labels: [test]
//!     inputs: [pitfall]
//!     outputs: [tests]
//!     run:
//!       - ./test.sh
//! ```
//!
//! Applying is declarative and idempotent: a source is added when it does not exist,
//! updated (keeping its history, pin and frozen flag) when what its declaration resolves to
//! differs from what is recorded, and otherwise left alone; a node is added unless the
//! same node (same ID) exists. Sources and nodes the file does not mention are left alone.
//! Everything lands in one commit of the metadata store, or, on any error, nothing does.
//! Errors name the file, the line and the field (`pipeline.yml:7: nodes[0].inputs: ...`).
//! The format is described in `docs/pipeline.md`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::{validate_labels, StringOrList};
use crate::project::{normalize_subpath, paths, read_source, record_version};
use crate::store::Snapshot;
use crate::{
    AddSource, Error, Name, NodeFile, NodeId, NodeSpec, Project, Result, Source, SourceSpec,
    VersionInfo,
};

/// A pipeline file: the sources and nodes it declares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// The sources, in order: a source may derive from one declared before it.
    #[serde(default)]
    pub sources: Vec<SourceDecl>,
    /// The nodes, in the format of a node file ([`NodeFile`]).
    #[serde(default)]
    pub nodes: Vec<NodeFile>,
}

/// One entry of a pipeline file's `sources:`, with the meaning of `dkt source add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDecl {
    /// The source's name.
    pub name: String,
    /// Where it is, or the name of another source to derive from; none for a new
    /// temporary directory (`path` kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The kind (inferred from the location when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The tag (branch, ...); when given, `location` is taken whole (no `:TAG` split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A sub-path inside the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl PipelineFile {
    /// Parse a pipeline file; syntax and type errors name `file` and the line.
    pub fn parse(file: &str, text: &str) -> Result<PipelineFile> {
        if is_blank(text) {
            return Ok(PipelineFile::default());
        }
        yaml_serde::from_str(text).map_err(|e| {
            let message = e.to_string();
            match e.location() {
                Some(at) => {
                    let suffix = format!(" at line {} column {}", at.line(), at.column());
                    Error::InFile {
                        file: file.to_owned(),
                        line: at.line(),
                        field: String::new(),
                        message: message.strip_suffix(&suffix).unwrap_or(&message).to_owned(),
                        source: None,
                    }
                }
                None => Error::invalid("pipeline file", file, message),
            }
        })
    }
}

/// True when `text` holds no YAML content (only blanks and comments).
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---"
    })
}

/// What [`Project::apply`] did to one source or node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyStatus {
    /// It did not exist and was recorded.
    Added,
    /// It existed with another location, kind, tag or sub-path, and was moved there.
    Updated,
    /// It already existed as declared.
    Unchanged,
}

impl std::fmt::Display for ApplyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApplyStatus::Added => "added",
            ApplyStatus::Updated => "updated",
            ApplyStatus::Unchanged => "unchanged",
        })
    }
}

/// A source of an [`ApplyReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceApplied {
    /// The source.
    pub name: Name,
    /// What was done.
    pub status: ApplyStatus,
}

/// A node of an [`ApplyReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeApplied {
    /// The node's ID.
    pub id: NodeId,
    /// Its command, on one line.
    pub command: String,
    /// What was done ([`ApplyStatus::Added`] or [`ApplyStatus::Unchanged`]).
    pub status: ApplyStatus,
}

/// What [`Project::apply`] did, in the file's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    /// The file, as named to [`Project::apply`].
    pub file: String,
    /// The declared sources.
    pub sources: Vec<SourceApplied>,
    /// The declared nodes.
    pub nodes: Vec<NodeApplied>,
    /// The nodes retired: replaced named nodes, and with `--prune` those the file no
    /// longer declares.
    pub retired: Vec<NodeRetired>,
    /// The commit of the metadata store that recorded the changes; none when nothing
    /// changed.
    pub commit: Option<String>,
}

impl ApplyReport {
    /// True when something was added or updated.
    pub fn changed(&self) -> bool {
        self.sources
            .iter()
            .map(|s| s.status)
            .chain(self.nodes.iter().map(|n| n.status))
            .any(|s| s != ApplyStatus::Unchanged)
            || !self.retired.is_empty()
    }
}

/// One declared source, resolved.
#[derive(Debug)]
struct PlannedSource {
    spec: SourceSpec,
    status: ApplyStatus,
    /// The polled versions (added and updated sources): the latest, or the tip of each
    /// ref a pattern matches.
    latest: Vec<VersionInfo>,
}

/// One declared node, checked.
#[derive(Debug)]
struct PlannedNode {
    index: usize,
    id: NodeId,
    spec: NodeSpec,
    status: ApplyStatus,
    /// Its name, if the file gives one.
    name: Option<Name>,
    /// The node that held the name and is replaced (retired) by this one.
    replaces: Option<NodeId>,
}

/// Options of [`Project::apply_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyOptions {
    /// Retire the active nodes the file does not declare.
    pub prune: bool,
}

impl ApplyOptions {
    /// The defaults: nothing pruned.
    pub fn new() -> Self {
        Self::default()
    }

    /// With [`prune`](Self::prune).
    pub fn with_prune(mut self, prune: bool) -> Self {
        self.prune = prune;
        self
    }
}

/// A node an apply retired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRetired {
    /// The node.
    pub id: NodeId,
    /// `replaced by <id>` (a named node whose definition changed) or `pruned`.
    pub reason: String,
}

impl Project {
    /// Create or update, in one commit, the sources and nodes the pipeline file `text`
    /// declares (`file_name` is only used in messages and the commit message).
    ///
    /// # Behavior
    /// - A source that does not exist is added as [`Project::add_source`] would (resolved
    ///   through its kind, polled once); one that exists is compared with what its
    ///   declaration resolves to (kind, location, tag, sub-path, parent): equal, it is left
    ///   alone; different, it is moved there as [`Project::relocate`] does, keeping its
    ///   history, pin and frozen flag, and polled. A declared source without a location
    ///   that exists is left alone (a temporary directory is made only for a new one).
    /// - A node is added unless the same node (same ID) exists. Its inputs and outputs must
    ///   be declared in the file or exist in the project, outputs must be of kinds that
    ///   publish, no cycle may appear, and its `${SOURCE:FIELD}` variables must resolve.
    /// - Sources and nodes the file does not mention are left alone.
    /// - Everything is recorded in one commit; nothing at all when nothing changes or when
    ///   anything fails (temporary directories made for new sources are removed again).
    /// - Errors are [`Error::InFile`], naming the file, the line and the field.
    pub async fn apply(&self, file_name: &str, text: &str) -> Result<ApplyReport> {
        self.apply_with(file_name, text, ApplyOptions::new()).await
    }

    /// [`Project::apply`] with options: with [`ApplyOptions::prune`], the active nodes
    /// the file does not declare are retired in the same commit.
    pub async fn apply_with(
        &self,
        file_name: &str,
        text: &str,
        options: ApplyOptions,
    ) -> Result<ApplyReport> {
        let file = PipelineFile::parse(file_name, text)?;
        let here = Here {
            file: file_name,
            lines: Lines::new(text),
        };
        let snap = self.store().snapshot()?;
        let names = self.check_source_decls(&here, &file, &snap)?;
        let (mut nodes, pruned) = self.check_nodes(&here, &file, &snap, &names, &options)?;
        // Resolving may make temporary directories: remove them again on any error.
        let mut created: Vec<Arc<dyn Source>> = Vec::new();
        let result = self
            .apply_resolved(&here, &file, &snap, &mut nodes, &pruned, &mut created)
            .await;
        if result.is_err() {
            for source in created {
                let _ = source.remove().await;
            }
        }
        result
    }

    /// Names, duplicates, sub-paths and kinds of the declared sources; returns the names in
    /// the file's order.
    fn check_source_decls(
        &self,
        here: &Here<'_>,
        file: &PipelineFile,
        snap: &Snapshot,
    ) -> Result<Vec<Name>> {
        let mut names: Vec<Name> = Vec::new();
        for (i, decl) in file.sources.iter().enumerate() {
            let at = |field: &str, value: Option<&str>, e: Error| {
                here.error("sources", i, field, value, e)
            };
            let name = Name::new(&decl.name).map_err(|e| at("name", None, e))?;
            if let Some(first) = names.iter().position(|n| *n == name) {
                return Err(here.message(
                    "sources",
                    i,
                    "name",
                    None,
                    format!(
                        "source {:?} is declared twice (first at line {})",
                        name.as_str(),
                        here.line("sources", first, "name", None)
                    ),
                ));
            }
            if let Some(p) = &decl.path {
                normalize_subpath(p).map_err(|e| at("path", None, e))?;
            }
            if let Some(k) = &decl.kind {
                self.registry().get(k).map_err(|e| at("kind", None, e))?;
            }
            if let Some(loc) = &decl.location {
                // A later source cannot be a parent: it is not resolved yet.
                let later = Name::new(loc).ok().and_then(|n| {
                    file.sources[i + 1..]
                        .iter()
                        .any(|d| d.name == n.as_str())
                        .then_some(n)
                });
                if let Some(parent) = later.filter(|n| *n != name) {
                    return Err(here.message(
                        "sources",
                        i,
                        "location",
                        None,
                        format!(
                            "source {:?} derives from source {:?}, which is declared after it: declare {:?} first",
                            name.as_str(),
                            parent.as_str(),
                            parent.as_str()
                        ),
                    ));
                }
            }
            if decl.location.is_none() {
                if let Some(stored) = crate::records::get_source(snap, &name)? {
                    self.check_kept(here, i, decl, &stored)?;
                }
            }
            names.push(name);
        }
        Ok(names)
    }

    /// An existing source declared without a location is kept as it is: a kind, tag or
    /// sub-path that says otherwise is an error.
    fn check_kept(
        &self,
        here: &Here<'_>,
        i: usize,
        decl: &SourceDecl,
        stored: &SourceSpec,
    ) -> Result<()> {
        let kind = match &decl.kind {
            Some(k) => Some(self.registry().get(k)?.name().to_owned()),
            None => None,
        };
        let path = decl.path.as_deref().map(normalize_subpath).transpose()?;
        let differs = [
            ("kind", kind.is_some_and(|k| k != stored.kind)),
            ("tag", decl.tag.is_some() && decl.tag != stored.tag),
            ("path", path.is_some() && path != stored.path),
        ];
        if let Some((field, _)) = differs.iter().find(|(_, d)| *d) {
            return Err(here.message(
                "sources",
                i,
                field,
                None,
                format!(
                    "source {:?} exists (at {}); to change its {field}, give its location too",
                    stored.name.as_str(),
                    stored.location
                ),
            ));
        }
        Ok(())
    }

    /// The nodes: names, labels, commands, duplicates, sources that exist (declared or
    /// recorded), and no cycle.
    fn check_nodes(
        &self,
        here: &Here<'_>,
        file: &PipelineFile,
        snap: &Snapshot,
        declared: &[Name],
        options: &ApplyOptions,
    ) -> Result<(Vec<PlannedNode>, Vec<NodeId>)> {
        // First the IDs and names, to know which nodes go: replaced named nodes, and with
        // --prune every active node the file does not declare.
        let retired = crate::lifecycle::retired(snap)?;
        let mut specs = Vec::new();
        for (i, node) in file.nodes.iter().enumerate() {
            let at = |field: &str, value: Option<&str>, e: Error| {
                here.error("nodes", i, field, value, e)
            };
            let name = node
                .name
                .as_deref()
                .map(Name::new)
                .transpose()
                .map_err(|e| at("name", None, e))?;
            if let Some(n) = &name {
                if let Some(j) = specs
                    .iter()
                    .position(|(_, _, m): &(NodeSpec, NodeId, Option<Name>)| m.as_ref() == Some(n))
                {
                    return Err(here.message(
                        "nodes",
                        i,
                        "name",
                        None,
                        format!(
                            "node name {:?} is given twice (first at line {})",
                            n.as_str(),
                            here.line("nodes", j, "name", None)
                        ),
                    ));
                }
            }
            let mut spec = node.to_spec().map_err(|e| at("run", None, e))?;
            spec.normalize();
            let id = spec.id();
            if retired.contains(&id) {
                return Err(here.message(
                    "nodes",
                    i,
                    "",
                    None,
                    format!(
                        "node {} was removed; its definition cannot be used again as it is",
                        id.short()
                    ),
                ));
            }
            specs.push((spec, id, name));
        }
        let mut going: Vec<NodeId> = Vec::new();
        for (_, id, name) in &specs {
            if let Some(n) = name {
                if let Some(old) = crate::lifecycle::named(snap, n.as_str())? {
                    if old != *id {
                        going.push(old);
                    }
                }
            }
        }
        let mut pruned = Vec::new();
        if options.prune {
            let keep: Vec<NodeId> = specs.iter().map(|(_, id, _)| *id).collect();
            for (id, _) in self.nodes()? {
                if !keep.contains(&id) && !going.contains(&id) {
                    pruned.push(id);
                }
            }
        }
        let skip: Vec<NodeId> = going.iter().chain(&pruned).copied().collect();
        let mut graph = crate::project::build_graph_without(snap, &skip)?;
        let node_names = crate::lifecycle::names(snap)?;
        for n in declared {
            graph.add_source(n);
        }
        let mut out: Vec<PlannedNode> = Vec::new();
        for (i, node) in file.nodes.iter().enumerate() {
            let at = |field: &str, value: Option<&str>, e: Error| {
                here.error("nodes", i, field, value, e)
            };
            for (field, list) in [("inputs", &node.inputs), ("outputs", &node.outputs)] {
                for s in list {
                    let name = Name::new(s).map_err(|e| at(field, Some(s), e))?;
                    if !declared.contains(&name) && !crate::records::source_exists(snap, &name)? {
                        return Err(here.message(
                            "nodes",
                            i,
                            field,
                            Some(s),
                            format!(
                                "source {:?} is not declared nor in the project",
                                name.as_str()
                            ),
                        ));
                    }
                }
            }
            validate_labels(&node.labels).map_err(|e| at("labels", None, e))?;
            if matches!(&node.run, StringOrList::Many(lines) if lines.is_empty()) {
                return Err(here.message("nodes", i, "run", None, "lists no command".into()));
            }
            let (spec, id, name) = specs[i].clone();
            if let Some(first) = out.iter().find(|n| n.id == id) {
                return Err(here.message(
                    "nodes",
                    i,
                    "",
                    None,
                    format!(
                        "the same node as nodes[{}] (line {}), node {}",
                        first.index,
                        here.line("nodes", first.index, "", None),
                        id.short()
                    ),
                ));
            }
            let exists = snap.blob_id(&paths::node(&id))?.is_some();
            let replaces = match &name {
                Some(n) => crate::lifecycle::named(snap, n.as_str())?.filter(|old| *old != id),
                None => None,
            };
            if !exists {
                crate::lifecycle::check_single_writer(&graph, &node_names, &id, &spec)
                    .map_err(|e| at("outputs", None, e))?;
                graph
                    .add_node(id, &spec.inputs, &spec.outputs)
                    .map_err(|e| at("", None, e))?;
            }
            let named_now = match &name {
                Some(n) => crate::lifecycle::named(snap, n.as_str())? == Some(id),
                None => true,
            };
            out.push(PlannedNode {
                index: i,
                id,
                spec,
                status: match (exists, replaces.is_some()) {
                    (_, true) => ApplyStatus::Updated,
                    (true, false) if named_now => ApplyStatus::Unchanged,
                    (true, false) => ApplyStatus::Updated,
                    (false, false) => ApplyStatus::Added,
                },
                name,
                replaces,
            });
        }
        Ok((out, pruned))
    }

    /// Resolve the sources, check the nodes against them, and record everything.
    async fn apply_resolved(
        &self,
        here: &Here<'_>,
        file: &PipelineFile,
        snap: &Snapshot,
        nodes: &mut [PlannedNode],
        pruned: &[NodeId],
        created: &mut Vec<Arc<dyn Source>>,
    ) -> Result<ApplyReport> {
        // What each declared source is after this apply, for parents and for the nodes.
        let mut effective: BTreeMap<Name, SourceSpec> = BTreeMap::new();
        let mut planned: Vec<PlannedSource> = Vec::new();
        for (i, decl) in file.sources.iter().enumerate() {
            let p = self
                .plan_source(decl, snap, &effective, created)
                .await
                .map_err(|e| {
                    let field = field_of(&e, decl);
                    here.error("sources", i, field, None, e)
                })?;
            effective.insert(p.spec.name.clone(), p.spec.clone());
            planned.push(p);
        }
        let lookup = |name: &Name| match effective.get(name) {
            Some(spec) => Ok(spec.clone()),
            None => read_source(snap, name),
        };
        for node in nodes.iter() {
            let at = |field: &str, value: Option<&str>, e: Error| {
                here.error("nodes", node.index, field, value, e)
            };
            for o in &node.spec.outputs {
                let spec = lookup(o).map_err(|e| at("outputs", Some(o.as_str()), e))?;
                let kind = self
                    .registry()
                    .get(&spec.kind)
                    .map_err(|e| at("outputs", Some(o.as_str()), e))?;
                if !kind.capabilities().publish {
                    return Err(at(
                        "outputs",
                        Some(o.as_str()),
                        Error::NotSupported {
                            kind: spec.kind.clone(),
                            operation: "publishing (being a node's output)",
                        },
                    ));
                }
            }
            self.check_variables_with(&node.spec, lookup)
                .map_err(|e| at("run", None, e))?;
        }
        let message = commit_message(here.file, &planned, nodes);
        let (_, commit) = self.store().transact(&message, |tx| {
            let skip: Vec<NodeId> = pruned
                .iter()
                .copied()
                .chain(nodes.iter().filter_map(|n| n.replaces))
                .collect();
            let mut graph = crate::project::build_graph_without(tx.base(), &skip)?;
            for p in &planned {
                let path = paths::source(&p.spec.name);
                match p.status {
                    ApplyStatus::Unchanged => {}
                    ApplyStatus::Added => {
                        if tx.exists(&path)? {
                            return Err(Error::AlreadyExists {
                                what: "source",
                                name: p.spec.name.to_string(),
                            });
                        }
                        crate::records::put_source(tx, &p.spec)?;
                    }
                    ApplyStatus::Updated => {
                        // Keep what may have changed meanwhile: the pin and the flag.
                        let now = crate::records::get_source(tx, &p.spec.name)?
                            .ok_or_else(|| Error::not_found("source", p.spec.name.as_str()))?;
                        let mut spec = p.spec.clone();
                        spec.pinned = now.pinned;
                        spec.frozen = now.frozen;
                        crate::records::put_source(tx, &spec)?;
                    }
                }
                for latest in &p.latest {
                    record_version(tx, &p.spec.name, latest, None)?;
                }
                graph.add_source(&p.spec.name);
            }
            for id in pruned {
                crate::lifecycle::retire(tx, id, "pruned")?;
            }
            for n in nodes.iter() {
                if let Some(name) = &n.name {
                    crate::lifecycle::give_name(tx, name, &n.id)?;
                }
            }
            for n in nodes.iter() {
                let path = paths::node(&n.id);
                if tx.exists(&path)? {
                    continue;
                }
                graph
                    .add_node(n.id, &n.spec.inputs, &n.spec.outputs)
                    .map_err(|e| here.error("nodes", n.index, "", None, e))?;
                tx.put_json(&path, &n.spec)?;
            }
            Ok(())
        })?;
        for p in &planned {
            if p.spec.owned && p.status == ApplyStatus::Added {
                self.mark_owned(&p.spec.name)?;
            }
        }
        let mut retired: Vec<NodeRetired> = nodes
            .iter()
            .filter_map(|n| {
                n.replaces.map(|old| NodeRetired {
                    id: old,
                    reason: format!("replaced by {}", n.id.short()),
                })
            })
            .collect();
        retired.extend(pruned.iter().map(|id| NodeRetired {
            id: *id,
            reason: "pruned".to_owned(),
        }));
        Ok(ApplyReport {
            file: here.file.to_owned(),
            sources: planned
                .iter()
                .map(|p| SourceApplied {
                    name: p.spec.name.clone(),
                    status: p.status,
                })
                .collect(),
            nodes: nodes
                .iter()
                .map(|n| NodeApplied {
                    id: n.id,
                    command: n.spec.command.display_line(),
                    status: n.status,
                })
                .collect(),
            retired,
            commit: commit.map(|c| c.to_string()),
        })
    }

    /// What one declared source becomes: resolved, compared with the recorded one, and
    /// polled when new or moved. Temporary directories made for it go to `created`.
    async fn plan_source(
        &self,
        decl: &SourceDecl,
        snap: &Snapshot,
        effective: &BTreeMap<Name, SourceSpec>,
        created: &mut Vec<Arc<dyn Source>>,
    ) -> Result<PlannedSource> {
        let name = Name::new(&decl.name)?;
        let stored: Option<SourceSpec> = crate::records::get_source(snap, &name)?;
        if let (Some(stored), None) = (&stored, &decl.location) {
            return Ok(PlannedSource {
                spec: stored.clone(),
                status: ApplyStatus::Unchanged,
                latest: Vec::new(),
            });
        }
        let add = AddSource {
            name: decl.name.clone(),
            location: decl.location.clone(),
            kind: decl.kind.clone(),
            path: decl.path.clone(),
            tag: None,
        };
        let mut spec = self
            .resolve_source(&add, decl.tag.as_deref(), snap, effective)
            .await?;
        if spec.owned {
            // Register it at once, so that a failing poll or a later error removes it.
            if let Ok(source) = self.open_source(&spec) {
                created.push(source);
            }
        }
        let status = match &stored {
            None => ApplyStatus::Added,
            Some(old)
                if (&old.kind, &old.location, &old.tag, &old.path, &old.parent)
                    == (
                        &spec.kind,
                        &spec.location,
                        &spec.tag,
                        &spec.path,
                        &spec.parent,
                    ) =>
            {
                return Ok(PlannedSource {
                    spec: old.clone(),
                    status: ApplyStatus::Unchanged,
                    latest: Vec::new(),
                });
            }
            Some(old) => {
                spec.pinned = old.pinned.clone();
                spec.frozen = old.frozen;
                ApplyStatus::Updated
            }
        };
        let (_, latest, _) = self.poll_resolved(&mut spec).await?;
        Ok(PlannedSource {
            spec,
            status,
            latest,
        })
    }
}

/// The field of a source declaration an error from resolving it is about (empty: the
/// whole entry). Kinds say "path" both for locations and sub-paths, so the value the
/// error quotes decides where it can.
fn field_of(e: &Error, decl: &SourceDecl) -> &'static str {
    let quoted = match e {
        Error::Invalid { value, .. } => Some(value.as_str()),
        Error::NotFound { name, .. } => Some(name.as_str()),
        _ => None,
    };
    let is_path = |v: &str| {
        decl.path.as_deref().is_some_and(|p| {
            let norm = normalize_subpath(p).unwrap_or_else(|_| p.to_owned());
            v == p || v == norm || v.ends_with(&format!("/{norm}"))
        })
    };
    let field = match (e, quoted) {
        (Error::UnknownKind { .. }, _) => "kind",
        (Error::NotSupported { operation, .. }, _) if operation.contains("sub-path") => "path",
        (Error::Invalid { what, .. }, _) if what.contains("tag") => "tag",
        (_, Some(v)) if decl.tag.as_deref() == Some(v) => "tag",
        (_, Some(v)) if is_path(v) => "path",
        (_, Some(v)) if decl.location.as_deref() == Some(v) => "location",
        (Error::Invalid { what, .. }, _) if what.contains("sub-path") => "path",
        _ => "location",
    };
    let given = match field {
        "kind" => decl.kind.is_some(),
        "tag" => decl.tag.is_some(),
        "path" => decl.path.is_some(),
        _ => decl.location.is_some(),
    };
    if given {
        field
    } else {
        ""
    }
}

fn commit_message(file: &str, sources: &[PlannedSource], nodes: &[PlannedNode]) -> String {
    let pick = |status| {
        sources
            .iter()
            .filter(move |p: &&PlannedSource| p.status == status)
            .map(|p| p.spec.name.to_string())
            .collect::<Vec<_>>()
    };
    let mut parts = Vec::new();
    for (verb, list) in [
        ("source add", pick(ApplyStatus::Added)),
        ("source update", pick(ApplyStatus::Updated)),
        (
            "node add",
            nodes
                .iter()
                .filter(|n| n.status == ApplyStatus::Added)
                .map(|n| n.id.short())
                .collect(),
        ),
    ] {
        if !list.is_empty() {
            parts.push(format!("{verb} {}", list.join(", ")));
        }
    }
    format!("apply {file}: {}", parts.join("; "))
}

/// Where things are in the file being applied, to build [`Error::InFile`] errors.
#[derive(Debug)]
struct Here<'a> {
    file: &'a str,
    lines: Lines<'a>,
}

impl Here<'_> {
    /// The line of `section[index].field`, at the list element `value` if given.
    fn line(&self, section: &str, index: usize, field: &str, value: Option<&str>) -> usize {
        self.lines.locate(section, index, field, value)
    }

    fn path(section: &str, index: usize, field: &str) -> String {
        if field.is_empty() {
            format!("{section}[{index}]")
        } else {
            format!("{section}[{index}].{field}")
        }
    }

    /// `e`, located at `section[index].field`.
    fn error(
        &self,
        section: &str,
        index: usize,
        field: &str,
        value: Option<&str>,
        e: Error,
    ) -> Error {
        if matches!(e, Error::InFile { .. }) {
            return e;
        }
        Error::InFile {
            file: self.file.to_owned(),
            line: self.line(section, index, field, value),
            field: Self::path(section, index, field),
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }

    /// A user error `message`, located at `section[index].field`.
    fn message(
        &self,
        section: &str,
        index: usize,
        field: &str,
        value: Option<&str>,
        message: String,
    ) -> Error {
        Error::InFile {
            file: self.file.to_owned(),
            line: self.line(section, index, field, value),
            field: Self::path(section, index, field),
            message,
            source: None,
        }
    }
}

/// Finds the lines of items, fields and list elements in block-style YAML by scanning the
/// text (the parser keeps no positions of what parsed well). Anything it cannot find falls
/// back to the enclosing item, then the section, then line 1.
#[derive(Debug)]
struct Lines<'a> {
    lines: Vec<&'a str>,
}

/// One item of a block sequence: its first line, the line after it, and the column of
/// its keys.
#[derive(Debug, Clone, Copy)]
struct Item {
    start: usize,
    end: usize,
    key_indent: usize,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// True for lines holding no YAML content.
fn is_filler(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#') || t == "---"
}

/// `- ...` at the start of `content`: what follows the dash and its spaces.
fn after_dash(content: &str) -> Option<&str> {
    let rest = content.strip_prefix('-')?;
    if rest.is_empty() {
        return Some(rest);
    }
    rest.starts_with([' ', '\t']).then(|| rest.trim_start())
}

/// The value after `key:` when `content` starts with that key.
fn after_key<'t>(content: &'t str, key: &str) -> Option<&'t str> {
    let rest = content.strip_prefix(key)?;
    let rest = rest.strip_prefix(':')?;
    if rest.is_empty() || rest.starts_with([' ', '\t']) {
        Some(strip_comment(rest).trim())
    } else {
        None
    }
}

fn strip_comment(s: &str) -> &str {
    match s.find(" #") {
        Some(i) if !s.starts_with('#') => &s[..i],
        _ if s.trim_start().starts_with('#') => "",
        _ => s,
    }
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|x| x.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Lines {
            lines: text.lines().collect(),
        }
    }

    /// The index of the line `section:` at column 0, and the end of its block.
    fn section(&self, section: &str) -> Option<(usize, usize)> {
        let start = self
            .lines
            .iter()
            .position(|l| indent(l) == 0 && after_key(l, section).is_some())?;
        let end = (start + 1..self.lines.len())
            .find(|&j| {
                let l = self.lines[j];
                !is_filler(l) && indent(l) == 0 && after_dash(l).is_none()
            })
            .unwrap_or(self.lines.len());
        Some((start, end))
    }

    /// The items of the block sequence under `section:`.
    fn items(&self, section: &str) -> Vec<Item> {
        let Some((start, end)) = self.section(section) else {
            return Vec::new();
        };
        let body = start + 1..end;
        let Some(dash) = body.clone().find_map(|j| {
            let l = self.lines[j];
            (!is_filler(l))
                .then(|| after_dash(l.trim_start()).map(|_| indent(l)))
                .flatten()
        }) else {
            return Vec::new();
        };
        let starts: Vec<usize> = body
            .filter(|&j| {
                let l = self.lines[j];
                !is_filler(l) && indent(l) == dash && after_dash(l.trim_start()).is_some()
            })
            .collect();
        starts
            .iter()
            .enumerate()
            .map(|(k, &s)| {
                let next = starts.get(k + 1).copied().unwrap_or(end);
                let first = self.lines[s];
                let rest = first.trim_start();
                let key_indent = match after_dash(rest) {
                    Some(after) if !after.is_empty() && !after.starts_with('#') => {
                        first.len() - after.len()
                    }
                    _ => (s + 1..next)
                        .find(|&j| !is_filler(self.lines[j]))
                        .map(|j| indent(self.lines[j]))
                        .unwrap_or(dash + 2),
                };
                Item {
                    start: s,
                    end: next,
                    key_indent,
                }
            })
            .collect()
    }

    /// The line index of `field:` in `item`, with the text after the colon.
    fn field(&self, item: Item, field: &str) -> Option<(usize, &'a str)> {
        (item.start..item.end).find_map(|j| {
            let l = self.lines[j];
            let content = if j == item.start {
                after_dash(l.trim_start())?
            } else if indent(l) == item.key_indent {
                l.trim_start()
            } else {
                return None;
            };
            after_key(content, field).map(|v| (j, v))
        })
    }

    /// The 1-based line of `section[index].field` (at the element `value` of a block
    /// list, if given), or of the closest enclosing thing found.
    fn locate(&self, section: &str, index: usize, field: &str, value: Option<&str>) -> usize {
        let fallback = self.section(section).map_or(0, |(s, _)| s);
        let Some(item) = self.items(section).get(index).copied() else {
            return fallback + 1;
        };
        if field.is_empty() {
            return item.start + 1;
        }
        let Some((f, after)) = self.field(item, field) else {
            return item.start + 1;
        };
        let (Some(value), true) = (value, after.is_empty()) else {
            return f + 1;
        };
        for j in f + 1..item.end {
            let l = self.lines[j];
            if is_filler(l) {
                continue;
            }
            let ind = indent(l);
            let element = after_dash(l.trim_start());
            if ind < item.key_indent || (ind == item.key_indent && element.is_none()) {
                break;
            }
            if element.is_some_and(|e| unquote(strip_comment(e)) == value) {
                return j + 1;
            }
        }
        f + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# a pipeline
sources:
  - name: pinata
    location: ./pinata   # a comment
    kind: git
  -   name: pitfall
      location: pinata
      path: v1/pitfall
  - name: tests

nodes:
- labels: [test]
  inputs:
    - dmg
    - 'pitfall'   # quoted
  outputs: [tests]
  run:
    - ./test.sh
- run: echo hi
  inputs: [nosuch]
";

    #[test]
    fn parses_the_format() {
        let f = PipelineFile::parse("p.yml", TEXT).unwrap();
        assert_eq!(f.sources.len(), 3);
        assert_eq!(f.sources[1].path.as_deref(), Some("v1/pitfall"));
        assert_eq!(f.nodes[0].inputs, ["dmg", "pitfall"]);
        assert_eq!(f.nodes[1].inputs, ["nosuch"]);
        assert_eq!(
            PipelineFile::parse("p.yml", "# nothing\n").unwrap(),
            PipelineFile::default()
        );
    }

    #[test]
    fn locates_items_fields_and_elements() {
        let l = Lines::new(TEXT);
        assert_eq!(l.locate("sources", 0, "", None), 3);
        assert_eq!(l.locate("sources", 0, "kind", None), 5);
        assert_eq!(l.locate("sources", 1, "name", None), 6);
        assert_eq!(l.locate("sources", 1, "path", None), 8);
        assert_eq!(l.locate("sources", 2, "name", None), 9);
        // Not there: the item.
        assert_eq!(l.locate("sources", 2, "location", None), 9);
        assert_eq!(l.locate("nodes", 0, "inputs", Some("dmg")), 14);
        assert_eq!(l.locate("nodes", 0, "inputs", Some("pitfall")), 15);
        assert_eq!(l.locate("nodes", 0, "inputs", Some("other")), 13);
        assert_eq!(l.locate("nodes", 0, "outputs", Some("tests")), 16);
        assert_eq!(l.locate("nodes", 0, "run", None), 17);
        assert_eq!(l.locate("nodes", 1, "inputs", Some("nosuch")), 20);
        assert_eq!(l.locate("nodes", 1, "", None), 19);
        // No such item: the section; no section: line 1.
        assert_eq!(l.locate("nodes", 5, "", None), 11);
        assert_eq!(Lines::new("nodes: []\n").locate("sources", 0, "", None), 1);
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let e =
            PipelineFile::parse("p.yml", "sources:\n  - name: a\n    locaton: x\n").unwrap_err();
        let m = e.to_string();
        assert!(
            m.starts_with("p.yml:3: sources[0]: unknown field `locaton`"),
            "{m}"
        );
        assert!(e.is_user_error());
    }
}
