//! The listing of a prefix and its digest (an `s3` source's version), and how listed keys
//! map to file paths.
//!
//! # The version encoding (`s3-listing v1`)
//!
//! The version is `md5:` of these bytes:
//!
//! ```text
//! "dtk-s3-listing v1\n"
//! then, for each object below the prefix, sorted by relative key (bytewise):
//!   RELATIVE-KEY "\0" SIZE "\0" ETAG "\n"
//! ```
//!
//! - RELATIVE-KEY: the key without the prefix and the `/` after it (the whole key when the
//!   prefix is empty), as UTF-8. Keys hold no control characters (they are refused), so the
//!   NUL and newline separators are unambiguous.
//! - SIZE: the object's size in bytes, in decimal without leading zeros.
//! - ETAG: the ETag as listed, without its surrounding double quotes, ASCII lower-cased
//!   (empty if the store gives none).
//!
//! An empty prefix (no object) digests the header alone.

use std::collections::BTreeSet;
use std::path::PathBuf;

use dtk_api::{Algo, Error, Result, Version};
use md5::{Digest as _, Md5};

/// The first line of the encoding.
pub(crate) const HEADER: &[u8] = b"dtk-s3-listing v1\n";

/// One object below the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The full key.
    pub(crate) key: String,
    /// The key relative to the prefix.
    pub(crate) rel: String,
    /// Its size in bytes.
    pub(crate) size: u64,
    /// The ETag as the store gave it (quotes included), for conditional requests.
    pub(crate) raw_etag: Option<String>,
}

impl Entry {
    /// The ETag as encoded in the digest: unquoted, lower case.
    pub(crate) fn etag(&self) -> String {
        normalize_etag(self.raw_etag.as_deref().unwrap_or(""))
    }

    /// The md5 of the content, when the ETag is a plain md5 (single-part uploads without
    /// KMS or customer-key encryption).
    pub(crate) fn md5(&self) -> Option<String> {
        let e = self.etag();
        (e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit())).then_some(e)
    }
}

/// An ETag without quotes (and without a weak `W/` mark), lower case.
pub(crate) fn normalize_etag(raw: &str) -> String {
    let e = raw.strip_prefix("W/").unwrap_or(raw);
    e.trim_matches('"').to_ascii_lowercase()
}

/// Every object below a prefix, sorted by relative key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    pub(crate) entries: Vec<Entry>,
}

impl Listing {
    /// A listing of `entries` in any order.
    pub(crate) fn new(mut entries: Vec<Entry>) -> Self {
        entries.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
        Listing { entries }
    }

    /// The version: `md5:` of the encoding above.
    pub(crate) fn version(&self) -> Version {
        let mut h = Md5::new();
        h.update(HEADER);
        for e in &self.entries {
            h.update(e.rel.as_bytes());
            h.update(b"\0");
            h.update(e.size.to_string().as_bytes());
            h.update(b"\0");
            h.update(e.etag().as_bytes());
            h.update(b"\n");
        }
        Version::from_bytes(Algo::Md5, &h.finalize()).unwrap_or_else(|_| unreachable!())
    }

    /// How to write the listing as files: the objects to download (entry, relative file
    /// path), and the directories to create. An empty object whose key is a "folder" of
    /// other keys (`dir/` markers, `dir` next to `dir/x`) becomes a directory.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a key that cannot be a relative file path (see [`safe_rel`]),
    /// or a non-empty object whose key is also a folder of other keys.
    pub(crate) fn plan(&self) -> Result<Plan<'_>> {
        let mut folders = BTreeSet::new();
        for e in &self.entries {
            safe_rel(&e.key, &e.rel)?;
            let mut pos = 0;
            while let Some(i) = e.rel[pos..].find('/') {
                folders.insert(&e.rel[..pos + i]);
                pos += i + 1;
            }
        }
        let mut plan = Plan {
            files: Vec::new(),
            dirs: Vec::new(),
        };
        for e in &self.entries {
            if folders.contains(e.rel.as_str()) {
                if e.size != 0 {
                    return Err(Error::invalid(
                        "S3 key",
                        &e.key,
                        "is an object with content and also a folder of other keys: it cannot be written as files",
                    ));
                }
                plan.dirs.push(PathBuf::from(&e.rel));
            } else {
                plan.files.push((e, PathBuf::from(&e.rel)));
            }
        }
        Ok(plan)
    }
}

/// What [`Listing::plan`] returns.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    /// Objects and the relative paths they are written to.
    pub(crate) files: Vec<(&'a Entry, PathBuf)>,
    /// Empty "folder" objects, written as directories.
    pub(crate) dirs: Vec<PathBuf>,
}

/// Check that `rel` (the relative key of `key`) is a safe relative file path: non-empty
/// `/`-separated segments, none `.` or `..`, no control characters, not absolute.
///
/// # Errors
/// [`Error::Invalid`] quoting the key.
pub(crate) fn safe_rel(key: &str, rel: &str) -> Result<()> {
    let bad = |why: &str| {
        Error::invalid(
            "S3 key",
            key,
            format!(
                "{why}: it would not stay inside the materialized directory; refusing to write it"
            ),
        )
    };
    if rel.is_empty() {
        return Err(bad("is empty below the prefix"));
    }
    if rel.starts_with('/') {
        return Err(bad("is absolute"));
    }
    if rel.chars().any(char::is_control) {
        return Err(bad("holds a control character"));
    }
    for seg in rel.split('/') {
        match seg {
            "" => return Err(bad("has an empty segment ('//' or a trailing '/')")),
            "." | ".." => return Err(bad("has a '.' or '..' segment")),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(rel: &str, size: u64, etag: &str) -> Entry {
        Entry {
            key: format!("p/{rel}"),
            rel: rel.to_owned(),
            size,
            raw_etag: Some(format!("\"{etag}\"")),
        }
    }

    #[test]
    fn encoding_is_as_documented() {
        let l = Listing::new(vec![
            e("b", 2, "ABC"),
            e("a/x", 10, "0123456789abcdef0123456789abcdef"),
        ]);
        let mut bytes = HEADER.to_vec();
        bytes.extend_from_slice(b"a/x\x0010\x000123456789abcdef0123456789abcdef\n");
        bytes.extend_from_slice(b"b\x002\x00abc\n");
        let expected = Version::from_bytes(Algo::Md5, &Md5::digest(&bytes)).unwrap();
        assert_eq!(l.version(), expected);
        let empty = Version::from_bytes(Algo::Md5, &Md5::digest(HEADER)).unwrap();
        assert_eq!(Listing::default().version(), empty);
        assert_eq!(
            l.entries[0].md5().as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(l.entries[1].md5(), None);
    }

    #[test]
    fn unsafe_keys_are_refused() {
        for rel in ["", "/x", "a//b", "a/", "../x", "a/./b", "a/..", "a\nb"] {
            assert!(safe_rel(&format!("p/{rel}"), rel).is_err(), "{rel:?}");
        }
        safe_rel("p/a/b.txt", "a/b.txt").unwrap();
    }

    #[test]
    fn folder_markers_become_directories() {
        let l = Listing::new(vec![e("d", 0, "x"), e("d/f", 1, "y"), e("g", 0, "z")]);
        let plan = l.plan().unwrap();
        assert_eq!(plan.dirs, vec![PathBuf::from("d")]);
        assert_eq!(plan.files.len(), 2);
        let l = Listing::new(vec![e("d", 3, "x"), e("d/f", 1, "y")]);
        assert!(l.plan().is_err());
    }
}
