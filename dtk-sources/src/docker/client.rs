//! The registry HTTP API (OCI distribution spec) for one repository, with docker's
//! authentication: a bearer token from the realm a `WWW-Authenticate: Bearer` challenge
//! names (anonymous, or with Basic credentials), or Basic credentials when the registry
//! asks for Basic.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use dtk_api::{Context, Error, Result};
use reqwest::header::{
    HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use tokio::io::AsyncReadExt;

use super::layout::{self, Descriptor, MANIFEST_TYPES, MAX_MANIFEST};
use super::reference::Reference;
use super::KIND;
use crate::net;

/// The credential of the `DOCKER_TOKEN` secret. Never printed.
#[derive(Clone)]
pub(crate) enum Credential {
    /// `USER:PASSWORD` (or `USER:ACCESS_TOKEN`): Basic credentials.
    Basic { user: String, password: String },
    /// A value without `:`: sent as a bearer token.
    Token(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .field("password", &"***")
                .finish(),
            Credential::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// The credential docker itself would use for `registry` (`docker.io` or `host[:port]`):
/// from `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`), its `auths` entry or
/// the credential helper it names (`credHelpers`, `credsStore`, run as
/// `docker-credential-NAME get`). None when there is none; identity tokens (an OAuth
/// refresh token for Docker Hub's login flow) are not used.
fn docker_config_credential(registry: &str) -> Option<Credential> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    match docker_credential::get_credential(registry) {
        Ok(DockerCredential::UsernamePassword(user, password)) => {
            tracing::debug!(registry, "using docker's configured credential");
            Some(Credential::Basic { user, password })
        }
        Ok(DockerCredential::IdentityToken(_)) => {
            tracing::debug!(
                registry,
                "docker's credential is an identity token; not used"
            );
            None
        }
        Err(E::ConfigNotFound | E::ConfigReadError | E::NoCredentialConfigured) => None,
        Err(e) => {
            tracing::warn!(registry, error = %e, "cannot read docker's credential");
            None
        }
    }
}

impl Credential {
    /// The credential a `DOCKER_TOKEN` value stands for (`None` when empty).
    pub(crate) fn parse(value: &str) -> Option<Credential> {
        let v = value.trim();
        if v.is_empty() {
            return None;
        }
        Some(match v.split_once(':') {
            Some((user, password)) => Credential::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            },
            None => Credential::Token(v.to_owned()),
        })
    }
}

/// What an operation needs from the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Pull,
    Push,
}

impl Access {
    fn actions(self) -> &'static str {
        match self {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        }
    }
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// `basic` or `bearer` (lower case).
    pub(crate) scheme: String,
    /// The parameters (`realm`, `service`, `scope`), keys in lower case.
    pub(crate) params: HashMap<String, String>,
}

/// Parse `Bearer realm="...",service="...",scope="a:b:pull,push"`.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

#[derive(Default)]
struct AuthState {
    /// The registry asked for Basic: send the credentials up front.
    basic: bool,
    /// The registry asked for a bearer token and the credential is a raw token.
    raw_bearer: bool,
    /// Bearer tokens from the realm, by scope.
    tokens: HashMap<String, String>,
}

/// A manifest as the registry sent it.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    /// The exact bytes.
    pub(crate) bytes: Vec<u8>,
    /// Its media type (one of the four manifest types).
    pub(crate) media_type: String,
    /// `sha256:` of the bytes, computed here.
    pub(crate) digest: String,
}

impl Fetched {
    /// The descriptor of this manifest.
    pub(crate) fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: Some(self.media_type.clone()),
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            annotations: None,
            platform: None,
            artifact_type: None,
        }
    }
}

/// A client of one repository of one registry, for one source.
pub(crate) struct Client {
    ctx: Context,
    source: String,
    /// `http://host:port` or `https://host`.
    base: String,
    reference: Reference,
    http: reqwest::Client,
    credential: Option<Credential>,
    auth: Mutex<AuthState>,
    /// Blobs larger than this are uploaded in chunks of this size.
    chunk_size: u64,
}

/// The default `[kind.docker] chunk_size`: 32 MiB.
pub(crate) const DEFAULT_CHUNK_SIZE: u64 = 32 << 20;

