//! Linear layers for encoders and prefill, `y = x W^T + b` over many tokens at
//! once: f32 on the `gemm` crate (the GEMM candle and burn's flex backend use:
//! packed, cache-blocked, runtime-dispatched micro-kernels), or our int8
//! kernels (`int8`). Tokens are rows; weights are stored `[out, in]`.

use gemm::Parallelism;

use super::int8::Int8Matrix;

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
        assert_eq!(x.len(), n * self.inp);
        assert_eq!(out.len(), n * self.out);
        match &self.weights {
            Weights::Int8(m) => m.matmul(x, n, &self.bias, out),
            Weights::F32(w) => {
                for row in out.chunks_exact_mut(self.out) {
                    row.copy_from_slice(&self.bias);
                }
                let (inp, o) = (self.inp as isize, self.out as isize);
                // SAFETY: dst is [n, out] row-major, lhs [n, inp] row-major,
                // rhs = W^T read from W's [out, inp] rows; lengths asserted above.
                unsafe {
                    gemm::gemm(
                        n,
                        self.out,
                        self.inp,
                        out.as_mut_ptr(),
                        1,
                        o,
                        true,
                        x.as_ptr(),
                        1,
                        inp,
                        w.as_ptr(),
                        inp,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        parallelism(),
                    );
                }
            }
        }
    }
}

/// gemm splits output tiles over threads but sums each tile's inner
/// dimension in one fixed order, so the thread count does not change bits.
fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
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
