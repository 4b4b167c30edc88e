//! Reading nodes and runs: a node by ID prefix, its runs and their logs, the inputs it
//! would run on, and which of its attempts succeeded.

use super::*;

impl Project {
    /// Find a node by ID prefix (at least 4 hex digits, or the full ID).
    pub fn node(&self, prefix: &str) -> Result<(NodeId, NodeSpec)> {
        // A name first (names are not hex-only... but may be: the name wins).
        let snap = self.store().snapshot()?;
        if let Some(id) = crate::lifecycle::named(&snap, prefix)? {
            if let Some(spec) = snap.read_json::<NodeSpec>(&paths::node(&id))? {
                return Ok((id, spec));
            }
        }
        let p = prefix.to_ascii_lowercase();
        if p.len() < 4 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::invalid(
                "node",
                prefix,
                "expected a node name or at least 4 hex digits of a node ID",
            ));
        }
        // The prefix names the fanned-out directory holding its node (retired nodes too:
        // their history stays readable), so only that directory is read.
        let dir = paths::node_dir(&p);
        let candidates: Vec<String> = snap
            .list(&dir)?
            .into_iter()
            .filter(|e| !e.is_dir && e.name.starts_with(&p) && e.name.ends_with(".json"))
            .map(|e| e.name)
            .collect();
        let name =
            crate::id::resolve_prefix("node", &p, &candidates, |n| n[..8].to_owned(), |_, _| true)?;
        let spec: NodeSpec = snap
            .read_json(&format!("{dir}/{name}"))?
            .ok_or_else(|| Error::not_found("node", prefix))?;
        Ok((spec.id(), spec))
    }

    /// Every run of `node`, newest first.
    pub fn node_runs(&self, node: &NodeId) -> Result<Vec<RunRecord>> {
        let snap = self.store().snapshot()?;
        let mut runs = crate::records::indexed_runs(&snap, &paths::node_runs_dir(node))?;
        // Runs queued or executing are in the queue until they end.
        let queue = self.run_queue();
        let queued = queue
            .pending()?
            .into_iter()
            .chain(queue.claimed()?.into_iter().map(|(r, _)| r))
            .filter(|r| r.node == *node);
        for r in queued {
            match runs.iter_mut().find(|x| x.id == r.id) {
                // An ended record stands: a queue entry beside it was left by a process
                // that died after recording the run and before leaving the queue.
                Some(x) if x.status.is_ended() => {}
                Some(x) => *x = r,
                None => runs.push(r),
            }
        }
        runs.sort_by(|a, b| {
            b.queued_ms
                .cmp(&a.queued_ms)
                .then(b.attempt.cmp(&a.attempt))
                .then(b.id.cmp(&a.id))
        });
        Ok(runs)
    }

    /// Find a run by ID prefix (at least 4 hex digits).
    pub fn run_record(&self, prefix: &str) -> Result<RunRecord> {
        let p = prefix.to_ascii_lowercase();
        if p.len() < 4 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::invalid(
                "run ID",
                prefix,
                "expected at least 4 hex digits",
            ));
        }
        let snap = self.store().snapshot()?;
        let dir = paths::run_dir(&p);
        let mut candidates: Vec<String> = snap
            .list(&dir)?
            .into_iter()
            .filter(|e| e.name.ends_with(".json") && e.name.starts_with(&p))
            .map(|e| e.name)
            .collect();
        // Runs still queued or executing.
        let queue = self.run_queue();
        let queued: Vec<RunRecord> = queue
            .pending()?
            .into_iter()
            .chain(queue.claimed()?.into_iter().map(|(r, _)| r))
            .filter(|r| r.id.to_hex().starts_with(&p))
            .collect();
        for r in &queued {
            let name = format!("{}.json", r.id.to_hex());
            if !candidates.contains(&name) {
                candidates.push(name);
            }
        }
        let name =
            crate::id::resolve_prefix("run", &p, &candidates, |n| n[..8].to_owned(), |_, _| true)?;
        let recorded: Option<RunRecord> = snap.read_json(&format!("{dir}/{name}"))?;
        if let Some(r) = recorded.filter(|r| r.status.is_ended()) {
            return Ok(r);
        }
        if let Some(r) = queued
            .into_iter()
            .find(|r| format!("{}.json", r.id.to_hex()) == *name)
        {
            return Ok(r);
        }
        snap.read_json(&format!("{dir}/{name}"))?
            .ok_or_else(|| Error::not_found("run", prefix))
    }

    /// The captured output of a run (secrets replaced by `***`), followed by its hook's
    /// output when a hook ran.
    pub fn run_log(&self, run: &RunId) -> Result<String> {
        let snap = self.store().snapshot()?;
        let mut log = snap
            .read(&paths::run_log(run))?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if let Some(hook) = snap.read(&paths::run_hook_log(run))? {
            if !log.is_empty() && !log.ends_with('\n') {
                log.push('\n');
            }
            log.push_str(&String::from_utf8_lossy(&hook));
        }
        Ok(log)
    }

    /// The input versions a node would run on now (pinned where pinned, else latest).
    pub fn current_inputs(&self, node: &NodeSpec) -> Result<Vec<SourceVersion>> {
        let snap = self.store().snapshot()?;
        current_inputs(&snap, node)
    }
}

