//! Where a git repository is: telling locations apart, normalizing them, and the `github`
//! shortcut.

use std::path::{Component, Path, PathBuf};

use dtk_api::{Error, Result};

/// The schemes a git location may start with (compared case-insensitively).
const URL_SCHEMES: &[&str] = &["https://", "http://", "ssh://", "git://", "file://"];

/// A location after normalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Normalized {
    /// What the spec stores: an absolute path, a `file://` URL with an absolute path, or a
    /// remote URL (never with a password in it).
    pub(crate) location: String,
    /// For local repositories (a path or `file://`), the directory to check before fetching.
    pub(crate) local: Option<PathBuf>,
}

/// How sure the `git` kind is that `location` is a git repository (see `Kind::infer`).
pub(crate) fn infer(location: &str) -> Option<u8> {
    const SURE: u8 = 20;
    let lower = location.to_ascii_lowercase();
    if URL_SCHEMES.iter().any(|s| lower.starts_with(s)) {
        return Some(SURE);
    }
    if is_scp_like_with_user(location) {
        return Some(SURE);
    }
    if lower.trim_end_matches('/').ends_with(".git") {
        return Some(SURE);
    }
    if is_local_repository(Path::new(location)) {
        return Some(SURE);
    }
    None
}

/// True for a directory holding a git repository: a work tree with `.git`, or a bare
/// repository.
pub(crate) fn is_local_repository(dir: &Path) -> bool {
    if !dir.is_dir() {
        return false;
    }
    dir.join(".git").exists() || gix::discover::is_git(dir).is_ok()
}

/// `user@host:path`, as `git@github.com:user/repo`, but not a docker digest reference
/// (`image@sha256:...`).
fn is_scp_like_with_user(location: &str) -> bool {
    let Some((user, rest)) = location.split_once('@') else {
        return false;
    };
    let Some((host, path)) = rest.split_once(':') else {
        return false;
    };
    let plain = |s: &str| !s.is_empty() && !s.contains(['/', ':', ' ', '\t', '\n']);
    let digest_algo = host.len() > 3
        && host.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("sha"))
        && host.bytes().skip(3).all(|b| b.is_ascii_digit());
    plain(user) && plain(host) && !digest_algo && !path.is_empty() && !path.starts_with("//")
}

/// True when `location` has the form git reads as `[user@]host:path` (a colon before any
/// slash).
fn is_scp_like(location: &str) -> bool {
    match (location.find(':'), location.find('/')) {
        (Some(colon), Some(slash)) => colon < slash && colon > 0,
        (Some(colon), None) => colon > 0,
        (None, _) => false,
    }
}

fn has_url_scheme(location: &str) -> bool {
    match location.find("://") {
        Some(i) if i > 0 => location[..i]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')),
        _ => false,
    }
}

/// The default base URL of the `github` shortcut.
pub(crate) const GITHUB_URL: &str = "https://github.com";

/// The base URL of the `github` shortcut: `[kind.git] github_url` (an `https://` URL of a
/// GitHub-compatible server, such as GitHub Enterprise or a mirror), else github.com.
pub(crate) fn github_base(setting: Option<&str>) -> Result<String> {
    let Some(raw) = setting else {
        return Ok(GITHUB_URL.to_owned());
    };
    let base = raw.trim().trim_end_matches('/');
    let ok = gix::url::parse(gix::bstr::BStr::new(base.as_bytes())).is_ok_and(|u| {
        u.scheme == gix::url::Scheme::Https
            && u.host().is_some()
            && u.user().is_none()
            && u.password().is_none()
    });
    if !ok {
        return Err(Error::invalid(
            "setting",
            format!("[kind.git] github_url = {raw:?}"),
            "expected an https://HOST[:PORT][/PATH] URL without credentials",
        ));
    }
    Ok(base.to_owned())
}

