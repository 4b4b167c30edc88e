//! # dtk-sources: the source kinds of Datakit
//!
//! One module per kind, each behind a cargo feature of the same name:
//!
//! | feature | module | kind names | versions |
//! |---------|--------|------------|----------|
//! | `path`  | `dtk_sources::path` | `path` | `md5:` Merkle digest of the tree |
//! | `git`   | `dtk_sources::git` | `git`, `github` | `sha1:` commits |
//!
//! [`register_all`] registers every kind compiled in.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

#[cfg(feature = "git")]
pub mod git;
#[cfg(feature = "path")]
pub mod path;

use dtk_core::Registry;

/// Register every kind compiled into this crate.
pub fn register_all(registry: &mut Registry) -> &mut Registry {
    #[cfg(feature = "path")]
    registry.register(std::sync::Arc::new(path::PathKind::default()));
    #[cfg(feature = "git")]
    registry.register(std::sync::Arc::new(git::GitKind::default()));
    registry
}

/// A registry holding every kind compiled into this crate.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    register_all(&mut r);
    r
}
