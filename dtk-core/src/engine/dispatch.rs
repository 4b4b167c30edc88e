//! Executing a claimed run on a remote worker: the ticket, its lease, the artifacts.

use super::*;

impl Project {
    /// Execute a run on a remote worker through `d` (see [`crate::remote`]): ship what
    /// the worker cannot reach, dispatch the ticket, wait, bring the outputs back into
    /// staging directories and publish them as a local run does. Also returns the worker
    /// that executed it.
    pub(super) async fn execute_remote(
        &self,
        d: &Arc<dyn crate::remote::Dispatcher>,
        node: &NodeSpec,
        record: &RunRecord,
        timeout: Option<Duration>,
    ) -> Result<(String, Exec, Option<ExecutedBy>)> {
        use crate::remote::{self, Materialize, Ticket, TicketInput, TicketOutput};
        // Refused before anything is shipped: a workers file that is set but missing.
        let trusted = crate::signing::coordinator_workers(self)?;
        let snap = self.store().snapshot()?;
        let scratch = super::Scratch::new(&self.dkt_dir().join("tmp"), &record.id)?;
        let scratch_real = std::fs::canonicalize(scratch.path()).at(scratch.path())?;
        let mut scope = Scope::default();
        let mut inputs = Vec::new();
        for sv in &record.inputs {
            let spec = self.localized(&read_source(&snap, &sv.source)?);
            let source = self.open_source(&spec)?;
            let from = if remote::shipped_kind(&spec) {
                let key = remote::version_key(&spec, &sv.version);
                let tree = match d.shipped(&key).await? {
                    Some(t) => t,
                    None => {
                        let dir = ensure_dir(&scratch.path().join(format!("in-{}", sv.source)))?;
                        let root = source.materialize(&sv.version, &dir).await?;
                        d.ship(&key, &root).await?
                    }
                };
                let mut root = PathBuf::from(remote::ROOT_PLACEHOLDER);
                if let Some(f) = &tree.file {
                    root.push(f);
                }
                let fields = source.fields(Some(&sv.version), &root)?;
                scope.add(&sv.source, fields.clone())?;
                Materialize::Artifact {
                    artifact: tree,
                    fields,
                }
            } else {
                let fields =
                    source.fields(Some(&sv.version), Path::new(remote::ROOT_PLACEHOLDER))?;
                scope.add(&sv.source, fields)?;
                Materialize::Kind { spec: spec.clone() }
            };
            inputs.push(TicketInput {
                name: sv.source.clone(),
                version: sv.version.clone(),
                from,
            });
        }
        let mut outputs = Vec::new();
        let mut staged: Vec<Staged> = Vec::new();
        for name in &node.outputs {
            let spec = self.localized(&read_source(&snap, name)?);
            let source = self.open_source(&spec)?;
            let current = match spec.current() {
                None => None,
                Some(v) => {
                    let key = remote::version_key(&spec, v);
                    Some(match d.shipped(&key).await? {
                        Some(t) => t,
                        None => {
                            let tmp = ensure_dir(&scratch.path().join(format!("cur-{name}")))?;
                            let root = match source.materialize(v, &tmp).await {
                                Ok(root) => root,
                                Err(e) => {
                                    return Ok((
                                        String::new(),
                                        Exec::Error(format!(
                                            "output {name}: its current version {v} cannot be read back: {}",
                                            crate::project::error_chain(&e)
                                        )),
                                        None,
                                    ))
                                }
                            };
                            d.ship(&key, &root).await?
                        }
                    })
                }
            };
            let fields = source.fields(None, Path::new(remote::ROOT_PLACEHOLDER))?;
            scope.add(name, fields.clone())?;
            outputs.push(TicketOutput {
                name: name.clone(),
                current,
                fields,
            });
            staged.push((
                name.clone(),
                source,
                scratch.path().join(format!("out-{name}")),
                spec.current().cloned(),
            ));
        }
        // Which variables and secrets the command uses: the values of variables travel,
        // secrets only by name (the worker has its own).
        self.add_private(&mut scope);
        self.plan(node, &scope, None)?;
        let mut vars = BTreeMap::new();
        let mut secrets = Vec::new();
        for (k, v) in scope.used_private() {
            if self.secrets().get(&k).is_some() {
                secrets.push(k);
            } else {
                vars.insert(k, v);
            }
        }
        let sandbox = self.sandboxed(node);
        let ticket = Ticket {
            format: if sandbox {
                remote::TICKET_FORMAT_SANDBOX
            } else {
                remote::TICKET_FORMAT
            },
            sandbox,
            network: sandbox && node.network,
            run: record.id,
            node: record.node,
            attempt: record.attempt,
            labels: node.labels.clone(),
            command: node.command.clone(),
            script: self.node_script(node)?,
            inputs,
            outputs,
            vars,
            secrets,
            settings: self.config().kind.clone(),
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
            artifacts: d.artifacts_url(),
            lease_ms: self.config().lease().as_millis() as u64,
        };
        self.events().send(crate::events::Event::RunStarted {
            run: record.id,
            node: record.node,
        });
        let sent = ticket.clone();
        let result = d.dispatch(ticket, self.cancel_token()).await?;
        let log = self.secrets().redact(&result.log);
        let mut by = ExecutedBy {
            worker: result.worker.clone(),
            key: None,
        };
        // A result from a worker is signed by its key, over what it ran and produced; the
        // dispatcher's own (a run cancelled, or whose worker was lost) is not.
        let made_here = result.signature.is_none()
            && matches!(
                result.ending,
                remote::Ending::Cancelled | remote::Ending::Interrupted { .. }
            );
        if !made_here {
            match remote::check_result(&sent, &result, trusted.as_ref()) {
                Ok(key) => by.key = Some(key),
                Err(why) => {
                    tracing::warn!(run = %record.id.short(), "{why}");
                    return Ok((log, Exec::Error(why), Some(by)));
                }
            }
        }
        let worker = Some(by);
        let exec = match result.ending {
            remote::Ending::Success { outputs: shipped } => {
                for (name, _, stage, _) in &staged {
                    let Some(tree) = shipped.get(name) else {
                        return Ok((
                            log,
                            Exec::Error(format!(
                                "worker {} sent no content for output {name}",
                                result.worker
                            )),
                            worker,
                        ));
                    };
                    ensure_dir(stage)?;
                    if let Err(e) = d.fetch(tree, stage).await {
                        return Ok((
                            log,
                            Exec::Error(format!(
                                "output {name}: {}; nothing was published",
                                crate::project::error_chain(&e)
                            )),
                            worker,
                        ));
                    }
                }
                let (log, exec) = self
                    .publish_staged(node, record, log, scratch, &scratch_real, staged)
                    .await?;
                return Ok((log, exec, worker));
            }
            remote::Ending::Failed { code, error } => Exec::Failed { code, error },
            remote::Ending::Cancelled => Exec::Cancelled,
            remote::Ending::Interrupted { why } => Exec::Interrupted(why),
            remote::Ending::Error { message } => Exec::Error(message),
        };
        Ok((log, exec, worker))
    }
}
