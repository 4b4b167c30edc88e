//! A dtk project: its `.dkt` directory, metadata store, configuration and kinds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{create_private_dir, Config, Secrets, DOCKER_TOKEN, GITHUB_TOKEN};
use crate::error::IoResultExt;
use crate::graph::{Edge, Graph, Vertex};
use crate::source::{Context, NewSource, Registry, Source, VersionInfo};
use crate::store::{Snapshot, Store, Tx};
use crate::{
    resolve_version, Error, Link, Name, NodeId, NodeSpec, Result, SourceSpec, SourceVersion,
    Version, VersionRecord,
};

/// The bound on polling one source.
pub const POLL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The name of a project's directory.
pub const DKT_DIR: &str = ".dkt";

/// Options of [`Project::init`] and [`Project::clone_from`].
#[derive(Default, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// A GitHub token, stored as the secret `GITHUB_TOKEN`.
    pub github_token: Option<String>,
    /// A Docker registry token, stored as the secret `DOCKER_TOKEN`.
    pub docker_token: Option<String>,
    /// Other secrets by name (`HOCKEYAPP_TOKEN`, `AWS_SECRET_ACCESS_KEY`, ...).
    pub secrets: BTreeMap<String, String>,
}

impl std::fmt::Debug for InitOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitOptions")
            .field("github_token", &self.github_token.as_ref().map(|_| "***"))
            .field("docker_token", &self.docker_token.as_ref().map(|_| "***"))
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl InitOptions {
    /// No tokens.
    pub fn new() -> Self {
        Self::default()
    }
    /// With a GitHub token.
    pub fn with_github_token(mut self, token: impl Into<String>) -> Self {
        self.github_token = Some(token.into());
        self
    }
    /// With a Docker token.
    pub fn with_docker_token(mut self, token: impl Into<String>) -> Self {
        self.docker_token = Some(token.into());
        self
    }
    /// With the secret `name` (such as [`HOCKEYAPP_TOKEN`](crate::config::HOCKEYAPP_TOKEN)).
    pub fn with_secret(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.secrets.insert(name.into(), value.into());
        self
    }
}

/// What to add with [`Project::add_source`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddSource {
    /// The new source's name.
    pub name: String,
    /// `LOCATION[:TAG]` as typed, or the name of an existing source to derive from;
    /// `None` for a new temporary directory.
    pub location: Option<String>,
    /// The kind (`-k`), if given.
    pub kind: Option<String>,
    /// The sub-path (`-p`), if given.
    pub path: Option<String>,
}

impl AddSource {
    /// A source called `name` at `location`.
    pub fn new(name: impl Into<String>, location: Option<String>) -> Self {
        AddSource {
            name: name.into(),
            location,
            kind: None,
            path: None,
        }
    }
    /// With an explicit kind.
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }
    /// With a sub-path.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }
}

/// What [`Project::update_sources`] found for one source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpdateOutcome {
    /// The source.
    pub source: Name,
    /// Its latest version before the poll.
    pub previous: Option<Version>,
    /// Its latest version now (unchanged when the poll failed).
    pub latest: Option<Version>,
    /// Why the poll failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// True when the source was skipped (frozen).
    pub skipped: bool,
}

/// An open dtk project.
#[derive(Debug, Clone)]
pub struct Project {
    root: PathBuf,
    dkt: PathBuf,
    store: Store,
    registry: Arc<Registry>,
    config: Config,
    secrets: Secrets,
    cwd: PathBuf,
    progress: Arc<dyn crate::Progress>,
    events: crate::events::Events,
    cancel: tokio_util::sync::CancellationToken,
    queue: Arc<dyn crate::queue::RunQueue>,
}

/// How many sources a poll reads at once (a slow remote delays only its own slot).
const POLL_CONCURRENCY: usize = 32;

/// Paths of records in the store, as `docs/format.md` describes them (store format 4).
///
/// Every directory that grows with the project is fanned out by one hex digit per level
/// (16 entries a level), so that a commit rewrites a few small trees whatever the number
/// of sources, nodes, versions or runs: records keyed by a hash (node, run, version IDs)
/// by that hash's own first digits, records keyed by a name (sources) by the first digits
/// of the BLAKE3 of the name ([`paths::fan`]).
pub mod paths {
    use crate::{Name, NodeId, RunId, Version};

    /// `x/y`: the first two hex digits of BLAKE3 of `key`, as two directory levels.
    pub fn fan(key: &str) -> String {
        let h = blake3::hash(key.as_bytes()).to_hex();
        format!("{}/{}", &h[..1], &h[1..2])
    }

    /// `x/y` from the first two digits of a hex string.
    fn fan_hex(hex: &str) -> String {
        format!("{}/{}", &hex[..1], &hex[1..2])
    }

    /// `sources/<x>/<y>/<name>.json`: a source's declaration (kind, location, tag, path,
    /// parent), which changes only when the source is moved.
    pub fn source(name: &Name) -> String {
        format!("sources/{}/{name}.json", fan(name.as_str()))
    }
    /// `state/<x>/<y>/<name>.json`: a source's mutable state (latest, pinned, frozen).
    pub fn source_state(name: &Name) -> String {
        format!("state/{}/{name}.json", fan(name.as_str()))
    }
    /// `versions/<x>/<y>/<name>`: the versions of a source.
    pub fn versions_dir(name: &Name) -> String {
        format!("versions/{}/{name}", fan(name.as_str()))
    }
    /// `versions/<x>/<y>/<name>/<h1>/<h2>/<algo>-<hex>.json`, where `h1`, `h2` are the
    /// version's first two hex digits: the version record, content-addressed (the same
    /// fact recorded in two clones is the same blob).
    pub fn version(name: &Name, v: &Version) -> String {
        format!(
            "{}/{}/{}-{}.json",
            versions_dir(name),
            fan_hex(v.hex()),
            v.algo(),
            v.hex()
        )
    }
    /// `seen/<x>/<y>/<name>/<h1>/<h2>/<algo>-<hex>`: when this project first saw the
    /// version (milliseconds since the epoch, decimal), kept apart from the record so that
    /// the record is the same object everywhere; merged by taking the earlier.
    pub fn seen(name: &Name, v: &Version) -> String {
        format!(
            "seen/{}/{name}/{}/{}-{}",
            fan(name.as_str()),
            fan_hex(v.hex()),
            v.algo(),
            v.hex()
        )
    }
    /// `seen/<x>/<y>/<name>`
    pub fn seen_dir(name: &Name) -> String {
        format!("seen/{}/{name}", fan(name.as_str()))
    }
    /// `scripts/<h1>/<h2>/<blake3-hex>`: the content of a script file a node runs.
    pub fn script(hex: &str) -> String {
        format!("scripts/{}/{hex}", fan_hex(hex))
    }
    /// `nodes/<h1>/<h2>/<node-id>.json`
    pub fn node(id: &NodeId) -> String {
        let h = id.to_hex();
        format!("nodes/{}/{h}.json", fan_hex(&h))
    }
    /// `runs/<a>/<b>/<c>/<d>/<run-id>.json`, where `abcd` are the run ID's first four hex
    /// digits: four levels of 16 keep every tree a commit rewrites small.
    pub fn run(id: &RunId) -> String {
        let h = id.to_hex();
        format!("{}/{h}.json", run_dir(&h))
    }
    /// `runs/<a>/<b>/<c>/<d>/<run-id>.log`
    pub fn run_log(id: &RunId) -> String {
        let h = id.to_hex();
        format!("{}/{h}.log", run_dir(&h))
    }
    /// `runs/<a>/<b>/<c>/<d>` for a hex run ID (or a prefix of at least 4 digits).
    pub fn run_dir(hex: &str) -> String {
        format!(
            "runs/{}/{}/{}/{}",
            &hex[..1],
            &hex[1..2],
            &hex[2..3],
            &hex[3..4]
        )
    }
    /// `node-runs/<n1>/<n2>/<node-id>/<r1>/<r2>/<run-id>.json` (the run record's blob,
    /// indexed by node).
    pub fn node_run(node: &NodeId, run: &RunId) -> String {
        let h = run.to_hex();
        format!("{}/{}/{h}.json", node_runs_dir(node), fan_hex(&h))
    }
    /// `node-runs/<n1>/<n2>/<node-id>`
    pub fn node_runs_dir(node: &NodeId) -> String {
        let h = node.to_hex();
        format!("node-runs/{}/{h}", fan_hex(&h))
    }
    /// `consumers/<x>/<y>/<source>/<h1>/<h2>/<algo>-<hex>/<run-id>.json` (successful runs
    /// that read a version).
    pub fn consumer(input: &crate::SourceVersion, run: &RunId) -> String {
        format!("{}/{}.json", consumers_dir(input), run.to_hex())
    }
    /// `consumers/<x>/<y>/<source>/<h1>/<h2>/<algo>-<hex>`: the runs that read a version.
    pub fn consumers_dir(input: &crate::SourceVersion) -> String {
        let v = &input.version;
        format!(
            "consumers/{}/{}/{}/{}-{}",
            fan(input.source.as_str()),
            input.source,
            fan_hex(v.hex()),
            v.algo(),
            v.hex()
        )
    }
    /// `links/<h1>/<h2>/<link-id>.json`
    pub fn link(id: &str) -> String {
        format!("links/{}/{id}.json", fan_hex(id))
    }
}

fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        cwd.join(p)
    }
}

impl Project {
    /// Create a project in `dir` (its `.dkt` must not exist yet). Prints nothing; the path
    /// of the new `.dkt` is [`Project::dkt_dir`].
    pub fn init(dir: &Path, registry: Arc<Registry>, options: InitOptions) -> Result<Project> {
        let cwd = std::env::current_dir().at(".")?;
        let root = absolute(&cwd, dir);
        let dkt = root.join(DKT_DIR);
        if dkt.exists() {
            return Err(Error::AlreadyExists {
                what: "dtk project",
                name: dkt.display().to_string(),
            });
        }
        std::fs::create_dir_all(&root).at(&root)?;
        // Build everything in a temporary directory beside the final one, then rename it
        // into place: a killed `init` leaves no half-made project.
        let staging = tempfile::Builder::new()
            .prefix(".dkt-init-")
            .tempdir_in(&root)
            .at(&root)?;
        Self::lay_out(staging.path(), &options)?;
        Store::init(&staging.path().join(".git"))?;
        let staged = staging.keep();
        std::fs::rename(&staged, &dkt).map_err(|e| {
            let _ = std::fs::remove_dir_all(&staged);
            Error::io(&dkt, e)
        })?;
        Project::open(&root, registry)
    }

    fn lay_out(dkt: &Path, options: &InitOptions) -> Result<()> {
        for d in ["cache", "tmp"] {
            std::fs::create_dir_all(dkt.join(d)).at(dkt.join(d))?;
        }
        let mut secrets = Secrets::default();
        create_private_dir(&dkt.join("secrets"))?;
        if let Some(t) = &options.github_token {
            secrets.set(&dkt.join("secrets"), GITHUB_TOKEN, t)?;
        }
        if let Some(t) = &options.docker_token {
            secrets.set(&dkt.join("secrets"), DOCKER_TOKEN, t)?;
        }
        for (name, value) in &options.secrets {
            secrets.set(&dkt.join("secrets"), name, value)?;
        }
        let config = dkt.join("config");
        if !config.exists() {
            std::fs::write(
                &config,
                "# Local configuration of this dtk project: never committed.\n\
                 # [worker]\n# labels = [\"linux\", \"x86_64\"]\n\
                 # [run]\n# timeout = \"2h\"\n\
                 # [vars]\n# ESX_USER = \"builder\"\n\
                 # [kind.s3]\n# endpoint = \"http://127.0.0.1:9000\"\n# region = \"us-east-1\"\n",
            )
            .at(&config)?;
        }
        // Keep the user's own git repository, if the project lives in one, away from .dkt.
        std::fs::write(dkt.join(".gitignore"), "*\n").at(dkt.join(".gitignore"))?;
        Ok(())
    }

    /// Clone the metadata of the project at `url` (a path or git URL of a `.dkt/.git`, or
    /// of any bare copy of it) into `dir/.dkt`.
    pub fn clone_from(
        url: &str,
        dir: &Path,
        registry: Arc<Registry>,
        options: InitOptions,
    ) -> Result<Project> {
        let cwd = std::env::current_dir().at(".")?;
        let root = absolute(&cwd, dir);
        let dkt = root.join(DKT_DIR);
        if dkt.exists() {
            return Err(Error::AlreadyExists {
                what: "dtk project",
                name: dkt.display().to_string(),
            });
        }
        // A local path: make it absolute and accept a project directory or its .dkt too.
        let mut source = url.to_owned();
        let as_path = absolute(&cwd, Path::new(url));
        if !url.contains("://") && as_path.exists() {
            let candidates = [
                as_path.join(DKT_DIR).join(".git"),
                as_path.join(".git"),
                as_path.clone(),
            ];
            let found = candidates
                .iter()
                .find(|p| p.join("HEAD").is_file())
                .ok_or_else(|| {
                    Error::invalid("repository", url, "not a dtk project nor a git repository")
                })?;
            source = found.display().to_string();
        }
        let created = !root.exists();
        std::fs::create_dir_all(&root).at(&root)?;
        let result = Self::clone_into(&source, url, &root, &dkt, &options);
        if result.is_err() && created {
            let _ = std::fs::remove_dir(&root);
        }
        result?;
        Project::open(&root, registry)
    }

    fn clone_into(
        source: &str,
        url: &str,
        root: &Path,
        dkt: &Path,
        options: &InitOptions,
    ) -> Result<()> {
        let staging = tempfile::Builder::new()
            .prefix(".dkt-clone-")
            .tempdir_in(root)
            .at(root)?;
        Self::lay_out(staging.path(), options)?;
        crate::clone::clone_bare(source, &staging.path().join(".git"), url)?;
        let is_dtk = Store::open(&staging.path().join(".git"))
            .and_then(|s| s.snapshot())
            .and_then(|s| s.read("format"))
            .is_ok_and(|f| f.is_some_and(|f| f.starts_with(b"dtk-store ")));
        if !is_dtk {
            return Err(Error::invalid(
                "repository",
                url,
                "it is a git repository but not a dtk project (no dtk records on its main branch)",
            ));
        }
        let staged = staging.keep();
        std::fs::rename(&staged, dkt).map_err(|e| {
            let _ = std::fs::remove_dir_all(&staged);
            Error::io(dkt, e)
        })
    }

    /// Open the project whose `.dkt` is directly in `root`.
    pub fn open(root: &Path, registry: Arc<Registry>) -> Result<Project> {
        let cwd = std::env::current_dir().at(".")?;
        let root = absolute(&cwd, root);
        let dkt = root.join(DKT_DIR);
        if !dkt.join(".git").is_dir() {
            return Err(Error::NoProject(root));
        }
        let store = Store::open(&dkt.join(".git"))?;
        let owned = upgrade_store(&store)?;
        let config = Config::load(&dkt.join("config"))?;
        let mut secrets = Secrets::load(&dkt.join("secrets"))?;
        // Private variables named like secrets are redacted like secrets; they belong in
        // .dkt/secrets.
        let secret_vars: Vec<&String> = config
            .vars
            .keys()
            .filter(|k| crate::config::looks_secret(k))
            .collect();
        for name in &secret_vars {
            tracing::warn!(
                "[vars] {name} in .dkt/config looks like a secret: it is redacted from logs, but move it to the secrets (`dkt secret set {name}`, value on stdin) and remove it from .dkt/config"
            );
        }
        secrets.also_redact(secret_vars.iter().map(|k| config.vars[*k].clone()));
        let queue_dir = dkt.join("queue");
        let project = Project {
            root,
            dkt,
            store,
            registry,
            config,
            secrets,
            cwd,
            progress: Arc::new(crate::NoProgress),
            events: crate::events::Events::default(),
            cancel: tokio_util::sync::CancellationToken::new(),
            queue: Arc::new(crate::queue::LocalQueue::new(queue_dir)),
        };
        project.check_kinds()?;
        // Sources an upgraded store marked as made by dtk stay so only where their
        // directory is on this machine.
        for (name, location) in owned {
            if Path::new(&location).is_dir() {
                project.mark_owned(&name)?;
            }
        }
        Ok(project)
    }

