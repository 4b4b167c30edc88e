//! The plugin traits: [`Kind`] (what a kind of source is) and [`Source`] (one source of
//! that kind), and the [`Registry`] that kinds are registered into.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::secrets::Secrets;
use crate::{Error, Name, Result, SourceSpec, Version};

/// What a kind can do. Operations a kind does not support return
/// [`Error::NotSupported`] naming the kind and the operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// [`Source::versions`] lists the source's history (git commits, registry tags seen),
    /// not only what dtk has recorded.
    pub history: bool,
    /// [`Source::publish`] works: the kind can be a node's output.
    pub publish: bool,
    /// The kind accepts a sub-path (`-p PATH`).
    pub subpath: bool,
    /// The kind has tags (branches, docker tags, ...).
    pub tags: bool,
    /// The kind follows tag patterns ([`crate::pattern`]): [`Source::heads`] works.
    pub patterns: bool,
    /// [`Source::attach`] works: the kind can attach a statement to what it published
    /// (an OCI referrer of an image).
    #[serde(default)]
    pub attestations: bool,
}

impl Capabilities {
    /// No capability at all.
    pub fn none() -> Self {
        Self::default()
    }
    /// With [`history`](Self::history).
    pub fn with_history(mut self, yes: bool) -> Self {
        self.history = yes;
        self
    }
    /// With [`publish`](Self::publish).
    pub fn with_publish(mut self, yes: bool) -> Self {
        self.publish = yes;
        self
    }
    /// With [`subpath`](Self::subpath).
    pub fn with_subpath(mut self, yes: bool) -> Self {
        self.subpath = yes;
        self
    }
    /// With [`tags`](Self::tags).
    pub fn with_tags(mut self, yes: bool) -> Self {
        self.tags = yes;
        self
    }
    /// With [`patterns`](Self::patterns).
    pub fn with_patterns(mut self, yes: bool) -> Self {
        self.patterns = yes;
        self
    }
    /// With [`attestations`](Self::attestations).
    pub fn with_attestations(mut self, yes: bool) -> Self {
        self.attestations = yes;
        self
    }
}

/// A poll to run on a blocking thread: see [`Source::blocking_latest`].
pub type BlockingPoll = Box<dyn FnOnce() -> Result<VersionInfo> + Send + 'static>;

/// A version as a kind reports it, with the kind's extra columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The version.
    pub version: Version,
    /// Extra columns shown by `dkt source log` (`BUILD` for HockeyApp, ...), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

impl VersionInfo {
    /// A version without extra columns.
    pub fn new(version: Version) -> Self {
        VersionInfo {
            version,
            extra: BTreeMap::new(),
        }
    }
}

/// How [`Source::publish_with`] publishes: the version the output must still be at, and
/// what the published artifact should say about where it came from.
///
/// Made with [`PublishOptions::new`] (overwrite, nothing said), then `with_*` calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Publish only if the source is still at this version (`None`: it must have none);
    /// ignored with [`overwrite`](Self::overwrite).
    pub expected: Option<Version>,
    /// Publish whatever the source holds now.
    pub overwrite: bool,
    /// The run publishing (its full ID), for kinds that record it in the artifact (a git
    /// commit message names it).
    pub run: Option<String>,
    /// The node of that run (its full ID).
    pub node: Option<String>,
    /// The run's input manifest digest (`blake3:HEX`, the digest `dkt inspect` shows
    /// and `dtk_core::digest::input_manifest` computes), for kinds that record it in the
    /// artifact (a git commit's `Dkt-Manifest:` trailer).
    pub manifest: Option<String>,
}

