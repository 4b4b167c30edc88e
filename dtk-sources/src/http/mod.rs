//! The `http` kind: one artifact (a release tarball, a nightly build) at an `http://` or
//! `https://` URL, versioned by the `sha256:` of its content.
//!
//! ```text
//! dkt source add tarball https://example.com/releases/x-1.2.tar.gz
//! dkt source add nightly https://example.com/nightly/latest.zip -k http
//! ```
//!
//! - **Versions**: `sha256:` of the bytes the URL serves. A poll ([`Source::latest`])
//!   sends a conditional GET (`If-None-Match` / `If-Modified-Since`) when the server gave
//!   an `ETag` or `Last-Modified` last time: a `304 Not Modified` means the content is the
//!   one already hashed, and nothing is downloaded.
//! - **Cache**: `<cache>/http/<key>/` (the key is derived from the URL) holds `state.json`
//!   (the last `ETag`, `Last-Modified`, size and sha256, plus those of the versions seen
//!   before) and the current content, in a file named by its sha256. Downloads stream into
//!   a temporary file that is renamed into place once complete and hashed, so the cache
//!   never holds a partial file under a final name.
//! - **Materialize**: copies the cached content into the scratch directory under the URL's
//!   file name (`ROOT/x-1.2.tar.gz`), re-hashing it on the way; when the cache lacks the
//!   version, the URL is polled first. A version the URL no longer serves is
//!   [`Error::NotFound`]: an http source keeps only its current content.
//! - **Fields**: `ROOT` (the directory holding the file), `FILE` (the file), `URL`, and
//!   `ETAG` / `LAST_MODIFIED` when the server gave them for that version.
//! - **Capabilities**: no history (dtk lists the versions it recorded), no tags, no
//!   sub-path, no publish. [`Source::verify`] downloads the URL again and re-hashes it.
//!
//! See `docs/http-kind.md`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use dtk_api::source::not_supported;
use dtk_api::{
    async_trait, Algo, Capabilities, Context, Error, Fields, IoResultExt, Kind, NewSource, Result,
    Source, SourceSpec, Verification, Version, VersionInfo,
};
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::net;

/// The kind's name.
const KIND: &str = "http";
/// [`HttpKind::infer`]'s score for a URL whose last segment looks like a file
/// (`x.tar.gz`): above the `git` kind's 20 for URLs.
const INFER_FILE: u8 = 25;
/// [`HttpKind::infer`]'s score for any other `http(s)://` URL: below the `git` kind's.
const INFER_OTHER: u8 = 5;
/// How many past versions `state.json` remembers (for `ETAG` / `LAST_MODIFIED` fields and
/// for [`Source::verify`]).
const SEEN_MAX: usize = 32;
/// The file name used when the URL's path gives none.
const DEFAULT_FILE_NAME: &str = "download";
/// Hosts whose two-segment URLs are repositories (left to the `git` kind).
const FORGES: &[&str] = &["github.com", "gitlab.com", "bitbucket.org", "codeberg.org"];

/// The `http` kind: one artifact at a URL.
///
/// Register it with `registry.register(Arc::new(HttpKind::default()))`.
#[derive(Debug, Default, Clone)]
pub struct HttpKind {
    _private: (),
}

impl HttpKind {
    /// The kind.
    pub fn new() -> Self {
        Self::default()
    }
}

fn capabilities() -> Capabilities {
    Capabilities::none()
}

