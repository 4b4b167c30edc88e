//! A feed of what happens in a project, as it happens: runs starting and finishing, the
//! lines they print, versions recorded, what a worker waits for.
//!
//! ```no_run
//! # async fn f(project: dtk_core::Project) {
//! let mut feed = project.subscribe();
//! while let Ok(event) = feed.recv().await {
//!     if let dtk_core::events::Event::LogLine { node, line, .. } = event {
//!         eprintln!("[{}] {line}", node.short());
//!     }
//! }
//! # }
//! ```
//!
//! The feed is in-process (a broadcast channel): a subscriber that falls behind by more
//! than [`CAPACITY`] events loses the oldest ones (`RecvError::Lagged`) and carries on;
//! nothing waits for subscribers. Log lines are redacted of every secret before they are
//! sent.

use serde::Serialize;
use tokio::sync::broadcast;

use crate::{Name, NodeId, RunId, RunStatus, Version};

/// How many events a subscriber may fall behind before it loses the oldest.
pub const CAPACITY: usize = 4096;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Event {
    /// A run started executing here.
    RunStarted {
        /// The run.
        run: RunId,
        /// Its node.
        node: NodeId,
    },
    /// A line a running process printed (stdout and stderr together), redacted.
    LogLine {
        /// The run.
        run: RunId,
        /// Its node.
        node: NodeId,
        /// The line, without its end.
        line: String,
    },
    /// A run ended and its result was recorded.
    RunFinished {
        /// The run.
        run: RunId,
        /// Its node.
        node: NodeId,
        /// How it ended.
        status: RunStatus,
    },
    /// A new version of a source was recorded.
    VersionRecorded {
        /// The source.
        source: Name,
        /// The version.
        version: Version,
    },
    /// A source's state changed (pinned, unpinned, frozen, thawed).
    SourceChanged {
        /// The source.
        source: Name,
    },
    /// The project's history moved (another process recorded something): views read
    /// before are stale.
    Changed,
    /// A worker has nothing to do, and says why.
    Waiting {
        /// For example `no pending run matches labels linux,x86_64`.
        message: String,
    },
}

/// The sending side of a project's feed (cheap to clone; sending with no subscriber costs
/// next to nothing).
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Events {
    /// Send `event` to every subscriber (none is fine).
    pub fn send(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    /// A new subscriber, which sees the events sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
