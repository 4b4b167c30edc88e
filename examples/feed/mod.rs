//! A custom source kind, `feed`, written against `dtk-core`'s plugin traits as a third-party
//! plugin would write it.
//!
//! A feed source follows a release feed: a local JSON file listing releases, newest first,
//! each with the URL of its artifact and the artifact's SHA-256:
//!
//! ```json
//! { "releases": [
//!     { "version": "1.2.0", "url": "file:///srv/app/app-1.2.0.tar", "sha256": "3a6e…" },
//!     { "version": "1.1.0", "url": "app-1.1.0.tar", "sha256": "9f04…" }
//! ] }
//! ```
//!
//! - **Location**: the feed file (a path, or a `file://` URL), made absolute by
//!   [`Kind::resolve`], which also checks that the file parses. Without `-k feed`, a
//!   location ending with `.feed.json` is inferred to be a feed.
//! - **Versions**: `sha256:<hex>` of each release's artifact, so a version names the bytes,
//!   not the release label. [`Source::versions`] lists every release (history capability),
//!   newest first, with an extra column `RELEASE` (the release's version string).
//! - **Fields**: `ROOT` (a directory holding the artifact) and `RELEASE`.
//! - **Materialize**: copies the artifact (a `file://` URL, or a path relative to the
//!   feed file) into the scratch directory, checking its SHA-256 on the way: a mismatch is
//!   an error and leaves nothing behind.
//! - **Publish**: not supported (a feed is read-only), so a feed cannot be a node's output.
//!
//! Register it next to the built-in kinds:
//!
//! ```ignore
//! let mut registry = dtk::Registry::new();
//! dtk::dtk_sources::register_all(&mut registry);
//! registry.register(std::sync::Arc::new(feed::FeedKind));
//! ```

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use dtk::source::not_supported;
use dtk::{
    async_trait, Algo, Capabilities, Context, Error, Fields, IoResultExt, Kind, NewSource, Result,
    Source, SourceSpec, Verification, Version, VersionInfo,
};

use sha2::{Digest, Sha256};

/// The kind's name. It is stored with every source of the kind: it must never change.
pub const KIND: &str = "feed";
/// The field and the extra `versions()` column holding a release's version string.
pub const RELEASE: &str = "RELEASE";
/// Locations ending with this are inferred to be feeds.
pub const SUFFIX: &str = ".feed.json";
/// How sure [`FeedKind::infer`] is: above the `path` kind's 10, since a feed file is also a
/// path.
const INFER_SCORE: u8 = 20;

/// What every feed source can do: list its history, nothing else.
fn capabilities() -> Capabilities {
    Capabilities::none().with_history(true)
}

/// The SHA-256 of `bytes` as a dtk version (`sha256:<hex>`).
pub fn sha256_version(bytes: &[u8]) -> Result<Version> {
    let mut h = Sha256::new();
    h.update(bytes);
    Version::from_bytes(Algo::Sha256, &h.finalize())
}

// ------------------------------------------------------------------------- the feed file

/// One release listed by a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Release {
    /// The release's version string (`1.2.0`).
    label: String,
    /// Where its artifact is, as written in the feed.
    url: String,
    /// `sha256:` of the artifact.
    version: Version,
}

impl Release {
    fn info(&self) -> VersionInfo {
        let mut info = VersionInfo::new(self.version.clone());
        info.extra.insert(RELEASE.to_owned(), self.label.clone());
        info
    }
}

/// A parsed feed: its releases, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Feed {
    releases: Vec<Release>,
}