/// `[kind.docker] chunk_size`: bytes, or a number with `KiB`, `MiB` or `GiB`; at least 1 KiB.
fn chunk_size(ctx: &Context) -> Result<u64> {
    let Some(v) = ctx.setting(KIND, "chunk_size") else {
        return Ok(DEFAULT_CHUNK_SIZE);
    };
    let t = v.trim();
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit: u64 = match t[digits.len()..].to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        _ => 0,
    };
    match digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
    {
        Some(n) if n >= 1024 => Ok(n),
        _ => Err(Error::invalid(
            "setting",
            format!("[kind.docker] chunk_size = {v:?}"),
            "expected a size of at least 1KiB, such as 8MiB",
        )),
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("source", &self.source)
            .field("base", &self.base)
            .field("repo", &self.reference.repo)
            .field("credential", &self.credential.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<AuthState>) -> std::sync::MutexGuard<'_, AuthState> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Client {
    /// A client for `reference` on behalf of source `source`. No network I/O: the
    /// credential is the project's `DOCKER_TOKEN` secret, else docker's own for the
    /// registry (see [`docker_config_credential`]).
    pub(crate) fn new(ctx: &Context, source: &str, reference: Reference) -> Result<Client> {
        let plain = reference.plain_http(ctx.setting(KIND, "insecure"));
        let scheme = if plain { "http" } else { "https" };
        let base = format!("{scheme}://{}", reference.api_host());
        let credential = ctx
            .secrets
            .get(dtk_api::secrets::DOCKER_TOKEN)
            .and_then(Credential::parse)
            .or_else(|| docker_config_credential(&reference.registry));
        Ok(Client {
            http: net::client(ctx, KIND, source)?,
            ctx: ctx.clone(),
            source: source.to_owned(),
            base,
            reference,
            credential,
            auth: Mutex::new(AuthState::default()),
            chunk_size: chunk_size(ctx)?,
        })
    }

    pub(crate) fn err(&self, message: impl Into<String>) -> Error {
        Error::backend(KIND, &self.source, message)
    }

    /// The registry as docker names it (`docker.io`, `host[:port]`).
    pub(crate) fn registry(&self) -> &str {
        &self.reference.registry
    }

    /// The repository (`team/app`).
    pub(crate) fn repo(&self) -> &str {
        &self.reference.repo
    }

    /// `REGISTRY/REPO` for messages.
    pub(crate) fn shown(&self) -> String {
        self.reference.location()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.reference.repo)
    }

    fn scope(&self, access: Access) -> String {
        format!("repository:{}:{}", self.reference.repo, access.actions())
    }

    fn authorize(&self, rb: reqwest::RequestBuilder, scope: &str) -> reqwest::RequestBuilder {
        let state = lock(&self.auth);
        match &self.credential {
            Some(Credential::Token(t)) if state.raw_bearer => return rb.bearer_auth(t),
            _ => {}
        }
        if let Some(t) = state.tokens.get(scope) {
            return rb.bearer_auth(t);
        }
        match &self.credential {
            Some(Credential::Basic { user, password }) if state.basic => {
                rb.basic_auth(user, Some(password))
            }
            _ => rb,
        }
    }

    /// Send the request `build` makes (called again once after an authentication
    /// challenge), authenticated for `access`.
    async fn send(
        &self,
        access: Access,
        url: &str,
        build: impl Fn(&reqwest::Client) -> Result<reqwest::RequestBuilder>,
    ) -> Result<reqwest::Response> {
        let scope = self.scope(access);
        let mut answered = false;
        loop {
            let rb = self.authorize(build(&self.http)?, &scope);
            let resp = net::send(KIND, &self.source, url, rb).await?;
            if resp.status() != StatusCode::UNAUTHORIZED || answered {
                return Ok(resp);
            }
            answered = true;
            let challenge = challenges(&resp).find(|c| c.scheme == "bearer" || c.scheme == "basic");
            let Some(challenge) = challenge else {
                return Ok(resp);
            };
            if !self.answer(&challenge, &scope).await? {
                return Ok(resp);
            }
        }
    }

    /// Act on a challenge; false when there is nothing more to try.
    async fn answer(&self, challenge: &Challenge, scope: &str) -> Result<bool> {
        if challenge.scheme == "basic" {
            return Ok(match &self.credential {
                Some(Credential::Basic { .. }) => {
                    let mut s = lock(&self.auth);
                    let first = !s.basic;
                    s.basic = true;
                    first
                }
                _ => false,
            });
        }
        if let Some(Credential::Token(_)) = &self.credential {
            let mut s = lock(&self.auth);
            let first = !s.raw_bearer;
            s.raw_bearer = true;
            return Ok(first);
        }
        let token = self.fetch_token(challenge, scope).await?;
        lock(&self.auth).tokens.insert(scope.to_owned(), token);
        Ok(true)
    }

    /// Get a bearer token from the challenge's realm.
    async fn fetch_token(&self, challenge: &Challenge, scope: &str) -> Result<String> {
        let realm = challenge
            .params
            .get("realm")
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                self.err(format!(
                    "{} asks for a bearer token but names no realm",
                    self.reference.registry
                ))
            })?;
        let mut url = Url::parse(realm)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                self.err(format!(
                    "{} names an invalid token realm {realm:?}",
                    self.reference.registry
                ))
            })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = challenge.params.get("service") {
                q.append_pair("service", service);
            }
            // The scope this client needs for the operation (so one token serves every
            // request of a publish, the `HEAD`s that only need `pull` included), and any
            // scope of the challenge that it does not cover.
            q.append_pair("scope", scope);
            if let Some(asked) = challenge.params.get("scope") {
                for extra in asked.split_whitespace() {
                    if !scope_covers(scope, extra) {
                        q.append_pair("scope", extra);
                    }
                }
            }
        }
        let shown = url.as_str().to_owned();
        let mut rb = self.http.get(url);
        if let Some(Credential::Basic { user, password }) = &self.credential {
            rb = rb.basic_auth(user, Some(password));
        }
        let resp = net::send(KIND, &self.source, &shown, rb).await?;
        let resp = net::check_status(KIND, &self.source, "a registry token", resp)?;
        let body = self.read_limited(resp, 1 << 20, &shown).await?;
        #[derive(serde::Deserialize)]
        struct TokenReply {
            token: Option<String>,
            access_token: Option<String>,
        }
        let reply: TokenReply = serde_json::from_slice(&body).map_err(|_| {
            self.err(format!(
                "the token service {} answered something that is not a token",
                shown.split('?').next().unwrap_or(&shown)
            ))
        })?;
        reply
            .token
            .or(reply.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                self.err(format!(
                    "the token service {} answered no token",
                    shown.split('?').next().unwrap_or(&shown)
                ))
            })
    }

    /// Read a whole (small) body, at most `limit` bytes, at the low-speed limit of
    /// downloads.
    async fn read_limited(
        &self,
        mut resp: reqwest::Response,
        limit: u64,
        url: &str,
    ) -> Result<Vec<u8>> {
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(self.err(format!("{url}: the answer is larger than {limit} bytes")));
        }
        let mut out = Vec::new();
        let mut speed = net::LowSpeed::new(self.ctx.network_timeout);
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| net::request_error(KIND, &self.source, url, e))?
        {
            out.extend_from_slice(&chunk);
            speed
                .advance(chunk.len())
                .map_err(|m| self.err(format!("{url}: {m}")))?;
            if out.len() as u64 > limit {
                return Err(self.err(format!("{url}: the answer is larger than {limit} bytes")));
            }
        }
        Ok(out)
    }

    /// The error for an unexpected answer to `what`: "unauthorized" for 401/403 (through
    /// [`net::check_status`]), else the status with the registry's error codes.
    async fn failure(&self, what: &str, resp: reqwest::Response) -> Error {
        let status = resp.status();
        if matches!(status.as_u16(), 401 | 403) {
            if let Some(e) = self.refused_token(what, &resp) {
                return e;
            }
            if self.credential.is_none() {
                let shown = net::shown_url(resp.url());
                return self.err(format!(
                    "unauthorized: {shown} requires credentials for {what} (HTTP {status}) and \
                     no DOCKER_TOKEN secret is set (give one with `dkt init --docker-token \
                     USER:PASSWORD`); some registries also answer so for a repository that \
                     does not exist"
                ));
            }
            return match net::check_status(KIND, &self.source, what, resp) {
                Err(e) => e,
                Ok(_) => self.err(format!("{what}: HTTP {status}")),
            };
        }
        let url = resp.url().path().to_owned();
        let detail = match self.read_limited(resp, 64 << 10, &url).await {
            Ok(body) => registry_errors(&body),
            Err(_) => String::new(),
        };
        self.err(format!(
            "{what}: {}{url} answered HTTP {status}{detail}",
            self.base
        ))
    }

    /// The error for a bearer token the registry refused (its challenge says
    /// `error="invalid_token"`, or `error="insufficient_scope"` when credentials were
    /// given): which token, and why it may have been refused.
    fn refused_token(&self, what: &str, resp: &reqwest::Response) -> Option<Error> {
        let challenge = challenges(resp).find(|c| c.scheme == "bearer")?;
        let shown = net::shown_url(resp.url());
        let status = resp.status();
        let from = match (&self.credential, challenge.params.get("realm")) {
            (Some(Credential::Token(_)), _) => "the token given as DOCKER_TOKEN".to_owned(),
            (_, Some(realm)) => {
                let realm = realm.split('?').next().unwrap_or(realm);
                format!("the token from {realm}")
            }
            (_, None) => "the token".to_owned(),
        };
        match challenge.params.get("error").map(String::as_str) {
            Some("invalid_token") => Some(self.err(format!(
                "unauthorized: {shown} refused {from} for {what} (HTTP {status}, \
                 invalid_token): it may have expired, be meant for another registry \
                 service, or be signed by a key the registry does not trust; check this \
                 machine's clock"
            ))),
            Some("insufficient_scope") if self.credential.is_some() => {
                let needed = challenge
                    .params
                    .get("scope")
                    .map(|s| format!(" `{s}`"))
                    .unwrap_or_default();
                Some(self.err(format!(
                    "unauthorized: {shown} refused {from} for {what} (HTTP {status}, \
                     insufficient_scope): it does not grant{needed}; the DOCKER_TOKEN \
                     secret (its account, or the token itself) may lack that access"
                )))
            }
            _ => None,
        }
    }

    /// Every tag of the repository (`GET /v2/REPO/tags/list`, following the `Link`
    /// header's pages); empty when the registry has no such repository.
    pub(crate) async fn tags(&self) -> Result<Vec<String>> {
        const MAX_PAGES: usize = 1000;
        let mut url = self.url("tags/list");
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let u = url.clone();
            let resp = self.send(Access::Pull, &u, |c| Ok(c.get(&u))).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(out);
            }
            if !resp.status().is_success() {
                return Err(self
                    .failure(&format!("the tags of {}", self.shown()), resp)
                    .await);
            }
            let next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(|l| {
                    let (target, rest) = l.trim().strip_prefix('<')?.split_once('>')?;
                    rest.contains("rel=\"next\"").then(|| target.to_owned())
                });
            let bytes = self.read_limited(resp, MAX_MANIFEST, &u).await?;
            #[derive(serde::Deserialize)]
            struct Page {
                #[serde(default)]
                tags: Option<Vec<String>>,
            }
            let page: Page = serde_json::from_slice(&bytes).map_err(|e| {
                self.err(format!(
                    "the tags of {}: the registry's answer is not a tag list: {e}",
                    self.shown()
                ))
            })?;
            out.extend(page.tags.unwrap_or_default());
            match next {
                Some(n) if n.starts_with('/') => url = format!("{}{n}", self.base),
                Some(n) if n.starts_with(&self.base) => url = n,
                Some(n) => {
                    return Err(self.err(format!(
                        "the tags of {}: the next page {n:?} is on another server",
                        self.shown()
                    )))
                }
                None => {
                    out.sort();
                    out.dedup();
                    return Ok(out);
                }
            }
        }
        Err(self.err(format!(
            "the tags of {}: more than {MAX_PAGES} pages",
            self.shown()
        )))
    }

    /// `GET` the manifest `reference` (a tag or a digest); `None` when the registry has no
    /// such manifest (or repository).
    pub(crate) async fn manifest(&self, reference: &str) -> Result<Option<Fetched>> {
        let url = self.url(&format!("manifests/{reference}"));
        let resp = self
            .send(Access::Pull, &url, |c| {
                Ok(c.get(&url).header(ACCEPT, MANIFEST_TYPES.join(", ")))
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self
                .failure(&format!("manifest {reference} of {}", self.shown()), resp)
                .await);
        }
        let headers = resp.headers().clone();
        let bytes = self.read_limited(resp, MAX_MANIFEST, &url).await?;
        self.check_manifest(reference, &headers, bytes).map(Some)
    }

    fn check_manifest(
        &self,
        reference: &str,
        headers: &HeaderMap,
        bytes: Vec<u8>,
    ) -> Result<Fetched> {
        let declared = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let media_type = layout::media_type_of(&bytes, declared).map_err(|e| {
            self.err(format!(
                "manifest {reference} of {}: the registry answered {e}",
                self.shown()
            ))
        })?;
        let digest = layout::sha256_digest(&bytes);
        // By digest, callers compare the bytes with the digest asked for (`verify` turns
        // a difference into a mismatch); by tag, the header must agree with the bytes.
        let claimed = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok());
        if let (Some(claimed), false) = (claimed, reference.starts_with("sha256:")) {
            if claimed.starts_with("sha256:") && claimed != digest {
                return Err(self.err(format!(
                    "manifest {reference} of {}: the registry says its digest is {claimed} \
                     but the bytes received hash to {digest}",
                    self.shown()
                )));
            }
        }
        Ok(Fetched {
            bytes,
            media_type,
            digest,
        })
    }

    /// Download blob `d` into `dest` (absent or complete afterwards), checking its size and
    /// digest; streams in constant memory with progress.
    pub(crate) async fn download_blob(&self, d: &Descriptor, dest: &Path) -> Result<()> {
        let url = self.url(&format!("blobs/{}", d.digest));
        let resp = self.send(Access::Pull, &url, |c| Ok(c.get(&url))).await?;
        if !resp.status().is_success() {
            return Err(self
                .failure(&format!("blob {} of {}", d.digest, self.shown()), resp)
                .await);
        }
        let partial = dest.with_extension("partial");
        let what = format!("{}: {}", self.source, short(&d.digest));
        let got = net::download(&self.ctx, KIND, &self.source, &what, resp, &partial).await;
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        let found = format!("sha256:{}", got.sha256);
        if found != d.digest || got.size != d.size {
            let _ = std::fs::remove_file(&partial);
            return Err(self.err(format!(
                "blob {} of {}: received {} bytes hashing to {found}, expected {} bytes",
                d.digest,
                self.shown(),
                got.size,
                d.size
            )));
        }
        std::fs::rename(&partial, dest).map_err(|e| Error::io(dest, e))
    }

    /// True when the registry has blob `digest` in the repository.
    pub(crate) async fn has_blob(&self, digest: &str) -> Result<bool> {
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self.send(Access::Push, &url, |c| Ok(c.head(&url))).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self
                .failure(&format!("checking blob {digest} of {}", self.shown()), resp)
                .await),
        }
    }

    /// Upload the file `path` as blob `d` (a POST for an upload session, then one PUT
    /// streaming the file with the digest).
    pub(crate) async fn upload_blob(&self, d: &Descriptor, path: &Path) -> Result<()> {
        let start = self.url("blobs/uploads/");
        let resp = self
            .send(Access::Push, &start, |c| {
                Ok(c.post(&start).header(CONTENT_LENGTH, "0"))
            })
            .await?;
        if resp.status() != StatusCode::ACCEPTED && !resp.status().is_success() {
            return Err(self
                .failure(&format!("starting the upload of blob {}", d.digest), resp)
                .await);
        }
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                self.err(format!(
                    "starting the upload of blob {}: the registry gave no upload location",
                    d.digest
                ))
            })?;
        self.upload_at(d, path, &location).await
    }

    /// Mount blob `d` from repository `from` of the same registry (`POST
    /// blobs/uploads/?mount=DIGEST&from=REPO`): true when the registry mounted it (`201`).
    /// When it starts an upload instead (`202`: it cannot, or may not, mount), the file
    /// `path` is uploaded there; any other answer, a new upload.
    pub(crate) async fn mount_or_upload(
        &self,
        d: &Descriptor,
        path: &Path,
        from: &str,
    ) -> Result<bool> {
        let mut url = Url::parse(&self.url("blobs/uploads/"))
            .map_err(|_| self.err(format!("invalid registry URL {}", self.base)))?;
        url.query_pairs_mut()
            .append_pair("mount", &d.digest)
            .append_pair("from", from);
        let shown = url.to_string();
        let resp = self
            .send(Access::Push, &shown, |c| {
                Ok(c.post(url.clone()).header(CONTENT_LENGTH, "0"))
            })
            .await?;
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match (resp.status(), location) {
            (StatusCode::CREATED, _) => Ok(true),
            (StatusCode::ACCEPTED, Some(location)) => {
                tracing::debug!(blob = %d.digest, from, "not mounted; uploading");
                self.upload_at(d, path, &location).await.map(|()| false)
            }
            (status, _) => {
                tracing::debug!(blob = %d.digest, from, %status, "mount refused; uploading");
                self.upload_blob(d, path).await.map(|()| false)
            }
        }
    }

    /// Upload the file `path` as blob `d` into the upload session at `location`.
    async fn upload_at(&self, d: &Descriptor, path: &Path, location: &str) -> Result<()> {
        let mut put = self.upload_url(d, location)?;
        let what = format!("{}: {}", self.source, short(&d.digest));
        let progress = self.ctx.progress.clone();
        let size = d.size;
        if size > self.chunk_size {
            return self.upload_chunks(d, path, put).await;
        }
        put.query_pairs_mut().append_pair("digest", &d.digest);
        let put_url = put.to_string();
        let resp = self
            .send(Access::Push, &put_url, |c| {
                let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
                let body = file_body(
                    tokio::fs::File::from_std(file),
                    progress.start(&what, Some(size)),
                );
                Ok(c.request(Method::PUT, put.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size.to_string())
                    .body(body))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self
                .failure(&format!("uploading blob {}", d.digest), resp)
                .await);
        }
        Ok(())
    }

    /// An upload location the registry gave (absolute, or relative to the registry).
    fn upload_url(&self, d: &Descriptor, location: &str) -> Result<Url> {
        Url::parse(&self.base)
            .and_then(|b| b.join(location))
            .map_err(|_| {
                self.err(format!(
                    "uploading blob {}: invalid upload location {location:?}",
                    d.digest
                ))
            })
    }

    /// Upload `path` as blob `d` in chunks of `chunk_size`: a `PATCH` per chunk with its
    /// `Content-Range`, each to the location the previous answer gave, then a `PUT` with
    /// the digest and no body.
    async fn upload_chunks(&self, d: &Descriptor, path: &Path, mut at: Url) -> Result<()> {
        let what = format!("{}: {}", self.source, short(&d.digest));
        let shared = SharedTransfer(std::sync::Arc::new(Mutex::new(
            self.ctx.progress.start(&what, Some(d.size)),
        )));
        let mut offset = 0u64;
        while offset < d.size {
            let len = self.chunk_size.min(d.size - offset);
            let url = at.to_string();
            let resp = self
                .send(Access::Push, &url, |c| {
                    use std::io::Seek as _;
                    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
                    file.seek(std::io::SeekFrom::Start(offset))
                        .map_err(|e| Error::io(path, e))?;
                    // The chunk streams from the file too; the registry checks the digest.
                    let chunk = tokio::fs::File::from_std(file).take(len);
                    let body = file_body(chunk, Box::new(shared.clone()));
                    Ok(c.request(Method::PATCH, at.clone())
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, len.to_string())
                        .header("Content-Range", format!("{offset}-{}", offset + len - 1))
                        .body(body))
                })
                .await?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(self
                    .failure(
                        &format!(
                            "uploading bytes {offset}-{} of blob {}",
                            offset + len - 1,
                            d.digest
                        ),
                        resp,
                    )
                    .await);
            }
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| {
                    self.err(format!(
                        "uploading blob {}: the registry gave no location after a chunk",
                        d.digest
                    ))
                })?;
            at = self.upload_url(d, &location)?;
            offset += len;
        }
        at.query_pairs_mut().append_pair("digest", &d.digest);
        let url = at.to_string();
        let resp = self
            .send(Access::Push, &url, |c| {
                Ok(c.request(Method::PUT, at.clone())
                    .header(CONTENT_LENGTH, "0"))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self
                .failure(&format!("finishing the upload of blob {}", d.digest), resp)
                .await);
        }
        Ok(())
    }

    /// `PUT` manifest `bytes` of `media_type` under `reference` (a tag or its digest).
    /// True when the registry answered with an `OCI-Subject` header: it processed the
    /// manifest's `subject` (it offers the referrers API).
    pub(crate) async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<bool> {
        let url = self.url(&format!("manifests/{reference}"));
        let resp = self
            .send(Access::Push, &url, |c| {
                Ok(c.put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.to_vec()))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self
                .failure(
                    &format!("pushing the manifest {reference} of {}", self.shown()),
                    resp,
                )
                .await);
        }
        let digest = layout::sha256_digest(bytes);
        if let Some(claimed) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if claimed.starts_with("sha256:") && claimed != digest {
                return Err(self.err(format!(
                    "pushed manifest {digest} to {} but the registry recorded {claimed}",
                    self.shown()
                )));
            }
        }
        Ok(resp.headers().contains_key("oci-subject"))
    }

    /// Upload `bytes` as blob `d` unless the repository has it (through a temporary file
    /// in the context's temporary directory).
    pub(crate) async fn ensure_blob(&self, d: &Descriptor, bytes: &[u8]) -> Result<()> {
        if self.has_blob(&d.digest).await? {
            return Ok(());
        }
        let tmp = &self.ctx.tmp_dir;
        std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
        let file = tempfile::NamedTempFile::new_in(tmp).map_err(|e| Error::io(tmp, e))?;
        std::fs::write(file.path(), bytes).map_err(|e| Error::io(file.path(), e))?;
        self.upload_blob(d, file.path()).await
    }

    /// `GET /v2/REPO/referrers/DIGEST` (the referrers API): the image index listing the
    /// manifests whose `subject` is `digest`; `None` when the registry answers 404 (it
    /// does not offer the API: see the referrers tag schema).
    pub(crate) async fn referrers(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let url = self.url(&format!("referrers/{digest}"));
        let resp = self
            .send(Access::Pull, &url, |c| {
                Ok(c.get(&url).header(ACCEPT, layout::OCI_INDEX))
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self
                .failure(
                    &format!("the referrers of {digest} in {}", self.shown()),
                    resp,
                )
                .await);
        }
        self.read_limited(resp, MAX_MANIFEST, &url).await.map(Some)
    }

    /// Download the (small) blob `d` into memory, checking its size and digest.
    pub(crate) async fn small_blob(&self, d: &Descriptor, limit: u64) -> Result<Vec<u8>> {
        if d.size > limit {
            return Err(self.err(format!(
                "blob {} of {} is {} bytes, more than the {limit} expected",
                d.digest,
                self.shown(),
                d.size
            )));
        }
        let url = self.url(&format!("blobs/{}", d.digest));
        let resp = self.send(Access::Pull, &url, |c| Ok(c.get(&url))).await?;
        if !resp.status().is_success() {
            return Err(self
                .failure(&format!("blob {} of {}", d.digest, self.shown()), resp)
                .await);
        }
        let bytes = self.read_limited(resp, limit, &url).await?;
        let found = layout::sha256_digest(&bytes);
        if found != d.digest || bytes.len() as u64 != d.size {
            return Err(self.err(format!(
                "blob {} of {}: received {} bytes hashing to {found}, expected {} bytes",
                d.digest,
                self.shown(),
                bytes.len(),
                d.size
            )));
        }
        Ok(bytes)
    }
}

