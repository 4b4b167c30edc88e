//! The connection to the store: settings and credentials from the context and the
//! environment, bounded waits, and errors that say what failed without any credential.

use std::sync::Arc;
use std::time::Duration;

use dtk_api::secrets::{AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY};
use dtk_api::{Context, Error, Result};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsCredential};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::{BackoffConfig, ClientOptions, RetryConfig, StaticCredentialProvider};

use super::location::Location;
use super::profile::Profile;
use super::KIND;

/// The keys of `[kind.s3]` in `.dkt/config`.
pub const SETTINGS: &[&str] = &[
    "endpoint",
    "region",
    "allow_http",
    "anonymous",
    "check_md5",
    "imds",
];

/// The kind's settings, after precedence (`[kind.s3]`, then the environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Settings {
    /// A custom endpoint (S3-compatible stores); `None` for AWS.
    pub(crate) endpoint: Option<String>,
    /// The region, if set.
    pub(crate) region: Option<String>,
    /// Plain HTTP allowed.
    pub(crate) allow_http: Option<bool>,
    /// Send unsigned requests (public buckets).
    pub(crate) anonymous: bool,
    /// Check downloads against ETags that are plain md5s.
    pub(crate) check_md5: bool,
    /// Ask the cloud's instance metadata service for credentials when none are configured
    /// (`imds = true`, or `AWS_EC2_METADATA_DISABLED=false` in the environment). Off by
    /// default, so a machine without credentials gets a clear error at once instead of
    /// sending requests to a link-local address.
    pub(crate) imds: bool,
    /// The shared AWS config files' profile (`AWS_PROFILE`, else `default`), if any.
    pub(crate) profile: Option<Profile>,
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" => Ok(false),
        _ => Err(Error::invalid(
            "setting",
            format!("[kind.s3] {key} = {value:?}"),
            "expected \"true\" or \"false\"",
        )),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Settings {
    /// Read `[kind.s3]` (unknown keys are refused, so typos show), falling back to the
    /// standard AWS environment variables.
    pub(crate) fn from_context(ctx: &Context) -> Result<Settings> {
        if let Some(table) = ctx.settings.get(KIND) {
            if let Some(k) = table.keys().find(|k| !SETTINGS.contains(&k.as_str())) {
                return Err(Error::invalid(
                    "setting",
                    format!("[kind.s3] {k}"),
                    format!("unknown key (known: {})", SETTINGS.join(", ")),
                ));
            }
        }
        let get = |key: &str| ctx.setting(KIND, key).map(str::to_owned);
        let profile = super::profile::load()?;
        let from_profile =
            |f: fn(&Profile) -> &Option<String>| profile.as_ref().and_then(|p| f(p).clone());
        let endpoint = get("endpoint")
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| env("AWS_ENDPOINT"))
            .or_else(|| from_profile(|p| &p.endpoint_url))
            .map(|e| e.trim_end_matches('/').to_owned());
        let region = get("region")
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| from_profile(|p| &p.region));
        let allow_http = match get("allow_http") {
            Some(v) => Some(parse_bool("allow_http", &v)?),
            None => env("AWS_ALLOW_HTTP")
                .map(|v| parse_bool("allow_http", &v))
                .transpose()?,
        };
        let anonymous = get("anonymous")
            .map(|v| parse_bool("anonymous", &v))
            .transpose()?
            .unwrap_or(false);
        let check_md5 = get("check_md5")
            .map(|v| parse_bool("check_md5", &v))
            .transpose()?
            .unwrap_or(true);
        let imds = match get("imds") {
            Some(v) => parse_bool("imds", &v)?,
            // The AWS SDKs' switch, read the other way round: only an explicit "false"
            // (metadata service not disabled) turns it on.
            None => env("AWS_EC2_METADATA_DISABLED")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("false")),
        };
        if let Some(e) = &endpoint {
            let lower = e.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                return Err(Error::invalid(
                    "setting",
                    format!("[kind.s3] endpoint = {e:?}"),
                    "an endpoint is an http:// or https:// URL",
                ));
            }
            if lower.starts_with("http://") && allow_http != Some(true) {
                return Err(Error::invalid(
                    "setting",
                    format!("[kind.s3] endpoint = {e:?}"),
                    "is plain HTTP: set `allow_http = true` in [kind.s3] of .dkt/config (or AWS_ALLOW_HTTP=true) to allow it",
                ));
            }
        }
        Ok(Settings {
            endpoint,
            region,
            allow_http,
            anonymous,
            check_md5,
            imds,
            profile,
        })
    }

    /// The endpoint as shown in messages.
    pub(crate) fn shown_endpoint(&self, bucket: &str) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => format!(
                "AWS S3 ({}, bucket {bucket})",
                self.region.as_deref().unwrap_or("us-east-1")
            ),
        }
    }
}

