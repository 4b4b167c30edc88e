//! Signed history: the project's signing key, git SSH signatures on every metadata commit,
//! the signers a user trusts, and DSSE envelopes for exported statements.
//!
//! The hash chain of the records (see `docs/format.md`) detects a record altered by hand,
//! but not a full re-seal: rewrite a run, recompute every digest downstream, and the store
//! is consistent again. Signatures close that hole. A project has an ed25519 key in
//! `.dkt/signing-key` (OpenSSH format, mode 0600, never committed), and every commit dtk
//! writes carries a `gpgsig` header in git's own SSH signature format (SSHSIG, namespace
//! `git`, SHA-512), so `git verify-commit` checks it given an allowed-signers file. The
//! public half of each key is committed as `signers/<hex>.pub`, one allowed-signers line,
//! so clones know it.
//!
//! Who is trusted is decided by the verifying user, never by the history alone: the
//! allowed-signers file of the user's configuration ([`user_allowed_signers`]) and the
//! project's own trust-on-first-use file `.dkt/allowed_signers` (written by `dkt init` with
//! its own key, by `dkt clone` with the signers the clone first saw, and by
//! `dkt key generate`).
//!
//! Which commits [`check_history`] checks: a signed commit vouches for its whole tree, and
//! a record's digest covers its ancestry (the hash chain), so the signature of the commit
//! that recorded an artifact vouches for everything the artifact derives from as it was
//! then. Every later change could have altered those records, so every commit from that
//! one up to the tip must be signed by a trusted key. Commits older than the one that
//! recorded the artifact need no check, nor do commits older than the one that set signing
//! up (its tree, which it signs, holds every earlier record). The walk follows first
//! parents from the tip and stops at whichever of the two comes first, so its cost is
//! one signature check and one path lookup per commit since the artifact was recorded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::Oid;
use base64ct::{Base64, Encoding};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use crate::inspect::{Check, Target, VerifyReport};
use crate::project::Project;
use crate::{Error, IoResultExt, Result};

/// The SSHSIG namespace of commit signatures (what git uses).
pub const NAMESPACE: &str = "git";
/// The SSHSIG namespace of a remote worker's signed result (see
/// [`crate::remote::ResultStatement`]).
pub const WORKER_NAMESPACE: &str = "dtk-worker-result";
/// The project's private signing key, in `.dkt` (never committed).
pub const KEY_FILE: &str = "signing-key";
/// The project's trust-on-first-use allowed-signers file, in `.dkt` (never committed).
pub const TRUST_FILE: &str = "allowed_signers";
/// The directory of the store holding the public keys of the project's signers.
pub const SIGNERS_DIR: &str = "signers";
/// The environment variable naming the user's allowed-signers file.
pub const ALLOWED_SIGNERS_ENV: &str = "DKT_ALLOWED_SIGNERS";
/// The DSSE payload type of an in-toto statement.
pub const DSSE_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// How a new project gets its signing key (see [`crate::InitOptions`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySetup {
    /// Generate a new ed25519 key (the default).
    #[default]
    Generate,
    /// Use the unencrypted OpenSSH ed25519 private key in this file (copied into `.dkt`).
    Import(PathBuf),
    /// No key: commits are unsigned until `dkt key generate`.
    Unsigned,
}

/// A project's signing key: an ed25519 key in OpenSSH format and the principal it signs
/// as. Its `Debug` shows the fingerprint and principal only, never the key.
pub struct SigningKey {
    key: PrivateKey,
    /// The same key, ready to sign: made once, as turning the OpenSSH key into one
    /// derives and checks its public half (two curve operations, most of a signature's
    /// cost).
    ready: ed25519_dalek::SigningKey,
    principal: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("fingerprint", &self.fingerprint())
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

fn key_err(what: impl Into<String>) -> impl FnOnce(ssh_key::Error) -> Error {
    let what = what.into();
    move |e| Error::store(what, e)
}

/// The principal a new key signs as when none is given: `dtk@<host name>`.
pub fn default_principal() -> String {
    let id = crate::engine::worker_id();
    let host = id.rsplit_once(':').map(|(h, _)| h).unwrap_or("localhost");
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-._".contains(*c))
        .collect();
    format!("dtk@{}", if host.is_empty() { "localhost" } else { &host })
}

/// Check that `principal` can be written in an allowed-signers file unquoted.
pub fn check_principal(principal: &str) -> Result<()> {
    let bad = principal.is_empty()
        || principal.starts_with('#')
        || principal
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ',' | '"' | '\''));
    if bad {
        return Err(Error::invalid(
            "principal",
            principal,
            "a principal is one word (such as dtk@build-1): no spaces, commas, quotes, not starting with #",
        ));
    }
    Ok(())
}

