//! Int8 GEMM for encoders: weights int8 per output channel, activations int8
//! per token in groups of 64 inputs, and the few outlier activations
//! (|x| > 6, as in LLM.int8()) kept exact:
//!
//! `y[t, r] = d_w[r] * (sum_g d_x[t, g] * S[t, g, r] + sum_{k outlier} x[t, k] * q_w[r, k]) + b[r]`
//!
//! with `S` the integer sums of each group. On MiniLM plain per-token int8
//! gave cosine 0.993 to f32; groups of 64 alone 0.998; groups plus outliers
//! 0.999 (weight rounding alone accounts for 0.9993). See docs/benchmarks.md.
//!
//! Weights are packed in panels of 16 output rows: for each group of 4 input
//! columns, 16 rows × 4 codes = 64 bytes, the operand layout of AVX-512 VNNI's
//! `vpdpbusd`: one broadcast of a token's 4 codes against one 64-byte load
//! updates 16 rows at once, and the sums land per row with no horizontal add.
//! `vpdpbusd` multiplies unsigned by signed bytes, so the VNNI kernel feeds
//! `q + 128` and subtracts `128 * sum(row codes)`; AVX2 multiplies `|q|` by
//! the weight with `q`'s sign instead. Kernels produce the integer group sums
//! only, all identical; one shared loop turns them into floats, so every
//! kernel gives the same bits.

use rayon::prelude::*;

use std::cell::RefCell;

use super::math::{quantize_i8, quantize_i8_groups};

/// Work done on finished outputs while they are in cache (e.g. GELU).
pub type Epilogue = fn(&mut [f32]);

/// No epilogue.
pub fn keep(_: &mut [f32]) {}

/// Output rows per panel.
const PANEL: usize = 16;
/// Input columns per packed quad (one `vpdpbusd` lane).
const QUAD: usize = 4;
/// Input columns per activation scale.
pub const GROUP: usize = 64;
/// Activations beyond this magnitude are outliers, computed exactly.
pub const OUTLIER: f32 = 6.0;
/// Tokens per parallel task: fixed, so work splits never depend on threads.
const TOKENS_PER_TASK: usize = 16;

/// A `[rows, cols]` weight matrix in int8 per output channel, packed.
#[derive(Debug, Clone)]
pub struct Int8Matrix {
    pub rows: usize,
    pub cols: usize,
    /// Input columns rounded up to a whole group.
    kpad: usize,
    /// Output rows rounded up to two panels (the VNNI kernel's tile).
    rpad: usize,
    packed: Vec<i8>,
    scale: Vec<f32>,
    /// `[group, rpad]`: each row's code sum per group (VNNI's +128 correction).
    group_sum: Vec<i32>,
}

/// Activation rows quantized per token and group; outliers set aside.
#[derive(Debug, Default)]
pub struct Int8Rows {
    n: usize,
    kpad: usize,
    /// `[n, kpad]` codes, outliers zeroed.
    q: Vec<i8>,
    /// `[n, groups]` scales.
    d: Vec<f32>,
    /// Per token, its outliers as (column, value).
    outliers: Vec<Vec<(usize, f32)>>,
}