/// Two clients for one bucket: one for metadata requests (listing, deleting), whose every
/// request is bounded by the network timeout, and one for transfers, whose requests may
/// last as long as data keeps flowing (each read is bounded).
#[derive(Clone)]
pub(crate) struct Connection {
    pub(crate) meta: Arc<AmazonS3>,
    pub(crate) transfer: Arc<AmazonS3>,
    /// The context's network timeout: transfers have no overall bound, but give up below
    /// the low-speed limit over this long.
    pub(crate) network_timeout: Duration,
    pub(crate) settings: Settings,
    /// The endpoint as shown in messages.
    pub(crate) endpoint: String,
    pub(crate) bucket: String,
    /// Where the credentials come from, for messages.
    pub(crate) credentials: Credentials,
    /// Credential values to scrub from any message.
    redact: Vec<String>,
}

/// Where a connection's credentials come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// The project's secrets.
    Secrets,
    /// `AWS_*` environment variables (keys, web identity, container credentials).
    Environment,
    /// The keys of a profile of the shared AWS config files (`AWS_PROFILE`).
    Profile,
    /// None configured, and the instance metadata service allowed (`imds = true`).
    InstanceMetadata,
    /// None configured, and the instance metadata service not allowed: every request
    /// fails at once, without any network traffic.
    Missing,
    /// None: unsigned requests (`anonymous = "true"`).
    Anonymous,
}

impl Credentials {
    fn describe(self) -> &'static str {
        match self {
            Credentials::Secrets => "the project's secrets",
            Credentials::Environment => "the AWS_* environment variables",
            Credentials::Profile => "the AWS profile (AWS_PROFILE, ~/.aws/credentials)",
            Credentials::InstanceMetadata => "the instance metadata service",
            Credentials::Missing => "none",
            Credentials::Anonymous => "none (anonymous requests)",
        }
    }
}

/// The credential provider of a connection that has none: it fails at once, so no request
/// is sent, and above all none to the cloud's metadata address.
#[derive(Debug)]
struct NoCredentials;

