//! Value checks after deserialization: impossible numbers and unknown names.
//! Errors are `(dotted key, message)`; the loader adds file and line.

use super::schema::{
    TargetSpec, ACCELERATOR_KINDS, ACTIVATION_DTYPES, ARCHES, CLASSES, FORMATS, SIMD,
};
use crate::quant::Scheme;

type Problem = (String, String);

/// The largest memory, in MiB, any profile may state (16 TiB): beyond it the
/// byte counts of the fit arithmetic stop being exact in f64 and near u64's end.
pub const MAX_MB: u64 = 1 << 24;

/// `value` is finite and within `lo..=hi`, bounds named in the refusal: a
/// number past them is a typo, and it would make every projection absurd.
fn within(key: &str, value: f64, lo: f64, hi: f64) -> Result<(), Problem> {
    if value.is_finite() && (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err((
            key.into(),
            format!("Must be between {lo} and {hi}, got {value}"),
        ))
    }
}

fn fraction(key: &str, value: f64) -> Result<(), Problem> {
    within(key, value, 0.0, 1.0)
}

fn count(key: &str, value: u64, hi: u64) -> Result<(), Problem> {
    if (1..=hi).contains(&value) {
        Ok(())
    } else {
        Err((
            key.into(),
            format!("Must be between 1 and {hi}, got {value}"),
        ))
    }
}

fn one_of(key: &str, value: &str, allowed: &[&str], what: &str) -> Result<(), Problem> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err((
            key.into(),
            format!(
                "Unknown {what} `{value}` (expected one of: {})",
                allowed.join(", ")
            ),
        ))
    }
}

fn schemes(key: &str, names: &[String]) -> Result<(), Problem> {
    for name in names {
        name.parse::<Scheme>().map_err(|_| {
            (
                key.to_string(),
                format!("Unknown scheme `{name}` (see `edgeforge quantize --help`)"),
            )
        })?;
    }
    Ok(())
}

/// A runtime can only run schemes its file format can hold: GGUF has no
/// edgeforge int8/int4 schemes, TFLite no int4, ONNX no GGUF blocks.
fn expressible(r: &super::schema::Runtime) -> Result<(), Problem> {
    let holds = |s: &str| -> bool {
        let float = ["F32", "F16", "BF16"].contains(&s);
        let edgeforge = s == "int8_pc" || s.starts_with("int4_g");
        match r.format.as_str() {
            "gguf" => !edgeforge,
            "safetensors" => float || edgeforge,
            "onnx" | "coreml" => float || edgeforge,
            "tflite" => ["F32", "F16", "int8_pc"].contains(&s),
            _ => true,
        }
    };
    if r.symmetric_activations && r.format != "onnx" {
        return Err((
            "runtimes.symmetric_activations".into(),
            format!(
                "runtime `{}` loads {}: symmetric_activations is about ONNX Q/DQ zero points",
                r.name, r.format
            ),
        ));
    }
    match r.weight_schemes.iter().find(|s| !holds(s)) {
        Some(s) => Err((
            "runtimes.weight_schemes".into(),
            format!(
                "runtime `{}` loads {}, which cannot hold `{s}` weights",
                r.name, r.format
            ),
        )),
        None => Ok(()),
    }
}