/// The input versions `node` would run on in `snap` (pinned where pinned, else latest).
pub(crate) fn current_inputs_of(snap: &Snapshot, node: &NodeSpec) -> Result<Vec<SourceVersion>> {
    current_inputs(snap, node)
}

pub(crate) fn current_inputs(snap: &Snapshot, node: &NodeSpec) -> Result<Vec<SourceVersion>> {
    let mut inputs = Vec::new();
    for name in &node.inputs {
        let spec = read_source(snap, name)?;
        let version = spec.current().cloned().ok_or_else(|| {
            Error::Conflict(format!(
                "input {name:?} has no version yet: run `dkt source update {name}`"
            ))
        })?;
        inputs.push(SourceVersion {
            source: name.clone(),
            version,
        });
    }
    inputs.sort();
    Ok(inputs)
}

/// Resolve `SRC:PREFIX` among recorded versions only (no kind history).
pub fn resolve_recorded(project: &Project, text: &str) -> Result<SourceVersion> {
    let (name, prefix) = text
        .split_once(':')
        .ok_or_else(|| Error::invalid("source version", text, "expected SOURCE:VERSION"))?;
    let versions: Vec<_> = project
        .recorded_versions(name)?
        .into_iter()
        .map(|r| r.version)
        .collect();
    let v = resolve_version(prefix, &versions)?;
    Ok(SourceVersion {
        source: Name::new(name)?,
        version: v.clone(),
    })
}

/// The newest attempt of `node` on `inputs`, if any. Attempts are numbered 0, 1, 2, ...
/// without gaps and their IDs are computed, so this probes O(log n) paths instead of
/// reading every run of the node.
/// A successful run of `node` on exactly `inputs`, if there is one: run IDs are derived
/// from the node, the inputs and the attempt number, so the attempts are found by probing
/// (see [`last_attempt`]) and read newest first; no index is kept.
pub(crate) fn succeeded_on(
    snap: &Snapshot,
    node: &NodeId,
    inputs: &[SourceVersion],
) -> Result<Option<RunRecord>> {
    success_up_to(
        snap,
        node,
        inputs,
        last_attempt(snap, node, inputs)?.as_ref(),
    )
}

/// [`succeeded_on`] for a caller that already probed the last attempt, `last`.
pub(crate) fn success_up_to(
    snap: &Snapshot,
    node: &NodeId,
    inputs: &[SourceVersion],
    last: Option<&RunRecord>,
) -> Result<Option<RunRecord>> {
    let Some(last) = last else {
        return Ok(None);
    };
    if last.status == RunStatus::Success {
        return Ok(Some(last.clone()));
    }
    for attempt in (0..last.attempt).rev() {
        let path = paths::run(&RunId::compute(node, inputs, attempt));
        if let Some(r) = snap.read_json::<RunRecord>(&path)? {
            if r.status == RunStatus::Success {
                return Ok(Some(r));
            }
        }
    }
    Ok(None)
}

pub(crate) fn last_attempt(
    snap: &Snapshot,
    node: &NodeId,
    inputs: &[SourceVersion],
) -> Result<Option<RunRecord>> {
    match last_attempt_number(snap, node, inputs)? {
        Some(a) => snap.read_json(&paths::run(&RunId::compute(node, inputs, a))),
        None => Ok(None),
    }
}

