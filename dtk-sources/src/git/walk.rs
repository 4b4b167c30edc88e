//! `git log` order, done by hand over raw commit objects.
//!
//! git's default walk (`git log` without ordering options, as of git 2.47) is a priority
//! queue on the committer timestamp: the newest queued commit is shown next, and among
//! commits with the same timestamp the one queued first wins (git's
//! `commit_list_insert_by_date` inserts after every entry with the same date, and its newer
//! `prio_queue` breaks ties by insertion order). A commit's parents are queued in their
//! order (first parent first) when it leaves the queue, unless already queued. gix's own
//! `ByCommitTime` sorting breaks ties differently, hence this walk.
//!
//! With a path, this follows git's default history simplification (`git log -- PATH`,
//! without `--full-history`): a commit whose entry at PATH (mode and object id, or absence)
//! equals that of one of its parents is TREESAME to it; the first such parent becomes the
//! commit's only parent (the walk does not go down the other parents of a merge) and the
//! commit is not shown. A commit with no TREESAME parent is shown; a root commit is shown
//! when PATH exists in it. This matches git for a literal path (no glob magic) as long as
//! no `--remove-empty`, `--full-history`, `--simplify-merges` or `--first-parent` is given.
//!
//! Speed: commits are parsed from their raw header (tree, parents, committer time) once
//! each; the entry at PATH is cached per (depth, tree id), so an unchanged sub-tree is read
//! once. Packs whose delta chains run from older to newer objects (as `git fast-import`
//! writes them, and as fetches serve them when they reuse such deltas) make gix resolve a
//! whole chain for every tree read newest-first, because its delta cache keeps only the
//! objects asked for, where git's also keeps every intermediate base. When the walk sees
//! that layout, a [`Primer`] reads each tree's missing bases oldest-first, so each is
//! inflated once.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Range;

use gix::objs::Find;
use gix::odb::pack::Find as PackFind;
use gix::ObjectId;

/// The object database walks read (a repository's `objects`).
pub(crate) type Odb = gix::OdbHandle;

/// Why the walk stopped.
#[derive(Debug)]
pub(crate) enum WalkError {
    /// The object database failed.
    Odb(ObjectId, gix::Error),
    /// An object is missing (a shallow or damaged repository).
    Missing(ObjectId),
    /// An object is not what it should be, or cannot be parsed.
    Malformed(ObjectId, &'static str),
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkError::Odb(id, _) => write!(f, "cannot read object {id}"),
            WalkError::Missing(id) => write!(f, "object {id} is missing from the mirror"),
            WalkError::Malformed(id, what) => write!(f, "object {id} {what}"),
        }
    }
}

impl std::error::Error for WalkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalkError::Odb(_, e) => Some(e),
            _ => None,
        }
    }
}

type WalkResult<T> = Result<T, WalkError>;

/// A commit as the walk needs it.
struct CommitInfo {
    time: u64,
    tree: ObjectId,
    parents: Range<u32>,
    queued: bool,
}

/// A queued commit: newest first, then first queued first.
#[derive(PartialEq, Eq)]
struct Queued {
    time: u64,
    seq: u64,
    id: ObjectId,
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        self.time
            .cmp(&other.time)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A tree entry reduced to what decides TREESAME: canonical mode and object id.
type PathEntry = Option<(u16, ObjectId)>;

/// Looks up one path in trees, caching the answer per (depth, tree).
struct PathFilter {
    components: Vec<Vec<u8>>,
    cache: Vec<gix::hashtable::HashMap<ObjectId, PathEntry>>,
    trail: Vec<ObjectId>,
}

impl PathFilter {
    fn new(path: &str) -> Self {
        let components: Vec<Vec<u8>> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .map(|c| c.as_bytes().to_vec())
            .collect();
        let cache = components.iter().map(|_| Default::default()).collect();
        PathFilter {
            components,
            cache,
            trail: Vec::new(),
        }
    }

