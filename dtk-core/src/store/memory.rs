//! A [`MetadataStore`] kept in memory: the second implementation of the trait, which the
//! store tests run side by side with the git one. It writes the same objects git would
//! (encoded and hashed as git does), so the same records get the same IDs in both.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use gix::objs::{Kind, WriteTo};

use super::{Commit, DirEntry, MetadataStore, Objects, Oid, BRANCH};
use crate::signing::SigningKey;
use crate::{Error, Result};

type Table = HashMap<Oid, (Kind, Arc<[u8]>)>;

/// Objects and refs in memory; clones share them.
#[derive(Debug, Default)]
pub(crate) struct MemoryStore {
    objects: Arc<Mutex<Table>>,
    refs: Mutex<BTreeMap<String, Oid>>,
    signer: RwLock<Option<Arc<SigningKey>>>,
}

impl MemoryStore {
    /// How many objects it holds.
    pub(crate) fn len(&self) -> usize {
        self.objects.lock().unwrap().len()
    }
}

impl MetadataStore for MemoryStore {
    fn location(&self) -> &Path {
        Path::new("(memory)")
    }

    fn tip(&self) -> Result<Option<Oid>> {
        self.reference(BRANCH)
    }

    fn reference(&self, name: &str) -> Result<Option<Oid>> {
        Ok(self.refs.lock().unwrap().get(name).copied())
    }

    fn objects(&self, _write: bool) -> Result<Box<dyn Objects>> {
        Ok(Box::new(MemoryObjects {
            stored: self.objects.clone(),
            pending: Mutex::default(),
            signer: self.signer(),
        }))
    }

    fn move_branch(&self, from: Option<Oid>, to: Oid) -> Result<()> {
        let mut refs = self.refs.lock().unwrap();
        if refs.get(BRANCH).copied() != from {
            return Err(Error::corrupt(format!("{BRANCH} moved")));
        }
        if !self.objects.lock().unwrap().contains_key(&to) {
            return Err(Error::corrupt(format!("commit {to} was never persisted")));
        }
        refs.insert(BRANCH.to_owned(), to);
        Ok(())
    }

    fn contended(&self, base: Oid) -> Result<bool> {
        Ok(self.tip()? != Some(base))
    }

    fn set_signer(&self, key: Option<Arc<SigningKey>>) {
        *self.signer.write().unwrap() = key;
    }

    fn signer(&self) -> Option<Arc<SigningKey>> {
        self.signer.read().unwrap().clone()
    }

    fn pack(&self) -> Result<()> {
        Ok(())
    }
}

/// A handle: reads see what it wrote; [`Objects::persist`] hands that to the store.
struct MemoryObjects {
    stored: Arc<Mutex<Table>>,
    pending: Mutex<Table>,
    signer: Option<Arc<SigningKey>>,
}

impl MemoryObjects {
    fn get(&self, id: Oid, kind: Kind) -> Result<Arc<[u8]>> {
        let found = self
            .pending
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .or_else(|| self.stored.lock().unwrap().get(&id).cloned());
        match found {
            Some((k, data)) if k == kind => Ok(data),
            _ => Err(Error::corrupt(format!("no {kind} {id}"))),
        }
    }

    fn put(&self, kind: Kind, data: Vec<u8>) -> Result<Oid> {
        let id = gix::objs::compute_hash(gix::hash::Kind::Sha1, kind, &data)
            .map_err(|e| Error::store("cannot hash an object", e))?;
        let id = Oid(id);
        self.pending.lock().unwrap().insert(id, (kind, data.into()));
        Ok(id)
    }

    fn put_object(&self, object: &impl WriteTo) -> Result<Oid> {
        let mut data = Vec::new();
        object
            .write_to(&mut data)
            .map_err(|e| Error::store("cannot encode an object", e))?;
        self.put(object.kind(), data)
    }
}

impl Objects for MemoryObjects {
    fn commit(&self, id: Oid) -> Result<Commit> {
        let raw = self.get(id, Kind::Commit)?;
        let c = gix::objs::CommitRef::from_bytes(&raw, gix::hash::Kind::Sha1)
            .map_err(|e| Error::store(format!("cannot decode commit {id}"), e))?;
        Ok(Commit {
            tree: Oid(c.tree()),
            parents: c.parents().map(Oid).collect(),
            message: c.message.to_string().trim_end().to_owned(),
            raw: raw.to_vec(),
        })
    }

    fn tree(&self, id: Oid) -> Result<Vec<DirEntry>> {
        let raw = self.get(id, Kind::Tree)?;
        let t = gix::objs::TreeRef::from_bytes(&raw, gix::hash::Kind::Sha1)
            .map_err(|e| Error::store(format!("cannot decode tree {id}"), e))?;
        Ok(t.entries
            .iter()
            .map(|e| DirEntry {
                name: e.filename.to_string(),
                id: Oid(e.oid.to_owned()),
                is_dir: e.mode.is_tree(),
            })
            .collect())
    }

    fn blob(&self, id: Oid) -> Result<Arc<[u8]>> {
        self.get(id, Kind::Blob)
    }

    fn empty_tree(&self) -> Oid {
        Oid(gix::ObjectId::empty_tree(gix::hash::Kind::Sha1))
    }

    fn write_blob(&self, bytes: &[u8]) -> Result<Oid> {
        self.put(Kind::Blob, bytes.to_vec())
    }

    fn write_dir(&self, entries: &[DirEntry]) -> Result<Oid> {
        self.put_object(&super::git::tree_object(entries))
    }

    fn write_commit(&self, tree: Oid, parents: &[Oid], message: &str) -> Result<Oid> {
        let commit = super::git::commit_object(tree, parents, message, self.signer.as_deref())?;
        self.put_object(&commit)
    }

    fn persist(&self) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap());
        self.stored.lock().unwrap().extend(pending);
        Ok(())
    }
}
