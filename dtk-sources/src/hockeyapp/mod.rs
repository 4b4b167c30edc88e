//! The `hockeyapp` kind: the builds of an app, through the HockeyApp API v2, versioned by
//! the `md5:` of each build's file.
//!
//! ```text
//! dkt init --hockeyapp-token TOKEN
//! dkt source add dmg e63b4e58fd9d40e48e74f8f2e71c49a5 -k hockeyapp
//! ```
//!
//! HockeyApp was shut down in 2019 (and its successor App Center retired in 2025): this
//! kind speaks the API v2 as it was documented, to whatever serves it at the base URL set
//! by `[kind.hockeyapp] url = "..."` in `.dkt/config` (default
//! `https://rink.hockeyapp.net`): an archive, a compatible service, a test server.
//!
//! - **Locations**: the App ID (the app's 32-hex-digit public identifier) or a manage URL
//!   `BASE/manage/apps/NUMERIC_ID`. When `GET /api/2/apps` gives the app's numeric `id`,
//!   the source's location is its manage URL (as in the design); otherwise the App ID.
//! - **API**: `GET BASE/api/2/apps` (`apps[]` with `public_identifier`, `id`) and
//!   `GET BASE/api/2/apps/APP_ID/app_versions?include_build_urls=true` (`app_versions[]`
//!   with `id`, `version` (the build number), `shortversion`, `title`, `timestamp`,
//!   `appsize`, `build_url`, `download_url`, `config_url`; pages through `current_page` /
//!   `total_pages` when the service paginates). The token goes in the `X-HockeyAppToken`
//!   header, and only to URLs of the base URL's origin (never to a redirect elsewhere).
//! - **Versions**: `md5:` of each build's file (downloaded from `build_url`, else
//!   `download_url`). A poll downloads and hashes only builds it does not know yet: the
//!   (build id → md5, size, file name) map is cached in `<cache>/hockeyapp/`. Builds
//!   without a download URL are skipped. [`Source::versions`] lists the builds newest first
//!   with a `BUILD` column; two builds with the same file are one version (the newest).
//! - **Fields**: `BUILD` (the build number), `VERSION` (`shortversion`), `ROOT` (the
//!   directory holding the build's file), `FILE` (the file), `URL` (the build's
//!   `config_url`, else its download URL without the query).
//! - **Capabilities**: history; no tags, no sub-path, no publish.
//! - **Secret**: `HOCKEYAPP_TOKEN` (`dkt init --hockeyapp-token`); it never appears in a
//!   spec, an error, a log line or a `Debug` output.
//!
//! See `docs/hockeyapp-kind.md`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use dtk_api::secrets::HOCKEYAPP_TOKEN;
use dtk_api::{
    async_trait, Algo, Capabilities, Context, Error, Fields, IoResultExt, Kind, NewSource, Result,
    Source, SourceSpec, Verification, Version, VersionInfo,
};
use md5::Digest as _;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::net;

/// The kind's name.
const KIND: &str = "hockeyapp";
/// The base URL used when `[kind.hockeyapp] url` is not set.
pub const DEFAULT_URL: &str = "https://rink.hockeyapp.net";
/// The header carrying the API token.
const TOKEN_HEADER: &str = "X-HockeyAppToken";
/// [`HockeyAppKind::infer`]'s score for a 32-hex-digit App ID.
const INFER_APP_ID: u8 = 15;
/// [`HockeyAppKind::infer`]'s score for a `.../manage/apps/N` URL (above `git` and `http`).
const INFER_MANAGE_URL: u8 = 30;
/// The largest API answer read.
const JSON_LIMIT: usize = 64 << 20;
/// The most pages of builds read.
const MAX_PAGES: u64 = 1000;

/// The `hockeyapp` kind: builds of a HockeyApp (API v2) app.
///
/// Register it with `registry.register(Arc::new(HockeyAppKind::default()))`.
#[derive(Debug, Default, Clone)]
pub struct HockeyAppKind {
    _private: (),
}

impl HockeyAppKind {
    /// The kind.
    pub fn new() -> Self {
        Self::default()
    }
}

fn capabilities() -> Capabilities {
    // Publishing uploads through the API v2 upload endpoint.
    Capabilities::none().with_history(true).with_publish(true)
}

