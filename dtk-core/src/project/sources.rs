//! The sources of a project: declaring them, polling them, pinning, freezing, moving,
//! linking and removing them ([`Project::add_source`], [`Project::update_sources`], ...).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::IoResultExt;
use crate::source::{NewSource, Source, VersionInfo};
use crate::store::Snapshot;
use crate::{resolve_version, Error, Link, Name, Result, SourceSpec, SourceVersion, Version};

use super::{build_graph, Project};
use crate::records::{paths, read_source, record_version};

/// What to add with [`Project::add_source`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddSource {
    /// The new source's name.
    pub name: String,
    /// `LOCATION[:TAG]` as typed, or the name of an existing source to derive from;
    /// `None` for a new temporary directory.
    pub location: Option<String>,
    /// The kind (`-k`), if given.
    pub kind: Option<String>,
    /// The sub-path (`-p`), if given.
    pub path: Option<String>,
    /// The tag (`-t`): a branch, tag or commit, or a pattern ([`crate::pattern`]). When
    /// given, `location` is taken whole (no `LOCATION:TAG` split), so tags containing `/`
    /// (`feature/x`) work.
    pub tag: Option<String>,
}

impl AddSource {
    /// A source called `name` at `location`.
    pub fn new(name: impl Into<String>, location: Option<String>) -> Self {
        AddSource {
            name: name.into(),
            location,
            kind: None,
            path: None,
            tag: None,
        }
    }
    /// With an explicit tag (or tag pattern).
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }
    /// With an explicit kind.
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }
    /// With a sub-path.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }
}

/// What `dkt source pin` asks for ([`Project::pin_request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinRequest {
    /// Pin the source to this version (an ID or a unique prefix).
    Version(String),
    /// Move the source to a new location, optionally of another kind.
    Relocate {
        /// The new location.
        location: String,
        /// The new kind, if it changes.
        kind: Option<String>,
    },
}

/// What `dkt source update` asks for ([`Project::update_request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateRequest {
    /// Record `version` as the latest version of `name`, without polling.
    SetLatest {
        /// The source.
        name: String,
        /// The version (an ID or a unique prefix).
        version: String,
    },
    /// Poll these sources (every source when empty).
    Poll(Vec<String>),
}

impl Project {
    // ---------------------------------------------------------------- sources

    /// Add a source and poll it once, so its latest version is known at once.
    ///
    /// Nothing is recorded unless everything succeeds: the name is free and valid, the
    /// kind is known, the location, tag and sub-path resolve, and the poll works.
    pub async fn add_source(&self, add: AddSource) -> Result<SourceSpec> {
        self.add_source_noted(add).await.map(|(spec, _)| spec)
    }

