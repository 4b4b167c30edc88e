//! `git log` order, done by hand over raw commit objects.
//!
//! git's default walk (`git log` without ordering options, as of git 2.47) is a priority
//! queue on the committer timestamp: the newest queued commit is shown next, and among
//! commits with the same timestamp the one queued first wins (git's
//! `commit_list_insert_by_date` inserts after every entry with the same date, and its newer
//! `prio_queue` breaks ties by insertion order). A commit's parents are queued in their
//! order (first parent first) when it is shown, unless already queued. gix's own
//! `ByCommitTime` sorting breaks ties differently, hence this walk.
//!
//! With a path, this follows git's default history simplification (`git log -- PATH`,
//! without `--full-history`): a commit whose entry at PATH (mode and object id, or absence)
//! equals that of one of its parents is TREESAME to it; the first such parent becomes the
//! commit's only parent (the walk does not go down the other parents of a merge) and the
//! commit is not shown. A commit with no TREESAME parent is shown; a root commit is shown
//! when PATH exists in it. This matches git for a literal path (no glob magic) as long as
//! no `--remove-empty`, `--full-history`, `--simplify-merges` or `--first-parent` is given.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Range;

use gix::objs::Find;
use gix::ObjectId;

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
        odb: &impl Find,
        hash: gix::hash::Kind,
        buf: &mut Vec<u8>,
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
            let data = odb
                .try_find(&cur, buf)
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
pub(crate) struct LogWalk<'a, F: Find> {
    odb: &'a F,
    hash: gix::hash::Kind,
    buf: Vec<u8>,
    queue: BinaryHeap<Queued>,
    seq: u64,
    commits: gix::hashtable::HashMap<ObjectId, CommitInfo>,
    parents: Vec<ObjectId>,
    path: Option<PathFilter>,
}

impl<'a, F: Find> LogWalk<'a, F> {
    /// A walk from `tip` over `odb`, limited to commits that changed `path` if given.
    pub(crate) fn new(
        odb: &'a F,
        hash: gix::hash::Kind,
        tip: ObjectId,
        path: Option<&str>,
    ) -> WalkResult<Self> {
        let mut walk = LogWalk {
            odb,
            hash,
            buf: Vec::with_capacity(4096),
            queue: BinaryHeap::new(),
            seq: 0,
            commits: Default::default(),
            parents: Vec::new(),
            path: path.map(PathFilter::new),
        };
        walk.enqueue(tip)?;
        Ok(walk)
    }

    /// Parse `id` unless already parsed.
    fn parse(&mut self, id: ObjectId) -> WalkResult<()> {
        if self.commits.contains_key(&id) {
            return Ok(());
        }
        let data = self
            .odb
            .try_find(&id, &mut self.buf)
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
    fn simplify(&mut self, tree: ObjectId, parents: Range<usize>) -> WalkResult<(bool, Range<usize>)> {
        let Some(mut filter) = self.path.take() else {
            return Ok((true, parents));
        };
        let result = (|| {
            let mine = filter.entry(self.odb, self.hash, &mut self.buf, tree)?;
            if parents.is_empty() {
                return Ok((mine.is_some(), parents));
            }
            for i in parents.clone() {
                let p = self.parents[i];
                self.parse(p)?;
                let ptree = self.info(&p)?.tree;
                if filter.entry(self.odb, self.hash, &mut self.buf, ptree)? == mine {
                    return Ok((false, i..i + 1));
                }
            }
            Ok((true, parents))
        })();
        self.path = Some(filter);
        result
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
        let (tree, time) = parse_commit(raw.as_bytes(), gix::hash::Kind::Sha1, &mut parents).unwrap();
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
