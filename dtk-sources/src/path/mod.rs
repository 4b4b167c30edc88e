//! The `path` kind: a local directory or file, versioned by a digest of its content.
//!
//! A path source is a location on the local file system (a directory or a single file),
//! optionally narrowed to a sub-path below it. Its `ROOT` is the location joined with the
//! sub-path, used in place: dtk never copies it to put it in scope.
//!
//! Its version is `md5:` of a canonical encoding of the tree (relative paths, file
//! contents, execute bits, symbolic link targets, directories), specified in
//! `docs/path-digest.md` and computed by [`digest`]. Links are recorded, never followed.
//! A stat cache outside the metadata store (`.dkt/cache/path/`, see [`cache_file`]) lets an
//! unchanged tree be digested again without reading any file, with git's "racy git" rule.
//!
//! A path kind has no history (dtk lists the versions it recorded) and no tags; it can be a
//! node's output ([`Source::publish`] swaps the new content into place) and accepts a
//! sub-path. Given no location, it creates a temporary directory that it owns and removes
//! with the source.
//!
//! Unix only: names are handled as bytes, so non-UTF-8 names are fine.

mod cache;
mod digest;

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use dtk_api::source::not_supported;
use dtk_api::{
    async_trait, BlockingPoll, Capabilities, Context, Error, Fields, IoResultExt, Kind, Name,
    NewSource, Result, Source, SourceSpec, Verification, Version, VersionInfo,
};

pub use digest::{cache_file, digest, TreeDigest, TREE_HEADER};

/// The kind's name.
const KIND: &str = "path";
/// How sure [`PathKind::infer`] is of a local path; kinds that recognize a more specific
/// local location (a git repository) answer higher.
const INFER_SCORE: u8 = 10;
/// Prefix of the temporary directories the kind creates (`dkt-NAME-XXXXXX`).
const TEMP_PREFIX: &str = "dkt-";

/// The `path` kind: local directories and files.
///
/// Register it with `registry.register(Arc::new(PathKind::default()))`.
#[derive(Debug, Default, Clone)]
pub struct PathKind {
    _private: (),
}

impl PathKind {
    /// The kind.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Kind for PathKind {
    fn name(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    /// `Some(10)` for an absolute path, one starting with `./`, `../` or `~/`, or anything
    /// that exists relative to the current directory; `None` for URLs (`scheme://...`) and
    /// `user@host:path`.
    fn infer(&self, location: &str) -> Option<u8> {
        let explicit = location.starts_with('/')
            || location.starts_with("./")
            || location.starts_with("../")
            || location.starts_with("~/")
            || matches!(location, "." | ".." | "~");
        if explicit {
            return Some(INFER_SCORE);
        }
        if location.is_empty() || location.contains("://") || is_scp_like(location) {
            return None;
        }
        fs::symlink_metadata(location)
            .is_ok()
            .then_some(INFER_SCORE)
    }

    async fn resolve(&self, ctx: &Context, new: NewSource) -> Result<SourceSpec> {
        if let Some(tag) = &new.tag {
            return Err(Error::invalid("tag", tag, "a path source has no tags"));
        }
        let sub = match new.path.as_deref() {
            Some(p) => normalize_subpath(p)?,
            None => None,
        };
        let (location, owned) = match new.location.as_deref() {
            None => {
                if let Some(sub) = &sub {
                    return Err(Error::invalid(
                        "path",
                        sub,
                        "a sub-path needs a location (without one, a new empty temporary directory is created)",
                    ));
                }
                (create_temp_dir(&new.name)?, true)
            }
            Some(typed) => (locate(ctx, typed)?, false),
        };
        if let Some(sub) = &sub {
            check_subpath(&location, sub)?;
        }
        let location_str = location.to_str().ok_or_else(|| {
            Error::invalid(
                "location",
                location.display().to_string(),
                "is not valid UTF-8",
            )
        })?;
        let mut spec = SourceSpec::new(new.name, KIND, location_str);
        spec.path = sub;
        spec.owned = owned;
        Ok(spec)
    }

    fn open(&self, ctx: &Context, spec: &SourceSpec) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(PathSource::new(ctx, spec)?))
    }
}

