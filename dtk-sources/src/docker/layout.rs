//! Manifests, descriptors and the OCI image layout on disk (`oci-layout`, `index.json`,
//! `blobs/sha256/...`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use dtk_api::{Error, IoResultExt, Result};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// OCI image index.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list (schema 2).
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest (schema 2).
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Every manifest type the kind reads and writes, for `Accept`.
pub(crate) const MANIFEST_TYPES: [&str; 4] =
    [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];
/// The largest manifest read into memory (the limit of the CNCF distribution registry).
pub(crate) const MAX_MANIFEST: u64 = 4 << 20;
/// The annotation naming a manifest of a layout's `index.json`.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// True for the media types of indexes (manifest lists).
pub(crate) fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// True for the four manifest media types.
pub(crate) fn is_manifest(media_type: &str) -> bool {
    MANIFEST_TYPES.contains(&media_type)
}

/// A content descriptor (what an index or a manifest says about a blob).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    /// The blob's media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) media_type: Option<String>,
    /// `sha256:HEX`.
    pub(crate) digest: String,
    /// Size in bytes.
    pub(crate) size: u64,
    /// Annotations (`index.json` names manifests with [`REF_NAME`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) annotations: Option<BTreeMap<String, String>>,
    /// The platform of a manifest in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) platform: Option<serde_json::Value>,
    /// The type of the artifact a manifest is (a referrer's `artifactType`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) artifact_type: Option<String>,
}

impl Descriptor {
    /// The hex of the descriptor's digest, checked (it becomes a file name).
    pub(crate) fn hex(&self) -> std::result::Result<&str, String> {
        digest_hex(&self.digest)
    }
}

/// The hex part of a `sha256:HEX` digest, which must be 64 lower-case hex digits.
pub(crate) fn digest_hex(digest: &str) -> std::result::Result<&str, String> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(h)
        }
        _ => Err(format!(
            "{digest:?} is not a sha256 digest (only sha256:<64 hex digits> is supported)"
        )),
    }
}

/// `sha256:HEX` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::net::hex(&sha2::Sha256::digest(bytes)))
}

/// What a manifest points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Children {
    /// An index: its manifests (and possibly other artifacts).
    Index(Vec<Descriptor>),
    /// An image: its config and layers, config first.
    Image(Vec<Descriptor>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyManifest {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
}

/// The media type of manifest `bytes`: `declared` (a `Content-Type` or a descriptor's)
/// when it is a manifest type, else the manifest's own `mediaType`, else guessed from its
/// shape (OCI types). An error says why the bytes are not a manifest of a known type.
pub(crate) fn media_type_of(
    bytes: &[u8],
    declared: Option<&str>,
) -> std::result::Result<String, String> {
    let m: AnyManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JSON manifest ({e})"))?;
    if m.schema_version != Some(2) {
        return Err(format!(
            "unsupported manifest schema version {:?} (only 2 is supported)",
            m.schema_version
        ));
    }
    let declared = declared
        .map(|d| d.split(';').next().unwrap_or(d).trim())
        .filter(|d| is_manifest(d));
    let t = match (declared, m.media_type.as_deref()) {
        (Some(d), _) => d.to_owned(),
        (None, Some(t)) if is_manifest(t) => t.to_owned(),
        (None, Some(t)) => return Err(format!("unsupported manifest media type {t:?}")),
        (None, None) if m.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, None) if m.config.is_some() => OCI_MANIFEST.to_owned(),
        (None, None) => return Err("neither an index nor an image manifest".to_owned()),
    };
    Ok(t)
}

