//! Downloads (materialize, verify) and uploads (publish), streamed in constant memory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use dtk_api::{Error, IoResultExt, Result, Version};
use futures::{StreamExt, TryStreamExt};
use md5::{Digest as _, Md5};
use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutMultipartOptions,
    PutOptions, PutPayload, WriteMultipart,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::listing::{Entry, Listing};
use super::{S3Source, CONTENT_DIR, KIND};

/// Objects downloaded at once.
const DOWNLOADS: usize = 4;
/// Files at most this large are uploaded in one request; larger ones in parts of at least
/// this size (S3's minimum part size).
const PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's maximum number of parts of one upload (with some margin).
const MAX_PARTS: u64 = 9_000;
/// Parts uploaded at once for one file.
const PARTS_IN_FLIGHT: usize = 2;
/// Read buffer for uploads.
const CHUNK: usize = 1024 * 1024;

fn key(src: &S3Source, e: &str) -> Result<Key> {
    Key::parse(e).map_err(|err| {
        Error::invalid(
            "S3 key",
            e,
            format!("is not a valid key for {}: {err}", src.url()),
        )
    })
}

/// Download `listing` into `scratch/content`, which appears only once complete.
pub(super) async fn materialize(
    src: &S3Source,
    listing: &Listing,
    scratch: &Path,
) -> Result<PathBuf> {
    let plan = listing.plan()?;
    let staging = tempfile::Builder::new()
        .prefix(".dkt-s3-")
        .tempdir_in(scratch)
        .at(scratch)?;
    for d in &plan.dirs {
        let p = staging.path().join(d);
        tokio::fs::create_dir_all(&p).await.at(&p)?;
    }
    let check_md5 = src.conn.settings.check_md5;
    let mut jobs = Vec::with_capacity(plan.files.len());
    for (entry, rel) in &plan.files {
        jobs.push(download(src, entry, staging.path().join(rel), check_md5));
    }
    futures::stream::iter(jobs)
        .buffer_unordered(DOWNLOADS)
        .try_collect::<Vec<()>>()
        .await?;
    let root = scratch.join(CONTENT_DIR);
    let staged = staging.keep();
    if let Err(e) = fs::rename(&staged, &root) {
        let _ = fs::remove_dir_all(&staged);
        return Err(Error::io(&root, e));
    }
    Ok(root)
}

/// Stream one object to a temporary file next to `dest`, check it, rename it into place.
async fn download(src: &S3Source, entry: &Entry, dest: PathBuf, check_md5: bool) -> Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(parent).await.at(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".dkt-part-")
        .tempfile_in(parent)
        .at(parent)?;
    if entry.size == 0 {
        // Nothing to fetch (and folder markers `dir/` cannot be fetched by their name).
        return tmp
            .persist(&dest)
            .map(drop)
            .map_err(|e| Error::io(&dest, e.error));
    }
    let (file, tmp_path) = tmp.into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let what = format!("downloading s3://{}/{}", src.location.bucket, entry.key);
    let (written, md5) = fetch(src, entry, &what, Some((&mut file, &tmp_path))).await?;
    file.flush().await.at(&*tmp_path)?;
    drop(file);
    check(src, entry, &what, written, &md5, check_md5)?;
    tmp_path
        .persist(&dest)
        .map_err(|e| Error::io(&dest, e.error))?;
    Ok(())
}

/// GET `entry` (only if its ETag still matches the listing), writing each chunk to `sink`
/// (a file and its path) if any; returns the byte count and md5 (hex) of what was received.
async fn fetch(
    src: &S3Source,
    entry: &Entry,
    what: &str,
    mut sink: Option<(&mut tokio::fs::File, &Path)>,
) -> Result<(u64, String)> {
    let location = key(src, &entry.key)?;
    let options = GetOptions {
        if_match: entry.raw_etag.clone(),
        ..Default::default()
    };
    let got = src
        .conn
        .transfer
        .get_opts(&location, options)
        .await
        .map_err(|e| src.error(what, &e))?;
    let mut stream = got.into_stream();
    let mut transfer = src.progress.start(
        &format!("s3://{}/{}", src.location.bucket, entry.key),
        Some(entry.size),
    );
    let mut hash = Md5::new();
    let mut written = 0u64;
    let mut speed = crate::speed::LowSpeed::new(src.conn.network_timeout);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| src.error(what, &e))?;
        speed
            .advance(chunk.len())
            .map_err(|m| Error::backend(KIND, src.name(), format!("{what}: {m}")))?;
        hash.update(&chunk[..]);
        written += chunk.len() as u64;
        if written > entry.size {
            break;
        }
        transfer.advance(chunk.len() as u64);
        if let Some((file, path)) = sink.as_mut() {
            file.write_all(&chunk[..]).await.at(*path)?;
        }
    }
    Ok((written, dtk_api::id::hex(&hash.finalize())))
}