impl PublishOptions {
    /// Overwrite whatever is there, saying nothing about the run.
    pub fn new() -> Self {
        PublishOptions {
            overwrite: true,
            ..Self::default()
        }
    }
    /// Only if the source is still at `expected` (`None`: it has no version).
    pub fn expecting(mut self, expected: Option<Version>) -> Self {
        self.expected = expected;
        self.overwrite = false;
        self
    }
    /// Overwrite (no check), or not.
    pub fn with_overwrite(mut self, yes: bool) -> Self {
        self.overwrite = yes;
        self
    }
    /// With the run's input manifest digest.
    pub fn with_manifest(mut self, digest: impl Into<String>) -> Self {
        self.manifest = Some(digest.into());
        self
    }
    /// For run `run` of node `node` (full IDs).
    pub fn for_run(mut self, run: impl Into<String>, node: impl Into<String>) -> Self {
        self.run = Some(run.into());
        self.node = Some(node.into());
        self
    }
}

/// A statement about a published version that a kind attaches to the artifact itself
/// (see [`Source::attach`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attestation {
    /// The statement's media type ([`Attestation::IN_TOTO`] for an in-toto statement).
    pub media_type: String,
    /// The statement's bytes, exactly as attached.
    pub bytes: Vec<u8>,
}

impl Attestation {
    /// The media type of an in-toto statement (what `dkt inspect --format slsa` prints).
    pub const IN_TOTO: &'static str = "application/vnd.in-toto+json";

    /// `bytes` of `media_type`.
    pub fn new(media_type: impl Into<String>, bytes: Vec<u8>) -> Self {
        Attestation {
            media_type: media_type.into(),
            bytes,
        }
    }
}

/// Where an artifact came from, as the artifact itself says (see
/// [`Source::provenance_of`]): what a run wrote into it when it published it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArtifactProvenance {
    /// The version of the source the artifact is, when the kind can tell (an image's
    /// digest).
    pub version: Option<Version>,
    /// The run that published it (its full ID).
    pub run: Option<String>,
    /// The node of that run (its full ID).
    pub node: Option<String>,
    /// The run's input manifest digest (`blake3:HEX`).
    pub manifest: Option<String>,
    /// Where this was read (`image annotations`, `object metadata`, ...), for messages.
    pub found_in: String,
}

impl ArtifactProvenance {
    /// Provenance read from `found_in`, with nothing known yet.
    pub fn new(found_in: impl Into<String>) -> Self {
        ArtifactProvenance {
            found_in: found_in.into(),
            ..Self::default()
        }
    }
}

/// What [`Source::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "result", content = "detail")]
pub enum Verification {
    /// The content was re-hashed and matches the version.
    Verified,
    /// The content hashes to `found` instead.
    Mismatch {
        /// What was recorded.
        expected: Version,
        /// What the content hashes to now.
        found: Version,
    },
    /// The content cannot be read any more; why.
    Unavailable(String),
}

/// The fields of a source at a version (`ROOT`, `COMMIT`, `BUILD`, ...), by name.
pub type Fields = BTreeMap<String, String>;

/// Where kinds report the progress of long transfers (downloads, uploads), so that a
/// front end can draw it; [`NoProgress`] ignores it.
pub trait Progress: Debug + Send + Sync {
    /// A transfer called `what` (a file, a layer, ...) of `total` bytes, if known, starts;
    /// the returned handle counts bytes as they go and ends the transfer when dropped.
    fn start(&self, what: &str, total: Option<u64>) -> Box<dyn Transfer>;
}

/// One transfer under way (see [`Progress::start`]); dropping it ends it.
pub trait Transfer: Send {
    /// `bytes` more were transferred.
    fn advance(&mut self, bytes: u64);
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _what: &str, _total: Option<u64>) -> Box<dyn Transfer> {
        struct Nothing;
        impl Transfer for Nothing {
            fn advance(&mut self, _bytes: u64) {}
        }
        Box::new(Nothing)
    }
}