    /// Find the project from `start` upwards, like git does, and open it.
    pub fn discover(start: &Path, registry: Arc<Registry>) -> Result<Project> {
        let cwd = std::env::current_dir().at(".")?;
        let start = absolute(&cwd, start);
        let mut dir = Some(start.as_path());
        while let Some(d) = dir {
            if d.join(DKT_DIR).join(".git").is_dir() {
                return Project::open(d, registry);
            }
            dir = d.parent();
        }
        Err(Error::NoProject(start))
    }

    fn check_kinds(&self) -> Result<()> {
        let mut unknown: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in self.sources()? {
            if self.registry.get(&s.kind).is_err() {
                unknown
                    .entry(s.kind.clone())
                    .or_default()
                    .push(s.name.to_string());
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        let kinds: Vec<String> = unknown.keys().cloned().collect();
        let detail: Vec<String> = unknown
            .iter()
            .map(|(k, names)| {
                let hint = match self.registry.get(k) {
                    Err(Error::UnknownKind { hint, .. }) => hint,
                    _ => String::new(),
                };
                format!("{k:?} (used by {}){hint}", names.join(", "))
            })
            .collect();
        Err(Error::UnknownKind {
            kind: kinds.join(", "),
            hint: format!(
                ": this project uses kinds that are not registered: {}",
                detail.join("; ")
            ),
        })
    }

    /// The directory holding `.dkt`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `.dkt` directory.
    pub fn dkt_dir(&self) -> &Path {
        &self.dkt
    }

    /// The metadata store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The local configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The secrets.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// The run queue: pending, running and publishing runs (see [`crate::queue`]).
    pub fn run_queue(&self) -> &Arc<dyn crate::queue::RunQueue> {
        &self.queue
    }

    /// Subscribe to the project's feed of events (runs, log lines, versions): see
    /// [`events`](crate::events).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::events::Event> {
        self.events.subscribe()
    }

    /// The sending side of the feed.
    pub fn events(&self) -> &crate::events::Events {
        &self.events
    }

    /// The token that cancels this project's running work: cancelling it ends the process
    /// group of every run in progress (SIGTERM, then SIGKILL after 5 s) and records those
    /// runs `interrupted`, publishing nothing. `dkt` cancels it on SIGINT and SIGTERM.
    pub fn cancel_token(&self) -> tokio_util::sync::CancellationToken {
        self.cancel.clone()
    }

    /// Store secret `name` (in `.dkt/secrets/`, mode 0600; never committed). A secret is
    /// usable in commands as `${NAME}` and redacted from every log; the kinds' own
    /// credentials ([`KIND_CREDENTIALS`](crate::config::KIND_CREDENTIALS)) are read by
    /// the kinds only.
    pub fn set_secret(&mut self, name: &str, value: &str) -> Result<()> {
        crate::config::check_secret_name(name)?;
        if value.is_empty() {
            return Err(Error::invalid(
                "secret value",
                name,
                "is empty (give the value on standard input)",
            ));
        }
        let dir = self.dkt.join("secrets");
        self.secrets.set(&dir, name, value)
    }

    /// Remove secret `name`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no such secret.
    pub fn remove_secret(&mut self, name: &str) -> Result<()> {
        let dir = self.dkt.join("secrets");
        if !self.secrets.remove(&dir, name)? {
            return Err(Error::NotFound {
                what: "secret",
                name: name.to_owned(),
                hint: " (see `dkt secret list`)".to_owned(),
            });
        }
        Ok(())
    }

    /// The registry of kinds.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Resolve relative locations against `cwd` instead of the process's directory.
    pub fn with_cwd(mut self, cwd: impl Into<PathBuf>) -> Self {
        self.cwd = cwd.into();
        self
    }

    /// With `progress` receiving the progress of long transfers (downloads, uploads).
    pub fn with_progress(mut self, progress: Arc<dyn crate::Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// The directory relative locations are resolved against.
    pub fn cwd(&self) -> &Path {
        &self.cwd
    }

    /// The context kinds get.
    pub fn context(&self) -> Context {
        let mut c = Context::new(&self.dkt, self.secrets.clone());
        c.cwd = self.cwd.clone();
        c.settings = self.config.kind.clone();
        c.progress = self.progress.clone();
        c
    }

    // ---------------------------------------------------------------- reading

    /// Every source, sorted by name.
    pub fn sources(&self) -> Result<Vec<SourceSpec>> {
        crate::records::all_sources(&self.store.snapshot()?)
    }

    /// The source called `name`.
    pub fn source(&self, name: &str) -> Result<SourceSpec> {
        let name = Name::new(name)?;
        read_source(&self.store.snapshot()?, &name)
    }

    /// Every node, sorted by ID.
    pub fn nodes(&self) -> Result<Vec<(NodeId, NodeSpec)>> {
        let snap = self.store.snapshot()?;
        let retired = crate::lifecycle::retired(&snap)?;
        let nodes: Vec<NodeSpec> = snap.read_tree_json("nodes")?;
        Ok(nodes
            .into_iter()
            .map(|n| (n.id(), n))
            .filter(|(id, _)| !retired.contains(id))
            .collect())
    }

    /// Every node ever defined, retired ones included, with whether each is retired.
    pub fn all_nodes(&self) -> Result<Vec<(NodeId, NodeSpec, bool)>> {
        let snap = self.store.snapshot()?;
        let retired = crate::lifecycle::retired(&snap)?;
        let nodes: Vec<NodeSpec> = snap.read_tree_json("nodes")?;
        Ok(nodes
            .into_iter()
            .map(|n| {
                let id = n.id();
                (id, n, retired.contains(&id))
            })
            .collect())
    }

    /// The graph of sources, nodes and links.
    pub fn graph(&self) -> Result<Graph> {
        let snap = self.store.snapshot()?;
        build_graph(&snap)
    }

    /// Open a source of the project through its kind.
    pub fn open_source(&self, spec: &SourceSpec) -> Result<Arc<dyn Source>> {
        self.registry.get(&spec.kind)?.open(&self.context(), spec)
    }

    /// The versions recorded for `name` (polled or produced), newest first.
    pub fn recorded_versions(&self, name: &str) -> Result<Vec<VersionRecord>> {
        let name = Name::new(name)?;
        let snap = self.store.snapshot()?;
        read_source(&snap, &name)?;
        Ok(crate::records::versions_of(&snap, &name)?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    /// The versions of `name`, newest first: the kind's history where it has one, else
    /// what dtk recorded.
    pub async fn source_log(&self, name: &str) -> Result<Vec<VersionInfo>> {
        let spec = self.source(name)?;
        let source = self.open_source(&spec)?;
        if source.capabilities().history {
            return source.versions().await;
        }
        Ok(self
            .recorded_versions(name)?
            .into_iter()
            .map(|r| VersionInfo {
                version: r.version,
                extra: r.extra,
            })
            .collect())
    }

    /// The links recorded between versions.
    pub fn links(&self) -> Result<Vec<Link>> {
        self.store.snapshot()?.read_tree_json("links")
    }

    // ---------------------------------------------------------------- sources

    /// Add a source and poll it once, so its latest version is known at once.
    ///
    /// Nothing is recorded unless everything succeeds: the name is free and valid, the
    /// kind is known, the location, tag and sub-path resolve, and the poll works.
    pub async fn add_source(&self, add: AddSource) -> Result<SourceSpec> {
        let name = Name::new(&add.name)?;
        let snap = self.store.snapshot()?;
        if crate::records::source_exists(&snap, &name)? {
            return Err(Error::AlreadyExists {
                what: "source",
                name: name.to_string(),
            });
        }
        let mut spec = self
            .resolve_source(&add, None, &snap, &BTreeMap::new())
            .await?;
        let (source, latest) = self.poll_resolved(&mut spec).await?;
        let message = format!("source add {name} ({} {})", spec.kind, spec.location);
        let result = self.store.transact(&message, |tx| {
            if tx.exists(&paths::source(&spec.name))? {
                return Err(Error::AlreadyExists {
                    what: "source",
                    name: spec.name.to_string(),
                });
            }
            crate::records::put_source(tx, &spec)?;
            record_version(tx, &spec.name, &latest, None)?;
            Ok(())
        });
        if let Err(e) = result {
            if spec.owned {
                let _ = source.remove().await;
            }
            return Err(e);
        }
        if spec.owned {
            self.mark_owned(&spec.name)?;
        }
        Ok(spec)
    }

    /// `.dkt/owned/<name>`: this machine made the source's location (a temporary
    /// directory), so `dkt source rm` may delete it. Kept outside the history: ownership
    /// read from a clone's records would let `source rm` delete a directory this machine
    /// never made.
    fn owned_marker(&self, name: &Name) -> PathBuf {
        self.dkt.join("owned").join(name.as_str())
    }

    pub(crate) fn mark_owned(&self, name: &Name) -> Result<()> {
        let path = self.owned_marker(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).at(dir)?;
        }
        std::fs::write(&path, b"").at(&path)
    }

    /// Turn what `add` asks for into a spec through its kind, as [`Project::add_source`]
    /// does, without polling or recording anything (a kind may still create a temporary
    /// directory: see [`SourceSpec::owned`]).
    ///
    /// `tag`, when given, is the tag, and `add.location` is then taken whole (no
    /// `LOCATION:TAG` split). A location naming another source (not `add.name` itself)
    /// derives from it: from `declared` (sources not recorded yet, such as those declared
    /// earlier in a pipeline file) first, else from `snap`.
    pub(crate) async fn resolve_source(
        &self,
        add: &AddSource,
        tag: Option<&str>,
        snap: &Snapshot,
        declared: &BTreeMap<Name, SourceSpec>,
    ) -> Result<SourceSpec> {
        let name = Name::new(&add.name)?;
        let path = match &add.path {
            Some(p) => Some(normalize_subpath(p)?),
            None => None,
        };
        // LOCATION may name another source: inherit from it.
        let parent = match add.location.as_deref().map(Name::new) {
            Some(Ok(n)) if n == name => None,
            Some(Ok(n)) => match declared.get(&n) {
                Some(spec) => Some(spec.clone()),
                None => match read_source(snap, &n) {
                    Ok(spec) => Some(spec),
                    Err(Error::NotFound { .. }) => None,
                    Err(e) => return Err(e),
                },
            },
            _ => None,
        };
        let new = match &parent {
            Some(p) => {
                let kind = add.kind.clone().unwrap_or_else(|| p.kind.clone());
                let path = match (&p.path, path) {
                    (Some(base), Some(sub)) => Some(normalize_subpath(&format!("{base}/{sub}"))?),
                    (base, sub) => sub.or_else(|| base.clone()),
                };
                NewSource {
                    name: name.clone(),
                    kind,
                    location: Some(p.location.clone()),
                    tag: tag.map(str::to_owned).or_else(|| p.tag.clone()),
                    path,
                }
            }
            None => {
                let (kind, location, tag) = match (&add.kind, &add.location, tag) {
                    (Some(k), Some(loc), Some(t)) => {
                        self.registry.get(k)?;
                        (k.clone(), Some(loc.clone()), Some(t.to_owned()))
                    }
                    (Some(k), Some(loc), None) => {
                        let kind = self.registry.get(k)?;
                        let (loc, tag) = split_tag(loc, kind.capabilities().tags);
                        (k.clone(), Some(loc), tag)
                    }
                    (Some(k), None, t) => (k.clone(), None, t.map(str::to_owned)),
                    (None, Some(loc), t) => {
                        // Kinds look at the local file system relative to the process's
                        // directory: show them the path relative to the project's.
                        let local = self.cwd.join(loc);
                        let probe = if !Path::new(loc).is_absolute() && local.exists() {
                            local.display().to_string()
                        } else {
                            loc.clone()
                        };
                        let whole = self.registry.infer(&probe);
                        let (l, split) = split_tag(loc, true);
                        match (whole, split, t) {
                            (Ok(k), _, Some(t)) => {
                                (k.name().to_owned(), Some(loc.clone()), Some(t.to_owned()))
                            }
                            (Err(e), _, Some(_)) => return Err(e),
                            (Ok(k), _, None) if k.capabilities().tags || !loc.contains(':') => {
                                let (l, t) = split_tag(loc, k.capabilities().tags);
                                (k.name().to_owned(), Some(l), t)
                            }
                            (Ok(k), _, None) => (k.name().to_owned(), Some(loc.clone()), None),
                            (Err(e), Some(t), None) => match self.registry.infer(&l) {
                                Ok(k) if k.capabilities().tags => {
                                    (k.name().to_owned(), Some(l), Some(t))
                                }
                                _ => return Err(e),
                            },
                            (Err(e), None, None) => return Err(e),
                        }
                    }
                    (None, None, t) => ("path".to_owned(), None, t.map(str::to_owned)),
                };
                NewSource {
                    name: name.clone(),
                    kind,
                    location,
                    tag,
                    path,
                }
            }
        };
        let kind = self.registry.get(&new.kind)?;
        if new.path.is_some() && !kind.capabilities().subpath {
            return Err(Error::NotSupported {
                kind: kind.name().to_owned(),
                operation: "sub-paths (-p)",
            });
        }
        let mut spec = kind.resolve(&self.context(), new).await?;
        spec.parent = parent.map(|p| p.name);
        Ok(spec)
    }

    /// Poll a resolved spec once and set its latest version; on failure, remove the
    /// location the kind created for it, if any.
    pub(crate) async fn poll_resolved(
        &self,
        spec: &mut SourceSpec,
    ) -> Result<(Arc<dyn Source>, VersionInfo)> {
        let source = self.open_source(spec)?;
        let latest = match source.latest().await {
            Ok(l) => l,
            Err(e) => {
                if spec.owned {
                    let _ = source.remove().await;
                }
                return Err(e);
            }
        };
        spec.latest = Some(latest.version.clone());
        Ok((source, latest))
    }

    /// Poll the named sources (all when `names` is empty) and record new latest versions.
    /// Frozen sources are skipped; a failing poll is reported in its outcome and does not
    /// stop the others. All new versions land in one commit.
    pub async fn update_sources(&self, names: &[String]) -> Result<Vec<UpdateOutcome>> {
        let all = self.sources()?;
        let selected: Vec<SourceSpec> = if names.is_empty() {
            all
        } else {
            let mut out = Vec::new();
            for n in names {
                let n = Name::new(n)?;
                out.push(
                    all.iter()
                        .find(|s| s.name == n)
                        .cloned()
                        .ok_or_else(|| Error::not_found("source", n.as_str()))?,
                );
            }
            out
        };
        self.poll(selected, true).await
    }

    /// Poll `selected` concurrently (frozen ones are skipped), each within
    /// [`POLL_TIMEOUT`]; with `record`, new latest versions land in one commit.
    pub(crate) async fn poll(
        &self,
        selected: Vec<SourceSpec>,
        record: bool,
    ) -> Result<Vec<UpdateOutcome>> {
        let polls = selected.iter().map(|spec| async move {
            if spec.frozen {
                return (spec, None);
            }
            let r = match self.open_source(spec) {
                Ok(s) => match tokio::time::timeout(POLL_TIMEOUT, s.latest()).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::backend(
                        &spec.kind,
                        spec.name.as_str(),
                        format!("polling took longer than {}s", POLL_TIMEOUT.as_secs()),
                    )),
                },
                Err(e) => Err(e),
            };
            (spec, Some(r))
        });
        // At most a few polls at once: each may take a blocking thread, and thousands of
        // them at once cost more in threads than they save.
        // (Unordered, so that one slow remote holds only its own slot; then put back in
        // order.)
        let mut results: Vec<(usize, _)> =
            futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
                futures::stream::iter(polls.enumerate().map(|(i, f)| async move { (i, f.await) })),
                POLL_CONCURRENCY,
            ))
            .await;
        results.sort_by_key(|(i, _)| *i);
        let results = results.into_iter().map(|(_, r)| r);
        let mut outcomes = Vec::new();
        let mut found: Vec<(Name, VersionInfo)> = Vec::new();
        for (spec, r) in results {
            let mut o = UpdateOutcome {
                source: spec.name.clone(),
                previous: spec.latest.clone(),
                latest: spec.latest.clone(),
                error: None,
                skipped: r.is_none(),
            };
            match r {
                Some(Ok(info)) => {
                    o.latest = Some(info.version.clone());
                    found.push((spec.name.clone(), info));
                }
                Some(Err(e)) => o.error = Some(error_chain(&e)),
                None => {}
            }
            outcomes.push(o);
        }
        let previous: BTreeMap<&Name, Option<&Version>> = outcomes
            .iter()
            .map(|o| (&o.source, o.previous.as_ref()))
            .collect();
        let changed: Vec<&(Name, VersionInfo)> = found
            .iter()
            .filter(|(n, info)| previous.get(n).is_some_and(|p| *p != Some(&info.version)))
            .collect();
        if record && !changed.is_empty() {
            let message = format!(
                "source update: {}",
                changed
                    .iter()
                    .map(|(n, i)| format!("{n} -> {}", i.version.short()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            self.store.transact(&message, |tx| {
                for (name, info) in &changed {
                    let updated = crate::records::update_state(tx, name, |spec| {
                        spec.latest = Some(info.version.clone());
                    })?;
                    if !updated {
                        continue; // removed meanwhile
                    }
                    record_version(tx, name, info, None)?;
                }
                Ok(())
            })?;
            for (name, info) in &changed {
                self.events.send(crate::events::Event::VersionRecorded {
                    source: name.clone(),
                    version: info.version.clone(),
                });
            }
        }
        Ok(outcomes)
    }

    /// Pin `name` to a version given in full or as a unique prefix, resolved against the
    /// source's versions.
    pub async fn pin(&self, name: &str, version: &str) -> Result<Version> {
        let spec = self.source(name)?;
        let mut known: Vec<Version> = self
            .recorded_versions(name)?
            .into_iter()
            .map(|r| r.version)
            .collect();
        let source = self.open_source(&spec)?;
        if source.capabilities().history {
            known.extend(source.versions().await?.into_iter().map(|i| i.version));
        }
        let v = resolve_version(version, &known)
            .map_err(|e| match e {
                Error::NotFound { what, name: n, .. } => Error::NotFound {
                    what,
                    name: n,
                    hint: format!(
                        " among the versions of source {:?} (see `dkt source log {}`)",
                        spec.name.as_str(),
                        spec.name
                    ),
                },
                e => e,
            })?
            .clone();
        let message = format!("source pin {} {}", spec.name, v);
        self.store.transact(&message, |tx| {
            if !crate::records::update_state(tx, &spec.name, |s| s.pinned = Some(v.clone()))? {
                return Err(Error::not_found("source", spec.name.as_str()));
            }
            Ok(())
        })?;
        Ok(v)
    }

    /// Record `version` (full, or a unique prefix of a version the kind lists) as the
    /// latest version of `name`, without polling (`dkt source update NAME VERSION`).
    pub async fn set_latest(&self, name: &str, version: &str) -> Result<Version> {
        let spec = self.source(name)?;
        let source = self.open_source(&spec)?;
        let v = if source.capabilities().history {
            let mut known: Vec<Version> = source
                .versions()
                .await?
                .into_iter()
                .map(|i| i.version)
                .collect();
            if resolve_version(version, &known).is_err() {
                // Not seen yet (a frozen source is never polled): fetch what the kind has
                // now, without recording it, and look again.
                source.latest().await?;
                known = source
                    .versions()
                    .await?
                    .into_iter()
                    .map(|i| i.version)
                    .collect();
            }
            resolve_version(version, &known)
                .map_err(|e| match e {
                    Error::NotFound { what, name: n, .. } => Error::NotFound {
                        what,
                        name: n,
                        hint: format!(" among the versions of source {:?}", spec.name.as_str()),
                    },
                    e => e,
                })?
                .clone()
        } else {
            let recorded: Vec<Version> = self
                .recorded_versions(name)?
                .into_iter()
                .map(|r| r.version)
                .collect();
            match version.parse::<Version>() {
                Ok(v) => v,
                Err(_) => resolve_version(version, &recorded)?.clone(),
            }
        };
        let info = VersionInfo::new(v.clone());
        let message = format!("source update {} {} (given)", spec.name, v.short());
        self.store.transact(&message, |tx| {
            if !crate::records::update_state(tx, &spec.name, |s| s.latest = Some(v.clone()))? {
                return Err(Error::not_found("source", spec.name.as_str()));
            }
            record_version(tx, &spec.name, &info, None)
        })?;
        Ok(v)
    }

    /// Remove the pin of `name`.
    pub fn unpin(&self, name: &str) -> Result<()> {
        self.edit_source(name, &format!("source unpin {name}"), |s| {
            s.pinned = None;
            Ok(())
        })
    }

    /// Freeze (`true`) or thaw (`false`) a source: a frozen source is never polled.
    pub fn set_frozen(&self, name: &str, frozen: bool) -> Result<()> {
        let verb = if frozen { "freeze" } else { "thaw" };
        self.edit_source(name, &format!("source {verb} {name}"), |s| {
            s.frozen = frozen;
            Ok(())
        })
    }

    fn edit_source(
        &self,
        name: &str,
        message: &str,
        mut f: impl FnMut(&mut SourceSpec) -> Result<()>,
    ) -> Result<()> {
        let name = Name::new(name)?;
        self.store.transact(message, |tx| {
            let mut s = crate::records::get_source(tx, &name)?
                .ok_or_else(|| Error::not_found("source", name.as_str()))?;
            f(&mut s)?;
            crate::records::put_source(tx, &s)?;
            Ok(())
        })?;
        Ok(())
    }

    /// Move `name` to another location (a local mirror, say), keeping its name, history
    /// and tag; `kind` changes its kind too.
    pub async fn relocate(
        &self,
        name: &str,
        location: &str,
        kind: Option<&str>,
    ) -> Result<SourceSpec> {
        let old = self.source(name)?;
        let kind_name = kind.map(str::to_owned).unwrap_or_else(|| old.kind.clone());
        let k = self.registry.get(&kind_name)?;
        let (loc, tag) = split_tag(location, k.capabilities().tags);
        let new = NewSource {
            name: old.name.clone(),
            kind: kind_name,
            location: Some(loc),
            tag: tag.or_else(|| old.tag.clone()),
            path: old.path.clone(),
        };
        let mut spec = k.resolve(&self.context(), new).await?;
        spec.parent = old.parent.clone();
        spec.pinned = old.pinned.clone();
        spec.frozen = old.frozen;
        let latest = k.open(&self.context(), &spec)?.latest().await?;
        spec.latest = Some(latest.version.clone());
        let message = format!(
            "source pin {} {} (relocated from {})",
            spec.name, spec.location, old.location
        );
        self.store.transact(&message, |tx| {
            if !tx.exists(&paths::source(&spec.name))? {
                return Err(Error::not_found("source", spec.name.as_str()));
            }
            crate::records::put_source(tx, &spec)?;
            record_version(tx, &spec.name, &latest, None)?;
            Ok(())
        })?;
        Ok(spec)
    }

    /// Resolve `SRC:PREFIX` to a recorded or listed version of that source.
    pub async fn resolve_source_version(&self, text: &str) -> Result<SourceVersion> {
        let (name, prefix) = text.split_once(':').ok_or_else(|| {
            Error::invalid(
                "source version",
                text,
                "expected SOURCE:VERSION, e.g. pinata:3dd2cc1d",
            )
        })?;
        let spec = self.source(name)?;
        let mut known: Vec<Version> = self
            .recorded_versions(name)?
            .into_iter()
            .map(|r| r.version)
            .collect();
        let source = self.open_source(&spec)?;
        if source.capabilities().history {
            known.extend(source.versions().await?.into_iter().map(|i| i.version));
        }
        let v = resolve_version(prefix, &known).map_err(|e| match e {
            Error::NotFound { what, name: n, .. } => Error::NotFound {
                what,
                name: format!("{}:{n}", spec.name),
                hint: String::new(),
            },
            Error::Invalid { reason, .. } => Error::invalid("source version", text, reason),
            e => e,
        })?;
        Ok(SourceVersion {
            source: spec.name,
            version: v.clone(),
        })
    }

    /// Record an out-of-band relation between two existing versions (`SRC:ID`).
    pub async fn link(&self, from: &str, to: &str) -> Result<Link> {
        let from = self.resolve_source_version(from).await?;
        let to = self.resolve_source_version(to).await?;
        let link = Link {
            from,
            to,
            recorded_ms: None,
        };
        let message = format!(
            "source link {} {}",
            short_sv(&link.from),
            short_sv(&link.to)
        );
        self.store.transact(&message, |tx| {
            let path = paths::link(&link.id());
            if !tx.exists(&path)? {
                tx.put_json(&path, &link)?;
            }
            Ok(())
        })?;
        Ok(link)
    }

    /// Remove a source. Refused while a node reads or writes it (the error names the
    /// nodes) or another source derives from it.
    pub async fn remove_source(&self, name: &str) -> Result<SourceSpec> {
        let mut spec = self.source(name)?;
        spec.owned = self.owned_marker(&spec.name).exists();
        let message = format!("source rm {}", spec.name);
        self.store.transact(&message, |tx| {
            let snap = tx.base();
            let graph = build_graph(snap)?;
            let mut users: Vec<String> = graph
                .readers(&spec.name)
                .iter()
                .chain(graph.writers(&spec.name).iter())
                .map(|id| id.short())
                .collect();
            users.sort();
            users.dedup();
            if !users.is_empty() {
                return Err(Error::Conflict(format!(
                    "source {:?} is used by node{} {}: remove {} first",
                    spec.name.as_str(),
                    if users.len() > 1 { "s" } else { "" },
                    users.join(", "),
                    if users.len() > 1 { "them" } else { "it" },
                )));
            }
            crate::records::remove_source(tx, &spec.name);
            tx.remove(&paths::versions_dir(&spec.name));
            tx.remove(&paths::seen_dir(&spec.name));
            Ok(())
        })?;
        if let Ok(source) = self.open_source(&spec) {
            source.remove().await?;
        }
        let _ = std::fs::remove_file(self.owned_marker(&spec.name));
        Ok(spec)
    }

    /// Record a node (idempotent: the same node gives the same ID and no new commit).
    /// Inputs and outputs must exist, outputs must be of kinds that publish, and the node
    /// must not close a cycle.
    pub fn define_node(&self, node: NodeSpec) -> Result<NodeId> {
        self.define_named_node(node, None)
    }

    /// [`Project::define_node`], giving the node `name` (accepted wherever a node ID
    /// is). A different node that held the name is replaced: it is retired (its history
    /// kept) in the same commit.
    ///
    /// # Errors
    /// Besides those of [`Project::define_node`]: [`Error::Conflict`] when another node
    /// already writes one of the outputs (a source has at most one writer), or when the
    /// node is retired.
    pub fn define_named_node(&self, mut node: NodeSpec, name: Option<&str>) -> Result<NodeId> {
        let name = name
            .map(|n| {
                Name::new(n).map_err(|e| match e {
                    Error::Invalid { value, reason, .. } => Error::Invalid {
                        what: "node name",
                        value,
                        reason,
                    },
                    e => e,
                })
            })
            .transpose()?;
        node.normalize();
        // A command naming a script file records the script's content with the node.
        let script = self.script_file(&node)?;
        if let Some((script_ref, _)) = &script {
            node.script = Some(script_ref.clone());
        }
        let id = node.id();
        let snap = self.store.snapshot()?;
        for o in &node.outputs {
            let spec = read_source(&snap, o)?;
            let kind = self.registry.get(&spec.kind)?;
            if !kind.capabilities().publish {
                return Err(Error::NotSupported {
                    kind: spec.kind.clone(),
                    operation: "publishing (being a node's output)",
                });
            }
        }
        for s in node.inputs.iter() {
            read_source(&snap, s)?;
        }
        // Checked against the file just read (the content is recorded by the commit below).
        let mut unrecorded = node.clone();
        unrecorded.script = None;
        self.check_variables(&unrecorded)?;
        let message = format!("node add {} ({})", id.short(), node.command.display_line());
        self.store.transact(&message, |tx| {
            if tx.exists(&crate::lifecycle::retired_path(&id))? {
                return Err(Error::Conflict(format!(
                    "node {} was removed; its definition cannot be used again as it is \
                     (change it, e.g. its labels, to make a new node)",
                    id.short()
                )));
            }
            // The node that held the name is replaced: retired first, so that it does not
            // count as a second writer of the outputs they share.
            if let Some(name) = &name {
                crate::lifecycle::give_name(tx, name, &id)?;
            }
            if tx.exists(&paths::node(&id))? {
                return Ok(());
            }
            let mut graph = build_graph(tx.base())?;
            if let Some(old) = &name {
                if let Some(previous) = crate::lifecycle::named(tx.base(), old.as_str())? {
                    graph = build_graph_without(tx.base(), &[previous])?;
                }
            }
            let names = crate::lifecycle::names(tx.base())?;
            crate::lifecycle::check_single_writer(&graph, &names, &id, &node)?;
            graph.add_node(id, &node.inputs, &node.outputs)?;
            if let Some((script_ref, content)) = &script {
                tx.put(&paths::script(script_ref.hex()), content)?;
            }
            tx.put_json(&paths::node(&id), &node)?;
            Ok(())
        })?;
        Ok(id)
    }

    /// The script file `node`'s command names (its first word, a file relative to the
    /// project's root or absolute), with its content; `None` when the command is not a
    /// script file.
    pub(crate) fn script_file(
        &self,
        node: &NodeSpec,
    ) -> Result<Option<(crate::model::ScriptRef, Vec<u8>)>> {
        let crate::Command::Argv(argv) = &node.command else {
            return Ok(None);
        };
        let Some(first) = argv.first() else {
            return Ok(None);
        };
        let path = Path::new(first);
        let path = if path.is_absolute() {
            path.to_owned()
        } else {
            self.root().join(path)
        };
        if !path.is_file() {
            return Ok(None);
        }
        let content = std::fs::read(&path).at(&path)?;
        if std::str::from_utf8(&content).is_err() {
            return Err(Error::invalid(
                "script",
                path.display().to_string(),
                "not UTF-8 text",
            ));
        }
        Ok(Some((
            crate::model::ScriptRef::new(first, &content),
            content,
        )))
    }

    /// The recorded content of `node`'s script, if it has one.
    pub fn script_content(&self, node: &NodeSpec) -> Result<Option<String>> {
        let Some(script) = &node.script else {
            return Ok(None);
        };
        let bytes = self
            .store
            .snapshot()?
            .read(&paths::script(script.hex()))?
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "the recorded script {} ({}) is missing from the store",
                    script.path, script.digest
                ))
            })?;
        if blake3::hash(&bytes).to_hex().as_str() != script.hex() {
            return Err(Error::corrupt(format!(
                "the recorded script {} does not match its digest {}",
                script.path, script.digest
            )));
        }
        String::from_utf8(bytes).map(Some).map_err(|_| {
            Error::corrupt(format!("the recorded script {} is not UTF-8", script.path))
        })
    }
}

