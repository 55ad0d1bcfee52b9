//! A decoder's perplexity, and its KL divergence from a reference's
//! next-token distribution, position by position as `llama-perplexity`
//! computes them: the reference's log-probabilities go through llama.cpp's
//! 16-bit record (`format::logits`) whether they come from a model or from
//! a file, so the two routes give the same figures.

use rayon::prelude::*;
use serde::Serialize;

use super::stats::{covariance, mean_and_uncertainty, Estimate, Spread};
use crate::engine::Decoder;
use crate::format::logits::{self, LogitsError, Record};

/// What a position is compared with.
pub enum Base<'a> {
    /// Nothing: perplexity only.
    None,
    /// Recorded log-probabilities, one per scored position.
    Records(Vec<Record>),
    /// A reference model run on the same tokens.
    Model(&'a Decoder),
}

/// One scored position: the model's negative log-likelihood of the next
/// token and, against a reference, how far the distributions differ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub nll: f64,
    pub vs_base: Option<VsBase>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VsBase {
    pub nll_base: f64,
    pub kld: f64,
    /// p(next) under the model minus under the reference.
    pub p_diff: f64,
    pub same_top: bool,
}

/// Scores positions `first .. seq.len() - 1` of `seq` (each predicts the
/// token after it). `keep_records`: also return the model's own records
/// (to save as a base for later runs).
pub fn score(
    model: &Decoder,
    seq: &[u32],
    first: usize,
    base: Base,
    keep_records: bool,
) -> (Vec<Scored>, Option<Vec<Record>>) {
    assert!(first + 1 < seq.len(), "nothing to score");
    let vocab = model.spec.vocab;
    let rows = seq.len() - first;
    let n = rows - 1;
    let targets = &seq[first + 1..];
    let logits = model.forward(seq, &mut model.new_cache(), rows);
    let base_records = match base {
        Base::None => None,
        Base::Records(r) => Some(r),
        Base::Model(reference) => {
            let ref_logits = reference.forward(seq, &mut reference.new_cache(), rows);
            Some(
                ref_logits[..n * vocab]
                    .par_chunks_exact(vocab)
                    .zip(targets)
                    .map(|(row, &t)| Record::from_logits(row, t as usize).0)
                    .collect(),
            )
        }
    };
    score_rows(
        &logits[..n * vocab],
        vocab,
        targets,
        base_records,
        keep_records,
    )
}

/// Scores logits computed elsewhere (an ONNX graph's) against a
/// reference's logits on the same `seq`: rows for positions `0 .. seq.len()
/// - 1` of each, `vocab` wide; row `i` predicts `seq[i + 1]`.
pub fn score_against(logits: &[f32], reference: &[f32], vocab: usize, seq: &[u32]) -> Vec<Scored> {
    let n = seq.len() - 1;
    assert!(logits.len() >= n * vocab && reference.len() >= n * vocab);
    let targets = &seq[1..];
    let base = reference[..n * vocab]
        .par_chunks_exact(vocab)
        .zip(targets)
        .map(|(row, &t)| Record::from_logits(row, t as usize).0)
        .collect();
    score_rows(&logits[..n * vocab], vocab, targets, Some(base), false).0
}

/// One score per row of `logits` (row `i` predicts `targets[i]`), against
/// the base's records when given.
fn score_rows(
    logits: &[f32],
    vocab: usize,
    targets: &[u32],
    base_records: Option<Vec<Record>>,
    keep_records: bool,
) -> (Vec<Scored>, Option<Vec<Record>>) {
    if let Some(r) = &base_records {
        assert_eq!(
            r.len(),
            targets.len(),
            "one base record per scored position"
        );
    }
    let scored: Vec<(Scored, Option<Record>)> = logits
        .par_chunks_exact(vocab)
        .zip(targets)
        .enumerate()
        .map(|(i, (row, &t))| {
            let t = t as usize;
            let fit = Fit::of(row);
            let nll = fit.nll(row, t);
            let vs_base = base_records
                .as_ref()
                .map(|r| fit.against(row, &r[i], t, nll));
            let record = keep_records.then(|| Record::from_logits(row, t).0);
            (Scored { nll, vs_base }, record)
        })
        .collect();
    let records = keep_records.then(|| scored.iter().filter_map(|(_, r)| r.clone()).collect());
    (scored.into_iter().map(|(s, _)| s).collect(), records)
}