/// What a kind may use: where to keep caches, secrets, time limits.
///
/// Made with [`Context::new`], then adjusted field by field (more fields may come).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Context {
    /// A directory the kind may use for caches (`.dkt/cache/<kind>`), created on demand.
    pub cache_dir: PathBuf,
    /// A directory for temporary files on the same file system as the project.
    pub tmp_dir: PathBuf,
    /// The project's secrets (tokens); never to be logged or recorded.
    pub secrets: Secrets,
    /// The bound on any one network operation.
    pub network_timeout: Duration,
    /// The directory relative locations are resolved against (the user's working directory).
    pub cwd: PathBuf,
    /// Settings of each kind from the `[kind.NAME]` tables of `.dkt/config`, by kind then
    /// key (see [`Context::setting`]).
    pub settings: BTreeMap<String, BTreeMap<String, String>>,
    /// Where to report the progress of long transfers.
    pub progress: Arc<dyn Progress>,
}

impl Context {
    /// A context for a project rooted at `dkt_dir` (`.dkt`).
    pub fn new(dkt_dir: &Path, secrets: Secrets) -> Self {
        Context {
            cache_dir: dkt_dir.join("cache"),
            tmp_dir: dkt_dir.join("tmp"),
            secrets,
            network_timeout: Duration::from_secs(30),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            settings: BTreeMap::new(),
            progress: Arc::new(NoProgress),
        }
    }

    /// The setting `key` of `kind` (`[kind.s3] endpoint = "..."` in `.dkt/config`).
    pub fn setting(&self, kind: &str, key: &str) -> Option<&str> {
        self.settings.get(kind)?.get(key).map(String::as_str)
    }

    /// With setting `key` of `kind` set to `value`.
    pub fn with_setting(mut self, kind: &str, key: &str, value: impl Into<String>) -> Self {
        self.settings
            .entry(kind.to_owned())
            .or_default()
            .insert(key.to_owned(), value.into());
        self
    }
}

/// What a user asked for when adding a source, before its kind normalizes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSource {
    /// The new source's name.
    pub name: Name,
    /// The kind name or alias as given (`github`), or the inferred kind.
    pub kind: String,
    /// The location as given, if any (no location: a kind may create one, as `path` does).
    pub location: Option<String>,
    /// The tag as given.
    pub tag: Option<String>,
    /// The sub-path as given (already joined with a parent's path).
    pub path: Option<String>,
}

/// A kind of source: turns what a user typed into a [`SourceSpec`] and opens sources.
///
/// Register kinds into a [`Registry`]. A kind's [`name`](Kind::name) is stored with every
/// source of that kind, so it must never change.
#[async_trait]
pub trait Kind: Debug + Send + Sync + 'static {
    /// The kind's name (`git`, `path`, ...): lower case, stable forever.
    fn name(&self) -> &'static str;

    /// Other names that select this kind, each with its own location shortcut
    /// (`github` for `git`).
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }

    /// What sources of this kind can do.
    fn capabilities(&self) -> Capabilities;

    /// How sure the kind is that `location` is one of its own, when the user gave no kind:
    /// `None` for no, higher is surer. The registry picks the highest.
    ///
    /// # Behavior
    /// - Must not touch the network; may look at the local file system.
    fn infer(&self, location: &str) -> Option<u8>;

    /// Normalize what the user asked for into a spec: expand shortcuts, make paths
    /// absolute, choose the default tag, check that the location exists and that the tag
    /// and the sub-path resolve.
    ///
    /// # Behavior
    /// - Errors quote the bad value: [`Error::Invalid`] or [`Error::NotFound`] for bad
    ///   input, [`Error::Backend`] for an unreachable location (within
    ///   [`Context::network_timeout`]).
    /// - May create the location when none is given (a temporary directory for `path`),
    ///   setting [`SourceSpec::owned`].
    async fn resolve(&self, ctx: &Context, new: NewSource) -> Result<SourceSpec>;

    /// Open a source of this kind. Cheap: no network, no heavy I/O.
    fn open(&self, ctx: &Context, spec: &SourceSpec) -> Result<Arc<dyn Source>>;
}

