//! Quantization error of a tensor: RMSE, relative RMSE (RMSE / RMS of the
//! original), SQNR in dB and the largest absolute error. Sums run in f64 over
//! fixed chunks combined in order, so results do not depend on threads.

use rayon::prelude::*;
use serde::Serialize;

/// Error of a reconstruction against its original.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct ErrorStats {
    pub rmse: f64,
    /// RMSE over the standard deviation of the original weights.
    pub rel_rmse: f64,
    /// 10·log10(signal power / noise power); infinite when exact.
    pub sqnr_db: f64,
    pub max_abs_err: f64,
}

const CHUNK: usize = 1 << 14;

impl ErrorStats {
    /// Compares `orig` with `recon` (same length).
    pub fn between(orig: &[f32], recon: &[f32]) -> Self {
        let partials: Vec<(f64, f64, f64, f64)> = orig
            .par_chunks(CHUNK)
            .zip(recon.par_chunks(CHUNK))
            .map(|(a, b)| {
                let (mut sum, mut sig, mut noise, mut max) = (0f64, 0f64, 0f64, 0f64);
                for (&x, &y) in a.iter().zip(b) {
                    let (x, e) = (f64::from(x), f64::from(x) - f64::from(y));
                    sum += x;
                    sig += x * x;
                    noise += e * e;
                    max = max.max(e.abs());
                }
                (sum, sig, noise, max)
            })
            .collect();
        let (sum, sig, noise, max) = partials
            .iter()
            .fold((0.0, 0.0, 0.0, 0.0), |(u, s, n, m), &(a, b, c, d)| {
                (u + a, s + b, n + c, f64::max(m, d))
            });
        let n = orig.len().max(1) as f64;
        let rmse = (noise / n).sqrt();
        let mean = sum / n;
        let rms = (sig / n - mean * mean).max(0.0).sqrt();
        Self {
            rmse,
            rel_rmse: if rms > 0.0 { rmse / rms } else { 0.0 },
            sqnr_db: if noise > 0.0 {
                10.0 * (sig / noise).log10()
            } else {
                f64::INFINITY
            },
            max_abs_err: max,
        }
    }
}
