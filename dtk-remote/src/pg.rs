//! The run queue on PostgreSQL.
//!
//! One table of runs (`dkt_runs`) used as a queue the way job systems use PostgreSQL: a
//! worker claims the oldest pending run whose labels are all among its own with
//! `SELECT ... FOR UPDATE SKIP LOCKED` in one statement; a claim is a lease the worker
//! renews; the coordinator takes an expired claim back (the attempt is recorded
//! `interrupted` and run again). A trigger sends `NOTIFY` on `dkt_runs` when a run is
//! queued (idle workers wake at once instead of polling), on `dkt_done` when a run's state
//! changes and on `dkt_cancel` when a run is cancelled. Workers are listed in
//! `dkt_workers` with their heartbeat.
//!
//! The schema is dkt's own, created and migrated by dkt (versioned migrations in
//! `dkt_migrations`, applied under an advisory lock); a database whose schema is newer than
//! this dkt knows is refused. A lost connection (a database restart) is re-established
//! with back-off for up to [`RECONNECT_FOR`]; every operation is safe to retry.

use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use dtk_core::remote::{Ticket, TicketResult};
use dtk_core::{Error, Result, RunId};
use futures::StreamExt;
use tokio::sync::{Mutex, Notify};
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// How long an operation keeps trying to reach the database before it fails.
pub const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// The schema migrations, in order: (version, SQL).
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"
CREATE TABLE dkt_runs (
    id text PRIMARY KEY,
    node text NOT NULL,
    attempt integer NOT NULL,
    labels text[] NOT NULL,
    ticket jsonb NOT NULL,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'cancelled', 'abandoned')),
    worker text,
    cancel boolean NOT NULL DEFAULT false,
    lease_until timestamptz,
    result jsonb,
    enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    claimed_at timestamptz,
    ended_at timestamptz
);
CREATE INDEX dkt_runs_pending ON dkt_runs (enqueued_at, id) WHERE state = 'pending';
CREATE INDEX dkt_runs_worker ON dkt_runs (worker) WHERE state = 'running';
CREATE TABLE dkt_workers (
    id text PRIMARY KEY,
    labels text[] NOT NULL,
    capacity integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION dkt_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'pending' AND (TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM 'pending') THEN
        PERFORM pg_notify('dkt_runs', NEW.id);
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.state IS DISTINCT FROM OLD.state THEN
        PERFORM pg_notify('dkt_done', NEW.id);
    END IF;
    IF NEW.cancel AND (TG_OP = 'INSERT' OR NOT OLD.cancel) THEN
        PERFORM pg_notify('dkt_cancel', NEW.id);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER dkt_runs_notify AFTER INSERT OR UPDATE ON dkt_runs
    FOR EACH ROW EXECUTE FUNCTION dkt_notify();
"#,
)];

/// A key for `pg_advisory_lock` while migrating ("dkt" in ASCII, then 1).
const MIGRATION_LOCK: i64 = 0x646b_7400_0000_0001;

/// Wake-ups from the database's notifications.
#[derive(Debug, Default)]
pub struct Wakeups {
    /// A run was queued.
    pub queued: Notify,
    /// A run's state changed.
    pub done: Notify,
    /// A run was cancelled.
    pub cancelled: Notify,
}

/// A claimed run, as a worker sees it.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The run's ticket.
    pub ticket: Ticket,
}

/// A run that has ended (or was given up), as the coordinator collects it.
#[derive(Debug, Clone)]
pub enum Collected {
    /// A worker sent its result.
    Done(TicketResult),
    /// The run was cancelled before a worker claimed it.
    Cancelled,
    /// The worker holding it stopped renewing its lease.
    Expired {
        /// That worker.
        worker: String,
    },
}

/// A worker, as `dkt worker list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerRow {
    /// `host:pid`.
    pub id: String,
    /// Its labels.
    pub labels: Vec<String>,
    /// How many runs it takes at once.
    pub capacity: i32,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_s: f64,
    /// The runs it holds.
    pub runs: Vec<String>,
}

