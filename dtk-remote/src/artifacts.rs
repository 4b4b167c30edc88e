//! The artifact store: trees (a directory, or one file) as tar archives in an object
//! store, content-addressed by the version they hold, each checked against its BLAKE3 on
//! arrival.
//!
//! An archive is written under its key first and its description (`KEY.json`: digest,
//! size, single-file name) last, so a reader that finds the description finds a complete
//! archive; writes to a local directory are a rename, to S3 a multipart upload that exists
//! only once completed. Transfers stream through a temporary file (never the whole archive
//! in memory) and report progress. An archive whose digest does not match is refused and
//! deleted (with its description), so the next run ships it again.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dtk_core::remote::Shipped;
use dtk_core::{Context, Error, IoResultExt, Progress, Result};
use futures::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

/// Parts of multipart uploads (S3 needs at least 5 MiB but the last).
const CHUNK: usize = 8 << 20;

/// An artifact store (see the [module docs](self)).
#[derive(Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    progress: Arc<dyn Progress>,
    tmp: PathBuf,
    corrupt: Arc<std::sync::Mutex<Vec<String>>>,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ArtifactStore {
    /// Open the store at `url`: `file:///DIR` (created if missing) or, with the `s3`
    /// feature, `s3://BUCKET[/PREFIX]` (configured and authenticated from `ctx` as the
    /// `s3` kind is). Temporary files go to `ctx.tmp_dir`. No network.
    ///
    /// # Errors
    /// [`Error::Invalid`] quoting `url` when it is neither.
    pub fn open(url: &str, ctx: &Context) -> Result<ArtifactStore> {
        let (store, prefix): (Arc<dyn ObjectStore>, String) =
            if let Some(dir) = url.strip_prefix("file://") {
                if !dir.starts_with('/') {
                    return Err(Error::invalid(
                        "artifact store",
                        url,
                        "a local store is file:///ABSOLUTE/DIR",
                    ));
                }
                std::fs::create_dir_all(dir).at(dir)?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| Error::invalid("artifact store", url, e.to_string()))?;
                (Arc::new(fs), String::new())
            } else if url.starts_with("s3://") {
                s3(ctx, url)?
            } else {
                return Err(Error::invalid(
                    "artifact store",
                    url,
                    "expected file:///DIR or s3://BUCKET[/PREFIX]",
                ));
            };
        std::fs::create_dir_all(&ctx.tmp_dir).at(&ctx.tmp_dir)?;
        Ok(ArtifactStore {
            store,
            prefix,
            url: url.to_owned(),
            progress: ctx.progress.clone(),
            tmp: ctx.tmp_dir.clone(),
            corrupt: Arc::default(),
        })
    }

    /// The store's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, key: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(key)
        } else {
            Key::from(format!("{}/{key}", self.prefix))
        }
    }

    fn error(&self, message: impl Into<String>, e: object_store::Error) -> Error {
        Error::Service {
            service: format!("artifact store {}", self.url),
            message: message.into(),
            source: Some(Box::new(e)),
        }
    }

    /// The tree stored under `key`, if its description is there.
    pub async fn shipped(&self, key: &str) -> Result<Option<Shipped>> {
        let meta = self.key(&format!("{key}.json"));
        match self.store.get(&meta).await {
            Ok(got) => {
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|e| self.error(format!("cannot read {key}.json"), e))?;
                let shipped: Shipped = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::service(
                        format!("artifact store {}", self.url),
                        format!("{key}.json is corrupt: {e}"),
                    )
                })?;
                if shipped.key != key {
                    return Err(Error::service(
                        format!("artifact store {}", self.url),
                        format!("{key}.json describes another archive ({:?})", shipped.key),
                    ));
                }
                Ok(Some(shipped))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(format!("cannot read {key}.json"), e)),
        }
    }

    /// Archive the tree at `root` (a directory, or a file) and store it under `key`.
    pub async fn ship(&self, key: &str, root: &Path) -> Result<Shipped> {
        let root = root.to_owned();
        let tmp = self.tmp.clone();
        let (file, blake3, size, single) = tokio::task::spawn_blocking(move || pack(&root, &tmp))
            .await
            .map_err(|e| Error::corrupt(format!("archiving task failed: {e}")))??;
        let upload = self
            .store
            .put_multipart(&self.key(key))
            .await
            .map_err(|e| self.error(format!("cannot store {key}"), e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let mut progress = self.progress.start(&format!("upload {key}"), Some(size));
        let mut reader = std::fs::File::open(file.path()).at(file.path())?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).at(file.path())?;
            if n == 0 {
                break;
            }
            writer
                .wait_for_capacity(4)
                .await
                .map_err(|e| self.error(format!("cannot store {key}"), e))?;
            writer.write(&buf[..n]);
            progress.advance(n as u64);
        }
        writer
            .finish()
            .await
            .map_err(|e| self.error(format!("cannot store {key}"), e))?;
        let shipped = Shipped {
            key: key.to_owned(),
            blake3,
            size,
            file: single,
        };
        let description = serde_json::to_vec(&shipped)
            .map_err(|e| Error::service(format!("artifact store {}", self.url), e.to_string()))?;
        self.store
            .put(&self.key(&format!("{key}.json")), description.into())
            .await
            .map_err(|e| self.error(format!("cannot store {key}.json"), e))?;
        Ok(shipped)
    }

    /// Extract `tree` into the directory `into` (created if missing), after checking the
    /// archive's BLAKE3. A mismatch is an [`Error::Service`] naming the key and both
    /// digests; the corrupt archive is deleted.
    pub async fn fetch(&self, tree: &Shipped, into: &Path) -> Result<()> {
        let got = self
            .store
            .get(&self.key(&tree.key))
            .await
            .map_err(|e| self.error(format!("cannot read {}", tree.key), e))?;
        let mut file = tempfile::NamedTempFile::new_in(&self.tmp).at(&self.tmp)?;
        let mut hasher = blake3::Hasher::new();
        let mut progress = self
            .progress
            .start(&format!("download {}", tree.key), Some(tree.size));
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.error(format!("cannot read {}", tree.key), e))?;
            hasher.update(&chunk);
            file.write_all(&chunk).at(file.path())?;
            progress.advance(chunk.len() as u64);
        }
        drop(progress);
        let digest = format!("blake3:{}", hasher.finalize().to_hex());
        if digest != tree.blake3 {
            if let Ok(mut c) = self.corrupt.lock() {
                c.push(tree.key.clone());
            }
            // Gone, so that it is shipped again rather than refused forever.
            let _ = self
                .store
                .delete(&self.key(&format!("{}.json", tree.key)))
                .await;
            let _ = self.store.delete(&self.key(&tree.key)).await;
            return Err(Error::service(
                format!("artifact store {}", self.url),
                format!(
                    "artifact {} is corrupt: its digest is {digest}, the run expected {}; it was refused (and is shipped again by the next run)",
                    tree.key, tree.blake3
                ),
            ));
        }
        let into = into.to_owned();
        let path = file.path().to_owned();
        tokio::task::spawn_blocking(move || unpack(&path, &into))
            .await
            .map_err(|e| Error::corrupt(format!("extracting task failed: {e}")))??;
        drop(file);
        Ok(())
    }

    /// The keys of the archives [`fetch`](Self::fetch) refused so far.
    pub fn corrupt(&self) -> Vec<String> {
        self.corrupt.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Delete the tree under `key` (and its description).
    pub async fn delete(&self, key: &str) -> Result<()> {
        for k in [format!("{key}.json"), key.to_owned()] {
            match self.store.delete(&self.key(&k)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(format!("cannot delete {k}"), e)),
            }
        }
        Ok(())
    }
}