impl Int8Matrix {
    /// Quantizes row-major `[rows, cols]` f32 weights, symmetric per row.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols);
        let kpad = cols.next_multiple_of(GROUP);
        let rpad = rows.next_multiple_of(2 * PANEL);
        let groups = kpad / GROUP;
        let mut packed = vec![0i8; rpad * kpad];
        let (mut scale, mut group_sum) = (vec![0f32; rpad], vec![0i32; groups * rpad]);
        let mut codes = vec![0i8; cols];
        for (r, row) in w.chunks_exact(cols).enumerate() {
            scale[r] = quantize_i8(row, &mut codes);
            for (k, &c) in codes.iter().enumerate() {
                packed[packed_index(kpad, r, k)] = c;
                group_sum[k / GROUP * rpad + r] += i32::from(c);
            }
        }
        Self {
            rows,
            cols,
            kpad,
            rpad,
            packed,
            scale,
            group_sum,
        }
    }

    fn groups(&self) -> usize {
        self.kpad / GROUP
    }

    /// Bytes the weights occupy in memory.
    pub fn bytes(&self) -> usize {
        self.packed.len() + self.scale.len() * 4 + self.group_sum.len() * 4
    }

    /// `out[t, r] = sum_c self[r, c] * x[t, c] + bias[r]` for `n` rows of `x`.
    /// Then `then` on each finished output row.
    pub fn matmul(&self, x: &[f32], n: usize, bias: &[f32], out: &mut [f32], then: Epilogue) {
        self.matmul_with(Kernel::detect(), x, n, bias, out, then);
    }

    fn matmul_with(
        &self,
        kernel: Kernel,
        x: &[f32],
        n: usize,
        bias: &[f32],
        out: &mut [f32],
        then: Epilogue,
    ) {
        assert_eq!(x.len(), n * self.cols);
        assert_eq!(out.len(), n * self.rows);
        assert_eq!(bias.len(), self.rows);
        let per_token = self.rpad;
        thread_local! {
            /// Sums of one task, reused: a fresh vector per task was 10% of
            /// the forward in page faults and zeroing.
            static SUMS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
        }
        // Each task quantizes its own tokens: no pass over all activations
        // (and no wait for it) before the products start.
        out.par_chunks_mut(TOKENS_PER_TASK * self.rows)
            .zip(x.par_chunks(TOKENS_PER_TASK * self.cols))
            .for_each(|(out, x)| {
                let tn = out.len() / self.rows;
                let acts = Int8Rows::quantize(x, tn, self.cols, self.kpad);
                SUMS.with_borrow_mut(|sums| {
                    sums.resize(TOKENS_PER_TASK * per_token, 0.0);
                    kernel.run(self, &acts, 0, tn, sums);
                    for (t, (o, s)) in out
                        .chunks_exact_mut(self.rows)
                        .zip(sums.chunks_exact(per_token))
                        .enumerate()
                    {
                        self.finish(&acts, t, s, bias, o);
                        then(o);
                    }
                });
            });
    }

    /// One token's outputs from its scaled group sums (`[rpad]`).
    fn finish(&self, acts: &Int8Rows, t: usize, sums: &[f32], bias: &[f32], out: &mut [f32]) {
        out.copy_from_slice(&sums[..self.rows]);
        for &(k, v) in &acts.outliers[t] {
            // Column k of each panel: 16 codes, 4 bytes apart.
            for (p, o) in out.chunks_mut(PANEL).enumerate() {
                let at = packed_index(self.kpad, p * PANEL, k);
                for (i, o) in o.iter_mut().enumerate() {
                    *o += v * f32::from(self.packed[at + i * QUAD]);
                }
            }
        }
        for ((o, &s), &b) in out.iter_mut().zip(&self.scale).zip(bias) {
            *o = *o * s + b;
        }
    }

    fn panel(&self, p: usize) -> &[i8] {
        let len = PANEL * self.kpad;
        &self.packed[p * len..(p + 1) * len]
    }
}

/// Where code `(r, k)` lives in the packed buffer.
fn packed_index(kpad: usize, r: usize, k: usize) -> usize {
    let (panel, row) = (r / PANEL, r % PANEL);
    (panel * kpad / QUAD + k / QUAD) * PANEL * QUAD + row * QUAD + k % QUAD
}

impl Int8Rows {
    fn quantize(x: &[f32], n: usize, cols: usize, kpad: usize) -> Self {
        let groups = kpad / GROUP;
        let mut rows = Self {
            n,
            kpad,
            q: vec![0; n * kpad],
            d: vec![0.0; n * groups],
            outliers: vec![Vec::new(); n],
        };
        for (((q, d), outliers), x) in rows
            .q
            .chunks_mut(kpad)
            .zip(rows.d.chunks_mut(groups))
            .zip(rows.outliers.iter_mut())
            .zip(x.chunks(cols))
        {
            if quantize_i8_groups(x, &mut q[..x.len()], d, GROUP, OUTLIER) {
                let big = x.iter().enumerate().filter(|(_, v)| v.abs() > OUTLIER);
                outliers.extend(big.map(|(k, &v)| (k, v)));
            }
        }
        rows
    }

    fn row(&self, t: usize) -> &[i8] {
        &self.q[t * self.kpad..(t + 1) * self.kpad]
    }
}