#[async_trait]
impl Kind for HttpKind {
    fn name(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    /// `Some(25)` for an `http://` or `https://` URL whose last path segment has a file
    /// extension other than `.git` (`.../x.tar.gz`), which beats the `git` kind; `Some(5)`
    /// for other `http(s)` URLs (so repository URLs go to `git`); `None` otherwise.
    fn infer(&self, location: &str) -> Option<u8> {
        let lower = location.trim().to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return None;
        }
        let url = Url::parse(location.trim()).ok()?;
        let path = url.path();
        if path
            .trim_end_matches('/')
            .to_ascii_lowercase()
            .ends_with(".git")
        {
            return None;
        }
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let forge_repo = url
            .host_str()
            .is_some_and(|h| FORGES.iter().any(|f| h.eq_ignore_ascii_case(f)))
            && segments.len() <= 2;
        let file_like = !path.ends_with('/')
            && segments.last().is_some_and(|last| {
                last.rsplit_once('.')
                    .is_some_and(|(stem, ext)| !stem.is_empty() && !ext.is_empty())
            });
        Some(if file_like && !forge_repo {
            INFER_FILE
        } else {
            INFER_OTHER
        })
    }

    /// Check the URL (`http` or `https`, a host, no password) and download it once, which
    /// fills the cache so that the first poll is a conditional request.
    async fn resolve(&self, ctx: &Context, new: NewSource) -> Result<SourceSpec> {
        if let Some(tag) = &new.tag {
            return Err(Error::invalid("tag", tag, "an http source has no tags"));
        }
        if let Some(p) = &new.path {
            return Err(Error::invalid(
                "path",
                p,
                "an http source is one file: it has no sub-paths",
            ));
        }
        let given = new.location.as_deref().ok_or_else(|| {
            Error::invalid(
                "location",
                "",
                "an http source needs a URL (http:// or https://)",
            )
        })?;
        let url = parse_url(given)?;
        let spec = SourceSpec::new(new.name, KIND, url.as_str());
        let source = HttpSource::new(ctx, &spec)?;
        source.fetch().await?;
        Ok(spec)
    }

    fn open(&self, ctx: &Context, spec: &SourceSpec) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(HttpSource::new(ctx, spec)?))
    }
}

/// A location as a URL: `http` or `https`, with a host, without a password (it would be
/// stored in the project and shown); the fragment is dropped.
fn parse_url(given: &str) -> Result<Url> {
    let trimmed = given.trim();
    let mut url = Url::parse(trimmed).map_err(|e| {
        Error::invalid(
            "URL",
            redact_userinfo(trimmed),
            format!("not a valid URL: {e}"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::invalid(
            "URL",
            redact_userinfo(trimmed),
            "an http source needs an http:// or https:// URL",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid("URL", trimmed, "the URL has no host"));
    }
    if url.password().is_some() || !url.username().is_empty() {
        return Err(Error::invalid(
            "URL",
            net::shown_url(&url),
            "a URL must not hold a user name, token or password (it would be stored in the project and its history); keep credentials in the secrets (`dkt secret set NAME`)",
        ));
    }
    url.set_fragment(None);
    Ok(url)
}

/// `s` with whatever precedes an `@` (after the scheme) replaced by `***`: a URL-looking
/// string may hold a password there.
fn redact_userinfo(s: &str) -> String {
    if let Some(at) = s.rfind('@') {
        let start = s.find("://").map(|i| i + 3).unwrap_or(0);
        if start <= at {
            return format!("{}***{}", &s[..start], &s[at..]);
        }
    }
    s.to_owned()
}

/// One version as the server served it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    /// Hex sha256 of the content.
    sha256: String,
    /// Its size in bytes.
    size: u64,
    /// The `ETag` that came with it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    /// The `Last-Modified` that came with it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
}

/// `state.json` of a URL's cache directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    /// The URL (to tell cache directories apart by hand).
    url: String,
    /// What the URL served at the last poll; its content is the file named by its sha256.
    current: Option<Seen>,
    /// The versions seen, newest first (at most [`SEEN_MAX`]).
    #[serde(default)]
    seen: Vec<Seen>,
}

/// An `http` source: the artifact at its URL.
pub struct HttpSource {
    spec: SourceSpec,
    url: Url,
    file_name: String,
    dir: PathBuf,
    ctx: Context,
    client: OnceLock<reqwest::Client>,
    /// Serializes polls of this source within the process.
    lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSource")
            .field("name", &self.spec.name)
            .field("url", &net::shown_url(&self.url))
            .field("file_name", &self.file_name)
            .field("cache", &self.dir)
            .finish_non_exhaustive()
    }
}