fn short_sv(sv: &SourceVersion) -> String {
    format!("{}:{}", sv.source, sv.version.short())
}

/// The error and its causes on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

pub(crate) fn read_source(snap: &Snapshot, name: &Name) -> Result<SourceSpec> {
    crate::records::get_source(snap, name)?.ok_or_else(|| Error::NotFound {
        what: "source",
        name: name.to_string(),
        hint: " (see `dkt source list`)".to_owned(),
    })
}

pub(crate) fn build_graph(snap: &Snapshot) -> Result<Graph> {
    build_graph_without(snap, &[])
}

/// The graph of the active nodes of `snap`, leaving out `skip` too (nodes about to be
/// retired).
pub(crate) fn build_graph_without(snap: &Snapshot, skip: &[NodeId]) -> Result<Graph> {
    let mut g = Graph::new();
    let sources: Vec<SourceSpec> = snap.read_tree_json("sources")?;
    for s in &sources {
        g.add_source(&s.name);
    }
    let nodes: Vec<NodeSpec> = snap.read_tree_json("nodes")?;
    let retired = crate::lifecycle::retired(snap)?;
    for n in &nodes {
        let id = n.id();
        if !retired.contains(&id) && !skip.contains(&id) {
            g.add_node(id, &n.inputs, &n.outputs)?;
        }
    }
    let links: Vec<Link> = snap.read_tree_json("links")?;
    for l in &links {
        let (a, b) = (
            Vertex::Source(l.from.source.clone()),
            Vertex::Source(l.to.source.clone()),
        );
        if g.has_source(&l.from.source) && g.has_source(&l.to.source) {
            g.add_edge(&a, &b, Edge::Link)?;
        }
    }
    Ok(g)
}

