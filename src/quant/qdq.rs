//! Static int8 (QDQ) planning for an encoder graph: calibrate activation
//! ranges on text, measure each quantizable op's sensitivity (quantize that
//! op alone, cosine drop of the sentence embeddings against the float graph),
//! then quantize everything and move the most sensitive ops back to float
//! one at a time until the mean cosine meets the budget.

use std::collections::BTreeMap;

use serde::Serialize;

use super::calibrate::{self, Method};
use crate::engine::bert::TensorSource;
use crate::format::onnx::bert::{
    self, ActQuant, ActivationType, BertGraph, BuildError, QdqPlan, Storage,
};
use crate::format::onnx::eval::Session;
use crate::format::onnx::OnnxError;
use crate::model::BertConfig;

#[derive(Debug, thiserror::Error)]
pub enum QdqError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Eval(#[from] OnnxError),
}

/// What the planner measured for one op.
#[derive(Debug, Clone, Serialize)]
pub struct OpSensitivity {
    pub op: String,
    /// Mean cosine drop with only this op in int8.
    pub cosine_drop: f64,
    pub int8: bool,
}

/// What the planner is asked for.
#[derive(Debug, Clone, Copy)]
pub struct Int8Options {
    pub method: Method,
    /// Mean cosine to the float graph the plan must keep on the probe texts.
    pub min_cosine: f64,
    /// Weights in [-63, 63] (see `QdqPlan::reduce_range`).
    pub reduce_range: bool,
    pub activations: ActivationType,
    /// SmoothQuant's migration strength α (0..=1): `None` smooths nothing.
    pub smooth_alpha: Option<f32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Int8Plan {
    #[serde(skip)]
    pub plan: QdqPlan,
    pub method: String,
    pub activation_type: ActivationType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smooth_alpha: Option<f32>,
    /// Most sensitive first.
    pub sensitivity: Vec<OpSensitivity>,
    pub float_ops: Vec<String>,
    /// Mean cosine to the float graph on the sensitivity texts, as planned.
    pub cosine_planned: f64,
    pub min_cosine: f64,
}

pub fn mean_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let n = a.len().max(1) as f64;
    a.iter().zip(b).map(|(x, y)| cosine(x, y)).sum::<f64>() / n
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let na: f64 = a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na * nb)
}

fn session_of(g: &BertGraph) -> Result<Session, OnnxError> {
    Session::new(&g.model, std::path::Path::new("<graph being planned>"))
}

/// SmoothQuant's divisors (Xiao et al. 2023) for every activation a weighted
/// op reads: `s_j = max|x_j|^α / max|w_j|^(1-α)` per input channel `j`, the
/// weight maximum taken over every op reading the tensor (q, k and v share
/// one), activation maxima over the calibration texts.
fn smoothing(
    c: &BertConfig,
    w: &TensorSource,
    calibration: &[Vec<u32>],
    alpha: f32,
) -> Result<BTreeMap<String, Vec<f32>>, QdqError> {
    let float = bert::build(c, w, &Storage::F32, &BTreeMap::new())?;
    let mut weight_max: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for op in float
        .ops
        .iter()
        .filter(|o| o.weight && !o.weight_row_max.is_empty())
    {
        let m = weight_max
            .entry(op.activations[0].clone())
            .or_insert_with(|| vec![0.0; op.weight_row_max.len()]);
        m.iter_mut()
            .zip(&op.weight_row_max)
            .for_each(|(a, &b)| *a = a.max(b));
    }
    let tensors: Vec<(String, usize)> = weight_max
        .iter()
        .map(|(t, m)| (t.clone(), m.len()))
        .collect();
    let session = session_of(&float)?;
    let act_max = calibrate::channel_absmax(&session, calibration, &tensors)?;
    Ok(weight_max
        .into_iter()
        .zip(act_max)
        .map(|((t, wm), am)| {
            let s = am
                .iter()
                .zip(&wm)
                .map(|(&a, &w)| {
                    if a <= 0.0 || w <= 0.0 {
                        return 1.0;
                    }
                    (a.powf(alpha) / w.powf(1.0 - alpha)).clamp(1e-5, 1e5)
                })
                .collect();
            (t, s)
        })
        .collect())
}