#[cfg(feature = "s3")]
fn s3(ctx: &Context, url: &str) -> Result<(Arc<dyn ObjectStore>, String)> {
    dtk_sources::s3::object_store_for(ctx, url)
}

#[cfg(not(feature = "s3"))]
fn s3(_ctx: &Context, url: &str) -> Result<(Arc<dyn ObjectStore>, String)> {
    Err(Error::invalid(
        "artifact store",
        url,
        "this build has no S3 support (the `s3` feature of dtk-remote)",
    ))
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Archive `root` into a temporary file in `tmp`: (file, `blake3:HEX`, size, the file's
/// name when `root` is a file).
fn pack(root: &Path, tmp: &Path) -> Result<(tempfile::NamedTempFile, String, u64, Option<String>)> {
    let file = tempfile::NamedTempFile::new_in(tmp).at(tmp)?;
    let out = Hashing {
        inner: std::io::BufWriter::new(file.reopen().at(file.path())?),
        hasher: blake3::Hasher::new(),
        size: 0,
    };
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    let md = std::fs::symlink_metadata(root).at(root)?;
    let single = if md.is_dir() {
        builder.append_dir_all(".", root).at(root)?;
        None
    } else {
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                Error::invalid("artifact", root.display().to_string(), "no file name")
            })?;
        builder.append_path_with_name(root, &name).at(root)?;
        Some(name)
    };
    let mut out = builder.into_inner().at(file.path())?;
    out.flush().at(file.path())?;
    let digest = format!("blake3:{}", out.hasher.finalize().to_hex());
    let size = out.size;
    Ok((file, digest, size, single))
}

