//! The `git` kind (and its `github` shortcut): a branch, tag or commit of a git
//! repository, optionally limited to a sub-path.
//!
//! ```text
//! dkt source add data /path/to/repo               # local repository, default branch
//! dkt source add data https://host/repo.git -t v1  # a tag
//! dkt source add code -k github rust-lang/rust     # https://github.com/rust-lang/rust
//! dkt source add docs code -p src/doc              # only what changes under src/doc
//! ```
//!
//! - **Locations**: `https://`, `http://` (with the `https` cargo feature), `ssh://`,
//!   `git://`, `file://` URLs, scp-like `user@host:path`, and local paths (made absolute).
//!   With kind `github`, `USER/REPO` stands for `https://github.com/USER/REPO`; the kind
//!   is then stored as `git`.
//! - **Mirror**: every location is fetched into one bare mirror under
//!   `<cache>/git/<md5 of the location>` (all branches and tags), shared by the sources
//!   and processes that follow it. [`Source::latest`] fetches; the other operations read
//!   the mirror (and fetch only when it is missing or lacks a requested commit).
//! - **Tags**: the tag is a branch, a tag (annotated tags peel to their commit) or a commit
//!   id (full, or at least 4 hex digits). The default is the remote's default branch.
//! - **Versions**: `sha1:` commit ids. [`Source::versions`] lists the commits reachable from
//!   the tag, in `git log` order (see "Log order" below); with a sub-path only the
//!   commits that changed it, as `git log -- PATH` lists them.
//! - **Tokens**: the `GITHUB_TOKEN` secret is sent, as an HTTP `Authorization` header, to
//!   `https://github.com` only (or to the host and port of `[kind.git] github_url`, when
//!   set); it never appears in a spec, an error, a log line or a `Debug` output.
//! - **Settings** (`[kind.git]` of `.dkt/config`): `github_url`, the `https://` base URL
//!   that `-k github USER/REPO` expands under (GitHub Enterprise, a mirror, a test
//!   server); default `https://github.com`.
//!
//! Log order: git's default order is a queue on the committer timestamp where ties go to
//! the commit queued first; gix's own time sort breaks ties differently, so this kind walks
//! commits itself. With a path it follows git's default history simplification (a merge
//! that is TREESAME to a parent follows only that parent). See `docs/git-kind.md`.

mod location;
mod mirror;
mod publish;
mod tree;
mod walk;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dtk_api::{
    Algo, Capabilities, Context, Error, Fields, Kind, NewSource, Result, Source, SourceSpec,
    Version, VersionInfo,
};
use gix::ObjectId;

use location::redact_url;

/// SHA-1 of a byte string, through gix's own hasher.
mod sha1 {
    pub(super) fn sha1_hex(bytes: &[u8]) -> String {
        let mut h = gix::hash::hasher(gix::hash::Kind::Sha1);
        h.update(bytes);
        h.try_finalize()
            .map(|id| id.to_hex().to_string())
            .unwrap_or_default()
    }
}
use mirror::{GithubAuth, Mirror};

/// The keys of `[kind.git]` in `.dkt/config`.
pub const SETTINGS: &[&str] = &["github_url", "author", "committer"];

/// The GitHub token of `ctx`, bound to the GitHub host (a bad `github_url` binds it to
/// nothing: the token is then never sent).
fn github_auth(ctx: &Context) -> Option<GithubAuth> {
    let base = location::github_base(ctx.setting(KIND, "github_url")).ok()?;
    GithubAuth::new(ctx.secrets.get(dtk_api::secrets::GITHUB_TOKEN), &base)
}

/// The kind's name, stored in every spec.
const KIND: &str = "git";
/// The alias that expands `USER/REPO`.
const GITHUB: &str = "github";

/// The `git` kind, with its `github` alias. Register it into a [`dtk_api::Registry`]:
///
/// ```
/// let mut registry = dtk_api::Registry::new();
/// registry.register(std::sync::Arc::new(dtk_sources::git::GitKind::default()));
/// assert_eq!(registry.get("github").unwrap().name(), "git");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct GitKind {
    /// Room for options without breaking `GitKind::default()`.
    _private: (),
}

fn capabilities() -> Capabilities {
    Capabilities::none()
        .with_history(true)
        .with_subpath(true)
        .with_tags(true)
        .with_patterns(true)
        .with_publish(true)
}