fn capabilities() -> Capabilities {
    Capabilities::none().with_publish(true).with_subpath(true)
}

/// `user@host:path`, as ssh and git write it (no `/` before the first `:`).
fn is_scp_like(location: &str) -> bool {
    match location.split_once(':') {
        Some((before, _)) => before.contains('@') && !before.contains('/'),
        None => false,
    }
}

/// Validate a sub-path: relative, no `..`, no NUL; `.` and empty components are dropped.
/// `None` when nothing is left (the location itself).
fn normalize_subpath(p: &str) -> Result<Option<String>> {
    if p.contains('\0') {
        return Err(Error::invalid("path", p, "a sub-path must not contain NUL"));
    }
    let mut parts = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().unwrap_or_default()),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(Error::invalid(
                    "path",
                    p,
                    "a sub-path must not contain '..'",
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::invalid(
                    "path",
                    p,
                    "a sub-path must be relative to the location",
                ))
            }
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// A new temporary directory `dkt-NAME-XXXXXX` under the system's, kept.
fn create_temp_dir(name: &Name) -> Result<PathBuf> {
    let base = std::env::temp_dir();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{name}-"))
        .rand_bytes(6)
        .tempdir_in(&base)
        .at(&base)?
        .keep();
    fs::canonicalize(&dir).at(&dir)
}

/// The absolute, canonical location for what the user typed.
fn locate(ctx: &Context, typed: &str) -> Result<PathBuf> {
    if typed.is_empty() {
        return Err(Error::invalid(
            "path",
            typed,
            "a location must not be empty",
        ));
    }
    let expanded = match typed.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .ok_or_else(|| {
                    Error::invalid("path", typed, "cannot expand '~': HOME is not set")
                })?;
            PathBuf::from(home).join(rest.trim_start_matches('/'))
        }
        _ => PathBuf::from(typed),
    };
    let absolute = ctx.cwd.join(expanded);
    let canonical = fs::canonicalize(&absolute).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Error::NotFound {
            what: "path",
            name: typed.to_owned(),
            hint: format!(" ({} does not exist)", absolute.display()),
        },
        _ => Error::io(&absolute, e),
    })?;
    let md = fs::metadata(&canonical).at(&canonical)?;
    if !md.is_dir() && !md.is_file() {
        return Err(Error::invalid(
            "path",
            typed,
            "a path source is a directory or a regular file",
        ));
    }
    Ok(canonical)
}

/// The sub-path must exist below the (canonical) location and not lead out of it.
fn check_subpath(location: &Path, sub: &str) -> Result<()> {
    if !location.is_dir() {
        return Err(Error::invalid(
            "path",
            sub,
            format!(
                "{} is a file: only a directory has sub-paths",
                location.display()
            ),
        ));
    }
    let joined = location.join(sub);
    let canonical = fs::canonicalize(&joined).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Error::NotFound {
            what: "path",
            name: sub.to_owned(),
            hint: format!(" under {}", location.display()),
        },
        _ => Error::io(&joined, e),
    })?;
    if !canonical.starts_with(location) {
        return Err(Error::invalid(
            "path",
            sub,
            format!(
                "leads out of {} through a symbolic link (to {})",
                location.display(),
                canonical.display()
            ),
        ));
    }
    Ok(())
}

/// A `path` source: the tree at its `ROOT`.
#[derive(Debug, Clone)]
pub struct PathSource {
    spec: SourceSpec,
    root: PathBuf,
    cache: PathBuf,
}