/// What the manifest `bytes` of type `media_type` points at; every digest is checked.
pub(crate) fn children(bytes: &[u8], media_type: &str) -> std::result::Result<Children, String> {
    let m: AnyManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JSON manifest ({e})"))?;
    let out = if is_index(media_type) {
        Children::Index(
            m.manifests
                .ok_or_else(|| "an index without \"manifests\"".to_owned())?,
        )
    } else {
        let config = m
            .config
            .ok_or_else(|| "an image manifest without \"config\"".to_owned())?;
        let mut all = vec![config];
        all.extend(m.layers.unwrap_or_default());
        Children::Image(all)
    };
    let ds = match &out {
        Children::Index(d) | Children::Image(d) => d,
    };
    for d in ds {
        d.hex()?;
    }
    Ok(out)
}

/// The path of blob `hex` in the layout at `root`.
pub(crate) fn blob_path(root: &Path, hex: &str) -> PathBuf {
    root.join("blobs").join("sha256").join(hex)
}

/// Write `bytes` to `dest` atomically (temporary file in the same directory, then rename).
pub(crate) fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let dir = dest.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).at(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).at(dir)?;
    tmp.write_all(bytes).at(tmp.path())?;
    tmp.as_file().sync_all().at(tmp.path())?;
    tmp.persist(dest).map_err(|e| Error::io(dest, e.error))?;
    Ok(())
}

/// The `oci-layout` file's content.
pub(crate) fn oci_layout_file() -> &'static [u8] {
    br#"{"imageLayoutVersion":"1.0.0"}"#
}

/// The `index.json` of a layout holding one manifest, named `tag`.
pub(crate) fn index_json(top: &Descriptor, tag: &str) -> Vec<u8> {
    let mut d = top.clone();
    d.platform = None;
    d.annotations = Some(BTreeMap::from([(REF_NAME.to_owned(), tag.to_owned())]));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [d],
    });
    let mut out = serde_json::to_vec_pretty(&index).unwrap_or_default();
    out.push(b'\n');
    out
}

/// An OCI image layout a node wrote, opened for publishing.
#[derive(Debug)]
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
    index: Vec<Descriptor>,
}

fn invalid(path: &Path, reason: impl Into<String>) -> Error {
    Error::invalid("OCI image layout", path.display().to_string(), reason)
}

