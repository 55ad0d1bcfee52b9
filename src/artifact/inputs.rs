//! What a built artifact depends on, hashed: the key of `build --matrix`
//! jobs and of the registry cache (`build --cache`). Equal inputs give the
//! same artifact byte for byte, so a variant published under these inputs
//! can stand in for building it.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::manifest::{canonical_json, Manifest};

pub const DISTILL_RECIPE: &str = "distill.toml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inputs {
    /// sha256 of the build recipe.
    pub recipe: String,
    /// sha256 of the distill recipe, for `distill = ...` builds.
    pub distill: Option<String>,
    /// sha256 of each source file; empty for distill builds, whose source
    /// (the student) the distill recipe determines.
    pub source: Vec<String>,
    /// sha256 of the target's resolved profile.
    pub target: String,
    /// The edgeforge version.
    pub tool: String,
    /// The accelerator runtime of an ONNX/TFLite variant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// sha256 of the calibration lines an accelerator variant recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<String>,
}

impl Inputs {
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(canonical_json(self)))
    }

    /// The inputs a `build` artifact records; `None` for `package` artifacts
    /// (no build recipe).
    pub fn of_manifest(m: &Manifest) -> Option<Self> {
        let distill = m
            .files
            .iter()
            .find(|f| f.path == DISTILL_RECIPE)
            .map(|f| f.sha256.clone());
        Some(Self {
            recipe: m.recipe.as_ref()?.sha256.clone(),
            source: if distill.is_some() {
                Vec::new()
            } else {
                m.source.files.iter().map(|f| f.sha256.clone()).collect()
            },
            distill,
            target: m.target.sha256.clone(),
            tool: m.tool.version.clone(),
            runtime: m.target.runtime.clone(),
            calibration: m
                .files
                .iter()
                .find(|f| m.target.runtime.is_some() && f.path == super::accelerated::CALIBRATION)
                .map(|f| f.sha256.clone()),
        })
    }
}
