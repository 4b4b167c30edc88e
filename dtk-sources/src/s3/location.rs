//! Where an `s3` source is: a bucket and a key prefix, parsed from what the user typed
//! (`s3://bucket/prefix`, or `bucket[/prefix]` with `-k s3`) and from `-p PATH`.

use dtk_api::{Error, Result};

/// The URL scheme of `s3` locations.
pub(crate) const SCHEME: &str = "s3://";

/// A bucket and a key prefix below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    /// The bucket's name.
    pub(crate) bucket: String,
    /// The key prefix: `/`-separated segments without leading, trailing or doubled `/`;
    /// empty for the whole bucket.
    pub(crate) prefix: String,
}

impl Location {
    /// Parse a location as typed: `s3://bucket[/prefix]` or `bucket[/prefix]`.
    ///
    /// # Errors
    /// [`Error::Invalid`] quoting `typed` for a bad bucket name or prefix.
    pub(crate) fn parse(typed: &str) -> Result<Location> {
        let bad = |reason: String| Error::invalid("location", typed, reason);
        let rest = match typed.get(..SCHEME.len()) {
            Some(s) if s.eq_ignore_ascii_case(SCHEME) => &typed[SCHEME.len()..],
            _ if typed.contains("://") => {
                return Err(bad(
                    "an s3 location is s3://BUCKET[/PREFIX] or a bucket name".to_owned(),
                ))
            }
            _ => typed,
        };
        if rest.contains(['?', '#']) {
            return Err(bad(
                "an s3 location has no query or fragment ('?', '#')".to_owned()
            ));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket).map_err(bad)?;
        let prefix = normalize_prefix(prefix).map_err(bad)?;
        Ok(Location {
            bucket: bucket.to_owned(),
            prefix,
        })
    }

    /// This location with `sub` (a `-p PATH`, already normalized) appended to the prefix.
    pub(crate) fn join(&self, sub: &str) -> Location {
        let prefix = match (self.prefix.is_empty(), sub.is_empty()) {
            (_, true) => self.prefix.clone(),
            (true, false) => sub.to_owned(),
            (false, false) => format!("{}/{sub}", self.prefix),
        };
        Location {
            bucket: self.bucket.clone(),
            prefix,
        }
    }

    /// `s3://bucket` or `s3://bucket/prefix`.
    pub(crate) fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("{SCHEME}{}", self.bucket)
        } else {
            format!("{SCHEME}{}/{}", self.bucket, self.prefix)
        }
    }
}

/// A bucket name as S3 accepts it today: 3 to 63 characters among lower-case letters,
/// digits, `.` and `-`, starting and ending with a letter or a digit, no `..`.
fn check_bucket(b: &str) -> std::result::Result<(), String> {
    if b.is_empty() {
        return Err("no bucket name".to_owned());
    }
    if !(3..=63).contains(&b.len()) {
        return Err(format!("bucket name {b:?} must be 3 to 63 characters long"));
    }
    if let Some(c) = b
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-'))
    {
        return Err(format!(
            "bucket name {b:?} holds {c:?}: use lower-case letters, digits, '.' and '-'"
        ));
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge(b.chars().next()) || !edge(b.chars().last()) {
        return Err(format!(
            "bucket name {b:?} must start and end with a letter or a digit"
        ));
    }
    if b.contains("..") {
        return Err(format!("bucket name {b:?} must not contain '..'"));
    }
    Ok(())
}

/// Normalize a key prefix (or a `-p PATH`): empty and `.` segments are dropped; `..` and
/// control characters are refused, so that every key below it maps to a relative file path.
pub(crate) fn normalize_prefix(p: &str) -> std::result::Result<String, String> {
    if let Some(c) = p.chars().find(|c| c.is_control()) {
        return Err(format!(
            "a key prefix must not contain control characters (found {c:?})"
        ));
    }
    let mut parts = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err("a key prefix must not contain '..'".to_owned()),
            s => parts.push(s),
        }
    }
    Ok(parts.join("/"))
}

/// Normalize a `-p PATH`, quoting it in the error.
pub(crate) fn normalize_subpath(p: &str) -> Result<String> {
    normalize_prefix(p).map_err(|reason| Error::invalid("path", p, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let l = Location::parse("s3://my-bucket/a//b/./c/").unwrap();
        assert_eq!(l.bucket, "my-bucket");
        assert_eq!(l.prefix, "a/b/c");
        assert_eq!(l.url(), "s3://my-bucket/a/b/c");
        let l = Location::parse("my.bucket").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my.bucket", ""));
        assert_eq!(l.url(), "s3://my.bucket");
        assert_eq!(l.join("x/y").url(), "s3://my.bucket/x/y");
        assert_eq!(
            Location::parse("S3://abc/p").unwrap().join("q").prefix,
            "p/q"
        );
    }

    #[test]
    fn bad_forms() {
        for bad in [
            "",
            "s3://",
            "ab",
            "Bucket",
            "-abc",
            "abc-",
            "a..b",
            "a_b",
            "s3://abc/../x",
            "s3://abc/x\ny",
            "https://abc/x",
            "s3://abc/x?y",
        ] {
            let e = Location::parse(bad).unwrap_err();
            assert!(matches!(e, Error::Invalid { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(normalize_subpath("a/../b").is_err());
        assert_eq!(normalize_subpath("/a/b/").unwrap(), "a/b");
    }
}
