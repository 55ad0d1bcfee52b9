//! Encodings for safetensors output, as NPU runtimes expect them.
//!
//! - `int8_pc`: per output row r, `scale[r] = max|W[r,:]| / 127` (f32),
//!   `q = clamp(round(W / scale), -127, 127)` as I8; `W ≈ scale[r] * q`.
//! - `int4_g{G}_sym`: per row and group of G input columns, `scale =
//!   max|x| / 7` (f16), `q = clamp(round(x / scale), -8, 7)` stored as `q + 8`.
//! - `int4_g{G}_asym`: `scale = (max - min) / 15` (f16), `zero =
//!   clamp(round(-min / scale), 0, 15)` (U8), `q = clamp(round(x / scale) + zero,
//!   0, 15)`; `x ≈ scale * (q - zero)`.
//!
//! 4-bit codes are packed two per byte along the row, the even column in the
//! low nibble. Rounding is half away from zero.

use half::f16;

/// One row of int8 per-channel: codes into `q`, returns the scale.
pub fn int8_row(x: &[f32], q: &mut [u8]) -> f32 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
    for (o, &v) in q.iter_mut().zip(x) {
        *o = (v * inv).round().clamp(-127.0, 127.0) as i8 as u8;
    }
    scale
}

/// One group of int4: packed codes into `q` (len/2 bytes); returns (scale as
/// stored in f16, zero point).
pub fn int4_group(x: &[f32], symmetric: bool, q: &mut [u8]) -> (f16, u8) {
    let (scale, zero, lo, hi) = if symmetric {
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        (f16::from_f32(amax / 7.0), 8i32, -8i32, 7i32)
    } else {
        let min = x.iter().fold(0f32, |a, &v| a.min(v));
        let max = x.iter().fold(0f32, |a, &v| a.max(v));
        let s = f16::from_f32((max - min) / 15.0);
        let z = if s.to_f32() == 0.0 {
            0
        } else {
            (-min / s.to_f32()).round().clamp(0.0, 15.0) as i32
        };
        (s, z, 0, 15)
    };
    let s = scale.to_f32();
    let inv = if s == 0.0 { 0.0 } else { 1.0 / s };
    let code = |v: f32| -> u8 {
        let c = if symmetric {
            ((v * inv).round() as i32).clamp(lo, hi) + 8
        } else {
            ((v * inv).round() as i32 + zero).clamp(lo, hi)
        };
        c as u8
    };
    for (o, pair) in q.iter_mut().zip(x.chunks(2)) {
        let a = code(pair[0]);
        let b = pair.get(1).map_or(0, |&v| code(v));
        *o = a | (b << 4);
    }
    (scale, if symmetric { 8 } else { zero as u8 })
}

/// Decodes one int4 group.
pub fn int4_group_decode(q: &[u8], scale: f16, zero: u8, out: &mut [f32]) {
    let s = scale.to_f32();
    for (i, o) in out.iter_mut().enumerate() {
        let byte = q[i / 2];
        let c = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };
        *o = s * (f32::from(c) - f32::from(zero));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_row_keeps_the_extremes() {
        let x = [-1.0, 0.5, 0.25, 1.0];
        let mut q = [0u8; 4];
        let s = int8_row(&x, &mut q);
        assert_eq!(q[0] as i8, -127);
        assert_eq!(q[3] as i8, 127);
        assert!((s * f32::from(q[1] as i8) - 0.5).abs() < s);
    }

    #[test]
    fn int4_groups_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 10.0) / 7.0).collect();
        for symmetric in [true, false] {
            let mut q = [0u8; 16];
            let (s, z) = int4_group(&x, symmetric, &mut q);
            let mut y = [0f32; 32];
            int4_group_decode(&q, s, z, &mut y);
            for (a, b) in x.iter().zip(y) {
                assert!(
                    (a - b).abs() <= s.to_f32() * 0.5 + 1e-3,
                    "{symmetric}: {a} {b}"
                );
            }
        }
    }
}