/// A run in the queue, as `dkt queue list` and `dkt node cancel` see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRow {
    /// The run ID.
    pub id: String,
    /// Its node.
    pub node: String,
    /// `pending`, `running`, `done`, `cancelled` or `abandoned`.
    pub state: String,
    /// The worker holding it.
    pub worker: Option<String>,
    /// Whether it was cancelled.
    pub cancel: bool,
}

/// The run queue (see the [module docs](self)). Connects on first use.
#[derive(Clone)]
pub struct PgQueue {
    config: tokio_postgres::Config,
    tls: Option<crate::tls::Tls>,
    shown: String,
    client: Arc<Mutex<Option<Arc<Client>>>>,
    wakeups: Arc<Wakeups>,
}

impl std::fmt::Debug for PgQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgQueue")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

impl PgQueue {
    /// A queue at `url` (`postgres://USER@HOST[:PORT]/DB`), with `password` if the server
    /// asks for one. No connection yet.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a URL that is not one, or that holds a password (it belongs
    /// in the secret or the environment variable `PGPASSWORD`).
    pub fn new(url: &str, password: Option<String>) -> Result<PgQueue> {
        if dtk_core::config::url_has_password(url) {
            return Err(Error::invalid(
                "run queue URL",
                redact_url(url),
                "holds a password: give it as the secret or environment variable PGPASSWORD instead",
            ));
        }
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| Error::invalid("run queue URL", url, e.to_string()))?;
        // TLS only when asked for: `prefer` (the default) connects in the clear, as a
        // verified TLS connection to a server with a self-signed certificate would fail.
        let tls = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            Some(crate::tls::Tls::new()?)
        } else {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            None
        };
        if let Some(p) = password {
            config.password(p);
        }
        config.application_name("dkt");
        config.connect_timeout(Duration::from_secs(10));
        config.keepalives_idle(Duration::from_secs(30));
        Ok(PgQueue {
            config,
            tls,
            shown: url.to_owned(),
            client: Arc::new(Mutex::new(None)),
            wakeups: Arc::new(Wakeups::default()),
        })
    }

    /// The queue's URL, as shown in messages (no password).
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// What the database's notifications wake.
    pub fn wakeups(&self) -> &Arc<Wakeups> {
        &self.wakeups
    }

    fn service(&self) -> String {
        format!("run queue {}", self.shown)
    }

    fn error(&self, what: &str, e: tokio_postgres::Error) -> Error {
        Error::Service {
            service: self.service(),
            message: format!("{what}: {}", describe(&e)),
            source: Some(Box::new(e)),
        }
    }

    /// A connected client: the current one, or a new one (migrated, listening).
    async fn client(&self) -> Result<Arc<Client>> {
        self.connected().await.map_err(|(e, _)| e)
    }

    /// [`client`](Self::client), saying whether a failure may pass (the server is down
    /// or restarting) or will not (refused credentials, no such database).
    async fn connected(&self) -> std::result::Result<Arc<Client>, (Error, bool)> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let connected = match &self.tls {
            Some(tls) => self
                .config
                .connect(tls.clone())
                .await
                .map(|(c, conn)| (c, Box::pin(conn) as Pin<Box<dyn Messages>>)),
            None => self
                .config
                .connect(NoTls)
                .await
                .map(|(c, conn)| (c, Box::pin(conn) as Pin<Box<dyn Messages>>)),
        };
        let (mut client, mut connection) = match connected {
            Ok(x) => x,
            Err(e) => {
                let transient = lost(&e);
                return Err((self.error("cannot connect", e), transient));
            }
        };
        let wakeups = self.wakeups.clone();
        tokio::spawn(async move {
            let mut messages =
                futures::stream::poll_fn(move |cx| connection.as_mut().poll_messages(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => match n.channel() {
                        "dkt_runs" => wakeups.queued.notify_waiters(),
                        "dkt_done" => wakeups.done.notify_waiters(),
                        "dkt_cancel" => wakeups.cancelled.notify_waiters(),
                        _ => {}
                    },
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "run queue connection ended");
                        break;
                    }
                }
            }
            // Whoever waits looks again (and reconnects).
            wakeups.queued.notify_waiters();
            wakeups.done.notify_waiters();
            wakeups.cancelled.notify_waiters();
        });
        migrate(&mut client).await.map_err(|e| match e {
            Migration::Db(e) => {
                let transient = lost(&e);
                (self.error("cannot migrate the schema", e), transient)
            }
            Migration::TooNew(v) => (
                Error::service(
                    self.service(),
                    format!(
                        "its schema is version {v}, newer than this dkt knows ({}): upgrade dkt",
                        MIGRATIONS.len()
                    ),
                ),
                false,
            ),
        })?;
        client
            .batch_execute("LISTEN dkt_runs; LISTEN dkt_done; LISTEN dkt_cancel")
            .await
            .map_err(|e| {
                let transient = lost(&e);
                (self.error("cannot listen", e), transient)
            })?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Run `op` with a connected client, reconnecting (with back-off, for up to
    /// [`RECONNECT_FOR`]) when the connection is lost.
    async fn with<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: Fn(Arc<Client>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    {
        let deadline = tokio::time::Instant::now() + RECONNECT_FOR;
        let mut wait = Duration::from_millis(100);
        let mut warned = false;
        loop {
            let e: Error = match self.connected().await {
                Ok(c) => match op(c.clone()).await {
                    Ok(v) => return Ok(v),
                    Err(e) if lost(&e) || c.is_closed() => self.error(what, e),
                    Err(e) => return Err(self.error(what, e)),
                },
                Err((e, true)) => e,
                Err((e, false)) => return Err(e),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(e);
            }
            if !warned {
                tracing::warn!("{}; reconnecting", dtk_core::project::error_chain(&e));
                warned = true;
            }
            *self.client.lock().await = None;
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// Connect now (and create or migrate the schema): to fail early on a bad URL.
    pub async fn check(&self) -> Result<()> {
        self.client().await.map(|_| ())
    }

    /// Queue `ticket`. A run already queued under its ID is left as it is, unless it was
    /// cancelled or given up (then it is queued afresh).
    pub async fn enqueue(&self, ticket: &Ticket) -> Result<()> {
        let json = serde_json::to_value(ticket)
            .map_err(|e| Error::service(self.service(), format!("cannot encode a ticket: {e}")))?;
        let id = ticket.run.to_hex();
        let node = ticket.node.to_hex();
        let attempt = ticket.attempt as i32;
        let labels = ticket.labels.clone();
        self.with("cannot queue a run", |c| {
            let (json, id, node, labels) = (json.clone(), id.clone(), node.clone(), labels.clone());
            async move {
                c.execute(
                    "INSERT INTO dkt_runs (id, node, attempt, labels, ticket) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (id) DO UPDATE SET ticket = EXCLUDED.ticket, state = 'pending',
                        worker = NULL, cancel = false, lease_until = NULL, result = NULL,
                        enqueued_at = clock_timestamp(), claimed_at = NULL, ended_at = NULL
                     WHERE dkt_runs.state IN ('cancelled', 'abandoned')",
                    &[&id, &node, &attempt, &labels, &json],
                )
                .await
            }
        })
        .await?;
        Ok(())
    }

    /// Claim the oldest pending run whose labels are all among `labels`, for `worker`,
    /// with a lease of `lease`.
    pub async fn claim(
        &self,
        worker: &str,
        labels: &[String],
        lease: Duration,
    ) -> Result<Option<Claimed>> {
        let labels = labels.to_vec();
        let ms = lease.as_millis() as i64;
        let row = self
            .with("cannot claim a run", |c| {
                let labels = labels.clone();
                async move {
                    c.query_opt(
                        "UPDATE dkt_runs SET state = 'running', worker = $1,
                            claimed_at = clock_timestamp(),
                            lease_until = clock_timestamp() + $3::bigint * interval '1 millisecond'
                         WHERE id = (SELECT id FROM dkt_runs
                                     WHERE state = 'pending' AND labels <@ $2::text[]
                                     ORDER BY enqueued_at, id
                                     LIMIT 1 FOR UPDATE SKIP LOCKED)
                         RETURNING ticket",
                        &[&worker, &labels, &ms],
                    )
                    .await
                }
            })
            .await?;
        let Some(row) = row else { return Ok(None) };
        let json: serde_json::Value = row.get(0);
        let ticket: Ticket = serde_json::from_value(json).map_err(|e| {
            Error::service(
                self.service(),
                format!("a queued ticket is unreadable: {e}"),
            )
        })?;
        Ok(Some(Claimed { ticket }))
    }

    /// Renew `worker`'s lease on `run`: `None` when the claim is gone (taken back),
    /// `Some(true)` when the run was cancelled.
    pub async fn renew(&self, run: &RunId, worker: &str, lease: Duration) -> Result<Option<bool>> {
        let id = run.to_hex();
        let ms = lease.as_millis() as i64;
        let row = self
            .with("cannot renew a lease", |c| {
                let id = id.clone();
                async move {
                    c.query_opt(
                        "UPDATE dkt_runs
                         SET lease_until = clock_timestamp() + $3::bigint * interval '1 millisecond'
                         WHERE id = $1 AND worker = $2 AND state = 'running'
                         RETURNING cancel",
                        &[&id, &worker, &ms],
                    )
                    .await
                }
            })
            .await?;
        Ok(row.map(|r| r.get::<_, bool>(0)))
    }

    /// Send `worker`'s result for `run`: `false` when its claim was taken back meanwhile
    /// (the result is then not used). Safe to repeat.
    pub async fn finish(&self, run: &RunId, worker: &str, result: &TicketResult) -> Result<bool> {
        let id = run.to_hex();
        let json = serde_json::to_value(result)
            .map_err(|e| Error::service(self.service(), format!("cannot encode a result: {e}")))?;
        let n = self
            .with("cannot send a result", |c| {
                let (id, json) = (id.clone(), json.clone());
                async move {
                    c.execute(
                        "UPDATE dkt_runs SET state = 'done', result = $3,
                            ended_at = clock_timestamp(), lease_until = NULL
                         WHERE id = $1 AND worker = $2
                           AND (state = 'running' OR (state = 'done' AND result = $3))",
                        &[&id, &worker, &json],
                    )
                    .await
                }
            })
            .await?;
        Ok(n == 1)
    }

    /// Cancel `run`: a pending run ends at once, a running one is stopped by its worker.
    /// `false` when the run is not in the queue (or has ended).
    pub async fn cancel(&self, run: &str) -> Result<bool> {
        let id = run.to_owned();
        let n = self
            .with("cannot cancel a run", |c| {
                let id = id.clone();
                async move {
                    c.execute(
                        "UPDATE dkt_runs SET cancel = true,
                            state = CASE WHEN state = 'pending' THEN 'cancelled' ELSE state END
                         WHERE id = $1 AND state IN ('pending', 'running')",
                        &[&id],
                    )
                    .await
                }
            })
            .await?;
        Ok(n == 1)
    }

    /// The coordinator gave `run` up: a pending run is withdrawn, a running one is
    /// cancelled (its worker stops it) and its result will not be used.
    pub async fn abandon(&self, run: &RunId) -> Result<()> {
        let id = run.to_hex();
        self.with("cannot withdraw a run", |c| {
            let id = id.clone();
            async move {
                c.execute(
                    "UPDATE dkt_runs SET cancel = true, state = 'abandoned'
                     WHERE id = $1 AND state IN ('pending', 'running', 'done')",
                    &[&id],
                )
                .await
            }
        })
        .await?;
        Ok(())
    }

    /// Of `runs`, those that have ended (or were cancelled before a claim, or whose
    /// worker's lease expired: those are taken back now, atomically).
    pub async fn collect(&self, runs: &[RunId]) -> Result<Vec<(RunId, Collected)>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = runs.iter().map(RunId::to_hex).collect();
        let rows = self
            .with("cannot read results", |c| {
                let ids = ids.clone();
                async move {
                    // Expired claims are taken back in the same statement that reports them.
                    c.query(
                        "WITH expired AS (
                            UPDATE dkt_runs SET state = 'abandoned', cancel = true
                            WHERE id = ANY($1) AND state = 'running' AND lease_until < clock_timestamp()
                            RETURNING id, 'expired'::text AS state, worker, NULL::jsonb AS result)
                         SELECT id, state, worker, result FROM dkt_runs
                            WHERE id = ANY($1) AND state IN ('done', 'cancelled')
                         UNION ALL SELECT id, state, worker, result FROM expired",
                        &[&ids],
                    )
                    .await
                }
            })
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let id: String = row.get(0);
            let state: String = row.get(1);
            let Some(run) = runs.iter().find(|r| r.to_hex() == id) else {
                continue;
            };
            let collected = match state.as_str() {
                "done" => {
                    let json: Option<serde_json::Value> = row.get(3);
                    let result: TicketResult = json
                        .and_then(|j| serde_json::from_value(j).ok())
                        .ok_or_else(|| {
                            Error::service(
                                self.service(),
                                format!("the result of run {id} is unreadable"),
                            )
                        })?;
                    Collected::Done(result)
                }
                "cancelled" => Collected::Cancelled,
                _ => Collected::Expired {
                    worker: row
                        .get::<_, Option<String>>(2)
                        .unwrap_or_else(|| "-".to_owned()),
                },
            };
            out.push((*run, collected));
        }
        Ok(out)
    }

    /// Forget `run` (its result was used).
    pub async fn remove(&self, run: &RunId) -> Result<()> {
        let id = run.to_hex();
        self.with("cannot remove a run", |c| {
            let id = id.clone();
            async move {
                c.execute("DELETE FROM dkt_runs WHERE id = $1", &[&id])
                    .await
            }
        })
        .await?;
        Ok(())
    }

    /// Say that `worker` is alive, with its labels and capacity.
    pub async fn heartbeat(&self, worker: &str, labels: &[String], capacity: usize) -> Result<()> {
        let labels = labels.to_vec();
        let capacity = capacity as i32;
        self.with("cannot record a heartbeat", |c| {
            let labels = labels.clone();
            async move {
                c.execute(
                    "INSERT INTO dkt_workers (id, labels, capacity) VALUES ($1, $2, $3)
                     ON CONFLICT (id) DO UPDATE SET labels = EXCLUDED.labels,
                        capacity = EXCLUDED.capacity, heartbeat = clock_timestamp()",
                    &[&worker, &labels, &capacity],
                )
                .await
            }
        })
        .await?;
        Ok(())
    }

    /// `worker` stops.
    pub async fn leave(&self, worker: &str) -> Result<()> {
        self.with("cannot remove a worker", |c| async move {
            c.execute("DELETE FROM dkt_workers WHERE id = $1", &[&worker])
                .await
        })
        .await?;
        Ok(())
    }

    /// The workers seen in the last `within`.
    pub async fn workers(&self, within: Duration) -> Result<Vec<WorkerRow>> {
        let secs = within.as_secs_f64();
        let rows = self
            .with("cannot list workers", |c| async move {
                c.query(
                    "SELECT w.id, w.labels, w.capacity,
                        extract(epoch FROM clock_timestamp() - w.heartbeat)::float8,
                        array(SELECT r.id FROM dkt_runs r
                              WHERE r.worker = w.id AND r.state = 'running' ORDER BY r.id)
                     FROM dkt_workers w
                     WHERE w.heartbeat > clock_timestamp() - $1::float8 * interval '1 second'
                     ORDER BY w.id",
                    &[&secs],
                )
                .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| WorkerRow {
                id: r.get(0),
                labels: r.get(1),
                capacity: r.get(2),
                heartbeat_age_s: r.get(3),
                runs: r.get(4),
            })
            .collect())
    }

    /// The runs in the queue whose ID starts with `prefix` (all with an empty prefix).
    pub async fn runs(&self, prefix: &str) -> Result<Vec<RunRow>> {
        let pattern = format!("{}%", prefix.replace(['%', '_', '\\'], ""));
        let rows = self
            .with("cannot list runs", |c| {
                let pattern = pattern.clone();
                async move {
                    c.query(
                        "SELECT id, node, state, worker, cancel FROM dkt_runs
                         WHERE id LIKE $1 ORDER BY enqueued_at, id",
                        &[&pattern],
                    )
                    .await
                }
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| RunRow {
                id: r.get(0),
                node: r.get(1),
                state: r.get(2),
                worker: r.get(3),
                cancel: r.get(4),
            })
            .collect())
    }
}

