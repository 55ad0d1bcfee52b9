//! `manifest.json`: what an artifact is, where it came from and every file's
//! hash. Written as canonical JSON (keys sorted, no insignificant
//! whitespace), so the artifact id, the sha256 of those bytes, is the same
//! wherever and whenever the same inputs are packaged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "edgeforge.artifact/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: String,
    pub name: String,
    pub version: String,
    pub target: TargetRef,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<FileEntry>,
    pub tool: Tool,
    pub quantization: Quantization,
    pub metrics: Metrics,
    pub compatibility: Compatibility,
    /// Every payload file (the manifest itself excluded), sorted by path.
    pub files: Vec<FileEntry>,
    /// The federated global version the source model is (`fed`), when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalRef>,
    /// Seconds since the epoch, only when `SOURCE_DATE_EPOCH` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
}

/// A global version of a federation: `fed` lineage id and number.
impl Manifest {
    /// The artifact's folder name under `dist/<name>/<version>/`.
    pub fn folder(&self) -> String {
        match &self.target.runtime {
            Some(r) => format!("{}.{r}", self.target.name),
            None => self.target.name.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalRef {
    pub version: u64,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRef {
    pub name: String,
    pub class: String,
    /// sha256 of the target's canonical resolved TOML.
    pub sha256: String,
    /// The runtime an ONNX/TFLite artifact is made for (its folder is
    /// `<target>.<runtime>`); absent for GGUF and safetensors artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

/// The model the artifact was made from (its reference for accuracy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub architecture: String,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    pub format: String,
    pub parameters: u64,
    pub weight_bytes: u64,
    pub bits_per_weight: f64,
    /// Tensors per stored type.
    pub tensor_types: BTreeMap<String, u64>,
    /// The plan: every tensor's stored type (or edgeforge scheme).
    pub plan: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub size_bytes: u64,
    pub bits_per_weight: f64,
    pub context_tokens: u64,
    /// Weights + KV cache + activations + runtime overhead on the target.
    pub total_bytes: u64,
    pub budget_bytes: u64,
    pub fits: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<super::accuracy::Accuracy>,
    /// Speed projected onto the target (assumed host efficiencies, `profile`'s model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projection: Option<crate::profile::project::Projection>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compatibility {
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gguf_version: Option<u32>,
    /// What a runtime must support to load the files.
    pub requires: Vec<String>,
    /// Runtimes (package and version) edgeforge's test suite loads and runs
    /// files of this format and writer with: the pins of `tests/requirements.txt`.
    /// What the edgeforge that built the artifact was checked with, so
    /// `verify` does not re-derive it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checked_with: Vec<String>,
}

impl Compatibility {
    /// What the files require, without the build's provenance.
    pub fn requirements_eq(&self, other: &Self) -> bool {
        (&self.format, self.gguf_version, &self.requires)
            == (&other.format, other.gguf_version, &other.requires)
    }
}

/// The runtimes `tests/cli/onnx.rs` and `tests/cli/tflite.rs` load edgeforge's
/// graph files with (`checked_with`; a unit test holds them to the pins).
pub fn checked_with(format: &str) -> Vec<String> {
    let runtimes: &[&str] = match format {
        "onnx" => &["onnxruntime 1.31.1", "openvino 2026.4.1"],
        "tflite" => &["ai-edge-litert 2.3.0"],
        _ => &[],
    };
    runtimes.iter().map(|r| r.to_string()).collect()
}

/// Canonical JSON: object keys sorted at every depth, no whitespace.
pub fn canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let sorted: BTreeMap<String, serde_json::Value> =
                    map.into_iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    let value = sort(serde_json::to_value(value).expect("manifest serializes"));
    serde_json::to_vec(&value).expect("JSON value serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v = serde_json::json!({"b": 1, "a": {"z": [ {"y": 1, "x": 2} ], "c": null}});
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"a":{"c":null,"z":[{"x":2,"y":1}]},"b":1}"#
        );
    }
}

#[cfg(test)]
mod checked_with_tests {
    /// `checked_with` names exactly the versions the test venv installs.
    #[test]
    fn checked_runtimes_are_the_test_suites_pins() {
        let pins = include_str!("../../tests/requirements.txt");
        for format in ["onnx", "tflite"] {
            for runtime in super::checked_with(format) {
                let (name, version) = runtime.split_once(' ').unwrap();
                let pin = format!("{name}=={version}");
                assert!(
                    pins.lines().any(|l| l.trim() == pin),
                    "{pin} is not in tests/requirements.txt"
                );
            }
        }
    }
}
