//! The metadata store: every record of a project, committed to a content-addressed store
//! with one branch.
//!
//! The records layer ([`Store`], [`Snapshot`], [`Tx`]) reads and writes the records as
//! files of a tree (one JSON file per record; layout in `docs/format.md`). Beneath it, a
//! [`MetadataStore`] keeps the objects (records, directories, commits) and moves the
//! branch; dtk ships one, [`GitStore`]: the branch `refs/heads/main` of the bare git
//! repository in `.dkt/.git`. Each change is one commit; the branch is moved by
//! compare-and-swap, so concurrent writers retry on top of each other instead of losing
//! updates, and objects are always written before the branch moves, so a process killed
//! at any point leaves the last committed state intact.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gix::ObjectId;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::signing::SigningKey;
use crate::{Error, Result};

mod git;
#[cfg(test)]
mod memory;
pub use git::GitStore;

/// The ID of an object of the metadata store: a record, a directory of records, or a
/// commit. Objects are content-addressed (a SHA-1, as git names them), so two stores that
/// hold the same record hold it under the same ID. Shown and parsed as 40 hex digits.
///
/// dtk's own type, so that the library's users do not depend on the types of the git
/// implementation beneath the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Oid(ObjectId);

impl Oid {
    /// Parse an ID from its 40 hex digits.
    pub fn from_hex(hex: &str) -> Result<Oid> {
        ObjectId::from_hex(hex.as_bytes())
            .map(Oid)
            .map_err(|_| Error::invalid("object ID", hex, "is not 40 hex digits"))
    }

    /// The ID from its 20 bytes.
    pub fn from_bytes(bytes: [u8; 20]) -> Oid {
        Oid(ObjectId::from(bytes))
    }

    /// The ID's 20 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The ID as 40 hex digits.
    pub fn to_hex(&self) -> String {
        self.0.to_string()
    }

    /// The first `len` hex digits, to show.
    pub fn short(&self, len: usize) -> String {
        let mut hex = self.0.to_string();
        hex.truncate(len);
        hex
    }
}

impl std::fmt::Display for Oid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::fmt::Debug for Oid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Oid({})", self.0)
    }
}

impl std::str::FromStr for Oid {
    type Err = Error;
    fn from_str(hex: &str) -> Result<Oid> {
        Oid::from_hex(hex)
    }
}

/// The branch holding the project's records.
pub const BRANCH: &str = "refs/heads/main";

/// The content of the `format` file at the root of every store.
pub const FORMAT: &str = "dtk-store 4\n";

/// How long a writer keeps retrying a contended update before giving up.
const CAS_TIMEOUT: Duration = Duration::from_secs(120);

/// What the records layer needs of the storage beneath it: content-addressed objects
/// (records, directories of records, commits), read and written through [`Objects`], and
/// one branch, the records' history, moved by compare-and-swap.
///
/// [`GitStore`] is the implementation dtk ships (and the one `dkt push`/`pull` and
/// signing work with); another (a database, an object store) plugs in with
/// [`Store::with_backend`]. The contract, which the store tests hold every implementation
/// to:
/// - an object's ID is a function of its content alone, and is the git ID of the same
///   object (so records merge between stores and `dkt verify` checks them);
/// - objects written through [`Objects`] become durable at [`Objects::persist`], before
///   the branch is moved onto them;
/// - [`move_branch`](Self::move_branch) succeeds only if the branch is still at `from`,
///   and is durable when it returns.
pub trait MetadataStore: Send + Sync + std::fmt::Debug {
    /// Where the store lives, for messages (a git store: its `.git` directory).
    fn location(&self) -> &Path;

    /// The commit the records' branch points to (`None` before the first commit).
    fn tip(&self) -> Result<Option<Oid>>;

    /// The commit another reference points to (`refs/remotes/origin/main`), if it exists.
    fn reference(&self, name: &str) -> Result<Option<Oid>>;

    /// A handle on the objects, for one snapshot or, with `write`, one commit attempt
    /// (whose new objects are kept until [`Objects::persist`]).
    fn objects(&self, write: bool) -> Result<Box<dyn Objects>>;

    /// Told, before [`Objects::persist`], that the branch is about to move to `to`: a
    /// store may get the move ready meanwhile (the git store writes and syncs the
    /// branch's new file beside the objects, so that the move itself only renames it).
    fn prepare_move(&self, _to: Oid) {}

    /// Move the branch from `from` (`None`: it must not exist yet) to `to`, as a
    /// compare-and-swap; durable when it returns.
    fn move_branch(&self, from: Option<Oid>, to: Oid) -> Result<()>;

    /// After [`move_branch`](Self::move_branch) from `base` failed: whether it is worth
    /// retrying (the branch moved on, or another writer holds it) rather than a failure.
    fn contended(&self, base: Oid) -> Result<bool>;

    /// Called after each commit lands, to keep reads fast (merging packs, say). Never
    /// fails the commit.
    fn committed(&self) {}

    /// Look at the storage afresh (after a read failed: a handle may have lost track of
    /// files another process rewrote).
    fn refresh(&self) -> Result<()> {
        Ok(())
    }

    /// Sign every commit written from now on with `key` (`None`: unsigned).
    fn set_signer(&self, key: Option<Arc<SigningKey>>);

    /// The key that signs new commits, if any.
    fn signer(&self) -> Option<Arc<SigningKey>>;

    /// Compact the storage now (for git, `git gc`).
    fn pack(&self) -> Result<()>;
}

/// The objects of a [`MetadataStore`], through one handle.
pub trait Objects: Send {
    /// The commit `id`.
    fn commit(&self, id: Oid) -> Result<Commit>;

    /// The entries of the directory `id`, in the order they are stored (by name).
    fn tree(&self, id: Oid) -> Result<Vec<DirEntry>>;

    /// The bytes of the record `id`.
    fn blob(&self, id: Oid) -> Result<Arc<[u8]>>;

    /// The ID of the empty directory.
    fn empty_tree(&self) -> Oid;

    /// Keep `bytes` as a record; its ID.
    fn write_blob(&self, bytes: &[u8]) -> Result<Oid>;

    /// Keep a directory of `entries` (in any order; names are unique); its ID.
    fn write_dir(&self, entries: &[DirEntry]) -> Result<Oid>;

    /// A commit of `tree` on `parents` with `message`, signed if the store signs; its ID.
    fn write_commit(&self, tree: Oid, parents: &[Oid], message: &str) -> Result<Oid>;

    /// Make every object written through this handle durable.
    fn persist(&self) -> Result<()>;
}

/// A commit, as [`Objects::commit`] reads it.
#[derive(Debug, Clone)]
pub struct Commit {
    /// Its directory of records.
    pub tree: Oid,
    /// Its parents, the first one first.
    pub parents: Vec<Oid>,
    /// Its message, without trailing white space.
    pub message: String,
    /// Its bytes as hashed (headers, a blank line, the message).
    pub raw: Vec<u8>,
}

/// The metadata store of a project: the records layer over a [`MetadataStore`]. Cheap to
/// clone; clones share the backend and what was read.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn MetadataStore>,
    /// What this handle remembers of the objects it read, shared by its snapshots.
    memo: Arc<Memo>,
}

