//! A version of `dist/` as OCI documents and blobs: what `publish` writes to
//! an image layout or pushes to a registry. Layer digests are the sha256
//! values already in each `manifest.json`; the config digest is the
//! artifact id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::media::{self, key};
use super::oci::{self, Descriptor, ImageIndex, ImageManifest};
use super::DistributionError;
use crate::artifact::build::variant_of;
use crate::artifact::inputs::Inputs;
use crate::artifact::verify::{integrity, read_manifest};
use crate::artifact::MANIFEST;

/// Where a blob's bytes are.
#[derive(Debug, Clone)]
pub enum BlobSource {
    File(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
    pub source: BlobSource,
}

/// One device variant: its artifact manifest and the blobs it references.
#[derive(Debug, Clone)]
pub struct VariantRelease {
    pub target: String,
    pub artifact_id: String,
    pub inputs: Option<String>,
    pub manifest: Vec<u8>,
    pub digest: String,
    /// The config first, then one per file.
    pub blobs: Vec<Blob>,
}

#[derive(Debug, Clone)]
pub struct Release {
    pub name: String,
    pub version: String,
    pub variants: Vec<VariantRelease>,
    pub index: Vec<u8>,
    pub index_digest: String,
}

impl Release {
    /// Every distinct blob, in a fixed order.
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut seen = std::collections::BTreeSet::new();
        self.variants
            .iter()
            .flat_map(|v| &v.blobs)
            .filter(|b| seen.insert(b.digest.as_str()))
            .collect()
    }
}

/// The variant folders of `dist/<name>/<version>`, sorted by target.
fn variant_dirs(version_dir: &Path) -> Result<Vec<PathBuf>, DistributionError> {
    let entries = fs_err::read_dir(version_dir)
        .map_err(|e| DistributionError::at(version_dir, e.to_string()))?;
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(DistributionError::at(
            version_dir,
            "no artifacts here (expected dist/<name>/<version>/<target>/manifest.json)",
        ));
    }
    Ok(dirs)
}

/// Reads every variant of one version; refuses any that fails its
/// integrity check, or that belongs to another name or version.
pub fn release(
    version_dir: &Path,
    targets_dir: Option<&Path>,
) -> Result<Release, DistributionError> {
    let mut variants = Vec::new();
    let mut entries = Vec::new();
    let mut name_version: Option<(String, String)> = None;
    for dir in variant_dirs(version_dir)? {
        let (m, id) = read_manifest(&dir)?;
        if let Some(bad) = integrity(&dir, &m).into_iter().find(|c| !c.passed) {
            return Err(DistributionError::at(
                &dir.join(&bad.name),
                format!("{}; not publishing a damaged artifact", bad.detail),
            ));
        }
        match &name_version {
            None => name_version = Some((m.name.clone(), m.version.clone())),
            Some((n, v)) if (n, v) != (&m.name, &m.version) => {
                return Err(DistributionError::at(
                    &dir,
                    format!("is {} {}, the others are {n} {v}", m.name, m.version),
                ))
            }
            Some(_) => {}
        }
        let manifest_bytes = fs_err::read(dir.join(MANIFEST))
            .map_err(|e| DistributionError::at(&dir, e.to_string()))?;
        let inputs = Inputs::of_manifest(&m).map(|i| i.hash());
        let row = variant_of(&m, id.clone(), String::new(), true, targets_dir);
        let annotations =
            oci::annotations(&row, &m.name, m.metrics.budget_bytes, inputs.as_deref());
        let config = Descriptor {
            media_type: media::CONFIG.into(),
            digest: format!("sha256:{id}"),
            size: manifest_bytes.len() as u64,
            artifact_type: None,
            annotations: BTreeMap::new(),
        };
        let mut blobs = vec![Blob {
            digest: config.digest.clone(),
            size: config.size,
            source: BlobSource::Bytes(manifest_bytes),
        }];
        let mut layers = Vec::new();
        for f in &m.files {
            let digest = format!("sha256:{}", f.sha256);
            layers.push(Descriptor {
                media_type: media::layer_type(&f.path).into(),
                digest: digest.clone(),
                size: f.size,
                artifact_type: None,
                annotations: BTreeMap::from([(media::TITLE.to_string(), f.path.clone())]),
            });
            blobs.push(Blob {
                digest,
                size: f.size,
                source: BlobSource::File(dir.join(&f.path)),
            });
        }
        let manifest = oci::to_bytes(&ImageManifest {
            schema_version: 2,
            media_type: media::OCI_MANIFEST.into(),
            artifact_type: Some(media::ARTIFACT_TYPE.into()),
            config,
            layers,
            annotations: annotations.clone(),
        });
        let digest = oci::digest_of(&manifest);
        entries.push(Descriptor {
            media_type: media::OCI_MANIFEST.into(),
            digest: digest.clone(),
            size: manifest.len() as u64,
            artifact_type: Some(media::ARTIFACT_TYPE.into()),
            annotations,
        });
        variants.push(VariantRelease {
            target: m.target.name.clone(),
            artifact_id: id,
            inputs,
            manifest,
            digest,
            blobs,
        });
    }
    let (name, version) = name_version.expect("variant_dirs is not empty");
    let index = oci::to_bytes(&ImageIndex {
        schema_version: 2,
        media_type: media::OCI_INDEX.into(),
        artifact_type: Some(media::ARTIFACT_TYPE.into()),
        manifests: entries,
        annotations: BTreeMap::from([
            (key::NAME.to_string(), name.clone()),
            (media::VERSION.to_string(), version.clone()),
        ]),
    });
    Ok(Release {
        index_digest: oci::digest_of(&index),
        name,
        version,
        variants,
        index,
    })
}

/// A tag for a version: tags allow `[A-Za-z0-9_.-]`, so SemVer's build
/// metadata `+` becomes `_` (as Helm does).
pub fn version_tag(version: &str) -> String {
    version.replace('+', "_")
}
