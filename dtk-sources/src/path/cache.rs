//! The stat cache of the `path` kind: per file of a source's tree, what `lstat` said and
//! the md5 of the content, so an unchanged tree is re-digested without reading any file.
//!
//! One file per source root, under `<cache_dir>/path/<md5 of the root's bytes>`, outside
//! the metadata store. The format is binary, little-endian, loaded in one read:
//!
//! ```text
//! magic       8 bytes  "DTKPATHC"
//! format      u32      1
//! threshold   i64      racy threshold, ns since the Unix epoch
//! root        u32 length, then the absolute root's bytes
//! count       u64
//! entries     count times, sorted by path, strictly ascending:
//!             u32 length, path bytes (relative, '/'-separated),
//!             size u64, mtime_ns i64, ctime_ns i64, ino u64, dev u64, mode u32, md5 [16]
//! checksum    u32      CRC-32 of every byte before it
//! ```
//!
//! A file that does not parse exactly, whose checksum or root does not match, or whose
//! entries are out of order is ignored (and rebuilt by the next digest), never trusted.
//!
//! The racy rule (git's "racy git"): a digest records, as the threshold, the start of the
//! second in which it began, by the system clock (the clock local file systems stamp files
//! with; no file is created to read it). An entry is trusted only if its stat matches
//! *and* both its mtime and ctime are strictly older than the threshold; otherwise the
//! file is hashed again. The threshold is never later than the cache file's own write
//! time, so this implies git's rule. A digest that hashed nothing and found the same files
//! leaves the cache file as it is: a no-op poll writes nothing.

use std::fs;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use dtk_api::{IoResultExt, Result};
use md5::{Digest as _, Md5};

const MAGIC: &[u8; 8] = b"DTKPATHC";
const FORMAT: u32 = 1;
/// Bytes of an entry besides its path: length, size, mtime, ctime, ino, dev, mode, md5.
const ENTRY_FIXED: usize = 4 + 8 * 5 + 4 + 16;
const NS_PER_SEC: i64 = 1_000_000_000;
/// The buffer a cache file is first read into (it grows for a larger file).
const READ_HINT: usize = 8 << 10;

/// What `lstat` says about a regular file, as far as the cache compares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub(crate) size: u64,
    pub(crate) mtime_ns: i64,
    pub(crate) ctime_ns: i64,
    pub(crate) ino: u64,
    pub(crate) dev: u64,
    pub(crate) mode: u32,
}

impl Stat {
    pub(crate) fn of(md: &fs::Metadata) -> Self {
        Stat {
            size: md.size(),
            mtime_ns: md
                .mtime()
                .saturating_mul(NS_PER_SEC)
                .saturating_add(md.mtime_nsec()),
            ctime_ns: md
                .ctime()
                .saturating_mul(NS_PER_SEC)
                .saturating_add(md.ctime_nsec()),
            ino: md.ino(),
            dev: md.dev(),
            mode: md.mode(),
        }
    }
}

/// The cache file of the source rooted at `root` (absolute), under `cache_dir`.
pub(crate) fn file_for(cache_dir: &Path, root: &[u8]) -> PathBuf {
    let key = Md5::digest(root);
    cache_dir.join(dtk_api::id::hex(&key))
}

#[derive(Debug, Clone, Copy)]
struct RawEntry {
    off: usize,
    len: usize,
    stat: Stat,
    md5: [u8; 16],
}

/// A cache file as loaded: trusted only through [`Loaded::trusted`].
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    buf: Vec<u8>,
    threshold_ns: i64,
    entries: Vec<RawEntry>,
}

impl Loaded {
    /// Load the cache at `path` for `root`; anything wrong gives an empty cache.
    pub(crate) fn load(path: &Path, root: &[u8]) -> Self {
        // (No `fs::read`: the size it asks for first costs a system call per source, and
        // most caches are small.)
        let mut buf = Vec::with_capacity(READ_HINT);
        let read = fs::File::open(path).and_then(|mut f| f.read_to_end(&mut buf));
        let buf = match read {
            Ok(_) => buf,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(cache = %path.display(), error = %e, "cannot read the stat cache; rebuilding it");
                }
                return Self::default();
            }
        };
        match parse(buf, root) {
            Ok(c) => c,
            Err(why) => {
                tracing::warn!(cache = %path.display(), why, "ignoring a corrupt stat cache; rebuilding it");
                Self::default()
            }
        }
    }

    /// The number of entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The path of entry `i`.
    pub(crate) fn path(&self, i: usize) -> &[u8] {
        let e = &self.entries[i];
        &self.buf[e.off..e.off + e.len]
    }

    /// The md5 of entry `i`, if its stat equals `stat` and it is not racy.
    pub(crate) fn trusted(&self, i: usize, stat: &Stat) -> Option<[u8; 16]> {
        let e = &self.entries[i];
        (e.stat == *stat && stat.mtime_ns < self.threshold_ns && stat.ctime_ns < self.threshold_ns)
            .then_some(e.md5)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let s = self.buf.get(self.pos..end).ok_or("truncated")?;
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        self.array().map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Result<i64, &'static str> {
        self.array().map(i64::from_le_bytes)
    }
}