/// One source: polls its versions, puts a version in scope, publishes new versions.
///
/// Implementations must be usable from several tasks at once (`Send + Sync`); every
/// method is cancel-safe in the sense that a dropped future leaves no partial state that a
/// later call would mistake for a complete one.
#[async_trait]
pub trait Source: Debug + Send + Sync + 'static {
    /// The spec this source was opened with.
    fn spec(&self) -> &SourceSpec;

    /// What the source can do (its kind's capabilities).
    fn capabilities(&self) -> Capabilities;

    /// Poll the source now and return its latest version.
    ///
    /// # Behavior
    /// - Calling it twice with no change in between returns the same version.
    /// - An unreachable location is an [`Error::Backend`] within a bounded time.
    async fn latest(&self) -> Result<VersionInfo>;

    /// For a kind whose poll is local, blocking work (the `path` kind reads the file
    /// system): [`latest`](Source::latest) as a job to run on a blocking thread, giving the
    /// same answer. `None` (the default) when the kind has no such job; dtk then awaits
    /// `latest`.
    ///
    /// dtk runs many such jobs one after another on a few blocking threads, which costs
    /// far less than one blocking task per source when thousands of sources are polled.
    ///
    /// # Behavior
    /// - Making the job does no I/O: the work is done when it is called.
    /// - The job may block, but only for local work: anything that may wait on a network
    ///   belongs in `latest`.
    fn blocking_latest(&self) -> Option<BlockingPoll> {
        None
    }

    /// Poll a source whose tag is a pattern ([`crate::pattern`]) and return the tip of
    /// every ref (branch, tag, image tag) the pattern matches now, newest first, each with
    /// the ref's name in [`VersionInfo::extra`] under [`crate::pattern::REF_FIELD`].
    ///
    /// # Behavior
    /// - No matching ref is an empty list, not an error: refs may appear later.
    /// - A ref deleted since the last call is simply absent.
    /// - Kinds without [`Capabilities::patterns`] return [`Error::NotSupported`] (the
    ///   default).
    async fn heads(&self) -> Result<Vec<VersionInfo>> {
        Err(not_supported(self, "tag patterns"))
    }

    /// The source's versions, newest first, as far as the kind knows them.
    ///
    /// # Behavior
    /// - Kinds without [`Capabilities::history`] return [`Error::NotSupported`]; dtk then
    ///   lists the versions it recorded.
    /// - Does not poll the remote: uses what the last [`latest`](Source::latest) fetched.
    async fn versions(&self) -> Result<Vec<VersionInfo>>;

    /// The fields of `version` (`ROOT` must be among them, pointing at `root`, where the
    /// version was materialized or where an output is written).
    fn fields(&self, version: Option<&Version>, root: &Path) -> Result<Fields>;

    /// Put `version` in scope: return a directory (or file) holding its content, either
    /// the source's own location when it is at that version, or `scratch` (an empty
    /// directory the caller owns) after writing the content there.
    ///
    /// # Behavior
    /// - A version the source cannot produce any more (a path whose content changed since),
    ///   never had, or that is of another algorithm than the kind's versions is
    ///   [`Error::NotFound`] with `what: "version"` and the version as `name`.
    /// - Materializing the same version twice gives the same content.
    async fn materialize(&self, version: &Version, scratch: &Path) -> Result<PathBuf>;

    /// Make `dir` (what a node wrote) the source's new content and return its version.
    ///
    /// # Behavior
    /// - Kinds without [`Capabilities::publish`] return [`Error::NotSupported`].
    /// - Atomic as far as the kind allows: on error the source's previous content stays.
    async fn publish(&self, dir: &Path) -> Result<VersionInfo>;

    /// [`publish`](Source::publish) `dir`, but only if the source is still at
    /// `options.expected` (unless `options.overwrite`).
    ///
    /// # Behavior
    /// - When the source moved (its current version, `None` if it has none, differs from
    ///   `expected`), nothing is published and the error is [`Error::OutputMoved`].
    /// - The default reads [`latest`](Source::latest) (a `NotFound` counting as no
    ///   version) and then publishes: a move between the two is not detected. Kinds that
    ///   can compare and swap atomically (a git push with a lease) or check closer to the
    ///   swap (a path) override it.
    async fn publish_with(&self, dir: &Path, options: &PublishOptions) -> Result<VersionInfo> {
        if !options.overwrite && self.capabilities().publish {
            check_expected(self, options).await?;
        }
        self.publish(dir).await
    }

    /// Re-check the content of `version` against its digest, where the content can still
    /// be read (`dkt verify`).
    ///
    /// # Behavior
    /// - [`Verification::Verified`] when the content was re-hashed and matches.
    /// - [`Verification::Mismatch`] when content that should be this version hashes to
    ///   something else (tampering, corruption).
    /// - [`Verification::Unavailable`] when the content cannot be read any more (replaced
    ///   since, or the kind cannot re-read it). The default says so.
    async fn verify(&self, version: &Version) -> Result<Verification> {
        let _ = version;
        Ok(Verification::Unavailable(format!(
            "kind {:?} cannot re-check content",
            self.spec().kind
        )))
    }

    /// Forget the source (`dkt source rm`): remove what dtk created for it (its cache, a
    /// temporary directory it owns). The default does nothing.
    async fn remove(&self) -> Result<()> {
        Ok(())
    }

    /// Attach `attestation`, a statement about `version` (which this source published),
    /// to the artifact in the source's own store, where tools that read the artifact find
    /// it (an image gets an OCI referrer).
    ///
    /// # Behavior
    /// - Called after the run that published `version` was recorded, with the statement
    ///   `dkt inspect SOURCE:VERSION --format slsa` prints: its subject is the published
    ///   artifact's own digest, and its run ended, which is only known then.
    /// - Attaching the same statement twice leaves one copy.
    /// - Kinds without [`Capabilities::attestations`] return [`Error::NotSupported`] (the
    ///   default).
    async fn attach(&self, version: &Version, attestation: &Attestation) -> Result<()> {
        let _ = (version, attestation);
        Err(not_supported(self, "attaching statements"))
    }

    /// What the artifact `reference` (an image `REPO@sha256:...`, an `s3://` URL) says
    /// about the run that published it, when it is in this source's store.
    ///
    /// # Behavior
    /// - `Ok(None)` when `reference` is not an artifact of this source's store (another
    ///   repository or bucket, another kind's syntax), or it carries no provenance; the
    ///   default.
    /// - An artifact that should be there but cannot be read is [`Error::Backend`]; one
    ///   that is not there is [`Error::NotFound`].
    /// - Reads the artifact's metadata only (annotations, object metadata, referrers),
    ///   never its content.
    async fn provenance_of(&self, reference: &str) -> Result<Option<ArtifactProvenance>> {
        let _ = reference;
        Ok(None)
    }
}