/// Expand `USER/REPO` into its URL under `base` (`https://github.com` by default).
pub(crate) fn expand_github(location: &str, base: &str) -> Result<String> {
    let bad = || {
        Error::invalid(
            "github location",
            location,
            "expected USER/REPO (letters, digits, '-', '_', '.'), e.g. `-k github rust-lang/rust`; \
             give other URLs with kind git",
        )
    };
    let (user, repo) = location.split_once('/').ok_or_else(bad)?;
    let user_ok = !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let repo_ok = !repo.is_empty()
        && repo != "."
        && repo != ".."
        && repo
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !user_ok || !repo_ok {
        return Err(bad());
    }
    Ok(format!("{}/{user}/{repo}", base.trim_end_matches('/')))
}

/// Normalize a location given by the user: absolute local paths, `file://` URLs with
/// absolute paths, remote URLs kept as given (but refused with a password in them).
pub(crate) fn normalize(location: &str, cwd: &Path) -> Result<Normalized> {
    let trimmed = location.trim();
    if trimmed.is_empty() {
        return Err(Error::invalid("git location", location, "it is empty"));
    }
    if trimmed.contains(['\n', '\r', '\0']) {
        return Err(Error::invalid(
            "git location",
            location,
            "it holds a control character",
        ));
    }
    if let Some(path) = strip_file_scheme(trimmed) {
        if path.is_empty() {
            return Err(Error::invalid(
                "git location",
                location,
                "the file:// URL has no path",
            ));
        }
        let abs = absolute(Path::new(path), cwd);
        return Ok(Normalized {
            location: format!("file://{}", abs.display()),
            local: Some(abs),
        });
    }
    if has_url_scheme(trimmed) || is_scp_like(trimmed) {
        let url = gix::url::parse(gix::bstr::BStr::new(trimmed.as_bytes())).map_err(|e| {
            Error::Invalid {
                what: "git location",
                value: redact_url(trimmed),
                reason: format!("not a URL git understands: {e}"),
            }
        })?;
        // Over HTTP a user name is as good as a token (`https://TOKEN@host/repo`): it
        // would be stored in the source's record and the history. (An ssh user such as
        // `git@host` is only a name.)
        let http = matches!(url.scheme, gix::url::Scheme::Http | gix::url::Scheme::Https);
        if url.password().is_some() || (http && url.user().is_some()) {
            return Err(Error::invalid(
                "git location",
                redact_userinfo(trimmed),
                "do not put a token, password or user name in the URL (it would be stored in \
                 the project and its history): store a GitHub token with `dkt secret set \
                 GITHUB_TOKEN` (or `dkt init --github-token`) instead",
            ));
        }
        if url.scheme == gix::url::Scheme::File {
            let abs = absolute(Path::new(&*url.path.to_string()), cwd);
            return Ok(Normalized {
                location: abs.display().to_string(),
                local: Some(abs),
            });
        }
        return Ok(Normalized {
            location: trimmed.to_owned(),
            local: None,
        });
    }
    let abs = absolute(Path::new(trimmed), cwd);
    Ok(Normalized {
        location: abs.display().to_string(),
        local: Some(abs),
    })
}

/// `location` with the password of a `scheme://user:password@host` URL replaced by `***`,
/// for messages.
pub(crate) fn redact_url(location: &str) -> String {
    let Some(start) = location.find("://").map(|i| i + 3) else {
        return location.to_owned();
    };
    let end = location[start..]
        .find('/')
        .map_or(location.len(), |i| start + i);
    let authority = &location[start..end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &location[..start],
            &authority[..colon],
            &location[start + at..]
        ),
        _ => location.to_owned(),
    }
}

/// `location` with everything between the scheme and an `@` of the authority replaced
/// by `***` (user names and passwords alike).
pub(crate) fn redact_userinfo(location: &str) -> String {
    let Some(start) = location.find("://").map(|i| i + 3) else {
        return location.to_owned();
    };
    let end = location[start..]
        .find('/')
        .map_or(location.len(), |i| start + i);
    match location[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &location[..start], &location[start + at..]),
        None => location.to_owned(),
    }
}

