//! AVX2 K-quant dot products against Q8_K activations. Per 32 weights:
//! `maddubs` (unsigned codes × signed activations, pairs summed to i16,
//! far below saturation: 63 × 127 × 2), then `madd` by the sub-block's
//! scale to i32; the integer sum of a super-block is exact, so these match
//! the portable kernels up to the order the per-block floats are added.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::kblocks::Q8KRow;
use crate::quant::iquants::{xs_scale, IQ4_XS_BYTES, KVALUES};
use crate::quant::kquants::{scale_min_k4, Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES, QK_K};

#[inline(always)]
unsafe fn half(p: *const u8) -> f32 {
    let bits = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// 32 codes × 32 activations, scaled by `scale`, as eight i32 lanes.
#[inline(always)]
unsafe fn scaled_dot(codes: __m256i, acts: __m256i, scale: i16) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(codes, acts), _mm256_set1_epi16(scale))
}

/// Σ mins[j] · bsum(sub-block j), as the portable `mins_dot`.
#[inline(always)]
unsafe fn mins_dot(scales: &[u8], bsums: *const i16) -> i32 {
    let mut s = 0i32;
    for j in 0..8 {
        let (_, m) = scale_min_k4(j, scales);
        s += i32::from(m) * (i32::from(*bsums.add(2 * j)) + i32::from(*bsums.add(2 * j + 1)));
    }
    s
}

/// `sumi` plus sub-blocks `2 pair` (codes `lo`) and `2 pair + 1` (codes
/// `hi`) against their 64 activations, each times its 6-bit scale.
#[inline(always)]
unsafe fn add_pair(
    sumi: __m256i,
    lo: __m256i,
    hi: __m256i,
    scales: &[u8],
    pair: usize,
    qa: *const u8,
) -> __m256i {
    let (s0, _) = scale_min_k4(2 * pair, scales);
    let (s1, _) = scale_min_k4(2 * pair + 1, scales);
    let sumi = _mm256_add_epi32(sumi, scaled_dot(lo, load(qa.add(64 * pair)), s0.into()));
    _mm256_add_epi32(
        sumi,
        scaled_dot(hi, load(qa.add(64 * pair + 32)), s1.into()),
    )
}