fn backend(
    name: &str,
    message: impl Into<String>,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Backend {
        kind: KIND.to_owned(),
        source_name: name.to_owned(),
        message: message.into(),
        source: Some(Box::new(e)),
    }
}

/// Run blocking work off the async threads.
async fn blocking<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| backend(name, "a background task failed", e))?
}

#[async_trait]
impl Kind for GitKind {
    fn name(&self) -> &'static str {
        KIND
    }

    fn aliases(&self) -> &'static [&'static str] {
        &[GITHUB]
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    fn infer(&self, location: &str) -> Option<u8> {
        location::infer(location)
    }

    async fn resolve(&self, ctx: &Context, new: NewSource) -> Result<SourceSpec> {
        let name = new.name.as_str().to_owned();
        let given = new.location.as_deref().ok_or_else(|| {
            Error::invalid(
                "location",
                "",
                "a git source needs a location (a URL or a local repository)",
            )
        })?;
        let normalized = if new.kind.eq_ignore_ascii_case(GITHUB) {
            let base = location::github_base(ctx.setting(KIND, "github_url"))?;
            let url = location::expand_github(given.trim(), &base)?;
            location::normalize(&url, &ctx.cwd)?
        } else {
            location::normalize(given, &ctx.cwd)?
        };
        if let Some(dir) = &normalized.local {
            if !dir.exists() {
                return Err(Error::NotFound {
                    what: "git repository",
                    name: dir.display().to_string(),
                    hint: String::new(),
                });
            }
            if !location::is_local_repository(dir) {
                return Err(Error::invalid(
                    "git location",
                    dir.display().to_string(),
                    "not a git repository",
                ));
            }
        }
        let mirror = Mirror::new(
            &ctx.cache_dir,
            &normalized.location,
            github_auth(ctx),
            ctx.network_timeout,
        );
        mirror.fetch(KIND, &name).await?;
        let tag = new.tag.clone().filter(|t| !t.trim().is_empty());
        let path = new.path.clone().filter(|p| !p.is_empty() && p != ".");
        let spec_path = path.clone();
        let m = mirror.clone();
        let n = name.clone();
        if let Some(t) = tag.as_deref().filter(|t| dtk_api::pattern::is_pattern(t)) {
            // A pattern: the refs it matches are read at each poll (none yet is fine).
            dtk_api::pattern::TagPattern::new(t)?;
            let mut spec = SourceSpec::new(new.name, KIND, normalized.location);
            spec.tag = Some(t.to_owned());
            spec.path = path;
            return Ok(spec);
        }
        let tag = blocking(&name, move || {
            let repo = m.open().map_err(|e| open_error(&n, &m, e))?;
            let tag = match tag {
                Some(t) => t,
                None => default_branch(&repo, &n, &m)?,
            };
            let commit = resolve_tag(&repo, &n, &m, &tag)?;
            if let Some(p) = &path {
                let tree = commit_tree(&repo, &n, commit)?;
                let found = tree::lookup(&repo.objects, repo.object_hash(), tree, p)
                    .map_err(|e| backend(&n, format!("cannot read commit {commit}"), e))?;
                if found.is_none() {
                    return Err(Error::NotFound {
                        what: "path",
                        name: p.clone(),
                        hint: format!(" in {} at {tag} ({commit})", redact_url(&m.location)),
                    });
                }
            }
            Ok(tag)
        })
        .await?;
        let mut spec = SourceSpec::new(new.name, KIND, normalized.location);
        spec.tag = Some(tag);
        spec.path = spec_path;
        Ok(spec)
    }

    fn open(&self, ctx: &Context, spec: &SourceSpec) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(GitSource::new(ctx, spec)))
    }
}

type Reachable = Option<(ObjectId, Arc<gix::hashtable::HashSet<ObjectId>>)>;

fn lock(r: &Mutex<Reachable>) -> std::sync::MutexGuard<'_, Reachable> {
    match r.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A source of kind `git`: one tag (and optionally one sub-path) of one location.
#[derive(Clone)]
pub struct GitSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitSource")
            .field("spec", &self.inner.spec)
            .field("mirror", &self.inner.mirror)
            .finish_non_exhaustive()
    }
}

struct Inner {
    spec: SourceSpec,
    mirror: Mirror,
    /// Who commits what a node publishes (`[kind.git] author`, `committer`).
    author: Option<String>,
    committer: Option<String>,
    /// Where publishing works (`<cache>/git/publish`).
    publish_tmp: PathBuf,
    /// The commits reachable from the last tip seen by `materialize`.
    reachable: Mutex<Reachable>,
}