impl Layout {
    /// Open the layout at `root`: `oci-layout` and `index.json` must be there and valid.
    pub(crate) fn open(root: &Path) -> Result<Layout> {
        let hint = "a docker output must be an OCI image layout (oci-layout, index.json, \
                    blobs/sha256/...), as `skopeo copy ... oci:DIR:TAG` writes";
        let marker = root.join("oci-layout");
        let text = match std::fs::read(&marker) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(invalid(root, format!("no oci-layout file; {hint}")))
            }
            Err(e) => return Err(Error::io(marker, e)),
        };
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Marker {
            image_layout_version: String,
        }
        let m: Marker = serde_json::from_slice(&text)
            .map_err(|e| invalid(&marker, format!("not a valid oci-layout file ({e})")))?;
        if !m.image_layout_version.starts_with("1.") {
            return Err(invalid(
                &marker,
                format!(
                    "unsupported imageLayoutVersion {:?}",
                    m.image_layout_version
                ),
            ));
        }
        let index_path = root.join("index.json");
        let text = match std::fs::read(&index_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(invalid(root, format!("no index.json; {hint}")))
            }
            Err(e) => return Err(Error::io(index_path, e)),
        };
        let m: AnyManifest = serde_json::from_slice(&text)
            .map_err(|e| invalid(&index_path, format!("not a valid index ({e})")))?;
        let index = m
            .manifests
            .ok_or_else(|| invalid(&index_path, "no \"manifests\" list"))?;
        for d in &index {
            d.hex().map_err(|e| invalid(&index_path, e))?;
        }
        Ok(Layout {
            root: root.to_owned(),
            index,
        })
    }

    /// The manifest to publish under `tag`: the only one in `index.json`, or the one named
    /// `tag` (annotation `org.opencontainers.image.ref.name`).
    pub(crate) fn pick(&self, tag: &str) -> Result<Descriptor> {
        let index_path = self.root.join("index.json");
        match self.index.as_slice() {
            [] => Err(invalid(&index_path, "it lists no manifest")),
            [only] => Ok(only.clone()),
            many => {
                let named: Vec<&Descriptor> = many
                    .iter()
                    .filter(|d| {
                        d.annotations
                            .as_ref()
                            .and_then(|a| a.get(REF_NAME))
                            .is_some_and(|n| n == tag)
                    })
                    .collect();
                match named.as_slice() {
                    [one] => Ok((*one).clone()),
                    _ => Err(invalid(
                        &index_path,
                        format!(
                            "it lists {} manifests and not exactly one named {tag:?} \
                             ({REF_NAME}); keep one, or write the image as `oci:DIR:{tag}`",
                            many.len()
                        ),
                    )),
                }
            }
        }
    }

    /// The path of blob `d`, which must exist with the descriptor's size.
    pub(crate) fn blob(&self, d: &Descriptor) -> Result<PathBuf> {
        let hex = d.hex().map_err(|e| invalid(&self.root, e))?;
        let p = blob_path(&self.root, hex);
        let meta = match std::fs::metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(invalid(
                    &self.root,
                    format!("blob {} is missing ({})", d.digest, p.display()),
                ))
            }
            Err(e) => return Err(Error::io(p, e)),
        };
        if !meta.is_file() || meta.len() != d.size {
            return Err(invalid(
                &self.root,
                format!(
                    "blob {} is {} bytes, its descriptor says {}",
                    d.digest,
                    meta.len(),
                    d.size
                ),
            ));
        }
        Ok(p)
    }

    /// Read manifest `d` (bounded size), checking its digest.
    pub(crate) fn manifest(&self, d: &Descriptor) -> Result<(Vec<u8>, String)> {
        if d.size > MAX_MANIFEST {
            return Err(invalid(
                &self.root,
                format!("manifest {} is larger than 4 MiB", d.digest),
            ));
        }
        let p = self.blob(d)?;
        let bytes = std::fs::read(&p).at(&p)?;
        let found = sha256_digest(&bytes);
        if found != d.digest {
            return Err(invalid(
                &self.root,
                format!("manifest {} hashes to {found} ({})", d.digest, p.display()),
            ));
        }
        let t = media_type_of(&bytes, d.media_type.as_deref())
            .map_err(|e| invalid(&p, format!("manifest {}: {e}", d.digest)))?;
        Ok((bytes, t))
    }
}

/// Hash file `path` (sha256, streaming) and check it against `d`.
pub(crate) fn check_blob_file(root: &Path, path: &Path, d: &Descriptor) -> Result<()> {
    let mut f = std::fs::File::open(path).at(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let found = format!("sha256:{}", crate::net::hex(&h.finalize()));
    if found != d.digest {
        return Err(invalid(
            root,
            format!("blob {} hashes to {found} ({})", d.digest, path.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked() {
        let good = sha256_digest(b"x");
        assert!(digest_hex(&good).is_ok());
        for bad in [
            "sha256:../../etc/passwd",
            "sha512:00",
            "sha256:ABCDEF",
            "md5:0123",
        ] {
            assert!(digest_hex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn media_types() {
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(media_type_of(idx, None).unwrap(), OCI_INDEX);
        assert_eq!(
            media_type_of(
                idx,
                Some("application/vnd.docker.distribution.manifest.list.v2+json; charset=x")
            )
            .unwrap(),
            DOCKER_LIST
        );
        let img = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1}}"#;
        assert_eq!(
            media_type_of(img, Some("application/json")).unwrap(),
            DOCKER_MANIFEST
        );
        assert!(media_type_of(b"<html>", None).is_err());
        assert!(media_type_of(br#"{"schemaVersion":1}"#, None).is_err());
        assert!(children(img, DOCKER_MANIFEST).is_ok());
        let evil = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:../x","size":1}]}"#;
        assert!(children(evil, OCI_INDEX).is_err());
    }
}
