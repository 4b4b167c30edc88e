//! A source's declaration and state, as the store keeps it and as a kind opens it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Name, Version};

/// What a user said about a source: where it is and which part of it to follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSpec {
    /// The source's name, unique in the project.
    pub name: Name,
    /// The kind's name (`git`, `path`, ...). Stored as given so that projects can hold kinds
    /// this build does not know.
    pub kind: String,
    /// Where the source is, normalized by its kind (an absolute path, a URL, ...).
    pub location: String,
    /// The tag (branch, tag, docker tag, ...), if the kind has tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A sub-path inside the source, relative, `/`-separated, without `..`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The source this one was derived from (`dkt source add NEW PARENT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Name>,
    /// The version the source is pinned to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<Version>,
    /// A frozen source is never polled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub frozen: bool,
    /// The latest version known from the last poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<Version>,
    /// For a source whose tag is a pattern ([`crate::pattern`]): the tip of each matching
    /// ref at the last poll, by ref name. Nodes run on each of them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub heads: BTreeMap<String, Version>,
    /// True when dtk created the location (a temporary directory) and removes it with the
    /// source.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub owned: bool,
}

impl SourceSpec {
    /// A spec with only name, kind and location set.
    pub fn new(name: Name, kind: impl Into<String>, location: impl Into<String>) -> Self {
        SourceSpec {
            name,
            kind: kind.into(),
            location: location.into(),
            tag: None,
            path: None,
            parent: None,
            pinned: None,
            frozen: false,
            latest: None,
            heads: BTreeMap::new(),
            owned: false,
        }
    }

    /// The version runs use: the pinned one, else the latest known.
    pub fn current(&self) -> Option<&Version> {
        self.pinned.as_ref().or(self.latest.as_ref())
    }

    /// True when the tag is a pattern ([`crate::pattern`]).
    pub fn is_pattern(&self) -> bool {
        self.tag.as_deref().is_some_and(crate::pattern::is_pattern)
    }
}