/// A request body streaming `file` in 64 KiB chunks, reporting progress.
fn file_body(
    file: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    transfer: Box<dyn dtk_api::source::Transfer>,
) -> reqwest::Body {
    let stream = futures::stream::unfold(Some((file, transfer)), |state| async move {
        let (mut file, mut transfer) = state?;
        let mut buf = vec![0u8; 1 << 16];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                transfer.advance(n as u64);
                Some((Ok::<_, std::io::Error>(buf), Some((file, transfer))))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    reqwest::Body::wrap_stream(stream)
}

/// One transfer's progress, shared by the chunks of a chunked upload.
#[derive(Clone)]
struct SharedTransfer(std::sync::Arc<Mutex<Box<dyn dtk_api::source::Transfer>>>);

impl dtk_api::source::Transfer for SharedTransfer {
    fn advance(&mut self, bytes: u64) {
        match self.0.lock() {
            Ok(mut t) => t.advance(bytes),
            Err(p) => p.into_inner().advance(bytes),
        }
    }
}

/// The `WWW-Authenticate` challenges of a response that parse.
fn challenges(resp: &reqwest::Response) -> impl Iterator<Item = Challenge> + '_ {
    resp.headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .filter_map(parse_challenge)
}

/// True when the token scope `have` (`TYPE:NAME:ACTIONS`) grants everything `want` asks.
fn scope_covers(have: &str, want: &str) -> bool {
    fn split(s: &str) -> Option<(&str, &str, Vec<&str>)> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        Some((
            kind,
            name,
            actions.split(',').filter(|a| !a.is_empty()).collect(),
        ))
    }
    match (split(have), split(want)) {
        (Some((hk, hn, ha)), Some((wk, wn, wa))) => {
            hk == wk && hn == wn && wa.iter().all(|a| ha.contains(a) || ha.contains(&"*"))
        }
        _ => have == want,
    }
}

