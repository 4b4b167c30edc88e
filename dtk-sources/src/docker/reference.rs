//! Image references: `[REGISTRY[:PORT]/]REPO[:TAG]`, as docker reads them.

use std::path::Path;

use dtk_api::{Error, Result};

/// The registry name docker uses for Docker Hub (what `REGISTRY` shows).
pub(crate) const HUB: &str = "docker.io";
/// The host that serves Docker Hub's registry API.
pub(crate) const HUB_API: &str = "registry-1.docker.io";
/// The tag used when none is given.
pub(crate) const DEFAULT_TAG: &str = "latest";

/// Hosts that are well-known git forges, never registries (`github.com/user/repo`).
const GIT_FORGES: &[&str] = &["github.com", "gitlab.com", "bitbucket.org", "codeberg.org"];

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    /// The registry as docker names it: `docker.io` for Docker Hub, else `host[:port]`
    /// (lower case).
    pub(crate) registry: String,
    /// The repository path (`library/ubuntu`, `team/app`).
    pub(crate) repo: String,
    /// The tag, when the location carried one.
    pub(crate) tag: Option<String>,
}

impl Reference {
    /// Parse a location as the user gave it (`ubuntu`, `user/repo:tag`,
    /// `host:5000/team/app`, optionally prefixed with `docker://`).
    pub(crate) fn parse(location: &str) -> Result<Reference> {
        let bad = |reason: &str| Error::invalid("docker location", location, reason.to_owned());
        let mut s = location.trim();
        if s.is_empty() {
            return Err(bad("it is empty; give [REGISTRY[:PORT]/]REPO[:TAG]"));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("it contains spaces or control characters"));
        }
        if s.len() >= 9 && s[..9].eq_ignore_ascii_case("docker://") {
            s = &s[9..];
        } else if s.contains("://") {
            return Err(bad(
                "give [REGISTRY[:PORT]/]REPO[:TAG], not a URL (the registry's scheme is chosen by dtk)",
            ));
        }
        if s.contains('@') {
            return Err(bad(
                "a digest reference is not a source; add REPO:TAG and pin a version with `dkt source pin`",
            ));
        }
        let (registry, rest) = match s.split_once('/') {
            Some((first, rest)) if looks_like_host(first) => (first.to_ascii_lowercase(), rest),
            _ => (HUB.to_owned(), s),
        };
        if !valid_host(&registry) {
            return Err(bad(&format!("{registry:?} is not a registry host[:port]")));
        }
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => HUB.to_owned(),
            _ => registry,
        };
        // A tag is a `:` in the last path component.
        let (repo, tag) = match rest.rsplit_once('/') {
            Some((dir, last)) => match last.split_once(':') {
                Some((name, tag)) => (format!("{dir}/{name}"), Some(tag.to_owned())),
                None => (rest.to_owned(), None),
            },
            None => match rest.split_once(':') {
                Some((name, tag)) => (name.to_owned(), Some(tag.to_owned())),
                None => (rest.to_owned(), None),
            },
        };
        if let Some(t) = &tag {
            check_tag(t)?;
        }
        let repo = if registry == HUB && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo
        };
        if let Err(reason) = check_repo(&repo) {
            return Err(bad(&reason));
        }
        Ok(Reference {
            registry,
            repo,
            tag,
        })
    }

    /// True for Docker Hub.
    pub(crate) fn is_hub(&self) -> bool {
        self.registry == HUB
    }

    /// The host (and port) that serves the registry API.
    pub(crate) fn api_host(&self) -> &str {
        if self.is_hub() {
            HUB_API
        } else {
            &self.registry
        }
    }

    /// What a spec stores: `REGISTRY/REPO` (`docker.io/library/ubuntu`).
    pub(crate) fn location(&self) -> String {
        format!("{}/{}", self.registry, self.repo)
    }

    /// The name a `docker pull` takes, without tag or digest: `REPO` on Docker Hub,
    /// `REGISTRY/REPO` elsewhere.
    pub(crate) fn pull_name(&self) -> String {
        if self.is_hub() {
            self.repo.clone()
        } else {
            self.location()
        }
    }

    /// True when the registry is reached over plain HTTP: loopback hosts (as docker does)
    /// and the hosts of the `insecure` setting (`host:port` or `host`, comma-separated).
    pub(crate) fn plain_http(&self, insecure: Option<&str>) -> bool {
        let host = host_of(&self.registry);
        if matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1") {
            return true;
        }
        insecure.is_some_and(|list| {
            list.split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .any(|h| h == self.registry || h == host)
        })
    }
}

/// The host of `host[:port]` (IPv6 literals keep their brackets).
fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        return match registry.find(']') {
            Some(i) => &registry[..=i],
            None => registry,
        };
    }
    registry.split(':').next().unwrap_or(registry)
}

/// Docker's rule: the first component names a registry when it has a `.` or a `:`, or is
/// `localhost`.
fn looks_like_host(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost" || first.starts_with('[')
}