/// True for a public app identifier: 32 hex digits.
fn is_app_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `BASE/manage/apps/N[/...]` as (BASE, N).
fn parse_manage_url(s: &str) -> Option<(Url, u64)> {
    let url = Url::parse(s.trim()).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.password().is_some() {
        return None;
    }
    let path = url.path().to_owned();
    let (prefix, rest) = path.split_once("/manage/apps/")?;
    let numeric: u64 = rest.split('/').next()?.parse().ok()?;
    let mut base = url;
    base.set_path(prefix);
    base.set_query(None);
    base.set_fragment(None);
    Some((base, numeric))
}

/// `url` as a base: its string without a trailing `/`.
fn base_str(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_owned()
}

/// The base URL from `[kind.hockeyapp] url`, or the default.
fn configured_base(ctx: &Context) -> Result<Url> {
    let given = ctx.setting(KIND, "url").unwrap_or(DEFAULT_URL);
    let bad = |why: &str| Error::invalid("setting kind.hockeyapp.url", given, why);
    let mut url = Url::parse(given.trim()).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad("expected an http:// or https:// URL"));
    }
    if url.password().is_some() || !url.username().is_empty() {
        return Err(bad(
            "the URL must not hold credentials (use `dkt init --hockeyapp-token`)",
        ));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// What a location names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// An App ID (lower case), at the configured base URL.
    App { base: Url, app_id: String },
    /// A manage URL's numeric app id, at the URL's base.
    Manage { base: Url, numeric: u64 },
}

impl Target {
    fn parse(ctx: &Context, given: &str) -> Result<Target> {
        let trimmed = given.trim();
        if is_app_id(trimmed) {
            return Ok(Target::App {
                base: configured_base(ctx)?,
                app_id: trimmed.to_ascii_lowercase(),
            });
        }
        if let Some((base, numeric)) = parse_manage_url(trimmed) {
            return Ok(Target::Manage { base, numeric });
        }
        Err(Error::invalid(
            "hockeyapp location",
            trimmed,
            "expected an App ID (the app's public identifier: 32 hex digits) or a manage URL \
             such as https://rink.hockeyapp.net/manage/apps/259320",
        ))
    }

    fn base(&self) -> &Url {
        match self {
            Target::App { base, .. } | Target::Manage { base, .. } => base,
        }
    }
}

fn manage_url(base: &Url, numeric: u64) -> String {
    format!("{}/manage/apps/{numeric}", base_str(base))
}

#[async_trait]
impl Kind for HockeyAppKind {
    fn name(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    /// `Some(30)` for a manage URL (`.../manage/apps/N`), `Some(15)` for 32 hex digits (an
    /// App ID), `None` otherwise.
    fn infer(&self, location: &str) -> Option<u8> {
        if parse_manage_url(location).is_some() {
            Some(INFER_MANAGE_URL)
        } else if is_app_id(location.trim()) {
            Some(INFER_APP_ID)
        } else {
            None
        }
    }

    /// Find the app (`GET /api/2/apps`, for its numeric id) and list its builds (which
    /// checks the token and that the app exists); the location becomes the manage URL when
    /// the numeric id is known.
    async fn resolve(&self, ctx: &Context, new: NewSource) -> Result<SourceSpec> {
        if let Some(tag) = &new.tag {
            return Err(Error::invalid("tag", tag, "a hockeyapp source has no tags"));
        }
        if let Some(p) = &new.path {
            return Err(Error::invalid(
                "path",
                p,
                "a hockeyapp source has no sub-paths",
            ));
        }
        let given = new.location.as_deref().ok_or_else(|| {
            Error::invalid(
                "location",
                "",
                "a hockeyapp source needs an App ID (32 hex digits)",
            )
        })?;
        let target = Target::parse(ctx, given)?;
        let service = Service::new(ctx, new.name.as_str(), target.base().clone())?;
        let (app_id, location) = match &target {
            Target::App { base, app_id } => {
                let numeric = service.apps().await?.and_then(|apps| {
                    apps.iter()
                        .find(|a| a.public_identifier.eq_ignore_ascii_case(app_id))
                        .and_then(|a| a.id)
                });
                service.builds(app_id).await?;
                let location = match numeric {
                    Some(n) => manage_url(base, n),
                    None => app_id.clone(),
                };
                (app_id.clone(), location)
            }
            Target::Manage { base, numeric } => {
                let app_id = service.public_identifier(*numeric, given).await?;
                service.builds(&app_id).await?;
                (app_id, manage_url(base, *numeric))
            }
        };
        let spec = SourceSpec::new(new.name, KIND, location);
        let source = HockeyAppSource::new(ctx, &spec)?;
        let _guard = source.lock.lock().await;
        let mut state = source.load_state();
        state.app_id = Some(app_id);
        source.save_state(&state)?;
        Ok(spec)
    }

    fn open(&self, ctx: &Context, spec: &SourceSpec) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(HockeyAppSource::new(ctx, spec)?))
    }
}

