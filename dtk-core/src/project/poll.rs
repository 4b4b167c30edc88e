//! Polling sources: [`Project::update_sources`] and the poll of every pass, which asks
//! each source for its latest version (or the tips of its matching refs) and records
//! what is new.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::source::{Source, VersionInfo};
use crate::{Error, Name, Result, RunId, SourceSpec, Version};

use super::blocking_polls::Finished;
use super::{error_chain, Project, POLL_TIMEOUT};
use crate::records::record_version;

/// What [`Project::update_sources`] found for one source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpdateOutcome {
    /// The source.
    pub source: Name,
    /// Its latest version before the poll.
    pub previous: Option<Version>,
    /// Its latest version now (unchanged when the poll failed).
    pub latest: Option<Version>,
    /// Why the poll failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// True when the source was skipped (frozen).
    pub skipped: bool,
    /// A run publishing to this source right now: it was not polled (its new version is
    /// recorded with that run, and its provenance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publishing: Option<RunId>,
    /// For a pattern source: each followed ref that appeared, moved or was deleted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<RefChange>,
    /// Why a source without a version still has none (its tag does not exist yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The note for a source whose tag does not exist yet (`e` says which).
fn not_yet_note(e: &Error) -> String {
    format!(
        "{e}: it does not exist yet, so no version is recorded until it appears \
         (dkt source update) or a node publishes to it"
    )
}

/// A ref of a pattern source that appeared, moved or was deleted at a poll.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RefChange {
    /// The ref's name (`release/1.0`).
    #[serde(rename = "ref")]
    pub name: String,
    /// Its tip before (`None`: it appeared).
    pub from: Option<Version>,
    /// Its tip now (`None`: it was deleted and is no longer followed).
    pub to: Option<Version>,
}

/// What one poll returned.
enum Polled {
    One(VersionInfo),
    Heads(Vec<VersionInfo>),
}

/// What a poll changes about one source.
struct Change {
    latest: Option<Version>,
    record: Vec<VersionInfo>,
    heads: Option<BTreeMap<String, Version>>,
}

/// Compare a pattern source's `heads` (newest first) with those it followed.
fn heads_change(spec: &SourceSpec, heads: Vec<VersionInfo>) -> (Change, Vec<RefChange>) {
    let mut now: BTreeMap<String, Version> = BTreeMap::new();
    let mut record = Vec::new();
    let mut refs = Vec::new();
    let mut latest = None;
    for info in heads {
        let Some(name) = info.extra.get(crate::pattern::REF_FIELD).cloned() else {
            continue;
        };
        if now.contains_key(&name) {
            continue;
        }
        let before = spec.heads.get(&name);
        if before != Some(&info.version) {
            refs.push(RefChange {
                name: name.clone(),
                from: before.cloned(),
                to: Some(info.version.clone()),
            });
            if latest.is_none() {
                latest = Some(info.version.clone());
            }
            record.push(info.clone());
        }
        now.insert(name, info.version);
    }
    for (name, v) in &spec.heads {
        if !now.contains_key(name) {
            refs.push(RefChange {
                name: name.clone(),
                from: Some(v.clone()),
                to: None,
            });
        }
    }
    refs.sort_by(|a, b| a.name.cmp(&b.name));
    let heads = (now != spec.heads).then_some(now);
    (
        Change {
            latest,
            record,
            heads,
        },
        refs,
    )
}

/// How many sources a poll reads at once (a slow remote delays only its own slot).
const POLL_CONCURRENCY: usize = 32;

impl Project {
    /// Poll a resolved spec once and set its latest version (and, for a pattern source,
    /// the tip of each matching ref); on failure, remove the location the kind created
    /// for it, if any. Returns the versions to record.
    pub(crate) async fn poll_resolved(
        &self,
        spec: &mut SourceSpec,
    ) -> Result<(Arc<dyn Source>, Vec<VersionInfo>, Option<String>)> {
        let source = self.open_source(spec)?;
        let polled = if spec.is_pattern() {
            source.heads().await
        } else {
            source.latest().await.map(|l| vec![l])
        };
        let polled = match polled {
            Ok(l) => l,
            // A tag that does not exist yet, of a kind a node can publish to: no version
            // until it appears or a node publishes it (its kind's `resolve` has already
            // reached the location and checked the credentials).
            Err(e @ Error::NotFound { .. })
                if !spec.is_pattern() && source.capabilities().publish =>
            {
                spec.latest = None;
                return Ok((source, Vec::new(), Some(not_yet_note(&e))));
            }
            Err(e) => {
                if spec.owned {
                    let _ = source.remove().await;
                }
                return Err(e);
            }
        };
        if spec.is_pattern() {
            let before = std::mem::take(&mut spec.heads);
            let (change, _) = heads_change(spec, polled);
            spec.heads = change.heads.unwrap_or(before);
            spec.latest = change.latest;
            return Ok((source, change.record, None));
        }
        spec.latest = polled.first().map(|l| l.version.clone());
        Ok((source, polled, None))
    }