/// What a store handle remembers of the objects it read: record counts of directories,
/// decoded directories and small records, each by object ID.
///
/// Derived data kept beside the history, as git keeps its commit-graph: an object is
/// content-addressed, so nothing remembered ever goes stale, and a snapshot taken after
/// a commit reads afresh only what the commit wrote. Bounded: each map is cleared when
/// it passes its limit.
#[derive(Debug, Default)]
struct Memo {
    /// The directory of each commit.
    commits: std::sync::Mutex<ById<Oid>>,
    counts: std::sync::Mutex<ById<usize>>,
    trees: std::sync::Mutex<ById<std::sync::Arc<Dir>>>,
    /// Small blobs and their total size.
    blobs: std::sync::Mutex<(usize, Blobs)>,
    /// Numbers a reader found, to start from next time (see [`Snapshot::hint`]).
    hints: std::sync::Mutex<std::collections::HashMap<[u8; 32], u32>>,
    /// The directories of the last tree viewed, by path (see [`Memo::paths`]).
    last_paths: std::sync::Mutex<Option<(Oid, Arc<Paths>)>>,
}

/// A map keyed by object ID, hashed by the ID's own first bytes (it is already a hash).
type ById<V> = gix::hashtable::HashMap<Oid, V>;

/// Blobs by object ID.
type Blobs = ById<std::sync::Arc<[u8]>>;

impl Memo {
    /// The most directory counts and decoded directories remembered.
    const MAX_TREES: usize = 1 << 18;
    /// The largest blob remembered, and the most bytes of blobs.
    const MAX_BLOB: usize = 64 << 10;
    const MAX_BLOB_BYTES: usize = 64 << 20;
    /// The most hints remembered.
    const MAX_HINTS: usize = 1 << 16;
    /// The most directories by path shared by the views of one tree.
    const MAX_PATHS: usize = 1 << 16;

    fn commit_tree(&self, commit: &Oid) -> Option<Oid> {
        remembered(&self.commits, commit)
    }

    fn put_commit_tree(&self, commit: Oid, tree: Oid) {
        remember(&self.commits, commit, tree);
    }

    fn count(&self, tree: &Oid) -> Option<usize> {
        remembered(&self.counts, tree)
    }

    fn put_count(&self, tree: Oid, count: usize) {
        remember(&self.counts, tree, count);
    }

    fn tree(&self, id: &Oid) -> Option<std::sync::Arc<Dir>> {
        remembered(&self.trees, id)
    }

    fn put_tree(&self, id: Oid, dir: std::sync::Arc<Dir>) {
        remember(&self.trees, id, dir);
    }

    /// The directories by path of views of `tree`: those of the last views, if they were
    /// of the same tree (the views taken during one run are mostly of one tree, and each
    /// found its directories from the top again). Only the last tree's are kept.
    fn paths(&self, tree: Oid) -> Arc<Paths> {
        let Ok(mut last) = self.last_paths.lock() else {
            return Default::default();
        };
        match &*last {
            Some((t, paths))
                if *t == tree && paths.lock().is_ok_and(|p| p.len() < Self::MAX_PATHS) =>
            {
                Arc::clone(paths)
            }
            _ => {
                let paths: Arc<Paths> = Default::default();
                *last = Some((tree, Arc::clone(&paths)));
                paths
            }
        }
    }

    fn remember_hint(&self, key: [u8; 32], value: u32) {
        if let Ok(mut m) = self.hints.lock() {
            if m.len() >= Memo::MAX_HINTS {
                m.clear();
            }
            m.insert(key, value);
        }
    }

    fn blob(&self, id: &Oid) -> Option<std::sync::Arc<[u8]>> {
        self.blobs.lock().ok()?.1.get(id).cloned()
    }

    /// Remember a blob as it is written (copied, if small enough to be remembered).
    fn put_blob(&self, id: Oid, data: &[u8]) {
        if data.len() <= Self::MAX_BLOB {
            self.put_shared_blob(id, &std::sync::Arc::from(data));
        }
    }

    fn put_shared_blob(&self, id: Oid, data: &std::sync::Arc<[u8]>) {
        if data.len() > Self::MAX_BLOB {
            return;
        }
        if let Ok(mut m) = self.blobs.lock() {
            if m.0 + data.len() > Self::MAX_BLOB_BYTES {
                m.1.clear();
                m.0 = 0;
            }
            if m.1.insert(id, data.clone()).is_none() {
                m.0 += data.len();
            }
        }
    }
}

/// What `map` remembers of `id`.
fn remembered<V: Clone>(map: &std::sync::Mutex<ById<V>>, id: &Oid) -> Option<V> {
    map.lock().ok()?.get(id).cloned()
}

