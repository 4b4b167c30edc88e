//! The `docker` kind: one tag of an image repository in an OCI/Docker registry, versioned
//! by the `sha256:` digest of the manifest (or index, for multi-arch images) it names.
//!
//! ```text
//! dkt source add base ubuntu:22.04 -k docker                 # Docker Hub, library/ubuntu
//! dkt source add app registry.example.com:5000/team/app:v1   # any registry (inferred)
//! dkt source add img 127.0.0.1:5000/team/app -k docker        # tag `latest`
//! ```
//!
//! - **Locations**: `[REGISTRY[:PORT]/]REPO[:TAG]`, read as docker reads them: the first
//!   component names a registry when it holds a `.` or a `:` or is `localhost`; otherwise the
//!   image is on Docker Hub (`registry-1.docker.io`), with `library/` before one-component
//!   names. A `docker://` prefix is accepted. The spec stores `REGISTRY/REPO`
//!   (`docker.io/library/ubuntu`) and the tag (default `latest`).
//! - **Transport**: HTTPS, except plain HTTP for `localhost`, `127.0.0.1`, `[::1]` (as
//!   docker does) and the hosts of the `insecure` setting (`[kind.docker] insecure =
//!   "host:port,host2"` in `.dkt/config`).
//! - **Versions**: [`Source::latest`] fetches the tag's manifest with the OCI index, OCI
//!   manifest, docker manifest list and docker manifest types accepted, and hashes the bytes
//!   received (the `Docker-Content-Digest` header is only checked against them). The
//!   registry keeps no history of a tag, so the kind has no `history` capability:
//!   `dkt source log` lists the digests dtk recorded at each poll or publish.
//! - **Fields**: `ROOT`, `IMAGE` (`REPO@sha256:...`, with the registry for registries other
//!   than Docker Hub: what a build should `docker pull`), `DIGEST`, `TAG`, `REGISTRY`.
//! - **Materialize** writes the image as an OCI image layout (`oci-layout`, `index.json`,
//!   `blobs/sha256/...` with every manifest, config and layer), each blob streamed to disk
//!   and checked against its digest and size.
//! - **Publish** pushes an OCI image layout: missing blobs (streamed from disk), then the
//!   manifests, then the manifest under the tag; the version is the `sha256:` of the exact
//!   manifest bytes pushed. For a run, the top manifest carries its provenance as
//!   annotations (`dev.dtk.run`, `dev.dtk.node`, `dev.dtk.manifest`,
//!   `org.opencontainers.image.created`).
//! - **Credentials**: the `DOCKER_TOKEN` secret, `USER:PASSWORD` (or `USER:ACCESS_TOKEN`),
//!   is sent as Basic credentials to the token realm a registry names, or to the registry
//!   when it asks for Basic; a value without `:` is sent as a bearer token. It never
//!   appears in a spec, an error, a log line or a `Debug` output.
//!
//! See `docs/docker-kind.md` for the details, the errors, and how to run a registry for tests.

mod client;
mod layout;
mod reference;
mod referrers;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use dtk_api::source::not_supported;
use dtk_api::{
    Capabilities, Context, Error, Fields, Kind, NewSource, Result, Source, SourceSpec,
    Verification, Version, VersionInfo,
};

use client::Client;
use layout::{Children, Descriptor, Layout};
use reference::{Reference, DEFAULT_TAG};

/// The kind's name, stored in every spec.
const KIND: &str = "docker";
/// How deep indexes may nest (index → index → manifest).
const MAX_DEPTH: usize = 3;
/// Blobs downloaded or uploaded at once (docker itself does 3 downloads and 5 uploads).
const TRANSFERS: usize = 4;

/// The `docker` kind. Register it into a [`dtk_api::Registry`]:
///
/// ```
/// let mut registry = dtk_api::Registry::new();
/// registry.register(std::sync::Arc::new(dtk_sources::docker::DockerKind::default()));
/// assert_eq!(registry.get("docker").unwrap().name(), "docker");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DockerKind {
    /// Room for options without breaking `DockerKind::default()`.
    _private: (),
}