    /// Poll the named sources (all when `names` is empty) and record new latest versions.
    /// Frozen sources are skipped; a failing poll is reported in its outcome and does not
    /// stop the others. All new versions land in one commit.
    pub async fn update_sources(&self, names: &[String]) -> Result<Vec<UpdateOutcome>> {
        let all = self.sources()?;
        let selected: Vec<SourceSpec> = if names.is_empty() {
            all
        } else {
            let mut out = Vec::new();
            for n in names {
                let n = Name::new(n)?;
                out.push(
                    all.iter()
                        .find(|s| s.name == n)
                        .cloned()
                        .ok_or_else(|| Error::not_found("source", n.as_str()))?,
                );
            }
            out
        };
        self.poll(selected, true).await
    }

    /// Poll `selected` (localized specs, as [`Project::localized`] gives them)
    /// concurrently (frozen ones are skipped), each within [`POLL_TIMEOUT`]; with
    /// `record`, new latest versions land in one commit.
    pub(crate) async fn poll(
        &self,
        selected: Vec<SourceSpec>,
        record: bool,
    ) -> Result<Vec<UpdateOutcome>> {
        // Runs that died publishing are completed first (their versions then carry their
        // run); an output a live run is publishing to is not polled: its new content
        // belongs to that run, which records it.
        let mut selected = selected;
        if record {
            match self.recover_publishing().await {
                Ok(recovered) if !recovered.is_empty() => {
                    // What they recorded is the latest now.
                    let states = crate::records::all_states(&self.store.snapshot()?)?;
                    for spec in &mut selected {
                        if let Some(state) = states.get(&spec.name) {
                            spec.latest = state.latest.clone();
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "cannot recover runs that died publishing")
                }
            }
        }
        let in_flight = self.publishing_outputs()?;
        // Every source is opened with one context. A poll that is local, blocking work
        // (a path source's) runs with the others of its sort on a few blocking threads;
        // the others are awaited, a few at once.
        let ctx = self.context();
        let timed_out = |spec: &SourceSpec| {
            Error::backend(
                &spec.kind,
                spec.name.as_str(),
                format!("polling took longer than {}s", POLL_TIMEOUT.as_secs()),
            )
        };
        let mut results: Vec<Option<Result<Polled>>> = Vec::with_capacity(selected.len());
        // The blocking polls start while the rest are being opened.
        let mut blocking = super::blocking_polls::Batch::new(selected.len(), POLL_TIMEOUT);
        let mut awaited = Vec::new();
        for (i, spec) in selected.iter().enumerate() {
            results.push(None);
            if spec.frozen || in_flight.contains_key(&spec.name) {
                continue;
            }
            // (`selected` holds localized specs already.)
            let opened = self
                .registry
                .get(&spec.kind)
                .and_then(|k| k.open(&ctx, spec));
            match opened {
                Ok(s) => match (!spec.is_pattern()).then(|| s.blocking_latest()).flatten() {
                    Some(job) => blocking.push(i, job),
                    None => awaited.push((i, s)),
                },
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let polls = awaited.into_iter().map(|(i, s)| {
            let spec = &selected[i];
            async move {
                let poll = async {
                    if spec.is_pattern() {
                        s.heads().await.map(Polled::Heads)
                    } else {
                        s.latest().await.map(Polled::One)
                    }
                };
                let r = match tokio::time::timeout(POLL_TIMEOUT, poll).await {
                    Ok(r) => r,
                    Err(_) => Err(timed_out(spec)),
                };
                (i, r)
            }
        });
        // At most a few polls at once: each may take a blocking thread, and thousands of
        // them at once cost more in threads than they save.
        // (Unordered, so that one slow remote holds only its own slot; then put back in
        // order.)
        let (polled, ran): (Vec<(usize, _)>, _) = tokio::join!(
            futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
                futures::stream::iter(polls),
                POLL_CONCURRENCY,
            )),
            blocking.finish(),
        );
        for (i, r) in polled {
            results[i] = Some(r);
        }
        for (i, finished) in ran {
            let spec = &selected[i];
            results[i] = Some(match finished {
                Finished::Done(r) => r.map(Polled::One),
                Finished::Panicked(what) => Err(Error::backend(
                    &spec.kind,
                    spec.name.as_str(),
                    format!("the poll panicked: {what}"),
                )),
                Finished::TimedOut => Err(timed_out(spec)),
            });
        }
        let results = selected.iter().zip(results);
        let mut outcomes = Vec::new();
        // What changed, per source: the new latest, the versions to record, the new heads.
        let mut changed: Vec<(Name, Change)> = Vec::new();
        for (spec, r) in results {
            let mut o = UpdateOutcome {
                source: spec.name.clone(),
                previous: spec.latest.clone(),
                latest: spec.latest.clone(),
                error: None,
                skipped: r.is_none() && spec.frozen,
                publishing: in_flight.get(&spec.name).copied().filter(|_| r.is_none()),
                refs: Vec::new(),
                note: None,
            };
            match r {
                Some(Ok(Polled::One(info))) => {
                    o.latest = Some(info.version.clone());
                    if spec.latest.as_ref() != Some(&info.version) {
                        changed.push((
                            spec.name.clone(),
                            Change {
                                latest: Some(info.version.clone()),
                                record: vec![info],
                                heads: None,
                            },
                        ));
                    }
                }
                Some(Ok(Polled::Heads(heads))) => {
                    let (change, refs) = heads_change(spec, heads);
                    o.latest = change.latest.clone().or_else(|| spec.latest.clone());
                    o.refs = refs;
                    if change.heads.is_some() {
                        changed.push((spec.name.clone(), change));
                    }
                }
                // Still no version (a tag not published yet): a note, not a failure.
                Some(Err(e @ Error::NotFound { .. }))
                    if spec.latest.is_none() && !spec.is_pattern() =>
                {
                    o.note = Some(not_yet_note(&e))
                }
                Some(Err(e)) => o.error = Some(error_chain(&e)),
                None => {}
            }
            outcomes.push(o);
        }
        let previous: BTreeMap<Name, Option<Version>> = outcomes
            .iter()
            .map(|o| (o.source.clone(), o.previous.clone()))
            .collect();
        if record && !changed.is_empty() {
            let message = format!(
                "source update: {}",
                changed
                    .iter()
                    .map(|(n, c)| match (&c.latest, &c.heads) {
                        (_, Some(h)) => format!("{n} -> {} refs", h.len()),
                        (Some(v), None) => format!("{n} -> {}", v.short()),
                        (None, None) => n.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let (left, _) = self.store.transact(&message, |tx| {
                // Recorded only if nothing moved under the poll: a source a run is
                // publishing to is left to that run, and so is one whose latest version
                // changed while it was polled (a run published and recorded meanwhile: the
                // poll may have read the content half before and half after the switch).
                let in_flight = self.publishing_outputs()?;
                let mut left = Vec::new();
                for (name, change) in &changed {
                    let now = crate::records::get_source(tx, name)?.and_then(|s| s.latest);
                    let before = previous.get(name).cloned().flatten();
                    if in_flight.contains_key(name) || now != before {
                        left.push(name.clone());
                        continue;
                    }
                    let updated = crate::records::update_state(tx, name, |spec| {
                        if let Some(v) = &change.latest {
                            spec.latest = Some(v.clone());
                        }
                        if let Some(h) = &change.heads {
                            spec.heads = h.clone();
                        }
                    })?;
                    if !updated {
                        continue; // removed meanwhile
                    }
                    for info in &change.record {
                        record_version(tx, name, info, None)?;
                    }
                }
                Ok(left)
            })?;
            for o in outcomes.iter_mut().filter(|o| left.contains(&o.source)) {
                tracing::info!(source = %o.source, "not recorded: a run published to it while it was polled");
                o.latest = o.previous.clone();
            }
            for (name, change) in changed.iter().filter(|(n, _)| !left.contains(n)) {
                for info in &change.record {
                    self.events.send(crate::events::Event::VersionRecorded {
                        source: name.clone(),
                        version: info.version.clone(),
                    });
                }
            }
        }
        Ok(outcomes)
    }

    /// The output sources of runs publishing now (their publish intents), with the run.
    pub(crate) fn publishing_outputs(&self) -> Result<BTreeMap<Name, RunId>> {
        Ok(self
            .run_queue()
            .intents()?
            .into_iter()
            .flat_map(|i| {
                let run = i.run.id;
                i.outputs.into_iter().map(move |o| (o.source, run))
            })
            .collect())
    }
}
