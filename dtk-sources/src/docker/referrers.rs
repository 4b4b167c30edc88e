//! Statements attached to images as OCI 1.1 referrers (distribution spec v1.1, "Listing
//! Referrers"): an artifact manifest whose `subject` is the image, found through the
//! referrers API where the registry offers it, else through the referrers tag schema
//! (`sha256-HEX`, an image index listing the referrers), which registries without the API
//! (the CNCF distribution registry 2.x) need.

use dtk_api::source::Attestation;
use dtk_api::Result;
use serde_json::json;

use super::client::Client;
use super::layout::{self, Descriptor};

/// The empty descriptor's media type (image spec, "Guidance for an Empty Descriptor").
pub(crate) const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The empty blob, `{}`.
const EMPTY: &[u8] = b"{}";
/// The largest statement read back into memory.
const MAX_STATEMENT: u64 = 4 << 20;

/// The tag of the referrers tag schema for `digest` (`sha256:HEX` → `sha256-HEX`).
pub(crate) fn fallback_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: Some(media_type.to_owned()),
        digest: layout::sha256_digest(bytes),
        size: bytes.len() as u64,
        annotations: None,
        platform: None,
        artifact_type: None,
    }
}

/// The artifact manifest carrying `attestation` about `subject`: an OCI image manifest
/// with `artifactType` the statement's media type, the empty config, the statement as its
/// one layer. No date in it (the statement has its own): the same statement about the same
/// subject is the same manifest, so attaching it again adds nothing.
pub(crate) fn artifact_manifest(subject: &Descriptor, attestation: &Attestation) -> Vec<u8> {
    let m = json!({
        "schemaVersion": 2,
        "mediaType": layout::OCI_MANIFEST,
        "artifactType": attestation.media_type,
        "config": descriptor(EMPTY_TYPE, EMPTY),
        "layers": [descriptor(&attestation.media_type, &attestation.bytes)],
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        },
    });
    serde_json::to_vec(&m).unwrap_or_default()
}

/// Push `attestation` as a referrer of manifest `subject`; with a registry that does not
/// process `subject` (no `OCI-Subject` header in its answer), add it to the index under
/// the fallback tag too. The digest of the referrer pushed.
///
/// The fallback index is read, extended and written back: two writers at once may lose
/// one's entry (the spec's schema has no compare-and-swap); pushing again restores it.
pub(crate) async fn push(
    client: &Client,
    subject: &Descriptor,
    attestation: &Attestation,
) -> Result<String> {
    client
        .ensure_blob(&descriptor(EMPTY_TYPE, EMPTY), EMPTY)
        .await?;
    client
        .ensure_blob(
            &descriptor(&attestation.media_type, &attestation.bytes),
            &attestation.bytes,
        )
        .await?;
    let bytes = artifact_manifest(subject, attestation);
    let digest = layout::sha256_digest(&bytes);
    let api = client
        .put_manifest(&digest, layout::OCI_MANIFEST, &bytes)
        .await?;
    if api {
        return Ok(digest);
    }
    let tag = fallback_tag(&subject.digest);
    let mut entry = descriptor(layout::OCI_MANIFEST, &bytes);
    entry.artifact_type = Some(attestation.media_type.clone());
    let mut index = match client.manifest(&tag).await? {
        Some(f) if f.media_type == layout::OCI_INDEX => serde_json::from_slice(&f.bytes)
            .map_err(|e| client.err(format!("the referrers index {tag} is not JSON: {e}")))?,
        // Anything else under that tag is not the schema's: replaced.
        _ => json!({ "schemaVersion": 2, "mediaType": layout::OCI_INDEX, "manifests": [] }),
    };
    let manifests = index
        .get_mut("manifests")
        .and_then(|m| m.as_array_mut())
        .ok_or_else(|| client.err(format!("the referrers index {tag} has no manifests list")))?;
    if !manifests.iter().any(|m| m["digest"] == digest.as_str()) {
        manifests.push(serde_json::to_value(&entry).unwrap_or_default());
        let bytes = serde_json::to_vec(&index).unwrap_or_default();
        client.put_manifest(&tag, layout::OCI_INDEX, &bytes).await?;
    }
    Ok(digest)
}

/// The referrers of `digest` (descriptors of the manifests whose `subject` it is): from
/// the referrers API, else (the API answering 404) from the fallback tag; none when
/// neither has any.
pub(crate) async fn list(client: &Client, digest: &str) -> Result<Vec<Descriptor>> {
    let bytes = match client.referrers(digest).await? {
        Some(b) => b,
        None => match client.manifest(&fallback_tag(digest)).await? {
            Some(f) if f.media_type == layout::OCI_INDEX => f.bytes,
            _ => return Ok(Vec::new()),
        },
    };
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Descriptor>,
    }
    let index: Index = serde_json::from_slice(&bytes).map_err(|e| {
        client.err(format!(
            "the referrers of {digest} are not an image index: {e}"
        ))
    })?;
    Ok(index.manifests)
}

/// The statements of type `artifact_type` attached to `digest`, newest listed last.
pub(crate) async fn statements(
    client: &Client,
    digest: &str,
    artifact_type: &str,
) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for d in list(client, digest).await? {
        if d.artifact_type.as_deref() != Some(artifact_type) {
            continue;
        }
        let Some(m) = client.manifest(&d.digest).await? else {
            continue; // listed but deleted since
        };
        let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap_or_default();
        let layers: Vec<Descriptor> =
            serde_json::from_value(v["layers"].clone()).unwrap_or_default();
        for l in layers {
            if l.media_type.as_deref() == Some(artifact_type) {
                out.push(client.small_blob(&l, MAX_STATEMENT).await?);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_manifests_follow_the_spec() {
        let subject = descriptor(layout::OCI_MANIFEST, b"image");
        let a = Attestation::new(Attestation::IN_TOTO, b"{\"_type\":1}".to_vec());
        let m: serde_json::Value =
            serde_json::from_slice(&artifact_manifest(&subject, &a)).unwrap();
        assert_eq!(m["artifactType"], Attestation::IN_TOTO);
        assert_eq!(m["subject"]["digest"], subject.digest);
        assert_eq!(m["config"]["mediaType"], EMPTY_TYPE);
        assert_eq!(
            m["config"]["digest"],
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(m["config"]["size"], 2);
        assert_eq!(m["layers"][0]["size"], 11);
        // The same statement about the same subject is the same manifest.
        assert_eq!(
            artifact_manifest(&subject, &a),
            artifact_manifest(&subject, &a)
        );
        assert!(m.get("annotations").is_none(), "{m}");
        assert_eq!(
            fallback_tag(&subject.digest),
            format!("sha256-{}", &subject.digest[7..])
        );
    }
}
