//! Runs executed on other machines.
//!
//! When a project has a remote run queue (`[queue] url` in `.dkt/config`), the process
//! that claimed a run (the coordinator: `dkt daemon`, `dkt run`) does not execute it
//! itself. It describes the run in a [`Ticket`] (the command, the recorded script, the
//! input and output versions and how to materialize each) and hands it to a
//! [`Dispatcher`], which puts it in the queue and waits for a worker's [`TicketResult`].
//! The coordinator keeps everything else: the claim and its lease, publishing the outputs
//! and recording the run. Only the coordinator writes the metadata; a worker needs no copy
//! of the project.
//!
//! A worker materializes the inputs of remote kinds (git URLs, docker, s3, http,
//! hockeyapp) itself; inputs on the coordinator's disks (the `path` kind, repositories at
//! a local path) and the current content of outputs travel through a content-addressed
//! artifact store ([`Shipped`]), checked against their BLAKE3 digest on arrival.
//! [`run_ticket`] is the worker's half of execution: it builds the scope and runs the
//! command exactly as a local run does.
//!
//! No secret crosses the queue: a ticket names the secrets the command uses
//! ([`Ticket::secrets`]); a worker reads them from its own secrets directory and refuses a
//! run whose secrets it lacks, naming them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{Command, Fields, Name, NodeId, Result, RunId, Secrets, SourceSpec, Version};

/// The format of [`Ticket`] and [`TicketResult`]; a worker refuses other formats.
pub const TICKET_FORMAT: u32 = 1;

/// The format of a ticket of a sandboxed node (workers older than sandboxing refuse it
/// instead of running the command unsandboxed).
pub const TICKET_FORMAT_SANDBOX: u32 = 2;

/// Where a shipped tree's root appears in the field values of a ticket; the worker
/// replaces it with the directory it extracted the tree into.
pub const ROOT_PLACEHOLDER: &str = "/.dkt-remote-root";

/// What the error of a run whose worker was lost (its lease expired) says; a pass runs
/// such a node again at once.
pub const WORKER_LOST: &str = "stopped renewing its lease";

/// A run, as a worker needs it: everything to execute it and nothing of the project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// [`TICKET_FORMAT`].
    pub format: u32,
    /// The run (one attempt of a node on some inputs).
    pub run: RunId,
    /// The node.
    pub node: NodeId,
    /// The attempt number.
    pub attempt: u32,
    /// The labels a worker must all have.
    pub labels: Vec<String>,
    /// The node's command.
    pub command: Command,
    /// The recorded content of the node's script file, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// The inputs at their versions.
    pub inputs: Vec<TicketInput>,
    /// The outputs, with their current content.
    pub outputs: Vec<TicketOutput>,
    /// The private variables (`[vars]`) the command uses, with their values.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// The names of the secrets the command uses (never their values).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// The kinds' settings (`[kind.NAME]` tables of the coordinator's `.dkt/config`).
    #[serde(default)]
    pub settings: BTreeMap<String, BTreeMap<String, String>>,
    /// Run the command through bubblewrap (a sandboxed node): such a ticket has format
    /// [`TICKET_FORMAT_SANDBOX`], so a worker that cannot sandbox refuses it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
    /// A sandboxed command may use the network.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
    /// The run's time limit, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The artifact store's URL, as the coordinator reaches it.
    pub artifacts: String,
    /// How long a claim lives without renewal, in milliseconds.
    pub lease_ms: u64,
}

/// One input of a [`Ticket`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketInput {
    /// The source's name.
    pub name: Name,
    /// The version to put in scope.
    pub version: Version,
    /// Where its content comes from.
    pub from: Materialize,
}

/// How a worker gets an input's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Materialize {
    /// From the artifact store; the fields as the coordinator computed them, with
    /// [`ROOT_PLACEHOLDER`] for the directory the worker extracts into.
    Artifact {
        /// The tree.
        artifact: Shipped,
        /// The source's fields.
        fields: Fields,
    },
    /// From the kind, by the worker (remote kinds: its location is a URL).
    Kind {
        /// The source's spec (kind, location, tag, path).
        spec: SourceSpec,
    },
}

/// One output of a [`Ticket`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketOutput {
    /// The source's name.
    pub name: Name,
    /// Its current content (none for a source without a version yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Shipped>,
    /// The source's fields, with [`ROOT_PLACEHOLDER`] for the staging directory.
    pub fields: Fields,
}

