//! AVX2 block dot products for the legacy 32-weight formats (Q8_0, Q4_0,
//! Q4_1, Q5_0, Q5_1). Integer products per block are exact (maddubs pairs
//! stay far below i16 saturation: 31 × 127 × 2), so these differ from the
//! portable kernels only in the order the per-block floats are summed.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::activation::{Q8Row, QK};
use crate::quant::iquants::{IQ4_NL_BYTES, KVALUES};

/// `n` f16 values from `p` (n <= 4, read as one unaligned u64 / u32 / u16
/// load), converted in-register (F16C): the `half` crate's conversion is an
/// out-of-line call with a feature check, which was 7% of a decode step.
#[inline(always)]
unsafe fn halves2(p: *const u8) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()))
}

#[inline(always)]
unsafe fn half1(p: *const u8) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
        (p as *const u16).read_unaligned(),
    )))
}

/// Sum of eight i32 lanes of `u8 × i8` products, as floats: AVX-512 VNNI's
/// `vpdpbusd` when `VNNI` (one instruction), else `vpmaddubsw` + `vpmaddwd`.
/// The same integers either way (the i16 pairs never saturate here).
#[inline(always)]
unsafe fn mul_sum_u8_i8<const VNNI: bool>(w: __m256i, a: __m256i) -> __m256 {
    if VNNI {
        return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a));
    }
    let pairs = _mm256_maddubs_epi16(w, a);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Same for signed weights: |w| × (a with w's sign).
#[inline(always)]
unsafe fn mul_sum_i8_i8<const VNNI: bool>(w: __m256i, a: __m256i) -> __m256 {
    mul_sum_u8_i8::<VNNI>(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
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

/// Runs `$body` (with `$b` the block index, `$acc` the accumulator) for
/// every block in order, as llama.cpp's AVX2 kernels do: one accumulator,
/// so our logits round like theirs (two interleaved chains moved a
/// near-tie in SmolLM2's top 3). A macro, not a closure: closures do not
/// inherit `target_feature`, and an intrinsic outside it is an out-of-line call.
macro_rules! blocks {
    ($n:expr, |$b:ident, $acc:ident| $body:expr) => {{
        let mut acc = _mm256_setzero_ps();
        for $b in 0..$n {
            let $acc = acc;
            acc = $body;
        }
        acc
    }};
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` holds whole 34-byte blocks matching `a`.
#[inline(always)]
unsafe fn q8_0_k<const V: bool>(w: &[u8], a: &Q8Row) -> f32 {
    let n = w.len() / 34;
    assert!(a.d.len() >= n && a.qs.len() >= n * QK);
    let (p, q, d) = (w.as_ptr(), a.qs.as_ptr(), a.d.as_ptr());
    hsum(blocks!(n, |b, acc| {
        let blk = p.add(b * 34);
        let wq = _mm256_loadu_si256(blk.add(2) as *const __m256i);
        let aq = _mm256_loadu_si256(q.add(b * QK) as *const __m256i);
        let scale = _mm_mul_ss(half1(blk), _mm_load_ss(d.add(b)));
        _mm256_fmadd_ps(
            _mm256_broadcastss_ps(scale),
            mul_sum_i8_i8::<V>(wq, aq),
            acc,
        )
    }))
}

/// # Safety
/// As [`q8_0`], for 18-byte Q4_0 blocks.
#[inline(always)]
unsafe fn q4_0_k<const V: bool>(w: &[u8], a: &Q8Row) -> f32 {
    let n = w.len() / 18;
    assert!(a.d.len() >= n && a.qs.len() >= n * QK);
    let (p, q, d) = (w.as_ptr(), a.qs.as_ptr(), a.d.as_ptr());
    let eight = _mm256_set1_epi8(8);
    hsum(blocks!(n, |b, acc| {
        let blk = p.add(b * 18);
        let wq = _mm256_sub_epi8(nibbles(blk.add(2)), eight);
        let aq = _mm256_loadu_si256(q.add(b * QK) as *const __m256i);
        let scale = _mm_mul_ss(half1(blk), _mm_load_ss(d.add(b)));
        _mm256_fmadd_ps(
            _mm256_broadcastss_ps(scale),
            mul_sum_i8_i8::<V>(wq, aq),
            acc,
        )
    }))
}

/// # Safety
/// As [`q8_0`], for 20-byte Q4_1 blocks.
#[inline(always)]
unsafe fn q4_1_k<const V: bool>(w: &[u8], a: &Q8Row) -> f32 {
    let n = w.len() / 20;
    assert!(a.d.len() >= n && a.s.len() >= n && a.qs.len() >= n * QK);
    let (p, q) = (w.as_ptr(), a.qs.as_ptr());
    let (d, s) = (a.d.as_ptr(), a.s.as_ptr());
    // Lane 1 collects m_w * s_a; lane 0 is scratch.
    let mut mins = _mm_setzero_ps();
    let dots = blocks!(n, |b, acc| {
        let blk = p.add(b * 20);
        let wq = nibbles(blk.add(4));
        let aq = _mm256_loadu_si256(q.add(b * QK) as *const __m256i);
        // [d_w, m_w] in one conversion, times [d_a, s_a].
        let ds = _mm_mul_ps(halves2(blk), _mm_setr_ps(*d.add(b), *s.add(b), 0.0, 0.0));
        mins = _mm_add_ps(mins, ds);
        _mm256_fmadd_ps(_mm256_broadcastss_ps(ds), mul_sum_u8_i8::<V>(wq, aq), acc)
    });
    hsum(dots) + lane1(mins)
}

/// 32 bits to 32 bytes: byte k is 0xFF when bit k of `bits` is set, else 0.
#[inline(always)]
unsafe fn bytes_from_bits(bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    // Every bit but the byte's own set: all ones exactly when it is set.
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi64x(-1))
}

/// # Safety
/// As [`q8_0`], for 22-byte Q5_0 blocks.
#[inline(always)]
unsafe fn q5_0_k<const V: bool>(w: &[u8], a: &Q8Row) -> f32 {
    let n = w.len() / 22;
    assert!(a.d.len() >= n && a.qs.len() >= n * QK);
    let (p, q, d) = (w.as_ptr(), a.qs.as_ptr(), a.d.as_ptr());
    let high = _mm256_set1_epi8(0xF0u8 as i8);
    hsum(blocks!(n, |b, acc| {
        let blk = p.add(b * 22);
        // (nibble | fifth << 4) - 16 is the nibble when the fifth bit is
        // set, else the nibble with the top four bits set (nibble - 16).
        let fifth = bytes_from_bits((blk.add(2) as *const u32).read_unaligned());
        let wq = _mm256_or_si256(nibbles(blk.add(6)), _mm256_andnot_si256(fifth, high));
        let aq = _mm256_loadu_si256(q.add(b * QK) as *const __m256i);
        let scale = _mm_mul_ss(half1(blk), _mm_load_ss(d.add(b)));
        _mm256_fmadd_ps(
            _mm256_broadcastss_ps(scale),
            mul_sum_i8_i8::<V>(wq, aq),
            acc,
        )
    }))
}

/// # Safety
/// As [`q8_0`], for 24-byte Q5_1 blocks.
#[inline(always)]
unsafe fn q5_1_k<const V: bool>(w: &[u8], a: &Q8Row) -> f32 {
    let n = w.len() / 24;
    assert!(a.d.len() >= n && a.s.len() >= n && a.qs.len() >= n * QK);
    let (p, q) = (w.as_ptr(), a.qs.as_ptr());
    let (d, s) = (a.d.as_ptr(), a.s.as_ptr());
    let sixteen = _mm256_set1_epi8(0x10);
    let mut mins = _mm_setzero_ps();
    let dots = blocks!(n, |b, acc| {
        let blk = p.add(b * 24);
        let fifth = bytes_from_bits((blk.add(4) as *const u32).read_unaligned());
        let wq = _mm256_or_si256(nibbles(blk.add(8)), _mm256_and_si256(fifth, sixteen));
        let aq = _mm256_loadu_si256(q.add(b * QK) as *const __m256i);
        let ds = _mm_mul_ps(halves2(blk), _mm_setr_ps(*d.add(b), *s.add(b), 0.0, 0.0));
        mins = _mm_add_ps(mins, ds);
        _mm256_fmadd_ps(_mm256_broadcastss_ps(ds), mul_sum_u8_i8::<V>(wq, aq), acc)
    });
    hsum(dots) + lane1(mins)
}

/// 16 bytes of packed IQ4_NL indices to their 32 levels (low nibbles, then high).
#[inline(always)]
unsafe fn nl_levels(p: *const u8, levels: __m128i) -> __m256i {
    let q = _mm_loadu_si128(p as *const __m128i);
    let low = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(
        _mm_shuffle_epi8(levels, _mm_and_si128(_mm_srli_epi16(q, 4), low)),
        _mm_shuffle_epi8(levels, _mm_and_si128(q, low)),
    )
}

/// Block `b` of IQ4_NL weights `p` against `a`, added to `acc`.
#[inline(always)]
unsafe fn iq4_nl_block<const V: bool>(
    p: *const u8,
    a: &Q8Row,
    b: usize,
    levels: __m128i,
    acc: __m256,
) -> __m256 {
    let blk = p.add(b * IQ4_NL_BYTES);
    let wq = nl_levels(blk.add(2), levels);
    let scale = _mm_mul_ss(_mm_load_ss(a.d.as_ptr().add(b)), half1(blk));
    _mm256_fmadd_ps(
        _mm256_broadcastss_ps(scale),
        mul_sum_i8_i8::<V>(wq, acts_at(a, b)),
        acc,
    )
}

/// # Safety
/// As [`q8_0`], for 18-byte IQ4_NL blocks. Even and odd blocks in two
/// accumulators and an odd last block added after, as llama.cpp's AVX2
/// kernel does (so our sums round like its).
#[inline(always)]
unsafe fn iq4_nl_k<const V: bool>(w: &[u8], a: &Q8Row) -> f32 {
    let n = w.len() / IQ4_NL_BYTES;
    assert!(a.d.len() >= n && a.qs.len() >= n * QK);
    let p = w.as_ptr();
    let levels = _mm_loadu_si128(KVALUES.as_ptr() as *const __m128i);
    let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut b = 0;
    while b + 1 < n {
        even = iq4_nl_block::<V>(p, a, b, levels, even);
        odd = iq4_nl_block::<V>(p, a, b + 1, levels, odd);
        b += 2;
    }
    let mut sum = hsum(_mm256_add_ps(even, odd));
    if b < n {
        sum += hsum(iq4_nl_block::<V>(p, a, b, levels, _mm256_setzero_ps()));
    }
    sum
}

/// Lane 1 of `v` (where the offset formats collect `m_w * s_a`).
#[inline(always)]
unsafe fn lane1(v: __m128) -> f32 {
    _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1))
}

#[inline(always)]
unsafe fn acts_at(r: &Q8Row, b: usize) -> __m256i {
    _mm256_loadu_si256(r.qs.as_ptr().add(b * QK) as *const __m256i)
}

fn check_rows(a: &[&Q8Row; 4], n: usize) {
    for r in a {
        assert!(r.d.len() >= n && r.s.len() >= n && r.qs.len() >= n * QK);
    }
}

// Four activation rows against one weight row (prefill): each block's
// weights are unpacked, and their scales converted, once for four tokens.
// Every token's arithmetic is the single-row kernel's, in the same order,
// so the results are bit-identical to four calls of it. The token loops
// have constant bounds, so the accumulator arrays stay in registers.

/// Block `b` of signed codes `wq` (scale `d`) into each token's accumulator.
#[inline(always)]
unsafe fn signed_tokens<const V: bool>(
    acc: &mut [__m256; 4],
    wq: __m256i,
    d: __m128,
    a: &[&Q8Row; 4],
    b: usize,
) {
    for t in 0..4 {
        let scale = _mm_mul_ss(d, _mm_load_ss(a[t].d.as_ptr().add(b)));
        acc[t] = _mm256_fmadd_ps(
            _mm256_broadcastss_ps(scale),
            mul_sum_i8_i8::<V>(wq, acts_at(a[t], b)),
            acc[t],
        );
    }
}

/// # Safety
/// As [`q8_0`], for each of the four activation rows.
#[inline(always)]
unsafe fn q8_0_x4_k<const V: bool>(w: &[u8], a: [&Q8Row; 4]) -> [f32; 4] {
    let n = w.len() / 34;
    check_rows(&a, n);
    let mut acc = [_mm256_setzero_ps(); 4];
    for b in 0..n {
        let blk = w.as_ptr().add(b * 34);
        let wq = _mm256_loadu_si256(blk.add(2) as *const __m256i);
        signed_tokens::<V>(&mut acc, wq, half1(blk), &a, b);
    }
    [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
}

/// # Safety
/// As [`q4_0`], for each of the four activation rows.
#[inline(always)]
unsafe fn q4_0_x4_k<const V: bool>(w: &[u8], a: [&Q8Row; 4]) -> [f32; 4] {
    let n = w.len() / 18;
    check_rows(&a, n);
    let eight = _mm256_set1_epi8(8);
    let mut acc = [_mm256_setzero_ps(); 4];
    for b in 0..n {
        let blk = w.as_ptr().add(b * 18);
        let wq = _mm256_sub_epi8(nibbles(blk.add(2)), eight);
        signed_tokens::<V>(&mut acc, wq, half1(blk), &a, b);
    }
    [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
}

/// # Safety
/// As [`q4_1`], for each of the four activation rows.
#[inline(always)]
unsafe fn q4_1_x4_k<const V: bool>(w: &[u8], a: [&Q8Row; 4]) -> [f32; 4] {
    let n = w.len() / 20;
    check_rows(&a, n);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut mins = [_mm_setzero_ps(); 4];
    for b in 0..n {
        let blk = w.as_ptr().add(b * 20);
        let wq = nibbles(blk.add(4));
        let dm = halves2(blk);
        for t in 0..4 {
            let r = a[t];
            let ds = _mm_mul_ps(
                dm,
                _mm_setr_ps(*r.d.as_ptr().add(b), *r.s.as_ptr().add(b), 0.0, 0.0),
            );
            mins[t] = _mm_add_ps(mins[t], ds);
            acc[t] = _mm256_fmadd_ps(
                _mm256_broadcastss_ps(ds),
                mul_sum_u8_i8::<V>(wq, acts_at(r, b)),
                acc[t],
            );
        }
    }
    [
        hsum(acc[0]) + lane1(mins[0]),
        hsum(acc[1]) + lane1(mins[1]),
        hsum(acc[2]) + lane1(mins[2]),
        hsum(acc[3]) + lane1(mins[3]),
    ]
}

/// # Safety
/// As [`iq4_nl`], for each of the four activation rows: even and odd
/// blocks in their own accumulators and an odd last block after, as there.
#[inline(always)]
unsafe fn iq4_nl_x4_k<const V: bool>(w: &[u8], a: [&Q8Row; 4]) -> [f32; 4] {
    let n = w.len() / IQ4_NL_BYTES;
    check_rows(&a, n);
    let levels = _mm_loadu_si128(KVALUES.as_ptr() as *const __m128i);
    let mut even = [_mm256_setzero_ps(); 4];
    let mut odd = [_mm256_setzero_ps(); 4];
    let mut last = [_mm256_setzero_ps(); 4];
    for b in 0..n {
        let blk = w.as_ptr().add(b * IQ4_NL_BYTES);
        let wq = nl_levels(blk.add(2), levels);
        let acc = if b % 2 == 1 {
            &mut odd
        } else if b + 1 < n {
            &mut even
        } else {
            &mut last
        };
        signed_tokens::<V>(acc, wq, half1(blk), &a, b);
    }
    let mut out = [0f32; 4];
    for t in 0..4 {
        out[t] = hsum(_mm256_add_ps(even[t], odd[t]));
        if n % 2 == 1 {
            out[t] += hsum(last[t]);
        }
    }
    out
}

/// Each kernel twice: AVX2 (+FMA, F16C), and the same code with AVX-512 VNNI's
/// `vpdpbusd` for the byte products (256-bit, AVX-512VL). Same bits (tested).
macro_rules! variants {
    ($($name:ident, $vnni:ident, $kernel:ident: ($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {$(
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C; `w` holds whole blocks matching the activations.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name($($arg: $ty),*) -> $ret {
            $kernel::<false>($($arg),*)
        }
        /// # Safety
        /// As the AVX2 kernel, and the CPU must also support AVX-512 VL and VNNI.
        #[target_feature(enable = "avx2,fma,f16c,avx512vl,avx512vnni")]
        pub unsafe fn $vnni($($arg: $ty),*) -> $ret {
            $kernel::<true>($($arg),*)
        }
    )*};
}

variants! {
    q8_0, q8_0_vnni, q8_0_k: (w: &[u8], a: &Q8Row) -> f32;
    q4_0, q4_0_vnni, q4_0_k: (w: &[u8], a: &Q8Row) -> f32;
    q4_1, q4_1_vnni, q4_1_k: (w: &[u8], a: &Q8Row) -> f32;
    q5_0, q5_0_vnni, q5_0_k: (w: &[u8], a: &Q8Row) -> f32;
    q5_1, q5_1_vnni, q5_1_k: (w: &[u8], a: &Q8Row) -> f32;
    iq4_nl, iq4_nl_vnni, iq4_nl_k: (w: &[u8], a: &Q8Row) -> f32;
    q8_0_x4, q8_0_x4_vnni, q8_0_x4_k: (w: &[u8], a: [&Q8Row; 4]) -> [f32; 4];
    q4_0_x4, q4_0_x4_vnni, q4_0_x4_k: (w: &[u8], a: [&Q8Row; 4]) -> [f32; 4];
    q4_1_x4, q4_1_x4_vnni, q4_1_x4_k: (w: &[u8], a: [&Q8Row; 4]) -> [f32; 4];
    iq4_nl_x4, iq4_nl_x4_vnni, iq4_nl_x4_k: (w: &[u8], a: [&Q8Row; 4]) -> [f32; 4];
}