impl GitSource {
    /// The source of `spec`, with its mirror under `ctx.cache_dir`. Does no I/O.
    pub fn new(ctx: &Context, spec: &SourceSpec) -> Self {
        let mirror = Mirror::new(
            &ctx.cache_dir,
            &spec.location,
            github_auth(ctx),
            ctx.network_timeout,
        );
        GitSource {
            inner: Arc::new(Inner {
                spec: spec.clone(),
                mirror,
                author: ctx.setting(KIND, "author").map(str::to_owned),
                committer: ctx.setting(KIND, "committer").map(str::to_owned),
                publish_tmp: publish::tmp_dir(&ctx.cache_dir),
                reachable: Mutex::new(None),
            }),
        }
    }

    /// The directory of the bare mirror this source reads (it may not exist yet).
    pub fn mirror_dir(&self) -> &Path {
        &self.inner.mirror.dir
    }

    fn name(&self) -> &str {
        self.inner.spec.name.as_str()
    }

    async fn ensure_mirror(&self) -> Result<()> {
        if self.inner.mirror.exists() {
            return Ok(());
        }
        self.inner.mirror.fetch(KIND, self.name()).await
    }

    /// The commit the source's tag names now, with the repository.
    fn tip(inner: &Inner) -> Result<(gix::Repository, ObjectId)> {
        let name = inner.spec.name.as_str();
        let repo = inner
            .mirror
            .open()
            .map_err(|e| open_error(name, &inner.mirror, e))?;
        let tag = match &inner.spec.tag {
            Some(t) => t.clone(),
            None => default_branch(&repo, name, &inner.mirror)?,
        };
        let tip = resolve_tag(&repo, name, &inner.mirror, &tag)?;
        Ok((repo, tip))
    }

    /// For a pattern source: the tip of every branch and tag the remote has whose name
    /// matches, with the commit that `git log -1 [-- PATH]` shows from it and its time;
    /// newest first (ties by name). A branch shadows a tag of the same name.
    fn heads_blocking(inner: &Inner) -> Result<Vec<(ObjectId, String)>> {
        let name = inner.spec.name.as_str();
        let pattern = dtk_api::pattern::TagPattern::new(inner.spec.tag.as_deref().unwrap_or(""))?;
        let mut repo = inner
            .mirror
            .open()
            .map_err(|e| open_error(name, &inner.mirror, e))?;
        let listed = std::fs::read_to_string(inner.mirror.dir.join(mirror::REMOTE_REFS)).ok();
        let mut full_names: Vec<String> = match listed {
            Some(text) => text.lines().map(str::to_owned).collect(),
            None => {
                let refs = repo
                    .references()
                    .map_err(|e| backend(name, "cannot list the mirror's refs", e))?;
                let all = refs
                    .all()
                    .map_err(|e| backend(name, "cannot list the mirror's refs", e))?;
                all.filter_map(|r| r.ok())
                    .map(|r| r.name().as_bstr().to_string())
                    .collect()
            }
        };
        // Branches before tags, so a branch shadows a tag of the same name.
        full_names.sort_by_key(|n| (!n.starts_with("refs/heads/"), n.clone()));
        let mut seen = std::collections::BTreeSet::new();
        let mut tips = Vec::new();
        for full in full_names {
            let Some(short) = full
                .strip_prefix("refs/heads/")
                .or_else(|| full.strip_prefix("refs/tags/"))
            else {
                continue;
            };
            if !pattern.matches(short) || !seen.insert(short.to_owned()) {
                continue;
            }
            let Some(mut r) = repo
                .try_find_reference(full.as_str())
                .map_err(|e| backend(name, format!("cannot read {full}"), e))?
            else {
                continue;
            };
            let Ok(commit) = r.peel_to_commit() else {
                continue; // a tag of a tree or a blob: nothing to follow
            };
            tips.push((commit.id, short.to_owned()));
        }
        let path = inner
            .spec
            .path
            .as_deref()
            .filter(|p| !p.is_empty() && *p != ".")
            .map(str::to_owned);
        let hash = repo.object_hash();
        let mut out = Vec::new();
        for (tip, short) in tips {
            let walk_err =
                |e: walk::WalkError| backend(name, format!("cannot walk the history of {tip}"), e);
            let id = match &path {
                None => tip,
                Some(p) => {
                    let mut walk = walk::LogWalk::new(&mut repo.objects, hash, tip, Some(p))
                        .map_err(walk_err)?;
                    match walk.next_commit().map_err(walk_err)? {
                        Some(id) => id,
                        None => continue, // no commit of this ref touches the path
                    }
                }
            };
            let time = repo
                .find_commit(id)
                .ok()
                .and_then(|c| c.time().ok())
                .map(|t| t.seconds)
                .unwrap_or(0);
            out.push((std::cmp::Reverse(time), short, id));
        }
        out.sort();
        Ok(out.into_iter().map(|(_, short, id)| (id, short)).collect())
    }