impl PathSource {
    /// Open the source described by `spec` (no I/O).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a relative location or a bad sub-path.
    pub fn new(ctx: &Context, spec: &SourceSpec) -> Result<Self> {
        let location = Path::new(&spec.location);
        if !location.is_absolute() {
            return Err(Error::invalid(
                "location",
                &spec.location,
                "a path source's location must be absolute",
            ));
        }
        let root = match spec
            .path
            .as_deref()
            .map(normalize_subpath)
            .transpose()?
            .flatten()
        {
            Some(sub) => location.join(sub),
            None => location.to_owned(),
        };
        let cache = cache_file(&ctx.cache_dir.join(KIND), &root);
        Ok(PathSource {
            spec: spec.clone(),
            root,
            cache,
        })
    }

    /// The source's `ROOT`: its location joined with its sub-path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its stat cache file.
    pub fn cache_path(&self) -> &Path {
        &self.cache
    }

    /// Digest the tree now, off the async threads.
    pub async fn digest(&self) -> Result<TreeDigest> {
        let root = self.root.clone();
        let cache = self.cache.clone();
        self.blocking(move || digest(&root, Some(&cache))).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::Backend {
                kind: KIND.to_owned(),
                source_name: self.spec.name.to_string(),
                message: "the file system task failed".to_owned(),
                source: Some(Box::new(e)),
            })?
    }
}

#[async_trait]
impl Source for PathSource {
    fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn latest(&self) -> Result<VersionInfo> {
        Ok(VersionInfo::new(self.digest().await?.version))
    }

    /// The digest, on the calling thread: dtk runs the polls of many path sources one
    /// after another on a few blocking threads instead of a blocking task each.
    fn blocking_latest(&self) -> Option<BlockingPoll> {
        let root = self.root.clone();
        let cache = self.cache.clone();
        Some(Box::new(move || {
            Ok(VersionInfo::new(digest(&root, Some(&cache))?.version))
        }))
    }

    async fn versions(&self) -> Result<Vec<VersionInfo>> {
        Err(not_supported(self, "list versions"))
    }

    fn fields(&self, _version: Option<&Version>, root: &Path) -> Result<Fields> {
        let root = root.to_str().ok_or_else(|| {
            Error::invalid("ROOT", root.display().to_string(), "is not valid UTF-8")
        })?;
        Ok(Fields::from([("ROOT".to_owned(), root.to_owned())]))
    }

    /// The source's own `ROOT` when its content is still at `version` (no copy); otherwise
    /// [`Error::NotFound`]: a path keeps only its current content.
    async fn materialize(&self, version: &Version, _scratch: &Path) -> Result<PathBuf> {
        let now = self.digest().await?.version;
        if &now == version {
            return Ok(self.root.clone());
        }
        Err(Error::NotFound {
            what: "version",
            name: version.to_string(),
            hint: format!(
                ": its content is no longer at {} (path source {:?} is now at {now}; a path source keeps only its current content)",
                self.root.display(),
                self.spec.name.as_str(),
            ),
        })
    }

    /// Re-digest the content: [`Verification::Verified`] when it is `version`; a mismatch
    /// when `version` is the source's recorded latest version (the content should still be
    /// there: it was changed behind dtk's back); otherwise unavailable (a path keeps only
    /// its current content).
    async fn verify(&self, version: &Version) -> Result<Verification> {
        let now = self.digest().await?.version;
        if &now == version {
            Ok(Verification::Verified)
        } else if self.spec.latest.as_ref() == Some(version) {
            Ok(Verification::Mismatch {
                expected: version.clone(),
                found: now,
            })
        } else {
            Ok(Verification::Unavailable(format!(
                "{} now holds {now}; a path source keeps only its current content",
                self.root.display()
            )))
        }
    }

    /// Swap `dir`'s content into `ROOT`: `dir` is moved there when on the same file system
    /// (it is gone afterwards), else copied next to `ROOT` first. On Linux the swap is one
    /// `renameat2(RENAME_EXCHANGE)`, so `ROOT` always holds the old or the new content.
    /// A single-file source publishes a file, or a directory holding exactly one file.
    async fn publish(&self, dir: &Path) -> Result<VersionInfo> {
        let root = self.root.clone();
        let dir = dir.to_owned();
        self.blocking(move || publish_blocking(&root, &dir)).await?;
        self.latest().await
    }

