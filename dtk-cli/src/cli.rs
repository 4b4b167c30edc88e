//! Command-line syntax.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Datakit: a version-controlled data-flow manager.
///
/// Describe where data comes from (sources), what runs on it (nodes), and dkt records,
/// in a git repository under .dkt/, every version it sees or makes and exactly what each
/// was made from.
///
/// Exit codes: 0 success, 1 failure (outside the user's control, or a failed run),
/// 2 bad usage or bad input; `dkt reproduce`: 1 differs, 3 cannot be reproduced.
#[derive(Debug, Parser)]
#[command(name = "dkt", version, propagate_version = true, max_term_width = 100)]
pub(crate) struct Cli {
    /// Run as if dkt was started in DIR.
    #[arg(short = 'C', global = true, value_name = "DIR")]
    pub(crate) chdir: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// When to color the output: auto (when the stream is a terminal and NO_COLOR is
    /// unset or empty), always, or never.
    #[arg(long, global = true, value_enum, value_name = "WHEN", default_value_t = ColorWhen::Auto)]
    pub(crate) color: ColorWhen,
    /// Log more to stderr (-v info, -vv debug); DKT_LOG=... overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct Tokens {
    /// A GitHub token for HTTPS fetches, kept in .dkt/secrets (never committed).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "DKT_GITHUB_TOKEN",
        hide_env_values = true
    )]
    pub(crate) github_token: Option<String>,
    /// A Docker registry token, kept in .dkt/secrets (never committed).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "DKT_DOCKER_TOKEN",
        hide_env_values = true
    )]
    pub(crate) docker_token: Option<String>,
    /// A HockeyApp API token (sent as X-HockeyAppToken), kept in .dkt/secrets.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "DKT_HOCKEYAPP_TOKEN",
        hide_env_values = true
    )]
    pub(crate) hockeyapp_token: Option<String>,
    /// An S3 access key ID, kept in .dkt/secrets (else AWS_ACCESS_KEY_ID is used).
    #[arg(long, value_name = "ID")]
    pub(crate) aws_access_key_id: Option<String>,
    /// An S3 secret access key, kept in .dkt/secrets (else AWS_SECRET_ACCESS_KEY is used).
    #[arg(
        long,
        value_name = "KEY",
        env = "DKT_AWS_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub(crate) aws_secret_access_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create an empty project (.dkt/) in the current directory.
    ///
    /// A new ed25519 signing key is generated (.dkt/signing-key, mode 0600, never
    /// committed) and every metadata commit is signed with it in git's SSH signature
    /// format; its public half is committed under signers/ and trusted in
    /// .dkt/allowed_signers.
    Init {
        #[command(flatten)]
        tokens: Tokens,
        /// Sign with this unencrypted OpenSSH ed25519 private key (copied into .dkt)
        /// instead of a new one.
        #[arg(long, value_name = "PATH", conflicts_with = "no_signing_key")]
        signing_key: Option<PathBuf>,
        /// Make no signing key: commits stay unsigned (until `dkt key generate`).
        #[arg(long)]
        no_signing_key: bool,
    },
    /// The project's signing key: every metadata commit is signed with it.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Clone a project's metadata (a path or git URL of its .dkt/.git) into DIR/.dkt.
    Clone {
        /// The project to clone: a project directory, its .dkt/.git, or any git URL of a copy.
        repo: String,
        /// Where to put the project (default: the current directory).
        #[arg(value_name = "DIR")]
        into: Option<PathBuf>,
        #[command(flatten)]
        tokens: Tokens,
    },
    /// Manage data sources.
    #[command(subcommand)]
    Source(SourceCommand),
    /// Define, run and list compute nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage the project's secrets (.dkt/secrets/, mode 0600, never committed).
    ///
    /// A secret is available to commands as ${NAME} (exported only to the commands that
    /// name it) and replaced by *** in every log. The kinds' credentials (GITHUB_TOKEN,
    /// DOCKER_TOKEN, HOCKEYAPP_TOKEN, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) are set the
    /// same way and read by the kinds only.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Manage the metadata remotes: other copies of the project to push to and pull from.
    #[command(subcommand)]
    Remote(RemoteCommand),
    /// Bring the records of a remote (default: origin) without merging them.
    Fetch {
        /// The remote (see `dkt remote list`).
        #[arg(default_value = "origin")]
        remote: String,
    },
    /// Send this project's records to a remote (default: origin).
    ///
    /// Refused, changing nothing, when the remote has records this project has not
    /// merged: `dkt pull` first (the push is a --force-with-lease on what was last fetched).
    Push {
        /// The remote (see `dkt remote list`).
        #[arg(default_value = "origin")]
        remote: String,
    },
    /// Fetch a remote's records (default: origin) and merge them into this project's.
    ///
    /// The merge is record by record, never textual: the union of versions, nodes, runs
    /// and links; the same version or node seen on both sides is one record; two runs of
    /// one run ID stay as two attempts. A source's declaration, pin or frozen flag, or a
    /// node name, changed differently on both sides is a conflict: the later change is
    /// kept and both values are reported (here and by `dkt status`) until a command
    /// changes that record again.
    Pull {
        /// The remote (see `dkt remote list`).
        #[arg(default_value = "origin")]
        remote: String,
    },
    /// The project at a glance: sources, nodes not up to date and why, queued and running
    /// runs, remotes (unpushed and unpulled commits), unresolved conflicts.
    Status,
    /// Create or update, in one commit, the sources and nodes a pipeline file declares.
    ///
    /// Applying the same file again changes nothing. Sources and nodes the file does not
    /// mention are left alone (with --prune, such nodes are retired). A named node whose
    /// definition changed replaces the node of that name. The format is described in
    /// docs/pipeline.md.
    Apply {
        /// The pipeline file (YAML), relative to the current directory.
        file: PathBuf,
        /// Also remove (retire) the nodes the file does not declare; their history stays.
        #[arg(long)]
        prune: bool,
    },
    /// One scheduling pass: poll sources, run every node whose inputs moved.
    ///
    /// Sources that are neither pinned nor frozen are polled; then every node whose current
    /// input versions have no successful run yet runs, in topological order (a node sees
    /// the new outputs of the nodes upstream within the same pass), independent nodes in
    /// parallel. Exits 1 when a run fails.
    Run {
        /// At most N runs at once (default 1; with a remote run queue, `[queue] url`, the
        /// runs in the queue at once: default 64).
        #[arg(short = 'j', long, value_name = "N")]
        jobs: Option<usize>,
        /// Say what would run and why (which input moved from which version to which);
        /// change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Suppose SRC moved to VERSION (an impact query, with --dry-run).
        #[arg(long = "if", value_name = "SRC=VERSION")]
        assume: Vec<String>,
        /// End each run after this long (90s, 30m, 1h30m).
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
        /// Print the running nodes' output lines to stderr, prefixed by node (the default
        /// when stderr is a terminal).
        #[arg(long)]
        follow: bool,
        /// Run every node through the sandbox (bubblewrap), as if each said `sandbox: true`.
        #[arg(long)]
        sandbox: bool,
    },
    /// Run scheduling passes forever (poll, run what changed), every --interval.
    ///
    /// SIGINT or SIGTERM stops it cleanly: the pass in progress finishes (its runs are
    /// recorded), then dkt exits 0. A second signal exits at once; runs cut short are
    /// then found `interrupted`.
    Daemon {
        /// Time between the start of two passes (30s, 5m, ...).
        #[arg(long, value_name = "DURATION", default_value = "60s")]
        interval: String,
        /// At most N runs at once (default 1; with a remote run queue, `[queue] url`, the
        /// runs in the queue at once: default 64).
        #[arg(short = 'j', long, value_name = "N")]
        jobs: Option<usize>,
        /// Stop after this many passes (default: never).
        #[arg(long, value_name = "N")]
        passes: Option<u64>,
    },
    /// Serve the dashboard: the pipeline graph, sources, nodes, runs with live logs and
    /// provenance in a browser, and a JSON API under /api/ (docs/api.md).
    ///
    /// Everything is read-only unless a request carries the dashboard token: the
    /// contents of --token-file, else of .dkt/secrets/DKT_SERVE_TOKEN (generated there,
    /// mode 0600, the first time). The token is never printed: read it from that file.
    /// SIGINT/SIGTERM: runs started from the dashboard are ended, then dkt exits.
    Serve {
        /// The address to listen on (loopback unless told otherwise).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8420")]
        listen: std::net::SocketAddr,
        /// A file holding the token that allows actions (rerun, cancel, freeze, pin, ...).
        #[arg(long, value_name = "FILE")]
        token_file: Option<std::path::PathBuf>,
        /// No actions at all, with or without a token.
        #[arg(long)]
        read_only: bool,
    },
    /// Take pending runs whose node labels this worker has, run them, record the results.
    ///
    /// Several workers share the work: a run is claimed atomically and never executed twice
    /// at once; a run whose worker died goes back to pending. While a worker is alive,
    /// `dkt run` and `dkt daemon` queue runs for workers instead of running them.
    /// SIGINT/SIGTERM: stop taking runs, finish the ones in progress, exit.
    ///
    /// With --queue, a worker of a remote run queue (PostgreSQL), on any machine: it needs
    /// no copy of the project. It takes runs from the queue, materializes their inputs
    /// (remote kinds itself, local paths from the artifact store), runs them and sends
    /// their outputs to the artifact store; the coordinator (`dkt daemon` with `[queue]
    /// url`) records them. The database password comes from PGPASSWORD (its secrets
    /// directory, or the environment), never the command line.
    #[command(args_conflicts_with_subcommands = true)]
    Worker {
        #[command(subcommand)]
        action: Option<WorkerCommand>,
        /// The worker's labels (default: .dkt/config [worker] labels, else OS and arch).
        #[arg(long, value_delimiter = ',', value_name = "L,...")]
        labels: Vec<String>,
        /// At most N runs at once.
        #[arg(short = 'j', long, value_name = "N", default_value_t = 1)]
        jobs: usize,
        /// Exit after N runs.
        #[arg(long, value_name = "N")]
        max_runs: Option<usize>,
        /// Serve this remote run queue (postgres://USER@HOST[:PORT]/DB) instead of the
        /// project's local queue.
        #[arg(long, value_name = "URL", env = "DKT_QUEUE")]
        queue: Option<String>,
        /// The artifact store, when this machine reaches it by another URL than the
        /// coordinator's (file:///DIR, s3://BUCKET/PREFIX).
        #[arg(long, value_name = "URL", requires = "queue")]
        artifacts: Option<String>,
        /// The worker's secrets: a directory with one file per secret (PGPASSWORD, the
        /// kinds' credentials, the secrets commands use).
        #[arg(long, value_name = "DIR", requires = "queue")]
        secrets: Option<PathBuf>,
        /// The worker's own directory (scratch areas, caches); default: a `dkt-worker`
        /// directory in the user's cache directory.
        #[arg(long, value_name = "DIR", requires = "queue")]
        dir: Option<PathBuf>,
        /// The worker's own ed25519 SSH key (OpenSSH format, unencrypted), which signs
        /// every result it sends; default: `worker-key` in its directory (--dir), made on
        /// first start (mode 0600).
        #[arg(long, value_name = "FILE", requires = "queue")]
        key: Option<PathBuf>,
    },
    /// Show the provenance of an artifact: everything it was made from.
    ///
    /// WHAT is SOURCE:VERSION (any unique prefix, e.g. tests:d41d8cd9), a node ID, a
    /// run ID, or an artifact reference: a git commit (40 hex digits or sha1:HEX), an
    /// image (REPO@sha256:HEX, as a docker source's IMAGE field gives it) or an S3 URL
    /// (s3://BUCKET/KEY, in an s3 source's prefix). An image or S3 object no source
    /// recorded is looked up in itself (the image's annotations or provenance referrers,
    /// the object's metadata) for the run that published it. Prints `# manifest for WHAT` and a
    /// JSON array of every version and run in its ancestry, ancestors first (with --json:
    /// the array alone).
    Inspect {
        /// SOURCE:VERSION, NODE-ID, RUN-ID, COMMIT, REPO@sha256:HEX or s3://BUCKET/KEY.
        what: String,
        /// Print the graph in Graphviz dot (same as --format dot).
        #[arg(long)]
        dot: bool,
        /// Show what was derived from WHAT instead of what it derives from.
        #[arg(long)]
        downstream: bool,
        /// Output format: manifest, dot, slsa (in-toto Statement, SLSA Provenance v1), prov (W3C PROV-JSON), vsa (in-toto Statement, SLSA verification summary of the newest reproduction).
        #[arg(long, value_enum, default_value_t = Format::Manifest)]
        format: Format,
        /// With --format slsa: print the statement as a DSSE envelope signed with the
        /// project's key (keyid: the key's SHA256 fingerprint).
        #[arg(long)]
        sign: bool,
        /// List the input files the run (run WHAT, or the run that made WHAT) opened:
        /// recorded for sandboxed runs when strace was on PATH.
        #[arg(long)]
        files: bool,
    },
    /// Run a recorded run again and compare its outputs with what it published.
    ///
    /// WHAT is a run ID (a prefix of at least 4 hex digits) or SOURCE:VERSION of a
    /// version a run produced. The run's node runs again in a fresh scratch area under
    /// .dkt/tmp, on exactly the run's recorded input versions (materialized by their
    /// kinds), with its recorded command (a script's recorded content, not today's file),
    /// each output starting from the version it had before the run; then every output is
    /// compared, file by file, with the version the run published. Nothing is published
    /// and no run is recorded: the result is recorded as a reproduction of the run (shown
    /// by `dkt node show RUN` and `dkt inspect`). Exits 0 when every output is identical,
    /// 1 when one differs, 3 when the run cannot be reproduced (a recorded version is no
    /// longer available, named in the report, or the command failed).
    Reproduce {
        /// RUN-ID or SOURCE:VERSION.
        what: String,
        /// Run through the sandbox (bubblewrap) even if the node does not say `sandbox: true`.
        #[arg(long)]
        sandbox: bool,
        /// Also write the result as an in-toto statement with the SLSA verification
        /// summary predicate (https://slsa.dev/verification_summary/v1) to FILE.
        #[arg(long, value_name = "FILE")]
        vsa_out: Option<PathBuf>,
    },
    /// Print a shell completion script for dkt.
    ///
    /// bash: `dkt completions bash > ~/.local/share/bash-completion/completions/dkt`;
    /// zsh: `dkt completions zsh > "${fpath[1]}/_dkt"`;
    /// fish: `dkt completions fish > ~/.config/fish/completions/dkt.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print dkt's man page (roff), or write a page per command into DIR.
    ///
    /// `dkt man | man -l -` reads it; `dkt man --dir /usr/local/share/man/man1` installs
    /// dkt.1, dkt-source.1, dkt-source-add.1 and so on.
    Man {
        /// Write one page per command (dkt.1, dkt-node-run.1, ...) into DIR.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Check an artifact's provenance against the records and the data.
    ///
    /// Every record's own digest and the hash chain between records are checked, node
    /// and run IDs recomputed, and every version whose content can still be read
    /// re-hashed. In a project that signs its history, every commit from the one that
    /// recorded WHAT up to the tip must be signed by a trusted key (one of the
    /// allowed-signers file and of .dkt/allowed_signers); each is listed with the key that
    /// signed it. Exits 1 when anything does not match.
    Verify {
        /// SOURCE:VERSION, NODE-ID or RUN-ID.
        what: String,
        /// The allowed-signers file (git's format) of the keys you trust [default:
        /// $XDG_CONFIG_HOME/dtk/allowed_signers, else ~/.config/dtk/allowed_signers].
        #[arg(long, value_name = "FILE", env = "DKT_ALLOWED_SIGNERS")]
        allowed_signers: Option<PathBuf>,
    },
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ColorWhen {
    /// Color when the stream is a terminal and NO_COLOR is unset or empty.
    Auto,
    /// Always color.
    Always,
    /// Never color.
    Never,
}

impl ColorWhen {
    /// Whether to color what goes to `stream`.
    pub(crate) fn enabled(self, stream: &impl std::io::IsTerminal) -> bool {
        match self {
            ColorWhen::Always => true,
            ColorWhen::Never => false,
            ColorWhen::Auto => {
                std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && stream.is_terminal()
            }
        }
    }

    /// The same choice for clap's help and error messages.
    pub(crate) fn for_clap(self) -> clap::ColorChoice {
        match self {
            ColorWhen::Auto => clap::ColorChoice::Auto,
            ColorWhen::Always => clap::ColorChoice::Always,
            ColorWhen::Never => clap::ColorChoice::Never,
        }
    }

    /// The `--color` among raw arguments, read before clap parses them (so that clap's own
    /// help and errors follow it too).
    pub(crate) fn from_args(args: &[std::ffi::OsString]) -> ColorWhen {
        let mut when = ColorWhen::Auto;
        let mut it = args.iter().skip(1).map(|a| a.to_string_lossy());
        while let Some(a) = it.next() {
            if a == "--" {
                break;
            }
            let value = match a.strip_prefix("--color") {
                Some("") => it.next().map(|v| v.into_owned()),
                Some(v) => v.strip_prefix('=').map(str::to_owned),
                None => None,
            };
            when = match value.as_deref() {
                Some("always") => ColorWhen::Always,
                Some("never") => ColorWhen::Never,
                Some("auto") => ColorWhen::Auto,
                _ => when,
            };
        }
        when
    }
}

/// `dkt inspect --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// The design's manifest (a JSON array).
    Manifest,
    /// Graphviz dot.
    Dot,
    /// An in-toto Statement with a SLSA Provenance v1 predicate.
    Slsa,
    /// An in-toto Statement with a SLSA verification summary predicate: the newest
    /// reproduction (`dkt reproduce`) of the run that made WHAT (or of run WHAT).
    Vsa,
    /// A W3C PROV-JSON document.
    Prov,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RemoteCommand {
    /// Add remote NAME at URL: a git URL (path, file://, ssh, https, git://) or the
    /// directory of another copy of the project.
    Add {
        /// The remote's name (`origin`, `laptop`, ...).
        name: String,
        /// Where it is.
        url: String,
    },
    /// List the remotes.
    List,
    /// Remove remote NAME (the records already merged stay).
    Rm {
        /// The remote's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Give a project without a key a new ed25519 signing key; commits are signed from
    /// now on, starting with the one recording its public half.
    Generate {
        /// The principal the key signs as (default: dtk@HOST).
        #[arg(long, value_name = "NAME")]
        principal: Option<String>,
    },
    /// Give a project without a key this unencrypted OpenSSH ed25519 private key (copied
    /// into .dkt/signing-key).
    Import {
        /// The private key file.
        path: PathBuf,
        /// The principal the key signs as (default: the key's comment, else dtk@HOST).
        #[arg(long, value_name = "NAME")]
        principal: Option<String>,
    },
    /// Show the project's signing key: fingerprint, principal, public key (never the
    /// private key).
    Show,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SecretCommand {
    /// Set secret NAME; the value is read from standard input (a prompt without echo on a
    /// terminal), never from the command line.
    Set {
        /// The secret's name (letters, digits, '_' and '-').
        name: String,
    },
    /// List the secrets' names (never their values).
    List,
    /// Remove secret NAME.
    Rm {
        /// The secret's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Define a node and run it on the current versions of its inputs; prints its ID.
    ///
    /// COMMAND is a shell line (one argument, run by `sh -c`), a script file of the
    /// project (rendered with its variables, never modified), a program with arguments,
    /// or a node file FILE.yml (labels, inputs, outputs, run, on-success, on-failure).
    /// `${SOURCE:FIELD}` names a field of an input or output (ROOT, COMMIT, ...), `${NAME}`
    /// a variable of .dkt/config [vars] or a secret; they reach the command as environment
    /// variables, so values are never parsed as shell code.
    Run {
        /// A name for the node, accepted wherever its ID is. A different node that had
        /// the name is replaced: retired, its history kept.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Labels a machine must all have to run the node.
        #[arg(long, value_delimiter = ',', value_name = "L,...")]
        labels: Vec<String>,
        /// Input sources.
        #[arg(long, value_delimiter = ',', value_name = "S,...")]
        input: Vec<String>,
        /// Output sources.
        #[arg(long, value_delimiter = ',', value_name = "S,...")]
        output: Vec<String>,
        /// Shell command run after a successful run.
        #[arg(long, value_name = "CMD")]
        on_success: Option<String>,
        /// Shell command run after a failed run.
        #[arg(long, value_name = "CMD")]
        on_failure: Option<String>,
        /// When an output moved while a run ran: `rerun` (poll it, run again) or
        /// `overwrite` (publish anyway); default: record the run `conflict`, publish nothing.
        #[arg(long, value_name = "rerun|overwrite")]
        on_conflict: Option<String>,
        /// Define a sandboxed node (`sandbox: true`): it runs through bubblewrap, inputs
        /// read-only, outputs the only writable places besides a private /tmp, no
        /// network, a clean environment, the project's .dkt hidden.
        #[arg(long)]
        sandbox: bool,
        /// With --sandbox: the node may use the network (`network: true`).
        #[arg(long, requires = "sandbox")]
        network: bool,
        /// Only define the node; do not run it.
        #[arg(long)]
        no_run: bool,
        /// Run again even if a run on the same inputs succeeded.
        #[arg(long)]
        force: bool,
        /// End the run after this long (90s, 30m, 1h30m); default: .dkt/config [run] timeout.
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
        /// Print the run's output lines to stderr as they come (the default when stderr
        /// is a terminal).
        #[arg(long)]
        follow: bool,
        /// The command and its arguments, or FILE.yml.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<String>,
    },
    /// Run a node again on its current inputs, even if a run on them succeeded.
    Rerun {
        /// The node's name, ID, or a unique prefix of at least 4 digits.
        id: String,
        /// Then rerun every node below it, in topological order.
        #[arg(long)]
        downstream: bool,
        /// Run through the sandbox (bubblewrap) even if the node does not say `sandbox: true`.
        #[arg(long)]
        sandbox: bool,
        /// End each run after this long (90s, 30m, 1h30m).
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
        /// Print the runs' output lines to stderr as they come (the default when stderr
        /// is a terminal).
        #[arg(long)]
        follow: bool,
    },
    /// List nodes (with --all, the removed ones too).
    #[command(alias = "ls")]
    List {
        /// Also list removed (retired) nodes.
        #[arg(long)]
        all: bool,
    },
    /// Remove a node: it no longer runs, and the sources only it used can be removed;
    /// its record, runs and the versions it made stay (their provenance still reads).
    Rm {
        /// The node's name, ID, or a unique prefix of at least 4 digits.
        id: String,
    },
    /// List a node's runs, newest first; with --follow, print a run's output as it comes.
    Log {
        /// The node's name, ID, or a unique prefix of at least 4 digits (with --follow, a
        /// run ID too; a node means its newest run).
        id: String,
        /// Attach to the run: print its output so far, then each line as it comes, until
        /// it ends (exit 0 on success, 1 otherwise).
        #[arg(short, long)]
        follow: bool,
    },
    /// Show a run's record and its log.
    Show {
        /// The run's ID (or a unique prefix of at least 4 digits).
        run: String,
    },
    /// Cancel a run of the remote run queue: a pending run is withdrawn, a running one is
    /// stopped by its worker (its process group ended) and recorded `interrupted`.
    Cancel {
        /// The run's ID (or a unique prefix of at least 4 digits).
        run: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum WorkerCommand {
    /// List the workers of the remote run queue: labels, capacity, last heartbeat and the
    /// runs each holds.
    #[command(alias = "ls")]
    List {
        /// The run queue (default: the project's `[queue] url`).
        #[arg(long, value_name = "URL", env = "DKT_QUEUE")]
        queue: Option<String>,
    },
    /// Print the public half of the worker's signing key as an allowed-signers line (for
    /// a coordinator's `[queue] workers` file), making the key first if it has none.
    Key {
        /// The worker's key file (default: `worker-key` in its directory).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// The worker's own directory, as given to `dkt worker --dir`.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SourceCommand {
    /// Add a source: dkt source add NAME [LOCATION[:TAG]] [-k KIND] [-p PATH].
    ///
    /// The kind is inferred from LOCATION (git URLs and repositories: git; paths: path);
    /// `-k github` expands user/repo to https://github.com/user/repo. LOCATION may name
    /// another source, whose kind, location, tag and path are inherited (-p is then
    /// relative to its path). Without LOCATION, a new temporary directory.
    Add {
        /// The new source's name.
        name: String,
        /// LOCATION[:TAG], or an existing source to derive from.
        location: Option<String>,
        /// The kind (path, git, github, ...).
        #[arg(short, long)]
        kind: Option<String>,
        /// A sub-path inside the source.
        #[arg(short, long)]
        path: Option<String>,
        /// The tag: a branch, tag or commit (`feature/x`), or a pattern following every
        /// matching one (`release/*`, `v1.*`). LOCATION is then taken whole.
        #[arg(short, long, value_name = "TAG|PATTERN")]
        tag: Option<String>,
    },
    /// List sources with their latest known (or pinned, marked *) version.
    #[command(alias = "ls")]
    List,
    /// List a source's versions, newest first.
    Log {
        /// The source.
        name: String,
        /// Show at most N versions.
        #[arg(short = 'n', long, value_name = "N")]
        max_count: Option<usize>,
    },
    /// Pin a source to a version (full or unique prefix), or move it: pin NAME LOCATION -k KIND.
    Pin {
        /// The source.
        name: String,
        /// A version (sha1:..., or a unique prefix), or a new location.
        target: String,
        /// Treat TARGET as a new location of this kind.
        #[arg(short, long)]
        kind: Option<String>,
    },
    /// Remove a source's pin.
    Unpin {
        /// The source.
        name: String,
    },
    /// Record an out-of-band relation between two versions: link SRC:ID SRC:ID.
    Link {
        /// The first version, SRC:ID.
        from: String,
        /// The second version, SRC:ID.
        to: String,
    },
    /// Remove a source (refused while a node uses it).
    #[command(alias = "remove")]
    Rm {
        /// The source.
        name: String,
    },
    /// Poll sources now (all, or those named) and record new versions; or record a given
    /// version: update NAME VERSION.
    Update {
        /// The sources to poll (default: all that are not frozen), or NAME VERSION.
        #[arg(value_name = "NAME")]
        names: Vec<String>,
    },
    /// Stop polling a source; its latest version stays as it is.
    Freeze {
        /// The source.
        name: String,
    },
    /// Poll a frozen source again.
    Thaw {
        /// The source.
        name: String,
    },
}
