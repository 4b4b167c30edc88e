//! Cloning a project's metadata repository.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::{Error, Result};

/// Clone `source` (a path or URL) as a bare repository into `dest`; `shown` is what the
/// user typed, quoted in errors.
pub(crate) fn clone_bare(source: &str, dest: &Path, shown: &str) -> Result<()> {
    let bad = |e: gix::Error| Error::Backend {
        kind: "git".into(),
        source_name: shown.to_owned(),
        message: format!("cannot clone {shown:?}"),
        source: Some(Box::new(e)),
    };
    let mut prepare = gix::prepare_clone_bare(source, dest).map_err(bad)?;
    prepare
        .fetch_only(gix::progress::Discard, &AtomicBool::new(false))
        .map_err(bad)?;
    Ok(())
}
