//! `--bpw X`: reach an average bits per weight by spending bits where they
//! buy the most. Every weight matrix starts at the best scheme allowed; then
//! the step down that adds the least squared error per bit saved is taken,
//! until the average is at or below X. Errors are measured by quantizing each
//! tensor with each candidate scheme, so choices rest on the real weights.

use crate::model::Model;
use crate::quant::apply::tensor_f32;
use crate::quant::metrics::ErrorStats;
use crate::quant::plan::{Plan, Reason, SAFETENSORS_LADDER};
use crate::quant::{self, Scheme};

/// Candidate schemes, most bits first, for one output family.
fn ladder(gguf: bool) -> Vec<Scheme> {
    if gguf {
        vec![
            Scheme::Q8_0,
            Scheme::Q6K,
            Scheme::Q5K,
            Scheme::Q5_1,
            Scheme::Q5_0,
            Scheme::Q4K,
            Scheme::Q4_1,
            Scheme::Q4_0,
            // After Q4_0, its size: the step to it is free where it is
            // closer, as it usually is (the walk cannot skip a step).
            Scheme::IQ4NL,
            Scheme::IQ4XS,
            Scheme::Q3K,
            Scheme::Q2K,
        ]
    } else {
        SAFETENSORS_LADDER.to_vec()
    }
}

struct Options {
    /// (scheme, encoded bytes, squared error sum), most bytes first.
    steps: Vec<(Scheme, u64, f64)>,
    at: usize,
}

/// Rewrites the schemes of `plan`'s weight matrices to reach `target_bpw`.
/// Errs, naming the reachable range, when `target_bpw` is below the smallest
/// plan or above the largest.
pub fn fit_bits(
    model: &Model,
    plan: &mut Plan,
    target_bpw: f64,
    allowed: Option<&std::collections::BTreeSet<Scheme>>,
    gguf: bool,
) -> Result<(), String> {
    let mut options: Vec<Option<Options>> = Vec::with_capacity(plan.tensors.len());
    for p in &plan.tensors {
        let Some(t) = model.tensor(&p.name) else {
            options.push(None);
            continue;
        };
        let tunable = matches!(
            p.reason,
            Reason::Base
                | Reason::Preset { .. }
                | Reason::RowFallback { .. }
                | Reason::TargetRestricted { .. }
        );
        if !tunable || p.scheme.is_none() {
            options.push(None);
            continue;
        }
        let row = t.row_len();
        let candidates: Vec<Scheme> = ladder(gguf)
            .into_iter()
            .filter(|s| quant::supports_row(*s, row))
            .filter(|s| allowed.is_none_or(|a| a.contains(s)))
            .collect();
        if candidates.is_empty() {
            options.push(None);
            continue;
        }
        let x = tensor_f32(model, t)?;
        let mut steps = Vec::with_capacity(candidates.len());
        for s in candidates {
            let enc = quant::quantize(s, &x, row as usize).map_err(|e| e.to_string())?;
            let mut back = vec![0f32; x.len()];
            quant::decode(s, &enc, row as usize, &mut back).map_err(|e| e.to_string())?;
            let e = ErrorStats::between(&x, &back);
            let bytes = quant::encoded_bytes(s, t.n_elems, row).expect("row checked");
            steps.push((s, bytes, e.rmse * e.rmse * t.n_elems as f64));
        }
        steps.sort_by_key(|step| std::cmp::Reverse(step.1));
        options.push(Some(Options { steps, at: 0 }));
    }
    let params = plan.parameters() as f64;
    let fixed: u64 = plan
        .tensors
        .iter()
        .zip(&options)
        .filter(|(p, o)| o.is_none() && p.scheme.is_some())
        .map(|(p, _)| p.bytes)
        .sum();
    let bits = |options: &[Option<Options>]| {
        let tuned: u64 = options.iter().flatten().map(|o| o.steps[o.at].1).sum();
        (fixed + tuned) as f64 * 8.0 / params
    };
    let largest = bits(&options);
    if target_bpw > largest + 1e-9 {
        return Err(format!(
            "{target_bpw} bits per weight is out of reach: the largest plan (every tensor at its best scheme) averages {largest:.3}"
        ));
    }
    while bits(&options) > target_bpw {
        // The cheapest step down: least added error per byte saved.
        let best = options
            .iter()
            .enumerate()
            .filter_map(|(i, o)| {
                let o = o.as_ref()?;
                let (cur, next) = (o.steps.get(o.at)?, o.steps.get(o.at + 1)?);
                let saved = cur.1.saturating_sub(next.1).max(1) as f64;
                Some((i, (next.2 - cur.2).max(0.0) / saved))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let Some((i, _)) = best else {
            return Err(format!(
                "{target_bpw} bits per weight is out of reach: the smallest plan averages {:.3}",
                bits(&options)
            ));
        };
        if let Some(o) = options[i].as_mut() {
            o.at += 1;
        }
    }
    for (p, o) in plan.tensors.iter_mut().zip(&options) {
        if let Some(o) = o {
            let (s, bytes, _) = o.steps[o.at];
            p.scheme = Some(s);
            p.bytes = bytes;
            p.reason = Reason::BitBudget;
        }
    }
    plan.preset = format!("bpw {target_bpw}");
    Ok(())
}
