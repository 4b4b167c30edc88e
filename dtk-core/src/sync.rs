//! Sharing a project between machines: the metadata remotes, `fetch`, `push`, `pull`,
//! and the record-level merge that `pull` applies (the rules are in `docs/format.md`,
//! "Merging two copies of a project").
//!
//! The transport is the `git` command (any URL git accepts: a path, `file://`, ssh,
//! https, `git://`). A push is `--force-with-lease` on what this project last fetched,
//! so it never overwrites commits it has not seen. A merge is never textual: every record
//! that the other side changed since the common ancestor is merged by the rule of its
//! type, deterministically, so that pulling A into B and B into A give the same records.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command as Process;

use crate::store::Oid;
use serde::Serialize;

use crate::project::paths;
use crate::store::{Snapshot, Tx};
use crate::{Error, Name, Project, Result, RunId, RunRecord, RunStatus, VersionRecord};

/// The branch a remote's records are fetched into: `refs/remotes/<name>/main`.
fn tracking(remote: &str) -> String {
    format!("refs/remotes/{remote}/main")
}

/// A metadata remote of the project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Remote {
    /// Its name (`origin`).
    pub name: String,
    /// Its URL or path.
    pub url: String,
}

/// What [`Project::fetch`] brought.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FetchOutcome {
    /// The remote.
    pub remote: String,
    /// Commits of the remote this project does not have (0: nothing to pull).
    pub incoming: usize,
}

/// What [`Project::push`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushOutcome {
    /// The remote.
    pub remote: String,
    /// Commits the remote did not have.
    pub pushed: usize,
}

/// A record both sides changed differently since their common ancestor: the merge kept
/// one value by its rule and reports both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Conflict {
    /// The record's path in the store.
    pub path: String,
    /// What it is (`pinned of source data`, `declaration of source data`, ...).
    pub what: String,
    /// Both values (JSON text, `null` for a removed record), in byte order.
    pub values: Vec<String>,
    /// The value the merge kept.
    pub kept: String,
}

/// What [`Project::pull`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullOutcome {
    /// The remote.
    pub remote: String,
    /// `up to date`, `fast-forward` or `merged`.
    pub how: &'static str,
    /// Records (files) the merge took from the remote.
    pub records: usize,
    /// Runs recorded on both sides under the same run ID: the one that ended later was
    /// renumbered to the next free attempt (old ID, new ID).
    pub renumbered: Vec<(String, String)>,
    /// Records changed differently on both sides.
    pub conflicts: Vec<Conflict>,
}

impl Project {
    fn git(&self) -> Process {
        let mut c = Process::new("git");
        c.arg("--git-dir").arg(self.store().git_dir());
        c.env("GIT_TERMINAL_PROMPT", "0");
        c
    }

