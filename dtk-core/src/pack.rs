//! Writing a transaction's new objects as one git pack (version 2) with its index
//! (version 2), instead of one loose file per object.
//!
//! A run's records take about ten objects (blobs, the trees above them, the commit). As
//! loose objects that is ten file creations, which dominate the cost of a commit on
//! ordinary disks; as a pack it is two. Objects are stored whole (no deltas), compressed
//! with zlib at the fastest level, which is what git itself reads everywhere. Packs
//! accumulate one per commit and are merged in the background (see
//! [`Store`](crate::store::Store)).
//!
//! The files appear in git's order: the `.pack` first, then the `.idx` (a reader looks for
//! indices), each complete before it has its name (a file without one, named by
//! `link(2)`, or a temporary name renamed into place: see `crate::unnamed`), so a reader
//! never sees a partial file and a killed process leaves at most an unreferenced pack
//! behind.

use std::path::{Path, PathBuf};

use gix::objs::Kind;
use gix::zlib::stream::deflate::{Compress, FlushCompress};
use gix::zlib::{Compression, Status};
use gix::ObjectId;

use crate::unnamed::{self, Spares};
use crate::{Error, Result};

/// The pack type number of an object kind.
fn type_number(kind: Kind) -> u8 {
    match kind {
        Kind::Commit => 1,
        Kind::Tree => 2,
        Kind::Blob => 3,
        Kind::Tag => 4,
    }
}

/// Objects up to this size go into a pack as zlib streams of one stored (uncompressed)
/// block: deflate makes nothing smaller of them (a 28-byte directory comes out at 39 bytes
/// either way), and a compressed stream first resets the compressor, which clears its
/// 128 KiB hash table (most of a commit's objects are this small).
const STORE_UP_TO: usize = 128;

/// Directories up to this size are stored too: they are mostly object IDs, which do not
/// compress (a run's 448-byte directories of 16 entries came out at 412 bytes, 8% less,
/// for about 8 µs each), and the background repack compresses them with the rest.
const STORE_DIRS_UP_TO: usize = u16::MAX as usize;

thread_local! {
    /// The compressor of this thread, made when first needed and kept: making one maps
    /// and clears a few hundred KiB (its window and hash table), more than compressing a
    /// commit's objects takes.
    static COMPRESSOR: std::cell::RefCell<Option<Compress>> = const { std::cell::RefCell::new(None) };
}

/// Append the zlib stream of `data`, an object of `kind`, to `out`: compressed with this
/// thread's compressor, or stored when that would gain little (see [`STORE_UP_TO`],
/// [`STORE_DIRS_UP_TO`]).
fn deflate(kind: Kind, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let store_up_to = match kind {
        Kind::Tree => STORE_DIRS_UP_TO,
        _ => STORE_UP_TO,
    };
    if data.len() <= store_up_to {
        stored(data, out);
        return Ok(());
    }
    COMPRESSOR.with(|c| match c.try_borrow_mut() {
        Ok(mut c) => compress(
            c.get_or_insert_with(|| Compress::new(Compression::BEST_SPEED)),
            data,
            out,
        ),
        // (Only if compressing ever compressed again on the same thread.)
        Err(_) => compress(&mut Compress::new(Compression::BEST_SPEED), data, out),
    })
}

/// Append the zlib stream of `data`, compressed with `c`, to `out`.
fn compress(c: &mut Compress, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
    c.reset();
    let start = out.len();
    out.resize(start + data.len() + data.len() / 1000 + 64, 0);
    loop {
        let (done_in, done_out) = (c.total_in() as usize, c.total_out() as usize);
        if out.len() - start - done_out < 64 {
            out.resize(out.len() + data.len() / 2 + 64, 0);
        }
        let status = c
            .compress(
                &data[done_in..],
                &mut out[start + done_out..],
                FlushCompress::Finish,
            )
            .map_err(|e| Error::store("cannot compress an object", e))?;
        if status == Status::StreamEnd {
            out.truncate(start + c.total_out() as usize);
            return Ok(());
        }
    }
}

