//! The records of a project: sources, nodes, runs, versions and links.
//!
//! Every type here is what the metadata store keeps, serialized as JSON (see
//! `docs/format.md` for the layout).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::id::hex;
use crate::{Error, Name, Result, Version};

pub use dtk_api::SourceSpec;

/// A source at one version, written `SOURCE:VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceVersion {
    /// The source's name.
    pub source: Name,
    /// The version.
    pub version: Version,
}

impl fmt::Display for SourceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.version)
    }
}

/// What a compute node runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type", content = "value")]
pub enum Command {
    /// A program and its arguments (`dkt node run CMD ARGS...`). A single argument that
    /// contains spaces or shell syntax runs through `sh -c`.
    Argv(Vec<String>),
    /// Shell lines run in order, stopping at the first failure (the `run:` list of a
    /// node file).
    Script(Vec<String>),
}

impl Command {
    /// A one-line rendering for listings.
    pub fn display_line(&self) -> String {
        match self {
            Command::Argv(a) => a.join(" "),
            Command::Script(l) => l.join("; "),
        }
    }
}

/// A compute node: a command, the sources it reads and writes, where it may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// What to run.
    pub command: Command,
    /// Labels a worker must all have to run the node (sorted, unique).
    #[serde(default)]
    pub labels: Vec<String>,
    /// Sources put in scope (sorted, unique).
    #[serde(default)]
    pub inputs: Vec<Name>,
    /// Sources the node writes (sorted, unique).
    #[serde(default)]
    pub outputs: Vec<Name>,
    /// Shell command run after a successful run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<String>,
    /// Shell command run after a failed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    /// The script file the command runs (`dkt node run ... test.sh`), recorded when the
    /// node is defined: its content is stored (content-addressed) and hashed into the
    /// node ID, and runs execute the recorded content, never today's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<ScriptRef>,
    /// How a failed run is retried on the same inputs by the scheduler (none: a failed
    /// node waits for new inputs or `dkt node rerun`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// What a run does when an output moved while it ran (none: record the run
    /// [`RunStatus::Conflict`] and publish nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_conflict: Option<OnConflict>,
    /// Run through bubblewrap (`sandbox: true`): inputs read-only, outputs the only
    /// writable places besides a private `/tmp`, no network unless [`network`](Self::network),
    /// a clean environment, the project's `.dkt` hidden.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
    /// A sandboxed node may use the network (`network: true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
}

/// What a run does when an output moved while it ran (`on-conflict:` of a node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    /// Record the run `conflict`, then run the node again (a new attempt) on the output's
    /// new version, up to [`OnConflict::RERUNS`] times.
    Rerun,
    /// Publish over whatever the output holds now.
    Overwrite,
}

impl OnConflict {
    /// How many times `rerun` runs again after a conflict before leaving it recorded.
    pub const RERUNS: u32 = 3;

    /// The policy as written (`rerun`, `overwrite`).
    pub fn as_str(self) -> &'static str {
        match self {
            OnConflict::Rerun => "rerun",
            OnConflict::Overwrite => "overwrite",
        }
    }
}

impl FromStr for OnConflict {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "rerun" => Ok(OnConflict::Rerun),
            "overwrite" => Ok(OnConflict::Overwrite),
            _ => Err(Error::invalid(
                "on-conflict",
                s,
                "expected rerun or overwrite",
            )),
        }
    }
}

/// A node's retry policy: after a failed run on some inputs, a scheduling pass runs it
/// again on the same inputs up to `count` more times, waiting `backoff` after the first
/// failure, twice that after the second, and so on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// How many more runs after the first failure.
    pub count: u32,
    /// The wait after the first failure (`"30s"`, `"5m"`), doubled after each further one.
    #[serde(default = "default_backoff")]
    pub backoff: String,
}

fn default_backoff() -> String {
    "0s".to_owned()
}

/// A script file recorded with its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptRef {
    /// The file as the command names it (`test.sh`).
    pub path: String,
    /// `blake3:HEX` of its content; the content is the store's `scripts/HEX`.
    pub digest: String,
}

impl ScriptRef {
    /// The reference of a script named `path` whose content is `content`.
    pub fn new(path: &str, content: &[u8]) -> ScriptRef {
        ScriptRef {
            path: path.to_owned(),
            digest: format!("blake3:{}", blake3::hash(content).to_hex()),
        }
    }

    /// The hex digest (after `blake3:`).
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("blake3:").unwrap_or(&self.digest)
    }
}

/// The version of the canonical node encoding; part of every node ID.
pub const NODE_ENCODING_VERSION: u32 = 1;

