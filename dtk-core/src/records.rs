//! Typed records over the store's layout ([`crate::project::paths`]): a source is
//! kept as its declaration (`sources/`) and its mutable state (`state/`), which readers
//! see together as one [`SourceSpec`]; versions are content-addressed records, with the
//! time they were first seen kept beside them (`seen/`).

use serde::{Deserialize, Serialize};

use crate::model::now_ms;
use crate::project::paths;
use crate::store::{Read, Snapshot, Tx};
use crate::{Error, Name, Result, SourceSpec, Version, VersionRecord};

/// `state/<x>/<y>/<name>.json`: what changes about a source as it is used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceState {
    /// The latest version known from the last poll (or run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<Version>,
    /// The version it is pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<Version>,
    /// Frozen: never polled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub frozen: bool,
    /// A pattern source's followed refs and their tips at the last poll.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub heads: std::collections::BTreeMap<String, Version>,
}

impl SourceState {
    /// The version nodes use: the pinned one, else the latest.
    pub fn current(&self) -> Option<&Version> {
        self.pinned.as_ref().or(self.latest.as_ref())
    }

    /// The versions nodes run on: the pinned one; else, for a pattern source, the tip of
    /// every followed ref (each once); else the latest.
    pub fn current_all(&self) -> Vec<Version> {
        if let Some(p) = &self.pinned {
            return vec![p.clone()];
        }
        if !self.heads.is_empty() {
            let mut all: Vec<Version> = self.heads.values().cloned().collect();
            all.sort();
            all.dedup();
            return all;
        }
        self.latest.iter().cloned().collect()
    }
}

/// The state of every source, by name (one read of `state/`, declarations unread).
pub fn all_states(snap: &Snapshot) -> Result<std::collections::BTreeMap<Name, SourceState>> {
    let mut out = std::collections::BTreeMap::new();
    for (path, _) in snap.walk("state")? {
        let Some(file) = path.rsplit('/').next() else {
            continue;
        };
        let Some(name) = file.strip_suffix(".json") else {
            continue;
        };
        let name = Name::new(name)?;
        let state: SourceState = snap
            .read_json(&path)?
            .ok_or_else(|| Error::corrupt(format!("{path} vanished")))?;
        out.insert(name, state);
    }
    Ok(out)
}

/// A source's declaration: the spec without its state (and without `owned`, which is
/// local to a machine and never recorded).
fn declaration(spec: &SourceSpec) -> SourceSpec {
    let mut d = spec.clone();
    d.latest = None;
    d.pinned = None;
    d.frozen = false;
    d.owned = false;
    d.heads.clear();
    d
}

/// The source `name`, declaration and state together; `None` when there is none.
pub fn get_source(r: &impl Read, name: &Name) -> Result<Option<SourceSpec>> {
    let Some(mut spec) = r.read_record::<SourceSpec>(&paths::source(name))? else {
        return Ok(None);
    };
    let state: SourceState = r
        .read_record(&paths::source_state(name))?
        .unwrap_or_default();
    spec.latest = state.latest;
    spec.pinned = state.pinned;
    spec.frozen = state.frozen;
    spec.heads = state.heads;
    spec.owned = false;
    Ok(Some(spec))
}

/// Store `spec`: its declaration and its state, each only if it changed.
pub fn put_source(tx: &mut Tx, spec: &SourceSpec) -> Result<()> {
    let decl = declaration(spec);
    if tx
        .read_record::<SourceSpec>(&paths::source(&spec.name))?
        .as_ref()
        != Some(&decl)
    {
        tx.put_json(&paths::source(&spec.name), &decl)?;
    }
    let state = SourceState {
        latest: spec.latest.clone(),
        pinned: spec.pinned.clone(),
        frozen: spec.frozen,
        heads: spec.heads.clone(),
    };
    let path = paths::source_state(&spec.name);
    let stored: Option<SourceState> = tx.read_record(&path)?;
    if stored.unwrap_or_default() != state || !tx.exists(&path)? {
        tx.put_json(&path, &state)?;
    }
    Ok(())
}

/// Change the state of source `name` with `f`; `false` when there is no such source.
pub fn update_state(tx: &mut Tx, name: &Name, f: impl FnOnce(&mut SourceSpec)) -> Result<bool> {
    let Some(mut spec) = get_source(tx, name)? else {
        return Ok(false);
    };
    f(&mut spec);
    put_source(tx, &spec)?;
    Ok(true)
}

/// Remove source `name`'s declaration and state (its versions stay unless removed too).
pub fn remove_source(tx: &mut Tx, name: &Name) {
    tx.remove(&paths::source(name));
    tx.remove(&paths::source_state(name));
}

/// True when source `name` exists.
pub fn source_exists(snap: &Snapshot, name: &Name) -> Result<bool> {
    Ok(snap.blob_id(&paths::source(name))?.is_some())
}

/// Every source, sorted by name.
pub fn all_sources(snap: &Snapshot) -> Result<Vec<SourceSpec>> {
    let decls: Vec<SourceSpec> = snap.read_tree_json("sources")?;
    let mut out = Vec::with_capacity(decls.len());
    for d in decls {
        let mut spec = d;
        let state: SourceState = snap
            .read_json(&paths::source_state(&spec.name))?
            .unwrap_or_default();
        spec.latest = state.latest;
        spec.pinned = state.pinned;
        spec.frozen = state.frozen;
        spec.heads = state.heads;
        spec.owned = false;
        out.push(spec);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Record that this project saw `version` of `name` now, unless it saw it before.
pub fn mark_seen(tx: &mut Tx, name: &Name, version: &Version) -> Result<()> {
    let path = paths::seen(name, version);
    if !tx.exists(&path)? {
        tx.put(&path, format!("{}\n", now_ms()).as_bytes())?;
    }
    Ok(())
}

/// The versions recorded for `name`, each with when it was first seen (ms), newest first
/// (ties: by version).
pub fn versions_of(snap: &Snapshot, name: &Name) -> Result<Vec<(VersionRecord, u64)>> {
    let records: Vec<VersionRecord> = snap.read_tree_json(&paths::versions_dir(name))?;
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let seen = match r.recorded_ms {
            // A record of store format 2 carries its own time.
            Some(ms) => ms,
            None => snap
                .read(&paths::seen(name, &r.version))?
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|t| t.trim().parse().ok())
                .ok_or_else(|| {
                    Error::corrupt(format!(
                        "{} is missing or not a number",
                        paths::seen(name, &r.version)
                    ))
                })?,
        };
        out.push((r, seen));
    }
    out.sort_by(|(a, ta), (b, tb)| {
        tb.cmp(ta)
            .then(b.seq.cmp(&a.seq))
            .then(a.version.cmp(&b.version))
    });
    Ok(out)
}

/// The runs an index directory names (`node-runs/...`, `consumers/...`), each read from
/// its primary record in `runs/`: an index says which runs there are, never what they
/// were, so a forged index entry cannot change what a run's record says. Entries whose
/// run record is missing are left out (`dkt verify` reports them).
pub fn indexed_runs(snap: &Snapshot, dir: &str) -> Result<Vec<crate::RunRecord>> {
    let mut out = Vec::new();
    for (path, _) in snap.walk(dir)? {
        let Some(id) = path
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".json"))
            .and_then(|stem| stem.parse::<crate::RunId>().ok())
        else {
            continue;
        };
        if let Some(run) = snap.read_json(&paths::run(&id))? {
            out.push(run);
        }
    }
    Ok(out)
}