impl SigningKey {
    /// A new random ed25519 key signing as `principal`.
    pub fn generate(principal: &str) -> Result<SigningKey> {
        check_principal(principal)?;
        let mut key = PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519)
            .map_err(key_err("cannot generate an ed25519 key"))?;
        key.set_comment(principal);
        SigningKey::new(key, principal.to_owned())
    }

    fn new(key: PrivateKey, principal: String) -> Result<SigningKey> {
        let ready = match key.key_data() {
            ssh_key::private::KeypairData::Ed25519(pair) => {
                ed25519_dalek::SigningKey::try_from(pair)
                    .map_err(key_err("a broken ed25519 key"))?
            }
            _ => return Err(Error::corrupt("dtk signs with ed25519 keys only")),
        };
        Ok(SigningKey {
            key,
            ready,
            principal,
        })
    }

    /// Read the unencrypted OpenSSH ed25519 private key at `path`. The principal is
    /// `principal` if given, else the key's comment when it is a valid principal, else
    /// [`default_principal`].
    pub fn load(path: &Path, principal: Option<&str>) -> Result<SigningKey> {
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).at(path)?);
        let shown = path.display().to_string();
        let key = PrivateKey::from_openssh(text.as_bytes()).map_err(|e| Error::Invalid {
            what: "signing key file",
            value: shown.clone(),
            reason: format!("not an OpenSSH private key ({e})"),
        })?;
        if key.is_encrypted() {
            return Err(Error::invalid(
                "signing key file",
                shown,
                "it is encrypted with a passphrase, and dtk signs unattended: give it an unencrypted key (ssh-keygen -t ed25519 -N '' -f FILE)",
            ));
        }
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(Error::invalid(
                "signing key file",
                shown,
                format!(
                    "dtk signs with ed25519 keys; this one is {}",
                    key.algorithm()
                ),
            ));
        }
        let principal = match principal {
            Some(p) => p.to_owned(),
            None if check_principal(key.comment()).is_ok() => key.comment().to_owned(),
            None => default_principal(),
        };
        check_principal(&principal)?;
        let mut key = key;
        key.set_comment(&principal);
        SigningKey::new(key, principal)
    }

    /// Write the private key to `path` (OpenSSH format, mode 0600), which must not exist:
    /// written under a temporary name, synced, then renamed into place.
    pub fn save(&self, path: &Path) -> Result<()> {
        if path.exists() {
            return Err(Error::AlreadyExists {
                what: "signing key",
                name: path.display().to_string(),
            });
        }
        let pem = self
            .key
            .to_openssh(LineEnding::LF)
            .map_err(key_err("cannot encode the signing key"))?;
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = options.open(&tmp).and_then(|mut f| {
            std::io::Write::write_all(&mut f, pem.as_bytes())?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&tmp, e));
        }
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(path, e)
        })
    }

    /// The principal this key signs as.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// The key's fingerprint as OpenSSH shows it (`SHA256:...`).
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The public key in OpenSSH format with the principal as comment.
    pub fn public_openssh(&self) -> Result<String> {
        self.public_key()
            .to_openssh()
            .map_err(key_err("cannot encode the public key"))
    }

    /// The raw 32-byte ed25519 public key, hex-encoded (as DSSE and TUF tools take it).
    pub fn public_hex(&self) -> String {
        match self.public_key().key_data().ed25519() {
            Some(k) => hex(k.as_ref()),
            None => String::new(),
        }
    }

    /// Sign a commit's payload (the commit without its `gpgsig` header): the armored
    /// SSHSIG, as git puts it in the header, without a final newline.
    pub fn sign_commit(&self, payload: &[u8]) -> Result<String> {
        self.sign_in(NAMESPACE, payload)
    }

    /// An armored SSHSIG signature (SHA-512) of `message` in `namespace`, without a final
    /// newline.
    pub fn sign_in(&self, namespace: &str, message: &[u8]) -> Result<String> {
        // What `PrivateKey::sign` does, with the key made ready once.
        let data = SshSig::signed_data(namespace, HashAlg::Sha512, message)
            .map_err(key_err("cannot sign"))?;
        let raw = ed25519_dalek::Signer::sign(&self.ready, &data);
        let signature = ssh_key::Signature::new(Algorithm::Ed25519, raw.to_bytes().to_vec())
            .map_err(key_err("cannot sign"))?;
        let sig = SshSig::new(
            self.key.public_key().key_data().clone(),
            namespace,
            HashAlg::Sha512,
            signature,
        )
        .map_err(key_err("cannot sign"))?;
        let pem = sig
            .to_pem(LineEnding::LF)
            .map_err(key_err("cannot encode a signature"))?;
        Ok(pem.trim_end().to_owned())
    }

    /// The key at `path`, made (a new ed25519 key signing as `principal`, saved with mode
    /// 0600) when the file does not exist; `true` when it was made.
    pub fn load_or_generate(path: &Path, principal: &str) -> Result<(SigningKey, bool)> {
        if path.exists() {
            warn_if_readable(path);
            return Ok((SigningKey::load(path, None)?, false));
        }
        let key = SigningKey::generate(principal)?;
        match key.save(path) {
            Ok(()) => Ok((key, true)),
            // Made meanwhile by another process: use that one.
            Err(Error::AlreadyExists { .. }) => Ok((SigningKey::load(path, None)?, false)),
            Err(e) => Err(e),
        }
    }

    /// A raw ed25519 signature of `message` (64 bytes).
    pub fn sign_raw(&self, message: &[u8]) -> Result<Vec<u8>> {
        use signature::Signer;
        let sig: ssh_key::Signature = self
            .key
            .try_sign(message)
            .map_err(|e| Error::store("cannot sign", e))?;
        Ok(sig.as_bytes().to_vec())
    }

    /// This key as one line of an allowed-signers file (`PRINCIPAL namespaces="git" KEY`).
    pub fn allowed_signers_line(&self) -> Result<String> {
        self.allowed_signers_line_for(NAMESPACE)
    }

    /// This key as one line of an allowed-signers file trusting it for `namespace`
    /// (`PRINCIPAL namespaces="NAMESPACE" KEY`).
    pub fn allowed_signers_line_for(&self, namespace: &str) -> Result<String> {
        let mut public = self.public_key().clone();
        public.set_comment("");
        let key = public
            .to_openssh()
            .map_err(key_err("cannot encode the public key"))?;
        Ok(format!(
            "{} namespaces=\"{namespace}\" {}\n",
            self.principal,
            key.trim()
        ))
    }

    /// The store path of this key's public record: `signers/<hex of its SHA-256
    /// fingerprint>.pub`.
    pub fn record_path(&self) -> String {
        signer_path(self.public_key())
    }
}

