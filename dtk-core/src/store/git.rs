//! The git implementation of [`MetadataStore`]: the records on the branch
//! `refs/heads/main` of a bare repository (`.dkt/.git`), read through gix.
//!
//! Each commit's new objects are written as one pack (see `crate::pack`), fsynced before
//! the branch moves; the branch moves by compare-and-swap (a ref transaction expecting the
//! old value). Packs are merged (on a thread of the committing process, which the commit
//! does not wait for) once more than [`PACK_LIMIT`] pile up, and delta-compressed by
//! `git repack` in the background when they have doubled, so the store stays near the
//! size `git gc --aggressive` would make of it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use gix::bstr::ByteSlice;
use gix::objs::tree::EntryKind;
use gix::objs::Kind;
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
use gix::refs::Target;
use gix::ObjectId;

use super::{Commit, DirEntry, MetadataStore, Objects, Oid, BRANCH};
use crate::signing::SigningKey;
use crate::{Error, Result};

/// How many packs the store lets accumulate before merging them (see
/// [`GitStore::maybe_pack`]).
const PACK_LIMIT: usize = 24;

/// git's own `gc.auto` default, about 6,700 loose objects: this many in one of the 256
/// object directories.
const LOOSE_LIMIT: usize = 27;

/// The size of packs below which the store is never delta-compressed in the background
/// (see [`GitStore::maybe_delta_compress`]).
pub(super) const DELTA_MIN_BYTES: u64 = 4 << 20;

/// How the store's background git commands (`repack`, `gc --auto`) are started, in `sh`:
/// at the lowest priority. (As idle work, `SCHED_IDLE`, it got no CPU at all while the
/// machine was saturated, a CI build say, and its merge lock kept half the packs from
/// being merged meanwhile; at `nice -n 10` a repack beside a stream of runs on two cores
/// made each run about 20% slower.)
const BACKGROUND: &str = "nice -n 19";

/// How long a held branch lock is tried again before the move gives up (the store's
/// commit loop then looks at who holds it): git's `core.filesRefLockTimeout` default.
const LOCK_PATIENCE: Duration = Duration::from_millis(100);

/// Where the branch's replaced files keep a second name until each commit is complete
/// (see [`GitStore::keep_replaced`]), in the git directory.
const REPLACED: &str = "dtk-replaced";

/// How many commits under way at once in one process get their branch file ready (see
/// [`MetadataStore::prepare_move`]); more are rare, and move the branch the usual way.
const PREPARED: usize = 8;

/// A ref lock file older than this was left by a dead process (a live writer holds it for
/// well under a millisecond).
const STALE_LOCK_AGE: Duration = Duration::from_secs(10);

/// How many commits a long-lived handle makes before it opens the repository afresh. Every
/// commit adds a pack and merging deletes packs; gix's object store tracks each in a slot
/// and degrades (then fails to find new packs) after thousands of them in one process.
const REOPEN_EVERY: u32 = 256;

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

/// The signature of every commit: fixed, so commits never depend on the user's git
/// identity (CI has none).
fn signature() -> gix::actor::Signature {
    gix::actor::Signature {
        name: "dtk".into(),
        email: "dtk@localhost".into(),
        time: gix::date::Time::now_utc(),
    }
}

/// A metadata store in a bare git repository.
pub struct GitStore {
    /// Replaced by a freshly opened one every [`REOPEN_EVERY`] commits and when a lookup
    /// keeps failing (see [`MetadataStore::refresh`]).
    repo: RwLock<gix::ThreadSafeRepository>,
    /// Commits made through this handle since it was last opened.
    commits: AtomicU32,
    /// The key that signs new commits, if the project has one.
    signer: RwLock<Option<Arc<SigningKey>>>,
    git_dir: PathBuf,
    /// Pack maintenance running in the background (see [`GitStore::maintain`]), joined
    /// before the next one starts and when the store is dropped.
    maintenance: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// Second names of the branch's files as they were before the last moves, removed
    /// once each commit is complete (see [`GitStore::keep_replaced`]).
    replaced: Mutex<Vec<PathBuf>>,
    /// The branch's next files, each written and being synced while its commit's objects
    /// are (see [`MetadataStore::prepare_move`]), with the commit it names: one per
    /// commit under way in this process, the latest last.
    prepared: Mutex<Vec<(Oid, crate::unnamed::Beside<std::io::Result<std::fs::File>>)>>,
    /// Files for the next commit's pack, made after the last one (see `unnamed::Spares`).
    pack_spares: Arc<crate::unnamed::Spares>,
    /// A file for the branch's next lock (see [`GitStore::move_branch_by_link`]).
    ref_spares: Arc<crate::unnamed::Spares>,
    /// Reading handles of the repository, kept between snapshots (see [`Idle`]).
    idle: Arc<Idle>,
}