/// The received bytes must match the listing: same size, and the md5 when the ETag is one.
fn check(
    src: &S3Source,
    entry: &Entry,
    what: &str,
    written: u64,
    md5: &str,
    check_md5: bool,
) -> Result<()> {
    if written != entry.size {
        return Err(Error::backend(
            KIND,
            src.name(),
            format!(
                "{what}: received {} bytes but the listing says {} (truncated or garbled response)",
                if written > entry.size {
                    format!("more than {}", entry.size)
                } else {
                    written.to_string()
                },
                entry.size
            ),
        ));
    }
    if check_md5 {
        if let Some(expected) = entry.md5() {
            if expected != md5 {
                return Err(Error::backend(
                    KIND,
                    src.name(),
                    format!("{what}: the content's md5 is {md5} but its ETag says {expected} (corrupt download; if the bucket uses KMS or customer-key encryption, set check_md5 = \"false\" in [kind.s3])"),
                ));
            }
        }
    }
    Ok(())
}

/// Download every object whose ETag is a plain md5 and hash it; `Some(version)` (the
/// listing's digest with the md5s found in place of the ETags) when any differs.
pub(super) async fn check_contents(src: &S3Source, listing: &Listing) -> Result<Option<Version>> {
    let mut found = listing.clone();
    let mut differs = false;
    for entry in found.entries.iter_mut() {
        let Some(expected) = entry.md5() else {
            continue;
        };
        let what = format!("verifying s3://{}/{}", src.location.bucket, entry.key);
        let (written, md5) = fetch(src, entry, &what, None).await?;
        if written != entry.size || md5 != expected {
            differs = true;
            entry.raw_etag = Some(format!("\"{md5}\""));
            entry.size = written;
        }
    }
    Ok(differs.then(|| found.version()))
}

/// A file of the directory being published.
#[derive(Debug)]
struct LocalFile {
    rel: String,
    path: PathBuf,
    size: u64,
}

/// Every regular file below `dir`, by relative `/`-separated name. Links, special files,
/// and names that cannot be keys are refused before anything is uploaded.
fn scan(dir: &Path) -> Result<Vec<LocalFile>> {
    let bad = |p: &Path, why: &str| {
        Error::invalid("publish directory", p.display().to_string(), why.to_owned())
    };
    let md = fs::metadata(dir).at(dir)?;
    if !md.is_dir() {
        return Err(bad(dir, "an s3 source publishes a directory"));
    }
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_owned(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        for de in fs::read_dir(&d).at(&d)? {
            let de = de.at(&d)?;
            let p = de.path();
            let name = de.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| bad(&p, "has a name that is not UTF-8: it cannot be an S3 key"))?;
            if name.chars().any(char::is_control) {
                return Err(bad(
                    &p,
                    "has a control character in its name: it cannot be an S3 key",
                ));
            }
            let r = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            let ft = de.file_type().at(&p)?;
            if ft.is_symlink() {
                return Err(bad(
                    &p,
                    "is a symbolic link: S3 has no links; publish the file itself",
                ));
            } else if ft.is_dir() {
                stack.push((p, r));
            } else if ft.is_file() {
                let size = de.metadata().at(&p)?.len();
                out.push(LocalFile {
                    rel: r,
                    path: p,
                    size,
                });
            } else {
                return Err(bad(
                    &p,
                    "is a special file (fifo, socket or device): it cannot be uploaded",
                ));
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// md5 (hex) of a file, off the async threads.
async fn file_md5(src: &S3Source, path: &Path) -> Result<String> {
    let p = path.to_owned();
    tokio::task::spawn_blocking(move || -> Result<String> {
        let mut f = fs::File::open(&p).at(&p)?;
        let mut h = Md5::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = f.read(&mut buf).at(&p)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(dtk_api::id::hex(&h.finalize()))
    })
    .await
    .map_err(|e| Error::Backend {
        kind: KIND.to_owned(),
        source_name: src.name().to_owned(),
        message: "the hashing task failed".to_owned(),
        source: Some(Box::new(e)),
    })?
}

/// What a publish did so far, for its error message.
#[derive(Debug, Default)]
struct Done {
    uploaded: Vec<String>,
    deleted: Vec<String>,
}

/// The user-defined metadata (`x-amz-meta-NAME`) each object a run uploads carries:
/// `dkt-run`, `dkt-node`, `dkt-manifest`, from `options`.
pub(super) fn provenance_attributes(options: &dtk_api::PublishOptions) -> Attributes {
    let mut a = Attributes::new();
    for (k, v) in [
        ("dkt-run", &options.run),
        ("dkt-node", &options.node),
        ("dkt-manifest", &options.manifest),
    ] {
        if let Some(v) = v {
            a.insert(Attribute::Metadata(k.into()), v.clone().into());
        }
    }
    a
}

/// Write `body` at `key` (outside the prefix), with `attributes`.
pub(super) async fn put_object(
    src: &S3Source,
    k: &str,
    body: Vec<u8>,
    attributes: Attributes,
) -> Result<()> {
    let what = format!("writing s3://{}/{k}", src.location.bucket);
    src.conn
        .transfer
        .put_opts(
            &key(src, k)?,
            PutPayload::from(body),
            PutOptions::from(attributes),
        )
        .await
        .map_err(|e| src.error(&what, &e))?;
    Ok(())
}

/// Upload `dir` to the prefix, then delete the keys below it that `dir` does not hold.
/// Uploaded objects carry `attributes` (unchanged objects, not uploaded again, keep theirs).
pub(super) async fn publish(src: &S3Source, dir: &Path, attributes: &Attributes) -> Result<()> {
    let files = {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || scan(&dir))
            .await
            .map_err(|e| {
                Error::backend(
                    KIND,
                    src.name(),
                    format!("the file system task failed: {e}"),
                )
            })??
    };
    for f in &files {
        key(src, &full_key(src, &f.rel))?;
    }
    let before = src.listing().await?;
    let remote: BTreeMap<&str, &Entry> =
        before.entries.iter().map(|e| (e.rel.as_str(), e)).collect();
    let mut done = Done::default();
    let to_delete: Vec<&Entry> = {
        let local: BTreeSet<&str> = files.iter().map(|f| f.rel.as_str()).collect();
        before
            .entries
            .iter()
            .filter(|e| !local.contains(e.rel.as_str()))
            .collect()
    };
    let result = async {
        for f in &files {
            if let Some(r) = remote.get(f.rel.as_str()) {
                if r.size == f.size {
                    if let Some(m) = r.md5() {
                        if file_md5(src, &f.path).await? == m {
                            continue;
                        }
                    }
                }
            }
            let k = full_key(src, &f.rel);
            upload(src, f, &k, attributes).await?;
            done.uploaded.push(k);
        }
        for e in &to_delete {
            let what = format!("deleting s3://{}/{}", src.location.bucket, e.key);
            src.conn
                .meta
                .delete(&key(src, &e.key)?)
                .await
                .map_err(|err| src.error(&what, &err))?;
            done.deleted.push(e.key.clone());
        }
        Ok::<(), Error>(())
    }
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(e) if done.uploaded.is_empty() && done.deleted.is_empty() => Err(e),
        Err(e) => Err(Error::backend(
            KIND,
            src.name(),
            format!(
                "publishing to {} failed after uploading {} of {} file(s){} and deleting {} of {} key(s){}: {e}; S3 has no multi-object transactions, so the prefix now holds a mix of old and new content: publish again",
                src.url(),
                done.uploaded.len(),
                files.len(),
                some_keys(&done.uploaded),
                done.deleted.len(),
                to_delete.len(),
                some_keys(&done.deleted),
            ),
        )),
    }
}

fn full_key(src: &S3Source, rel: &str) -> String {
    if src.location.prefix.is_empty() {
        rel.to_owned()
    } else {
        format!("{}/{rel}", src.location.prefix)
    }
}

/// ` (a, b, c and N more)`, or nothing.
fn some_keys(keys: &[String]) -> String {
    const SHOWN: usize = 5;
    if keys.is_empty() {
        return String::new();
    }
    let mut s = keys
        .iter()
        .take(SHOWN)
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        s.push_str(&format!(" and {} more", keys.len() - SHOWN));
    }
    format!(" ({s})")
}

