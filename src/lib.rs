//! # dtk: Datakit, a version-controlled data-flow manager
//!
//! Datakit keeps track of data as it flows through commands. A pipeline is a directed
//! acyclic *bipartite* graph: **sources** (git repositories, local directories, and any
//! kind of location a plugin can poll) feed **nodes** (commands), which write into other
//! sources. dtk polls sources for new versions, runs nodes on them, and records, for every
//! version it produces, exactly which run of which node made it from which input versions.
//! The records live in a git repository, `.dkt/.git`, so a project is shared, cloned and
//! audited with git.
//!
//! This crate is the facade: it re-exports [`dtk_core`] (the model, the metadata store, the
//! engine, the plugin traits) and, per cargo feature, the source kinds of [`dtk_sources`].
//! The `dkt` command-line tool is one program built on this API; anything it does, an
//! embedding program can do.
//!
//! # The model
//!
//! - **Sources** ([`SourceSpec`]): a name, a kind (`git`, `path`, or a plugin's), a
//!   location normalized by the kind, optionally a tag and a sub-path. A source can be
//!   pinned to a version ([`Project::pin`]) or frozen (never polled).
//! - **Versions** ([`Version`]): a content digest written `ALGO:HEX`, chosen by the kind:
//!   `sha1:` for git commits, `md5:` for the Merkle digest of a directory, `sha256:` for a
//!   downloaded artifact. The same content is the same version. Users may abbreviate a
//!   version to any unique prefix (`data:0e500a4e`).
//! - **Nodes** ([`NodeSpec`]): a command, the sources it reads and writes, and the labels a
//!   machine needs to run it. Its ID ([`NodeId`]) is the BLAKE3 hash of a canonical
//!   encoding of all of that: defining the same node twice gives the same ID, on any
//!   machine.
//! - **Runs** ([`RunRecord`]): one execution of a node on given input versions. Its ID
//!   ([`RunId`]) hashes the node ID and those versions, so a node whose inputs already have
//!   a successful run is not run again ([`RunOutcome::UpToDate`]) unless forced.
//! - **Provenance** ([`VersionRecord`]): every version dtk polls or produces is recorded;
//!   a produced one names its run, its node and its inputs. The records form a **hash
//!   chain**: each carries the BLAKE3 digest of its canonical JSON (RFC 8785; see
//!   [`digest`]), a run record carries the
//!   digests of its inputs' version records, and a produced version's record carries the
//!   digest of its run's record. The digest of an artifact's record thus covers its whole
//!   ancestry. [`Project::inspect`] lists that ancestry (as JSON, Graphviz, SLSA or W3C
//!   PROV) and [`Project::verify`] recomputes every digest and link of the chain and
//!   re-hashes every content that can still be read.
//! - **Links** ([`Link`]): an out-of-band relation between two versions that a user
//!   asserts ([`Project::link`]), such as "this build came from that commit" for a build
//!   dtk did not run. Provenance shows them as asserted, never as computed.
//!
//! # Embedding dtk
//!
//! A [`Project`] is the handle on one `.dkt` directory. Reading records is synchronous;
//! what polls sources, moves content or runs commands is `async`. Here is the whole cycle,
//! `dkt init` to `dkt verify`:
//!
//! ```no_run
//! use std::path::Path;
//!
//! use dtk::inspect::InspectOptions;
//! use dtk::{AddSource, Command, InitOptions, NodeSpec, Project, RunOptions, RunOutcome};
//!
//! async fn pipeline(dir: &Path) -> dtk::Result<()> {
//!     // `dkt init`: a project in `dir`, knowing every kind compiled into this build.
//!     // Relative locations are resolved against `with_cwd` (default: the process's).
//!     let project =
//!         Project::init(dir, dtk::default_registry(), InitOptions::new())?.with_cwd(dir);
//!
//!     // `dkt source add`: the kind is inferred from the location (a git repository, a
//!     // directory); each new source is polled once, so its latest version is known.
//!     let code = project.add_source(AddSource::new("code", Some("./repo".into()))).await?;
//!     let data = project.add_source(AddSource::new("data", Some("./data".into()))).await?;
//!     let report = project.add_source(AddSource::new("report", Some("./report".into()))).await?;
//!     println!("code is at {:?}", code.latest);
//!
//!     // A node: `${SOURCE:FIELD}` is a field of an input or output (`ROOT`: its content).
//!     let mut node = NodeSpec::new(Command::Argv(vec![
//!         "${code:ROOT}/analyze.sh ${data:ROOT} > ${report:ROOT}/summary.txt".into(),
//!     ]));
//!     node.inputs = vec![code.name, data.name];
//!     node.outputs = vec![report.name];
//!     let node_id = project.define_node(node)?;
//!
//!     // `dkt node run`: the inputs at their current (or pinned) versions, the outputs
//!     // published and recorded with their provenance if the command succeeds.
//!     let outcome = project.run_node(&node_id, RunOptions::new()).await?;
//!     if let RunOutcome::Pending(run) = &outcome {
//!         println!("run {} waits for a machine with the node's labels", run.id);
//!     }
//!     let run = outcome.record();
//!     println!("run {}: {} {:?}", run.id, run.status, run.error);
//!
//!     // `dkt inspect report:ID` and `dkt verify report:ID`.
//!     for out in &run.outputs {
//!         let target = format!("{}:{}", out.source, out.version.short());
//!         let manifest = project.inspect(&target, InspectOptions::new()).await?;
//!         println!("{:#}", manifest.to_json());
//!         println!("root digest: {:?}", manifest.root_digest);
//!         let report = project.verify(&target).await?;
//!         assert!(report.is_ok(), "{:?}", report.mismatches().collect::<Vec<_>>());
//!     }
//!     Ok(())
//! }
//! ```
//!
//! Errors are one enum, [`Error`], whose variants mean something to a caller
//! ([`Error::NotFound`], [`Error::Invalid`], [`Error::NotSupported`], ...); bad input
//! changes nothing ([`Error::is_user_error`] tells it from failures outside the user's
//! control). The on-disk formats are specified in `docs/format.md`.
//!
//! ## From synchronous code
//!
//! Every `async` method needs a [Tokio](https://docs.rs/tokio) runtime: kinds use Tokio's
//! file system, process and timer support, so another executor will not do. Add
//! `tokio = { version = "1", features = ["rt-multi-thread"] }` to your dependencies,
//! build one runtime with its drivers enabled, and `block_on` each call (not from inside
//! the runtime's own tasks, where Tokio panics: there, `.await`).
//!
//! ```no_run
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
//!     // Find the project from here upwards, as `dkt` and git do.
//!     let project = dtk::Project::discover(".".as_ref(), dtk::default_registry())?;
//!     // `dkt source update`: poll every source and record the new versions.
//!     for o in runtime.block_on(project.update_sources(&[]))? {
//!         println!("{}: {:?} -> {:?} {:?}", o.source, o.previous, o.latest, o.error);
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Writing a source kind
//!
//! A kind is a plugin: implement two traits from `dtk-api`, the contract crate (a plugin
//! depends on `dtk-api` alone: the traits, versions, names, errors and secrets, with no
//! metadata store, no git and no engine; `dtk` and `dtk-core` re-export it at the same
//! paths), register the kind, and run the conformance suite in your tests.
//! `examples/custom_source.rs` (kind in `examples/feed/mod.rs`) is a complete one, a
//! release feed whose versions are the `sha256:` of each artifact, with its tests in
//! `tests/custom_source.rs`; `cargo run -p dtk --example custom_source` shows it in a
//! project.
//!
//! [`Kind`] says what a kind is and turns what a user typed into a [`SourceSpec`]:
//!
//! - [`name`](Kind::name) is stored with every source of the kind: it never changes.
//! - [`infer`](Kind::infer) scores a location when no kind is given (no network; the
//!   registry picks the highest score; `path` answers 10 for any local path, so a kind
//!   recognizing a more specific local location answers more).
//! - [`resolve`](Kind::resolve) normalizes the location (absolute paths, expanded
//!   shortcuts, the default tag) and checks that it exists. Its errors quote the bad value:
//!   [`Error::Invalid`] or [`Error::NotFound`] for bad input, [`Error::Backend`] for an
//!   unreachable location, within [`Context::network_timeout`].
//! - [`open`](Kind::open) makes a [`Source`] from a spec, cheaply (no network, no heavy
//!   I/O).
//!
//! The [`Context`] a kind gets carries what it may use: a cache directory, the project's
//! secrets, the bound on each network operation, its settings from the `[kind.NAME]` table
//! of `.dkt/config` ([`Context::setting`]), and a [`Progress`] to report long transfers to
//! (the front end draws it; `dkt` draws bars on a terminal).
//!
//! [`Source`] is one source (`Send + Sync`; a dropped future must leave nothing that a
//! later call would take for complete):
//!
//! - [`latest`](Source::latest) polls now; twice with no change in between, it returns the
//!   same version.
//! - [`versions`](Source::versions) lists the history, newest first, without duplicates,
//!   its first entry being the latest, from what the last poll fetched; extra columns (the
//!   `RELEASE` of the feed example) go in [`VersionInfo::extra`].
//! - [`fields`](Source::fields) gives the `${SOURCE:FIELD}` variables, `ROOT` among them.
//! - [`materialize`](Source::materialize) puts exactly one version's content in scope (in
//!   the scratch directory it is given, or in place), and fails for a version it cannot
//!   produce, leaving nothing that looks complete.
//! - [`publish`](Source::publish) makes a node's output the new content, atomically.
//! - [`verify`](Source::verify) (optional) re-hashes a version's content for
//!   [`Project::verify`]; [`remove`](Source::remove) (optional) cleans up after the source.
//!
//! A kind declares what it can do as [`Capabilities`] (`history`, `publish`, `subpath`,
//! `tags`), and dtk acts on them: a node's output must be of a kind that publishes, `-p`
//! needs `subpath`, `LOCATION:TAG` is split only for kinds with tags, and without
//! `history` dtk lists the versions it recorded itself. An operation the kind does not
//! support returns [`Error::NotSupported`] naming the kind and the operation; nothing
//! silently does nothing:
//!
//! ```no_run
//! use std::path::{Path, PathBuf};
//! use std::sync::Arc;
//!
//! use dtk::source::not_supported;
//! use dtk::{
//!     async_trait, Capabilities, Context, Error, Fields, Kind, NewSource, Result, Source,
//!     SourceSpec, Version, VersionInfo,
//! };
//!
//! /// A kind whose sources follow something read-only, with a history.
//! #[derive(Debug)]
//! struct RssKind;
//!
//! #[async_trait]
//! impl Kind for RssKind {
//!     fn name(&self) -> &'static str {
//!         "rss"
//!     }
//!     fn capabilities(&self) -> Capabilities {
//!         Capabilities::none().with_history(true)
//!     }
//!     fn infer(&self, location: &str) -> Option<u8> {
//!         location.ends_with(".rss").then_some(20)
//!     }
//!     async fn resolve(&self, _ctx: &Context, new: NewSource) -> Result<SourceSpec> {
//!         let location = new.location.ok_or_else(|| {
//!             Error::invalid("location", "", "an rss source needs the feed's location")
//!         })?;
//!         // Normalize `location` and check that it exists here, quoting it in errors.
//!         Ok(SourceSpec::new(new.name, "rss", location))
//!     }
//!     fn open(&self, _ctx: &Context, spec: &SourceSpec) -> Result<Arc<dyn Source>> {
//!         Ok(Arc::new(RssSource { spec: spec.clone() }))
//!     }
//! }
//!
//! #[derive(Debug)]
//! struct RssSource {
//!     spec: SourceSpec,
//! }
//!
//! #[async_trait]
//! impl Source for RssSource {
//!     fn spec(&self) -> &SourceSpec {
//!         &self.spec
//!     }
//!     fn capabilities(&self) -> Capabilities {
//!         RssKind.capabilities()
//!     }
//!     async fn latest(&self) -> Result<VersionInfo> {
//!         todo!("poll the location; return the digest of its newest item")
//!     }
//!     async fn versions(&self) -> Result<Vec<VersionInfo>> {
//!         todo!("every item of the last poll, newest first")
//!     }
//!     fn fields(&self, _version: Option<&Version>, root: &Path) -> Result<Fields> {
//!         Ok(Fields::from([("ROOT".to_owned(), root.display().to_string())]))
//!     }
//!     async fn materialize(&self, _version: &Version, _scratch: &Path) -> Result<PathBuf> {
//!         todo!("write that item into the scratch directory, check its digest")
//!     }
//!     async fn publish(&self, _dir: &Path) -> Result<VersionInfo> {
//!         Err(not_supported(self, "publish"))
//!     }
//! }
//!
//! // The registry a project is opened with: the built-in kinds, plus this one.
//! let mut registry = dtk::Registry::new();
//! dtk::dtk_sources::register_all(&mut registry);
//! registry.register(Arc::new(RssKind));
//! let registry = Arc::new(registry); // for Project::init, open, discover
//! ```
//!
//! A kind whose poll is local, blocking work (reading the file system, as `path` does) can
//! also give it as a job with [`Source::blocking_latest`]: a pass then runs such polls
//! one after another on a few blocking threads, which is much cheaper than awaiting
//! thousands of `latest` calls that each hand their work to a blocking thread. Anything
//! that may wait on a network stays in `latest`.
//!
//! Kinds are explicit: a [`Registry`] holds them by name ([`Registry::register`]),
//! [`default_registry`] holds those compiled in. A project must be opened with a registry
//! that knows every kind its sources use: otherwise [`Project::open`] fails with
//! [`Error::UnknownKind`] naming the missing kinds and the sources using them (and, for a
//! built-in kind compiled out, the cargo feature that brings it).
//!
//! Test the plugin with the conformance suite that every built-in kind passes: plain
//! `async` checks of the contract above, shipped as library code behind the
//! `conformance` feature of `dtk-api`:
//!
//! ```toml
//! [dependencies]
//! dtk-api = "0.1"
//!
//! [dev-dependencies]
//! dtk-api = { version = "0.1", features = ["conformance"] }
//! ```
//!
//! ```no_run
//! use std::path::Path;
//!
//! use dtk::{Context, Kind, Name, NewSource, Secrets};
//! use dtk_api::conformance::{check_all, Fixture};
//!
//! /// Resolve `location` with `kind`, open the source and run every check on it. Call it
//! /// from a `#[tokio::test]` with a fixture location and a temporary directory.
//! async fn assert_conforms(kind: &dyn Kind, location: &str, dir: &Path) {
//!     let mut ctx = Context::new(&dir.join(".dkt"), Secrets::default());
//!     ctx.cwd = dir.to_owned();
//!     let new = NewSource {
//!         name: Name::new("under-test").unwrap(),
//!         kind: kind.name().to_owned(),
//!         location: Some(location.to_owned()),
//!         tag: None,
//!         path: None,
//!     };
//!     let spec = kind.resolve(&ctx, new).await.unwrap();
//!     let source = kind.open(&ctx, &spec).unwrap();
//!     let scratch = dir.join("scratch");
//!     std::fs::create_dir_all(&scratch).unwrap();
//!     // For a kind that publishes, add `.with_publish_dir(..)`: content to publish (and
//!     // `.with_rewritten(..)`: files the kind writes itself when it materializes).
//!     // The checks assert exact error variants: `NotSupported` naming the kind,
//!     // `NotFound { what: "version", .. }` for a version the source cannot produce.
//!     assert_eq!(check_all(&*source, &Fixture::new(scratch)).await, Ok(()));
//! }
//! ```
//!
//! # Cargo features
//!
//! | feature | default | brings |
//! |---------|---------|--------|
//! | `path`  | yes     | the `path` kind: local directories and files, versioned by an `md5:` Merkle digest |
//! | `git`   | yes     | the `git` kind (and its `github` shortcut): git repositories, through gix (local paths, `file://`, `git://`, `ssh://`) |
//! | `https` | no      | HTTPS for the `git` kind (rustls); implies `git`. The `dkt` binary enables it |
//! | `docker` | no     | the `docker` kind: images in OCI/Docker registries, versioned by `sha256:` manifest digests |
//! | `s3`    | no      | the `s3` kind: prefixes of S3 buckets (AWS or S3-compatible), versioned by the `md5:` of the listing |
//! | `http`  | no      | the `http` kind: one artifact at a URL, versioned by the `sha256:` of its content |
//! | `hockeyapp` | no  | the `hockeyapp` kind: the builds of a HockeyApp (API v2) app |
//! | `all-kinds` | no  | every kind above, with `https` |
//! | `conformance` | no | the conformance suite (`dtk::conformance`, from `dtk_api::conformance`) for plugin authors' tests |
//! | `remote` | no     | remote execution (`dtk::dtk_remote`): the PostgreSQL run queue, the artifact store, the coordinator's dispatcher ([`Project::set_dispatcher`]) and the worker |
//!
//! With `default-features = false` this crate has no kind at all and
//! [`default_registry`] is empty: register your own. `dtk-core` alone builds without any
//! kind (plugins depend on it alone), and HTTPS for `git` is the `https` feature of
//! `dtk-sources`.
//!
//! # Configuration and secrets
//!
//! `.dkt/config` is the project's local configuration, a TOML file that is never committed
//! nor recorded ([`Config`], read by [`Project::open`]; unknown keys are errors):
//!
//! ```toml
//! [worker]
//! labels = ["linux", "x86_64", "test"]  # default: the OS and the architecture
//!
//! [run]
//! timeout = "2h"                        # default time limit of a run (RunOptions overrides)
//!
//! [vars]
//! ESX_USER = "builder"                  # available to commands as ${ESX_USER}
//!
//! [kind.s3]                             # settings of a kind, given to it in its Context
//! endpoint = "http://127.0.0.1:9000"
//! ```
//!
//! A machine runs a node only if it has all the node's labels; otherwise the run stays
//! pending ([`RunOutcome::Pending`]). Secrets are files in `.dkt/secrets/` (mode 0600;
//! [`InitOptions::with_github_token`], [`InitOptions::with_docker_token`] and
//! [`InitOptions::with_secret`] write them). Commands see them as `${NAME}`, through the environment; kinds get them as
//! [`Context::secrets`]. They are never written into a record or the history, every
//! secret value is replaced by `***` in run logs, and [`Secrets`]' `Debug` shows only
//! their names.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub use dtk_core::*;
/// Remote execution: a PostgreSQL run queue, a content-addressed artifact store, the
/// coordinator's [`dtk_remote::RemoteDispatcher`] (give it to
/// [`Project::set_dispatcher`]) and the worker ([`dtk_remote::serve`]).
#[cfg(feature = "remote")]
pub use dtk_remote;
pub use dtk_sources;

/// A registry with every source kind compiled into this build.
pub fn default_registry() -> std::sync::Arc<Registry> {
    std::sync::Arc::new(dtk_sources::registry())
}