/// `data` (at most 65,535 bytes) as a zlib stream (RFC 1950) of one final stored block
/// (RFC 1951).
fn stored(data: &[u8], out: &mut Vec<u8>) {
    let len = u16::try_from(data.len()).expect("a stored block holds at most 65,535 bytes");
    // CMF 0x78 (deflate, 32 KiB window), FLG 0x01 (no dictionary, fastest; 0x7801 is a
    // multiple of 31); then BFINAL = 1, BTYPE = 00, LEN and its complement.
    out.extend_from_slice(&[0x78, 0x01, 0x01]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    // Adler-32, the sums reduced once per 5,552 bytes (the most that cannot overflow).
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
}

fn sha1(parts: &[&[u8]]) -> Result<ObjectId> {
    let mut h = gix::hash::hasher(gix::hash::Kind::Sha1);
    for p in parts {
        h.update(p);
    }
    h.try_finalize()
        .map_err(|e| Error::store("cannot hash a pack", e))
}

/// The bytes of a pack holding `objects` and of its index, and the pack's checksum
/// (which names both files).
pub(crate) fn encode<'a>(
    objects: impl ExactSizeIterator<Item = (ObjectId, Kind, &'a [u8])>,
) -> Result<(Vec<u8>, Vec<u8>, ObjectId)> {
    let count = objects.len();
    let mut pack = Vec::with_capacity(64 + count * 256);
    pack.extend_from_slice(b"PACK");
    pack.extend_from_slice(&2u32.to_be_bytes());
    pack.extend_from_slice(&(count as u32).to_be_bytes());
    // (id, crc32 of the entry, offset of the entry)
    let mut entries: Vec<(ObjectId, u32, u64)> = Vec::with_capacity(count);
    for (id, kind, data) in objects {
        let offset = pack.len();
        let mut size = data.len() as u64;
        let mut byte = (type_number(kind) << 4) | (size & 0x0f) as u8;
        size >>= 4;
        while size > 0 {
            pack.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        pack.push(byte);
        deflate(kind, data, &mut pack)?;
        entries.push((id, crc32fast::hash(&pack[offset..]), offset as u64));
    }
    let checksum = sha1(&[&pack])?;
    pack.extend_from_slice(checksum.as_bytes());

    let idx = index(entries, checksum)?;
    Ok((pack, idx, checksum))
}

/// The index (version 2) of a pack whose entries are `entries` (id, CRC-32 of the entry,
/// offset) and whose checksum is `checksum`.
fn index(mut entries: Vec<(ObjectId, u32, u64)>, checksum: ObjectId) -> Result<Vec<u8>> {
    let count = entries.len();
    entries.sort_by_key(|e| e.0);
    let mut idx = Vec::with_capacity(8 + 1024 + count * 28 + 40);
    idx.extend_from_slice(&[0xff, b't', b'O', b'c']);
    idx.extend_from_slice(&2u32.to_be_bytes());
    let mut fanout = [0u32; 256];
    for (id, _, _) in &entries {
        fanout[id.as_bytes()[0] as usize] += 1;
    }
    let mut total = 0u32;
    for n in fanout {
        total += n;
        idx.extend_from_slice(&total.to_be_bytes());
    }
    for (id, _, _) in &entries {
        idx.extend_from_slice(id.as_bytes());
    }
    for (_, crc, _) in &entries {
        idx.extend_from_slice(&crc.to_be_bytes());
    }
    let mut large = Vec::new();
    for (_, _, offset) in &entries {
        if *offset < 0x8000_0000 {
            idx.extend_from_slice(&(*offset as u32).to_be_bytes());
        } else {
            idx.extend_from_slice(&(0x8000_0000 | large.len() as u32).to_be_bytes());
            large.push(*offset);
        }
    }
    for offset in large {
        idx.extend_from_slice(&offset.to_be_bytes());
    }
    idx.extend_from_slice(checksum.as_bytes());
    let idx_sum = sha1(&[&idx])?;
    idx.extend_from_slice(idx_sum.as_bytes());
    Ok(idx)
}

/// Write `objects` as a pack and its index into `pack_dir` (`objects/pack`), into files
/// of `spares` when it has some; returns the path of the index. An empty set writes
/// nothing.
pub(crate) fn write<'a>(
    pack_dir: &Path,
    objects: impl ExactSizeIterator<Item = (ObjectId, Kind, &'a [u8])>,
    spares: &Spares,
) -> Result<Option<PathBuf>> {
    if objects.len() == 0 {
        return Ok(None);
    }
    let (pack, idx, checksum) = encode(objects)?;
    let name = format!("pack-{checksum}");
    let idx_path = pack_dir.join(format!("{name}.idx"));
    if idx_path.exists() {
        // The same objects in the same order: already there.
        return Ok(Some(idx_path));
    }
    put_pair(pack_dir, &pack_dir.join(name), &pack, &idx, spares)?;
    Ok(Some(idx_path))
}

/// A pack of the directory: its path without extension and (from the size of its index)
/// about how many objects it holds.
#[derive(Debug, Clone)]
struct Existing {
    stem: PathBuf,
    weight: u64,
}

/// What [`maintain`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Maintained {
    /// How many packs were merged into one.
    pub(crate) merged: usize,
    /// Packs with deltas holding some of the same objects were met: merging by byte copies
    /// cannot join them (each was left as it is), only a repack can.
    pub(crate) overlapping: bool,
}

/// Keep the number of packs in `pack_dir` low: when there are more than `limit`, merge the
/// smallest ones, choosing them as `git repack --geometric=2` does (what remains forms a
/// geometric progression, so each object is rewritten O(log n) times over the life of the
/// store), and always at least half of `limit`, so merges are rare.
///
/// Merging copies entries byte for byte, without decompressing anything: an entry of a
/// pack without deltas moves on its own (duplicates are dropped); a pack with deltas (as
/// `git gc` writes) is copied whole, so the relative offsets of its deltas stay valid. The
/// merged pack is in place before the old ones are deleted (index first), so every object
/// stays readable throughout; a reader that looked between the two retries. One process
/// merges at a time (`dtk-merge.lock`, taken with `O_EXCL`; one older than a minute was
/// left by a killed process). Says how many packs were merged, and whether packs with deltas overlapped.
pub(crate) fn maintain(pack_dir: &Path, limit: usize) -> Result<Maintained> {
    let mut packs = Vec::new();
    for e in std::fs::read_dir(pack_dir).map_err(|e| Error::io(pack_dir, e))? {
        let Ok(e) = e else { continue };
        let name = e.file_name();
        if name.as_encoded_bytes().starts_with(b"tmp_pack_") {
            // Left by a process killed while writing (git's `gc` removes them after two
            // weeks; a writer is done within seconds).
            let old = older_than(
                e.metadata().and_then(|m| m.modified()).ok(),
                std::time::Duration::from_secs(3600),
            );
            if old {
                let _ = std::fs::remove_file(e.path());
            }
            continue;
        }
        if let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".pack")) {
            // A pack without its index was left by a process killed between the two
            // renames: no ref points into it (objects are indexed before a ref moves).
            let old = older_than(
                e.metadata().and_then(|m| m.modified()).ok(),
                std::time::Duration::from_secs(3600),
            );
            if old && !pack_dir.join(format!("{stem}.idx")).exists() {
                let _ = std::fs::remove_file(e.path());
            }
            continue;
        }
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".idx")) else {
            continue;
        };
        let stem = pack_dir.join(stem);
        if stem.with_extension("keep").exists() {
            continue; // git's marker: never repack this one
        }
        let size = e.metadata().map(|m| m.len()).unwrap_or(0);
        packs.push(Existing {
            weight: size.saturating_sub(1072) / 28,
            stem,
        });
    }
    if packs.len() <= limit {
        return Ok(Maintained::default());
    }
    packs.sort_by_key(|p| p.weight);
    let take = geometric_split(&packs, 2).max(limit / 2);
    match MergeLock::take(pack_dir.join("dtk-merge.lock"))? {
        Taken::Held(_lock) => merge(pack_dir, &packs[..take]),
        Taken::Busy { repack: true } => merge_beside_repack(pack_dir, &packs, limit),
        Taken::Busy { repack: false } | Taken::Recovered => Ok(Maintained::default()),
    }
}