/// The provenance of a produced version: the sealed run record that made it.
pub(crate) type Produced<'a> = Option<&'a crate::RunRecord>;

/// Record `info` as a version of `name` if it is not recorded yet. Records are never
/// rewritten: a record's digest is part of the hash chain of everything made from it.
pub(crate) fn record_version(
    tx: &mut Tx,
    name: &Name,
    info: &VersionInfo,
    produced: Produced<'_>,
) -> Result<()> {
    let path = paths::version(name, &info.version);
    if tx.exists(&path)? {
        return Ok(());
    }
    crate::records::mark_seen(tx, name, &info.version)?;
    let origin = crate::records::get_source(tx, name)?.map(|spec| crate::model::Origin::of(&spec));
    let mut record = VersionRecord {
        source: name.clone(),
        version: info.version.clone(),
        recorded_ms: None,
        seq: None,
        run: produced.map(|r| r.id),
        node: produced.map(|r| r.node),
        inputs: produced.map(|r| r.inputs.clone()).unwrap_or_default(),
        extra: info.extra.clone(),
        run_digest: produced.and_then(|r| r.digest.clone()),
        origin,
        digest: None,
    };
    record.seal()?;
    tx.put_json(&path, &record)?;
    Ok(())
}

/// The format marker of store format 1.
const V1: &[u8] = b"dtk-store 1\n";
/// The format marker of store format 2.
const V2: &[u8] = b"dtk-store 2\n";
/// The format marker of store format 3.
const V3: &[u8] = b"dtk-store 3\n";