/// The kinds that dtk knows of but that may be compiled out, with the cargo feature of the
/// `dtk` crate that brings each.
pub const KNOWN_KINDS: &[(&str, &str)] = &[
    ("path", "path"),
    ("git", "git"),
    ("github", "git"),
    ("docker", "docker"),
    ("s3", "s3"),
    ("http", "http"),
    ("hockeyapp", "hockeyapp"),
];

/// The kinds a project can use, by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn Kind>>,
    aliases: BTreeMap<&'static str, &'static str>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `kind` under its name and aliases, replacing any kind of the same name.
    pub fn register(&mut self, kind: Arc<dyn Kind>) -> &mut Self {
        for a in kind.aliases() {
            self.aliases.insert(a, kind.name());
        }
        self.kinds.insert(kind.name(), kind);
        self
    }

    /// The registered kind names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }

    /// The kind called `name` (or an alias of it, case-insensitive).
    pub fn get(&self, name: &str) -> Result<Arc<dyn Kind>> {
        let lower = name.to_ascii_lowercase();
        let canonical = self.aliases.get(lower.as_str()).copied().unwrap_or(&lower);
        if let Some(k) = self.kinds.get(canonical) {
            return Ok(k.clone());
        }
        let hint = match KNOWN_KINDS.iter().find(|(k, _)| *k == lower) {
            Some((_, feature)) => format!(
                ": this build of dtk was compiled without it (enable the cargo feature {feature:?} of the dtk crate)"
            ),
            None => format!(" (known kinds: {})", self.names().join(", ")),
        };
        Err(Error::UnknownKind {
            kind: name.to_owned(),
            hint,
        })
    }

    /// The kind whose [`Kind::infer`] is surest about `location`.
    pub fn infer(&self, location: &str) -> Result<Arc<dyn Kind>> {
        self.kinds
            .values()
            .filter_map(|k| k.infer(location).map(|score| (score, k)))
            .max_by_key(|(score, _)| *score)
            .map(|(_, k)| k.clone())
            .ok_or_else(|| {
                Error::invalid(
                    "location",
                    location,
                    format!(
                        "cannot tell its kind; give one with -k (known kinds: {})",
                        self.names().join(", ")
                    ),
                )
            })
    }
}