/// Remember `value` for `id` in `map`, which is cleared first when it holds
/// [`Memo::MAX_TREES`] entries.
fn remember<V>(map: &std::sync::Mutex<ById<V>>, id: Oid, value: V) {
    if let Ok(mut m) = map.lock() {
        if m.len() >= Memo::MAX_TREES {
            m.clear();
        }
        m.insert(id, value);
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Store {
    /// Create a new git store in `git_dir` (which must not exist yet) with its first
    /// commit.
    pub fn init(git_dir: &Path) -> Result<Store> {
        Store::init_signed(git_dir, None)
    }

    /// Create a new git store in `git_dir` (which must not exist yet) whose commits, the
    /// first one included, are signed with `signer` (unsigned when `None`).
    pub fn init_signed(git_dir: &Path, signer: Option<Arc<SigningKey>>) -> Result<Store> {
        let store = Store::with_backend(Arc::new(GitStore::init(git_dir)?));
        store.set_signer(signer);
        store.commit_initial()?;
        Ok(store)
    }

    /// Open the git store in `git_dir`, ignoring the user's and the system's git
    /// configuration.
    pub fn open(git_dir: &Path) -> Result<Store> {
        Ok(Store::with_backend(Arc::new(GitStore::open(git_dir)?)))
    }

    /// The records layer over `backend`. A backend without a branch yet gets its first
    /// commit (the format record) here.
    pub fn create(backend: Arc<dyn MetadataStore>) -> Result<Store> {
        let store = Store::with_backend(backend);
        if store.backend.tip()?.is_none() {
            store.commit_initial()?;
        }
        Ok(store)
    }

    /// The records layer over `backend`, as it is.
    pub fn with_backend(backend: Arc<dyn MetadataStore>) -> Store {
        Store {
            backend,
            memo: Default::default(),
        }
    }

    /// The storage beneath the records.
    pub fn backend(&self) -> &Arc<dyn MetadataStore> {
        &self.backend
    }

    /// Sign every commit made from now on through this handle and its clones with `key`
    /// (`None`: unsigned commits). See [`crate::signing`].
    pub fn set_signer(&self, key: Option<Arc<SigningKey>>) {
        self.backend.set_signer(key)
    }

    /// The key that signs this handle's commits, if any.
    pub fn signer(&self) -> Option<Arc<SigningKey>> {
        self.backend.signer()
    }

    /// The raw bytes of commit `id` (headers, a blank line, the message), as git hashes them.
    pub fn commit_bytes(&self, id: Oid) -> Result<Vec<u8>> {
        Ok(self.backend.objects(false)?.commit(id)?.raw)
    }

    /// Where the store lives: for the git store, the repository's directory (`.dkt/.git`).
    pub fn git_dir(&self) -> &Path {
        self.backend.location()
    }

    /// Remember `value` under `key` for [`Snapshot::hint`].
    pub(crate) fn remember_hint(&self, key: [u8; 32], value: u32) {
        self.memo.remember_hint(key, value);
    }

    /// A read-only view of the records at the current tip.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let commit = self.head()?;
        match Snapshot::at(self.backend.objects(false)?, commit, self.memo.clone()) {
            Ok(s) => Ok(s),
            Err(e) => {
                // Perhaps the handle lost track of files another process rewrote (gix of
                // packs merged away): look once more through a fresh one before reporting
                // the store as broken.
                tracing::debug!(error = %e, "reading the tip failed; reopening the store");
                self.backend.refresh()?;
                Snapshot::at(self.backend.objects(false)?, commit, self.memo.clone())
            }
        }
    }

    fn commit_initial(&self) -> Result<()> {
        let objects = self.backend.objects(true)?;
        let mut edits = BTreeMap::new();
        edits.insert(
            "format".to_owned(),
            Some(objects.write_blob(FORMAT.as_bytes())?),
        );
        // A signed project records its key's public half from the first commit on.
        if let Some(key) = self.signer() {
            let line = key.allowed_signers_line()?;
            edits.insert(
                key.record_path(),
                Some(objects.write_blob(line.as_bytes())?),
            );
        }
        let tree = write_edited(objects.as_ref(), &self.memo, &|_| Ok(None), &edits)?;
        let commit = objects.write_commit(tree, &[], "init: empty Datakit project")?;
        objects.persist()?;
        self.backend.move_branch(None, commit)
    }

    /// Apply `change` atomically as one commit whose message is `message`.
    ///
    /// `change` stages edits in a [`Tx`] that starts from the current tip. If another
    /// process moved the branch in the meantime, `change` runs again on the new tip
    /// (so it must compute everything from what it reads in the `Tx`), until it lands.
    /// When `change` stages nothing, or stages what is already there, no commit is made.
    /// Returns what `change` returned and the new commit, if one was made.
    pub fn transact<T>(
        &self,
        message: &str,
        change: impl FnMut(&mut Tx) -> Result<T>,
    ) -> Result<(T, Option<Oid>)> {
        blocking(|| self.commit_change(message, None, change))
    }

    /// Like [`transact`](Self::transact), but the commit is a merge: its second parent is
    /// `theirs` (a commit already in this repository, fetched from another copy of the
    /// project), and it is made even when the merged records equal ours, so that `theirs`
    /// becomes part of this history.
    pub fn merge<T>(
        &self,
        message: &str,
        theirs: Oid,
        change: impl FnMut(&mut Tx) -> Result<T>,
    ) -> Result<(T, Oid)> {
        let (value, commit) = blocking(|| self.commit_change(message, Some(theirs), change))?;
        let commit = commit.ok_or_else(|| Error::corrupt("a merge made no commit"))?;
        Ok((value, commit))
    }

    /// The commit the branch points to now.
    pub fn head(&self) -> Result<Oid> {
        self.backend.tip()?.ok_or_else(|| {
            Error::corrupt(format!(
                "{BRANCH} is missing in {}",
                self.backend.location().display()
            ))
        })
    }

    /// The commit a reference (`refs/remotes/origin/main`) points to, if it exists.
    pub fn reference(&self, name: &str) -> Result<Option<Oid>> {
        self.backend.reference(name)
    }

    /// A read-only view of the records at `commit`.
    pub fn snapshot_at(&self, commit: Oid) -> Result<Snapshot> {
        Snapshot::at(self.backend.objects(false)?, commit, self.memo.clone())
    }

    /// Move the branch from `from` to `to` (a descendant of it), as a compare-and-swap:
    /// fails if the branch moved meanwhile.
    pub fn fast_forward(&self, from: Oid, to: Oid) -> Result<()> {
        blocking(|| self.backend.move_branch(Some(from), to))
    }

    fn commit_change<T>(
        &self,
        message: &str,
        theirs: Option<Oid>,
        mut change: impl FnMut(&mut Tx) -> Result<T>,
    ) -> Result<(T, Option<Oid>)> {
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            let base = self.head()?;
            // New objects stay with the handle until the commit is complete, then become
            // durable at once (for git, as one pack).
            let mut tx = Tx {
                snap: Snapshot::at(self.backend.objects(true)?, base, self.memo.clone())?,
                staged: BTreeMap::new(),
            };
            let value = change(&mut tx)?;
            if tx.staged.is_empty() && theirs.is_none() {
                return Ok((value, None));
            }
            let objects = &tx.snap.objects;
            let base_tree = tx.snap.tree;
            // The directories are edited here, from the decoded (remembered) ones of the
            // base: the backend only keeps the objects.
            let tree = write_edited(
                objects.as_ref(),
                &self.memo,
                &|dir| tx.snap.dir(dir),
                &tx.staged,
            )?;
            if tree == base_tree && theirs.is_none() {
                return Ok((value, None));
            }
            let parents: Vec<Oid> = std::iter::once(base).chain(theirs).collect();
            let commit = objects.write_commit(tree, &parents, message)?;
            self.backend.prepare_move(commit);
            // The views taken after this commit find its directory without reading it back.
            self.memo.put_commit_tree(commit, tree);
            objects.persist()?;
            match self.backend.move_branch(Some(base), commit) {
                Ok(()) => {
                    self.backend.committed();
                    return Ok((value, Some(commit)));
                }
                Err(e) => {
                    if !self.backend.contended(base)? {
                        return Err(e);
                    }
                    if started.elapsed() > CAS_TIMEOUT {
                        return Err(Error::Store {
                            message: format!(
                                "gave up updating {BRANCH} after {}s of contention",
                                CAS_TIMEOUT.as_secs()
                            ),
                            source: Some(Box::new(e)),
                        });
                    }
                    attempt += 1;
                    backoff(attempt);
                }
            }
        }
    }

    /// Pack the repository now (`git gc`), as the background maintenance does; waits for a
    /// background `git gc` that is already running.
    pub fn pack(&self) -> Result<()> {
        blocking(|| self.backend.pack())
    }

    /// The commit history of the branch, newest first, as (commit id, message) pairs.
    pub fn history(&self, limit: usize) -> Result<Vec<(Oid, String)>> {
        let Some(tip) = self.backend.tip()? else {
            return Ok(Vec::new());
        };
        let objects = self.backend.objects(false)?;
        let mut out = Vec::new();
        let mut cur = Some(tip);
        while let Some(id) = cur {
            if out.len() >= limit {
                break;
            }
            let c = objects.commit(id)?;
            cur = c.parents.first().copied();
            out.push((id, c.message));
        }
        Ok(out)
    }
}

fn backoff(attempt: u32) {
    // Exponential with jitter from the clock, capped at 50 ms.
    let base = 1u64 << attempt.min(5);
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 % 1000)
        .unwrap_or(0);
    std::thread::sleep(Duration::from_micros(
        (base * 1000 + jitter * base).min(50_000),
    ));
}

/// A read-only view of the store at one commit.
pub struct Snapshot {
    objects: Box<dyn Objects>,
    commit: Oid,
    tree: Oid,
    /// Decoded directories, by path: each tree object is decoded at most once per view,
    /// and found again by path by the next views of the same tree (see [`Memo::paths`]).
    dirs: Arc<Paths>,
    /// The store handle's memo of objects.
    memo: std::sync::Arc<Memo>,
}