fn parse(buf: Vec<u8>, root: &[u8]) -> Result<Loaded, &'static str> {
    let body_len = buf.len().checked_sub(4).ok_or("truncated")?;
    let (body, sum) = buf.split_at(body_len);
    let mut sum_bytes = [0u8; 4];
    sum_bytes.copy_from_slice(sum);
    if crc32fast::hash(body) != u32::from_le_bytes(sum_bytes) {
        return Err("checksum mismatch");
    }
    let mut r = Reader { buf: body, pos: 0 };
    if r.take(8)? != MAGIC {
        return Err("not a dtk stat cache");
    }
    if r.u32()? != FORMAT {
        return Err("unknown format");
    }
    let threshold_ns = r.i64()?;
    let root_len = r.u32()? as usize;
    if r.take(root_len)? != root {
        return Err("cache of another root");
    }
    let count = r.u64()?;
    let remaining = body.len() - r.pos;
    if count > (remaining / ENTRY_FIXED) as u64 {
        return Err("entry count larger than the file");
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut prev: Option<(usize, usize)> = None;
    for _ in 0..count {
        let len = r.u32()? as usize;
        let off = r.pos;
        r.take(len)?;
        if let Some((po, pl)) = prev {
            if body[po..po + pl] >= body[off..off + len] {
                return Err("entries out of order");
            }
        }
        prev = Some((off, len));
        let stat = Stat {
            size: r.u64()?,
            mtime_ns: r.i64()?,
            ctime_ns: r.i64()?,
            ino: r.u64()?,
            dev: r.u64()?,
            mode: r.u32()?,
        };
        let md5 = r.array()?;
        entries.push(RawEntry {
            off,
            len,
            stat,
            md5,
        });
    }
    if r.pos != body.len() {
        return Err("trailing bytes");
    }
    Ok(Loaded {
        buf,
        threshold_ns,
        entries,
    })
}

/// A cache file being written: created when a digest starts (its creation time gives the
/// racy threshold), filled and renamed into place when the digest ends.
#[derive(Debug)]
pub(crate) struct Pending {
    dest: PathBuf,
    threshold_ns: i64,
}

impl Pending {
    /// Start writing the cache file `dest`; call this before looking at any file.
    ///
    /// The racy-git threshold is the start of the current second by the system clock (the
    /// clock local file systems stamp files with); no file is created until
    /// [`commit`](Self::commit), so an unchanged tree costs no write at all.
    pub(crate) fn begin(dest: &Path) -> Result<Self> {
        let threshold_ns = floor_to_second(ns_since_epoch(SystemTime::now()));
        Ok(Pending {
            dest: dest.to_owned(),
            threshold_ns,
        })
    }

    /// Write `entries` (sorted by path, strictly ascending) for `root` and rename the file
    /// into place.
    pub(crate) fn commit<'a>(
        self,
        root: &[u8],
        count: usize,
        entries: impl Iterator<Item = (&'a [u8], &'a Stat, &'a [u8; 16])>,
    ) -> Result<()> {
        let Pending { dest, threshold_ns } = self;
        let dir = dest.parent().unwrap_or_else(|| Path::new("."));
        fs::create_dir_all(dir).at(dir)?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .at(dir)?;
        write_to(tmp.as_file(), threshold_ns, root, count, entries).at(tmp.path())?;
        tmp.persist(&dest)
            .map_err(|e| dtk_api::Error::io(&dest, e.error))?;
        Ok(())
    }
}

