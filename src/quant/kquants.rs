//! K-quants: 256-weight super-blocks in llama.cpp's layout, quantized with
//! its reference scale search (`make_qkx2_quants` for Q4_K/Q5_K,
//! `make_qx_quants` for Q6_K; no importance weights), and decoded for every
//! K type (Q2_K..Q6_K) as the `gguf` package does.
//!
//! Layouts (little endian), per 256 weights:
//! - Q4_K (144 B): `d: f16`, `dmin: f16`, `scales: [u8; 12]` (8 six-bit scales
//!   and 8 six-bit mins, packed), `qs: [u8; 128]`; sub-block j of 32:
//!   `x = d*sc_j*q - dmin*m_j`.
//! - Q5_K (176 B): as Q4_K plus `qh: [u8; 32]` (the 5th bits) before `qs`.
//! - Q6_K (210 B): `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`,
//!   `d: f16`; sub-block j of 16: `x = d*sc_j*(q - 32)`.
//! - Q2_K (84 B): `scales: [u8; 16]` (4-bit scale | 4-bit min << 4), `qs: [u8; 64]`, `d`, `dmin`.
//! - Q3_K (110 B): `hmask: [u8; 32]`, `qs: [u8; 64]`, `scales: [u8; 12]` (16 six-bit), `d`.

use super::float::{f16_at, put_f16};

pub const QK_K: usize = 256;
pub const Q2_K_BYTES: usize = 84;
pub const Q3_K_BYTES: usize = 110;
pub const Q4_K_BYTES: usize = 144;
pub const Q5_K_BYTES: usize = 176;
pub const Q6_K_BYTES: usize = 210;

/// Below this, a group is treated as all zeros (ggml's GROUP_MAX_EPS).
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, with ggml's `nearest_int` float trick
/// (valid for |x| < 2^22, which ggml asserts): integer ops only, so loops
/// over it vectorize (a saturating `as i32` cast does not).
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    ((x + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The largest magnitude and the value that has it (first on ties).
#[inline(always)]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// Scale search for symmetric codes in [-nmax, nmax-1] (ggml's
/// `make_qx_quants` with rmse_type 1: weights x²). Writes codes + nmax to `l`.
#[inline(always)]
fn make_qx_quants(x: &[f32], nmax: i32, l: &mut [u8]) -> f32 {
    make_qx_weighted(x, nmax, l, |i| x[i] * x[i])
}

/// `make_qx_quants` with weight `w(i)` for element i (an importance matrix's).
#[inline(always)]
pub(crate) fn make_qx_weighted(
    x: &[f32],
    nmax: i32,
    l: &mut [u8],
    w: impl Fn(usize) -> f32,
) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (i, &v) in x.iter().enumerate() {
            let q = code(iscale, v) as f32;
            let w = w(i);
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    let mut best_iscale = iscale;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            scale = sumlx / suml2;
            best = scale * sumlx;
            best_iscale = iscale;
        }
    }
    for (o, &v) in l.iter_mut().zip(x) {
        *o = (code(best_iscale, v) + nmax) as u8;
    }
    scale
}

/// The candidate-scale sweep of `make_qkx2_quants`: `nstep + 1` inverse
/// scales from `(nmax + rmin) / range` in steps of `rdelta / range`, scored by
/// weighted squared error, or absolute error with `use_mad`.
#[derive(Clone, Copy)]
pub(crate) struct Search {
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    pub use_mad: bool,
}

