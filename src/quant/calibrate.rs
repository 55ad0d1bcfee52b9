//! Activation ranges for static int8, observed while edgeforge's ONNX
//! evaluator runs the float graph over calibration text: MinMax (the
//! observed extremes), percentile (clip the rarest tails) and entropy (the
//! clipping threshold whose 128-level quantized histogram is closest in KL
//! divergence to the observed one, as TensorRT's calibrator does).
//!
//! Texts run in parallel, one per evaluator run; per-text statistics are
//! merged in text order (minima, maxima, integer bin counts), so ranges do
//! not depend on the thread count.

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;

use crate::format::onnx::eval::{Session, Value};
use crate::format::onnx::OnnxError;

/// How a range is chosen from what was observed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    MinMax,
    /// Keep this percentage of values inside the range, clipping half the rest at each end.
    Percentile(f64),
    Entropy,
}

impl Method {
    pub fn name(self) -> String {
        match self {
            Method::MinMax => "minmax".into(),
            Method::Percentile(p) => format!("percentile {p}"),
            Method::Entropy => "entropy".into(),
        }
    }
}

/// Histogram bins per tensor (TensorRT's and onnxruntime's count).
const BINS: usize = 2048;

/// The encoder graph's inputs for one sequence (batch 1, all attended).
pub fn encoder_inputs(ids: &[u32]) -> Vec<(&'static str, Value)> {
    let n = ids.len();
    let ids: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    vec![
        ("input_ids", Value::i64(vec![1, n], ids)),
        ("attention_mask", Value::i64(vec![1, n], vec![1; n])),
        ("token_type_ids", Value::i64(vec![1, n], vec![0; n])),
    ]
}

/// The sentence embedding the graph computes for one sequence.
pub fn embed(session: &Session, ids: &[u32]) -> Result<Vec<f32>, OnnxError> {
    let out = session.run(encoder_inputs(ids), &mut |_, _| {})?;
    Ok(out["sentence_embedding"]
        .as_f32()
        .map(<[f32]>::to_vec)
        .unwrap_or_default())
}