/// Extract the archive at `archive` into `into`; entries that would land outside it
/// (absolute paths, `..`, through links) are refused by the archive reader.
fn unpack(archive: &Path, into: &Path) -> Result<()> {
    std::fs::create_dir_all(into).at(into)?;
    let f = std::fs::File::open(archive).at(archive)?;
    let mut a = tar::Archive::new(std::io::BufReader::new(f));
    a.set_preserve_permissions(true);
    a.set_overwrite(true);
    a.unpack(into).at(into)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(dir: &Path) -> Context {
        Context::new(dir, dtk_core::Secrets::default())
    }

    #[tokio::test]
    async fn a_tree_travels_intact_and_a_corrupt_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("store");
        let url = format!("file://{}", store_dir.display());
        let store = ArtifactStore::open(&url, &ctx(&dir.path().join("dkt"))).unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("a.txt"), "alpha").unwrap();
        std::fs::write(tree.join("sub/b.txt"), "beta").unwrap();
        std::os::unix::fs::symlink("a.txt", tree.join("link")).unwrap();
        assert!(store.shipped("versions/t.tar").await.unwrap().is_none());
        let shipped = store.ship("versions/t.tar", &tree).await.unwrap();
        assert_eq!(
            store.shipped("versions/t.tar").await.unwrap(),
            Some(shipped.clone())
        );
        let back = dir.path().join("back");
        store.fetch(&shipped, &back).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(back.join("sub/b.txt")).unwrap(),
            "beta"
        );
        assert_eq!(
            std::fs::read_link(back.join("link")).unwrap(),
            PathBuf::from("a.txt")
        );
        // One byte changed in the store: refused, named, and gone.
        let stored = store_dir.join("versions/t.tar");
        let mut bytes = std::fs::read(&stored).unwrap();
        let at = bytes.windows(5).position(|w| w == b"alpha").unwrap();
        bytes[at] = b'A';
        std::fs::write(&stored, bytes).unwrap();
        let err = store
            .fetch(&shipped, &dir.path().join("again"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("versions/t.tar is corrupt"), "{err}");
        assert!(err.contains(&shipped.blake3), "{err}");
        assert!(store.shipped("versions/t.tar").await.unwrap().is_none());
        // A single file travels as itself.
        let one = store
            .ship("versions/f.tar", &tree.join("a.txt"))
            .await
            .unwrap();
        assert_eq!(one.file.as_deref(), Some("a.txt"));
        let into = dir.path().join("one");
        store.fetch(&one, &into).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(into.join("a.txt")).unwrap(),
            "alpha"
        );
    }
}
