//! Tag patterns: a source whose tag is a glob (`release/*`, `v1.*`) follows every branch,
//! tag or image tag the glob matches.
//!
//! A tag is a pattern when it contains `*`, `?` or `[`: none of them may appear in a git
//! ref name or an OCI tag, so a pattern never shadows a real name. The syntax is the
//! shell's, with `/` as the separator as in git's ref globs:
//!
//! - `*` matches any run of characters except `/` (`release/*` matches `release/1.0`,
//!   not `release/1.0/rc`);
//! - `**` matches any run of characters, `/` included (`feature/**`);
//! - `?` matches one character except `/`;
//! - `[abc]`, `[a-z]`, `[!0-9]` match one character of (or not of) the set.
//!
//! ```
//! use dtk_api::pattern::TagPattern;
//! let p = TagPattern::new("release/*").unwrap();
//! assert!(p.matches("release/1.0"));
//! assert!(!p.matches("release/1.0/rc"));
//! assert!(!p.matches("main"));
//! assert!(dtk_api::pattern::is_pattern("v1.*"));
//! assert!(!dtk_api::pattern::is_pattern("feature/x"));
//! ```

use crate::{Error, Result};

/// True when `tag` is a pattern (contains `*`, `?` or `[`).
pub fn is_pattern(tag: &str) -> bool {
    tag.contains(['*', '?', '['])
}

/// The field that carries, in each version of a pattern source, the name of the ref
/// (branch, tag, image tag) it is the tip of.
pub const REF_FIELD: &str = "REF";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`
    One,
    /// `*`
    Star,
    /// `**`
    DoubleStar,
    /// `[...]`: ranges, negated.
    Class(Vec<(char, char)>, bool),
}

/// A compiled tag pattern (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagPattern {
    text: String,
    tokens: Vec<Token>,
}

impl TagPattern {
    /// Compile `text`; an unclosed `[` or an empty pattern is [`Error::Invalid`] quoting it.
    pub fn new(text: &str) -> Result<TagPattern> {
        if text.trim().is_empty() {
            return Err(Error::invalid("tag pattern", text, "it is empty"));
        }
        let chars: Vec<char> = text.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    tokens.push(Token::DoubleStar);
                    i += 2;
                    while chars.get(i) == Some(&'*') {
                        i += 1;
                    }
                    continue;
                }
                '*' => tokens.push(Token::Star),
                '?' => tokens.push(Token::One),
                '[' => {
                    let mut j = i + 1;
                    let negated = matches!(chars.get(j), Some('!') | Some('^'));
                    if negated {
                        j += 1;
                    }
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let Some(&c) = chars.get(j) else {
                            return Err(Error::invalid(
                                "tag pattern",
                                text,
                                "a `[` is never closed by `]`",
                            ));
                        };
                        if c == ']' && !first {
                            break;
                        }
                        first = false;
                        if chars.get(j + 1) == Some(&'-')
                            && chars.get(j + 2).is_some_and(|&e| e != ']')
                        {
                            let end = chars[j + 2];
                            if end < c {
                                return Err(Error::invalid(
                                    "tag pattern",
                                    text,
                                    format!("the range {c}-{end} is reversed"),
                                ));
                            }
                            ranges.push((c, end));
                            j += 3;
                        } else {
                            ranges.push((c, c));
                            j += 1;
                        }
                    }
                    tokens.push(Token::Class(ranges, negated));
                    i = j + 1;
                    continue;
                }
                c => tokens.push(Token::Literal(c)),
            }
            i += 1;
        }
        Ok(TagPattern {
            text: text.to_owned(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        let chars: Vec<char> = name.chars().collect();
        match_at(&self.tokens, &chars)
    }
}

impl std::fmt::Display for TagPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn match_at(tokens: &[Token], s: &[char]) -> bool {
    let Some((t, rest)) = tokens.split_first() else {
        return s.is_empty();
    };
    match t {
        Token::Literal(c) => s.first() == Some(c) && match_at(rest, &s[1..]),
        Token::One => s.first().is_some_and(|&c| c != '/') && match_at(rest, &s[1..]),
        Token::Class(ranges, negated) => {
            s.first().is_some_and(|&c| {
                let inside = ranges.iter().any(|&(a, b)| a <= c && c <= b);
                c != '/' && inside != *negated
            }) && match_at(rest, &s[1..])
        }
        Token::Star => {
            for i in 0..=s.len() {
                if match_at(rest, &s[i..]) {
                    return true;
                }
                if s.get(i) == Some(&'/') {
                    return false;
                }
            }
            false
        }
        Token::DoubleStar => (0..=s.len()).any(|i| match_at(rest, &s[i..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_documented() {
        let cases = [
            ("release/*", "release/1.0", true),
            ("release/*", "release/", true),
            ("release/*", "release/1.0/rc", false),
            ("release/*", "releases/1.0", false),
            ("release/**", "release/1.0/rc", true),
            ("v1.*", "v1.2", true),
            ("v1.*", "v1", false),
            ("v1.*", "v2.1", false),
            ("v?", "v1", true),
            ("v?", "v12", false),
            ("v[0-9]", "v7", true),
            ("v[!0-9]", "v7", false),
            ("v[!0-9]", "vx", true),
            ("*", "main", true),
            ("*", "feature/x", false),
            ("**", "feature/x", true),
            ("*-rc", "1.0-rc", true),
        ];
        for (p, name, want) in cases {
            assert_eq!(
                TagPattern::new(p).unwrap().matches(name),
                want,
                "{p:?} on {name:?}"
            );
        }
    }

    #[test]
    fn bad_patterns_are_refused_quoting_them() {
        for bad in ["v[1", "", "v[9-0]"] {
            let e = TagPattern::new(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn names_are_not_patterns() {
        assert!(!is_pattern("feature/x"));
        assert!(!is_pattern("v1.0"));
        assert!(is_pattern("release/*"));
        assert!(is_pattern("v[12]"));
    }
}