    fn entry(
        &mut self,
        odb: &Odb,
        hash: gix::hash::Kind,
        buf: &mut Vec<u8>,
        primer: &mut Option<Primer>,
        tree: ObjectId,
    ) -> WalkResult<PathEntry> {
        if self.components.is_empty() {
            return Ok(Some((gix::objs::tree::EntryKind::Tree as u16, tree)));
        }
        self.trail.clear();
        let last = self.components.len() - 1;
        let mut cur = tree;
        let mut result = None;
        for (depth, name) in self.components.iter().enumerate() {
            if let Some(hit) = self.cache[depth].get(&cur) {
                result = *hit;
                break;
            }
            self.trail.push(cur);
            if let Some(p) = primer {
                p.prime(odb, hash, cur);
            }
            let data = Find::try_find(odb, &cur, buf)
                .map_err(|e| WalkError::Odb(cur, e))?
                .ok_or(WalkError::Missing(cur))?;
            if data.kind != gix::objs::Kind::Tree {
                return Err(WalkError::Malformed(cur, "is not a tree"));
            }
            let mut found = None;
            for e in gix::objs::TreeRefIter::from_bytes(data.data, hash) {
                let e = e.map_err(|_| WalkError::Malformed(cur, "is a damaged tree"))?;
                if e.filename.as_ref() as &[u8] == name.as_slice() {
                    found = Some((e.mode, e.oid.to_owned()));
                    break;
                }
            }
            match found {
                Some((mode, oid)) if depth == last => {
                    result = Some((mode.kind() as u16, oid));
                    break;
                }
                Some((mode, oid)) if mode.is_tree() => cur = oid,
                _ => break,
            }
        }
        for (depth, t) in self.trail.iter().enumerate() {
            self.cache[depth].insert(*t, result);
        }
        Ok(result)
    }
}

/// The walk: call [`LogWalk::next_commit`] until it returns `None`.
pub(crate) struct LogWalk<'a> {
    odb: &'a Odb,
    hash: gix::hash::Kind,
    buf: Vec<u8>,
    queue: BinaryHeap<Queued>,
    seq: u64,
    commits: gix::hashtable::HashMap<ObjectId, CommitInfo>,
    parents: Vec<ObjectId>,
    path: Option<PathFilter>,
    primer: Option<Primer>,
}

impl<'a> LogWalk<'a> {
    /// A walk from `tip` over `odb`, limited to commits that changed `path` if given.
    pub(crate) fn new(
        odb: &'a mut Odb,
        hash: gix::hash::Kind,
        tip: ObjectId,
        path: Option<&str>,
    ) -> WalkResult<Self> {
        // Pack locations stay valid for the walk (needed by the primer), and replacement
        // objects are not followed (a mirror fetches no `refs/replace/`).
        odb.prevent_pack_unload();
        odb.ignore_replacements = true;
        let odb: &'a Odb = odb;
        let mut walk = LogWalk {
            odb,
            hash,
            buf: Vec::with_capacity(4096),
            queue: BinaryHeap::new(),
            seq: 0,
            commits: Default::default(),
            parents: Vec::new(),
            path: path.map(PathFilter::new),
            primer: None,
        };
        walk.enqueue(tip)?;
        if walk.path.is_some() {
            walk.primer = walk.detect_layout(tip);
        }
        Ok(walk)
    }

    /// A primer when the tip's tree is stored as a delta against its first parent's tree.
    fn detect_layout(&mut self, tip: ObjectId) -> Option<Primer> {
        let info = self.commits.get(&tip)?;
        let tree = info.tree;
        let parent = *self
            .parents
            .get(info.parents.start as usize..info.parents.end as usize)?
            .first()?;
        self.parse(parent).ok()?;
        let parent_tree = self.commits.get(&parent)?.tree;
        Primer::detect(self.odb, self.hash, tree, parent_tree)
    }