/// Embeddings of many sequences, in order, computed in parallel.
pub fn embed_all(session: &Session, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, OnnxError> {
    seqs.par_iter().map(|s| embed(session, s)).collect()
}

/// Runs every sequence and folds what `tensors` hold into one statistic
/// per tensor with `observe` (per text) and `merge` (in text order).
fn observe_all<S: Clone + Send>(
    session: &Session,
    seqs: &[Vec<u32>],
    tensors: &[String],
    init: impl Fn(usize) -> S + Sync,
    observe: impl Fn(usize, &mut S, &[f32]) + Sync,
    merge: impl Fn(&mut S, S),
) -> Result<Vec<S>, OnnxError> {
    let index: HashMap<&str, usize> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let per_text: Vec<Vec<S>> = seqs
        .par_iter()
        .map(|s| {
            let mut stats: Vec<S> = (0..tensors.len()).map(&init).collect();
            session.run(encoder_inputs(s), &mut |name, v: &Value| {
                if let (Some(&i), Some(x)) = (index.get(name), v.as_f32()) {
                    observe(i, &mut stats[i], x);
                }
            })?;
            Ok(stats)
        })
        .collect::<Result<_, OnnxError>>()?;
    let mut total: Vec<S> = (0..tensors.len()).map(&init).collect();
    for stats in per_text {
        for (t, s) in total.iter_mut().zip(stats) {
            merge(t, s);
        }
    }
    Ok(total)
}

/// Max |x| of each channel (last axis, `width` wide) of each tensor.
pub fn channel_absmax(
    session: &Session,
    seqs: &[Vec<u32>],
    tensors: &[(String, usize)],
) -> Result<Vec<Vec<f32>>, OnnxError> {
    let names: Vec<String> = tensors.iter().map(|(n, _)| n.clone()).collect();
    observe_all(
        session,
        seqs,
        &names,
        |i| vec![0f32; tensors[i].1],
        |_, m, x| {
            for row in x.chunks(m.len()) {
                m.iter_mut().zip(row).for_each(|(a, v)| *a = a.max(v.abs()));
            }
        },
        |a, b| a.iter_mut().zip(b).for_each(|(x, y)| *x = x.max(y)),
    )
}

/// The calibrated `[lo, hi]` of each tensor, by `method`.
pub fn ranges(
    session: &Session,
    seqs: &[Vec<u32>],
    tensors: &[String],
    method: Method,
) -> Result<BTreeMap<String, (f32, f32)>, OnnxError> {
    let minmax = observe_all(
        session,
        seqs,
        tensors,
        |_| (f32::INFINITY, f32::NEG_INFINITY),
        |_, (lo, hi), x| {
            for &v in x {
                *lo = lo.min(v);
                *hi = hi.max(v);
            }
        },
        |(lo, hi), (l, h)| {
            *lo = lo.min(l);
            *hi = hi.max(h);
        },
    )?;
    let extremes: Vec<(f32, f32)> = minmax
        .iter()
        .map(|&(lo, hi)| {
            if lo <= hi {
                (lo.min(0.0), hi.max(0.0))
            } else {
                (0.0, 0.0)
            }
        })
        .collect();
    let chosen = match method {
        Method::MinMax => extremes,
        Method::Percentile(_) | Method::Entropy => {
            let hists = observe_all(
                session,
                seqs,
                tensors,
                |_| vec![0u64; BINS],
                |i, h, x| {
                    let (lo, hi) = extremes[i];
                    let width = (hi - lo).max(f32::MIN_POSITIVE);
                    for &v in x {
                        let b = (((v - lo) / width) * BINS as f32) as usize;
                        h[b.min(BINS - 1)] += 1;
                    }
                },
                |a, b| a.iter_mut().zip(b).for_each(|(x, y)| *x += y),
            )?;
            hists
                .iter()
                .zip(&extremes)
                .map(|(h, &range)| match method {
                    Method::Percentile(p) => percentile_range(h, range, p),
                    _ => entropy_range(h, range),
                })
                .collect()
        }
    };
    Ok(tensors.iter().cloned().zip(chosen).collect())
}

fn edge((lo, hi): (f32, f32), bin: usize) -> f32 {
    lo + (hi - lo) * bin as f32 / BINS as f32
}

/// The range that keeps `p`% of the counts, clipping equal tails (never past 0).
fn percentile_range(h: &[u64], range: (f32, f32), p: f64) -> (f32, f32) {
    let total: u64 = h.iter().sum();
    // 100% keeps everything observed: the same range MinMax gives.
    if total == 0 || p >= 100.0 {
        return range;
    }
    let tail = ((1.0 - p / 100.0) / 2.0 * total as f64).floor() as u64;
    let (mut lo_bin, mut acc) = (0, 0u64);
    while lo_bin < BINS && acc + h[lo_bin] <= tail {
        acc += h[lo_bin];
        lo_bin += 1;
    }
    let (mut hi_bin, mut acc) = (BINS, 0u64);
    while hi_bin > 0 && acc + h[hi_bin - 1] <= tail {
        acc += h[hi_bin - 1];
        hi_bin -= 1;
    }
    (edge(range, lo_bin).min(0.0), edge(range, hi_bin).max(0.0))
}

/// The threshold pair minimising KL(observed || quantized) over clipping
/// points of the larger tail, scanned in 16-bin steps.
fn entropy_range(h: &[u64], range: (f32, f32)) -> (f32, f32) {
    let total: u64 = h.iter().sum();
    if total == 0 {
        return range;
    }
    let zero_bin = ((-range.0 / (range.1 - range.0).max(f32::MIN_POSITIVE)) * BINS as f32) as usize;
    let zero_bin = zero_bin.min(BINS);
    let levels = 256usize;
    let mut best = (f64::INFINITY, 0usize, BINS);
    // Candidate ranges: shrink both ends proportionally towards zero.
    for step in 0..=(BINS / 16) {
        let keep = 1.0 - step as f64 / (BINS / 16) as f64 * 0.9;
        let lo_bin = zero_bin - ((zero_bin as f64) * keep).round() as usize;
        let hi_bin = zero_bin + (((BINS - zero_bin) as f64) * keep).round() as usize;
        let width = hi_bin - lo_bin;
        if width < levels {
            break;
        }
        // Reference: the clipped mass folded into the end bins. Candidate:
        // the unclipped slice merged into `levels` groups, each group's mass
        // spread over its non-empty bins (so clipping costs what it loses).
        let raw: Vec<f64> = h[lo_bin..hi_bin].iter().map(|&c| c as f64).collect();
        let mut p = raw.clone();
        p[0] += h[..lo_bin].iter().sum::<u64>() as f64;
        *p.last_mut().unwrap() += h[hi_bin..].iter().sum::<u64>() as f64;
        let mut q = vec![0f64; width];
        for g in 0..levels {
            let (a, b) = (g * width / levels, (g + 1) * width / levels);
            let mass: f64 = raw[a..b].iter().sum();
            let nonzero = (a..b).filter(|&j| p[j] > 0.0).count();
            if nonzero > 0 {
                for j in a..b {
                    if p[j] > 0.0 {
                        q[j] = mass / nonzero as f64;
                    }
                }
            }
        }
        let (ps, qs): (f64, f64) = (p.iter().sum(), q.iter().sum());
        let kl: f64 = p
            .iter()
            .zip(&q)
            .filter(|(&pv, _)| pv > 0.0)
            .map(|(&pv, &qv)| {
                let (pv, qv) = (pv / ps, (qv / qs).max(1e-12));
                pv * (pv / qv).ln()
            })
            .sum();
        if kl < best.0 {
            best = (kl, lo_bin, hi_bin);
        }
    }
    (edge(range, best.1).min(0.0), edge(range, best.2).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_clips_rare_tails_and_keeps_zero() {
        let mut h = vec![0u64; BINS];
        h[BINS / 2] = 10_000;
        h[BINS - 1] = 1;
        let (lo, hi) = percentile_range(&h, (-1.0, 1.0), 99.9);
        assert!(lo <= 0.0 && hi < 0.01, "{lo} {hi}");
        assert_eq!(percentile_range(&h, (-1.0, 1.0), 100.0), (-1.0, 1.0));
    }

    #[test]
    fn entropy_keeps_a_uniform_range() {
        let h = vec![5u64; BINS];
        let (lo, hi) = entropy_range(&h, (-1.0, 1.0));
        assert!(lo < -0.9 && hi > 0.9, "{lo} {hi}");
    }
}
