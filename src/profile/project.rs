//! Roofline projection onto a target. Decode is bound by the bytes of
//! weights read per token over memory bandwidth; prefill and encoders by
//! FLOPs over compute. Each is scaled by the efficiency this host reached
//! against its own stated peak, so a slow engine projects slow everywhere.

use serde::{Deserialize, Serialize};

use crate::model::Model;
use crate::target::Target;

/// Efficiencies used when nothing was measured: typical for a CPU runtime.
/// Artifacts use these too, so their projections are reproducible.
pub const ASSUMED: Efficiency = Efficiency {
    compute: 0.3,
    bandwidth: 0.6,
};

/// Input length (encoders) or prompt length (decoders) projected by default.
pub const DEFAULT_TOKENS: u64 = 128;

/// How much of its own peak the host reached.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Efficiency {
    /// Achieved / peak GFLOP/s (encoders, prefill).
    pub compute: f64,
    /// Achieved / peak memory bandwidth (decode).
    pub bandwidth: f64,
}

/// Projected speed of one scheme on one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Projection {
    /// `cpu`, or the accelerator the compute figure assumes.
    pub engine: String,
    pub compute_gflops: f64,
    pub bandwidth_gbs: f64,
    /// Encoders: latency of one input at the profiled length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_tokens_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_tokens_per_second: Option<f64>,
    pub assumption: String,
}

/// What one run of the model costs, for projecting.
#[derive(Debug, Clone, Copy)]
pub struct Work {
    /// FLOPs of one encoder input, or of the whole prompt for decoders.
    pub flops: f64,
    /// Prompt tokens (decoders) or 0.
    pub prompt_tokens: u64,
    /// Weight bytes read per decoded token (decoders) or 0.
    pub bytes_per_token: u64,
}

/// Projects `work` at `scheme` onto `target`.
pub fn project(target: &Target, scheme: &str, work: Work, eff: Efficiency) -> Projection {
    let cpu = &target.spec.cpu;
    let npu = target.spec.accelerators.iter().find(|a| {
        a.peak_tops > 0.0
            && a.weight_schemes
                .iter()
                .any(|s| s.eq_ignore_ascii_case(scheme))
    });
    let (engine, peak_gflops, assumption) = match npu {
        Some(a) => (
            format!("{} {}", a.kind, a.name),
            a.peak_tops * 1000.0,
            format!(
                "{} at {} TOPS {} (its peak for that dtype) x host compute efficiency {:.0}%",
                a.name,
                a.peak_tops,
                a.peak_tops_dtype,
                eff.compute * 100.0
            ),
        ),
        None => (
            "cpu".to_string(),
            cpu.peak_gflops,
            format!(
                "CPU {} GFLOP/s x {:.0}%, {} GB/s x {:.0}% (host efficiencies)",
                cpu.peak_gflops,
                eff.compute * 100.0,
                cpu.mem_bandwidth_gbs,
                eff.bandwidth * 100.0
            ),
        ),
    };
    let compute = peak_gflops * eff.compute;
    let bandwidth = cpu.mem_bandwidth_gbs * eff.bandwidth;
    let seconds = work.flops / (compute * 1e9);
    let decoder = work.bytes_per_token > 0;
    Projection {
        engine,
        compute_gflops: compute,
        bandwidth_gbs: bandwidth,
        latency_ms: (!decoder).then_some(seconds * 1e3),
        prefill_tokens_per_second: decoder.then(|| work.prompt_tokens as f64 / seconds),
        decode_tokens_per_second: decoder.then(|| bandwidth * 1e9 / work.bytes_per_token as f64),
        assumption,
    }
}

/// What one run of `model` costs with `weight_bytes` of weights, at
/// `tokens` input (encoders) or prompt (decoders) tokens.
pub fn work_of(model: &Model, tokens: u64, weight_bytes: u64) -> Work {
    let decoder = model.architecture.is_decoder();
    let tokens = crate::memory::max_context(&model.architecture).map_or(tokens, |m| tokens.min(m));
    Work {
        flops: super::accounting::forward_flops(model, tokens, tokens),
        prompt_tokens: if decoder { tokens } else { 0 },
        bytes_per_token: if decoder { weight_bytes } else { 0 },
    }
}

/// The projection an artifact records: default length, assumed efficiencies
/// (nothing host-dependent, so the manifest stays reproducible). `scheme`
/// `None`: the files' runtime uses the CPU only.
pub fn for_artifact(
    model: &Model,
    target: &Target,
    scheme: Option<&str>,
    weight_bytes: u64,
) -> Projection {
    project(
        target,
        scheme.unwrap_or(""),
        work_of(model, DEFAULT_TOKENS, weight_bytes),
        ASSUMED,
    )
}
