//! Importance-weighted quantization, bit-exact with llama.cpp's
//! `quantize_row_*_impl` (what `llama-quantize --imatrix` runs): each
//! weight's squared error counts in proportion to how strongly its input
//! column is driven on calibration text (the importance matrix), so scales
//! are chosen where activations are large.
//!
//! A row is quantized whole: the legacy formats weight by the row's mean
//! square (`sigma2`), the K-quants by their super-block's. Same f32
//! operations in the same order as ggml's scalar code (built without
//! fused multiply-add in its `ggml-base` library).

use super::float::put_f16;
use super::iquants;
use super::kquants::{
    k_head_and_codes, make_qkx2_quants, make_qx_weighted, nearest_int, pack_q4_k, pack_q5_k,
    q6_k_finish, Search, GROUP_MAX_EPS, QK_K,
};
use super::legacy::{pack5, QK};
use super::Scheme;

/// `make_qkx3_quants`' sweep: 37 candidates from nmax - 0.9 in steps of 0.05.
const QKX3: Search = Search {
    rmin: -0.9,
    rdelta: 0.05,
    nstep: 36,
    use_mad: false,
};

/// Whether `scheme` has an importance-weighted quantizer (Q8_0 and the
/// float types ignore the matrix, as in llama.cpp).
pub fn is_weighted(scheme: Scheme) -> bool {
    matches!(
        scheme,
        Scheme::Q4_0
            | Scheme::Q4_1
            | Scheme::Q5_0
            | Scheme::Q5_1
            | Scheme::Q2K
            | Scheme::Q3K
            | Scheme::Q4K
            | Scheme::Q5K
            | Scheme::Q6K
            | Scheme::IQ4NL
            | Scheme::IQ4XS
    )
}

/// Encodes one row `x` with per-column importance `qw` (same length) into
/// `out` (the row's blocks). `scheme` must be [`is_weighted`].
pub fn encode_row(scheme: Scheme, x: &[f32], qw: &[f32], out: &mut [u8]) {
    debug_assert_eq!(x.len(), qw.len());
    match scheme {
        Scheme::Q4_0 | Scheme::Q5_0 | Scheme::Q4_1 | Scheme::Q5_1 => legacy_row(scheme, x, qw, out),
        Scheme::Q2K => per_block(x, qw, out, 84, q2_k),
        Scheme::Q3K => per_block(x, qw, out, 110, q3_k),
        Scheme::Q4K => per_block(x, qw, out, 144, |x, qw, o| q45_k(x, qw, o, 15)),
        Scheme::Q5K => per_block(x, qw, out, 176, |x, qw, o| q45_k(x, qw, o, 31)),
        Scheme::Q6K => per_block(x, qw, out, 210, q6_k),
        Scheme::IQ4NL => {
            for ((xb, wb), ob) in x
                .chunks_exact(iquants::QK4_NL)
                .zip(qw.chunks_exact(iquants::QK4_NL))
                .zip(out.chunks_exact_mut(iquants::IQ4_NL_BYTES))
            {
                iquants::iq4_nl(xb, Some(wb), ob);
            }
        }
        Scheme::IQ4XS => per_block(x, qw, out, iquants::IQ4_XS_BYTES, |x, qw, o| {
            iquants::iq4_xs(x, Some(qw), o)
        }),
        other => unreachable!("{} has no weighted quantizer", other.name()),
    }
}

fn per_block(
    x: &[f32],
    qw: &[f32],
    out: &mut [u8],
    bytes: usize,
    f: impl Fn(&[f32], &[f32], &mut [u8]),
) {
    for ((xb, wb), ob) in x
        .chunks_exact(QK_K)
        .zip(qw.chunks_exact(QK_K))
        .zip(out.chunks_exact_mut(bytes))
    {
        f(xb, wb, ob);
    }
}

fn sum_squares(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |s, &v| s + v * v)
}