impl Feed {
    /// Parse the feed's JSON. The error is the reason, quoting the bad value; callers say
    /// which feed it is.
    fn parse(text: &str) -> std::result::Result<Feed, String> {
        let root: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let list = root
            .get("releases")
            .and_then(|r| r.as_array())
            .ok_or("expected an object with a \"releases\" array")?;
        let mut releases: Vec<Release> = Vec::with_capacity(list.len());
        for (i, r) in list.iter().enumerate() {
            let text_field = |key: &str| -> std::result::Result<String, String> {
                match r.get(key) {
                    Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                    Some(other) => Err(format!(
                        "releases[{i}].{key} is {other}: expected a non-empty string"
                    )),
                    None => Err(format!("releases[{i}] has no {key:?}")),
                }
            };
            let label = text_field("version")?;
            if label.chars().any(char::is_control) {
                return Err(format!(
                    "releases[{i}].version {label:?} contains control characters"
                ));
            }
            let url = text_field("url")?;
            let digest = text_field("sha256")?;
            let hex = digest.strip_prefix("sha256:").unwrap_or(&digest);
            let version: Version = format!("sha256:{hex}").parse().map_err(|_| {
                format!("releases[{i}].sha256 {digest:?} is not a SHA-256 digest (64 hex digits)")
            })?;
            // The same artifact released twice is one version: keep the newest label.
            if releases.iter().all(|known| known.version != version) {
                releases.push(Release {
                    label,
                    url,
                    version,
                });
            }
        }
        Ok(Feed { releases })
    }

    fn find(&self, version: &Version) -> Option<&Release> {
        self.releases.iter().find(|r| &r.version == version)
    }
}

/// The feed file's path for a typed location: a `file://` URL or a path, relative to
/// `cwd`, made absolute and canonical.
fn locate_feed(cwd: &Path, typed: &str) -> Result<PathBuf> {
    let path = if typed.contains("://") {
        file_url_path(typed).map_err(|reason| Error::invalid("feed location", typed, reason))?
    } else if typed.is_empty() {
        return Err(Error::invalid(
            "feed location",
            typed,
            "a feed source needs the path of its feed file (NAME.feed.json)",
        ));
    } else {
        cwd.join(typed)
    };
    std::fs::canonicalize(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => Error::NotFound {
            what: "feed",
            name: typed.to_owned(),
            hint: format!(" ({} does not exist)", path.display()),
        },
        _ => Error::io(&path, e),
    })
}

/// The path of a `file:///...` (or `file://localhost/...`) URL, percent-decoded.
fn file_url_path(url: &str) -> std::result::Result<PathBuf, String> {
    let rest = url
        .strip_prefix("file://")
        .ok_or("only file:// URLs (and paths) are supported by this kind")?;
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    if !rest.starts_with('/') {
        return Err("a file:// URL must name an absolute path (file:///...)".into());
    }
    let mut bytes = Vec::with_capacity(rest.len());
    let mut it = rest.bytes();
    while let Some(b) = it.next() {
        if b != b'%' {
            bytes.push(b);
            continue;
        }
        let hex: Vec<u8> = it.by_ref().take(2).collect();
        let decoded = std::str::from_utf8(&hex)
            .ok()
            .filter(|h| h.len() == 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or("a '%' must be followed by two hex digits")?;
        bytes.push(decoded);
    }
    Ok(PathBuf::from(OsString::from_vec(bytes)))
}

/// Where a release's artifact is: its `file://` URL, or its path relative to the feed
/// file's directory. The artifact's file name is the URL's last component.
fn artifact_path(feed_file: &Path, url: &str) -> Result<(PathBuf, OsString)> {
    let bad = |reason: &str| Error::invalid("artifact URL", url, reason);
    let path = if url.contains("://") {
        file_url_path(url).map_err(|r| bad(&r))?
    } else {
        let dir = feed_file.parent().unwrap_or(Path::new("/"));
        dir.join(url)
    };
    match path.components().next_back() {
        Some(Component::Normal(name)) => Ok((path.clone(), name.to_owned())),
        _ => Err(bad("it must end with the artifact's file name")),
    }
}

// ------------------------------------------------------------------------- the kind

/// The `feed` kind. Register it with `registry.register(Arc::new(FeedKind))`.
#[derive(Debug, Default, Clone, Copy)]
pub struct FeedKind;

#[async_trait]
impl Kind for FeedKind {
    fn name(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    /// `Some` for locations ending with `.feed.json` (paths or `file://` URLs); no I/O.
    fn infer(&self, location: &str) -> Option<u8> {
        location.ends_with(SUFFIX).then_some(INFER_SCORE)
    }

    /// Make the location an absolute path and check that the feed parses and lists at
    /// least one release whose artifact URL this kind can read.
    async fn resolve(&self, ctx: &Context, new: NewSource) -> Result<SourceSpec> {
        if let Some(tag) = &new.tag {
            return Err(Error::invalid("tag", tag, "a feed source has no tags"));
        }
        if let Some(path) = &new.path {
            return Err(Error::invalid(
                "sub-path",
                path,
                "a feed source has no sub-paths",
            ));
        }
        let typed = new.location.as_deref().unwrap_or_default();
        let path = locate_feed(&ctx.cwd, typed)?;
        let text = tokio::fs::read_to_string(&path).await.at(&path)?;
        let feed = Feed::parse(&text).map_err(|reason| Error::invalid("feed", typed, reason))?;
        if feed.releases.is_empty() {
            return Err(Error::invalid("feed", typed, "it lists no release"));
        }
        for r in &feed.releases {
            artifact_path(&path, &r.url)?;
        }
        let location = path.to_str().ok_or_else(|| {
            Error::invalid(
                "feed location",
                path.display().to_string(),
                "is not valid UTF-8",
            )
        })?;
        Ok(SourceSpec::new(new.name, KIND, location))
    }

    fn open(&self, _ctx: &Context, spec: &SourceSpec) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(FeedSource::new(spec)?))
    }
}