    /// Parse `id` unless already parsed.
    fn parse(&mut self, id: ObjectId) -> WalkResult<()> {
        if self.commits.contains_key(&id) {
            return Ok(());
        }
        let data = Find::try_find(self.odb, &id, &mut self.buf)
            .map_err(|e| WalkError::Odb(id, e))?
            .ok_or(WalkError::Missing(id))?;
        if data.kind != gix::objs::Kind::Commit {
            return Err(WalkError::Malformed(id, "is not a commit"));
        }
        let start = self.parents.len() as u32;
        let (tree, time) = parse_commit(data.data, self.hash, &mut self.parents)
            .ok_or(WalkError::Malformed(id, "is a damaged commit"))?;
        let end = self.parents.len() as u32;
        self.commits.insert(
            id,
            CommitInfo {
                time,
                tree,
                parents: start..end,
                queued: false,
            },
        );
        Ok(())
    }

    fn enqueue(&mut self, id: ObjectId) -> WalkResult<()> {
        self.parse(id)?;
        let Some(info) = self.commits.get_mut(&id) else {
            return Err(WalkError::Missing(id));
        };
        if info.queued {
            return Ok(());
        }
        info.queued = true;
        self.seq += 1;
        self.queue.push(Queued {
            time: info.time,
            seq: self.seq,
            id,
        });
        Ok(())
    }

    fn info(&self, id: &ObjectId) -> WalkResult<&CommitInfo> {
        self.commits.get(id).ok_or(WalkError::Missing(*id))
    }

    /// The next commit `git log` would show, or `None` at the end.
    pub(crate) fn next_commit(&mut self) -> WalkResult<Option<ObjectId>> {
        while let Some(q) = self.queue.pop() {
            let (tree, range) = {
                let info = self.info(&q.id)?;
                (info.tree, info.parents.clone())
            };
            let range = range.start as usize..range.end as usize;
            let (show, walk_parents) = match self.path.is_some() {
                false => (true, range),
                true => self.simplify(tree, range)?,
            };
            for i in walk_parents {
                let p = self.parents[i];
                self.enqueue(p)?;
            }
            if show {
                return Ok(Some(q.id));
            }
        }
        Ok(None)
    }

    /// git's `try_to_simplify_commit` for one path: whether to show the commit, and which
    /// of its parents to walk.
    fn simplify(
        &mut self,
        tree: ObjectId,
        parents: Range<usize>,
    ) -> WalkResult<(bool, Range<usize>)> {
        let Some(mut filter) = self.path.take() else {
            return Ok((true, parents));
        };
        let result = (|| {
            let mine = filter.entry(self.odb, self.hash, &mut self.buf, &mut self.primer, tree)?;
            if parents.is_empty() {
                return Ok((mine.is_some(), parents));
            }
            for i in parents.clone() {
                let p = self.parents[i];
                self.parse(p)?;
                let ptree = self.info(&p)?.tree;
                if filter.entry(self.odb, self.hash, &mut self.buf, &mut self.primer, ptree)?
                    == mine
                {
                    return Ok((false, i..i + 1));
                }
            }
            Ok((true, parents))
        })();
        self.path = Some(filter);
        result
    }
}

/// Reads the delta bases of a tree, oldest first, before the tree itself, so gix's delta
/// cache resolves each chain link once (see the module notes).
struct Primer {
    /// Per pack: every object's offset and id, sorted by offset.
    packs: std::collections::HashMap<u32, Vec<(u64, ObjectId)>>,
    /// Where each object of the loaded packs is.
    locations: gix::hashtable::HashMap<ObjectId, (u32, u64)>,
    /// Objects already read during this walk (so in gix's cache, unless evicted).
    read: gix::hashtable::HashSet<ObjectId>,
    chain: Vec<ObjectId>,
    buf: Vec<u8>,
}

/// Enough bytes for any pack entry header (type and size, then a base offset or id).
const ENTRY_HEADER_MAX: usize = 64;

