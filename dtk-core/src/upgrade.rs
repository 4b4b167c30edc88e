//! Store format upgrades: a store written by an earlier release is brought to the current
//! layout when it is opened, one commit per format step (see `docs/format.md`).

use crate::records::paths;
use crate::store::Store;
use crate::{Error, Name, Result, SourceSpec};

/// The format marker of store format 1.
const V1: &[u8] = b"dtk-store 1\n";
/// The format marker of store format 2.
const V2: &[u8] = b"dtk-store 2\n";
/// The format marker of store format 3.
const V3: &[u8] = b"dtk-store 3\n";

/// Bring a store written by an earlier release to the current layout ([`crate::store::FORMAT`]),
/// one commit per format step; a store already current costs one lookup. A store of a
/// newer format than this program knows is refused rather than misread. Returns the
/// sources an upgraded store marked as made by dtk (`owned`), which format 3 keeps on the
/// machine instead.
///
/// - Format 1 kept the versions of a source, the runs of a node, the successful runs of a
///   node and the consumers of a source in flat directories, which a commit rewrites
///   whole; format 2 fans them out by the first two hex digits.
/// - Format 2 still kept one entry per source or node at the top of `sources/`,
///   `versions/`, `nodes/`, `node-runs/`, `done/` and `consumers/` (so a run rewrote trees
///   as large as the project), a source's state in its declaration, a sequence number in
///   each version record, and a `done/` index; format 3 fans every growing directory out
///   by one hex digit per level, splits `state/` from `sources/`, records new versions
///   without time or sequence (`seen/` holds the time), and finds successful runs by
///   their IDs (see `docs/format.md`). Records keep their bytes, so every digest still
///   verifies.
pub(crate) fn upgrade_store(store: &Store) -> Result<Vec<(Name, String)>> {
    let current = store.snapshot()?.read("format")?;
    match current.as_deref() {
        Some(f) if f == crate::store::FORMAT.as_bytes() => return Ok(Vec::new()),
        Some(V1) => upgrade_v1(store)?,
        Some(V2) => {}
        Some(V3) => {
            upgrade_v3(store)?;
            return Ok(Vec::new());
        }
        other => {
            let found = other.map_or("nothing".to_owned(), |f| {
                format!("{:?}", String::from_utf8_lossy(f).trim())
            });
            return Err(Error::corrupt(format!(
                "the metadata store in {} has format {found}; this dkt reads {:?} to {:?}: \
                 use a newer dkt",
                store.git_dir().display(),
                "dtk-store 1",
                crate::store::FORMAT.trim()
            )));
        }
    }
    upgrade_v2(store)
}

/// Format 3 to 4 (see [`upgrade_store`]): only the marker changes. Records keep their
/// bytes and their digests (bare hex, the stored-order scheme); records written from
/// now on are sealed in the canonical scheme (`blake3-jcs:`) with their origin (version
/// records) and their log's digest (run records), which a dkt reading format 3 would
/// report as mismatches: hence a new format, which such a dkt refuses instead.
fn upgrade_v3(store: &Store) -> Result<()> {
    store.transact(
        "upgrade: store format 4 (canonical digests, sealed origins and logs)",
        |tx| {
            if tx.read("format")?.as_deref() == Some(V3) {
                tx.put("format", crate::store::FORMAT.as_bytes())?;
            }
            Ok(())
        },
    )?;
    Ok(())
}

/// Format 1 to 2 (see [`upgrade_store`]).
fn upgrade_v1(store: &Store) -> Result<()> {
    store.transact("upgrade: store format 2 (fanned-out indexes)", |tx| {
        if tx.read("format")?.as_deref() != Some(V1) {
            return Ok(()); // another process upgraded it meanwhile
        }
        let base = tx.base();
        // (from, to) for every record that moves.
        let mut moves: Vec<(String, String, crate::store::Oid)> = Vec::new();
        let files = |dir: &str| -> Result<Vec<crate::store::DirEntry>> {
            Ok(base.list(dir)?.into_iter().filter(|e| !e.is_dir).collect())
        };
        let dirs = |dir: &str| -> Result<Vec<String>> {
            Ok(base
                .list(dir)?
                .into_iter()
                .filter(|e| e.is_dir)
                .map(|e| e.name)
                .collect())
        };
        let mut seqs: Vec<(String, u64)> = Vec::new();
        for name in dirs("versions")? {
            let dir = format!("versions/{name}");
            let mut next = 0;
            for e in files(&dir)? {
                // <algo>-<hex>.json
                let Some((_, hex)) = e.name.split_once('-') else {
                    continue;
                };
                #[derive(serde::Deserialize)]
                struct Seq {
                    seq: u64,
                }
                if let Some(r) = base.read_json::<Seq>(&format!("{dir}/{}", e.name))? {
                    next = next.max(r.seq + 1);
                }
                moves.push((
                    format!("{dir}/{}", e.name),
                    format!("{dir}/{}/{}", &hex[..2.min(hex.len())], e.name),
                    e.id,
                ));
            }
            seqs.push((format!("{dir}/seq"), next));
        }
        for top in ["node-runs", "done"] {
            for node in dirs(top)? {
                let dir = format!("{top}/{node}");
                for e in files(&dir)? {
                    moves.push((
                        format!("{dir}/{}", e.name),
                        format!("{dir}/{}/{}", &e.name[..2.min(e.name.len())], e.name),
                        e.id,
                    ));
                }
            }
        }
        for source in dirs("consumers")? {
            for version in dirs(&format!("consumers/{source}"))? {
                let Some((_, hex)) = version.split_once('-') else {
                    continue;
                };
                let from = format!("consumers/{source}/{version}");
                let to = format!("consumers/{source}/{}/{version}", &hex[..2.min(hex.len())]);
                for e in files(&from)? {
                    moves.push((
                        format!("{from}/{}", e.name),
                        format!("{to}/{}", e.name),
                        e.id,
                    ));
                }
            }
        }
        for (from, to, id) in moves {
            tx.remove(&from);
            tx.put_id(&to, id);
        }
        for (path, next) in seqs {
            tx.put(&path, format!("{next}\n").as_bytes())?;
        }
        tx.put("format", V2)?;
        Ok(())
    })?;
    Ok(())
}