#[async_trait::async_trait]
impl object_store::CredentialProvider for NoCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        Err(object_store::Error::Generic {
            store: "S3",
            source: "no credentials configured".into(),
        })
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Set up clients for `location`'s bucket (no network).
    ///
    /// # Errors
    /// [`Error::Invalid`] for bad settings or half-given credentials.
    pub(crate) fn new(ctx: &Context, location: &Location) -> Result<Connection> {
        let settings = Settings::from_context(ctx)?;
        let secret_id = ctx.secrets.get(AWS_ACCESS_KEY_ID).filter(|v| !v.is_empty());
        let secret_key = ctx
            .secrets
            .get(AWS_SECRET_ACCESS_KEY)
            .filter(|v| !v.is_empty());
        let static_creds = match (secret_id, secret_key) {
            (Some(id), Some(key)) => Some((id.to_owned(), key.to_owned())),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::invalid(
                    "secrets",
                    format!("{AWS_ACCESS_KEY_ID}, {AWS_SECRET_ACCESS_KEY}"),
                    "give both or neither (`dkt init --aws-access-key-id ... --aws-secret-access-key ...`)",
                ))
            }
        };
        let mut redact: Vec<String> = Vec::new();
        if let Some((id, key)) = &static_creds {
            redact.push(id.clone());
            redact.push(key.clone());
        }
        if let Some(p) = &settings.profile {
            redact.extend(p.access_key_id.clone());
            redact.extend(p.secret_access_key.clone());
            redact.extend(p.session_token.clone());
        }
        for v in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ] {
            redact.extend(env(v));
        }
        redact.retain(|v| v.len() >= 4);

        let credentials = if settings.anonymous {
            Credentials::Anonymous
        } else if static_creds.is_some() {
            Credentials::Secrets
        } else if (env("AWS_ACCESS_KEY_ID").is_some() && env("AWS_SECRET_ACCESS_KEY").is_some())
            || env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
            || env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
            || env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
        {
            Credentials::Environment
        } else if settings.profile.as_ref().and_then(Profile::keys).is_some() {
            Credentials::Profile
        } else if settings.imds {
            Credentials::InstanceMetadata
        } else {
            Credentials::Missing
        };
        let build = |options: ClientOptions| -> Result<Arc<AmazonS3>> {
            // The environment first (credentials, tokens, web identity...), then what the
            // project says, which wins.
            let mut b = from_env()
                .with_bucket_name(&location.bucket)
                .with_retry(retry(ctx.network_timeout))
                .with_client_options(options);
            if let Some(r) = &settings.region {
                b = b.with_region(r);
            }
            match &settings.endpoint {
                Some(e) => {
                    b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
                }
                None => {
                    // Virtual-hosted style on AWS, except for dotted names (TLS wildcards).
                    b = b.with_virtual_hosted_style_request(!location.bucket.contains('.'));
                }
            }
            if let Some((id, key)) = &static_creds {
                b = b.with_credentials(Arc::new(StaticCredentialProvider::new(AwsCredential {
                    key_id: id.clone(),
                    secret_key: key.clone(),
                    token: None,
                })));
            }
            if let (Credentials::Profile, Some(p)) = (credentials, &settings.profile) {
                if let Some((id, key)) = p.keys() {
                    b = b.with_credentials(Arc::new(StaticCredentialProvider::new(
                        AwsCredential {
                            key_id: id,
                            secret_key: key,
                            token: p.session_token.clone(),
                        },
                    )));
                }
            }
            if credentials == Credentials::Missing {
                b = b.with_credentials(Arc::new(NoCredentials));
            }
            if settings.anonymous {
                b = b.with_skip_signature(true);
            }
            b.build().map(Arc::new).map_err(|e| {
                Error::invalid(
                    "location",
                    location.url(),
                    format!(
                        "cannot set up the S3 client: {}",
                        scrub(&e.to_string(), &redact)
                    ),
                )
            })
        };
        let allow_http = settings.allow_http.unwrap_or(false);
        let nt = ctx.network_timeout;
        let meta = build(
            ClientOptions::new()
                .with_allow_http(allow_http)
                .with_connect_timeout(nt)
                .with_timeout(nt),
        )?;
        let transfer = build(
            ClientOptions::new()
                .with_allow_http(allow_http)
                .with_connect_timeout(nt)
                .with_read_timeout(nt)
                .with_timeout_disabled(),
        )?;
        Ok(Connection {
            meta,
            transfer,
            network_timeout: nt,
            endpoint: settings.shown_endpoint(&location.bucket),
            settings,
            bucket: location.bucket.clone(),
            credentials,
            redact,
        })
    }

    /// The dtk error for `e`, raised while doing `what` for source `source`.
    pub(crate) fn error(&self, source: &str, what: &str, e: &object_store::Error) -> Error {
        let detail = scrub(&chain(e), &self.redact);
        let (code, status) = (s3_code(&detail), http_status(&detail));
        let bucket = &self.bucket;
        let endpoint = &self.endpoint;
        let message = match e {
            object_store::Error::InvalidPath { source: p } => {
                return Error::invalid(
                    "S3 key",
                    path_of(p),
                    format!(
                        "in bucket {bucket:?} cannot be a relative file path ('.' or '..' segment, empty segment or control character); refusing to list or download it"
                    ),
                )
            }
            _ if self.credentials == Credentials::Missing => {
                format!(
                    "no credentials for bucket {bucket:?} while {what}: none in the project's secrets ({AWS_ACCESS_KEY_ID}, {AWS_SECRET_ACCESS_KEY}; `dkt init --aws-access-key-id ... --aws-secret-access-key ...`) nor in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_WEB_IDENTITY_TOKEN_FILE, AWS_CONTAINER_CREDENTIALS_*) nor in the shared AWS config files (the profile AWS_PROFILE names, else default, in ~/.aws/credentials or ~/.aws/config); on a cloud machine, set `imds = true` in [kind.s3] to ask its instance metadata service; for a public bucket set `anonymous = true`"
                )
            }
            _ if self.credentials != Credentials::Secrets
                && self.credentials != Credentials::Anonymous
                && ["169.254.169.254", "169.254.170.2", "/latest/api/token", "/latest/meta-data"]
                    .iter()
                    .any(|m| detail.contains(m)) =>
            {
                format!(
                    "cannot get credentials for bucket {bucket:?} while {what}: none in the project's secrets ({AWS_ACCESS_KEY_ID}, {AWS_SECRET_ACCESS_KEY}; `dkt init --aws-access-key-id ... --aws-secret-access-key ...`) nor in the environment, and {} gave none ({}); for a public bucket set `anonymous = true` in [kind.s3]",
                    self.credentials.describe(),
                    shorten(&detail, 200)
                )
            }
            _ if matches!(
                code.as_deref(),
                Some(
                    "InvalidAccessKeyId"
                        | "SignatureDoesNotMatch"
                        | "AccessDenied"
                        | "InvalidToken"
                        | "ExpiredToken"
                        | "AllAccessDisabled"
                )
            ) || matches!(
                e,
                object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ) || matches!(status, Some(401 | 403)) =>
            {
                format!(
                    "unauthorized: {endpoint} refused the credentials (from {}) for bucket {bucket:?} while {what}{}; check the secrets {AWS_ACCESS_KEY_ID} and {AWS_SECRET_ACCESS_KEY} (`dkt init --aws-access-key-id ... --aws-secret-access-key ...`) or the AWS_* environment variables",
                    self.credentials.describe(),
                    code.map(|c| format!(" ({c})")).unwrap_or_default()
                )
            }
            _ if code.as_deref() == Some("NoSuchBucket") => {
                return Error::NotFound {
                    what: "bucket",
                    name: bucket.clone(),
                    hint: format!(
                        " at {endpoint} (NoSuchBucket) while {what} for s3 source {source:?}"
                    ),
                }
            }
            object_store::Error::Precondition { .. } => {
                format!("an object changed at {endpoint} while {what} (its ETag no longer matches the listing); try again")
            }
            _ => {
                let why = match http_kind(e) {
                    Some(HttpErrorKind::Connect) => "cannot connect".to_owned(),
                    Some(HttpErrorKind::Timeout) => "timed out".to_owned(),
                    Some(HttpErrorKind::Decode) => "garbled response".to_owned(),
                    Some(HttpErrorKind::Interrupted) => "connection interrupted".to_owned(),
                    _ => match (&code, status) {
                        (Some(c), _) => format!("the store answered {c}"),
                        (None, Some(s)) => format!("the store answered HTTP {s}"),
                        (None, None) => "request failed".to_owned(),
                    },
                };
                format!("{endpoint}: {why} while {what}: {}", shorten(&detail, 400))
            }
        };
        Error::backend(KIND, source, message)
    }
}

