//! The `s3` kind: a key prefix of an S3 bucket (AWS or any S3-compatible store), versioned
//! by the `md5:` of its listing.
//!
//! # Locations
//!
//! `s3://BUCKET[/PREFIX]`, or a bucket name (`BUCKET[/PREFIX]`) with `-k s3`; `-p PATH`
//! appends to the prefix. Prefixes are segment-wise: `s3://b/in` holds `in/a.txt` but not
//! `inbox/x`. The spec stores the location as `s3://BUCKET[/PREFIX]` and `-p` as its path.
//!
//! # Connection
//!
//! From `[kind.s3]` of `.dkt/config` (`endpoint`, `region`, `allow_http`, `anonymous`,
//! `check_md5`, `imds`), else the standard AWS environment variables (`AWS_ENDPOINT_URL`,
//! `AWS_REGION`, `AWS_ALLOW_HTTP`, ...). Credentials: the project's secrets
//! `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, else the environment (keys, session
//! tokens, web identity, container credentials), else, only with `imds = true`, the
//! instance metadata service (without it, no credentials is a clear error at once). A
//! custom endpoint is addressed path-style (`ENDPOINT/BUCKET/KEY`). Every request is
//! bounded by [`Context::network_timeout`] (transfers: each read), with two quick retries.
//!
//! # Versions
//!
//! `md5:` of a canonical encoding of the listing (relative key, size, ETag of every object,
//! sorted), specified in `docs/s3-kind.md`: any change below the prefix is a new version.
//! An empty prefix of an existing bucket is a valid, empty version. The kind has no history
//! (dtk lists the versions it recorded) and keeps no copies: a version can be materialized
//! only while the prefix still holds it.
//!
//! # Materialize, publish
//!
//! [`Source::materialize`] downloads every object into `SCRATCH/content` (streamed, each
//! to a temporary file renamed into place, checked against the listed size and, for plain
//! md5 ETags, the md5; the directory appears only once complete). [`Source::publish`]
//! uploads a directory (multipart above 5 MiB, skipping objects whose md5 and size are
//! unchanged), then deletes the keys it does not hold. S3 has no multi-object transactions:
//! a failed publish leaves a mix, and its error says what was uploaded and deleted.

mod client;
mod listing;
mod location;
mod profile;
mod transfer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dtk_api::source::not_supported;
use dtk_api::{
    async_trait, Capabilities, Context, Error, Fields, Kind, NewSource, Progress, Result, Source,
    SourceSpec, Verification, Version, VersionInfo,
};
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

use client::Connection;
pub use client::SETTINGS;
use listing::{Entry, Listing};
use location::{normalize_subpath, Location, SCHEME};

/// The kind's name.
const KIND: &str = "s3";
/// How sure [`S3Kind::infer`] is of an `s3://` URL.
const INFER_SCORE: u8 = 50;
/// The directory under the scratch directory where a version is materialized.
pub const CONTENT_DIR: &str = "content";
/// A key that never exists, asked for to tell an empty listing from a garbled one.
const PROBE_KEY: &str = ".dkt-probe-no-such-key";

/// An `object_store` client for `s3://BUCKET[/PREFIX]`, configured as this kind's sources
/// are (the `[kind.s3]` settings and credentials of `ctx`, then the environment; no
/// instance metadata unless allowed), and the prefix under which keys go. dtk's artifact
/// store for remote runs uses it.
///
/// # Errors
/// [`Error::Invalid`] for a bad URL or settings.
pub fn object_store_for(ctx: &Context, url: &str) -> Result<(Arc<dyn ObjectStore>, String)> {
    let location = Location::parse(url)?;
    let connection = Connection::new(ctx, &location)?;
    let store: Arc<dyn ObjectStore> = connection.transfer.clone();
    Ok((store, location.prefix))
}

/// The `s3` kind: prefixes of S3 buckets.
///
/// Register it with `registry.register(Arc::new(S3Kind::default()))`.
#[derive(Debug, Default, Clone)]
pub struct S3Kind {
    _private: (),
}

impl S3Kind {
    /// The kind.
    pub fn new() -> Self {
        Self::default()
    }
}

