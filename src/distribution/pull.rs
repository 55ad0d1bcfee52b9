//! Pulls one variant: resolve the version's index with `select` (or a
//! target name), fetch that variant's manifest and blobs into a temp folder
//! beside the output, hashing each blob as it streams, run `verify`'s
//! integrity check, then rename into place. Any failure leaves nothing.

use std::path::Path;

use serde::Serialize;

use super::media;
use super::oci::{self, MAX_DOCUMENT_BYTES};
use super::registry::Remote;
use super::DistributionError;
use crate::artifact::build::{self, Index, Variant, Want};
use crate::artifact::verify::{integrity, read_manifest};
use crate::artifact::MANIFEST;
use oci_client::RegistryOperation;

/// Which variant to take.
pub enum Choice<'a> {
    Target(&'a str),
    Fits(Want<'a>),
}

#[derive(Debug, Clone, Serialize)]
pub struct PullOutcome {
    pub reference: String,
    pub out: std::path::PathBuf,
    pub variant: Variant,
    pub manifest_digest: String,
    pub bytes: u64,
    /// `out` already held this artifact.
    pub unchanged: bool,
}

/// The rows of a version's index; a reference to one variant manifest
/// (a digest or an inputs tag) gives that one row.
fn resolve(remote: &Remote, tag: &str) -> Result<(Index, String), DistributionError> {
    let whole = remote.reference().whole();
    let accept = [media::OCI_INDEX, media::OCI_MANIFEST];
    let (bytes, digest) = remote
        .get_manifest(tag, &accept, MAX_DOCUMENT_BYTES)?
        .ok_or_else(|| DistributionError::NotFound {
            reference: format!(
                "{}/{}:{tag}",
                remote.reference().registry(),
                remote.reference().repository()
            ),
        })?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("mediaType")?.as_str().map(String::from));
    if media_type.as_deref() == Some(media::OCI_MANIFEST) {
        let m = oci::parse_manifest(&bytes).map_err(|e| DistributionError::content(&whole, e))?;
        let entry = oci::Descriptor {
            media_type: media::OCI_MANIFEST.into(),
            digest: digest.clone(),
            size: bytes.len() as u64,
            artifact_type: m.artifact_type.clone(),
            annotations: m.annotations.clone(),
        };
        let v = oci::variant_from(&entry).map_err(|e| DistributionError::content(&whole, e))?;
        return Ok((Index { variants: vec![v] }, digest));
    }
    let index = oci::parse_index(&bytes).map_err(|e| DistributionError::content(&whole, e))?;
    let variants = index
        .manifests
        .iter()
        .map(oci::variant_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DistributionError::content(&whole, e))?;
    let sizes_ok = index
        .manifests
        .iter()
        .all(|d| d.size <= MAX_DOCUMENT_BYTES as u64);
    if !sizes_ok {
        return Err(DistributionError::content(
            &whole,
            "an index entry is larger than 4 MiB",
        ));
    }
    // A registry repository is one model; its index names it and the version.
    let annotation = |key: &str| index.annotations.get(key).map_or("", String::as_str);
    let index = Index::defaulting(
        variants,
        annotation(media::key::NAME),
        annotation(media::VERSION),
    );
    Ok((index, digest))
}