/// An app in `GET /api/2/apps`.
#[derive(Debug, Clone)]
struct ApiApp {
    public_identifier: String,
    id: Option<u64>,
}

/// A build in `GET /api/2/apps/APP_ID/app_versions`.
#[derive(Debug, Clone)]
struct ApiBuild {
    /// The build's `id`, else `v` and its build number.
    key: String,
    /// `version`: the build number.
    build: String,
    short_version: Option<String>,
    timestamp: i64,
    appsize: Option<u64>,
    /// `build_url`, else `download_url`.
    url: Option<String>,
    config_url: Option<String>,
}

/// A string or a number, as a string.
fn str_or_num(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn num(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn nonempty(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The API at a base URL, with the token.
struct Service {
    ctx: Context,
    name: String,
    base: Url,
    token: Option<HeaderValue>,
    client: OnceLock<reqwest::Client>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("base", &net::shown_url(&self.base))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Service {
    fn new(ctx: &Context, name: &str, base: Url) -> Result<Service> {
        let token = match ctx.secrets.get(HOCKEYAPP_TOKEN) {
            Some(t) if !t.is_empty() => {
                let mut v = HeaderValue::from_str(t).map_err(|_| {
                    Error::invalid(
                        "secret",
                        HOCKEYAPP_TOKEN,
                        "is not a valid HTTP header value (set it again with `dkt init --hockeyapp-token`)",
                    )
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            _ => None,
        };
        Ok(Service {
            ctx: ctx.clone(),
            name: name.to_owned(),
            base,
            token,
            client: OnceLock::new(),
        })
    }

    fn client(&self) -> Result<&reqwest::Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = net::client_without_redirects(&self.ctx, KIND, &self.name)?;
        Ok(self.client.get_or_init(|| c))
    }

    fn api(&self, path: &str) -> Result<Url> {
        let s = format!("{}/api/2/{path}", base_str(&self.base));
        Url::parse(&s).map_err(|e| Error::invalid("hockeyapp URL", s, e.to_string()))
    }

    /// GET `url`, with the token when `url` is on the base URL's origin.
    async fn get(&self, url: Url) -> Result<reqwest::Response> {
        net::get_following(
            self.client()?,
            KIND,
            &self.name,
            url,
            &self.base,
            self.token.as_ref().map(|t| (TOKEN_HEADER, t)),
        )
        .await
    }

    /// The JSON answer of a successful response.
    async fn json(&self, what: &str, resp: reqwest::Response) -> Result<Value> {
        let shown = net::shown_url(resp.url());
        let resp = net::check_status(KIND, &self.name, what, resp)?;
        let body = net::body_limited(
            KIND,
            &self.name,
            what,
            resp,
            JSON_LIMIT,
            self.ctx.network_timeout,
        )
        .await?;
        serde_json::from_slice(&body).map_err(|e| {
            Error::backend(
                KIND,
                &self.name,
                format!("{what}: {shown} answered something that is not JSON ({e})"),
            )
        })
    }

    fn garbage(&self, what: &str, why: &str) -> Error {
        Error::backend(
            KIND,
            &self.name,
            format!(
                "{what}: unexpected answer from {} ({why}); is it a HockeyApp API v2 service?",
                base_str(&self.base)
            ),
        )
    }

    /// Upload `file` as a new version of app `app_id` (multipart, streamed from disk) and
    /// return the build number the service answered (`version`).
    async fn upload(
        &self,
        app_id: &str,
        file: &Path,
        notes: Option<(String, u8)>,
    ) -> Result<String> {
        let what = "the upload of a new version";
        let url = self.api(&format!("apps/{app_id}/app_versions/upload"))?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "build".to_owned());
        if name.contains(['"', '\r', '\n']) {
            return Err(Error::invalid(
                "build file name",
                name,
                "holds a quote or a line break",
            ));
        }
        let size = std::fs::metadata(file)
            .map_err(|e| Error::io(file, e))?
            .len();
        let boundary = format!("dtk-{:032x}", rand_u128());
        let mut head = Vec::new();
        let mut field = |k: &str, v: &str| {
            head.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                )
                .as_bytes(),
            );
        };
        field("status", "2");
        field("notify", "0");
        if let Some((text, kind)) = &notes {
            field("notes", text);
            field("notes_type", &kind.to_string());
        }
        head.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"ipa\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        let tail = format!("\r\n--{boundary}--\r\n").into_bytes();
        let total = head.len() as u64 + size + tail.len() as u64;
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| Error::io(file, e))?;
        use futures::StreamExt as _;
        let body = futures::stream::iter([Ok::<_, std::io::Error>(head)])
            .chain(futures::stream::unfold(f, |mut f| async move {
                use tokio::io::AsyncReadExt as _;
                let mut buf = vec![0u8; 64 << 10];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(buf), f))
                    }
                    Err(e) => Some((Err(e), f)),
                }
            }))
            .chain(futures::stream::iter([Ok(tail)]));
        let mut req = self
            .client()?
            .post(url.clone())
            .header(
                CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .header(reqwest::header::CONTENT_LENGTH, total)
            .body(reqwest::Body::wrap_stream(body));
        if let Some(t) = &self.token {
            req = req.header(TOKEN_HEADER, t.clone());
        }
        let resp = net::send(KIND, &self.name, url.as_str(), req).await?;
        let v = self.json(what, resp).await?;
        str_or_num(v.get("version"))
            .ok_or_else(|| self.garbage(what, "no \"version\" (build number)"))
    }

    /// `GET /api/2/apps`; `None` when the service has no such endpoint (404).
    async fn apps(&self) -> Result<Option<Vec<ApiApp>>> {
        let what = "the list of apps";
        let resp = self.get(self.api("apps")?).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let v = self.json(what, resp).await?;
        let list = v
            .get("apps")
            .and_then(Value::as_array)
            .ok_or_else(|| self.garbage(what, "no \"apps\" list"))?;
        Ok(Some(
            list.iter()
                .filter_map(|a| {
                    Some(ApiApp {
                        public_identifier: nonempty(a.get("public_identifier"))?,
                        id: num(a.get("id")),
                    })
                })
                .collect(),
        ))
    }

    /// The App ID of the app whose numeric id is `numeric`.
    async fn public_identifier(&self, numeric: u64, shown: &str) -> Result<String> {
        let apps = self.apps().await?.ok_or_else(|| {
            Error::invalid(
                "hockeyapp location",
                shown,
                "this service does not list apps (GET /api/2/apps): give the App ID instead",
            )
        })?;
        apps.into_iter()
            .find(|a| a.id == Some(numeric))
            .map(|a| a.public_identifier.to_ascii_lowercase())
            .ok_or_else(|| Error::NotFound {
                what: "hockeyapp app",
                name: shown.to_owned(),
                hint: format!(
                    " among the apps the token can see at {}",
                    base_str(&self.base)
                ),
            })
    }

    /// Every build of `app_id`, newest first.
    async fn builds(&self, app_id: &str) -> Result<Vec<ApiBuild>> {
        let what = "the list of builds";
        let mut out = Vec::new();
        let mut page: u64 = 0;
        loop {
            let mut url = self.api(&format!("apps/{app_id}/app_versions"))?;
            url.query_pairs_mut()
                .append_pair("include_build_urls", "true");
            if page > 0 {
                url.query_pairs_mut().append_pair("page", &page.to_string());
            }
            let resp = self.get(url).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(Error::NotFound {
                    what: "hockeyapp app",
                    name: app_id.to_owned(),
                    hint: format!(" at {} (HTTP 404)", base_str(&self.base)),
                });
            }
            let v = self.json(what, resp).await?;
            let list = v
                .get("app_versions")
                .and_then(Value::as_array)
                .ok_or_else(|| self.garbage(what, "no \"app_versions\" list"))?;
            for b in list {
                let build = str_or_num(b.get("version"))
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| self.garbage(what, "a build without a \"version\""))?;
                let key = str_or_num(b.get("id"))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| format!("v{build}"));
                out.push(ApiBuild {
                    key,
                    build,
                    short_version: nonempty(b.get("shortversion")),
                    timestamp: b.get("timestamp").and_then(Value::as_i64).unwrap_or(0),
                    appsize: num(b.get("appsize")),
                    url: nonempty(b.get("build_url")).or_else(|| nonempty(b.get("download_url"))),
                    config_url: nonempty(b.get("config_url")),
                });
            }
            let current = num(v.get("current_page")).unwrap_or(1).max(page);
            let total = num(v.get("total_pages")).unwrap_or(0);
            if current >= total || current >= MAX_PAGES || list.is_empty() {
                break;
            }
            page = current + 1;
        }
        // Newest first; the API's own order breaks ties.
        out.sort_by_key(|b| std::cmp::Reverse(b.timestamp));
        Ok(out)
    }

    /// GET a build's file: a successful, non-HTML answer.
    async fn build_file(&self, build: &str, url: &str) -> Result<reqwest::Response> {
        let what = format!("build {build}");
        let url = self
            .base
            .join(url)
            .map_err(|e| self.garbage(&what, &format!("bad download URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.garbage(&what, "a download URL that is not http(s)"));
        }
        let resp = self.get(url).await?;
        let resp = net::check_status(KIND, &self.name, &what, resp)?;
        let html = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/html"));
        if html {
            return Err(Error::backend(
                KIND,
                &self.name,
                format!(
                    "{what}: {} answered an HTML page, not the build's file",
                    net::shown_url(resp.url())
                ),
            ));
        }
        Ok(resp)
    }
}

/// A build whose file was hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Build {
    /// The build number (`version`).
    build: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    short_version: Option<String>,
    timestamp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    appsize: Option<u64>,
    /// Where its file is downloaded from.
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config_url: Option<String>,
    /// Hex md5 of the file.
    md5: String,
    /// The file's size.
    size: u64,
    /// The file's name.
    file_name: String,
}

