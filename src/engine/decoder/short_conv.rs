//! LFM2's gated short convolution, as llama.cpp runs it (`ggml_ssm_conv`):
//! `in_proj` gives B, C and x per position; each channel of `B * x` is
//! convolved causally over the last `taps` positions (the previous `taps - 1`
//! kept in the cache as f32); the result times C goes through `out_proj`.

use super::super::weights::Weights;
use super::super::EngineError;
use crate::kernels::Matrix;

pub(super) struct ShortConv {
    /// `[3 * hidden, hidden]`: B, C, x rows.
    in_proj: Matrix,
    /// `[hidden][taps]`, oldest position first.
    kernel: Vec<f32>,
    taps: usize,
    out_proj: Matrix,
}

impl ShortConv {
    pub fn load(
        w: &Weights,
        layer: usize,
        hidden: usize,
        taps: usize,
    ) -> Result<Self, EngineError> {
        let name = |part: &str| format!("blk.{layer}.shortconv.{part}.weight");
        Ok(Self {
            in_proj: w.matrix(&name("in_proj"), 3 * hidden, hidden)?,
            kernel: w.get(&name("conv"), &[hidden, taps])?.data,
            taps,
            out_proj: w.matrix(&name("out_proj"), hidden, hidden)?,
        })
    }

    pub fn bytes(&self) -> usize {
        self.in_proj.bytes() + self.out_proj.bytes() + 4 * self.kernel.len()
    }

    /// Floats of state a sequence keeps: `taps - 1` positions of every channel.
    pub fn state_len(&self) -> usize {
        (self.taps - 1) * self.out_proj.rows
    }

    /// `n` new positions `x` (`[n, hidden]`) after `state` (`[taps - 1][hidden]`,
    /// updated to the last positions); writes `[n, hidden]` to `out`.
    pub fn forward(&self, x: &[f32], n: usize, state: &mut [f32], out: &mut [f32]) {
        let h = self.out_proj.rows;
        let mut bcx = vec![0f32; n * 3 * h];
        self.in_proj.matmul(x, n, &mut bcx);
        // The previous positions, then B * x of the new ones.
        let mut seq = Vec::with_capacity(state.len() + n * h);
        seq.extend_from_slice(state);
        for row in bcx.chunks_exact(3 * h) {
            let (b, rest) = row.split_at(h);
            seq.extend(b.iter().zip(&rest[h..]).map(|(b, x)| b * x));
        }
        let mut y = vec![0f32; n * h];
        for (t, (yr, row)) in y
            .chunks_exact_mut(h)
            .zip(bcx.chunks_exact(3 * h))
            .enumerate()
        {
            let c = &row[h..2 * h];
            for (ch, out) in yr.iter_mut().enumerate() {
                let taps = &self.kernel[ch * self.taps..(ch + 1) * self.taps];
                // In tap order, in f32, as ggml's loop sums.
                let mut sum = 0f32;
                for (j, &k) in taps.iter().enumerate() {
                    sum += seq[(t + j) * h + ch] * k;
                }
                *out = c[ch] * sum;
            }
        }
        state.copy_from_slice(&seq[n * h..]);
        self.out_proj.matmul(&y, n, out);
    }
}