/// Reading handles kept between the snapshots that use them: making a handle (its object
/// and pack caches, its view of the packs) and freeing it cost more than most snapshots'
/// reads. A handle holds nothing that goes stale: objects are content-addressed, refs are
/// read from disk each time, and a pack it does not know yet is looked for when an object
/// is not found.
#[derive(Default)]
struct Idle {
    handles: Mutex<Vec<gix::Repository>>,
    /// Bumped when the repository is opened afresh: handles of an older one are not kept.
    generation: AtomicU64,
}

impl Idle {
    /// The most handles kept.
    const KEEP: usize = 4;

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<gix::Repository>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A reading handle that goes back to its store's [`Idle`] handles when dropped (if that
/// store has not opened the repository afresh meanwhile); a writing one, with no home, is
/// freed.
struct Handle {
    /// `None` only while being dropped.
    repo: Option<gix::Repository>,
    home: Option<(Arc<Idle>, u64)>,
}

impl std::ops::Deref for Handle {
    type Target = gix::Repository;
    fn deref(&self) -> &gix::Repository {
        self.repo
            .as_ref()
            .expect("a handle's repository is taken only when it is dropped")
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let (Some(repo), Some((idle, generation))) = (self.repo.take(), self.home.take()) else {
            return;
        };
        // (Under the lock, as the repository is opened afresh: a handle of the old one
        // is never kept after that.)
        let mut handles = idle.lock();
        if idle.generation.load(Ordering::Relaxed) == generation && handles.len() < Idle::KEEP {
            handles.push(repo);
        }
    }
}

impl Drop for GitStore {
    fn drop(&mut self) {
        self.wait_for_maintenance();
    }
}

impl std::fmt::Debug for GitStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitStore")
            .field("git_dir", &self.git_dir)
            .finish()
    }
}

impl GitStore {
    /// Create an empty bare repository in `git_dir` (which must not exist yet) whose `HEAD`
    /// names the records' branch, and open it.
    pub fn init(git_dir: &Path) -> Result<GitStore> {
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
        GitStore::open(git_dir)
    }

