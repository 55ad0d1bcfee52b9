//! Matrix-vector kernels for the decoder's hot path: weights stay in their
//! GGUF block format and activations are quantized to 8 bits on the fly, as
//! llama.cpp does, so a token reads 4-8 bits per weight instead of 32 and
//! our logits follow llama.cpp's arithmetic: 8-bit blocks of 32 (`Q8_0`/
//! `Q8_1`) for the legacy formats and IQ4_NL, of 256 (`Q8_K`) for the
//! K-quants and IQ4_XS. F16,
//! BF16 and anything else are decoded to f32 once at load.
//!
//! Encoders run many tokens through each layer at once: `dense` holds their
//! linear layers (f32 GEMM or `int8` per-channel weights × per-token
//! activations) and `math` the element-wise work between them.

pub mod activation;
mod avx2;
mod avx2_k;
pub mod dense;
pub mod dot;
pub mod int8;
pub mod kblocks;
pub mod math;
mod neon;

use rayon::prelude::*;

use crate::format::gguf::GgmlType;
use crate::quant::{self, QuantError};
use activation::{Q8Row, QK};
use kblocks::Q8KRow;

/// Weight encodings with a block kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4K,
    Q5K,
    Q6K,
    IQ4NL,
    IQ4XS,
}

/// Tokens from which f32 weights multiply by GEMM rather than row dots.
const GEMM_TOKENS: usize = 16;

/// One weight row against four activation rows.
type Dot4<A> = fn(&[u8], [&A; 4]) -> [f32; 4];

/// A block kernel and the activation blocks it takes.
enum Kernel {
    /// 32-blocks (`Q8_0`/`Q8_1`), for the legacy formats; with a four-row
    /// kernel for prefill where there is one.
    Q8(fn(&[u8], &Q8Row) -> f32, Option<Dot4<Q8Row>>),
    /// 256-blocks (`Q8_K`), for the K-quants.
    Q8K(fn(&[u8], &Q8KRow) -> f32),
}

impl BlockKind {
    fn of(ty: GgmlType) -> Option<Self> {
        Some(match ty {
            GgmlType::Q8_0 => Self::Q8_0,
            GgmlType::Q4_0 => Self::Q4_0,
            GgmlType::Q4_1 => Self::Q4_1,
            GgmlType::Q5_0 => Self::Q5_0,
            GgmlType::Q5_1 => Self::Q5_1,
            GgmlType::Q4_K => Self::Q4K,
            GgmlType::Q5_K => Self::Q5K,
            GgmlType::Q6_K => Self::Q6K,
            GgmlType::IQ4_NL => Self::IQ4NL,
            GgmlType::IQ4_XS => Self::IQ4XS,
            _ => return None,
        })
    }

    fn ggml(self) -> GgmlType {
        match self {
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4_1 => GgmlType::Q4_1,
            Self::Q5_0 => GgmlType::Q5_0,
            Self::Q5_1 => GgmlType::Q5_1,
            Self::Q4K => GgmlType::Q4_K,
            Self::Q5K => GgmlType::Q5_K,
            Self::Q6K => GgmlType::Q6_K,
            Self::IQ4NL => GgmlType::IQ4_NL,
            Self::IQ4XS => GgmlType::IQ4_XS,
        }
    }

    /// Weights per block.
    fn block_len(self) -> usize {
        match self {
            Self::Q4K | Self::Q5K | Self::Q6K | Self::IQ4XS => quant::kquants::QK_K,
            _ => QK,
        }
    }

    fn kernel(self) -> Kernel {
        match self {
            Self::Q8_0 => Kernel::Q8(dot::q8_0, Some(dot::q8_0_x4)),
            Self::Q4_0 => Kernel::Q8(dot::q4_0, Some(dot::q4_0_x4)),
            Self::Q4_1 => Kernel::Q8(dot::q4_1, Some(dot::q4_1_x4)),
            Self::Q5_0 => Kernel::Q8(dot::q5_0, None),
            Self::Q5_1 => Kernel::Q8(dot::q5_1, None),
            Self::Q4K => Kernel::Q8K(kblocks::q4_k),
            Self::Q5K => Kernel::Q8K(kblocks::q5_k),
            Self::Q6K => Kernel::Q8K(kblocks::q6_k),
            Self::IQ4NL => Kernel::Q8(dot::iq4_nl, Some(dot::iq4_nl_x4)),
            Self::IQ4XS => Kernel::Q8K(kblocks::iq4_xs),
        }
    }
}