/// Bring a store written by an earlier release to the current layout ([`crate::store::FORMAT`]),
/// one commit per format step; a store already current costs one lookup. A store of a
/// newer format than this program knows is refused rather than misread. Returns the
/// sources an upgraded store marked as made by dtk (`owned`), which format 3 keeps on the
/// machine instead.
///
/// - Format 1 kept the versions of a source, the runs of a node, the successful runs of a
///   node and the consumers of a source in flat directories, which a commit rewrites
///   whole; format 2 fans them out by the first two hex digits.
/// - Format 2 still kept one entry per source or node at the top of `sources/`,
///   `versions/`, `nodes/`, `node-runs/`, `done/` and `consumers/` (so a run rewrote trees
///   as large as the project), a source's state in its declaration, a sequence number in
///   each version record, and a `done/` index; format 3 fans every growing directory out
///   by one hex digit per level, splits `state/` from `sources/`, records new versions
///   without time or sequence (`seen/` holds the time), and finds successful runs by
///   their IDs (see `docs/format.md`). Records keep their bytes, so every digest still
///   verifies.
fn upgrade_store(store: &Store) -> Result<Vec<(Name, String)>> {
    let current = store.snapshot()?.read("format")?;
    match current.as_deref() {
        Some(f) if f == crate::store::FORMAT.as_bytes() => return Ok(Vec::new()),
        Some(V1) => upgrade_v1(store)?,
        Some(V2) => {}
        Some(V3) => {
            upgrade_v3(store)?;
            return Ok(Vec::new());
        }
        other => {
            let found = other.map_or("nothing".to_owned(), |f| {
                format!("{:?}", String::from_utf8_lossy(f).trim())
            });
            return Err(Error::corrupt(format!(
                "the metadata store in {} has format {found}; this dkt reads {:?} to {:?}: \
                 use a newer dkt",
                store.git_dir().display(),
                "dtk-store 1",
                crate::store::FORMAT.trim()
            )));
        }
    }
    upgrade_v2(store)
}