/// Block `b`'s value from its scaled integer sum: `d·sumi − dmin·Σ mins·bsums`.
#[inline(always)]
unsafe fn scaled_min_block(
    blk: *const u8,
    scales: &[u8],
    sumi: __m256i,
    a: &Q8KRow,
    b: usize,
) -> f32 {
    let mins = mins_dot(scales, a.bsums.as_ptr().add(b * 16));
    let d = *a.d.get_unchecked(b);
    d * half(blk) * hsum_i32(sumi) as f32 - d * half(blk.add(2)) * mins as f32
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` holds whole Q4_K blocks matching `a`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_k(w: &[u8], a: &Q8KRow) -> f32 {
    let n = w.len() / Q4_K_BYTES;
    assert!(a.d.len() >= n && a.qs.len() >= n * QK_K && a.bsums.len() >= n * 16);
    let low = _mm256_set1_epi8(0x0F);
    let mut acc = 0f32;
    for b in 0..n {
        let blk = w.as_ptr().add(b * Q4_K_BYTES);
        let scales = std::slice::from_raw_parts(blk.add(4), 12);
        let qa = a.qs.as_ptr().add(b * QK_K) as *const u8;
        let mut sumi = _mm256_setzero_si256();
        for pair in 0..4 {
            let q = load(blk.add(16 + 32 * pair));
            let lo = _mm256_and_si256(q, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
            sumi = add_pair(sumi, lo, hi, scales, pair, qa);
        }
        acc += scaled_min_block(blk, scales, sumi, a, b);
    }
    acc
}

/// Bit `j` of each qh byte (the fifth bit of sub-block j's codes), as 16.
/// A function, not a closure: closures do not inherit `target_feature`.
#[inline(always)]
unsafe fn fifth_bit(high_bits: __m256i, j: i32, one: __m256i) -> __m256i {
    let bit = _mm256_and_si256(_mm256_srl_epi16(high_bits, _mm_cvtsi32_si128(j)), one);
    _mm256_slli_epi16(bit, 4)
}

/// # Safety
/// As [`q4_k`], for Q5_K blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_k(w: &[u8], a: &Q8KRow) -> f32 {
    let n = w.len() / Q5_K_BYTES;
    assert!(a.d.len() >= n && a.qs.len() >= n * QK_K && a.bsums.len() >= n * 16);
    let (low, one) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(1));
    let mut acc = 0f32;
    for b in 0..n {
        let blk = w.as_ptr().add(b * Q5_K_BYTES);
        let scales = std::slice::from_raw_parts(blk.add(4), 12);
        let qa = a.qs.as_ptr().add(b * QK_K) as *const u8;
        let high_bits = load(blk.add(16));
        let mut sumi = _mm256_setzero_si256();
        for pair in 0..4 {
            let q = load(blk.add(48 + 32 * pair));
            let lo = _mm256_or_si256(
                _mm256_and_si256(q, low),
                fifth_bit(high_bits, 2 * pair as i32, one),
            );
            let hi = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(q, 4), low),
                fifth_bit(high_bits, 2 * pair as i32 + 1, one),
            );
            sumi = add_pair(sumi, lo, hi, scales, pair, qa);
        }
        acc += scaled_min_block(blk, scales, sumi, a, b);
    }
    acc
}

/// # Safety
/// As [`q4_k`], for Q6_K blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6_k(w: &[u8], a: &Q8KRow) -> f32 {
    let n = w.len() / Q6_K_BYTES;
    assert!(a.d.len() >= n && a.qs.len() >= n * QK_K && a.bsums.len() >= n * 16);
    let (low, three) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
    let mut acc = 0f32;
    for b in 0..n {
        let blk = w.as_ptr().add(b * Q6_K_BYTES);
        let (ql, qh) = (blk, blk.add(128));
        let sc = std::slice::from_raw_parts(blk.add(192) as *const i8, 16);
        let qa = a.qs.as_ptr().add(b * QK_K) as *const u8;
        let bsums = a.bsums.as_ptr().add(b * 16);
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let (first, second) = (load(ql.add(64 * h)), load(ql.add(64 * h + 32)));
            let high = load(qh.add(32 * h));
            for quarter in 0..4 {
                let nibbles = if quarter % 2 == 0 { first } else { second };
                let nib = if quarter < 2 {
                    _mm256_and_si256(nibbles, low)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16(nibbles, 4), low)
                };
                let two = _mm256_and_si256(
                    _mm256_srl_epi16(high, _mm_cvtsi32_si128(2 * quarter as i32)),
                    three,
                );
                // Unsigned codes 0..63; the -32 offset comes back through bsums below.
                let codes = _mm256_or_si256(nib, _mm256_slli_epi16(two, 4));
                let pairs = _mm256_maddubs_epi16(codes, load(qa.add(128 * h + 32 * quarter)));
                let g = 8 * h + 2 * quarter;
                let scales = _mm256_set_m128i(
                    _mm_set1_epi16(i16::from(sc[g + 1])),
                    _mm_set1_epi16(i16::from(sc[g])),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pairs, scales));
            }
        }
        let mut offset = 0i32;
        for (g, &s) in sc.iter().enumerate() {
            offset += i32::from(s) * i32::from(*bsums.add(g));
        }
        let total = hsum_i32(sumi) - 32 * offset;
        acc += *a.d.get_unchecked(b) * half(blk.add(208)) * total as f32;
    }
    acc
}

/// # Safety
/// As [`q4_k`], for IQ4_XS blocks. As llama.cpp's AVX2 kernel: each
/// super-block's eight i32 lanes, converted, times `d_w · d_a` into one
/// f32 accumulator, summed across lanes at the end.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn iq4_xs(w: &[u8], a: &Q8KRow) -> f32 {
    let n = w.len() / IQ4_XS_BYTES;
    assert!(a.d.len() >= n && a.qs.len() >= n * QK_K);
    let levels = _mm_loadu_si128(KVALUES.as_ptr() as *const __m128i);
    let low = _mm_set1_epi8(0x0F);
    let mut acc = _mm256_setzero_ps();
    for b in 0..n {
        let blk = w.as_ptr().add(b * IQ4_XS_BYTES);
        let header = std::slice::from_raw_parts(blk, 8);
        let qa = a.qs.as_ptr().add(b * QK_K);
        let mut sumi = _mm256_setzero_si256();
        for ib in 0..8 {
            let q = _mm_loadu_si128(blk.add(8 + 16 * ib) as *const __m128i);
            let wq = _mm256_set_m128i(
                _mm_shuffle_epi8(levels, _mm_and_si128(_mm_srli_epi16(q, 4), low)),
                _mm_shuffle_epi8(levels, _mm_and_si128(q, low)),
            );
            let aq = load(qa.add(32 * ib) as *const u8);
            // Signed × signed as |w| × (a with w's sign): pairs stay below
            // i16 saturation (2 × 127 × 127).
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(aq, wq));
            let scale = _mm256_set1_epi16(xs_scale(header, ib) as i16);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pairs, scale));
        }
        let d = _mm256_set1_ps(half(blk) * *a.d.get_unchecked(b));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}
