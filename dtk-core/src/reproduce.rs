//! `dkt reproduce`: run a recorded run again, in a fresh scratch area, on exactly its
//! recorded input versions and with its node's recorded command, then compare what it
//! writes with the versions the run published. Nothing is published and no run is
//! recorded; the result is a [`Reproduction`] record, linked to the run
//! (`reproductions/`, see `docs/format.md`), exportable as an in-toto statement with the
//! SLSA verification-summary predicate ([`Reproduction::to_vsa`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::engine::{run_steps, Scope, StepsEnded};
use crate::error::IoResultExt;
use crate::model::now_ms;
use crate::project::{paths, read_source};
use crate::{Error, Name, NodeId, NodeSpec, Project, Result, RunId, RunRecord, SourceVersion};
use crate::{RunStatus, Version};

/// How a reproduction came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every output is identical to the recorded version.
    Identical,
    /// The command succeeded, and at least one output differs from the recorded version.
    Differs,
    /// The command failed (or could not start): nothing to compare.
    Failed,
    /// A recorded input version (or a recorded output version, to compare with) can no
    /// longer be materialized.
    Unavailable,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Identical => "identical",
            Outcome::Differs => "differs",
            Outcome::Failed => "failed",
            Outcome::Unavailable => "unavailable",
        })
    }
}

/// A file of an output, by its path inside the output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSize {
    /// `/`-separated path inside the output.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A file present in both, with different content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// `/`-separated path inside the output.
    pub path: String,
    /// Its size in the recorded version.
    pub recorded_size: u64,
    /// Its size as reproduced.
    pub reproduced_size: u64,
}

/// One output compared with its recorded version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputComparison {
    /// The output source.
    pub source: Name,
    /// The version the run published.
    pub recorded: Version,
    /// How it was compared: `files` (the recorded version materialized by its kind and
    /// compared file by file with what the command wrote, by content).
    pub method: String,
    /// True when no file differs.
    pub identical: bool,
    /// Files the reproduction wrote that the recorded version lacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<FileSize>,
    /// Files of the recorded version the reproduction did not write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<FileSize>,
    /// Files in both whose content differs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<FileChange>,
    /// Why it could not be compared (the recorded version cannot be read back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the reproduction could not do as the run did (a path output keeps only its
    /// current content, so the version the run started from may be gone: it starts empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A recorded version that could not be materialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    /// The source at its version.
    pub version: SourceVersion,
    /// What its kind said.
    pub error: String,
}

/// `reproductions/<a>/<b>/<run-id>/<id>.json`: one reproduction of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reproduction {
    /// Its ID: 32 hex digits (BLAKE3 of the run ID, the host and process, and the start
    /// time), unique per attempt.
    pub id: String,
    /// The run reproduced.
    pub run: RunId,
    /// The [`digest`](RunRecord::digest) of the run's record when it was reproduced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_digest: Option<String>,
    /// The run's node.
    pub node: NodeId,
    /// The input versions it ran on (the run's).
    pub inputs: Vec<SourceVersion>,
    /// It ran through the sandbox.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
    /// How it came out.
    pub outcome: Outcome,
    /// Each output of the run, compared (empty unless the command succeeded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputComparison>,
    /// The version that could not be materialized (outcome `unavailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<Unavailable>,
    /// The command's exit code, when it failed with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the command failed without an exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `host:pid` of the process that reproduced it.
    pub worker: String,
    /// When it started and ended (milliseconds since the epoch).
    pub started_ms: u64,
    /// When it ended.
    pub ended_ms: u64,
    /// `blake3:HEX` of its stored log (`<id>.log` beside the record), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_digest: Option<String>,
    /// The record's seal ([`crate::digest::seal`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// `reproductions/<a>/<b>/<run-id>`: the reproductions of a run.
pub fn dir_of(run: &RunId) -> String {
    let h = run.to_hex();
    format!("reproductions/{}/{}/{h}", &h[..1], &h[1..2])
}

/// The path of reproduction `id` of `run`.
pub fn path_of(run: &RunId, id: &str) -> String {
    format!("{}/{id}.json", dir_of(run))
}

impl Reproduction {
    /// The exit status `dkt reproduce` ends with: 0 identical, 1 differs, 3 cannot be
    /// reproduced (a version unavailable, the command failed).
    pub fn exit_code(&self) -> u8 {
        match self.outcome {
            Outcome::Identical => 0,
            Outcome::Differs => 1,
            Outcome::Failed | Outcome::Unavailable => 3,
        }
    }