/// A decoded directory: entry name -> (object, is a directory).
type Dir = std::collections::HashMap<String, (Oid, bool)>;

/// The decoded directories of one tree, by path.
type Paths = std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Dir>>>;

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("commit", &self.commit)
            .finish()
    }
}

/// A file that differs between two views ([`Snapshot::diff`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The file's path.
    pub path: String,
    /// Its blob in the view [`Snapshot::diff`] was called on.
    pub ours: Option<Oid>,
    /// Its blob in the other view.
    pub theirs: Option<Oid>,
}

/// An entry of a directory of the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's file name.
    pub name: String,
    /// The object it points to.
    pub id: Oid,
    /// True for a sub-directory.
    pub is_dir: bool,
}

/// The directory whose entries `base` gives (by path, `""` for the root; `None` for
/// none) with `edits` applied (a path to a record, or `None` to remove it; directories
/// are created and removed as needed), written through `objects` and remembered in
/// `memo`; its ID. Only the directories on the edited paths are read and written.
fn write_edited(
    objects: &dyn Objects,
    memo: &Memo,
    base: &dyn Fn(&str) -> Result<Option<Arc<Dir>>>,
    edits: &BTreeMap<String, Option<Oid>>,
) -> Result<Oid> {
    let edits: Vec<(&str, Option<Oid>)> = edits.iter().map(|(p, e)| (p.as_str(), *e)).collect();
    match edit_dir(objects, memo, base, "", true, &edits)? {
        Some(id) => Ok(id),
        None => objects.write_dir(&[]),
    }
}

/// [`write_edited`] of the directory `dir` (whose base is read only if `exists`), its
/// `edits` relative to it; `None` when nothing is left in it.
fn edit_dir(
    objects: &dyn Objects,
    memo: &Memo,
    base: &dyn Fn(&str) -> Result<Option<Arc<Dir>>>,
    dir: &str,
    exists: bool,
    edits: &[(&str, Option<Oid>)],
) -> Result<Option<Oid>> {
    let mut entries: Dir = match exists {
        true => base(dir)?.map(|d| (*d).clone()).unwrap_or_default(),
        false => Dir::default(),
    };
    let mut below: BTreeMap<&str, Vec<(&str, Option<Oid>)>> = BTreeMap::new();
    for (path, entry) in edits {
        match path.split_once('/') {
            Some((sub, rest)) => below.entry(sub).or_default().push((rest, *entry)),
            None => match entry {
                Some(id) => {
                    entries.insert((*path).to_owned(), (*id, false));
                }
                None => {
                    entries.remove(*path);
                }
            },
        }
    }
    for (sub, edits) in below {
        let path = match dir {
            "" => sub.to_owned(),
            _ => format!("{dir}/{sub}"),
        };
        let exists = entries.get(sub).is_some_and(|e| e.1);
        match edit_dir(objects, memo, base, &path, exists, &edits)? {
            Some(id) => {
                entries.insert(sub.to_owned(), (id, true));
            }
            // (Removing below a record that is not a directory leaves the record.)
            None if exists => {
                entries.remove(sub);
            }
            None => {}
        }
    }
    if entries.is_empty() {
        return Ok(None);
    }
    let list: Vec<DirEntry> = entries
        .iter()
        .map(|(name, (id, is_dir))| DirEntry {
            name: name.clone(),
            id: *id,
            is_dir: *is_dir,
        })
        .collect();
    let id = objects.write_dir(&list)?;
    memo.put_tree(id, Arc::new(entries));
    Ok(Some(id))
}

impl Snapshot {
    fn at(objects: Box<dyn Objects>, commit: Oid, memo: Arc<Memo>) -> Result<Snapshot> {
        let tree = match memo.commit_tree(&commit) {
            Some(tree) => tree,
            None => {
                let tree = objects.commit(commit)?.tree;
                memo.put_commit_tree(commit, tree);
                tree
            }
        };
        Ok(Snapshot {
            objects,
            commit,
            tree,
            dirs: memo.paths(tree),
            memo,
        })
    }

    /// The commit this view shows.
    pub fn commit(&self) -> Oid {
        self.commit
    }

    /// The files that differ between this view and `other`: each path with its blob here
    /// and there (`None` where it does not exist). Sub-trees with the same ID on both
    /// sides are skipped, so the cost grows with the size of the difference, not of the
    /// project.
    pub fn diff(&self, other: &Snapshot) -> Result<Vec<Difference>> {
        let mut out = Vec::new();
        let mut stack = vec![String::new()];
        while let Some(dir) = stack.pop() {
            let here = self.dir(&dir)?.map(|d| (*d).clone()).unwrap_or_default();
            let there = other.dir(&dir)?.map(|d| (*d).clone()).unwrap_or_default();
            let names: BTreeSet<&String> = here.keys().chain(there.keys()).collect();
            for name in names {
                let a = here.get(name).copied();
                let b = there.get(name).copied();
                if a == b {
                    continue;
                }
                let path = if dir.is_empty() {
                    name.clone()
                } else {
                    format!("{dir}/{name}")
                };
                let (a_dir, b_dir) = (a.is_some_and(|x| x.1), b.is_some_and(|x| x.1));
                if a_dir || b_dir {
                    stack.push(path.clone());
                }
                let a_file = a.filter(|x| !x.1).map(|x| x.0);
                let b_file = b.filter(|x| !x.1).map(|x| x.0);
                if a_file != b_file {
                    out.push(Difference {
                        path,
                        ours: a_file,
                        theirs: b_file,
                    });
                }
            }
        }
        out.sort_by(|x, y| x.path.cmp(&y.path));
        Ok(out)
    }