#[derive(Debug, Clone)]
enum Storage {
    Blocks { kind: BlockKind, bytes: Vec<u8> },
    F32(Vec<f32>),
}

/// A `[rows, cols]` weight matrix (a linear layer's `[out, in]`).
#[derive(Debug, Clone)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    storage: Storage,
}

/// Output rows per parallel task: fixed, so results never depend on the thread count.
const ROWS_PER_TASK: usize = 16;

impl Matrix {
    /// Wraps stored bytes of ggml type `ty`; block formats are kept as they
    /// are, everything else is decoded to f32.
    pub fn from_ggml(
        ty: GgmlType,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, QuantError> {
        let storage = match BlockKind::of(ty) {
            Some(kind) if cols.is_multiple_of(kind.block_len()) => {
                let want = ty.bytes_for((rows * cols) as u64).unwrap_or(u64::MAX);
                if bytes.len() as u64 != want {
                    return Err(QuantError::ByteCount {
                        ty: ty.name().into(),
                        elems: rows * cols,
                        got: bytes.len(),
                        want: want as usize,
                    });
                }
                Storage::Blocks {
                    kind,
                    bytes: bytes.to_vec(),
                }
            }
            _ => {
                let mut data = vec![0f32; rows * cols];
                quant::dequantize(ty, bytes, &mut data)?;
                Storage::F32(data)
            }
        };
        Ok(Self {
            rows,
            cols,
            storage,
        })
    }

    pub fn from_f32(data: Vec<f32>, rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols);
        Self {
            rows,
            cols,
            storage: Storage::F32(data),
        }
    }

    /// The rows of `parts` one under the other, when they share a width and
    /// a storage format.
    fn stack(parts: &[Matrix]) -> Option<Matrix> {
        let first = parts.first()?;
        let cols = first.cols;
        let rows = parts.iter().map(|m| m.rows).sum();
        let storage = match &first.storage {
            Storage::Blocks { kind, .. } => {
                let mut all = Vec::new();
                for m in parts {
                    match &m.storage {
                        Storage::Blocks { kind: k, bytes } if k == kind && m.cols == cols => {
                            all.extend_from_slice(bytes)
                        }
                        _ => return None,
                    }
                }
                Storage::Blocks {
                    kind: *kind,
                    bytes: all,
                }
            }
            Storage::F32(_) => {
                let mut all = Vec::new();
                for m in parts {
                    match &m.storage {
                        Storage::F32(v) if m.cols == cols => all.extend_from_slice(v),
                        _ => return None,
                    }
                }
                Storage::F32(all)
            }
        };
        Some(Matrix {
            rows,
            cols,
            storage,
        })
    }

