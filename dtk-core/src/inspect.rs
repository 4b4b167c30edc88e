//! Provenance: manifests (`dkt inspect`), Graphviz, SLSA and W3C PROV exports, and
//! verification (`dkt verify`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::json;

use crate::project::{paths, read_source};
use crate::store::Snapshot;
use crate::{
    Error, Link, Name, NodeId, NodeSpec, Project, Result, RunId, RunRecord, SourceSpec,
    SourceVersion, Verification, Version, VersionRecord,
};

/// Options of [`Project::inspect`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InspectOptions {
    /// Show what was derived from the target instead of what it derives from.
    pub downstream: bool,
}

impl InspectOptions {
    /// Upstream (the default).
    pub fn new() -> Self {
        Self::default()
    }
    /// Downstream instead of upstream.
    pub fn with_downstream(mut self, yes: bool) -> Self {
        self.downstream = yes;
        self
    }
}

/// What a manifest is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "type", content = "id")]
pub enum Target {
    /// A version of a source.
    Version(SourceVersion),
    /// A run.
    Run(RunId),
    /// A node (its runs and what they used and made).
    Node(NodeId),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Version(sv) => write!(f, "{}:{}", sv.source, sv.version.short()),
            Target::Run(r) => write!(f, "run {}", r.short()),
            Target::Node(n) => write!(f, "node {}", n.short()),
        }
    }
}

/// A version in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionEntry {
    /// The short ID (8 hex digits).
    #[serde(rename = "ID")]
    pub id: String,
    /// The source's name.
    pub source: Name,
    /// The source's kind.
    pub kind: String,
    /// The source's location.
    pub url: String,
    /// The full version, for git sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The full version, for other kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Short IDs of the versions it was computed from (by its run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// The short ID of the run that produced it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The digest of its record (the hash chain's link).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// The full `SOURCE:VERSION`.
    #[serde(skip)]
    pub full: SourceVersion,
}

/// A run in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunEntry {
    /// The short run ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// The short node ID.
    pub node: String,
    /// The command.
    pub command: crate::Command,
    /// The script file the command runs, with the digest of the content that ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script: Option<crate::ScriptRef>,
    /// The node's labels.
    pub labels: Vec<String>,
    /// Who ran it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The key of the remote worker that signed its result (`SHA256:...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_key: Option<String>,
    /// Its status.
    pub status: crate::RunStatus,
    /// When it started (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// When it ended (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// Short IDs of its input versions.
    pub inputs: Vec<String>,
    /// Short IDs of its output versions.
    pub outputs: Vec<String>,
    /// The digest of its record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// The full record.
    #[serde(skip)]
    pub full: RunRecord,
}

/// An out-of-band relation (`dkt source link`): asserted by a user, not computed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkEntry {
    /// Always `"asserted"`.
    pub relation: &'static str,
    /// `SOURCE:SHORTID` of the first version.
    pub from: String,
    /// `SOURCE:SHORTID` of the second version.
    pub to: String,
    /// The link.
    #[serde(skip)]
    pub full: Link,
}

/// One entry of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Entry {
    /// A version.
    Version(VersionEntry),
    /// A run.
    Run(Box<RunEntry>),
    /// A link.
    Link(LinkEntry),
}

/// Everything an artifact was made from (or, downstream, everything made from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// What the manifest is about.
    pub target: Target,
    /// Upstream or downstream.
    pub downstream: bool,
    /// The entries, in a deterministic order (upstream: ancestors first).
    pub entries: Vec<Entry>,
    /// The digest of the target's record: it covers the whole ancestry by the hash chain.
    pub root_digest: Option<String>,
}

struct Walker<'a> {
    project: &'a Project,
    snap: Snapshot,
    /// The kind and location of each source read so far (`None`: no such source).
    sources: BTreeMap<Name, Option<(String, String)>>,
    links: Option<std::rc::Rc<[Link]>>,
    seen_versions: BTreeSet<SourceVersion>,
    seen_runs: BTreeSet<RunId>,
    entries: Vec<Entry>,
}

/// `ms` (milliseconds since the Unix epoch) as RFC 3339 UTC with milliseconds
/// (`2025-11-26T15:13:20.123Z`).
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

impl<'a> Walker<'a> {
    fn new(project: &'a Project) -> Result<Self> {
        Ok(Walker {
            project,
            snap: project.store().snapshot()?,
            sources: BTreeMap::new(),
            links: None,
            seen_versions: BTreeSet::new(),
            seen_runs: BTreeSet::new(),
            entries: Vec::new(),
        })
    }

    /// The kind and location of source `name` as declared today; `None` when there is no
    /// such source.
    fn source(&mut self, name: &Name) -> Result<Option<(String, String)>> {
        if let Some(s) = self.sources.get(name) {
            return Ok(s.clone());
        }
        // The declaration says both; the source's state (latest, pinned) is not read.
        let s = crate::records::get_declaration(&self.snap, name)?.map(|s| (s.kind, s.location));
        self.sources.insert(name.clone(), s.clone());
        Ok(s)
    }

    fn links(&mut self) -> Result<std::rc::Rc<[Link]>> {
        if let Some(l) = &self.links {
            return Ok(l.clone());
        }
        let mut l: Vec<Link> = self.snap.read_tree_json("links")?;
        l.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
        let l: std::rc::Rc<[Link]> = l.into();
        self.links = Some(l.clone());
        Ok(l)
    }

    fn version_record(&self, sv: &SourceVersion) -> Result<Option<VersionRecord>> {
        self.snap
            .read_json(&paths::version(&sv.source, &sv.version))
    }

    fn run_record(&self, id: &RunId) -> Result<RunRecord> {
        self.snap
            .read_json(&paths::run(id))?
            .ok_or_else(|| Error::corrupt(format!("run record {} is missing", paths::run(id))))
    }

    fn version_entry(
        &mut self,
        sv: &SourceVersion,
        rec: Option<&VersionRecord>,
    ) -> Result<VersionEntry> {
        // Where the version came from: its sealed origin, else (older records) the
        // source's declaration today.
        let spec = match rec.as_ref().and_then(|r| r.origin.as_ref()) {
            Some(o) => {
                let s = o.apply_to(&SourceSpec::new(sv.source.clone(), "", ""));
                Some((s.kind, s.location))
            }
            None => self.source(&sv.source)?,
        };
        let (kind, url) = spec.unwrap_or_else(|| ("-".into(), "-".into()));
        let is_commit = sv.version.algo() == crate::Algo::Sha1 && kind == "git";
        Ok(VersionEntry {
            id: sv.version.short().to_owned(),
            source: sv.source.clone(),
            url,
            kind,
            commit: is_commit.then(|| sv.version.to_string()),
            digest: (!is_commit).then(|| sv.version.to_string()),
            inputs: rec
                .as_ref()
                .map(|r| {
                    r.inputs
                        .iter()
                        .map(|i| i.version.short().to_owned())
                        .collect()
                })
                .unwrap_or_default(),
            run: rec.as_ref().and_then(|r| r.run.map(|r| r.short())),
            record: rec.as_ref().and_then(|r| r.digest.clone()),
            full: sv.clone(),
        })
    }

    fn run_entry(&self, run: RunRecord) -> Result<RunEntry> {
        let node: Option<NodeSpec> = self.snap.read_json(&paths::node(&run.node))?;
        Ok(RunEntry {
            id: run.id.short(),
            node: run.node.short(),
            command: node
                .as_ref()
                .map(|n| n.command.clone())
                .unwrap_or(crate::Command::Argv(Vec::new())),
            script: node.as_ref().and_then(|n| n.script.clone()),
            labels: node.map(|n| n.labels).unwrap_or_default(),
            worker: run.worker.clone(),
            worker_key: run.worker_key.clone(),
            status: self.project.effective_status(&run),
            started: run.started_ms.map(rfc3339),
            ended: run.ended_ms.map(rfc3339),
            inputs: run
                .inputs
                .iter()
                .map(|i| i.version.short().to_owned())
                .collect(),
            outputs: run
                .outputs
                .iter()
                .map(|o| o.version.short().to_owned())
                .collect(),
            record: run.digest.clone(),
            full: run,
        })
    }