// ------------------------------------------------------------------------- the source

/// One feed source.
#[derive(Debug)]
pub struct FeedSource {
    spec: SourceSpec,
    /// The feed file.
    path: PathBuf,
    /// The feed as the last poll read it, for `versions()` and `fields()`.
    last: Mutex<Option<Arc<Feed>>>,
}

impl FeedSource {
    /// Open the source described by `spec` (no I/O).
    pub fn new(spec: &SourceSpec) -> Result<Self> {
        let path = PathBuf::from(&spec.location);
        if !path.is_absolute() {
            return Err(Error::invalid(
                "location",
                &spec.location,
                "a feed source's location must be an absolute path",
            ));
        }
        Ok(FeedSource {
            spec: spec.clone(),
            path,
            last: Mutex::new(None),
        })
    }

    /// An [`Error::Backend`] for this source.
    fn failure(
        &self,
        message: String,
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Backend {
            kind: KIND.to_owned(),
            source_name: self.spec.name.to_string(),
            message,
            source: cause,
        }
    }

    fn parse(&self, text: &str) -> Result<Feed> {
        Feed::parse(text).map_err(|reason| {
            self.failure(
                format!("cannot use the feed {}", self.path.display()),
                Some(Box::new(Error::invalid(
                    "feed",
                    self.path.display().to_string(),
                    reason,
                ))),
            )
        })
    }

    fn cached(&self) -> Option<Arc<Feed>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Read the feed now, and remember it.
    async fn poll(&self) -> Result<Arc<Feed>> {
        let text = tokio::fs::read_to_string(&self.path).await.map_err(|e| {
            self.failure(
                format!("cannot read the feed {}", self.path.display()),
                Some(Box::new(e)),
            )
        })?;
        let feed = Arc::new(self.parse(&text)?);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(feed.clone());
        Ok(feed)
    }

    /// The release that is `version`, reading the feed if the last poll does not list it.
    async fn release(&self, version: &Version) -> Result<Release> {
        if let Some(r) = self.cached().and_then(|f| f.find(version).cloned()) {
            return Ok(r);
        }
        let feed = self.poll().await?;
        feed.find(version)
            .cloned()
            .ok_or_else(|| self.not_listed(version))
    }

    fn not_listed(&self, version: &Version) -> Error {
        Error::NotFound {
            what: "version",
            name: version.to_string(),
            hint: format!(
                ": feed source {:?} ({}) lists no release with this artifact",
                self.spec.name.as_str(),
                self.path.display()
            ),
        }
    }

    /// Run blocking file work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| self.failure("the file task failed".to_owned(), Some(Box::new(e))))?
    }
}

#[async_trait]
impl Source for FeedSource {
    fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    /// Re-read the feed: its first release.
    async fn latest(&self) -> Result<VersionInfo> {
        let feed = self.poll().await?;
        let first = feed.releases.first().ok_or_else(|| {
            self.failure(
                format!("the feed {} lists no release", self.path.display()),
                None,
            )
        })?;
        Ok(first.info())
    }

    /// Every release of the last poll (or of the feed now, if never polled), newest first.
    async fn versions(&self) -> Result<Vec<VersionInfo>> {
        let feed = match self.cached() {
            Some(f) => f,
            None => self.poll().await?,
        };
        Ok(feed.releases.iter().map(Release::info).collect())
    }