/// The number of the last recorded attempt of `node` on `inputs` (see [`last_attempt`]),
/// found by probing which records exist, without reading any.
pub(crate) fn last_attempt_number(
    snap: &Snapshot,
    node: &NodeId,
    inputs: &[SourceVersion],
) -> Result<Option<u32>> {
    let path = |a: u32| paths::run(&RunId::compute(node, inputs, a));
    let exists = |a: u32| -> Result<bool> { Ok(snap.blob_id(&path(a))?.is_some()) };
    // Where the last search ended, if it is recorded here: the search goes on from there
    // (two probes when nothing was added, instead of two for each doubling of the
    // attempts), and otherwise starts afresh.
    let key = RunId::compute(node, inputs, 0).0;
    let hinted = match snap.hint(&key) {
        Some(h) if exists(h)? => Some(h),
        _ => None,
    };
    // Attempts are recorded in order, except one whose process died: it stays unrecorded
    // until someone settles it, and a later attempt may be recorded first. Such gaps are
    // few; they are looked past.
    let mut first = hinted;
    for a in 0..ATTEMPT_GAP {
        if first.is_some() {
            break;
        }
        if exists(a)? {
            first = Some(a);
        }
    }
    let Some(first) = first else {
        return Ok(None);
    };
    let last = last_from(first, exists)?;
    snap.remember_hint(key, last);
    Ok(Some(last))
}

/// The end of the attempts recorded from `lo` (which is), by `exists`, past gaps one
/// attempt wide.
fn last_from(mut lo: u32, exists: impl Fn(u32) -> Result<bool>) -> Result<u32> {
    loop {
        // The end of the run of recorded attempts from `lo`: gallop (in steps that
        // double from `lo`, so that a start near the end takes few), then bisect.
        let mut step = 1u32;
        let mut hi = lo.saturating_add(1);
        while exists(hi)? {
            lo = hi;
            if lo == u32::MAX {
                break;
            }
            step = step.saturating_mul(2);
            hi = lo.saturating_add(step);
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if exists(mid)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        // Then past a gap (one probe a pass: gaps are one dead claim wide), if a later
        // attempt was recorded.
        let next = lo.saturating_add(2);
        if next > lo && exists(next)? {
            lo = next;
        } else {
            return Ok(lo);
        }
    }
}

/// How many unrecorded attempts at the start [`last_attempt`] looks past.
const ATTEMPT_GAP: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// `last_from(start)` over the attempts `recorded`, and how many it probed.
    fn search(recorded: &[u32], start: u32) -> (u32, u32) {
        let probes = Cell::new(0);
        let last = last_from(start, |a| {
            probes.set(probes.get() + 1);
            Ok(recorded.contains(&a))
        })
        .unwrap_or(u32::MAX);
        (last, probes.get())
    }

    #[test]
    fn the_last_attempt_is_found_past_one_wide_gaps_from_any_recorded_start() {
        for n in [1u32, 2, 3, 7, 100, 1000] {
            // In order, or with the second and the last but one never recorded (their
            // processes died): the last is the last recorded, whichever recorded
            // attempt the search starts from.
            let full: Vec<u32> = (0..n).collect();
            let gapped: Vec<u32> = (0..n).filter(|&a| a != 1 && a + 2 != n).collect();
            for recorded in [full, gapped] {
                let last = recorded.iter().copied().max().unwrap_or(0);
                for &start in &recorded {
                    assert_eq!(search(&recorded, start).0, last, "n {n} from {start}");
                }
            }
        }
        // A gap two wide ends the search: what lies past it is not seen from below.
        assert_eq!(search(&[0, 1, 4, 5], 0).0, 1);
        assert_eq!(search(&[0, 1, 4, 5], 4).0, 5);
    }

    #[test]
    fn a_search_started_near_the_end_takes_a_few_probes() {
        let recorded: Vec<u32> = (0..5000).collect();
        let (last, from_start) = search(&recorded, 0);
        assert_eq!(last, 4999);
        let (last, from_last) = search(&recorded, 4999);
        assert_eq!(last, 4999);
        let (last, from_one_before) = search(&recorded, 4998);
        assert_eq!(last, 4999);
        // Twice the doublings from the start (gallop, then bisect), two from the last
        // (the next, then past a gap) and a few from just before it.
        assert!(from_start >= 20, "{from_start}");
        assert_eq!(from_last, 2);
        assert!(from_one_before <= 5, "{from_one_before}");
    }
}
