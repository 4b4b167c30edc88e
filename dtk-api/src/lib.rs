//! # dtk-api: the contract between Datakit and its source kinds
//!
//! Datakit (dtk) is a version-controlled data-flow manager: data sources (git
//! repositories, local paths, docker images, S3 buckets, ...) feed compute nodes, which
//! write into other sources, and dtk records where every version came from. This crate
//! is what a *source kind* needs to plug into it, and nothing more: no metadata store, no
//! git, no engine.
//!
//! - the identifiers: [`Version`] (`ALGO:HEX`), [`Algo`], [`Name`];
//! - a source's declaration and state as a kind opens it: [`SourceSpec`];
//! - the plugin traits: [`Kind`] (what a kind of source is) and [`Source`] (one source of
//!   that kind), their options and the [`Registry`] kinds are registered into;
//! - the [`Error`] every operation returns, with the variants callers branch on;
//! - the project's [`Secrets`] (kinds read their credentials from them);
//! - tag [`pattern`]s (`release/*`), for kinds that follow several refs;
//! - behind the `conformance` feature, the checks every [`Source`] must pass.
//!
//! A plugin author depends on `dtk-api` alone: implement [`Kind`] and [`Source`],
//! register the kind into a [`Registry`], and run `dtk_api::conformance::check_all` in the
//! plugin's tests. `dtk-core` (the store, the engine, provenance) and the `dtk` facade
//! re-export everything here at the same paths, so a kind written against this crate
//! works unchanged in any program that links dtk.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod error;
pub mod id;
mod name;
pub mod pattern;
pub mod secrets;
pub mod source;
mod spec;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::{Error, IoResultExt, Result};
pub use id::{resolve_version, Algo, Version};
pub use name::Name;
pub use secrets::Secrets;
pub use source::{
    BlockingPoll, Capabilities, Context, Fields, Kind, NewSource, NoProgress, Progress,
    PublishOptions, Registry, Source, Transfer, Verification, VersionInfo,
};
pub use spec::SourceSpec;

/// Re-exported so plugins use the same `async_trait` as the traits.
pub use async_trait::async_trait;