/// Scale-and-min search for codes in [0, nmax] (ggml's `make_qkx2_quants`).
/// Returns (scale, min as a positive offset: x ≈ scale*q - min).
#[inline(always)]
pub(crate) fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l: &mut [u8],
    search: Search,
) -> (f32, f32) {
    let Search {
        rmin,
        rdelta,
        nstep,
        use_mad,
    } = search;
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * if use_mad { diff.abs() } else { diff * diff };
    }
    // The candidate scales run LANES at a time, one per lane: each
    // candidate's sums keep ggml's sequential order over the weights (the
    // same f32 results), and the compiler vectorizes across candidates.
    // ggml's loop is sequential in one way that matters: once a candidate
    // wins, the next ones quantize against its min (and `max - min`). So a
    // batch is speculative: after its first winner the sweep restarts just
    // past it with the new min, and the lanes after the winner are dropped.
    const LANES: usize = 8;
    let mut next = 0;
    while next <= nstep {
        let first = next;
        let range = max - min;
        let mut iscales = [0f32; LANES];
        for (j, isc) in iscales.iter_mut().enumerate() {
            *isc = (rmin + rdelta * (first + j as i32) as f32 + nmax as f32) / range;
        }
        let mut aux = [[0u8; LANES]; 32];
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
        for i in 0..n {
            let (w, xi) = (weights[i], x[i]);
            for j in 0..LANES {
                let q = nearest_int(iscales[j] * (xi - min)).clamp(0, nmax);
                aux[i][j] = q as u8;
                let q = q as f32;
                sum_l[j] += w * q;
                sum_l2[j] += w * q * q;
                sum_xl[j] += w * q * xi;
            }
        }
        let (mut scales, mut mins, mut valid) = ([0f32; LANES], [0f32; LANES], [false; LANES]);
        for j in 0..LANES {
            let det = sum_w * sum_l2[j] - sum_l[j] * sum_l[j];
            if first + (j as i32) > nstep || det <= 0.0 {
                continue;
            }
            let mut this_scale = (sum_w * sum_xl[j] - sum_x * sum_l[j]) / det;
            let mut this_min = (sum_l2[j] * sum_x - sum_l[j] * sum_xl[j]) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl[j] / sum_l2[j];
            }
            (scales[j], mins[j], valid[j]) = (this_scale, this_min, true);
        }
        let mut errors = [0f32; LANES];
        for i in 0..n {
            for j in 0..LANES {
                let diff = scales[j] * f32::from(aux[i][j]) + mins[j] - x[i];
                errors[j] += weights[i] * if use_mad { diff.abs() } else { diff * diff };
            }
        }
        next = first + LANES as i32;
        if let Some(j) = (0..LANES).find(|&j| valid[j] && errors[j] < best_error) {
            for (li, a) in l[..n].iter_mut().zip(&aux) {
                *li = a[j];
            }
            best_error = errors[j];
            scale = scales[j];
            min = mins[j];
            next = first + j as i32 + 1;
        }
    }
    (scale, -min)
}

/// Six-bit scale and min of sub-block j from the 12-byte packed array.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The shared first half of Q4_K/Q5_K: per-sub-block scale search, packed
/// six-bit scales, then final codes against the rounded scales.
#[inline(always)]
fn k_scales_and_codes(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    head: &mut [u8],
    codes: &mut [u8; QK_K],
) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut weights = [0f32; 32];
    for j in 0..8 {
        let sub = &x[32 * j..32 * j + 32];
        let av_x = (sub.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(sub) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(
            sub,
            &weights,
            nmax,
            &mut codes[32 * j..32 * j + 32],
            Search {
                rmin,
                rdelta: 0.1,
                nstep,
                use_mad: false,
            },
        );
    }
    let max_scale = scales.iter().fold(0f32, |a, &s| if s > a { s } else { a });
    let max_min = mins.iter().fold(0f32, |a, &m| if m > a { m } else { a });
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let ls: [u8; 8] = std::array::from_fn(|j| nearest_int(inv_scale * scales[j]).min(63) as u8);
    let lm: [u8; 8] = std::array::from_fn(|j| nearest_int(inv_min * mins[j]).min(63) as u8);
    k_head_and_codes(
        x,
        nmax,
        (max_scale / 63.0, max_min / 63.0),
        (&ls, &lm),
        head,
        codes,
    );
}

