//! Publishing a run's staged outputs, and completing (or rolling back) publishes that a
//! killed process left behind.

use super::*;

impl Project {
    /// Complete or roll back the runs whose process died while publishing their outputs
    /// (a [`PublishIntent`](crate::queue::PublishIntent) with a dead holder), settle the
    /// runs whose settler died in turn, and record `interrupted` the other runs whose
    /// worker died. A run whose every output was published is recorded
    /// `success` with those versions as its outputs, each with its provenance (as its own
    /// process would have); a run that published nothing is recorded `interrupted`. Returns
    /// the records written. Called before polls, passes and runs, so that a version made by
    /// a node always carries its run.
    pub async fn recover_publishing(&self) -> Result<Vec<RunRecord>> {
        let queue = self.run_queue().clone();
        let mut claimed: Vec<RunRecord> = queue.claimed()?.into_iter().map(|(r, _)| r).collect();
        // (Only a claim that never started can be put back; then the claims are listed
        // again, without it.)
        let unstarted = claimed
            .iter()
            .any(|r| r.status == RunStatus::Pending && r.worker.is_none());
        if unstarted && queue.requeue_unstarted(self.config().lease())? > 0 {
            claimed = queue.claimed()?.into_iter().map(|(r, _)| r).collect();
        }
        let intents: BTreeMap<RunId, crate::queue::PublishIntent> = queue
            .intents()?
            .into_iter()
            .map(|i| (i.run.id, i))
            .collect();
        let mut mine: Vec<(RunRecord, Option<crate::queue::PublishIntent>)> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for claim in &claimed {
            seen.insert(claim.id);
            let Some(intent) = intents.get(&claim.id) else {
                continue;
            };
            // A run publishing is waited for while its process lives, however long it was
            // stopped: publishing cannot be fenced, so taking it over could leave its
            // process to publish after the run was settled.
            if !self.holder_gone(claim) {
                continue;
            }
            if let Some(rec) = queue.take_over(&claim.id)? {
                mine.push((rec, Some(intent.clone())));
            }
        }
        for rec in queue.take_over_settling(self.config().lease())? {
            seen.insert(rec.id);
            let intent = intents.get(&rec.id).cloned();
            mine.push((rec, intent));
        }
        // An intent left without any claim: its process died while leaving the queue
        // (the result is recorded), or between taking the claim over and settling it.
        let mut snap = None;
        for (id, intent) in &intents {
            if seen.contains(id) || queue.settling(id)? {
                continue;
            }
            let snap = match &mut snap {
                Some(s) => s,
                None => snap.insert(self.store().snapshot()?),
            };
            let ended = snap
                .read_json::<RunRecord>(&paths::run(id))?
                .is_some_and(|r| r.status != RunStatus::Running && r.status != RunStatus::Pending);
            if ended {
                queue.finish(id)?;
            } else if queue.adopt(intent, self.config().lease())? {
                mine.push((intent.run.clone(), Some(intent.clone())));
            }
        }
        let mut out = Vec::new();
        for (rec, intent) in mine {
            let done = match intent {
                None => self.record_interrupted(rec, |rec| {
                    format!(
                        "its worker {} died or stopped renewing its lease",
                        rec.worker.as_deref().unwrap_or("-")
                    )
                })?,
                Some(intent) => self.complete_publish(intent).await?,
            };
            out.extend(done);
        }
        // And the runs whose worker died before publishing, whatever their inputs (a run
        // on inputs that have moved on is otherwise never looked at again). The claims
        // listed above will do: each is taken over exclusively, so one settled above (or
        // ended meanwhile) is skipped, and one claimed since has a live holder.
        let refs: Vec<&RunRecord> = claimed.iter().collect();
        out.extend(self.settle_interrupted(&refs)?);
        self.sweep_leftovers()?;
        Ok(out)
    }