    /// Run git with `args`; its standard output, or an error quoting its message.
    fn git_output(&self, what: &str, args: &[&str]) -> Result<String> {
        let out = self.git().args(args).output().map_err(|e| Error::Remote {
            remote: what.to_owned(),
            message: format!("cannot run git (is it installed?): {e}"),
        })?;
        if !out.status.success() {
            return Err(Error::Remote {
                remote: what.to_owned(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The project's metadata remotes.
    pub fn remotes(&self) -> Result<Vec<Remote>> {
        let out = self
            .git()
            .args(["config", "--get-regexp", r"^remote\..*\.url$"])
            .output()
            .map_err(|e| Error::io(self.store().git_dir(), e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .filter_map(|l| {
                let (key, url) = l.split_once(' ')?;
                let name = key.strip_prefix("remote.")?.strip_suffix(".url")?;
                Some(Remote {
                    name: name.to_owned(),
                    url: url.to_owned(),
                })
            })
            .collect())
    }

    fn remote(&self, name: &str) -> Result<Remote> {
        self.remotes()?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| Error::NotFound {
                what: "remote",
                name: name.to_owned(),
                hint: " (add it with `dkt remote add NAME URL`)".into(),
            })
    }

    /// Add the metadata remote `name` at `url`: a git URL, or the path of another
    /// project (its directory, its `.dkt` or its `.dkt/.git`). URLs holding credentials
    /// are refused (credentials belong in the secrets or git's credential helpers).
    pub fn add_remote(&self, name: &str, url: &str) -> Result<Remote> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !name.starts_with(['.', '-']);
        if !valid {
            return Err(Error::invalid(
                "remote name",
                name,
                "use letters, digits, `-`, `_` and `.`",
            ));
        }
        if has_credentials(url) {
            return Err(Error::invalid(
                "remote URL",
                redact(url),
                "it holds credentials: keep them out of URLs (they would be stored in .dkt/.git/config); use git's credential helpers",
            ));
        }
        if self.remotes()?.iter().any(|r| r.name == name) {
            return Err(Error::AlreadyExists {
                what: "remote",
                name: name.to_owned(),
            });
        }
        let url = resolve_local(url);
        let fetch = format!("+refs/heads/main:{}", tracking(name));
        self.git_output(name, &["config", &format!("remote.{name}.url"), &url])?;
        self.git_output(name, &["config", &format!("remote.{name}.fetch"), &fetch])?;
        Ok(Remote {
            name: name.to_owned(),
            url,
        })
    }

    /// Remove the metadata remote `name` (and what was fetched from it).
    pub fn remove_remote(&self, name: &str) -> Result<Remote> {
        let remote = self.remote(name)?;
        self.git_output(name, &["remote", "remove", name])?;
        Ok(remote)
    }

    /// Fetch the records of `remote` (into `refs/remotes/<remote>/main`), without merging.
    pub async fn fetch(&self, remote: &str) -> Result<FetchOutcome> {
        let r = self.remote(remote)?;
        let this = self.clone();
        let name = r.name.clone();
        tokio::task::spawn_blocking(move || {
            this.git_output(
                &name,
                &[
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    "--no-write-fetch-head",
                    &name,
                ],
            )
        })
        .await
        .map_err(|e| Error::corrupt(format!("the fetch task failed: {e}")))??;
        let incoming = self.count_commits(&tracking(remote), "refs/heads/main")?;
        Ok(FetchOutcome {
            remote: remote.to_owned(),
            incoming,
        })
    }

    /// Commits reachable from `a` and not from `b` (0 when `a` does not exist).
    fn count_commits(&self, a: &str, b: &str) -> Result<usize> {
        if self.store().reference(a)?.is_none() {
            return Ok(0);
        }
        let range = if self.store().reference(b)?.is_some() {
            format!("{b}..{a}")
        } else {
            a.to_owned()
        };
        let out = self.git_output("rev-list", &["rev-list", "--count", &range])?;
        out.trim()
            .parse()
            .map_err(|_| Error::corrupt(format!("git rev-list printed {out:?}")))
    }

    /// Commits of this project that `remote` did not have when it was last fetched, and
    /// commits fetched from it not merged yet.
    pub fn ahead_behind(&self, remote: &str) -> Result<(usize, usize)> {
        let t = tracking(remote);
        if self.store().reference(&t)?.is_none() {
            let all = self.git_output("rev-list", &["rev-list", "--count", "refs/heads/main"])?;
            return Ok((all.trim().parse().unwrap_or(0), 0));
        }
        Ok((
            self.count_commits("refs/heads/main", &t)?,
            self.count_commits(&t, "refs/heads/main")?,
        ))
    }

    /// Push this project's records to `remote`. Refused, changing nothing, when the remote
    /// has commits this project has not merged (pull first).
    pub async fn push(&self, remote: &str) -> Result<PushOutcome> {
        match self.push_once(remote).await {
            Err(Error::Conflict(why)) => {
                // What we knew of the remote may just be stale (a push killed after the
                // remote took it, a remote added to a project it already holds): look
                // again; if the remote holds nothing we have not merged, push again.
                self.fetch(remote).await?;
                let t = tracking(remote);
                let head = self.store().head()?;
                match self.store().reference(&t)? {
                    Some(theirs) if theirs == head || self.is_ancestor(theirs, head)? => {
                        self.push_once(remote).await
                    }
                    _ => Err(Error::Conflict(why)),
                }
            }
            other => other,
        }
    }

    async fn push_once(&self, remote: &str) -> Result<PushOutcome> {
        let r = self.remote(remote)?;
        let t = tracking(remote);
        let lease = self
            .store()
            .reference(&t)?
            .map(|id| id.to_string())
            .unwrap_or_default();
        let (pushed, _) = self.ahead_behind(remote)?;
        let this = self.clone();
        let name = r.name.clone();
        let out = tokio::task::spawn_blocking(move || {
            this.git()
                .args([
                    "push",
                    "--porcelain",
                    &format!("--force-with-lease=refs/heads/main:{lease}"),
                    &name,
                    "refs/heads/main:refs/heads/main",
                ])
                .output()
        })
        .await
        .map_err(|e| Error::corrupt(format!("the push task failed: {e}")))?
        .map_err(|e| Error::io(self.store().git_dir(), e))?;
        if !out.status.success() {
            let said = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if ["stale info", "rejected", "non-fast-forward", "fetch first"]
                .iter()
                .any(|w| said.contains(w))
            {
                return Err(Error::Conflict(format!(
                    "the remote {remote:?} has records this project has not merged: run `dkt pull {remote}` first, then push again"
                )));
            }
            return Err(Error::Remote {
                remote: remote.to_owned(),
                message: format!("cannot push to {}: {}", r.url, said.trim()),
            });
        }
        // What the remote has now is what this project has.
        let head = self.store().head()?;
        self.git_output(remote, &["update-ref", &t, &head.to_string()])?;
        Ok(PushOutcome {
            remote: remote.to_owned(),
            pushed,
        })
    }

    /// Fetch `remote` and merge its records into this project's (see the module's
    /// documentation for the rules).
    pub async fn pull(&self, remote: &str) -> Result<PullOutcome> {
        self.fetch(remote).await?;
        self.merge_remote(remote)
    }

    /// Merge what was fetched from `remote` (see [`Project::pull`]). The signers the
    /// merged records name (`signers/`) are trusted from then on, as a clone trusts the
    /// signers it first saw.
    pub fn merge_remote(&self, remote: &str) -> Result<PullOutcome> {
        let outcome = self.merge_fetched(remote)?;
        if outcome.how != "up to date" {
            crate::signing::trust_cloned_signers(self)?;
        }
        Ok(outcome)
    }

    fn merge_fetched(&self, remote: &str) -> Result<PullOutcome> {
        let mut outcome = PullOutcome {
            remote: remote.to_owned(),
            how: "up to date",
            records: 0,
            renumbered: Vec::new(),
            conflicts: Vec::new(),
        };
        let Some(theirs) = self.store().reference(&tracking(remote))? else {
            return Ok(outcome);
        };
        let store = self.store();
        let their_snap = store.snapshot_at(theirs)?;
        let format = their_snap.read("format")?.unwrap_or_default();
        let format = String::from_utf8_lossy(&format).trim().to_owned();
        if !matches!(format.as_str(), "dtk-store 3" | "dtk-store 4") {
            return Err(Error::Conflict(format!(
                "the remote {remote:?} holds a store of format {format:?}; this dkt merges \"dtk-store 3\" and \"dtk-store 4\" (open the remote's project with this dkt to upgrade it)"
            )));
        }
        loop {
            let ours = store.head()?;
            if ours == theirs || self.is_ancestor(theirs, ours)? {
                return Ok(outcome);
            }
            if self.is_ancestor(ours, theirs)? {
                let base = store.snapshot_at(ours)?;
                outcome.records = base.diff(&their_snap)?.len();
                match store.fast_forward(ours, theirs) {
                    Ok(()) => {
                        outcome.how = "fast-forward";
                        // Conflicts the remote already reported stay reported.
                        outcome.conflicts = conflicts(&store.snapshot()?)?;
                        return Ok(outcome);
                    }
                    Err(_) if store.head()? != ours => continue, // moved meanwhile
                    Err(e) => return Err(e),
                }
            }
            break;
        }
        let base_id = self.merge_base(store.head()?, theirs)?;
        let base = store.snapshot_at(base_id)?;
        let message = format!("pull {remote}: merge {}", theirs.short(8));
        let (merged, _) = store.merge(&message, theirs, |tx| {
            let ours_commit = tx.base().commit();
            let mut m = Merge {
                project: self,
                base: &base,
                theirs: &their_snap,
                ours_commit,
                theirs_commit: theirs,
                base_commit: base_id,
                records: 0,
                renumbered: Vec::new(),
                conflicts: Vec::new(),
                moved_runs: BTreeMap::new(),
            };
            m.run(tx)?;
            Ok((m.records, m.renumbered, m.conflicts))
        })?;
        outcome.how = "merged";
        outcome.records = merged.0;
        outcome.renumbered = merged
            .1
            .iter()
            .map(|(a, b)| (a.short(), b.short()))
            .collect();
        outcome.conflicts = merged.2;
        Ok(outcome)
    }

    fn is_ancestor(&self, a: Oid, b: Oid) -> Result<bool> {
        let status = self
            .git()
            .args([
                "merge-base",
                "--is-ancestor",
                &a.to_string(),
                &b.to_string(),
            ])
            .status()
            .map_err(|e| Error::io(self.store().git_dir(), e))?;
        Ok(status.success())
    }

    fn merge_base(&self, a: Oid, b: Oid) -> Result<Oid> {
        let out = self
            .git_output("merge-base", &["merge-base", &a.to_string(), &b.to_string()])
            .map_err(|_| {
                Error::Conflict(
                    "the remote's history and this project's have nothing in common: they are different projects"
                        .into(),
                )
            })?;
        Oid::from_hex(out.trim())
            .map_err(|e| Error::corrupt(format!("git merge-base printed {out:?}: {e}")))
    }

    /// The conflicts merges reported that no later change resolved.
    pub fn conflicts(&self) -> Result<Vec<Conflict>> {
        conflicts(&self.store().snapshot()?)
    }
}

fn conflicts(snap: &Snapshot) -> Result<Vec<Conflict>> {
    snap.read_tree_json(crate::project::paths::CONFLICTS_DIR)
}

/// A project directory, its `.dkt` or a bare repository path, as the path of the
/// repository to fetch from; URLs are kept as they are.
fn resolve_local(url: &str) -> String {
    if url.contains("://") || !Path::new(url).exists() {
        return url.to_owned();
    }
    let p = std::fs::canonicalize(url).unwrap_or_else(|_| Path::new(url).to_owned());
    for candidate in [p.join(".dkt").join(".git"), p.join(".git"), p.clone()] {
        if candidate.join("HEAD").is_file() {
            return candidate.display().to_string();
        }
    }
    p.display().to_string()
}

/// One three-way merge of records (see [`Project::merge_remote`]).
struct Merge<'a> {
    project: &'a Project,
    base: &'a Snapshot,
    theirs: &'a Snapshot,
    ours_commit: Oid,
    theirs_commit: Oid,
    base_commit: Oid,
    records: usize,
    renumbered: Vec<(RunId, RunId)>,
    conflicts: Vec<Conflict>,
    /// Runs whose record changed in the merge: old digest -> (ID, new digest).
    moved_runs: BTreeMap<String, (RunId, String)>,
}

/// What a path holds, for the merge rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Run,
    RunLog,
    Index,
    Version,
    Seen,
    Declaration,
    State,
    NodeName,
    Report,
    Format,
    /// Content-addressed or append-only: the same path holds the same fact.
    Fact,
}

fn class(path: &str) -> Class {
    let top = path.split('/').next().unwrap_or_default();
    match top {
        "runs" if path.ends_with(".hook.log") => Class::Fact,
        "runs" if path.ends_with(".log") => Class::RunLog,
        "runs" => Class::Run,
        "node-runs" | "consumers" => Class::Index,
        "versions" => Class::Version,
        "seen" => Class::Seen,
        "sources" => Class::Declaration,
        "state" => Class::State,
        "node-names" => Class::NodeName,
        crate::project::paths::CONFLICTS_DIR => Class::Report,
        "format" => Class::Format,
        _ => Class::Fact,
    }
}

impl Merge<'_> {
    fn run(&mut self, tx: &mut Tx) -> Result<()> {
        let ours = self.project.store().snapshot_at(tx.base().commit())?;
        let theirs_changes = self.base.diff(self.theirs)?;
        let ours_changes = self.base.diff(&ours)?;
        let mut run_conflicts: Vec<(String, Oid, Oid)> = Vec::new();
        let mut reports = Vec::new();
        for d in &theirs_changes {
            let (b, t) = (d.ours, d.theirs);
            let o = ours.blob_id(&d.path)?;
            if o == t {
                continue;
            }
            let class = class(&d.path);
            if matches!(class, Class::Index | Class::RunLog | Class::Format) {
                continue; // derived from the runs, or checked before merging
            }
            if class == Class::Report {
                reports.push(d.clone());
                continue;
            }
            if o == b {
                // Only their side changed it.
                self.take(tx, &d.path, t)?;
                if class == Class::Run {
                    if let Some(t) = t {
                        self.index_run(tx, t, self.theirs)?;
                    }
                }
                continue;
            }
            match (class, o, t) {
                (_, _, None) if class != Class::Declaration && class != Class::NodeName => {
                    // They removed what we changed: records are append-only; keep ours.
                }
                (Class::Run, Some(o), Some(t)) => run_conflicts.push((d.path.clone(), o, t)),
                (Class::Version, Some(o), Some(t)) => {
                    let keep = self.pick_version(&ours, o, t)?;
                    if keep == t {
                        self.take(tx, &d.path, Some(t))?;
                    }
                }
                (Class::Seen, Some(o), Some(t)) => {
                    let (a, b) = (time_at(&ours, o)?, time_at(self.theirs, t)?);
                    if b < a {
                        self.take(tx, &d.path, Some(t))?;
                    }
                }
                (Class::State, _, _) => self.merge_state(tx, &ours, &d.path, b, o, t)?,
                (Class::Declaration | Class::NodeName, _, _) => {
                    self.later_wins(tx, &ours, &d.path, o, t, describe(&d.path))?
                }
                // The same fact recorded with different bytes: keep the smaller.
                (_, Some(o), Some(t)) if ours.blob(t)? < ours.blob(o)? => {
                    self.take(tx, &d.path, Some(t))?;
                }
                _ => {}
            }
        }
        for (path, o, t) in run_conflicts {
            self.merge_runs(tx, &ours, &path, o, t)?;
        }
        self.reseal_downstream(tx, &ours_changes, &theirs_changes)?;
        // Reports last: writing a record clears the report of a conflict on it.
        for d in reports {
            if tx.blob_id(&d.path)?.is_none() {
                if let Some(t) = d.theirs {
                    let c: Conflict = decode_blob(self.theirs, t)?;
                    if tx.blob_id(&c.path)? == self.theirs.blob_id(&c.path)? {
                        self.take(tx, &d.path, Some(t))?;
                    }
                }
            }
        }
        for c in self.conflicts.clone() {
            tx.put_json(&paths::conflict(&c.path), &c)?;
        }
        Ok(())
    }

    /// Stage their blob `t` at `path` (or its removal).
    fn take(&mut self, tx: &mut Tx, path: &str, t: Option<Oid>) -> Result<()> {
        self.records += 1;
        match t {
            Some(t) => tx.put_id(path, t),
            None => tx.remove(path),
        }
        Ok(())
    }

    /// Take their run record `blob`: write its index entries (node runs; consumers when
    /// it succeeded) and bring its log from `from`.
    fn index_run(&mut self, tx: &mut Tx, blob: Oid, from: &Snapshot) -> Result<()> {
        let run: RunRecord = decode_blob(from, blob)?;
        if let Some(log) = from.blob_id(&paths::run_log(&run.id))? {
            tx.put_id(&paths::run_log(&run.id), log);
        }
        index(tx, &run, blob);
        Ok(())
    }

    /// Two records of one version: keep the one made by the run that ended first (a
    /// produced version over a polled one), else the smaller bytes.
    fn pick_version(&self, ours: &Snapshot, o: Oid, t: Oid) -> Result<Oid> {
        let key = |snap: &Snapshot, id: Oid| -> Result<(u8, u64, Vec<u8>)> {
            let bytes = snap.blob(id)?;
            let v: VersionRecord = crate::store::decode("version record", &bytes)?;
            let ended = match v.run {
                Some(run) => {
                    let r: Option<RunRecord> = snap.read_json(&paths::run(&run))?;
                    (0, r.and_then(|r| r.ended_ms).unwrap_or(u64::MAX))
                }
                None => (1, 0),
            };
            Ok((ended.0, ended.1, bytes))
        };
        Ok(if key(self.theirs, t)? < key(ours, o)? {
            t
        } else {
            o
        })
    }

    /// The time of the last commit of `side` since the common ancestor that changed `path`.
    fn changed_at(&self, side: Oid, path: &str) -> Result<i64> {
        let out = self.project.git_output(
            "log",
            &[
                "log",
                "-1",
                "--format=%ct",
                &side.to_string(),
                &format!("^{}", self.base_commit),
                "--",
                path,
            ],
        )?;
        Ok(out.trim().parse().unwrap_or(0))
    }

    /// Both sides changed `path` differently: the later change wins (ties: the larger
    /// bytes, so that both directions agree), reported as a conflict.
    fn later_wins(
        &mut self,
        tx: &mut Tx,
        ours: &Snapshot,
        path: &str,
        o: Option<Oid>,
        t: Option<Oid>,
        what: String,
    ) -> Result<()> {
        let ov = match o {
            Some(o) => Some(ours.blob(o)?),
            None => None,
        };
        let tv = match t {
            Some(t) => Some(self.theirs.blob(t)?),
            None => None,
        };
        let ours_key = (self.changed_at(self.ours_commit, path)?, ov.clone());
        let theirs_key = (self.changed_at(self.theirs_commit, path)?, tv.clone());
        let take_theirs = theirs_key > ours_key;
        if take_theirs {
            self.take(tx, path, t)?;
        }
        let show = |v: &Option<Vec<u8>>| match v {
            Some(b) => compact(b),
            None => "null".to_owned(),
        };
        let mut values = vec![show(&ov), show(&tv)];
        values.sort();
        self.conflicts.push(Conflict {
            path: path.to_owned(),
            what,
            kept: show(if take_theirs { &tv } else { &ov }),
            values,
        });
        Ok(())
    }

    /// A source's state, field by field: a field changed on one side takes that change;
    /// `latest` changed on both takes the version seen later; `pinned` or `frozen`
    /// changed differently on both is a conflict (the later change wins).
    fn merge_state(
        &mut self,
        tx: &mut Tx,
        ours: &Snapshot,
        path: &str,
        b: Option<Oid>,
        o: Option<Oid>,
        t: Option<Oid>,
    ) -> Result<()> {
        let read = |snap: &Snapshot,
                    id: Option<Oid>|
         -> Result<serde_json::Map<String, serde_json::Value>> {
            Ok(match id {
                Some(id) => {
                    let v: serde_json::Value = crate::store::decode(path, &snap.blob(id)?)?;
                    v.as_object().cloned().unwrap_or_default()
                }
                None => Default::default(),
            })
        };
        let (bs, os, ts) = (read(self.base, b)?, read(ours, o)?, read(self.theirs, t)?);
        let name = path
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".json"))
            .unwrap_or_default()
            .to_owned();
        let mut merged = os.clone();
        for field in ["latest", "pinned", "frozen", "heads"] {
            let (bf, of, tf) = (bs.get(field), os.get(field), ts.get(field));
            if of == tf || tf == bf {
                continue;
            }
            if of == bf {
                set(&mut merged, field, tf);
                continue;
            }
            if field == "heads" {
                // The refs a pattern source follows, ref by ref: a ref changed on one side
                // takes that change; moved on both, the tip seen later wins (a move wins
                // over a deletion).
                let map = |v: Option<&serde_json::Value>| {
                    v.and_then(|v| v.as_object()).cloned().unwrap_or_default()
                };
                let (bm, om, tm) = (map(bf), map(of), map(tf));
                let mut refs: std::collections::BTreeSet<&String> = om.keys().collect();
                refs.extend(tm.keys());
                refs.extend(bm.keys());
                let mut out = serde_json::Map::new();
                for r in refs {
                    let (b, o, t) = (bm.get(r), om.get(r), tm.get(r));
                    let pick = if o == t || t == b {
                        o
                    } else if o == b {
                        t
                    } else {
                        match (o, t) {
                            (None, x) | (x, None) => x,
                            (Some(ov), Some(tv)) => {
                                let seen = |v: &serde_json::Value| -> Result<u64> {
                                    let (Ok(n), Some(Ok(ver))) = (
                                        Name::new(&name),
                                        v.as_str().map(|s| s.parse::<crate::Version>()),
                                    ) else {
                                        return Ok(0);
                                    };
                                    Ok(match tx.read(&paths::seen(&n, &ver))? {
                                        Some(b) => {
                                            String::from_utf8_lossy(&b).trim().parse().unwrap_or(0)
                                        }
                                        None => 0,
                                    })
                                };
                                if (seen(tv)?, tv.to_string()) > (seen(ov)?, ov.to_string()) {
                                    Some(tv)
                                } else {
                                    Some(ov)
                                }
                            }
                        }
                    };
                    if let Some(v) = pick {
                        out.insert(r.clone(), v.clone());
                    }
                }
                if out.is_empty() {
                    merged.remove(field);
                } else {
                    merged.insert(field.to_owned(), serde_json::Value::Object(out));
                }
                continue;
            }
            if field == "latest" {
                let seen = |v: Option<&serde_json::Value>| -> Result<u64> {
                    let Some(v) = v.and_then(|v| v.as_str()) else {
                        return Ok(0);
                    };
                    let (Ok(n), Ok(ver)) = (Name::new(&name), v.parse::<crate::Version>()) else {
                        return Ok(0);
                    };
                    let p = paths::seen(&n, &ver);
                    Ok(match tx.read(&p)? {
                        Some(b) => String::from_utf8_lossy(&b).trim().parse().unwrap_or(0),
                        None => 0,
                    })
                };
                let key = |v: Option<&serde_json::Value>| -> Result<(u64, String)> {
                    Ok((seen(v)?, v.map(|v| v.to_string()).unwrap_or_default()))
                };
                if key(tf)? > key(of)? {
                    set(&mut merged, field, tf);
                }
                continue;
            }
            let ours_at = self.changed_at(self.ours_commit, path)?;
            let theirs_at = self.changed_at(self.theirs_commit, path)?;
            let show =
                |v: Option<&serde_json::Value>| v.map_or("null".to_owned(), |v| v.to_string());
            let take_theirs = (theirs_at, show(tf)) > (ours_at, show(of));
            if take_theirs {
                set(&mut merged, field, tf);
            }
            let mut values = vec![show(of), show(tf)];
            values.sort();
            self.conflicts.push(Conflict {
                path: path.to_owned(),
                what: format!("{field} of source {name}"),
                kept: show(if take_theirs { tf } else { of }),
                values,
            });
        }
        if merged != os {
            self.records += 1;
            let state: crate::records::SourceState =
                serde_json::from_value(serde_json::Value::Object(merged))
                    .map_err(|e| Error::corrupt(format!("merged state of {name}: {e}")))?;
            tx.put_json(path, &state)?;
        }
        Ok(())
    }

    /// The same run ID recorded on both sides (the same node on the same inputs, attempt
    /// numbers that collided): the run that ended first keeps the ID, the other becomes
    /// the next free attempt.
    fn merge_runs(
        &mut self,
        tx: &mut Tx,
        ours: &Snapshot,
        path: &str,
        o: Oid,
        t: Oid,
    ) -> Result<()> {
        let ours_run: RunRecord = decode_blob(ours, o)?;
        let their_run: RunRecord = decode_blob(self.theirs, t)?;
        let key = |r: &RunRecord| {
            (
                r.ended_ms.unwrap_or(u64::MAX),
                r.digest.clone().unwrap_or_default(),
            )
        };
        let (winner_theirs, loser, loser_side) = if key(&their_run) < key(&ours_run) {
            (true, ours_run, ours)
        } else {
            (false, their_run, self.theirs)
        };
        if winner_theirs {
            self.take(tx, path, Some(t))?;
            let winner: RunRecord = decode_blob(self.theirs, t)?;
            // The loser's consumers entries at this ID go if the winner did not succeed.
            for sv in &loser.inputs {
                tx.remove(&paths::consumer(sv, &loser.id));
            }
            self.index_run(tx, t, self.theirs)?;
            if winner.status != RunStatus::Success {
                for sv in &winner.inputs {
                    tx.remove(&paths::consumer(sv, &winner.id));
                }
            }
        }
        // The loser's hook output follows it; the ID keeps the winner's.
        let hook = loser_side.read(&paths::run_hook_log(&loser.id))?;
        let winner_side = if winner_theirs { self.theirs } else { ours };
        match winner_side.blob_id(&paths::run_hook_log(&loser.id))? {
            Some(h) => tx.put_id(&paths::run_hook_log(&loser.id), h),
            None => tx.remove(&paths::run_hook_log(&loser.id)),
        }
        let log = loser_side.read(&paths::run_log(&loser.id))?;
        let mut attempt = loser.next_attempt()?;
        let new_id = loop {
            let id = RunId::compute(&loser.node, &loser.inputs, attempt);
            if tx.blob_id(&paths::run(&id))?.is_none()
                && self.theirs.blob_id(&paths::run(&id))?.is_none()
            {
                break id;
            }
            attempt = attempt
                .checked_add(1)
                .ok_or_else(|| Error::corrupt("no free attempt number left for a merged run"))?;
        };
        let mut moved = loser.clone();
        moved.id = new_id;
        moved.attempt = attempt;
        let moved = crate::engine::sealed_run(
            &moved,
            log.as_deref()
                .map(|l| std::str::from_utf8(l).unwrap_or_default()),
        )?;
        if let Some(log) = &log {
            tx.put(&paths::run_log(&new_id), log)?;
        }
        if let Some(hook) = &hook {
            tx.put(&paths::run_hook_log(&new_id), hook)?;
        }
        let blob = tx.put_json(&paths::run(&new_id), &moved)?;
        index(tx, &moved, blob);
        self.records += 1;
        self.renumbered.push((loser.id, new_id));
        // The loser's outputs name it by its old ID and digest: re-pointed below.
        self.moved_runs.insert(
            loser.digest.clone().unwrap_or_default(),
            (new_id, moved.digest.clone().unwrap_or_default()),
        );
        Ok(())
    }
}