    /// `ROOT` and `RELEASE` (empty without a version).
    fn fields(&self, version: Option<&Version>, root: &Path) -> Result<Fields> {
        let root = root.to_str().ok_or_else(|| {
            Error::invalid("ROOT", root.display().to_string(), "is not valid UTF-8")
        })?;
        let label = match version {
            None => String::new(),
            Some(v) => match self
                .cached()
                .and_then(|f| f.find(v).map(|r| r.label.clone()))
            {
                Some(label) => label,
                None => {
                    // Not polled yet (fields is synchronous): read the small feed file here.
                    let text = std::fs::read_to_string(&self.path).map_err(|e| {
                        self.failure(
                            format!("cannot read the feed {}", self.path.display()),
                            Some(Box::new(e)),
                        )
                    })?;
                    let feed = self.parse(&text)?;
                    feed.find(v)
                        .map(|r| r.label.clone())
                        .ok_or_else(|| self.not_listed(v))?
                }
            },
        };
        Ok(Fields::from([
            ("ROOT".to_owned(), root.to_owned()),
            (RELEASE.to_owned(), label),
        ]))
    }

    /// Copy the artifact of `version` into `scratch` (under its file name) and return
    /// `scratch`. The copy is hashed as it is written, under a temporary name: on a
    /// SHA-256 mismatch it is removed and the error names both digests.
    async fn materialize(&self, version: &Version, scratch: &Path) -> Result<PathBuf> {
        let release = self.release(version).await?;
        let (src, name) = artifact_path(&self.path, &release.url)?;
        let partial = scratch.join(partial_name(&name));
        let copied = {
            let (src, partial) = (src.clone(), partial.clone());
            self.blocking(move || copy_hashing(&src, &partial)).await
        };
        let found = copied.inspect_err(|_| {
            let _ = std::fs::remove_file(&partial);
        })?;
        if &found != version {
            let _ = std::fs::remove_file(&partial);
            return Err(self.failure(
                format!(
                    "the artifact of release {} ({}) has {found}, but the feed says {version}",
                    release.label,
                    src.display()
                ),
                None,
            ));
        }
        let dest = scratch.join(&name);
        std::fs::rename(&partial, &dest).at(&dest)?;
        Ok(scratch.to_owned())
    }

    async fn publish(&self, _dir: &Path) -> Result<VersionInfo> {
        Err(not_supported(self, "publish"))
    }

    /// Re-hash the artifact the feed lists for `version`.
    async fn verify(&self, version: &Version) -> Result<Verification> {
        let feed = match self.poll().await {
            Ok(f) => f,
            Err(e) => return Ok(Verification::Unavailable(e.to_string())),
        };
        let Some(release) = feed.find(version) else {
            return Ok(Verification::Unavailable(format!(
                "the feed {} no longer lists it",
                self.path.display()
            )));
        };
        let (src, _) = artifact_path(&self.path, &release.url)?;
        let hashed = {
            let src = src.clone();
            self.blocking(move || hash_file(&src)).await
        };
        Ok(match hashed {
            Ok(found) if &found == version => Verification::Verified,
            Ok(found) => Verification::Mismatch {
                expected: version.clone(),
                found,
            },
            Err(e) => Verification::Unavailable(format!("cannot read the artifact: {e}")),
        })
    }
}

/// `.NAME.partial`: where an artifact is copied before its digest is checked.
fn partial_name(name: &OsStr) -> OsString {
    let mut p = OsString::from(".");
    p.push(name);
    p.push(".partial");
    p
}

/// Copy `src` to `dst` and return the SHA-256 of what was copied.
fn copy_hashing(src: &Path, dst: &Path) -> Result<Version> {
    let mut input = std::fs::File::open(src).at(src)?;
    let mut output = std::fs::File::create(dst).at(dst)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = input.read(&mut buf).at(src)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).at(dst)?;
    }
    output.flush().at(dst)?;
    Version::from_bytes(Algo::Sha256, &hasher.finalize())
}

/// The SHA-256 of the file at `path`.
fn hash_file(path: &Path) -> Result<Version> {
    let mut input = std::fs::File::open(path).at(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = input.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Version::from_bytes(Algo::Sha256, &hasher.finalize())
}