    fn entry(&self, path: &str) -> Result<Option<(Oid, bool)>> {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d, n),
            None => ("", path),
        };
        Ok(self.dir(dir)?.and_then(|d| d.get(name).copied()))
    }

    /// The decoded directory at `path` ("" for the root), if it exists.
    fn dir(&self, path: &str) -> Result<Option<std::sync::Arc<Dir>>> {
        if let Some(d) = self.dirs.lock().ok().and_then(|m| m.get(path).cloned()) {
            return Ok(Some(d));
        }
        let id = if path.is_empty() {
            self.tree
        } else {
            let (parent, name) = match path.rsplit_once('/') {
                Some((p, n)) => (p, n),
                None => ("", path),
            };
            match self.dir(parent)?.and_then(|d| d.get(name).copied()) {
                Some((id, true)) => id,
                _ => return Ok(None),
            }
        };
        let map = match self.memo.tree(&id) {
            Some(map) => map,
            None => {
                let map: Dir = self
                    .tree_entries(id, path)?
                    .into_iter()
                    .map(|e| (e.name, (e.id, e.is_dir)))
                    .collect();
                let map = std::sync::Arc::new(map);
                self.memo.put_tree(id, map.clone());
                map
            }
        };
        if let Ok(mut m) = self.dirs.lock() {
            m.insert(path.to_owned(), map.clone());
        }
        Ok(Some(map))
    }

    /// The object ID of the directory at `path` ("" for the root), if there is one: two
    /// views whose directories have the same ID hold the same records below it.
    pub fn dir_id(&self, path: &str) -> Result<Option<Oid>> {
        if path.is_empty() {
            return Ok(Some(self.tree));
        }
        Ok(self.entry(path)?.filter(|(_, dir)| *dir).map(|(id, _)| id))
    }

    /// A number remembered under `key` by [`remember_hint`](Self::remember_hint), in
    /// any snapshot of this store: where a search ended last time, such as the last
    /// attempt of a run. A guess to check against the records, never an answer: it may
    /// come from a newer or an older snapshot, or another branch.
    pub(crate) fn hint(&self, key: &[u8; 32]) -> Option<u32> {
        self.memo.hints.lock().ok()?.get(key).copied()
    }

    /// Remember `value` under `key` for [`hint`](Self::hint).
    pub(crate) fn remember_hint(&self, key: [u8; 32], value: u32) {
        self.memo.remember_hint(key, value);
    }

    /// The object id of the record at `path`.
    pub fn blob_id(&self, path: &str) -> Result<Option<Oid>> {
        Ok(self.entry(path)?.filter(|(_, dir)| !dir).map(|(id, _)| id))
    }

    /// The bytes of the record at `path`, if it exists.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.blob_id(path)? {
            Some(id) => self.read_blob(id, path).map(Some),
            None => Ok(None),
        }
    }

    /// The bytes of the blob `id` (a record whose path is known by other means).
    pub fn blob(&self, id: Oid) -> Result<Vec<u8>> {
        self.read_blob(id, &id.to_string())
    }

    fn read_blob(&self, id: Oid, path: &str) -> Result<Vec<u8>> {
        self.shared_blob(id, path).map(|data| data.to_vec())
    }

    /// The bytes of the blob `id`, shared with the handle's memo when it keeps them (a
    /// record decoded straight from them is not copied first).
    fn shared_blob(&self, id: Oid, path: &str) -> Result<Arc<[u8]>> {
        if let Some(data) = self.memo.blob(&id) {
            return Ok(data);
        }
        let data = self
            .objects
            .blob(id)
            .map_err(|e| Error::store(format!("cannot read record {path} ({id})"), e))?;
        self.memo.put_shared_blob(id, &data);
        Ok(data)
    }

    /// The record at `path`, decoded from JSON.
    pub fn read_json<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.blob_id(path)? {
            Some(id) => decode(path, &self.shared_blob(id, path)?).map(Some),
            None => Ok(None),
        }
    }

    /// The entries of directory `dir` ("" for the root), sorted by name; empty when the
    /// directory does not exist.
    pub fn list(&self, dir: &str) -> Result<Vec<DirEntry>> {
        let tree_id = if dir.is_empty() {
            self.tree
        } else {
            match self.entry(dir)? {
                Some((id, true)) => id,
                _ => return Ok(Vec::new()),
            }
        };
        self.tree_entries(tree_id, dir)
    }

    /// The entries of the tree `id` (the directory `dir`, for errors), sorted by name.
    fn tree_entries(&self, id: Oid, dir: &str) -> Result<Vec<DirEntry>> {
        self.objects
            .tree(id)
            .map_err(|e| Error::store(format!("cannot read directory {dir:?} of the records"), e))
    }

    /// How many records (`.json` files) lie below `dir`, at any depth.
    ///
    /// Counts are remembered by tree (shared by every snapshot of one store handle): the
    /// first count reads every directory below `dir`; later ones, at this commit or a
    /// later one, read only the directories that changed.
    pub fn count_records(&self, dir: &str) -> Result<usize> {
        match self.entry_or_root(dir)? {
            Some(id) => self.count_tree(id, dir),
            None => Ok(0),
        }
    }

    fn count_tree(&self, id: Oid, dir: &str) -> Result<usize> {
        if let Some(n) = self.memo.count(&id) {
            return Ok(n);
        }
        let mut n = 0;
        for e in self.tree_entries(id, dir)? {
            if e.is_dir {
                n += self.count_tree(e.id, &format!("{dir}/{}", e.name))?;
            } else if e.name.ends_with(".json") {
                n += 1;
            }
        }
        self.memo.put_count(id, n);
        Ok(n)
    }

    /// The tree of directory `dir` ("" for the root), if it exists.
    fn entry_or_root(&self, dir: &str) -> Result<Option<Oid>> {
        if dir.is_empty() {
            return Ok(Some(self.tree));
        }
        Ok(match self.entry(dir)? {
            Some((id, true)) => Some(id),
            _ => None,
        })
    }

    /// One page of the record names (the stems of the `.json` files) below the
    /// fanned-out directory `dir`, in name order: at most `limit` names after `after`,
    /// and whether more follow.
    ///
    /// Every fanned-out index names its directories by a prefix of the names below them
    /// (`runs/a/b/c/d/abcd….json`), so the walk goes straight to the cursor, skipping
    /// whole directories before it, and stops after the page: it reads about one
    /// directory per level plus the page's own, whatever the size of the index.
    pub fn page_records(
        &self,
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool)> {
        let mut out = Vec::new();
        if let Some(id) = self.entry_or_root(dir)? {
            self.page_tree(id, dir, "", after, limit + 1, &mut out)?;
        }
        let more = out.len() > limit;
        out.truncate(limit);
        Ok((out, more))
    }

    fn page_tree(
        &self,
        id: Oid,
        dir: &str,
        prefix: &str,
        after: Option<&str>,
        want: usize,
        out: &mut Vec<String>,
    ) -> Result<()> {
        for e in self.tree_entries(id, dir)? {
            if out.len() >= want {
                break;
            }
            if e.is_dir {
                let sub = format!("{prefix}{}", e.name);
                // Skip a directory whose every name sorts at or before the cursor.
                if after.is_some_and(|a| {
                    let n = sub.len().min(a.len());
                    sub.as_bytes() < &a.as_bytes()[..n]
                }) {
                    continue;
                }
                self.page_tree(e.id, &format!("{dir}/{}", e.name), &sub, after, want, out)?;
            } else if let Some(stem) = e.name.strip_suffix(".json") {
                if after.is_none_or(|a| stem > a) {
                    out.push(stem.to_owned());
                }
            }
        }
        Ok(())
    }

    /// Every record in `dir` decoded from JSON (files ending in `.json` only).
    pub fn read_dir_json<T: DeserializeOwned>(&self, dir: &str) -> Result<Vec<T>> {
        self.list(dir)?
            .into_iter()
            .filter(|e| !e.is_dir && e.name.ends_with(".json"))
            .map(|e| {
                let path = format!("{dir}/{}", e.name);
                decode(&path, &self.shared_blob(e.id, &path)?)
            })
            .collect()
    }

    /// Every record of a fanned-out directory (`dir/<xx>/<file>.json`, as the versions of a
    /// source and the runs of a node are kept), decoded from JSON.
    pub fn read_fanned_json<T: DeserializeOwned>(&self, dir: &str) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for e in self.list(dir)?.into_iter().filter(|e| e.is_dir) {
            out.extend(self.read_dir_json(&format!("{dir}/{}", e.name))?);
        }
        Ok(out)
    }

    /// The paths of the files below `dir`, at any depth, with their blob IDs (in tree
    /// order).
    pub fn walk(&self, dir: &str) -> Result<Vec<(String, Oid)>> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            let mut entries = self.list(&d)?;
            entries.reverse();
            for e in entries {
                let path = if d.is_empty() {
                    e.name.clone()
                } else {
                    format!("{d}/{}", e.name)
                };
                if e.is_dir {
                    stack.push(path);
                } else {
                    out.push((path, e.id));
                }
            }
        }
        Ok(out)
    }

    /// Every `.json` record below `dir`, at any depth (a fanned-out directory), decoded.
    pub fn read_tree_json<T: DeserializeOwned>(&self, dir: &str) -> Result<Vec<T>> {
        self.walk(dir)?
            .into_iter()
            .filter(|(p, _)| p.ends_with(".json"))
            .map(|(p, id)| decode(&p, &self.shared_blob(id, &p)?))
            .collect()
    }
}

