//! The 32-element block formats Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, bit-exact with
//! ggml's reference quantizers (`quantize_row_*_ref`, mirrored by the `gguf`
//! package's numpy code): same f32 operations in the same order, the same
//! rounding (Q8_0 rounds half away from zero; the others add 0.5 / 8.5 /
//! 16.5 and truncate), scales stored as f16.
//!
//! Layouts (little endian), per 32 weights:
//! - Q8_0 (34 B): `d: f16`, `qs: [i8; 32]`; `x = d * q`.
//! - Q4_0 (18 B): `d: f16`, `qs: [u8; 16]` (weight j in the low nibble of
//!   byte j, weight j+16 in the high nibble); `x = d * (q - 8)`.
//! - Q4_1 (20 B): `d: f16`, `m: f16`, `qs: [u8; 16]`; `x = d * q + m`.
//! - Q5_0 (22 B): `d: f16`, `qh: u32` (bit j = 5th bit of weight j), `qs`; `x = d * (q - 16)`.
//! - Q5_1 (24 B): `d: f16`, `m: f16`, `qh: u32`, `qs`; `x = d * q + m`.

use super::float::{f16_at, put_f16};

/// Weights per block.
pub const QK: usize = 32;

pub const Q8_0_BYTES: usize = 34;
pub const Q4_0_BYTES: usize = 18;
pub const Q4_1_BYTES: usize = 20;
pub const Q5_0_BYTES: usize = 22;
pub const Q5_1_BYTES: usize = 24;

/// Adding and subtracting 1.5 * 2^23 leaves an integer-valued f32 whose low
/// mantissa byte is that integer (two's complement): a byte conversion the
/// compiler vectorizes, unlike the saturating `as` casts.
const ROUNDER: f32 = 12_582_912.0;

/// The byte of an integer-valued `x` in [-128, 255].
#[inline(always)]
fn byte_of_integer(x: f32) -> u8 {
    (x + ROUNDER).to_bits() as u8
}

/// Rounds half away from zero (C `roundf`), as ggml's Q8_0 reference does:
/// the truncation plus one step away from zero when the dropped fraction is
/// at least one half (exact: `x - trunc(x)` has no rounding error).
#[inline(always)]
fn round_away(x: f32) -> f32 {
    let t = x.trunc();
    if (x - t).abs() >= 0.5 {
        t + 1f32.copysign(x)
    } else {
        t
    }
}

/// Largest magnitude, in eight lanes (max is exact in any order).
#[inline(always)]
fn abs_max(x: &[f32; QK]) -> f32 {
    let mut lanes = [0f32; 8];
    for c in x.chunks_exact(8) {
        for i in 0..8 {
            lanes[i] = lanes[i].max(c[i].abs());
        }
    }
    lanes.iter().fold(0f32, |a, &v| a.max(v))
}

/// The value with the largest magnitude (first one on ties), sign kept.
#[inline(always)]
fn signed_absmax(x: &[f32; QK]) -> f32 {
    let amax = abs_max(x);
    if amax == 0.0 {
        return 0.0; // ggml's running value never left +0
    }
    x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
}

/// Sequential on purpose: on equal values (+0 and -0) the first one wins,
/// as in ggml, which a lane-wise min would not keep.
#[inline(always)]
fn min_max(x: &[f32; QK]) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    for &v in &x[1..] {
        min = if v < min { v } else { min };
        max = if v > max { v } else { max };
    }
    (min, max)
}

#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// One Q8_0 block.
#[inline(always)]
pub fn q8_0(x: &[f32; QK], out: &mut [u8]) {
    let d = abs_max(x) / 127.0;
    let id = inverse(d);
    put_f16(out, 0, d);
    let mut q = [0u8; QK];
    for (o, &v) in q.iter_mut().zip(x) {
        *o = byte_of_integer(round_away(v * id));
    }
    out[2..2 + QK].copy_from_slice(&q);
}

/// One Q4_0 block.
#[inline(always)]
pub fn q4_0(x: &[f32; QK], out: &mut [u8]) {
    let d = signed_absmax(x) / -8.0;
    let id = inverse(d);
    put_f16(out, 0, d);
    let mut q = [0u8; QK];
    for (o, &v) in q.iter_mut().zip(x) {
        *o = byte_of_integer((v * id + 8.5).trunc()).min(15);
    }
    for j in 0..QK / 2 {
        out[2 + j] = q[j] | (q[j + QK / 2] << 4);
    }
}

/// One Q4_1 block.
#[inline(always)]
pub fn q4_1(x: &[f32; QK], out: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    put_f16(out, 0, d);
    put_f16(out, 2, min);
    let mut q = [0u8; QK];
    for (o, &v) in q.iter_mut().zip(x) {
        *o = byte_of_integer(((v - min) * id + 0.5).trunc()).min(15);
    }
    for j in 0..QK / 2 {
        out[4 + j] = q[j] | (q[j + QK / 2] << 4);
    }
}