impl NodeSpec {
    /// A node running `command`, with no labels, inputs, outputs or hooks.
    pub fn new(command: Command) -> Self {
        NodeSpec {
            command,
            labels: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            on_success: None,
            on_failure: None,
            script: None,
            retry: None,
            on_conflict: None,
            sandbox: false,
            network: false,
        }
    }

    /// Sort and deduplicate labels, inputs and outputs, so that the same node written in
    /// another order is the same node.
    pub fn normalize(&mut self) {
        self.labels.sort();
        self.labels.dedup();
        self.inputs.sort();
        self.inputs.dedup();
        self.outputs.sort();
        self.outputs.dedup();
    }

    /// The canonical encoding hashed into the node ID (documented in `docs/format.md`).
    ///
    /// ```text
    /// "dtk-node\n" VERSION "\n"
    /// then, for each field in this order: command-type, command, labels, inputs, outputs,
    /// on-success, on-failure:
    ///     FIELD-NAME " " COUNT "\n"  and for each item:  BYTE-LENGTH " " BYTES "\n"
    /// ```
    /// Labels, inputs and outputs are sorted and unique; absent hooks have count 0. A node
    /// with a recorded script file ends with one more field, `script`, whose two items are
    /// the path as given and `blake3:HEX` of the content (nodes without one end after
    /// `on-failure`, as before scripts were recorded, so their IDs are unchanged). A node
    /// with a retry policy ends with one more field still, `retry`, whose two items are
    /// the count (decimal) and the backoff as written. A node with an on-conflict policy
    /// ends with `on-conflict` (one item, the policy); a sandboxed node then with
    /// `sandbox` (no item), and one that may use the network with `network` (no item).
    pub fn canonical_encoding(&self) -> Vec<u8> {
        let mut n = self.clone();
        n.normalize();
        let mut out = format!("dtk-node\n{NODE_ENCODING_VERSION}\n").into_bytes();
        let mut field = |name: &str, items: &[&str]| {
            out.extend_from_slice(format!("{name} {}\n", items.len()).as_bytes());
            for i in items {
                out.extend_from_slice(format!("{} ", i.len()).as_bytes());
                out.extend_from_slice(i.as_bytes());
                out.push(b'\n');
            }
        };
        let (ty, cmd) = match &n.command {
            Command::Argv(a) => ("argv", a),
            Command::Script(l) => ("script", l),
        };
        field("command-type", &[ty]);
        field(
            "command",
            &cmd.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        field(
            "labels",
            &n.labels.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        field(
            "inputs",
            &n.inputs.iter().map(Name::as_str).collect::<Vec<_>>(),
        );
        field(
            "outputs",
            &n.outputs.iter().map(Name::as_str).collect::<Vec<_>>(),
        );
        field(
            "on-success",
            &n.on_success.as_deref().into_iter().collect::<Vec<_>>(),
        );
        field(
            "on-failure",
            &n.on_failure.as_deref().into_iter().collect::<Vec<_>>(),
        );
        if let Some(script) = &n.script {
            field("script", &[&script.path, &script.digest]);
        }
        if let Some(retry) = &n.retry {
            field("retry", &[&retry.count.to_string(), &retry.backoff]);
        }
        if let Some(policy) = n.on_conflict {
            field("on-conflict", &[policy.as_str()]);
        }
        if n.sandbox {
            field("sandbox", &[]);
        }
        if n.network {
            field("network", &[]);
        }
        out
    }

    /// The node's deterministic ID: BLAKE3 of [`canonical_encoding`](Self::canonical_encoding).
    pub fn id(&self) -> NodeId {
        NodeId(*blake3::hash(&self.canonical_encoding()).as_bytes())
    }
}

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The full ID, 64 lower-case hex digits.
            pub fn to_hex(&self) -> String {
                hex(&self.0)
            }
            /// The short ID shown to users: the first 8 hex digits.
            pub fn short(&self) -> String {
                hex(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.short())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            /// Parse a full 64-digit ID.
            fn from_str(s: &str) -> Result<Self> {
                let bytes = parse_hex32(s).ok_or_else(|| {
                    Error::invalid($what, s, "expected 64 hex digits")
                })?;
                Ok($name(bytes))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                d.deserialize_string(HexIdVisitor(std::marker::PhantomData::<$name>))
            }
        }
    };
}

hash_id!(
    /// A node's deterministic ID (BLAKE3 of its canonical encoding).
    NodeId,
    "node ID"
);
hash_id!(
    /// A run's deterministic ID (BLAKE3 of the node ID, its input versions and the attempt).
    RunId,
    "run ID"
);

