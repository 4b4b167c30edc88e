//! `dkt serve`: the dashboard (an embedded web app) and its JSON API (docs/api.md).
//!
//! The server lives in the CLI crate: it is one more consumer of the library (every
//! answer is a view struct of `dtk::views`, the same the `--json` output prints), and
//! keeping the web stack here keeps it out of `dtk-core`, which plugin authors depend
//! on. Reads run on the blocking pool (the store is read synchronously); events come
//! from the project's change feed, never from polling the store.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dtk::events::Event;
use dtk::views::{NodeView, Page, RunView, SourceView};
use dtk::{NodeId, Project};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The secret (in `.dkt/secrets/`) holding the generated dashboard token.
pub(crate) const TOKEN_SECRET: &str = "DKT_SERVE_TOKEN";
/// The cookie naming a dashboard session (never the token itself).
const SESSION_COOKIE: &str = "dkt_session";
/// Page size when none is asked for, and the most a page may hold.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

const INDEX_HTML: &str = include_str!("serve/index.html");
const APP_JS: &str = include_str!("serve/app.js");
const APP_CSS: &str = include_str!("serve/app.css");

/// How `dkt serve` was asked to run.
#[derive(Debug)]
pub(crate) struct ServeOptions {
    pub(crate) listen: SocketAddr,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) read_only: bool,
}

/// What every handler shares.
struct AppState {
    project: Project,
    /// The token that allows actions; `None`: read-only.
    token: Option<String>,
    /// Session ID -> its CSRF token.
    sessions: Mutex<HashMap<String, String>>,
    /// Runs started from the dashboard, by node: a handle that ends them.
    running: Mutex<HashMap<NodeId, CancelHandle>>,
    /// The project's feed, each event serialized once for every connection.
    feed: tokio::sync::broadcast::Sender<Arc<FeedItem>>,
}

/// An event of the feed and its JSON.
#[derive(Debug)]
struct FeedItem {
    event: Event,
    json: String,
}

/// Relay the project's feed to the connections, serializing each event once.
fn spawn_relay(project: &Project, to: tokio::sync::broadcast::Sender<Arc<FeedItem>>) {
    let mut rx = project.subscribe();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let item = match rx.recv().await {
                Ok(event) => FeedItem {
                    json: serde_json::to_string(&event).unwrap_or_default(),
                    event,
                },
                Err(RecvError::Lagged(n)) => FeedItem {
                    event: Event::Changed,
                    json: json!({ "event": "lagged", "missed": n }).to_string(),
                },
                Err(RecvError::Closed) => return,
            };
            let _ = to.send(Arc::new(item));
        }
    });
}

/// Ends the runs of one action.
struct CancelHandle {
    stop: CancellationToken,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("AppState")
            .field("root", &self.project.root())
            .field("actions", &self.token.is_some())
            .finish()
    }
}

type Shared = Arc<AppState>;

/// Run the dashboard until SIGINT/SIGTERM.
pub(crate) async fn serve(
    project: Project,
    options: ServeOptions,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let (token, token_from) = if options.read_only {
        (None, "read-only".to_owned())
    } else {
        load_token(&project, options.token_file.as_deref())?
    };
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", options.listen))?;
    let addr = listener.local_addr()?;
    let watcher = spawn_history_watcher(&project);
    let feed = tokio::sync::broadcast::channel(dtk::events::CAPACITY).0;
    spawn_relay(&project, feed.clone());
    let state = Arc::new(AppState {
        project,
        token,
        sessions: Mutex::new(HashMap::new()),
        running: Mutex::new(HashMap::new()),
        feed,
    });
    let app = router(state.clone());
    writeln!(out, "dashboard on http://{addr}/ ({token_from})")?;
    out.flush()?;
    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    for (_, h) in state
        .running
        .lock()
        .map(|mut m| std::mem::take(&mut *m))
        .unwrap_or_default()
    {
        h.stop.cancel();
    }
    drop(watcher);
    Ok(crate::exit::OK)
}