fn signer_path(key: &PublicKey) -> String {
    let fp = key.fingerprint(HashAlg::Sha256);
    format!("{SIGNERS_DIR}/{}.pub", hex(fp.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One trusted key of an allowed-signers file.
#[derive(Debug, Clone)]
pub struct AllowedSigner {
    /// The principals the line names.
    pub principals: Vec<String>,
    /// The key.
    pub key: PublicKey,
    /// The file it comes from.
    pub file: PathBuf,
}

/// The keys a verifier trusts: the lines of one or more allowed-signers files.
#[derive(Debug, Clone, Default)]
pub struct AllowedSigners {
    signers: Vec<AllowedSigner>,
    files: Vec<PathBuf>,
}

impl AllowedSigners {
    /// Add the lines of the allowed-signers file at `path` (git's format: `PRINCIPALS
    /// [OPTIONS] KEYTYPE BASE64 [COMMENT]`); a missing file adds nothing. Lines whose
    /// `namespaces` option leaves out `git` are not trusted for commits; lines with
    /// `cert-authority`, `valid-after` or `valid-before` are not supported by dtk and are
    /// left out (with a warning), so they never trust more than git would.
    pub fn add_file(&mut self, path: &Path) -> Result<()> {
        self.add_file_for(path, NAMESPACE)
    }

    /// Add the lines of the allowed-signers file at `path` that trust keys for
    /// `namespace` (as [`add_file`](Self::add_file) does for `git`).
    pub fn add_file_for(&mut self, path: &Path, namespace: &str) -> Result<()> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(path, e)),
        };
        self.files.push(path.to_owned());
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_allowed_line(line, namespace) {
                Ok(Some((principals, key))) => self.signers.push(AllowedSigner {
                    principals,
                    key,
                    file: path.to_owned(),
                }),
                Ok(None) => {}
                Err(why) => tracing::warn!(
                    "{}:{}: allowed-signers line left out: {why}",
                    path.display(),
                    n + 1
                ),
            }
        }
        Ok(())
    }

    /// The files read (those that exist).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// True when no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }

    /// The entry trusting `key`, if any.
    pub fn find(&self, key: &ssh_key::public::KeyData) -> Option<&AllowedSigner> {
        self.signers.iter().find(|s| s.key.key_data() == key)
    }
}