/// Deserializes an ID from its hex string, read in place when the input lends it (a
/// record decoded from bytes) rather than copied into a `String` first.
struct HexIdVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: FromStr<Err = Error>> serde::de::Visitor<'de> for HexIdVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<T, E> {
        s.parse().map_err(E::custom)
    }
    fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> std::result::Result<T, E> {
        match std::str::from_utf8(b) {
            Ok(s) => self.visit_str(s),
            Err(_) => Err(E::invalid_value(serde::de::Unexpected::Bytes(b), &self)),
        }
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

impl RunId {
    /// The run ID of `node` on `inputs` (sorted by source name); `attempt` is 0 for the
    /// first run and counts forced reruns.
    pub fn compute(node: &NodeId, inputs: &[SourceVersion], attempt: u32) -> RunId {
        let mut h = blake3::Hasher::new();
        h.update(b"dtk-run\n1\n");
        h.update(node.to_hex().as_bytes());
        h.update(b"\n");
        for i in inputs {
            h.update(format!("{} {}\n", i.source.as_str().len(), i.source).as_bytes());
            h.update(i.version.to_string().as_bytes());
            h.update(b"\n");
        }
        h.update(format!("attempt {attempt}\n").as_bytes());
        RunId(*h.finalize().as_bytes())
    }
}

/// A key naming a set of input versions (sorted by source): the first 32 hex digits of
/// BLAKE3 over `"dtk-inputs\n1\n"` and, per input, `LEN " " NAME "\n" VERSION "\n"`.
pub fn inputs_key(inputs: &[SourceVersion]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"dtk-inputs\n1\n");
    for i in inputs {
        h.update(format!("{} {}\n{}\n", i.source.as_str().len(), i.source, i.version).as_bytes());
    }
    hex(&h.finalize().as_bytes()[..16])
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Waiting for a worker whose labels match.
    Pending,
    /// Claimed by a worker and running.
    Running,
    /// Finished with exit status 0; outputs published.
    Success,
    /// Finished with a non-zero status or could not start; nothing published.
    Failure,
    /// Its worker stopped or died before it finished; nothing published.
    Interrupted,
    /// It finished with exit status 0, but an output had moved since the run started
    /// (another writer published to it): nothing was published, and what the run wrote is
    /// kept in its staging area ([`RunRecord::staging`]).
    Conflict,
}

impl RunStatus {
    /// Whether a run with this status has ended (it is in the history for good).
    pub fn is_ended(self) -> bool {
        !matches!(self, RunStatus::Pending | RunStatus::Running)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Success => "success",
            RunStatus::Failure => "failure",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Conflict => "conflict",
        })
    }
}

/// One execution of a node on given input versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's ID.
    pub id: RunId,
    /// The node it ran.
    pub node: NodeId,
    /// The attempt number (0 unless forced reruns).
    #[serde(default)]
    pub attempt: u32,
    /// The exact input versions, sorted by source.
    pub inputs: Vec<SourceVersion>,
    /// The versions it published, sorted by source (empty unless it succeeded).
    #[serde(default)]
    pub outputs: Vec<SourceVersion>,
    /// Its status.
    pub status: RunStatus,
    /// The exit code of the command, if it ended on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed, when it did not get as far as an exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Which worker ran it (host name and process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// When it was queued, in milliseconds since the Unix epoch.
    pub queued_ms: u64,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// Until when the worker's claim holds (renewed while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until_ms: Option<u64>,
    /// The [`digest`](VersionRecord::digest)s of the inputs' version records, in the
    /// order of `inputs` (empty string where an input version has no record): the links
    /// of the provenance hash chain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_digests: Vec<String>,
    /// `blake3:HEX` of the run's stored log (`runs/.../<run-id>.log`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_digest: Option<String>,
    /// A run recorded [`RunStatus::Conflict`]: the directory (on the machine that ran it)
    /// where what it wrote into its outputs was kept, one `out-SOURCE` directory per output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<String>,
    /// A sandboxed run traced with strace: the files of each input it opened (paths
    /// inside the input, `/`-separated, sorted), by input.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub read_files: BTreeMap<Name, Vec<String>>,
    /// A run executed by a remote worker: the OpenSSH SHA-256 fingerprint (`SHA256:...`) of
    /// the worker's own key, which signed its result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_key: Option<String>,
    /// A run executed by a remote worker: what the worker signed about it and its
    /// signature, checked by the coordinator before publishing and by `dkt verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_signature: Option<crate::remote::WorkerSignature>,
    /// The digest of this record without this field (see [`seal`](Self::seal)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl RunRecord {
    /// The attempt after this one; an error, never a wrap-around to attempt 0, when the
    /// counter is at its maximum (only a forged record can get there).
    pub fn next_attempt(&self) -> Result<u32> {
        self.attempt.checked_add(1).ok_or_else(|| {
            Error::corrupt(format!(
                "run {} of node {} has attempt number {}: there is no next attempt",
                self.id.short(),
                self.node.short(),
                self.attempt
            ))
        })
    }

    /// Set [`digest`](Self::digest) to the canonical digest of the rest of the record
    /// ([`crate::digest::seal`]).
    pub fn seal(&mut self) -> Result<()> {
        self.digest = Some(crate::digest::seal(self)?);
        Ok(())
    }
}

