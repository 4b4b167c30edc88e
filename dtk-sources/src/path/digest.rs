//! The digest of a path source: walk the tree without following links, hash file contents
//! in parallel (or take them from the stat cache), and hash the canonical encoding.
//!
//! The encoding is specified in `docs/path-digest.md`; in short, for a directory:
//!
//! ```text
//! md5( "dtk-path-tree 1\n"
//!      then for every entry below the root, sorted byte-wise by relative path:
//!      TYPE " " RELPATH "\0" PAYLOAD "\0" )
//! ```
//!
//! where TYPE is `d` (directory, empty payload), `f` (regular file) or `x` (regular file
//! with the owner's execute bit; payload: the lower-case hex md5 of the content), `l`
//! (symbolic link; payload: its target's bytes, never followed) or `o` (anything else;
//! payload: `fifo`, `socket`, `char-device`, `block-device` or `unknown`). A single-file
//! source's version is the md5 of its content, as `md5sum` prints it.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use dtk_api::{Algo, Error, Result, Version};
use md5::{Digest as _, Md5};
use rayon::prelude::*;

/// Below this many entries (files to hash, children of a directory) work is done on the
/// calling thread: handing it to rayon's pool costs more than it saves.
const PARALLEL_MIN: usize = 16;

use super::cache::{self, Stat};

/// The first line of the encoding of a directory tree; the number is the encoding's
/// version, to be bumped if the encoding ever changes.
pub const TREE_HEADER: &[u8] = b"dtk-path-tree 1\n";

/// How much of the encoding is gathered before it is hashed.
const ENCODE_CHUNK: usize = 1 << 16;

/// The read buffer of one hashing thread.
const BUF_SIZE: usize = 1 << 20;

/// The result of [`digest`]: the version and what it took to compute it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TreeDigest {
    /// The version: `md5:` of the tree's encoding, or of a single file's content.
    pub version: Version,
    /// True when the root is a single file.
    pub single_file: bool,
    /// Regular files in the tree.
    pub files: u64,
    /// Directories below the root.
    pub dirs: u64,
    /// Symbolic links (recorded, never followed).
    pub symlinks: u64,
    /// Other entries (fifos, sockets, devices), recorded by type, never opened.
    pub others: u64,
    /// Files whose content was read (the others came from the stat cache).
    pub hashed_files: u64,
    /// Bytes read to hash them.
    pub hashed_bytes: u64,
    /// True when the stat cache was (re)written.
    pub cache_written: bool,
}

/// The stat cache file for the source rooted at `root` (absolute), under `cache_dir`
/// (`<project>/.dkt/cache/path`): the md5 of the root's bytes, in hex.
pub fn cache_file(cache_dir: &Path, root: &Path) -> PathBuf {
    cache::file_for(cache_dir, root.as_os_str().as_bytes())
}

