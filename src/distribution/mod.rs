//! Distribution through OCI registries: one OCI artifact manifest per device
//! variant (config = the variant's `manifest.json`, one layer per file) and
//! one image index per version whose entries carry what `select` needs.
//! `publish` writes them as an OCI image layout or pushes them to a
//! registry; `pull` resolves an index with `select` and fetches one variant.
//! Media types and annotations: docs/distribution.md.

pub mod layout;
pub mod media;
pub mod oci;
pub mod pull;
pub mod push;
pub mod registry;
pub mod release;

use std::path::{Path, PathBuf};

/// Why a publish or pull failed; every variant is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum DistributionError {
    #[error("{}: {message}", path.display())]
    At { path: PathBuf, message: String },
    /// The registry or the network (after retries).
    #[error("{reference}: {message}")]
    Registry { reference: String, message: String },
    /// A document or blob from the registry is malformed, hostile or tampered.
    #[error("{reference}: {message}")]
    Content { reference: String, message: String },
    /// The registry has no manifest under that tag or digest (404).
    #[error("{reference}: not found in the registry (404)")]
    NotFound { reference: String },
    /// No variant of the index matches what was asked for.
    #[error("{reference}: {message}")]
    NoMatch { reference: String, message: String },
    #[error(transparent)]
    Artifact(#[from] crate::artifact::ArtifactError),
}

impl DistributionError {
    pub fn at(path: &Path, message: impl Into<String>) -> Self {
        Self::At {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
    pub fn content(reference: impl std::fmt::Display, message: impl Into<String>) -> Self {
        Self::Content {
            reference: reference.to_string(),
            message: message.into(),
        }
    }
}
