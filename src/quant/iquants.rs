//! llama.cpp's 4-bit non-linear formats IQ4_NL and IQ4_XS, bit-exact with
//! ggml's `quantize_iq4_nl` / `quantize_iq4_xs` (what `llama-quantize` runs,
//! with or without an importance matrix): each weight is an index into 16
//! fixed levels (`KVALUES`, denser near zero, where weights cluster) times a
//! block scale.
//!
//! Layouts (little endian):
//! - IQ4_NL (18 B per 32): `d: f16`, `qs: [u8; 16]` (weight j in the low
//!   nibble of byte j, weight j+16 in the high); `x = d * KVALUES[q]`.
//! - IQ4_XS (136 B per 256): `d: f16`, `scales_h: u16` (two high bits of
//!   each 32-weight sub-block's 6-bit scale), `scales_l: [u8; 4]` (its four
//!   low bits, two per byte), `qs: [u8; 128]` (per sub-block as IQ4_NL);
//!   `x = d * (ls - 32) * KVALUES[q]`.
//!
//! The scale search: from the largest-magnitude weight, try the scale that
//! maps it to the lowest level and 14 neighbours, keeping the one with the
//! least weighted squared error (weights: importance × sqrt(sigma² + x²)
//! with a matrix, x² without). Same f32 operations in the same order as
//! ggml's scalar code.

use super::float::{f16_at, put_f16};
use super::kquants::{nearest_int, GROUP_MAX_EPS, QK_K};

/// ggml's `kvalues_iq4nl`: the 16 levels, ascending.
pub const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Weights per IQ4_NL block (and per IQ4_XS sub-block).
pub const QK4_NL: usize = 32;
pub const IQ4_NL_BYTES: usize = 18;
pub const IQ4_XS_BYTES: usize = 136;

/// Scale tries either side of the first guess (ggml's `ntry`).
const NTRY: i32 = 7;

/// The levels nearest `id * x` for each of 32 weights, as values and as
/// indices: [`best_index`]'s answer, found without branches so it
/// vectorizes (the interval from 14 comparisons, its ends as sums of level
/// steps, exact in f32, then `best_index`'s own tie test).
#[inline(always)]
fn nearest_levels(xb: &[f32], id: f32, q: &mut [f32; QK4_NL], codes: &mut [u8; QK4_NL]) {
    let v = KVALUES.map(f32::from);
    for ((q, c), &x) in q.iter_mut().zip(codes.iter_mut()).zip(xb) {
        let y = id * x;
        let (mut lo, mut hi, mut below) = (v[0], v[1], 0u8);
        for i in 1..15 {
            let ge = y >= v[i];
            lo += if ge { v[i] - v[i - 1] } else { 0.0 };
            hi += if ge { v[i + 1] - v[i] } else { 0.0 };
            below += u8::from(ge);
        }
        // Not strictly nearer the lower end (NaN is settled by `top`).
        let up = y - lo >= hi - y;
        // At or past the top level (or NaN, which bisects to the top).
        let top = y >= v[15] || y.is_nan();
        *q = if top {
            v[15]
        } else if up {
            hi
        } else {
            lo
        };
        *c = if top { 15 } else { below + u8::from(up) };
    }
}