/// Split an options field honoring double quotes; returns (options, rest of the line).
fn split_options(s: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (&s[..i], s[i..].trim_start()),
            _ => {}
        }
    }
    (s, "")
}

fn parse_allowed_line(
    line: &str,
    namespace: &str,
) -> std::result::Result<Option<(Vec<String>, PublicKey)>, String> {
    let (principals, rest) = split_options(line);
    let principals: Vec<String> = principals
        .trim_matches('"')
        .split(',')
        .map(str::to_owned)
        .collect();
    let looks_key =
        |s: &str| s.starts_with("ssh-") || s.starts_with("ecdsa-") || s.starts_with("sk-");
    let (options, key) = if looks_key(rest) {
        ("", rest)
    } else {
        split_options(rest)
    };
    let mut opts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in options.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                opts.push(&options[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    opts.push(&options[start..]);
    for opt in opts.into_iter().filter(|o| !o.is_empty()) {
        let (name, value) = opt.split_once('=').unwrap_or((opt, ""));
        match name.to_ascii_lowercase().as_str() {
            "namespaces" => {
                if !value.trim_matches('"').split(',').any(|n| n == namespace) {
                    return Ok(None);
                }
            }
            other => return Err(format!("option {other:?} is not supported")),
        }
    }
    let mut fields = key.split_whitespace();
    let (Some(kind), Some(data)) = (fields.next(), fields.next()) else {
        return Err("no key".into());
    };
    let key =
        PublicKey::from_openssh(&format!("{kind} {data}")).map_err(|e| format!("bad key ({e})"))?;
    Ok(Some((principals, key)))
}

/// The user's allowed-signers file: `$DKT_ALLOWED_SIGNERS`, else
/// `$XDG_CONFIG_HOME/dtk/allowed_signers`, else `~/.config/dtk/allowed_signers`.
pub fn user_allowed_signers() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ALLOWED_SIGNERS_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("dtk").join(TRUST_FILE))
}

