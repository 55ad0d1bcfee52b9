//! Dot products of one quantized weight row with one Q8 activation row,
//! block by block, in llama.cpp's arithmetic: integer sums inside a block,
//! then `d_w * d_a * sumi` (+ `m_w * s_a` for the offset formats).
//!
//! Each kernel is one portable body, unpacking a block into a fixed-size
//! `[i8; 32]` so the compiler vectorizes the integer loop; `dispatch!`
//! compiles that body a second time with AVX2 enabled and picks it at run
//! time when the CPU has it.

use half::f16;

use super::activation::{Q8Row, QK};
use crate::quant::iquants::{IQ4_NL_BYTES, KVALUES};

#[inline(always)]
fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

#[inline(always)]
fn dot32(w: &[i8; QK], a: &[i8]) -> i32 {
    let a: &[i8; QK] = a.try_into().expect("32 activations");
    let mut s = 0i32;
    for i in 0..QK {
        s += i32::from(w[i]) * i32::from(a[i]);
    }
    s
}

/// The 32 codes of a 4-bit block (low nibbles first, then high), minus `offset`.
#[inline(always)]
fn unpack4(qs: &[u8], offset: i8) -> [i8; QK] {
    let mut w = [0i8; QK];
    for j in 0..16 {
        w[j] = (qs[j] & 0x0F) as i8 - offset;
        w[j + 16] = (qs[j] >> 4) as i8 - offset;
    }
    w
}

/// The 32 codes of a 5-bit block (fifth bits in `qh`), minus `offset`.
#[inline(always)]
fn unpack5(qh: u32, qs: &[u8], offset: i8) -> [i8; QK] {
    let mut w = [0i8; QK];
    for j in 0..16 {
        let lo = ((qh >> j) & 1) as u8;
        let hi = ((qh >> (j + 16)) & 1) as u8;
        w[j] = ((qs[j] & 0x0F) | (lo << 4)) as i8 - offset;
        w[j + 16] = ((qs[j] >> 4) | (hi << 4)) as i8 - offset;
    }
    w
}

#[inline(always)]
fn q8_0_body(w: &[u8], a: &Q8Row) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(34).enumerate() {
        let qs: &[u8; QK] = blk[2..].try_into().expect("32 codes");
        let wq: [i8; QK] = qs.map(|q| q as i8);
        acc += dot32(&wq, &a.qs[b * QK..(b + 1) * QK]) as f32 * (half(blk, 0) * a.d[b]);
    }
    acc
}

#[inline(always)]
fn q4_0_body(w: &[u8], a: &Q8Row) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(18).enumerate() {
        let wq = unpack4(&blk[2..18], 8);
        acc += dot32(&wq, &a.qs[b * QK..(b + 1) * QK]) as f32 * (half(blk, 0) * a.d[b]);
    }
    acc
}

#[inline(always)]
fn q4_1_body(w: &[u8], a: &Q8Row) -> f32 {
    let (mut acc, mut mins) = (0f32, 0f32);
    for (b, blk) in w.chunks_exact(20).enumerate() {
        let wq = unpack4(&blk[4..20], 0);
        acc += dot32(&wq, &a.qs[b * QK..(b + 1) * QK]) as f32 * (half(blk, 0) * a.d[b]);
        mins += half(blk, 2) * a.s[b];
    }
    acc + mins
}

#[inline(always)]
fn q5_0_body(w: &[u8], a: &Q8Row) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(22).enumerate() {
        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
        let wq = unpack5(qh, &blk[6..22], 16);
        acc += dot32(&wq, &a.qs[b * QK..(b + 1) * QK]) as f32 * (half(blk, 0) * a.d[b]);
    }
    acc
}