    /// [`Project::add_source`], with a note for the user when the source was added
    /// without a version: a publishable source whose tag does not exist yet (a docker tag
    /// a node will publish for the first time) is added, and its first version is recorded
    /// when the tag appears or a node publishes to it.
    pub async fn add_source_noted(&self, add: AddSource) -> Result<(SourceSpec, Option<String>)> {
        let name = Name::new(&add.name)?;
        let snap = self.store.snapshot()?;
        if crate::records::source_exists(&snap, &name)? {
            return Err(Error::AlreadyExists {
                what: "source",
                name: name.to_string(),
            });
        }
        let mut spec = self
            .resolve_source(&add, None, &snap, &BTreeMap::new())
            .await?;
        let (source, latest, note) = self.poll_resolved(&mut spec).await?;
        let message = format!("source add {name} ({} {})", spec.kind, spec.location);
        let result = self.store.transact(&message, |tx| {
            if tx.exists(&paths::source(&spec.name))? {
                return Err(Error::AlreadyExists {
                    what: "source",
                    name: spec.name.to_string(),
                });
            }
            crate::records::put_source(tx, &spec)?;
            for info in &latest {
                record_version(tx, &spec.name, info, None)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            if spec.owned {
                let _ = source.remove().await;
            }
            return Err(e);
        }
        if spec.owned {
            self.mark_owned(&spec.name)?;
        }
        Ok((self.localized(&spec), note))
    }

    /// `.dkt/owned/<name>`: this machine made the source's location (a temporary
    /// directory), so `dkt source rm` may delete it. Kept outside the history: ownership
    /// read from a clone's records would let `source rm` delete a directory this machine
    /// never made.
    fn owned_marker(&self, name: &Name) -> PathBuf {
        self.dkt.join("owned").join(name.as_str())
    }

    pub(crate) fn mark_owned(&self, name: &Name) -> Result<()> {
        let path = self.owned_marker(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).at(dir)?;
        }
        std::fs::write(&path, b"").at(&path)
    }

    /// Turn what `add` asks for into a spec through its kind, as [`Project::add_source`]
    /// does, without polling or recording anything (a kind may still create a temporary
    /// directory: see [`SourceSpec::owned`]).
    ///
    /// `tag`, when given, is the tag, and `add.location` is then taken whole (no
    /// `LOCATION:TAG` split). A location naming another source (not `add.name` itself)
    /// derives from it: from `declared` (sources not recorded yet, such as those declared
    /// earlier in a pipeline file) first, else from `snap`.
    pub(crate) async fn resolve_source(
        &self,
        add: &AddSource,
        tag: Option<&str>,
        snap: &Snapshot,
        declared: &BTreeMap<Name, SourceSpec>,
    ) -> Result<SourceSpec> {
        let name = Name::new(&add.name)?;
        let path = match &add.path {
            Some(p) => Some(normalize_subpath(p)?),
            None => None,
        };
        let tag = tag.or(add.tag.as_deref());
        // LOCATION may name another source, possibly with a tag of its own
        // (`SOURCE:TAG`): inherit from it.
        let find = |n: &Name| -> Result<Option<SourceSpec>> {
            match declared.get(n) {
                Some(spec) => Ok(Some(spec.clone())),
                None => match read_source(snap, n) {
                    Ok(spec) => Ok(Some(spec)),
                    Err(Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                },
            }
        };
        let mut parent_tag: Option<String> = None;
        let parent = match add.location.as_deref().map(Name::new) {
            Some(Ok(n)) if n == name => None,
            Some(Ok(n)) => find(&n)?,
            Some(Err(_)) => match add.location.as_deref().and_then(|l| l.split_once(':')) {
                Some((base, t)) if !t.is_empty() => match Name::new(base) {
                    Ok(n) if n != name => {
                        let found = find(&n)?;
                        if found.is_some() {
                            parent_tag = Some(t.to_owned());
                        }
                        found
                    }
                    _ => None,
                },
                _ => None,
            },
            None => None,
        };
        if let (Some(p), Some(t)) = (&parent, &parent_tag) {
            if tag.is_some() {
                return Err(Error::invalid(
                    "tag",
                    t.as_str(),
                    "given twice (as SOURCE:TAG and with -t); give one",
                ));
            }
            if !self.registry.get(&p.kind)?.capabilities().tags {
                return Err(Error::invalid(
                    "tag",
                    t.as_str(),
                    format!("sources of kind {:?} have no tags", p.kind),
                ));
            }
        }
        let tag = tag.or(parent_tag.as_deref());
        let new = match &parent {
            Some(p) => {
                let kind = add.kind.clone().unwrap_or_else(|| p.kind.clone());
                let path = match (&p.path, path) {
                    (Some(base), Some(sub)) => Some(normalize_subpath(&format!("{base}/{sub}"))?),
                    (base, sub) => sub.or_else(|| base.clone()),
                };
                NewSource {
                    name: name.clone(),
                    kind,
                    location: Some(self.local_location(&p.location)),
                    tag: tag.map(str::to_owned).or_else(|| p.tag.clone()),
                    path,
                }
            }
            None => {
                let (kind, location, tag) = match (&add.kind, &add.location, tag) {
                    (Some(k), Some(loc), Some(t)) => {
                        self.registry.get(k)?;
                        (k.clone(), Some(loc.clone()), Some(t.to_owned()))
                    }
                    (Some(k), Some(loc), None) => {
                        let kind = self.registry.get(k)?;
                        let (loc, tag) = split_tag(loc, kind.capabilities().tags);
                        (k.clone(), Some(loc), tag)
                    }
                    (Some(k), None, t) => (k.clone(), None, t.map(str::to_owned)),
                    (None, Some(loc), t) => {
                        // Kinds look at the local file system relative to the process's
                        // directory: show them the path relative to the project's.
                        let local = self.cwd.join(loc);
                        let probe = if !Path::new(loc).is_absolute() && local.exists() {
                            local.display().to_string()
                        } else {
                            loc.clone()
                        };
                        let whole = self.registry.infer(&probe);
                        let (l, split) = split_tag(loc, true);
                        match (whole, split, t) {
                            (Ok(k), _, Some(t)) => {
                                (k.name().to_owned(), Some(loc.clone()), Some(t.to_owned()))
                            }
                            (Err(e), _, Some(_)) => return Err(e),
                            (Ok(k), _, None) if k.capabilities().tags || !loc.contains(':') => {
                                let (l, t) = split_tag(loc, k.capabilities().tags);
                                (k.name().to_owned(), Some(l), t)
                            }
                            (Ok(k), _, None) => (k.name().to_owned(), Some(loc.clone()), None),
                            (Err(e), Some(t), None) => match self.registry.infer(&l) {
                                Ok(k) if k.capabilities().tags => {
                                    (k.name().to_owned(), Some(l), Some(t))
                                }
                                _ => return Err(e),
                            },
                            (Err(e), None, None) => return Err(e),
                        }
                    }
                    (None, None, t) => ("path".to_owned(), None, t.map(str::to_owned)),
                };
                NewSource {
                    name: name.clone(),
                    kind,
                    location,
                    tag,
                    path,
                }
            }
        };
        let kind = self.registry.get(&new.kind)?;
        if let Some(t) = new.tag.as_deref().filter(|t| crate::pattern::is_pattern(t)) {
            if !kind.capabilities().patterns {
                return Err(Error::invalid(
                    "tag pattern",
                    t,
                    format!(
                        "sources of kind {:?} cannot follow tag patterns",
                        kind.name()
                    ),
                ));
            }
            crate::pattern::TagPattern::new(t)?;
        }
        if new.path.is_some() && !kind.capabilities().subpath {
            return Err(Error::NotSupported {
                kind: kind.name().to_owned(),
                operation: "sub-paths (-p)",
            });
        }
        let mut spec = kind.resolve(&self.context(), new).await?;
        spec.parent = parent.map(|p| p.name);
        spec.location = self.stored_location(&spec.location);
        Ok(spec)
    }

    /// How a location is stored: a path inside the project's directory relative to it
    /// (`./data`), so that every copy of the project resolves it against its own root;
    /// anything else as it is.
    pub(crate) fn stored_location(&self, location: &str) -> String {
        if !location.starts_with('/') {
            return location.to_owned();
        }
        let root = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        for base in [&root, &self.root] {
            if let Ok(rel) = Path::new(location).strip_prefix(base) {
                if rel.components().any(|c| c.as_os_str() == ".dkt") {
                    return location.to_owned();
                }
                return if rel.as_os_str().is_empty() {
                    ".".to_owned()
                } else {
                    format!("./{}", rel.display())
                };
            }
        }
        location.to_owned()
    }

    /// Where a stored location is on this machine: `./x` under the project's directory.
    pub fn local_location(&self, location: &str) -> String {
        if location == "." {
            return self.root.display().to_string();
        }
        match location.strip_prefix("./") {
            Some(rel) => self.root.join(rel).display().to_string(),
            None => location.to_owned(),
        }
    }

    /// `spec` with its location as this machine sees it (what the kinds are given).
    pub(crate) fn localized(&self, spec: &SourceSpec) -> SourceSpec {
        SourceSpec {
            location: self.local_location(&spec.location),
            ..spec.clone()
        }
    }

    /// What `dkt source pin NAME TARGET [--kind KIND]` asks for: a version ID (or a
    /// unique prefix of one) pins the source; anything else, or any target given with a
    /// kind, is a new location the source moves to ([`Project::relocate`]).
    pub fn pin_request(target: &str, kind: Option<&str>) -> PinRequest {
        if kind.is_none() && crate::id::validate_prefix(target).is_ok() {
            PinRequest::Version(target.to_owned())
        } else {
            PinRequest::Relocate {
                location: target.to_owned(),
                kind: kind.map(str::to_owned),
            }
        }
    }

    /// What `dkt source update ARGS` asks for: `NAME VERSION`, where the second word is
    /// a version ID (or prefix) and not the name of a source, records that version as
    /// the source's latest without polling; anything else polls the named sources (every
    /// source when none is named).
    pub fn update_request(&self, args: &[String]) -> UpdateRequest {
        match args {
            [name, version]
                if crate::id::validate_prefix(version).is_ok() && self.source(version).is_err() =>
            {
                UpdateRequest::SetLatest {
                    name: name.clone(),
                    version: version.clone(),
                }
            }
            names => UpdateRequest::Poll(names.to_vec()),
        }
    }

    /// Pin `name` to a version given in full or as a unique prefix, resolved against the
    /// source's versions.
    pub async fn pin(&self, name: &str, version: &str) -> Result<Version> {
        let spec = self.source(name)?;
        let mut known: Vec<Version> = self
            .recorded_versions(name)?
            .into_iter()
            .map(|r| r.version)
            .collect();
        let source = self.open_source(&spec)?;
        if source.capabilities().history {
            known.extend(source.versions().await?.into_iter().map(|i| i.version));
        }
        let v = resolve_version(version, &known)
            .map_err(|e| match e {
                Error::NotFound { what, name: n, .. } => Error::NotFound {
                    what,
                    name: n,
                    hint: format!(
                        " among the versions of source {:?} (see `dkt source log {}`)",
                        spec.name.as_str(),
                        spec.name
                    ),
                },
                e => e,
            })?
            .clone();
        let message = format!("source pin {} {}", spec.name, v);
        self.store.transact(&message, |tx| {
            if !crate::records::update_state(tx, &spec.name, |s| s.pinned = Some(v.clone()))? {
                return Err(Error::not_found("source", spec.name.as_str()));
            }
            tx.settle(&paths::source_state(&spec.name));
            Ok(())
        })?;
        Ok(v)
    }

    /// Record `version` (full, or a unique prefix of a version the kind lists) as the
    /// latest version of `name`, without polling (`dkt source update NAME VERSION`).
    pub async fn set_latest(&self, name: &str, version: &str) -> Result<Version> {
        let spec = self.source(name)?;
        let source = self.open_source(&spec)?;
        let v = if source.capabilities().history {
            let mut known: Vec<Version> = source
                .versions()
                .await?
                .into_iter()
                .map(|i| i.version)
                .collect();
            if resolve_version(version, &known).is_err() {
                // Not seen yet (a frozen source is never polled): fetch what the kind has
                // now, without recording it, and look again.
                source.latest().await?;
                known = source
                    .versions()
                    .await?
                    .into_iter()
                    .map(|i| i.version)
                    .collect();
            }
            resolve_version(version, &known)
                .map_err(|e| match e {
                    Error::NotFound { what, name: n, .. } => Error::NotFound {
                        what,
                        name: n,
                        hint: format!(" among the versions of source {:?}", spec.name.as_str()),
                    },
                    e => e,
                })?
                .clone()
        } else {
            let recorded: Vec<Version> = self
                .recorded_versions(name)?
                .into_iter()
                .map(|r| r.version)
                .collect();
            match version.parse::<Version>() {
                Ok(v) => v,
                Err(_) => resolve_version(version, &recorded)?.clone(),
            }
        };
        let info = VersionInfo::new(v.clone());
        let message = format!("source update {} {} (given)", spec.name, v.short());
        self.store.transact(&message, |tx| {
            if !crate::records::update_state(tx, &spec.name, |s| s.latest = Some(v.clone()))? {
                return Err(Error::not_found("source", spec.name.as_str()));
            }
            record_version(tx, &spec.name, &info, None)
        })?;
        Ok(v)
    }

    /// Remove the pin of `name`.
    pub fn unpin(&self, name: &str) -> Result<()> {
        self.edit_source(name, &format!("source unpin {name}"), |s| {
            s.pinned = None;
            Ok(())
        })
    }

    /// Freeze (`true`) or thaw (`false`) a source: a frozen source is never polled.
    pub fn set_frozen(&self, name: &str, frozen: bool) -> Result<()> {
        let verb = if frozen { "freeze" } else { "thaw" };
        self.edit_source(name, &format!("source {verb} {name}"), |s| {
            s.frozen = frozen;
            Ok(())
        })
    }

    fn edit_source(
        &self,
        name: &str,
        message: &str,
        mut f: impl FnMut(&mut SourceSpec) -> Result<()>,
    ) -> Result<()> {
        let name = Name::new(name)?;
        self.store.transact(message, |tx| {
            let mut s = crate::records::get_source(tx, &name)?
                .ok_or_else(|| Error::not_found("source", name.as_str()))?;
            f(&mut s)?;
            crate::records::put_source(tx, &s)?;
            // The user's word on this source settles what a merge reported about it.
            tx.settle(&paths::source_state(&name));
            tx.settle(&paths::source(&name));
            Ok(())
        })?;
        Ok(())
    }

    /// Move `name` to another location (a local mirror, say), keeping its name, history
    /// and tag; `kind` changes its kind too.
    pub async fn relocate(
        &self,
        name: &str,
        location: &str,
        kind: Option<&str>,
    ) -> Result<SourceSpec> {
        let old = self.source(name)?;
        let kind_name = kind.map(str::to_owned).unwrap_or_else(|| old.kind.clone());
        let k = self.registry.get(&kind_name)?;
        let (loc, tag) = split_tag(location, k.capabilities().tags);
        let new = NewSource {
            name: old.name.clone(),
            kind: kind_name,
            location: Some(loc),
            tag: tag.or_else(|| old.tag.clone()),
            path: old.path.clone(),
        };
        let mut spec = k.resolve(&self.context(), new).await?;
        spec.location = self.stored_location(&spec.location);
        spec.parent = old.parent.clone();
        spec.pinned = old.pinned.clone();
        spec.frozen = old.frozen;
        let latest = k
            .open(&self.context(), &self.localized(&spec))?
            .latest()
            .await?;
        spec.latest = Some(latest.version.clone());
        let message = format!(
            "source pin {} {} (relocated from {})",
            spec.name, spec.location, old.location
        );
        self.store.transact(&message, |tx| {
            if !tx.exists(&paths::source(&spec.name))? {
                return Err(Error::not_found("source", spec.name.as_str()));
            }
            crate::records::put_source(tx, &spec)?;
            record_version(tx, &spec.name, &latest, None)?;
            Ok(())
        })?;
        Ok(spec)
    }

    /// Resolve `SRC:PREFIX` to a recorded or listed version of that source.
    pub async fn resolve_source_version(&self, text: &str) -> Result<SourceVersion> {
        let (name, prefix) = text.split_once(':').ok_or_else(|| {
            Error::invalid(
                "source version",
                text,
                "expected SOURCE:VERSION, e.g. pinata:3dd2cc1d",
            )
        })?;
        let spec = self.source(name)?;
        let mut known: Vec<Version> = self
            .recorded_versions(name)?
            .into_iter()
            .map(|r| r.version)
            .collect();
        let source = self.open_source(&spec)?;
        if source.capabilities().history {
            known.extend(source.versions().await?.into_iter().map(|i| i.version));
        }
        let v = resolve_version(prefix, &known).map_err(|e| match e {
            Error::NotFound { what, name: n, .. } => Error::NotFound {
                what,
                name: format!("{}:{n}", spec.name),
                hint: String::new(),
            },
            Error::Invalid { reason, .. } => Error::invalid("source version", text, reason),
            e => e,
        })?;
        Ok(SourceVersion {
            source: spec.name,
            version: v.clone(),
        })
    }

    /// Record an out-of-band relation between two existing versions (`SRC:ID`).
    pub async fn link(&self, from: &str, to: &str) -> Result<Link> {
        let from = self.resolve_source_version(from).await?;
        let to = self.resolve_source_version(to).await?;
        let link = Link {
            from,
            to,
            recorded_ms: None,
        };
        let message = format!(
            "source link {} {}",
            short_sv(&link.from),
            short_sv(&link.to)
        );
        self.store.transact(&message, |tx| {
            let path = paths::link(&link.id());
            if !tx.exists(&path)? {
                tx.put_json(&path, &link)?;
            }
            Ok(())
        })?;
        Ok(link)
    }

    /// Remove a source. Refused while a node reads or writes it (the error names the
    /// nodes) or another source derives from it.
    pub async fn remove_source(&self, name: &str) -> Result<SourceSpec> {
        let mut spec = self.source(name)?;
        spec.owned = self.owned_marker(&spec.name).exists();
        let message = format!("source rm {}", spec.name);
        self.store.transact(&message, |tx| {
            let snap = tx.base();
            let graph = build_graph(snap)?;
            let mut users: Vec<String> = graph
                .readers(&spec.name)
                .iter()
                .chain(graph.writers(&spec.name).iter())
                .map(|id| id.short())
                .collect();
            users.sort();
            users.dedup();
            if !users.is_empty() {
                return Err(Error::Conflict(format!(
                    "source {:?} is used by node{} {}: remove {} first",
                    spec.name.as_str(),
                    if users.len() > 1 { "s" } else { "" },
                    users.join(", "),
                    if users.len() > 1 { "them" } else { "it" },
                )));
            }
            crate::records::remove_source(tx, &spec.name);
            tx.remove(&paths::versions_dir(&spec.name));
            tx.remove(&paths::seen_dir(&spec.name));
            Ok(())
        })?;
        if let Ok(source) = self.open_source(&spec) {
            source.remove().await?;
        }
        let _ = std::fs::remove_file(self.owned_marker(&spec.name));
        Ok(spec)
    }
}

fn short_sv(sv: &SourceVersion) -> String {
    format!("{}:{}", sv.source, sv.version.short())
}

/// Split `LOCATION[:TAG]`. Only a final `:TAG` without `/` counts, so URLs
/// (`https://...`), `git@host:path` and `host:port/repo` keep their colons; a Windows-like
/// `C:\...` and digit-only suffixes (ports) are not tags either.
pub fn split_tag(location: &str, kind_has_tags: bool) -> (String, Option<String>) {
    if !kind_has_tags {
        return (location.to_owned(), None);
    }
    if let Some((loc, tag)) = location.rsplit_once(':') {
        let scp_like = loc.contains('@') && !loc.contains('/');
        if !tag.is_empty()
            && !tag.contains('/')
            && !tag.contains('\\')
            && !tag.chars().all(|c| c.is_ascii_digit())
            && !loc.is_empty()
            && !loc.ends_with(':')
            && !scp_like
            && loc.contains(['/', '.'])
        {
            return (loc.to_owned(), Some(tag.to_owned()));
        }
    }
    (location.to_owned(), None)
}

/// Normalize a sub-path: `/`-separated, relative, no `.` or `..` or empty parts.
pub fn normalize_subpath(p: &str) -> Result<String> {
    let mut parts = Vec::new();
    for part in p.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                return Err(Error::invalid(
                    "sub-path",
                    p,
                    "it must stay inside the source (no \"..\")",
                ))
            }
            part if part.chars().any(char::is_control) => {
                return Err(Error::invalid(
                    "sub-path",
                    p,
                    "control characters are not allowed",
                ))
            }
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(Error::invalid("sub-path", p, "it names no sub-directory"));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::InitOptions;
    use std::sync::Arc;

    #[test]
    fn pin_and_update_arguments_mean_what_the_cli_says() {
        let a = "md5:0123456789abcdef0123456789abcdef";
        assert_eq!(
            Project::pin_request("0123abcd", None),
            PinRequest::Version("0123abcd".into())
        );
        assert_eq!(Project::pin_request(a, None), PinRequest::Version(a.into()));
        // A location, or anything given with a kind, moves the source.
        assert_eq!(
            Project::pin_request("/data/pinata", None),
            PinRequest::Relocate {
                location: "/data/pinata".into(),
                kind: None
            }
        );
        assert_eq!(
            Project::pin_request("0123abcd", Some("path")),
            PinRequest::Relocate {
                location: "0123abcd".into(),
                kind: Some("path".into())
            }
        );

        let dir = tempfile::tempdir().unwrap();
        let p = Project::init(
            dir.path(),
            Arc::new(crate::source::Registry::new()),
            InitOptions::default(),
        )
        .unwrap();
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            p.update_request(&args(&["src", "0123abcd"])),
            UpdateRequest::SetLatest {
                name: "src".into(),
                version: "0123abcd".into()
            }
        );
        assert_eq!(
            p.update_request(&args(&["src", "other"])),
            UpdateRequest::Poll(args(&["src", "other"]))
        );
        assert_eq!(p.update_request(&[]), UpdateRequest::Poll(vec![]));
    }