/// Packs with more objects are not primed (the maps cost about 70 bytes per object).
const MAX_PRIMED_PACK_OBJECTS: usize = 4_000_000;

/// Chains longer than this are left to gix (git's default maximum depth is 50).
const MAX_CHAIN: usize = 4096;

impl Primer {
    /// A primer if `tree` is stored as a delta whose base is `parent_tree`; `None` for the
    /// usual layout (newer objects whole, older ones deltas), or when unsure.
    fn detect(
        odb: &Odb,
        hash: gix::hash::Kind,
        tree: ObjectId,
        parent_tree: ObjectId,
    ) -> Option<Primer> {
        let mut buf = Vec::new();
        let loc = PackFind::location_by_oid(&**odb, &tree, &mut buf).ok()??;
        let base = base_offset(odb, hash, loc.pack_id, loc.pack_offset)?;
        let parent = PackFind::location_by_oid(&**odb, &parent_tree, &mut buf).ok()??;
        if parent.pack_id != loc.pack_id || parent.pack_offset != base {
            return None;
        }
        let mut primer = Primer {
            packs: Default::default(),
            locations: Default::default(),
            read: Default::default(),
            chain: Vec::new(),
            buf,
        };
        primer.load(odb, loc.pack_id)?;
        tracing::debug!(
            pack = loc.pack_id,
            "delta chains run from older to newer objects: priming"
        );
        Some(primer)
    }

    fn load(&mut self, odb: &Odb, pack_id: u32) -> Option<()> {
        let mut entries = PackFind::pack_offsets_and_oid(&**odb, pack_id).ok()??;
        if entries.len() > MAX_PRIMED_PACK_OBJECTS {
            return None;
        }
        self.locations.reserve(entries.len());
        for (offset, id) in &entries {
            self.locations.insert(*id, (pack_id, *offset));
        }
        entries.sort_unstable_by_key(|(offset, _)| *offset);
        self.packs.insert(pack_id, entries);
        Some(())
    }

    /// The id of the delta base of the object at `offset` in `pack_id`, if it is a delta.
    fn base_of(
        &self,
        odb: &Odb,
        hash: gix::hash::Kind,
        pack_id: u32,
        offset: u64,
    ) -> Option<ObjectId> {
        let location = gix::odb::pack::data::entry::Location {
            pack_id,
            entry_size: ENTRY_HEADER_MAX,
            pack_offset: offset,
        };
        let entry = PackFind::entry_by_location(&**odb, &location)?;
        let header = gix::odb::pack::data::Entry::from_bytes(&entry.data, offset, hash)
            .ok()?
            .header;
        match header {
            gix::odb::pack::data::entry::Header::OfsDelta { base_distance } => {
                let base = offset.checked_sub(base_distance)?;
                let entries = self.packs.get(&pack_id)?;
                let i = entries.binary_search_by_key(&base, |(o, _)| *o).ok()?;
                Some(entries[i].1)
            }
            gix::odb::pack::data::entry::Header::RefDelta { base_id } => Some(base_id),
            _ => None,
        }
    }

    /// Read the bases of `id` not read yet, oldest first. Best effort: failures only
    /// make the following read slower.
    fn prime(&mut self, odb: &Odb, hash: gix::hash::Kind, id: ObjectId) {
        self.chain.clear();
        let mut cur = id;
        while self.chain.len() < MAX_CHAIN {
            let Some(&(pack_id, offset)) = self.locations.get(&cur) else {
                break;
            };
            let Some(base) = self.base_of(odb, hash, pack_id, offset) else {
                break;
            };
            if self.read.contains(&base) {
                break;
            }
            self.chain.push(base);
            cur = base;
        }
        while let Some(base) = self.chain.pop() {
            let _ = Find::try_find(odb, &base, &mut self.buf);
            self.read.insert(base);
        }
        self.read.insert(id);
    }
}