/// Format 3 to 4 (see [`upgrade_store`]): only the marker changes. Records keep their
/// bytes and their digests (bare hex, the stored-order scheme); records written from
/// now on are sealed in the canonical scheme (`blake3-jcs:`) with their origin (version
/// records) and their log's digest (run records), which a dkt reading format 3 would
/// report as mismatches: hence a new format, which such a dkt refuses instead.
fn upgrade_v3(store: &Store) -> Result<()> {
    store.transact(
        "upgrade: store format 4 (canonical digests, sealed origins and logs)",
        |tx| {
            if tx.read("format")?.as_deref() == Some(V3) {
                tx.put("format", crate::store::FORMAT.as_bytes())?;
            }
            Ok(())
        },
    )?;
    Ok(())
}

/// Format 1 to 2 (see [`upgrade_store`]).
fn upgrade_v1(store: &Store) -> Result<()> {
    store.transact("upgrade: store format 2 (fanned-out indexes)", |tx| {
        if tx.read("format")?.as_deref() != Some(V1) {
            return Ok(()); // another process upgraded it meanwhile
        }
        let base = tx.base();
        // (from, to) for every record that moves.
        let mut moves: Vec<(String, String, gix::ObjectId)> = Vec::new();
        let files = |dir: &str| -> Result<Vec<crate::store::DirEntry>> {
            Ok(base.list(dir)?.into_iter().filter(|e| !e.is_dir).collect())
        };
        let dirs = |dir: &str| -> Result<Vec<String>> {
            Ok(base
                .list(dir)?
                .into_iter()
                .filter(|e| e.is_dir)
                .map(|e| e.name)
                .collect())
        };
        let mut seqs: Vec<(String, u64)> = Vec::new();
        for name in dirs("versions")? {
            let dir = format!("versions/{name}");
            let mut next = 0;
            for e in files(&dir)? {
                // <algo>-<hex>.json
                let Some((_, hex)) = e.name.split_once('-') else {
                    continue;
                };
                #[derive(serde::Deserialize)]
                struct Seq {
                    seq: u64,
                }
                if let Some(r) = base.read_json::<Seq>(&format!("{dir}/{}", e.name))? {
                    next = next.max(r.seq + 1);
                }
                moves.push((
                    format!("{dir}/{}", e.name),
                    format!("{dir}/{}/{}", &hex[..2.min(hex.len())], e.name),
                    e.id,
                ));
            }
            seqs.push((format!("{dir}/seq"), next));
        }
        for top in ["node-runs", "done"] {
            for node in dirs(top)? {
                let dir = format!("{top}/{node}");
                for e in files(&dir)? {
                    moves.push((
                        format!("{dir}/{}", e.name),
                        format!("{dir}/{}/{}", &e.name[..2.min(e.name.len())], e.name),
                        e.id,
                    ));
                }
            }
        }
        for source in dirs("consumers")? {
            for version in dirs(&format!("consumers/{source}"))? {
                let Some((_, hex)) = version.split_once('-') else {
                    continue;
                };
                let from = format!("consumers/{source}/{version}");
                let to = format!("consumers/{source}/{}/{version}", &hex[..2.min(hex.len())]);
                for e in files(&from)? {
                    moves.push((
                        format!("{from}/{}", e.name),
                        format!("{to}/{}", e.name),
                        e.id,
                    ));
                }
            }
        }
        for (from, to, id) in moves {
            tx.remove(&from);
            tx.put_id(&to, id);
        }
        for (path, next) in seqs {
            tx.put(&path, format!("{next}\n").as_bytes())?;
        }
        tx.put("format", V2)?;
        Ok(())
    })?;
    Ok(())
}