#[inline(always)]
pub(crate) fn pack5(q: &[u8; QK], out: &mut [u8]) {
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        qh |= u32::from(v >> 4) << j;
    }
    out[..4].copy_from_slice(&qh.to_le_bytes());
    for j in 0..QK / 2 {
        out[4 + j] = (q[j] & 0x0f) | (q[j + QK / 2] << 4);
    }
}

/// One Q5_0 block.
#[inline(always)]
pub fn q5_0(x: &[f32; QK], out: &mut [u8]) {
    let d = signed_absmax(x) / -16.0;
    let id = inverse(d);
    put_f16(out, 0, d);
    let mut q = [0u8; QK];
    for (o, &v) in q.iter_mut().zip(x) {
        *o = byte_of_integer((v * id + 16.5).trunc()).min(31);
    }
    pack5(&q, &mut out[2..]);
}

/// One Q5_1 block.
#[inline(always)]
pub fn q5_1(x: &[f32; QK], out: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    put_f16(out, 0, d);
    put_f16(out, 2, min);
    let mut q = [0u8; QK];
    for (o, &v) in q.iter_mut().zip(x) {
        *o = byte_of_integer(((v - min) * id + 0.5).trunc()).min(31);
    }
    pack5(&q, &mut out[4..]);
}

/// Decodes one Q8_0 block.
pub fn dq8_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..2 + QK]) {
        *o = f32::from(q as i8) * d;
    }
}

fn nibbles(qs: &[u8]) -> [u8; QK] {
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        q[j] = qs[j] & 0x0f;
        q[j + QK / 2] = qs[j] >> 4;
    }
    q
}

/// Decodes one Q4_0 block.
pub fn dq4_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, q) in out.iter_mut().zip(nibbles(&b[2..18])) {
        *o = d * (f32::from(q) - 8.0);
    }
}

/// Decodes one Q4_1 block.
pub fn dq4_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (o, q) in out.iter_mut().zip(nibbles(&b[4..20])) {
        *o = d * f32::from(q) + m;
    }
}

fn fives(b: &[u8]) -> [u8; QK] {
    let qh = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let mut q = nibbles(&b[4..20]);
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((qh >> j) & 1) as u8) << 4;
    }
    q
}

/// Decodes one Q5_0 block.
pub fn dq5_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, q) in out.iter_mut().zip(fives(&b[2..])) {
        *o = d * (f32::from(q) - 16.0);
    }
}

/// Decodes one Q5_1 block.
pub fn dq5_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (o, q) in out.iter_mut().zip(fives(&b[4..])) {
        *o = d * f32::from(q) + m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(f: impl Fn(usize) -> f32) -> [f32; QK] {
        std::array::from_fn(f)
    }

    #[test]
    fn q8_0_is_exact_on_a_scaled_integer_ramp() {
        let x = block(|i| (i as f32 - 16.0) * 0.25);
        let mut b = [0u8; Q8_0_BYTES];
        q8_0(&x, &mut b);
        let mut y = [0f32; QK];
        dq8_0(&b, &mut y);
        for (a, b) in x.iter().zip(y) {
            assert!((a - b).abs() <= 4.0 / 127.0 * 0.5 + 1e-3, "{a} {b}");
        }
    }

    #[test]
    fn q4_0_uses_the_signed_max_and_zero_block_is_zero() {
        let mut x = block(|i| i as f32 * 0.01);
        x[5] = -2.0;
        let mut b = [0u8; Q4_0_BYTES];
        q4_0(&x, &mut b);
        assert_eq!(f16_at(&b, 0), 0.25, "d = max / -8 with max = -2");
        let mut y = [0f32; QK];
        dq4_0(&b, &mut y);
        assert_eq!(y[5], -2.0);
        q4_0(&[0.0; QK], &mut b);
        dq4_0(&b, &mut y);
        assert!(y.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn five_bit_round_trips_within_half_a_step() {
        let x = block(|i| ((i * 7) % 32) as f32 / 10.0 - 1.3);
        for (enc, dec, bytes) in [
            (
                q5_0 as fn(&[f32; QK], &mut [u8]),
                dq5_0 as fn(&[u8], &mut [f32]),
                Q5_0_BYTES,
            ),
            (q5_1, dq5_1, Q5_1_BYTES),
            (q4_1, dq4_1, Q4_1_BYTES),
        ] {
            let mut b = vec![0u8; bytes];
            enc(&x, &mut b);
            let mut y = [0f32; QK];
            dec(&b, &mut y);
            let step = 3.1 / if bytes == Q4_1_BYTES { 15.0 } else { 31.0 };
            for (a, v) in x.iter().zip(y) {
                assert!((a - v).abs() <= step * 0.5 + 0.01, "{bytes}: {a} vs {v}");
            }
        }
    }
}