impl Merge<'_> {
    /// Re-point and re-seal what named a renumbered run: its output versions (those
    /// recorded by that run, not the winner's), then the runs that read those versions
    /// (their input digests), then their outputs, and so on. Only records added since the
    /// common ancestor can name a run recorded since then.
    fn reseal_downstream(
        &mut self,
        tx: &mut Tx,
        ours_changes: &[crate::store::Difference],
        theirs_changes: &[crate::store::Difference],
    ) -> Result<()> {
        if self.moved_runs.is_empty() {
            return Ok(());
        }
        let mut runs = BTreeSet::new();
        let mut versions = BTreeSet::new();
        for d in ours_changes.iter().chain(theirs_changes) {
            match class(&d.path) {
                Class::Run => {
                    runs.insert(d.path.clone());
                }
                Class::Version => {
                    versions.insert(d.path.clone());
                }
                _ => {}
            }
        }
        for (_, new) in &self.renumbered {
            runs.insert(paths::run(new));
        }
        let mut moved_versions: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let mut changed = false;
            for p in &versions {
                let Some(bytes) = tx.read(p)? else { continue };
                let mut v: VersionRecord = crate::store::decode(p, &bytes)?;
                let Some(old_run) = v.run_digest.clone() else {
                    continue;
                };
                let Some((id, digest)) = self.moved_runs.get(&old_run).cloned() else {
                    continue;
                };
                let old = v.digest.clone().unwrap_or_default();
                v.run = Some(id);
                v.run_digest = Some(digest);
                v.seal()?;
                tx.put_json(p, &v)?;
                moved_versions.insert(old, v.digest.clone().unwrap_or_default());
                changed = true;
            }
            for p in &runs {
                let Some(bytes) = tx.read(p)? else { continue };
                let mut r: RunRecord = crate::store::decode(p, &bytes)?;
                if !r
                    .input_digests
                    .iter()
                    .any(|d| moved_versions.contains_key(d))
                {
                    continue;
                }
                let old = r.digest.clone().unwrap_or_default();
                r.input_digests = r
                    .input_digests
                    .iter()
                    .map(|d| moved_versions.get(d).cloned().unwrap_or_else(|| d.clone()))
                    .collect();
                r.seal()?;
                let blob = tx.put_json(p, &r)?;
                index(tx, &r, blob);
                let new = r.digest.clone().unwrap_or_default();
                for target in self.moved_runs.values_mut() {
                    if target.1 == old {
                        target.1 = new.clone();
                    }
                }
                self.moved_runs.insert(old, (r.id, new));
                changed = true;
            }
            if !changed {
                return Ok(());
            }
        }
    }
}