    /// An in-toto Statement (v1) with the SLSA verification-summary predicate
    /// (`https://slsa.dev/verification_summary/v1`): the run's outputs are the subjects,
    /// dtk's reproduction the verifier, `PASSED` when identical.
    pub fn to_vsa(&self, project: &Project) -> Result<serde_json::Value> {
        let snap = project.store().snapshot()?;
        let run: RunRecord = snap
            .read_json(&paths::run(&self.run))?
            .ok_or_else(|| Error::not_found("run", self.run.to_hex()))?;
        let digest = |sv: &SourceVersion| -> Result<serde_json::Value> {
            let kind = read_source(&snap, &sv.source)
                .map(|s| s.kind)
                .unwrap_or_default();
            let key = if kind == "git" && sv.version.algo() == crate::Algo::Sha1 {
                "gitCommit".to_owned()
            } else {
                sv.version.algo().to_string()
            };
            Ok(json!({ key: sv.version.hex() }))
        };
        let subject = run
            .outputs
            .iter()
            .map(|o| Ok(json!({ "name": o.to_string(), "digest": digest(o)? })))
            .collect::<Result<Vec<_>>>()?;
        let mut input_attestations = Vec::new();
        if let Some(d) = &run.digest {
            let (algo, hex) = d.split_once(':').unwrap_or(("blake3-jcs", d));
            input_attestations.push(json!({
                "uri": format!("dtk:run/{}", run.id.to_hex()),
                "digest": { algo: hex },
            }));
        }
        let result = if self.outcome == Outcome::Identical {
            "PASSED"
        } else {
            "FAILED"
        };
        Ok(json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": subject,
            "predicateType": "https://slsa.dev/verification_summary/v1",
            "predicate": {
                "verifier": { "id": "https://github.com/dtk-project/dtk/reproduce/v1" },
                "timeVerified": crate::inspect::rfc3339(self.ended_ms),
                "resourceUri": format!("dtk:run/{}", run.id.to_hex()),
                "policy": { "uri": format!("https://github.com/dtk-project/dtk/reproduce/v1#{}", if self.sandbox { "sandboxed" } else { "unsandboxed" }) },
                "inputAttestations": input_attestations,
                "verificationResult": result,
                "verifiedLevels": [ if result == "PASSED" { "DTK_REPRODUCED_IDENTICAL" } else { "DTK_REPRODUCED_DIFFERENT" } ],
                "slsaVersion": "1.0",
            }
        }))
    }
}

/// The files of a tree: path, size and BLAKE3 of the content (a symlink: of its target).
/// A top-level `.git` is left out (a git kind's checkout metadata, not content).
fn files(root: &Path) -> Result<BTreeMap<String, (u64, [u8; 32])>> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, (u64, [u8; 32])>) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .at(dir)?
            .collect::<std::io::Result<Vec<_>>>()
            .at(dir)?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if prefix.is_empty() && name == ".git" {
                continue;
            }
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).at(&p)?;
            if meta.is_dir() {
                walk(&p, &rel, out)?;
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&p).at(&p)?;
                let t = target.to_string_lossy();
                out.insert(
                    rel,
                    (t.len() as u64, *blake3::hash(t.as_bytes()).as_bytes()),
                );
            } else {
                out.insert(rel, (meta.len(), hash_file(&p)?));
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    let meta = std::fs::metadata(root).at(root)?;
    if meta.is_dir() {
        walk(root, "", &mut out)?;
    } else {
        let hash = hash_file(root)?;
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.insert(name, (meta.len(), hash));
    }
    Ok(out)
}

fn hash_file(p: &Path) -> Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    let mut f = std::fs::File::open(p).at(p)?;
    std::io::copy(&mut f, &mut h).at(p)?;
    Ok(*h.finalize().as_bytes())
}

/// Compare the tree `recorded` (the published version) with `reproduced`.
pub fn compare_trees(
    source: &Name,
    version: &Version,
    recorded: &Path,
    reproduced: &Path,
) -> Result<OutputComparison> {
    let a = files(recorded)?;
    let b = files(reproduced)?;
    let mut c = OutputComparison {
        source: source.clone(),
        recorded: version.clone(),
        method: "files".to_owned(),
        identical: true,
        added: Vec::new(),
        removed: Vec::new(),
        changed: Vec::new(),
        error: None,
        note: None,
    };
    for (path, (size, hash)) in &a {
        match b.get(path) {
            None => c.removed.push(FileSize {
                path: path.clone(),
                size: *size,
            }),
            Some((s2, h2)) if h2 != hash => c.changed.push(FileChange {
                path: path.clone(),
                recorded_size: *size,
                reproduced_size: *s2,
            }),
            Some(_) => {}
        }
    }
    for (path, (size, _)) in &b {
        if !a.contains_key(path) {
            c.added.push(FileSize {
                path: path.clone(),
                size: *size,
            });
        }
    }
    c.identical = c.added.is_empty() && c.removed.is_empty() && c.changed.is_empty();
    Ok(c)
}

