//! The coordinator's side: [`RemoteDispatcher`] queues tickets and collects results.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dtk_core::remote::{Dispatcher, Ending, Shipped, Ticket, TicketResult};
use dtk_core::{Result, RunId};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::artifacts::ArtifactStore;
use crate::pg::{Collected, PgQueue};

/// How often in-flight runs are looked at when no notification came (expired leases
/// send none).
const COLLECT_EVERY: Duration = Duration::from_millis(250);

/// Runs a project's runs on the workers of a [`PgQueue`], their trees through an
/// [`ArtifactStore`] (see [`dtk_core::remote`]).
#[derive(Debug, Clone)]
pub struct RemoteDispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    queue: PgQueue,
    artifacts_url: String,
    context: dtk_core::Context,
    artifacts: tokio::sync::OnceCell<ArtifactStore>,
    waiting: Mutex<HashMap<RunId, oneshot::Sender<Collected>>>,
    collecting: AtomicBool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDispatcher")
            .field("queue", &self.queue)
            .field("artifacts", &self.artifacts_url)
            .finish_non_exhaustive()
    }
}

impl RemoteDispatcher {
    /// A dispatcher over `queue` and the artifact store at `artifacts` (opened with
    /// `context`'s settings and credentials). Nothing is connected or opened until a run
    /// needs it.
    pub fn new(queue: PgQueue, artifacts: &str, context: dtk_core::Context) -> RemoteDispatcher {
        RemoteDispatcher {
            inner: Arc::new(Inner {
                queue,
                artifacts_url: artifacts.to_owned(),
                context,
                artifacts: tokio::sync::OnceCell::new(),
                waiting: Mutex::new(HashMap::new()),
                collecting: AtomicBool::new(false),
            }),
        }
    }

    async fn artifacts(&self) -> Result<&ArtifactStore> {
        self.inner
            .artifacts
            .get_or_try_init(|| async {
                ArtifactStore::open(&self.inner.artifacts_url, &self.inner.context)
            })
            .await
    }

    /// The queue.
    pub fn queue(&self) -> &PgQueue {
        &self.inner.queue
    }

    /// Start the task that collects results, once.
    fn collector(&self) {
        if self.inner.collecting.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = inner.upgrade() else { return };
                let ids: Vec<RunId> = match inner.waiting.lock() {
                    Ok(w) => w.keys().copied().collect(),
                    Err(_) => return,
                };
                if !ids.is_empty() {
                    match inner.queue.collect(&ids).await {
                        Ok(done) => {
                            for (run, c) in done {
                                let tx = inner.waiting.lock().ok().and_then(|mut w| w.remove(&run));
                                if let Some(tx) = tx {
                                    let _ = tx.send(c);
                                }
                            }
                        }
                        Err(e) => tracing::warn!("{}", dtk_core::project::error_chain(&e)),
                    }
                }
                let wakeups = inner.queue.wakeups().clone();
                drop(inner);
                tokio::select! {
                    _ = wakeups.done.notified() => {}
                    _ = tokio::time::sleep(COLLECT_EVERY) => {}
                }
            }
        });
    }
}

#[async_trait::async_trait]
impl Dispatcher for RemoteDispatcher {
    fn artifacts_url(&self) -> String {
        self.inner.artifacts_url.clone()
    }

    async fn shipped(&self, key: &str) -> Result<Option<Shipped>> {
        self.artifacts().await?.shipped(key).await
    }

    async fn ship(&self, key: &str, root: &Path) -> Result<Shipped> {
        self.artifacts().await?.ship(key, root).await
    }

    async fn fetch(&self, tree: &Shipped, into: &Path) -> Result<()> {
        let artifacts = self.artifacts().await?;
        artifacts.fetch(tree, into).await?;
        // A run's outputs are fetched once, by the coordinator that records them.
        if tree.key.starts_with("runs/") {
            if let Err(e) = artifacts.delete(&tree.key).await {
                tracing::warn!("{}", dtk_core::project::error_chain(&e));
            }
        }
        Ok(())
    }

    async fn dispatch(&self, ticket: Ticket, cancel: CancellationToken) -> Result<TicketResult> {
        let run = ticket.run;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.inner.waiting.lock() {
            w.insert(run, tx);
        }
        if let Err(e) = self.inner.queue.enqueue(&ticket).await {
            if let Ok(mut w) = self.inner.waiting.lock() {
                w.remove(&run);
            }
            return Err(e);
        }
        self.collector();
        let collected = tokio::select! {
            c = rx => c.ok(),
            _ = cancel.cancelled() => None,
        };
        let result = match collected {
            Some(Collected::Done(r)) => r,
            Some(Collected::Cancelled) => TicketResult {
                ending: Ending::Cancelled,
                log: String::new(),
                worker: "-".to_owned(),
                corrupt: Vec::new(),
                signer: None,
                signature: None,
            },
            Some(Collected::Expired { worker }) => TicketResult {
                ending: Ending::Interrupted {
                    why: format!(
                        "its worker {worker} {} (it died, or lost the database)",
                        dtk_core::remote::WORKER_LOST
                    ),
                },
                log: String::new(),
                worker,
                corrupt: Vec::new(),
                signer: None,
                signature: None,
            },
            None => {
                // Given up here (Ctrl-C, SIGTERM): the worker is told to stop.
                if let Ok(mut w) = self.inner.waiting.lock() {
                    w.remove(&run);
                }
                self.inner.queue.abandon(&run).await?;
                return Ok(TicketResult {
                    ending: Ending::Cancelled,
                    log: String::new(),
                    worker: "-".to_owned(),
                    corrupt: Vec::new(),
                    signer: None,
                    signature: None,
                });
            }
        };
        if let Err(e) = self.inner.queue.remove(&run).await {
            tracing::warn!("{}", dtk_core::project::error_chain(&e));
        }
        // Archives the worker found corrupt go (the worker may not be allowed to delete
        // what this process stored): the next run ships them again.
        for key in &result.corrupt {
            if !key.starts_with("versions/") && !key.starts_with("runs/") {
                continue;
            }
            match self.artifacts().await {
                Ok(a) => {
                    if let Err(e) = a.delete(key).await {
                        tracing::warn!("{}", dtk_core::project::error_chain(&e));
                    }
                }
                Err(e) => tracing::warn!("{}", dtk_core::project::error_chain(&e)),
            }
        }
        Ok(result)
    }

    fn forget(&self, run: &RunId) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let queue = self.inner.queue.clone();
            let run = *run;
            handle.spawn(async move {
                if let Err(e) = queue.abandon(&run).await {
                    tracing::warn!("{}", dtk_core::project::error_chain(&e));
                }
            });
        }
    }
}