/// The token from `file`, else the project's generated one (made on first use). Returns
/// it with a description of where it is, for the start-up line (never the value).
fn load_token(
    project: &Project,
    file: Option<&std::path::Path>,
) -> anyhow::Result<(Option<String>, String)> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", file.display()))?;
        let token = text.trim().to_owned();
        if token.len() < 16 {
            anyhow::bail!(
                "the token in {} is too short: use at least 16 characters",
                file.display()
            );
        }
        return Ok((
            Some(token),
            format!("actions with the token in {}", file.display()),
        ));
    }
    let path = project.dkt_dir().join("secrets").join(TOKEN_SECRET);
    let token = match project.secrets().get(TOKEN_SECRET) {
        Some(t) if !t.is_empty() => t.to_owned(),
        _ => {
            let t = random_hex(32)?;
            let mut p = project.clone();
            p.set_secret(TOKEN_SECRET, &t)?;
            t
        }
    };
    Ok((
        Some(token),
        format!("actions with the token in {}", path.display()),
    ))
}

/// `n` random bytes, hex.
fn random_hex(n: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Equal without saying where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The routes.
fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .route("/api/graph", get(api_graph))
        .route("/api/sources", get(api_sources))
        .route("/api/sources/{name}", get(api_source))
        .route("/api/nodes", get(api_nodes))
        .route("/api/nodes/{id}", get(api_node))
        .route("/api/nodes/{id}/runs", get(api_node_runs))
        .route("/api/runs", get(api_runs))
        .route("/api/runs/{id}", get(api_run))
        .route("/api/runs/{id}/log", get(api_run_log))
        .route("/api/provenance/{target}", get(api_provenance))
        .route("/api/provenance/{target}/verify", get(api_verify))
        .route("/api/provenance/{target}/slsa", get(api_slsa))
        .route("/api/provenance/{target}/prov", get(api_prov))
        .route("/api/events", get(api_events))
        .route("/api/session", get(api_session))
        .route("/api/login", post(api_login))
        .route("/api/nodes/{id}/rerun", post(act_rerun))
        .route("/api/runs/{id}/cancel", post(act_cancel))
        .route("/api/sources/{name}/{action}", post(act_source))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An error answer: `{"error": "..."}` with a status.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<dtk::Error> for ApiError {
    fn from(e: dtk::Error) -> Self {
        let status = match &e {
            dtk::Error::NotFound { .. } => StatusCode::NOT_FOUND,
            dtk::Error::Invalid { .. } | dtk::Error::Ambiguous { .. } => StatusCode::BAD_REQUEST,
            dtk::Error::Conflict(_) | dtk::Error::AlreadyExists { .. } => StatusCode::CONFLICT,
            _ if e.is_user_error() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, dtk::project::error_chain(&e))
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Run a read of the store on the blocking pool.
async fn blocking<T: Send + 'static>(
    state: &Shared,
    f: impl FnOnce(&Project) -> dtk::Result<T> + Send + 'static,
) -> ApiResult<T> {
    let p = state.project.clone();
    tokio::task::spawn_blocking(move || f(&p))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

/// Run an async operation of the library whose future is not `Send` (it holds store
/// handles across awaits) on a blocking thread of its own.
async fn on_thread<T: Send + 'static, F>(
    state: &Shared,
    f: impl FnOnce(Project) -> F + Send + 'static,
) -> ApiResult<T>
where
    F: std::future::Future<Output = dtk::Result<T>>,
{
    let p = state.project.clone();
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || rt.block_on(f(p)))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

/// A path parameter, checked before it reaches the library: no separators, no `..`, no
/// control characters, bounded length. (The library validates names and IDs again.)
fn param<'a>(what: &str, s: &'a str) -> ApiResult<&'a str> {
    let bad = |why: &str| {
        Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid {what} {s:?}: {why}"),
        ))
    };
    if s.is_empty() {
        return bad("empty");
    }
    if s.len() > 255 {
        return bad("longer than 255 bytes");
    }
    if s.contains(['/', '\\']) || s.contains("..") || s.starts_with('.') {
        return bad("must not contain '/', '\\' or '..', nor start with '.'");
    }
    if s.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    Ok(s)
}

/// Paging: `?after=CURSOR&limit=N`.
#[derive(Debug, Deserialize)]
struct PageQuery {
    after: Option<String>,
    limit: Option<usize>,
}

impl PageQuery {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }
    fn after(&self) -> ApiResult<Option<String>> {
        match &self.after {
            None => Ok(None),
            Some(a) => Ok(Some(param("cursor", a)?.to_owned())),
        }
    }
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

async fn app_css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS)
}