    /// Ancestors first (post-order), inputs in source order.
    fn up_version(&mut self, sv: &SourceVersion) -> Result<()> {
        self.up(Up::Version(sv.clone()))
    }

    fn up_run(&mut self, id: &RunId) -> Result<()> {
        self.up(Up::Run(*id))
    }

    /// The upstream walk, depth-first with a stack of its own rather than by recursion
    /// (a chain of thousands of runs would overflow a thread's stack): reads and entries
    /// come in the order of the recursive definition, where a version's run (and so its
    /// ancestry) comes first, then the versions linked to it, then the version itself and
    /// its links, and a run's inputs come before the run.
    fn up(&mut self, start: Up) -> Result<()> {
        let mut stack = vec![start];
        while let Some(step) = stack.pop() {
            match step {
                Up::Version(sv) => {
                    if !self.seen_versions.insert(sv.clone()) {
                        continue;
                    }
                    let rec = self.version_record(&sv)?.map(Box::new);
                    let run = rec.as_ref().and_then(|r| r.run);
                    stack.push(Up::Linked { sv, rec, next: 0 });
                    if let Some(run) = run {
                        stack.push(Up::Run(run));
                    }
                }
                Up::Linked { sv, rec, next } => {
                    let links = self.links()?;
                    match (next..links.len()).find(|&j| links[j].to == sv) {
                        Some(j) => {
                            stack.push(Up::Linked {
                                sv,
                                rec,
                                next: j + 1,
                            });
                            stack.push(Up::Version(links[j].from.clone()));
                        }
                        None => {
                            let entry = self.version_entry(&sv, rec.as_deref())?;
                            self.entries.push(Entry::Version(entry));
                            for link in links.iter() {
                                if link.to == sv {
                                    self.push_link(link.clone());
                                }
                            }
                        }
                    }
                }
                Up::Run(id) => {
                    if !self.seen_runs.insert(id) {
                        continue;
                    }
                    let run = Box::new(self.run_record(&id)?);
                    stack.push(Up::Inputs { run, next: 0 });
                }
                Up::Inputs { run, next } => match run.inputs.get(next).cloned() {
                    Some(input) => {
                        stack.push(Up::Inputs {
                            run,
                            next: next + 1,
                        });
                        stack.push(Up::Version(input));
                    }
                    None => {
                        let e = self.run_entry(*run)?;
                        self.entries.push(Entry::Run(Box::new(e)));
                    }
                },
            }
        }
        Ok(())
    }

    fn push_link(&mut self, link: Link) {
        self.entries.push(Entry::Link(LinkEntry {
            relation: "asserted",
            from: format!("{}:{}", link.from.source, link.from.version.short()),
            to: format!("{}:{}", link.to.source, link.to.version.short()),
            full: link,
        }));
    }

    /// The outputs of `run`, after it (for run and node targets).
    fn outputs_of(&mut self, run: &RunRecord) -> Result<()> {
        for o in &run.outputs {
            if self.seen_versions.insert(o.clone()) {
                let rec = self.version_record(o)?;
                let e = self.version_entry(o, rec.as_ref())?;
                self.entries.push(Entry::Version(e));
            }
        }
        Ok(())
    }

    /// Descendants after (pre-order).
    fn down_version(&mut self, sv: &SourceVersion) -> Result<()> {
        self.down(Down::Version(sv.clone()))
    }

    fn down_run(&mut self, run: &RunRecord) -> Result<()> {
        self.down(Down::Run(Box::new(run.clone())))
    }