#[inline(always)]
fn q5_1_body(w: &[u8], a: &Q8Row) -> f32 {
    let (mut acc, mut mins) = (0f32, 0f32);
    for (b, blk) in w.chunks_exact(24).enumerate() {
        let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
        let wq = unpack5(qh, &blk[8..24], 0);
        acc += dot32(&wq, &a.qs[b * QK..(b + 1) * QK]) as f32 * (half(blk, 0) * a.d[b]);
        mins += half(blk, 2) * a.s[b];
    }
    acc + mins
}

/// The 32 levels of an IQ4_NL block's codes (low nibbles first, then high).
#[inline(always)]
fn unpack_nl(qs: &[u8]) -> [i8; QK] {
    let mut w = [0i8; QK];
    for j in 0..16 {
        w[j] = KVALUES[usize::from(qs[j] & 0x0F)];
        w[j + 16] = KVALUES[usize::from(qs[j] >> 4)];
    }
    w
}

#[inline(always)]
fn iq4_nl_body(w: &[u8], a: &Q8Row) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(IQ4_NL_BYTES).enumerate() {
        let wq = unpack_nl(&blk[2..18]);
        acc += dot32(&wq, &a.qs[b * QK..(b + 1) * QK]) as f32 * (half(blk, 0) * a.d[b]);
    }
    acc
}

#[inline(always)]
fn f32_body(w: &[f32], x: &[f32]) -> f32 {
    // Eight partial sums: vectorizes, and the summation order is fixed.
    let mut acc = [0f32; 8];
    let (wc, xc) = (w.chunks_exact(8), x.chunks_exact(8));
    let (wr, xr) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    let tail: f32 = wr.iter().zip(xr).map(|(a, b)| a * b).sum();
    acc.iter().sum::<f32>() + tail
}

/// Defines `pub fn $name` running `$body`, compiled twice: portable, and with
/// AVX2 for CPUs that have it. Both give identical results (integer sums are
/// exact; float operations keep their order, and no FMA is enabled).
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident, $body:ident, $w:ty, $a:ty) => {
        $(#[$doc])*
        pub fn $name(w: $w, a: $a) -> f32 {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2(w: $w, a: $a) -> f32 {
                    $body(w, a)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { avx2(w, a) };
                }
            }
            $body(w, a)
        }
    };
}

