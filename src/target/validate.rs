//! Value checks after deserialization: impossible numbers and unknown names.
//! Errors are `(dotted key, message)`; the loader adds file and line.

use super::schema::{
    TargetSpec, ACCELERATOR_KINDS, ACTIVATION_DTYPES, ARCHES, CLASSES, FORMATS, SIMD,
};
use crate::quant::Scheme;

type Problem = (String, String);

fn positive(key: &str, value: f64) -> Result<(), Problem> {
    if value > 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err((key.into(), format!("Must be greater than 0, got {value}")))
    }
}

fn fraction(key: &str, value: f64) -> Result<(), Problem> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err((key.into(), format!("Must be between 0 and 1, got {value}")))
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
    positive("memory.ram_mb", m.ram_mb as f64)?;
    positive("memory.storage_mb", m.storage_mb as f64)?;
    match (m.model_budget_share, m.model_budget_mb) {
        (Some(_), Some(_)) => {
            return Err((
                "memory.model_budget_mb".into(),
                "Give model_budget_share or model_budget_mb, not both".into(),
            ))
        }
        (Some(share), None) if !(share > 0.0 && share <= 1.0) => {
            return Err((
                "memory.model_budget_share".into(),
                format!("Must be in (0, 1], got {share}"),
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
    positive("cpu.cores", f64::from(c.cores))?;
    positive("cpu.clock_ghz", c.clock_ghz)?;
    positive("cpu.peak_gflops", c.peak_gflops)?;
    positive("cpu.mem_bandwidth_gbs", c.mem_bandwidth_gbs)?;
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
        positive("accelerators.peak_tops", a.peak_tops)?;
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
    }
    positive("workload.context_tokens", t.workload.context_tokens as f64)?;
    positive("workload.batch", t.workload.batch as f64)?;
    fraction("accuracy.max_cosine_drop", t.accuracy.max_cosine_drop)?;
    fraction("accuracy.min_top1_agreement", t.accuracy.min_top1_agreement)?;
    let ppl = t.accuracy.max_perplexity_increase_pct;
    if ppl.is_nan() || ppl < 0.0 {
        return Err((
            "accuracy.max_perplexity_increase_pct".into(),
            "Must be 0 or more".into(),
        ));
    }
    Ok(())
}