async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such page or API route".to_owned(),
    )
}

async fn api_graph(State(st): State<Shared>) -> ApiResult<Json<dtk::views::GraphView>> {
    Ok(Json(blocking(&st, |p| p.graph_view()).await?))
}

async fn api_sources(State(st): State<Shared>) -> ApiResult<Json<Vec<SourceView>>> {
    Ok(Json(blocking(&st, |p| p.source_views()).await?))
}

/// A version of a source and the runs that read it.
#[derive(Debug, Serialize)]
struct VersionItem {
    #[serde(flatten)]
    record: dtk::VersionRecord,
    /// The runs (full IDs) that read this version.
    consumers: Vec<String>,
}

async fn api_source(
    State(st): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let name = dtk::Name::new(param("source name", &name)?)?;
    let (limit, after) = (q.limit(), q.after()?);
    let (source, page) = blocking(&st, move |p| {
        let spec = p.source(name.as_str())?;
        let versions = p.recorded_versions(name.as_str())?;
        let total = versions.len();
        let start = match &after {
            Some(a) => versions
                .iter()
                .position(|v| v.version.to_string() == *a)
                .map_or(total, |i| i + 1),
            None => 0,
        };
        let records: Vec<_> = versions.into_iter().skip(start).take(limit).collect();
        let ids: Vec<_> = records.iter().map(|r| r.version.clone()).collect();
        let mut consumers = p.consumers(&name, &ids)?;
        let next = (start + records.len() < total)
            .then(|| records.last().map(|r| r.version.to_string()))
            .flatten();
        let items = records
            .into_iter()
            .map(|r| VersionItem {
                consumers: consumers.remove(&r.version).unwrap_or_default(),
                record: r,
            })
            .collect();
        Ok((SourceView::from(&spec), Page { items, total, next }))
    })
    .await?;
    Ok(Json(json!({ "source": source, "versions": page })))
}

async fn api_nodes(State(st): State<Shared>) -> ApiResult<Json<Vec<NodeView>>> {
    Ok(Json(blocking(&st, |p| p.node_views(true)).await?))
}

async fn api_node(
    State(st): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = param("node", &id)?.to_owned();
    let (node, state, inputs, runs) = blocking(&st, move |p| {
        let (id, spec) = p.node(&id)?;
        let name = p.node_names()?.remove(&id);
        let retired = p.is_retired(&id)?;
        let runs = p.node_runs(&id)?;
        let state = p.node_state(&spec, &runs)?;
        let inputs = p.current_inputs(&spec).ok();
        let runs: Vec<RunView> = runs
            .into_iter()
            .take(DEFAULT_LIMIT)
            .map(|r| RunView::new(p, r))
            .collect();
        Ok((NodeView::new(&id, spec, name, retired), state, inputs, runs))
    })
    .await?;
    // Why a pass would run it now: a dry run of a pass, without polling.
    let pass = on_thread(&st, |p| async move {
        p.run_pass(
            dtk::PassOptions::new()
                .with_dry_run(true)
                .without_polling(true),
        )
        .await
    })
    .await?;
    let why = pass
        .items
        .into_iter()
        .find(|i| i.node.to_hex() == node.id_full)
        .map(|i| json!({ "reason": i.reason, "error": i.error }));
    let script = blocking(&st, {
        let spec = node.spec.clone();
        move |p| p.script_content(&spec)
    })
    .await
    .ok()
    .flatten()
    .map(|s| st.project.secrets().redact(&s));
    Ok(Json(json!({
        "node": node, "state": state, "current_inputs": inputs,
        "would_run": why, "script": script, "recent_runs": runs,
    })))
}