/// A tree (a directory, or one file) in the artifact store: a tar archive named `key`,
/// whose BLAKE3 is `blake3`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipped {
    /// Its key in the store.
    pub key: String,
    /// `blake3:HEX` of the archive.
    pub blake3: String,
    /// The archive's size in bytes.
    pub size: u64,
    /// When the tree is one file: its name (`ROOT` is that file in the directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// How a remote run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Ending {
    /// Every step exited 0; the outputs are in the artifact store.
    Success {
        /// Each output's staged content.
        outputs: BTreeMap<Name, Shipped>,
    },
    /// A step failed (exit code, signal, time limit, a process that could not start).
    Failed {
        /// The exit code, if it exited.
        code: Option<i32>,
        /// What happened, when not a plain exit code.
        error: Option<String>,
    },
    /// Cancelled (`dkt node cancel`, or the coordinator gave the run up).
    Cancelled,
    /// The worker holding the run stopped renewing its lease (died, cut off).
    Interrupted {
        /// Who and why.
        why: String,
    },
    /// The run could not be executed (an input not available, a secret missing, ...).
    Error {
        /// What went wrong.
        message: String,
    },
}

/// What a worker sends back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketResult {
    /// How it ended.
    pub ending: Ending,
    /// The run's output (redacted by the worker with its secrets).
    pub log: String,
    /// The worker that executed it (`host:pid`).
    pub worker: String,
    /// Keys of archives the worker found corrupt (the coordinator deletes them, so they
    /// are shipped again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrupt: Vec<String>,
}

/// Hands tickets to workers and brings their results back (see the [module docs](self)).
#[async_trait::async_trait]
pub trait Dispatcher: std::fmt::Debug + Send + Sync {
    /// The artifact store's URL, as this process reaches it.
    fn artifacts_url(&self) -> String;

    /// The tree already stored under `key`, if any.
    async fn shipped(&self, key: &str) -> Result<Option<Shipped>>;

    /// Store the tree at `root` (a directory or a file) under `key`.
    async fn ship(&self, key: &str, root: &Path) -> Result<Shipped>;

    /// Extract `tree` into the directory `into`, refusing it when its digest does not
    /// match ([`crate::Error::Service`]).
    async fn fetch(&self, tree: &Shipped, into: &Path) -> Result<()>;

    /// Queue `ticket` and wait until it has ended; `cancel` gives the run up (the worker
    /// is told to stop it).
    async fn dispatch(&self, ticket: Ticket, cancel: CancellationToken) -> Result<TicketResult>;

    /// The run's attempt was settled by the coordinator (recorded `interrupted`): any
    /// worker still executing it stops, and its result is never used.
    fn forget(&self, run: &RunId);
}

/// Whether a source's content travels through the artifact store (its location is on the
/// coordinator's disks) rather than being materialized by the worker from its kind.
pub fn shipped_kind(spec: &SourceSpec) -> bool {
    spec.kind == "path" || !spec.location.contains("://") && !is_scp_like(&spec.location)
}

fn is_scp_like(location: &str) -> bool {
    match location.split_once(':') {
        Some((before, _)) => before.contains('@') && !before.contains('/'),
        None => false,
    }
}

/// The key of a version's content in the artifact store: content-addressed by the
/// version digest (and the sub-path, which selects part of a version's content).
pub fn version_key(spec: &SourceSpec, version: &Version) -> String {
    let mut key = format!(
        "versions/{}/{}/{}",
        spec.kind,
        version.algo().name(),
        version.hex()
    );
    if let Some(p) = &spec.path {
        key.push('-');
        key.push_str(&blake3::hash(p.as_bytes()).to_hex()[..16]);
    }
    key.push_str(".tar");
    key
}

/// The key of a run's output in the artifact store.
pub fn output_key(run: &RunId, output: &Name) -> String {
    format!("runs/{}/{}.tar", run.to_hex(), output)
}

