//! Scheme passes over the float graph: `fp16` stores float constants as
//! float16 behind DEQUANTIZE (TFLite's float16 post-training layout, what
//! GPU delegates take; the arithmetic stays f32), `int8` makes every
//! activation and constant int8 (full-integer: per-channel symmetric
//! FULLY_CONNECTED weights, int32 biases at input × weight scale, per-tensor
//! asymmetric activations from calibrated ranges) with a DEQUANTIZE on the
//! float output.

use half::f16;

use super::bert::{BertGraph, MASK_MARGIN};
use super::calibrate::Ranges;
use super::graph::{ElemType, Graph, Node, Op, Quant};

/// Float constants as float16, each behind a DEQUANTIZE placed before the
/// first node. Values f16 cannot hold (LayerNorm's 1e-12 epsilon) stay f32.
pub fn to_fp16(g: &Graph) -> Graph {
    let mut out = g.clone();
    let mut dequantize = Vec::new();
    for t in 0..g.tensors.len() {
        let Some(values) = g.f32_values(t).filter(|_| g.tensors[t].ty == ElemType::F32) else {
            continue;
        };
        let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
        // Weights may lose their tiniest values to zero; a tensor that would
        // vanish entirely (LayerNorm's epsilon) or overflow stays f32.
        let max_abs = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let representable = halves.iter().all(|h| h.is_finite())
            && (max_abs == 0.0 || max_abs >= f16::MIN_POSITIVE.to_f32());
        if !representable {
            continue;
        }
        // The f32 tensor consumers read becomes DEQUANTIZE's output; the
        // stored constant is a new float16 tensor.
        let stored = out.tensors.len();
        let mut half_tensor = g.tensors[t].clone();
        half_tensor.name = format!("{}.fp16", g.tensors[t].name);
        half_tensor.ty = ElemType::F16;
        half_tensor.data = Some(halves.iter().flat_map(|h| h.to_le_bytes()).collect());
        out.tensors.push(half_tensor);
        out.tensors[t].data = None;
        dequantize.push(Node {
            op: Op::Dequantize,
            inputs: vec![stored],
            outputs: vec![t],
        });
    }
    dequantize.append(&mut out.nodes);
    out.nodes = dequantize;
    out
}

/// Asymmetric int8 parameters covering `[lo, hi]` (and 0, exactly).
pub fn asymmetric(lo: f32, hi: f32) -> Quant {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let zp = (-128.0 - lo / scale).round().clamp(-128.0, 127.0) as i64;
    Quant::per_tensor(scale, zp)
}

