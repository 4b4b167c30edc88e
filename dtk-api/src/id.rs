//! Version identifiers (`ALGO:HEX`) and lookup by unique prefix.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The hash algorithms a [`Version`] can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algo {
    /// SHA-1, 160 bits (git commits).
    Sha1,
    /// SHA-256 (docker digests, downloads).
    Sha256,
    /// MD5 (path digests, S3 listings, HockeyApp builds).
    Md5,
    /// BLAKE3, 256 bits (dtk's own records).
    Blake3,
}

impl Algo {
    /// Every algorithm, in a fixed order.
    pub const ALL: [Algo; 4] = [Algo::Sha1, Algo::Sha256, Algo::Md5, Algo::Blake3];

    /// The name used in `ALGO:HEX`.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Sha1 => "sha1",
            Algo::Sha256 => "sha256",
            Algo::Md5 => "md5",
            Algo::Blake3 => "blake3",
        }
    }

    /// Number of hex digits of a full digest.
    pub fn hex_len(self) -> usize {
        match self {
            Algo::Sha1 => 40,
            Algo::Sha256 | Algo::Blake3 => 64,
            Algo::Md5 => 32,
        }
    }
}

impl fmt::Display for Algo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algo {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Algo::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::invalid(
                    "hash algorithm",
                    s,
                    "expected one of sha1, sha256, md5, blake3",
                )
            })
    }
}

/// One version of a source: an algorithm and a full digest, written `ALGO:HEX`.
///
/// The hex digits are kept in lower case; parsing accepts either case (the design's
/// tables show HockeyApp digests in upper case).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    algo: Algo,
    hex: String,
}

impl Version {
    /// A version from an algorithm and raw digest bytes.
    pub fn from_bytes(algo: Algo, bytes: &[u8]) -> Result<Self> {
        if bytes.len() * 2 != algo.hex_len() {
            return Err(Error::invalid(
                "version",
                hex(bytes),
                format!("a {algo} digest has {} hex digits", algo.hex_len()),
            ));
        }
        Ok(Version {
            algo,
            hex: hex(bytes),
        })
    }

    /// The algorithm.
    pub fn algo(&self) -> Algo {
        self.algo
    }

    /// The full digest in lower-case hex.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The short form: the first 8 hex digits, as in `dkt source log`.
    pub fn short(&self) -> &str {
        &self.hex[..8]
    }

    /// True when `prefix` (either `ALGO:HEX...` or bare hex digits) names this version.
    pub fn matches_prefix(&self, prefix: &str) -> bool {
        let (algo, digits) = match prefix.split_once(':') {
            Some((a, d)) => match Algo::from_str(a) {
                Ok(a) => (Some(a), d),
                Err(_) => return false,
            },
            None => (None, prefix),
        };
        algo.is_none_or(|a| a == self.algo)
            && digits.len() <= self.hex.len()
            && self.hex.as_bytes()[..digits.len()].eq_ignore_ascii_case(digits.as_bytes())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.hex)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({self})")
    }
}

impl FromStr for Version {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (algo, digits) = s.split_once(':').ok_or_else(|| {
            Error::invalid("version", s, "expected ALGO:HEX, e.g. sha1:1bf6cb20…")
        })?;
        let algo = Algo::from_str(algo).map_err(|_| {
            Error::invalid(
                "version",
                s,
                format!("unknown algorithm {algo:?} (expected sha1, sha256, md5 or blake3)"),
            )
        })?;
        if digits.len() != algo.hex_len() {
            return Err(Error::invalid(
                "version",
                s,
                format!(
                    "a {algo} digest has {} hex digits, this has {}",
                    algo.hex_len(),
                    digits.len()
                ),
            ));
        }
        if let Some(c) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(Error::invalid(
                "version",
                s,
                format!("{c:?} is not a hex digit"),
            ));
        }
        Ok(Version {
            algo,
            hex: digits.to_ascii_lowercase(),
        })
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        crate::name::parse_str(d, str::parse)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Check that `prefix` is a plausible version prefix: `ALGO:` optional, then at least
/// one hex digit.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    let digits = match prefix.split_once(':') {
        Some((a, d)) => {
            Algo::from_str(a).map_err(|_| {
                Error::invalid(
                    "version",
                    prefix,
                    format!("unknown algorithm {a:?} (expected sha1, sha256, md5 or blake3)"),
                )
            })?;
            d
        }
        None => prefix,
    };
    if digits.is_empty() {
        return Err(Error::invalid("version", prefix, "no hex digits"));
    }
    if let Some(c) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(Error::invalid(
            "version",
            prefix,
            format!("{c:?} is not a hex digit"),
        ));
    }
    Ok(())
}

