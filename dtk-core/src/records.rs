//! Typed records over the store's layout ([`paths`]): a source is
//! kept as its declaration (`sources/`) and its mutable state (`state/`), which readers
//! see together as one [`SourceSpec`]; versions are content-addressed records, with the
//! time they were first seen kept beside them (`seen/`).

use serde::{Deserialize, Serialize};

use crate::model::now_ms;
use crate::source::VersionInfo;
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

/// The declaration of source `name` alone (its state unread: `latest`, `pinned`, `frozen`
/// and `heads` are left empty); `None` when there is none. For readers that need only
/// where a source is and of what kind, such as a provenance manifest.
pub fn get_declaration(r: &impl Read, name: &Name) -> Result<Option<SourceSpec>> {
    r.read_record::<SourceSpec>(&paths::source(name))
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

/// Paths of records in the store, as `docs/format.md` describes them (store format 4).
///
/// Every directory that grows with the project is fanned out by one hex digit per level
/// (16 entries a level), so that a commit rewrites a few small trees whatever the number
/// of sources, nodes, versions or runs: records keyed by a hash (node, run, version IDs)
/// by that hash's own first digits, records keyed by a name (sources) by the first digits
/// of the BLAKE3 of the name ([`paths::fan`]).
pub mod paths {
    use crate::{Name, NodeId, RunId, Version};

    /// `x/y`: the first two hex digits of BLAKE3 of `key`, as two directory levels.
    pub fn fan(key: &str) -> String {
        let mut out = String::with_capacity(3);
        push_fan(&mut out, key);
        out
    }

    /// Append [`fan`]`(key)` to `out`.
    fn push_fan(out: &mut String, key: &str) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let first = blake3::hash(key.as_bytes()).as_bytes()[0];
        out.push(DIGITS[usize::from(first >> 4)] as char);
        out.push('/');
        out.push(DIGITS[usize::from(first & 15)] as char);
    }

    /// `x/y` from the first two digits of a hex string.
    fn fan_hex(hex: &str) -> String {
        format!("{}/{}", &hex[..1], &hex[1..2])
    }

    /// Append [`fan_hex`]`(hex)` to `out`.
    fn push_fan_hex(out: &mut String, hex: &str) {
        out.push_str(&hex[..1]);
        out.push('/');
        out.push_str(&hex[1..2]);
    }

    /// `<top>/<x>/<y>/<name>`, [`fan`] of the name: a source's place below `top`.
    fn by_name(top: &str, name: &Name, extra: usize) -> String {
        let mut out = String::with_capacity(top.len() + 5 + name.as_str().len() + extra);
        out.push_str(top);
        out.push('/');
        push_fan(&mut out, name.as_str());
        out.push('/');
        out.push_str(name.as_str());
        out
    }

    /// Append `/<h1>/<h2>/<algo>-<hex>` for version `v`.
    fn push_version(out: &mut String, v: &Version) {
        out.push('/');
        push_fan_hex(out, v.hex());
        out.push('/');
        out.push_str(v.algo().name());
        out.push('-');
        out.push_str(v.hex());
    }

    /// `sources/<x>/<y>/<name>.json`: a source's declaration (kind, location, tag, path,
    /// parent), which changes only when the source is moved.
    pub fn source(name: &Name) -> String {
        let mut out = by_name("sources", name, 5);
        out.push_str(".json");
        out
    }
    /// `state/<x>/<y>/<name>.json`: a source's mutable state (latest, pinned, frozen).
    pub fn source_state(name: &Name) -> String {
        let mut out = by_name("state", name, 5);
        out.push_str(".json");
        out
    }
    /// `versions/<x>/<y>/<name>`: the versions of a source.
    pub fn versions_dir(name: &Name) -> String {
        by_name("versions", name, 0)
    }
    /// `versions/<x>/<y>/<name>/<h1>/<h2>/<algo>-<hex>.json`, where `h1`, `h2` are the
    /// version's first two hex digits: the version record, content-addressed (the same
    /// fact recorded in two clones is the same blob).
    pub fn version(name: &Name, v: &Version) -> String {
        let mut out = by_name("versions", name, 16 + v.hex().len());
        push_version(&mut out, v);
        out.push_str(".json");
        out
    }
    /// `seen/<x>/<y>/<name>/<h1>/<h2>/<algo>-<hex>`: when this project first saw the
    /// version (milliseconds since the epoch, decimal), kept apart from the record so that
    /// the record is the same object everywhere; merged by taking the earlier.
    pub fn seen(name: &Name, v: &Version) -> String {
        format!(
            "seen/{}/{name}/{}/{}-{}",
            fan(name.as_str()),
            fan_hex(v.hex()),
            v.algo(),
            v.hex()
        )
    }
    /// `seen/<x>/<y>/<name>`
    pub fn seen_dir(name: &Name) -> String {
        format!("seen/{}/{name}", fan(name.as_str()))
    }
    /// `scripts/<h1>/<h2>/<blake3-hex>`: the content of a script file a node runs.
    pub fn script(hex: &str) -> String {
        format!("scripts/{}/{hex}", fan_hex(hex))
    }
    /// `nodes/<h1>/<h2>/<node-id>.json`
    pub fn node(id: &NodeId) -> String {
        let h = id.to_hex();
        let mut out = String::with_capacity(15 + h.len());
        out.push_str("nodes/");
        push_fan_hex(&mut out, &h);
        out.push('/');
        out.push_str(&h);
        out.push_str(".json");
        out
    }
    /// `node-names/<name>.json`: the node a name was given to.
    pub fn node_name(name: &Name) -> String {
        format!("node-names/{name}.json")
    }
    /// `retired/<h1>/<h2>/<node-id>.json`: a node that no longer runs.
    pub fn retired(id: &NodeId) -> String {
        let h = id.to_hex();
        let mut out = String::with_capacity(17 + h.len());
        out.push_str(RETIRED_DIR);
        out.push('/');
        push_fan_hex(&mut out, &h);
        out.push('/');
        out.push_str(&h);
        out.push_str(".json");
        out
    }
    /// `nodes/<h1>/<h2>`: the directory of the nodes whose hex ID starts with `hex` (at
    /// least 2 digits).
    pub fn node_dir(hex: &str) -> String {
        let mut out = String::with_capacity(10);
        out.push_str("nodes/");
        push_fan_hex(&mut out, hex);
        out
    }
    /// `runs/<a>/<b>/<c>/<d>/<run-id>.json`, where `abcd` are the run ID's first four hex
    /// digits: four levels of 16 keep every tree a commit rewrites small.
    pub fn run(id: &RunId) -> String {
        let h = id.to_hex();
        let mut out = String::with_capacity(18 + h.len());
        push_run_dir(&mut out, &h);
        out.push('/');
        out.push_str(&h);
        out.push_str(".json");
        out
    }
    /// `runs/<a>/<b>/<c>/<d>/<run-id>.log`
    pub fn run_log(id: &RunId) -> String {
        let h = id.to_hex();
        format!("{}/{h}.log", run_dir(&h))
    }
    /// `runs/<a>/<b>/<c>/<d>/<run-id>.hook.log`: the output of the run's hook, which
    /// runs after the run is recorded (so it is not part of the sealed log).
    pub fn run_hook_log(id: &RunId) -> String {
        let h = id.to_hex();
        format!("{}/{h}.hook.log", run_dir(&h))
    }
    /// `runs/<a>/<b>/<c>/<d>` for a hex run ID (or a prefix of at least 4 digits).
    pub fn run_dir(hex: &str) -> String {
        let mut out = String::with_capacity(12);
        push_run_dir(&mut out, hex);
        out
    }

    /// Append [`run_dir`]`(hex)` to `out`.
    fn push_run_dir(out: &mut String, hex: &str) {
        out.push_str("runs");
        for i in 0..4 {
            out.push('/');
            out.push_str(&hex[i..i + 1]);
        }
    }
    /// `node-runs/<n1>/<n2>/<node-id>/<r1>/<r2>/<run-id>.json` (the run record's blob,
    /// indexed by node).
    pub fn node_run(node: &NodeId, run: &RunId) -> String {
        let h = run.to_hex();
        format!("{}/{}/{h}.json", node_runs_dir(node), fan_hex(&h))
    }
    /// `node-runs/<n1>/<n2>/<node-id>`
    pub fn node_runs_dir(node: &NodeId) -> String {
        let h = node.to_hex();
        format!("node-runs/{}/{h}", fan_hex(&h))
    }
    /// `consumers/<x>/<y>/<source>/<h1>/<h2>/<algo>-<hex>/<run-id>.json` (successful runs
    /// that read a version).
    pub fn consumer(input: &crate::SourceVersion, run: &RunId) -> String {
        format!("{}/{}.json", consumers_dir(input), run.to_hex())
    }
    /// `consumers/<x>/<y>/<source>/<h1>/<h2>/<algo>-<hex>`: the runs that read a version.
    pub fn consumers_dir(input: &crate::SourceVersion) -> String {
        let v = &input.version;
        format!(
            "consumers/{}/{}/{}/{}-{}",
            fan(input.source.as_str()),
            input.source,
            fan_hex(v.hex()),
            v.algo(),
            v.hex()
        )
    }
    /// `retired/`: the directory of [`retired`] nodes.
    pub const RETIRED_DIR: &str = "retired";

    /// `conflicts/`: the directory of [`conflict`] reports.
    pub const CONFLICTS_DIR: &str = "conflicts";

    /// `links/<h1>/<h2>/<link-id>.json`
    pub fn link(id: &str) -> String {
        format!("links/{}/{id}.json", fan_hex(id))
    }
    /// `conflicts/<h1>/<h2>/<hex>.json`, `hex` the BLAKE3 of `path`: the report of a
    /// merge that found the record at `path` changed differently on both sides.
    pub fn conflict(path: &str) -> String {
        let h = blake3::hash(path.as_bytes()).to_hex();
        format!("{CONFLICTS_DIR}/{}/{h}.json", fan_hex(&h))
    }
}

