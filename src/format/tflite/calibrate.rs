//! Activation ranges for the int8 pass: the float graph runs (our
//! evaluator, f32) on calibration texts and every float activation's values
//! are recorded. MinMax keeps the extremes; Percentile keeps, per sign, the
//! magnitude below which that share of the values fall (outliers clipped),
//! from log-spaced histograms (64 bins per octave, about 1% resolution) so
//! one pass suffices. Texts run in parallel; extremes and bin counts merge
//! the same in any order, so the ranges are identical at any thread count.

use rayon::prelude::*;

use super::bert::{BertGraph, Layout};
use super::eval::{EvalError, Evaluator, Value};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    MinMax,
    /// Keep this percentage of each sign's values (e.g. 99.99).
    Percentile(f64),
}

impl Method {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("minmax") {
            return Ok(Self::MinMax);
        }
        let p = s.strip_prefix("percentile").ok_or_else(|| {
            format!("unknown calibration method `{s}` (minmax, percentile, percentile:99.99)")
        })?;
        let p = match p.strip_prefix(':') {
            Some(v) => v
                .parse::<f64>()
                .map_err(|_| format!("`{s}`: not a percentage"))?,
            None if p.is_empty() => 99.99,
            None => return Err(format!("unknown calibration method `{s}`")),
        };
        if !(50.0..=100.0).contains(&p) {
            return Err(format!("`{s}`: the percentile must be between 50 and 100"));
        }
        Ok(Self::Percentile(p))
    }

    pub fn name(&self) -> String {
        match self {
            Self::MinMax => "minmax".into(),
            Self::Percentile(p) => format!("percentile:{p}"),
        }
    }
}

const OCTAVES: i32 = 80;
const PER_OCTAVE: i32 = 64;
const BINS: usize = (OCTAVES * PER_OCTAVE) as usize;
/// log2 of the smallest magnitude with a bin of its own.
const LOWEST: i32 = -40;

#[derive(Clone)]
struct Stats {
    lo: f32,
    hi: f32,
    /// Counts of |x| per log bin, for negative and non-negative values.
    neg: Vec<u64>,
    pos: Vec<u64>,
}

impl Stats {
    fn new(hist: bool) -> Self {
        let n = if hist { BINS } else { 0 };
        Self {
            lo: f32::INFINITY,
            hi: f32::NEG_INFINITY,
            neg: vec![0; n],
            pos: vec![0; n],
        }
    }
    fn add(&mut self, xs: &[f32]) {
        for &x in xs {
            self.lo = self.lo.min(x);
            self.hi = self.hi.max(x);
        }
        if self.pos.is_empty() {
            return;
        }
        for &x in xs {
            let bin = bin(x.abs());
            if x < 0.0 {
                self.neg[bin] += 1
            } else {
                self.pos[bin] += 1
            }
        }
    }
    fn merge(mut self, other: &Stats) -> Self {
        self.lo = self.lo.min(other.lo);
        self.hi = self.hi.max(other.hi);
        self.neg
            .iter_mut()
            .zip(&other.neg)
            .for_each(|(a, b)| *a += b);
        self.pos
            .iter_mut()
            .zip(&other.pos)
            .for_each(|(a, b)| *a += b);
        self
    }
    fn range(&self, method: Method) -> Option<(f32, f32)> {
        if self.lo > self.hi {
            return None;
        }
        match method {
            Method::MinMax => Some((self.lo, self.hi)),
            Method::Percentile(p) => {
                let total: u64 = self.neg.iter().sum::<u64>() + self.pos.iter().sum::<u64>();
                let tail = ((1.0 - p / 100.0) * total as f64).floor() as u64;
                let clip = |counts: &[u64]| -> f32 {
                    let mut seen = 0u64;
                    for b in (0..BINS).rev() {
                        seen += counts[b];
                        if seen > tail {
                            return edge(b + 1);
                        }
                    }
                    0.0
                };
                Some((
                    (-clip(&self.neg)).max(self.lo),
                    clip(&self.pos).min(self.hi),
                ))
            }
        }
    }
}

fn bin(a: f32) -> usize {
    if a == 0.0 || !a.is_finite() {
        return if a.is_finite() { 0 } else { BINS - 1 };
    }
    ((a.log2() - LOWEST as f32) * PER_OCTAVE as f32)
        .floor()
        .clamp(0.0, (BINS - 1) as f32) as usize
}

/// Upper edge of the bins below `b`.
fn edge(b: usize) -> f32 {
    2f32.powf(b as f32 / PER_OCTAVE as f32 + LOWEST as f32)
}

/// Per tensor, the calibrated `(lo, hi)` of its values.
pub struct Ranges(Vec<Option<(f32, f32)>>);

impl Ranges {
    pub fn get(&self, t: usize) -> Option<(f32, f32)> {
        self.0.get(t).copied().flatten()
    }
}

/// The parts of a `layout` tensor of `shape` that belong to the first `n`
/// of `seq` tokens.
fn real_tokens<'a>(
    v: &'a [f32],
    shape: &[i32],
    layout: Layout,
    n: usize,
    seq: usize,
) -> Vec<&'a [f32]> {
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    match layout {
        Layout::Whole => vec![v],
        Layout::Rows => {
            let w = v.len() / seq.max(1);
            vec![&v[..n * w]]
        }
        Layout::HeadRows => {
            let w = dims[2..].iter().product::<usize>();
            (0..dims[0]).map(|h| &v[h * seq * w..][..n * w]).collect()
        }
        Layout::Scores => (0..dims[0])
            .flat_map(|h| (0..n).map(move |r| (h, r)))
            .map(|(h, r)| &v[(h * seq + r) * seq..][..n])
            .collect(),
    }
}

/// Runs the float graph on each `(input_ids, attention_mask)` sample and
/// returns every float activation's range by `method`, over real tokens
/// only: padded rows never reach the output (keys are masked, pooling
/// zeroes them), so their values must not widen the int8 ranges.
pub fn calibrate(
    bert: &BertGraph,
    samples: &[(Vec<i32>, Vec<i32>)],
    method: Method,
) -> Result<Ranges, EvalError> {
    let graph = &bert.graph;
    let eval = Evaluator::new(graph)?;
    let hist = matches!(method, Method::Percentile(_));
    let fresh = || vec![None::<Stats>; graph.tensors.len()];
    let merge = |mut a: Vec<Option<Stats>>, b: Vec<Option<Stats>>| {
        for (x, y) in a.iter_mut().zip(b) {
            *x = match (x.take(), y) {
                (Some(p), Some(q)) => Some(p.merge(&q)),
                (p, q) => p.or(q),
            };
        }
        a
    };
    let stats = samples
        .par_iter()
        .map(|(ids, mask)| {
            let (n, seq) = (mask.iter().filter(|&&m| m != 0).count(), mask.len());
            let mut stats = fresh();
            let mut observe = |t: usize, v: &[f32]| {
                let s = stats[t].get_or_insert_with(|| Stats::new(hist));
                for part in real_tokens(v, &graph.tensors[t].shape, bert.layout[t], n, seq) {
                    s.add(part);
                }
            };
            eval.run(
                vec![Value::I32(ids.clone()), Value::I32(mask.clone())],
                Some(&mut observe),
            )?;
            Ok(stats)
        })
        .try_reduce(fresh, |a, b| Ok(merge(a, b)))?;
    Ok(Ranges(
        stats
            .iter()
            .map(|s| s.as_ref().and_then(|s| s.range(method)))
            .collect(),
    ))
}
