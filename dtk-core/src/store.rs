//! The metadata store: every record of a project, committed to a bare git repository.
//!
//! The store is one branch, `refs/heads/main`, of the repository in `.dkt/.git`. Its tree
//! holds one JSON file per record (layout in `docs/format.md`). Each change is one
//! commit; the branch is moved by compare-and-swap, so concurrent writers retry on top of
//! each other instead of losing updates, and objects are always written before the ref,
//! so a process killed at any point leaves the last committed state intact.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gix::bstr::ByteSlice;
use gix::objs::tree::EntryKind;
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
use gix::refs::Target;
use gix::ObjectId;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::signing::SigningKey;
use crate::{Error, Result};

/// The branch holding the project's records.
pub const BRANCH: &str = "refs/heads/main";

/// The content of the `format` file at the root of every store.
pub const FORMAT: &str = "dtk-store 4\n";

/// How long a writer keeps retrying a contended update before giving up.
const CAS_TIMEOUT: Duration = Duration::from_secs(120);

/// How many packs the store lets accumulate before merging them (see
/// [`Store::maybe_pack`]).
const PACK_LIMIT: usize = 24;

/// The size of packs below which the store is never delta-compressed in the background
/// (see `Store::maybe_delta_compress`).
const DELTA_MIN_BYTES: u64 = 4 << 20;

/// A ref lock file older than this was left by a dead process (a live writer holds it for
/// well under a millisecond).
const STALE_LOCK_AGE: Duration = Duration::from_secs(10);

/// Open the repository in `git_dir`, ignoring the user's and the system's git
/// configuration.
fn open_repo(git_dir: &Path) -> Result<gix::ThreadSafeRepository> {
    // Every commit adds a small pack until they are merged: leave gix room for many (a
    // slot per pack index).
    let options = gix::open::Options::isolated().object_store_slots(
        gix::odb::store::init::Slots::AsNeededByDiskState {
            multiplier: 2.0,
            minimum: 1024,
        },
    );
    let repo = gix::open_opts(git_dir, options).map_err(gix_err(format!(
        "cannot open the metadata repository {}",
        git_dir.display()
    )))?;
    Ok(repo.into_sync())
}

fn gix_err(message: impl Into<String>) -> impl FnOnce(gix::Error) -> Error {
    let message = message.into();
    move |e| Error::store(message, e)
}

/// The git-backed metadata store of a project.
#[derive(Clone)]
pub struct Store {
    /// Replaced by a freshly opened one every [`REOPEN_EVERY`] commits and when a lookup
    /// keeps failing (see [`Store::reopen`]); clones share it.
    repo: std::sync::Arc<std::sync::RwLock<gix::ThreadSafeRepository>>,
    /// Commits made through this handle (and its clones) since it was last opened.
    commits: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// The key that signs new commits, if the project has one (shared by clones of the
    /// handle, so a key added later signs through every handle).
    signer: std::sync::Arc<std::sync::RwLock<Option<std::sync::Arc<SigningKey>>>>,
    /// What this handle remembers of the objects it read, shared by its snapshots.
    memo: std::sync::Arc<Memo>,
    git_dir: PathBuf,
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
    counts: std::sync::Mutex<ById<usize>>,
    trees: std::sync::Mutex<ById<std::sync::Arc<Dir>>>,
    /// Small blobs and their total size.
    blobs: std::sync::Mutex<(usize, Blobs)>,
}

/// A map keyed by object ID, hashed by the ID's own first bytes (it is already a hash).
type ById<V> = gix::hashtable::HashMap<ObjectId, V>;

/// Blobs by object ID.
type Blobs = ById<std::sync::Arc<[u8]>>;

impl Memo {
    /// The most directory counts and decoded directories remembered.
    const MAX_TREES: usize = 1 << 18;
    /// The largest blob remembered, and the most bytes of blobs.
    const MAX_BLOB: usize = 64 << 10;
    const MAX_BLOB_BYTES: usize = 64 << 20;

    fn count(&self, tree: &ObjectId) -> Option<usize> {
        self.counts.lock().ok()?.get(tree).copied()
    }