/// Q4_0, Q5_0 (symmetric) and Q4_1, Q5_1 (scale and min) blocks of a row.
fn legacy_row(scheme: Scheme, x: &[f32], qw: &[f32], out: &mut [u8]) {
    let sigma2 = sum_squares(x) / x.len() as f32;
    let bytes = match scheme {
        Scheme::Q4_0 => 18,
        Scheme::Q4_1 => 20,
        Scheme::Q5_0 => 22,
        _ => 24,
    };
    let mut weight = [0f32; QK];
    let mut l = [0u8; QK];
    for ((xb, wb), o) in x
        .chunks_exact(QK)
        .zip(qw.chunks_exact(QK))
        .zip(out.chunks_exact_mut(bytes))
    {
        for ((w, &q), &v) in weight.iter_mut().zip(wb).zip(xb) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        match scheme {
            Scheme::Q4_0 | Scheme::Q5_0 => {
                let nmax = if scheme == Scheme::Q4_0 { 8 } else { 16 };
                let d = make_qx_weighted(xb, nmax, &mut l, |i| weight[i]);
                put_f16(o, 0, d);
                if scheme == Scheme::Q4_0 {
                    for j in 0..QK / 2 {
                        o[2 + j] = l[j] | (l[j + QK / 2] << 4);
                    }
                } else {
                    pack5(&l, &mut o[2..]);
                }
            }
            _ => {
                let nmax = if scheme == Scheme::Q4_1 { 15 } else { 31 };
                let (d, the_min) = make_qkx2_quants(xb, &weight, nmax, &mut l, QKX3);
                put_f16(o, 0, d);
                put_f16(o, 2, -the_min);
                if scheme == Scheme::Q4_1 {
                    for j in 0..QK / 2 {
                        o[4 + j] = l[j] | (l[j + QK / 2] << 4);
                    }
                } else {
                    pack5(&l, &mut o[4..]);
                }
            }
        }
    }
}

