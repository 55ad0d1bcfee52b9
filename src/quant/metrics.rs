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

/// Elements per partial sum.
pub(crate) const CHUNK: usize = 1 << 14;

/// Sum, sum of squares, squared error and largest error of one chunk.
pub(crate) type Partial = (f64, f64, f64, f64);

/// Sum, sum of squares, squared error and largest error of one chunk, in
/// eight independent f64 lanes (one serial chain was 4 cycles per weight,
/// half of a Q4_0 quantization), combined in a fixed order.
pub(crate) fn chunk_sums(a: &[f32], b: &[f32]) -> Partial {
    const LANES: usize = 8;
    let (mut sum, mut sig, mut noise, mut max) =
        ([0f64; LANES], [0f64; LANES], [0f64; LANES], [0f64; LANES]);
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (xa, ya) in ac.zip(bc) {
        for l in 0..LANES {
            let (x, e) = (f64::from(xa[l]), f64::from(xa[l]) - f64::from(ya[l]));
            sum[l] += x;
            sig[l] += x * x;
            noise[l] += e * e;
            max[l] = max[l].max(e.abs());
        }
    }
    for (l, (&x, &y)) in ar.iter().zip(br).enumerate() {
        let (x, e) = (f64::from(x), f64::from(x) - f64::from(y));
        sum[l] += x;
        sig[l] += x * x;
        noise[l] += e * e;
        max[l] = max[l].max(e.abs());
    }
    (
        sum.iter().sum(),
        sig.iter().sum(),
        noise.iter().sum(),
        max.iter().fold(0f64, |m, &v| m.max(v)),
    )
}

impl ErrorStats {
    /// A reconstruction equal to its original.
    pub fn exact() -> Self {
        Self {
            rmse: 0.0,
            rel_rmse: 0.0,
            sqnr_db: f64::INFINITY,
            max_abs_err: 0.0,
        }
    }

    /// Compares `orig` with `recon` (same length).
    pub fn between(orig: &[f32], recon: &[f32]) -> Self {
        let partials: Vec<(f64, f64, f64, f64)> = orig
            .par_chunks(CHUNK)
            .zip(recon.par_chunks(CHUNK))
            .map(|(a, b)| chunk_sums(a, b))
            .collect();
        Self::combine(&partials, orig.len())
    }

    /// The figures from partial sums, combined in the order given.
    pub(crate) fn combine(partials: &[Partial], len: usize) -> Self {
        let (sum, sig, noise, max) = partials
            .iter()
            .fold((0.0, 0.0, 0.0, 0.0), |(u, s, n, m), &(a, b, c, d)| {
                (u + a, s + b, n + c, f64::max(m, d))
            });
        let n = len.max(1) as f64;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::gguf::GgmlType;

    /// Measuring while encoding gives `quantize`'s bytes and the figures of
    /// a whole decode afterwards (to f64 rounding: the partial sums split
    /// differently).
    #[test]
    fn measured_quantization_gives_the_same_bytes_and_figures() {
        let n = 2 * CHUNK + 3 * 256;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 2654435761usize) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        for (scheme, row) in [("Q4_0", 96), ("Q6_K", 256), ("Q8_0", 32 * 7)] {
            let s: crate::quant::Scheme = scheme.parse().unwrap();
            let ty: GgmlType = crate::quant::ggml_type(s).unwrap();
            let x = &x[..n / row * row];
            let enc = crate::quant::quantize(s, x, row).unwrap();
            let mut back = vec![0f32; x.len()];
            crate::quant::dequantize(ty, &enc.data, &mut back).unwrap();
            let whole = ErrorStats::between(x, &back);
            let (menc, measured) = crate::quant::quantize_measured(s, x, row).unwrap().unwrap();
            assert_eq!(menc.data, enc.data, "{scheme}");
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1e-30);
            assert!(
                close(whole.rmse, measured.rmse),
                "{scheme}: {whole:?} {measured:?}"
            );
            assert!(close(whole.sqnr_db, measured.sqnr_db), "{scheme}");
            assert_eq!(whole.max_abs_err, measured.max_abs_err, "{scheme}");
            assert!(whole.rmse > 0.0);
        }
    }
}
