//! The local bare mirror of a git location, and fetching into it.
//!
//! Each location has one mirror, `<cache>/git/<md5 of the location>`, shared by every
//! source (and every dtk process) following that location:
//!
//! - A new mirror is fetched into a temporary directory next to it and renamed into place,
//!   so a killed fetch leaves only a `.tmp-*` directory (removed by the next fetch), never
//!   a half-made mirror.
//! - Fetches of one mirror are serialized with an advisory lock (`<md5>.lock`, `flock`),
//!   across threads and processes; a lock dies with its process, so none is ever stale.
//!   Readers need no lock: git writes objects before refs, and each ref atomically. A
//!   ref's lock file left by a killed fetch is removed by the next one, under that lock.
//! - A fetch runs on its own thread, watched from the async side: when nothing moved (no
//!   lock, no bytes, no progress) for the network timeout, the fetch is interrupted and an
//!   error returned. The thread is detached rather than joined, so a fetch stuck in a
//!   blocking connect can neither hang the caller nor keep the process alive at exit.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dtk_api::{Error, Result};
use gix::bstr::ByteSlice;
use md5::{Digest, Md5};

use super::location::{local_dir, redact_url};

/// The refspecs of every mirror: all branches and all tags, forced.
const REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

/// How often the watchdog looks at a running fetch.
const TICK: Duration = Duration::from_millis(50);

/// The longest `Retry-After` a fetch waits for.
#[cfg_attr(not(feature = "https"), allow(dead_code))]
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A secret token. `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct Token(#[cfg_attr(not(feature = "https"), allow(dead_code))] pub(crate) String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// The GitHub token and the one HTTPS host (and port) it may be sent to: github.com, or
/// the base URL configured for the `github` shortcut (`[kind.git] github_url`).
#[derive(Debug, Clone)]
pub(crate) struct GithubAuth {
    pub(crate) token: Token,
    /// The host, lower case.
    pub(crate) host: String,
    /// The port (443 unless the base URL names one).
    pub(crate) port: u16,
}

impl GithubAuth {
    /// The token for `base` (an `https://HOST[:PORT]` URL); `None` without a token.
    pub(crate) fn new(token: Option<&str>, base: &str) -> Option<GithubAuth> {
        let token = token.filter(|t| !t.is_empty())?;
        let url = gix::url::parse(base.as_bytes().as_bstr()).ok()?;
        if url.scheme != gix::url::Scheme::Https {
            return None;
        }
        Some(GithubAuth {
            token: Token(token.to_owned()),
            host: url.host()?.to_ascii_lowercase(),
            port: url.port_or_default().unwrap_or(443),
        })
    }

    /// True when `url` is on this host over HTTPS (for github.com, www.github.com too).
    pub(crate) fn applies_to(&self, url: &gix::Url) -> bool {
        if url.scheme != gix::url::Scheme::Https || url.port_or_default() != Some(self.port) {
            return false;
        }
        url.host().is_some_and(|h| {
            h.eq_ignore_ascii_case(&self.host)
                || (self.host == "github.com" && h.eq_ignore_ascii_case("www.github.com"))
        })
    }
}

/// One location's mirror.
#[derive(Debug, Clone)]
pub(crate) struct Mirror {
    /// The location as stored in the spec.
    pub(crate) location: String,
    /// The mirror's git directory.
    pub(crate) dir: PathBuf,
    /// `<cache>/git`.
    root: PathBuf,
    /// The md5 of the location, naming the mirror.
    key: String,
    /// Sent as HTTP authorization to the GitHub host only.
    auth: Option<GithubAuth>,
    /// The bound on a fetch making no progress.
    timeout: Duration,
}

/// A failed fetch, before it becomes a dtk error.
#[derive(Debug)]
pub(crate) struct FetchFailure {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl FetchFailure {
    fn new(message: impl Into<String>) -> Self {
        FetchFailure {
            message: message.into(),
            source: None,
        }
    }

    fn with(message: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        FetchFailure {
            message: message.into(),
            source: Some(Box::new(e)),
        }
    }

