//! The conformance suite: plain async checks that any [`Source`] runs on itself.
//!
//! Every kind in `dtk-sources` calls [`check_all`] in its tests, and so can a third-party
//! plugin:
//!
//! ```ignore
//! #[tokio::test]
//! async fn conforms() {
//!     let source = my_kind.open(&ctx, &spec).unwrap();
//!     dtk_api::conformance::check_all(&*source, &Fixture::new(scratch_dir)).await.unwrap();
//! }
//! ```
//!
//! Each check returns `Err(String)` describing what broke the contract. Where the contract
//! names an error, the check asserts that exact variant and its fields (the kind's name in
//! [`Error::NotSupported`], the version in [`Error::NotFound`]), not merely that something
//! failed: callers branch on those variants (`dkt` turns them into exit codes and hints).
//!
//! The checks, in the order [`check_all`] runs them:
//!
//! | check | what it holds the kind to |
//! |---|---|
//! | [`latest_is_stable`] | two polls without a change agree |
//! | [`blocking_latest_agrees`] | a blocking poll, where the kind has one, agrees with `latest` |
//! | [`versions_agree_with_latest`] | history newest first, no duplicates; else `NotSupported` |
//! | [`prefixes_resolve`] | a version's short and `ALGO:` prefixes find it among the versions |
//! | [`materialize_latest`] | the latest version materializes, `ROOT` names it |
//! | [`materialize_twice`] | materializing again gives the same content |
//! | [`materialize_unknown_fails`] | an unknown version (of any algorithm) is `NotFound` naming it |
//! | [`verify_contract`] | the latest version is never a mismatch, an unknown one never verified |
//! | [`publish_contract`] | publish, then poll: the new version is latest, first, and holds what was published; else `NotSupported` |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::source::Verification;
use crate::{Algo, Error, Source, Version, VersionInfo};

/// What the checks may use.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// An empty directory the checks may write into.
    pub scratch: PathBuf,
    /// For kinds that publish: a directory with content to publish, different from the
    /// source's current content.
    pub publish_dir: Option<PathBuf>,
    /// Files (relative paths) that the kind writes itself when it materializes, so that
    /// they may differ from what was published: only their presence is checked (docker's
    /// `index.json`, which names the source's tag).
    pub rewritten: Vec<PathBuf>,
}

impl Fixture {
    /// A fixture with a scratch directory and nothing to publish.
    pub fn new(scratch: impl Into<PathBuf>) -> Self {
        Fixture {
            scratch: scratch.into(),
            publish_dir: None,
            rewritten: Vec::new(),
        }
    }

    /// With content to publish.
    pub fn with_publish_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.publish_dir = Some(dir.into());
        self
    }

    /// With files that the kind rewrites when it materializes (see
    /// [`rewritten`](Self::rewritten)).
    pub fn with_rewritten<P: Into<PathBuf>>(mut self, paths: impl IntoIterator<Item = P>) -> Self {
        self.rewritten.extend(paths.into_iter().map(Into::into));
        self
    }

    fn fresh(&self, name: &str) -> Result<PathBuf, String> {
        let d = self.scratch.join(name);
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        Ok(d)
    }
}

type Check = Result<(), String>;

fn fail<T>(what: impl Into<String>) -> Result<T, String> {
    Err(what.into())
}

async fn latest(source: &dyn Source) -> Result<VersionInfo, String> {
    source
        .latest()
        .await
        .map_err(|e| format!("latest failed: {e}"))
}

/// The versions the source knows: its history when it has one, else its latest.
async fn known_versions(source: &dyn Source) -> Result<Vec<Version>, String> {
    if source.capabilities().history {
        let vs = source
            .versions()
            .await
            .map_err(|e| format!("versions failed: {e}"))?;
        Ok(vs.into_iter().map(|v| v.version).collect())
    } else {
        Ok(vec![latest(source).await?.version])
    }
}