/// Where a path of format 2 goes in format 3: `Some(Some(new))` moves it, `Some(None)`
/// drops it (an index format 3 does not keep), `None` keeps it.
fn v3_path(path: &str) -> Option<Option<String>> {
    let parts: Vec<&str> = path.split('/').collect();
    let hex2 = |h: &str| format!("{}/{}", &h[..1], &h[1..2]);
    let file_hex = |f: &str| -> String {
        // `<algo>-<hex>.json`, `<hex>.json`, `<hex>.log`, `<hex>`
        let stem = f.split('.').next().unwrap_or(f);
        stem.rsplit('-').next().unwrap_or(stem).to_owned()
    };
    let ok_hex = |h: &str| h.len() >= 4 && h.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        ["done", ..] | ["queue", ..] | ["claimed", ..] => Some(None),
        ["versions", _, "seq"] => Some(None),
        ["versions", name, _, file] if ok_hex(&file_hex(file)) => Some(Some(format!(
            "versions/{}/{name}/{}/{file}",
            paths::fan(name),
            hex2(&file_hex(file))
        ))),
        ["nodes", file] if ok_hex(&file_hex(file)) => {
            Some(Some(format!("nodes/{}/{file}", hex2(&file_hex(file)))))
        }
        ["retired", file] if ok_hex(&file_hex(file)) => {
            Some(Some(format!("retired/{}/{file}", hex2(&file_hex(file)))))
        }
        ["scripts", file] if ok_hex(file) => Some(Some(format!("scripts/{}/{file}", hex2(file)))),
        ["links", file] if ok_hex(&file_hex(file)) => {
            Some(Some(format!("links/{}/{file}", hex2(&file_hex(file)))))
        }
        ["runs", _, _, file] if ok_hex(&file_hex(file)) => {
            Some(Some(format!("{}/{file}", paths::run_dir(&file_hex(file)))))
        }
        ["node-runs", node, _, file] if ok_hex(node) && ok_hex(&file_hex(file)) => {
            Some(Some(format!(
                "node-runs/{}/{node}/{}/{file}",
                hex2(node),
                hex2(&file_hex(file))
            )))
        }
        ["consumers", source, _, version, file] => {
            let vhex = version.rsplit('-').next().unwrap_or(version);
            ok_hex(vhex).then(|| {
                Some(format!(
                    "consumers/{}/{source}/{}/{version}/{file}",
                    paths::fan(source),
                    hex2(vhex)
                ))
            })
        }
        _ => None,
    }
}

/// Format 2 to 3, and on to 4 (see [`upgrade_store`] and [`upgrade_v3`]), in one commit.
fn upgrade_v2(store: &Store) -> Result<Vec<(Name, String)>> {
    let mut pending: Vec<crate::RunRecord> = Vec::new();
    let (owned, _) = store.transact("upgrade: store format 4 (fanned out, state apart)", |tx| {
        if tx.read("format")?.as_deref() != Some(V2) {
            return Ok(Vec::new()); // another process upgraded it meanwhile
        }
        let mut owned = Vec::new();
        let files = tx.base().walk("")?;
        for (path, id) in files {
            if let Some(name) = path
                .strip_prefix("sources/")
                .and_then(|f| f.strip_suffix(".json"))
                .filter(|f| !f.contains('/'))
            {
                // A full spec of format 2: declaration and state apart.
                let spec: SourceSpec = tx
                    .base()
                    .read_json(&path)?
                    .ok_or_else(|| Error::corrupt(format!("{path} vanished")))?;
                if spec.name.as_str() != name {
                    return Err(Error::corrupt(format!(
                        "{path} holds source {:?}",
                        spec.name.as_str()
                    )));
                }
                if spec.owned {
                    owned.push((spec.name.clone(), spec.location.clone()));
                }
                tx.remove(&path);
                crate::records::put_source(tx, &spec)?;
                continue;
            }
            match v3_path(&path) {
                None => {}
                Some(None) => tx.remove(&path),
                Some(Some(new)) => {
                    tx.remove(&path);
                    tx.put_id(&new, id);
                }
            }
        }
        // The run queue leaves the history: pending runs go to the local queue (after the
        // commit), runs that were executing are recorded interrupted.
        pending.clear();
        for run in tx.base().read_dir_json::<crate::RunRecord>("queue")? {
            tx.remove(&paths::run(&run.id));
            tx.remove(&paths::node_run(&run.node, &run.id));
            pending.push(run);
        }
        for mut run in tx.base().read_dir_json::<crate::RunRecord>("claimed")? {
            run.status = crate::RunStatus::Interrupted;
            run.lease_until_ms = None;
            run.error = Some("its claim ended with the upgrade to store format 3".to_owned());
            run.seal()?;
            let id = tx.put_json(&paths::run(&run.id), &run)?;
            tx.put_id(&paths::node_run(&run.node, &run.id), id);
        }
        tx.put("format", crate::store::FORMAT.as_bytes())?;
        Ok(owned)
    })?;
    if let Some(dkt) = store.git_dir().parent() {
        let queue = crate::queue::LocalQueue::new(dkt.join("queue"));
        for run in &pending {
            crate::queue::RunQueue::enqueue(&queue, run)?;
        }
    }
    Ok(owned)
}

/// Split `LOCATION[:TAG]`. Only a final `:TAG` without `/` counts, so URLs
/// (`https://...`), `git@host:path` and `host:port/repo` keep their colons; a Windows-like
/// `C:\...` and digit-only suffixes (ports) are not tags either.
pub fn split_tag(location: &str, kind_has_tags: bool) -> (String, Option<String>) {
    if !kind_has_tags {
        return (location.to_owned(), None);
    }
    if let Some((loc, tag)) = location.rsplit_once(':') {
        let scp_like = loc.contains('@') && !loc.contains('/');
        if !tag.is_empty()
            && !tag.contains('/')
            && !tag.contains('\\')
            && !tag.chars().all(|c| c.is_ascii_digit())
            && !loc.is_empty()
            && !loc.ends_with(':')
            && !scp_like
            && loc.contains(['/', '.'])
        {
            return (loc.to_owned(), Some(tag.to_owned()));
        }
    }
    (location.to_owned(), None)
}

/// Normalize a sub-path: `/`-separated, relative, no `.` or `..` or empty parts.
pub fn normalize_subpath(p: &str) -> Result<String> {
    let mut parts = Vec::new();
    for part in p.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                return Err(Error::invalid(
                    "sub-path",
                    p,
                    "it must stay inside the source (no \"..\")",
                ))
            }
            part if part.chars().any(char::is_control) => {
                return Err(Error::invalid(
                    "sub-path",
                    p,
                    "control characters are not allowed",
                ))
            }
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(Error::invalid("sub-path", p, "it names no sub-directory"));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_only_where_meant() {
        assert_eq!(
            split_tag("docker/pinata:beta12", true),
            ("docker/pinata".into(), Some("beta12".into()))
        );
        assert_eq!(
            split_tag("https://github.com/a/b", true),
            ("https://github.com/a/b".into(), None)
        );
        assert_eq!(
            split_tag("https://github.com/a/b:dev", true),
            ("https://github.com/a/b".into(), Some("dev".into()))
        );
        assert_eq!(
            split_tag("git@github.com:a/b", true),
            ("git@github.com:a/b".into(), None)
        );
        assert_eq!(
            split_tag("localhost:5000/repo", true),
            ("localhost:5000/repo".into(), None)
        );
        assert_eq!(
            split_tag("localhost:5000/repo:v1", true),
            ("localhost:5000/repo".into(), Some("v1".into()))
        );
        assert_eq!(split_tag("/tmp/x:y", false), ("/tmp/x:y".into(), None));
    }

    #[test]
    fn subpaths_never_escape() {
        assert_eq!(normalize_subpath("/v1/pitfall/").unwrap(), "v1/pitfall");
        assert_eq!(normalize_subpath("./a//b").unwrap(), "a/b");
        for bad in ["..", "a/../../b", "/", "", "a/\n"] {
            let e = normalize_subpath(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}