/// Where a path of format 2 goes in format 3: `Some(Some(new))` moves it, `Some(None)`
/// drops it (an index format 3 does not keep), `None` keeps it.
fn v3_path(path: &str) -> Option<Option<String>> {
    let parts: Vec<&str> = path.split('/').collect();
    let hex2 = |h: &str| format!("{}/{}", &h[..1], &h[1..2]);
    let file_hex = |f: &str| -> String {
        // `<algo>-<hex>.json`, `<hex>.json`, `<hex>.log`, `<hex>`
        let stem = f.split('.').next().unwrap_or(f);
        stem.rsplit('-').next().unwrap_or(stem).to_owned()
    };
    let ok_hex = |h: &str| h.len() >= 4 && h.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        ["done", ..] | ["queue", ..] | ["claimed", ..] => Some(None),
        ["versions", _, "seq"] => Some(None),
        ["versions", name, _, file] if ok_hex(&file_hex(file)) => Some(Some(format!(
            "versions/{}/{name}/{}/{file}",
            paths::fan(name),
            hex2(&file_hex(file))
        ))),
        ["nodes", file] if ok_hex(&file_hex(file)) => {
            Some(Some(format!("nodes/{}/{file}", hex2(&file_hex(file)))))
        }
        ["retired", file] if ok_hex(&file_hex(file)) => {
            Some(Some(format!("retired/{}/{file}", hex2(&file_hex(file)))))
        }
        ["scripts", file] if ok_hex(file) => Some(Some(format!("scripts/{}/{file}", hex2(file)))),
        ["links", file] if ok_hex(&file_hex(file)) => {
            Some(Some(format!("links/{}/{file}", hex2(&file_hex(file)))))
        }
        ["runs", _, _, file] if ok_hex(&file_hex(file)) => {
            Some(Some(format!("{}/{file}", paths::run_dir(&file_hex(file)))))
        }
        ["node-runs", node, _, file] if ok_hex(node) && ok_hex(&file_hex(file)) => {
            Some(Some(format!(
                "node-runs/{}/{node}/{}/{file}",
                hex2(node),
                hex2(&file_hex(file))
            )))
        }
        ["consumers", source, _, version, file] => {
            let vhex = version.rsplit('-').next().unwrap_or(version);
            ok_hex(vhex).then(|| {
                Some(format!(
                    "consumers/{}/{source}/{}/{version}/{file}",
                    paths::fan(source),
                    hex2(vhex)
                ))
            })
        }
        _ => None,
    }
}

/// Format 2 to 3, and on to 4 (see [`upgrade_store`] and [`upgrade_v3`]), in one commit.
fn upgrade_v2(store: &Store) -> Result<Vec<(Name, String)>> {
    let mut pending: Vec<crate::RunRecord> = Vec::new();
    let (owned, _) = store.transact("upgrade: store format 4 (fanned out, state apart)", |tx| {
        if tx.read("format")?.as_deref() != Some(V2) {
            return Ok(Vec::new()); // another process upgraded it meanwhile
        }
        let mut owned = Vec::new();
        let files = tx.base().walk("")?;
        for (path, id) in files {
            if let Some(name) = path
                .strip_prefix("sources/")
                .and_then(|f| f.strip_suffix(".json"))
                .filter(|f| !f.contains('/'))
            {
                // A full spec of format 2: declaration and state apart.
                let spec: SourceSpec = tx
                    .base()
                    .read_json(&path)?
                    .ok_or_else(|| Error::corrupt(format!("{path} vanished")))?;
                if spec.name.as_str() != name {
                    return Err(Error::corrupt(format!(
                        "{path} holds source {:?}",
                        spec.name.as_str()
                    )));
                }
                if spec.owned {
                    owned.push((spec.name.clone(), spec.location.clone()));
                }
                tx.remove(&path);
                crate::records::put_source(tx, &spec)?;
                continue;
            }
            match v3_path(&path) {
                None => {}
                Some(None) => tx.remove(&path),
                Some(Some(new)) => {
                    tx.remove(&path);
                    tx.put_id(&new, id);
                }
            }
        }
        // The run queue leaves the history: pending runs go to the local queue (after the
        // commit), runs that were executing are recorded interrupted.
        pending.clear();
        for run in tx.base().read_dir_json::<crate::RunRecord>("queue")? {
            tx.remove(&paths::run(&run.id));
            tx.remove(&paths::node_run(&run.node, &run.id));
            pending.push(run);
        }
        for mut run in tx.base().read_dir_json::<crate::RunRecord>("claimed")? {
            run.status = crate::RunStatus::Interrupted;
            run.lease_until_ms = None;
            run.error = Some("its claim ended with the upgrade to store format 3".to_owned());
            run.seal()?;
            let id = tx.put_json(&paths::run(&run.id), &run)?;
            tx.put_id(&paths::node_run(&run.node, &run.id), id);
        }
        tx.put("format", crate::store::FORMAT.as_bytes())?;
        Ok(owned)
    })?;
    if let Some(dkt) = store.git_dir().parent() {
        let queue = crate::queue::LocalQueue::new(dkt.join("queue"));
        for run in &pending {
            crate::queue::RunQueue::enqueue(&queue, run)?;
        }
    }
    Ok(owned)
}