fn capabilities() -> Capabilities {
    Capabilities::none().with_publish(true).with_subpath(true)
}

#[async_trait]
impl Kind for S3Kind {
    fn name(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    /// `Some(50)` for `s3://...`; a bare bucket name needs `-k s3`.
    fn infer(&self, location: &str) -> Option<u8> {
        location
            .get(..SCHEME.len())
            .filter(|s| s.eq_ignore_ascii_case(SCHEME))
            .map(|_| INFER_SCORE)
    }

    /// Parse the location and `-p`, then check that the bucket exists and can be listed
    /// (one request).
    async fn resolve(&self, ctx: &Context, new: NewSource) -> Result<SourceSpec> {
        if let Some(tag) = &new.tag {
            return Err(Error::invalid("tag", tag, "an s3 source has no tags"));
        }
        let Some(typed) = new.location.as_deref() else {
            return Err(Error::invalid(
                "location",
                "",
                "an s3 source needs a location: s3://BUCKET[/PREFIX] or a bucket name",
            ));
        };
        let base = Location::parse(typed)?;
        let sub = new
            .path
            .as_deref()
            .map(normalize_subpath)
            .transpose()?
            .filter(|s| !s.is_empty());
        let mut spec = SourceSpec::new(new.name, KIND, base.url());
        spec.path = sub;
        let source = S3Source::new(ctx, &spec)?;
        source.check_bucket().await?;
        Ok(spec)
    }

    fn open(&self, ctx: &Context, spec: &SourceSpec) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(S3Source::new(ctx, spec)?))
    }
}

/// What the provenance object beside a prefix is called: `PREFIX` and this suffix.
pub const PROVENANCE_SUFFIX: &str = ".dkt-provenance.json";

/// An `s3` source: the objects below a prefix of a bucket.
#[derive(Clone)]
pub struct S3Source {
    spec: SourceSpec,
    location: Location,
    conn: Connection,
    progress: Arc<dyn Progress>,
}