/// Upload one file: one request up to [`PART_SIZE`], else a multipart upload with at most
/// [`PARTS_IN_FLIGHT`] parts in memory.
async fn upload(src: &S3Source, f: &LocalFile, k: &str, attributes: &Attributes) -> Result<()> {
    let what = format!(
        "uploading {} to s3://{}/{k}",
        f.path.display(),
        src.location.bucket
    );
    let location = key(src, k)?;
    let mut transfer = src
        .progress
        .start(&format!("s3://{}/{k}", src.location.bucket), Some(f.size));
    let store = &src.conn.transfer;
    if f.size <= PART_SIZE {
        let data = tokio::fs::read(&f.path).await.at(&f.path)?;
        let n = data.len() as u64;
        store
            .put_opts(
                &location,
                PutPayload::from(data),
                PutOptions::from(attributes.clone()),
            )
            .await
            .map_err(|e| src.error(&what, &e))?;
        transfer.advance(n);
        return Ok(());
    }
    let part = PART_SIZE.max(f.size.div_ceil(MAX_PARTS));
    let upload = store
        .put_multipart_opts(
            &location,
            PutMultipartOptions {
                attributes: attributes.clone(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| src.error(&what, &e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part as usize);
    let streamed = async {
        let mut file = tokio::fs::File::open(&f.path).await.at(&f.path)?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).await.at(&f.path)?;
            if n == 0 {
                break;
            }
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|e| src.error(&what, &e))?;
            writer.write(&buf[..n]);
            transfer.advance(n as u64);
        }
        Ok::<(), Error>(())
    }
    .await;
    match streamed {
        Ok(()) => {
            writer.finish().await.map_err(|e| src.error(&what, &e))?;
            Ok(())
        }
        Err(e) => {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(key = k, error = %abort, "cannot abort a multipart upload");
            }
            Err(e)
        }
    }
}