fn set(
    map: &mut serde_json::Map<String, serde_json::Value>,
    field: &str,
    value: Option<&serde_json::Value>,
) {
    match value {
        Some(v) => {
            map.insert(field.to_owned(), v.clone());
        }
        None => {
            map.remove(field);
        }
    }
}

/// Stage the index entries of `run`, whose record is the blob `blob`.
fn index(tx: &mut Tx, run: &RunRecord, blob: Oid) {
    tx.put_id(&paths::node_run(&run.node, &run.id), blob);
    if run.status == RunStatus::Success {
        for sv in &run.inputs {
            tx.put_id(&paths::consumer(sv, &run.id), blob);
        }
    }
}

fn decode_blob<T: serde::de::DeserializeOwned>(snap: &Snapshot, id: Oid) -> Result<T> {
    crate::store::decode(&id.to_string(), &snap.blob(id)?)
}

fn time_at(snap: &Snapshot, id: Oid) -> Result<u64> {
    Ok(String::from_utf8_lossy(&snap.blob(id)?)
        .trim()
        .parse()
        .unwrap_or(u64::MAX))
}

/// A record's JSON on one line, for conflict reports.
fn compact(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).trim().to_owned())
}

fn describe(path: &str) -> String {
    let name = path
        .rsplit('/')
        .next()
        .and_then(|f| f.strip_suffix(".json"))
        .unwrap_or(path);
    match class(path) {
        Class::Declaration => format!("declaration of source {name}"),
        Class::NodeName => format!("node named {name}"),
        _ => path.to_owned(),
    }
}

