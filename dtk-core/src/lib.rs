//! # dtk-core: the model, store and plugin contract of Datakit
//!
//! Datakit (dtk) is a version-controlled data-flow manager. A pipeline is a directed
//! acyclic *bipartite* graph: **data sources** (git repositories, local paths, docker
//! images, S3 buckets, ...) feed **compute nodes** (commands), which write into other data
//! sources. dtk records every version it sees or produces, and for each produced version
//! exactly which run of which node made it from which input versions.
//!
//! This crate holds the model, the store and the engine:
//!
//! - the identifiers: [`Version`] (`ALGO:HEX`), [`Name`], [`NodeId`], [`RunId`];
//! - the records: [`SourceSpec`], [`NodeSpec`], [`RunRecord`], [`VersionRecord`], [`Link`];
//! - the [`Graph`] that keeps the flow bipartite and acyclic;
//! - the metadata [`Store`], a bare git repository in `.dkt/.git`;
//! - the [`Project`] handle that ties them together: scheduling, runs, provenance;
//! - re-exported from `dtk-api`, the plugin contract: the [`Kind`] and [`Source`] traits,
//!   the [`Registry`], [`Error`], and behind the `conformance` feature the checks every
//!   `Source` must pass.
//!
//! Most users want the `dtk` facade crate, which re-exports this one together with the
//! source kinds. A plugin author depends on `dtk-api` alone (it carries no store and no
//! git): implement [`Kind`] and [`Source`], register the kind into a [`Registry`], and
//! run `dtk_api::conformance::check_all` in the plugin's tests.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod clone;
pub mod config;
pub mod daemon;
pub mod digest;
pub mod engine;
pub(crate) use dtk_api::error;
pub mod events;
pub mod graph;
pub use dtk_api::id;
pub mod inspect;
pub mod lifecycle;
pub mod model;
mod pack;
pub use dtk_api::pattern;
pub mod pipeline;
mod process;
pub mod project;
pub mod queue;
pub mod records;
pub mod remote;
pub mod reproduce;
pub mod scheduler;
pub mod signing;
mod unnamed;
mod upgrade;
pub use dtk_api::source;
pub mod store;
pub mod sync;
pub mod views;
pub mod worker;

#[cfg(feature = "conformance")]
pub use dtk_api::conformance;

pub use config::{Config, Secrets};
pub use dtk_api::Name;
pub use dtk_api::{resolve_version, Algo, Version};
pub use dtk_api::{
    Capabilities, Context, Fields, Kind, NewSource, NoProgress, Progress, PublishOptions, Registry,
    Source, Transfer, Verification, VersionInfo,
};
pub use dtk_api::{Error, IoResultExt, Result};
pub use engine::{NodeFile, RunOptions, RunOutcome};
pub use graph::Graph;
pub use inspect::{InspectOptions, Manifest, VerifyReport};
pub use model::{
    Command, Link, NodeId, NodeSpec, OnConflict, Origin, Retry, RunId, RunRecord, RunStatus,
    ScriptRef, SourceSpec, SourceVersion, VersionRecord,
};
pub use project::{AddSource, InitOptions, PinRequest, Project, UpdateOutcome, UpdateRequest};
pub use scheduler::{PassOptions, PassReport};
pub use signing::{KeySetup, SigningKey};
pub use store::Store;
pub use worker::{WorkerOptions, WorkerReport};

/// Re-exported so plugins use the same `async_trait` as the traits.
pub use dtk_api::async_trait;