/// An accelerator that names runtimes must share a scheme with one of them,
/// or nothing it runs could ever be delivered to it.
fn fed_by_a_runtime(
    a: &super::schema::Accelerator,
    runtimes: &[super::schema::Runtime],
) -> Result<(), Problem> {
    let named: Vec<&super::schema::Runtime> = runtimes
        .iter()
        .filter(|r| a.runtimes.contains(&r.name))
        .collect();
    let shared = named.iter().any(|r| {
        r.weight_schemes
            .iter()
            .any(|s| a.weight_schemes.contains(s))
    });
    if named.is_empty() || shared {
        return Ok(());
    }
    Err((
        "accelerators.weight_schemes".into(),
        format!(
            "the {} runs {}, which none of its runtimes ({}) loads",
            a.name,
            a.weight_schemes.join(", "),
            named
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

/// Checks every value of a resolved profile.
pub fn check(t: &TargetSpec) -> Result<(), Problem> {
    if t.name.is_empty()
        || !t
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err((
            "name".into(),
            format!(
                "Must be lowercase letters, digits and `-`, got `{}`",
                t.name
            ),
        ));
    }
    one_of("class", &t.class, CLASSES, "class")?;
    let m = &t.memory;
    count("memory.ram_mb", m.ram_mb, MAX_MB)?;
    count("memory.storage_mb", m.storage_mb, MAX_MB << 6)?;
    if m.runtime_overhead_mb >= m.ram_mb {
        return Err((
            "memory.runtime_overhead_mb".into(),
            format!(
                "Must be less than ram_mb ({}), got {}",
                m.ram_mb, m.runtime_overhead_mb
            ),
        ));
    }
    match (m.model_budget_share, m.model_budget_mb) {
        (None, None) => {
            return Err((
                "memory".into(),
                "Give model_budget_share or model_budget_mb".into(),
            ))
        }
        (Some(_), Some(_)) => {
            return Err((
                "memory.model_budget_mb".into(),
                "Give model_budget_share or model_budget_mb, not both".into(),
            ))
        }
        (Some(share), None) if !(1e-4..=1.0).contains(&share) => {
            return Err((
                "memory.model_budget_share".into(),
                format!("Must be between 0.0001 and 1, got {share}"),
            ))
        }
        (None, Some(mb)) if mb == 0 || mb > m.ram_mb => {
            return Err((
                "memory.model_budget_mb".into(),
                format!("Must be in 1..={} (ram_mb), got {mb}", m.ram_mb),
            ))
        }
        _ => {}
    }
    let c = &t.cpu;
    one_of("cpu.arch", &c.arch, ARCHES, "architecture")?;
    count("cpu.cores", u64::from(c.cores), 4096)?;
    within("cpu.clock_ghz", c.clock_ghz, 0.001, 20.0)?;
    within("cpu.peak_gflops", c.peak_gflops, 1e-4, 1e7)?;
    within("cpu.mem_bandwidth_gbs", c.mem_bandwidth_gbs, 1e-4, 1e5)?;
    for s in &c.simd {
        one_of("cpu.simd", s, SIMD, "SIMD feature")?;
    }
    for a in &t.accelerators {
        one_of(
            "accelerators.kind",
            &a.kind,
            ACCELERATOR_KINDS,
            "accelerator kind",
        )?;
        within("accelerators.peak_tops", a.peak_tops, 1e-6, 1e5)?;
        one_of(
            "accelerators.peak_tops_dtype",
            &a.peak_tops_dtype,
            ACTIVATION_DTYPES,
            "dtype",
        )?;
        schemes("accelerators.weight_schemes", &a.weight_schemes)?;
        for d in &a.activation_dtypes {
            one_of(
                "accelerators.activation_dtypes",
                d,
                ACTIVATION_DTYPES,
                "dtype",
            )?;
        }
    }
    if t.runtimes.is_empty() {
        return Err(("runtimes".into(), "At least one runtime is required".into()));
    }
    for r in &t.runtimes {
        one_of("runtimes.format", &r.format, FORMATS, "format")?;
        schemes("runtimes.weight_schemes", &r.weight_schemes)?;
        expressible(r)?;
        let drives = t.accelerators.iter().any(|a| a.runtimes.contains(&r.name));
        if !r.accelerator_ops.is_empty() && !drives {
            return Err((
                "runtimes.accelerator_ops".into(),
                format!(
                    "Runtime `{}` drives no accelerator (no accelerators[].runtimes names it)",
                    r.name
                ),
            ));
        }
        if let Some(op) = r.accelerator_ops.iter().find(|o| !safe_op_name(o)) {
            return Err((
                "runtimes.accelerator_ops".into(),
                format!("`{op}` is not an op name (letters, digits and `_` only)"),
            ));
        }
    }
    for a in &t.accelerators {
        fed_by_a_runtime(a, &t.runtimes)?;
    }
    count(
        "workload.context_tokens",
        t.workload.context_tokens,
        1 << 24,
    )?;
    count("workload.batch", t.workload.batch, 1 << 16)?;
    fraction("accuracy.max_cosine_drop", t.accuracy.max_cosine_drop)?;
    fraction("accuracy.min_top1_agreement", t.accuracy.min_top1_agreement)?;
    within(
        "accuracy.max_perplexity_increase_pct",
        t.accuracy.max_perplexity_increase_pct,
        0.0,
        1e4,
    )?;
    if let Some(kld) = t.accuracy.max_mean_kld {
        within("accuracy.max_mean_kld", kld, 0.0, 100.0)?;
    }
    Ok(())
}

fn safe_op_name(op: &str) -> bool {
    (1..=64).contains(&op.len()) && op.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