/// True when `url` carries credentials: any user part of an http(s) URL (a token), or
/// a password in any URL.
fn has_credentials(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let Some((user, _)) = authority.rsplit_once('@') else {
        return false;
    };
    scheme.starts_with("http") || user.contains(':')
}

/// `url` with its user part replaced by `***`.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}{path}"),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

/// One source in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceStatus {
    /// Its name.
    pub name: Name,
    /// Its kind.
    pub kind: String,
    /// The latest version known.
    pub latest: Option<crate::Version>,
    /// The version it is pinned to.
    pub pinned: Option<crate::Version>,
    /// Never polled.
    pub frozen: bool,
}

/// A node that is not up to date, in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// The node's ID.
    pub node: crate::NodeId,
    /// Its name, if it has one.
    pub name: Option<Name>,
    /// Why it would run.
    pub reason: crate::scheduler::Reason,
    /// Its latest run failed (or was interrupted): that run.
    pub failed: Option<RunId>,
}

/// A remote in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteStatus {
    /// The remote.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Commits of this project the remote did not have when last fetched.
    pub unpushed: usize,
    /// Commits fetched from it and not merged.
    pub unpulled: usize,
}

/// The project at a glance ([`Project::status`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Every source.
    pub sources: Vec<SourceStatus>,
    /// The nodes a pass would run now, and why (sources are not polled).
    pub stale: Vec<NodeStatus>,
    /// Runs waiting for a worker.
    pub pending: Vec<RunId>,
    /// Runs executing.
    pub running: Vec<RunId>,
    /// The metadata remotes.
    pub remotes: Vec<RemoteStatus>,
    /// Conflicts merges reported that no later change resolved.
    pub conflicts: Vec<Conflict>,
}