/// Defines `pub fn $name`: the hand-written AVX2 kernel when the CPU has
/// AVX2, FMA and F16C (its `vpdpbusd` build `$vnni` when it also has AVX-512
/// VL + VNNI), else the portable `$body`.
macro_rules! simd {
    ($(#[$doc:meta])* $name:ident, $vnni:ident, $body:ident) => {
        $(#[$doc])*
        pub fn $name(w: &[u8], a: &Q8Row) -> f32 {
            #[cfg(target_arch = "x86_64")]
            match x86_level() {
                // SAFETY: the CPU has the features of the kernel picked.
                X86::Vnni => return unsafe { super::avx2::$vnni(w, a) },
                X86::Avx2 => return unsafe { super::avx2::$name(w, a) },
                X86::None => {}
            }
            $body(w, a)
        }
    };
    // Also a NEON kernel on aarch64 (NEON is baseline there: no check).
    ($(#[$doc:meta])* $name:ident, $vnni:ident, $body:ident, neon) => {
        $(#[$doc])*
        pub fn $name(w: &[u8], a: &Q8Row) -> f32 {
            #[cfg(target_arch = "x86_64")]
            match x86_level() {
                // SAFETY: the CPU has the features of the kernel picked.
                X86::Vnni => return unsafe { super::avx2::$vnni(w, a) },
                X86::Avx2 => return unsafe { super::avx2::$name(w, a) },
                X86::None => {}
            }
            #[cfg(target_arch = "aarch64")]
            {
                // SAFETY: every aarch64 CPU has NEON.
                return unsafe { super::neon::$name(w, a) };
            }
            #[allow(unreachable_code)]
            $body(w, a)
        }
    };
}

/// Which hand-written x86 kernels this CPU runs.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum X86 {
    None,
    Avx2,
    Vnni,
}

#[cfg(target_arch = "x86_64")]
pub(super) fn x86_level() -> X86 {
    use std::arch::is_x86_feature_detected as has;
    if !has_avx2_fma() {
        X86::None
    } else if has!("avx512vl") && has!("avx512vnni") {
        X86::Vnni
    } else {
        X86::Avx2
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

simd!(
    /// Q8_0 weights (34-byte blocks: f16 d, 32 × i8).
    q8_0, q8_0_vnni, q8_0_body, neon
);
simd!(
    /// Q4_0 weights (18-byte blocks: f16 d, 16 bytes of codes; w = d(q-8)).
    q4_0, q4_0_vnni, q4_0_body, neon
);
simd!(
    /// Q4_1 weights (20-byte blocks: f16 d, f16 m, 16 bytes; w = d q + m).
    q4_1, q4_1_vnni, q4_1_body, neon
);

/// Defines `pub fn $name`: one weight row against four activation rows,
/// the AVX2 kernel when the CPU has it, else four calls of `$single`; the
/// two give the same bits as four calls of the single-row kernel.
macro_rules! simd_x4 {
    ($(#[$doc:meta])* $name:ident, $vnni:ident, $single:ident) => {
        $(#[$doc])*
        pub fn $name(w: &[u8], a: [&Q8Row; 4]) -> [f32; 4] {
            #[cfg(target_arch = "x86_64")]
            match x86_level() {
                // SAFETY: the CPU has the features of the kernel picked.
                X86::Vnni => return unsafe { super::avx2::$vnni(w, a) },
                X86::Avx2 => return unsafe { super::avx2::$name(w, a) },
                X86::None => {}
            }
            a.map(|r| $single(w, r))
        }
    };
}

simd_x4!(
    /// Q8_0 against four activation rows.
    q8_0_x4, q8_0_x4_vnni, q8_0
);
simd_x4!(
    /// Q4_0 against four activation rows.
    q4_0_x4, q4_0_x4_vnni, q4_0
);
simd_x4!(
    /// Q4_1 against four activation rows.
    q4_1_x4, q4_1_x4_vnni, q4_1
);
simd_x4!(
    /// IQ4_NL against four activation rows.
    iq4_nl_x4, iq4_nl_x4_vnni, iq4_nl
);

/// The portable kernels, for testing the SIMD ones against.
pub mod portable {
    use super::*;

    pub fn q8_0(w: &[u8], a: &Q8Row) -> f32 {
        q8_0_body(w, a)
    }
    pub fn q4_0(w: &[u8], a: &Q8Row) -> f32 {
        q4_0_body(w, a)
    }
    pub fn q4_1(w: &[u8], a: &Q8Row) -> f32 {
        q4_1_body(w, a)
    }
    pub fn q5_0(w: &[u8], a: &Q8Row) -> f32 {
        q5_0_body(w, a)
    }
    pub fn q5_1(w: &[u8], a: &Q8Row) -> f32 {
        q5_1_body(w, a)
    }
    pub fn iq4_nl(w: &[u8], a: &Q8Row) -> f32 {
        iq4_nl_body(w, a)
    }
}
simd!(
    /// Q5_0 weights (22-byte blocks: f16 d, u32 fifth bits, 16 bytes; w = d(q-16)).
    q5_0, q5_0_vnni, q5_0_body
);
simd!(
    /// Q5_1 weights (24-byte blocks: f16 d, f16 m, u32 fifth bits, 16 bytes).
    q5_1, q5_1_vnni, q5_1_body
);
simd!(
    /// IQ4_NL weights (18-byte blocks: f16 d, 16 bytes of indices into the
    /// 16 non-linear levels; w = d · level).
    iq4_nl, iq4_nl_vnni, iq4_nl_body
);
dispatch!(
    /// f32 weights against f32 activations.
    f32_dot, f32_body, &[f32], &[f32]
);
