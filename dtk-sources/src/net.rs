//! HTTP plumbing shared by the `docker`, `http` and `hockeyapp` kinds: one client with
//! bounded waits, status checks that name the source (never a credential), and streaming
//! downloads that hash as they write, in constant memory, with progress.
// Each kind uses a part of this module; with only some kinds compiled in, the rest is unused.
#![cfg_attr(
    not(all(feature = "docker", feature = "http", feature = "hockeyapp")),
    allow(dead_code)
)]

use std::io::Write;
use std::path::Path;

use dtk_api::{Context, Error, IoResultExt, Result};

pub(crate) use crate::speed::LowSpeed;
use md5::Digest as _;

/// An HTTP client for kind `kind` with the context's bounds: connecting and each read wait
/// at most [`Context::network_timeout`]; redirects are followed (at most 10).
pub(crate) fn client(ctx: &Context, kind: &str, source: &str) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(ctx.network_timeout)
        .read_timeout(ctx.network_timeout)
        .user_agent(concat!("dtk/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::backend(kind, source, format!("cannot set up HTTP: {e}")))
}

/// The error for a failed request to `url` (its query string dropped: it may hold a
/// signature or a token).
pub(crate) fn request_error(kind: &str, source: &str, url: &str, e: reqwest::Error) -> Error {
    let url = url.split(['?', '#']).next().unwrap_or(url);
    let why = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        // reqwest's message may carry the URL with its query; keep only the cause chain.
        let mut why = String::new();
        let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(c) = cause {
            why = c.to_string();
            cause = c.source();
        }
        if why.is_empty() {
            "request failed".to_owned()
        } else {
            why
        }
    };
    Error::backend(kind, source, format!("{url}: {why}"))
}

/// `resp` if its status is a success; otherwise a clear error: `unauthorized` for 401/403
/// (naming the source, never the credential), [`Error::NotFound`]-like wording for 404.
pub(crate) fn check_status(
    kind: &str,
    source: &str,
    what: &str,
    resp: reqwest::Response,
) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let shown = shown_url(resp.url());
    let message = match status.as_u16() {
        401 | 403 => format!(
            "unauthorized: {shown} refused the credentials for {what} (HTTP {status}); \
             check the token given to `dkt init`"
        ),
        404 => format!("{what} not found at {shown} (HTTP 404)"),
        429 => format!("{what}: {shown} is rate limiting (HTTP 429); try again later"),
        _ => format!("{what}: {shown} answered HTTP {status}"),
    };
    Err(Error::backend(kind, source, message))
}

/// The longest `Retry-After` that [`send`] waits for.
const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Send `req` to `url`. A `429 Too Many Requests` or `503 Service Unavailable` that says
/// `Retry-After: SECONDS` (at most a minute) is waited out and the request sent again, at
/// most twice; other answers are returned as they are, for [`check_status`].
pub(crate) async fn send(
    kind: &str,
    source: &str,
    url: &str,
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response> {
    let (mut req, mut attempt) = (req, 0);
    loop {
        let again = req.try_clone();
        let resp = req
            .send()
            .await
            .map_err(|e| request_error(kind, source, url, e))?;
        let busy = matches!(resp.status().as_u16(), 429 | 503);
        let wait = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(std::time::Duration::from_secs);
        match (busy, wait, again) {
            (true, Some(wait), Some(again)) if attempt < 2 && wait <= MAX_RETRY_AFTER => {
                tracing::info!(
                    kind,
                    source,
                    ?wait,
                    "server busy; retrying after Retry-After"
                );
                tokio::time::sleep(wait).await;
                (req, attempt) = (again, attempt + 1);
            }
            _ => return Ok(resp),
        }
    }
}

/// What [`download`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Downloaded {
    /// Bytes written.
    pub(crate) size: u64,
    /// Hex sha256 of the bytes.
    pub(crate) sha256: String,
    /// Hex md5 of the bytes.
    pub(crate) md5: String,
}

