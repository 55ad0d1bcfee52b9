//! Linear layers for encoders and prefill, `y = x W^T + b` over many tokens at
//! once: f32 on the `gemm` crate (the GEMM candle and burn's flex backend use:
//! packed, cache-blocked, runtime-dispatched micro-kernels), or our int8
//! kernels (`int8`). Tokens are rows; weights are stored `[out, in]`.

use gemm::Parallelism;
use rayon::prelude::*;

use super::int8::{keep, Epilogue, Int8Matrix};

#[derive(Debug, Clone)]
enum Weights {
    F32(Vec<f32>),
    Int8(Int8Matrix),
}

/// A linear layer: `[out, in]` weights and `out` biases.
#[derive(Debug, Clone)]
pub struct Linear {
    pub out: usize,
    pub inp: usize,
    weights: Weights,
    bias: Vec<f32>,
}

impl Linear {
    pub fn f32(weight: Vec<f32>, bias: Vec<f32>, out: usize, inp: usize) -> Self {
        assert_eq!(weight.len(), out * inp);
        assert_eq!(bias.len(), out);
        Self {
            out,
            inp,
            weights: Weights::F32(weight),
            bias,
        }
    }

    /// Quantizes the weights to int8 per output channel.
    pub fn int8(weight: &[f32], bias: Vec<f32>, out: usize, inp: usize) -> Self {
        assert_eq!(bias.len(), out);
        Self {
            out,
            inp,
            weights: Weights::Int8(Int8Matrix::quantize(weight, out, inp)),
            bias,
        }
    }

    /// The rows of `parts` one under the other (q/k/v as one matrix).
    pub fn stack(parts: Vec<(Vec<f32>, Vec<f32>)>, inp: usize, int8: bool) -> Self {
        let (mut w, mut b) = (Vec::new(), Vec::new());
        for (pw, pb) in parts {
            w.extend(pw);
            b.extend(pb);
        }
        let out = b.len();
        if int8 {
            Self::int8(&w, b, out, inp)
        } else {
            Self::f32(w, b, out, inp)
        }
    }

    /// Bytes the weights and biases occupy in memory.
    pub fn bytes(&self) -> usize {
        self.bias.len() * 4
            + match &self.weights {
                Weights::F32(w) => w.len() * 4,
                Weights::Int8(m) => m.bytes(),
            }
    }

    /// `out[t] = W x[t] + b` for `n` rows of `x` (`out` is `[n, self.out]`).
    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32]) {
        self.forward_then(x, n, out, keep);
    }

    /// As `forward`, then `then` on each piece of output as it is finished
    /// (in cache, in the same task), in pieces of whole or part rows.
    pub fn forward_then(&self, x: &[f32], n: usize, out: &mut [f32], then: Epilogue) {
        assert_eq!(x.len(), n * self.inp);
        assert_eq!(out.len(), n * self.out);
        match &self.weights {
            Weights::Int8(m) => m.matmul(x, n, &self.bias, out, then),
            Weights::F32(w) => f32_gemm(w, Some(&self.bias), self.out, self.inp, x, n, out, then),
        }
    }
}

/// `out = x W^T (+ bias)` for f32 weights `[out_dim, inp]`, then `then` on
/// each finished piece of output.
///
/// Tiles of tokens × outputs, each a single-threaded gemm: fixed splits (the
/// same bits at any thread count) that balance on few cores, where gemm's own
/// threading scaled 1.4x on 2 cores at batch 1. Many tokens: tiles of 256
/// tokens, so each packs its share of x once, not once per output block.
#[allow(clippy::too_many_arguments)]
pub fn f32_gemm(
    w: &[f32],
    bias: Option<&[f32]>,
    out_dim: usize,
    inp: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    then: Epilogue,
) {
    assert_eq!(w.len(), out_dim * inp);
    assert_eq!(x.len(), n * inp);
    assert_eq!(out.len(), n * out_dim);
    let (tile_rows, tile_cols) = if n >= 4 * TILE_TOKENS {
        (TILE_TOKENS, 6 * COLS_PER_TASK)
    } else {
        (n.max(1), COLS_PER_TASK)
    };
    let out_ptr = SharedOut(out.as_mut_ptr());
    let col_tiles = out_dim.div_ceil(tile_cols);
    let tiles = n.div_ceil(tile_rows) * col_tiles;
    (0..tiles).into_par_iter().for_each(|tile| {
        let (t0, c0) = (tile / col_tiles * tile_rows, tile % col_tiles * tile_cols);
        let (rows, cols) = (tile_rows.min(n - t0), tile_cols.min(out_dim - c0));
        let dst = out_ptr.at(t0 * out_dim + c0);
        for t in 0..rows {
            // SAFETY: this tile's rows and columns belong to this task only.
            unsafe {
                let row = dst.add(t * out_dim);
                match bias {
                    Some(b) => std::ptr::copy_nonoverlapping(b[c0..].as_ptr(), row, cols),
                    None => std::ptr::write_bytes(row, 0, cols),
                }
            };
        }
        // SAFETY: dst is [n, out_dim] row-major from (t0, c0), lhs [n, inp]
        // from row t0, rhs = W^T for rows c0..c0+cols of W's [out_dim, inp];
        // lengths asserted above.
        unsafe {
            gemm::gemm(
                rows,
                cols,
                inp,
                dst,
                1,
                out_dim as isize,
                true,
                x[t0 * inp..].as_ptr(),
                1,
                inp as isize,
                w[c0 * inp..].as_ptr(),
                inp as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        for t in 0..rows {
            // SAFETY: as above, this tile's columns of row t.
            then(unsafe { std::slice::from_raw_parts_mut(dst.add(t * out_dim), cols) });
        }
    });
}

/// Tokens per tile when there are many.
const TILE_TOKENS: usize = 256;

/// Output columns per task of the f32 path.
const COLS_PER_TASK: usize = 64;

/// An output buffer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub *mut f32);
// SAFETY: users write disjoint elements only.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `dst[i, j] = sum_k a[i, k] * b[k, j]` on strided views, single-threaded
/// (for small products inside an already parallel loop, e.g. attention).
///
/// # Safety
/// Every `(i, k)`, `(k, j)` and `(i, j)` reached through the strides must be
/// inside the allocations the pointers come from.
#[allow(clippy::too_many_arguments)]
pub unsafe fn small_gemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}