/// Plans static int8 for the encoder: `calibration` sets the ranges,
/// `probe` (a few of the same texts) measures sensitivity and the budget.
pub fn plan_int8(
    c: &BertConfig,
    w: &TensorSource,
    calibration: &[Vec<u32>],
    probe: &[Vec<u32>],
    opts: &Int8Options,
) -> Result<Int8Plan, QdqError> {
    let Int8Options {
        method,
        min_cosine,
        reduce_range,
        activations: act_type,
        smooth_alpha,
    } = *opts;
    let empty = BTreeMap::new();
    let smooth = match smooth_alpha {
        Some(alpha) => smoothing(c, w, calibration, alpha)?,
        None => BTreeMap::new(),
    };
    // The float graph, smoothed where asked (an int8 plan of no ops).
    let float_plan = QdqPlan {
        smooth: smooth.clone(),
        ..QdqPlan::default()
    };
    let float = bert::build(c, w, &Storage::Int8(float_plan), &empty)?;
    let float_session = session_of(&float)?;
    let mut tensors: Vec<String> = Vec::new();
    for op in &float.ops {
        for a in &op.activations {
            if !tensors.contains(a) {
                tensors.push(a.clone());
            }
        }
    }
    tracing::info!(
        "calibrating {} activations on {} texts ({})",
        tensors.len(),
        calibration.len(),
        method.name()
    );
    let ranges = calibrate::ranges(&float_session, calibration, &tensors, method)?;
    let activations: BTreeMap<String, ActQuant> = ranges
        .iter()
        .map(|(t, &(lo, hi))| (t.clone(), ActQuant::from_range(lo, hi, act_type)))
        .collect();
    let reference = calibrate::embed_all(&float_session, probe)?;
    drop(float_session);
    let op_names: Vec<String> = float.ops.iter().map(|o| o.name.clone()).collect();
    drop(float);

    let score = |ops: &[&String]| -> Result<f64, QdqError> {
        let plan = QdqPlan {
            ops: ops.iter().map(|s| s.to_string()).collect(),
            activations: activations.clone(),
            reduce_range,
            smooth: smooth.clone(),
        };
        let g = bert::build(c, w, &Storage::Int8(plan), &empty)?;
        let s = session_of(&g)?;
        drop(g);
        Ok(mean_cosine(&calibrate::embed_all(&s, probe)?, &reference))
    };
    let mut sensitivity = Vec::with_capacity(op_names.len());
    for op in &op_names {
        let started = std::time::Instant::now();
        let drop = 1.0 - score(&[op])?;
        tracing::debug!("{op}: scored in {:.2}s", started.elapsed().as_secs_f64());
        tracing::debug!("sensitivity {op}: cosine drop {drop:.3e}");
        sensitivity.push(OpSensitivity {
            op: op.clone(),
            cosine_drop: drop,
            int8: true,
        });
    }
    // Most sensitive first; ties keep graph order.
    sensitivity.sort_by(|a, b| b.cosine_drop.total_cmp(&a.cosine_drop));
    // The fewest most-sensitive ops to keep in float for the budget, by
    // bisection over that count (the cosine rises with it, near enough).
    let with_float = |k: usize| -> Result<f64, QdqError> {
        let kept: Vec<&String> = sensitivity[k..].iter().map(|s| &s.op).collect();
        if kept.is_empty() {
            return Ok(1.0);
        }
        let cos = score(&kept)?;
        tracing::info!("{k} most sensitive ops in float: cosine {cos:.6}");
        Ok(cos)
    };
    let all = with_float(0)?;
    let (mut k, mut cos) = (0, all);
    if all < min_cosine {
        let (mut lo, mut hi, mut hi_cos) = (0, sensitivity.len(), 1.0);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            let c = with_float(mid)?;
            if c >= min_cosine {
                (hi, hi_cos) = (mid, c);
            } else {
                lo = mid;
            }
        }
        (k, cos) = (hi, hi_cos);
    }
    for s in &mut sensitivity[..k] {
        s.int8 = false;
    }
    let plan = QdqPlan {
        ops: sensitivity
            .iter()
            .filter(|s| s.int8)
            .map(|s| s.op.clone())
            .collect(),
        // The builder writes parameters only for activations an int8 op reads.
        activations,
        reduce_range,
        smooth,
    };
    Ok(Int8Plan {
        plan,
        method: method.name(),
        activation_type: act_type,
        smooth_alpha,
        float_ops: sensitivity
            .iter()
            .filter(|s| !s.int8)
            .map(|s| s.op.clone())
            .collect(),
        sensitivity,
        cosine_planned: cos,
        min_cosine,
    })
}