fn capabilities() -> Capabilities {
    Capabilities::none()
        .with_publish(true)
        .with_tags(true)
        .with_patterns(true)
        .with_attestations(true)
}

#[async_trait]
impl Kind for DockerKind {
    fn name(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    /// Only locations that clearly name a registry (`docker://...`, or a first component
    /// with a `.`, a `:PORT` or `localhost`, that is not a local path, a URL or a git
    /// forge): `user/repo` is ambiguous with GitHub, so give `-k docker` for Docker Hub.
    fn infer(&self, location: &str) -> Option<u8> {
        reference::infer(location)
    }

    async fn resolve(&self, ctx: &Context, new: NewSource) -> Result<SourceSpec> {
        if new
            .path
            .as_deref()
            .is_some_and(|p| !p.is_empty() && p != ".")
        {
            return Err(Error::NotSupported {
                kind: KIND.to_owned(),
                operation: "sub-paths (-p)",
            });
        }
        let given = new.location.as_deref().ok_or_else(|| {
            Error::invalid(
                "location",
                "",
                "a docker source needs a location ([REGISTRY[:PORT]/]REPO[:TAG])",
            )
        })?;
        let r = Reference::parse(given)?;
        let asked = new.tag.as_deref().map(str::trim).filter(|t| !t.is_empty());
        let tag = match (asked, r.tag.as_deref()) {
            (Some(t), Some(l)) if t != l => {
                return Err(Error::invalid(
                    "docker tag",
                    t,
                    format!("the location {given:?} already names tag {l:?}"),
                ))
            }
            (Some(t), _) | (None, Some(t)) => t.to_owned(),
            (None, None) => DEFAULT_TAG.to_owned(),
        };
        reference::check_tag(&tag)?;
        let client = Client::new(ctx, new.name.as_str(), r.clone())?;
        if dtk_api::pattern::is_pattern(&tag) {
            // The tags it matches are read at each poll (none yet is fine); listing them
            // once checks the registry and the credentials.
            client.tags().await?;
        } else {
            // A tag that does not exist yet is fine (a node may publish it first: the
            // source then has no version until it does); an unreachable registry or
            // refused credentials are errors here.
            client.manifest(&tag).await?;
        }
        let mut spec = SourceSpec::new(new.name, KIND, r.location());
        spec.tag = Some(tag);
        Ok(spec)
    }

    fn open(&self, ctx: &Context, spec: &SourceSpec) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(DockerSource::new(ctx, spec)?))
    }
}

fn tag_not_found(tag: &str, client: &Client) -> Error {
    Error::NotFound {
        what: "docker tag",
        name: tag.to_owned(),
        hint: format!(
            " in {} (the registry has no such tag, or no such repository, yet)",
            client.shown()
        ),
    }
}

/// A source of kind `docker`: one tag of one repository.
pub struct DockerSource {
    spec: SourceSpec,
    reference: Reference,
    ctx: Context,
    client: OnceLock<Client>,
}

impl std::fmt::Debug for DockerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerSource")
            .field("spec", &self.spec)
            .field("client", &self.client.get())
            .finish_non_exhaustive()
    }
}

impl DockerSource {
    /// The source of `spec` (its location must be a docker reference). Does no I/O.
    pub fn new(ctx: &Context, spec: &SourceSpec) -> Result<Self> {
        let mut reference = Reference::parse(&spec.location)?;
        reference.tag = None;
        Ok(DockerSource {
            spec: spec.clone(),
            reference,
            ctx: ctx.clone(),
            client: OnceLock::new(),
        })
    }

    fn name(&self) -> &str {
        self.spec.name.as_str()
    }

