//! Local configuration (`.dkt/config`) and secrets (`.dkt/secrets/`): never committed,
//! never recorded, never logged.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The local configuration of a project, read from `.dkt/config` (TOML).
///
/// ```toml
/// [worker]
/// labels = ["linux", "x86_64", "test"]
///
/// [run]
/// timeout = "2h"
///
/// [vars]
/// ESX_USER = "builder"
///
/// [kind.s3]
/// endpoint = "http://127.0.0.1:9000"
/// region = "us-east-1"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This machine as a worker.
    pub worker: WorkerConfig,
    /// Defaults for runs.
    pub run: RunConfig,
    /// A remote run queue (PostgreSQL): runs execute on workers on other machines.
    pub queue: QueueConfig,
    /// Where remote runs exchange their inputs and outputs.
    pub artifacts: ArtifactsConfig,
    /// Private variables, available to commands as `${NAME}`.
    pub vars: BTreeMap<String, String>,
    /// Settings of source kinds, by kind then key (`[kind.s3] endpoint = "..."`); each
    /// kind documents its keys. Given to kinds as [`Context::settings`](crate::Context).
    /// Values may be TOML strings, booleans or numbers; kinds receive their text
    /// (`allow_http = true` arrives as `"true"`).
    #[serde(deserialize_with = "scalar_tables")]
    pub kind: BTreeMap<String, BTreeMap<String, String>>,
}

/// `[kind.NAME]` tables whose values are scalars (string, boolean, integer, float), kept as
/// text; an array or a table is refused, naming the key.
fn scalar_tables<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, BTreeMap<String, String>>, D::Error> {
    use serde::de::Error as _;
    let raw = BTreeMap::<String, BTreeMap<String, toml::Value>>::deserialize(d)?;
    let mut out = BTreeMap::new();
    for (kind, table) in raw {
        let mut values = BTreeMap::new();
        for (key, value) in table {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    return Err(D::Error::custom(format!(
                        "[kind.{kind}] {key}: expected a string, a boolean or a number, found {}",
                        other.type_str()
                    )))
                }
            };
            values.insert(key, text);
        }
        out.insert(kind, values);
    }
    Ok(out)
}

/// `[worker]` of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// The labels of this machine; default: the OS and the architecture.
    pub labels: Option<Vec<String>>,
    /// How long a run's claim lasts without renewal (`"30s"` by default): a run whose
    /// process was stopped or cut off for longer is declared interrupted and run again.
    pub lease: Option<String>,
}

/// `[run]` of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Default time limit of a run, such as `"30m"` or `"2h"`; none by default.
    pub timeout: Option<String>,
}

/// Whether `url` (`scheme://user:password@host/...`) carries a password.
pub fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// `[queue]` of the configuration: without a URL, runs execute on this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// `postgres://USER@HOST[:PORT]/DB[?sslmode=require]`: the run queue's database. The
    /// password comes from the secret `PGPASSWORD` or the environment variable of that
    /// name, never from this file.
    pub url: Option<String>,
    /// An allowed-signers file (git's format; a path relative to the project's root)
    /// listing the keys of the workers trusted to execute its runs: a result signed by a
    /// key it does not list is refused, and nothing is published. Without it, any worker
    /// key is accepted (and recorded).
    pub workers: Option<String>,
}

/// `[artifacts]` of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// `file:///DIR` (a local directory, possibly a shared mount) or
    /// `s3://BUCKET[/PREFIX]` (any S3-compatible store, with the `[kind.s3]` settings and
    /// credentials); default: `.dkt/artifacts`.
    pub url: Option<String>,
}

/// The default labels of this machine: its OS and architecture (`linux`, `x86_64`).
pub fn default_labels() -> Vec<String> {
    vec![
        std::env::consts::OS.to_owned(),
        std::env::consts::ARCH.to_owned(),
    ]
}

impl Config {
    /// Read the configuration from `path`; a missing file is the default configuration.
    pub fn load(path: &Path) -> Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(Error::io(path, e)),
        };
        let config: Config = toml::from_str(&text).map_err(|e| {
            Error::invalid(
                "configuration file",
                path.display().to_string(),
                e.to_string().trim_end().to_owned(),
            )
        })?;
        if let Some(url) = &config.queue.url {
            let lower = url.to_ascii_lowercase();
            if !(lower.starts_with("postgres://") || lower.starts_with("postgresql://")) {
                return Err(Error::invalid(
                    "setting",
                    format!("[queue] url = {url:?} in {}", path.display()),
                    "expected postgres://USER@HOST[:PORT]/DATABASE",
                ));
            }
            if url_has_password(url) {
                return Err(Error::invalid(
                    "setting",
                    format!("[queue] url in {}", path.display()),
                    "holds a password: remove it from the URL and store it as a secret (`dkt secret set PGPASSWORD`, value on stdin)",
                ));
            }
        }
        if let Some(lease) = &config.worker.lease {
            let ok = crate::engine::parse_duration(lease).is_ok_and(|d| !d.is_zero());
            if !ok {
                return Err(Error::invalid(
                    "setting",
                    format!("[worker] lease = {lease:?} in {}", path.display()),
                    "expected a duration such as \"30s\" or \"2m\"",
                ));
            }
        }
        Ok(config)
    }

    /// How long a run's claim lasts without renewal (`[worker] lease`, default 30 s).
    pub fn lease(&self) -> std::time::Duration {
        self.worker
            .lease
            .as_deref()
            .and_then(|l| crate::engine::parse_duration(l).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(crate::engine::LEASE)
    }

    /// The labels of this machine (configured, or the default).
    pub fn labels(&self) -> Vec<String> {
        self.worker.labels.clone().unwrap_or_else(default_labels)
    }
}

pub(crate) use dtk_api::secrets::check_secret_name;
pub use dtk_api::secrets::{
    create_private_dir, looks_secret, Secrets, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    DOCKER_TOKEN, GITHUB_TOKEN, HOCKEYAPP_TOKEN, KIND_CREDENTIALS,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_rejects_typos() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        assert_eq!(Config::load(&p).unwrap(), Config::default());
        std::fs::write(&p, "[worker]\nlabels = [\"a\"]\n[vars]\nESX_USER = \"u\"\n").unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.labels(), vec!["a"]);
        assert_eq!(c.vars["ESX_USER"], "u");
        std::fs::write(&p, "[wroker]\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("wroker"), "{e}");
    }

    #[test]
    fn kind_settings_take_booleans_and_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        std::fs::write(
            &p,
            "[kind.s3]\nallow_http = true\nanonymous = \"false\"\nparts = 4\nratio = 0.5\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.kind["s3"]["allow_http"], "true");
        assert_eq!(c.kind["s3"]["anonymous"], "false");
        assert_eq!(c.kind["s3"]["parts"], "4");
        assert_eq!(c.kind["s3"]["ratio"], "0.5");
        std::fs::write(&p, "[kind.s3]\nendpoint = [\"a\"]\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("[kind.s3] endpoint") && e.contains("array"),
            "{e}"
        );
    }
}