pub(crate) fn decode<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::store(format!("record {path} is corrupt"), e))
}

/// Run `f`, which blocks on the disk (a commit writes objects, a pack, an index and a ref,
/// and syncs them; packing runs `git`), without stalling the async executor that called
/// it. On a multi-threaded tokio runtime the worker first hands its other tasks to
/// another thread ([`tokio::task::block_in_place`]), so a dashboard or a daemon sharing
/// the runtime keeps answering while a run commits; with no runtime, or on a
/// current-thread runtime (where nothing else could run meanwhile anyway), `f` runs in
/// place.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Encode a record as the store keeps it: pretty JSON with a final newline, so that
/// `git show` and `git diff` of the metadata repository read well.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut v =
        serde_json::to_vec_pretty(value).map_err(|e| Error::store("cannot encode a record", e))?;
    v.push(b'\n');
    Ok(v)
}

/// Staged edits on top of a snapshot; see [`Store::transact`].
pub struct Tx {
    snap: Snapshot,
    staged: BTreeMap<String, Option<Oid>>,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("base", &self.snap.commit)
            .field("staged", &self.staged.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Tx {
    /// The state this transaction started from.
    pub fn base(&self) -> &Snapshot {
        &self.snap
    }

    /// The record at `path`, including what this transaction staged.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.staged.get(path) {
            Some(Some(id)) => self.snap.read_blob(*id, path).map(Some),
            Some(None) => Ok(None),
            None => self.snap.read(path),
        }
    }