impl std::fmt::Debug for S3Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Source")
            .field("name", &self.spec.name.as_str())
            .field("url", &self.location.url())
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl S3Source {
    /// Open the source described by `spec` (no network).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad location or sub-path, bad `[kind.s3]` settings, or
    /// half-given credentials.
    pub fn new(ctx: &Context, spec: &SourceSpec) -> Result<Self> {
        if !spec
            .location
            .get(..SCHEME.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(SCHEME))
        {
            return Err(Error::invalid(
                "location",
                &spec.location,
                "an s3 source's location is s3://BUCKET[/PREFIX]",
            ));
        }
        let base = Location::parse(&spec.location)?;
        let location = match spec.path.as_deref() {
            Some(p) => base.join(&normalize_subpath(p)?),
            None => base,
        };
        let conn = Connection::new(ctx, &location)?;
        Ok(S3Source {
            spec: spec.clone(),
            location,
            conn,
            progress: ctx.progress.clone(),
        })
    }

    /// `s3://BUCKET[/PREFIX]`, the sub-path included.
    pub fn url(&self) -> String {
        self.location.url()
    }

    fn name(&self) -> &str {
        self.spec.name.as_str()
    }

    fn prefix_path(&self) -> Result<Option<object_store::path::Path>> {
        if self.location.prefix.is_empty() {
            return Ok(None);
        }
        object_store::path::Path::parse(&self.location.prefix)
            .map(Some)
            .map_err(|e| Error::invalid("path", &self.location.prefix, e.to_string()))
    }

    /// One listing request: the bucket exists and can be listed.
    async fn check_bucket(&self) -> Result<()> {
        let prefix = self.prefix_path()?;
        let mut stream = self.conn.meta.list(prefix.as_ref());
        if let Some(Err(e)) = stream.next().await {
            return Err(self.error(&format!("listing {}", self.url()), &e));
        }
        Ok(())
    }

    fn error(&self, what: &str, e: &object_store::Error) -> Error {
        self.conn.error(self.name(), what, e)
    }

    /// List the prefix now.
    async fn listing(&self) -> Result<Listing> {
        let prefix = self.prefix_path()?;
        let what = format!("listing {}", self.url());
        let mut stream = self.conn.meta.list(prefix.as_ref());
        let mut entries = Vec::new();
        let strip = prefix.as_ref().map(|p| format!("{p}/"));
        while let Some(item) = stream.next().await {
            let meta = item.map_err(|e| self.error(&what, &e))?;
            let key = meta.location.to_string();
            let rel = match &strip {
                None => key.clone(),
                Some(s) => match key.strip_prefix(s.as_str()) {
                    Some(r) => r.to_owned(),
                    None => {
                        return Err(Error::backend(
                            KIND,
                            self.name(),
                            format!("{what}: the store listed key {key:?}, which is not below the prefix (garbled listing)"),
                        ))
                    }
                },
            };
            entries.push(Entry {
                key,
                rel,
                size: meta.size,
                raw_etag: meta.e_tag,
            });
        }
        if entries.is_empty() {
            self.probe(prefix.as_ref()).await?;
        }
        Ok(Listing::new(entries))
    }

    /// An empty listing is also what a server that is not S3 (an HTML error page, a
    /// captive portal) seems to answer: check that a key that cannot exist is not found.
    async fn probe(&self, prefix: Option<&object_store::path::Path>) -> Result<()> {
        let probe = match prefix {
            Some(p) => p.clone().join(PROBE_KEY),
            None => object_store::path::Path::from(PROBE_KEY),
        };
        let what = format!("checking the empty listing of {}", self.url());
        match self.conn.meta.head(&probe).await {
            Err(object_store::Error::NotFound { .. })
            | Err(object_store::Error::PermissionDenied { .. }) => Ok(()),
            Err(e) => Err(self.error(&what, &e)),
            Ok(_) => Err(Error::backend(
                KIND,
                self.name(),
                format!(
                    "{}: garbled response while listing {}: the listing parsed as empty but the store then claims to hold \"{probe}\"; this does not look like an S3 endpoint",
                    self.conn.endpoint,
                    self.url()
                ),
            )),
        }
    }

    /// The error for a version the prefix no longer holds.
    fn gone(&self, version: &Version, now: &Version) -> Error {
        Error::NotFound {
            what: "version",
            name: version.to_string(),
            hint: format!(
                ": {} now holds {now} (s3 source {:?}; an s3 source keeps no copies, only the prefix's current content can be read)",
                self.url(),
                self.name()
            ),
        }
    }
}

#[async_trait]
impl Source for S3Source {
    fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn latest(&self) -> Result<VersionInfo> {
        Ok(VersionInfo::new(self.listing().await?.version()))
    }

    async fn versions(&self) -> Result<Vec<VersionInfo>> {
        Err(not_supported(self, "list versions"))
    }

    /// `ROOT`, `BUCKET`, `PREFIX` (empty for the whole bucket) and `URL`.
    fn fields(&self, _version: Option<&Version>, root: &Path) -> Result<Fields> {
        let root = root.to_str().ok_or_else(|| {
            Error::invalid("ROOT", root.display().to_string(), "is not valid UTF-8")
        })?;
        Ok(Fields::from([
            ("ROOT".to_owned(), root.to_owned()),
            ("BUCKET".to_owned(), self.location.bucket.clone()),
            ("PREFIX".to_owned(), self.location.prefix.clone()),
            ("URL".to_owned(), self.url()),
        ]))
    }

    /// Download the prefix into `scratch/content` when it still holds `version`; otherwise
    /// [`Error::NotFound`] naming the version.
    async fn materialize(&self, version: &Version, scratch: &Path) -> Result<PathBuf> {
        let listing = self.listing().await?;
        let now = listing.version();
        if &now != version {
            return Err(self.gone(version, &now));
        }
        transfer::materialize(self, &listing, scratch).await
    }

    /// Upload `dir` to the prefix, delete the keys it does not hold, and list again.
    async fn publish(&self, dir: &Path) -> Result<VersionInfo> {
        transfer::publish(self, dir, &object_store::Attributes::new()).await?;
        self.latest().await
    }