impl Project {
    /// The project at a glance: sources, nodes not up to date (and why), queued and
    /// running runs, remotes (unpushed and unpulled commits), unresolved conflicts. Reads
    /// only; polls nothing.
    pub async fn status(&self) -> Result<Status> {
        let sources = self
            .sources()?
            .into_iter()
            .map(|s| SourceStatus {
                name: s.name,
                kind: s.kind,
                latest: s.latest,
                pinned: s.pinned,
                frozen: s.frozen,
            })
            .collect();
        let plan = self
            .run_pass(
                crate::PassOptions::new()
                    .with_dry_run(true)
                    .without_polling(true),
            )
            .await?;
        let names = self.node_names()?;
        let mut stale = Vec::new();
        for item in plan.items {
            let last = self.node_runs(&item.node)?.into_iter().next();
            let failed = last
                .filter(|r| {
                    matches!(
                        r.status,
                        RunStatus::Failure | RunStatus::Interrupted | RunStatus::Conflict
                    )
                })
                .map(|r| r.id);
            stale.push(NodeStatus {
                name: names.get(&item.node).cloned(),
                node: item.node,
                reason: item.reason,
                failed,
            });
        }
        let queue = self.run_queue();
        let pending = queue.pending()?.into_iter().map(|r| r.id).collect();
        let running = queue.claimed()?.into_iter().map(|(r, _)| r.id).collect();
        let mut remotes = Vec::new();
        for r in self.remotes()? {
            let (unpushed, unpulled) = self.ahead_behind(&r.name)?;
            remotes.push(RemoteStatus {
                name: r.name,
                url: r.url,
                unpushed,
                unpulled,
            });
        }
        Ok(Status {
            sources,
            stale,
            pending,
            running,
            remotes,
            conflicts: self.conflicts()?,
        })
    }

    /// After `dkt clone`: the source of the clone is the remote `origin`, fetched into
    /// `refs/remotes/origin/main` (what it has now is what this copy has).
    pub(crate) fn track_origin(&self) -> Result<()> {
        if !self.remotes()?.iter().any(|r| r.name == "origin") {
            return Ok(());
        }
        self.git_output(
            "origin",
            &[
                "config",
                "remote.origin.fetch",
                &format!("+refs/heads/main:{}", tracking("origin")),
            ],
        )?;
        let head = self.store().head()?;
        self.git_output(
            "origin",
            &["update-ref", &tracking("origin"), &head.to_string()],
        )?;
        Ok(())
    }
}
