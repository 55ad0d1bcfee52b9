//! Element-wise maths of the encoder's hot path over whole slices: exp
//! (softmax), erf GELU and LayerNorm. libm's scalar `expf`/`erff` are
//! out-of-line calls the compiler cannot vectorize (they were 12% of a MiniLM
//! forward); these are branch-free polynomials in one portable body that the
//! compiler vectorizes, compiled a second time with AVX2+FMA and picked at
//! run time. Both bodies are the same source, so they agree to rounding.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in a part exact in f32 and the rest (Cody-Waite reduction).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Adding and subtracting 1.5 * 2^23 rounds an f32 to the nearest integer
/// without a call to `roundf` (which SSE2 cannot inline).
const ROUNDER: f32 = 12_582_912.0;

/// e^x, relative error < 2e-7 for x in [-87, 88]; 0 below, clamps above.
/// Integer-only scaling by 2^k (no float-to-int cast, whose saturation
/// rules keep the compiler from vectorizing).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let below = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let kr = x * LOG2E + ROUNDER;
    let k = kr - ROUNDER;
    let r = x - k * LN2_HI - k * LN2_LO;
    // Taylor to r^6 on |r| <= ln2/2: truncation below 2e-8.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // kr's low mantissa bits hold k (two's complement after the subtraction).
    let k_bits = kr.to_bits().wrapping_sub(ROUNDER.to_bits());
    let scale = f32::from_bits(k_bits.wrapping_add(127) << 23);
    if below {
        0.0
    } else {
        p * scale
    }
}

/// Sum in eight interleaved lanes (a vector register's worth), which the
/// compiler can keep in SIMD registers; a single running f32 sum it cannot.
#[inline(always)]
fn lane_sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// Largest `|x|` (`abs`) or `x`, in eight lanes.
#[inline(always)]
fn lane_max(xs: &[f32], abs: bool) -> f32 {
    let f = |v: f32| if abs { v.abs() } else { v };
    let start = if abs { 0.0 } else { f32::NEG_INFINITY };
    let mut acc = [start; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i].max(f(c[i]));
        }
    }
    tail.iter()
        .fold(acc.iter().fold(start, |m, &v| m.max(v)), |m, &v| {
            m.max(f(v))
        })
}