impl HttpSource {
    /// Open the source described by `spec` (no I/O).
    ///
    /// # Errors
    /// [`Error::Invalid`] when the location is not an `http(s)` URL.
    pub fn new(ctx: &Context, spec: &SourceSpec) -> Result<Self> {
        let url = parse_url(&spec.location)?;
        let file_name = net::file_name_of(None, &url).unwrap_or_else(|| DEFAULT_FILE_NAME.into());
        let key = net::hex(&sha2::Sha256::digest(url.as_str().as_bytes()));
        let dir = ctx.cache_dir.join(KIND).join(&key[..32]);
        Ok(HttpSource {
            spec: spec.clone(),
            url,
            file_name,
            dir,
            ctx: ctx.clone(),
            client: OnceLock::new(),
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The directory of this URL's cache.
    pub fn cache_dir(&self) -> &Path {
        &self.dir
    }

    /// The name the content gets in `ROOT`: the URL's last path segment.
    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    fn name(&self) -> &str {
        self.spec.name.as_str()
    }

    fn client(&self) -> Result<&reqwest::Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = net::client(&self.ctx, KIND, self.name())?;
        Ok(self.client.get_or_init(|| c))
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn blob(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// The cache's state; a missing or unreadable one is empty (the cache is only a cache).
    fn load_state(&self) -> State {
        let path = self.state_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "ignoring a corrupt http cache state");
                State::default()
            }),
            Err(_) => State::default(),
        }
    }

    fn save_state(&self, state: &State) -> Result<()> {
        let path = self.state_path();
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::backend(KIND, self.name(), format!("cannot encode state: {e}")))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).at(&self.dir)?;
        tmp.write_all(&bytes).at(tmp.path())?;
        tmp.as_file().sync_all().at(tmp.path())?;
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        Ok(())
    }

    /// A fresh, unused path in the cache directory for a download in progress.
    fn incoming(&self) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.dir
            .join(format!(".incoming-{}-{n}-{nanos}", std::process::id()))
    }

    /// Poll the URL: a conditional GET when the cache holds the last content and the server
    /// gave validators, else a download into the cache. Returns what the URL serves now.
    async fn fetch(&self) -> Result<Seen> {
        let _guard = self.lock.lock().await;
        std::fs::create_dir_all(&self.dir).at(&self.dir)?;
        let mut state = self.load_state();
        let cached = state
            .current
            .clone()
            .filter(|c| self.blob(&c.sha256).is_file());
        let mut req = self.client()?.get(self.url.clone());
        if let Some(c) = &cached {
            if let Some(etag) = &c.etag {
                req = req.header(IF_NONE_MATCH, etag);
            }
            if let Some(lm) = &c.last_modified {
                req = req.header(IF_MODIFIED_SINCE, lm);
            }
        }
        let resp = net::send(KIND, self.name(), self.url.as_str(), req).await?;
        if resp.status() == StatusCode::NOT_MODIFIED {
            if let Some(c) = cached {
                tracing::debug!(source = self.name(), "not modified");
                return Ok(c);
            }
        }
        let resp = net::check_status(KIND, self.name(), "file", resp)?;
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header(ETAG);
        let last_modified = header(LAST_MODIFIED);
        let incoming = self.incoming();
        let got = net::download(
            &self.ctx,
            KIND,
            self.name(),
            &self.file_name,
            resp,
            &incoming,
        )
        .await?;
        let blob = self.blob(&got.sha256);
        if let Err(e) = std::fs::rename(&incoming, &blob) {
            let _ = std::fs::remove_file(&incoming);
            return Err(Error::io(&blob, e));
        }
        let seen = Seen {
            sha256: got.sha256,
            size: got.size,
            etag,
            last_modified,
        };
        state.url = self.url.to_string();
        state.current = Some(seen.clone());
        state.seen.retain(|s| s.sha256 != seen.sha256);
        state.seen.insert(0, seen.clone());
        state.seen.truncate(SEEN_MAX);
        self.save_state(&state)?;
        self.prune(&seen.sha256);
        Ok(seen)
    }

    /// Remove the cached contents other than `keep` (best effort).
    fn prune(&self, keep: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) && name != keep {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Copy the cached content of `version` into `scratch` (re-hashing it); `false` when
    /// the cache does not hold it (a corrupt cached copy is dropped).
    async fn copy_cached(&self, version: &Version, scratch: &Path) -> Result<bool> {
        let blob = self.blob(version.hex());
        if !blob.is_file() {
            return Ok(false);
        }
        let dest = scratch.join(&self.file_name);
        let scratch = scratch.to_owned();
        let want = version.hex().to_owned();
        let name = self.name().to_owned();
        tokio::task::spawn_blocking(move || copy_hashing(&blob, &scratch, &dest, &want))
            .await
            .map_err(|e| Error::Backend {
                kind: KIND.to_owned(),
                source_name: name,
                message: "a file system task failed".to_owned(),
                source: Some(Box::new(e)),
            })?
    }
}