/// `err` must be [`Error::NotSupported`] naming the source's kind (and `operation`, when
/// given).
fn expect_not_supported(source: &dyn Source, err: Error, operation: Option<&str>) -> Check {
    match &err {
        Error::NotSupported {
            kind,
            operation: op,
        } if *kind == source.spec().kind && operation.is_none_or(|o| o == *op) => Ok(()),
        _ => fail(format!(
            "expected Error::NotSupported {{ kind: {:?}, operation: {} }}, got {err:?} ({err})",
            source.spec().kind,
            operation.map_or("_".to_owned(), |o| format!("{o:?}")),
        )),
    }
}

/// `result` must be [`Error::NotFound`] for the version `version`.
fn expect_version_not_found<T: std::fmt::Debug>(
    result: crate::Result<T>,
    version: &Version,
    doing: &str,
) -> Check {
    match result {
        Err(Error::NotFound {
            what: "version",
            name,
            ..
        }) if name == version.to_string() => Ok(()),
        Ok(v) => fail(format!(
            "{doing} of unknown version {version} succeeded: {v:?}"
        )),
        Err(e) => fail(format!(
            "{doing} of unknown version {version}: expected Error::NotFound {{ what: \"version\", \
             name: {:?} }}, got {e:?} ({e})",
            version.to_string()
        )),
    }
}

/// A version of `algo` that no source holds.
fn bogus_version(algo: Algo) -> Result<Version, String> {
    Version::from_bytes(algo, &vec![0x5a; algo.hex_len() / 2]).map_err(|e| e.to_string())
}