pub fn pull(
    remote: &Remote,
    tag: &str,
    choice: &Choice,
    out: &Path,
    force: bool,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<PullOutcome, DistributionError> {
    remote.authenticate(RegistryOperation::Pull)?;
    let whole = remote.reference().whole();
    let (index, _) = resolve(remote, tag)?;
    let chosen = match choice {
        // `coral-dev-board` is its main artifact, `coral-dev-board.tflite-edgetpu`
        // its accelerator variant (the folder names `build` gives them).
        Choice::Target(t) => index.variants.iter().find(|v| match &v.runtime {
            Some(r) => format!("{}.{r}", v.target) == *t,
            None => v.target == *t,
        }),
        Choice::Fits(want) => build::select(&index, want),
    }
    .ok_or_else(|| DistributionError::NoMatch {
        reference: whole.clone(),
        message: match choice {
            Choice::Target(t) => format!("no variant for target `{t}`"),
            Choice::Fits(w) => format!(
                "no variant fits {} MiB with the asked accelerator and format",
                w.ram_mb
            ),
        },
    })?
    .clone();
    let (bytes, digest) = remote
        .get_manifest(&chosen.artifact, &[media::OCI_MANIFEST], MAX_DOCUMENT_BYTES)?
        .ok_or_else(|| {
            DistributionError::content(
                &whole,
                format!("variant manifest {} is missing", chosen.artifact),
            )
        })?;
    let manifest =
        oci::parse_manifest(&bytes).map_err(|e| DistributionError::content(&whole, e))?;
    if manifest.config.digest != format!("sha256:{}", chosen.id) {
        return Err(DistributionError::content(
            &whole,
            format!(
                "variant {} carries config {}, its index entry says artifact {}",
                chosen.target, manifest.config.digest, chosen.id
            ),
        ));
    }

    if let Ok((_, id)) = read_manifest(out) {
        if id == chosen.id {
            return Ok(PullOutcome {
                reference: whole,
                out: out.to_path_buf(),
                variant: chosen,
                manifest_digest: digest,
                bytes: 0,
                unchanged: true,
            });
        }
    }
    if out.exists() && !force {
        return Err(DistributionError::at(
            out,
            "already exists and holds something else (pass --force to replace it)",
        ));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs_err::create_dir_all(parent).map_err(|e| DistributionError::at(parent, e.to_string()))?;
    let name = out
        .file_name()
        .map_or("pull".into(), |n| n.to_string_lossy().into_owned());
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempdir_in(parent)
        .map_err(|e| DistributionError::at(parent, e.to_string()))?;
    let mut total = 0;
    let config = &manifest.config;
    remote.pull_blob(
        &config.digest,
        config.size,
        &temp.path().join(MANIFEST),
        on_bytes,
    )?;
    total += config.size;
    for layer in &manifest.layers {
        let title = &layer.annotations[media::TITLE];
        let path = temp.path().join(title);
        if let Some(dir) = path.parent() {
            fs_err::create_dir_all(dir).map_err(|e| DistributionError::at(dir, e.to_string()))?;
        }
        remote.pull_blob(&layer.digest, layer.size, &path, on_bytes)?;
        total += layer.size;
    }
    let (m, id) = read_manifest(temp.path())?;
    if id != chosen.id {
        return Err(DistributionError::content(
            &whole,
            "the config blob is not the artifact's manifest",
        ));
    }
    if let Some(bad) = integrity(temp.path(), &m).into_iter().find(|c| !c.passed) {
        return Err(DistributionError::content(
            &whole,
            format!(
                "pulled artifact fails its integrity check: {}: {}",
                bad.name, bad.detail
            ),
        ));
    }
    let staged = temp.keep();
    let swap = |e: std::io::Error| {
        let _ = fs_err::remove_dir_all(&staged);
        DistributionError::at(out, format!("cannot move into place: {e}"))
    };
    if out.exists() {
        // --force: move the old one aside, the new one in, then drop the old.
        let old = parent.join(format!(".{name}.old"));
        let _ = fs_err::remove_dir_all(&old);
        std::fs::rename(out, &old).map_err(swap)?;
        std::fs::rename(&staged, out).map_err(swap)?;
        let _ = fs_err::remove_dir_all(&old);
    } else {
        std::fs::rename(&staged, out).map_err(swap)?;
    }
    Ok(PullOutcome {
        reference: whole,
        out: out.to_path_buf(),
        variant: chosen,
        manifest_digest: digest,
        bytes: total,
        unchanged: false,
    })
}