fn quantize_values(values: &[f32], q: &Quant) -> Vec<u8> {
    let (s, z) = (q.scale[0], q.zero_point[0]);
    values
        .iter()
        .map(|&v| ((v / s).round() as i64 + z).clamp(-128, 127) as i8 as u8)
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum LowerError {
    #[error("tensor `{0}` has no calibrated range (the calibration never reached it)")]
    Uncalibrated(String),
}

/// The full-integer int8 graph of `bert` with activation ranges `ranges`.
pub fn to_int8(bert: &BertGraph, ranges: &Ranges) -> Result<Graph, LowerError> {
    let g = &bert.graph;
    let mut out = g.clone();
    let float_const = |t: usize| g.tensors[t].ty == ElemType::F32 && g.tensors[t].data.is_some();

    // Activations, in execution order so pass-through ops copy their input's parameters.
    for n in &g.nodes {
        let o = n.outputs[0];
        if g.tensors[o].ty != ElemType::F32 {
            continue;
        }
        let quant = match &n.op {
            Op::Softmax { .. } => Quant::per_tensor(1.0 / 256.0, -128),
            Op::L2Norm => Quant::per_tensor(1.0 / 128.0, 0),
            Op::Reshape { .. } | Op::Transpose | Op::Gather => {
                let src = n.inputs[0];
                if float_const(src) {
                    let v = g.f32_values(src).expect("constant");
                    let (lo, hi) = min_max(&v);
                    asymmetric(lo, hi)
                } else {
                    out.tensors[src].quant.clone().expect("producer ran first")
                }
            }
            _ => {
                let range = match bert.masked_scores.iter().find(|(m, _)| *m == o) {
                    Some(&(_, raw)) => ranges.get(raw).map(|(lo, hi)| (lo - MASK_MARGIN, hi)),
                    None => ranges.get(o),
                };
                let (lo, hi) =
                    range.ok_or_else(|| LowerError::Uncalibrated(g.tensors[o].name.clone()))?;
                asymmetric(lo, hi)
            }
        };
        out.tensors[o].ty = ElemType::I8;
        out.tensors[o].quant = Some(quant);
    }

    // Constants: FULLY_CONNECTED weights per channel, biases int32, the rest
    // per tensor (a gathered table shares its output's parameters).
    let mut done = vec![false; g.tensors.len()];
    for n in &g.nodes {
        match n.op {
            Op::FullyConnected => {
                let (x, w, b) = (n.inputs[0], n.inputs[1], n.inputs[2]);
                let values = g.f32_values(w).expect("constant weights");
                let cols = g.tensors[w].shape[1] as usize;
                let scales: Vec<f32> = values
                    .chunks_exact(cols)
                    .map(|row| {
                        (row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0)
                            .max(f32::MIN_POSITIVE)
                    })
                    .collect();
                let data: Vec<u8> = values
                    .chunks_exact(cols)
                    .zip(&scales)
                    .flat_map(|(row, &s)| {
                        row.iter()
                            .map(move |&v| (v / s).round().clamp(-127.0, 127.0) as i8 as u8)
                    })
                    .collect();
                let wt = &mut out.tensors[w];
                wt.ty = ElemType::I8;
                wt.data = Some(data);
                wt.quant = Some(Quant {
                    scale: scales.clone(),
                    zero_point: vec![0; scales.len()],
                    axis: 0,
                });
                let sx = out.tensors[x].quant.as_ref().expect("activation").scale[0];
                let bias = g.f32_values(b).expect("constant bias");
                let bscales: Vec<f32> = scales.iter().map(|&s| sx * s).collect();
                let bt = &mut out.tensors[b];
                bt.ty = ElemType::I32;
                bt.data = Some(
                    bias.iter()
                        .zip(&bscales)
                        .flat_map(|(&v, &s)| {
                            ((v as f64 / s as f64)
                                .round()
                                .clamp(i32::MIN as f64, i32::MAX as f64)
                                as i32)
                                .to_le_bytes()
                        })
                        .collect(),
                );
                bt.quant = Some(Quant {
                    scale: bscales,
                    zero_point: vec![0; scales.len()],
                    axis: 0,
                });
                done[w] = true;
                done[b] = true;
            }
            Op::Gather if float_const(n.inputs[0]) => {
                let table = n.inputs[0];
                let q = out.tensors[n.outputs[0]]
                    .quant
                    .clone()
                    .expect("assigned above");
                let values = g.f32_values(table).expect("constant");
                out.tensors[table].ty = ElemType::I8;
                out.tensors[table].data = Some(quantize_values(&values, &q));
                out.tensors[table].quant = Some(q);
                done[table] = true;
            }
            _ => {}
        }
    }
    for (t, &done) in done.iter().enumerate() {
        if done || !float_const(t) {
            continue;
        }
        let values = g.f32_values(t).expect("constant");
        let (lo, hi) = min_max(&values);
        let q = asymmetric(lo, hi);
        out.tensors[t].ty = ElemType::I8;
        out.tensors[t].data = Some(quantize_values(&values, &q));
        out.tensors[t].quant = Some(q);
    }

    // Float at the edge: the int8 embedding is dequantized for the caller.
    let last = g.outputs[0];
    out.tensors[last].name = format!("{}.int8", g.tensors[last].name);
    let shape = g.tensors[last].shape.clone();
    let name = g.tensors[last].name.clone();
    let f = out.push(Op::Dequantize, &[last], &name, &shape, ElemType::F32);
    out.outputs = vec![f];
    Ok(out)
}

pub fn min_max(v: &[f32]) -> (f32, f32) {
    v.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}