/// The local directory a stored location names, if it is local.
pub(crate) fn local_dir(location: &str) -> Option<PathBuf> {
    if let Some(path) = strip_file_scheme(location) {
        return Some(PathBuf::from(path));
    }
    if has_url_scheme(location) || is_scp_like(location) {
        return None;
    }
    Some(PathBuf::from(location))
}

/// What follows `file://` (in any case), if `location` starts with it.
fn strip_file_scheme(location: &str) -> Option<&str> {
    const FILE: &str = "file://";
    let prefix = location.get(..FILE.len())?;
    prefix
        .eq_ignore_ascii_case(FILE)
        .then(|| &location[FILE.len()..])
}

/// `path` made absolute against `cwd`, with `.` and `..` resolved lexically.
fn absolute(path: &Path, cwd: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_owned()
    } else {
        cwd.join(path)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infers_urls_and_scp_like() {
        for yes in [
            "https://github.com/a/b",
            "HTTP://example.com/x",
            "ssh://git@host/x",
            "git://host/x",
            "file:///tmp/x",
            "git@github.com:user/repo",
            "someone@host:repo",
            "../x/repo.git",
            "repo.git/",
            "é@shé:x",
        ] {
            assert_eq!(infer(yes), Some(20), "{yes}");
        }
        for no in [
            "ubuntu:22.04",
            "ubuntu@sha256:abcdef",
            "s3://bucket/x",
            "/nonexistent/dir/x",
            "filé://x",
            "data",
        ] {
            assert_eq!(infer(no), None, "{no}");
        }
    }

    #[test]
    fn normalizes() {
        let cwd = Path::new("/work/here");
        let n = normalize("../repo/./x/", cwd).unwrap();
        assert_eq!(n.location, "/work/repo/x");
        assert_eq!(n.local.as_deref(), Some(Path::new("/work/repo/x")));
        let n = normalize("file://sub/r", cwd).unwrap();
        assert_eq!(n.location, "file:///work/here/sub/r");
        let n = normalize("file:///abs/r", cwd).unwrap();
        assert_eq!(n.location, "file:///abs/r");
        let n = normalize("git@github.com:u/r.git", cwd).unwrap();
        assert_eq!(n.location, "git@github.com:u/r.git");
        assert!(n.local.is_none());
        let e = normalize("https://u:ghp_secret@github.com/u/r", cwd)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("ghp_secret"), "{e}");
        assert!(e.contains("https://***@github.com/u/r"), "{e}");
        assert!(!e.contains("ghp_secret") && !e.contains("u:"), "{e}");
        let e = normalize("https://ghp_tokenasuser@example.com/u/r.git", cwd)
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("ghp_tokenasuser") && e.contains("secret set"),
            "{e}"
        );
        assert!(normalize("ssh://git@example.com/u/r.git", cwd).is_ok());
        assert_eq!(local_dir("/a/b"), Some(PathBuf::from("/a/b")));
        assert_eq!(local_dir("file:///a/b"), Some(PathBuf::from("/a/b")));
        assert_eq!(local_dir("https://h/a"), None);
        assert_eq!(local_dir("h:a"), None);
        assert!(normalize("filé:/x", cwd).is_ok());
        assert!(normalize("é", cwd).is_ok());
    }

    #[test]
    fn github_shortcut() {
        assert_eq!(
            expand_github("a-b/c.d_e", GITHUB_URL).unwrap(),
            "https://github.com/a-b/c.d_e"
        );
        for bad in [
            "a",
            "a/b/c",
            "/b",
            "a/",
            "https://github.com/a/b",
            "a/..",
            "a b/c",
        ] {
            let e = expand_github(bad, GITHUB_URL).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
