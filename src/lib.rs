//! # dtk: Datakit, a version-controlled data-flow manager
//!
//! This facade re-exports [`dtk_core`] (the model, the metadata store, the plugin traits)
//! and, per cargo feature, the source kinds of [`dtk_sources`].
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub use dtk_core::*;
pub use dtk_sources;

/// A registry with every source kind compiled into this build.
pub fn default_registry() -> std::sync::Arc<Registry> {
    std::sync::Arc::new(dtk_sources::registry())
}