fn write_to<'a>(
    file: &fs::File,
    threshold_ns: i64,
    root: &[u8],
    count: usize,
    entries: impl Iterator<Item = (&'a [u8], &'a Stat, &'a [u8; 16])>,
) -> std::io::Result<()> {
    let mut w = ChecksumWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    w.put(MAGIC)?;
    w.put(&FORMAT.to_le_bytes())?;
    w.put(&threshold_ns.to_le_bytes())?;
    w.put(&len_u32(root.len())?.to_le_bytes())?;
    w.put(root)?;
    w.put(&(count as u64).to_le_bytes())?;
    let mut written = 0usize;
    for (path, s, md5) in entries {
        w.put(&len_u32(path.len())?.to_le_bytes())?;
        w.put(path)?;
        w.put(&s.size.to_le_bytes())?;
        w.put(&s.mtime_ns.to_le_bytes())?;
        w.put(&s.ctime_ns.to_le_bytes())?;
        w.put(&s.ino.to_le_bytes())?;
        w.put(&s.dev.to_le_bytes())?;
        w.put(&s.mode.to_le_bytes())?;
        w.put(md5)?;
        written += 1;
    }
    if written != count {
        return Err(std::io::Error::other("entry count mismatch"));
    }
    let sum = w.crc.clone().finalize();
    w.inner.write_all(&sum.to_le_bytes())?;
    w.inner.flush()
}

fn len_u32(n: usize) -> std::io::Result<u32> {
    u32::try_from(n).map_err(|_| std::io::Error::other("path too long for the stat cache"))
}

struct ChecksumWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> ChecksumWriter<W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.crc.update(b);
        self.inner.write_all(b)
    }
}

fn ns_since_epoch(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn floor_to_second(ns: i64) -> i64 {
    ns.div_euclid(NS_PER_SEC) * NS_PER_SEC
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(mtime_ns: i64, ctime_ns: i64) -> Stat {
        Stat {
            size: 3,
            mtime_ns,
            ctime_ns,
            ino: 42,
            dev: 7,
            mode: 0o100644,
        }
    }

    fn write(dest: &Path, root: &[u8], threshold_ns: i64, entries: &[(&[u8], Stat, [u8; 16])]) {
        let mut p = Pending::begin(dest).unwrap();
        p.threshold_ns = threshold_ns;
        p.commit(
            root,
            entries.len(),
            entries.iter().map(|(p, s, m)| (*p, s, m)),
        )
        .unwrap();
    }

    #[test]
    fn round_trip_and_racy_rule() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("c");
        let t = 1_000 * NS_PER_SEC;
        let old = stat(t - 5, t - 5);
        let racy_m = stat(t, t - 5);
        let racy_c = stat(t - 5, t);
        write(
            &dest,
            b"/root",
            t,
            &[
                (b"a", old, [1; 16]),
                (b"b", racy_m, [2; 16]),
                (b"c/d", racy_c, [3; 16]),
            ],
        );
        let c = Loaded::load(&dest, b"/root");
        assert_eq!(c.len(), 3);
        assert_eq!(c.path(2), b"c/d");
        assert_eq!(c.trusted(0, &old), Some([1; 16]));
        assert_eq!(c.trusted(0, &Stat { size: 4, ..old }), None);
        assert_eq!(c.trusted(0, &Stat { ino: 1, ..old }), None);
        assert_eq!(
            c.trusted(
                0,
                &Stat {
                    ctime_ns: t - 4,
                    ..old
                }
            ),
            None
        );
        // Not strictly older than the threshold: hashed again.
        assert_eq!(c.trusted(1, &racy_m), None);
        assert_eq!(c.trusted(2, &racy_c), None);
        // Another root's cache is not used.
        assert_eq!(Loaded::load(&dest, b"/other").len(), 0);
    }

    #[test]
    fn every_corruption_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("c");
        write(&dest, b"/r", i64::MAX, &[(b"a", stat(1, 1), [9; 16])]);
        let good = fs::read(&dest).unwrap();
        assert_eq!(Loaded::load(&dest, b"/r").len(), 1);
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(parse(bad, b"/r").is_err(), "flipped byte {i} accepted");
            assert!(
                parse(good[..i].to_vec(), b"/r").is_err(),
                "truncation at {i} accepted"
            );
        }
    }

    #[test]
    fn threshold_is_a_whole_second_not_after_now() {
        let dir = tempfile::tempdir().unwrap();
        let before = ns_since_epoch(SystemTime::now());
        let p = Pending::begin(&dir.path().join("sub/c")).unwrap();
        let after = ns_since_epoch(SystemTime::now());
        assert_eq!(p.threshold_ns % NS_PER_SEC, 0);
        assert!(p.threshold_ns <= after, "not after the digest began");
        assert!(
            p.threshold_ns > before - 2 * NS_PER_SEC,
            "about a second before at most"
        );
        assert_eq!(floor_to_second(-1), -NS_PER_SEC);
    }
}
