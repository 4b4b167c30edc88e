//! A run's scratch area: `.dkt/tmp/run-<id>-<pid>.<n>/`, with the command's working
//! directory `work/` in it (and, as the run needs them, its inputs, its outputs' staging
//! copies and its rendered script).
//!
//! Making two directories and removing them again is a large part of a short run's
//! bookkeeping: removing frees their blocks, which a file system mounted with `discard`
//! sends to the device at once. So a scratch area is not removed when its run ends: it is
//! emptied down to an empty `work/` and renamed to a free slot, `.dkt/tmp/free-<k>`, and
//! the next run (of this process or another) takes a slot by renaming it into place.
//! Renames are atomic, so one taker wins a slot; a slot is never an empty directory (it
//! holds `work/`), so renaming onto a taken slot fails instead of replacing it. A process
//! killed meanwhile leaves a `run-*` directory, which `sweep_leftovers` removes, or a
//! slot, which the next run takes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::IoResultExt;
use crate::{Result, RunId};

/// How many emptied scratch areas `.dkt/tmp` keeps for the next runs.
const SLOTS: usize = 4;

/// The name of the command's working directory in a scratch area.
const WORK: &str = "work";

/// The scratch area of one run; emptied into a free slot (or removed) when dropped,
/// unless [kept](Scratch::keep).
#[derive(Debug)]
pub(crate) struct Scratch {
    path: PathBuf,
    kept: bool,
}

impl Scratch {
    /// A scratch area for `run` in `tmp` (`.dkt/tmp`), with an empty `work/`: a free slot
    /// when there is one, else a new directory.
    pub(crate) fn new(tmp: &Path, run: &RunId) -> Result<Scratch> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "run-{}-{}.{}",
            run.short(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = tmp.join(name);
        for k in 0..SLOTS {
            if std::fs::rename(slot(tmp, k), &path).is_ok() {
                if real_dir(&path.join(WORK)) {
                    return Ok(Scratch { path, kept: false });
                }
                // Not as it was left: start afresh.
                let _ = std::fs::remove_dir_all(&path);
                break;
            }
        }
        std::fs::create_dir_all(tmp).at(tmp)?;
        std::fs::create_dir(&path).at(&path)?;
        let scratch = Scratch { path, kept: false };
        std::fs::create_dir(scratch.work()).at(scratch.work())?;
        Ok(scratch)
    }

    /// The scratch area.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The command's working directory in it.
    pub(crate) fn work(&self) -> PathBuf {
        self.path.join(WORK)
    }

    /// Leave the scratch area where it is (for the user to look at); its path.
    pub(crate) fn keep(mut self) -> PathBuf {
        self.kept = true;
        self.path.clone()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if empty_but_work(&self.path) {
            if let Some(tmp) = self.path.parent() {
                for k in 0..SLOTS {
                    if std::fs::rename(&self.path, slot(tmp, k)).is_ok() {
                        return;
                    }
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove a run's scratch directory");
            }
        }
    }
}

fn slot(tmp: &Path, k: usize) -> PathBuf {
    tmp.join(format!("free-{k}"))
}

/// A directory (not a link to one) its owner can write to and enter.
fn real_dir(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p)
        .is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o700 == 0o700)
}

/// Remove everything in the scratch area `dir` but its `work/`, and everything in that:
/// `true` when what is left is `dir` with an empty, writable `work/` (links are removed,
/// never followed).
fn empty_but_work(dir: &Path) -> bool {
    if !real_dir(dir) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut work = false;
    for e in entries {
        let Ok(e) = e else { return false };
        if e.file_name() == WORK && real_dir(&e.path()) {
            work = remove_children(&e.path());
        } else if remove_entry(&e).is_err() {
            return false;
        }
    }
    work
}

fn remove_children(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries
        .into_iter()
        .all(|e| e.is_ok_and(|e| remove_entry(&e).is_ok()))
}

fn remove_entry(e: &std::fs::DirEntry) -> std::io::Result<()> {
    if e.file_type()?.is_dir() {
        std::fs::remove_dir_all(e.path())
    } else {
        std::fs::remove_file(e.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn run(n: u8) -> RunId {
        RunId::compute(&crate::NodeId([n; 32]), &[], 0)
    }

    #[test]
    fn an_emptied_scratch_area_is_taken_by_the_next_run() {
        let tmp = tempfile::tempdir().unwrap();
        let first = Scratch::new(tmp.path(), &run(1)).unwrap();
        assert!(first.path().starts_with(tmp.path()));
        assert!(first.work().is_dir());
        std::fs::write(first.work().join("out.txt"), "x").unwrap();
        std::fs::create_dir_all(first.path().join("in-a/deep")).unwrap();
        std::fs::write(first.path().join("script"), "echo").unwrap();
        let first_path = first.path().to_owned();
        drop(first);
        assert!(!first_path.exists());
        // One slot, holding an empty `work/` and nothing else.
        let slot0 = slot(tmp.path(), 0);
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("free-0")]);
        assert_eq!(std::fs::read_dir(slot0.join(WORK)).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(&slot0).unwrap().count(), 1);

        let second = Scratch::new(tmp.path(), &run(2)).unwrap();
        assert!(!slot0.exists(), "the slot was taken");
        assert!(second
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("run-{}-", run(2).short())));
        assert_eq!(std::fs::read_dir(second.work()).unwrap().count(), 0);
        let kept = second.keep();
        assert!(kept.join(WORK).is_dir(), "a kept area stays");
    }

    #[test]
    fn at_most_a_few_slots_are_kept_and_a_taken_slot_is_never_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let areas: Vec<_> = (0..SLOTS as u8 + 2)
            .map(|n| Scratch::new(tmp.path(), &run(n)).unwrap())
            .collect();
        let paths: Vec<_> = areas.iter().map(|a| a.path().to_owned()).collect();
        std::fs::write(areas[0].work().join("marker"), "x").unwrap();
        drop(areas);
        for p in &paths {
            assert!(!p.exists());
        }
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), SLOTS, "{left:?}");
        for k in 0..SLOTS {
            let s = slot(tmp.path(), k);
            assert_eq!(std::fs::read_dir(s.join(WORK)).unwrap().count(), 0);
        }
    }

    #[test]
    fn a_work_directory_replaced_by_a_link_is_removed_and_what_it_points_to_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), "keep me").unwrap();
        let s = Scratch::new(tmp.path(), &run(1)).unwrap();
        std::fs::remove_dir(s.work()).unwrap();
        std::os::unix::fs::symlink(outside.path(), s.work()).unwrap();
        let p = s.path().to_owned();
        drop(s);
        assert!(!p.exists());
        assert!(
            !slot(tmp.path(), 0).exists(),
            "not pooled without a real work/"
        );
        assert_eq!(
            std::fs::read_to_string(outside.path().join("precious")).unwrap(),
            "keep me"
        );
    }

    #[test]
    fn a_work_directory_left_read_only_is_not_handed_to_the_next_run() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Scratch::new(tmp.path(), &run(1)).unwrap();
        std::fs::set_permissions(s.work(), std::fs::Permissions::from_mode(0o500)).unwrap();
        drop(s);
        assert!(!slot(tmp.path(), 0).exists());
        let next = Scratch::new(tmp.path(), &run(2)).unwrap();
        let mode = std::fs::metadata(next.work()).unwrap().permissions().mode();
        assert_eq!(mode & 0o700, 0o700);
    }
}