/// Writes a Q4_K / Q5_K head (`d`, `dmin`, the eight 6-bit scales and mins
/// packed into 12 bytes) and requantizes the codes against what it holds.
#[inline(always)]
pub(crate) fn k_head_and_codes(
    x: &[f32],
    nmax: i32,
    (d, dmin): (f32, f32),
    (ls, lm): (&[u8; 8], &[u8; 8]),
    head: &mut [u8],
    codes: &mut [u8; QK_K],
) {
    let packed = &mut head[4..16];
    packed.fill(0);
    for j in 0..8 {
        let (ls, lm) = (ls[j], lm[j]);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = put_f16(head, 0, d);
    let dmin = put_f16(head, 2, dmin);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &head[4..16]);
        let dj = d * f32::from(sc);
        if dj == 0.0 {
            continue;
        }
        let dm = dmin * f32::from(m);
        for ii in 0..32 {
            codes[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
}

/// One Q4_K super-block.
#[inline(always)]
pub fn q4_k(x: &[f32], out: &mut [u8]) {
    let mut codes = [0u8; QK_K];
    k_scales_and_codes(x, 15, -1.0, 20, &mut out[..16], &mut codes);
    pack_q4_k(&codes, out);
}

/// Q4_K's 4-bit codes after the 16-byte head: 32-byte groups, code l of
/// each 64 in the low nibble, code l + 32 in the high.
#[inline(always)]
pub(crate) fn pack_q4_k(codes: &[u8; QK_K], out: &mut [u8]) {
    let qs = &mut out[16..16 + 128];
    for (c, chunk) in codes.chunks_exact(64).enumerate() {
        for l in 0..32 {
            qs[32 * c + l] = chunk[l] | (chunk[l + 32] << 4);
        }
    }
}

/// One Q5_K super-block.
#[inline(always)]
pub fn q5_k(x: &[f32], out: &mut [u8]) {
    let mut codes = [0u8; QK_K];
    k_scales_and_codes(x, 31, -0.5, 15, &mut out[..16], &mut codes);
    pack_q5_k(&codes, out);
}

/// Q5_K's codes after the 16-byte head: the fifth bits in `qh`, the low
/// nibbles as Q4_K packs them.
#[inline(always)]
pub(crate) fn pack_q5_k(codes: &[u8; QK_K], out: &mut [u8]) {
    let (qh, qs) = out[16..].split_at_mut(32);
    qh.fill(0);
    for (c, chunk) in codes.chunks_exact(64).enumerate() {
        for j in 0..32 {
            let (mut l1, mut l2) = (chunk[j], chunk[j + 32]);
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= 1 << (2 * c);
            }
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= 2 << (2 * c);
            }
            qs[32 * c + j] = l1 | (l2 << 4);
        }
    }
}

/// One Q6_K super-block.
#[inline(always)]
pub fn q6_k(x: &[f32], out: &mut [u8]) {
    let mut codes = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs) = (0f32, 0f32);
    for ib in 0..16 {
        let s = make_qx_quants(
            &x[16 * ib..16 * ib + 16],
            32,
            &mut codes[16 * ib..16 * ib + 16],
        );
        scales[ib] = s;
        if s.abs() > max_abs {
            max_abs = s.abs();
            max_scale = s;
        }
    }
    q6_k_finish(x, &scales, max_scale, max_abs, &mut codes, out);
}

