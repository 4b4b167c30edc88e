//! Publishing to a branch: commit what a node wrote on top of the branch's tip and push it
//! with a lease on that tip (`git push --force-with-lease=refs/heads/B:TIP`), through the
//! `git` command (gix cannot push).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use dtk_api::{Error, Result};

use super::location::redact_url;
use super::KIND;

/// An author or committer, `Name <email>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) name: String,
    pub(crate) email: String,
}

impl Identity {
    /// Parse `Name <email>`; a bad value is `Invalid` quoting it.
    pub(crate) fn parse(setting: &str, value: &str) -> Result<Identity> {
        let bad = || {
            Error::invalid(
                "git identity",
                value,
                format!("[kind.git] {setting} must read `Name <email>`"),
            )
        };
        let (name, rest) = value.split_once('<').ok_or_else(bad)?;
        let email = rest.strip_suffix('>').ok_or_else(bad)?;
        let name = name.trim();
        if name.is_empty()
            || email.is_empty()
            || email.contains(['<', '>', '\n'])
            || name.contains('\n')
        {
            return Err(bad());
        }
        Ok(Identity {
            name: name.to_owned(),
            email: email.to_owned(),
        })
    }

    /// The identity dtk commits as by default.
    pub(crate) fn default_dtk() -> Identity {
        Identity {
            name: "dtk".to_owned(),
            email: "dtk@localhost".to_owned(),
        }
    }
}

/// One publish: where, on top of what, as whom.
#[derive(Debug)]
pub(crate) struct Publish<'a> {
    /// The source's name (for errors).
    pub(crate) name: &'a str,
    /// The bare mirror, where the new objects are written before the push.
    pub(crate) mirror: &'a Path,
    /// Where to push (the source's location).
    pub(crate) location: &'a str,
    /// The branch (short name).
    pub(crate) branch: &'a str,
    /// The sub-path the node's output replaces, if any.
    pub(crate) path: Option<&'a str>,
    /// The branch's tip the commit goes on (`None`: the branch does not exist).
    pub(crate) base: Option<String>,
    /// Push with `--force` instead of a lease on `base`.
    pub(crate) force: bool,
    pub(crate) author: Identity,
    pub(crate) committer: Identity,
    pub(crate) message: String,
    /// Extra environment for `git` (configuration carrying credentials, never arguments).
    pub(crate) env: Vec<(String, String)>,
}

/// How a publish ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// The new commit is the branch's tip.
    Commit(String),
    /// What the node wrote is what the branch holds: nothing to commit.
    Unchanged,
    /// The lease failed: the branch is no longer at `base`; it is at this commit (`None`:
    /// gone).
    Moved(Option<String>),
}

fn backend(name: &str, message: String) -> Error {
    Error::backend(KIND, name, message)
}