    /// Open the repository in `git_dir`, ignoring the user's and the system's git
    /// configuration.
    pub fn open(git_dir: &Path) -> Result<GitStore> {
        // Second names of replaced branch files left by killed processes (removing one a
        // live process kept only frees that file sooner).
        if let Ok(kept) = std::fs::read_dir(git_dir.join(REPLACED)) {
            kept.flatten()
                .for_each(|e| drop(std::fs::remove_file(e.path())));
        }
        Ok(GitStore {
            repo: RwLock::new(open_repo(git_dir)?),
            commits: AtomicU32::new(0),
            signer: RwLock::new(None),
            git_dir: git_dir.to_owned(),
            maintenance: Default::default(),
            replaced: Mutex::new(Vec::new()),
            prepared: Mutex::new(Vec::new()),
            pack_spares: Arc::new(crate::unnamed::Spares::new(
                git_dir.join("objects/pack"),
                2,
                crate::pack::PACK_MODE,
            )),
            ref_spares: Arc::new(crate::unnamed::Spares::new(
                git_dir.join(BRANCH).parent().unwrap_or(git_dir).to_owned(),
                1,
                0o666,
            )),
            idle: Default::default(),
        })
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

    /// A reading handle: one kept idle, or a new one.
    fn reader(&self) -> Handle {
        // (The generation is read before a new handle is made: one of a repository opened
        // afresh meanwhile is then not kept.)
        let (generation, kept) = {
            let mut handles = self.idle.lock();
            let generation = self.idle.generation.load(Ordering::Relaxed);
            (generation, handles.pop())
        };
        let repo = kept.unwrap_or_else(|| self.repo());
        Handle {
            repo: Some(repo),
            home: Some((Arc::clone(&self.idle), generation)),
        }
    }

    fn find_reference(&self, name: &str) -> Result<Option<Oid>> {
        // The common case first: a loose ref holding an object ID, one small read (gix
        // would first make a repository handle and look at `packed-refs`). Anything else
        // (packed by `git gc`, symbolic, being written) goes the full way.
        if let Some(id) = Self::loose_ref(&self.git_dir.join(name)) {
            return Ok(Some(id));
        }
        let repo = self.reader();
        let r = repo
            .try_find_reference(name)
            .map_err(gix_err(format!("cannot read {name}")))?;
        Ok(r.and_then(|r| r.target().try_id().map(|id| Oid(id.to_owned()))))
    }

    /// The object ID a loose ref file at `path` holds, if it exists and holds one.
    fn loose_ref(path: &Path) -> Option<Oid> {
        let bytes = std::fs::read(path).ok()?;
        let hex = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        if hex.len() != 40 {
            return None;
        }
        gix::ObjectId::from_hex(hex).ok().map(Oid)
    }

    /// Start [`maybe_pack`](Self::maybe_pack) on a thread of its own when it has work:
    /// merging a dozen packs and deleting them takes milliseconds, which the commit that
    /// landed does not wait for. One runs at a time per handle (a handle whose last one
    /// still runs starts none; another process's merge is kept out by the merge lock).
    fn maintain(git_dir: &Path, maintenance: &Mutex<Option<std::thread::JoinHandle<()>>>) {
        let mut running = maintenance.lock().unwrap_or_else(|e| e.into_inner());
        if running.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if let Some(done) = running.take() {
            let _ = done.join();
        }
        let (packs, loose) = Self::counts(git_dir);
        if packs <= PACK_LIMIT && loose <= LOOSE_LIMIT {
            return;
        }
        let dir = git_dir.to_owned();
        match std::thread::Builder::new()
            .name("dtk-pack".into())
            .spawn(move || Self::maybe_pack(&dir))
        {
            Ok(h) => *running = Some(h),
            Err(_) => Self::maybe_pack(git_dir),
        }
    }

    /// Wait for the background maintenance, if one runs (or is about to: the work left
    /// for later by the last commit starts it).
    fn wait_for_maintenance(&self) {
        crate::unnamed::settle();
        let running = self
            .maintenance
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = running {
            let _ = h.join();
        }
    }

    /// How many packs the store has, and how many loose objects are in one of the 256
    /// object directories (git's own estimate of the loose objects, `gc.auto`).
    fn counts(git_dir: &Path) -> (usize, usize) {
        let objects = git_dir.join("objects");
        let packs = std::fs::read_dir(objects.join("pack"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().as_encoded_bytes().ends_with(b".idx"))
                    .count()
            })
            .unwrap_or(0);
        let loose = std::fs::read_dir(objects.join("17"))
            .map(|d| d.count())
            .unwrap_or(0);
        (packs, loose)
    }