    /// As [`publish`](Source::publish) after checking the listing's digest against
    /// `options.expected`, for a run: each object uploaded carries the run's provenance as
    /// user metadata (`x-amz-meta-dkt-run`, `-dkt-node`, `-dkt-manifest`), and a
    /// provenance object is written beside the prefix, `PREFIX.dkt-provenance.json`
    /// (outside it, so it is not part of the version; not written for a whole bucket).
    async fn publish_with(
        &self,
        dir: &Path,
        options: &dtk_api::PublishOptions,
    ) -> Result<VersionInfo> {
        if !options.overwrite {
            dtk_api::source::check_expected(self, options).await?;
        }
        let attributes = transfer::provenance_attributes(options);
        transfer::publish(self, dir, &attributes).await?;
        let info = self.latest().await?;
        if let (Some(run), false) = (&options.run, self.location.prefix.is_empty()) {
            let body = serde_json::json!({
                "_type": "https://dtk.dev/provenance/v1",
                "url": self.url(),
                "version": info.version.to_string(),
                "source": self.spec.name.as_str(),
                "run": run,
                "node": options.node,
                "manifest": options.manifest,
            });
            let text = serde_json::to_vec_pretty(&body).map_err(|e| {
                Error::backend(
                    KIND,
                    self.name(),
                    format!("cannot write the provenance object: {e}"),
                )
            })?;
            let k = format!(
                "{}{}",
                self.location.prefix.trim_end_matches('/'),
                PROVENANCE_SUFFIX
            );
            transfer::put_object(self, &k, text, attributes).await?;
        }
        Ok(info)
    }

    /// For `s3://BUCKET/KEY` of this source's bucket: the `x-amz-meta-dkt-run`, `-dkt-node`
    /// and `-dkt-manifest` metadata of that object (a `HEAD`; no version: the object alone
    /// does not tell the listing's).
    async fn provenance_of(
        &self,
        reference: &str,
    ) -> Result<Option<dtk_api::source::ArtifactProvenance>> {
        let Some(rest) = reference.strip_prefix(SCHEME) else {
            return Ok(None);
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket != self.location.bucket || key.is_empty() || key.ends_with('/') {
            return Ok(None);
        }
        let path = object_store::path::Path::parse(key)
            .map_err(|e| Error::invalid("S3 key", key, e.to_string()))?;
        let what = format!("reading the metadata of {reference}");
        let options = object_store::GetOptions {
            head: true,
            ..Default::default()
        };
        let got = match self.conn.meta.get_opts(&path, options).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::NotFound {
                    what: "S3 object",
                    name: reference.to_owned(),
                    hint: String::new(),
                })
            }
            Err(e) => return Err(self.error(&what, &e)),
        };
        let meta = |k: &str| {
            got.attributes
                .get(&object_store::Attribute::Metadata(k.to_owned().into()))
                .map(|v| v.as_ref().to_owned())
        };
        let Some(run) = meta("dkt-run") else {
            return Ok(None);
        };
        let mut p = dtk_api::source::ArtifactProvenance::new("the object's metadata");
        p.run = Some(run);
        p.node = meta("dkt-node");
        p.manifest = meta("dkt-manifest");
        Ok(Some(p))
    }

    /// Re-list the prefix and compare its digest; when it matches, download every object
    /// whose ETag is a plain md5 and check it (unless `check_md5 = "false"`).
    async fn verify(&self, version: &Version) -> Result<Verification> {
        let listing = self.listing().await?;
        let now = listing.version();
        if &now != version {
            return Ok(if self.spec.latest.as_ref() == Some(version) {
                Verification::Mismatch {
                    expected: version.clone(),
                    found: now,
                }
            } else {
                Verification::Unavailable(format!(
                    "{} now holds {now}; an s3 source keeps no copies",
                    self.url()
                ))
            });
        }
        if !self.conn.settings.check_md5 {
            return Ok(Verification::Verified);
        }
        match transfer::check_contents(self, &listing).await? {
            None => Ok(Verification::Verified),
            Some(found) => Ok(Verification::Mismatch {
                expected: version.clone(),
                found,
            }),
        }
    }
}