    /// The record at `path` decoded from JSON, including what this transaction staged.
    pub fn read_json<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.read(path)? {
            Some(bytes) => decode(path, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// True when a record exists at `path`.
    pub fn exists(&self, path: &str) -> Result<bool> {
        match self.staged.get(path) {
            Some(e) => Ok(e.is_some()),
            None => Ok(self.snap.blob_id(path)?.is_some()),
        }
    }

    /// The names of the files in `dir`, including staged ones, sorted.
    pub fn list_names(&self, dir: &str) -> Result<Vec<String>> {
        let mut names: std::collections::BTreeSet<String> = self
            .snap
            .list(dir)?
            .into_iter()
            .filter(|e| !e.is_dir)
            .map(|e| e.name)
            .collect();
        let prefix = format!("{dir}/");
        for (path, entry) in &self.staged {
            if let Some(name) = path.strip_prefix(&prefix).filter(|n| !n.contains('/')) {
                if entry.is_some() {
                    names.insert(name.to_owned());
                } else {
                    names.remove(name);
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Stage `bytes` at `path`, returning the blob's id.
    pub fn put(&mut self, path: &str, bytes: &[u8]) -> Result<Oid> {
        let id = self
            .snap
            .objects
            .write_blob(bytes)
            .map_err(|e| Error::store(format!("cannot write record {path}"), e))?;
        // Read back by the next views (the run recorded, the version published).
        self.snap.memo.put_blob(id, bytes);
        self.stage(path, Some(id));
        Ok(id)
    }

    /// The blob at `path`, staged or in the base view.
    pub fn blob_id(&self, path: &str) -> Result<Option<Oid>> {
        match self.staged.get(path) {
            Some(e) => Ok(*e),
            None => self.snap.blob_id(path),
        }
    }

    /// Settle a conflict a merge reported on `path` (remove its report), as writing the
    /// record does: for a command that re-affirms the value the merge kept.
    pub fn settle(&mut self, path: &str) {
        let report = crate::project::paths::conflict(path);
        if self.snap.blob_id(&report).ok().flatten().is_some() {
            self.staged.insert(report, None);
        }
    }

    /// Stage `entry` at `path`. Writing a record that a merge reported as a conflict
    /// (`conflicts/`) resolves the conflict: its report is removed in the same commit.
    fn stage(&mut self, path: &str, entry: Option<Oid>) {
        self.staged.insert(path.to_owned(), entry);
        let reports = crate::project::paths::CONFLICTS_DIR;
        if !(path.starts_with(reports) && path[reports.len()..].starts_with('/')) {
            let report = crate::project::paths::conflict(path);
            if self.snap.blob_id(&report).ok().flatten().is_some()
                && !self.staged.contains_key(&report)
            {
                self.staged.insert(report, None);
            }
        }
    }

    /// Stage `value` as JSON at `path`.
    pub fn put_json<T: Serialize>(&mut self, path: &str, value: &T) -> Result<Oid> {
        self.put(path, &encode(value)?)
    }

    /// Stage an existing blob at `path` (an index entry pointing at a record).
    pub fn put_id(&mut self, path: &str, id: Oid) {
        self.stage(path, Some(id));
    }

    /// Stage the removal of `path`.
    pub fn remove(&mut self, path: &str) {
        self.stage(path, None);
    }
}

/// Reading records: a [`Snapshot`], or a [`Tx`] (which sees what it staged).
pub trait Read {
    /// The bytes at `path`.
    fn read_bytes(&self, path: &str) -> Result<Option<Vec<u8>>>;

    /// The record at `path`, decoded from JSON.
    fn read_record<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.read_bytes(path)? {
            Some(bytes) => decode(path, &bytes).map(Some),
            None => Ok(None),
        }
    }
}

impl Read for Snapshot {
    fn read_bytes(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.read(path)
    }

    /// Decoded straight from the bytes the memo shares, without a copy.
    fn read_record<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        self.read_json(path)
    }
}

impl Read for Tx {
    fn read_bytes(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.read(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use git::DELTA_MIN_BYTES;

    /// The same changes, through the records layer, over the git store and over a second
    /// implementation of [`MetadataStore`] kept in memory: every directory, record and
    /// listing comes out the same, under the same IDs (the trait's contract: git's object
    /// IDs), and a writer that loses the compare-and-swap retries on top of the winner.
    #[test]
    fn the_records_layer_reads_the_same_over_either_backend() {
        let dir = tempfile::tempdir().unwrap();
        let git = Store::init(&dir.path().join("git")).unwrap();
        let memory = Arc::new(memory::MemoryStore::default());
        let mem = Store::create(memory.clone()).unwrap();
        assert_eq!(
            git.snapshot().unwrap().dir_id("").unwrap(),
            mem.snapshot().unwrap().dir_id("").unwrap(),
            "the first commits differ"
        );
        let mut trees = Vec::new();
        for store in [&git, &mem] {
            let first = store.snapshot().unwrap();
            for i in 0..40u32 {
                let hex = format!("{:08x}", i.wrapping_mul(2_654_435_761));
                store
                    .transact(&format!("run {i}"), |tx| {
                        tx.put_json(&run_path(&hex, "json"), &serde_json::json!({ "i": i }))?;
                        tx.put("sources/a/state", format!("{i}\n").as_bytes())?;
                        if i % 10 == 9 {
                            tx.remove(&run_path(
                                &format!("{:08x}", (i - 9).wrapping_mul(2_654_435_761)),
                                "json",
                            ));
                        }
                        Ok(())
                    })
                    .unwrap();
            }
            // Staging what is already there makes no commit.
            let (_, none) = store
                .transact("again", |tx| {
                    tx.put("sources/a/state", b"39\n")?;
                    Ok(())
                })
                .unwrap();
            assert_eq!(none, None);
            // A writer whose base moves under it (another handle commits first) retries.
            let other = store.clone();
            let mut attempts = 0;
            let (_, landed) = store
                .transact("late", |tx| {
                    attempts += 1;
                    if attempts == 1 {
                        other
                            .transact("early", |tx| tx.put("early", b"1\n").map(|_| ()))
                            .unwrap();
                    }
                    tx.put("late", b"2\n").map(|_| ())
                })
                .unwrap();
            assert_eq!(attempts, 2);
            let snap = store.snapshot().unwrap();
            assert_eq!(Some(snap.commit()), landed);
            assert_eq!(snap.read("early").unwrap().as_deref(), Some(&b"1\n"[..]));
            assert_eq!(snap.read("late").unwrap().as_deref(), Some(&b"2\n"[..]));
            assert_eq!(snap.count_records("runs").unwrap(), 36);
            let (page, more) = snap.page_records("runs", None, 10).unwrap();
            assert_eq!(page.len(), 10);
            assert!(more);
            assert!(page.windows(2).all(|w| w[0] < w[1]));
            let diff = snap.diff(&first).unwrap();
            assert_eq!(diff.len(), 36 + 3, "{diff:?}");
            let history = store.history(100).unwrap();
            assert_eq!(history.len(), 43);
            assert_eq!(history[0].1, "late");
            assert_eq!(history[42].1, "init: empty Datakit project");
            let walked: Vec<(String, Oid)> = snap.walk("").unwrap();
            trees.push((snap.dir_id("").unwrap(), walked, page));
        }
        assert_eq!(trees[0], trees[1]);
        // Every object lives in the memory backend: one per commit, record and directory.
        assert!(memory.len() > 43 + 36);
    }

    /// Object IDs print and parse as git's 40 hex digits; anything else is refused,
    /// quoting what was given.
    /// Directories are edited by the records layer: a directory emptied by a removal goes,
    /// and so do its parents left empty; a record that is not a directory survives a
    /// removal below it; the same edits give the same directory IDs as git's own tree
    /// of the same content (checked by `git` itself), and the next view reads them.
    #[test]
    fn directories_are_edited_as_git_would_write_them() {
        let dir = tempfile::tempdir().unwrap();
        let git_dir = dir.path().join("git");
        let store = Store::init(&git_dir).unwrap();
        store
            .transact("add", |tx| {
                tx.put("a/b/c.json", b"1")?;
                tx.put("a/b/d.json", b"2")?;
                tx.put("a/e.json", b"3")?;
                tx.put("f", b"4")?;
                Ok(())
            })
            .unwrap();
        store
            .transact("remove", |tx| {
                tx.remove("a/b/c.json");
                tx.remove("a/b/d.json");
                tx.remove("f/x.json");
                Ok(())
            })
            .unwrap();
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.read("a/e.json").unwrap().as_deref(), Some(&b"3"[..]));
        assert_eq!(snap.read("f").unwrap().as_deref(), Some(&b"4"[..]));
        assert!(snap.dir_id("a/b").unwrap().is_none(), "emptied, gone");
        let git = |args: &[&str]| crate::pack::tests::git_in(&git_dir, args);
        let listed = git(&["ls-tree", "-r", "--name-only", "refs/heads/main"]);
        assert_eq!(
            listed
                .lines()
                .filter(|l| *l != "format")
                .collect::<Vec<_>>(),
            ["a/e.json", "f"]
        );
        git(&["fsck", "--strict"]);
        // git, given the entries of `a`, writes the same tree (the same ID).
        let ours = snap.dir_id("a").unwrap().unwrap().to_hex();
        let entries = git(&["ls-tree", "refs/heads/main:a"]);
        let mut mktree = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&git_dir)
            .args(["mktree"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(mktree.stdin.as_mut().unwrap(), entries.as_bytes()).unwrap();
        let theirs = mktree.wait_with_output().unwrap();
        assert_eq!(String::from_utf8(theirs.stdout).unwrap().trim(), ours);
    }

    #[test]
    fn object_ids_are_hex() {
        let hex = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391";
        let id: Oid = hex.parse().unwrap();
        assert_eq!(id.to_string(), hex);
        assert_eq!(id.to_hex(), hex);
        assert_eq!(id.short(8), "e69de29b");
        assert_eq!(format!("{id:?}"), format!("Oid({hex})"));
        for bad in ["e69de29b", "not-hex", ""] {
            let err = Oid::from_hex(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    fn run_path(hex: &str, ext: &str) -> String {
        format!(
            "runs/{}/{}/{}/{}/{hex}.{ext}",
            &hex[..1],
            &hex[1..2],
            &hex[2..3],
            &hex[3..4]
        )
    }

    /// A commit made from async code leaves the executor free: on a runtime with a single
    /// worker thread, a task that commits waits, inside its commit, for another task to
    /// answer. Without handing the worker over that would never happen (the wait gives
    /// up after a minute, and the test fails).
    #[test]
    fn a_commit_does_not_stall_the_executor() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("git")).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (ping, mut pinged) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (pong, ponged) = std::sync::mpsc::channel::<()>();
        let answered = runtime.block_on(async move {
            let other = tokio::spawn(async move {
                pinged.recv().await.unwrap();
                pong.send(()).unwrap();
            });
            let committer = tokio::spawn(async move {
                store
                    .transact("a commit that waits for another task", |tx| {
                        ping.send(()).unwrap();
                        let answered = ponged.recv_timeout(Duration::from_secs(60)).is_ok();
                        tx.put("answered", if answered { b"yes" } else { b"no" })?;
                        Ok(answered)
                    })
                    .map(|(answered, _)| answered)
            });
            other.await.unwrap();
            committer.await.unwrap().unwrap()
        });
        assert!(
            answered,
            "the other task did not run while a commit blocked"
        );
    }

    /// Commits of whole, similar, incompressible records pass the threshold: `git repack`
    /// delta-compresses the packs in the background, and every record still reads back.
    #[test]
    fn a_doubled_store_is_delta_compressed_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let git_dir = dir.path().join("git");
        let store = Store::init(&git_dir).unwrap();
        let mut base = vec![0u8; 64 << 10];
        blake3::Hasher::new()
            .update(b"base")
            .finalize_xof()
            .fill(&mut base);
        let record = |i: u32| {
            let mut r = base.clone();
            r[..4].copy_from_slice(&i.to_le_bytes());
            r
        };
        let n = 2 * DELTA_MIN_BYTES as u32 / base.len() as u32;
        for i in 0..n {
            store
                .transact("record", |tx| {
                    tx.put(&format!("big/{i}"), &record(i)).map(|_| ())
                })
                .unwrap();
        }
        let marker = git_dir.join("dkt-packed-bytes");
        let packed = || -> u64 {
            std::fs::read_to_string(&marker)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(u64::MAX)
        };
        // (A guard against a hang, not a timing: the repack takes under a second here, but
        // runs at a lower priority, so other work on a saturated machine can hold it up for
        // a long while: it once took over a minute beside a CI build.)
        //
        // A repack takes the packs there when it starts; what commits write meanwhile counts
        // towards the size it leaves (so the next one is due at twice that), and how many
        // land meanwhile depends on the machine. So records are added, one at a time and
        // only while no repack runs, until one has run over (nearly) all of them.
        let lock = git_dir.join("objects/pack/dtk-merge.lock");
        let start = Instant::now();
        let patience = Duration::from_secs(300);
        let mut written = n;
        while packed() > DELTA_MIN_BYTES / 4 && start.elapsed() < patience {
            if lock.exists() || written >= 3 * n {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            store
                .transact("record", |tx| {
                    tx.put(&format!("big/{written}"), &record(written))
                        .map(|_| ())
                })
                .unwrap();
            written += 1;
        }
        assert!(
            packed() < DELTA_MIN_BYTES / 4,
            "{written} records of 64 KiB were not delta-compressed: {} bytes",
            packed()
        );
        // The repack held the merge lock and gave it back.
        while lock.exists() && start.elapsed() < patience {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!lock.exists());
        // Its list of packs went with it.
        assert!(!git_dir
            .join("objects/pack")
            .join(crate::pack::REPACKING)
            .exists());
        let snap = store.snapshot().unwrap();
        for i in 0..written {
            assert_eq!(snap.read(&format!("big/{i}")).unwrap().unwrap(), record(i));
        }
    }

    /// Where files cannot be made without names (another OS, a filesystem without
    /// `O_TMPFILE`), packs are written under temporary names and the branch moves through
    /// gix: the same commits, the same records, nothing left behind, and git finds the
    /// store sound.
    #[test]
    fn without_unnamed_files_commits_take_the_usual_way() {
        let dir = tempfile::tempdir().unwrap();
        let git_dir = dir.path().join("git");
        let store = Store::init(&git_dir).unwrap();
        store
            .transact("one", |tx| tx.put("a/one", b"1\n").map(|_| ()))
            .unwrap();
        crate::unnamed::set_works(false);
        let done = (0..30).try_for_each(|i| {
            store
                .transact("more", |tx| tx.put(&format!("b/{i}"), b"2\n").map(|_| ()))
                .map(|_| ())
        });
        crate::unnamed::set_works(true);
        done.unwrap();
        store
            .transact("last", |tx| tx.put("c/last", b"3\n").map(|_| ()))
            .unwrap();
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.read("a/one").unwrap().unwrap(), b"1\n");
        assert_eq!(snap.read("b/29").unwrap().unwrap(), b"2\n");
        assert_eq!(snap.read("c/last").unwrap().unwrap(), b"3\n");
        let git = |args: &[&str]| crate::pack::tests::git_in(&git_dir, args);
        assert_eq!(git(&["rev-list", "--count", BRANCH]).trim(), "33");
        // (The store's maintenance may still be merging packs, holding its lock till done:
        // dropping the store waits for it.)
        drop(store);
        git(&["fsck", "--strict"]);
        let left: Vec<String> = std::fs::read_dir(git_dir.join("objects/pack"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("tmp_") || n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(!git_dir.join("refs/heads/main.lock").exists());
    }

    /// The branch's replaced file keeps a second name only until its commit is complete
    /// (one left by a killed process goes when the store is next opened), and a move got
    /// ready for another commit (see [`MetadataStore::prepare_move`]) is not the one made.
    #[test]
    fn replaced_branch_files_go_and_only_the_move_made_counts() {
        let dir = tempfile::tempdir().unwrap();
        let git_dir = dir.path().join("git");
        let store = Store::init(&git_dir).unwrap();
        let kept = git_dir.join("dtk-replaced");
        let names = || -> Vec<String> {
            std::fs::read_dir(&kept)
                .map(|d| {
                    d.map(|e| e.unwrap().file_name().into_string().unwrap())
                        .collect()
                })
                .unwrap_or_default()
        };
        for i in 0..5 {
            store
                .transact("one", |tx| tx.put(&format!("a/{i}"), b"1\n").map(|_| ()))
                .unwrap();
        }
        crate::unnamed::settle();
        assert!(kept.is_dir(), "the second names are made there");
        assert_eq!(names(), Vec::<String>::new());
        // A move got ready for an object that is not the commit made: the branch still
        // names the commit, as git reads it.
        let blob = store
            .transact("blob", |tx| tx.put("b/x", b"2\n"))
            .unwrap()
            .0;
        store.backend.prepare_move(blob);
        let (_, commit) = store
            .transact("two", |tx| tx.put("c/y", b"3\n").map(|_| ()))
            .unwrap();
        let git = |args: &[&str]| crate::pack::tests::git_in(&git_dir, args);
        let commit = commit.unwrap();
        assert_eq!(git(&["rev-parse", BRANCH]).trim(), commit.to_string());
        assert_eq!(store.head().unwrap(), commit);
        drop(store);
        git(&["fsck", "--strict"]);
        // Left by a process killed mid-commit: gone on the next open.
        std::fs::write(kept.join("999999-0"), b"old\n").unwrap();
        let store = Store::open(&git_dir).unwrap();
        assert_eq!(names(), Vec::<String>::new());
        assert_eq!(
            store.snapshot().unwrap().read("c/y").unwrap().unwrap(),
            b"3\n"
        );
    }

    #[test]
    fn pages_follow_name_order_and_counts_follow_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("git")).unwrap();
        let mut ids: Vec<String> = (0..300u32)
            .map(|i| blake3::hash(&i.to_le_bytes()).to_hex().to_string())
            .collect();
        store
            .transact("records", |tx| {
                for id in &ids {
                    tx.put(&run_path(id, "json"), b"{}")?;
                    tx.put(&run_path(id, "log"), b"log")?;
                }
                Ok(())
            })
            .unwrap();
        ids.sort();
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.count_records("runs").unwrap(), 300);
        assert_eq!(snap.count_records("nothing-here").unwrap(), 0);
        for limit in [1, 7, 50, 299, 300, 1000] {
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let (page, more) = snap.page_records("runs", after.as_deref(), limit).unwrap();
                assert!(page.len() <= limit);
                seen.extend(page.iter().cloned());
                if !more {
                    break;
                }
                after = page.last().cloned();
            }
            assert_eq!(seen, ids, "limit {limit}");
        }
        // A cursor that is not a stored name still starts the page after it.
        let (page, _) = snap.page_records("runs", Some(&ids[10][..5]), 3).unwrap();
        let want: Vec<&String> = ids
            .iter()
            .filter(|i| i.as_str() > &ids[10][..5])
            .take(3)
            .collect();
        assert_eq!(page.iter().collect::<Vec<_>>(), want);

        // One more record: the remembered counts of unchanged directories still hold.
        let extra = blake3::hash(b"extra").to_hex().to_string();
        store
            .transact("one more", |tx| {
                tx.put(&run_path(&extra, "json"), b"{}").map(|_| ())
            })
            .unwrap();
        assert_eq!(
            store.snapshot().unwrap().count_records("runs").unwrap(),
            301
        );
        assert_eq!(
            snap.count_records("runs").unwrap(),
            300,
            "the old view is unchanged"
        );
    }
}
