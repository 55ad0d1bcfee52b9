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

/// Sum, sum of squares, squared error and largest error of one chunk, in
/// eight independent f64 lanes (one serial chain was 4 cycles per weight,
/// half of a Q4_0 quantization), combined in a fixed order.
fn chunk_sums(a: &[f32], b: &[f32]) -> (f64, f64, f64, f64) {
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
    /// Compares `orig` with `recon` (same length).
    pub fn between(orig: &[f32], recon: &[f32]) -> Self {
        let partials: Vec<(f64, f64, f64, f64)> = orig
            .par_chunks(CHUNK)
            .zip(recon.par_chunks(CHUNK))
            .map(|(a, b)| chunk_sums(a, b))
            .collect();
        Self::combine(&partials, orig.len())
    }

    /// As [`between`](Self::between), with the reconstruction made chunk by
    /// chunk: `decode(start, out)` fills `out` with elements `start..` of it.
    /// The same chunks and sums, so the same figures, without a
    /// whole-tensor buffer (its memset and page faults were 10% of a Q4_0
    /// quantization). Chunks are 16384 elements: whole blocks of every format.
    pub fn between_decoded(orig: &[f32], decode: impl Fn(usize, &mut [f32]) + Sync) -> Self {
        let partials: Vec<(f64, f64, f64, f64)> = orig
            .par_chunks(CHUNK)
            .enumerate()
            .map_init(Vec::new, |buf, (i, a)| {
                buf.resize(a.len(), 0f32);
                decode(i * CHUNK, buf);
                chunk_sums(a, buf)
            })
            .collect();
        Self::combine(&partials, orig.len())
    }

    fn combine(partials: &[(f64, f64, f64, f64)], len: usize) -> Self {
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

    /// Decoding chunk by chunk gives exactly the figures of a whole decode.
    #[test]
    fn chunked_decode_gives_the_same_figures() {
        let n = 2 * CHUNK + 3 * 256;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 2654435761usize) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        for scheme in ["Q4_0", "Q6_K"] {
            let s: crate::quant::Scheme = scheme.parse().unwrap();
            let ty: GgmlType = crate::quant::ggml_type(s).unwrap();
            let enc = crate::quant::quantize(s, &x, 256).unwrap();
            let mut back = vec![0f32; n];
            crate::quant::dequantize(ty, &enc.data, &mut back).unwrap();
            let whole = ErrorStats::between(&x, &back);
            let chunked = ErrorStats::between_decoded(&x, |start, out| {
                let from = ty.bytes_for(start as u64).unwrap() as usize;
                let to = ty.bytes_for((start + out.len()) as u64).unwrap() as usize;
                crate::quant::dequantize(ty, &enc.data[from..to], out).unwrap();
            });
            assert_eq!(whole, chunked, "{scheme}");
            assert!(whole.rmse > 0.0);
        }
    }
}