    /// Bytes the weights occupy in memory.
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::Blocks { bytes, .. } => bytes.len(),
            Storage::F32(v) => v.len() * 4,
        }
    }

    /// Row `r` decoded to f32 (embedding lookup).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        match &self.storage {
            Storage::Blocks { kind, bytes } => {
                let rb = bytes.len() / self.rows;
                quant::dequantize(kind.ggml(), &bytes[r * rb..(r + 1) * rb], out)
                    .expect("row length checked at construction");
            }
            Storage::F32(v) => out.copy_from_slice(&v[r * self.cols..(r + 1) * self.cols]),
        }
    }

    /// `out[t, r] = sum_c self[r, c] * x[t, c]` for `n` input rows of `x`.
    pub fn matmul(&self, x: &[f32], n: usize, out: &mut [f32]) {
        assert_eq!(x.len(), n * self.cols);
        assert_eq!(out.len(), n * self.rows);
        if let Storage::F32(wv) = &self.storage {
            if n >= GEMM_TOKENS {
                // Prefill: a cache-blocked GEMM, 4x the row-by-row dot
                // products on an F32 SmolLM2 (fixed tiles: the same bits at
                // any thread count).
                return dense::f32_gemm(wv, None, self.rows, self.cols, x, n, out, int8::keep);
            }
        }
        let mut by_row = vec![0f32; n * self.rows];
        match &self.storage {
            Storage::Blocks { kind, bytes } => {
                let rb = bytes.len() / self.rows;
                match kind.kernel() {
                    Kernel::Q8(dot, dot4) => {
                        let acts = quantize_rows(x, self.cols, Q8Row::quantize_from);
                        block_products(&mut by_row, n, bytes, rb, &acts, dot, dot4);
                    }
                    Kernel::Q8K(dot) => {
                        let acts = quantize_rows(x, self.cols, Q8KRow::quantize_from);
                        block_products(&mut by_row, n, bytes, rb, &acts, dot, None);
                    }
                }
            }
            Storage::F32(wv) => {
                for_row_chunks(&mut by_row, n, wv, self.cols, |o, w| {
                    for (orow, wrow) in o.chunks_exact_mut(n).zip(w.chunks_exact(self.cols)) {
                        for (v, xr) in orow.iter_mut().zip(x.chunks_exact(self.cols)) {
                            *v = dot::f32_dot(wrow, xr);
                        }
                    }
                });
            }
        }
        if n == 1 {
            out.copy_from_slice(&by_row);
        } else {
            for (r, row) in by_row.chunks_exact(n).enumerate() {
                for (t, &v) in row.iter().enumerate() {
                    out[t * self.rows + r] = v;
                }
            }
        }
    }
}

/// Matrices that take the same input (q/k/v, gate/up). When they share a
/// storage format they are stacked at load into one matrix: one activation
/// quantization and one parallel pass instead of several. Each output is the
/// same dot product either way, so stacking never changes a bit.
#[derive(Debug, Clone)]
pub struct Group {
    /// Output rows of each part, in order.
    rows: Vec<usize>,
    stacked: Option<Matrix>,
    parts: Vec<Matrix>,
}

impl Group {
    pub fn new(parts: Vec<Matrix>) -> Self {
        let rows = parts.iter().map(|m| m.rows).collect();
        match Matrix::stack(&parts) {
            Some(m) => Self {
                rows,
                stacked: Some(m),
                parts: Vec::new(),
            },
            None => Self {
                rows,
                stacked: None,
                parts,
            },
        }
    }

    /// Bytes the weights occupy in memory.
    pub fn bytes(&self) -> usize {
        self.stacked
            .iter()
            .chain(&self.parts)
            .map(Matrix::bytes)
            .sum()
    }

    /// `outs[i] = part i × x` for `n` input rows (`outs[i]` is `[n, rows_i]`).
    pub fn matmul(&self, x: &[f32], n: usize, outs: &mut [&mut [f32]]) {
        assert_eq!(outs.len(), self.rows.len());
        let Some(m) = &self.stacked else {
            for (part, out) in self.parts.iter().zip(outs.iter_mut()) {
                part.matmul(x, n, out);
            }
            return;
        };
        let mut all = vec![0f32; n * m.rows];
        m.matmul(x, n, &mut all);
        for (t, row) in all.chunks_exact(m.rows).enumerate() {
            let mut at = 0;
            for (out, &r) in outs.iter_mut().zip(&self.rows) {
                out[t * r..(t + 1) * r].copy_from_slice(&row[at..at + r]);
                at += r;
            }
        }
    }
}

/// Each `cols`-long row of `x`, quantized by `quantize`.
fn quantize_rows<A: Default>(x: &[f32], cols: usize, quantize: fn(&mut A, &[f32])) -> Vec<A> {
    x.chunks_exact(cols)
        .map(|xr| {
            let mut q = A::default();
            quantize(&mut q, xr);
            q
        })
        .collect()
}

