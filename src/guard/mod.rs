//! Untrusted input, checked in one place before any work: names and versions
//! that become paths, files that must be regular and bounded in size, numbers
//! that size allocations, and text echoed back in error messages.
//!
//! Recipes, manifests, model files, registry documents and fleet updates all
//! come from other people; every path built from their text and every read of
//! their files goes through here (`docs/security.md`).

mod echo;
mod files;
mod names;

pub use echo::bounded;
pub use files::{read_bytes, read_text, regular_file, Cap};
pub use names::{artifact_name, confined, path_component, semver};

use std::path::{Path, PathBuf};

/// Why an untrusted input was refused. The message is already bounded and escaped.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct GuardError {
    pub path: PathBuf,
    pub message: String,
}

impl GuardError {
    pub fn at(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}