async fn api_node_runs(
    State(st): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<RunView>>> {
    let id = param("node", &id)?.to_owned();
    let (limit, after) = (q.limit(), q.after()?);
    Ok(Json(
        blocking(&st, move |p| {
            let (id, _) = p.node(&id)?;
            p.runs_page(Some(&id), after.as_deref(), limit)
        })
        .await?,
    ))
}

async fn api_runs(
    State(st): State<Shared>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<RunView>>> {
    let (limit, after) = (q.limit(), q.after()?);
    Ok(Json(
        blocking(&st, move |p| p.runs_page(None, after.as_deref(), limit)).await?,
    ))
}

async fn api_run(State(st): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<RunView>> {
    let id = param("run", &id)?.to_owned();
    Ok(Json(
        blocking(&st, move |p| Ok(RunView::new(p, p.run_record(&id)?))).await?,
    ))
}

async fn api_run_log(State(st): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = param("run", &id)?.to_owned();
    let log = blocking(&st, move |p| {
        let r = p.run_record(&id)?;
        let mut log = p.run_log(&r.id)?;
        if log.is_empty() {
            // Still running: what it printed so far.
            if let Ok(live) = std::fs::read(p.live_log_path(&r.id)) {
                log = String::from_utf8_lossy(&live).into_owned();
            }
        }
        // Logs are redacted when written; once more, in case a secret was added since.
        Ok(p.secrets().redact(&log))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], log).into_response())
}

#[derive(Debug, Deserialize)]
struct ProvQuery {
    downstream: Option<bool>,
}

async fn api_provenance(
    State(st): State<Shared>,
    Path(target): Path<String>,
    Query(q): Query<ProvQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let target = param("target", &target)?;
    let m = st
        .project
        .inspect(
            target,
            dtk::InspectOptions::new().with_downstream(q.downstream.unwrap_or(false)),
        )
        .await?;
    Ok(Json(m.to_json()))
}

async fn api_verify(
    State(st): State<Shared>,
    Path(target): Path<String>,
) -> ApiResult<Json<dtk::VerifyReport>> {
    let target = param("target", &target)?.to_owned();
    // `verify` holds non-Send state across awaits: it gets a blocking thread of its own.
    Ok(Json(
        on_thread(&st, move |p| async move { p.verify(&target).await }).await?,
    ))
}

async fn api_slsa(
    State(st): State<Shared>,
    Path(target): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let target = param("target", &target)?;
    let m = st
        .project
        .inspect(target, dtk::InspectOptions::new())
        .await?;
    Ok(Json(m.to_slsa(&st.project)?))
}

async fn api_prov(
    State(st): State<Shared>,
    Path(target): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let target = param("target", &target)?;
    let m = st
        .project
        .inspect(target, dtk::InspectOptions::new())
        .await?;
    Ok(Json(m.to_prov()))
}

/// `?run=PREFIX&node=PREFIX`: only the events of that run or node (and the ones that
/// concern no run).
#[derive(Debug, Deserialize)]
struct EventFilter {
    run: Option<String>,
    node: Option<String>,
}

impl EventFilter {
    fn keeps(&self, e: &Event) -> bool {
        let (run, node) = match e {
            Event::RunStarted { run, node }
            | Event::LogLine { run, node, .. }
            | Event::RunFinished { run, node, .. } => (Some(run), Some(node)),
            _ => (None, None),
        };
        if let (Some(want), Some(run)) = (&self.run, run) {
            if !run.to_hex().starts_with(want.as_str()) {
                return false;
            }
        }
        if let (Some(want), Some(node)) = (&self.node, node) {
            if !node.to_hex().starts_with(want.as_str()) {
                return false;
            }
        }
        // Log lines only to those who asked for a run or a node: a graph page does not
        // need every line of every run.
        !matches!(e, Event::LogLine { .. }) || self.run.is_some() || self.node.is_some()
    }
}

/// How long a connection gathers log lines before it sends them in one message.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);
/// The most bytes of events gathered into one message.
const BATCH_BYTES: usize = 64 * 1024;

async fn api_events(
    State(st): State<Shared>,
    Query(mut f): Query<EventFilter>,
) -> ApiResult<Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>>> {
    for v in [&mut f.run, &mut f.node].into_iter().flatten() {
        *v = v.to_ascii_lowercase();
        if !v.bytes().all(|b| b.is_ascii_hexdigit()) || v.len() > 64 {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("invalid filter {v:?}: expected hex digits of an ID"),
            ));
        }
    }
    let rx = st.feed.subscribe();
    let stream = futures::stream::unfold((rx, f), |(mut rx, f)| async move {
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        let lagged = |n: u64| json!({ "event": "lagged", "missed": n }).to_string();
        // The first event the connection wants.
        let (mut data, is_line) = loop {
            match rx.recv().await {
                Ok(item) if f.keeps(&item.event) => {
                    let is_line = matches!(item.event, Event::LogLine { .. });
                    break (item.json.clone(), is_line);
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => break (lagged(n), false),
                Err(RecvError::Closed) => return None,
            }
        };
        // Log lines come in bursts: wait a moment and send what arrived meanwhile in the
        // same message, one event per line, so a busy run costs each follower a few
        // writes a second rather than one per line.
        if is_line {
            tokio::time::sleep(BATCH_WINDOW).await;
            while data.len() < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(item) if f.keeps(&item.event) => {
                        data.push('\n');
                        data.push_str(&item.json);
                    }
                    Ok(_) => continue,
                    Err(TryRecvError::Lagged(n)) => {
                        data.push('\n');
                        data.push_str(&lagged(n));
                    }
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
        }
        Some((Ok(SseEvent::default().data(data)), (rx, f)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The session cookie's value, if the request has one.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_owned())
}

async fn api_session(State(st): State<Shared>, headers: HeaderMap) -> Json<serde_json::Value> {
    let csrf =
        session_id(&headers).and_then(|s| st.sessions.lock().ok().and_then(|m| m.get(&s).cloned()));
    Json(json!({
        "actions_enabled": st.token.is_some(),
        "authorized": csrf.is_some(),
        "csrf": csrf,
    }))
}

/// A request from another site is refused: its `Origin`, when it has one, must be this
/// server.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin == format!("http://{host}")
}

#[derive(Debug, Deserialize)]
struct Login {
    token: String,
}

async fn api_login(
    State(st): State<Shared>,
    headers: HeaderMap,
    Json(login): Json<Login>,
) -> ApiResult<Response> {
    let Some(token) = &st.token else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "this dashboard is read-only (dkt serve --read-only)".into(),
        ));
    };
    if !same_origin(&headers) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "cross-origin request refused".into(),
        ));
    }
    if !same(login.token.trim(), token) {
        return Err(ApiError(StatusCode::FORBIDDEN, "wrong token".into()));
    }
    let (sid, csrf) = (
        random_hex(32).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        random_hex(32).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
    );
    if let Ok(mut m) = st.sessions.lock() {
        m.insert(sid.clone(), csrf.clone());
    }
    let cookie = format!("{SESSION_COOKIE}={sid}; HttpOnly; SameSite=Strict; Path=/");
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "authorized": true, "csrf": csrf })),
    )
        .into_response())
}

