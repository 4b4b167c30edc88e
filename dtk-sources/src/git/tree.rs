//! Writing a tree of the mirror into a directory, by hand: raw blobs (no `.gitattributes`
//! filters, as `git archive` without attributes), executable bits, symbolic links as links,
//! submodules as empty directories.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use gix::objs::tree::EntryKind;
use gix::objs::Find;
use gix::ObjectId;

/// What went wrong while writing a tree.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// Reading an object failed.
    Odb(ObjectId, gix::Error),
    /// An object is missing or not what the tree says.
    Bad(ObjectId, &'static str),
    /// A tree entry has a name that must not be written (`..`, `.git`, a `/`, ...).
    UnsafeName(String),
    /// Writing failed.
    Io(PathBuf, std::io::Error),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Odb(id, _) => write!(f, "cannot read object {id}"),
            WriteError::Bad(id, what) => write!(f, "object {id} {what}"),
            WriteError::UnsafeName(n) => write!(f, "refusing to write the tree entry {n:?}"),
            WriteError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriteError::Odb(_, e) => Some(e),
            WriteError::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

/// The entry at `path` (`/`-separated) below tree `root`, as (kind, id).
pub(crate) fn lookup(
    odb: &impl Find,
    hash: gix::hash::Kind,
    root: ObjectId,
    path: &str,
) -> Result<Option<(EntryKind, ObjectId)>, WriteError> {
    let mut buf = Vec::new();
    let mut cur = (EntryKind::Tree, root);
    for name in path.split('/').filter(|c| !c.is_empty()) {
        if cur.0 != EntryKind::Tree {
            return Ok(None);
        }
        let data = odb
            .try_find(&cur.1, &mut buf)
            .map_err(|e| WriteError::Odb(cur.1, e))?
            .ok_or(WriteError::Bad(cur.1, "is missing"))?;
        if data.kind != gix::objs::Kind::Tree {
            return Err(WriteError::Bad(cur.1, "is not a tree"));
        }
        let mut found = None;
        for e in gix::objs::TreeRefIter::from_bytes(data.data, hash) {
            let e = e.map_err(|_| WriteError::Bad(cur.1, "is a damaged tree"))?;
            if e.filename.as_ref() as &[u8] == name.as_bytes() {
                found = Some((e.mode.kind(), e.oid.to_owned()));
                break;
            }
        }
        match found {
            Some(f) => cur = f,
            None => return Ok(None),
        }
    }
    Ok(Some(cur))
}

fn check_name(name: &[u8]) -> Result<&std::ffi::OsStr, WriteError> {
    let bad = name.is_empty()
        || name == b"."
        || name == b".."
        || name.eq_ignore_ascii_case(b".git")
        || name.contains(&b'/')
        || name.contains(&0);
    if bad {
        return Err(WriteError::UnsafeName(
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    Ok(os_str(name))
}

#[cfg(unix)]
fn os_str(bytes: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(bytes)
}

#[cfg(not(unix))]
fn os_str(bytes: &[u8]) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(std::str::from_utf8(bytes).unwrap_or("\u{fffd}"))
}

fn read<'b>(
    odb: &impl Find,
    id: &ObjectId,
    buf: &'b mut Vec<u8>,
    kind: gix::objs::Kind,
) -> Result<&'b [u8], WriteError> {
    let data = odb
        .try_find(id, buf)
        .map_err(|e| WriteError::Odb(*id, e))?
        .ok_or(WriteError::Bad(*id, "is missing"))?;
    if data.kind != kind {
        return Err(WriteError::Bad(*id, "has the wrong type"));
    }
    Ok(data.data)
}

/// Write the blob `id` to `path`, which must not exist.
fn write_blob(
    odb: &impl Find,
    id: &ObjectId,
    executable: bool,
    path: &Path,
    buf: &mut Vec<u8>,
) -> Result<(), WriteError> {
    let data = read(odb, id, buf, gix::objs::Kind::Blob)?;
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if executable { 0o777 } else { 0o666 });
    }
    let mut f = opts
        .open(path)
        .map_err(|e| WriteError::Io(path.to_owned(), e))?;
    f.write_all(data)
        .map_err(|e| WriteError::Io(path.to_owned(), e))
}

fn write_link(
    odb: &impl Find,
    id: &ObjectId,
    path: &Path,
    buf: &mut Vec<u8>,
) -> Result<(), WriteError> {
    let target = read(odb, id, buf, gix::objs::Kind::Blob)?;
    #[cfg(unix)]
    let written = std::os::unix::fs::symlink(os_str(target), path);
    #[cfg(not(unix))]
    let written = std::fs::write(path, target);
    written.map_err(|e| WriteError::Io(path.to_owned(), e))
}

/// Write the entry (`kind`, `id`) to `dest`, which must not exist; a tree is written
/// recursively.
pub(crate) fn write_entry(
    odb: &impl Find,
    hash: gix::hash::Kind,
    kind: EntryKind,
    id: ObjectId,
    dest: &Path,
) -> Result<(), WriteError> {
    let mut buf = Vec::new();
    let mut tree_buf = Vec::new();
    match kind {
        EntryKind::Blob | EntryKind::BlobExecutable => {
            return write_blob(odb, &id, kind == EntryKind::BlobExecutable, dest, &mut buf)
        }
        EntryKind::Link => return write_link(odb, &id, dest, &mut buf),
        EntryKind::Commit => {
            return std::fs::create_dir(dest).map_err(|e| WriteError::Io(dest.to_owned(), e))
        }
        EntryKind::Tree => {}
    }
    if !dest.is_dir() {
        std::fs::create_dir(dest).map_err(|e| WriteError::Io(dest.to_owned(), e))?;
    }
    let mut stack = vec![(id, dest.to_owned())];
    while let Some((tree, dir)) = stack.pop() {
        let data = read(odb, &tree, &mut tree_buf, gix::objs::Kind::Tree)?;
        let mut entries = Vec::new();
        for e in gix::objs::TreeRefIter::from_bytes(data, hash) {
            let e = e.map_err(|_| WriteError::Bad(tree, "is a damaged tree"))?;
            entries.push((e.mode.kind(), e.oid.to_owned(), e.filename.to_vec()));
        }
        for (kind, oid, name) in entries {
            let path = dir.join(check_name(&name)?);
            match kind {
                EntryKind::Tree => {
                    std::fs::create_dir(&path).map_err(|e| WriteError::Io(path.clone(), e))?;
                    stack.push((oid, path));
                }
                EntryKind::Blob | EntryKind::BlobExecutable => write_blob(
                    odb,
                    &oid,
                    kind == EntryKind::BlobExecutable,
                    &path,
                    &mut buf,
                )?,
                EntryKind::Link => write_link(odb, &oid, &path, &mut buf)?,
                EntryKind::Commit => {
                    std::fs::create_dir(&path).map_err(|e| WriteError::Io(path.clone(), e))?
                }
            }
        }
    }
    Ok(())
}