/// The cache file of a source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    /// The App ID, when the location is a manage URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    app_id: Option<String>,
    /// The builds hashed, by key (`id`).
    #[serde(default)]
    builds: BTreeMap<String, Build>,
    /// The keys of the builds of the last poll, newest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    listing: Option<Vec<String>>,
}

impl State {
    /// The listed builds, newest first.
    fn listed(&self) -> Option<Vec<(&String, &Build)>> {
        let keys = self.listing.as_ref()?;
        Some(
            keys.iter()
                .filter_map(|k| self.builds.get_key_value(k))
                .collect(),
        )
    }

    /// The newest listed build whose file is `version`.
    fn find(&self, version: &Version) -> Option<(String, Build)> {
        self.listed()?
            .into_iter()
            .find(|(_, b)| b.md5 == version.hex())
            .map(|(k, b)| (k.clone(), b.clone()))
    }
}

/// The build file in `dir` (its one regular file besides the notes) and the release notes
/// (`notes.md`: Markdown, `notes.txt`: Textile), or `Invalid` saying what is wrong.
fn build_to_upload(dir: &Path) -> Result<(PathBuf, Option<(String, u8)>)> {
    let bad =
        |why: String| Error::invalid("hockeyapp build directory", dir.display().to_string(), why);
    let mut files = Vec::new();
    let mut notes = None;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
        if !kind.is_file() {
            return Err(bad(format!("{name:?} is not a regular file: write the build file (and optional notes.md or notes.txt) only")));
        }
        match name.as_str() {
            "notes.md" | "notes.txt" => {
                let text = std::fs::read_to_string(entry.path())
                    .map_err(|e| Error::io(entry.path(), e))?;
                notes = Some((text, u8::from(name == "notes.md")));
            }
            _ => files.push(entry.path()),
        }
    }
    match files.len() {
        1 => Ok((files.remove(0), notes)),
        0 => Err(bad("holds no build file".to_owned())),
        n => Err(bad(format!(
            "holds {n} files besides the notes: write exactly one build file"
        ))),
    }
}