/// erf with Abramowitz & Stegun 7.1.26: |error| < 1.5e-7 (4e-7 in f32).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Compiles `$body` (a closure-like block over its arguments) twice: as is and
/// with AVX2+FMA enabled, and calls the second when the CPU has both.
macro_rules! vectorized {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if avx2_fma() {
                    // SAFETY: the CPU has the features `avx2` was compiled with.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

vectorized! {
    /// Exact (erf) GELU in place.
    gelu_inplace(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x = gelu(*x);
        }
    }
}

vectorized! {
    /// `row = softmax(row * scale)`, max-subtracted.
    softmax_inplace(row: &mut [f32], scale: f32) {
        let max = lane_max(row, false);
        for v in row.iter_mut() {
            *v = exp((*v - max) * scale);
        }
        let inv = 1.0 / lane_sum(row);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

vectorized! {
    /// `x = LayerNorm(x + residual)` over one row, with `gamma`, `beta`.
    add_layer_norm(x: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let n = x.len() as f32;
        for (v, r) in x.iter_mut().zip(residual) {
            *v += r;
        }
        let mean = lane_sum(x) / n;
        for v in x.iter_mut() {
            *v -= mean;
        }
        let mut sq = [0f32; 8];
        let chunks = x.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        for c in chunks {
            for i in 0..8 {
                sq[i] += c[i] * c[i];
            }
        }
        let var = (sq.iter().sum::<f32>() + tail) / n;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, g), b) in x.iter_mut().zip(gamma).zip(beta) {
            *v = *v * inv * g + b;
        }
    }
}

vectorized! {
    /// Symmetric 8-bit codes of one row (`q = round(x / d)`, `d = max|x| / 127`,
    /// ties to even); returns `d`.
    quantize_i8(x: &[f32], q: &mut [i8]) -> f32 {
        let amax = lane_max(x, true);
        let d = amax / 127.0;
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (q, &v) in q.iter_mut().zip(x) {
            *q = rounded_i8(v * inv);
        }
        d
    }
}

vectorized! {
    /// `quantize_i8` over each `group` of `x` (scales into `d`), leaving out
    /// values with `|x| > limit`: code 0, for the caller to handle. Returns
    /// whether there were any.
    quantize_i8_groups(x: &[f32], q: &mut [i8], d: &mut [f32], group: usize, limit: f32) -> bool {
        let mut any = false;
        for ((x, q), d) in x.chunks(group).zip(q.chunks_mut(group)).zip(d) {
            let mut amax = [0f32; 8];
            let mut over = [false; 8];
            let chunks = x.chunks_exact(8);
            let tail = chunks.remainder();
            for c in chunks {
                for i in 0..8 {
                    let a = c[i].abs();
                    over[i] |= a > limit;
                    amax[i] = amax[i].max(if a > limit { 0.0 } else { a });
                }
            }
            let mut m = amax.iter().fold(0f32, |m, &v| m.max(v));
            any |= over.iter().any(|&o| o);
            for v in tail {
                let a = v.abs();
                any |= a > limit;
                m = m.max(if a > limit { 0.0 } else { a });
            }
            *d = m / 127.0;
            let inv = if m > 0.0 { 127.0 / m } else { 0.0 };
            for (q, &v) in q.iter_mut().zip(x) {
                *q = if v.abs() > limit { 0 } else { rounded_i8(v * inv) };
            }
        }
        any
    }
}

/// `v` (|v| <= 127.5) rounded to the nearest integer, ties to even, read
/// from the low byte of `v + 1.5 * 2^23` (no saturating float-to-int cast,
/// which keeps loops from vectorizing).
#[inline(always)]
fn rounded_i8(v: f32) -> i8 {
    (v + ROUNDER).to_bits() as u8 as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_3e_7_relative_of_f64() {
        for i in -870..=880 {
            let x = i as f32 * 0.1;
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp(-1e4), 0.0);
    }

    #[test]
    fn erf_matches_f64_reference_within_4e_7() {
        for i in -24..=24 {
            let x = i as f64 * 0.25;
            let got = f64::from(erf(x as f32));
            let want = erf_series(x);
            assert!((got - want).abs() < 4e-7, "erf({x}) = {got}, want {want}");
        }
    }

    /// Maclaurin series (|x| <= 3) or the asymptotic tail: f64-exact enough.
    fn erf_series(x: f64) -> f64 {
        if x.abs() > 5.0 {
            return x.signum();
        }
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn softmax_sums_to_one_and_ignores_masked_scores() {
        let mut row = vec![1.0, 2.0, 3.0, -1e9];
        softmax_inplace(&mut row, 0.5);
        let e: Vec<f64> = [0.5f64, 1.0, 1.5].iter().map(|v| v.exp()).collect();
        let total: f64 = e.iter().sum();
        for (got, want) in row.iter().zip(e.iter().map(|v| v / total)) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert_eq!(row[3], 0.0);
    }

    #[test]
    fn int8_codes_round_to_nearest_and_skip_outliers() {
        let x = [0.5, -1.0, 2.0, 0.25, -0.75, 7.0, 1.5, -2.0, 0.1];
        let mut q = [0i8; 9];
        let d = quantize_i8(&x, &mut q);
        assert_eq!(d, 7.0 / 127.0);
        for (&v, &c) in x.iter().zip(&q) {
            assert_eq!(i32::from(c), (v / d).round() as i32, "{v}");
        }
        let mut d = [0f32; 2];
        assert!(quantize_i8_groups(&x, &mut q, &mut d, 5, 6.0));
        assert_eq!(d, [2.0 / 127.0, 2.0 / 127.0]);
        assert_eq!(q[5], 0);
        assert_eq!((q[2], q[7]), (127, -127));
        assert!(!quantize_i8_groups(&x[..5], &mut q[..5], &mut d, 5, 6.0));
    }

    #[test]
    fn layer_norm_centres_and_scales() {
        let mut x = vec![1.0, 2.0, 3.0, 6.0];
        add_layer_norm(&mut x, &[1.0; 4], &[2.0; 4], &[0.5; 4], 1e-12);
        let mean: f32 = x.iter().map(|v| (v - 0.5) / 2.0).sum::<f32>() / 4.0;
        let var: f32 = x.iter().map(|v| ((v - 0.5) / 2.0).powi(2)).sum::<f32>() / 4.0;
        assert!(
            mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5,
            "{mean} {var}"
        );
    }
}