fn ensure_dir(p: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(p).at(p)?;
    Ok(p.to_owned())
}

impl Project {
    /// The run `what` names: a run ID (prefix of at least 4 hex digits), or
    /// `SOURCE:VERSION` (a version produced by a run: that run).
    pub fn run_of(&self, what: &str) -> Result<RunRecord> {
        if what.contains(':') {
            let sv = crate::engine::resolve_recorded(self, what)?;
            let snap = self.store().snapshot()?;
            let rec: crate::VersionRecord = snap
                .read_json(&paths::version(&sv.source, &sv.version))?
                .ok_or_else(|| Error::not_found("version record", sv.to_string()))?;
            let run = rec.run.ok_or_else(|| {
                Error::invalid(
                    "reproduce target",
                    sv.to_string(),
                    "this version was not produced by a run: there is nothing to reproduce",
                )
            })?;
            return snap
                .read_json(&paths::run(&run))?
                .ok_or_else(|| Error::not_found("run", run.to_hex()));
        }
        self.run_record(what)
    }

    /// The reproductions recorded for `run`, oldest first.
    pub fn reproductions(&self, run: &RunId) -> Result<Vec<Reproduction>> {
        let snap = self.store().snapshot()?;
        let mut all: Vec<Reproduction> = snap.read_tree_json(&dir_of(run))?;
        all.sort_by(|a, b| a.started_ms.cmp(&b.started_ms).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    /// Reproduce run `what` (see the module's documentation) and record the result;
    /// `sandbox` runs it through the sandbox whatever the node says. The log of the
    /// command goes with the record. An error means nothing was recorded (the run is
    /// not one that succeeded, the store cannot be read, ...).
    pub async fn reproduce(&self, what: &str, sandbox: bool) -> Result<Reproduction> {
        let run = self.run_of(what)?;
        if run.status != RunStatus::Success {
            return Err(Error::invalid(
                "reproduce target",
                run.id.short(),
                format!(
                    "run {} ended `{}`: only a successful run's outputs can be reproduced",
                    run.id.short(),
                    run.status
                ),
            ));
        }
        let snap = self.store().snapshot()?;
        let node: NodeSpec = snap
            .read_json(&paths::node(&run.node))?
            .ok_or_else(|| Error::not_found("node", run.node.to_hex()))?;
        let sandboxed = sandbox || self.sandboxed(&node);
        let started_ms = now_ms();
        let worker = crate::engine::worker_id();
        let id = {
            let h =
                blake3::hash(format!("{}\n{worker}\n{started_ms}\n", run.id.to_hex()).as_bytes());
            crate::id::hex(&h.as_bytes()[..16])
        };
        let mut rep = Reproduction {
            id,
            run: run.id,
            run_digest: run.digest.clone(),
            node: run.node,
            inputs: run.inputs.clone(),
            sandbox: sandboxed,
            outcome: Outcome::Identical,
            outputs: Vec::new(),
            unavailable: None,
            exit_code: None,
            error: None,
            worker,
            started_ms,
            ended_ms: 0,
            log_digest: None,
            digest: None,
        };
        let tmp = ensure_dir(&self.dkt_dir().join("tmp"))?;
        let scratch = tempfile::Builder::new()
            .prefix(&format!("repro-{}-", run.id.short()))
            .tempdir_in(&tmp)
            .at(&tmp)?;
        let log = self
            .reproduce_in(&run, &node, sandboxed, scratch.path(), &mut rep)
            .await?;
        rep.ended_ms = now_ms();
        if !log.is_empty() {
            rep.log_digest = Some(format!("blake3:{}", blake3::hash(log.as_bytes()).to_hex()));
        }
        rep.digest = Some(crate::digest::seal(&rep)?);
        let message = format!(
            "reproduce run {} of node {}: {}",
            run.id.short(),
            run.node.short(),
            rep.outcome
        );
        let path = path_of(&run.id, &rep.id);
        let log_path = format!("{}/{}.log", dir_of(&run.id), rep.id);
        self.store().transact(&message, |tx| {
            tx.put_json(&path, &rep)?;
            if !log.is_empty() {
                tx.put(&log_path, log.as_bytes())?;
            }
            Ok(())
        })?;
        Ok(rep)
    }

    async fn reproduce_in(
        &self,
        run: &RunRecord,
        node: &NodeSpec,
        sandboxed: bool,
        scratch: &Path,
        rep: &mut Reproduction,
    ) -> Result<String> {
        let snap = self.store().snapshot()?;
        let work = ensure_dir(&scratch.join("work"))?;
        let mut scope = Scope::default();
        let mut input_roots = Vec::new();
        for sv in &run.inputs {
            let spec = read_source(&snap, &sv.source)?;
            let source = self.open_source(&spec)?;
            let dir = ensure_dir(&scratch.join(format!("in-{}", sv.source)))?;
            let root = match source.materialize(&sv.version, &dir).await {
                Ok(r) => r,
                Err(e) => {
                    rep.outcome = Outcome::Unavailable;
                    rep.unavailable = Some(Unavailable {
                        version: sv.clone(),
                        error: crate::project::error_chain(&e),
                    });
                    return Ok(String::new());
                }
            };
            input_roots.push(dir.clone());
            input_roots.push(root.clone());
            let mut fields = source.fields(Some(&sv.version), &root)?;
            if let Some(r) = snap
                .read_json::<crate::VersionRecord>(&paths::version(&sv.source, &sv.version))?
                .and_then(|r| r.extra.get(crate::pattern::REF_FIELD).cloned())
            {
                fields.insert(crate::pattern::REF_FIELD.to_owned(), r);
            }
            scope.add(&sv.source, fields)?;
        }
        // Outputs start as the run's did: the output's version before the one the run
        // published (the one recorded just before it), or empty.
        let mut stages = Vec::new();
        let mut notes: BTreeMap<Name, String> = BTreeMap::new();
        for name in &node.outputs {
            let spec = read_source(&snap, name)?;
            let source = self.open_source(&spec)?;
            let stage = scratch.join(format!("out-{name}"));
            let published = run.outputs.iter().find(|o| &o.source == name);
            let history = crate::records::versions_of(&snap, name)?;
            let base = published.and_then(|p| {
                let i = history.iter().position(|(r, _)| r.version == p.version)?;
                history.get(i + 1).map(|(r, _)| r.version.clone())
            });
            if let Some(v) = base {
                let tmp = ensure_dir(&scratch.join(format!("base-{name}")))?;
                match source.materialize(&v, &tmp).await {
                    Ok(root) => crate::engine::copy_tree(&root, &stage)?,
                    Err(e) => {
                        // A path output keeps only its current content: start empty, and
                        // say so next to the comparison.
                        notes.insert(
                            name.clone(),
                            format!(
                                "started empty: the output's version before the run ({v}) cannot be read back: {}",
                                crate::project::error_chain(&e)
                            ),
                        );
                    }
                }
            }
            ensure_dir(&stage)?;
            scope.add(name, source.fields(None, &stage)?)?;
            stages.push((name.clone(), source, stage, published.cloned()));
        }
        self.add_private(&mut scope);
        let steps = self.plan(node, &scope, Some(scratch))?;
        let sink = crate::process::Sink::new(
            run.id,
            run.node,
            None,
            crate::events::Events::default(),
            self.secrets().clone(),
        );
        let mut env = self.run_env(run.id, run.node, &scope, scope.used_private());
        let sandbox = sandboxed.then(|| {
            let writable = stages.iter().map(|s| s.2.clone()).collect();
            self.sandbox_view(node, scratch, &work, input_roots, writable, &mut env)
        });
        let timeout = self
            .config()
            .run
            .timeout
            .as_deref()
            .map(crate::engine::parse_duration)
            .transpose()?;
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
        let log = self.secrets().redact(&sink.text());
        match ended {
            None => {}
            Some(StepsEnded::Failed { code, error }) => {
                rep.outcome = Outcome::Failed;
                rep.exit_code = code;
                rep.error = error.map(|e| self.secrets().redact(&e));
                return Ok(log);
            }
            Some(StepsEnded::Cancelled) => {
                return Err(Error::Superseded(
                    "the reproduction was cancelled; nothing was recorded".into(),
                ))
            }
        }
        let mut differs = false;
        for (name, source, stage, published) in stages {
            let Some(published) = published else {
                continue;
            };
            let dir = ensure_dir(&scratch.join(format!("rec-{name}")))?;
            let mut c = match source.materialize(&published.version, &dir).await {
                Ok(root) => compare_trees(&name, &published.version, &root, &stage)?,
                Err(e) => {
                    rep.outcome = Outcome::Unavailable;
                    rep.unavailable = Some(Unavailable {
                        version: published.clone(),
                        error: format!(
                            "the version the run published cannot be read back to compare: {}",
                            crate::project::error_chain(&e)
                        ),
                    });
                    OutputComparison {
                        source: name.clone(),
                        recorded: published.version.clone(),
                        method: "files".to_owned(),
                        identical: false,
                        added: Vec::new(),
                        removed: Vec::new(),
                        changed: Vec::new(),
                        error: Some(crate::project::error_chain(&e)),
                        note: None,
                    }
                }
            };
            c.note = notes.remove(&name);
            differs |= !c.identical;
            rep.outputs.push(c);
        }
        if rep.outcome != Outcome::Unavailable {
            rep.outcome = if differs {
                Outcome::Differs
            } else {
                Outcome::Identical
            };
        }
        Ok(log)
    }
}