/// A version of a source that the project has seen or produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The source.
    pub source: Name,
    /// The version.
    pub version: Version,
    /// When it was first recorded (milliseconds since the epoch): records of store
    /// format 2 only. Format 3 keeps this outside the record (`seen/`), so that the same
    /// version recorded in two clones is the same record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_ms: Option<u64>,
    /// Order of recording within the source: records of store format 2 only (sealed into
    /// their digest, so kept as they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The run that produced it, for outputs of nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
    /// The node that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// The input versions it was made from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<SourceVersion>,
    /// Extra columns the kind reports (`BUILD`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
    /// The [`digest`](RunRecord::digest) of the producing run's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_digest: Option<String>,
    /// The source's declaration when the version was recorded: where it came from,
    /// sealed with it (records written before store format 4 have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// The digest of this record without this field (see [`seal`](Self::seal)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl VersionRecord {
    /// Set [`digest`](Self::digest) to the canonical digest of the rest of the record
    /// ([`crate::digest::seal`]).
    pub fn seal(&mut self) -> Result<()> {
        self.digest = Some(crate::digest::seal(self)?);
        Ok(())
    }
}

/// Where a version came from: its source's declaration (kind, location, tag, path) at
/// the time it was recorded, sealed into the [`VersionRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The kind's name.
    pub kind: String,
    /// The source's location.
    pub location: String,
    /// The tag followed, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The sub-path, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Origin {
    /// The origin recorded for versions of `spec`.
    pub fn of(spec: &SourceSpec) -> Origin {
        Origin {
            kind: spec.kind.clone(),
            location: spec.location.clone(),
            tag: spec.tag.clone(),
            path: spec.path.clone(),
        }
    }

    /// `spec` as it was when this origin was recorded (its name and state kept).
    pub fn apply_to(&self, spec: &SourceSpec) -> SourceSpec {
        SourceSpec {
            kind: self.kind.clone(),
            location: self.location.clone(),
            tag: self.tag.clone(),
            path: self.path.clone(),
            ..spec.clone()
        }
    }
}

/// An out-of-band relation between two versions, asserted by a user (`dkt source link`):
/// `from` is what `to` was made from (or depends on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The first version (typically what the second was made from).
    pub from: SourceVersion,
    /// The second version.
    pub to: SourceVersion,
    /// When it was recorded, in milliseconds since the Unix epoch: links written before
    /// store format 4 only (the same link asserted in two clones is now the same
    /// record; the commit that added it says when).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_ms: Option<u64>,
}