/// Copy `blob` to `dest` through a temporary file in `scratch`, hashing; when the hash is
/// not `want`, drop the blob (the cache was corrupt) and return `false`.
fn copy_hashing(blob: &Path, scratch: &Path, dest: &Path, want: &str) -> Result<bool> {
    std::fs::create_dir_all(scratch).at(scratch)?;
    let mut src = match std::fs::File::open(blob) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(blob, e)),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(scratch).at(scratch)?;
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = src.read(&mut buf).at(blob)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        tmp.write_all(&buf[..n]).at(tmp.path())?;
    }
    if net::hex(&sha.finalize()) != want {
        tracing::warn!(file = %blob.display(), "dropping a corrupt cached http download");
        let _ = std::fs::remove_file(blob);
        return Ok(false);
    }
    tmp.persist(dest).map_err(|e| Error::io(dest, e.error))?;
    Ok(true)
}

fn sha256_version(hex: &str) -> Result<Version> {
    format!("sha256:{hex}").parse()
}

#[async_trait]
impl Source for HttpSource {
    fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    /// Poll the URL (a conditional GET when possible); the version is the content's
    /// sha256, with its size as the `SIZE` column.
    async fn latest(&self) -> Result<VersionInfo> {
        let seen = self.fetch().await?;
        let mut info = VersionInfo::new(sha256_version(&seen.sha256)?);
        info.extra.insert("SIZE".to_owned(), seen.size.to_string());
        Ok(info)
    }

    async fn versions(&self) -> Result<Vec<VersionInfo>> {
        Err(not_supported(self, "list versions"))
    }

    fn fields(&self, version: Option<&Version>, root: &Path) -> Result<Fields> {
        let root_str = root.to_str().ok_or_else(|| {
            Error::invalid("ROOT", root.display().to_string(), "is not valid UTF-8")
        })?;
        let mut f = Fields::new();
        f.insert("ROOT".to_owned(), root_str.to_owned());
        f.insert(
            "FILE".to_owned(),
            root.join(&self.file_name).to_string_lossy().into_owned(),
        );
        f.insert("URL".to_owned(), self.url.to_string());
        if let Some(v) = version {
            let state = self.load_state();
            if let Some(s) = state.seen.iter().find(|s| s.sha256 == v.hex()) {
                if let Some(e) = &s.etag {
                    f.insert("ETAG".to_owned(), e.clone());
                }
                if let Some(lm) = &s.last_modified {
                    f.insert("LAST_MODIFIED".to_owned(), lm.clone());
                }
            }
        }
        Ok(f)
    }