/// The pack offset of the delta base of the object at `offset`, for an offset delta.
fn base_offset(odb: &Odb, hash: gix::hash::Kind, pack_id: u32, offset: u64) -> Option<u64> {
    let location = gix::odb::pack::data::entry::Location {
        pack_id,
        entry_size: ENTRY_HEADER_MAX,
        pack_offset: offset,
    };
    let entry = PackFind::entry_by_location(&**odb, &location)?;
    match gix::odb::pack::data::Entry::from_bytes(&entry.data, offset, hash)
        .ok()?
        .header
    {
        gix::odb::pack::data::entry::Header::OfsDelta { base_distance } => {
            offset.checked_sub(base_distance)
        }
        _ => None,
    }
}

/// Parse the header of a raw commit: its tree, its parents (appended to `parents`) and its
/// committer timestamp as git's `parse_commit_date` reads it (0 when unreadable).
fn parse_commit(
    data: &[u8],
    hash: gix::hash::Kind,
    parents: &mut Vec<ObjectId>,
) -> Option<(ObjectId, u64)> {
    let hex_len = hash.len_in_hex();
    let mut rest = data;
    let id_line = |rest: &mut &[u8], prefix: &[u8]| -> Option<ObjectId> {
        let line = rest.strip_prefix(prefix)?;
        if line.len() <= hex_len || line[hex_len] != b'\n' {
            return None;
        }
        let id = ObjectId::from_hex(&line[..hex_len]).ok()?;
        *rest = &line[hex_len + 1..];
        Some(id)
    };
    let tree = id_line(&mut rest, b"tree ")?;
    while rest.starts_with(b"parent ") {
        parents.push(id_line(&mut rest, b"parent ")?);
    }
    Some((tree, commit_date(rest)))
}

/// git's `parse_commit_date`: the timestamp after the last `>` of the `committer` line that
/// follows the `author` line.
fn commit_date(buf: &[u8]) -> u64 {
    if !buf.starts_with(b"author") {
        return 0;
    }
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return 0;
    };
    let buf = &buf[nl + 1..];
    if !buf.starts_with(b"committer") {
        return 0;
    }
    let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
        return 0;
    };
    let line = &buf[..eol];
    let Some(gt) = line.iter().rposition(|&b| b == b'>') else {
        return 0;
    };
    let mut date = &line[gt + 1..];
    while let [b' ' | b'\t', tail @ ..] = date {
        date = tail;
    }
    let mut value: u64 = 0;
    for &b in date.iter().take_while(|b| b.is_ascii_digit()) {
        value = value.saturating_mul(10).saturating_add(u64::from(b - b'0'));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commit_headers() {
        let t = "1".repeat(40);
        let p1 = "2".repeat(40);
        let p2 = "3".repeat(40);
        let raw = format!(
            "tree {t}\nparent {p1}\nparent {p2}\nauthor A <a@x> 5 +0000\ncommitter C <c@x>  1700000000 +0200\n\nmsg\n"
        );
        let mut parents = Vec::new();
        let (tree, time) =
            parse_commit(raw.as_bytes(), gix::hash::Kind::Sha1, &mut parents).unwrap();
        assert_eq!(tree.to_string(), t);
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[1].to_string(), p2);
        assert_eq!(time, 1_700_000_000);
        assert_eq!(commit_date(b"author x\ncommitter y <z> nope\n"), 0);
        assert!(parse_commit(b"tree 12\n", gix::hash::Kind::Sha1, &mut parents).is_none());
    }

    #[test]
    fn queue_is_newest_then_first_queued() {
        let id = ObjectId::null(gix::hash::Kind::Sha1);
        let mut q = BinaryHeap::new();
        for (time, seq) in [(5, 1), (7, 2), (5, 3), (7, 4)] {
            q.push(Queued { time, seq, id });
        }
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|e| e.seq)).collect();
        assert_eq!(order, [2, 4, 1, 3]);
    }
}
