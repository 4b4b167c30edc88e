//! # dtk-sources: the source kinds of Datakit
//!
//! One module per kind, each behind a cargo feature of the same name:
//!
//! | feature | module | kind names | versions |
//! |---------|--------|------------|----------|
//! | `path`  | `dtk_sources::path` | `path` | `md5:` Merkle digest of the tree |
//! | `git`   | `dtk_sources::git` | `git`, `github` | `sha1:` commits |
//! | `docker` | `dtk_sources::docker` | `docker` | `sha256:` manifest digests |
//! | `s3`    | `dtk_sources::s3` | `s3` | `md5:` of the prefix's listing |
//! | `http`  | `dtk_sources::http` | `http` | `sha256:` of the content |
//! | `hockeyapp` | `dtk_sources::hockeyapp` | `hockeyapp` | `md5:` of each build's file |
//!
//! The `https` feature adds HTTPS to the `git` kind (rustls; off by default: it adds a TLS
//! stack and about a minute to a release build). `path` and `git` are the default features.
//!
//! [`register_all`] registers every kind compiled in.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

#[cfg(feature = "docker")]
pub mod docker;
#[cfg(feature = "git")]
pub mod git;
#[cfg(feature = "hockeyapp")]
pub mod hockeyapp;
#[cfg(feature = "http")]
pub mod http;
#[cfg(any(feature = "docker", feature = "http", feature = "hockeyapp"))]
mod net;
#[cfg(feature = "path")]
pub mod path;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(any(
    feature = "docker",
    feature = "http",
    feature = "hockeyapp",
    feature = "s3"
))]
mod speed;

use dtk_api::Registry;

/// Register every kind compiled into this crate.
pub fn register_all(registry: &mut Registry) -> &mut Registry {
    #[cfg(feature = "path")]
    registry.register(std::sync::Arc::new(path::PathKind::default()));
    #[cfg(feature = "git")]
    registry.register(std::sync::Arc::new(git::GitKind::default()));
    #[cfg(feature = "docker")]
    registry.register(std::sync::Arc::new(docker::DockerKind::default()));
    #[cfg(feature = "s3")]
    registry.register(std::sync::Arc::new(s3::S3Kind::default()));
    #[cfg(feature = "http")]
    registry.register(std::sync::Arc::new(http::HttpKind::default()));
    #[cfg(feature = "hockeyapp")]
    registry.register(std::sync::Arc::new(hockeyapp::HockeyAppKind::default()));
    registry
}

/// A registry holding every kind compiled into this crate.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    register_all(&mut r);
    r
}