pub(crate) fn read_source(snap: &Snapshot, name: &Name) -> Result<SourceSpec> {
    crate::records::get_source(snap, name)?.ok_or_else(|| Error::NotFound {
        what: "source",
        name: name.to_string(),
        hint: " (see `dkt source list`)".to_owned(),
    })
}

/// The provenance of a produced version: the sealed run record that made it.
pub(crate) type Produced<'a> = Option<&'a crate::RunRecord>;

/// Record `info` as a version of `name` if it is not recorded yet. Records are never
/// rewritten: a record's digest is part of the hash chain of everything made from it.
pub(crate) fn record_version(
    tx: &mut Tx,
    name: &Name,
    info: &VersionInfo,
    produced: Produced<'_>,
) -> Result<()> {
    let path = paths::version(name, &info.version);
    if tx.exists(&path)? {
        return Ok(());
    }
    crate::records::mark_seen(tx, name, &info.version)?;
    let origin = crate::records::get_source(tx, name)?.map(|spec| crate::model::Origin::of(&spec));
    let mut record = VersionRecord {
        source: name.clone(),
        version: info.version.clone(),
        recorded_ms: None,
        seq: None,
        run: produced.map(|r| r.id),
        node: produced.map(|r| r.node),
        inputs: produced.map(|r| r.inputs.clone()).unwrap_or_default(),
        extra: info.extra.clone(),
        run_digest: produced.and_then(|r| r.digest.clone()),
        origin,
        digest: None,
    };
    record.seal()?;
    tx.put_json(&path, &record)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::paths;
    use crate::{Name, NodeId, RunId, SourceVersion, Version};

    /// The paths are built piece by piece to spare allocations; they must stay exactly
    /// what `docs/format.md` describes (the formulas below are the original ones).
    #[test]
    fn paths_follow_the_documented_layout() {
        let fan = |key: &str| {
            let h = blake3::hash(key.as_bytes()).to_hex();
            format!("{}/{}", &h[..1], &h[1..2])
        };
        let fan_hex = |hex: &str| format!("{}/{}", &hex[..1], &hex[1..2]);
        for (i, name) in ["a", "c0", "c1000", "noise", "données-é", "x.y_z"]
            .iter()
            .enumerate()
        {
            let name = Name::new(name).unwrap();
            let n = name.as_str();
            assert_eq!(paths::fan(n), fan(n));
            assert_eq!(paths::source(&name), format!("sources/{}/{n}.json", fan(n)));
            assert_eq!(
                paths::source_state(&name),
                format!("state/{}/{n}.json", fan(n))
            );
            assert_eq!(
                paths::versions_dir(&name),
                format!("versions/{}/{n}", fan(n))
            );
            for v in [
                format!("md5:{:032x}", i * 7919 + 1),
                format!("sha1:{:040X}", i + 0xabc),
                format!("blake3:{:064x}", i + 5),
            ] {
                let v: Version = v.parse().unwrap();
                assert_eq!(
                    paths::version(&name, &v),
                    format!(
                        "{}/{}/{}-{}.json",
                        paths::versions_dir(&name),
                        fan_hex(v.hex()),
                        v.algo(),
                        v.hex()
                    )
                );
                let sv = SourceVersion {
                    source: name.clone(),
                    version: v,
                };
                let run = RunId([(i as u8).wrapping_mul(37).wrapping_add(200); 32]);
                assert!(paths::consumer(&sv, &run).ends_with(&format!("/{}.json", run.to_hex())));
            }
            let id = NodeId([(i as u8).wrapping_mul(41).wrapping_add(3); 32]);
            let h = id.to_hex();
            assert_eq!(paths::node(&id), format!("nodes/{}/{h}.json", fan_hex(&h)));
            assert_eq!(
                paths::node(&id),
                format!("{}/{h}.json", paths::node_dir(&h[..4]))
            );
            let run = RunId([(i as u8).wrapping_mul(19).wrapping_add(171); 32]);
            let h = run.to_hex();
            let dir = format!("runs/{}/{}/{}/{}", &h[..1], &h[1..2], &h[2..3], &h[3..4]);
            assert_eq!(paths::run_dir(&h), dir);
            assert_eq!(paths::run(&run), format!("{dir}/{h}.json"));
        }
    }
}