/// A random number for a multipart boundary (not a secret: it only has to be absent from
/// the file, which 128 random bits make certain in practice).
fn rand_u128() -> u128 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut out = 0u128;
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        out = (out << 64) | u128::from(h.finish());
    }
    out
}

fn md5_version(hex: &str) -> Result<Version> {
    format!("md5:{hex}").parse()
}

/// A `hockeyapp` source: the builds of one app.
pub struct HockeyAppSource {
    spec: SourceSpec,
    target: Target,
    service: Service,
    state_file: PathBuf,
    ctx: Context,
    /// Serializes polls of this source within the process.
    lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for HockeyAppSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HockeyAppSource")
            .field("name", &self.spec.name)
            .field("location", &self.spec.location)
            .field("service", &self.service)
            .field("cache", &self.state_file)
            .finish_non_exhaustive()
    }
}

impl HockeyAppSource {
    /// Open the source described by `spec` (no I/O).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a location that is neither an App ID nor a manage URL, a bad
    /// `[kind.hockeyapp] url`, or a token that cannot be sent in a header.
    pub fn new(ctx: &Context, spec: &SourceSpec) -> Result<Self> {
        let target = Target::parse(ctx, &spec.location)?;
        let service = Service::new(ctx, spec.name.as_str(), target.base().clone())?;
        let key = net::hex(&md5::Md5::digest(
            format!("{}\n{}", base_str(target.base()), spec.location).as_bytes(),
        ));
        let state_file = ctx.cache_dir.join(KIND).join(format!("{key}.json"));
        Ok(HockeyAppSource {
            spec: spec.clone(),
            target,
            service,
            state_file,
            ctx: ctx.clone(),
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The base URL of the service.
    pub fn base_url(&self) -> String {
        base_str(self.target.base())
    }

    /// The file caching the builds' digests.
    pub fn cache_file(&self) -> &Path {
        &self.state_file
    }

    fn name(&self) -> &str {
        self.spec.name.as_str()
    }

    fn cache_dir(&self) -> &Path {
        self.state_file.parent().unwrap_or(Path::new("."))
    }

    fn load_state(&self) -> State {
        match std::fs::read(&self.state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %self.state_file.display(), error = %e, "ignoring a corrupt hockeyapp cache");
                State::default()
            }),
            Err(_) => State::default(),
        }
    }

