//! Node definitions: [`Project::define_node`] and the scripts a node's command names.

use std::path::Path;

use crate::error::IoResultExt;
use crate::{Error, Name, NodeId, NodeSpec, Result};

use super::{build_graph, build_graph_without, Project};
use crate::records::{paths, read_source};

impl Project {
    /// Record a node (idempotent: the same node gives the same ID and no new commit).
    /// Inputs and outputs must exist, outputs must be of kinds that publish, and the node
    /// must not close a cycle.
    pub fn define_node(&self, node: NodeSpec) -> Result<NodeId> {
        self.define_named_node(node, None)
    }

    /// [`Project::define_node`], giving the node `name` (accepted wherever a node ID
    /// is). A different node that held the name is replaced: it is retired (its history
    /// kept) in the same commit.
    ///
    /// # Errors
    /// Besides those of [`Project::define_node`]: [`Error::Conflict`] when another node
    /// already writes one of the outputs (a source has at most one writer), or when the
    /// node is retired.
    pub fn define_named_node(&self, mut node: NodeSpec, name: Option<&str>) -> Result<NodeId> {
        let name = name
            .map(|n| {
                Name::new(n).map_err(|e| match e {
                    Error::Invalid { value, reason, .. } => Error::Invalid {
                        what: "node name",
                        value,
                        reason,
                    },
                    e => e,
                })
            })
            .transpose()?;
        node.normalize();
        // A command naming a script file records the script's content with the node.
        let script = self.script_file(&node)?;
        if let Some((script_ref, _)) = &script {
            node.script = Some(script_ref.clone());
        }
        let id = node.id();
        let snap = self.store.snapshot()?;
        for o in &node.outputs {
            let spec = read_source(&snap, o)?;
            let kind = self.registry.get(&spec.kind)?;
            if !kind.capabilities().publish {
                return Err(Error::NotSupported {
                    kind: spec.kind.clone(),
                    operation: "publishing (being a node's output)",
                });
            }
        }
        for s in node.inputs.iter() {
            read_source(&snap, s)?;
        }
        // Checked against the file just read (the content is recorded by the commit below).
        let mut unrecorded = node.clone();
        unrecorded.script = None;
        self.check_variables(&unrecorded)?;
        let message = format!("node add {} ({})", id.short(), node.command.display_line());
        self.store.transact(&message, |tx| {
            if tx.exists(&crate::records::paths::retired(&id))? {
                return Err(Error::Conflict(format!(
                    "node {} was removed; its definition cannot be used again as it is \
                     (change it, e.g. its labels, to make a new node)",
                    id.short()
                )));
            }
            // The node that held the name is replaced: retired first, so that it does not
            // count as a second writer of the outputs they share.
            if let Some(name) = &name {
                crate::lifecycle::give_name(tx, name, &id)?;
            }
            if tx.exists(&paths::node(&id))? {
                return Ok(());
            }
            let mut graph = build_graph(tx.base())?;
            if let Some(old) = &name {
                if let Some(previous) = crate::lifecycle::named(tx.base(), old.as_str())? {
                    graph = build_graph_without(tx.base(), &[previous])?;
                }
            }
            let names = crate::lifecycle::names(tx.base())?;
            crate::lifecycle::check_single_writer(&graph, &names, &id, &node)?;
            graph.add_node(id, &node.inputs, &node.outputs)?;
            if let Some((script_ref, content)) = &script {
                tx.put(&paths::script(script_ref.hex()), content)?;
            }
            tx.put_json(&paths::node(&id), &node)?;
            Ok(())
        })?;
        Ok(id)
    }

    /// The script file `node`'s command names (its first word, a file relative to the
    /// project's root or absolute), with its content; `None` when the command is not a
    /// script file.
    pub(crate) fn script_file(
        &self,
        node: &NodeSpec,
    ) -> Result<Option<(crate::model::ScriptRef, Vec<u8>)>> {
        let crate::Command::Argv(argv) = &node.command else {
            return Ok(None);
        };
        let Some(first) = argv.first() else {
            return Ok(None);
        };
        let path = Path::new(first);
        let path = if path.is_absolute() {
            path.to_owned()
        } else {
            self.root().join(path)
        };
        if !path.is_file() {
            return Ok(None);
        }
        let content = std::fs::read(&path).at(&path)?;
        if std::str::from_utf8(&content).is_err() {
            return Err(Error::invalid(
                "script",
                path.display().to_string(),
                "not UTF-8 text",
            ));
        }
        Ok(Some((
            crate::model::ScriptRef::new(first, &content),
            content,
        )))
    }

    /// The recorded content of `node`'s script, if it has one.
    pub fn script_content(&self, node: &NodeSpec) -> Result<Option<String>> {
        let Some(script) = &node.script else {
            return Ok(None);
        };
        let bytes = self
            .store
            .snapshot()?
            .read(&paths::script(script.hex()))?
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "the recorded script {} ({}) is missing from the store",
                    script.path, script.digest
                ))
            })?;
        if blake3::hash(&bytes).to_hex().as_str() != script.hex() {
            return Err(Error::corrupt(format!(
                "the recorded script {} does not match its digest {}",
                script.path, script.digest
            )));
        }
        String::from_utf8(bytes).map(Some).map_err(|_| {
            Error::corrupt(format!("the recorded script {} is not UTF-8", script.path))
        })
    }
}