    /// Publish only if the directory still holds `options.expected`: its digest is taken
    /// (through the stat cache) immediately before the swap, in the same blocking task,
    /// so a file written into it while a node ran is never silently replaced.
    async fn publish_with(
        &self,
        dir: &Path,
        options: &dtk_api::PublishOptions,
    ) -> Result<VersionInfo> {
        if options.overwrite {
            return self.publish(dir).await;
        }
        let root = self.root.clone();
        let cache = self.cache.clone();
        let dir = dir.to_owned();
        let expected = options.expected.clone();
        let name = self.spec.name.to_string();
        self.blocking(move || {
            let now = if fs::symlink_metadata(&root).is_ok() {
                Some(digest(&root, Some(&cache))?.version)
            } else {
                None
            };
            if now != expected {
                return Err(Error::OutputMoved {
                    kind: KIND.to_owned(),
                    source_name: name,
                    expected,
                    found: now,
                });
            }
            publish_blocking(&root, &dir)
        })
        .await?;
        self.latest().await
    }

    /// Removes the stat cache and, when dtk created the location, the location.
    async fn remove(&self) -> Result<()> {
        let spec = self.spec.clone();
        let cache = self.cache.clone();
        self.blocking(move || {
            ignore_not_found(fs::remove_file(&cache)).at(&cache)?;
            if spec.owned {
                let location = Path::new(&spec.location);
                let ours = location
                    .file_name()
                    .is_some_and(|n| n.as_bytes().starts_with(TEMP_PREFIX.as_bytes()));
                if !ours {
                    return Err(Error::invalid(
                        "location",
                        &spec.location,
                        format!("is marked as created by dtk but is not named {TEMP_PREFIX}NAME-XXXXXX; not removing it"),
                    ));
                }
                ignore_not_found(fs::remove_dir_all(location)).at(location)?;
            }
            Ok(())
        })
        .await
    }
}

fn ignore_not_found(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn publish_blocking(root: &Path, dir: &Path) -> Result<()> {
    let bad =
        |reason: String| Error::invalid("publish directory", dir.display().to_string(), reason);
    // Never follow a link at what is published: renaming through it would move its target
    // (an input, or any directory the user can rename) into the source.
    let src_md = fs::symlink_metadata(dir).at(dir)?;
    if src_md.file_type().is_symlink() {
        return Err(bad(
            "is a symbolic link: only a real file or directory is published".to_owned(),
        ));
    }
    let src = dir.to_owned();
    let src_real = fs::canonicalize(dir).at(dir)?;
    let root_md = match fs::symlink_metadata(root) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(root, e)),
    };
    if let Some(m) = &root_md {
        if m.file_type().is_symlink() {
            return Err(Error::invalid(
                "path",
                root.display().to_string(),
                "is a symbolic link: cannot publish through it",
            ));
        }
        let canonical_root = fs::canonicalize(root).at(root)?;
        if canonical_root.starts_with(&src_real) || src_real.starts_with(&canonical_root) {
            return Err(bad(format!(
                "overlaps the source's root {}",
                root.display()
            )));
        }
    }
    let root_is_file = root_md.as_ref().is_some_and(|m| m.is_file());
    let content = if root_is_file {
        if src_md.is_file() {
            src
        } else if src_md.is_dir() {
            single_file_in(&src).ok_or_else(|| {
                bad("a single-file source publishes a file, or a directory holding exactly one regular file".to_owned())
            })?
        } else {
            return Err(bad("is neither a file nor a directory".to_owned()));
        }
    } else if src_md.is_dir() {
        src
    } else {
        return Err(bad(format!(
            "{} is a directory source: publish a directory",
            root.display()
        )));
    };

    let parent = match root.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => {
            return Err(Error::invalid(
                "path",
                root.display().to_string(),
                "has no parent directory to publish through",
            ))
        }
    };
    // A staging directory next to ROOT, so the final step is a rename on one file system;
    // dropping it removes whatever is left in it (the old content, or a failed copy).
    let stage = tempfile::Builder::new()
        .prefix(".dkt-publish-")
        .tempdir_in(parent)
        .at(parent)?;
    let new = stage.path().join("new");
    let moved = match fs::rename(&content, &new) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            copy_tree(&content, &new)?;
            false
        }
        Err(e) => return Err(Error::io(&content, e)),
    };
    let root_is_dir = root_md.as_ref().is_some_and(|m| m.is_dir());
    if let Err(e) = swap_into_place(&new, root, root_is_dir, stage.path()) {
        if moved {
            // Give the caller its directory back.
            if let Err(back) = fs::rename(&new, &content) {
                tracing::warn!(from = %new.display(), to = %content.display(), error = %back, "cannot move the published content back");
                let _ = stage.keep();
            }
        }
        return Err(e);
    }
    if let Err(e) = stage.close() {
        tracing::warn!(root = %root.display(), error = %e, "cannot remove the previous content after publishing");
    }
    Ok(())
}

