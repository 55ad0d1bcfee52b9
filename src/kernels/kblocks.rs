//! K-quant weights (Q4_K, Q5_K, Q6_K: 256-weight super-blocks with 6- or
//! 8-bit sub-block scales) against activations quantized to `Q8_K`, as
//! llama.cpp pairs them: one f32 scale per 256 activations, and the sums of
//! each 16 codes (`bsums`) so the weights' minimums and offsets cost 16
//! multiplications per block instead of 256.
//!
//! The portable kernels here are the reference the AVX2 ones
//! (`avx2_k.rs`) are tested against; integer sums are exact in both.

use half::f16;

use crate::quant::iquants::{xs_scale, IQ4_XS_BYTES, KVALUES};
use crate::quant::kquants::{scale_min_k4, Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES, QK_K};

/// One activation row in 256-blocks.
#[derive(Debug, Clone, Default)]
pub struct Q8KRow {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    /// Per block, the sum of each 16 consecutive codes.
    pub bsums: Vec<i16>,
}

impl Q8KRow {
    /// Quantizes `x` (length a multiple of 256) as ggml's `quantize_row_q8_K`:
    /// the scale maps the largest-magnitude value to -127.
    pub fn quantize_from(&mut self, x: &[f32]) {
        debug_assert_eq!(x.len() % QK_K, 0);
        let blocks = x.len() / QK_K;
        self.qs.resize(x.len(), 0);
        self.d.resize(blocks, 0.0);
        self.bsums.resize(blocks * 16, 0);
        for (b, (xb, qb)) in x
            .chunks_exact(QK_K)
            .zip(self.qs.chunks_exact_mut(QK_K))
            .enumerate()
        {
            let (mut max, mut amax) = (0f32, 0f32);
            for &v in xb {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            let sums = &mut self.bsums[b * 16..(b + 1) * 16];
            if amax == 0.0 {
                self.d[b] = 0.0;
                qb.fill(0);
                sums.fill(0);
                continue;
            }
            let iscale = -127.0 / max;
            for (q, &v) in qb.iter_mut().zip(xb) {
                *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
            }
            for (s, group) in sums.iter_mut().zip(qb.chunks_exact(16)) {
                *s = group.iter().map(|&q| i16::from(q)).sum();
            }
            self.d[b] = 1.0 / iscale;
        }
    }
}

#[inline(always)]
fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Σ mins[j] · (codes of sub-block j) for the 32-weight sub-blocks, from bsums.
#[inline(always)]
fn mins_dot(scales: &[u8], bsums: &[i16]) -> i32 {
    (0..8)
        .map(|j| {
            let (_, m) = scale_min_k4(j, scales);
            i32::from(m) * (i32::from(bsums[2 * j]) + i32::from(bsums[2 * j + 1]))
        })
        .sum()
}

/// Q4_K / Q5_K body: `code(j, l)` is weight l of 32-weight sub-block j.
#[inline(always)]
fn scaled_min_blocks(
    w: &[u8],
    a: &Q8KRow,
    block_bytes: usize,
    code: impl Fn(&[u8], usize, usize) -> i32,
) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(block_bytes).enumerate() {
        let qa = &a.qs[b * QK_K..(b + 1) * QK_K];
        let scales = &blk[4..16];
        let mut sumi = 0i32;
        for j in 0..8 {
            let (sc, _) = scale_min_k4(j, scales);
            let s: i32 = (0..32)
                .map(|l| code(blk, j, l) * i32::from(qa[32 * j + l]))
                .sum();
            sumi += i32::from(sc) * s;
        }
        let mins = mins_dot(scales, &a.bsums[b * 16..(b + 1) * 16]);
        acc += a.d[b] * half(blk, 0) * sumi as f32 - a.d[b] * half(blk, 2) * mins as f32;
    }
    acc
}

pub mod portable {
    use super::*;