    /// The downstream walk, depth-first with a stack of its own (see [`Walker::up`]): a
    /// version, then what each run that read it made, then the versions linked from it.
    fn down(&mut self, start: Down) -> Result<()> {
        let mut stack = vec![start];
        while let Some(step) = stack.pop() {
            match step {
                Down::Version(sv) => {
                    if !self.seen_versions.insert(sv.clone()) {
                        continue;
                    }
                    let rec = self.version_record(&sv)?;
                    let entry = self.version_entry(&sv, rec.as_ref())?;
                    self.entries.push(Entry::Version(entry));
                    let dir = crate::project::paths::consumers_dir(&sv);
                    let mut runs = crate::records::indexed_runs(&self.snap, &dir)?;
                    runs.reverse();
                    stack.push(Down::Linked { sv, next: 0 });
                    stack.push(Down::Runs(runs));
                }
                Down::Runs(mut runs) => {
                    if let Some(run) = runs.pop() {
                        stack.push(Down::Runs(runs));
                        stack.push(Down::Run(Box::new(run)));
                    }
                }
                Down::Linked { sv, next } => {
                    let links = self.links()?;
                    if let Some(j) = (next..links.len()).find(|&j| links[j].from == sv) {
                        self.push_link(links[j].clone());
                        stack.push(Down::Linked { sv, next: j + 1 });
                        stack.push(Down::Version(links[j].to.clone()));
                    }
                }
                Down::Run(run) => {
                    if !self.seen_runs.insert(run.id) {
                        continue;
                    }
                    let mut outputs = run.outputs.clone();
                    let e = self.run_entry(*run)?;
                    self.entries.push(Entry::Run(Box::new(e)));
                    outputs.reverse();
                    stack.push(Down::Versions(outputs));
                }
                Down::Versions(mut versions) => {
                    if let Some(sv) = versions.pop() {
                        stack.push(Down::Versions(versions));
                        stack.push(Down::Version(sv));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A step of the upstream walk ([`Walker::up`]).
enum Up {
    /// A version to visit.
    Version(SourceVersion),
    /// A version whose run was walked: the versions linked to it from link `next` on,
    /// then itself.
    Linked {
        sv: SourceVersion,
        rec: Option<Box<VersionRecord>>,
        next: usize,
    },
    /// A run to visit.
    Run(RunId),
    /// A run whose inputs before `next` were walked.
    Inputs { run: Box<RunRecord>, next: usize },
}

/// A step of the downstream walk ([`Walker::down`]).
enum Down {
    /// A version to visit.
    Version(SourceVersion),
    /// Runs to visit, the next one last.
    Runs(Vec<RunRecord>),
    /// A version whose consumers were walked: the versions linked from it, from link
    /// `next` on.
    Linked { sv: SourceVersion, next: usize },
    /// A run to visit.
    Run(Box<RunRecord>),
    /// Versions to visit, the next one last.
    Versions(Vec<SourceVersion>),
}

impl Project {
    /// Resolve what `dkt inspect`/`dkt verify` were given: `SRC:ID` (any unique prefix),
    /// a node ID or a run ID (prefixes of at least 4 digits).
    ///
    /// An image, S3 or git commit reference that no source recorded is looked up in the
    /// artifact itself ([`crate::Source::provenance_of`]: an image's annotations or
    /// referrers, an object's metadata, a commit's `Dkt-Run:` trailers), asking the
    /// project's sources of its kind, then, for an image or an object, one opened at the
    /// reference's own repository or bucket: the run it names is the target (its output
    /// of that version, when the run made it). A run this project has no record of is
    /// [`Error::NotFound`] naming it.
    pub async fn resolve_target(&self, what: &str) -> Result<Target> {
        match self.artifact(what) {
            // An object inside a source's prefix: the records know the prefix's current
            // version, the object's own metadata the exact run that wrote it (the prefix
            // may have moved on since); the metadata wins when it names a run on record.
            Ok(Some(sv)) if what.starts_with("s3://") => {
                let not_found = Error::NotFound {
                    what: "artifact",
                    name: what.to_owned(),
                    hint: String::new(),
                };
                return Ok(self
                    .artifact_from_itself(what, not_found)
                    .await
                    .unwrap_or(Target::Version(sv)));
            }
            Ok(Some(sv)) => return Ok(Target::Version(sv)),
            Ok(None) => {}
            Err(
                e @ Error::NotFound {
                    what: "artifact", ..
                },
            ) => {
                return self.artifact_from_itself(what, e).await;
            }
            Err(e) => return Err(e),
        }
        if what.contains(':') {
            return self.resolve_source_version(what).await.map(Target::Version);
        }
        let run = self.run_record(what);
        let node = self.node(what);
        if run.is_err() && node.is_err() && what.len() == 40 {
            match self.artifact(&format!("sha1:{what}")) {
                Ok(Some(sv)) => return Ok(Target::Version(sv)),
                Ok(None) => {}
                Err(
                    e @ Error::NotFound {
                        what: "artifact", ..
                    },
                ) => return self.artifact_from_itself(what, e).await,
                Err(e) => return Err(e),
            }
        }
        match (run, node) {
            (Ok(r), Err(_)) => Ok(Target::Run(r.id)),
            (Err(_), Ok((n, _))) => Ok(Target::Node(n)),
            (Ok(r), Ok((n, _))) => Err(Error::Ambiguous {
                what: "ID",
                prefix: what.to_owned(),
                matches: vec![
                    format!("run {}", r.id.short()),
                    format!("node {}", n.short()),
                ],
            }),
            (Err(e @ Error::Invalid { .. }), Err(_)) => Err(Error::invalid(
                "inspect target",
                what,
                format!("expected SOURCE:VERSION, a node ID or a run ID ({e})"),
            )),
            (Err(_), Err(_)) => Err(Error::NotFound {
                what: "node or run",
                name: what.to_owned(),
                hint: " (give SOURCE:VERSION for a version)".into(),
            }),
        }
    }

    /// The version an artifact reference names, if `what` is one: a git commit
    /// (`sha1:HEX`, when no source is called `sha1`; 40 hex digits are tried after run and
    /// node IDs), an image (`[REGISTRY/]REPO@sha256:HEX`, what a docker source's `IMAGE`
    /// field says) or an S3 URL (`s3://BUCKET/KEY...`: the s3 source whose prefix holds it,
    /// at its current version). Among the sources that recorded the version, one whose
    /// version a run produced is preferred; several are [`Error::Ambiguous`]. An artifact
    /// reference no source recorded is [`Error::NotFound`].
    pub fn artifact(&self, what: &str) -> Result<Option<SourceVersion>> {
        let snap = self.store().snapshot()?;
        let image = what
            .split_once('@')
            .filter(|(_, d)| d.starts_with("sha256:"));
        let commit = what
            .strip_prefix("sha1:")
            .filter(|_| Name::new("sha1").is_ok_and(|n| read_source(&snap, &n).is_err()));
        let s3 = what.starts_with("s3://");
        if image.is_none() && commit.is_none() && !s3 {
            return Ok(None);
        }
        let sources = crate::records::all_sources(&snap)?;
        let mut found: Vec<(bool, SourceVersion)> = Vec::new();
        let mut consider = |name: &Name, version: &Version| -> Result<()> {
            let record: Option<VersionRecord> = snap.read_json(&paths::version(name, version))?;
            if let Some(r) = record {
                found.push((
                    r.run.is_some(),
                    SourceVersion {
                        source: name.clone(),
                        version: version.clone(),
                    },
                ));
            }
            Ok(())
        };
        if let Some((repo, digest)) = image {
            let version: Version = digest.parse().map_err(|e: Error| {
                Error::invalid("image reference", what, format!("bad digest: {e}"))
            })?;
            let names = [
                repo.to_owned(),
                format!("docker.io/{repo}"),
                format!("docker.io/library/{repo}"),
            ];
            for s in sources.iter().filter(|s| s.kind == "docker") {
                if names.contains(&s.location) {
                    consider(&s.name, &version)?;
                }
            }
        } else if let Some(hex) = commit {
            let version: Version = format!("sha1:{}", hex.to_ascii_lowercase())
                .parse()
                .map_err(|e: Error| Error::invalid("git commit", what, e.to_string()))?;
            for s in sources.iter().filter(|s| s.kind == "git") {
                consider(&s.name, &version)?;
            }
        } else {
            for s in sources.iter().filter(|s| s.kind == "s3") {
                // The sub-path (`-p`) is part of the prefix.
                let mut prefix = s.location.trim_end_matches('/').to_owned();
                if let Some(p) = s.path.as_deref().map(|p| p.trim_matches('/')) {
                    if !p.is_empty() && p != "." {
                        prefix = format!("{prefix}/{p}");
                    }
                }
                let inside = what == prefix || what.starts_with(&format!("{prefix}/"));
                if let (true, Some(v)) = (inside, s.current()) {
                    consider(&s.name, v)?;
                }
            }
        }
        let produced: Vec<&SourceVersion> =
            found.iter().filter(|(p, _)| *p).map(|(_, sv)| sv).collect();
        let pick: Vec<&SourceVersion> = if produced.is_empty() {
            found.iter().map(|(_, sv)| sv).collect()
        } else {
            produced
        };
        match pick.as_slice() {
            [] => Err(Error::NotFound {
                what: "artifact",
                name: what.to_owned(),
                hint: " (no source of the project recorded it)".to_owned(),
            }),
            [one] => Ok(Some((*one).clone())),
            many => Err(Error::Ambiguous {
                what: "artifact",
                prefix: what.to_owned(),
                matches: many.iter().map(|sv| sv.to_string()).collect(),
            }),
        }
    }

    /// Attach to each output `run` published whose kind can hold it
    /// ([`crate::Capabilities::attestations`]) the run's SLSA statement for that output,
    /// exactly what `dkt inspect SOURCE:VERSION --format slsa` prints (see
    /// [`crate::Source::attach`]).
    ///
    /// This happens after the run is recorded, not as part of the publish: the statement's
    /// subject is the artifact's own digest (for an image, the digest of the annotated
    /// manifest, known only once pushed) and its `finishedOn` is when the run ended, so a
    /// statement built before would either name the outputs without their digests or
    /// differ from the one the records give. The outputs are published and recorded
    /// whatever happens here: a statement that cannot be attached is a warning, and the
    /// records still give it (`dkt inspect --format slsa`).
    pub(crate) async fn attach_statements(&self, run: &RunRecord) {
        // The outputs' specs, read from one snapshot (dropped before any await).
        let specs: Result<Vec<(SourceVersion, SourceSpec)>> = (|| {
            if run.outputs.is_empty() {
                return Ok(Vec::new());
            }
            let snap = self.store().snapshot()?;
            run.outputs
                .iter()
                .map(|sv| Ok((sv.clone(), read_source(&snap, &sv.source)?)))
                .collect()
        })();
        let specs = match specs {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(run = %run.id.short(), "could not attach provenance statements: {e}");
                return;
            }
        };
        for (sv, spec) in &specs {
            if let Err(e) = self.attach_statement(sv, spec).await {
                tracing::warn!(
                    run = %run.id.short(),
                    "could not attach the provenance statement of {sv} to the artifact: {}",
                    crate::project::error_chain(&e)
                );
            }
        }
    }

    async fn attach_statement(&self, sv: &SourceVersion, spec: &SourceSpec) -> Result<()> {
        let source = self.open_source(spec)?;
        if !source.capabilities().attestations {
            return Ok(());
        }
        let manifest = self.manifest(Target::Version(sv.clone()), InspectOptions::new())?;
        let statement = manifest.to_slsa(self)?;
        let bytes = serde_json::to_vec(&statement)
            .map_err(|e| Error::corrupt(format!("cannot encode the statement: {e}")))?;
        let attestation =
            crate::source::Attestation::new(crate::source::Attestation::IN_TOTO, bytes);
        source.attach(&sv.version, &attestation).await
    }

    /// [`Project::resolve_target`] for an artifact reference the records do not have
    /// (`not_recorded`, returned when the artifact says nothing either).
    async fn artifact_from_itself(&self, what: &str, not_recorded: Error) -> Result<Target> {
        // A commit is looked for in the project's git sources only (their mirrors), an
        // image or an object also at its own repository or bucket.
        let (kind, location) = if let Some(rest) = what.strip_prefix("s3://") {
            let bucket = rest.split('/').next().unwrap_or_default();
            ("s3", Some(format!("s3://{bucket}")))
        } else if let Some((name, _)) = what.split_once("@sha256:") {
            ("docker", Some(name.to_owned()))
        } else if what.strip_prefix("sha1:").unwrap_or(what).len() == 40 {
            ("git", None)
        } else {
            return Err(not_recorded);
        };
        if self.registry().get(kind).is_err() {
            return Err(not_recorded);
        }
        // Read before any await (a snapshot stays on its thread).
        let mut specs: Vec<SourceSpec> = {
            let snap = self.store().snapshot()?;
            crate::records::all_sources(&snap)?
                .into_iter()
                .filter(|s| s.kind == kind)
                .collect()
        };
        if let (Ok(name), Some(location)) = (Name::new("artifact"), location) {
            specs.push(SourceSpec::new(name, kind, location));
        }
        let mut failure = None;
        let mut found = None;
        for spec in &specs {
            let asked = match self.open_source(spec) {
                Ok(source) => source.provenance_of(what).await,
                Err(e) => Err(e),
            };
            match asked {
                Ok(Some(p)) if p.run.is_some() => {
                    found = Some(p);
                    break;
                }
                Ok(_) => {}
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        let Some(p) = found else {
            return Err(failure.unwrap_or(not_recorded));
        };
        let run = p.run.clone().unwrap_or_default();
        match self.run_record(&run) {
            Ok(r) => {
                let made = match &p.version {
                    Some(v) => r.outputs.iter().find(|o| &o.version == v),
                    // The artifact does not say which version it is (an S3 object): the
                    // run's one output of that kind, if it has exactly one.
                    None => {
                        let snap = self.store().snapshot()?;
                        let mut of_kind = r.outputs.iter().filter(|o| {
                            read_source(&snap, &o.source).is_ok_and(|spec| spec.kind == kind)
                        });
                        match (of_kind.next(), of_kind.next()) {
                            (Some(one), None) => Some(one),
                            _ => None,
                        }
                    }
                };
                Ok(match made {
                    Some(sv) => Target::Version(sv.clone()),
                    None => Target::Run(r.id),
                })
            }
            Err(Error::NotFound { .. }) | Err(Error::Invalid { .. }) => {
                let mut said = format!("run {run}");
                if let Some(n) = &p.node {
                    said.push_str(&format!(" of node {n}"));
                }
                if let Some(m) = &p.manifest {
                    said.push_str(&format!(", input manifest {m}"));
                }
                Err(Error::NotFound {
                    what: "run",
                    name: run.clone(),
                    hint: format!(
                        " in this project's records: {} of {what} name {said}; inspect it \
                         in the project that ran it",
                        p.found_in
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The provenance manifest of `what` (see [`Project::resolve_target`]).
    pub async fn inspect(&self, what: &str, options: InspectOptions) -> Result<Manifest> {
        let target = self.resolve_target(what).await?;
        self.manifest(target, options)
    }

    /// The provenance manifest of a resolved target. Reads only the records on the
    /// target's ancestry (or descendants): never every record of the project.
    pub fn manifest(&self, target: Target, options: InspectOptions) -> Result<Manifest> {
        let mut w = Walker::new(self)?;
        let root_digest;
        match &target {
            Target::Version(sv) => {
                root_digest = w.version_record(sv)?.and_then(|r| r.digest);
                if options.downstream {
                    w.down_version(sv)?;
                } else {
                    w.up_version(sv)?;
                }
            }
            Target::Run(id) => {
                let run = w.run_record(id)?;
                root_digest = run.digest.clone();
                if options.downstream {
                    w.down_run(&run)?;
                } else {
                    w.up_run(id)?;
                    w.outputs_of(&run)?;
                }
            }
            Target::Node(id) => {
                root_digest = None;
                let runs = self.node_runs(id)?;
                for run in runs.iter().rev() {
                    if options.downstream {
                        w.down_run(run)?;
                    } else {
                        w.up_run(&run.id)?;
                        w.outputs_of(run)?;
                    }
                }
            }
        }
        Ok(Manifest {
            target,
            downstream: options.downstream,
            entries: w.entries,
            root_digest,
        })
    }

    /// Check an artifact's provenance against the records and the data: every record's
    /// own digest (over every member it stores), every link of the hash chain, node IDs
    /// and run IDs recomputed, each produced version against the run that made it, run
    /// logs, index entries against their records, link IDs, and every version whose
    /// content can still be read re-hashed from where it was recorded.
    pub async fn verify(&self, what: &str) -> Result<VerifyReport> {
        let target = self.resolve_target(what).await?;
        let manifest = self.manifest(target, InspectOptions::new())?;
        let snap = self.store().snapshot()?;
        let mut report = VerifyReport {
            target: manifest.target.to_string(),
            checks: Vec::new(),
        };
        let mut digests: BTreeMap<SourceVersion, Option<String>> = BTreeMap::new();
        let mut versions = BTreeSet::new();
        let workers = crate::signing::verifier_workers(self, self.allowed_signers())?;
        for entry in &manifest.entries {
            match entry {
                Entry::Version(v) => {
                    versions.insert(v.full.clone());
                    self.verify_version(&snap, &v.full, &mut report, &mut digests)
                        .await?
                }
                Entry::Run(r) => verify_run(&snap, &r.full, &digests, &workers, &mut report)?,
                Entry::Link(_) => {}
            }
        }
        verify_links(&snap, &versions, &mut report)?;
        crate::signing::check_history(self, &manifest.target, self.allowed_signers(), &mut report)?;
        Ok(report)
    }

    async fn verify_version(
        &self,
        snap: &Snapshot,
        sv: &SourceVersion,
        report: &mut VerifyReport,
        digests: &mut BTreeMap<SourceVersion, Option<String>>,
    ) -> Result<()> {
        let subject = format!("{}:{}", sv.source, sv.version.short());
        let path = paths::version(&sv.source, &sv.version);
        let rec = match snap.read(&path)? {
            Some(bytes) => {
                seal_check(report, &subject, &bytes);
                let r: VersionRecord = crate::store::decode(&path, &bytes)?;
                report.record(
                    &subject,
                    "record names its version",
                    sv.to_string(),
                    format!("{}:{}", r.source, r.version),
                );
                digests.insert(sv.clone(), r.digest.clone());
                if let Some(run_id) = r.run {
                    produced_by(snap, &subject, sv, &r, &run_id, report)?;
                }
                Some(r)
            }
            None => {
                report.skip(
                    &subject,
                    "record",
                    "no record (a version dtk did not poll or produce)",
                );
                None
            }
        };
        let current = crate::records::get_source(snap, &sv.source)?;
        let origin = rec.as_ref().and_then(|r| r.origin.clone());
        match (&origin, &current) {
            (Some(o), Some(spec)) if *o != crate::model::Origin::of(spec) => report.skip(
                &subject,
                "origin",
                &format!(
                    "the source has moved since this version was recorded (now {} {}); the sealed origin ({} {}) is checked",
                    spec.kind, spec.location, o.kind, o.location
                ),
            ),
            (Some(_), _) => report.ok(&subject, "origin"),
            (None, _) if rec.is_some() => report.skip(
                &subject,
                "origin",
                "recorded before origins were sealed (store format 3 or older): the source's current declaration is used",
            ),
            (None, _) => {}
        }
        // The content, re-read from where the version was recorded.
        let spec = match (&origin, current) {
            (Some(o), Some(spec)) => Some(o.apply_to(&spec)),
            (Some(o), None) => {
                let mut spec = SourceSpec::new(sv.source.clone(), "", "");
                spec = o.apply_to(&spec);
                Some(spec)
            }
            (None, current) => current,
        };
        match spec {
            Some(spec) => match self.open_source(&spec) {
                Ok(source) => match source.verify(&sv.version).await {
                    Ok(Verification::Verified) => report.ok(&subject, "content"),
                    Ok(Verification::Mismatch { expected, found }) => {
                        report.record(&subject, "content", expected.to_string(), found.to_string())
                    }
                    Ok(Verification::Unavailable(why)) => report.skip(&subject, "content", &why),
                    Err(e) => report.skip(&subject, "content", &crate::project::error_chain(&e)),
                },
                Err(e) => report.skip(&subject, "content", &e.to_string()),
            },
            None => report.skip(&subject, "content", "the source was removed"),
        }
        Ok(())
    }
}

/// Record whether the record stored as `bytes` matches its own digest.
fn seal_check(report: &mut VerifyReport, subject: &str, bytes: &[u8]) {
    match crate::digest::check(bytes) {
        Ok(sealed) if sealed.recorded.is_empty() => {
            report.record(subject, "record digest", "a digest".into(), "none".into())
        }
        Ok(sealed) => report.record(subject, "record digest", sealed.recorded, sealed.computed),
        Err(e) => report.record(
            subject,
            "record digest",
            "a canonical record".into(),
            e.to_string(),
        ),
    }
}

/// Check a produced version against the run that made it: the run's digest, its status,
/// node, inputs and outputs.
fn produced_by(
    snap: &Snapshot,
    subject: &str,
    sv: &SourceVersion,
    version: &VersionRecord,
    run_id: &RunId,
    report: &mut VerifyReport,
) -> Result<()> {
    let Some(run) = snap.read_json::<RunRecord>(&paths::run(run_id))? else {
        report.record(
            subject,
            "producing run's digest",
            version.run_digest.clone().unwrap_or_default(),
            "missing run record".into(),
        );
        return Ok(());
    };
    report.record(
        subject,
        "producing run's digest",
        version.run_digest.clone().unwrap_or_default(),
        run.digest.clone().unwrap_or_default(),
    );
    report.record(
        subject,
        "producing run succeeded",
        "success".into(),
        run.status.to_string(),
    );
    report.record(
        subject,
        "producing run's node",
        version.node.map(|n| n.to_hex()).unwrap_or_default(),
        run.node.to_hex(),
    );
    report.record(
        subject,
        "inputs are the run's",
        list(&version.inputs),
        list(&run.inputs),
    );
    report.record(
        subject,
        "run names it as an output",
        sv.to_string(),
        run.outputs
            .iter()
            .find(|o| *o == sv)
            .map(ToString::to_string)
            .unwrap_or_else(|| format!("outputs {}", list(&run.outputs))),
    );
    Ok(())
}

fn list(svs: &[SourceVersion]) -> String {
    svs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check a run record: its digest, run and node IDs, the digests of its inputs, its log
/// and the index entries that name it.
fn verify_run(
    snap: &Snapshot,
    run: &RunRecord,
    digests: &BTreeMap<SourceVersion, Option<String>>,
    workers: &crate::signing::AllowedSigners,
    report: &mut VerifyReport,
) -> Result<()> {
    let subject = format!("run {}", run.id.short());
    let path = paths::run(&run.id);
    match snap.read(&path)? {
        Some(bytes) => {
            seal_check(report, &subject, &bytes);
            verify_worker(&subject, run, &bytes, workers, report);
        }
        None => report.record(
            &subject,
            "record",
            path.clone(),
            "missing run record".into(),
        ),
    }
    report.record(
        &subject,
        "run ID",
        run.id.to_hex(),
        RunId::compute(&run.node, &run.inputs, run.attempt).to_hex(),
    );
    let node: Option<NodeSpec> = snap.read_json(&paths::node(&run.node))?;
    match node {
        Some(n) => report.record(&subject, "node ID", run.node.to_hex(), n.id().to_hex()),
        None => report.record(
            &subject,
            "node ID",
            run.node.to_hex(),
            "missing node record".into(),
        ),
    }
    if run.input_digests.is_empty() && !run.inputs.is_empty() {
        report.skip(
            &subject,
            "input digests",
            "the run was recorded without its inputs' digests: its inputs are not chained",
        );
    } else if run.input_digests.len() != run.inputs.len() {
        report.record(
            &subject,
            "input digests",
            format!("{} digests", run.inputs.len()),
            format!("{} digests", run.input_digests.len()),
        );
    }
    for (input, expected) in run.inputs.iter().zip(&run.input_digests) {
        if expected.is_empty() {
            continue;
        }
        let found = match digests.get(input) {
            Some(d) => d.clone(),
            None => snap
                .read_json::<VersionRecord>(&paths::version(&input.source, &input.version))?
                .and_then(|r| r.digest),
        };
        report.record(
            &subject,
            &format!("input {}:{} digest", input.source, input.version.short()),
            expected.clone(),
            found.unwrap_or_else(|| "missing version record".into()),
        );
    }
    let log = snap.read(&paths::run_log(&run.id))?;
    match (&run.log_digest, log) {
        (Some(expected), Some(log)) => report.record(
            &subject,
            "log digest",
            expected.clone(),
            crate::digest::blob(&log),
        ),
        (Some(expected), None) => {
            report.record(&subject, "log digest", expected.clone(), "no log".into())
        }
        (None, Some(_)) => report.skip(
            &subject,
            "log digest",
            "recorded before logs were sealed (store format 3 or older)",
        ),
        (None, None) => {}
    }
    // Index entries are copies of the record (the same blob): derived data, checked.
    let primary = snap.blob_id(&path)?.map(|id| id.to_string());
    let mut index = vec![("node-runs index", paths::node_run(&run.node, &run.id))];
    if run.status == crate::RunStatus::Success {
        for sv in &run.inputs {
            index.push(("consumers index", paths::consumer(sv, &run.id)));
        }
    }
    for (what, at) in index {
        let found = snap.blob_id(&at)?.map(|id| id.to_string());
        report.record(
            &subject,
            &format!("{what} ({at})"),
            primary.clone().unwrap_or_else(|| "the run record".into()),
            found.unwrap_or_else(|| "no entry".into()),
        );
    }
    Ok(())
}

/// Check the signature of the worker that executed a remote run (`docs/format.md`, "Worker
/// signatures"): over the statement as stored (`bytes` is the record), by the key the
/// record names, about this run; its log; and whether the key is trusted.
fn verify_worker(
    subject: &str,
    run: &RunRecord,
    bytes: &[u8],
    workers: &crate::signing::AllowedSigners,
    report: &mut VerifyReport,
) {
    let raw: Option<serde_json::Value> = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("worker_signature").cloned());
    let (sig, raw) = match (&run.worker_signature, raw) {
        (Some(sig), Some(raw)) => (sig, raw),
        (None, _) => {
            if let Some(key) = &run.worker_key {
                report.record(
                    subject,
                    "worker signature",
                    format!("a signature by worker key {key}"),
                    "none".into(),
                );
            }
            return;
        }
        (Some(_), None) => return, // not reached: the record was read from these bytes
    };
    let statement = raw.get("statement").cloned().unwrap_or_default();
    let checked = crate::digest::canonical_json(&statement)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            crate::signing::verify_signature(crate::signing::WORKER_NAMESPACE, &b, &sig.signature)
        });
    let key = match checked {
        Ok(key) => key,
        Err(why) => {
            report.record(
                subject,
                "worker signature",
                format!(
                    "a valid signature by worker key {} over the recorded statement",
                    run.worker_key.as_deref().unwrap_or("(none named)")
                ),
                why,
            );
            return;
        }
    };
    let fingerprint = crate::signing::fingerprint(&key);
    if run.worker_key.as_deref() != Some(fingerprint.as_str()) {
        report.record(
            subject,
            "worker signature",
            format!(
                "a signature by the worker key the record names ({})",
                run.worker_key.as_deref().unwrap_or("none")
            ),
            format!("a valid signature by {fingerprint}"),
        );
    } else {
        report.ok(subject, &format!("signed by worker key {fingerprint}"));
    }
    let st = &sig.statement;
    let about = |run_id: &RunId,
                 node: &crate::NodeId,
                 attempt: u32,
                 inputs: &[SourceVersion],
                 worker: &str| {
        format!(
            "run {} node {} attempt {attempt} inputs [{}] worker {worker}",
            run_id.to_hex(),
            node.to_hex(),
            list(inputs)
        )
    };
    report.record(
        subject,
        "worker statement",
        about(
            &run.id,
            &run.node,
            run.attempt,
            &run.inputs,
            run.worker.as_deref().unwrap_or("-"),
        ),
        about(&st.run, &st.node, st.attempt, &st.inputs, &st.worker),
    );
    if run.log_digest.as_deref() == Some(st.log.as_str()) {
        report.ok(subject, "worker log");
    } else {
        report.skip(
            subject,
            "worker log",
            &format!(
                "the stored log ({}) is not the one the worker signed ({}): the coordinator redacted its own secrets from it",
                run.log_digest.as_deref().unwrap_or("none"),
                st.log
            ),
        );
    }
    match workers.find(key.key_data()) {
        Some(s) => report.ok(
            subject,
            &format!("worker key trusted ({})", s.principals.join(",")),
        ),
        None if workers.is_empty() => report.skip(
            subject,
            "worker key trusted",
            "no allowed-signers file lists worker keys ([queue] workers, or a line with namespaces=\"dtk-worker-result\" in the user's)",
        ),
        None => report.record(
            subject,
            "worker key trusted",
            format!(
                "a worker key listed in {}",
                workers
                    .files()
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            format!("untrusted key {fingerprint}"),
        ),
    }
}

/// Check that every link touching one of `versions` is stored under its own ID.
fn verify_links(
    snap: &Snapshot,
    versions: &BTreeSet<SourceVersion>,
    report: &mut VerifyReport,
) -> Result<()> {
    for (path, _) in snap.walk("links")? {
        let Some(bytes) = snap.read(&path)? else {
            continue;
        };
        let link: Link = crate::store::decode(&path, &bytes)?;
        if !versions.contains(&link.from) && !versions.contains(&link.to) {
            continue;
        }
        let stored_as = path
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".json"))
            .unwrap_or_default()
            .to_owned();
        report.record(
            &format!(
                "link {}:{} -> {}:{}",
                link.from.source,
                link.from.version.short(),
                link.to.source,
                link.to.version.short()
            ),
            "link ID",
            stored_as,
            link.id(),
        );
    }
    Ok(())
}

/// One check of [`Project::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked (`tests:9b3e1c07`, `run 5f1c0a9e`).
    pub subject: String,
    /// Which check.
    pub check: String,
    /// `ok`, `mismatch` or `skipped`.
    pub result: &'static str,
    /// For mismatches: what was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// For mismatches: what was found; for skips: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
}

/// What [`Project::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The artifact.
    pub target: String,
    /// Every check, in manifest order.
    pub checks: Vec<Check>,
}

impl VerifyReport {
    fn record(&mut self, subject: &str, check: &str, expected: String, found: String) {
        let ok = expected == found;
        self.checks.push(Check {
            subject: subject.to_owned(),
            check: check.to_owned(),
            result: if ok { "ok" } else { "mismatch" },
            expected: (!ok).then_some(expected),
            found: (!ok).then_some(found),
        });
    }
    fn ok(&mut self, subject: &str, check: &str) {
        self.record(subject, check, String::new(), String::new());
    }
    fn skip(&mut self, subject: &str, check: &str, why: &str) {
        self.checks.push(Check {
            subject: subject.to_owned(),
            check: check.to_owned(),
            result: "skipped",
            expected: None,
            found: Some(why.to_owned()),
        });
    }
    /// The mismatches.
    pub fn mismatches(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.result == "mismatch")
    }
    /// True when nothing mismatched.
    pub fn is_ok(&self) -> bool {
        self.mismatches().next().is_none()
    }
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Manifest {
    /// The entries as the JSON array of the design's manifest.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.entries).unwrap_or_default()
    }

    /// The graph in Graphviz dot: versions as ellipses labelled `source:short`, runs as
    /// boxes, asserted links dashed.
    pub fn to_dot(&self) -> String {
        // A graph node per (source, version): two sources at the same commit are two nodes.
        let vid = |sv: &SourceVersion| {
            format!(
                "v_{}_{}_{}",
                dot_escape(sv.source.as_str()),
                sv.version.algo(),
                sv.version.hex()
            )
        };
        let mut out =
            String::from("digraph provenance {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n");
        let mut present: BTreeSet<String> = BTreeSet::new();
        for e in &self.entries {
            match e {
                Entry::Version(v) => {
                    let id = vid(&v.full);
                    present.insert(id.clone());
                    out.push_str(&format!(
                        "  \"{id}\" [shape=ellipse, label=\"{}:{}\\n{}\"];\n",
                        dot_escape(v.full.source.as_str()),
                        v.id,
                        dot_escape(&v.kind)
                    ));
                }
                Entry::Run(r) => {
                    let id = format!("r_{}", r.full.id.to_hex());
                    present.insert(id.clone());
                    out.push_str(&format!(
                        "  \"{id}\" [shape=box, style=filled, fillcolor=\"#eeeeee\", label=\"node {}\\nrun {} ({})\"];\n",
                        r.node, r.id, r.status
                    ));
                }
                Entry::Link(_) => {}
            }
        }
        for e in &self.entries {
            match e {
                Entry::Run(r) => {
                    let id = format!("r_{}", r.full.id.to_hex());
                    for i in &r.full.inputs {
                        if present.contains(&vid(i)) {
                            out.push_str(&format!("  \"{}\" -> \"{id}\";\n", vid(i)));
                        }
                    }
                    for o in &r.full.outputs {
                        if present.contains(&vid(o)) {
                            out.push_str(&format!("  \"{id}\" -> \"{}\";\n", vid(o)));
                        }
                    }
                }
                Entry::Link(l) => {
                    let (a, b) = (vid(&l.full.from), vid(&l.full.to));
                    if present.contains(&a) && present.contains(&b) {
                        out.push_str(&format!(
                            "  \"{a}\" -> \"{b}\" [style=dashed, label=\"asserted\"];\n"
                        ));
                    }
                }
                Entry::Version(_) => {}
            }
        }
        out.push_str("}\n");
        out
    }

    fn target_version(&self) -> Result<&VersionEntry> {
        let Target::Version(sv) = &self.target else {
            return Err(Error::invalid(
                "export target",
                self.target.to_string(),
                "exports describe a version: give SOURCE:VERSION",
            ));
        };
        self.entries
            .iter()
            .find_map(|e| match e {
                Entry::Version(v) if &v.full == sv => Some(v),
                _ => None,
            })
            .ok_or_else(|| Error::not_found("version", sv.to_string()))
    }

    fn run(&self, id: &RunId) -> Option<&RunEntry> {
        self.entries.iter().find_map(|e| match e {
            Entry::Run(r) if &r.full.id == id => Some(&**r),
            _ => None,
        })
    }

    fn kind_of(&self, sv: &SourceVersion) -> (String, String) {
        self.entries
            .iter()
            .find_map(|e| match e {
                Entry::Version(v) if &v.full == sv => Some((v.kind.clone(), v.url.clone())),
                _ => None,
            })
            .unwrap_or_else(|| ("-".into(), "-".into()))
    }

    /// An in-toto Statement (v1) with a SLSA Provenance v1 predicate for the target
    /// version, which must have been produced by a run.
    pub fn to_slsa(&self, project: &Project) -> Result<serde_json::Value> {
        let v = self.target_version()?;
        let snap = project.store().snapshot()?;
        let rec: VersionRecord = snap
            .read_json(&paths::version(&v.full.source, &v.full.version))?
            .ok_or_else(|| Error::not_found("version record", v.full.to_string()))?;
        let run_id = rec.run.ok_or_else(|| {
            Error::invalid(
                "export target",
                v.full.to_string(),
                "this version was not produced by a run (it is a global source's version): it has no build to describe",
            )
        })?;
        let run = self.run(&run_id).ok_or_else(|| {
            Error::corrupt(format!(
                "run {} is missing from the manifest",
                run_id.short()
            ))
        })?;
        let digest = |sv: &SourceVersion| {
            let (kind, _) = self.kind_of(sv);
            let key = if kind == "git" && sv.version.algo() == crate::Algo::Sha1 {
                "gitCommit".to_owned()
            } else {
                sv.version.algo().to_string()
            };
            json!({ key: sv.version.hex() })
        };
        let deps: Vec<_> = run
            .full
            .inputs
            .iter()
            .map(|i| {
                let (kind, url) = self.kind_of(i);
                let uri = if kind == "git" {
                    format!("git+{url}@{}", i.version.hex())
                } else {
                    url
                };
                json!({ "name": i.source, "uri": uri, "digest": digest(i),
                        "annotations": { "dtk.kind": kind, "dtk.version": i.version.to_string() } })
            })
            .collect();
        let node: Option<NodeSpec> = snap.read_json(&paths::node(&run.full.node))?;
        let mut metadata = json!({ "invocationId": run.full.id.to_hex() });
        if let Some(t) = run.full.started_ms {
            metadata["startedOn"] = json!(rfc3339(t));
        }
        if let Some(t) = run.full.ended_ms {
            metadata["finishedOn"] = json!(rfc3339(t));
        }
        Ok(json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [ { "name": format!("{}:{}", v.full.source, v.full.version), "digest": digest(&v.full) } ],
            "predicateType": "https://slsa.dev/provenance/v1",
            "predicate": {
                "buildDefinition": {
                    "buildType": "https://github.com/dtk-project/dtk/node-run/v1",
                    "externalParameters": {
                        "node": run.full.node.to_hex(),
                        "command": node.as_ref().map(|n| &n.command),
                        "script": node.as_ref().and_then(|n| n.script.as_ref()),
                        "inputs": run.full.inputs.iter().map(|i| i.source.as_str()).collect::<Vec<_>>(),
                        "outputs": run.full.outputs.iter().map(|o| o.source.as_str()).collect::<Vec<_>>(),
                    },
                    "internalParameters": { "labels": node.as_ref().map(|n| &n.labels), "attempt": run.full.attempt },
                    "resolvedDependencies": deps,
                },
                "runDetails": {
                    "builder": { "id": format!("https://github.com/dtk-project/dtk/worker/{}", run.full.worker.as_deref().unwrap_or("unknown")) },
                    "metadata": metadata,
                }
            }
        }))
    }

    /// A W3C PROV-JSON document: versions are entities, runs activities, with `used`,
    /// `wasGeneratedBy`, `wasDerivedFrom` and (for asserted links) `wasInfluencedBy`.
    pub fn to_prov(&self) -> serde_json::Value {
        let ent = |sv: &SourceVersion| {
            let safe: String = sv
                .source
                .as_str()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("dtk:{safe}.{}.{}", sv.version.algo(), sv.version.hex())
        };
        let act = |r: &RunId| format!("dtk:run.{}", r.to_hex());
        let mut entity = serde_json::Map::new();
        let mut activity = serde_json::Map::new();
        let mut used = serde_json::Map::new();
        let mut generated = serde_json::Map::new();
        let mut derived = serde_json::Map::new();
        let mut influenced = serde_json::Map::new();
        let mut n = 0;
        let mut next = |p: &str| {
            n += 1;
            format!("_:{p}{n}")
        };
        for e in &self.entries {
            match e {
                Entry::Version(v) => {
                    entity.insert(
                        ent(&v.full),
                        json!({ "prov:label": format!("{}:{}", v.full.source, v.id),
                                "dtk:source": v.full.source, "dtk:kind": v.kind,
                                "dtk:location": v.url, "dtk:version": v.full.version.to_string() }),
                    );
                }
                Entry::Run(r) => {
                    let mut a = json!({ "prov:label": format!("run {} of node {}", r.id, r.node),
                                        "dtk:node": r.full.node.to_hex(), "dtk:status": r.status.to_string() });
                    if let Some(t) = r.full.started_ms {
                        a["prov:startTime"] = json!(rfc3339(t));
                    }
                    if let Some(t) = r.full.ended_ms {
                        a["prov:endTime"] = json!(rfc3339(t));
                    }
                    activity.insert(act(&r.full.id), a);
                    for i in &r.full.inputs {
                        used.insert(
                            next("u"),
                            json!({ "prov:activity": act(&r.full.id), "prov:entity": ent(i) }),
                        );
                    }
                    for o in &r.full.outputs {
                        generated.insert(
                            next("g"),
                            json!({ "prov:entity": ent(o), "prov:activity": act(&r.full.id) }),
                        );
                        for i in &r.full.inputs {
                            derived.insert(
                                next("d"),
                                json!({ "prov:generatedEntity": ent(o), "prov:usedEntity": ent(i), "prov:activity": act(&r.full.id) }),
                            );
                        }
                    }
                }
                Entry::Link(l) => {
                    influenced.insert(
                        next("l"),
                        json!({ "prov:influencee": ent(&l.full.to), "prov:influencer": ent(&l.full.from), "dtk:relation": "asserted" }),
                    );
                }
            }
        }
        // Entities referenced by runs but outside the manifest (downstream views).
        let mut doc = json!({
            "prefix": { "dtk": "https://github.com/dtk-project/dtk/ns#" },
            "entity": entity,
        });
        for (k, v) in [
            ("activity", activity),
            ("used", used),
            ("wasGeneratedBy", generated),
            ("wasDerivedFrom", derived),
            ("wasInfluencedBy", influenced),
        ] {
            if !v.is_empty() {
                doc[k] = serde_json::Value::Object(v);
            }
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    /// A chain `c0 -> step 1 -> c1 -> ... -> cN`, written as records (nothing runs).
    fn chain_project(dir: &std::path::Path, n: usize) -> crate::Project {
        use crate::project::paths;
        use crate::{Command, Name, NodeSpec, RunId, RunRecord, RunStatus, SourceSpec};
        use crate::{SourceVersion, Version, VersionRecord};
        let p = crate::Project::init(
            dir,
            std::sync::Arc::new(crate::source::Registry::new()),
            crate::InitOptions::default(),
        )
        .unwrap();
        let sv = |i: usize| SourceVersion {
            source: Name::new(&format!("c{i}")).unwrap(),
            version: format!("md5:{:032x}", i + 1).parse::<Version>().unwrap(),
        };
        p.store()
            .transact("chain", |tx| {
                for i in 0..=n {
                    let mut s = SourceSpec::new(sv(i).source, "path", format!("/nowhere/c{i}"));
                    s.latest = Some(sv(i).version);
                    crate::records::put_source(tx, &s)?;
                }
                let mut previous: Option<RunRecord> = None;
                for i in 0..=n {
                    if i > 0 {
                        let mut node = NodeSpec::new(Command::Argv(vec![format!("step {i}")]));
                        node.inputs = vec![sv(i - 1).source];
                        node.outputs = vec![sv(i).source];
                        tx.put_json(&paths::node(&node.id()), &node)?;
                        let mut r = RunRecord {
                            id: RunId::compute(&node.id(), &[sv(i - 1)], 0),
                            node: node.id(),
                            attempt: 0,
                            inputs: vec![sv(i - 1)],
                            outputs: vec![sv(i)],
                            status: RunStatus::Success,
                            exit_code: Some(0),
                            error: None,
                            worker: Some("test:1".into()),
                            queued_ms: i as u64,
                            started_ms: Some(i as u64),
                            ended_ms: Some(i as u64 + 1),
                            lease_until_ms: None,
                            input_digests: vec![],
                            log_digest: None,
                            staging: None,
                            read_files: Default::default(),
                            worker_key: None,
                            worker_signature: None,
                            digest: None,
                        };
                        r.seal()?;
                        let id = tx.put_json(&paths::run(&r.id), &r)?;
                        tx.put_id(&paths::consumer(&sv(i - 1), &r.id), id);
                        previous = Some(r);
                    }
                    let run = previous.as_ref();
                    let mut v = VersionRecord {
                        source: sv(i).source,
                        version: sv(i).version,
                        recorded_ms: None,
                        seq: None,
                        run: run.map(|r| r.id),
                        node: run.map(|r| r.node),
                        inputs: run.map(|r| r.inputs.clone()).unwrap_or_default(),
                        extra: Default::default(),
                        run_digest: run.and_then(|r| r.digest.clone()),
                        origin: None,
                        digest: None,
                    };
                    v.seal()?;
                    tx.put_json(&paths::version(&v.source, &v.version), &v)?;
                }
                Ok(())
            })
            .unwrap();
        p
    }

    /// A long chain is walked without recursion: its manifests (upstream from the end,
    /// downstream from the start) fit a thread with a small stack, in the documented order.
    #[test]
    fn a_long_chain_is_walked_on_a_small_stack() {
        use super::*;
        const N: usize = 2000;
        let dir = tempfile::tempdir().unwrap();
        let p = chain_project(dir.path(), N);
        let sv = |i: usize| SourceVersion {
            source: Name::new(&format!("c{i}")).unwrap(),
            version: format!("md5:{:032x}", i + 1).parse::<Version>().unwrap(),
        };
        let (up, down) = std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(1 << 20)
                .spawn_scoped(s, || {
                    let up = p.manifest(Target::Version(sv(N)), InspectOptions::new());
                    let down = p.manifest(
                        Target::Version(sv(0)),
                        InspectOptions::new().with_downstream(true),
                    );
                    (up.unwrap(), down.unwrap())
                })
                .unwrap()
                .join()
                .unwrap()
        });
        let names = |m: &Manifest| -> Vec<String> {
            m.entries
                .iter()
                .map(|e| match e {
                    Entry::Version(v) => format!("{} {}", v.source, v.kind),
                    Entry::Run(r) => format!("run {}", r.full.outputs[0].source),
                    Entry::Link(l) => format!("link {}", l.to),
                })
                .collect()
        };
        // Upstream: ancestors first, each run before its output.
        let mut expected = vec!["c0 path".to_owned()];
        for i in 1..=N {
            expected.push(format!("run c{i}"));
            expected.push(format!("c{i} path"));
        }
        assert_eq!(names(&up), expected);
        assert_eq!(
            up.root_digest.as_deref().map(|d| d.starts_with("blake3")),
            Some(true)
        );
        // Downstream: the same order here, a version before the runs that read it.
        assert_eq!(names(&down), expected);
    }

    #[test]
    fn rfc3339_formats() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(1_764_170_000_123),
            "2025-11-26T15:13:20.123Z"
        );
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_forged_worker_key_or_statement_is_a_mismatch() {
        use super::*;
        use crate::remote::{ResultStatement, WorkerSignature, STATEMENT_TYPE};
        let key = crate::SigningKey::generate("w@x").unwrap_or_else(|e| panic!("{e}"));
        let other = crate::SigningKey::generate("o@x").unwrap_or_else(|e| panic!("{e}"));
        let run_id: RunId = "09".repeat(32).parse().unwrap_or_else(|e| panic!("{e}"));
        let node: crate::NodeId = "07".repeat(32).parse().unwrap_or_else(|e| panic!("{e}"));
        let statement = ResultStatement {
            kind: STATEMENT_TYPE.into(),
            run: run_id,
            node,
            attempt: 0,
            inputs: Vec::new(),
            outputs: BTreeMap::new(),
            log: crate::digest::blob(b"log"),
            ending: "success".into(),
            exit_code: None,
            worker: "h:1".into(),
        };
        let (_, signature) = statement.sign(&key).unwrap_or_else(|e| panic!("{e}"));
        let mut run: RunRecord = serde_json::from_value(serde_json::json!({
            "id": run_id, "node": node, "inputs": [], "status": "success", "queued_ms": 0,
            "worker": "h:1", "log_digest": crate::digest::blob(b"log"),
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        run.worker_key = Some(key.fingerprint());
        run.worker_signature = Some(WorkerSignature {
            statement,
            signature,
        });
        let check = |run: &RunRecord| {
            let bytes = serde_json::to_vec(run).unwrap_or_default();
            let mut report = VerifyReport {
                target: String::new(),
                checks: Vec::new(),
            };
            verify_worker(
                "run x",
                run,
                &bytes,
                &crate::signing::AllowedSigners::default(),
                &mut report,
            );
            report
        };
        let good = check(&run);
        assert!(good.is_ok(), "{:?}", good.checks);
        assert!(good
            .checks
            .iter()
            .any(|c| c.check == format!("signed by worker key {}", key.fingerprint())));
        // Another key named in the record.
        let mut forged = run.clone();
        forged.worker_key = Some(other.fingerprint());
        assert!(!check(&forged).is_ok());
        // The statement changed (another worker named), or the run's worker changed.
        let mut forged = run.clone();
        if let Some(s) = forged.worker_signature.as_mut() {
            s.statement.worker = "evil:1".into();
        }
        assert!(!check(&forged).is_ok());
        let mut forged = run.clone();
        forged.worker = Some("evil:1".into());
        assert!(!check(&forged).is_ok());
        // A key named with no signature.
        let mut forged = run.clone();
        forged.worker_signature = None;
        assert!(!check(&forged).is_ok());
        // Re-signed by another key, which the record now names: valid, but a workers file
        // that lists only the real key does not trust it.
        let mut forged = run.clone();
        if let Some(s) = forged.worker_signature.as_mut() {
            s.signature = s.statement.sign(&other).unwrap_or_else(|e| panic!("{e}")).1;
        }
        forged.worker_key = Some(other.fingerprint());
        assert!(check(&forged).is_ok());
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("workers");
        std::fs::write(
            &file,
            key.allowed_signers_line_for(crate::signing::WORKER_NAMESPACE)
                .unwrap_or_default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut workers = crate::signing::AllowedSigners::default();
        workers
            .add_file_for(&file, crate::signing::WORKER_NAMESPACE)
            .unwrap_or_else(|e| panic!("{e}"));
        let bytes = serde_json::to_vec(&forged).unwrap_or_default();
        let mut report = VerifyReport {
            target: String::new(),
            checks: Vec::new(),
        };
        verify_worker("run x", &forged, &bytes, &workers, &mut report);
        assert!(!report.is_ok(), "{:?}", report.checks);
    }
}