/// The one regular file in `dir`, if `dir` holds exactly that.
fn single_file_in(dir: &Path) -> Option<PathBuf> {
    let mut it = fs::read_dir(dir).ok()?;
    let only = it.next()?.ok()?;
    if it.next().is_some() {
        return None;
    }
    only.file_type().ok()?.is_file().then(|| only.path())
}

/// Put `new` at `root`; the previous content, if any, ends up inside `stage`.
fn swap_into_place(new: &Path, root: &Path, root_is_dir: bool, stage: &Path) -> Result<()> {
    if !root_is_dir {
        // Missing, or a file: rename replaces a file atomically.
        return fs::rename(new, root).at(root);
    }
    if exchange(new, root).at(root)? {
        return Ok(());
    }
    let old = stage.join("old");
    fs::rename(root, &old).at(root)?;
    if let Err(e) = fs::rename(new, root) {
        if let Err(back) = fs::rename(&old, root) {
            tracing::error!(old = %old.display(), root = %root.display(), error = %back, "cannot put the previous content back");
        }
        return Err(Error::io(root, e));
    }
    Ok(())
}

/// Atomically exchange `a` and `b`; `Ok(false)` when the system or file system cannot.
#[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use rustix::io::Errno;
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(true),
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(all(target_os = "linux", any(target_env = "gnu", target_env = "musl"))))]
fn exchange(_a: &Path, _b: &Path) -> io::Result<bool> {
    Ok(false)
}

/// Copy `src` (file, directory or link) to the new path `dst`, links as links, keeping
/// permissions.
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let md = fs::symlink_metadata(src).at(src)?;
    let ft = md.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(src).at(src)?;
        std::os::unix::fs::symlink(&target, dst).at(dst)?;
    } else if ft.is_file() {
        fs::copy(src, dst).at(dst)?;
    } else if ft.is_dir() {
        fs::create_dir(dst).at(dst)?;
        for de in fs::read_dir(src).at(src)? {
            let de = de.at(src)?;
            copy_tree(&de.path(), &dst.join(de.file_name()))?;
        }
        fs::set_permissions(dst, md.permissions()).at(dst)?;
    } else {
        return Err(Error::invalid(
            "publish directory",
            src.display().to_string(),
            "holds a special file (fifo, socket or device), which cannot be copied",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subpaths_are_validated() {
        assert_eq!(normalize_subpath("a/./b/").unwrap().as_deref(), Some("a/b"));
        assert_eq!(normalize_subpath(".").unwrap(), None);
        assert_eq!(normalize_subpath("").unwrap(), None);
        for bad in ["../x", "a/../../b", "/etc", "a\0b"] {
            let e = normalize_subpath(bad).unwrap_err();
            assert!(matches!(e, Error::Invalid { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn scp_like_locations() {
        assert!(is_scp_like("git@github.com:a/b"));
        assert!(!is_scp_like("./git@x:y"));
        assert!(!is_scp_like("data"));
        assert!(!is_scp_like("a:b"));
    }
}