    /// Q4_K: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles.
    pub fn q4_k(w: &[u8], a: &Q8KRow) -> f32 {
        scaled_min_blocks(w, a, Q4_K_BYTES, |blk, j, l| {
            let byte = blk[16 + 32 * (j / 2) + l];
            i32::from(if j % 2 == 0 { byte & 0xf } else { byte >> 4 })
        })
    }

    /// Q5_K: as Q4_K, plus 32 bytes holding each weight's fifth bit.
    pub fn q5_k(w: &[u8], a: &Q8KRow) -> f32 {
        scaled_min_blocks(w, a, Q5_K_BYTES, |blk, j, l| {
            let byte = blk[48 + 32 * (j / 2) + l];
            let low = if j % 2 == 0 { byte & 0xf } else { byte >> 4 };
            i32::from(low | (((blk[16 + l] >> j) & 1) << 4))
        })
    }

    /// Q6_K: 128 bytes of low nibbles, 64 of high bit pairs, 16 i8 scales, f16 d.
    pub fn q6_k(w: &[u8], a: &Q8KRow) -> f32 {
        let mut acc = 0f32;
        for (b, blk) in w.chunks_exact(Q6_K_BYTES).enumerate() {
            let qa = &a.qs[b * QK_K..(b + 1) * QK_K];
            let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
            let mut sumi = 0i32;
            for (g, &scale) in sc.iter().enumerate() {
                let s: i32 = (16 * g..16 * g + 16)
                    .map(|i| {
                        let (h, r) = (i / 128, i % 128);
                        let (quarter, l) = (r / 32, r % 32);
                        let byte = ql[64 * h + 32 * (quarter % 2) + l];
                        let low = if quarter < 2 { byte & 0xf } else { byte >> 4 };
                        let high = (qh[32 * h + l] >> (2 * quarter)) & 3;
                        (i32::from(low | (high << 4)) - 32) * i32::from(qa[i])
                    })
                    .sum();
                sumi += i32::from(scale as i8) * s;
            }
            acc += a.d[b] * half(blk, 208) * sumi as f32;
        }
        acc
    }

    /// IQ4_XS: f16 d, 6-bit sub-block scales (2 high bits in a u16, 4 low
    /// in 4 bytes), 128 bytes of indices into the 16 non-linear levels.
    pub fn iq4_xs(w: &[u8], a: &Q8KRow) -> f32 {
        let mut acc = 0f32;
        for (b, blk) in w.chunks_exact(IQ4_XS_BYTES).enumerate() {
            let qa = &a.qs[b * QK_K..(b + 1) * QK_K];
            let mut sumi = 0i32;
            for ib in 0..8 {
                let (qs, q8) = (&blk[8 + 16 * ib..24 + 16 * ib], &qa[32 * ib..32 * ib + 32]);
                let s: i32 = (0..16)
                    .map(|j| {
                        let lo = i32::from(KVALUES[usize::from(qs[j] & 0xf)]);
                        let hi = i32::from(KVALUES[usize::from(qs[j] >> 4)]);
                        lo * i32::from(q8[j]) + hi * i32::from(q8[j + 16])
                    })
                    .sum();
                sumi += xs_scale(blk, ib) * s;
            }
            acc += half(blk, 0) * a.d[b] * sumi as f32;
        }
        acc
    }
}

/// Defines `pub fn $name`: the AVX2 kernel when the CPU has AVX2, FMA and
/// F16C, else the portable one.
macro_rules! k_simd {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub fn $name(w: &[u8], a: &Q8KRow) -> f32 {
            #[cfg(target_arch = "x86_64")]
            if super::dot::has_avx2_fma() {
                // SAFETY: AVX2, FMA and F16C are present, checked just above.
                return unsafe { super::avx2_k::$name(w, a) };
            }
            portable::$name(w, a)
        }
    };
}

k_simd!(
    /// Q4_K weights against Q8_K activations.
    q4_k
);
k_simd!(
    /// Q5_K weights against Q8_K activations.
    q5_k
);
k_simd!(
    /// Q6_K weights against Q8_K activations.
    q6_k
);
k_simd!(
    /// IQ4_XS weights against Q8_K activations.
    iq4_xs
);