impl Link {
    /// The link's ID: BLAKE3 of both ends.
    pub fn id(&self) -> String {
        let h = blake3::hash(format!("{}\n{}\n", self.from, self.to).as_bytes());
        hex(&h.as_bytes()[..16])
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    /// Names, versions and IDs are read in place from the record's bytes when they can
    /// be; escaped strings, values and non-strings decode (or fail) as before.
    #[test]
    fn ids_names_and_versions_decode_in_place_or_not() {
        let id = RunId([0xab; 32]);
        let hex = id.to_hex();
        let text = format!(
            r#"{{"source":"c\u0031","version":"MD5:{}","run":"{hex}"}}"#,
            "0".repeat(31) + "A"
        );
        #[derive(Deserialize)]
        struct Probe {
            source: Name,
            version: Version,
            run: RunId,
        }
        for p in [
            serde_json::from_str::<Probe>(&text).unwrap(),
            serde_json::from_slice::<Probe>(text.as_bytes()).unwrap(),
            serde_json::from_value::<Probe>(serde_json::from_str(&text).unwrap()).unwrap(),
        ] {
            assert_eq!(p.source, n("c1"));
            assert_eq!(p.version.to_string(), format!("md5:{}a", "0".repeat(31)));
            assert_eq!(p.run, id);
        }
        let plain: Name = serde_json::from_str(r#""c2""#).unwrap();
        assert_eq!(plain, n("c2"));
        let e = serde_json::from_str::<Name>("5").unwrap_err().to_string();
        assert!(e.contains("expected a string"), "{e}");
        let e = serde_json::from_str::<Version>("[]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a string"), "{e}");
        let e = serde_json::from_str::<NodeId>("{}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a string"), "{e}");
        let e = serde_json::from_str::<Name>(r#""a/b""#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'/'"), "{e}");
        let e = serde_json::from_str::<Version>(r#""md5:12""#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hex digits"), "{e}");
        let e = serde_json::from_str::<RunId>(r#""abc""#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("64 hex digits"), "{e}");
    }

    fn design_node() -> NodeSpec {
        let mut node = NodeSpec::new(Command::Argv(vec!["test.sh".into()]));
        node.labels = vec!["test".into(), "osx".into()];
        node.inputs = vec![n("dmg"), n("pitfall")];
        node.outputs = vec![n("tests")];
        node
    }

    #[test]
    fn node_id_is_stable() {
        // A fixed expected ID: if this changes, the canonical encoding changed, and every
        // project's node IDs with it. Bump NODE_ENCODING_VERSION instead.
        assert_eq!(
            design_node().id().to_hex(),
            "02da6ad3dcc37108aa5b585f0812bffd56b6990bdb47e2c2dd7e039d4e0fde8c"
        );
    }

    #[test]
    fn canonical_encoding_is_the_documented_one() {
        let expected = "dtk-node\n1\ncommand-type 1\n4 argv\ncommand 1\n7 test.sh\nlabels 2\n3 osx\n4 test\ninputs 2\n3 dmg\n7 pitfall\noutputs 1\n5 tests\non-success 0\non-failure 0\n";
        assert_eq!(
            String::from_utf8(design_node().canonical_encoding()).unwrap(),
            expected
        );
        let docs = include_str!("../../docs/format.md");
        assert!(docs.contains(expected), "docs/format.md shows the encoding");
    }

    #[test]
    fn node_id_ignores_order_but_not_content() {
        let a = design_node();
        let mut b = design_node();
        b.labels.reverse();
        b.inputs.reverse();
        b.labels.push("osx".into());
        assert_eq!(a.id(), b.id());
        let mut c = design_node();
        c.command = Command::Argv(vec!["test.sh".into(), "".into()]);
        assert_ne!(a.id(), c.id());
        let mut d = design_node();
        d.on_failure = Some(String::new());
        assert_ne!(a.id(), d.id(), "an empty hook differs from no hook");
        let e = NodeSpec {
            command: Command::Script(vec!["test.sh".into()]),
            ..design_node()
        };
        assert_ne!(a.id(), e.id());
    }

    #[test]
    fn node_id_round_trips() {
        let id = design_node().id();
        assert_eq!(id.to_hex().parse::<NodeId>().unwrap(), id);
        assert_eq!(id.short().len(), 8);
        assert!("xyz".parse::<NodeId>().is_err());
    }

    #[test]
    fn records_round_trip_json() {
        let node = design_node();
        let run = RunRecord {
            id: RunId::compute(&node.id(), &[], 0),
            node: node.id(),
            attempt: 0,
            inputs: vec![SourceVersion {
                source: n("dmg"),
                version: "md5:0e500a4eb2a162f8098575daced142e1".parse().unwrap(),
            }],
            outputs: vec![],
            status: RunStatus::Pending,
            exit_code: None,
            error: None,
            worker: None,
            queued_ms: 1,
            started_ms: None,
            ended_ms: None,
            lease_until_ms: None,
            input_digests: vec![],
            log_digest: None,
            staging: None,
            read_files: BTreeMap::new(),
            worker_key: None,
            worker_signature: None,
            digest: None,
        };
        let mut sealed = run.clone();
        sealed.seal().unwrap();
        let stored = serde_json::to_vec_pretty(&sealed).unwrap();
        assert!(crate::digest::check(&stored).unwrap().is_intact());
        sealed.status = RunStatus::Success;
        let stored = serde_json::to_vec_pretty(&sealed).unwrap();
        assert!(!crate::digest::check(&stored).unwrap().is_intact());
        let json = serde_json::to_string(&run).unwrap();
        assert!(json.contains("\"status\":\"pending\""));
        assert_eq!(serde_json::from_str::<RunRecord>(&json).unwrap(), run);
        let json = serde_json::to_string(&node).unwrap();
        assert_eq!(serde_json::from_str::<NodeSpec>(&json).unwrap(), node);
    }
}
