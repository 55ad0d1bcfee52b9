//! Matrix-vector kernels for the decoder's hot path: weights stay in their
//! GGUF block format and activations are quantized to 8 bits on the fly, as
//! llama.cpp does, so a token reads 4-8 bits per weight instead of 32 and
//! our logits follow llama.cpp's arithmetic. Formats without a block kernel
//! yet (K-quants, F16, BF16) are decoded to f32 once at load.

pub mod activation;
mod avx2;
pub mod dot;

use rayon::prelude::*;

use crate::format::gguf::GgmlType;
use crate::quant::{self, QuantError};
use activation::{Q8Row, QK};

/// Weight encodings with a block kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
}

impl BlockKind {
    fn of(ty: GgmlType) -> Option<Self> {
        Some(match ty {
            GgmlType::Q8_0 => Self::Q8_0,
            GgmlType::Q4_0 => Self::Q4_0,
            GgmlType::Q4_1 => Self::Q4_1,
            GgmlType::Q5_0 => Self::Q5_0,
            GgmlType::Q5_1 => Self::Q5_1,
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
        }
    }

    fn dot(self) -> fn(&[u8], &Q8Row) -> f32 {
        match self {
            Self::Q8_0 => dot::q8_0,
            Self::Q4_0 => dot::q4_0,
            Self::Q4_1 => dot::q4_1,
            Self::Q5_0 => dot::q5_0,
            Self::Q5_1 => dot::q5_1,
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
            Some(kind) if cols.is_multiple_of(QK) => {
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
        let mut by_row = vec![0f32; n * self.rows];
        match &self.storage {
            Storage::Blocks { kind, bytes } => {
                let acts: Vec<Q8Row> = x
                    .chunks_exact(self.cols)
                    .map(|xr| {
                        let mut q = Q8Row::default();
                        q.quantize_from(xr);
                        q
                    })
                    .collect();
                let rb = bytes.len() / self.rows;
                let dot = kind.dot();
                for_row_chunks(&mut by_row, n, bytes, rb, |o, w| {
                    for (orow, wrow) in o.chunks_exact_mut(n).zip(w.chunks_exact(rb)) {
                        for (v, a) in orow.iter_mut().zip(&acts) {
                            *v = dot(wrow, a);
                        }
                    }
                });
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

/// Runs `f` on each task's rows: `ROWS_PER_TASK` rows of output (`n`
/// values each) with their weights (`row_len` items each). On rayon's pool,
/// or inline when the pool has one thread (a pool of one only adds wake-ups,
/// 10% of a single-threaded decode step); the split is the same either way.
fn for_row_chunks<T: Sync>(
    out: &mut [f32],
    n: usize,
    weights: &[T],
    row_len: usize,
    f: impl Fn(&mut [f32], &[T]) + Sync,
) {
    let (out_task, w_task) = (n * ROWS_PER_TASK, row_len * ROWS_PER_TASK);
    if rayon::current_num_threads() == 1 {
        for (o, w) in out.chunks_mut(out_task).zip(weights.chunks(w_task)) {
            f(o, w);
        }
    } else {
        out.par_chunks_mut(out_task)
            .zip(weights.par_chunks(w_task))
            .for_each(|(o, w)| f(o, w));
    }
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
            type Kernel = fn(&[u8], &Q8Row) -> f32;
            let cases: [(&str, Kernel, Kernel); 3] = [
                ("Q8_0", dot::q8_0, dot::portable::q8_0),
                ("Q4_0", dot::q4_0, dot::portable::q4_0),
                ("Q4_1", dot::q4_1, dot::portable::q4_1),
            ];
            for (scheme, fast, slow) in cases {
                let enc = quant::quantize(scheme.parse().unwrap(), &w, cols).unwrap();
                let (f, s) = (fast(&enc.data, &a), slow(&enc.data, &a));
                assert!(
                    (f - s).abs() <= 1e-5 * s.abs().max(1.0),
                    "{scheme} at {cols} columns: {f} vs {s}"
                );
            }
        }
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
        let (rows, cols, n) = (40, 96, 3);
        let w = sample(rows, cols);
        let x: Vec<f32> = sample(n, cols).iter().map(|v| v * 3.0 + 0.1).collect();
        for scheme in ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"] {
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