/// Resolve `prefix` against `candidates`: exactly one must match.
///
/// An unknown prefix is [`Error::NotFound`]; one that matches several candidates is
/// [`Error::Ambiguous`], listing them (at most 10, then a count).
pub fn resolve_prefix<'a, T, I>(
    what: &'static str,
    prefix: &str,
    candidates: I,
    id_of: impl Fn(&T) -> String,
    matches: impl Fn(&T, &str) -> bool,
) -> Result<&'a T>
where
    I: IntoIterator<Item = &'a T>,
    T: 'a,
{
    let mut found: Vec<&'a T> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for c in candidates {
        if matches(c, prefix) && seen.insert(id_of(c)) {
            found.push(c);
        }
    }
    match found.len() {
        0 => Err(Error::not_found(what, prefix)),
        1 => Ok(found[0]),
        n => {
            let mut listed: Vec<String> = found.iter().take(10).map(|c| id_of(c)).collect();
            if n > 10 {
                listed.push(format!("and {} more", n - 10));
            }
            Err(Error::Ambiguous {
                what,
                prefix: prefix.to_owned(),
                matches: listed,
            })
        }
    }
}

/// Resolve a version prefix against a list of versions.
pub fn resolve_version<'a>(
    prefix: &str,
    versions: impl IntoIterator<Item = &'a Version>,
) -> Result<&'a Version> {
    validate_prefix(prefix)?;
    resolve_prefix(
        "version",
        prefix,
        versions,
        |v: &Version| v.to_string(),
        |v, p| v.matches_prefix(p),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_round_trip() {
        let s = "sha1:1bf6cb2021fd9f38605be50d4ebc9e18b0bf6e90";
        let v: Version = s.parse().unwrap();
        assert_eq!(v.to_string(), s);
        assert_eq!(v.short(), "1bf6cb20");
        let up: Version = "md5:0E500A4EB2A162F8098575DACED142E1".parse().unwrap();
        assert_eq!(up.hex(), "0e500a4eb2a162f8098575daced142e1");
        assert_eq!(up.algo(), Algo::Md5);
    }

    #[test]
    fn bad_versions_quote_the_value() {
        for bad in [
            "",
            "sha1",
            "sha1:",
            "crc:1234",
            "sha1:xyz",
            "md5:0E500A4E",
            "sha256:1bf6cb2021fd9f38605be50d4ebc9e18b0bf6e90",
        ] {
            let e = bad.parse::<Version>().unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
            assert!(e.is_user_error());
        }
    }

    #[test]
    fn prefix_lookup() {
        let vs: Vec<Version> = [
            "sha1:1bf6cb2021fd9f38605be50d4ebc9e18b0bf6e90",
            "sha1:1bf6dd2021fd9f38605be50d4ebc9e18b0bf6e90",
            "sha1:3dd2cc1db51828a643237c39d5ed76bb066bcad8",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(resolve_version("3dd", &vs).unwrap(), &vs[2]);
        assert_eq!(resolve_version("sha1:1BF6CB", &vs).unwrap(), &vs[0]);
        let amb = resolve_version("1bf6", &vs).unwrap_err();
        assert!(matches!(amb, Error::Ambiguous { ref matches, .. } if matches.len() == 2));
        assert!(amb.to_string().contains("1bf6cb20"));
        assert!(matches!(
            resolve_version("md5:1bf6", &vs),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            resolve_version("zz", &vs),
            Err(Error::Invalid { .. })
        ));
    }
}