    fn into_error(self, kind: &str, source_name: &str) -> Error {
        Error::Backend {
            kind: kind.to_owned(),
            source_name: source_name.to_owned(),
            message: self.message,
            source: self.source,
        }
    }
}

fn gix_fail(message: impl Into<String>) -> impl FnOnce(gix::Error) -> FetchFailure {
    let message = message.into();
    move |e| FetchFailure::with(message, e)
}

impl Mirror {
    /// The mirror of `location` under `cache_dir`.
    pub(crate) fn new(
        cache_dir: &Path,
        location: &str,
        auth: Option<GithubAuth>,
        timeout: Duration,
    ) -> Mirror {
        let key = Md5::digest(location.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        let root = cache_dir.join("git");
        Mirror {
            location: location.to_owned(),
            dir: root.join(&key),
            root,
            key,
            auth,
            timeout,
        }
    }

    /// Environment for a `git push` to this location: the GitHub token, when it applies,
    /// as git configuration in the environment (never in the arguments, which other users
    /// can read).
    pub(crate) fn push_env(&self) -> Vec<(String, String)> {
        let Some(auth) = &self.auth else {
            return Vec::new();
        };
        let Ok(url) = gix::url::parse(self.location.as_bytes().as_bstr()) else {
            return Vec::new();
        };
        if !auth.applies_to(&url) {
            return Vec::new();
        }
        let basic = base64(format!("x-access-token:{}", auth.token.0).as_bytes());
        vec![
            ("GIT_CONFIG_COUNT".to_owned(), "1".to_owned()),
            ("GIT_CONFIG_KEY_0".to_owned(), "http.extraHeader".to_owned()),
            (
                "GIT_CONFIG_VALUE_0".to_owned(),
                format!("Authorization: Basic {basic}"),
            ),
        ]
    }

    /// True once a first fetch has completed.
    pub(crate) fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Open the mirror for reading, ignoring the user's git configuration.
    pub(crate) fn open(&self) -> std::result::Result<gix::Repository, gix::Error> {
        // A delta-base cache as large as git's default, in a hash map: walks read each tree
        // once, but trees are long delta chains in a pack.
        let mut repo = gix::open_opts(
            &self.dir,
            gix::open::Options::isolated().config_overrides(["core.deltaBaseCacheLimit=96m"]),
        )?;
        repo.object_cache_size_if_unset(4 * 1024 * 1024);
        Ok(repo)
    }

    /// Create or refresh the mirror. Errors are [`Error::Backend`] quoting the location.
    ///
    /// Over HTTP(S), the request git makes first (`info/refs`, protocol v2: a few hundred
    /// bytes, with the same token header as git's requests) is sent once beforehand by dtk
    /// itself: a server answering `429 Too Many
    /// Requests` or `503 Service Unavailable` with `Retry-After: SECONDS` (at most a
    /// minute) is waited out, at most twice, as the kinds that speak HTTP themselves do
    /// (gix's transport fails on such an answer and does not show its headers).
    pub(crate) async fn fetch(&self, kind: &str, source_name: &str) -> Result<()> {
        self.wait_while_busy(kind, source_name).await?;
        let shared = Arc::new(Shared::default());
        let _interrupt_on_drop = InterruptOnDrop(shared.clone());
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let job = self.clone();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("dtk-git-fetch".into())
            .spawn(move || {
                let result = job.fetch_blocking(&thread_shared);
                let _ = tx.send(result);
            })
            .map_err(|e| {
                FetchFailure::with("cannot start a fetch thread", e).into_error(kind, source_name)
            })?;
        let shown = redact_url(&self.location);
        let mut last_sum = shared.activity();
        let mut last_change = Instant::now();
        loop {
            tokio::select! {
                result = &mut rx => {
                    return match result {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(f)) => Err(f.into_error(kind, source_name)),
                        Err(_) => Err(Error::backend(
                            kind,
                            source_name,
                            format!("the fetch of {shown} stopped unexpectedly"),
                        )),
                    };
                }
                _ = tokio::time::sleep(TICK) => {
                    let sum = shared.activity();
                    if sum != last_sum {
                        last_sum = sum;
                        last_change = Instant::now();
                    } else if last_change.elapsed() >= self.timeout {
                        shared.interrupt.store(true, Ordering::SeqCst);
                        let secs = self.timeout.as_secs_f64();
                        let message = if shared.phase.load(Ordering::SeqCst) == PHASE_LOCKING {
                            format!(
                                "timed out after {secs:.0}s waiting for another fetch of {shown} to finish"
                            )
                        } else {
                            format!(
                                "cannot fetch {shown}: no answer or no progress for {secs:.0}s \
                                 (is it reachable?)"
                            )
                        };
                        return Err(Error::backend(kind, source_name, message));
                    }
                }
            }
        }
    }