/// ggml's `make_qp_quants`: non-negative values `x` (sub-block scales or
/// mins) as codes in [0, nmax] times one scale, chosen by weighted error.
fn make_qp_quants(x: &[f32], nmax: i32, l: &mut [u8], w: &[f32]) -> f32 {
    let max = x.iter().fold(0f32, |m, &v| if v > m { v } else { m });
    if max < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for (o, &v) in l.iter_mut().zip(x) {
        *o = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best = 0f32;
    for i in 0..x.len() {
        let diff = x[i] - scale * f32::from(l[i]);
        best += w[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..x.len() {
            let q = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * q as f32;
            mse += w[i] * diff * diff;
        }
        if mse < best {
            best = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..x.len() {
        let q = nearest_int(iscale * x[i]).min(nmax);
        l[i] = q as u8;
        sumlx += w[i] * x[i] * q as f32;
        suml2 += w[i] * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for i in 0..x.len() {
            let li = f32::from(l[i]);
            let mut slx = sumlx - w[i] * x[i] * li;
            let mut sl2 = suml2 - w[i] * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != i32::from(l[i]) {
                    slx += w[i] * x[i] * new_l as f32;
                    sl2 += w[i] * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as u8;
                        (sumlx, suml2) = (slx, sl2);
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Q4_K (nmax 15) or Q5_K (31): eight 32-weight sub-blocks.
fn q45_k(x: &[f32], qw: &[f32], out: &mut [u8], nmax: i32) {
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    let mut codes = [0u8; QK_K];
    let (mut scales, mut mins, mut sw) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    let mut weights = [0f32; 32];
    for j in 0..8 {
        let sub = &x[32 * j..32 * j + 32];
        for ((w, &q), &v) in weights.iter_mut().zip(&qw[32 * j..]).zip(sub) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        sw[j] = weights.iter().fold(0f32, |s, &w| s + w);
        (scales[j], mins[j]) =
            make_qkx2_quants(sub, &weights, nmax, &mut codes[32 * j..32 * j + 32], QKX3);
    }
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let d_block = make_qp_quants(&scales, 63, &mut ls, &sw);
    let m_block = make_qp_quants(&mins, 63, &mut lm, &sw);
    ls.iter_mut()
        .chain(lm.iter_mut())
        .for_each(|l| *l = (*l).min(63));
    k_head_and_codes(x, nmax, (d_block, m_block), (&ls, &lm), out, &mut codes);
    if nmax == 15 {
        pack_q4_k(&codes, out);
    } else {
        pack_q5_k(&codes, out);
    }
}

/// Q6_K: sixteen 16-weight sub-blocks, weighted by the matrix alone.
fn q6_k(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let mut codes = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs) = (0f32, 0f32);
    for ib in 0..16 {
        let w = &qw[16 * ib..16 * ib + 16];
        let s = make_qx_weighted(
            &x[16 * ib..16 * ib + 16],
            32,
            &mut codes[16 * ib..16 * ib + 16],
            |i| w[i],
        );
        scales[ib] = s;
        if s.abs() > max_abs {
            max_abs = s.abs();
            max_scale = s;
        }
    }
    q6_k_finish(x, &scales, max_scale, max_abs, &mut codes, out);
}

/// Q2_K: sixteen 16-weight sub-blocks with 4-bit scales and mins.
fn q2_k(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let sigma2 = sum_squares(x) / QK_K as f32;
    let mut codes = [0u8; QK_K];
    let (mut scales, mut mins, mut sw) = ([0f32; 16], [0f32; 16], [0f32; 16]);
    let mut weight = [0f32; 16];
    for j in 0..16 {
        let sub = &x[16 * j..16 * j + 16];
        for ((w, &q), &v) in weight.iter_mut().zip(&qw[16 * j..]).zip(sub) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        sw[j] = weight.iter().fold(0f32, |s, &w| s + w);
        (scales[j], mins[j]) =
            make_qkx2_quants(sub, &weight, 3, &mut codes[16 * j..16 * j + 16], QKX3);
    }
    let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
    let dm = make_qp_quants(&scales, 15, &mut ls, &sw);
    let mm = make_qp_quants(&mins, 15, &mut lm, &sw);
    // Layout: scales[16], qs[64], d, dmin.
    let dm = put_f16(out, 80, dm);
    let mm = put_f16(out, 82, mm);
    for j in 0..16 {
        out[j] = ls[j] | (lm[j] << 4);
    }
    for j in 0..16 {
        let d = dm * f32::from(out[j] & 0xf);
        if d == 0.0 {
            continue;
        }
        let m = mm * f32::from(out[j] >> 4);
        for ii in 0..16 {
            codes[16 * j + ii] = nearest_int((x[16 * j + ii] + m) / d).clamp(0, 3) as u8;
        }
    }
    let qs = &mut out[16..80];
    for half in 0..2 {
        let l = &codes[128 * half..];
        for i in 0..32 {
            qs[32 * half + i] = l[i] | (l[i + 32] << 2) | (l[i + 64] << 4) | (l[i + 96] << 6);
        }
    }
}

/// Q3_K: sixteen 16-weight sub-blocks with signed 6-bit scales.
fn q3_k(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    let mut codes = [0u8; QK_K];
    let (mut scales, mut sw) = ([0f32; 16], [0f32; 16]);
    let mut weight = [0f32; 16];
    for j in 0..16 {
        let sub = &x[16 * j..16 * j + 16];
        for ((w, &q), &v) in weight.iter_mut().zip(&qw[16 * j..]).zip(sub) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        sw[j] = weight.iter().fold(0f32, |s, &w| s + w);
        scales[j] = make_qx_weighted(sub, 4, &mut codes[16 * j..16 * j + 16], |i| weight[i]);
    }
    // Layout: hmask[32], qs[64], scales[12], d.
    let (hmask, rest) = out.split_at_mut(32);
    let (qs, rest) = rest.split_at_mut(64);
    let (sc, d_bytes) = rest.split_at_mut(12);
    sc.fill(0);
    let mut ls = [0u8; 16];
    let d_block = make_qx_weighted(&scales, 32, &mut ls, |i| sw[i]);
    for (j, &l) in ls.iter().enumerate() {
        if j < 8 {
            sc[j] = l & 0xf;
        } else {
            sc[j - 8] |= (l & 0xf) << 4;
        }
        sc[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
    }
    let d = put_f16(d_bytes, 0, d_block);
    for j in 0..16 {
        let low = if j < 8 { sc[j] & 0xf } else { sc[j - 8] >> 4 };
        let s = i32::from(low | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        let dj = d * s as f32;
        if dj == 0.0 {
            continue;
        }
        for ii in 0..16 {
            codes[16 * j + ii] = (nearest_int(x[16 * j + ii] / dj).clamp(-4, 3) + 4) as u8;
        }
    }
    hmask.fill(0);
    for (j, c) in codes.iter_mut().enumerate() {
        if *c > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            *c -= 4;
        }
    }
    for half in 0..2 {
        let l = &codes[128 * half..];
        for i in 0..32 {
            qs[32 * half + i] = l[i] | (l[i + 32] << 2) | (l[i + 64] << 4) | (l[i + 96] << 6);
        }
    }
}