    /// Remove the scratch directories and live logs of runs no one holds any more: a
    /// process whose claim was taken over while it was stopped may go on to create them
    /// after its run was settled, then be killed. The directories are listed before the
    /// claims, so a run claimed meanwhile (claims come first) is never swept.
    fn sweep_leftovers(&self) -> Result<()> {
        let entries = |dir: &Path| -> Vec<(String, PathBuf)> {
            std::fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                        .collect()
                })
                .unwrap_or_default()
        };
        // (Free scratch areas, `free-*`, belong to no run.)
        let mut scratch = entries(&self.dkt_dir().join("tmp"));
        scratch.retain(|(name, _)| name.starts_with("run-"));
        let logs = entries(&self.dkt_dir().join("logs"));
        if scratch.is_empty() && logs.is_empty() {
            return Ok(());
        }
        let queue = self.run_queue();
        let mut held: Vec<String> = queue
            .claimed()?
            .into_iter()
            .map(|(r, _)| r.id.to_hex())
            .collect();
        held.extend(queue.intents()?.into_iter().map(|i| i.run.id.to_hex()));
        held.extend(queue.settling_runs()?.into_iter().map(|r| r.to_hex()));
        for (name, path) in scratch {
            let Some(short) = name.strip_prefix("run-").and_then(|r| r.get(..8)) else {
                continue;
            };
            if !held.iter().any(|h| h.starts_with(short)) {
                tracing::info!(dir = %path.display(), "removing the scratch directory of a run no one holds");
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        for (name, path) in logs {
            let Some(hex) = name.strip_suffix(".log") else {
                continue;
            };
            if !held.iter().any(|h| h == hex) {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(())
    }

    /// Whether the process holding `claim` is gone: dead, or (on another machine, where
    /// that cannot be checked) silent for longer than the lease.
    pub(super) fn holder_gone(&self, claim: &RunRecord) -> bool {
        match claim.worker.as_deref().and_then(pid_alive) {
            Some(alive) => !alive,
            None => self.effective_status(claim) == RunStatus::Interrupted,
        }
    }

    /// Complete (or roll back) the run of `intent`, taken over from its dead holder.
    async fn complete_publish(
        &self,
        intent: crate::queue::PublishIntent,
    ) -> Result<Option<RunRecord>> {
        let snap = self.store().snapshot()?;
        // Which outputs were published: those the intent says, and those whose content
        // moved since publishing began (killed after publishing, before saying so).
        let mut state: Vec<(crate::queue::IntentOutput, Option<crate::VersionInfo>)> = Vec::new();
        for o in &intent.outputs {
            let info = match &o.published {
                Some(info) => Some(info.clone()),
                None => {
                    // Content that moved since, and that no one recorded yet (a version
                    // already recorded is another run's or a poll's, not this one's).
                    let spec = read_source(&snap, &o.source)?;
                    let now = self.open_source(&spec)?.latest().await?;
                    let moved = Some(&now.version) != o.before.as_ref();
                    let recorded = snap
                        .blob_id(&paths::version(&o.source, &now.version))?
                        .is_some();
                    (moved && !recorded).then_some(now)
                }
            };
            state.push((o.clone(), info));
        }
        let published = state.iter().filter(|(_, i)| i.is_some()).count();
        let who = worker_id();
        let dead = intent.run.worker.clone().unwrap_or_else(|| "-".to_owned());
        if published == 0 {
            return self.record_interrupted(intent.run, |_| {
                format!(
                    "its worker {dead} died or stopped while publishing its outputs, before any \
                     was published: nothing was published (rolled back by {who})"
                )
            });
        }
        // Some but not all: the rest are published now from where the run staged them.
        let mut lost = Vec::new();
        for (o, info) in state.iter_mut() {
            if info.is_some() {
                continue;
            }
            let spec = read_source(&snap, &o.source)?;
            let source = self.open_source(&spec)?;
            if std::fs::symlink_metadata(&o.stage).is_ok() {
                match source.publish(&o.stage).await {
                    Ok(i) => *info = Some(i),
                    Err(e) => {
                        lost.push(format!("{}: {}", o.source, crate::project::error_chain(&e)))
                    }
                }
            } else {
                lost.push(format!("{}: its staged content is gone", o.source));
            }
        }
        let mut record = intent.run.clone();
        record.ended_ms = Some(now_ms());
        record.lease_until_ms = None;
        let outputs: Vec<(SourceVersion, crate::VersionInfo)> = state
            .into_iter()
            .filter_map(|(o, info)| {
                info.map(|info| {
                    (
                        SourceVersion {
                            source: o.source,
                            version: info.version.clone(),
                        },
                        info,
                    )
                })
            })
            .collect();
        record.outputs = outputs.iter().map(|(sv, _)| sv.clone()).collect();
        let mut log = std::fs::read_to_string(self.live_log_path(&record.id)).unwrap_or_default();
        if !log.is_empty() && !log.ends_with('\n') {
            log.push('\n');
        }
        if lost.is_empty() {
            record.status = RunStatus::Success;
            record.exit_code = Some(0);
            log.push_str(&format!(
                "[dkt: worker {dead} died after publishing the outputs and before recording the run; \
                 recorded by {who}]\n"
            ));
        } else {
            record.status = RunStatus::Failure;
            record.exit_code = Some(0);
            record.error = Some(format!(
                "its worker {dead} died while publishing its outputs; {} could not be completed ({})",
                lost.len(),
                lost.join("; ")
            ));
        }
        let log = self.secrets().redact(&log);
        let rec = sealed_run(&record, Some(&log))?;
        let message = format!(
            "run {} of node {}: {} (recovered after its worker died publishing)",
            rec.id.short(),
            rec.node.short(),
            rec.status
        );
        let (recorded, _) = self.store().transact(&message, |tx| {
            if let Some(now) = tx.read_json::<RunRecord>(&paths::run(&rec.id))? {
                if now.status != RunStatus::Running && now.status != RunStatus::Pending {
                    return Ok(false);
                }
            }
            write_run(tx, &rec, Some(&log))?;
            record_outputs(tx, &outputs, &rec)?;
            Ok(true)
        })?;
        self.run_queue().finish(&rec.id)?;
        self.remove_leftovers(&rec.id);
        if !recorded {
            return Ok(None);
        }
        tracing::warn!(run = %rec.id.short(), status = %rec.status, "recovered a run whose worker died publishing its outputs");
        if rec.status == RunStatus::Success {
            self.drop_obsolete_pending(&rec);
            self.attach_statements(&rec).await;
        }
        for o in &rec.outputs {
            self.events().send(crate::events::Event::VersionRecorded {
                source: o.source.clone(),
                version: o.version.clone(),
            });
        }
        Ok(Some(rec))
    }

    /// After a run's command succeeded: check the claim is still this process's, check
    /// each output's staging directory, and publish them.
    pub(super) async fn publish_staged(
        &self,
        node: &NodeSpec,
        record: &RunRecord,
        log: String,
        scratch: super::Scratch,
        scratch_real: &Path,
        outputs: Vec<Staged>,
    ) -> Result<(String, Exec)> {
        // The claim must still be this process's: if it was paused for longer than its
        // lease, another process may have declared it interrupted and run it again, and
        // this older result must not be published over the newer one.
        if let Err(why) = self.confirm_claim(record) {
            return Ok((log, Exec::Superseded(why)));
        }
        // A node may have replaced an output's ROOT (or the scratch area around it) with a
        // symbolic link: publishing would then move whatever it points to. Only a real
        // directory at the very path dtk made is published.
        for (name, _, stage, _) in &outputs {
            if let Err(why) = check_stage(scratch_real, stage) {
                return Ok((
                    log,
                    Exec::Error(format!(
                        "output {name}: {why}; nothing was published (a node writes into ${{{name}:ROOT}}, it does not replace it)"
                    )),
                ));
            }
        }
        // Publish only to outputs still at the version the run started from (unless the
        // node says `on-conflict: overwrite`): all are checked before any is published,
        // and each kind checks again as it publishes.
        let overwrite = node.on_conflict == Some(crate::model::OnConflict::Overwrite);
        let manifest = crate::digest::input_manifest(record)?;
        let options = |expected: &Option<crate::Version>| {
            crate::source::PublishOptions::new()
                .expecting(expected.clone())
                .with_overwrite(overwrite)
                .for_run(record.id.to_hex(), record.node.to_hex())
                .with_manifest(manifest.clone())
        };
        let mut moved = None;
        if !overwrite {
            for (_, source, _, expected) in &outputs {
                if !source.capabilities().publish {
                    continue; // its publish says so, clearly
                }
                match crate::source::check_expected(source.as_ref(), &options(expected)).await {
                    Ok(()) => {}
                    Err(e @ Error::OutputMoved { .. }) => {
                        moved = Some(e);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let mut published = Vec::new();
        if moved.is_none() && !outputs.is_empty() {
            // The intent goes first: killed from here on, this run is completed (or rolled
            // back) by the next process that looks, never left for a poll to record its
            // outputs as versions without provenance.
            let fresh = self.store().snapshot()?;
            let mut intent = crate::queue::PublishIntent {
                run: record.clone(),
                outputs: Vec::new(),
            };
            for (name, _, stage, _) in &outputs {
                intent.outputs.push(crate::queue::IntentOutput {
                    source: name.clone(),
                    before: read_source(&fresh, name)?.latest,
                    stage: stage.clone(),
                    published: None,
                });
            }
            self.run_queue().write_intent(&intent, true)?;
            for (i, (name, source, stage, expected)) in outputs.into_iter().enumerate() {
                // Fenced before each output: a claim taken over meanwhile (this process
                // was stopped past its lease) publishes nothing more; its taker completes
                // it.
                let held = self
                    .run_queue()
                    .get(&record.id)?
                    .is_some_and(|q| still_ours(&q, record).is_ok());
                if !held {
                    return Ok((
                        log,
                        Exec::Superseded(format!(
                            "run {} (attempt {}) was taken over while it published its outputs \
                             ({i} of {} published; the process that took it over records them)",
                            record.id.short(),
                            record.attempt,
                            intent.outputs.len()
                        )),
                    ));
                }
                test_pause("publish");
                match source.publish_with(&stage, &options(&expected)).await {
                    Ok(info) => {
                        test_pause("published");
                        intent.outputs[i].published = Some(info.clone());
                        self.run_queue().write_intent(&intent, false)?;
                        published.push((
                            SourceVersion {
                                source: name,
                                version: info.version.clone(),
                            },
                            info,
                        ));
                    }
                    Err(e @ Error::OutputMoved { .. }) => {
                        moved = Some(e);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(e) = moved {
            // What the run wrote stays where it is, for the user to look at or merge.
            let staging = scratch.keep();
            return Ok((
                log,
                Exec::Conflict {
                    why: e.to_string(),
                    staging,
                    published,
                },
            ));
        }
        test_pause("record");
        Ok((log, Exec::Success(published)))
    }
}