fn valid_host(registry: &str) -> bool {
    let (host, port) = if registry.starts_with('[') {
        match registry.find(']') {
            Some(i) => {
                let inner = &registry[1..i];
                if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                    return false;
                }
                match &registry[i + 1..] {
                    "" => return true,
                    p => match p.strip_prefix(':') {
                        Some(p) => (None, Some(p)),
                        None => return false,
                    },
                }
            }
            None => return false,
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(h) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if h.is_empty() || !h.split('.').all(label_ok) {
            return false;
        }
    }
    match port {
        None => true,
        Some(p) => p.parse::<u16>().is_ok_and(|n| n > 0) && p.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// Check a repository path: `/`-separated components of lower-case letters and digits,
/// separated inside by `.`, `_` or `-`.
fn check_repo(repo: &str) -> std::result::Result<(), String> {
    if repo.is_empty() {
        return Err("the repository name is empty".to_owned());
    }
    if repo.len() > 255 {
        return Err("the repository name is longer than 255 characters".to_owned());
    }
    for part in repo.split('/') {
        let ok = !part.is_empty()
            && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if !ok {
            return Err(format!(
                "the repository component {part:?} must be lower-case letters and digits, \
                 separated by '.', '_' or '-'"
            ));
        }
    }
    Ok(())
}

/// Check a tag: up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`.
pub(crate) fn check_tag(tag: &str) -> Result<()> {
    if dtk_api::pattern::is_pattern(tag) {
        dtk_api::pattern::TagPattern::new(tag)?;
        let ok = tag.len() <= 128
            && tag.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'_' | b'.' | b'-' | b'*' | b'?' | b'[' | b']' | b'!')
            });
        return if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                "docker tag pattern",
                tag,
                "a pattern is made of tag characters (letters, digits, '_', '.', '-') and '*', '?', '[...]'",
            ))
        };
    }
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "docker tag",
            tag,
            "a tag is 1 to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'",
        ))
    }
}

/// How sure the `docker` kind is that `location` is an image (see `Kind::infer`): only
/// when it clearly names a registry (`docker://...`, or a first component with a `.`, a
/// `:port` or `localhost`) and is not a local path, a URL or a git forge.
pub(crate) fn infer(location: &str) -> Option<u8> {
    const SURE: u8 = 30;
    const LIKELY: u8 = 15;
    let lower = location.trim().to_ascii_lowercase();
    if lower.starts_with("docker://") {
        return Reference::parse(location).ok().map(|_| SURE);
    }
    if lower.contains("://") || lower.ends_with(".git") || lower.contains('@') {
        return None;
    }
    let (first, _) = location.split_once('/')?;
    if !looks_like_host(first) || GIT_FORGES.contains(&first.to_ascii_lowercase().as_str()) {
        return None;
    }
    if Path::new(location).exists() {
        return None;
    }
    Reference::parse(location).ok().map(|_| LIKELY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> (String, String, Option<String>) {
        let r = Reference::parse(s).unwrap();
        (r.registry, r.repo, r.tag)
    }

    #[test]
    fn parses_locations() {
        let hub = |repo: &str, tag: Option<&str>| {
            (HUB.to_owned(), repo.to_owned(), tag.map(str::to_owned))
        };
        assert_eq!(p("ubuntu"), hub("library/ubuntu", None));
        assert_eq!(p("ubuntu:22.04"), hub("library/ubuntu", Some("22.04")));
        assert_eq!(p("user/repo"), hub("user/repo", None));
        assert_eq!(p("docker.io/user/repo:v1"), hub("user/repo", Some("v1")));
        assert_eq!(p("index.docker.io/ubuntu"), hub("library/ubuntu", None));
        assert_eq!(p("docker://user/repo:v1"), hub("user/repo", Some("v1")));
        assert_eq!(
            p("127.0.0.1:5000/team/app:v1"),
            (
                "127.0.0.1:5000".into(),
                "team/app".into(),
                Some("v1".into())
            )
        );
        assert_eq!(
            p("Registry.Example.com/a/b/c"),
            ("registry.example.com".into(), "a/b/c".into(), None)
        );
        assert_eq!(p("localhost/app"), ("localhost".into(), "app".into(), None));
        assert_eq!(
            p("[::1]:5000/app:x"),
            ("[::1]:5000".into(), "app".into(), Some("x".into()))
        );
    }

    #[test]
    fn rejects_bad_locations() {
        for bad in [
            "",
            "User/Repo",
            "https://host/repo",
            "host:5000/repo@sha256:abcd",
            "a b",
            "host:99999/repo",
            "host:5000/",
            "repo:",
            "repo:-x",
            "team//app",
            "team/.app",
            "bad_host.x:1/a/../b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plain_http_hosts() {
        let r = |s: &str| Reference::parse(s).unwrap();
        assert!(r("127.0.0.1:5000/a").plain_http(None));
        assert!(r("localhost:5000/a").plain_http(None));
        assert!(r("[::1]:5000/a").plain_http(None));
        assert!(!r("reg.example.com/a").plain_http(None));
        assert!(r("reg.example.com:5000/a").plain_http(Some("other, reg.example.com:5000")));
        assert!(r("reg.example.com:5000/a").plain_http(Some("reg.example.com")));
        assert!(!r("reg.example.com:5000/a").plain_http(Some("reg.example.com:5001")));
        assert!(!r("user/repo").plain_http(Some("")));
    }

    #[test]
    fn infers_only_clear_registries() {
        for yes in [
            "127.0.0.1:5000/team/app",
            "127.0.0.1:5000/team/app:v1",
            "localhost/app",
            "registry.example.com/a/b",
        ] {
            assert_eq!(infer(yes), Some(15), "{yes}");
        }
        assert_eq!(infer("docker://ubuntu"), Some(30));
        for no in [
            "user/repo",
            "ubuntu",
            "github.com/user/repo",
            "https://host/repo",
            "host.example.com/repo.git",
            "git@host.example.com:repo",
            "./data",
            "/abs/path",
        ] {
            assert_eq!(infer(no), None, "{no}");
        }
    }
}