/// `sha256:` and the first 12 hex digits, for progress lines.
fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// `: CODE: message, ...` from a registry's JSON error body (bounded, printable).
fn registry_errors(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<One>,
    }
    #[derive(serde::Deserialize)]
    struct One {
        code: Option<String>,
        message: Option<String>,
    }
    let Ok(e) = serde_json::from_slice::<Errors>(body) else {
        return String::new();
    };
    let parts: Vec<String> = e
        .errors
        .iter()
        .take(3)
        .map(|o| {
            let s = match (&o.code, &o.message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.clone(),
                (None, Some(m)) => m.clone(),
                (None, None) => String::new(),
            };
            s.chars().filter(|c| !c.is_control()).take(200).collect()
        })
        .filter(|s: &String| !s.is_empty())
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:team/app:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:team/app:pull,push");
        let b = parse_challenge(r#"Basic realm="dtk test""#).unwrap();
        assert_eq!(b.scheme, "basic");
        assert_eq!(b.params["realm"], "dtk test");
        let odd = parse_challenge(r#"Bearer realm=x, error="insufficient_scope""#).unwrap();
        assert_eq!(odd.params["realm"], "x");
        assert_eq!(odd.params["error"], "insufficient_scope");
        assert!(parse_challenge("").is_none());
    }

    #[test]
    fn scopes_cover() {
        let push = "repository:team/app:pull,push";
        assert!(scope_covers(push, "repository:team/app:pull"));
        assert!(scope_covers(push, push));
        assert!(scope_covers("repository:team/app:*", push));
        assert!(!scope_covers("repository:team/app:pull", push));
        assert!(!scope_covers(push, "repository:team/other:pull"));
        assert!(!scope_covers(push, "registry:catalog:*"));
        assert!(scope_covers("odd", "odd"));
        assert!(!scope_covers("odd", "other"));
    }

    #[test]
    fn credentials_never_print() {
        let b = Credential::parse("me:hunter2-secret").unwrap();
        assert!(!format!("{b:?}").contains("hunter2"));
        let t = Credential::parse("rawtoken123").unwrap();
        assert!(!format!("{t:?}").contains("rawtoken123"));
        assert!(matches!(t, Credential::Token(_)));
        assert!(Credential::parse("  ").is_none());
    }

    #[test]
    fn registry_error_bodies() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(
            registry_errors(body),
            " (MANIFEST_UNKNOWN: manifest unknown)"
        );
        assert_eq!(registry_errors(b"<html>"), "");
    }
}