/// The integer kernel for this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Kernel {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                return Self::Avx512Vnni;
            }
            if has!("avx2") {
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    /// Every kernel this CPU can run (for tests against the portable one).
    pub fn available() -> Vec<Self> {
        let mut all = vec![Self::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                all.push(Self::Avx2);
            }
            if Self::detect() == Self::Avx512Vnni {
                all.push(Self::Avx512Vnni);
            }
        }
        all
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => "avx512-vnni",
        }
    }

    /// `sums[t, r] = sum_g d_x[t, g] * S[t, g, r]` (`[tn, rpad]`) for tokens
    /// `t0..t0 + tn`, the groups added in order with a separate multiply and
    /// add (no FMA), so that every kernel rounds the same way.
    fn run(self, w: &Int8Matrix, a: &Int8Rows, t0: usize, tn: usize, sums: &mut [f32]) {
        debug_assert!(t0 + tn <= a.n);
        match self {
            Self::Portable => portable(w, a, t0, tn, sums),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect`/`available` only offer kernels the CPU has.
            Self::Avx2 => unsafe { x86::avx2(w, a, t0, tn, sums) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Self::Avx512Vnni => unsafe { x86::vnni(w, a, t0, tn, sums) },
        }
    }
}

fn portable(w: &Int8Matrix, a: &Int8Rows, t0: usize, tn: usize, sums: &mut [f32]) {
    let quads_per_group = GROUP / QUAD;
    for p in 0..w.rpad / PANEL {
        let panel = w.panel(p);
        for t in 0..tn {
            let act = a.row(t0 + t);
            let mut total = [0f32; PANEL];
            for g in 0..w.groups() {
                let mut acc = [0i32; PANEL];
                for quad in g * quads_per_group..(g + 1) * quads_per_group {
                    let block = &panel[quad * PANEL * QUAD..][..PANEL * QUAD];
                    let x = &act[quad * QUAD..][..QUAD];
                    for (acc, wr) in acc.iter_mut().zip(block.chunks_exact(QUAD)) {
                        for (wv, xv) in wr.iter().zip(x) {
                            *acc += i32::from(*wv) * i32::from(*xv);
                        }
                    }
                }
                let d = a.d[(t0 + t) * w.groups() + g];
                for (s, &v) in total.iter_mut().zip(&acc) {
                    *s += v as f32 * d;
                }
            }
            sums[t * w.rpad + p * PANEL..][..PANEL].copy_from_slice(&total);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Int8Matrix, Int8Rows, GROUP, PANEL, QUAD};

    const QUADS: usize = GROUP / QUAD;

    /// Runs `$tile::<T>` over every panel step for tokens in tiles of 4, 2, 1.
    macro_rules! tiles {
        ($tile:ident, $w:expr, $a:expr, $t0:expr, $tn:expr, $sums:expr, $step:expr $(, $extra:expr)*) => {{
            let mut t = 0;
            while t < $tn {
                let take = match $tn - t {
                    4.. => 4,
                    2.. => 2,
                    _ => 1,
                };
                let sums = &mut $sums[t * $w.rpad..];
                for p in (0..$w.rpad / PANEL).step_by($step) {
                    match take {
                        4 => $tile::<4>($w, $a, $t0 + t, p, sums $(, $extra)*),
                        2 => $tile::<2>($w, $a, $t0 + t, p, sums $(, $extra)*),
                        _ => $tile::<1>($w, $a, $t0 + t, p, sums $(, $extra)*),
                    }
                }
                t += take;
            }
        }};
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn vnni(
        w: &Int8Matrix,
        a: &Int8Rows,
        t0: usize,
        tn: usize,
        sums: &mut [f32],
    ) {
        // Activations as unsigned bytes, q + 128, for vpdpbusd.
        let unsigned: Vec<u8> = a.q[t0 * a.kpad..(t0 + tn) * a.kpad]
            .iter()
            .map(|&q| (q as u8) ^ 0x80)
            .collect();
        tiles!(
            vnni_tile,
            w,
            a,
            0,
            tn,
            sums,
            2,
            &unsigned,
            &a.d[t0 * w.groups()..]
        );
    }

    /// Two panels (32 rows) × `T` tokens: 2T integer accumulators per group,
    /// scaled into 2T float ones.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni_tile<const T: usize>(
        w: &Int8Matrix,
        a: &Int8Rows,
        t: usize,
        p: usize,
        sums: &mut [f32],
        unsigned: &[u8],
        scales: &[f32],
    ) {
        let groups = w.groups();
        let (w0, w1) = (w.panel(p).as_ptr(), w.panel(p + 1).as_ptr());
        let x: [*const u8; T] = std::array::from_fn(|i| unsigned[(t + i) * a.kpad..].as_ptr());
        let rows = p * PANEL;
        let mut total = [[_mm512_setzero_ps(); 2]; T];
        for g in 0..groups {
            let mut acc = [[_mm512_setzero_si512(); 2]; T];
            for quad in g * QUADS..(g + 1) * QUADS {
                // SAFETY: each panel holds kpad / 4 64-byte quads; each row `kpad` bytes.
                unsafe {
                    let wa = _mm512_loadu_si512(w0.add(quad * 64).cast());
                    let wb = _mm512_loadu_si512(w1.add(quad * 64).cast());
                    for (acc, x) in acc.iter_mut().zip(x) {
                        let b =
                            _mm512_set1_epi32(x.add(quad * QUAD).cast::<i32>().read_unaligned());
                        acc[0] = _mm512_dpbusd_epi32(acc[0], b, wa);
                        acc[1] = _mm512_dpbusd_epi32(acc[1], b, wb);
                    }
                }
            }
            let gs = &w.group_sum[g * w.rpad + rows..];
            // SAFETY: `group_sum` rows are `rpad` long.
            let (c0, c1) = unsafe {
                (
                    _mm512_slli_epi32(_mm512_loadu_si512(gs.as_ptr().cast()), 7),
                    _mm512_slli_epi32(_mm512_loadu_si512(gs[PANEL..].as_ptr().cast()), 7),
                )
            };
            for (i, (total, acc)) in total.iter_mut().zip(&acc).enumerate() {
                let d = _mm512_set1_ps(scales[(t + i) * groups + g]);
                let s0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[0], c0));
                let s1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[1], c1));
                total[0] = _mm512_add_ps(total[0], _mm512_mul_ps(s0, d));
                total[1] = _mm512_add_ps(total[1], _mm512_mul_ps(s1, d));
            }
        }
        for (i, total) in total.iter().enumerate() {
            // SAFETY: `sums` holds `T` tokens of `rpad` values.
            unsafe {
                let out = sums[i * w.rpad + rows..].as_mut_ptr();
                _mm512_storeu_ps(out, total[0]);
                _mm512_storeu_ps(out.add(PANEL), total[1]);
            }
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2(
        w: &Int8Matrix,
        a: &Int8Rows,
        t0: usize,
        tn: usize,
        sums: &mut [f32],
    ) {
        tiles!(avx2_tile, w, a, t0, tn, sums, 1);
    }

    /// One panel (16 rows, two registers) × `T` tokens: `|x| * (w with x's sign)`.
    #[target_feature(enable = "avx2")]
    unsafe fn avx2_tile<const T: usize>(
        w: &Int8Matrix,
        a: &Int8Rows,
        t: usize,
        p: usize,
        sums: &mut [f32],
    ) {
        let groups = w.groups();
        let wp = w.panel(p).as_ptr();
        let x: [*const i8; T] = std::array::from_fn(|i| a.row(t + i).as_ptr());
        let ones = _mm256_set1_epi16(1);
        let rows = p * PANEL;
        let mut total = [[_mm256_setzero_ps(); 2]; T];
        for g in 0..groups {
            let mut acc = [[_mm256_setzero_si256(); 2]; T];
            for quad in g * QUADS..(g + 1) * QUADS {
                // SAFETY: the panel holds kpad / 4 64-byte quads; each row `kpad` bytes.
                unsafe {
                    let lo = _mm256_loadu_si256(wp.add(quad * 64).cast());
                    let hi = _mm256_loadu_si256(wp.add(quad * 64 + 32).cast());
                    for (acc, x) in acc.iter_mut().zip(x) {
                        let b =
                            _mm256_set1_epi32(x.add(quad * QUAD).cast::<i32>().read_unaligned());
                        let ab = _mm256_abs_epi8(b);
                        let plo = _mm256_maddubs_epi16(ab, _mm256_sign_epi8(lo, b));
                        let phi = _mm256_maddubs_epi16(ab, _mm256_sign_epi8(hi, b));
                        acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(plo, ones));
                        acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(phi, ones));
                    }
                }
            }
            for (i, (total, acc)) in total.iter_mut().zip(&acc).enumerate() {
                let d = _mm256_set1_ps(a.d[(t + i) * groups + g]);
                for j in 0..2 {
                    let s = _mm256_cvtepi32_ps(acc[j]);
                    total[j] = _mm256_add_ps(total[j], _mm256_mul_ps(s, d));
                }
            }
        }
        for (i, total) in total.iter().enumerate() {
            // SAFETY: `sums` holds `T` tokens of `rpad` values.
            unsafe {
                let out = sums[i * w.rpad + rows..].as_mut_ptr();
                _mm256_storeu_ps(out, total[0]);
                _mm256_storeu_ps(out.add(8), total[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((((i + seed) * 2654435761usize) % 2001) as f32 / 1000.0 - 1.0) * 0.7)
            .collect()
    }

    /// Every SIMD kernel gives the portable kernel's sums and outputs
    /// bit for bit (same integers, same float operations in the same order), at odd shapes (column and row tails, several groups, 1..17
    /// tokens, outliers).
    #[test]
    fn simd_kernels_match_portable_exactly() {
        for (rows, cols) in [(40, 37), (32, 384), (7, 130)] {
            let w = Int8Matrix::quantize(&sample(rows * cols, 3), rows, cols);
            let bias = sample(rows, 5);
            for tn in [1, 3, 8, 9, 17] {
                let mut x = sample(tn * cols, 11);
                x[cols / 2] = 9.5; // an outlier
                let a = Int8Rows::quantize(&x, tn, cols, w.kpad);
                let mut want = vec![0f32; tn * w.rpad];
                portable(&w, &a, 0, tn, &mut want);
                let mut want_out = vec![0f32; tn * rows];
                w.matmul_with(Kernel::Portable, &x, tn, &bias, &mut want_out, keep);
                for kernel in Kernel::available() {
                    let name = kernel.name();
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    let mut got = vec![0f32; tn * w.rpad];
                    kernel.run(&w, &a, 0, tn, &mut got);
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{name} at {rows}x{cols}, {tn} tokens"
                    );
                    let mut out = vec![0f32; tn * rows];
                    w.matmul_with(kernel, &x, tn, &bias, &mut out, keep);
                    assert_eq!(bits(&out), bits(&want_out), "{name} outputs");
                }
            }
        }
    }

    /// Outputs against the f32 product of the dequantized weights and the
    /// group-quantized activations (outliers exact), computed plainly here,
    /// and against the unquantized product within the int8 rounding.
    #[test]
    fn matmul_equals_the_dequantized_product() {
        let (rows, cols, n) = (33, 150, 5);
        let wf = sample(rows * cols, 1);
        let mut x = sample(n * cols, 2);
        x[cols + 7] = -8.0;
        let bias: Vec<f32> = (0..rows).map(|r| r as f32 * 0.01).collect();
        let w = Int8Matrix::quantize(&wf, rows, cols);
        let mut got = vec![0f32; n * rows];
        w.matmul(&x, n, &bias, &mut got, keep);
        let a = Int8Rows::quantize(&x, n, cols, w.kpad);
        assert_eq!(a.outliers[1], vec![(7, -8.0)]);
        for t in 0..n {
            let xq: Vec<f32> = (0..cols)
                .map(|k| match a.outliers[t].iter().find(|o| o.0 == k) {
                    Some(&(_, v)) => v,
                    None => f32::from(a.row(t)[k]) * a.d[t * w.groups() + k / GROUP],
                })
                .collect();
            for r in 0..rows {
                let code = |k: usize| f32::from(w.packed[packed_index(w.kpad, r, k)]);
                let want: f32 =
                    (0..cols).map(|k| code(k) * w.scale[r] * xq[k]).sum::<f32>() + bias[r];
                let g = got[t * rows + r];
                assert!(
                    (g - want).abs() < 1e-4 * want.abs().max(1.0),
                    "{g} vs {want}"
                );
                let exact: f32 = (0..cols)
                    .map(|k| wf[r * cols + k] * x[t * cols + k])
                    .sum::<f32>()
                    + bias[r];
                assert!((g - exact).abs() < 0.05, "{g} vs {exact}");
            }
        }
    }
}