/// A merge lock file, taken with `O_EXCL` and naming its holder (`host:pid`, or
/// `host:pid repack` for a background `git repack`); removed when dropped.
struct MergeLock(PathBuf);

/// What became of an attempt to take a [`MergeLock`].
enum Taken {
    /// The lock is ours until this is dropped.
    Held(MergeLock),
    /// Its holder is gone (or it is older than its holder may rightly keep it: a minute, an
    /// hour for a repack): it was removed, and the next attempt takes it.
    Recovered,
    /// A live holder has it (`repack`: a background repack).
    Busy { repack: bool },
}

impl MergeLock {
    fn take(path: PathBuf) -> Result<Taken> {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                let _ = std::io::Write::write_all(&mut f, crate::engine::worker_id().as_bytes());
                Ok(Taken::Held(MergeLock(path)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let (holder, repack) = match holder.trim().strip_suffix(" repack") {
                    Some(h) => (h, true),
                    None => (holder.trim(), false),
                };
                let max_age = std::time::Duration::from_secs(if repack { 3600 } else { 60 });
                let taken = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                let dead = crate::engine::pid_alive(holder) == Some(false);
                if dead || older_than(taken, max_age) {
                    let _ = std::fs::remove_file(&path);
                    return Ok(Taken::Recovered);
                }
                Ok(Taken::Busy { repack })
            }
            Err(e) => Err(Error::io(&path, e)),
        }
    }
}

/// The merge lock of `pack_dir`, waited for (up to `patience`) while a merge or a
/// background repack holds it: whoever runs `git gc` holds it, so that no merge or repack
/// deletes a pack from under it (git then fails, "could not find pack").
pub(crate) fn hold_merge_lock(pack_dir: &Path, patience: std::time::Duration) -> Result<impl Drop> {
    let started = std::time::Instant::now();
    loop {
        match MergeLock::take(pack_dir.join("dtk-merge.lock"))? {
            Taken::Held(lock) => return Ok(lock),
            Taken::Recovered => continue,
            Taken::Busy { .. } if started.elapsed() < patience => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Taken::Busy { .. } => {
                return Err(Error::Conflict(format!(
                    "the packs of {} are being merged or repacked, still after {}s",
                    pack_dir.display(),
                    patience.as_secs()
                )))
            }
        }
    }
}

impl Drop for MergeLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether a file modified at `modified` is older than `age` (false when unknown).
fn older_than(modified: Option<std::time::SystemTime>, age: std::time::Duration) -> bool {
    modified
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|elapsed| elapsed > age)
}