    /// Keep reads fast as records accumulate. Each commit adds one small pack; when there
    /// are more than [`PACK_LIMIT`], the smallest are merged (see `pack::maintain`: byte
    /// copies, no decompression, geometric like `git repack --geometric=2`). Loose objects
    /// (written by other tools) are left to `git gc --auto`, started in the background
    /// when git's own estimate from one of the 256 object directories says so. Errors here
    /// never fail the commit that has already landed.
    fn maybe_pack(git_dir: &Path) {
        let objects = git_dir.join("objects");
        let (packs, loose) = Self::counts(git_dir);
        if packs > PACK_LIMIT {
            let overlapping = match crate::pack::maintain(&objects.join("pack"), PACK_LIMIT) {
                Ok(m) => m.overlapping,
                Err(e) => {
                    tracing::warn!(error = %e, "could not merge the store's packs");
                    false
                }
            };
            Self::maybe_delta_compress(git_dir, overlapping);
        }
        if loose <= LOOSE_LIMIT {
            return;
        }
        let script = format!("{BACKGROUND} git --git-dir \"$1\" -c gc.autoDetach=false gc --auto --quiet </dev/null >/dev/null 2>&1 &");
        let _ = std::process::Command::new("sh")
            .args(["-c", &script, "sh"])
            .arg(git_dir)
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
    ///
    /// With `overlapping` (merging met packs with deltas that share objects, which byte
    /// copies cannot join, so they would be read at every merge and never merged), the
    /// repack is due whatever the size, at most once in ten minutes.
    fn maybe_delta_compress(git_dir: &Path, overlapping: bool) {
        let pack_dir = git_dir.join("objects/pack");
        let size: u64 = std::fs::read_dir(&pack_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        let marker = git_dir.join("dkt-packed-bytes");
        let last: Option<u64> = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let recently = std::fs::metadata(&marker)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(600));
        let due = match last {
            _ if overlapping => !recently,
            // An older store: start counting from here.
            None => false,
            Some(last) => size > DELTA_MIN_BYTES && size > last.saturating_mul(2),
        };
        if !due || git_dir.join("gc.pid").exists() {
            if last.is_none() {
                let _ = std::fs::write(&marker, format!("{size}\n"));
            }
            return;
        }
        // The repack holds the merge lock while it runs (merging packs away under it
        // would make it fail); when a merge holds it now, the next commit tries again.
        let lock = git_dir.join("objects/pack/dtk-merge.lock");
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
        // The shell names itself in the lock (`host:pid repack`), lists the packs it will
        // pack (`pack::REPACKING`: commits meanwhile merge the others among themselves),
        // packs every object of those into one (reachable or not, so a commit whose pack
        // is written but whose branch has not moved yet loses nothing), computing deltas
        // afresh (our packs have none to reuse), deletes exactly those (each index
        // first), and removes the list and the lock. It runs at the lowest priority (see
        // [`BACKGROUND`]).
        let script = r#"cd "$1" || exit 1
echo "$2:$$ repack" > objects/pack/dtk-merge.lock
list=objects/pack/REPACKING
for idx in objects/pack/pack-*.idx; do
  stem=${idx%.idx}
  [ -e "$stem.keep" ] || [ ! -e "$stem.pack" ] || echo "${stem##*/}.pack"
done > "$list.tmp" && mv "$list.tmp" "$list"
if [ -s "$list" ] && new=$(BACKGROUND git --git-dir . pack-objects --stdin-packs --no-reuse-delta \
    --delta-base-offset -q objects/pack/pack < "$list"); then
  while read -r p; do
    stem=objects/pack/${p%.pack}
    [ "$stem" = "objects/pack/pack-$new" ] && continue
    rm -f "$stem.idx" && rm -f "$stem.pack" "$stem.rev" "$stem.bitmap" "$stem.mtimes"
  done < "$list"
  du -sb objects/pack | cut -f1 > dkt-packed-bytes.tmp && mv dkt-packed-bytes.tmp dkt-packed-bytes
fi
rm -f "$list"
# (Unless it was taken from us meanwhile, held past an hour, as left by a dead process.)
[ "$(cat objects/pack/dtk-merge.lock 2>/dev/null)" = "$2:$$ repack" ] \
  && rm -f objects/pack/dtk-merge.lock"#
            .replace("REPACKING", crate::pack::REPACKING)
            .replace("BACKGROUND", BACKGROUND);
        let host = me.rsplit_once(':').map(|(h, _)| h).unwrap_or_default();
        let spawned = std::process::Command::new("sh")
            .args([
                "-c",
                r#"(sh -c "$3" sh "$1" "$2") </dev/null >/dev/null 2>&1 &"#,
                "sh",
            ])
            .arg(git_dir)
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

    /// Move the branch from `from` to `to` as git does (take its lock
    /// `refs/heads/main.lock`, check under it that the branch is still at `from`, rename
    /// the lock over it), with the lock made ahead of time: a file without a name (see
    /// `unnamed::Spares`) gets the new content, then the lock's name by `link(2)`, which
    /// fails when the name exists, as git's `O_EXCL` does. Making a file can take long on
    /// some filesystems (see `crate::unnamed`); this makes none. The file is the one
    /// [`prepare_move`](MetadataStore::prepare_move) wrote and synced, if it names `to`.
    /// Returns the branch's new file and whether it still needs syncing, or `None` when
    /// files without names cannot be had here (then gix moves the branch).
    fn move_branch_by_link(
        &self,
        loose: &Path,
        from: Option<Oid>,
        to: Oid,
    ) -> Option<Result<(std::fs::File, bool)>> {
        let lock = self.git_dir.join(format!("{BRANCH}.lock"));
        let prepared = {
            let mut prepared = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
            let mine = prepared.iter().position(|(id, _)| *id == to);
            mine.map(|i| prepared.remove(i).1)
        }
        .and_then(|file| file.join());
        let (file, unsynced) = match prepared {
            Some(Ok(file)) => (file, false),
            Some(Err(e)) => return Some(Err(Error::io(&lock, e))),
            None => {
                let file = self.ref_spares.take().ok()?;
                let content = format!("{}\n", to.0);
                if let Err(e) = std::io::Write::write_all(&mut &file, content.as_bytes()) {
                    return Some(Err(Error::io(&lock, e)));
                }
                (file, true)
            }
        };
        // A held lock is tried again for a moment, as git does (`core.filesRefLockTimeout`,
        // 100 ms): its holder may be a writer whose base was stale, about to let go
        // without moving the branch, which would leave nothing to tell this one to retry.
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match crate::unnamed::name(&file, &lock) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if started.elapsed() >= LOCK_PATIENCE {
                        return Some(Err(Error::Conflict(format!(
                            "{BRANCH} is being moved by another process (it holds {})",
                            lock.display()
                        ))));
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
                Err(_) => return None,
            }
        }
        // Under the lock: the branch must still be where the caller saw it. A branch that
        // `git gc` packed (no file of its own) also waits for `packed-refs.lock`, as
        // gix's transaction does, so that a stale one left by a killed `git gc` is found
        // (and removed: see `lock_held`) rather than left to stop git itself.
        let packed_locked = || !loose.exists() && self.git_dir.join("packed-refs.lock").exists();
        let moved = self.find_reference(BRANCH).and_then(|now| {
            if packed_locked() {
                return Err(Error::Conflict(
                    "packed-refs is being rewritten by another process (it holds packed-refs.lock)"
                        .into(),
                ));
            }
            if now != from {
                return Err(Error::Conflict(format!(
                    "{BRANCH} moved to {} meanwhile",
                    now.map_or_else(|| "nothing".to_owned(), |id| id.to_string())
                )));
            }
            std::fs::rename(&lock, loose).map_err(|e| Error::io(loose, e))
        });
        if moved.is_err() {
            let _ = std::fs::remove_file(&lock);
        }
        Some(moved.map(|()| (file, unsynced)))
    }

    /// Give the branch's file `loose` a second name, so that replacing it does not free
    /// it: freeing waits for the disk on some filesystems (ext4 mounted with `discard`
    /// trims the block there and then), and removing the second name, on a background
    /// thread after the commit (see `committed`), does that instead. (Holding the old
    /// file open would do the same, but a command started meanwhile gets a copy of every
    /// open file until its `exec`, and its `exec` may then be the one to free it.)
    fn keep_replaced(&self, loose: &Path) -> Option<PathBuf> {
        static KEPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = KEPT.fetch_add(1, Ordering::Relaxed);
        let dir = self.git_dir.join(REPLACED);
        let kept = dir.join(format!("{}-{n}", std::process::id()));
        match std::fs::hard_link(loose, &kept) {
            Ok(()) => Some(kept),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => {
                std::fs::create_dir_all(&dir).ok()?;
                std::fs::hard_link(loose, &kept).ok().map(|()| kept)
            }
            Err(_) => None,
        }
    }

    /// Move the branch with a gix ref transaction expecting `from`.
    fn move_branch_by_gix(&self, from: Option<Oid>, to: Oid) -> Result<()> {
        let expected = match from {
            Some(id) => PreviousValue::MustExistAndMatch(Target::Object(id.0)),
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
                new: Target::Object(to.0),
            },
            name: BRANCH
                .try_into()
                .map_err(|e| Error::store("bad branch name", e))?,
            deref: false,
        };
        let sig = signature();
        let mut buf = gix::date::parse::TimeBuf::default();
        self.repo()
            .edit_references_as([edit], Some(sig.to_ref(&mut buf)))
            .map_err(gix_err(format!("cannot move {BRANCH}")))?;
        Ok(())
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

    fn pack_now(&self) -> Result<()> {
        self.wait_for_maintenance();
        // No merge and no background repack deletes a pack while git gc runs.
        let _merges_held = crate::pack::hold_merge_lock(
            &self.git_dir.join("objects/pack"),
            Duration::from_secs(600),
        )?;
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
}

impl MetadataStore for GitStore {
    fn location(&self) -> &Path {
        &self.git_dir
    }

    fn tip(&self) -> Result<Option<Oid>> {
        self.find_reference(BRANCH)
    }

    fn reference(&self, name: &str) -> Result<Option<Oid>> {
        self.find_reference(name)
    }

    fn objects(&self, write: bool) -> Result<Box<dyn Objects>> {
        let repo = if write {
            // New objects stay in memory until the commit is complete, then go to disk as
            // one pack (see `persist`).
            Handle {
                repo: Some(self.repo().with_object_memory()),
                home: None,
            }
        } else {
            self.reader()
        };
        Ok(Box::new(GitObjects {
            repo,
            signer: self.signer(),
            pack_dir: self.git_dir.join("objects/pack"),
            spares: Arc::clone(&self.pack_spares),
        }))
    }

    fn prepare_move(&self, to: Oid) {
        // The branch's next file, without a name until the move: written and synced now,
        // beside the objects, the move then only has the directory to sync.
        let Ok(file) = self.ref_spares.take() else {
            return;
        };
        let content = format!("{}\n", to.0);
        let synced = crate::unnamed::beside(move || {
            std::io::Write::write_all(&mut &file, content.as_bytes())
                .and_then(|()| file.sync_data())
                .map(|()| file)
        });
        let mut prepared = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        // (Those of commits that never moved the branch, lost to another writer, go.)
        if prepared.len() >= PREPARED {
            prepared.remove(0);
        }
        prepared.push((to, synced));
    }

    fn move_branch(&self, from: Option<Oid>, to: Oid) -> Result<()> {
        let loose = self.git_dir.join(BRANCH);
        let old = self.keep_replaced(&loose);
        let moved = match self.move_branch_by_link(&loose, from, to) {
            Some(moved) => moved.map(|(file, unsynced)| unsynced.then_some(file)),
            // (The edit leaves a loose ref; without one there is nothing to sync.)
            None => self
                .move_branch_by_gix(from, to)
                .map(|()| std::fs::File::open(&loose).ok()),
        };
        let unsynced = match moved {
            Ok(unsynced) => unsynced,
            Err(e) => {
                // Not replaced: its second name goes now.
                if let Some(kept) = old {
                    let _ = std::fs::remove_file(kept);
                }
                return Err(e);
            }
        };
        self.replaced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(old);
        // The rename on the disk (the objects were synced before: see `pack::put_pair`),
        // and the ref's new content if it was not synced beside them, the two at once.
        let dir = loose.parent().unwrap_or(&self.git_dir).to_owned();
        let Some(file) = unsynced else {
            return crate::pack::sync_dir(&dir);
        };
        let dir = crate::unnamed::beside(move || crate::pack::sync_dir(&dir));
        let file = file.sync_all().map_err(|e| Error::io(&loose, e));
        let dir = dir
            .join()
            .unwrap_or_else(|| Err(Error::corrupt("syncing the refs directory panicked")));
        file.and(dir)
    }

    fn contended(&self, base: Oid) -> Result<bool> {
        let moved = self.tip()? != Some(base);
        let locked = self.lock_held()?;
        Ok(moved || locked)
    }

    fn committed(&self) {
        // After the commit, off the thread that waits for it, in one go (waking a thread
        // costs about as much as each of these): the branch's old file goes, files
        // are made for the next commit, and the packs are looked after.
        let spares = [&self.pack_spares, &self.ref_spares].map(Arc::clone);
        let replaced =
            std::mem::take(&mut *self.replaced.lock().unwrap_or_else(|e| e.into_inner()));
        let (git_dir, maintenance) = (self.git_dir.clone(), Arc::clone(&self.maintenance));
        crate::unnamed::later(Box::new(move || {
            replaced
                .iter()
                .for_each(|kept| drop(std::fs::remove_file(kept)));
            spares.iter().for_each(|s| s.fill());
            Self::maintain(&git_dir, &maintenance);
        }));
        let n = self.commits.fetch_add(1, Ordering::Relaxed);
        if n + 1 >= REOPEN_EVERY {
            // The commit has landed: a failure here must not report it as failed.
            if let Err(e) = self.refresh() {
                tracing::warn!(error = %e, "could not reopen the metadata store");
            }
        }
    }

    /// Open the repository afresh (snapshots already taken keep the one they had).
    fn refresh(&self) -> Result<()> {
        let fresh = open_repo(&self.git_dir)?;
        *self.repo.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        let mut idle = self.idle.lock();
        self.idle.generation.fetch_add(1, Ordering::Relaxed);
        idle.clear();
        self.commits.store(0, Ordering::Relaxed);
        Ok(())
    }

    fn set_signer(&self, key: Option<Arc<SigningKey>>) {
        *self.signer.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    fn signer(&self) -> Option<Arc<SigningKey>> {
        self.signer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `git gc`; waits for a background `git gc` that is already running.
    fn pack(&self) -> Result<()> {
        self.pack_now()
    }
}

/// The objects of a [`GitStore`] through one gix handle (with its object cache); a
/// writing handle keeps new objects in memory until [`Objects::persist`].
struct GitObjects {
    repo: Handle,
    signer: Option<Arc<SigningKey>>,
    pack_dir: PathBuf,
    spares: Arc<crate::unnamed::Spares>,
}

impl Objects for GitObjects {
    fn commit(&self, id: Oid) -> Result<Commit> {
        let c = find_retrying(|| self.repo.find_commit(id.0))
            .map_err(gix_err(format!("cannot read commit {id}")))?;
        let tree = c
            .tree_id()
            .map_err(gix_err(format!("cannot read the tree of commit {id}")))?
            .detach();
        let message = c
            .message_raw()
            .map_err(gix_err(format!("cannot read the message of commit {id}")))?
            .to_str_lossy()
            .trim_end()
            .to_owned();
        Ok(Commit {
            tree: Oid(tree),
            parents: c.parent_ids().map(|p| Oid(p.detach())).collect(),
            message,
            raw: c.data.clone(),
        })
    }

    fn tree(&self, id: Oid) -> Result<Vec<DirEntry>> {
        let tree = find_retrying(|| self.repo.find_tree(id.0))
            .map_err(gix_err(format!("cannot read tree {id}")))?;
        let decoded = tree
            .decode()
            .map_err(|e| Error::store(format!("cannot decode tree {id}"), e))?;
        Ok(decoded
            .entries
            .iter()
            .map(|e| DirEntry {
                name: e.filename.to_str_lossy().into_owned(),
                id: Oid(e.oid.to_owned()),
                is_dir: e.mode.is_tree(),
            })
            .collect())
    }

    fn blob(&self, id: Oid) -> Result<Arc<[u8]>> {
        Ok(find_retrying(|| self.repo.find_blob(id.0))
            .map_err(gix_err(format!("cannot read blob {id}")))?
            .data
            .as_slice()
            .into())
    }

    fn empty_tree(&self) -> Oid {
        Oid(ObjectId::empty_tree(self.repo.object_hash()))
    }

    fn write_blob(&self, bytes: &[u8]) -> Result<Oid> {
        self.put(Kind::Blob, bytes, "a record")
    }

    fn write_dir(&self, entries: &[DirEntry]) -> Result<Oid> {
        self.put_object(&tree_object(entries), "a directory of the records")
    }

    fn write_commit(&self, tree: Oid, parents: &[Oid], message: &str) -> Result<Oid> {
        let commit = commit_object(tree, parents, message, self.signer.as_deref())?;
        self.put_object(&commit, "a commit")
    }

    /// Write the objects held in memory as one pack.
    fn persist(&self) -> Result<()> {
        let objects = self.repo.objects.reset_object_memory().unwrap_or_default();
        crate::pack::write(
            &self.pack_dir,
            objects
                .iter()
                .map(|(id, (kind, data))| (*id, *kind, data.as_slice())),
            &self.spares,
        )?;
        Ok(())
    }
}

/// The tree object of `entries`, in git's order.
pub(super) fn tree_object(entries: &[DirEntry]) -> gix::objs::Tree {
    let mut tree = gix::objs::Tree::empty();
    tree.entries = entries
        .iter()
        .map(|e| gix::objs::tree::Entry {
            mode: match e.is_dir {
                true => EntryKind::Tree.into(),
                false => EntryKind::Blob.into(),
            },
            filename: e.name.as_str().into(),
            oid: e.id.0,
        })
        .collect();
    tree.entries.sort();
    tree
}

impl GitObjects {
    /// Keep `bytes` as an object of `kind` (`what`, for errors) in the handle's memory,
    /// without looking it up first as gix's own writes do (a lookup through every pack
    /// index and a loose-object `stat`, for objects that are nearly always new; one
    /// written again is a duplicate in the commit's pack, which a merge drops).
    fn put(&self, kind: Kind, bytes: &[u8], what: &str) -> Result<Oid> {
        gix::objs::Write::write_buf(&self.repo.objects, kind, bytes)
            .map(Oid)
            .map_err(|e| Error::store(format!("cannot write {what}"), e))
    }

    fn put_object(&self, object: &impl gix::objs::WriteTo, what: &str) -> Result<Oid> {
        let mut buf = Vec::with_capacity(object.size() as usize);
        object
            .write_to(&mut buf)
            .map_err(|e| Error::store(format!("cannot encode {what}"), e))?;
        self.put(object.kind(), &buf, what)
    }
}

/// A commit object of `tree` on `parents`, signed in git's SSH signature format (a
/// `gpgsig` header after `committer`) when there is a signing key.
pub(super) fn commit_object(
    tree: Oid,
    parents: &[Oid],
    message: &str,
    signer: Option<&SigningKey>,
) -> Result<gix::objs::Commit> {
    let sig = signature();
    let mut commit = gix::objs::Commit {
        tree: tree.0,
        parents: parents.iter().map(|p| p.0).collect(),
        author: sig.clone(),
        committer: sig,
        encoding: None,
        message: message.into(),
        extra_headers: Vec::new(),
    };
    if let Some(key) = signer {
        // The signed payload is the commit exactly as it is without the header: git
        // strips `gpgsig` (and its continuation lines) and checks what remains.
        let mut payload = Vec::with_capacity(512);
        gix::objs::WriteTo::write_to(&commit, &mut payload)
            .map_err(|e| Error::store("cannot encode a commit", e))?;
        let armored = key.sign_commit(&payload)?;
        commit.extra_headers.push(("gpgsig".into(), armored.into()));
    }
    Ok(commit)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MetadataStore, Store};

    #[test]
    fn kept_reading_handles_see_what_others_write_and_go_when_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let git_dir = dir.path().join("git");
        let backend = Arc::new(GitStore::init(&git_dir).unwrap());
        let reader = Store::create(backend.clone()).unwrap();
        // Another process, writing.
        let writing = Arc::new(GitStore::open(&git_dir).unwrap());
        let writer = Store::with_backend(writing.clone());
        let body = |i: usize| format!("{i}\n").into_bytes();
        // Past the pack limit, so that packs this reader's handles know are merged
        // away (and deleted) while they are kept.
        for i in 0..2 * PACK_LIMIT {
            writer
                .transact("w", |tx| tx.put(&format!("r/{i}"), &body(i)).map(|_| ()))
                .unwrap();
            if i % 3 == 0 {
                writing.wait_for_maintenance();
            }
            // Two views at once, then each record read afresh (the reader has not seen
            // this one: it is not remembered by its ID).
            let (one, two) = (reader.snapshot().unwrap(), reader.snapshot().unwrap());
            assert_eq!(one.read(&format!("r/{i}")).unwrap(), Some(body(i)));
            assert_eq!(two.read("r/0").unwrap(), Some(body(0)));
            drop((one, two));
            let kept = backend.idle.lock().len();
            assert!((1..=Idle::KEEP).contains(&kept), "{kept} handles kept");
        }
        assert_eq!(
            reader.snapshot().unwrap().list("r").unwrap().len(),
            2 * PACK_LIMIT
        );
        // Opened afresh: the handles of the old repository go, and are not kept again.
        let old = reader.snapshot().unwrap();
        backend.refresh().unwrap();
        assert_eq!(backend.idle.lock().len(), 0);
        drop(old);
        assert_eq!(backend.idle.lock().len(), 0);
        drop(reader.snapshot().unwrap());
        assert_eq!(backend.idle.lock().len(), 1);
    }
}