/// Forwarding so `Arc<S>` and `Box<S>` are sources too.
macro_rules! forward_source {
    ($t:ty) => {
        #[async_trait]
        impl<S: Source + ?Sized> Source for $t {
            fn spec(&self) -> &SourceSpec {
                (**self).spec()
            }
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
            async fn latest(&self) -> Result<VersionInfo> {
                (**self).latest().await
            }
            fn blocking_latest(&self) -> Option<BlockingPoll> {
                (**self).blocking_latest()
            }
            async fn versions(&self) -> Result<Vec<VersionInfo>> {
                (**self).versions().await
            }
            async fn heads(&self) -> Result<Vec<VersionInfo>> {
                (**self).heads().await
            }
            fn fields(&self, version: Option<&Version>, root: &Path) -> Result<Fields> {
                (**self).fields(version, root)
            }
            async fn materialize(&self, version: &Version, scratch: &Path) -> Result<PathBuf> {
                (**self).materialize(version, scratch).await
            }
            async fn publish(&self, dir: &Path) -> Result<VersionInfo> {
                (**self).publish(dir).await
            }
            async fn publish_with(
                &self,
                dir: &Path,
                options: &PublishOptions,
            ) -> Result<VersionInfo> {
                (**self).publish_with(dir, options).await
            }
            async fn remove(&self) -> Result<()> {
                (**self).remove().await
            }
            async fn verify(&self, version: &Version) -> Result<Verification> {
                (**self).verify(version).await
            }
            async fn attach(&self, version: &Version, attestation: &Attestation) -> Result<()> {
                (**self).attach(version, attestation).await
            }
            async fn provenance_of(&self, reference: &str) -> Result<Option<ArtifactProvenance>> {
                (**self).provenance_of(reference).await
            }
        }
    };
}
forward_source!(Arc<S>);
forward_source!(Box<S>);

/// Check that `source` is still at `options.expected` (its [`Source::latest`]; a
/// `NotFound` counts as no version): [`Error::OutputMoved`] otherwise.
pub async fn check_expected<S: Source + ?Sized>(
    source: &S,
    options: &PublishOptions,
) -> Result<()> {
    let now = match source.latest().await {
        Ok(v) => Some(v.version),
        Err(Error::NotFound { .. }) => None,
        Err(e) => return Err(e),
    };
    if now != options.expected {
        return Err(Error::OutputMoved {
            kind: source.spec().kind.clone(),
            source_name: source.spec().name.to_string(),
            expected: options.expected.clone(),
            found: now,
        });
    }
    Ok(())
}

/// The [`Error::NotSupported`] for `operation` on `source`.
pub fn not_supported<S: Source + ?Sized>(source: &S, operation: &'static str) -> Error {
    Error::NotSupported {
        kind: source.spec().kind.clone(),
        operation,
    }
}