/// The packs a background repack packs, one file name (`pack-<hash>.pack`) a line, written
/// by it before it starts and deleted when it ends (see `GitStore::maybe_delta_compress`).
pub(crate) const REPACKING: &str = "dtk-repack.packs";

/// While a background repack holds the merge lock, the packs that commits write meanwhile
/// would pile up, one per commit, for as long as it runs (minutes on a large store or a
/// busy machine), and every commit would list them all. The repack packs, then deletes,
/// exactly the packs named in [`REPACKING`]; the others are merged among themselves, as
/// usual, once there are more than half of `limit`. Merges of that kind take turns through
/// their own lock, `dtk-merge-new.lock`. Until the repack has written its list, nothing is
/// merged.
fn merge_beside_repack(pack_dir: &Path, packs: &[Existing], limit: usize) -> Result<Maintained> {
    let Ok(listed) = std::fs::read_to_string(pack_dir.join(REPACKING)) else {
        return Ok(Maintained::default());
    };
    let repacked: std::collections::HashSet<&str> = listed.lines().collect();
    let newer: Vec<Existing> = packs
        .iter()
        .filter(|p| {
            let name = p.stem.with_extension("pack");
            let name = name
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            !repacked.contains(name)
        })
        .cloned()
        .collect();
    if newer.len() <= limit / 2 {
        return Ok(Maintained::default());
    }
    match MergeLock::take(pack_dir.join("dtk-merge-new.lock"))? {
        Taken::Held(_lock) => merge(pack_dir, &newer),
        Taken::Busy { .. } | Taken::Recovered => Ok(Maintained::default()),
    }
}

/// How many of `packs` (sorted by weight, ascending) to roll into one, as git's
/// `split_pack_geometry` decides.
fn geometric_split(packs: &[Existing], factor: u64) -> usize {
    let n = packs.len();
    let mut i = n.saturating_sub(1);
    while i > 0 {
        if packs[i].weight < factor.saturating_mul(packs[i - 1].weight) {
            break;
        }
        i -= 1;
    }
    let mut split = if i > 0 { i + 1 } else { 0 };
    let mut total: u64 = packs[..split].iter().map(|p| p.weight).sum();
    while split < n && packs[split].weight < factor.saturating_mul(total) {
        total += packs[split].weight;
        split += 1;
    }
    split
}

/// The entries an index lists: (id, CRC-32, offset), or `None` when it is not an index
/// of version 2.
fn read_index(idx: &[u8]) -> Option<Vec<(ObjectId, u32, u64)>> {
    let be32 = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(idx.get(at..at + 4)?.try_into().ok()?))
    };
    if idx.get(..4)? != [0xff, b't', b'O', b'c'] || be32(4)? != 2 {
        return None;
    }
    let n = be32(8 + 255 * 4)? as usize;
    let ids = 1032;
    let crcs = ids + n * 20;
    let offsets = crcs + n * 4;
    let large = offsets + n * 4;
    (0..n)
        .map(|i| {
            let id = ObjectId::try_from(idx.get(ids + i * 20..ids + i * 20 + 20)?).ok()?;
            let crc = be32(crcs + i * 4)?;
            let off = be32(offsets + i * 4)?;
            let off = if off & 0x8000_0000 == 0 {
                off as u64
            } else {
                let at = large + (off & 0x7fff_ffff) as usize * 8;
                u64::from_be_bytes(idx.get(at..at + 8)?.try_into().ok()?)
            };
            Some((id, crc, off))
        })
        .collect()
}