/// Σ w q x and Σ w q² over a block, in order.
#[inline(always)]
fn sums(xb: &[f32], weight: &[f32], q: &[f32; QK4_NL]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    for ((&x, &w), &q) in xb.iter().zip(weight).zip(q) {
        sumqx += w * q * x;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// The best scale of one 32-weight (sub-)block, its codes in `codes`;
/// 0 for an all-but-zero block (whose codes are left for the caller).
#[inline(always)]
fn block_scale(xb: &[f32], weight: &[f32], codes: &mut [u8; QK4_NL]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in xb {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let v0 = f32::from(KVALUES[0]);
    let mut d = -max / v0;
    let mut q = [0f32; QK4_NL];
    nearest_levels(xb, 1.0 / d, &mut q, codes);
    let (sumqx, sumq2) = sums(xb, weight, &q);
    d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let id = (itry + i32::from(KVALUES[0])) as f32 / max;
        let mut scratch = [0u8; QK4_NL];
        nearest_levels(xb, id, &mut q, &mut scratch);
        let (sumqx, sumq2) = sums(xb, weight, &q);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// The weights of one 32-weight (sub-)block: importance × sqrt(sigma² +
/// x²) with a matrix, else x².
#[inline(always)]
fn weights(xb: &[f32], qw: Option<&[f32]>, sigma2: f32, out: &mut [f32; QK4_NL]) {
    match qw {
        Some(qw) => {
            for ((w, &q), &x) in out.iter_mut().zip(qw).zip(xb) {
                *w = q * (sigma2 + x * x).sqrt();
            }
        }
        None => {
            for (w, &x) in out.iter_mut().zip(xb) {
                *w = x * x;
            }
        }
    }
}

/// The mean square of `x`, doubled, as ggml's `sigma2`.
#[inline(always)]
fn sigma2(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s * (2.0 / x.len() as f32)
}

/// Codes of 32-weight groups as bytes: low nibbles the first 16, high the rest.
#[inline(always)]
fn pack(codes: &[u8], qs: &mut [u8]) {
    for (q, l) in qs.chunks_exact_mut(16).zip(codes.chunks_exact(32)) {
        for j in 0..16 {
            q[j] = l[j] | (l[j + 16] << 4);
        }
    }
}

/// One IQ4_NL block (18 bytes) of 32 weights, `qw` their importance.
#[inline(always)]
pub fn iq4_nl(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let sigma2 = sigma2(x);
    let mut weight = [0f32; QK4_NL];
    weights(x, qw, sigma2, &mut weight);
    let mut codes = [0u8; QK4_NL];
    let d = block_scale(x, &weight, &mut codes);
    put_f16(out, 0, d);
    // Codes again from the unrounded scale, as ggml does.
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    nearest_levels(x, id, &mut [0f32; QK4_NL], &mut codes);
    pack(&codes, &mut out[2..18]);
}

/// One IQ4_XS block (136 bytes) of 256 weights, `qw` their importance.
#[inline(always)]
pub fn iq4_xs(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let sigma2 = sigma2(x);
    let mut codes = [0u8; QK_K];
    let mut scales = [0f32; QK_K / QK4_NL];
    let (mut max_scale, mut amax_scale) = (0f32, 0f32);
    let mut weight = [0f32; QK4_NL];
    for (ib, (xb, cb)) in x
        .chunks_exact(QK4_NL)
        .zip(codes.chunks_exact_mut(QK4_NL))
        .enumerate()
    {
        weights(xb, qw.map(|q| &q[QK4_NL * ib..]), sigma2, &mut weight);
        let d = block_scale(xb, &weight, cb.try_into().expect("32 codes"));
        scales[ib] = d;
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    let d = -max_scale / 32.0;
    put_f16(out, 0, d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (mut scales_h, mut scales_l) = (0u16, [0u8; 4]);
    for (ib, (xb, cb)) in x
        .chunks_exact(QK4_NL)
        .zip(codes.chunks_exact_mut(QK4_NL))
        .enumerate()
    {
        let l = nearest_int(id * scales[ib]).clamp(-32, 31);
        let dl = d * l as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        let cb: &mut [u8; QK4_NL] = cb.try_into().expect("32 codes");
        nearest_levels(xb, idl, &mut [0f32; QK4_NL], cb);
        let l = (l + 32) as u8;
        scales_l[ib / 2] |= (l & 0xf) << (4 * (ib % 2));
        scales_h |= u16::from(l >> 4) << (2 * ib);
    }
    out[2..4].copy_from_slice(&scales_h.to_le_bytes());
    out[4..8].copy_from_slice(&scales_l);
    pack(&codes, &mut out[8..136]);
}

/// The 6-bit scale of IQ4_XS sub-block `ib`, offset removed.
#[inline(always)]
pub fn xs_scale(blk: &[u8], ib: usize) -> i32 {
    let scales_h = u16::from_le_bytes([blk[2], blk[3]]);
    let low = (blk[4 + ib / 2] >> (4 * (ib % 2))) & 0xf;
    let high = ((scales_h >> (2 * ib)) & 3) as u8;
    i32::from(low | (high << 4)) - 32
}

/// Decodes one IQ4_NL block.
pub fn dq_iq4_nl(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        o[j] = d * f32::from(KVALUES[usize::from(b[2 + j] & 0xf)]);
        o[j + 16] = d * f32::from(KVALUES[usize::from(b[2 + j] >> 4)]);
    }
}

/// Decodes one IQ4_XS block.
pub fn dq_iq4_xs(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (ib, ob) in o.chunks_exact_mut(QK4_NL).enumerate() {
        let dl = d * xs_scale(b, ib) as f32;
        let qs = &b[8 + 16 * ib..8 + 16 * ib + 16];
        for j in 0..16 {
            ob[j] = dl * f32::from(KVALUES[usize::from(qs[j] & 0xf)]);
            ob[j + 16] = dl * f32::from(KVALUES[usize::from(qs[j] >> 4)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index of the level nearest `x` (ggml's `best_index_int8`: a
    /// bisection, the lower level on ties).
    fn best_index(x: f32) -> u8 {
        let val = |i: usize| f32::from(KVALUES[i]);
        if x <= val(0) {
            return 0;
        }
        if x >= val(15) {
            return 15;
        }
        let (mut ml, mut mu) = (0usize, 15usize);
        while mu - ml > 1 {
            let mid = (ml + mu) / 2;
            if x < val(mid) {
                mu = mid;
            } else {
                ml = mid;
            }
        }
        if x - val(mu - 1) < val(mu) - x {
            (mu - 1) as u8
        } else {
            mu as u8
        }
    }

    #[test]
    fn branchless_levels_are_the_bisections_choice() {
        // Every f32 step around each level and midpoint, and a sweep.
        let mut ys: Vec<f32> = vec![f32::NAN, f32::INFINITY, -f32::INFINITY, 0.0, -0.0];
        for w in KVALUES.windows(2) {
            let (a, b) = (f32::from(w[0]), f32::from(w[1]));
            for c in [a, b, (a + b) / 2.0] {
                let mut up = c;
                let mut down = c;
                for _ in 0..64 {
                    ys.extend([up, down]);
                    up = f32::from_bits(up.to_bits() + 1);
                    down = f32::from_bits(down.to_bits() - 1);
                }
            }
        }
        ys.extend((0..200_000).map(|i| (i as f32 - 100_000.0) * 0.0015));
        for chunk in ys.chunks(32) {
            let mut x = [0f32; 32];
            x[..chunk.len()].copy_from_slice(chunk);
            let (mut q, mut c) = ([0f32; 32], [0u8; 32]);
            nearest_levels(&x, 1.0, &mut q, &mut c);
            for j in 0..32 {
                let want = best_index(x[j]);
                assert_eq!(c[j], want, "{}", x[j]);
                assert_eq!(q[j], f32::from(KVALUES[usize::from(want)]), "{}", x[j]);
            }
        }
    }

    #[test]
    fn best_index_picks_the_nearest_level_lower_on_ties() {
        assert_eq!(best_index(-200.0), 0);
        assert_eq!(best_index(200.0), 15);
        assert_eq!(best_index(0.0), 8);
        assert_eq!(best_index(-0.0), 8);
        // Halfway between -10 and 1: the upper one (not strictly nearer below).
        assert_eq!(best_index(-4.5), 8);
        assert_eq!(best_index(-4.6), 7);
        for (i, &v) in KVALUES.iter().enumerate() {
            assert_eq!(usize::from(best_index(f32::from(v))), i);
        }
    }

    #[test]
    fn blocks_decode_close_to_their_input() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 7) as f32))
            .collect();
        let qw: Vec<f32> = (0..512).map(|i| 0.5 + (i % 5) as f32).collect();
        for with in [None, Some(&qw[..])] {
            let mut nl = vec![0u8; 16 * IQ4_NL_BYTES];
            let mut back = vec![0f32; 512];
            for (b, (xb, o)) in x
                .chunks_exact(32)
                .zip(nl.chunks_exact_mut(IQ4_NL_BYTES))
                .enumerate()
            {
                iq4_nl(xb, with.map(|q| &q[32 * b..32 * b + 32]), o);
            }
            for (o, b) in back.chunks_exact_mut(32).zip(nl.chunks_exact(18)) {
                dq_iq4_nl(b, o);
            }
            let err = rel_rmse(&x, &back);
            assert!(err < 0.12, "IQ4_NL {err}");
            let mut xs = vec![0u8; 2 * IQ4_XS_BYTES];
            for (b, (xb, o)) in x
                .chunks_exact(256)
                .zip(xs.chunks_exact_mut(IQ4_XS_BYTES))
                .enumerate()
            {
                iq4_xs(xb, with.map(|q| &q[256 * b..256 * b + 256]), o);
            }
            for (o, b) in back.chunks_exact_mut(256).zip(xs.chunks_exact(136)) {
                dq_iq4_xs(b, o);
            }
            let err = rel_rmse(&x, &back);
            assert!(err < 0.12, "IQ4_XS {err}");
        }
    }

    #[test]
    fn an_all_zero_block_is_zero_scales_and_the_level_nearest_zero() {
        let mut out = [0xAAu8; IQ4_XS_BYTES];
        iq4_xs(&[0.0; 256], None, &mut out);
        // d = -0/32: ggml stores the negative zero.
        assert_eq!(&out[..2], &[0x00, 0x80]);
        assert!(out[8..].iter().all(|&b| b == 0x88));
        let mut out = [0xAAu8; IQ4_NL_BYTES];
        iq4_nl(&[0.0; 32], None, &mut out);
        assert_eq!(&out[..2], &[0, 0]);
        assert!(out[2..].iter().all(|&b| b == 0x88));
    }

    fn rel_rmse(a: &[f32], b: &[f32]) -> f32 {
        let e: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        let n: f32 = a.iter().map(|x| x * x).sum();
        (e / n).sqrt()
    }
}