/// An action is allowed with `Authorization: Bearer TOKEN` (programs), or with a session
/// cookie and its CSRF token in `X-CSRF-Token` (the dashboard); never cross-origin.
fn authorize(st: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let refuse = |why: &str| Err(ApiError(StatusCode::FORBIDDEN, why.to_owned()));
    let Some(token) = &st.token else {
        return refuse("this dashboard is read-only (dkt serve --read-only)");
    };
    if !same_origin(headers) {
        return refuse("cross-origin request refused");
    }
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return if same(bearer.trim(), token) {
            Ok(())
        } else {
            refuse("wrong token")
        };
    }
    let csrf = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    let expected = session_id(headers).and_then(|s| st.sessions.lock().ok()?.get(&s).cloned());
    match (expected, csrf) {
        (Some(e), Some(c)) if same(&e, c) => Ok(()),
        (Some(_), _) => refuse("missing or wrong CSRF token (X-CSRF-Token)"),
        (None, _) => refuse("actions need the dashboard token: log in with it first"),
    }
}

async fn act_rerun(
    State(st): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    authorize(&st, &headers)?;
    let id = param("node", &id)?.to_owned();
    let (node, _) = blocking(&st, move |p| p.node(&id)).await?;
    let project = st.project.clone().with_child_cancel_token();
    let stop = project.cancel_token();
    {
        let mut running = st
            .running
            .lock()
            .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "lock poisoned".into()))?;
        if running.contains_key(&node) {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "node {} is already running from this dashboard",
                    node.short()
                ),
            ));
        }
        running.insert(node, CancelHandle { stop });
    }
    let state = st.clone();
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = rt.block_on(project.rerun(&node, false, dtk::RunOptions::new())) {
            tracing::warn!("rerun of node {} failed: {e}", node.short());
        }
        if let Ok(mut m) = state.running.lock() {
            m.remove(&node);
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "node": node.to_hex(), "rerun": "started" })),
    )
        .into_response())
}

