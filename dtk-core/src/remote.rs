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
    /// The key that signed this result (a result the dispatcher made itself, for a run
    /// cancelled or whose worker was lost, has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<Signer>,
    /// The worker's armored SSHSIG signature (namespace
    /// [`WORKER_NAMESPACE`](crate::signing::WORKER_NAMESPACE)) of the canonical JSON of the
    /// result's [`ResultStatement`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// The key of a worker, as its results name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signer {
    /// The key's OpenSSH SHA-256 fingerprint (`SHA256:...`).
    pub fingerprint: String,
    /// The public key, in OpenSSH format.
    pub public_key: String,
}

/// The type of a [`ResultStatement`] (its `type` member).
pub const STATEMENT_TYPE: &str = "dtk-worker-result/1";

/// What a worker signs about a run it executed (`docs/format.md`, "Worker signatures"):
/// which run, on which inputs, what it produced and how it ended. The signed bytes are its
/// canonical JSON (RFC 8785, as for seals); the coordinator rebuilds it from what it sent
/// (the ticket) and what it received (the result, the archives' digests, the log) and
/// checks the signature against that, and the run record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultStatement {
    /// [`STATEMENT_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The run.
    pub run: RunId,
    /// Its node.
    pub node: NodeId,
    /// The attempt.
    pub attempt: u32,
    /// The input versions it ran on, in the ticket's order (the run record's).
    pub inputs: Vec<crate::SourceVersion>,
    /// Each output's shipped archive: `blake3:HEX` (successful runs only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<Name, String>,
    /// `blake3:HEX` of the log the worker sent (UTF-8).
    pub log: String,
    /// How it ended: `success`, `failed`, `cancelled`, `interrupted`, `error`.
    pub ending: String,
    /// The exit code, for a failed run that exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The worker (`host:pid`).
    pub worker: String,
}

impl ResultStatement {
    /// The statement of `ending` with `log`, for `ticket`, by `worker`.
    pub fn new(ticket: &Ticket, ending: &Ending, log: &str, worker: &str) -> ResultStatement {
        let (status, outputs, exit_code) = match ending {
            Ending::Success { outputs } => (
                "success",
                outputs
                    .iter()
                    .map(|(n, s)| (n.clone(), s.blake3.clone()))
                    .collect(),
                None,
            ),
            Ending::Failed { code, .. } => ("failed", BTreeMap::new(), *code),
            Ending::Cancelled => ("cancelled", BTreeMap::new(), None),
            Ending::Interrupted { .. } => ("interrupted", BTreeMap::new(), None),
            Ending::Error { .. } => ("error", BTreeMap::new(), None),
        };
        ResultStatement {
            kind: STATEMENT_TYPE.to_owned(),
            run: ticket.run,
            node: ticket.node,
            attempt: ticket.attempt,
            inputs: ticket
                .inputs
                .iter()
                .map(|i| crate::SourceVersion {
                    source: i.name.clone(),
                    version: i.version.clone(),
                })
                .collect(),
            outputs,
            log: crate::digest::blob(log.as_bytes()),
            ending: status.to_owned(),
            exit_code,
            worker: worker.to_owned(),
        }
    }

    /// The bytes signed: the statement's canonical JSON (RFC 8785).
    pub fn signed_bytes(&self) -> Result<Vec<u8>> {
        let value = serde_json::to_value(self)
            .map_err(|e| crate::Error::corrupt(format!("cannot encode a statement: {e}")))?;
        crate::digest::canonical_json(&value)
    }

    /// Sign it with `key`: the signer and the armored signature.
    pub fn sign(&self, key: &crate::signing::SigningKey) -> Result<(Signer, String)> {
        let signature = key.sign_in(crate::signing::WORKER_NAMESPACE, &self.signed_bytes()?)?;
        Ok((
            Signer {
                fingerprint: key.fingerprint(),
                public_key: key.public_openssh()?,
            },
            signature,
        ))
    }
}

/// A run's signature by the worker that executed it, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSignature {
    /// What the worker signed.
    pub statement: ResultStatement,
    /// The armored SSHSIG signature of its canonical JSON (namespace
    /// [`WORKER_NAMESPACE`](crate::signing::WORKER_NAMESPACE)), which carries the public key.
    pub signature: String,
}