/// A connection's message stream, whatever its transport.
trait Messages: Send {
    fn poll_messages(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<AsyncMessage, tokio_postgres::Error>>>;
}

impl<S, T> Messages for tokio_postgres::Connection<S, T>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    fn poll_messages(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<AsyncMessage, tokio_postgres::Error>>> {
        self.get_mut().poll_message(cx)
    }
}

/// Whether `e` means the connection is gone (worth reconnecting).
fn lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        // admin_shutdown, crash_shutdown, cannot_connect_now
        return matches!(db.code().code(), "57P01" | "57P02" | "57P03");
    }
    // A network failure is; a refused certificate, a bad address or a protocol error is
    // not (it would fail the same way again).
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::BrokenPipe
                    | K::UnexpectedEof
                    | K::TimedOut
                    | K::NotConnected
                    | K::Interrupted
            );
        }
        source = s.source();
    }
    false
}

/// The message of `e` with its cause (tokio-postgres puts the detail in the source).
fn describe(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    match (e.as_db_error(), e.source()) {
        (Some(db), _) => db.to_string(),
        (None, Some(s)) => format!("{e}: {s}"),
        (None, None) => e.to_string(),
    }
}

/// `url` with any password replaced.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

enum Migration {
    Db(tokio_postgres::Error),
    TooNew(i32),
}

impl From<tokio_postgres::Error> for Migration {
    fn from(e: tokio_postgres::Error) -> Self {
        Migration::Db(e)
    }
}

/// Bring the schema up to date, under an advisory lock (one process migrates at a time).
async fn migrate(client: &mut Client) -> std::result::Result<(), Migration> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS dkt_migrations (
                    version integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT clock_timestamp())",
            )
            .await?;
        let current: i32 = client
            .query_one("SELECT coalesce(max(version), 0) FROM dkt_migrations", &[])
            .await?
            .get(0);
        if current > MIGRATIONS.len() as i32 {
            return Err(Migration::TooNew(current));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            let tx = client.transaction().await?;
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO dkt_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            tx.commit().await?;
            tracing::info!(version, "run queue schema migrated");
        }
        Ok(())
    }
    .await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_get_in() {
        let err = PgQueue::new("postgres://dkt:hunter2@127.0.0.1/q", None)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("PGPASSWORD"), "{err}");
        let q = PgQueue::new("postgres://dkt@127.0.0.1:5999/q", Some("hunter2".into())).unwrap();
        assert!(!format!("{q:?}").contains("hunter2"));
        assert_eq!(redact_url("postgres://a:b@h/d"), "postgres://a:***@h/d");
    }
}