/// Roll `packs` into one new pack, then delete them. A pack that cannot be read as
/// expected stops the merge before anything is written or deleted.
fn merge(pack_dir: &Path, packs: &[Existing]) -> Result<Maintained> {
    let mut skipped: Vec<std::path::PathBuf> = Vec::new();
    let mut body = Vec::new();
    let mut entries: Vec<(ObjectId, u32, u64)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut overlapping = false;
    for p in packs {
        let (Ok(idx), Ok(data)) = (
            std::fs::read(p.stem.with_extension("idx")),
            std::fs::read(p.stem.with_extension("pack")),
        ) else {
            return Ok(Maintained::default()); // merged or removed by someone else meanwhile
        };
        let Some(mut listed) = read_index(&idx) else {
            return Ok(Maintained::default());
        };
        if data.len() < 32
            || &data[..4] != b"PACK"
            || data[8..12] != (listed.len() as u32).to_be_bytes()
        {
            return Ok(Maintained::default());
        }
        let end = (data.len() - 20) as u64;
        listed.sort_by_key(|e| e.2);
        if listed.iter().any(|e| e.2 < 12 || e.2 >= end) {
            return Ok(Maintained::default());
        }
        // Never copy a damaged entry into a new pack with a valid checksum (and then delete
        // the original): every entry's CRC-32 must match its index, and the pack its
        // trailing checksum. A damaged pack is left as it is, and named.
        let damaged = listed.iter().enumerate().find_map(|(i, (id, crc, off))| {
            let next = listed.get(i + 1).map_or(end, |e| e.2);
            (crc32fast::hash(&data[*off as usize..next as usize]) != *crc)
                .then(|| format!("object {id} fails its CRC-32"))
        });
        let damaged = match damaged {
            Some(d) => Some(d),
            None => (sha1(&[&data[..end as usize]])?.as_bytes() != &data[end as usize..])
                .then(|| "the pack fails its checksum".to_owned()),
        };
        if let Some(why) = damaged {
            tracing::error!(
                pack = %p.stem.with_extension("pack").display(),
                "{why}: the pack is damaged; it is left out of merging (`git fsck` names what it holds)"
            );
            skipped.push(p.stem.clone());
            continue;
        }
        let has_deltas = listed
            .iter()
            .any(|e| matches!((data[e.2 as usize] >> 4) & 7, 6 | 7));
        if has_deltas {
            if listed.iter().any(|e| seen.contains(&e.0)) {
                // Copied whole, it would hold some objects twice (two `git repack`s
                // overlap, or a repack and a pack written while it ran): left as it is,
                // for a repack to join (see `Maintained::overlapping`).
                skipped.push(p.stem.clone());
                overlapping = true;
                continue;
            }
            let base = 12 + body.len() as u64;
            body.extend_from_slice(&data[12..end as usize]);
            for (id, crc, off) in listed {
                seen.insert(id);
                entries.push((id, crc, base + off - 12));
            }
        } else {
            for (i, (id, crc, off)) in listed.iter().enumerate() {
                let next = listed.get(i + 1).map_or(end, |e| e.2);
                if seen.insert(*id) {
                    entries.push((*id, *crc, 12 + body.len() as u64));
                    body.extend_from_slice(&data[*off as usize..next as usize]);
                }
            }
        }
    }
    if entries.is_empty() || packs.len() - skipped.len() < 2 {
        return Ok(Maintained {
            merged: 0,
            overlapping,
        });
    }
    let mut header = Vec::with_capacity(12);
    header.extend_from_slice(b"PACK");
    header.extend_from_slice(&2u32.to_be_bytes());
    header.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    let checksum = sha1(&[&header, &body])?;
    let idx = index(entries, checksum)?;
    let stem = pack_dir.join(format!("pack-{checksum}"));
    let mut pack = header;
    pack.extend_from_slice(&body);
    drop(body);
    pack.extend_from_slice(checksum.as_bytes());
    put_pair(
        pack_dir,
        &stem,
        &pack,
        &idx,
        &Spares::new(pack_dir.to_owned(), 0, PACK_MODE),
    )?;
    for p in packs {
        if p.stem == stem || skipped.contains(&p.stem) {
            continue;
        }
        // The index first: once it is gone, nobody looks for the pack.
        for ext in ["idx", "pack", "rev", "bitmap", "mtimes", "promisor"] {
            let _ = std::fs::remove_file(p.stem.with_extension(ext));
        }
    }
    Ok(Maintained {
        merged: packs.len() - skipped.len(),
        overlapping,
    })
}

/// The mode of pack files: read-only, as git makes them.
pub(crate) const PACK_MODE: u32 = 0o444;

/// A file of a pack being written: its bytes go in and are synced before it has its
/// name, as git does with core.fsync, so a power loss never leaves a name (or a ref
/// pointing into the pack) without the bytes, and a reader never sees a partial file.
enum Staged {
    /// Without a name until it has its bytes (`O_TMPFILE`: made ahead, or now).
    Unnamed(std::fs::File),
    /// Under a temporary name, renamed into place (filesystems without unnamed files).
    Named(tempfile::NamedTempFile),
}

impl Staged {
    /// A new file in `dir` (one of `spares`, if it has some).
    fn new(dir: &Path, spares: &Spares) -> Result<Staged> {
        let file = match spares.take() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                spares.take()
            }
            taken => taken,
        };
        Ok(match file {
            Ok(f) => Staged::Unnamed(f),
            Err(_) => Staged::Named(
                tempfile::Builder::new()
                    .prefix("tmp_pack_")
                    .tempfile_in(dir)
                    .map_err(|e| Error::io(dir, e))?,
            ),
        })
    }

    /// With `bytes` written and synced (`dir` names it in errors).
    fn synced(mut self, dir: &Path, bytes: &[u8]) -> Result<Staged> {
        let file = self.file();
        std::io::Write::write_all(&mut &*file, bytes)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(dir, e))?;
        Ok(self)
    }

    fn file(&mut self) -> &std::fs::File {
        match self {
            Staged::Unnamed(f) => f,
            Staged::Named(t) => t.as_file(),
        }
    }

    /// Give it its name.
    fn name(self, path: &Path) -> Result<()> {
        match self {
            // (A pack's name is its checksum: an existing one has the same content.)
            Staged::Unnamed(f) => match unnamed::name(&f, path) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                named => named,
            },
            Staged::Named(t) => t.persist(path).map(drop).map_err(|e| e.error),
        }
        .map_err(|e| Error::io(path, e))
    }
}