/// Append `line` (one allowed-signers line) to the file at `path` unless it already trusts
/// that key.
pub fn trust(path: &Path, line: &str) -> Result<()> {
    let mut known = AllowedSigners::default();
    known.add_file(path)?;
    if let Ok(Some((_, key))) = parse_allowed_line(line.trim(), NAMESPACE) {
        if known.find(key.key_data()).is_some() {
            return Ok(());
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .at(path)?;
    std::io::Write::write_all(&mut f, line.as_bytes()).at(path)?;
    f.sync_all().at(path)
}

/// Set up the key of a new project in `dkt` (the `.dkt` being built): generate or import
/// it, save it as `dkt/signing-key` and trust it in `dkt/allowed_signers`.
pub(crate) fn setup_key(
    dkt: &Path,
    setup: &KeySetup,
    principal: Option<&str>,
) -> Result<Option<Arc<SigningKey>>> {
    let key = match setup {
        KeySetup::Unsigned => return Ok(None),
        KeySetup::Generate => SigningKey::generate(principal.unwrap_or(&default_principal()))?,
        KeySetup::Import(path) => SigningKey::load(path, principal)?,
    };
    key.save(&dkt.join(KEY_FILE))?;
    trust(&dkt.join(TRUST_FILE), &key.allowed_signers_line()?)?;
    Ok(Some(Arc::new(key)))
}

/// The key in `dkt/signing-key`, if there is one.
pub(crate) fn load_project_key(dkt: &Path) -> Result<Option<Arc<SigningKey>>> {
    let path = dkt.join(KEY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    warn_if_readable(&path);
    Ok(Some(Arc::new(SigningKey::load(&path, None)?)))
}

/// Warn when the private key at `path` is readable by others.
fn warn_if_readable(path: &Path) {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{} is readable by others (mode {mode:o}): chmod 600 it",
                path.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Check the armored SSHSIG `armored` of `message` in `namespace`: the key that made it
/// (its fingerprint is `key.fingerprint(HashAlg::Sha256)`), or why it does not verify.
pub fn verify_signature(
    namespace: &str,
    message: &[u8],
    armored: &str,
) -> std::result::Result<PublicKey, String> {
    let sig =
        SshSig::from_pem(armored.as_bytes()).map_err(|e| format!("not an SSH signature ({e})"))?;
    let key = PublicKey::from(sig.public_key().clone());
    if sig.namespace() != namespace {
        return Err(format!(
            "signed in namespace {:?}, not {namespace:?}",
            sig.namespace()
        ));
    }
    key.verify(namespace, message, &sig).map_err(|e| {
        format!(
            "the signature by {} does not verify ({e})",
            key.fingerprint(HashAlg::Sha256)
        )
    })?;
    Ok(key)
}

/// The OpenSSH SHA-256 fingerprint of `key` (`SHA256:...`).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// After a clone: trust the signers the cloned history names (`signers/`), recording them
/// in the clone's `.dkt/allowed_signers` (trust on first use).
pub(crate) fn trust_cloned_signers(project: &Project) -> Result<usize> {
    let snap = project.store().snapshot()?;
    let file = project.dkt_dir().join(TRUST_FILE);
    let mut n = 0;
    for entry in snap.list(SIGNERS_DIR)? {
        if entry.is_dir || !entry.name.ends_with(".pub") {
            continue;
        }
        let path = format!("{SIGNERS_DIR}/{}", entry.name);
        let Some(bytes) = snap.read(&path)? else {
            continue;
        };
        let line = String::from_utf8_lossy(&bytes);
        let line = format!("{}\n", line.trim());
        if parse_allowed_line(line.trim(), NAMESPACE).is_ok_and(|l| l.is_some()) {
            trust(&file, &line)?;
            n += 1;
        } else {
            tracing::warn!(
                "{path} in the cloned history is not an allowed-signers line: not trusted"
            );
        }
    }
    Ok(n)
}

/// What the signature of one commit is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitSignature {
    /// No `gpgsig` header.
    Unsigned,
    /// A signature that does not verify (or cannot be read); why.
    Invalid(String),
    /// A valid signature by a key no allowed-signers file trusts.
    Untrusted {
        /// The key's fingerprint.
        fingerprint: String,
    },
    /// A valid signature by a trusted key.
    Trusted {
        /// The key's fingerprint.
        fingerprint: String,
        /// The principals the allowed-signers line gives it.
        principal: String,
    },
}

/// The commit `raw` without its signature headers (what was signed), and the value of
/// its `gpgsig` header (continuation lines unfolded), as git splits a signed commit.
pub fn split_signed_commit(raw: &[u8]) -> (Vec<u8>, Option<String>) {
    let mut payload = Vec::with_capacity(raw.len());
    let mut sig: Option<Vec<u8>> = None;
    let mut in_sig = false;
    let mut in_other_sig = false;
    let mut rest = raw;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let (line, tail) = rest.split_at(end);
        rest = tail;
        if line == b"\n" {
            // End of the headers: the message follows as it is.
            payload.extend_from_slice(line);
            payload.extend_from_slice(rest);
            break;
        }
        if let Some(cont) = line.strip_prefix(b" ") {
            if in_sig {
                if let Some(s) = sig.as_mut() {
                    s.extend_from_slice(cont);
                }
                continue;
            }
            if in_other_sig {
                continue;
            }
        } else {
            in_sig = false;
            in_other_sig = false;
            if let Some(v) = line.strip_prefix(b"gpgsig ") {
                in_sig = true;
                sig = Some(v.to_vec());
                continue;
            }
            if line.starts_with(b"gpgsig-sha256 ") {
                in_other_sig = true;
                continue;
            }
        }
        payload.extend_from_slice(line);
    }
    let sig = sig.map(|s| String::from_utf8_lossy(&s).trim_end().to_owned());
    (payload, sig)
}

/// The first parent of the commit `raw`, if any.
fn first_parent(raw: &[u8]) -> Option<Oid> {
    raw.split(|b| *b == b'\n')
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix(b"parent "))
        .and_then(|hex| {
            std::str::from_utf8(hex)
                .ok()
                .and_then(|h| Oid::from_hex(h).ok())
        })
}

/// Check the signature of the commit `raw` against `trusted`.
pub fn verify_commit(raw: &[u8], trusted: &AllowedSigners) -> CommitSignature {
    let (payload, armored) = split_signed_commit(raw);
    let Some(armored) = armored else {
        return CommitSignature::Unsigned;
    };
    let sig = match SshSig::from_pem(armored.as_bytes()) {
        Ok(s) => s,
        Err(e) => return CommitSignature::Invalid(format!("not an SSH signature ({e})")),
    };
    let key = PublicKey::from(sig.public_key().clone());
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    if let Err(e) = key.verify(NAMESPACE, &payload, &sig) {
        return CommitSignature::Invalid(format!(
            "signature by {fingerprint} does not verify ({e})"
        ));
    }
    match trusted.find(sig.public_key()) {
        Some(s) => CommitSignature::Trusted {
            fingerprint,
            principal: s.principals.join(","),
        },
        None => CommitSignature::Untrusted { fingerprint },
    }
}

/// The keys trusted when verifying `project`: the user's allowed-signers file (`user`,
/// else [`user_allowed_signers`]) and the project's `.dkt/allowed_signers`.
pub fn trusted_signers(project: &Project, user: Option<&Path>) -> Result<AllowedSigners> {
    let mut trusted = AllowedSigners::default();
    if let Some(p) = user.map(Path::to_owned).or_else(user_allowed_signers) {
        trusted.add_file(&p)?;
    }
    trusted.add_file(&project.dkt_dir().join(TRUST_FILE))?;
    Ok(trusted)
}

/// The workers' allowed-signers file of `project` (`[queue] workers`, relative to its
/// root), if it sets one.
pub fn workers_file(project: &Project) -> Option<PathBuf> {
    project
        .config()
        .queue
        .workers
        .as_deref()
        .map(|f| project.root().join(f))
}

/// The worker keys the coordinator accepts results from: `None` (any key) unless
/// `[queue] workers` names an allowed-signers file, which must exist.
pub fn coordinator_workers(project: &Project) -> Result<Option<AllowedSigners>> {
    let Some(file) = workers_file(project) else {
        return Ok(None);
    };
    if !file.is_file() {
        return Err(Error::invalid(
            "setting",
            format!("[queue] workers = {:?}", file.display().to_string()),
            "no such file: it lists the keys of the trusted workers, one allowed-signers line each (`dkt worker key` prints a worker's)",
        ));
    }
    let mut trusted = AllowedSigners::default();
    trusted.add_file_for(&file, WORKER_NAMESPACE)?;
    Ok(Some(trusted))
}

/// The worker keys `dkt verify` trusts: the lines of `[queue] workers` and of the user's
/// allowed-signers file (`user`, else [`user_allowed_signers`]) that trust keys for
/// [`WORKER_NAMESPACE`].
pub fn verifier_workers(project: &Project, user: Option<&Path>) -> Result<AllowedSigners> {
    let mut trusted = AllowedSigners::default();
    if let Some(f) = workers_file(project) {
        trusted.add_file_for(&f, WORKER_NAMESPACE)?;
    }
    if let Some(p) = user.map(Path::to_owned).or_else(user_allowed_signers) {
        trusted.add_file_for(&p, WORKER_NAMESPACE)?;
    }
    Ok(trusted)
}

/// The store path of the record that names `target`.
fn target_path(target: &Target) -> String {
    use crate::project::paths;
    match target {
        Target::Version(sv) => paths::version(&sv.source, &sv.version),
        Target::Run(id) => paths::run(id),
        Target::Node(id) => paths::node(id),
    }
}

/// Check the signatures of the commits covering `target`'s records (see the module
/// documentation for which) and add one check per commit to `report`, naming the key that
/// signed it. When the project does not sign its history (no signer in the store, no key,
/// nothing trusted in `.dkt/allowed_signers`), adds one skipped check saying so.
pub fn check_history(
    project: &Project,
    target: &Target,
    user: Option<&Path>,
    report: &mut VerifyReport,
) -> Result<()> {
    let store = project.store();
    let head = store.head()?;
    let trusted = trusted_signers(project, user)?;
    let mut project_trust = AllowedSigners::default();
    project_trust.add_file(&project.dkt_dir().join(TRUST_FILE))?;
    let signs = !store.snapshot_at(head)?.list(SIGNERS_DIR)?.is_empty()
        || store.signer().is_some()
        || !project_trust.is_empty();
    if !signs {
        report.checks.push(Check {
            subject: "history".into(),
            check: "commit signatures".into(),
            result: "skipped",
            expected: None,
            found: Some(
                "this project does not sign its history (`dkt key generate` sets it up)".into(),
            ),
        });
        return Ok(());
    }
    let record = target_path(target);
    let mut id = head;
    loop {
        let raw = store.commit_bytes(id)?;
        let subject = format!("commit {}", id.short(8));
        let trusted_keys = || {
            if trusted.files().is_empty() {
                "a key in an allowed-signers file (none found)".to_owned()
            } else {
                let files: Vec<String> = trusted
                    .files()
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect();
                format!("a signature by a key trusted in {}", files.join(" or "))
            }
        };
        let check = match verify_commit(&raw, &trusted) {
            CommitSignature::Trusted {
                fingerprint,
                principal,
            } => Check {
                subject,
                check: format!("signed by {principal} {fingerprint}"),
                result: "ok",
                expected: None,
                found: None,
            },
            other => Check {
                subject,
                check: "signature".into(),
                result: "mismatch",
                expected: Some(trusted_keys()),
                found: Some(match other {
                    CommitSignature::Unsigned => "no signature".into(),
                    CommitSignature::Untrusted { fingerprint } => {
                        format!("a valid signature by untrusted key {fingerprint}")
                    }
                    CommitSignature::Invalid(why) => format!("an invalid signature: {why}"),
                    CommitSignature::Trusted { .. } => String::new(),
                }),
            },
        };
        report.checks.push(check);
        let Some(parent) = first_parent(&raw) else {
            break;
        };
        let before = store.snapshot_at(parent)?;
        if before.blob_id(&record)?.is_none() || before.list(SIGNERS_DIR)?.is_empty() {
            // This commit recorded the artifact, or set signing up: its signed tree covers
            // everything older.
            break;
        }
        id = parent;
    }
    Ok(())
}

/// The DSSE pre-authentication encoding of `payload` of type `payload_type`.
pub fn dsse_pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A DSSE envelope of `statement` (an in-toto statement) signed with `key`: the payload is
/// the statement's compact JSON, the signature ed25519 over its pre-authentication
/// encoding, the `keyid` the key's fingerprint (`SHA256:...`).
pub fn dsse_envelope(key: &SigningKey, statement: &serde_json::Value) -> Result<serde_json::Value> {
    let payload =
        serde_json::to_vec(statement).map_err(|e| Error::store("cannot encode a statement", e))?;
    let sig = key.sign_raw(&dsse_pae(DSSE_PAYLOAD_TYPE, &payload))?;
    Ok(serde_json::json!({
        "payload": Base64::encode_string(&payload),
        "payloadType": DSSE_PAYLOAD_TYPE,
        "signatures": [ { "keyid": key.fingerprint(), "sig": Base64::encode_string(&sig) } ],
    }))
}

/// A signing key as `dkt key show` describes it (see [`Project::add_signing_key`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyInfo {
    /// The key's fingerprint (`SHA256:...`).
    pub fingerprint: String,
    /// The principal it signs as.
    pub principal: String,
    /// The public key in OpenSSH format.
    pub public_key: String,
    /// The raw ed25519 public key, hex.
    pub public_hex: String,
    /// The private key's file (never printed, never committed).
    pub path: PathBuf,
    /// The store record of its public half.
    pub record: String,
}

