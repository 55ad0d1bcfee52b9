//! AVX2 block dot products for the formats SmolLM2-class models ship in
//! (Q4_0, Q4_1, Q8_0). Integer products per block are exact (maddubs pairs
//! stay far below i16 saturation: 15 × 127 × 2), so these differ from the
//! portable kernels only in the order the per-block floats are summed.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use half::f16;

use super::activation::{Q8Row, QK};

#[inline(always)]
fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Sum of eight i32 lanes of `u8 × i8` products, as floats.
#[inline(always)]
unsafe fn mul_sum_u8_i8(w: __m256i, a: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(w, a);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Same for signed weights: |w| × (a with w's sign).
#[inline(always)]
unsafe fn mul_sum_i8_i8(w: __m256i, a: __m256i) -> __m256 {
    mul_sum_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
}

/// 16 bytes of packed nibbles to 32 bytes: low nibbles, then high.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let q = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn acts(a: &Q8Row, b: usize) -> __m256i {
    _mm256_loadu_si256(a.qs.as_ptr().add(b * QK) as *const __m256i)
}

/// # Safety
/// The CPU must support AVX2 and FMA; `w` holds whole 34-byte blocks matching `a`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q8_0(w: &[u8], a: &Q8Row) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, blk) in w.chunks_exact(34).enumerate() {
        let wq = _mm256_loadu_si256(blk.as_ptr().add(2) as *const __m256i);
        let d = _mm256_set1_ps(half(blk, 0) * a.d[b]);
        acc = _mm256_fmadd_ps(d, mul_sum_i8_i8(wq, acts(a, b)), acc);
    }
    hsum(acc)
}

/// # Safety
/// As [`q8_0`], for 18-byte Q4_0 blocks.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q4_0(w: &[u8], a: &Q8Row) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let eight = _mm256_set1_epi8(8);
    for (b, blk) in w.chunks_exact(18).enumerate() {
        let wq = _mm256_sub_epi8(nibbles(blk.as_ptr().add(2)), eight);
        let d = _mm256_set1_ps(half(blk, 0) * a.d[b]);
        acc = _mm256_fmadd_ps(d, mul_sum_i8_i8(wq, acts(a, b)), acc);
    }
    hsum(acc)
}

/// # Safety
/// As [`q8_0`], for 20-byte Q4_1 blocks.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q4_1(w: &[u8], a: &Q8Row) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (b, blk) in w.chunks_exact(20).enumerate() {
        let wq = nibbles(blk.as_ptr().add(4));
        let d = _mm256_set1_ps(half(blk, 0) * a.d[b]);
        acc = _mm256_fmadd_ps(d, mul_sum_u8_i8(wq, acts(a, b)), acc);
        mins += half(blk, 2) * a.s[b];
    }
    hsum(acc) + mins
}