/// A row's maximum and log-sum-exp, in llama-perplexity's precisions.
struct Fit {
    max: f32,
    argmax: usize,
    log_sum_exp: f32,
}

impl Fit {
    fn of(row: &[f32]) -> Self {
        let (mut max, mut argmax) = (row[0], 0);
        for (i, &l) in row.iter().enumerate().skip(1) {
            if l > max {
                (max, argmax) = (l, i);
            }
        }
        let sum: f64 = row.iter().map(|&l| f64::from((l - max).exp())).sum();
        Self {
            max,
            argmax,
            log_sum_exp: sum.ln() as f32,
        }
    }

    fn nll(&self, row: &[f32], target: usize) -> f64 {
        f64::from(self.max + self.log_sum_exp - row[target])
    }

    fn against(&self, row: &[f32], base: &Record, target: usize, nll: f64) -> VsBase {
        let nll_base = -f64::from(base.log_prob(target));
        let log_norm = self.max + self.log_sum_exp;
        let (mut kld, mut top_base, mut top_log_p) = (0f64, 0, f32::NEG_INFINITY);
        for (i, &l) in row.iter().enumerate() {
            let log_p_base = base.log_prob(i);
            if i == 0 || log_p_base > top_log_p {
                (top_base, top_log_p) = (i, log_p_base);
            }
            // llama-perplexity leaves out what its record cannot resolve.
            if log_p_base > -16.0 {
                kld += f64::from(log_p_base.exp() * (log_p_base - l + log_norm));
            }
        }
        VsBase {
            nll_base,
            kld,
            p_diff: f64::from((-nll as f32).exp() - (-nll_base as f32).exp()),
            same_top: top_base == self.argmax,
        }
    }
}

