//! Local configuration (`.dkt/config`) and secrets (`.dkt/secrets/`): never committed,
//! never recorded, never logged.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::IoResultExt;
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

/// The project's secrets (tokens), one file each in `.dkt/secrets/` with mode 0600.
///
/// `Debug` shows the secrets' names, never their values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    values: BTreeMap<String, String>,
    /// Values that are not secrets of this set but are redacted like them (private
    /// variables whose names say they are secret).
    also_redacted: Vec<String>,
}

/// The names of the secrets that belong to the source kinds (their credentials): never
/// given to a node's command.
pub const KIND_CREDENTIALS: &[&str] = &[
    GITHUB_TOKEN,
    DOCKER_TOKEN,
    HOCKEYAPP_TOKEN,
    AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY,
];

/// True when a variable called `name` looks like a secret (its name contains `PASS`,
/// `TOKEN`, `SECRET` or `KEY`, in any case).
pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["PASS", "TOKEN", "SECRET", "KEY"]
        .iter()
        .any(|w| upper.contains(w))
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The secret holding the GitHub token (`dkt init --github-token`).
pub const GITHUB_TOKEN: &str = "GITHUB_TOKEN";
/// The secret holding the Docker token (`dkt init --docker-token`).
pub const DOCKER_TOKEN: &str = "DOCKER_TOKEN";
/// The secret holding the HockeyApp API token (`dkt init --hockeyapp-token`).
pub const HOCKEYAPP_TOKEN: &str = "HOCKEYAPP_TOKEN";
/// The secret holding the S3 access key ID (`dkt init --aws-access-key-id`).
pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// The secret holding the S3 secret access key (`dkt init --aws-secret-access-key`).
pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";

impl Secrets {
    /// Read every secret in `dir`; a missing directory has none.
    pub fn load(dir: &Path) -> Result<Secrets> {
        let mut values = BTreeMap::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Secrets::default()),
            Err(e) => return Err(Error::io(dir, e)),
        };
        for entry in entries {
            let entry = entry.at(dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let value = std::fs::read_to_string(&path).at(&path)?;
            values.insert(name, value.trim_end_matches(['\n', '\r']).to_owned());
        }
        Ok(Secrets {
            values,
            also_redacted: Vec::new(),
        })
    }

    /// Remove secret `name` from `dir` and from this set; `false` when there was none.
    pub fn remove(&mut self, dir: &Path, name: &str) -> Result<bool> {
        check_secret_name(name)?;
        let path = dir.join(name);
        let existed = match std::fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io(&path, e)),
        };
        Ok(self.values.remove(name).is_some() || existed)
    }

    /// Redact `values` too (without making them secrets of this set).
    pub fn also_redact(&mut self, values: impl IntoIterator<Item = String>) {
        self.also_redacted
            .extend(values.into_iter().filter(|v| v.len() >= 3));
    }

    /// Store secret `name` in `dir` (atomically, mode 0600) and in this set.
    pub fn set(&mut self, dir: &Path, name: &str, value: &str) -> Result<()> {
        check_secret_name(name)?;
        create_private_dir(dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .permissions(private_file())
            .tempfile_in(dir)
            .at(dir)?;
        tmp.write_all(value.as_bytes()).at(tmp.path().to_owned())?;
        tmp.as_file().sync_all().at(dir)?;
        let path = dir.join(name);
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        self.values.insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    /// The secret called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Every secret, by name (for redaction and for `${NAME}` variables).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Replace every secret value in `text` by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for v in self.redacted() {
            out = out.replace(v, "***");
        }
        out
    }

    /// Every value redaction hides, longest first (so a value that contains another is
    /// replaced whole): each secret, the password half of a `USER:PASSWORD` secret, and
    /// the values given to [`Secrets::also_redact`].
    fn redacted(&self) -> Vec<&str> {
        let mut all: Vec<&str> = Vec::new();
        for v in self.values.values().chain(&self.also_redacted) {
            if v.is_empty() {
                continue;
            }
            all.push(v);
            if let Some((_, password)) = v.split_once(':') {
                if password.len() >= 4 {
                    all.push(password);
                }
            }
        }
        all.sort_by_key(|v| std::cmp::Reverse(v.len()));
        all.dedup();
        all
    }
}

/// A secret's name: letters, digits, `_` and `-`.
pub(crate) fn check_secret_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('-')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Error::invalid(
            "secret name",
            name,
            "use letters, digits, '_' and '-' only",
        ));
    }
    Ok(())
}

#[cfg(unix)]
fn private_file() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o600)
}

#[cfg(not(unix))]
fn private_file() -> std::fs::Permissions {
    std::fs::metadata(".")
        .map(|m| m.permissions())
        .unwrap_or_else(|_| unreachable!())
}

/// Create `dir` readable by its owner only.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).at(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_private_and_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let sdir = dir.path().join("secrets");
        let mut s = Secrets::default();
        s.set(&sdir, GITHUB_TOKEN, "ghp_canary123").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(sdir.join(GITHUB_TOKEN))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = Secrets::load(&sdir).unwrap();
        assert_eq!(loaded.get(GITHUB_TOKEN), Some("ghp_canary123"));
        assert!(!format!("{loaded:?}").contains("canary"));
        assert_eq!(loaded.redact("token=ghp_canary123!"), "token=***!");
        let mut docker = Secrets::default();
        docker.set(&sdir, DOCKER_TOKEN, "alice:hunter22").unwrap();
        assert_eq!(
            docker.redact("user alice:hunter22, pw hunter22"),
            "user ***, pw ***"
        );
        docker.also_redact(["esx-pw-1".to_owned()]);
        assert_eq!(docker.redact("pass=esx-pw-1"), "pass=***");
        assert!(docker.remove(&sdir, DOCKER_TOKEN).unwrap());
        assert!(!docker.remove(&sdir, DOCKER_TOKEN).unwrap());
        assert!(!sdir.join(DOCKER_TOKEN).exists());
        assert!(looks_secret("ESX_PASS") && looks_secret("api_key") && !looks_secret("ESX_USER"));
        assert!(s.set(&sdir, "../x", "v").is_err());
    }

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