/// Write a pack and its index as `stem.pack` and `stem.idx` in `dir`, durably: each goes
/// into a file without a name (one of `spares`, when there are some) or with a temporary
/// one, whose data is synced (the two at once, the index on a thread kept for such work:
/// the disk takes one flush for both), then the pack gets its name, then the index (a
/// reader looks for indices), then the directory is synced.
fn put_pair(dir: &Path, stem: &Path, pack: &[u8], idx: &[u8], spares: &Spares) -> Result<()> {
    let unnamed = unnamed::works();
    match write_pair(dir, stem, pack, idx, spares) {
        // Unnamed files turned out not to work here: the usual way.
        Err(_) if unnamed && !unnamed::works() => write_pair(
            dir,
            stem,
            pack,
            idx,
            &Spares::new(dir.to_owned(), 0, PACK_MODE),
        ),
        done => done,
    }
}

fn write_pair(dir: &Path, stem: &Path, pack: &[u8], idx: &[u8], spares: &Spares) -> Result<()> {
    let idx_file = {
        let (file, dir, idx) = (Staged::new(dir, spares)?, dir.to_owned(), idx.to_vec());
        unnamed::beside(move || file.synced(&dir, &idx))
    };
    let pack_file = Staged::new(dir, spares).and_then(|f| f.synced(dir, pack));
    let idx_file = idx_file
        .join()
        .unwrap_or_else(|| Err(Error::corrupt("writing a pack index panicked")));
    let (pack_file, idx_file) = (pack_file?, idx_file?);
    pack_file.name(&stem.with_extension("pack"))?;
    idx_file.name(&stem.with_extension("idx"))?;
    sync_dir(dir)
}

