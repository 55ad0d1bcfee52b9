//! Activations quantized on the fly to 8-bit blocks of 32, as llama.cpp does
//! before a quantized dot product: `Q8_0` (scale) for Q8_0/Q4_0/Q5_0
//! weights, `Q8_1` (scale and scaled sum) for Q4_1/Q5_1. Scales round
//! through f16 exactly as ggml stores them, so our dot products see the same
//! numbers llama.cpp's do.

use half::f16;

pub const QK: usize = 32;

/// One activation row in 32-blocks.
#[derive(Debug, Clone, Default)]
pub struct Q8Row {
    pub qs: Vec<i8>,
    /// Per-block scale (f16-rounded).
    pub d: Vec<f32>,
    /// Per-block `d * sum(qs)` (f16-rounded); used by the offset formats.
    pub s: Vec<f32>,
}

impl Q8Row {
    /// Quantizes `x` (length a multiple of 32) into `self`, reusing its buffers.
    pub fn quantize_from(&mut self, x: &[f32]) {
        debug_assert_eq!(x.len() % QK, 0);
        let blocks = x.len() / QK;
        self.qs.resize(x.len(), 0);
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        for (b, (xb, qb)) in x
            .chunks_exact(QK)
            .zip(self.qs.chunks_exact_mut(QK))
            .enumerate()
        {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in qb.iter_mut().zip(xb) {
                // ggml's reference rounds half away from zero (roundf).
                *q = (v * id).round() as i8;
                sum += i32::from(*q);
            }
            self.d[b] = f16::from_f32(d).to_f32();
            self.s[b] = f16::from_f32(sum as f32 * d).to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconstructs_within_half_a_step_and_sums_match() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 7919) % 97) as f32 / 13.0 - 3.5)
            .collect();
        let mut q = Q8Row::default();
        q.quantize_from(&x);
        for (b, xb) in x.chunks(QK).enumerate() {
            let d = q.d[b];
            for (i, &v) in xb.iter().enumerate() {
                let back = d * f32::from(q.qs[b * QK + i]);
                assert!((back - v).abs() <= d * 0.51 + 1e-3, "{v} vs {back}");
            }
            let sum: i32 = q.qs[b * QK..(b + 1) * QK]
                .iter()
                .map(|&v| i32::from(v))
                .sum();
            assert!((q.s[b] - sum as f32 * d).abs() <= 1e-2 * q.s[b].abs().max(1.0));
        }
    }
}