/// Replace [`ROOT_PLACEHOLDER`] (at the start of a value) with `dir`.
pub fn place(fields: &Fields, dir: &Path) -> Fields {
    let dir = dir.display().to_string();
    fields
        .iter()
        .map(|(k, v)| {
            let v = match v.strip_prefix(ROOT_PLACEHOLDER) {
                Some(rest) => format!("{dir}{rest}"),
                None => v.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// The worker's half of a run: with the inputs materialized (`inputs`: each source's
/// fields, `ROOT` where its content is) and the outputs staged (`outputs`: each output's
/// fields, `ROOT` its staging directory), run the ticket's command in `scratch` (which
/// also receives the rendered script) and say how it ended. Output goes to `live_log`
/// as it comes (if given) and, redacted with `secrets`, into the returned log.
///
/// A secret the ticket names that `secrets` lacks ends the run with
/// [`Ending::Error`] naming it, before anything runs.
pub async fn run_ticket(
    ticket: &Ticket,
    inputs: Vec<(Name, Fields)>,
    outputs: Vec<(Name, Fields)>,
    secrets: &Secrets,
    scratch: &Path,
    cancel: &CancellationToken,
    live_log: Option<PathBuf>,
) -> Result<(String, Ending)> {
    let missing: Vec<&str> = ticket
        .secrets
        .iter()
        .map(String::as_str)
        .filter(|s| secrets.get(s).is_none())
        .collect();
    if !missing.is_empty() {
        return Ok((
            String::new(),
            Ending::Error {
                message: format!(
                    "the node's command uses secret{} {} which this worker does not have: add {} to the worker's secrets directory (`dkt worker --secrets DIR`, one file per secret)",
                    if missing.len() > 1 { "s" } else { "" },
                    missing.join(", "),
                    if missing.len() > 1 { "them" } else { "it" }
                ),
            },
        ));
    }
    let mut scope = crate::engine::Scope::default();
    let output_roots: Vec<PathBuf> = outputs
        .iter()
        .filter_map(|(_, f)| f.get("ROOT").map(PathBuf::from))
        .collect();
    let input_roots: Vec<PathBuf> = inputs
        .iter()
        .filter_map(|(_, f)| f.get("ROOT").map(PathBuf::from))
        .collect();
    for (name, fields) in inputs.into_iter().chain(outputs) {
        scope.add(&name, fields)?;
    }
    for (k, v) in &ticket.vars {
        scope.private.insert(k.clone(), v.clone());
    }
    for name in &ticket.secrets {
        if let Some(v) = secrets.get(name) {
            scope.private.insert(name.clone(), v.to_owned());
        }
    }
    let work = scratch.join("work");
    std::fs::create_dir_all(&work).map_err(|e| crate::Error::io(&work, e))?;
    let steps = crate::engine::plan_steps(
        &ticket.command,
        ticket.script.as_deref(),
        &scope,
        Some(scratch),
    )?;
    let sink = crate::process::Sink::new(
        ticket.run,
        ticket.node,
        live_log,
        crate::events::Events::default(),
        secrets.clone(),
    );
    let mut env: Vec<(String, String)> = vec![
        ("DKT_PROJECT_ROOT".to_owned(), work.display().to_string()),
        ("DKT_RUN_ID".to_owned(), ticket.run.to_hex()),
        ("DKT_NODE_ID".to_owned(), ticket.node.to_hex()),
    ];
    env.extend(scope.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(scope.used_private());
    let timeout = ticket.timeout_ms.map(Duration::from_millis);
    let sandbox = ticket.sandbox.then(|| {
        env.push((
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ));
        env.push(("HOME".to_owned(), "/tmp".to_owned()));
        env.push(("TMPDIR".to_owned(), "/tmp".to_owned()));
        let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        let mut writable: Vec<PathBuf> = output_roots.iter().map(|p| real(p)).collect();
        writable.push(real(&work));
        crate::process::Sandbox {
            visible: Vec::new(),
            hide: Vec::new(),
            read_only: std::iter::once(real(scratch))
                .chain(input_roots.iter().map(|p| real(p)))
                .collect(),
            writable,
            network: ticket.network,
            trace: None,
        }
    });
    let ended = crate::engine::run_steps(
        &steps,
        &work,
        &env,
        sandbox.as_ref(),
        timeout,
        cancel,
        &sink,
    )
    .await;
    let log = secrets.redact(&sink.text());
    let ending = match ended {
        None => Ending::Success {
            outputs: BTreeMap::new(),
        },
        Some(crate::engine::StepsEnded::Failed { code, error }) => Ending::Failed { code, error },
        Some(crate::engine::StepsEnded::Cancelled) => Ending::Cancelled,
    };
    Ok((log, ending))
}