/// Make the renames in `dir` durable: `fdatasync` of the directory, whose entries are
/// its data (its times, which `fsync` would also write, need not be durable).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_data())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// git itself verifies and reads what we write.
    #[test]
    fn git_reads_the_pack() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| git_in(dir.path(), args);
        git(&["init", "--bare", "-q"]);
        let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let hello = b"hello\n".to_vec();
        let hello_id = gix::objs::compute_hash(gix::hash::Kind::Sha1, Kind::Blob, &hello).unwrap();
        // A directory of `n` entries, all naming `hello`.
        let dir_of = |n: u32| -> Vec<u8> {
            let mut names: Vec<String> = (0..n).map(|i| format!("f{i:05}")).collect();
            names.sort();
            names
                .iter()
                .flat_map(|name| {
                    let mut e = format!("100644 {name}\0").into_bytes();
                    e.extend_from_slice(hello_id.as_bytes());
                    e
                })
                .collect()
        };
        // Small ones are stored, up to the boundary, and directories up to what one stored
        // block holds; the rest compressed.
        let blobs: Vec<(ObjectId, Kind, Vec<u8>)> = [
            (Kind::Blob, hello),
            (Kind::Blob, Vec::new()),
            (Kind::Blob, vec![7u8; STORE_UP_TO]),
            (Kind::Blob, vec![7u8; STORE_UP_TO + 1]),
            (Kind::Blob, (0..=255u8).cycle().take(STORE_UP_TO).collect()),
            (Kind::Blob, big),
            (Kind::Tree, dir_of(16)),
            (Kind::Tree, dir_of(1927)),
            (Kind::Tree, dir_of(1928)),
        ]
        .into_iter()
        .map(|(kind, data)| {
            let id = gix::objs::compute_hash(gix::hash::Kind::Sha1, kind, &data).unwrap();
            (id, kind, data)
        })
        .collect();
        assert!(blobs[7].2.len() <= STORE_DIRS_UP_TO && blobs[8].2.len() > STORE_DIRS_UP_TO);
        // Into files made ahead: nothing shows in the directory until the pack is named.
        let pack_dir = dir.path().join("objects/pack");
        let spares = Spares::new(pack_dir.clone(), 2, PACK_MODE);
        spares.fill();
        assert_eq!(spares.ready(), 2);
        assert_eq!(std::fs::read_dir(&pack_dir).unwrap().count(), 0);
        let idx = write(
            &pack_dir,
            blobs.iter().map(|(id, k, d)| (*id, *k, d.as_slice())),
            &spares,
        )
        .unwrap()
        .unwrap();
        assert_eq!(spares.ready(), 0);
        let mut names: Vec<_> = std::fs::read_dir(&pack_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let stem = idx.file_stem().unwrap().to_str().unwrap();
        assert_eq!(names, [format!("{stem}.idx"), format!("{stem}.pack")]);
        for name in &names {
            let mode = std::fs::metadata(pack_dir.join(name))
                .unwrap()
                .permissions();
            assert!(mode.readonly(), "{name}: {mode:?}");
        }
        git(&["verify-pack", idx.to_str().unwrap()]);
        for (id, kind, data) in &blobs {
            let out = std::process::Command::new("git")
                .arg("--git-dir")
                .arg(dir.path())
                .args(["cat-file", &kind.to_string(), &id.to_string()])
                .output()
                .unwrap();
            assert_eq!(&out.stdout, data);
        }
        assert!(git(&["count-objects", "-v"]).contains("\nin-pack: 9\n"));
        git(&["fsck", "--strict"]);
    }

    /// Small packs of ours and a pack `git gc` wrote (with deltas) are merged into one that
    /// git verifies; every object is still there; the merged packs are gone.
    #[test]
    fn merging_keeps_every_object() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| git_in(dir.path(), args);
        git(&["init", "--bare", "-q"]);
        // A pack with deltas: similar large blobs, packed by git.
        let texts: Vec<String> = (0..5)
            .map(|i| {
                let mut text: String = (0..2000).map(|j| format!("line {j}\n")).collect();
                text.push_str(&format!("version {i}\n"));
                text
            })
            .collect();
        let mut ids = git_delta_pack(dir.path(), &texts);
        assert!(git(&["verify-pack", "-v", &glob_idx(dir.path())[0]]).contains("chain length"));
        // Ten small packs of ours, one object repeated in two of them.
        let pack_dir = dir.path().join("objects/pack");
        for i in 0..10 {
            let data = [format!("record {i}\n"), "shared\n".to_owned()];
            let objects: Vec<(ObjectId, Kind, &[u8])> = data
                .iter()
                .map(|d| {
                    let id =
                        gix::objs::compute_hash(gix::hash::Kind::Sha1, Kind::Blob, d.as_bytes())
                            .unwrap();
                    (id, Kind::Blob, d.as_bytes())
                })
                .collect();
            ids.push(objects[0].0.to_string());
            write(
                &pack_dir,
                objects.into_iter(),
                &Spares::new(pack_dir.clone(), 0, PACK_MODE),
            )
            .unwrap();
        }
        assert_eq!(glob_idx(dir.path()).len(), 11); // ours and git's
        assert_eq!(
            maintain(&pack_dir, 20).unwrap().merged,
            0,
            "under the limit: nothing to do"
        );
        // A temporary file of a killed writer: removed once it is old, kept while fresh.
        let fresh = pack_dir.join("tmp_pack_fresh");
        let stale = pack_dir.join("tmp_pack_stale");
        std::fs::write(&fresh, b"partial").unwrap();
        std::fs::write(&stale, b"partial").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
            .unwrap();
        let merged = maintain(&pack_dir, 4).unwrap().merged;
        assert!(merged >= 2, "{merged}");
        assert!(fresh.exists() && !stale.exists());
        let left = glob_idx(dir.path());
        assert_eq!(left.len(), 11 - merged + 1);
        for idx in &left {
            git(&["verify-pack", idx]);
        }
        for id in &ids {
            git(&["cat-file", "-e", id]);
        }
        // Everything into one, the pack with deltas included.
        while glob_idx(dir.path()).len() > 1 {
            assert!(maintain(&pack_dir, 0).unwrap().merged >= 2);
        }
        git(&["verify-pack", &glob_idx(dir.path())[0]]);
        for id in &ids {
            git(&["cat-file", "-e", id]);
        }
        assert!(!pack_dir.join("dtk-merge.lock").exists());
    }

    /// Run git on the repository `git_dir`; its standard output.
    /// Write `texts` as blobs and pack them with `git pack-objects` (similar texts become
    /// deltas); their IDs.
    fn git_delta_pack(git_dir: &Path, texts: &[String]) -> Vec<String> {
        let mut ids = Vec::new();
        for text in texts {
            let mut child = std::process::Command::new("git")
                .arg("--git-dir")
                .arg(git_dir)
                .args(["hash-object", "-w", "--stdin"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            ids.push(String::from_utf8(out.stdout).unwrap().trim().to_owned());
        }
        let mut child = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(git_dir)
            .args(["pack-objects", "-q"])
            .arg(git_dir.join("objects/pack/pack"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), ids.join("\n").as_bytes())
            .unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        ids
    }

    /// Two packs with deltas that share objects (two `git repack`s that overlap) cannot be
    /// joined by byte copies: one is left as it is and the merge says so (the store then
    /// asks git for a repack), while every other pack is merged. Before, the whole merge
    /// gave up, so packs piled up by the hundred and every commit re-read the big ones.
    #[test]
    fn overlapping_delta_packs_do_not_stop_merging() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| git_in(dir.path(), args);
        git(&["init", "--bare", "-q"]);
        let text = |i: usize| -> String {
            let mut t: String = (0..2000).map(|j| format!("line {j}\n")).collect();
            t.push_str(&format!("version {i}\n"));
            t
        };
        let mut ids = git_delta_pack(dir.path(), &(0..5).map(text).collect::<Vec<_>>());
        ids.extend(git_delta_pack(
            dir.path(),
            &(3..8).map(text).collect::<Vec<_>>(),
        ));
        for idx in glob_idx(dir.path()) {
            assert!(git(&["verify-pack", "-v", &idx]).contains("chain length"));
        }
        let pack_dir = dir.path().join("objects/pack");
        for i in 0..30 {
            let data = format!("record {i}\n");
            let id = gix::objs::compute_hash(gix::hash::Kind::Sha1, Kind::Blob, data.as_bytes())
                .unwrap();
            ids.push(id.to_string());
            write(
                &pack_dir,
                std::iter::once((id, Kind::Blob, data.as_bytes())),
                &Spares::new(pack_dir.clone(), 0, PACK_MODE),
            )
            .unwrap();
        }
        assert_eq!(glob_idx(dir.path()).len(), 32);
        let done = maintain(&pack_dir, 24).unwrap();
        assert!(done.overlapping, "{done:?}");
        assert_eq!(done.merged, 31, "{done:?}");
        let left = glob_idx(dir.path());
        assert_eq!(left.len(), 2, "{left:?}");
        for idx in &left {
            git(&["verify-pack", idx]);
        }
        for id in &ids {
            git(&["cat-file", "-e", id]);
        }
        assert!(!pack_dir.join("dtk-merge.lock").exists());
    }

    /// While a background repack holds the merge lock, the packs written after it began
    /// are merged among themselves; the packs it is repacking and its lock are left alone.
    #[test]
    fn packs_written_during_a_repack_are_merged_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        git_in(dir.path(), &["init", "--bare", "-q"]);
        let pack_dir = dir.path().join("objects/pack");
        let mut ids = Vec::new();
        let mut write_one = |i: u32| {
            let data = format!("object {i}\n").into_bytes();
            let id = gix::objs::compute_hash(gix::hash::Kind::Sha1, Kind::Blob, &data).unwrap();
            ids.push(id);
            write(
                &pack_dir,
                [(id, Kind::Blob, data.as_slice())].into_iter(),
                &Spares::new(pack_dir.clone(), 0, PACK_MODE),
            )
            .unwrap()
            .unwrap()
        };
        // Ten packs from before the repack began, which it lists.
        let before: Vec<PathBuf> = (0..10).map(&mut write_one).collect();
        let lock = pack_dir.join("dtk-merge.lock");
        let holder = format!("{} repack", crate::engine::worker_id());
        std::fs::write(&lock, holder.as_bytes()).unwrap();
        // Twenty packs written since.
        for i in 10..30 {
            write_one(i);
        }
        assert_eq!(glob_idx(dir.path()).len(), 30);
        // Until the repack has listed its packs, nothing is merged.
        assert_eq!(maintain(&pack_dir, 24).unwrap().merged, 0);
        let listed: String = before
            .iter()
            .map(|idx| {
                format!(
                    "{}\n",
                    idx.with_extension("pack")
                        .file_name()
                        .unwrap()
                        .to_str()
                        .unwrap()
                )
            })
            .collect();
        std::fs::write(pack_dir.join(REPACKING), listed).unwrap();
        assert_eq!(maintain(&pack_dir, 24).unwrap().merged, 20);
        let left = glob_idx(dir.path());
        assert_eq!(
            left.len(),
            11,
            "the ten old packs and the merged one: {left:?}"
        );
        assert!(
            before.iter().all(|p| p.exists()),
            "the repack's packs are untouched"
        );
        assert_eq!(std::fs::read_to_string(&lock).unwrap(), holder);
        assert!(!pack_dir.join("dtk-merge-new.lock").exists());
        for id in &ids {
            git_in(dir.path(), &["cat-file", "-e", &id.to_string()]);
        }
        // With few new packs, nothing is merged.
        assert_eq!(maintain(&pack_dir, 24).unwrap().merged, 0);
    }

    #[test]
    fn git_gc_waits_for_the_merge_lock_and_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let held = hold_merge_lock(dir.path(), std::time::Duration::ZERO).unwrap();
        let lock = dir.path().join("dtk-merge.lock");
        assert!(lock.exists());
        // While it is held (by a live process: this one), another holder is refused once
        // its patience runs out.
        match hold_merge_lock(dir.path(), std::time::Duration::ZERO) {
            Err(Error::Conflict(why)) => assert!(why.contains("merged or repacked"), "{why}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("taken twice"),
        }
        // A waiting holder gets it once it is released.
        let started = std::time::Instant::now();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        let again = hold_merge_lock(dir.path(), std::time::Duration::from_secs(10)).unwrap();
        assert!(started.elapsed() >= std::time::Duration::from_millis(300));
        release.join().unwrap();
        assert!(lock.exists());
        drop(again);
        assert!(!lock.exists());
    }

    /// `git --git-dir GIT_DIR ARGS...`, which must succeed; its output.
    pub(crate) fn git_in(git_dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(git_dir)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn glob_idx(git_dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(git_dir.join("objects/pack"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "idx"))
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}
