//! The project's secrets (`.dkt/secrets/`, one file each, mode 0600): the kinds'
//! credentials and the values a node's command may use. Never committed, never recorded,
//! never logged; `Debug` shows names only.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::error::IoResultExt;
use crate::{Error, Result};

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

/// Check a secret's name: letters, digits, `_` and `-`.
pub fn check_secret_name(name: &str) -> Result<()> {
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
}
