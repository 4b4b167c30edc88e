//! The one error type of dtk (`dtk-api`, re-exported by `dtk-core` and `dtk`).

use std::path::PathBuf;

/// A `Result` whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in dtk.
///
/// Variants say what happened in terms a caller can act on; the cause, where there is one,
/// is kept as the error's [`source`](std::error::Error::source) so the whole chain can be shown.
/// [`Error::is_user_error`] tells bad input (exit code 2 in `dkt`) from failures outside the
/// user's control (exit code 1).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value given by the user is malformed. `what` names the kind of value, `value` quotes it.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// What kind of value it is ("source name", "version", ...).
        what: &'static str,
        /// The value, as given.
        value: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// Something named does not exist.
    #[error("{what} {name:?} not found{hint}")]
    NotFound {
        /// What kind of thing ("source", "node", "version", ...).
        what: &'static str,
        /// Its name or ID, as given.
        name: String,
        /// Extra help, starting with its own separator (may be empty).
        hint: String,
    },
    /// A prefix matches more than one candidate.
    #[error("{what} prefix {prefix:?} is ambiguous: it matches {}", .matches.join(", "))]
    Ambiguous {
        /// What kind of thing ("version", "node", ...).
        what: &'static str,
        /// The prefix, as given.
        prefix: String,
        /// Everything it matches.
        matches: Vec<String>,
    },
    /// Something with that name already exists.
    #[error("{what} {name:?} already exists")]
    AlreadyExists {
        /// What kind of thing.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// The operation would break an invariant of the project (a cycle, a source in use, ...).
    #[error("{0}")]
    Conflict(String),
    /// A run's attempt was taken over while this process held it (it was paused or cut off
    /// for longer than its lease, declared interrupted, and run again): this process's
    /// result is discarded and nothing of it is published or recorded.
    #[error("{0}")]
    Superseded(String),
    /// The kind does not support this operation.
    #[error("source kind {kind:?} does not support {operation}")]
    NotSupported {
        /// The kind's name.
        kind: String,
        /// The operation ("publish", "list versions", ...).
        operation: &'static str,
    },
    /// No kind of that name is registered.
    #[error("unknown source kind {kind:?}{hint}")]
    UnknownKind {
        /// The kind, as given.
        kind: String,
        /// Which kinds are known, or which cargo feature brings it.
        hint: String,
    },
    /// No dtk project here.
    #[error("not a dtk project (or any parent up to /): {}\n  create one with `dkt init` or `dkt clone REPO`", .0.display())]
    NoProject(PathBuf),
    /// A source kind failed (network, remote, data) while doing something for a source.
    #[error("{kind} source {source_name:?}: {message}")]
    Backend {
        /// The kind's name.
        kind: String,
        /// The source's name.
        source_name: String,
        /// What failed.
        message: String,
        /// The cause, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Talking to a metadata remote (`dkt fetch`, `push`, `pull`) failed.
    #[error("remote {remote:?}: {message}")]
    Remote {
        /// The remote's name.
        remote: String,
        /// What failed (git's own message, when git said something).
        message: String,
    },
    /// A service dtk runs on failed: the remote run queue (PostgreSQL) or the artifact
    /// store; or what it returned was refused (an artifact whose digest does not match).
    #[error("{service}: {message}")]
    Service {
        /// The service, as the user configured it (`run queue postgres://host/db`,
        /// `artifact store file:///srv/dkt`), without credentials.
        service: String,
        /// What failed.
        message: String,
        /// The cause, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A run's output moved while the run ran: it is no longer at the version the run
    /// started from, so nothing was published to it (see [`crate::source::PublishOptions`]).
    #[error("output {source_name:?} moved while the run ran: it was at {}, it is now at {}; nothing was published to it", show_version(.expected), show_version(.found))]
    OutputMoved {
        /// The kind of the output.
        kind: String,
        /// The output source.
        source_name: String,
        /// The version the run started from (`None`: the output had none).
        expected: Option<crate::Version>,
        /// The version found when publishing (`None`: it has none, or it is gone).
        found: Option<crate::Version>,
    },
    /// The metadata store failed or holds something it cannot read.
    #[error("metadata store: {message}")]
    Store {
        /// What failed.
        message: String,
        /// The cause, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// An I/O error on a named path.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The path that was being read or written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Something is wrong at a line of a file the user wrote (a pipeline file), shown as
    /// `FILE:LINE: FIELD: MESSAGE`.
    #[error("{file}:{line}: {}{message}", field_prefix(.field))]
    InFile {
        /// The file, as given.
        file: String,
        /// The line, counted from 1.
        line: usize,
        /// The field, as a path such as `nodes[0].inputs` (empty when the message names it).
        field: String,
        /// What is wrong.
        message: String,
        /// The cause, if any; a user error unless the cause says otherwise.
        #[source]
        source: Option<Box<Error>>,
    },
}

fn show_version(v: &Option<crate::Version>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "no version".to_owned(),
    }
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

impl Error {
    /// True when the error was caused by bad input (usage, names, unknown things), as opposed
    /// to a failure outside the user's control.
    pub fn is_user_error(&self) -> bool {
        if let Error::InFile { source, .. } = self {
            return source.as_ref().is_none_or(|e| e.is_user_error());
        }
        matches!(
            self,
            Error::Invalid { .. }
                | Error::NotFound { .. }
                | Error::Ambiguous { .. }
                | Error::AlreadyExists { .. }
                | Error::Conflict(_)
                | Error::NotSupported { .. }
                | Error::UnknownKind { .. }
                | Error::NoProject(_)
        )
    }

    /// An [`Error::Invalid`] for `value`.
    pub fn invalid(
        what: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::NotFound`] without a hint.
    pub fn not_found(what: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            what,
            name: name.into(),
            hint: String::new(),
        }
    }

    /// An [`Error::Store`] with a cause.
    pub fn store(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Store {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// An [`Error::Store`] without a cause (a corrupt or unexpected record).
    pub fn corrupt(message: impl Into<String>) -> Self {
        Error::Store {
            message: message.into(),
            source: None,
        }
    }

    /// An [`Error::Service`] without a cause.
    pub fn service(service: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Service {
            service: service.into(),
            message: message.into(),
            source: None,
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::Backend`] without a cause.
    pub fn backend(kind: &str, source_name: &str, message: impl Into<String>) -> Self {
        Error::Backend {
            kind: kind.to_owned(),
            source_name: source_name.to_owned(),
            message: message.into(),
            source: None,
        }
    }
}

/// Attach a path to I/O results: `fs::read(p).at(p)?`.
pub trait IoResultExt<T> {
    /// Turn an `io::Result` into a dtk [`Result`] naming `path`.
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoResultExt<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
