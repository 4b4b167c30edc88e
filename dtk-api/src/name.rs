//! Source names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The longest name accepted, in bytes (names become file names in the metadata store).
pub(crate) const MAX_NAME_LEN: usize = 200;

/// A validated source name.
///
/// A name is valid UTF-8, non-empty, at most 200 bytes, and contains none of
/// `:` `/` `\` `*` (the design's rule), no control characters, no bidirectional-text
/// overrides, no whitespace, and no `@{`; it does not start with `-` or `.` and does not
/// end with `.lock`. These rules keep a name from ever becoming a path, a git ref
/// expression, or an option by accident.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// Validate `s` as a source name.
    pub fn new(s: &str) -> Result<Self> {
        let bad = |reason: &str| Err(Error::invalid("source name", s, reason));
        if s.is_empty() {
            return bad("a name must not be empty");
        }
        if s.len() > MAX_NAME_LEN {
            return bad(&format!("a name is at most {MAX_NAME_LEN} bytes"));
        }
        for c in [':', '/', '\\', '*'] {
            if s.contains(c) {
                return bad(&format!("a name must not contain {c:?}"));
            }
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return bad(&format!(
                "a name must not contain control characters (found U+{:04X})",
                c as u32
            ));
        }
        if let Some(c) = s.chars().find(|c| is_bidi_control(*c)) {
            return bad(&format!(
                "a name must not contain bidirectional-text controls (found U+{:04X})",
                c as u32
            ));
        }
        if s.chars().any(char::is_whitespace) {
            return bad("a name must not contain whitespace");
        }
        if s.starts_with('-') {
            return bad("a name must not start with '-'");
        }
        if s.starts_with('.') {
            return bad("a name must not start with '.'");
        }
        if s.ends_with(".lock") {
            return bad("a name must not end with \".lock\"");
        }
        if s.contains("@{") {
            return bad("a name must not contain \"@{\"");
        }
        Ok(Name(s.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{061C}')
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FromStr for Name {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Name::new(s)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        parse_str(d, Name::new)
    }
}

/// Deserialize a string with `parse`, reading it in place when the input lends it (a
/// record decoded from bytes) rather than copying it into a `String` first; errors are
/// those of deserializing a `String`, then of `parse`.
pub(crate) fn parse_str<'de, D, T, E>(
    d: D,
    parse: impl FnOnce(&str) -> std::result::Result<T, E>,
) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    E: fmt::Display,
{
    struct Visit<F>(F);
    impl<'de, T, E: fmt::Display, F: FnOnce(&str) -> std::result::Result<T, E>>
        serde::de::Visitor<'de> for Visit<F>
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<X: serde::de::Error>(self, s: &str) -> std::result::Result<T, X> {
            (self.0)(s).map_err(X::custom)
        }
        fn visit_bytes<X: serde::de::Error>(self, b: &[u8]) -> std::result::Result<T, X> {
            match std::str::from_utf8(b) {
                Ok(s) => self.visit_str(s),
                Err(_) => Err(X::invalid_value(serde::de::Unexpected::Bytes(b), &self)),
            }
        }
    }
    d.deserialize_string(Visit(parse))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names() {
        for ok in ["pinata", "dmg", "tests-1", "ünïcödé", "a.b", "x_y", "数据"] {
            assert_eq!(Name::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn bad_names_say_why_and_quote() {
        let cases = [
            ("", "empty"),
            ("a:b", "':'"),
            ("a/b", "'/'"),
            ("a\\b", "'\\\\'"),
            ("a*", "'*'"),
            ("a\nb", "control"),
            ("a\0b", "control"),
            ("-rf", "start with '-'"),
            ("..", "start with '.'"),
            ("x.lock", ".lock"),
            ("a@{1}", "@{"),
            ("evil\u{202E}txt", "bidirectional"),
            ("a b", "whitespace"),
        ];
        for (bad, why) in cases {
            let e = Name::new(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
            assert!(e.contains(why), "{bad:?}: {e} should mention {why}");
        }
        assert!(Name::new(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }
}
