//! The device profile schema. Every struct denies unknown keys; `docs/targets.md`
//! documents each field. Values are checked in `validate.rs`.

use serde::{Deserialize, Serialize};

/// A resolved device target (after `extends`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub name: String,
    pub class: String,
    pub description: String,
    /// Consumed during resolution; never present on a resolved target.
    #[serde(default, skip_serializing)]
    pub extends: Option<String>,
    pub memory: Memory,
    pub cpu: Cpu,
    #[serde(default)]
    pub accelerators: Vec<Accelerator>,
    pub runtimes: Vec<Runtime>,
    pub workload: Workload,
    pub accuracy: Accuracy,
}

/// `[memory]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    pub ram_mb: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_budget_share: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_budget_mb: Option<u64>,
    pub storage_mb: u64,
    pub runtime_overhead_mb: u64,
}

/// `[cpu]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    pub arch: String,
    pub cores: u32,
    pub clock_ghz: f64,
    #[serde(default)]
    pub simd: Vec<String>,
    pub peak_gflops: f64,
    pub mem_bandwidth_gbs: f64,
}

/// `[[accelerators]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accelerator {
    pub kind: String,
    pub name: String,
    pub peak_tops: f64,
    pub peak_tops_dtype: String,
    pub weight_schemes: Vec<String>,
    pub activation_dtypes: Vec<String>,
    #[serde(default)]
    pub runtimes: Vec<String>,
}

/// `[[runtimes]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    pub name: String,
    pub format: String,
    pub weight_schemes: Vec<String>,
    /// Ops (as the format spells them) this runtime places on the
    /// accelerator it drives, from the runtime's documentation; empty: not
    /// stated, and `profile` says it assumes every op runs there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accelerator_ops: Vec<String>,
    /// How the runtime splits a graph holding ops it cannot place.
    #[serde(default, skip_serializing_if = "Partition::is_per_op")]
    pub partition: Partition,
    /// The runtime compiles for fixed input shapes only (QNN HTP, Edge TPU).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixed_shapes: bool,
    /// The runtime takes int8 Q/DQ with zero points of 0 only (TensorRT's
    /// explicit quantization): int8 graphs for it get symmetric int8
    /// activations.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub symmetric_activations: bool,
}

/// `runtimes[].partition`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partition {
    /// Each op the accelerator lacks runs on the CPU; the rest stays on it.
    #[default]
    PerOp,
    /// Everything from the first op the accelerator lacks runs on the CPU
    /// (the Edge TPU compiler maps one leading segment only).
    Prefix,
}

impl Partition {
    fn is_per_op(&self) -> bool {
        *self == Self::PerOp
    }
}

/// `[workload]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub context_tokens: u64,
    pub batch: u64,
}

/// `[accuracy]`: the budget `verify` gates on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accuracy {
    pub max_cosine_drop: f64,
    pub max_perplexity_increase_pct: f64,
    pub min_top1_agreement: f64,
    /// Mean next-token KL divergence from the reference (decoders); no gate when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mean_kld: Option<f64>,
}

/// Allowed values, one list per enumerated key.
pub const CLASSES: &[&str] = &[
    "phone", "sbc", "laptop", "desktop", "server", "mcu", "devkit",
];
pub const ARCHES: &[&str] = &["aarch64", "x86_64", "armv7", "xtensa", "riscv64"];
pub const ACCELERATOR_KINDS: &[&str] = &["npu", "gpu", "tpu", "dsp"];
pub const ACTIVATION_DTYPES: &[&str] = &["fp32", "fp16", "bf16", "int16", "int8", "int4"];
pub const FORMATS: &[&str] = &[
    "gguf",
    "safetensors",
    "onnx",
    "tflite",
    "coreml",
    "tensorrt",
    "executorch",
    "rknn",
];
pub const SIMD: &[&str] = &[
    "neon",
    "dotprod",
    "i8mm",
    "sve",
    "sve2",
    "fp16",
    "bf16",
    "sse4.2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vnni",
    "avx_vnni",
    "amx",
    "pie",
    "rvv",
];