impl Publish<'_> {
    fn git(&self) -> Command {
        let mut c = Command::new("git");
        c.arg("--git-dir")
            .arg(self.mirror)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        c
    }

    /// Run `c`, feeding `input`; stdout when it succeeds, else an error quoting git.
    fn run(&self, mut c: Command, what: &str, input: Option<&str>) -> Result<String> {
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        if input.is_some() {
            c.stdin(Stdio::piped());
        }
        let mut child = c.spawn().map_err(|e| Error::Backend {
            kind: KIND.to_owned(),
            source_name: self.name.to_owned(),
            message: format!("cannot run git to {what} (is git installed?)"),
            source: Some(Box::new(e)),
        })?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            use std::io::Write;
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| Error::Backend {
                    kind: KIND.to_owned(),
                    source_name: self.name.to_owned(),
                    message: format!("cannot feed git to {what}"),
                    source: Some(Box::new(e)),
                })?;
        }
        let out = child.wait_with_output().map_err(|e| Error::Backend {
            kind: KIND.to_owned(),
            source_name: self.name.to_owned(),
            message: format!("git did not finish to {what}"),
            source: Some(Box::new(e)),
        })?;
        if !out.status.success() {
            return Err(backend(
                self.name,
                format!(
                    "git failed to {what}: {}",
                    redact_url(String::from_utf8_lossy(&out.stderr).trim())
                ),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The tree of `dir`'s files (ignore rules do not apply: everything is taken).
    fn tree_of(&self, dir: &Path, index: &Path) -> Result<String> {
        let mut add = self.git();
        add.env("GIT_INDEX_FILE", index)
            .arg("--work-tree")
            .arg(dir)
            .args(["add", "--all", "--force", "--", "."])
            .current_dir(dir);
        self.run(add, "stage what the node wrote", None)?;
        let mut write = self.git();
        write.env("GIT_INDEX_FILE", index).arg("write-tree");
        self.run(write, "write the tree of what the node wrote", None)
    }

    /// The tree to commit: `dir` as the whole tree, or as the sub-path in `base`'s tree.
    fn new_tree(&self, dir: &Path, tmp: &Path) -> Result<String> {
        let written = self.tree_of(dir, &tmp.join("written"))?;
        let Some(path) = self.path else {
            return Ok(written);
        };
        let index = tmp.join("whole");
        // Index operations that git runs only with a work tree (never touched here).
        let empty = tmp.join("empty");
        std::fs::create_dir_all(&empty).map_err(|e| Error::io(&empty, e))?;
        let indexed = || {
            let mut c = self.git();
            c.arg("--work-tree")
                .arg(&empty)
                .env("GIT_INDEX_FILE", &index);
            c
        };
        if let Some(base) = &self.base {
            let mut read = indexed();
            read.args(["read-tree", base]);
            self.run(read, "read the branch's tree", None)?;
            let mut rm = indexed();
            rm.args(["rm", "-r", "--cached", "-q", "--ignore-unmatch", "--", path]);
            self.run(rm, "replace the sub-path", None)?;
        }
        let mut prefix = indexed();
        prefix
            .arg("read-tree")
            .arg(format!("--prefix={path}/"))
            .arg(&written);
        self.run(prefix, "put what the node wrote at the sub-path", None)?;
        let mut write = self.git();
        write.env("GIT_INDEX_FILE", &index).arg("write-tree");
        self.run(write, "write the branch's new tree", None)
    }

    /// Commit `dir` on the base and push it.
    pub(crate) fn run_blocking(&self, dir: &Path, tmp_parent: &Path) -> Result<Pushed> {
        std::fs::create_dir_all(tmp_parent).map_err(|e| Error::io(tmp_parent, e))?;
        let tmp = tempfile::Builder::new()
            .prefix("git-publish-")
            .tempdir_in(tmp_parent)
            .map_err(|e| Error::io(tmp_parent, e))?;
        let tree = self.new_tree(dir, tmp.path())?;
        if let Some(base) = &self.base {
            let mut rev = self.git();
            rev.args(["rev-parse", &format!("{base}^{{tree}}")]);
            if self.run(rev, "read the branch's tree", None)? == tree {
                return Ok(Pushed::Unchanged);
            }
        }
        let mut commit = self.git();
        commit
            .env("GIT_AUTHOR_NAME", &self.author.name)
            .env("GIT_AUTHOR_EMAIL", &self.author.email)
            .env("GIT_COMMITTER_NAME", &self.committer.name)
            .env("GIT_COMMITTER_EMAIL", &self.committer.email)
            .args(["commit-tree", &tree]);
        if let Some(base) = &self.base {
            commit.args(["-p", base]);
        }
        commit.args(["-F", "-"]);
        let new = self.run(commit, "commit what the node wrote", Some(&self.message))?;
        let refname = format!("refs/heads/{}", self.branch);
        let mut push = self.git();
        push.args(["push", "--porcelain", "--quiet"]);
        if self.force {
            push.arg("--force");
        } else {
            push.arg(format!(
                "--force-with-lease={refname}:{}",
                self.base.as_deref().unwrap_or("")
            ));
        }
        push.arg(self.location).arg(format!("{new}:{refname}"));
        push.stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = push.output().map_err(|e| Error::Backend {
            kind: KIND.to_owned(),
            source_name: self.name.to_owned(),
            message: "cannot run git push (is git installed?)".to_owned(),
            source: Some(Box::new(e)),
        })?;
        if !out.status.success() {
            let said = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if said.contains("stale info") || said.contains("fetch first") {
                return Ok(Pushed::Moved(self.remote_tip()?));
            }
            return Err(backend(
                self.name,
                format!(
                    "git push to {} {refname} failed: {}",
                    redact_url(self.location),
                    redact_url(said.trim())
                ),
            ));
        }
        // The mirror follows at once (the next fetch would bring the same commit).
        let mut update = self.git();
        update.args(["update-ref", &refname, &new]);
        self.run(update, "update the mirror", None)?;
        Ok(Pushed::Commit(new))
    }

    /// The branch's tip on the remote now (`None`: no such branch).
    fn remote_tip(&self) -> Result<Option<String>> {
        let mut ls = self.git();
        ls.args([
            "ls-remote",
            self.location,
            &format!("refs/heads/{}", self.branch),
        ]);
        let out = self.run(ls, "read the branch on the remote", None)?;
        Ok(out.split_whitespace().next().map(str::to_owned))
    }
}

/// Where publishing works (private index files): `<cache>/git/publish`.
pub(crate) fn tmp_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("git").join("publish")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_read_as_git_writes_them() {
        let id = Identity::parse("author", "Build Bot <bot@example.com>").unwrap();
        assert_eq!(id.name, "Build Bot");
        assert_eq!(id.email, "bot@example.com");
        for bad in ["bot", "<bot@example.com>", "Bot <>", "Bot <a@b"] {
            let e = Identity::parse("author", bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