/// What scoring found, in llama-perplexity's terms.
#[derive(Debug, Clone, Serialize)]
pub struct Quality {
    /// Positions scored.
    pub scored: usize,
    pub perplexity: Estimate,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_reference: Option<VsReference>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VsReference {
    pub perplexity_reference: Estimate,
    /// ln(PPL / PPL_reference).
    pub ln_ppl_ratio: Estimate,
    pub ppl_ratio: Estimate,
    pub ppl_diff: Estimate,
    /// Correlation of ln PPL and ln PPL_reference.
    pub ppl_correlation: f64,
    pub kld_mean: Estimate,
    pub kld: Spread,
    /// p(next token) under the model minus under the reference, as a fraction.
    pub delta_p_mean: Estimate,
    pub delta_p_rms: Estimate,
    pub delta_p: Spread,
    /// Fraction of positions where both rank the same token first.
    pub same_top1: Estimate,
}

/// Sums in position order, so the figures do not depend on thread count.
pub fn summarize(positions: &[Scored]) -> Quality {
    let count = positions.len();
    let sum = |f: &dyn Fn(&Scored) -> f64| positions.iter().map(f).sum::<f64>();
    let log_ppl = mean_and_uncertainty(sum(&|s| s.nll), sum(&|s| s.nll * s.nll), count);
    let perplexity = Estimate {
        value: log_ppl.value.exp(),
        uncertainty: log_ppl.value.exp() * log_ppl.uncertainty,
    };
    let bases: Vec<VsBase> = positions.iter().filter_map(|s| s.vs_base).collect();
    let vs_reference = (bases.len() == count && count > 0).then(|| {
        let b = |f: &dyn Fn(&VsBase) -> f64| bases.iter().map(f).sum::<f64>();
        let log_base =
            mean_and_uncertainty(b(&|v| v.nll_base), b(&|v| v.nll_base * v.nll_base), count);
        let cov = covariance(
            sum(&|s| s.nll),
            b(&|v| v.nll_base),
            positions
                .iter()
                .filter_map(|s| s.vs_base.map(|v| s.nll * v.nll_base))
                .sum(),
            count,
        );
        let ppl_base = Estimate {
            value: log_base.value.exp(),
            uncertainty: log_base.value.exp() * log_base.uncertainty,
        };
        let ratio_unc = (log_ppl.uncertainty.powi(2) + log_base.uncertainty.powi(2) - 2.0 * cov)
            .max(0.0)
            .sqrt();
        let ln_ratio = log_ppl.value - log_base.value;
        let ppl_cov = perplexity.value * ppl_base.value * cov;
        let mse =
            mean_and_uncertainty(b(&|v| v.p_diff * v.p_diff), b(&|v| v.p_diff.powi(4)), count);
        let rms = mse.value.sqrt();
        let same = b(&|v| f64::from(u8::from(v.same_top))) / count as f64;
        VsReference {
            perplexity_reference: ppl_base,
            ln_ppl_ratio: Estimate {
                value: ln_ratio,
                uncertainty: ratio_unc,
            },
            ppl_ratio: Estimate {
                value: ln_ratio.exp(),
                uncertainty: ln_ratio.exp() * ratio_unc,
            },
            ppl_diff: Estimate {
                value: perplexity.value - ppl_base.value,
                uncertainty: (perplexity.uncertainty.powi(2) + ppl_base.uncertainty.powi(2)
                    - 2.0 * ppl_cov)
                    .max(0.0)
                    .sqrt(),
            },
            ppl_correlation: cov / (log_ppl.uncertainty * log_base.uncertainty),
            kld_mean: mean_and_uncertainty(b(&|v| v.kld), b(&|v| v.kld * v.kld), count),
            kld: Spread::of(bases.iter().map(|v| v.kld).collect()),
            delta_p_mean: mean_and_uncertainty(
                b(&|v| v.p_diff),
                b(&|v| v.p_diff * v.p_diff),
                count,
            ),
            delta_p_rms: Estimate {
                value: rms,
                uncertainty: if rms > 0.0 {
                    0.5 / rms * mse.uncertainty
                } else {
                    0.0
                },
            },
            delta_p: Spread::of(bases.iter().map(|v| v.p_diff).collect()),
            same_top1: Estimate {
                value: same,
                uncertainty: (same * (1.0 - same) / (count as f64 - 1.0).max(1.0)).sqrt(),
            },
        }
    });
    Quality {
        scored: count,
        perplexity,
        vs_reference,
    }
}

/// Where a chunked run's reference comes from.
pub enum ChunkBase<'a> {
    None,
    File(&'a mut logits::Reader),
    Model(&'a Decoder),
}

/// llama-perplexity's chunked evaluation: `n_chunk` consecutive chunks of
/// `ctx` tokens, each run from an empty cache with its first token replaced
/// by `bos` (when the model adds one), scored over its second half.
/// `save`: write the model's own records, a base for later runs.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_chunks(
    model: &Decoder,
    bos: Option<u32>,
    tokens: &[u32],
    ctx: usize,
    n_chunk: usize,
    mut base: ChunkBase,
    mut save: Option<&mut logits::Writer>,
    on_chunk: &mut dyn FnMut(usize),
) -> Result<Vec<Scored>, LogitsError> {
    assert!(tokens.len() >= ctx * n_chunk, "not enough tokens");
    let first = ctx / 2;
    let mut all = Vec::with_capacity(n_chunk * logits::scored_per_chunk(ctx));
    for (c, chunk) in tokens.chunks_exact(ctx).take(n_chunk).enumerate() {
        let mut seq = chunk.to_vec();
        if let Some(b) = bos {
            seq[0] = b;
        }
        let this_base = match &mut base {
            ChunkBase::None => Base::None,
            ChunkBase::File(reader) => Base::Records(reader.next_chunk()?),
            ChunkBase::Model(reference) => Base::Model(reference),
        };
        let (scored, records) = score(model, &seq, first, this_base, save.is_some());
        if let (Some(w), Some(r)) = (save.as_deref_mut(), records) {
            w.write_chunk(&r)?;
        }
        all.extend(scored);
        on_chunk(c + 1);
    }
    Ok(all)
}