    fn put_count(&self, tree: ObjectId, count: usize) {
        if let Ok(mut m) = self.counts.lock() {
            if m.len() >= Self::MAX_TREES {
                m.clear();
            }
            m.insert(tree, count);
        }
    }

    fn tree(&self, id: &ObjectId) -> Option<std::sync::Arc<Dir>> {
        self.trees.lock().ok()?.get(id).cloned()
    }

    fn put_tree(&self, id: ObjectId, dir: std::sync::Arc<Dir>) {
        if let Ok(mut m) = self.trees.lock() {
            if m.len() >= Self::MAX_TREES {
                m.clear();
            }
            m.insert(id, dir);
        }
    }

    fn blob(&self, id: &ObjectId) -> Option<std::sync::Arc<[u8]>> {
        self.blobs.lock().ok()?.1.get(id).cloned()
    }

    fn put_shared_blob(&self, id: ObjectId, data: &std::sync::Arc<[u8]>) {
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

/// How many commits a long-lived handle makes before it opens the repository afresh. Every
/// commit adds a pack and merging deletes packs; gix's object store tracks each in a slot
/// and degrades (then fails to find new packs) after thousands of them in one process.
const REOPEN_EVERY: u32 = 256;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("git_dir", &self.git_dir)
            .finish()
    }
}

/// The signature of every commit: fixed, so commits never depend on the user's git
/// identity (CI has none).
fn signature() -> gix::actor::Signature {
    gix::actor::Signature {
        name: "dtk".into(),
        email: "dtk@localhost".into(),
        time: gix::date::Time::now_utc(),
    }
}

impl Store {
    /// Create a new store in `git_dir` (which must not exist yet) with its first commit.
    pub fn init(git_dir: &Path) -> Result<Store> {
        Store::init_signed(git_dir, None)
    }

    /// Create a new store in `git_dir` (which must not exist yet) whose commits, the first
    /// one included, are signed with `signer` (unsigned when `None`).
    pub fn init_signed(
        git_dir: &Path,
        signer: Option<std::sync::Arc<SigningKey>>,
    ) -> Result<Store> {
        if git_dir.exists() {
            return Err(Error::AlreadyExists {
                what: "metadata repository",
                name: git_dir.display().to_string(),
            });
        }
        let repo = gix::init_bare(git_dir).map_err(gix_err(format!(
            "cannot create a git repository in {}",
            git_dir.display()
        )))?;
        drop(repo);
        let head = git_dir.join("HEAD");
        std::fs::write(&head, format!("ref: {BRANCH}\n")).map_err(|e| Error::io(&head, e))?;
        let store = Store::open(git_dir)?;
        store.set_signer(signer);
        store.commit_initial()?;
        Ok(store)
    }

    /// Open the store in `git_dir`, ignoring the user's and the system's git configuration.
    pub fn open(git_dir: &Path) -> Result<Store> {
        Ok(Store {
            repo: std::sync::Arc::new(std::sync::RwLock::new(open_repo(git_dir)?)),
            commits: Default::default(),
            signer: Default::default(),
            memo: Default::default(),
            git_dir: git_dir.to_owned(),
        })
    }