    fn tag(&self) -> &str {
        self.spec.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    /// The manifest `version` names, fetched from the registry and checked against its
    /// digest; a registry that no longer has it is `NotFound`.
    async fn checked_manifest(
        &self,
        client: &Client,
        version: &Version,
    ) -> Result<client::Fetched> {
        let digest = digest_of(version)?;
        let fetched = client
            .manifest(&digest)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: "version",
                name: version.to_string(),
                hint: format!(": {} no longer has that manifest", client.shown()),
            })?;
        if fetched.digest != digest {
            return Err(self.err(format!(
                "manifest {digest} of {}: the bytes received hash to {}",
                client.shown(),
                fetched.digest
            )));
        }
        Ok(fetched)
    }

    fn client(&self) -> Result<&Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = Client::new(&self.ctx, self.name(), self.reference.clone())?;
        let _ = self.client.set(c);
        self.client
            .get()
            .ok_or_else(|| Error::backend(KIND, self.name(), "cannot set up the registry client"))
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::backend(KIND, self.name(), message)
    }

    /// Write manifest `m` and everything it points at into the layout at `root`.
    async fn pull_tree(&self, client: &Client, top: client::Fetched, root: &Path) -> Result<()> {
        let mut queue = vec![(top, 0usize)];
        while let Some((m, depth)) = queue.pop() {
            let hex = layout::digest_hex(&m.digest).map_err(|e| self.err(e))?;
            let path = layout::blob_path(root, hex);
            if !path.exists() {
                layout::write_atomic(&path, &m.bytes)?;
            }
            let children = layout::children(&m.bytes, &m.media_type).map_err(|e| {
                self.err(format!("manifest {} of {}: {e}", m.digest, client.shown()))
            })?;
            match children {
                Children::Index(ds) => {
                    for d in ds {
                        let is_manifest = d.media_type.as_deref().is_none_or(layout::is_manifest);
                        if !is_manifest {
                            self.pull_blob(client, &d, root).await?;
                            continue;
                        }
                        if depth + 1 > MAX_DEPTH {
                            return Err(self.err(format!(
                                "index {} of {} nests indexes deeper than {MAX_DEPTH}",
                                m.digest,
                                client.shown()
                            )));
                        }
                        let child = client.manifest(&d.digest).await?.ok_or_else(|| {
                            self.err(format!(
                                "index {} of {} lists manifest {} which the registry does not have",
                                m.digest,
                                client.shown(),
                                d.digest
                            ))
                        })?;
                        check_fetched(self, &child, &d)?;
                        queue.push((child, depth + 1));
                    }
                }
                Children::Image(ds) => {
                    // The config and layers, TRANSFERS at a time.
                    use futures::stream::{StreamExt as _, TryStreamExt as _};
                    let pulls: Vec<_> =
                        ds.iter().map(|d| self.pull_blob(client, d, root)).collect();
                    futures::stream::iter(pulls)
                        .buffer_unordered(TRANSFERS)
                        .try_collect::<()>()
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn pull_blob(&self, client: &Client, d: &Descriptor, root: &Path) -> Result<()> {
        let hex = d.hex().map_err(|e| self.err(e))?;
        let path = layout::blob_path(root, hex);
        if path.exists() {
            return Ok(());
        }
        client.download_blob(d, &path).await
    }
}

/// The annotation naming the image a manifest is based on (OCI image spec, annotations).
const BASE_NAME: &str = "org.opencontainers.image.base.name";

/// The repository of the base image that the manifests name (`org.opencontainers.image.
/// base.name`), when it is another repository of the client's registry: where blobs can be
/// mounted from instead of uploaded.
fn base_repo(client: &Client, manifests: &[(Descriptor, Vec<u8>, String)]) -> Option<String> {
    manifests.iter().find_map(|(_, bytes, _)| {
        let m: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let name = m.get("annotations")?.get(BASE_NAME)?.as_str()?;
        let base = reference::Reference::parse(name).ok()?;
        (base.registry == client.registry() && base.repo != client.repo()).then_some(base.repo)
    })
}

/// Check that a manifest fetched by digest is what descriptor `d` says.
fn check_fetched(src: &DockerSource, m: &client::Fetched, d: &Descriptor) -> Result<()> {
    if m.digest != d.digest || m.bytes.len() as u64 != d.size {
        return Err(src.err(format!(
            "manifest {}: received {} bytes hashing to {}, expected {} bytes",
            d.digest,
            m.bytes.len(),
            m.digest,
            d.size
        )));
    }
    Ok(())
}

/// The `sha256:` digest a version names.
fn digest_of(version: &Version) -> Result<String> {
    if version.algo() != dtk_api::Algo::Sha256 {
        return Err(Error::invalid(
            "version",
            version.to_string(),
            "docker versions are sha256: manifest digests",
        ));
    }
    Ok(version.to_string())
}

fn to_version(src: &DockerSource, digest: &str) -> Result<VersionInfo> {
    digest
        .parse::<Version>()
        .map(VersionInfo::new)
        .map_err(|_| src.err(format!("the registry gave an invalid digest {digest:?}")))
}

#[async_trait]
impl Source for DockerSource {
    fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn latest(&self) -> Result<VersionInfo> {
        if self.spec.is_pattern() {
            return self
                .heads()
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| Error::NotFound {
                    what: "docker tag",
                    name: self.tag().to_owned(),
                    hint: " (no tag of the repository matches the pattern)".to_owned(),
                });
        }
        let client = self.client()?;
        match client.manifest(self.tag()).await? {
            Some(m) => to_version(self, &m.digest),
            None => Err(tag_not_found(self.tag(), client)),
        }
    }

    /// List the repository's tags and fetch the manifest of each tag the pattern matches;
    /// tags in reverse name order (a registry keeps no dates).
    async fn heads(&self) -> Result<Vec<VersionInfo>> {
        let pattern = dtk_api::pattern::TagPattern::new(self.tag())?;
        let client = self.client()?;
        let mut tags: Vec<String> = client
            .tags()
            .await?
            .into_iter()
            .filter(|t| pattern.matches(t))
            .collect();
        tags.sort_by(|a, b| b.cmp(a));
        let mut out = Vec::new();
        for t in tags {
            // A tag deleted between the listing and this fetch is simply gone.
            if let Some(m) = client.manifest(&t).await? {
                let mut v = to_version(self, &m.digest)?;
                v.extra.insert(dtk_api::pattern::REF_FIELD.to_owned(), t);
                out.push(v);
            }
        }
        Ok(out)
    }

    /// A registry keeps no history of a tag: `NotSupported`, and dtk lists the digests it
    /// recorded.
    async fn versions(&self) -> Result<Vec<VersionInfo>> {
        Err(not_supported(self, "listing versions"))
    }

    fn fields(&self, version: Option<&Version>, root: &Path) -> Result<Fields> {
        let mut f = Fields::new();
        f.insert("ROOT".to_owned(), root.display().to_string());
        let name = self.reference.pull_name();
        match version {
            Some(v) => {
                let d = digest_of(v)?;
                f.insert("IMAGE".to_owned(), format!("{name}@{d}"));
                f.insert("DIGEST".to_owned(), d);
            }
            None => {
                f.insert("IMAGE".to_owned(), format!("{name}:{}", self.tag()));
                f.insert("DIGEST".to_owned(), String::new());
            }
        }
        f.insert("TAG".to_owned(), self.tag().to_owned());
        if self.spec.is_pattern() {
            // The tag each version came from (dtk sets it from the version's record).
            f.insert(
                dtk_api::pattern::REF_FIELD.to_owned(),
                self.tag().to_owned(),
            );
        }
        f.insert("REGISTRY".to_owned(), self.reference.registry.clone());
        Ok(f)
    }

    /// Write the image at `version` into `scratch` as an OCI image layout and return
    /// `scratch`. `oci-layout` and `index.json` are written last.
    async fn materialize(&self, version: &Version, scratch: &Path) -> Result<PathBuf> {
        if version.algo() != dtk_api::Algo::Sha256 {
            return Err(Error::NotFound {
                what: "version",
                name: version.to_string(),
                hint: format!(
                    ": docker source {:?} has sha256 versions (manifest digests)",
                    self.name()
                ),
            });
        }
        let client = self.client()?;
        let top = self.checked_manifest(client, version).await?;
        let desc = top.descriptor();
        self.pull_tree(client, top, scratch).await?;
        layout::write_atomic(&scratch.join("oci-layout"), layout::oci_layout_file())?;
        layout::write_atomic(
            &scratch.join("index.json"),
            &layout::index_json(&desc, self.tag()),
        )?;
        Ok(scratch.to_owned())
    }

    /// Push the OCI image layout `dir` under the source's tag. Its `index.json` must list
    /// one manifest, or exactly one named after the tag.
    async fn publish(&self, dir: &Path) -> Result<VersionInfo> {
        self.push_layout(dir, None).await
    }

    /// [`publish`](Source::publish) after checking the tag is still at `options.expected`;
    /// for a run, the top manifest pushed carries the run's provenance as annotations
    /// (see `provenance_annotations`), so the version is the digest of the annotated
    /// manifest actually pushed.
    async fn publish_with(
        &self,
        dir: &Path,
        options: &dtk_api::PublishOptions,
    ) -> Result<VersionInfo> {
        if !options.overwrite {
            dtk_api::source::check_expected(self, options).await?;
        }
        self.push_layout(dir, provenance_annotations(options)).await
    }

    /// Push `attestation` as an OCI 1.1 referrer of the image at `version`: an artifact
    /// manifest (`artifactType` the statement's media type, the empty config, the
    /// statement as its one layer) whose `subject` is the image's manifest, listed under
    /// the referrers tag `sha256-HEX` when the registry does not offer the referrers API.
    async fn attach(
        &self,
        version: &Version,
        attestation: &dtk_api::source::Attestation,
    ) -> Result<()> {
        let client = self.client()?;
        let subject = self.checked_manifest(client, version).await?;
        let digest = &subject.digest;
        let referrer = referrers::push(client, &subject.descriptor(), attestation).await?;
        tracing::debug!(source = self.name(), %digest, %referrer, "statement attached");
        Ok(())
    }

    /// For `[REGISTRY/]REPO@sha256:HEX` of this source's repository: the `dev.dtk.*`
    /// annotations of the manifest, else the run named by an in-toto statement among its
    /// referrers (`predicate.runDetails.metadata.invocationId`).
    async fn provenance_of(
        &self,
        reference: &str,
    ) -> Result<Option<dtk_api::source::ArtifactProvenance>> {
        let Some((name, digest)) = reference.split_once('@') else {
            return Ok(None);
        };
        let Ok(r) = Reference::parse(name) else {
            return Ok(None);
        };
        if r.registry != self.reference.registry || r.repo != self.reference.repo {
            return Ok(None);
        }
        let version: Version = digest.parse().map_err(|e: Error| {
            Error::invalid("image reference", reference, format!("bad digest: {e}"))
        })?;
        let digest = digest_of(&version)?;
        let client = self.client()?;
        let m = client
            .manifest(&digest)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: "image",
                name: reference.to_owned(),
                hint: format!(" ({} has no such manifest)", client.shown()),
            })?;
        let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap_or_default();
        let note = |key: &str| v["annotations"][key].as_str().map(str::to_owned);
        if let Some(run) = note(RUN_ANNOTATION) {
            let mut p = dtk_api::source::ArtifactProvenance::new("the image's annotations");
            p.version = Some(version);
            p.run = Some(run);
            p.node = note(NODE_ANNOTATION);
            p.manifest = note(MANIFEST_ANNOTATION);
            return Ok(Some(p));
        }
        let statements =
            referrers::statements(client, &digest, dtk_api::source::Attestation::IN_TOTO).await?;
        for s in statements.iter().rev() {
            let s: serde_json::Value = serde_json::from_slice(s).unwrap_or_default();
            let run = s["predicate"]["runDetails"]["metadata"]["invocationId"].as_str();
            if let Some(run) = run {
                let mut p =
                    dtk_api::source::ArtifactProvenance::new("the image's provenance referrer");
                p.version = Some(version);
                p.run = Some(run.to_owned());
                p.node = s["predicate"]["buildDefinition"]["externalParameters"]["node"]
                    .as_str()
                    .map(str::to_owned);
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    /// Fetch the manifest by digest and re-hash the bytes.
    async fn verify(&self, version: &Version) -> Result<Verification> {
        let digest = digest_of(version)?;
        let client = self.client()?;
        match client.manifest(&digest).await {
            Ok(Some(m)) if m.digest == digest => Ok(Verification::Verified),
            Ok(Some(m)) => Ok(Verification::Mismatch {
                expected: version.clone(),
                found: to_version(self, &m.digest)?.version,
            }),
            Ok(None) => Ok(Verification::Unavailable(format!(
                "{} no longer has manifest {digest}",
                client.shown()
            ))),
            Err(e) => Err(e),
        }
    }
}

/// The annotation with the run that published an image (its full ID).
pub const RUN_ANNOTATION: &str = "dev.dtk.run";
/// The annotation with the node of that run (its full ID).
pub const NODE_ANNOTATION: &str = "dev.dtk.node";
/// The annotation with the run's input manifest digest (`blake3:...`, as a git commit's
/// `Dkt-Manifest:` trailer).
pub const MANIFEST_ANNOTATION: &str = "dev.dtk.manifest";
/// When the image was published (OCI image spec, pre-defined annotation keys).
const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";

/// The annotations a run's image gets: `org.opencontainers.image.created` (now, RFC 3339),
/// `dev.dtk.run`, `dev.dtk.node`, `dev.dtk.manifest`; `None` when no run publishes.
fn provenance_annotations(
    options: &dtk_api::PublishOptions,
) -> Option<std::collections::BTreeMap<String, String>> {
    let run = options.run.as_ref()?;
    let mut a = std::collections::BTreeMap::new();
    let now = std::time::SystemTime::now();
    a.insert(CREATED_ANNOTATION.to_owned(), humantime_rfc3339(now));
    a.insert(RUN_ANNOTATION.to_owned(), run.clone());
    if let Some(n) = &options.node {
        a.insert(NODE_ANNOTATION.to_owned(), n.clone());
    }
    if let Some(m) = &options.manifest {
        a.insert(MANIFEST_ANNOTATION.to_owned(), m.clone());
    }
    Some(a)
}

/// `t` as RFC 3339 UTC with seconds (`2025-11-26T15:13:20Z`).
fn humantime_rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `bytes` (a manifest or index) with `annotations` added to its own.
fn annotate(
    bytes: &[u8],
    annotations: &std::collections::BTreeMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    let mut m: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let obj = m.as_object_mut().ok_or("not a JSON object")?;
    let entry = obj
        .entry("annotations")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    let map = entry
        .as_object_mut()
        .ok_or("its annotations are not an object")?;
    for (k, v) in annotations {
        map.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    serde_json::to_vec(&m).map_err(|e| e.to_string())
}

impl DockerSource {
    /// Push the OCI image layout `dir` under the tag, the top manifest with `annotations`
    /// added when given; the version of the bytes pushed.
    async fn push_layout(
        &self,
        dir: &Path,
        annotations: Option<std::collections::BTreeMap<String, String>>,
    ) -> Result<VersionInfo> {
        if self.spec.is_pattern() {
            return Err(Error::invalid(
                "docker tag",
                self.tag(),
                "a source following a tag pattern cannot be published to (give a tag)",
            ));
        }
        let layout = Layout::open(dir)?;
        let top = layout.pick(self.tag())?;
        // Every manifest, parents before children, and every blob, once.
        let mut manifests: Vec<(Descriptor, Vec<u8>, String)> = Vec::new();
        let mut blobs: Vec<(Descriptor, PathBuf)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![(top.clone(), 0usize)];
        while let Some((d, depth)) = stack.pop() {
            if !seen.insert(d.digest.clone()) {
                continue;
            }
            let (bytes, media_type) = layout.manifest(&d)?;
            let children = layout::children(&bytes, &media_type).map_err(|e| {
                Error::invalid(
                    "OCI image layout",
                    dir.display().to_string(),
                    format!("manifest {}: {e}", d.digest),
                )
            })?;
            match children {
                Children::Index(ds) => {
                    for c in ds {
                        if c.media_type.as_deref().is_none_or(layout::is_manifest) {
                            if depth + 1 > MAX_DEPTH {
                                return Err(Error::invalid(
                                    "OCI image layout",
                                    dir.display().to_string(),
                                    format!("indexes nest deeper than {MAX_DEPTH}"),
                                ));
                            }
                            stack.push((c, depth + 1));
                        } else if seen.insert(c.digest.clone()) {
                            let p = layout.blob(&c)?;
                            blobs.push((c, p));
                        }
                    }
                }
                Children::Image(ds) => {
                    for c in ds {
                        if seen.insert(c.digest.clone()) {
                            let p = layout.blob(&c)?;
                            blobs.push((c, p));
                        }
                    }
                }
            }
            manifests.push((d, bytes, media_type));
        }
        let client = self.client()?;
        // Check what must be uploaded before uploading anything.
        let mut missing = Vec::new();
        for (d, p) in blobs {
            if !client.has_blob(&d.digest).await? {
                let (root, path, desc) = (dir.to_owned(), p.clone(), d.clone());
                tokio::task::spawn_blocking(move || layout::check_blob_file(&root, &path, &desc))
                    .await
                    .map_err(|e| self.err(format!("a background task failed: {e}")))??;
                missing.push((d, p));
            }
        }
        // Uploads TRANSFERS at a time (the checks above got the push token they share);
        // with a base image in another repository of the same registry, mounted from there
        // when the registry can.
        let from = base_repo(client, &manifests);
        {
            use futures::stream::{StreamExt as _, TryStreamExt as _};
            let uploads: Vec<_> = missing
                .iter()
                .map(|(d, p)| async {
                    match &from {
                        Some(repo) => client.mount_or_upload(d, p, repo).await.map(|_| ()),
                        None => client.upload_blob(d, p).await,
                    }
                })
                .collect();
            futures::stream::iter(uploads)
                .buffer_unordered(TRANSFERS)
                .try_collect::<()>()
                .await?;
        }
        // Children first, then the top manifest under the tag.
        let Some((top_desc, mut top_bytes, top_type)) = manifests.first().cloned() else {
            return Err(self.err("nothing to publish"));
        };
        if let Some(a) = &annotations {
            top_bytes = annotate(&top_bytes, a).map_err(|e| {
                Error::invalid(
                    "OCI image layout",
                    dir.display().to_string(),
                    format!("manifest {}: {e}", top_desc.digest),
                )
            })?;
        }
        for (d, bytes, media_type) in manifests.iter().skip(1).rev() {
            client.put_manifest(&d.digest, media_type, bytes).await?;
        }
        client
            .put_manifest(self.tag(), &top_type, &top_bytes)
            .await?;
        to_version(self, &layout::sha256_digest(&top_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let at =
            |s: u64| humantime_rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(1_764_170_000), "2025-11-26T15:13:20Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn annotations_are_added_keeping_the_rest() {
        let m = br#"{"schemaVersion":2,"config":{"digest":"x"},"annotations":{"a":"b"}}"#;
        let mut add = std::collections::BTreeMap::new();
        add.insert(RUN_ANNOTATION.to_owned(), "r".to_owned());
        let out: serde_json::Value = serde_json::from_slice(&annotate(m, &add).unwrap()).unwrap();
        assert_eq!(out["annotations"]["a"], "b");
        assert_eq!(out["annotations"][RUN_ANNOTATION], "r");
        assert_eq!(out["config"]["digest"], "x");
        assert!(annotate(b"[1]", &add).is_err());
    }
}