/// Variables of the environment that [`Settings`] reads itself (with its own precedence).
const READ_BY_SETTINGS: &[&str] = &[
    "AWS_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ALLOW_HTTP",
    "AWS_BUCKET",
    "AWS_BUCKET_NAME",
    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
];

/// A builder with every other `AWS_*` variable object_store knows (credentials, session
/// tokens, web identity, container credentials, ...), like `AmazonS3Builder::from_env`.
fn from_env() -> AmazonS3Builder {
    let mut b = AmazonS3Builder::new();
    for (k, v) in std::env::vars() {
        if !k.starts_with("AWS_") || READ_BY_SETTINGS.contains(&k.as_str()) || v.is_empty() {
            continue;
        }
        if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            b = b.with_config(key, v);
        }
    }
    b
}

/// The retry budget: a few quick retries, never started after `timeout` from the first try.
fn retry(timeout: Duration) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: timeout,
    }
}

/// The messages of `e` and its causes, joined.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

/// The kind of the first HTTP error in `e`'s causes.
fn http_kind(e: &(dyn std::error::Error + 'static)) -> Option<HttpErrorKind> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<HttpError>() {
            return Some(h.kind());
        }
        cause = c.source();
    }
    None
}

/// The S3 error code in an XML error body (`<Code>NoSuchBucket</Code>`).
fn s3_code(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + "<Code>".len();
    let end = text[start..].find("</Code>")?;
    let code = &text[start..start + end];
    (!code.is_empty() && code.len() < 64 && code.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| code.to_owned())
}