    fn save_state(&self, state: &State) -> Result<()> {
        let dir = self.cache_dir();
        std::fs::create_dir_all(dir).at(dir)?;
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::backend(KIND, self.name(), format!("cannot encode cache: {e}")))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).at(dir)?;
        tmp.write_all(&bytes).at(tmp.path())?;
        tmp.as_file().sync_all().at(tmp.path())?;
        tmp.persist(&self.state_file)
            .map_err(|e| Error::io(&self.state_file, e.error))?;
        Ok(())
    }

    /// The App ID: the location's, or the one found for a manage URL.
    async fn app_id(&self, state: &mut State) -> Result<String> {
        match &self.target {
            Target::App { app_id, .. } => Ok(app_id.clone()),
            Target::Manage { numeric, .. } => {
                if let Some(id) = &state.app_id {
                    return Ok(id.clone());
                }
                let id = self
                    .service
                    .public_identifier(*numeric, &self.spec.location)
                    .await?;
                state.app_id = Some(id.clone());
                Ok(id)
            }
        }
    }

    /// A fresh path in the cache directory for a download being hashed.
    fn incoming(&self) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.cache_dir()
            .join(format!(".incoming-{}-{n}", std::process::id()))
    }

    /// Download a build's file to hash it (the file is not kept).
    async fn hash_build(&self, b: &ApiBuild, url: &str) -> Result<Build> {
        let resp = self.service.build_file(&b.build, url).await?;
        let file_name = net::file_name_of(Some(resp.headers()), resp.url())
            .filter(|n| n.contains('.'))
            .unwrap_or_else(|| format!("build-{}", b.build));
        let tmp = self.incoming();
        let got = net::download(&self.ctx, KIND, self.name(), &file_name, resp, &tmp).await;
        let _ = std::fs::remove_file(&tmp);
        let got = got?;
        Ok(Build {
            build: b.build.clone(),
            short_version: b.short_version.clone(),
            timestamp: b.timestamp,
            appsize: b.appsize,
            url: url.to_owned(),
            config_url: b.config_url.clone(),
            md5: got.md5,
            size: got.size,
            file_name,
        })
    }

    /// List the builds and hash those not known yet; returns the state, whose listing is
    /// then fresh.
    async fn poll(&self) -> Result<State> {
        let _guard = self.lock.lock().await;
        let mut state = self.load_state();
        let app_id = self.app_id(&mut state).await?;
        let builds = self.service.builds(&app_id).await?;
        let mut listing = Vec::new();
        for b in &builds {
            let Some(url) = b.url.as_deref() else {
                tracing::warn!(source = self.name(), build = %b.build, "skipping a build without a download URL");
                continue;
            };
            let known = state.builds.get(&b.key).filter(|k| {
                k.build == b.build && k.timestamp == b.timestamp && k.appsize == b.appsize
            });
            let entry = match known {
                Some(k) => Build {
                    short_version: b.short_version.clone(),
                    url: url.to_owned(),
                    config_url: b.config_url.clone(),
                    ..k.clone()
                },
                None => {
                    let hashed = self.hash_build(b, url).await?;
                    state.builds.insert(b.key.clone(), hashed.clone());
                    // Keep what was hashed even if a later build fails.
                    self.save_state(&state)?;
                    hashed
                }
            };
            state.builds.insert(b.key.clone(), entry);
            listing.push(b.key.clone());
        }
        state.builds.retain(|k, _| listing.contains(k));
        state.listing = Some(listing);
        self.save_state(&state)?;
        Ok(state)
    }

    /// The state with a listing: the cached one, else a fresh poll.
    async fn listed_state(&self) -> Result<State> {
        let state = self.load_state();
        if state.listing.is_some() {
            return Ok(state);
        }
        self.poll().await
    }

    /// The newest build whose file is `version`: from the cache, else after a poll.
    async fn find(&self, version: &Version) -> Result<Option<(String, Build)>> {
        if let Some(found) = self.load_state().find(version) {
            return Ok(Some(found));
        }
        Ok(self.poll().await?.find(version))
    }

    fn infos(state: &State) -> Vec<VersionInfo> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (_, b) in state.listed().unwrap_or_default() {
            if !seen.insert(b.md5.clone()) {
                continue;
            }
            if let Ok(v) = md5_version(&b.md5) {
                let mut info = VersionInfo::new(v);
                info.extra.insert("BUILD".to_owned(), b.build.clone());
                out.push(info);
            }
        }
        out
    }

    /// Forget a build's digest (its file changed), so the next poll hashes it again.
    fn forget(&self, key: &str) {
        let mut state = self.load_state();
        if state.builds.remove(key).is_some() {
            let _ = self.save_state(&state);
        }
    }

    fn app_url(&self) -> String {
        match &self.target {
            Target::Manage { .. } => self.spec.location.clone(),
            Target::App { base, app_id } => format!("{}/apps/{app_id}", base_str(base)),
        }
    }
}