/// Compute the version of the file or directory `root`, using and updating the stat cache
/// file `cache` when given.
///
/// Links below `root` are recorded, never followed; `root` itself is followed. A cache that
/// cannot be written (read-only, disk full) only costs speed: a warning is logged.
///
/// # Errors
/// [`Error::Io`] naming the file for anything that cannot be read, vanishes or changes type
/// during the walk; [`Error::Invalid`] when `root` is neither a file nor a directory.
pub fn digest(root: &Path, cache: Option<&Path>) -> Result<TreeDigest> {
    let root_bytes = root.as_os_str().as_bytes();
    // Begin the cache file before looking at any file: its time stamp is the racy threshold.
    let pending = cache.and_then(|c| match cache::Pending::begin(c) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(error = %e, "cannot write the stat cache; digesting without it");
            None
        }
    });
    // `root` itself is followed: if it is a link, read through its target (files are
    // opened with O_NOFOLLOW). The cache stays keyed by `root` as given. (One `lstat`
    // serves a root that is no link, the usual case.)
    let resolved;
    let (md, root) = match fs::symlink_metadata(root) {
        Ok(m) if m.file_type().is_symlink() => {
            let md = fs::metadata(root).map_err(|e| Error::io(root, e))?;
            resolved = fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
            (md, resolved.as_path())
        }
        Ok(m) => (m, root),
        Err(e) => return Err(Error::io(root, e)),
    };
    let single_file = md.is_file();
    if !single_file && !md.is_dir() {
        return Err(Error::invalid(
            "path",
            root.display().to_string(),
            "is neither a file nor a directory",
        ));
    }
    // Walk the tree and load the cache at the same time.
    let load = || match (cache, &pending) {
        (Some(c), Some(_)) => cache::Loaded::load(c, root_bytes),
        _ => cache::Loaded::default(),
    };
    let (entries, loaded) = if single_file {
        let file = Entry {
            path: Vec::new(),
            node: Node::File(Stat::of(&md)),
        };
        (vec![file], load())
    } else {
        // (In turn: handing work to rayon's threads from a blocking thread costs more than
        // reading one cache file.)
        let walked = walk_dir(root, &[])?;
        (walked, load())
    };
    debug_assert!(entries.windows(2).all(|w| w[0].path < w[1].path));

    // Take what the cache trusts; hash the rest in parallel.
    let mut md5s: Vec<Option<[u8; 16]>> = vec![None; entries.len()];
    let mut todo = Vec::new();
    let mut ci = 0;
    let mut counts = Counts::default();
    for (i, e) in entries.iter().enumerate() {
        match &e.node {
            Node::File(stat) => {
                counts.files += 1;
                while ci < loaded.len() && loaded.path(ci) < e.path.as_slice() {
                    ci += 1;
                }
                let hit = (ci < loaded.len() && loaded.path(ci) == e.path.as_slice())
                    .then(|| loaded.trusted(ci, stat))
                    .flatten();
                match hit {
                    Some(m) => md5s[i] = Some(m),
                    None => todo.push(i),
                }
            }
            Node::Dir => counts.dirs += 1,
            Node::Link(_) => counts.symlinks += 1,
            Node::Other(_) => counts.others += 1,
        }
    }
    let hash = |&i: &usize| {
        let (m, n) = hash_file(&absolute(root, &entries[i].path))?;
        Ok((i, m, n))
    };
    let hashed: Vec<(usize, [u8; 16], u64)> = if todo.len() < PARALLEL_MIN {
        todo.iter().map(hash).collect::<Result<_>>()?
    } else {
        todo.par_iter().map(hash).collect::<Result<_>>()?
    };
    let hashed_bytes = hashed.iter().map(|h| h.2).sum();
    for (i, m, _) in &hashed {
        md5s[*i] = Some(*m);
    }

    let version = if single_file {
        let m = md5s.first().copied().flatten().unwrap_or_default();
        Version::from_bytes(Algo::Md5, &m)?
    } else {
        let mut h = Md5::new();
        // Records are gathered into a buffer and hashed by the chunk: md5's `update` costs
        // more per call than per byte for such short pieces.
        let mut buf = Vec::with_capacity(ENCODE_CHUNK + 4096);
        buf.extend_from_slice(TREE_HEADER);
        let mut hexbuf = [0u8; 32];
        for (e, m) in entries.iter().zip(&md5s) {
            let (ty, payload): (u8, &[u8]) = match &e.node {
                Node::Dir => (b'd', b""),
                Node::File(s) => {
                    hex_into(&m.unwrap_or_default(), &mut hexbuf);
                    (if s.mode & 0o100 != 0 { b'x' } else { b'f' }, &hexbuf)
                }
                Node::Link(target) => (b'l', target),
                Node::Other(what) => (b'o', what.as_bytes()),
            };
            buf.push(ty);
            buf.push(b' ');
            buf.extend_from_slice(&e.path);
            buf.push(0);
            buf.extend_from_slice(payload);
            buf.push(0);
            if buf.len() >= ENCODE_CHUNK {
                h.update(&buf);
                buf.clear();
            }
        }
        h.update(&buf);
        Version::from_bytes(Algo::Md5, &h.finalize())?
    };

    // Rewrite the cache when anything was hashed or the set of files changed.
    let mut cache_written = false;
    if let Some(p) = pending {
        if !hashed.is_empty() || loaded.len() as u64 != counts.files {
            let files = entries
                .iter()
                .zip(&md5s)
                .filter_map(|(e, m)| match (&e.node, m) {
                    (Node::File(s), Some(m)) => Some((e.path.as_slice(), s, m)),
                    _ => None,
                });
            match p.commit(root_bytes, counts.files as usize, files) {
                Ok(()) => cache_written = true,
                Err(e) => tracing::warn!(error = %e, "cannot write the stat cache"),
            }
        }
    }

    Ok(TreeDigest {
        version,
        single_file,
        files: counts.files,
        dirs: counts.dirs,
        symlinks: counts.symlinks,
        others: counts.others,
        hashed_files: hashed.len() as u64,
        hashed_bytes,
        cache_written,
    })
}