/// `out[r * n + t] = dot(weight row r, acts[t])`, rows of `row_bytes`;
/// four tokens at a time with `dot4` when there is one (the same bits).
fn block_products<A: Sync>(
    out: &mut [f32],
    n: usize,
    bytes: &[u8],
    row_bytes: usize,
    acts: &[A],
    dot: fn(&[u8], &A) -> f32,
    dot4: Option<Dot4<A>>,
) {
    let fours = if dot4.is_some() { n / 4 * 4 } else { 0 };
    for_row_chunks(out, n, bytes, row_bytes, |o, w| {
        for (orow, wrow) in o.chunks_exact_mut(n).zip(w.chunks_exact(row_bytes)) {
            if let Some(dot4) = dot4 {
                for (v, a) in orow[..fours].chunks_exact_mut(4).zip(acts.chunks_exact(4)) {
                    v.copy_from_slice(&dot4(wrow, [&a[0], &a[1], &a[2], &a[3]]));
                }
            }
            for (v, a) in orow[fours..].iter_mut().zip(&acts[fours..]) {
                *v = dot(wrow, a);
            }
        }
    });
}

/// Runs `f` on each task's rows, on rayon's pool: `ROWS_PER_TASK` rows of
/// output (`n` values each) with their weights (`row_len` items each).
fn for_row_chunks<T: Sync>(
    out: &mut [f32],
    n: usize,
    weights: &[T],
    row_len: usize,
    f: impl Fn(&mut [f32], &[T]) + Sync,
) {
    let (o, w) = (n * ROWS_PER_TASK, row_len * ROWS_PER_TASK);
    if rayon::current_num_threads() == 1 {
        // The same tasks in order on this thread: handing each matmul to a
        // one-thread pool and waiting for it cost 40% of 1-thread decode.
        out.chunks_mut(o)
            .zip(weights.chunks(w))
            .for_each(|(o, w)| f(o, w));
        return;
    }
    out.par_chunks_mut(o)
        .zip(weights.par_chunks(w))
        .for_each(|(o, w)| f(o, w));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SIMD kernels against the portable ones: integer block sums are exact,
    /// so only float summation order may differ (relative 1e-5).
    #[test]
    fn simd_kernels_match_portable_ones() {
        // Several block counts, down to one.
        for cols in [576, 544, 32] {
            let w = sample(1, cols);
            let x: Vec<f32> = sample(1, cols).iter().rev().map(|v| v * 2.0).collect();
            let mut a = Q8Row::default();
            a.quantize_from(&x);
            let cases: [Case<Q8Row>; 6] = [
                ("Q8_0", dot::q8_0, dot::portable::q8_0),
                ("Q4_0", dot::q4_0, dot::portable::q4_0),
                ("Q4_1", dot::q4_1, dot::portable::q4_1),
                ("Q5_0", dot::q5_0, dot::portable::q5_0),
                ("Q5_1", dot::q5_1, dot::portable::q5_1),
                ("IQ4_NL", dot::iq4_nl, dot::portable::iq4_nl),
            ];
            assert_fast_matches_slow(&w, cols, &a, &cases);
        }
        // Four-row kernels: the same bits as four single-row calls.
        type Four = fn(&[u8], [&Q8Row; 4]) -> [f32; 4];
        type One = fn(&[u8], &Q8Row) -> f32;
        let fours: [(&str, Four, One); 4] = [
            ("Q8_0", dot::q8_0_x4, dot::q8_0),
            ("Q4_0", dot::q4_0_x4, dot::q4_0),
            ("Q4_1", dot::q4_1_x4, dot::q4_1),
            ("IQ4_NL", dot::iq4_nl_x4, dot::iq4_nl),
        ];
        // An odd and an even number of blocks (IQ4_NL splits them).
        for cols in [544, 576] {
            let w = sample(1, cols);
            let rows = activation_rows(cols, |t| t as f32 + 0.5);
            for (scheme, four, one) in fours {
                let enc = quant::quantize(scheme.parse().unwrap(), &w, cols).unwrap();
                let got = four(&enc.data, [&rows[0], &rows[1], &rows[2], &rows[3]]);
                let want: Vec<u32> = rows.iter().map(|a| one(&enc.data, a).to_bits()).collect();
                assert_eq!(got.map(f32::to_bits).to_vec(), want, "{scheme} at {cols}");
            }
        }
        // K-quants: one and three super-blocks.
        for cols in [256, 768] {
            let w = sample(1, cols);
            let x: Vec<f32> = sample(1, cols)
                .iter()
                .rev()
                .map(|v| v * 2.0 - 0.1)
                .collect();
            let mut a = Q8KRow::default();
            a.quantize_from(&x);
            let cases: [Case<Q8KRow>; 4] = [
                ("Q4_K", kblocks::q4_k, kblocks::portable::q4_k),
                ("Q5_K", kblocks::q5_k, kblocks::portable::q5_k),
                ("Q6_K", kblocks::q6_k, kblocks::portable::q6_k),
                ("IQ4_XS", kblocks::iq4_xs, kblocks::portable::iq4_xs),
            ];
            assert_fast_matches_slow(&w, cols, &a, &cases);
        }
    }

    /// The AVX-512 VNNI builds of the block kernels give the AVX2 builds'
    /// bits (same integers, same float order), single and four-row.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vnni_kernels_give_the_avx2_kernels_bits() {
        if dot::x86_level() != dot::X86::Vnni {
            eprintln!("no AVX-512 VNNI on this CPU: nothing to compare");
            return;
        }
        let cols = 544;
        let w = sample(1, cols);
        let rows = activation_rows(cols, |t| t as f32 - 1.5);
        type One = unsafe fn(&[u8], &Q8Row) -> f32;
        type Four = unsafe fn(&[u8], [&Q8Row; 4]) -> [f32; 4];
        let singles: [(&str, One, One); 6] = [
            ("Q8_0", avx2::q8_0, avx2::q8_0_vnni),
            ("Q4_0", avx2::q4_0, avx2::q4_0_vnni),
            ("Q4_1", avx2::q4_1, avx2::q4_1_vnni),
            ("Q5_0", avx2::q5_0, avx2::q5_0_vnni),
            ("Q5_1", avx2::q5_1, avx2::q5_1_vnni),
            ("IQ4_NL", avx2::iq4_nl, avx2::iq4_nl_vnni),
        ];
        for (scheme, plain, vnni) in singles {
            let enc = quant::quantize(scheme.parse().unwrap(), &w, cols).unwrap();
            for a in &rows {
                // SAFETY: x86_level() found AVX2, FMA, F16C, AVX-512 VL and VNNI.
                let (p, v) = unsafe { (plain(&enc.data, a), vnni(&enc.data, a)) };
                assert_eq!(p.to_bits(), v.to_bits(), "{scheme}");
            }
        }
        let fours: [(&str, Four, Four); 4] = [
            ("Q8_0", avx2::q8_0_x4, avx2::q8_0_x4_vnni),
            ("Q4_0", avx2::q4_0_x4, avx2::q4_0_x4_vnni),
            ("Q4_1", avx2::q4_1_x4, avx2::q4_1_x4_vnni),
            ("IQ4_NL", avx2::iq4_nl_x4, avx2::iq4_nl_x4_vnni),
        ];
        let four = [&rows[0], &rows[1], &rows[2], &rows[3]];
        for (scheme, plain, vnni) in fours {
            let enc = quant::quantize(scheme.parse().unwrap(), &w, cols).unwrap();
            // SAFETY: as above.
            let (p, v) = unsafe { (plain(&enc.data, four), vnni(&enc.data, four)) };
            assert_eq!(p.map(f32::to_bits), v.map(f32::to_bits), "{scheme}");
        }
    }

    /// A scheme, its dispatched (SIMD) kernel and its portable one.
    type Case<A> = (&'static str, fn(&[u8], &A) -> f32, fn(&[u8], &A) -> f32);

    fn assert_fast_matches_slow<A>(w: &[f32], cols: usize, a: &A, cases: &[Case<A>]) {
        for (scheme, fast, slow) in cases {
            let enc = quant::quantize(scheme.parse().unwrap(), w, cols).unwrap();
            let (f, s) = (fast(&enc.data, a), slow(&enc.data, a));
            assert!(
                (f - s).abs() <= 1e-5 * s.abs().max(1.0),
                "{scheme} at {cols} columns: {f} vs {s}"
            );
        }
    }

    /// A group (stacked when the formats match, separate when not) gives
    /// the bits of each matrix's own product.
    #[test]
    fn groups_give_each_parts_own_product() {
        let (cols, n) = (64, 5);
        let x = sample(n, cols);
        let matrix = |scheme: &str, rows: usize, seed: usize| {
            let w: Vec<f32> = sample(rows + seed, cols)[seed * cols..].to_vec();
            let s: quant::Scheme = scheme.parse().unwrap();
            let enc = quant::quantize(s, &w, cols).unwrap();
            Matrix::from_ggml(quant::ggml_type(s).unwrap(), &enc.data, rows, cols).unwrap()
        };
        for schemes in [["Q4_1", "Q4_1", "Q4_1"], ["Q4_1", "Q8_0", "Q4_1"]] {
            let parts: Vec<Matrix> = schemes
                .iter()
                .zip([12, 4, 4])
                .enumerate()
                .map(|(i, (s, rows))| matrix(s, rows, i + 1))
                .collect();
            let group = Group::new(parts.clone());
            assert_eq!(group.stacked.is_some(), schemes[0] == schemes[1]);
            let mut outs: Vec<Vec<f32>> = parts.iter().map(|m| vec![0.0; n * m.rows]).collect();
            let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            group.matmul(&x, n, &mut views);
            for (part, got) in parts.iter().zip(&outs) {
                let mut want = vec![0f32; n * part.rows];
                part.matmul(&x, n, &mut want);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(got), bits(&want), "{schemes:?}");
            }
        }
    }

    /// Four quantized activation rows: the sample row scaled by `scale(t)`.
    fn activation_rows(cols: usize, scale: impl Fn(usize) -> f32) -> Vec<Q8Row> {
        (0..4)
            .map(|t| {
                let x: Vec<f32> = sample(1, cols).iter().map(|v| v * scale(t)).collect();
                let mut a = Q8Row::default();
                a.quantize_from(&x);
                a
            })
            .collect()
    }

    fn sample(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| (((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0) * 0.3)
            .collect()
    }

    /// Every block kernel against the f32 product of its own dequantized
    /// weights: the only difference left is the 8-bit activation rounding.
    #[test]
    fn block_kernels_match_dequantized_f32_within_activation_rounding() {
        let (rows, cols, n) = (40, 512, 3);
        let w = sample(rows, cols);
        let x: Vec<f32> = sample(n, cols).iter().map(|v| v * 3.0 + 0.1).collect();
        let schemes = [
            "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
        ];
        for scheme in schemes {
            let s: quant::Scheme = scheme.parse().unwrap();
            let enc = quant::quantize(s, &w, cols).unwrap();
            let ty = quant::ggml_type(s).unwrap();
            let m = Matrix::from_ggml(ty, &enc.data, rows, cols).unwrap();
            let mut deq = vec![0f32; rows * cols];
            quant::dequantize(ty, &enc.data, &mut deq).unwrap();
            let reference = Matrix::from_f32(deq, rows, cols);
            let (mut got, mut want) = (vec![0f32; n * rows], vec![0f32; n * rows]);
            m.matmul(&x, n, &mut got);
            reference.matmul(&x, n, &mut want);
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (g, e) in got.iter().zip(&want) {
                assert!((g - e).abs() <= 0.02 * scale, "{scheme}: {g} vs {e}");
            }
        }
    }
}