/// The HTTP status in object_store's "status code: 403 Forbidden" messages.
fn http_status(text: &str) -> Option<u16> {
    let i = text.find("status code: ")? + "status code: ".len();
    text.get(i..i + 3)?.parse().ok()
}

/// The key a path error is about.
fn path_of(e: &object_store::path::Error) -> String {
    match e {
        object_store::path::Error::EmptySegment { path }
        | object_store::path::Error::BadSegment { path, .. }
        | object_store::path::Error::NonUnicode { path, .. } => path.clone(),
        other => other.to_string(),
    }
}

/// `text` with every value of `secrets` replaced by `***`.
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        out = out.replace(s.as_str(), "***");
    }
    out
}

/// At most `max` characters of `text` (on one line), marked when cut.
fn shorten(text: &str, max: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match one_line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let t = "Server returned non-2xx status code: 403 Forbidden: <Error><Code>InvalidAccessKeyId</Code></Error>";
        assert_eq!(s3_code(t).as_deref(), Some("InvalidAccessKeyId"));
        assert_eq!(http_status(t), Some(403));
        assert_eq!(s3_code("<html>nope</html>"), None);
        assert_eq!(scrub("key=abcd!", &["abcd".to_owned()]), "key=***!");
        assert_eq!(shorten("abc\ndef", 4), "abc …");
    }

    #[test]
    fn settings_precedence_and_checks() {
        let ctx = Context::new(std::path::Path::new("/nonexistent"), Default::default())
            .with_setting(KIND, "endpoint", "http://127.0.0.1:9/")
            .with_setting(KIND, "allow_http", "true")
            .with_setting(KIND, "region", "eu-west-3");
        let s = Settings::from_context(&ctx).unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(s.region.as_deref(), Some("eu-west-3"));
        assert!(s.check_md5);
        let ctx = ctx.with_setting(KIND, "allow_http", "false");
        let e = Settings::from_context(&ctx).unwrap_err().to_string();
        assert!(e.contains("allow_http"), "{e}");
        let ctx = ctx.with_setting(KIND, "endpiont", "x");
        let e = Settings::from_context(&ctx).unwrap_err().to_string();
        assert!(e.contains("endpiont"), "{e}");
    }
}