    /// Ask an HTTP(S) server whether it is busy before fetching (see [`fetch`](Self::fetch)).
    /// Only a busy answer matters: any other (or none) lets the fetch go ahead and report.
    #[cfg(feature = "https")]
    async fn wait_while_busy(&self, kind: &str, source_name: &str) -> Result<()> {
        let Ok(mut url) = reqwest::Url::parse(&self.location) else {
            return Ok(());
        };
        if !matches!(url.scheme(), "http" | "https") {
            return Ok(());
        }
        // The request carries what git's would (the GitHub token, to the GitHub host
        // only), never a credential from the URL.
        let header = self.auth.as_ref().and_then(|auth| {
            let parsed = gix::url::parse(self.location.as_bytes().as_bstr()).ok()?;
            auth.applies_to(&parsed).then(|| {
                format!(
                    "Basic {}",
                    base64(format!("x-access-token:{}", auth.token.0).as_bytes())
                )
            })
        });
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_fragment(None);
        let path = format!("{}/info/refs", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url.set_query(Some("service=git-upload-pack"));
        let Ok(client) = reqwest::Client::builder()
            .connect_timeout(self.timeout)
            .read_timeout(self.timeout)
            .user_agent(concat!("dtk/", env!("CARGO_PKG_VERSION")))
            .build()
        else {
            return Ok(());
        };
        let shown = redact_url(&self.location);
        for attempt in 0.. {
            let mut req = client.get(url.clone()).header("Git-Protocol", "version=2");
            if let Some(h) = &header {
                req = req.header(reqwest::header::AUTHORIZATION, h);
            }
            let Ok(resp) = req.send().await else {
                return Ok(());
            };
            let status = resp.status().as_u16();
            if !matches!(status, 429 | 503) {
                return Ok(());
            }
            let wait = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            match wait {
                Some(wait) if attempt < 2 && wait <= MAX_RETRY_AFTER => {
                    tracing::info!(
                        kind,
                        source = source_name,
                        status,
                        ?wait,
                        "server busy; retrying after Retry-After"
                    );
                    tokio::time::sleep(wait).await;
                }
                _ => {
                    let after = wait
                        .map(|w| format!(" (Retry-After: {} s)", w.as_secs()))
                        .unwrap_or_default();
                    return Err(Error::backend(
                        kind,
                        source_name,
                        format!("cannot fetch {shown}: the server is busy: HTTP {status}{after}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Without HTTP support there is no HTTP server to ask.
    #[cfg(not(feature = "https"))]
    async fn wait_while_busy(&self, _kind: &str, _source_name: &str) -> Result<()> {
        Ok(())
    }

    /// The whole fetch, on the fetch thread.
    fn fetch_blocking(&self, shared: &Arc<Shared>) -> std::result::Result<(), FetchFailure> {
        let shown = redact_url(&self.location);
        if let Some(dir) = local_dir(&self.location) {
            if !dir.exists() {
                return Err(FetchFailure::new(format!(
                    "the repository {shown} does not exist"
                )));
            }
        }
        std::fs::create_dir_all(&self.root)
            .map_err(|e| FetchFailure::with(format!("cannot create {}", self.root.display()), e))?;
        let _lock = self.lock(shared)?;
        shared.phase.store(PHASE_FETCHING, Ordering::SeqCst);
        shared.touch();
        if self.exists() {
            tracing::debug!(location = %shown, mirror = %self.dir.display(), "fetching");
            self.remove_stale_ref_locks();
            return self.fetch_into(&self.dir, shared);
        }
        tracing::debug!(location = %shown, mirror = %self.dir.display(), "creating mirror");
        self.remove_stale_temporaries();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".tmp-{}-", self.key))
            .tempdir_in(&self.root)
            .map_err(|e| {
                FetchFailure::with(
                    format!("cannot create a directory in {}", self.root.display()),
                    e,
                )
            })?;
        let git_dir = tmp.path().join("mirror");
        gix::init_bare(&git_dir).map_err(gix_fail(format!(
            "cannot create a repository in {}",
            git_dir.display()
        )))?;
        self.fetch_into(&git_dir, shared)?;
        if shared.interrupt.load(Ordering::SeqCst) {
            return Err(FetchFailure::new(format!(
                "the fetch of {shown} was interrupted"
            )));
        }
        match std::fs::rename(&git_dir, &self.dir) {
            Ok(()) => Ok(()),
            // Another process made it first (possible only without flock support).
            Err(_) if self.exists() => Ok(()),
            Err(e) => Err(FetchFailure::with(
                format!("cannot move the new mirror into {}", self.dir.display()),
                e,
            )),
        }
    }

    /// Remove the lock files (`refs/heads/main.lock`, `packed-refs.lock`, ...) a fetch
    /// killed while moving the mirror's refs left: git and gix never take a lock that
    /// exists, so one left would fail every later fetch of this location. The caller
    /// holds the mirror's lock, so no fetch is moving them now.
    fn remove_stale_ref_locks(&self) {
        fn walk(dir: &Path, depth: usize) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let path = e.path();
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                if is_dir && depth > 0 {
                    walk(&path, depth - 1);
                } else if !is_dir && path.extension().is_some_and(|x| x == "lock") {
                    tracing::info!(lock = %path.display(), "removing a lock a killed fetch left");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        // The top (`packed-refs.lock`, `HEAD.lock`, `config.lock`) and every ref below
        // `refs/` (branch names may hold slashes).
        walk(&self.dir, 0);
        walk(&self.dir.join("refs"), 64);
    }

    /// Remove what killed fetches of this mirror left (the caller holds the lock).
    fn remove_stale_temporaries(&self) {
        let prefix = format!(".tmp-{}-", self.key);
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Take the mirror's lock, waiting while another fetch holds it (until interrupted).
    fn lock(&self, shared: &Shared) -> std::result::Result<MirrorLock, FetchFailure> {
        let path = self.root.join(format!("{}.lock", self.key));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| FetchFailure::with(format!("cannot open {}", path.display()), e))?;
        loop {
            match try_lock(&file) {
                Ok(true) => return Ok(MirrorLock(file)),
                Ok(false) => {}
                Err(e) => {
                    return Err(FetchFailure::with(
                        format!("cannot lock {}", path.display()),
                        e,
                    ))
                }
            }
            if shared.interrupt.load(Ordering::SeqCst) {
                return Err(FetchFailure::new(
                    "interrupted while waiting for the mirror's lock",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fetch branches, tags and the default branch into the repository at `git_dir`.
    fn fetch_into(
        &self,
        git_dir: &Path,
        shared: &Arc<Shared>,
    ) -> std::result::Result<(), FetchFailure> {
        use gix::remote::Direction;
        let shown = redact_url(&self.location);
        let fetch_fail = || gix_fail(format!("cannot fetch {shown}"));
        let ssh = std::env::var("GIT_SSH_COMMAND")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| {
                format!(
                    "ssh -o BatchMode=yes -o ConnectTimeout={}",
                    self.timeout.as_secs().max(1)
                )
            });
        let mut repo = gix::open_opts(
            git_dir,
            gix::open::Options::isolated().config_overrides([format!("core.sshCommand={ssh}")]),
        )
        .map_err(gix_fail(format!(
            "cannot open the mirror {}",
            git_dir.display()
        )))?;
        repo.committer_or_set_generic_fallback()
            .map_err(gix_fail("cannot set up the mirror's identity"))?;
        let url = gix::url::parse(self.location.as_bytes().as_bstr())
            .map_err(|e| FetchFailure::with(format!("{shown} is not a URL git understands"), e))?;
        let remote = repo
            .remote_at(url.clone())
            .map_err(fetch_fail())?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs(REFSPECS, Direction::Fetch)
            .map_err(fetch_fail())?;
        let mut connection = remote.connect(Direction::Fetch).map_err(|e| {
            if matches!(url.scheme, gix::url::Scheme::Http | gix::url::Scheme::Https)
                && !cfg!(feature = "https")
            {
                FetchFailure::with(
                    format!(
                        "cannot fetch {shown}: this build has no HTTPS support (enable the cargo \
                         feature \"https\" of dtk-sources)"
                    ),
                    e,
                )
            } else {
                FetchFailure::with(format!("cannot connect to {shown}"), e)
            }
        })?;
        // A token, if any, goes in an HTTP header; a server that still asks (401) gets what
        // git's own credential helpers give (`git credential fill`, never prompting).
        if matches!(url.scheme, gix::url::Scheme::Http | gix::url::Scheme::Https) {
            connection.set_credentials(git_credential);
        } else {
            connection.set_credentials(|_| Ok(None));
        }
        #[cfg(feature = "https")]
        self.configure_http(&mut connection, &repo, &url)?;
        let head_spec = gix::refspec::parse("HEAD".into(), gix::refspec::parse::Operation::Fetch)
            .map_err(fetch_fail())?
            .to_owned();
        let options = gix::remote::ref_map::Options {
            extra_refspecs: vec![head_spec],
            ..Default::default()
        };
        let progress = Activity::new(shared.clone());
        let prepare = connection
            .prepare_fetch(progress.clone(), options)
            .map_err(fetch_fail())?;
        let head = remote_head(prepare.ref_map());
        let names = remote_ref_names(prepare.ref_map());
        prepare
            .receive(progress, &shared.interrupt)
            .map_err(fetch_fail())?;
        if let Some(head) = head {
            write_head(git_dir, &head)?;
        }
        write_remote_refs(git_dir, &names)?;
        Ok(())
    }

    #[cfg(feature = "https")]
    fn configure_http<T: gix::protocol::transport::client::blocking_io::Transport>(
        &self,
        connection: &mut gix::remote::Connection<'_, '_, '_, T>,
        repo: &gix::Repository,
        url: &gix::Url,
    ) -> std::result::Result<(), FetchFailure> {
        use gix::protocol::transport::client::blocking_io::http;
        if !matches!(url.scheme, gix::url::Scheme::Http | gix::url::Scheme::Https) {
            return Ok(());
        }
        let configured = repo
            .transport_options(url.to_bstring().as_bstr(), None)
            .map_err(gix_fail("cannot configure the HTTP transport"))?;
        let opts = configured
            .and_then(|o| o.downcast::<http::Options>().ok())
            .map(|o| *o)
            .unwrap_or_default();
        connection.set_transport_options(Box::new(self.http_options(opts, url)));
        Ok(())
    }

    /// `opts` with dtk's time limits and, for the GitHub host over HTTPS, the token.
    #[cfg(feature = "https")]
    fn http_options(
        &self,
        mut opts: gix::protocol::transport::client::blocking_io::http::Options,
        url: &gix::Url,
    ) -> gix::protocol::transport::client::blocking_io::http::Options {
        opts.connect_timeout = Some(self.timeout);
        opts.low_speed_limit_bytes_per_second = 1;
        opts.low_speed_time_seconds = self.timeout.as_secs().max(1);
        opts.verbose = false;
        if let Some(auth) = &self.auth {
            if auth.applies_to(url) {
                let basic = base64(format!("x-access-token:{}", auth.token.0).as_bytes());
                opts.extra_headers
                    .push(format!("Authorization: Basic {basic}"));
            }
        }
        opts
    }
}

/// What `git credential` says for `action`, run as the user's git would (their global and
/// system config, so their `credential.helper`s: store, cache, libsecret, osxkeychain, a
/// manager...), with `GIT_TERMINAL_PROMPT=0` so that it never prompts. A credential that
/// worked is handed back to the helpers (`approve`), one that was refused too (`reject`).
fn git_credential(
    action: gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>> {
    use gix::credentials::{helper, protocol, Program};
    // gix runs a helper as `HELPER get|store|erase`; git's own command takes
    // `fill|approve|reject`.
    const GIT_CREDENTIAL: &str = "!f() { case \"$1\" in get) a=fill ;; store) a=approve ;; \
        erase) a=reject ;; *) exit 0 ;; esac; GIT_TERMINAL_PROMPT=0 git credential \"$a\"; }; f";
    let mut program = Program::from_custom_definition(GIT_CREDENTIAL)?.suppress_stderr();
    let outcome = helper::invoke(&mut program, &action)?;
    protocol::helper_outcome_to_result(outcome, action)
}

/// Standard base64 with padding.
pub(crate) fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What the remote's `HEAD` is: a branch (`refs/heads/main`) or, detached, a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RemoteHead {
    Branch(String),
    Detached(gix::ObjectId),
}

fn remote_head(map: &gix::remote::fetch::RefMap) -> Option<RemoteHead> {
    use gix::protocol::handshake::Ref;
    let mut direct = None;
    for r in &map.remote_refs {
        match r {
            Ref::Symbolic {
                full_ref_name,
                target,
                ..
            }
            | Ref::Unborn {
                full_ref_name,
                target,
            } if full_ref_name == "HEAD" => return Some(RemoteHead::Branch(target.to_string())),
            Ref::Direct {
                full_ref_name,
                object,
            } if full_ref_name == "HEAD" => direct = Some(*object),
            _ => {}
        }
    }
    // No symref (an old server): the branch at HEAD's commit, preferring main and master.
    let object = direct?;
    let mut branches: Vec<String> = map
        .remote_refs
        .iter()
        .filter_map(|r| match r {
            Ref::Direct {
                full_ref_name,
                object: o,
            } if *o == object && full_ref_name.starts_with(b"refs/heads/") => {
                Some(full_ref_name.to_string())
            }
            _ => None,
        })
        .collect();
    branches.sort_by_key(|b| (b != "refs/heads/main", b != "refs/heads/master", b.clone()));
    Some(match branches.into_iter().next() {
        Some(b) => RemoteHead::Branch(b),
        None => RemoteHead::Detached(object),
    })
}

/// The branches and tags the remote has (full names), sorted.
fn remote_ref_names(map: &gix::remote::fetch::RefMap) -> Vec<String> {
    use gix::protocol::handshake::Ref;
    let mut names: Vec<String> = map
        .remote_refs
        .iter()
        .filter_map(|r| match r {
            Ref::Direct { full_ref_name, .. }
            | Ref::Peeled { full_ref_name, .. }
            | Ref::Symbolic { full_ref_name, .. } => Some(full_ref_name.to_string()),
            Ref::Unborn { .. } => None,
        })
        .filter(|n| n.starts_with("refs/heads/") || n.starts_with("refs/tags/"))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The file in a mirror listing the refs the remote had at the last fetch: the fetch
/// never deletes a ref the remote deleted, so pattern sources read this list to stop
/// following deleted refs.
pub(crate) const REMOTE_REFS: &str = "dtk-remote-refs";

/// Write [`REMOTE_REFS`] atomically.
fn write_remote_refs(git_dir: &Path, names: &[String]) -> std::result::Result<(), FetchFailure> {
    let path = git_dir.join(REMOTE_REFS);
    let mut content = names.join("\n");
    content.push('\n');
    if std::fs::read_to_string(&path).is_ok_and(|c| c == content) {
        return Ok(());
    }
    let tmp = git_dir.join(format!("{REMOTE_REFS}.dtk-tmp"));
    std::fs::write(&tmp, &content)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| FetchFailure::with(format!("cannot write {}", path.display()), e))
}

/// Point the mirror's `HEAD` where the remote's is (atomically, only when it changed).
fn write_head(git_dir: &Path, head: &RemoteHead) -> std::result::Result<(), FetchFailure> {
    let content = match head {
        RemoteHead::Branch(b) => format!("ref: {b}\n"),
        RemoteHead::Detached(id) => format!("{id}\n"),
    };
    let path = git_dir.join("HEAD");
    if std::fs::read_to_string(&path).is_ok_and(|c| c == content) {
        return Ok(());
    }
    let tmp = git_dir.join("HEAD.dtk-tmp");
    std::fs::write(&tmp, &content)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| FetchFailure::with(format!("cannot write {}", path.display()), e))
}

/// An advisory lock on a mirror, released when dropped (or when its process dies).
struct MirrorLock(#[allow(dead_code)] std::fs::File);

#[cfg(unix)]
fn try_lock(file: &std::fs::File) -> std::io::Result<bool> {
    use rustix::fs::{flock, FlockOperation};
    use rustix::io::Errno;
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(e) if e == Errno::WOULDBLOCK || e == Errno::INTR => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(unix))]
fn try_lock(_file: &std::fs::File) -> std::io::Result<bool> {
    Ok(true)
}

const PHASE_LOCKING: u8 = 0;
const PHASE_FETCHING: u8 = 1;

/// What the fetch thread and its watchdog share.
#[derive(Default)]
struct Shared {
    interrupt: AtomicBool,
    phase: AtomicU8,
    /// Bumped on milestones and messages.
    ticks: AtomicUsize,
    /// Every progress counter handed to gix.
    counters: Mutex<Vec<gix::progress::StepShared>>,
}

impl Shared {
    fn touch(&self) {
        self.ticks.fetch_add(1, Ordering::SeqCst);
    }

    /// A number that changes whenever the fetch makes progress.
    fn activity(&self) -> usize {
        let counters = match self.counters.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        counters
            .iter()
            .fold(self.ticks.load(Ordering::SeqCst), |acc, c| {
                acc.wrapping_add(c.load(Ordering::Relaxed))
            })
    }

    fn new_counter(&self) -> gix::progress::StepShared {
        let c = gix::progress::StepShared::default();
        match self.counters.lock() {
            Ok(mut v) => v.push(c.clone()),
            Err(poisoned) => poisoned.into_inner().push(c.clone()),
        }
        c
    }
}

struct InterruptOnDrop(Arc<Shared>);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        self.0.interrupt.store(true, Ordering::SeqCst);
    }
}

/// A gix progress that only records that something happened, for the watchdog.
#[derive(Clone)]
struct Activity {
    shared: Arc<Shared>,
    counter: gix::progress::StepShared,
}

impl Activity {
    fn new(shared: Arc<Shared>) -> Self {
        let counter = shared.new_counter();
        Activity { shared, counter }
    }
}

impl gix::progress::Count for Activity {
    fn set(&self, step: gix::progress::Step) {
        self.counter.store(step, Ordering::Relaxed);
    }
    fn step(&self) -> gix::progress::Step {
        self.counter.load(Ordering::Relaxed)
    }
    fn inc_by(&self, step: gix::progress::Step) {
        self.counter.fetch_add(step, Ordering::Relaxed);
    }
    fn counter(&self) -> gix::progress::StepShared {
        self.counter.clone()
    }
}

impl gix::progress::Progress for Activity {
    fn init(&mut self, _max: Option<gix::progress::Step>, _unit: Option<gix::progress::Unit>) {
        self.shared.touch();
    }
    fn set_name(&mut self, _name: String) {}
    fn name(&self) -> Option<String> {
        None
    }
    fn id(&self) -> gix::progress::Id {
        gix::progress::UNKNOWN
    }
    fn message(&self, _level: gix::progress::MessageLevel, _message: String) {
        self.shared.touch();
    }
}

impl gix::progress::NestedProgress for Activity {
    type SubProgress = Activity;
    fn add_child(&mut self, _name: impl Into<String>) -> Self::SubProgress {
        Activity::new(self.shared.clone())
    }
    fn add_child_with_id(
        &mut self,
        _name: impl Into<String>,
        _id: gix::progress::Id,
    ) -> Self::SubProgress {
        Activity::new(self.shared.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (input, out) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), out);
        }
    }

    #[cfg(feature = "https")]
    #[test]
    fn token_goes_to_github_https_only() {
        let token = "ghp_canary";
        let expected = format!(
            "Authorization: Basic {}",
            base64(b"x-access-token:ghp_canary")
        );
        for (base, url, sent) in [
            ("https://github.com", "https://github.com/a/b", true),
            ("https://github.com", "https://GitHub.com/a/b.git", true),
            ("https://github.com", "https://www.github.com/a/b.git", true),
            ("https://github.com", "https://github.com:8443/a/b", false),
            ("https://github.com", "http://github.com/a/b", false),
            (
                "https://github.com",
                "https://github.com.evil.example/a/b",
                false,
            ),
            ("https://github.com", "https://gitlab.com/a/b", false),
            ("https://127.0.0.1:9443", "https://127.0.0.1:9443/a/b", true),
            (
                "https://127.0.0.1:9443",
                "https://127.0.0.1:9444/a/b",
                false,
            ),
            ("https://127.0.0.1:9443", "https://github.com/a/b", false),
            ("http://127.0.0.1:9443", "http://127.0.0.1:9443/a/b", false),
        ] {
            let auth = GithubAuth::new(Some(token), base);
            let m = Mirror::new(Path::new("/c"), url, auth, Duration::from_secs(7));
            let parsed = gix::url::parse(url.as_bytes().as_bstr()).unwrap();
            let opts = m.http_options(Default::default(), &parsed);
            assert_eq!(opts.extra_headers.contains(&expected), sent, "{url}");
            assert_eq!(opts.connect_timeout, Some(Duration::from_secs(7)));
        }
    }

    #[test]
    fn token_is_not_in_debug() {
        let m = Mirror::new(
            Path::new("/c"),
            "https://github.com/a/b",
            GithubAuth::new(Some("ghp_canary"), "https://github.com"),
            Duration::from_secs(1),
        );
        let d = format!("{m:?}");
        assert!(!d.contains("ghp_canary"), "{d}");
        assert!(d.contains("Token(***)"), "{d}");
    }
}
