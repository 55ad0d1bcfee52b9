//! NEON block dot products for aarch64 (phones, Raspberry Pi 4/5, Jetson):
//! Q8_0, Q4_0, Q4_1 against Q8 activations. Baseline NEON only (every
//! aarch64 CPU has it, the Pi Zero 2 W's Cortex-A53 included): 8-bit
//! products widened to i16 (`vmull_s8`), pairwise-added into i32 lanes, so
//! the integer sum of a block is exact and these match the portable kernels
//! up to the order the per-block floats are added.

#![cfg(target_arch = "aarch64")]

use std::arch::aarch64::*;

use half::f16;

use super::activation::{Q8Row, QK};

#[inline(always)]
fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Σ w[i]·a[i] over 16 signed bytes each, as an exact i32.
#[inline(always)]
unsafe fn dot16(w: int8x16_t, a: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(w), vget_low_s8(a));
    let hi = vmull_s8(vget_high_s8(w), vget_high_s8(a));
    vpadalq_s16(vpaddlq_s16(lo), hi)
}

/// The integer dot of one 32-weight block with its 32 activations.
#[inline(always)]
unsafe fn block_sum(w0: int8x16_t, w1: int8x16_t, a: *const i8) -> i32 {
    let s = vaddq_s32(dot16(w0, vld1q_s8(a)), dot16(w1, vld1q_s8(a.add(16))));
    vaddvq_s32(s)
}

/// # Safety
/// The CPU must be aarch64 (NEON is baseline); `w` holds whole 34-byte blocks matching `a`.
pub unsafe fn q8_0(w: &[u8], a: &Q8Row) -> f32 {
    let n = w.len() / 34;
    assert!(a.d.len() >= n && a.qs.len() >= n * QK);
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(34).enumerate() {
        let p = blk.as_ptr().add(2) as *const i8;
        let sum = block_sum(vld1q_s8(p), vld1q_s8(p.add(16)), a.qs.as_ptr().add(b * QK));
        acc += sum as f32 * (half(blk, 0) * a.d[b]);
    }
    acc
}

/// Low nibbles (codes 0-15) and high nibbles (codes 16-31) of 16 bytes.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    let q = vld1q_u8(p);
    (vandq_u8(q, vdupq_n_u8(0x0F)), vshrq_n_u8(q, 4))
}

/// # Safety
/// As [`q8_0`], for 18-byte Q4_0 blocks.
pub unsafe fn q4_0(w: &[u8], a: &Q8Row) -> f32 {
    let n = w.len() / 18;
    assert!(a.d.len() >= n && a.qs.len() >= n * QK);
    let mut acc = 0f32;
    let eight = vdupq_n_s8(8);
    for (b, blk) in w.chunks_exact(18).enumerate() {
        let (lo, hi) = nibbles(blk.as_ptr().add(2));
        let w0 = vsubq_s8(vreinterpretq_s8_u8(lo), eight);
        let w1 = vsubq_s8(vreinterpretq_s8_u8(hi), eight);
        let sum = block_sum(w0, w1, a.qs.as_ptr().add(b * QK));
        acc += sum as f32 * (half(blk, 0) * a.d[b]);
    }
    acc
}

/// # Safety
/// As [`q8_0`], for 20-byte Q4_1 blocks.
pub unsafe fn q4_1(w: &[u8], a: &Q8Row) -> f32 {
    let n = w.len() / 20;
    assert!(a.d.len() >= n && a.s.len() >= n && a.qs.len() >= n * QK);
    let (mut acc, mut mins) = (0f32, 0f32);
    for (b, blk) in w.chunks_exact(20).enumerate() {
        // Codes 0-15 fit i8, so the signed products are the unsigned ones.
        let (lo, hi) = nibbles(blk.as_ptr().add(4));
        let sum = block_sum(
            vreinterpretq_s8_u8(lo),
            vreinterpretq_s8_u8(hi),
            a.qs.as_ptr().add(b * QK),
        );
        acc += sum as f32 * (half(blk, 0) * a.d[b]);
        mins += half(blk, 2) * a.s[b];
    }
    acc + mins
}