/// Check `result`'s signature against what the coordinator sent (`ticket`) and received
/// (`result`: its ending, the archives' digests it names, which the artifact store checks
/// again on arrival, and its log); `trusted`, when given, must list the key. The key's
/// fingerprint and the record's signature, or why the result is refused (naming the
/// worker).
pub fn check_result(
    ticket: &Ticket,
    result: &TicketResult,
    trusted: Option<&crate::signing::AllowedSigners>,
) -> std::result::Result<(String, WorkerSignature), String> {
    let worker = &result.worker;
    let Some(signature) = &result.signature else {
        return Err(format!(
            "worker {worker} sent an unsigned result (a worker signs its results with its own key since this dkt version: run the same dkt version on the coordinator and the workers); nothing was published"
        ));
    };
    let statement = ResultStatement::new(ticket, &result.ending, &result.log, worker);
    let bytes = statement.signed_bytes().map_err(|e| e.to_string())?;
    let key = crate::signing::verify_signature(crate::signing::WORKER_NAMESPACE, &bytes, signature)
        .map_err(|why| {
            format!(
                "the result of worker {worker} does not match its signature: {why} (the log, an output's archive or the ending changed between the worker and this coordinator, or the result was forged); nothing was published"
            )
        })?;
    let fingerprint = crate::signing::fingerprint(&key);
    if let Some(s) = &result.signer {
        if s.fingerprint != fingerprint {
            return Err(format!(
                "worker {worker} names key {} but its result is signed by {fingerprint}; nothing was published",
                s.fingerprint
            ));
        }
    }
    if let Some(trusted) = trusted {
        if trusted.find(key.key_data()).is_none() {
            return Err(format!(
                "worker {worker} signed its result with key {fingerprint}, which the workers' allowed-signers file ({}) does not list; nothing was published (add the line `dkt worker key` prints on that worker)",
                trusted
                    .files()
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok((
        fingerprint,
        WorkerSignature {
            statement,
            signature: signature.clone(),
        },
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::{AllowedSigners, SigningKey, WORKER_NAMESPACE};

    fn ticket() -> Ticket {
        let node: NodeId = "07".repeat(32).parse().unwrap_or_else(|e| panic!("{e}"));
        Ticket {
            format: TICKET_FORMAT,
            run: "09".repeat(32).parse().unwrap_or_else(|e| panic!("{e}")),
            node,
            attempt: 1,
            labels: Vec::new(),
            command: Command::Argv(vec!["true".into()]),
            script: None,
            inputs: vec![TicketInput {
                name: Name::new("src").unwrap_or_else(|e| panic!("{e}")),
                version: "md5:d41d8cd98f00b204e9800998ecf8427e"
                    .parse()
                    .unwrap_or_else(|e| panic!("{e}")),
                from: Materialize::Kind {
                    spec: SourceSpec::new(
                        Name::new("src").unwrap_or_else(|e| panic!("{e}")),
                        "git",
                        "https://example.invalid/r.git",
                    ),
                },
            }],
            outputs: Vec::new(),
            vars: BTreeMap::new(),
            secrets: Vec::new(),
            settings: BTreeMap::new(),
            timeout_ms: None,
            sandbox: false,
            network: false,
            artifacts: "file:///nowhere".into(),
            lease_ms: 1000,
        }
    }

    fn signed(key: &SigningKey, ticket: &Ticket, log: &str) -> TicketResult {
        let mut outputs = BTreeMap::new();
        outputs.insert(
            Name::new("out").unwrap_or_else(|e| panic!("{e}")),
            Shipped {
                key: "runs/x/out.tar".into(),
                blake3: format!("blake3:{}", "ab".repeat(32)),
                size: 10,
                file: None,
            },
        );
        let ending = Ending::Success { outputs };
        let st = ResultStatement::new(ticket, &ending, log, "host:1");
        let (signer, signature) = st.sign(key).unwrap_or_else(|e| panic!("{e}"));
        TicketResult {
            ending,
            log: log.into(),
            worker: "host:1".into(),
            corrupt: Vec::new(),
            signer: Some(signer),
            signature: Some(signature),
        }
    }

    #[test]
    fn a_worker_result_is_checked_against_what_arrived() {
        let key = SigningKey::generate("w@x").unwrap_or_else(|e| panic!("{e}"));
        let t = ticket();
        let result = signed(&key, &t, "hello\n");
        let (fp, sig) = check_result(&t, &result, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fp, key.fingerprint());
        assert_eq!(sig.statement.log, crate::digest::blob(b"hello\n"));
        assert_eq!(sig.statement.kind, STATEMENT_TYPE);
        // The signed bytes are the statement's canonical JSON: sorted members, no spaces.
        let bytes =
            String::from_utf8(sig.statement.signed_bytes().unwrap_or_default()).unwrap_or_default();
        assert!(
            bytes.starts_with(
                "{\"attempt\":1,\"ending\":\"success\",\"inputs\":[{\"source\":\"src\""
            ),
            "{bytes}"
        );

        // The log changed on the way.
        let mut bad = result.clone();
        bad.log = "hello, tampered\n".into();
        let why = check_result(&t, &bad, None).err().unwrap_or_default();
        assert!(
            why.contains("worker host:1") && why.contains("nothing was published"),
            "{why}"
        );
        // An output's archive digest changed.
        let mut bad = result.clone();
        if let Ending::Success { outputs } = &mut bad.ending {
            for s in outputs.values_mut() {
                s.blake3 = format!("blake3:{}", "cd".repeat(32));
            }
        }
        assert!(check_result(&t, &bad, None).is_err());
        // Another run, another attempt.
        let mut other = t.clone();
        other.attempt = 2;
        assert!(check_result(&other, &result, None).is_err());
        // Unsigned.
        let mut bad = result.clone();
        bad.signature = None;
        assert!(check_result(&t, &bad, None)
            .err()
            .unwrap_or_default()
            .contains("unsigned"));
        // A commit signature (namespace git) of the same bytes is not a worker's.
        let mut bad = result.clone();
        bad.signature = Some(
            key.sign_commit(&sig.statement.signed_bytes().unwrap_or_default())
                .unwrap_or_default(),
        );
        assert!(check_result(&t, &bad, None).is_err());

        // Trust: a workers file that lists the key, and one that does not.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("workers");
        let other = SigningKey::generate("o@x").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            &file,
            other
                .allowed_signers_line_for(WORKER_NAMESPACE)
                .unwrap_or_default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut trusted = AllowedSigners::default();
        trusted
            .add_file_for(&file, WORKER_NAMESPACE)
            .unwrap_or_else(|e| panic!("{e}"));
        let why = check_result(&t, &result, Some(&trusted))
            .err()
            .unwrap_or_default();
        assert!(
            why.contains(&key.fingerprint()) && why.contains("does not list"),
            "{why}"
        );
        let line = key
            .allowed_signers_line_for(WORKER_NAMESPACE)
            .unwrap_or_default();
        assert!(line.contains("namespaces=\"dtk-worker-result\""), "{line}");
        std::fs::write(&file, line).unwrap_or_else(|e| panic!("{e}"));
        let mut trusted = AllowedSigners::default();
        trusted
            .add_file_for(&file, WORKER_NAMESPACE)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(check_result(&t, &result, Some(&trusted)).is_ok());
        // A line for commits only does not trust a worker.
        std::fs::write(&file, key.allowed_signers_line().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut trusted = AllowedSigners::default();
        trusted
            .add_file_for(&file, WORKER_NAMESPACE)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(check_result(&t, &result, Some(&trusted)).is_err());
        // Nothing secret in what travels or is recorded.
        let shown = format!(
            "{}{}",
            serde_json::to_string(&result).unwrap_or_default(),
            serde_json::to_string(&sig).unwrap_or_default()
        );
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }

    #[test]
    fn a_worker_key_is_made_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("worker-key");
        let (a, made) =
            SigningKey::load_or_generate(&path, "w@x").unwrap_or_else(|e| panic!("{e}"));
        assert!(made);
        let (b, made) =
            SigningKey::load_or_generate(&path, "w@x").unwrap_or_else(|e| panic!("{e}"));
        assert!(!made);
        assert_eq!(a.fingerprint(), b.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or_default();
            assert_eq!(mode, 0o600);
        }
    }
}