/// Stream the body of `resp` into a new temporary file in `dir`, hashing as it goes, then
/// move it to `dest`: `dest` is either absent or complete. `what` names the transfer for
/// progress. A body shorter than its `Content-Length` is an error.
pub(crate) async fn download(
    ctx: &Context,
    kind: &str,
    source: &str,
    what: &str,
    mut resp: reqwest::Response,
    dest: &Path,
) -> Result<Downloaded> {
    let dir = dest.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).at(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).at(dir)?;
    let expected = resp.content_length();
    let mut transfer = ctx.progress.start(what, expected);
    let mut sha = sha2::Sha256::new();
    let mut md5 = md5::Md5::new();
    let mut size = 0u64;
    let url = resp.url().to_string();
    let mut speed = LowSpeed::new(ctx.network_timeout);
    loop {
        let chunk = resp.chunk().await.map_err(|e| match expected {
            Some(n) if n > size => Error::backend(
                kind,
                source,
                format!("{what}: truncated download ({size} of {n} bytes): {e}"),
            ),
            _ => request_error(kind, source, &url, e),
        })?;
        let Some(chunk) = chunk else { break };
        tmp.write_all(&chunk).at(tmp.path())?;
        sha.update(&chunk);
        md5.update(&chunk);
        size += chunk.len() as u64;
        transfer.advance(chunk.len() as u64);
        speed
            .advance(chunk.len())
            .map_err(|m| Error::backend(kind, source, format!("{what}: {m}")))?;
    }
    if let Some(n) = expected {
        if n != size {
            return Err(Error::backend(
                kind,
                source,
                format!("{what}: truncated download ({size} of {n} bytes)"),
            ));
        }
    }
    tmp.as_file().sync_all().at(tmp.path())?;
    tmp.persist(dest).map_err(|e| Error::io(dest, e.error))?;
    Ok(Downloaded {
        size,
        sha256: hex(&sha.finalize()),
        md5: hex(&md5.finalize()),
    })
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Like [`client`], but redirects are returned to the caller instead of followed, so that
/// a kind sending a credential header can decide where it goes (see [`get_following`]).
pub(crate) fn client_without_redirects(
    ctx: &Context,
    kind: &str,
    source: &str,
) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(ctx.network_timeout)
        .read_timeout(ctx.network_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("dtk/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::backend(kind, source, format!("cannot set up HTTP: {e}")))
}

/// True when `a` and `b` have the same scheme, host and port.
pub(crate) fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// `url` without its user information, query string and fragment (they may hold a
/// credential, a signature or a token), for messages.
pub(crate) fn shown_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

/// GET `url` with `client` (made by [`client_without_redirects`]), following up to 10
/// redirects by hand: `header` (a credential) is sent only to URLs of the same origin as
/// `trusted`, so a redirect to another host (a CDN) never receives it.
pub(crate) async fn get_following(
    client: &reqwest::Client,
    kind: &str,
    source: &str,
    url: reqwest::Url,
    trusted: &reqwest::Url,
    header: Option<(&'static str, &reqwest::header::HeaderValue)>,
) -> Result<reqwest::Response> {
    let mut url = url;
    for _ in 0..=10 {
        let mut req = client.get(url.clone());
        if let Some((name, value)) = header {
            if same_origin(&url, trusted) {
                req = req.header(name, value.clone());
            }
        }
        let resp = send(kind, source, url.as_str(), req).await?;
        let redirect = matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308);
        if !redirect {
            return Ok(resp);
        }
        let next = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| url.join(l).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"));
        match next {
            Some(n) => url = n,
            None => {
                return Err(Error::backend(
                    kind,
                    source,
                    format!("{}: a redirect without a usable Location", shown_url(&url)),
                ))
            }
        }
    }
    Err(Error::backend(
        kind,
        source,
        format!("{}: too many redirects", shown_url(&url)),
    ))
}

/// The body of `resp`, at most `limit` bytes (a bigger body is an error, not a memory
/// blow-up) and at the low-speed limit of [`download`] for `network_timeout`; `what`
/// names it in errors.
pub(crate) async fn body_limited(
    kind: &str,
    source: &str,
    what: &str,
    mut resp: reqwest::Response,
    limit: usize,
    network_timeout: std::time::Duration,
) -> Result<Vec<u8>> {
    let url = resp.url().to_string();
    let expected = resp.content_length();
    let mut speed = LowSpeed::new(network_timeout);
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| request_error(kind, source, &url, e))?
    {
        if body.len() + chunk.len() > limit {
            return Err(Error::backend(
                kind,
                source,
                format!("{what}: the answer is larger than {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
        speed
            .advance(chunk.len())
            .map_err(|m| Error::backend(kind, source, format!("{what}: {m}")))?;
    }
    if let Some(n) = expected {
        if n != body.len() as u64 {
            return Err(Error::backend(
                kind,
                source,
                format!("{what}: truncated answer ({} of {n} bytes)", body.len()),
            ));
        }
    }
    Ok(body)
}

/// A file name for a download: the `filename` of a `Content-Disposition` header if any,
/// else the last segment of the URL's path, made safe (no separators, no `..`, no control
/// characters); `None` when neither gives a usable name.
pub(crate) fn file_name_of(
    resp_headers: Option<&reqwest::header::HeaderMap>,
    url: &reqwest::Url,
) -> Option<String> {
    let from_header = resp_headers
        .and_then(|h| h.get(reqwest::header::CONTENT_DISPOSITION))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(';').find_map(|part| {
                let (k, val) = part.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("filename")
                    .then(|| val.trim().trim_matches('"').to_owned())
            })
        })
        .and_then(|n| safe_file_name(&n));
    from_header.or_else(|| {
        url.path_segments()
            .and_then(|mut s| s.next_back().map(str::to_owned))
            .and_then(|n| safe_file_name(&n))
    })
}

/// `name` as a single safe path component, or `None`.
pub(crate) fn safe_file_name(name: &str) -> Option<String> {
    let name = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+' | '~' | '%') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = cleaned.trim_start_matches('.');
    (!trimmed.is_empty() && trimmed.len() <= 200).then_some(cleaned)
}