#[async_trait]
impl Source for HockeyAppSource {
    fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    /// List the builds, hash the new ones, and return the newest build's version (with
    /// its `BUILD` column).
    async fn latest(&self) -> Result<VersionInfo> {
        let state = self.poll().await?;
        Self::infos(&state).into_iter().next().ok_or_else(|| {
            Error::backend(
                KIND,
                self.name(),
                format!("app {} has no downloadable build", self.app_url()),
            )
        })
    }

    /// The builds of the last poll, newest first (polls when none was cached).
    async fn versions(&self) -> Result<Vec<VersionInfo>> {
        Ok(Self::infos(&self.listed_state().await?))
    }

    fn fields(&self, version: Option<&Version>, root: &Path) -> Result<Fields> {
        let root_str = root.to_str().ok_or_else(|| {
            Error::invalid("ROOT", root.display().to_string(), "is not valid UTF-8")
        })?;
        let found = version.and_then(|v| self.load_state().find(v));
        let mut f = Fields::new();
        f.insert("ROOT".to_owned(), root_str.to_owned());
        match found {
            Some((_, b)) => {
                f.insert("BUILD".to_owned(), b.build.clone());
                f.insert(
                    "VERSION".to_owned(),
                    b.short_version.clone().unwrap_or_default(),
                );
                f.insert(
                    "FILE".to_owned(),
                    root.join(&b.file_name).to_string_lossy().into_owned(),
                );
                let url = b.config_url.clone().unwrap_or_else(|| {
                    Url::parse(&b.url)
                        .map(|u| net::shown_url(&u))
                        .unwrap_or_else(|_| self.app_url())
                });
                f.insert("URL".to_owned(), url);
            }
            None => {
                // Not polled here yet: the names are known, the values come with a poll.
                f.insert("BUILD".to_owned(), String::new());
                f.insert("VERSION".to_owned(), String::new());
                f.insert("FILE".to_owned(), root_str.to_owned());
                f.insert("URL".to_owned(), self.app_url());
            }
        }
        Ok(f)
    }

    /// Download the build's file into `scratch` (under its file name), check its md5, and
    /// return `scratch`.
    async fn materialize(&self, version: &Version, scratch: &Path) -> Result<PathBuf> {
        let not_found = |hint: String| Error::NotFound {
            what: "version",
            name: version.to_string(),
            hint,
        };
        if version.algo() != Algo::Md5 {
            return Err(not_found(format!(
                ": hockeyapp source {:?} has md5 versions",
                self.name()
            )));
        }
        let Some((key, build)) = self.find(version).await? else {
            return Err(not_found(format!(
                " among the builds of {}",
                self.app_url()
            )));
        };
        let resp = self.service.build_file(&build.build, &build.url).await?;
        let dest = scratch.join(&build.file_name);
        let got =
            net::download(&self.ctx, KIND, self.name(), &build.file_name, resp, &dest).await?;
        if got.md5 != version.hex() {
            let _ = std::fs::remove_file(&dest);
            self.forget(&key);
            return Err(not_found(format!(
                ": the file of build {} now hashes to md5:{}",
                build.build, got.md5
            )));
        }
        Ok(scratch.to_owned())
    }