/// Lower-case hex of an md5, as `md5sum` prints it.
fn hex_into(bytes: &[u8; 16], out: &mut [u8; 32]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

#[derive(Debug, Default)]
struct Counts {
    files: u64,
    dirs: u64,
    symlinks: u64,
    others: u64,
}

#[derive(Debug)]
enum Node {
    Dir,
    File(Stat),
    Link(Vec<u8>),
    Other(&'static str),
}

#[derive(Debug)]
struct Entry {
    /// Relative to the root, `/`-separated; empty for a single-file root.
    path: Vec<u8>,
    node: Node,
}

fn absolute(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// An I/O error on `path`, saying so when the file vanished while dtk was reading the tree.
fn walk_error(path: &Path, e: io::Error) -> Error {
    let e = match e.kind() {
        io::ErrorKind::NotFound => io::Error::new(
            e.kind(),
            format!("vanished while dtk was reading the tree ({e})"),
        ),
        _ => e,
    };
    Error::io(path, e)
}

fn changed(path: &Path, what: &str) -> Error {
    Error::io(
        path,
        io::Error::other(format!("changed while dtk was reading the tree: {what}")),
    )
}

/// One entry of a directory and, for a sub-directory, everything below it.
struct Child {
    entry: Entry,
    below: Option<Vec<Entry>>,
}

/// The entries below `dir` (whose relative path is `rel`), sorted byte-wise by path;
/// sub-directories are walked in parallel.
///
/// Sorting each directory's children is enough for the global order: the entries below a
/// sub-directory `a` all start with `a/`, so they sort as one block under the key `a/`,
/// after `a` itself and after siblings such as `a-b` or `a.txt`.
fn walk_dir(dir: &Path, rel: &[u8]) -> Result<Vec<Entry>> {
    let list = fs::read_dir(dir)
        .map_err(|e| walk_error(dir, e))?
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| walk_error(dir, e))?;
    let children = if list.len() < PARALLEL_MIN {
        list.iter()
            .map(|de| visit(de, rel))
            .collect::<Result<Vec<Child>>>()?
    } else {
        list.into_par_iter()
            .with_min_len(PARALLEL_MIN)
            .map(|de| visit(&de, rel))
            .collect::<Result<Vec<Child>>>()?
    };
    // Each child contributes its entry (key: its path) and, for a directory, the block
    // below it (key: its path and '/').
    let mut keys: Vec<(usize, bool)> = Vec::with_capacity(children.len() * 2);
    for (i, c) in children.iter().enumerate() {
        keys.push((i, false));
        if c.below.as_ref().is_some_and(|b| !b.is_empty()) {
            keys.push((i, true));
        }
    }
    keys.sort_unstable_by(|&(i, bi), &(j, bj)| {
        key_cmp(&children[i].entry.path, bi, &children[j].entry.path, bj)
    });
    let total = children.len()
        + children
            .iter()
            .filter_map(|c| c.below.as_ref())
            .map(Vec::len)
            .sum::<usize>();
    let (mut entries, mut belows): (Vec<Option<Entry>>, Vec<Option<Vec<Entry>>>) = children
        .into_iter()
        .map(|c| (Some(c.entry), c.below))
        .unzip();
    let mut out = Vec::with_capacity(total);
    for (i, block) in keys {
        if block {
            out.extend(belows[i].take().unwrap_or_default());
        } else {
            out.extend(entries[i].take());
        }
    }
    Ok(out)
}

/// Compare `a` (followed by `/` when `slash_a`) with `b` (likewise), byte-wise.
fn key_cmp(a: &[u8], slash_a: bool, b: &[u8], slash_b: bool) -> Ordering {
    let n = a.len().min(b.len());
    match a[..n].cmp(&b[..n]) {
        Ordering::Equal => {}
        o => return o,
    }
    // One is a prefix of the other: compare what follows it.
    match (a.get(n), b.get(n)) {
        (None, None) => slash_a.cmp(&slash_b),
        (None, Some(&c)) if slash_a => b'/'.cmp(&c).then(if b.len() == n + 1 && !slash_b {
            Ordering::Equal
        } else {
            Ordering::Less
        }),
        (None, Some(_)) => Ordering::Less,
        (Some(&c), None) if slash_b => c.cmp(&b'/').then(if a.len() == n + 1 && !slash_a {
            Ordering::Equal
        } else {
            Ordering::Greater
        }),
        (Some(_), None) => Ordering::Greater,
        (Some(_), Some(_)) => Ordering::Equal, // unreachable: a[..n] == b[..n] with n = min
    }
}

fn visit(de: &fs::DirEntry, rel: &[u8]) -> Result<Child> {
    let name = de.file_name();
    let mut path = Vec::with_capacity(rel.len() + 1 + name.len());
    if !rel.is_empty() {
        path.extend_from_slice(rel);
        path.push(b'/');
    }
    path.extend_from_slice(name.as_bytes());
    let abs = || de.path();
    let ft = de.file_type().map_err(|e| walk_error(&abs(), e))?;
    let child = |path, node| Child {
        entry: Entry { path, node },
        below: None,
    };
    if ft.is_dir() {
        // read_dir follows links: make sure that what is listed is the same directory
        // before and after, not a link swapped in meanwhile.
        let abs = abs();
        let before = fs::symlink_metadata(&abs).map_err(|e| walk_error(&abs, e))?;
        let below = walk_dir(&abs, &path)?;
        let after = fs::symlink_metadata(&abs).map_err(|e| walk_error(&abs, e))?;
        if !before.is_dir()
            || !after.is_dir()
            || (before.dev(), before.ino()) != (after.dev(), after.ino())
        {
            return Err(changed(&abs, "a directory was replaced"));
        }
        Ok(Child {
            entry: Entry {
                path,
                node: Node::Dir,
            },
            below: Some(below),
        })
    } else if ft.is_symlink() {
        let abs = abs();
        let target = fs::read_link(&abs).map_err(|e| walk_error(&abs, e))?;
        Ok(child(path, Node::Link(target.into_os_string().into_vec())))
    } else if ft.is_file() {
        let md = de.metadata().map_err(|e| walk_error(&abs(), e))?;
        if !md.is_file() {
            return Err(changed(&abs(), "a file was replaced"));
        }
        Ok(child(path, Node::File(Stat::of(&md))))
    } else {
        let what = if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_char_device() {
            "char-device"
        } else if ft.is_block_device() {
            "block-device"
        } else {
            "unknown"
        };
        Ok(child(path, Node::Other(what)))
    }
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The md5 of the file at `path` and its length, streamed through a 1 MiB buffer. Never
/// follows a link and never blocks on a fifo swapped in after the walk.
pub(crate) fn hash_file(path: &Path) -> Result<([u8; 16], u64)> {
    let mut f: File = OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                changed(path, "a file was replaced by a link")
            } else {
                walk_error(path, e)
            }
        })?;
    let md = f.metadata().map_err(|e| walk_error(path, e))?;
    if !md.is_file() {
        return Err(changed(path, "a file was replaced"));
    }
    #[cfg(target_os = "linux")]
    if md.len() > BUF_SIZE as u64 {
        // A hint for a bigger read-ahead; failing it changes nothing.
        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::Sequential);
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < BUF_SIZE {
            buf.resize(BUF_SIZE, 0);
        }
        let mut h = Md5::new();
        let mut n = 0u64;
        loop {
            match f.read(&mut buf[..]) {
                Ok(0) => break,
                Ok(k) => {
                    h.update(&buf[..k]);
                    n += k as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(walk_error(path, e)),
            }
        }
        Ok((h.finalize().into(), n))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vanished_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone.bin");
        let e = hash_file(&gone).unwrap_err().to_string();
        assert!(e.contains("gone.bin") && e.contains("vanished"), "{e}");
    }

    #[test]
    fn a_link_is_never_opened_as_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        let e = hash_file(&link).unwrap_err().to_string();
        assert!(e.contains("replaced by a link"), "{e}");
    }

    #[test]
    fn an_unreadable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        fs::write(&file, b"x").unwrap();
        // A file where a directory is expected cannot be listed.
        let e = walk_dir(&file, b"").unwrap_err().to_string();
        assert!(e.contains("plain"), "{e}");
    }

    #[test]
    fn keys_sort_like_the_joined_bytes() {
        let names: [&[u8]; 8] = [b"a", b"a-b", b"a.txt", b"a0", b"", b"ab", b"a/", b"\xff"];
        for a in names {
            for b in names {
                for sa in [false, true] {
                    for sb in [false, true] {
                        let ka = [a, if sa { b"/" } else { b"" }].concat();
                        let kb = [b, if sb { b"/" } else { b"" }].concat();
                        assert_eq!(key_cmp(a, sa, b, sb), ka.cmp(&kb), "{ka:?} {kb:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn hex_is_lower_case() {
        let mut out = [0u8; 32];
        hex_into(&[0xab; 16], &mut out);
        assert_eq!(&out[..4], b"abab");
    }
}