    #[test]
    fn tags_split_only_where_meant() {
        assert_eq!(
            split_tag("docker/pinata:beta12", true),
            ("docker/pinata".into(), Some("beta12".into()))
        );
        assert_eq!(
            split_tag("https://github.com/a/b", true),
            ("https://github.com/a/b".into(), None)
        );
        assert_eq!(
            split_tag("https://github.com/a/b:dev", true),
            ("https://github.com/a/b".into(), Some("dev".into()))
        );
        assert_eq!(
            split_tag("git@github.com:a/b", true),
            ("git@github.com:a/b".into(), None)
        );
        assert_eq!(
            split_tag("localhost:5000/repo", true),
            ("localhost:5000/repo".into(), None)
        );
        assert_eq!(
            split_tag("localhost:5000/repo:v1", true),
            ("localhost:5000/repo".into(), Some("v1".into()))
        );
        assert_eq!(split_tag("/tmp/x:y", false), ("/tmp/x:y".into(), None));
    }

    #[test]
    fn subpaths_never_escape() {
        assert_eq!(normalize_subpath("/v1/pitfall/").unwrap(), "v1/pitfall");
        assert_eq!(normalize_subpath("./a//b").unwrap(), "a/b");
        for bad in ["..", "a/../../b", "/", "", "a/\n"] {
            let e = normalize_subpath(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}