    /// Walk from the tip in `git log` order, stopping after `limit` commits.
    fn log(inner: &Inner, limit: Option<usize>) -> Result<Vec<ObjectId>> {
        let name = inner.spec.name.as_str();
        let (mut repo, tip) = Self::tip(inner)?;
        let walk_err =
            |e: walk::WalkError| backend(name, format!("cannot walk the history of {tip}"), e);
        let hash = repo.object_hash();
        let path = inner
            .spec
            .path
            .as_deref()
            .filter(|p| !p.is_empty() && *p != ".");
        let mut walk = walk::LogWalk::new(&mut repo.objects, hash, tip, path).map_err(walk_err)?;
        let mut out = Vec::new();
        while limit.is_none_or(|l| out.len() < l) {
            match walk.next_commit().map_err(walk_err)? {
                Some(id) => out.push(id),
                None => break,
            }
        }
        Ok(out)
    }

    /// Every commit reachable from `tip` (cached for the last tip).
    fn reachable(
        inner: &Inner,
        repo: &mut gix::Repository,
        tip: ObjectId,
    ) -> Result<Arc<gix::hashtable::HashSet<ObjectId>>> {
        if let Some((t, set)) = lock(&inner.reachable).as_ref() {
            if *t == tip {
                return Ok(set.clone());
            }
        }
        let name = inner.spec.name.as_str();
        let walk_err =
            |e: walk::WalkError| backend(name, format!("cannot walk the history of {tip}"), e);
        let hash = repo.object_hash();
        let mut walk = walk::LogWalk::new(&mut repo.objects, hash, tip, None).map_err(walk_err)?;
        let mut set = gix::hashtable::HashSet::default();
        while let Some(id) = walk.next_commit().map_err(walk_err)? {
            set.insert(id);
        }
        let set = Arc::new(set);
        *lock(&inner.reachable) = Some((tip, set.clone()));
        Ok(set)
    }

    fn materialize_blocking(
        inner: &Inner,
        commit: ObjectId,
        version: &Version,
        scratch: &Path,
    ) -> Result<PathBuf> {
        let name = inner.spec.name.as_str();
        let tag = inner.spec.tag.as_deref().unwrap_or("HEAD");
        let reachable = if inner.spec.is_pattern() {
            let mut repo = inner
                .mirror
                .open()
                .map_err(|e| open_error(name, &inner.mirror, e))?;
            let mut any = false;
            for (tip, _) in Self::heads_blocking(inner)? {
                if Self::reachable(inner, &mut repo, tip)?.contains(&commit) {
                    any = true;
                    break;
                }
            }
            any
        } else {
            let (mut repo, tip) = Self::tip(inner)?;
            Self::reachable(inner, &mut repo, tip)?.contains(&commit)
        };
        let repo = inner
            .mirror
            .open()
            .map_err(|e| open_error(name, &inner.mirror, e))?;
        if !reachable {
            return Err(Error::NotFound {
                what: "version",
                name: version.to_string(),
                hint: format!(
                    ": commit {commit} is not on the history of {tag} in {}",
                    redact_url(&inner.mirror.location)
                ),
            });
        }
        let tree = commit_tree(&repo, name, commit)?;
        let hash = repo.object_hash();
        let write_err = |e: tree::WriteError| {
            backend(
                name,
                format!("cannot write {version} into {}", scratch.display()),
                e,
            )
        };
        let (kind, id, dest) = match inner
            .spec
            .path
            .as_deref()
            .filter(|p| !p.is_empty() && *p != ".")
        {
            None => (gix::objs::tree::EntryKind::Tree, tree, scratch.to_owned()),
            Some(p) => {
                let (kind, id) = tree::lookup(&repo.objects, hash, tree, p)
                    .map_err(write_err)?
                    .ok_or_else(|| Error::NotFound {
                        what: "version",
                        name: version.to_string(),
                        hint: format!(": the path {p:?} does not exist in commit {commit}"),
                    })?;
                let dest = match kind {
                    gix::objs::tree::EntryKind::Tree => scratch.to_owned(),
                    _ => scratch.join(p.rsplit('/').next().unwrap_or(p)),
                };
                (kind, id, dest)
            }
        };
        tree::write_entry(&repo.objects, hash, kind, id, &dest).map_err(write_err)?;
        Ok(dest)
    }
}

