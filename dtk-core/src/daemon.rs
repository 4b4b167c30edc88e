//! The daemon: scheduling passes one after another, every `interval`, until stopped.
//!
//! [`Project::daemon`] owns the loop that `dkt daemon` runs, so that every program
//! embedding dtk gets the same behaviour: each pass polls the sources and runs what
//! changed ([`Project::run_pass`]); runs starting and ending are reported as they happen
//! and each pass's report when it ends; a failing pass is reported and the next one
//! still comes; a stop request lets the pass in progress finish and starts no other.
//!
//! ```no_run
//! # async fn demo(project: dtk_core::Project) -> dtk_core::Result<()> {
//! use dtk_core::daemon::{DaemonEvent, DaemonOptions};
//! let stop = tokio_util::sync::CancellationToken::new();
//! let options = DaemonOptions::new(std::time::Duration::from_secs(60)).with_passes(3);
//! let summary = project
//!     .daemon(options, stop, |event| {
//!         if let DaemonEvent::PassEnded { number, result } = event {
//!             println!("pass {number}: ok = {}", result.as_ref().is_ok_and(|r| r.is_ok()));
//!         }
//!     })
//!     .await;
//! println!("{} passes, failures: {}", summary.passes, summary.failed);
//! # Ok(())
//! # }
//! ```

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::events::Event;
use crate::model::{NodeId, RunStatus};
use crate::scheduler::{PassOptions, PassReport};
use crate::RunId;
use crate::{Project, Result};

/// Options of [`Project::daemon`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DaemonOptions {
    /// The time from the start of one pass to the start of the next (a pass that takes
    /// longer is followed at once).
    pub interval: Duration,
    /// Stop after this many passes (`None`: until stopped).
    pub passes: Option<u64>,
    /// The options of each pass.
    pub pass: PassOptions,
}

impl DaemonOptions {
    /// A pass every `interval`, until stopped, one run at a time.
    pub fn new(interval: Duration) -> Self {
        DaemonOptions {
            interval,
            passes: None,
            pass: PassOptions::new(),
        }
    }

    /// Stop after `n` passes.
    pub fn with_passes(mut self, n: u64) -> Self {
        self.passes = Some(n);
        self
    }

    /// The options of each pass.
    pub fn with_pass(mut self, pass: PassOptions) -> Self {
        self.pass = pass;
        self
    }
}

/// What the daemon reports while it runs, in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum DaemonEvent<'a> {
    /// A run of the pass in progress started.
    RunStarted {
        /// The run.
        run: RunId,
        /// Its node.
        node: NodeId,
    },
    /// A run of the pass in progress ended and was recorded.
    RunFinished {
        /// The run.
        run: RunId,
        /// Its node.
        node: NodeId,
        /// How it ended.
        status: RunStatus,
    },
    /// Pass `number` (from 1) ended: its report, or why it failed as a whole.
    PassEnded {
        /// The pass, counted from 1.
        number: u64,
        /// Its report, or the error that stopped it.
        result: &'a Result<PassReport>,
    },
    /// The daemon waits this long before pass `next` (not sent when the pass took the
    /// whole interval, after the last pass, or once stopped).
    Waiting {
        /// The pass that comes next.
        next: u64,
        /// How long until it starts.
        wait: Duration,
    },
}

/// How a daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaemonSummary {
    /// Passes made.
    pub passes: u64,
    /// Whether any pass failed, or any of its runs did not succeed.
    pub failed: bool,
}

impl Project {
    /// Run scheduling passes every `options.interval` until `stop` is cancelled (the pass
    /// in progress finishes first) or `options.passes` were made, telling `on_event`
    /// what happens (see the [module docs](crate::daemon)).
    pub async fn daemon(
        &self,
        options: DaemonOptions,
        stop: CancellationToken,
        mut on_event: impl FnMut(DaemonEvent<'_>),
    ) -> DaemonSummary {
        let mut summary = DaemonSummary {
            passes: 0,
            failed: false,
        };
        let mut feed = self.subscribe();
        let forward = |event: Event, on_event: &mut dyn FnMut(DaemonEvent<'_>)| match event {
            Event::RunStarted { run, node } => on_event(DaemonEvent::RunStarted { run, node }),
            Event::RunFinished { run, node, status } => {
                on_event(DaemonEvent::RunFinished { run, node, status })
            }
            _ => {}
        };
        while !stop.is_cancelled() {
            let started = Instant::now();
            let pass = self.run_pass(options.pass.clone());
            tokio::pin!(pass);
            let result = loop {
                tokio::select! {
                    r = &mut pass => break r,
                    event = feed.recv() => {
                        if let Ok(event) = event {
                            forward(event, &mut on_event);
                        }
                    }
                }
            };
            while let Ok(event) = feed.try_recv() {
                forward(event, &mut on_event);
            }
            summary.passes += 1;
            summary.failed |= !result.as_ref().is_ok_and(PassReport::is_ok);
            on_event(DaemonEvent::PassEnded {
                number: summary.passes,
                result: &result,
            });
            if options.passes.is_some_and(|max| summary.passes >= max) {
                break;
            }
            let wait = options.interval.saturating_sub(started.elapsed());
            if wait.is_zero() || stop.is_cancelled() {
                continue;
            }
            on_event(DaemonEvent::Waiting {
                next: summary.passes + 1,
                wait,
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => {}
            }
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_are_counted_waits_announced_and_a_stop_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let project = Project::init(
            dir.path(),
            std::sync::Arc::new(crate::source::Registry::new()),
            crate::InitOptions::default(),
        )
        .unwrap();
        // Two passes over an empty pipeline: both succeed, one wait between them.
        let mut seen = Vec::new();
        let summary = project
            .daemon(
                DaemonOptions::new(Duration::from_millis(50)).with_passes(2),
                CancellationToken::new(),
                |e| {
                    seen.push(match e {
                        DaemonEvent::PassEnded { number, result } => {
                            format!("pass {number} {}", result.is_ok())
                        }
                        DaemonEvent::Waiting { next, .. } => format!("wait {next}"),
                        other => format!("{other:?}"),
                    })
                },
            )
            .await;
        assert_eq!(seen, ["pass 1 true", "wait 2", "pass 2 true"]);
        assert_eq!(
            summary,
            DaemonSummary {
                passes: 2,
                failed: false
            }
        );

        // An hour between passes: a stop during the wait ends the daemon at once.
        let stop = CancellationToken::new();
        let later = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            later.cancel();
        });
        // (A guard against a hang: an hour's wait would fail the test after a minute.)
        let summary = tokio::time::timeout(
            Duration::from_secs(60),
            project.daemon(DaemonOptions::new(Duration::from_secs(3600)), stop, |_| {}),
        )
        .await
        .expect("the stop ended the wait");
        assert_eq!(summary.passes, 1);
    }
}
