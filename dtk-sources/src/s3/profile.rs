//! The AWS shared config files (`~/.aws/credentials`, `~/.aws/config`) and `AWS_PROFILE`,
//! as the AWS CLI and SDKs read them: static keys (with a session token), the region and
//! the endpoint of a profile.
//!
//! The files are INI: `[NAME]` sections in the credentials file, `[profile NAME]` (or
//! `[default]`) in the config file; `key = value` lines; `#` and `;` start comments;
//! indented lines are sub-settings of the key above (`s3 =` blocks), skipped here.
//! Profiles that get their credentials another way (`credential_process`, `sso_*`,
//! `role_arn`) give no keys here: the connection then says none were found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dtk_api::{Error, Result};

/// What one profile holds, merged over both files (the credentials file wins for keys).
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Profile {
    /// The profile's name (`default` unless `AWS_PROFILE` says otherwise).
    pub(crate) name: String,
    pub(crate) access_key_id: Option<String>,
    pub(crate) secret_access_key: Option<String>,
    pub(crate) session_token: Option<String>,
    pub(crate) region: Option<String>,
    pub(crate) endpoint_url: Option<String>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("name", &self.name)
            .field("access_key_id", &self.access_key_id.as_ref().map(|_| "***"))
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .finish()
    }
}

impl Profile {
    /// Both keys, when the profile has them.
    pub(crate) fn keys(&self) -> Option<(String, String)> {
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(id), Some(key)) if !id.is_empty() && !key.is_empty() => {
                Some((id.clone(), key.clone()))
            }
            _ => None,
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn home_file(var: &str, name: &str) -> Option<PathBuf> {
    env(var)
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".aws").join(name)))
}

/// The profile `AWS_PROFILE` names (else `default`), from `AWS_SHARED_CREDENTIALS_FILE`
/// (else `~/.aws/credentials`) and `AWS_CONFIG_FILE` (else `~/.aws/config`). `None` when
/// neither file has it; an error when `AWS_PROFILE` names a profile that is in neither, or a
/// file cannot be read.
pub(crate) fn load() -> Result<Option<Profile>> {
    let explicit = env("AWS_PROFILE");
    let name = explicit.clone().unwrap_or_else(|| "default".to_owned());
    let mut found = false;
    let mut profile = Profile {
        name: name.clone(),
        ..Profile::default()
    };
    let config_section = if name == "default" {
        "default".to_owned()
    } else {
        format!("profile {name}")
    };
    let files = [
        (home_file("AWS_CONFIG_FILE", "config"), config_section),
        (
            home_file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            name.clone(),
        ),
    ];
    // The config file first, then the credentials file, whose keys win.
    for (file, section) in files {
        let Some(file) = file else { continue };
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&file, e)),
        };
        let Some(values) = parse(&text).remove(&section) else {
            continue;
        };
        found = true;
        for (k, v) in values {
            let slot = match k.as_str() {
                "aws_access_key_id" => &mut profile.access_key_id,
                "aws_secret_access_key" => &mut profile.secret_access_key,
                "aws_session_token" => &mut profile.session_token,
                "region" => &mut profile.region,
                "endpoint_url" => &mut profile.endpoint_url,
                _ => continue,
            };
            *slot = Some(v);
        }
    }
    match (found, explicit) {
        (true, _) => Ok(Some(profile)),
        (false, None) => Ok(None),
        (false, Some(name)) => Err(Error::invalid(
            "AWS_PROFILE",
            name,
            "no such profile in the shared AWS config files (~/.aws/credentials, ~/.aws/config, \
             or AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE)",
        )),
    }
}

/// The sections of an INI text, each a map of its top-level keys (lower case).
fn parse(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let indented = line.starts_with([' ', '\t']);
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') || indented {
            continue;
        }
        if let Some(section) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            let name = section.split_whitespace().collect::<Vec<_>>().join(" ");
            out.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        let (Some(section), Some((k, v))) = (&current, t.split_once('=')) else {
            continue;
        };
        // A value may end with an inline comment after whitespace.
        let v = v
            .split_once(" #")
            .or_else(|| v.split_once(" ;"))
            .map_or(v, |(v, _)| v)
            .trim();
        if let Some(values) = out.get_mut(section) {
            values.insert(k.trim().to_ascii_lowercase(), v.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_keys_comments_and_sub_settings() {
        let text = "# comment\n[default]\nregion = eu-west-1\n\n[profile ci]\n\
                    aws_access_key_id=AKIA1 ; inline\nregion = us-east-2\ns3 =\n  \
                    addressing_style = path\nendpoint_url = http://127.0.0.1:9000\n\
                    [ profile  spaced ]\nregion = x\n";
        let p = parse(text);
        assert_eq!(p["default"]["region"], "eu-west-1");
        assert_eq!(p["profile ci"]["aws_access_key_id"], "AKIA1");
        assert_eq!(p["profile ci"]["region"], "us-east-2");
        assert_eq!(p["profile ci"]["endpoint_url"], "http://127.0.0.1:9000");
        assert!(!p["profile ci"].contains_key("addressing_style"));
        assert_eq!(p["profile spaced"]["region"], "x");
    }
}