    /// Sign every commit made from now on through this handle and its clones with `key`
    /// (`None`: unsigned commits). See [`crate::signing`].
    pub fn set_signer(&self, key: Option<std::sync::Arc<SigningKey>>) {
        *self.signer.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    /// The key that signs this handle's commits, if any.
    pub fn signer(&self) -> Option<std::sync::Arc<SigningKey>> {
        self.signer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Write a commit object of `tree` on `parents`, signed in git's SSH signature format
    /// (a `gpgsig` header after `committer`) when the store has a signing key.
    fn write_commit(
        &self,
        repo: &gix::Repository,
        message: &str,
        tree: ObjectId,
        parents: &[ObjectId],
    ) -> Result<ObjectId> {
        let sig = signature();
        let mut commit = gix::objs::Commit {
            tree,
            parents: parents.iter().copied().collect(),
            author: sig.clone(),
            committer: sig,
            encoding: None,
            message: message.into(),
            extra_headers: Vec::new(),
        };
        if let Some(key) = self.signer() {
            // The signed payload is the commit exactly as it is without the header: git
            // strips `gpgsig` (and its continuation lines) and checks what remains.
            let mut payload = Vec::with_capacity(512);
            gix::objs::WriteTo::write_to(&commit, &mut payload)
                .map_err(|e| Error::store("cannot encode a commit", e))?;
            let armored = key.sign_commit(&payload)?;
            commit.extra_headers.push(("gpgsig".into(), armored.into()));
        }
        Ok(repo
            .write_object(&commit)
            .map_err(gix_err("cannot write a commit"))?
            .detach())
    }

    /// The raw bytes of commit `id` (headers, a blank line, the message), as git hashes them.
    pub fn commit_bytes(&self, id: ObjectId) -> Result<Vec<u8>> {
        let repo = self.repo();
        let c = find_retrying(|| repo.find_commit(id))
            .map_err(gix_err(format!("cannot read commit {id}")))?;
        Ok(c.data.clone())
    }

    /// Write the objects `repo` holds in memory as one pack.
    fn persist(&self, repo: &gix::Repository) -> Result<()> {
        let objects = repo.objects.reset_object_memory().unwrap_or_default();
        crate::pack::write(
            &self.git_dir.join("objects/pack"),
            objects
                .iter()
                .map(|(id, (kind, data))| (*id, *kind, data.as_slice())),
        )?;
        Ok(())
    }

    /// Open the repository afresh for this handle and its clones (views already taken keep
    /// the one they had).
    fn reopen(&self) -> Result<()> {
        let fresh = open_repo(&self.git_dir)?;
        *self.repo.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.commits.store(0, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The repository's directory (`.dkt/.git`).
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    fn repo(&self) -> gix::Repository {
        let mut r = self
            .repo
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .to_thread_local();
        r.object_cache_size_if_unset(16 * 1024 * 1024);
        r
    }

    fn tip(&self, repo: &gix::Repository) -> Result<Option<ObjectId>> {
        let r = repo
            .try_find_reference(BRANCH)
            .map_err(gix_err(format!("cannot read {BRANCH}")))?;
        Ok(r.and_then(|r| r.target().try_id().map(|id| id.to_owned())))
    }

    /// A read-only view of the records at the current tip.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let repo = self.repo();
        let commit = self.tip(&repo)?.ok_or_else(|| {
            Error::corrupt(format!("{BRANCH} is missing in {}", self.git_dir.display()))
        })?;
        match Snapshot::at(repo, commit, self.memo.clone()) {
            Ok(s) => Ok(s),
            Err(e) => {
                // Perhaps gix lost track of the packs (see `REOPEN_EVERY`): look once more
                // through a fresh handle before reporting the store as broken.
                tracing::debug!(error = %e, "reading the tip failed; reopening the store");
                self.reopen()?;
                Snapshot::at(self.repo(), commit, self.memo.clone())
            }
        }
    }

    fn commit_initial(&self) -> Result<()> {
        let repo = self.repo().with_object_memory();
        let blob = repo
            .write_blob(FORMAT)
            .map_err(gix_err("cannot write the format record"))?
            .detach();
        let mut editor = repo
            .edit_tree(ObjectId::empty_tree(repo.object_hash()))
            .map_err(gix_err("cannot edit the empty tree"))?;
        editor
            .upsert("format", EntryKind::Blob, blob)
            .map_err(gix_err("cannot add the format record"))?;
        // A signed project records its key's public half from the first commit on.
        if let Some(key) = self.signer() {
            let line = key.allowed_signers_line()?;
            let blob = repo
                .write_blob(line.as_bytes())
                .map_err(gix_err("cannot write the signer record"))?
                .detach();
            editor
                .upsert(key.record_path().as_str(), EntryKind::Blob, blob)
                .map_err(gix_err("cannot add the signer record"))?;
        }
        let tree = editor
            .write()
            .map_err(gix_err("cannot write a tree"))?
            .detach();
        let commit = self.write_commit(&repo, "init: empty Datakit project", tree, &[])?;
        self.persist(&repo)?;
        self.move_branch(&repo, None, commit)
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
    ) -> Result<(T, Option<ObjectId>)> {
        blocking(|| self.commit_change(message, None, change))
    }

    /// Like [`transact`](Self::transact), but the commit is a merge: its second parent is
    /// `theirs` (a commit already in this repository, fetched from another copy of the
    /// project), and it is made even when the merged records equal ours, so that `theirs`
    /// becomes part of this history.
    pub fn merge<T>(
        &self,
        message: &str,
        theirs: ObjectId,
        change: impl FnMut(&mut Tx) -> Result<T>,
    ) -> Result<(T, ObjectId)> {
        let (value, commit) = blocking(|| self.commit_change(message, Some(theirs), change))?;
        let commit = commit.ok_or_else(|| Error::corrupt("a merge made no commit"))?;
        Ok((value, commit))
    }

    /// The commit the branch points to now.
    pub fn head(&self) -> Result<ObjectId> {
        self.tip(&self.repo())?
            .ok_or_else(|| Error::corrupt(format!("{BRANCH} is missing")))
    }

    /// The commit a reference (`refs/remotes/origin/main`) points to, if it exists.
    pub fn reference(&self, name: &str) -> Result<Option<ObjectId>> {
        let repo = self.repo();
        let r = repo
            .try_find_reference(name)
            .map_err(gix_err(format!("cannot read {name}")))?;
        Ok(r.and_then(|r| r.target().try_id().map(|id| id.to_owned())))
    }

    /// A read-only view of the records at `commit`.
    pub fn snapshot_at(&self, commit: ObjectId) -> Result<Snapshot> {
        Snapshot::at(self.repo(), commit, self.memo.clone())
    }

    /// Move the branch from `from` to `to` (a descendant of it), as a compare-and-swap:
    /// fails if the branch moved meanwhile.
    pub fn fast_forward(&self, from: ObjectId, to: ObjectId) -> Result<()> {
        self.move_branch(&self.repo(), Some(from), to)
    }

    fn commit_change<T>(
        &self,
        message: &str,
        theirs: Option<ObjectId>,
        mut change: impl FnMut(&mut Tx) -> Result<T>,
    ) -> Result<(T, Option<ObjectId>)> {
        // New objects stay in memory until the commit is complete, then go to disk as one
        // pack (see `pack`).
        let repo = self.repo().with_object_memory();
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            let base = self
                .tip(&repo)?
                .ok_or_else(|| Error::corrupt(format!("{BRANCH} is missing")))?;
            let mut tx = Tx {
                snap: Snapshot::at(repo.clone(), base, self.memo.clone())?,
                staged: BTreeMap::new(),
            };
            let value = change(&mut tx)?;
            if tx.staged.is_empty() && theirs.is_none() {
                return Ok((value, None));
            }
            let repo = &tx.snap.repo;
            let base_tree = tx.snap.tree;
            let tree = find_retrying(|| {
                let mut editor = repo.edit_tree(base_tree)?;
                for (path, entry) in &tx.staged {
                    match entry {
                        Some(id) => editor.upsert(path.as_str(), EntryKind::Blob, *id),
                        None => editor.remove(path.as_str()),
                    }?;
                }
                Ok(editor.write()?.detach())
            })
            .map_err(gix_err("cannot write the records tree"))?;
            if tree == base_tree && theirs.is_none() {
                return Ok((value, None));
            }
            let commit = self.write_commit(
                repo,
                message,
                tree,
                &std::iter::once(base).chain(theirs).collect::<Vec<_>>(),
            )?;
            self.persist(repo)?;
            match self.move_branch(repo, Some(base), commit) {
                Ok(()) => {
                    self.maybe_pack();
                    let n = self
                        .commits
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n + 1 >= REOPEN_EVERY {
                        // The commit has landed: a failure here must not report it as failed.
                        if let Err(e) = self.reopen() {
                            tracing::warn!(error = %e, "could not reopen the metadata store");
                        }
                    }
                    return Ok((value, Some(commit)));
                }
                Err(e) => {
                    let moved = self.tip(repo)? != Some(base);
                    let locked = self.lock_held()?;
                    if !(moved || locked) {
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

    /// Keep reads fast as records accumulate. Each commit adds one small pack; when there
    /// are more than [`PACK_LIMIT`], the smallest are merged (see `pack::maintain`: byte
    /// copies, no decompression, geometric like `git repack --geometric=2`). Loose objects
    /// (written by other tools) are left to `git gc --auto`, started in the background
    /// when git's own estimate from one of the 256 object directories says so. Errors here
    /// never fail the commit that has already landed.
    fn maybe_pack(&self) {
        let objects = self.git_dir.join("objects");
        let packs = std::fs::read_dir(objects.join("pack"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().as_encoded_bytes().ends_with(b".idx"))
                    .count()
            })
            .unwrap_or(0);
        if packs > PACK_LIMIT {
            if let Err(e) = crate::pack::maintain(&objects.join("pack"), PACK_LIMIT) {
                tracing::warn!(error = %e, "could not merge the store's packs");
            }
            self.maybe_delta_compress();
        }
        let loose = std::fs::read_dir(objects.join("17"))
            .map(|d| d.count())
            .unwrap_or(0);
        // git's own gc.auto default: about 6,700 loose objects, i.e. 27 in one directory.
        if loose <= 27 {
            return;
        }
        let script = "git --git-dir \"$1\" -c gc.autoDetach=false gc --auto --quiet </dev/null >/dev/null 2>&1 &";
        let _ = std::process::Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(&self.git_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }

    /// Our packs hold whole objects (no deltas), so a store grows about twice as fast
    /// as git would pack it. When the packs have doubled since the last delta
    /// compression (and pass [`DELTA_MIN_BYTES`]), `git repack` packs them again with
    /// deltas in the background, at a lower priority, and records the size it left in
    /// `dkt-packed-bytes`: each byte is recompressed O(1) times on average, and the store
    /// stays within about 1.6x of a fully delta-compressed one. Without `git`, nothing
    /// happens (the store stays readable, only larger).
    fn maybe_delta_compress(&self) {
        let pack_dir = self.git_dir.join("objects/pack");
        let size: u64 = std::fs::read_dir(&pack_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        let marker = self.git_dir.join("dkt-packed-bytes");
        let last: Option<u64> = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let due = match last {
            // An older store: start counting from here.
            None => false,
            Some(last) => size > DELTA_MIN_BYTES && size > last.saturating_mul(2),
        };
        if !due || self.git_dir.join("gc.pid").exists() {
            if last.is_none() {
                let _ = std::fs::write(&marker, format!("{size}\n"));
            }
            return;
        }
        // The repack holds the merge lock while it runs (merging packs away under it
        // would make it fail); when a merge holds it now, the next commit tries again.
        let lock = self.git_dir.join("objects/pack/dtk-merge.lock");
        let me = crate::engine::worker_id();
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(mut f) => {
                let _ = std::io::Write::write_all(&mut f, format!("{me} repack").as_bytes());
            }
            Err(_) => return,
        }
        // Written before it starts, so that the commits made meanwhile start no other.
        let _ = std::fs::write(&marker, format!("{size}\n"));
        tracing::debug!(
            bytes = size,
            "delta-compressing the store's packs in the background"
        );
        // The shell names itself in the lock (`host:pid repack`) and removes it at the end.
        // `-f` computes deltas afresh (our packs have none to reuse); `-A` keeps
        // unreachable objects (loose), so a commit whose pack is written but whose branch
        // has not moved yet loses nothing.
        let script = r#"cd "$1" || exit 1
echo "$2:$$ repack" > objects/pack/dtk-merge.lock
nice -n 10 git --git-dir . repack -A -d -f -q \
  && du -sb objects/pack | cut -f1 > dkt-packed-bytes.tmp \
  && mv dkt-packed-bytes.tmp dkt-packed-bytes
rm -f objects/pack/dtk-merge.lock"#;
        let host = me.rsplit_once(':').map(|(h, _)| h).unwrap_or_default();
        let spawned = std::process::Command::new("sh")
            .args([
                "-c",
                r#"(sh -c "$3" sh "$1" "$2") </dev/null >/dev/null 2>&1 &"#,
                "sh",
            ])
            .arg(&self.git_dir)
            .arg(host)
            .arg(script)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !spawned.is_ok_and(|s| s.success()) {
            let _ = std::fs::remove_file(&lock);
        }
    }

    /// Pack the repository now (`git gc`), as the background maintenance does; waits for a
    /// background `git gc` that is already running.
    pub fn pack(&self) -> Result<()> {
        blocking(|| self.pack_now())
    }

    fn pack_now(&self) -> Result<()> {
        let started = Instant::now();
        loop {
            let out = std::process::Command::new("git")
                .arg("--git-dir")
                .arg(&self.git_dir)
                .args(["gc", "--quiet"])
                .output()
                .map_err(|e| Error::io("git", e))?;
            if out.status.success() {
                return Ok(());
            }
            let busy = self.git_dir.join("gc.pid").exists();
            if !busy || started.elapsed() > Duration::from_secs(600) {
                return Err(Error::corrupt(format!(
                    "git gc failed in {}: {}",
                    self.git_dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// True when a lock file that guards the branch exists: the branch's own lock, or
    /// `packed-refs.lock` (once `git gc` has packed the branch, every update of it also
    /// takes that one). A lock older than [`STALE_LOCK_AGE`] was left by a killed process
    /// (a live writer holds it for well under a millisecond): it is removed (the update it
    /// guarded never happened, since a lock is renamed into place on success) and `true` is
    /// returned so the caller retries. While a live `git gc` of this repository runs (its
    /// `gc.pid` names a process alive on this host), its locks are waited for, whatever
    /// their age.
    fn lock_held(&self) -> Result<bool> {
        let mut held = false;
        for lock in [
            self.git_dir.join(format!("{BRANCH}.lock")),
            self.git_dir.join("packed-refs.lock"),
        ] {
            let age = match std::fs::metadata(&lock) {
                Ok(m) => m
                    .modified()
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&lock, e)),
            };
            held = true;
            if age > STALE_LOCK_AGE && !self.gc_running() {
                tracing::warn!(lock = %lock.display(), "removing a stale lock left by a dead process");
                match std::fs::remove_file(&lock) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(&lock, e)),
                }
            }
        }
        Ok(held)
    }

    /// True while a `git gc` of this repository runs on this machine (`gc.pid` holds
    /// `PID HOSTNAME`, as git writes it, of a live process).
    fn gc_running(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(self.git_dir.join("gc.pid")) else {
            return false;
        };
        let mut parts = text.split_whitespace();
        let (Some(pid), Some(host)) = (parts.next(), parts.next()) else {
            return false;
        };
        let worker = format!("{host}:{pid}");
        crate::engine::pid_alive(&worker) == Some(true)
    }

    fn move_branch(
        &self,
        repo: &gix::Repository,
        old: Option<ObjectId>,
        new: ObjectId,
    ) -> Result<()> {
        let expected = match old {
            Some(id) => PreviousValue::MustExistAndMatch(Target::Object(id)),
            None => PreviousValue::MustNotExist,
        };
        let edit = RefEdit {
            change: Change::Update {
                log: LogChange {
                    mode: RefLog::AndReference,
                    force_create_reflog: false,
                    message: "dtk".into(),
                },
                expected,
                new: Target::Object(new),
            },
            name: BRANCH
                .try_into()
                .map_err(|e| Error::store("bad branch name", e))?,
            deref: false,
        };
        let sig = signature();
        let mut buf = gix::date::parse::TimeBuf::default();
        repo.edit_references_as([edit], Some(sig.to_ref(&mut buf)))
            .map_err(gix_err(format!("cannot move {BRANCH}")))?;
        // The ref's new content and its rename on the disk (the objects were synced
        // before: see `pack::put`).
        let loose = self.git_dir.join(BRANCH);
        if let Ok(f) = std::fs::File::open(&loose) {
            f.sync_all().map_err(|e| Error::io(&loose, e))?;
        }
        if let Some(dir) = loose.parent() {
            crate::pack::sync_dir(dir)?;
        }
        Ok(())
    }

    /// The commit history of the branch, newest first, as (commit id, message) pairs.
    pub fn history(&self, limit: usize) -> Result<Vec<(ObjectId, String)>> {
        let repo = self.repo();
        let Some(tip) = self.tip(&repo)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut cur = Some(tip);
        while let Some(id) = cur {
            if out.len() >= limit {
                break;
            }
            let c =
                find_retrying(|| repo.find_commit(id)).map_err(gix_err("cannot read a commit"))?;
            let msg = c
                .message_raw()
                .map_err(gix_err("cannot read a commit message"))?
                .to_str_lossy()
                .trim_end()
                .to_owned();
            cur = c.parent_ids().next().map(|p| p.detach());
            out.push((id, msg));
        }
        Ok(out)
    }
}

/// Look an object up, again after a short pause when that fails, up to about 30 ms in all.
/// A concurrent repack moves objects from small packs into a merged one and then deletes
/// the small ones; a lookup that lands in between can miss (git re-reads the pack
/// directory and retries in the same way). An object that is really missing still fails.
fn find_retrying<T>(
    mut find: impl FnMut() -> std::result::Result<T, gix::Error>,
) -> std::result::Result<T, gix::Error> {
    let mut pause = Duration::from_millis(1);
    loop {
        match find() {
            Ok(v) => return Ok(v),
            Err(e) if pause > Duration::from_millis(16) => return Err(e),
            Err(_) => {
                std::thread::sleep(pause);
                pause *= 2;
            }
        }
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
    repo: gix::Repository,
    commit: ObjectId,
    tree: ObjectId,
    /// Decoded directories, by path: each tree object is decoded at most once per view.
    dirs: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Dir>>>,
    /// The store handle's memo of objects.
    memo: std::sync::Arc<Memo>,
}

/// A decoded directory: entry name -> (object, is a directory).
type Dir = std::collections::HashMap<String, (ObjectId, bool)>;

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
    pub ours: Option<ObjectId>,
    /// Its blob in the other view.
    pub theirs: Option<ObjectId>,
}

/// An entry of a directory of the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's file name.
    pub name: String,
    /// The object it points to.
    pub id: ObjectId,
    /// True for a sub-directory.
    pub is_dir: bool,
}

impl Snapshot {
    fn at(repo: gix::Repository, commit: ObjectId, memo: std::sync::Arc<Memo>) -> Result<Snapshot> {
        let tree = find_retrying(|| repo.find_commit(commit))
            .map_err(gix_err(format!("cannot read commit {commit}")))?
            .tree_id()
            .map_err(gix_err(format!("cannot read the tree of commit {commit}")))?
            .detach();
        Ok(Snapshot {
            repo,
            commit,
            tree,
            dirs: Default::default(),
            memo,
        })
    }

    /// The commit this view shows.
    pub fn commit(&self) -> ObjectId {
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

    fn entry(&self, path: &str) -> Result<Option<(ObjectId, bool)>> {
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
                let tree = find_retrying(|| self.repo.find_tree(id)).map_err(gix_err(format!(
                    "cannot read directory {path:?} of the records"
                )))?;
                let decoded = tree
                    .decode()
                    .map_err(|e| Error::store(format!("cannot decode directory {path:?}"), e))?;
                let map: Dir = decoded
                    .entries
                    .iter()
                    .map(|e| {
                        (
                            e.filename.to_str_lossy().into_owned(),
                            (e.oid.to_owned(), e.mode.is_tree()),
                        )
                    })
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
    pub fn dir_id(&self, path: &str) -> Result<Option<ObjectId>> {
        if path.is_empty() {
            return Ok(Some(self.tree));
        }
        Ok(self.entry(path)?.filter(|(_, dir)| *dir).map(|(id, _)| id))
    }

    /// The object id of the record at `path`.
    pub fn blob_id(&self, path: &str) -> Result<Option<ObjectId>> {
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
    pub fn blob(&self, id: ObjectId) -> Result<Vec<u8>> {
        self.read_blob(id, &id.to_string())
    }

    fn read_blob(&self, id: ObjectId, path: &str) -> Result<Vec<u8>> {
        self.shared_blob(id, path).map(|data| data.to_vec())
    }

    /// The bytes of the blob `id`, shared with the handle's memo when it keeps them (a
    /// record decoded straight from them is not copied first).
    fn shared_blob(&self, id: ObjectId, path: &str) -> Result<std::sync::Arc<[u8]>> {
        if let Some(data) = self.memo.blob(&id) {
            return Ok(data);
        }
        let data: std::sync::Arc<[u8]> = find_retrying(|| self.repo.find_blob(id))
            .map_err(gix_err(format!("cannot read record {path} ({id})")))?
            .data
            .as_slice()
            .into();
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
    fn tree_entries(&self, id: ObjectId, dir: &str) -> Result<Vec<DirEntry>> {
        let tree = find_retrying(|| self.repo.find_tree(id))
            .map_err(gix_err(format!("cannot read directory {dir}")))?;
        let decoded = tree
            .decode()
            .map_err(|e| Error::store(format!("cannot decode directory {dir}"), e))?;
        Ok(decoded
            .entries
            .iter()
            .map(|e| DirEntry {
                name: e.filename.to_str_lossy().into_owned(),
                id: e.oid.to_owned(),
                is_dir: e.mode.is_tree(),
            })
            .collect())
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

    fn count_tree(&self, id: ObjectId, dir: &str) -> Result<usize> {
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
    fn entry_or_root(&self, dir: &str) -> Result<Option<ObjectId>> {
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
        id: ObjectId,
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
    pub fn walk(&self, dir: &str) -> Result<Vec<(String, ObjectId)>> {
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
    staged: BTreeMap<String, Option<ObjectId>>,
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
    pub fn put(&mut self, path: &str, bytes: &[u8]) -> Result<ObjectId> {
        let id = self
            .snap
            .repo
            .write_blob(bytes)
            .map_err(gix_err(format!("cannot write record {path}")))?
            .detach();
        self.stage(path, Some(id));
        Ok(id)
    }

    /// The blob at `path`, staged or in the base view.
    pub fn blob_id(&self, path: &str) -> Result<Option<ObjectId>> {
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
    fn stage(&mut self, path: &str, entry: Option<ObjectId>) {
        self.staged.insert(path.to_owned(), entry);
        if !path.starts_with("conflicts/") {
            let report = crate::project::paths::conflict(path);
            if self.snap.blob_id(&report).ok().flatten().is_some()
                && !self.staged.contains_key(&report)
            {
                self.staged.insert(report, None);
            }
        }
    }

    /// Stage `value` as JSON at `path`.
    pub fn put_json<T: Serialize>(&mut self, path: &str, value: &T) -> Result<ObjectId> {
        self.put(path, &encode(value)?)
    }

    /// Stage an existing blob at `path` (an index entry pointing at a record).
    pub fn put_id(&mut self, path: &str, id: ObjectId) {
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
        // (A guard against a hang, not a timing: the repack takes under a second here.)
        let start = Instant::now();
        while packed() > DELTA_MIN_BYTES / 4 && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            packed() < DELTA_MIN_BYTES / 4,
            "{n} records of 64 KiB were not delta-compressed: {} bytes",
            packed()
        );
        // The repack held the merge lock and gave it back.
        let lock = git_dir.join("objects/pack/dtk-merge.lock");
        while lock.exists() && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!lock.exists());
        let snap = store.snapshot().unwrap();
        for i in 0..n {
            assert_eq!(snap.read(&format!("big/{i}")).unwrap().unwrap(), record(i));
        }
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