/// Describe `key`, kept at `path`.
pub fn key_info(key: &SigningKey, path: &Path) -> Result<KeyInfo> {
    Ok(KeyInfo {
        fingerprint: key.fingerprint(),
        principal: key.principal().to_owned(),
        public_key: key.public_openssh()?,
        public_hex: key.public_hex(),
        path: path.to_owned(),
        record: key.record_path(),
    })
}

/// Commit `key`'s public record (`signers/<hex>.pub`), signed by `key`. Used when a key is
/// added to a project (at init, the record is in the first commit).
pub(crate) fn record_signer(store: &crate::Store, key: &SigningKey) -> Result<()> {
    let path = key.record_path();
    let line = key.allowed_signers_line()?;
    let message = format!("signing: key {} ({})", key.fingerprint(), key.principal());
    store.transact(&message, |tx| {
        if tx.read(&path)?.as_deref() != Some(line.as_bytes()) {
            tx.put(&path, line.as_bytes())?;
        }
        Ok(())
    })?;
    Ok(())
}

impl Project {
    /// The key that signs this project's commits, if it has one.
    pub fn signing_key(&self) -> Option<Arc<SigningKey>> {
        self.store().signer()
    }

    /// Give a project without a key one (`dkt key generate` / `dkt key import`): save it
    /// as `.dkt/signing-key`, trust it in `.dkt/allowed_signers`, sign from now on, and
    /// commit its public record. Refused when the project already has a key.
    /// `principal` overrides the default (`dtk@<host>`, or an imported key's comment).
    pub fn add_signing_key(&self, setup: &KeySetup, principal: Option<&str>) -> Result<KeyInfo> {
        let path = self.dkt_dir().join(KEY_FILE);
        if path.exists() {
            return Err(Error::AlreadyExists {
                what: "signing key",
                name: path.display().to_string(),
            });
        }
        let key = setup_key(self.dkt_dir(), setup, principal)?
            .ok_or_else(|| Error::invalid("key setup", "unsigned", "no key to add"))?;
        self.store().set_signer(Some(key.clone()));
        record_signer(self.store(), &key)?;
        key_info(&key, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        assert_eq!(
            dsse_pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn a_signed_commit_splits_back_into_what_was_signed() {
        let payload = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author dtk <dtk@localhost> 1 +0000\ncommitter dtk <dtk@localhost> 1 +0000\n\n\
msg\n\n gpgsig not a header\n"
            .to_vec();
        let key = SigningKey::generate("t@x").unwrap_or_else(|e| panic!("{e}"));
        let armored = key.sign_commit(&payload).unwrap_or_else(|e| panic!("{e}"));
        let mut signed = Vec::new();
        let at = payload
            .windows(2)
            .position(|w| w == b"\n\n")
            .map_or(0, |i| i + 1);
        signed.extend_from_slice(&payload[..at]);
        signed.extend_from_slice(b"gpgsig ");
        signed.extend_from_slice(armored.replace('\n', "\n ").as_bytes());
        signed.push(b'\n');
        signed.extend_from_slice(&payload[at..]);
        let (back, sig) = split_signed_commit(&signed);
        assert_eq!(back, payload);
        assert_eq!(sig.as_deref(), Some(armored.as_str()));

        let mut trusted = AllowedSigners::default();
        assert!(matches!(
            verify_commit(&signed, &trusted),
            CommitSignature::Untrusted { .. }
        ));
        let line = key.allowed_signers_line().unwrap_or_default();
        let (principals, public) = parse_allowed_line(line.trim(), NAMESPACE)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{line}"));
        trusted.signers.push(AllowedSigner {
            principals,
            key: public,
            file: PathBuf::new(),
        });
        assert_eq!(
            verify_commit(&signed, &trusted),
            CommitSignature::Trusted {
                fingerprint: key.fingerprint(),
                principal: "t@x".into()
            }
        );
        let tampered = String::from_utf8_lossy(&signed).replace("msg", "msh");
        assert!(matches!(
            verify_commit(tampered.as_bytes(), &trusted),
            CommitSignature::Invalid(_)
        ));
        assert_eq!(verify_commit(&payload, &trusted), CommitSignature::Unsigned);
    }

    fn parse_allowed_line_git(
        l: &str,
    ) -> std::result::Result<Option<(Vec<String>, PublicKey)>, String> {
        parse_allowed_line(l, NAMESPACE)
    }

    #[test]
    fn allowed_signers_lines_as_git_writes_them() {
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhyM7kKqYlSG1698SBegewTfuE5AJUJTl1Rfwub9hLY";
        let ok = |l: &str| {
            parse_allowed_line(l, NAMESPACE)
                .ok()
                .flatten()
                .map(|(p, _)| p)
        };
        assert_eq!(ok(&format!("a@x {key} c")), Some(vec!["a@x".to_owned()]));
        assert_eq!(
            ok(&format!("a@x,b@y namespaces=\"file,git\" {key}")),
            Some(vec!["a@x".to_owned(), "b@y".to_owned()])
        );
        assert_eq!(ok(&format!("a@x namespaces=\"file\" {key}")), None);
        assert!(parse_allowed_line_git(&format!("a@x cert-authority {key}")).is_err());
        assert!(parse_allowed_line_git(&format!("a@x valid-before=\"2020\" {key}")).is_err());
        assert!(parse_allowed_line_git("a@x ssh-ed25519 !!!").is_err());
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let key = SigningKey::generate("t@x").unwrap_or_else(|e| panic!("{e}"));
        let pem = key
            .key
            .to_openssh(LineEnding::LF)
            .unwrap_or_else(|e| panic!("{e}"));
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let shown = format!("{key:?}");
        assert!(shown.contains(&key.fingerprint()), "{shown}");
        assert!(!shown.contains(&body[..32]), "{shown}");
        assert!(check_principal("a b").is_err());
        assert!(check_principal("dtk@host-1").is_ok());
    }
}
