//! The conformance suite: plain async checks that any [`Source`] runs on itself.
//!
//! Every kind in `dtk-sources` calls [`check_all`] in its tests, and so can a third-party
//! plugin:
//!
//! ```ignore
//! #[tokio::test]
//! async fn conforms() {
//!     let source = my_kind.open(&ctx, &spec).unwrap();
//!     dtk_core::conformance::check_all(&*source, &Fixture::new(scratch_dir)).await.unwrap();
//! }
//! ```
//!
//! Each check returns `Err(String)` describing what broke the contract.

use std::path::{Path, PathBuf};

use crate::{Error, Source};

/// What the checks may use.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// An empty directory the checks may write into.
    pub scratch: PathBuf,
    /// For kinds that publish: a directory with content to publish, different from the
    /// source's current content.
    pub publish_dir: Option<PathBuf>,
}

impl Fixture {
    /// A fixture with a scratch directory and nothing to publish.
    pub fn new(scratch: impl Into<PathBuf>) -> Self {
        Fixture {
            scratch: scratch.into(),
            publish_dir: None,
        }
    }

    /// With content to publish.
    pub fn with_publish_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.publish_dir = Some(dir.into());
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

/// `latest` returns the same version twice when nothing changed.
pub async fn latest_is_stable(source: &dyn Source) -> Check {
    let a = source
        .latest()
        .await
        .map_err(|e| format!("latest failed: {e}"))?;
    let b = source
        .latest()
        .await
        .map_err(|e| format!("latest failed: {e}"))?;
    if a.version != b.version {
        return fail(format!(
            "latest changed without a change: {} then {}",
            a.version, b.version
        ));
    }
    Ok(())
}

/// With history, `versions` is non-empty, has no duplicates, and lists the latest version
/// first; without, it returns `NotSupported`.
pub async fn versions_agree_with_latest(source: &dyn Source) -> Check {
    let latest = source
        .latest()
        .await
        .map_err(|e| format!("latest failed: {e}"))?;
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
        Err(Error::NotSupported { .. }) if !source.capabilities().history => Ok(()),
        Err(e) => fail(format!("versions failed: {e}")),
    }
}

/// Materializing the latest version gives an existing path, and `fields` names it `ROOT`.
pub async fn materialize_latest(source: &dyn Source, fixture: &Fixture) -> Check {
    let latest = source
        .latest()
        .await
        .map_err(|e| format!("latest failed: {e}"))?;
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

/// Materializing a version that never existed is an error, not an empty directory.
pub async fn materialize_unknown_fails(source: &dyn Source, fixture: &Fixture) -> Check {
    let latest = source
        .latest()
        .await
        .map_err(|e| format!("latest failed: {e}"))?;
    let algo = latest.version.algo();
    let bogus = crate::Version::from_bytes(algo, &vec![0x5a; algo.hex_len() / 2])
        .map_err(|e| e.to_string())?;
    let scratch = fixture.fresh("materialize-unknown")?;
    match source.materialize(&bogus, &scratch).await {
        Ok(p) => fail(format!(
            "materialize of unknown version {bogus} succeeded: {}",
            p.display()
        )),
        Err(_) => Ok(()),
    }
}

/// Publishing works (and changes the latest version to what it returned) when the kind
/// declares it, and is `NotSupported` otherwise.
pub async fn publish_contract(source: &dyn Source, fixture: &Fixture) -> Check {
    let Some(dir) = &fixture.publish_dir else {
        if source.capabilities().publish {
            return fail(
                "the kind publishes: give the fixture content to publish \
                 (`Fixture::with_publish_dir`), so that publishing is checked",
            );
        }
        return match source.publish(&fixture.scratch).await {
            Err(Error::NotSupported { .. }) => Ok(()),
            Ok(_) => fail("publish succeeded but the kind does not declare it"),
            Err(e) => fail(format!("publish must be NotSupported, got: {e}")),
        };
    };
    if !source.capabilities().publish {
        return fail("a publish directory was given but the kind does not publish");
    }
    let before = source
        .latest()
        .await
        .map_err(|e| format!("latest failed: {e}"))?;
    let published = source
        .publish(dir)
        .await
        .map_err(|e| format!("publish failed: {e}"))?;
    let after = source
        .latest()
        .await
        .map_err(|e| format!("latest failed: {e}"))?;
    if published.version != after.version {
        return fail(format!(
            "publish returned {} but latest is then {}",
            published.version, after.version
        ));
    }
    if published.version == before.version {
        return fail("publishing different content did not change the version");
    }
    Ok(())
}

/// Run every check, stopping at the first failure, which is returned with the check's name.
pub async fn check_all(source: &dyn Source, fixture: &Fixture) -> Result<(), String> {
    let named = |name: &str, r: Check| r.map_err(|e| format!("{name}: {e}"));
    named("latest_is_stable", latest_is_stable(source).await)?;
    named(
        "versions_agree_with_latest",
        versions_agree_with_latest(source).await,
    )?;
    named(
        "materialize_latest",
        materialize_latest(source, fixture).await,
    )?;
    named(
        "materialize_unknown_fails",
        materialize_unknown_fails(source, fixture).await,
    )?;
    named("publish_contract", publish_contract(source, fixture).await)?;
    Ok(())
}
