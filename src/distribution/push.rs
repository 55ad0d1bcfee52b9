//! Pushes a release to a registry: blobs the registry lacks (HEAD first),
//! then each variant manifest (by digest, and under its inputs tag for
//! `build --cache`), then the version's index under the tag. The index goes
//! last, so a tag never points at an incomplete release.

use serde::Serialize;

use super::media;
use super::oci::MAX_DOCUMENT_BYTES;
use super::registry::Remote;
use super::release::Release;
use super::DistributionError;
use oci_client::RegistryOperation;

#[derive(Debug, Clone, Serialize)]
pub struct PushOutcome {
    pub reference: String,
    pub index_digest: String,
    pub blobs_uploaded: usize,
    pub blobs_present: usize,
    pub bytes_uploaded: u64,
    /// The tag already pointed at this index: nothing was sent.
    pub unchanged: bool,
}

pub fn push(
    release: &Release,
    remote: &Remote,
    tag: &str,
    force: bool,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<PushOutcome, DistributionError> {
    remote.authenticate(RegistryOperation::Push)?;
    remote.authenticate(RegistryOperation::Pull)?;
    let reference = format!(
        "{}/{}:{tag}",
        remote.reference().registry(),
        remote.reference().repository()
    );
    let mut outcome = PushOutcome {
        reference: reference.clone(),
        index_digest: release.index_digest.clone(),
        blobs_uploaded: 0,
        blobs_present: 0,
        bytes_uploaded: 0,
        unchanged: false,
    };
    let accept = [media::OCI_INDEX, media::OCI_MANIFEST];
    if let Some((_, digest)) = remote.get_manifest(tag, &accept, MAX_DOCUMENT_BYTES)? {
        if digest == release.index_digest {
            outcome.unchanged = true;
            return Ok(outcome);
        }
        if !force {
            return Err(DistributionError::Registry {
                reference,
                message: format!(
                    "the tag already points at {digest}, not this release's {} (pass --force to move it)",
                    release.index_digest
                ),
            });
        }
    }
    for blob in release.blobs() {
        if remote.blob_exists(&blob.digest)? {
            outcome.blobs_present += 1;
            on_bytes(blob.size);
        } else {
            remote.push_blob(&blob.digest, blob.size, &blob.source, on_bytes)?;
            outcome.blobs_uploaded += 1;
            outcome.bytes_uploaded += blob.size;
        }
    }
    for v in &release.variants {
        remote.push_manifest(&v.digest, &v.manifest, media::OCI_MANIFEST)?;
        if let Some(inputs) = &v.inputs {
            remote.push_manifest(&media::inputs_tag(inputs), &v.manifest, media::OCI_MANIFEST)?;
        }
    }
    remote.push_manifest(tag, &release.index, media::OCI_INDEX)?;
    Ok(outcome)
}
