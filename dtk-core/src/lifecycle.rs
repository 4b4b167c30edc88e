//! The life of a node after it is defined: names, retirement, and the rule that a source
//! has at most one writer.
//!
//! A node's record (`nodes/<id>.json`) never changes: its ID is the hash of its
//! definition. What changes is kept beside it:
//!
//! - `node-names/<name>.json` (`{"name", "node"}`): a name given to a node
//!   (`dkt node run --name`, `name:` in a pipeline file), accepted wherever a node ID is.
//!   Giving a name to a new definition *replaces* the node that held it: that node is
//!   retired.
//! - `retired/<h1>/<h2>/<node-id>.json` (`{"node", "retired_ms", "reason"}`): a node that no longer
//!   runs (`dkt node rm`, a replaced named node, `dkt apply --prune`). Its record, runs and
//!   the versions it made stay, so the provenance of everything it made still reads.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::graph::Graph;
use crate::model::now_ms;
use crate::records::paths;
use crate::store::{Snapshot, Tx};
use crate::{Error, Name, NodeId, NodeSpec, Project, Result};

/// `node-names/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeName {
    /// The name.
    pub name: Name,
    /// The node holding it (full hex ID).
    pub node: NodeId,
}

/// `retired/<node-id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retired {
    /// The retired node.
    pub node: NodeId,
    /// When (milliseconds since the epoch).
    pub retired_ms: u64,
    /// Why: `removed`, `replaced by <id>`, `pruned`.
    pub reason: String,
}

/// The retired nodes of `snap`.
pub(crate) fn retired(snap: &Snapshot) -> Result<BTreeSet<NodeId>> {
    Ok(snap
        .walk(crate::records::paths::RETIRED_DIR)?
        .into_iter()
        .filter_map(|(p, _)| p.rsplit('/').next()?.strip_suffix(".json")?.parse().ok())
        .collect())
}

/// Every name, by node.
pub(crate) fn names(snap: &Snapshot) -> Result<BTreeMap<NodeId, Name>> {
    let names: Vec<NodeName> = snap.read_tree_json("node-names")?;
    Ok(names.into_iter().map(|n| (n.node, n.name)).collect())
}

/// The node holding `name`, if any.
pub(crate) fn named(snap: &Snapshot, name: &str) -> Result<Option<NodeId>> {
    let Ok(name) = Name::new(name) else {
        return Ok(None);
    };
    Ok(snap
        .read_json::<NodeName>(&paths::node_name(&name))?
        .map(|n| n.node))
}

/// Retire `id` in `tx` (and drop the names it held).
pub(crate) fn retire(tx: &mut Tx, id: &NodeId, reason: &str) -> Result<()> {
    if tx.exists(&paths::retired(id))? {
        return Ok(());
    }
    tx.put_json(
        &paths::retired(id),
        &Retired {
            node: *id,
            retired_ms: now_ms(),
            reason: reason.to_owned(),
        },
    )?;
    for file in tx.list_names("node-names")? {
        let path = format!("node-names/{file}");
        if let Some(n) = tx.read_json::<NodeName>(&path)? {
            if n.node == *id {
                tx.remove(&path);
            }
        }
    }
    Ok(())
}

/// Give `name` to `id` in `tx`; the node that held it, if another, is retired and
/// returned.
pub(crate) fn give_name(tx: &mut Tx, name: &Name, id: &NodeId) -> Result<Option<NodeId>> {
    let path = paths::node_name(name);
    let previous = tx.read_json::<NodeName>(&path)?.map(|n| n.node);
    if previous == Some(*id) {
        return Ok(None);
    }
    if let Some(old) = previous {
        retire(tx, &old, &format!("replaced by {}", id.to_hex()))?;
    }
    // A node has one name: drop another it may hold.
    for file in tx.list_names("node-names")? {
        let other = format!("node-names/{file}");
        if other != path {
            if let Some(n) = tx.read_json::<NodeName>(&other)? {
                if n.node == *id {
                    tx.remove(&other);
                }
            }
        }
    }
    tx.put_json(
        &path,
        &NodeName {
            name: name.clone(),
            node: *id,
        },
    )?;
    Ok(previous)
}

/// Refuse `node` (about to be `id`) if another node of `graph` already writes one of its
/// outputs: a source written by two nodes would have a history that depends on which
/// ran last.
pub(crate) fn check_single_writer(
    graph: &Graph,
    names: &BTreeMap<NodeId, Name>,
    id: &NodeId,
    node: &NodeSpec,
) -> Result<()> {
    for output in &node.outputs {
        if let Some(other) = graph.writers(output).into_iter().find(|w| w != id) {
            let shown = |n: &NodeId| match names.get(n) {
                Some(name) => format!("{} ({name})", n.short()),
                None => n.short(),
            };
            return Err(Error::Conflict(format!(
                "source {output:?} is already written by node {}; node {} would write it too, \
                 and a source written by two nodes has a history that depends on which ran \
                 last: give the new node another output, or retire the other (`dkt node rm {}`)",
                shown(&other),
                shown(id),
                other.short()
            )));
        }
    }
    Ok(())
}

impl Project {
    /// Retire a node (by ID prefix or name): it no longer runs, its sources can be
    /// removed once no other node uses them, and its history (record, runs, the versions
    /// it made) stays. Returns the node.
    ///
    /// # Errors
    /// [`Error::Conflict`] when it is retired already; the errors of [`Project::node`].
    pub fn remove_node(&self, id_or_name: &str) -> Result<NodeId> {
        let (id, _) = self.node(id_or_name)?;
        let message = format!("node rm {}", id.short());
        self.store().transact(&message, |tx| {
            if tx.exists(&paths::retired(&id))? {
                return Err(Error::Conflict(format!(
                    "node {} is already removed",
                    id.short()
                )));
            }
            retire(tx, &id, "removed")
        })?;
        Ok(id)
    }

    /// True when node `id` is retired.
    pub fn is_retired(&self, id: &NodeId) -> Result<bool> {
        Ok(self
            .store()
            .snapshot()?
            .blob_id(&paths::retired(id))?
            .is_some())
    }

    /// The names of the nodes that have one.
    pub fn node_names(&self) -> Result<BTreeMap<NodeId, Name>> {
        names(&self.store().snapshot()?)
    }
}
