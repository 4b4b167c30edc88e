//! # dtk-remote: runs on other machines
//!
//! When a project outgrows one machine, its runs execute on workers elsewhere, through
//! engines its users already run:
//!
//! - [`pg::PgQueue`]: the run queue, a table in PostgreSQL (claims with
//!   `FOR UPDATE SKIP LOCKED`, leases, `LISTEN/NOTIFY`, versioned migrations);
//! - [`artifacts::ArtifactStore`]: inputs that live on the coordinator's disks and every
//!   output travel as tar archives in a content-addressed store, a local (or shared)
//!   directory or any S3-compatible store, checked against their BLAKE3 on arrival;
//! - [`RemoteDispatcher`]: the coordinator's side (`dkt daemon`, `dkt run` with `[queue]
//!   url` in `.dkt/config`), a [`dtk_core::remote::Dispatcher`];
//! - [`worker::serve`]: the worker's side (`dkt worker --queue URL`), which needs no copy
//!   of the project.
//!
//! The coordinator stays the only writer of the metadata: it claims each run, hands its
//! [`Ticket`](dtk_core::remote::Ticket) to the queue, publishes what comes back and
//! records it. No secret crosses the queue.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod artifacts;
mod dispatch;
pub mod pg;
mod tls;
pub mod worker;

pub use artifacts::ArtifactStore;
pub use dispatch::RemoteDispatcher;
pub use pg::PgQueue;
pub use worker::{serve, WorkerEvent, WorkerSetup, WorkerSummary};