    /// Upload the build file `dir` holds as a new version of the app, through the API
    /// v2 upload endpoint (`POST /api/2/apps/APP_ID/app_versions/upload`, the file as the
    /// multipart field `ipa`, streamed from disk; `notes.md` or `notes.txt` beside it, if
    /// any, as the release notes, Markdown or Textile). The service numbers the build: the
    /// version is then read back by a poll, and its `BUILD` must be the number the upload
    /// answered.
    async fn publish(&self, dir: &Path) -> Result<VersionInfo> {
        let (file, notes) = build_to_upload(dir)?;
        let mut state = self.load_state();
        let app_id = self.app_id(&mut state).await?;
        let number = self.service.upload(&app_id, &file, notes).await?;
        let info = self.latest().await?;
        match info.extra.get("BUILD") {
            Some(b) if *b == number => Ok(info),
            other => Err(Error::backend(
                KIND,
                self.name(),
                format!(
                    "uploaded build {number} to {}, but its newest build is now {}",
                    self.app_url(),
                    other.map(String::as_str).unwrap_or("-")
                ),
            )),
        }
    }

    /// Download the build's file again and re-hash it: verified, a mismatch (the build is
    /// still there but its file changed), or unavailable (no build has this version now).
    async fn verify(&self, version: &Version) -> Result<Verification> {
        let Some((_, build)) = self.find(version).await? else {
            return Ok(Verification::Unavailable(format!(
                "no build of {} has this file any more",
                self.app_url()
            )));
        };
        let resp = self.service.build_file(&build.build, &build.url).await?;
        std::fs::create_dir_all(self.cache_dir()).at(self.cache_dir())?;
        let tmp = self.incoming();
        let got = net::download(&self.ctx, KIND, self.name(), &build.file_name, resp, &tmp).await;
        let _ = std::fs::remove_file(&tmp);
        let got = got?;
        if got.md5 == version.hex() {
            Ok(Verification::Verified)
        } else {
            Ok(Verification::Mismatch {
                expected: version.clone(),
                found: md5_version(&got.md5)?,
            })
        }
    }

    /// Removes the cached digests.
    async fn remove(&self) -> Result<()> {
        match std::fs::remove_file(&self.state_file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(&self.state_file, e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let ctx = Context::new(Path::new("/tmp/x/.dkt"), Default::default());
        let t = Target::parse(&ctx, "E63B4E58FD9D40E48E74F8F2E71C49A5").unwrap();
        assert_eq!(
            t,
            Target::App {
                base: Url::parse(DEFAULT_URL).unwrap(),
                app_id: "e63b4e58fd9d40e48e74f8f2e71c49a5".into()
            }
        );
        let (base, n) = parse_manage_url("https://rink.hockeyapp.net/manage/apps/259320").unwrap();
        assert_eq!(
            (base_str(&base).as_str(), n),
            ("https://rink.hockeyapp.net", 259320)
        );
        let (base, n) =
            parse_manage_url("http://127.0.0.1:9/sub/manage/apps/7/app_versions/3").unwrap();
        assert_eq!((base_str(&base).as_str(), n), ("http://127.0.0.1:9/sub", 7));
        let e = Target::parse(&ctx, "not-an-app").unwrap_err().to_string();
        assert!(e.contains("not-an-app"), "{e}");
        let ctx = ctx.with_setting(KIND, "url", "ftp://x");
        assert!(Target::parse(&ctx, "e63b4e58fd9d40e48e74f8f2e71c49a5").is_err());
    }

    #[test]
    fn infer_scores() {
        let k = HockeyAppKind::new();
        assert_eq!(
            k.infer("e63b4e58fd9d40e48e74f8f2e71c49a5"),
            Some(INFER_APP_ID)
        );
        assert_eq!(
            k.infer("https://rink.hockeyapp.net/manage/apps/259320"),
            Some(INFER_MANAGE_URL)
        );
        assert_eq!(k.infer("https://example.com/x.tar.gz"), None);
        assert_eq!(k.infer("e63b4e58"), None);
    }
}
