//! Device target profiles: `targets/*.toml` describe a device class (memory,
//! CPU, accelerators, runtimes and the schemes they run, accuracy budget).
//!
//! Parsing is strict: unknown keys, missing fields and impossible values are
//! errors naming the file, the dotted key and the line. `extends` deep-merges
//! a parent file under the child (child wins; arrays are replaced).

mod builtin;
mod load;
pub mod schema;
mod validate;

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;

pub use load::{from_text, load, load_all, load_file, load_named, TargetError};
pub use schema::TargetSpec;
pub use validate::MAX_MB;

use crate::quant::Scheme;

/// A validated, resolved target with its provenance.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    #[serde(flatten)]
    pub spec: TargetSpec,
    /// Where it came from (a path, or `builtin:<file>`).
    pub source: PathBuf,
    /// sha256 of the canonical resolved TOML, for lineage in manifests.
    pub sha256: String,
}

impl Target {
    /// The target's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Memory a model may use, in MiB.
    pub fn model_budget_mb(&self) -> u64 {
        let m = &self.spec.memory;
        match (m.model_budget_mb, m.model_budget_share) {
            (Some(mb), _) => mb,
            (None, Some(share)) => (m.ram_mb as f64 * share).floor() as u64,
            (None, None) => m.ram_mb,
        }
    }

    /// Memory a model may use, in bytes.
    pub fn model_budget_bytes(&self) -> u64 {
        self.model_budget_mb() << 20
    }

    /// Runtime resident overhead beside the weights, in bytes.
    pub fn runtime_overhead_bytes(&self) -> u64 {
        self.spec.memory.runtime_overhead_mb << 20
    }

    /// Every scheme some runtime or accelerator of the device runs.
    pub fn allowed_schemes(&self) -> BTreeSet<Scheme> {
        let runtimes = self
            .spec
            .runtimes
            .iter()
            .flat_map(|r| r.weight_schemes.iter());
        let accels = self
            .spec
            .accelerators
            .iter()
            .flat_map(|a| a.weight_schemes.iter());
        runtimes
            .chain(accels)
            .filter_map(|s| s.parse().ok())
            .collect()
    }

    /// Model formats the device's runtimes load.
    pub fn formats(&self) -> BTreeSet<&str> {
        self.spec
            .runtimes
            .iter()
            .map(|r| r.format.as_str())
            .collect()
    }

    /// The runtime that loads `format`: one an accelerator runs on first,
    /// else any (an ONNX file on a laptop's NPU before onnxruntime on its CPU).
    pub fn runtime_for(&self, format: &str) -> Option<&schema::Runtime> {
        let accelerated = |r: &&schema::Runtime| {
            self.spec
                .accelerators
                .iter()
                .any(|a| a.runtimes.contains(&r.name))
        };
        let loads = self.spec.runtimes.iter().filter(|r| r.format == format);
        loads
            .clone()
            .find(accelerated)
            .or_else(|| loads.clone().next())
    }

    /// Each accelerator with each runtime it names (`None`: the profile has
    /// no `[[runtimes]]` entry of that name).
    pub fn accelerator_runtimes(
        &self,
    ) -> Vec<(&schema::Accelerator, &str, Option<&schema::Runtime>)> {
        self.spec
            .accelerators
            .iter()
            .flat_map(|a| {
                a.runtimes.iter().map(move |name| {
                    (
                        a,
                        name.as_str(),
                        self.spec.runtimes.iter().find(|r| &r.name == name),
                    )
                })
            })
            .collect()
    }
}