/// Q6_K after its sixteen sub-block scales: the 8-bit scales under one
/// f16, the codes requantized against them and packed.
#[inline(always)]
pub(crate) fn q6_k_finish(
    x: &[f32],
    scales: &[f32; 16],
    max_scale: f32,
    max_abs: f32,
    codes: &mut [u8; QK_K],
    out: &mut [u8],
) {
    if max_abs < GROUP_MAX_EPS {
        out[..Q6_K_BYTES].fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = put_f16(out, 208, 1.0 / iscale);
    for ib in 0..16 {
        out[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let dj = d * f32::from(out[192 + j] as i8);
        if dj == 0.0 {
            continue;
        }
        for ii in 0..16 {
            codes[16 * j + ii] = (nearest_int(x[16 * j + ii] / dj).clamp(-32, 31) + 32) as u8;
        }
    }
    let (ql, rest) = out.split_at_mut(128);
    let qh = &mut rest[..64];
    for half in 0..2 {
        let l = &codes[128 * half..128 * half + 128];
        for i in 0..32 {
            ql[64 * half + i] = (l[i] & 0xf) | ((l[i + 64] & 0xf) << 4);
            ql[64 * half + i + 32] = (l[i + 32] & 0xf) | ((l[i + 96] & 0xf) << 4);
            qh[32 * half + i] = (l[i] >> 4)
                | ((l[i + 32] >> 4) << 2)
                | ((l[i + 64] >> 4) << 4)
                | ((l[i + 96] >> 4) << 6);
        }
    }
}

/// Symmetric codes in [-nmax, nmax-1] refined one weight at a time while
/// the weighted fit improves (ggml's `make_q3_quants` with `do_rmse`).
/// Writes codes + nmax to `l`; returns the scale.
#[inline(always)]
fn make_q3_quants(x: &[f32], nmax: i32, l: &mut [u8]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut q = [0i32; 16];
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        let w = v * v;
        sumlx += w * v * *qi as f32;
        // (w*l)*l as ggml rounds it, not w*(l*l).
        suml2 += w * *qi as f32 * *qi as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for (i, &v) in x.iter().enumerate() {
            let w = v * v;
            let cur = q[i] as f32;
            let mut slx = sumlx - w * v * cur;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * cur * cur;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != q[i] {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        q[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for (o, &qi) in l.iter_mut().zip(&q) {
        *o = (qi + nmax) as u8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Packs 2-bit codes: byte l of each 32-byte run holds codes l, l+32, l+64, l+96 of a 128 chunk.
#[inline(always)]
fn pack2(codes: &[u8; QK_K], qs: &mut [u8]) {
    for half in 0..2 {
        let c = &codes[128 * half..128 * half + 128];
        for l in 0..32 {
            qs[32 * half + l] = c[l] | (c[l + 32] << 2) | (c[l + 64] << 4) | (c[l + 96] << 6);
        }
    }
}

/// One Q2_K super-block: 16 sub-blocks of 16, 4-bit scale and min each.
#[inline(always)]
pub fn q2_k(x: &[f32], out: &mut [u8]) {
    let mut codes = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let mut mins = [0f32; 16];
    let mut weights = [0f32; 16];
    for j in 0..16 {
        let sub = &x[16 * j..16 * j + 16];
        for (w, v) in weights.iter_mut().zip(sub) {
            *w = v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(
            sub,
            &weights,
            3,
            &mut codes[16 * j..16 * j + 16],
            Search {
                rmin: -0.5,
                rdelta: 0.1,
                nstep: 15,
                use_mad: true,
            },
        );
    }
    let max_scale = scales.iter().fold(0f32, |a, &s| if s > a { s } else { a });
    let max_min = mins.iter().fold(0f32, |a, &m| if m > a { m } else { a });
    const Q4SCALE: f32 = 15.0;
    out[..16].fill(0);
    let d = if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for j in 0..16 {
            out[j] = nearest_int(iscale * scales[j]) as u8;
        }
        put_f16(out, 80, max_scale / Q4SCALE)
    } else {
        put_f16(out, 80, 0.0)
    };
    let dmin = if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for j in 0..16 {
            out[j] |= (nearest_int(iscale * mins[j]) as u8) << 4;
        }
        put_f16(out, 82, max_min / Q4SCALE)
    } else {
        put_f16(out, 82, 0.0)
    };
    for j in 0..16 {
        let dj = d * f32::from(out[j] & 0xf);
        if dj == 0.0 {
            continue;
        }
        let dm = dmin * f32::from(out[j] >> 4);
        for ii in 0..16 {
            codes[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / dj).clamp(0, 3) as u8;
        }
    }
    pack2(&codes, &mut out[16..80]);
}

/// One Q3_K super-block: 16 sub-blocks of 16, signed 6-bit scales.
#[inline(always)]
pub fn q3_k(x: &[f32], out: &mut [u8]) {
    let mut codes = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut amax) = (0f32, 0f32);
    for j in 0..16 {
        scales[j] = make_q3_quants(&x[16 * j..16 * j + 16], 4, &mut codes[16 * j..16 * j + 16]);
        if scales[j].abs() > amax {
            amax = scales[j].abs();
            max_scale = scales[j];
        }
    }
    let packed = &mut out[96..108];
    packed.fill(0);
    let d = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for j in 0..16 {
            let l = (nearest_int(iscale * scales[j]).clamp(-32, 31) + 32) as u8;
            if j < 8 {
                packed[j] = l & 0xf;
            } else {
                packed[j - 8] |= (l & 0xf) << 4;
            }
            packed[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
        }
        put_f16(out, 108, 1.0 / iscale)
    } else {
        put_f16(out, 108, 0.0)
    };
    for j in 0..16 {
        let p = &out[96..108];
        let low = if j < 8 { p[j] & 0xf } else { p[j - 8] >> 4 };
        let sc = i32::from(low | (((p[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        let dj = d * sc as f32;
        if dj == 0.0 {
            continue;
        }
        for ii in 0..16 {
            codes[16 * j + ii] = (nearest_int(x[16 * j + ii] / dj).clamp(-4, 3) + 4) as u8;
        }
    }
    let hmask = &mut out[..32];
    hmask.fill(0);
    for (j, c) in codes.iter_mut().enumerate() {
        if *c > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            *c -= 4;
        }
    }
    pack2(&codes, &mut out[32..96]);
}

/// Decodes one Q2_K block.
pub fn dq2_k(b: &[u8], out: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (i, o) in out.iter_mut().enumerate().take(QK_K) {
        let (chunk, rem) = (i / 128, i % 128);
        let (shift, l) = (rem / 32, rem % 32);
        let q = (qs[32 * chunk + l] >> (2 * shift)) & 3;
        let sc = scales[i / 16];
        *o = d * f32::from(sc & 0xf) * f32::from(q) - dmin * f32::from(sc >> 4);
    }
}

/// Decodes one Q3_K block.
pub fn dq3_k(b: &[u8], out: &mut [f32]) {
    let (hmask, qs, sc) = (&b[..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    for (i, o) in out.iter_mut().enumerate().take(QK_K) {
        let s = i / 16;
        let low = (sc[s % 8] >> (4 * (s / 8))) & 0x0f;
        let high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
        let scale = f32::from(((low | (high << 4)) as i8) - 32);
        let (chunk, rem) = (i / 128, i % 128);
        let (shift, l) = (rem / 32, rem % 32);
        let ql = (qs[32 * chunk + l] >> (2 * shift)) & 3;
        let hbit = (hmask[l] >> (i / 32)) & 1;
        let q = ql as i8 - if hbit == 0 { 4 } else { 0 };
        *o = d * scale * f32::from(q);
    }
}

/// Decodes one Q4_K block.
pub fn dq4_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[16..144];
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &b[4..16]);
        let (dj, mj) = (d * f32::from(sc), dmin * f32::from(m));
        for l in 0..32 {
            let byte = qs[32 * (j / 2) + l];
            let q = if j % 2 == 0 { byte & 0xf } else { byte >> 4 };
            out[32 * j + l] = dj * f32::from(q) - mj;
        }
    }
}

/// Decodes one Q5_K block.
pub fn dq5_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &b[4..16]);
        let (dj, mj) = (d * f32::from(sc), dmin * f32::from(m));
        for l in 0..32 {
            let byte = qs[32 * (j / 2) + l];
            let low = if j % 2 == 0 { byte & 0xf } else { byte >> 4 };
            let q = low | (((qh[l] >> j) & 1) << 4);
            out[32 * j + l] = dj * f32::from(q) - mj;
        }
    }
}

/// Decodes one Q6_K block.
pub fn dq6_k(b: &[u8], out: &mut [f32]) {
    let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (i, o) in out.iter_mut().enumerate().take(QK_K) {
        let (half, r) = (i / 128, i % 128);
        let (quarter, l) = (r / 32, r % 32);
        let byte = ql[64 * half + 32 * (quarter % 2) + l];
        let low = if quarter < 2 { byte & 0xf } else { byte >> 4 };
        let high = (qh[32 * half + l] >> (2 * quarter)) & 3;
        let q = ((low | (high << 4)) as i8) - 32;
        *o = d * f32::from(sc[i / 16] as i8) * f32::from(q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal() -> Vec<f32> {
        (0..QK_K)
            .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * if i % 7 == 0 { 3.0 } else { 1.0 })
            .collect()
    }

    fn rel_rmse(x: &[f32], y: &[f32]) -> f32 {
        let mse: f32 =
            x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / x.len() as f32;
        let var: f32 = x.iter().map(|a| a * a).sum::<f32>() / x.len() as f32;
        (mse / var).sqrt()
    }

    #[test]
    fn k_quants_round_trip_with_error_ordered_by_bits() {
        let x = signal();
        let mut errs = Vec::new();
        for (enc, dec, bytes) in [
            (
                q6_k as fn(&[f32], &mut [u8]),
                dq6_k as fn(&[u8], &mut [f32]),
                Q6_K_BYTES,
            ),
            (q5_k, dq5_k, Q5_K_BYTES),
            (q4_k, dq4_k, Q4_K_BYTES),
        ] {
            let mut b = vec![0u8; bytes];
            enc(&x, &mut b);
            let mut y = vec![0f32; QK_K];
            dec(&b, &mut y);
            errs.push(rel_rmse(&x, &y));
        }
        assert!(errs[0] < errs[1] && errs[1] < errs[2], "{errs:?}");
        assert!(errs[2] < 0.12, "{errs:?}");
    }

    #[test]
    fn zero_super_block_decodes_to_zero() {
        let x = vec![0f32; QK_K];
        let mut b = vec![0u8; Q6_K_BYTES];
        q6_k(&x, &mut b);
        let mut y = vec![1f32; QK_K];
        dq6_k(&b, &mut y);
        assert!(y.iter().all(|v| *v == 0.0));
    }
}