async fn act_cancel(
    State(st): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    authorize(&st, &headers)?;
    let id = param("run", &id)?.to_owned();
    let run = blocking(&st, move |p| Ok(RunView::new(p, p.run_record(&id)?))).await?;
    let run = run.0;
    if !matches!(
        run.status,
        dtk::RunStatus::Running | dtk::RunStatus::Pending
    ) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "run {} is not running: it is {}",
                run.id.short(),
                run.status
            ),
        ));
    }
    let handle = st
        .running
        .lock()
        .ok()
        .and_then(|m| m.get(&run.node).map(|h| h.stop.cancel()));
    if handle.is_some() {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "run": run.id.to_hex(), "cancel": "requested" })),
        )
            .into_response());
    }
    // A run handed to a remote worker: the queue tells its worker to stop it.
    let queued = crate::remote::cancel_in_queue(&st.project, &run.id)
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, format!("the run queue: {e:#}")))?;
    match queued {
        Some(true) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "run": run.id.to_hex(), "cancel": "requested", "via": "queue" })),
        )
            .into_response()),
        Some(false) => Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "run {} is not pending or running in the run queue",
                run.id.short()
            ),
        )),
        None => Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "run {} was not started by this dashboard (worker {}): stop it where it runs",
                run.id.short(),
                run.worker.as_deref().unwrap_or("-")
            ),
        )),
    }
}

#[derive(Debug, Deserialize, Default)]
struct PinBody {
    version: Option<String>,
}

async fn act_source(
    State(st): State<Shared>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&st, &headers)?;
    let name = dtk::Name::new(param("source name", &name)?)?;
    let n = name.as_str();
    let result = match action.as_str() {
        "freeze" | "thaw" => {
            let frozen = action == "freeze";
            let name2 = name.clone();
            blocking(&st, move |p| p.set_frozen(name2.as_str(), frozen)).await?;
            json!({ "name": n, "frozen": frozen })
        }
        "unpin" => {
            let name2 = name.clone();
            blocking(&st, move |p| p.unpin(name2.as_str())).await?;
            json!({ "name": n, "pinned": null })
        }
        "pin" => {
            let pin: PinBody = serde_json::from_slice(&body).unwrap_or_default();
            let Some(version) = pin.version else {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    "pin needs a body {\"version\": \"...\"}".into(),
                ));
            };
            let name2 = name.clone();
            let v = on_thread(&st, move |p| async move {
                p.pin(name2.as_str(), &version).await
            })
            .await?;
            json!({ "name": n, "pinned": v })
        }
        "update" => {
            let names = vec![n.to_owned()];
            let outcomes =
                on_thread(&st, move |p| async move { p.update_sources(&names).await }).await?;
            json!(outcomes)
        }
        other => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!(
                    "no source action {:?}: freeze, thaw, pin, unpin or update",
                    other.chars().take(40).collect::<String>()
                ),
            ))
        }
    };
    st.project.events().send(Event::SourceChanged {
        source: name.clone(),
    });
    Ok(Json(result))
}

/// Watch the project's history for commits made by other processes (a `dkt daemon`, a
/// `dkt node run` in a terminal) and say `Changed` on the feed, so that open pages
/// refresh. One inotify watch on the ref directory: nothing is polled.
fn spawn_history_watcher(project: &Project) -> Option<std::thread::JoinHandle<()>> {
    use rustix::fs::inotify;
    let git = project.store().git_dir().to_owned();
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC).ok()?;
    let mask = inotify::WatchFlags::MOVED_TO | inotify::WatchFlags::CLOSE_WRITE;
    let mut watched = false;
    for dir in [git.join("refs").join("heads"), git.clone()] {
        watched |= inotify::add_watch(&fd, &dir, mask).is_ok();
    }
    if !watched {
        return None;
    }
    let events = project.events().clone();
    std::thread::Builder::new()
        .name("dkt-serve-watch".into())
        .spawn(move || {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            let mut reader = inotify::Reader::new(&fd, &mut buf);
            loop {
                match reader.next() {
                    Ok(ev) => {
                        let name = ev
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        // A ref moved (written under a lock, then renamed) or refs were packed.
                        if !name.ends_with(".lock") && (name != "FETCH_HEAD") {
                            events.send(Event::Changed);
                        }
                    }
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => return,
                }
            }
        })
        .ok()
}