    /// Copy the content into `scratch` under the URL's file name and return `scratch`;
    /// polls first when the cache does not hold `version`.
    async fn materialize(&self, version: &Version, scratch: &Path) -> Result<PathBuf> {
        let not_found = |hint: String| Error::NotFound {
            what: "version",
            name: version.to_string(),
            hint,
        };
        if version.algo() != Algo::Sha256 {
            return Err(not_found(format!(
                ": http source {:?} has sha256 versions",
                self.name()
            )));
        }
        if self.copy_cached(version, scratch).await? {
            return Ok(scratch.to_owned());
        }
        let now = self.fetch().await?;
        if self.copy_cached(version, scratch).await? {
            return Ok(scratch.to_owned());
        }
        Err(not_found(format!(
            ": {} now serves sha256:{} (an http source keeps only its current content)",
            net::shown_url(&self.url),
            now.sha256
        )))
    }

    async fn publish(&self, _dir: &Path) -> Result<VersionInfo> {
        Err(not_supported(self, "publish"))
    }

    /// Download the URL again (unconditionally) and re-hash it: verified when it is still
    /// `version`; a mismatch when the server sends the same strong `ETag` it sent with
    /// `version` but other bytes; otherwise unavailable (the URL serves a newer version).
    async fn verify(&self, version: &Version) -> Result<Verification> {
        std::fs::create_dir_all(&self.dir).at(&self.dir)?;
        let req = self.client()?.get(self.url.clone());
        let resp = net::send(KIND, self.name(), self.url.as_str(), req).await?;
        let resp = net::check_status(KIND, self.name(), "file", resp)?;
        let etag = resp
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let incoming = self.incoming();
        let got = net::download(
            &self.ctx,
            KIND,
            self.name(),
            &self.file_name,
            resp,
            &incoming,
        )
        .await;
        let _ = std::fs::remove_file(&incoming);
        let got = got?;
        if got.sha256 == version.hex() {
            return Ok(Verification::Verified);
        }
        let found = sha256_version(&got.sha256)?;
        let recorded_etag = self
            .load_state()
            .seen
            .into_iter()
            .find(|s| s.sha256 == version.hex())
            .and_then(|s| s.etag);
        match (etag, recorded_etag) {
            (Some(now), Some(then)) if now == then && !now.starts_with("W/") => {
                Ok(Verification::Mismatch {
                    expected: version.clone(),
                    found,
                })
            }
            _ => Ok(Verification::Unavailable(format!(
                "{} now serves {found}; an http source keeps only its current content",
                net::shown_url(&self.url)
            ))),
        }
    }

    /// Removes the URL's cache directory.
    async fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&self.dir, e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infers_files_not_repositories() {
        let k = HttpKind::new();
        assert_eq!(k.infer("http://127.0.0.1:8080/x.tar.gz"), Some(INFER_FILE));
        assert_eq!(
            k.infer("https://github.com/a/b/releases/download/v1/b.zip"),
            Some(INFER_FILE)
        );
        assert_eq!(
            k.infer("https://github.com/rust-lang/rust.vim"),
            Some(INFER_OTHER)
        );
        assert_eq!(k.infer("https://example.com/nightly/"), Some(INFER_OTHER));
        assert_eq!(k.infer("https://example.com/a/repo.git"), None);
        assert_eq!(k.infer("ftp://example.com/x.tar.gz"), None);
        assert_eq!(k.infer("/tmp/x.tar.gz"), None);
    }

    #[test]
    fn urls_are_checked() {
        assert!(parse_url("https://example.com/x.tgz#frag").is_ok());
        let e = parse_url("https://user:hunter2@example.com/x").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = parse_url("ftp://x/y").unwrap_err().to_string();
        assert!(e.contains("ftp://x/y"), "{e}");
        let e = parse_url("ht!tp:/nope user:pw@x").unwrap_err().to_string();
        assert!(!e.contains("pw@"), "{e}");
    }
}
