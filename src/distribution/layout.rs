//! An OCI image layout folder (image-spec v1.1 `image-layout.md`):
//! `oci-layout`, `index.json` (one entry per tag) and `blobs/sha256/`.
//! Blobs are content-addressed, so writing one twice is a no-op; each is
//! copied into a temp file, its digest checked, then renamed into place.
//! `index.json` is replaced last and atomically, so a killed publish leaves
//! the layout as it was (plus, at worst, unreferenced blobs).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::media;
use super::oci::{self, Descriptor, ImageIndex};
use super::release::{Blob, BlobSource, Release};
use super::DistributionError;
use crate::format::atomic::{make_shareable, write_atomic, Overwrite};

const OCI_LAYOUT: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";

/// What a layout write did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayoutOutcome {
    pub tag: String,
    pub index_digest: String,
    pub blobs_written: usize,
    pub blobs_present: usize,
    pub bytes_written: u64,
    /// The tag already pointed at this index.
    pub unchanged: bool,
}

/// Writes `release` into the layout at `dir` under `tag`. A tag that points
/// at another index is refused unless `force`.
pub fn write(
    release: &Release,
    dir: &Path,
    tag: &str,
    force: bool,
) -> Result<LayoutOutcome, DistributionError> {
    let blobs_dir = dir.join("blobs").join("sha256");
    fs_err::create_dir_all(&blobs_dir).map_err(|e| DistributionError::at(dir, e.to_string()))?;
    let layout_file = dir.join("oci-layout");
    if !layout_file.exists() {
        write_atomic(&layout_file, OCI_LAYOUT.as_bytes(), Overwrite::Deny)
            .map_err(|e| DistributionError::at(&layout_file, e.to_string()))?;
    }
    let index_path = dir.join("index.json");
    let mut top = match fs_err::read(&index_path) {
        Ok(bytes) => oci::parse_index(&bytes).map_err(|m| DistributionError::at(&index_path, m))?,
        Err(_) => ImageIndex {
            schema_version: 2,
            media_type: media::OCI_INDEX.into(),
            artifact_type: None,
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        },
    };
    let tagged =
        |d: &Descriptor| d.annotations.get(media::REF_NAME).map(String::as_str) == Some(tag);
    if let Some(old) = top.manifests.iter().find(|d| tagged(d)) {
        if old.digest == release.index_digest {
            return Ok(LayoutOutcome {
                tag: tag.into(),
                index_digest: release.index_digest.clone(),
                blobs_written: 0,
                blobs_present: 0,
                bytes_written: 0,
                unchanged: true,
            });
        }
        if !force {
            return Err(DistributionError::at(
                &index_path,
                format!(
                    "tag `{tag}` already points at {}, not this release's {} (pass --force to move it)",
                    old.digest, release.index_digest
                ),
            ));
        }
    }

    let mut outcome = LayoutOutcome {
        tag: tag.into(),
        index_digest: release.index_digest.clone(),
        blobs_written: 0,
        blobs_present: 0,
        bytes_written: 0,
        unchanged: false,
    };
    let documents = release
        .variants
        .iter()
        .map(|v| (v.digest.clone(), v.manifest.clone()))
        .chain([(release.index_digest.clone(), release.index.clone())])
        .map(|(digest, bytes)| Blob {
            digest,
            size: bytes.len() as u64,
            source: BlobSource::Bytes(bytes),
        })
        .collect::<Vec<_>>();
    for blob in release.blobs().into_iter().chain(&documents) {
        if put_blob(&blobs_dir, blob)? {
            outcome.blobs_written += 1;
            outcome.bytes_written += blob.size;
        } else {
            outcome.blobs_present += 1;
        }
    }

    top.manifests.retain(|d| !tagged(d));
    top.manifests.push(Descriptor {
        media_type: media::OCI_INDEX.into(),
        digest: release.index_digest.clone(),
        size: release.index.len() as u64,
        artifact_type: Some(media::ARTIFACT_TYPE.into()),
        annotations: BTreeMap::from([(media::REF_NAME.to_string(), tag.to_string())]),
    });
    top.manifests.sort_by(|a, b| {
        a.annotations
            .get(media::REF_NAME)
            .cmp(&b.annotations.get(media::REF_NAME))
    });
    write_atomic(&index_path, &oci::to_bytes(&top), Overwrite::Allow)
        .map_err(|e| DistributionError::at(&index_path, e.to_string()))?;
    Ok(outcome)
}

/// Copies one blob in unless a file of its size is already there; returns
/// whether it wrote. The bytes are hashed on the way, so a source file
/// changed since its manifest was written is caught, not published.
fn put_blob(blobs_dir: &Path, blob: &Blob) -> Result<bool, DistributionError> {
    let hex = oci::sha256_hex(&blob.digest).expect("release digests are sha256");
    let path = blobs_dir.join(hex);
    if fs_err::metadata(&path).is_ok_and(|m| m.len() == blob.size) {
        return Ok(false);
    }
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{hex}."))
        .tempfile_in(blobs_dir)
        .map_err(|e| DistributionError::at(blobs_dir, e.to_string()))?;
    let mut hasher = Sha256::new();
    let io_error = |e: std::io::Error| DistributionError::at(&path, format!("cannot write: {e}"));
    match &blob.source {
        BlobSource::Bytes(bytes) => {
            hasher.update(bytes);
            temp.write_all(bytes).map_err(io_error)?;
        }
        BlobSource::File(src) => {
            let mut reader =
                fs_err::File::open(src).map_err(|e| DistributionError::at(src, e.to_string()))?;
            let mut tee = HashingWriter {
                inner: temp.as_file_mut(),
                hasher: &mut hasher,
            };
            std::io::copy(&mut reader, &mut tee).map_err(io_error)?;
        }
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != blob.digest {
        let from = match &blob.source {
            BlobSource::File(p) => p.display().to_string(),
            BlobSource::Bytes(_) => "a document".into(),
        };
        return Err(DistributionError::at(
            &path,
            format!(
                "{from} hashes to {actual}, its manifest says {}",
                blob.digest
            ),
        ));
    }
    make_shareable(temp.as_file()).map_err(io_error)?;
    temp.as_file().sync_all().map_err(io_error)?;
    temp.persist(&path).map_err(|e| io_error(e.error))?;
    Ok(true)
}

/// Writes through and hashes what it wrote.
pub struct HashingWriter<'a, W: Write> {
    pub inner: W,
    pub hasher: &'a mut Sha256,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