fn open_error(name: &str, mirror: &Mirror, e: gix::Error) -> Error {
    backend(
        name,
        format!(
            "cannot open the mirror of {} in {}",
            redact_url(&mirror.location),
            mirror.dir.display()
        ),
        e,
    )
}

fn to_version(id: ObjectId) -> Result<VersionInfo> {
    Ok(VersionInfo::new(Version::from_bytes(
        Algo::Sha1,
        id.as_bytes(),
    )?))
}

/// The version of a pattern source's head, with its ref.
fn head_version((id, r): (ObjectId, String)) -> Result<VersionInfo> {
    let mut v = to_version(id)?;
    v.extra.insert(dtk_api::pattern::REF_FIELD.to_owned(), r);
    Ok(v)
}

/// The commit id a `sha1:` version names.
fn commit_of(version: &Version) -> Result<ObjectId> {
    if version.algo() != Algo::Sha1 {
        return Err(Error::invalid(
            "version",
            version.to_string(),
            "git versions are sha1: commit ids",
        ));
    }
    ObjectId::from_hex(version.hex().as_bytes())
        .map_err(|_| Error::invalid("version", version.to_string(), "not a commit id"))
}

/// The run a commit message's trailers name (what publishing to a git output writes), if
/// any.
fn provenance_from_trailers(
    message: &str,
    commit: ObjectId,
) -> Option<dtk_api::source::ArtifactProvenance> {
    // Trailers are the last paragraph's `Key: value` lines.
    let last = message.trim_end().rsplit("\n\n").next().unwrap_or_default();
    let trailer = |key: &str| {
        last.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let run = trailer("Dkt-Run")?;
    let mut p = dtk_api::source::ArtifactProvenance::new("commit trailers");
    p.version = format!("sha1:{commit}").parse().ok();
    p.run = Some(run);
    p.node = trailer("Dkt-Node");
    p.manifest = trailer("Dkt-Manifest");
    Some(p)
}

/// The branch the mirror's `HEAD` names (the remote's default branch), without `refs/heads/`.
fn default_branch(repo: &gix::Repository, name: &str, mirror: &Mirror) -> Result<String> {
    let shown = redact_url(&mirror.location);
    let head = repo.head_name().map_err(|e| {
        backend(
            name,
            format!("cannot read the default branch of {shown}"),
            e,
        )
    })?;
    let Some(head) = head else {
        return Err(Error::invalid(
            "git location",
            shown,
            "its HEAD is detached: give a tag (-t BRANCH, TAG or COMMIT)",
        ));
    };
    let full = head.as_bstr().to_string();
    let short = full.strip_prefix("refs/heads/").unwrap_or(&full).to_owned();
    if repo
        .try_find_reference(full.as_str())
        .map_err(|e| backend(name, format!("cannot read {full} of {shown}"), e))?
        .is_none()
    {
        return Err(Error::invalid(
            "git location",
            shown,
            format!("the repository has no commits (its default branch {short:?} is unborn)"),
        ));
    }
    Ok(short)
}

/// The commit `tag` names: a branch, a tag (peeled) or a commit id (full or abbreviated).
fn resolve_tag(repo: &gix::Repository, name: &str, mirror: &Mirror, tag: &str) -> Result<ObjectId> {
    let shown = redact_url(&mirror.location);
    let not_found = |hint: String| Error::NotFound {
        what: "tag",
        name: tag.to_owned(),
        hint,
    };
    let peel_err = |e: gix::Error| {
        backend(
            name,
            format!("cannot peel {tag:?} of {shown} to a commit"),
            e,
        )
    };
    if tag.is_empty() {
        return Err(Error::invalid("tag", tag, "it is empty"));
    }
    // Not a valid ref name (an error): it can still be a commit id.
    let reference = repo.try_find_reference(tag).unwrap_or_default();
    if let Some(mut r) = reference {
        let commit = r.peel_to_commit().map_err(peel_err)?;
        return Ok(commit.id);
    }
    let is_hex = (4..=40).contains(&tag.len()) && tag.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_hex {
        return Err(not_found(format!(
            ": no branch or tag of that name in {shown}"
        )));
    }
    let prefix = gix::hash::Prefix::from_hex(&tag.to_ascii_lowercase())
        .map_err(|e| backend(name, format!("cannot read {tag:?} as a commit id"), e))?;
    let mut candidates = std::collections::HashSet::new();
    repo.objects
        .lookup_prefix(prefix, Some(&mut candidates))
        .map_err(|e| backend(name, format!("cannot look up {tag:?} in {shown}"), e))?;
    let mut commits = Vec::new();
    for id in candidates {
        let Ok(obj) = repo.find_object(id) else {
            continue;
        };
        if let Ok(c) = obj.peel_to_commit() {
            if !commits.contains(&c.id) {
                commits.push(c.id);
            }
        }
    }
    match commits.len() {
        0 => Err(not_found(format!(
            ": no branch, tag or commit of that name in {shown}"
        ))),
        1 => Ok(commits[0]),
        _ => Err(Error::Ambiguous {
            what: "commit",
            prefix: tag.to_owned(),
            matches: commits.iter().map(|c| c.to_string()).collect(),
        }),
    }
}

/// The tree of `commit`, or NotFound when the mirror has no such commit.
fn commit_tree(repo: &gix::Repository, name: &str, commit: ObjectId) -> Result<ObjectId> {
    let obj = repo
        .try_find_object(commit)
        .map_err(|e| backend(name, format!("cannot read commit {commit}"), e))?
        .ok_or_else(|| Error::not_found("commit", commit.to_string()))?;
    let commit_obj = obj
        .try_into_commit()
        .map_err(|e| backend(name, format!("{commit} is not a commit"), e))?;
    Ok(commit_obj
        .tree_id()
        .map_err(|e| backend(name, format!("cannot read the tree of commit {commit}"), e))?
        .detach())
}

#[async_trait]
impl Source for GitSource {
    fn spec(&self) -> &SourceSpec {
        &self.inner.spec
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn latest(&self) -> Result<VersionInfo> {
        if self.inner.spec.is_pattern() {
            return self
                .heads()
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| Error::NotFound {
                    what: "tag",
                    name: self.inner.spec.tag.clone().unwrap_or_default(),
                    hint: format!(
                        ": no branch or tag of {} matches it",
                        redact_url(&self.inner.mirror.location)
                    ),
                });
        }
        self.inner.mirror.fetch(KIND, self.name()).await?;
        let inner = self.inner.clone();
        let path = inner.spec.path.clone();
        let ids = blocking(self.name(), move || Self::log(&inner, Some(1))).await?;
        match ids.first() {
            Some(id) => to_version(*id),
            None => Err(Error::NotFound {
                what: "path",
                name: path.unwrap_or_default(),
                hint: format!(
                    ": no commit of {} at {} touches it",
                    redact_url(&self.inner.mirror.location),
                    self.inner.spec.tag.as_deref().unwrap_or("HEAD")
                ),
            }),
        }
    }

    async fn versions(&self) -> Result<Vec<VersionInfo>> {
        self.ensure_mirror().await?;
        let inner = self.inner.clone();
        if inner.spec.is_pattern() {
            let heads = blocking(self.name(), move || Self::heads_blocking(&inner)).await?;
            return heads.into_iter().map(head_version).collect();
        }
        let ids = blocking(self.name(), move || Self::log(&inner, None)).await?;
        ids.into_iter().map(to_version).collect()
    }

    /// Fetch, then list the tips of the branches and tags the pattern matches (with the
    /// sub-path, the newest commit of each that touches it), newest commit first.
    async fn heads(&self) -> Result<Vec<VersionInfo>> {
        if !self.inner.spec.is_pattern() {
            return Err(Error::invalid(
                "tag pattern",
                self.inner.spec.tag.clone().unwrap_or_default(),
                "the source's tag is not a pattern",
            ));
        }
        self.inner.mirror.fetch(KIND, self.name()).await?;
        let inner = self.inner.clone();
        let heads = blocking(self.name(), move || Self::heads_blocking(&inner)).await?;
        heads.into_iter().map(head_version).collect()
    }

    fn fields(&self, version: Option<&Version>, root: &Path) -> Result<Fields> {
        let mut f = Fields::new();
        f.insert("ROOT".to_owned(), root.display().to_string());
        if let Some(v) = version {
            f.insert("COMMIT".to_owned(), commit_of(v)?.to_string());
        }
        if let Some(t) = &self.inner.spec.tag {
            f.insert("REF".to_owned(), t.clone());
        }
        f.insert("URL".to_owned(), redact_url(&self.inner.spec.location));
        Ok(f)
    }

    async fn materialize(&self, version: &Version, scratch: &Path) -> Result<PathBuf> {
        if version.algo() != Algo::Sha1 {
            return Err(Error::NotFound {
                what: "version",
                name: version.to_string(),
                hint: format!(
                    ": git source {:?} has sha1 versions (commit ids)",
                    self.name()
                ),
            });
        }
        let commit = commit_of(version)?;
        self.ensure_mirror().await?;
        let has = {
            let inner = self.inner.clone();
            blocking(self.name(), move || {
                let repo = inner
                    .mirror
                    .open()
                    .map_err(|e| open_error(inner.spec.name.as_str(), &inner.mirror, e))?;
                Ok(repo.has_object(commit))
            })
            .await?
        };
        if !has {
            // A version recorded elsewhere may be newer than this mirror.
            self.inner.mirror.fetch(KIND, self.name()).await?;
        }
        let inner = self.inner.clone();
        let version = version.clone();
        let scratch = scratch.to_owned();
        blocking(self.name(), move || {
            let repo = inner
                .mirror
                .open()
                .map_err(|e| open_error(inner.spec.name.as_str(), &inner.mirror, e))?;
            if !repo.has_object(commit) {
                return Err(Error::NotFound {
                    what: "version",
                    name: version.to_string(),
                    hint: format!(
                        ": no commit {commit} in {}",
                        redact_url(&inner.mirror.location)
                    ),
                });
            }
            drop(repo);
            Self::materialize_blocking(&inner, commit, &version, &scratch)
        })
        .await
    }

    async fn publish(&self, dir: &Path) -> Result<VersionInfo> {
        self.publish_with(dir, &dtk_api::PublishOptions::new())
            .await
    }

    /// Commit `dir` on top of the branch's tip (with a sub-path, as that sub-tree of it)
    /// and push it with a lease on that tip. The version the run started from is checked
    /// against the branch after a fetch (with a sub-path: the newest commit touching it, so
    /// unrelated commits on the branch are no conflict); the lease then makes the push a
    /// compare-and-swap on the tip. Nothing written: the version stays.
    async fn publish_with(
        &self,
        dir: &Path,
        options: &dtk_api::PublishOptions,
    ) -> Result<VersionInfo> {
        let spec = &self.inner.spec;
        let tag = spec.tag.clone().unwrap_or_default();
        if spec.is_pattern() {
            return Err(Error::invalid(
                "tag",
                tag,
                "a source following a tag pattern cannot be published to (give a branch)",
            ));
        }
        self.inner.mirror.fetch(KIND, self.name()).await?;
        let inner = self.inner.clone();
        let options = options.clone();
        let dir = dir.to_owned();
        let name = self.name().to_owned();
        blocking(self.name(), move || {
            let repo = inner
                .mirror
                .open()
                .map_err(|e| open_error(&name, &inner.mirror, e))?;
            let branch_ref = format!("refs/heads/{tag}");
            let tip = repo
                .try_find_reference(branch_ref.as_str())
                .map_err(|e| backend(&name, format!("cannot read {branch_ref}"), e))?
                .map(|mut r| r.peel_to_commit().map(|c| c.id))
                .transpose()
                .map_err(|e| backend(&name, format!("cannot peel {branch_ref}"), e))?;
            if tip.is_none() && resolve_tag(&repo, &name, &inner.mirror, &tag).is_ok() {
                return Err(Error::invalid(
                    "tag",
                    tag,
                    "only a branch can be published to (this is a tag or a commit)",
                ));
            }
            drop(repo);
            let current = match tip {
                None => None,
                Some(_) => Self::log(&inner, Some(1))?.first().copied(),
            };
            let current_version = current.map(to_version).transpose()?.map(|v| v.version);
            if !options.overwrite && current_version != options.expected {
                return Err(Error::OutputMoved {
                    kind: KIND.to_owned(),
                    source_name: name,
                    expected: options.expected,
                    found: current_version,
                });
            }
            let identity = |key: &str, value: &Option<String>| match value {
                Some(v) => publish::Identity::parse(key, v),
                None => Ok(publish::Identity::default_dtk()),
            };
            let mut message = match (&options.run, &options.node) {
                (Some(run), Some(node)) => format!(
                    "dkt: run {} of node {}\n\nDkt-Run: {run}\nDkt-Node: {node}\n",
                    &run[..run.len().min(8)],
                    &node[..node.len().min(8)]
                ),
                _ => format!("dkt: publish {name}\n"),
            };
            if let Some(m) = &options.manifest {
                message.push_str(&format!("Dkt-Manifest: {m}\n"));
            }
            if message.is_empty() {
                message.push('\n');
            }
            let p = publish::Publish {
                name: &name,
                mirror: &inner.mirror.dir,
                location: &inner.spec.location,
                branch: &tag,
                path: inner
                    .spec
                    .path
                    .as_deref()
                    .filter(|p| !p.is_empty() && *p != "."),
                base: tip.map(|t| t.to_string()),
                force: options.overwrite,
                author: identity("author", &inner.author)?,
                committer: identity("committer", &inner.committer)?,
                message,
                env: inner.mirror.push_env(),
            };
            match p.run_blocking(&dir, &inner.publish_tmp)? {
                publish::Pushed::Commit(c) => {
                    let id = ObjectId::from_hex(c.as_bytes()).map_err(|e| {
                        backend(&name, format!("git made a bad commit id {c:?}"), e)
                    })?;
                    to_version(id)
                }
                publish::Pushed::Unchanged => match current {
                    Some(c) => to_version(c),
                    None => Err(Error::backend(KIND, &name, "nothing to publish")),
                },
                publish::Pushed::Moved(found) => Err(Error::OutputMoved {
                    kind: KIND.to_owned(),
                    source_name: name,
                    expected: options.expected,
                    found: found
                        .and_then(|f| ObjectId::from_hex(f.as_bytes()).ok())
                        .map(to_version)
                        .transpose()?
                        .map(|v| v.version),
                }),
            }
        })
        .await
    }

    /// A commit dtk published names its run in trailers (`Dkt-Run:`, `Dkt-Node:`,
    /// `Dkt-Manifest:`); `reference` is `sha1:HEX` or a full 40-digit commit ID. Read
    /// from the mirror as the last poll left it (nothing is fetched): a commit the mirror
    /// does not hold, or one without a `Dkt-Run:` trailer, is `None`.
    async fn provenance_of(
        &self,
        reference: &str,
    ) -> Result<Option<dtk_api::source::ArtifactProvenance>> {
        let hex = reference.strip_prefix("sha1:").unwrap_or(reference);
        let Ok(commit) = ObjectId::from_hex(hex.to_ascii_lowercase().as_bytes()) else {
            return Ok(None);
        };
        let inner = self.inner.clone();
        blocking(self.name(), move || {
            if !inner.mirror.exists() {
                return Ok(None);
            }
            let repo = inner
                .mirror
                .open()
                .map_err(|e| open_error(inner.spec.name.as_str(), &inner.mirror, e))?;
            let Ok(found) = repo.find_commit(commit) else {
                return Ok(None);
            };
            let message = found
                .message_raw()
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .unwrap_or_default();
            Ok(provenance_from_trailers(&message, commit))
        })
        .await
    }

    /// Re-hash the commit object in the mirror (`sha1("commit <len>\0" + data)`) and compare
    /// it with the version; a commit missing from the mirror is unavailable.
    async fn verify(&self, version: &Version) -> Result<dtk_api::Verification> {
        use sha1::sha1_hex;
        let commit = commit_of(version)?;
        let inner = self.inner.clone();
        let version = version.clone();
        blocking(self.name(), move || {
            let repo = inner
                .mirror
                .open()
                .map_err(|e| open_error(inner.spec.name.as_str(), &inner.mirror, e))?;
            let Ok(object) = repo.find_object(commit) else {
                return Ok(dtk_api::Verification::Unavailable(format!(
                    "commit {commit} is not in the mirror of {}",
                    redact_url(&inner.mirror.location)
                )));
            };
            let mut framed = format!("{} {}\0", object.kind, object.data.len()).into_bytes();
            framed.extend_from_slice(&object.data);
            let found = sha1_hex(&framed);
            if found == version.hex() {
                Ok(dtk_api::Verification::Verified)
            } else {
                Ok(dtk_api::Verification::Mismatch {
                    expected: version.clone(),
                    found: format!("sha1:{found}").parse()?,
                })
            }
        })
        .await
    }
}