/// The content under `root`, for comparing: each regular file's bytes and each symbolic
/// link's target, by path relative to `root` (directories are implied by their entries;
/// a file `root` is the single entry `""`).
fn tree(root: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) -> Result<(), String> {
        let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
        let meta = std::fs::symlink_metadata(dir).map_err(|e| err(dir, e))?;
        let rel = dir.strip_prefix(root).unwrap_or(dir).to_owned();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(dir).map_err(|e| err(dir, e))?;
            out.insert(rel, target.into_os_string().into_encoded_bytes());
        } else if meta.is_file() {
            out.insert(rel, std::fs::read(dir).map_err(|e| err(dir, e))?);
        } else if meta.is_dir() {
            for entry in std::fs::read_dir(dir).map_err(|e| err(dir, e))? {
                let entry = entry.map_err(|e| err(dir, e))?;
                walk(root, &entry.path(), out)?;
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// A readable difference between two trees.
fn tree_diff(a: &BTreeMap<PathBuf, Vec<u8>>, b: &BTreeMap<PathBuf, Vec<u8>>) -> String {
    let mut lines = Vec::new();
    for (p, content) in a {
        match b.get(p) {
            None => lines.push(format!("only in the first: {}", p.display())),
            Some(other) if other != content => lines.push(format!(
                "{} differs ({} vs {} bytes)",
                p.display(),
                content.len(),
                other.len()
            )),
            Some(_) => {}
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        lines.push(format!("only in the second: {}", p.display()));
    }
    lines.join("; ")
}

/// `latest` returns the same version twice when nothing changed.
pub async fn latest_is_stable(source: &dyn Source) -> Check {
    let a = latest(source).await?;
    let b = latest(source).await?;
    if a.version != b.version {
        return fail(format!(
            "latest changed without a change: {} then {}",
            a.version, b.version
        ));
    }
    Ok(())
}

/// A kind's [`Source::blocking_latest`], if it has one, gives what `latest` gives (the
/// job runs on the calling thread here).
pub async fn blocking_latest_agrees(source: &dyn Source) -> Check {
    let Some(job) = source.blocking_latest() else {
        return Ok(());
    };
    let blocking = job().map_err(|e| format!("the blocking poll failed: {e}"))?;
    let awaited = latest(source).await?;
    if blocking.version != awaited.version {
        return fail(format!(
            "the blocking poll gives {} but latest {}",
            blocking.version, awaited.version
        ));
    }
    Ok(())
}

/// With history, `versions` is non-empty, has no duplicates, and lists the latest version
/// first; without, it returns [`Error::NotSupported`] naming the kind.
pub async fn versions_agree_with_latest(source: &dyn Source) -> Check {
    let latest = latest(source).await?;
    match source.versions().await {
        Ok(vs) if source.capabilities().history => {
            let Some(first) = vs.first() else {
                return fail("versions is empty");
            };
            if first.version != latest.version {
                return fail(format!(
                    "versions lists {} first but latest is {}",
                    first.version, latest.version
                ));
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(d) = vs.iter().find(|v| !seen.insert(&v.version)) {
                return fail(format!("versions lists {} twice", d.version));
            }
            Ok(())
        }
        Ok(_) => fail("versions succeeded but the kind does not declare history"),
        Err(e) if !source.capabilities().history => expect_not_supported(source, e, None),
        Err(e) => fail(format!("versions failed: {e}")),
    }
}

/// The versions a kind reports can be named the way users name them (`dkt pin SRC:PREFIX`):
/// each prints and parses back to itself, and its short form (8 digits, upper or lower
/// case, with or without `ALGO:`) resolves to it among the versions the source knows, while
/// a prefix of no known version is [`Error::NotFound`] and a malformed one
/// [`Error::Invalid`].
pub async fn prefixes_resolve(source: &dyn Source) -> Check {
    let known = known_versions(source).await?;
    for v in &known {
        let text = v.to_string();
        match text.parse::<Version>() {
            Ok(back) if &back == v => {}
            other => return fail(format!("{text} does not parse back to itself: {other:?}")),
        }
    }
    let latest = latest(source).await?.version;
    let short = latest.short();
    for prefix in [
        short.to_owned(),
        short.to_ascii_uppercase(),
        format!("{}:{short}", latest.algo()),
        latest.to_string(),
    ] {
        match crate::resolve_version(&prefix, &known) {
            Ok(found) if found == &latest => {}
            Ok(found) => {
                return fail(format!(
                    "prefix {prefix:?} resolves to {found}, not {latest}"
                ))
            }
            Err(e) => {
                return fail(format!(
                    "prefix {prefix:?} of {latest} does not resolve: {e}"
                ))
            }
        }
    }
    let absent = ["0123456789abcdef", "fedcba9876543210", "5a5a5a5a5a5a5a5a"]
        .into_iter()
        .find(|p| !known.iter().any(|v| v.matches_prefix(p)));
    if let Some(absent) = absent {
        match crate::resolve_version(absent, &known) {
            Err(Error::NotFound {
                what: "version",
                name,
                ..
            }) if name == absent => {}
            other => {
                return fail(format!(
                    "prefix {absent:?} of no version: expected Error::NotFound, got {other:?}"
                ))
            }
        }
    }
    match crate::resolve_version("xyz", &known) {
        Err(Error::Invalid {
            what: "version", ..
        }) => Ok(()),
        other => fail(format!(
            "malformed prefix \"xyz\": expected Error::Invalid, got {other:?}"
        )),
    }
}

/// Materializing the latest version gives an existing path, and `fields` names it `ROOT`.
pub async fn materialize_latest(source: &dyn Source, fixture: &Fixture) -> Check {
    let latest = latest(source).await?;
    let scratch = fixture.fresh("materialize")?;
    let root = source
        .materialize(&latest.version, &scratch)
        .await
        .map_err(|e| format!("materialize {} failed: {e}", latest.version))?;
    if !root.exists() {
        return fail(format!(
            "materialize returned {} which does not exist",
            root.display()
        ));
    }
    let fields = source
        .fields(Some(&latest.version), &root)
        .map_err(|e| format!("fields failed: {e}"))?;
    match fields.get("ROOT") {
        Some(r) if Path::new(r) == root => Ok(()),
        other => fail(format!("ROOT is {other:?}, expected {}", root.display())),
    }
}

/// Materializing the same version twice (into two scratch directories) gives the same
/// content both times, and the first copy is left as it was.
pub async fn materialize_twice(source: &dyn Source, fixture: &Fixture) -> Check {
    let latest = latest(source).await?.version;
    let mut trees = Vec::new();
    let mut roots = Vec::new();
    for name in ["materialize-1", "materialize-2"] {
        let scratch = fixture.fresh(name)?;
        let root = source
            .materialize(&latest, &scratch)
            .await
            .map_err(|e| format!("materialize {latest} into {name} failed: {e}"))?;
        trees.push(tree(&root)?);
        roots.push(root);
    }
    if trees[0] != trees[1] {
        return fail(format!(
            "materializing {latest} twice gave different content: {}",
            tree_diff(&trees[0], &trees[1])
        ));
    }
    let again = tree(&roots[0])?;
    if again != trees[0] {
        return fail(format!(
            "materializing {latest} again changed the first copy: {}",
            tree_diff(&trees[0], &again)
        ));
    }
    Ok(())
}

/// Materializing a version that never existed is [`Error::NotFound`] for that version, not
/// an empty directory nor another error; so is a version of another algorithm than the
/// kind's (a sha256 digest given to a git source).
pub async fn materialize_unknown_fails(source: &dyn Source, fixture: &Fixture) -> Check {
    let algo = latest(source).await?.version.algo();
    let others = [Algo::Sha1, Algo::Sha256, Algo::Md5, Algo::Blake3]
        .into_iter()
        .filter(|a| *a != algo);
    for a in std::iter::once(algo).chain(others) {
        let bogus = bogus_version(a)?;
        let scratch = fixture.fresh("materialize-unknown")?;
        expect_version_not_found(
            source.materialize(&bogus, &scratch).await,
            &bogus,
            "materialize",
        )?;
    }
    Ok(())
}

/// `verify` of the latest version (content untouched) is never a [`Verification::Mismatch`]
/// and never an error; of a version that never existed, never [`Verification::Verified`]
/// (it is [`Verification::Unavailable`] or [`Error::NotFound`]).
pub async fn verify_contract(source: &dyn Source) -> Check {
    let latest = latest(source).await?.version;
    match source.verify(&latest).await {
        Ok(Verification::Verified | Verification::Unavailable(_)) => {}
        other => return fail(format!("verify of the latest version {latest}: {other:?}")),
    }
    let bogus = bogus_version(latest.algo())?;
    match source.verify(&bogus).await {
        Ok(Verification::Unavailable(_)) => Ok(()),
        Err(Error::NotFound { .. }) => Ok(()),
        other => fail(format!(
            "verify of unknown version {bogus}: expected Unavailable or Error::NotFound, got {other:?}"
        )),
    }
}

/// Publishing works when the kind declares it, and is [`Error::NotSupported`] (naming the
/// kind and `"publish"`) otherwise. Publish, then poll: `latest` is what `publish`
/// returned (twice), history lists it first, materializing it gives exactly the published
/// files, and the previous version either still materializes or is [`Error::NotFound`].
pub async fn publish_contract(source: &dyn Source, fixture: &Fixture) -> Check {
    let Some(dir) = &fixture.publish_dir else {
        if source.capabilities().publish {
            return fail(
                "the kind publishes: give the fixture content to publish \
                 (`Fixture::with_publish_dir`), so that publishing is checked",
            );
        }
        return match source.publish(&fixture.scratch).await {
            Err(e) => expect_not_supported(source, e, Some("publish")),
            Ok(_) => fail("publish succeeded but the kind does not declare it"),
        };
    };
    if !source.capabilities().publish {
        return fail("a publish directory was given but the kind does not publish");
    }
    // Read first: a kind may move the directory into place.
    let mut content = tree(dir)?;
    let before = latest(source).await?;
    let published = source
        .publish(dir)
        .await
        .map_err(|e| format!("publish failed: {e}"))?;
    for _ in 0..2 {
        let after = latest(source).await?;
        if published.version != after.version {
            return fail(format!(
                "publish returned {} but latest is then {}",
                published.version, after.version
            ));
        }
    }
    if published.version == before.version {
        return fail("publishing different content did not change the version");
    }
    if source.capabilities().history {
        let vs = known_versions(source).await?;
        if vs.first() != Some(&published.version) {
            return fail(format!(
                "after publishing {}, versions lists {:?} first",
                published.version,
                vs.first()
            ));
        }
        if !vs.contains(&before.version) {
            return fail(format!(
                "after publishing, versions no longer lists the previous {}",
                before.version
            ));
        }
    }
    let scratch = fixture.fresh("publish-then-materialize")?;
    let root = source
        .materialize(&published.version, &scratch)
        .await
        .map_err(|e| {
            format!(
                "materialize of the published {} failed: {e}",
                published.version
            )
        })?;
    let mut got = tree(&root)?;
    for p in &fixture.rewritten {
        for t in [&mut content, &mut got] {
            if let Some(bytes) = t.get_mut(p) {
                bytes.clear();
            }
        }
    }
    // A kind whose content is one file (a path source on a file) publishes the one file of
    // the directory.
    let same = got == content
        || (got.len() == 1
            && got.contains_key(Path::new(""))
            && content.len() == 1
            && content.values().next() == got.values().next());
    if !same {
        return fail(format!(
            "the published {} materializes to other content than was published: {}",
            published.version,
            tree_diff(&content, &got)
        ));
    }
    let scratch = fixture.fresh("publish-previous")?;
    match source.materialize(&before.version, &scratch).await {
        Ok(_) => Ok(()),
        r @ Err(_) => expect_version_not_found(r, &before.version, "materialize"),
    }
}

/// [`Source::publish_with`] compares and swaps: expecting a version the source is not at
/// (another of its algorithm, or none) is [`Error::OutputMoved`] naming both and changes
/// nothing; expecting the version it is at publishes. Content: a copy of the latest
/// version's. Kinds that do not publish pass trivially.
pub async fn publish_checks_the_expected_version(source: &dyn Source, fixture: &Fixture) -> Check {
    if !source.capabilities().publish {
        return Ok(());
    }
    let now = latest(source).await?.version;
    let scratch = fixture.fresh("publish-with-read")?;
    let root = source
        .materialize(&now, &scratch)
        .await
        .map_err(|e| format!("materialize of {now} failed: {e}"))?;
    let content = tree(&root)?;
    let copy = |name: &str| -> Result<PathBuf, String> {
        let dir = fixture.fresh(name)?;
        for (rel, bytes) in &content {
            let p = if rel.as_os_str().is_empty() {
                dir.join("content")
            } else {
                dir.join(rel)
            };
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            std::fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        Ok(dir)
    };
    let hex = now.hex();
    let flipped = format!(
        "{}:{}{}",
        now.algo(),
        &hex[..hex.len() - 1],
        if hex.ends_with('0') { '1' } else { '0' }
    );
    let wrong: Version = flipped
        .parse()
        .map_err(|e| format!("cannot make a version other than {now}: {e}"))?;
    for expected in [Some(wrong), None] {
        let dir = copy("publish-with-moved")?;
        let options = crate::source::PublishOptions::new().expecting(expected.clone());
        match source.publish_with(&dir, &options).await {
            Err(Error::OutputMoved {
                expected: e,
                found,
                ..
            }) if e == expected && found.as_ref() == Some(&now) => {}
            Err(e) => {
                return fail(format!(
                    "publish_with expecting {expected:?} while at {now}: expected OutputMoved naming both, got {e}"
                ))
            }
            Ok(v) => {
                return fail(format!(
                    "publish_with expecting {expected:?} while at {now} published {}",
                    v.version
                ))
            }
        }
        let after = latest(source).await?.version;
        if after != now {
            return fail(format!(
                "a refused publish_with moved the source from {now} to {after}"
            ));
        }
    }
    let dir = copy("publish-with-current")?;
    let options = crate::source::PublishOptions::new().expecting(Some(now.clone()));
    let published = source
        .publish_with(&dir, &options)
        .await
        .map_err(|e| format!("publish_with expecting the current {now} failed: {e}"))?;
    let after = latest(source).await?.version;
    if after != published.version {
        return fail(format!(
            "publish_with returned {} but latest is then {after}",
            published.version
        ));
    }
    Ok(())
}

/// Run every check, stopping at the first failure, which is returned with the check's name.
pub async fn check_all(source: &dyn Source, fixture: &Fixture) -> Result<(), String> {
    let named = |name: &str, r: Check| r.map_err(|e| format!("{name}: {e}"));
    named("latest_is_stable", latest_is_stable(source).await)?;
    named(
        "blocking_latest_agrees",
        blocking_latest_agrees(source).await,
    )?;
    named(
        "versions_agree_with_latest",
        versions_agree_with_latest(source).await,
    )?;
    named("prefixes_resolve", prefixes_resolve(source).await)?;
    named(
        "materialize_latest",
        materialize_latest(source, fixture).await,
    )?;
    named(
        "materialize_twice",
        materialize_twice(source, fixture).await,
    )?;
    named(
        "materialize_unknown_fails",
        materialize_unknown_fails(source, fixture).await,
    )?;
    named("verify_contract", verify_contract(source).await)?;
    named("publish_contract", publish_contract(source, fixture).await)?;
    named(
        "publish_checks_the_expected_version",
        publish_checks_the_expected_version(source, fixture).await,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The suite must be able to fail: a small in-memory source passes it, and each flaw
    //! that breaks one contract makes the matching check fail.

    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::source::{Capabilities, Fields};
    use crate::{Name, Result, SourceSpec};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Flaw {
        None,
        VersionsOldestFirst,
        NotSupportedNamesAnotherKind,
        UnknownIsBackendError,
        OtherAlgoIsInvalid,
        MaterializeNotRepeatable,
        VerifyAcceptsAnything,
        PublishNotPolled,
        PublishDropsAFile,
        PublishNotSupportedWrongOperation,
        BlockingPollDisagrees,
    }

    /// A version's files, by name.
    type Files = BTreeMap<String, Vec<u8>>;

    /// Versions `md5:0101..`, `md5:0202..`, ...: each a map of file name to content.
    #[derive(Debug)]
    struct Mem {
        spec: SourceSpec,
        history: bool,
        publish: bool,
        flaw: Flaw,
        state: Mutex<(Vec<Files>, u32)>,
    }

    impl Mem {
        fn new(history: bool, publish: bool, flaw: Flaw) -> Self {
            let first = BTreeMap::from([("a.txt".to_owned(), b"a".to_vec())]);
            let second = BTreeMap::from([("b.txt".to_owned(), b"b".to_vec())]);
            Mem {
                spec: SourceSpec::new(Name::new("mem").unwrap(), "mem", "memory"),
                history,
                publish,
                flaw,
                state: Mutex::new((vec![first, second], 0)),
            }
        }
        fn version(i: usize) -> Version {
            Version::from_bytes(Algo::Md5, &[i as u8 + 1; 16]).unwrap()
        }
        fn index(v: &Version) -> Option<usize> {
            (0..=250).find(|i| &Self::version(*i) == v)
        }
        fn len(&self) -> usize {
            self.state.lock().unwrap().0.len()
        }
    }

    #[async_trait]
    impl Source for Mem {
        fn spec(&self) -> &SourceSpec {
            &self.spec
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::none()
                .with_history(self.history)
                .with_publish(self.publish)
        }
        async fn latest(&self) -> Result<VersionInfo> {
            let mut n = self.len();
            if self.flaw == Flaw::PublishNotPolled && n > 2 {
                n = 2;
            }
            Ok(VersionInfo::new(Self::version(n - 1)))
        }
        fn blocking_latest(&self) -> Option<crate::source::BlockingPoll> {
            let mut n = self.len();
            if self.flaw == Flaw::PublishNotPolled && n > 2 {
                n = 2;
            }
            let v = if self.flaw == Flaw::BlockingPollDisagrees {
                Self::version(n)
            } else {
                Self::version(n - 1)
            };
            Some(Box::new(move || Ok(VersionInfo::new(v))))
        }
        async fn versions(&self) -> Result<Vec<VersionInfo>> {
            if !self.history {
                let kind = if self.flaw == Flaw::NotSupportedNamesAnotherKind {
                    "other".to_owned()
                } else {
                    self.spec.kind.clone()
                };
                return Err(Error::NotSupported {
                    kind,
                    operation: "list versions",
                });
            }
            let mut vs: Vec<_> = (0..self.len())
                .rev()
                .map(|i| VersionInfo::new(Self::version(i)))
                .collect();
            if self.flaw == Flaw::VersionsOldestFirst {
                vs.reverse();
            }
            Ok(vs)
        }
        fn fields(&self, _: Option<&Version>, root: &Path) -> Result<Fields> {
            Ok(Fields::from([(
                "ROOT".to_owned(),
                root.display().to_string(),
            )]))
        }
        async fn materialize(&self, version: &Version, scratch: &Path) -> Result<PathBuf> {
            if version.algo() != Algo::Md5 && self.flaw == Flaw::OtherAlgoIsInvalid {
                return Err(Error::invalid("version", version.to_string(), "not md5"));
            }
            let Some(i) = Self::index(version).filter(|i| *i < self.len()) else {
                if self.flaw == Flaw::UnknownIsBackendError {
                    return Err(Error::backend("mem", "mem", "no such version"));
                }
                return Err(Error::not_found("version", version.to_string()));
            };
            let mut state = self.state.lock().unwrap();
            state.1 += 1;
            let mut files = state.0[i].clone();
            if self.flaw == Flaw::MaterializeNotRepeatable {
                files.insert("count".into(), state.1.to_string().into_bytes());
            }
            if self.flaw == Flaw::PublishDropsAFile && i >= 2 {
                files.pop_first();
            }
            for (name, content) in files {
                std::fs::write(scratch.join(name), content).unwrap();
            }
            Ok(scratch.to_owned())
        }
        async fn publish(&self, dir: &Path) -> Result<VersionInfo> {
            if !self.publish {
                let operation = if self.flaw == Flaw::PublishNotSupportedWrongOperation {
                    "list versions"
                } else {
                    "publish"
                };
                return Err(Error::NotSupported {
                    kind: self.spec.kind.clone(),
                    operation,
                });
            }
            let mut files = BTreeMap::new();
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let content = std::fs::read(e.path()).unwrap();
                files.insert(e.file_name().to_string_lossy().into_owned(), content);
            }
            let mut state = self.state.lock().unwrap();
            state.0.push(files);
            Ok(VersionInfo::new(Self::version(state.0.len() - 1)))
        }
        async fn verify(&self, version: &Version) -> Result<Verification> {
            if self.flaw == Flaw::VerifyAcceptsAnything {
                return Ok(Verification::Verified);
            }
            Ok(match Self::index(version).filter(|i| *i < self.len()) {
                Some(_) => Verification::Verified,
                None => Verification::Unavailable("never was".into()),
            })
        }
    }

    async fn run(history: bool, publish: bool, flaw: Flaw) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let mut fixture = Fixture::new(dir.path().join("scratch"));
        if publish {
            let out = dir.path().join("out");
            std::fs::create_dir(&out).unwrap();
            std::fs::write(out.join("c.txt"), b"c").unwrap();
            std::fs::write(out.join("d.txt"), b"d").unwrap();
            fixture = fixture.with_publish_dir(out);
        }
        check_all(&Mem::new(history, publish, flaw), &fixture).await
    }

    #[tokio::test]
    async fn a_conforming_source_passes() {
        for history in [false, true] {
            for publish in [false, true] {
                assert_eq!(
                    run(history, publish, Flaw::None).await,
                    Ok(()),
                    "history={history} publish={publish}"
                );
            }
        }
    }

    #[tokio::test]
    async fn each_flaw_fails_its_check() {
        let cases = [
            (
                true,
                false,
                Flaw::VersionsOldestFirst,
                "versions_agree_with_latest",
            ),
            (
                false,
                false,
                Flaw::NotSupportedNamesAnotherKind,
                "versions_agree_with_latest",
            ),
            (
                true,
                false,
                Flaw::UnknownIsBackendError,
                "materialize_unknown_fails",
            ),
            (
                true,
                false,
                Flaw::OtherAlgoIsInvalid,
                "materialize_unknown_fails",
            ),
            (
                false,
                false,
                Flaw::MaterializeNotRepeatable,
                "materialize_twice",
            ),
            (false, false, Flaw::VerifyAcceptsAnything, "verify_contract"),
            (
                false,
                false,
                Flaw::BlockingPollDisagrees,
                "blocking_latest_agrees",
            ),
            (true, true, Flaw::PublishNotPolled, "publish_contract"),
            (false, true, Flaw::PublishDropsAFile, "publish_contract"),
            (
                false,
                false,
                Flaw::PublishNotSupportedWrongOperation,
                "publish_contract",
            ),
        ];
        for (history, publish, flaw, check) in cases {
            let err = run(history, publish, flaw).await.unwrap_err();
            assert!(err.starts_with(&format!("{check}: ")), "{flaw:?}: {err}");
        }
    }
}
