//! The decoder every family runs: RMSNorm, RoPE, grouped-query attention
//! with a KV cache (sliding windows where the family has them), a gated
//! MLP, tied or separate output. What differs between families is data in
//! a `Spec` (`spec.rs`), built by a small file per family
//! (`engine::families`).
//!
//! The projections run on our block kernels (`crate::kernels`) rather than
//! burn: a decode step is a chain of matrix-vector products that are bound by
//! the bytes of weights read, and burn's CPU backend only multiplies f32
//! (its quantization dequantizes first).

mod attention;
pub mod cache;
pub mod spec;

pub use cache::KvCache;
pub use spec::{Gate, LayerAttention, Parts, RopePairs, Spec};

use super::weights::Weights;
use super::EngineError;
use crate::kernels::{Group, Matrix};

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k, v projections.
    qkv: Group,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Matrix,
    post_attention_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// gate, up projections.
    gate_up: Group,
    down: Matrix,
    post_ffn_norm: Option<Vec<f32>>,
    /// Per pair i of a head: the rotation frequency `base^(-2i/d)`.
    freqs: Vec<f32>,
}

pub struct Decoder {
    pub spec: Spec,
    embed: Matrix,
    /// `None`: tied to `embed`.
    head: Option<Matrix>,
    norm: Vec<f32>,
    layers: Vec<Layer>,
}

impl Decoder {
    pub fn load(spec: Spec, w: &Weights) -> Result<Self, EngineError> {
        let (h, f, hd) = (spec.hidden, spec.ffn, spec.head_dim);
        let (q_out, kv_out) = (spec.q_width(), spec.kv_width());
        let norm = |name: &str, len: usize| {
            let mut d = w.get(name, &[len])?.data;
            if w.is_hf_named(name) && spec.hf_norm_offset != 0.0 {
                d.iter_mut().for_each(|v| *v += spec.hf_norm_offset);
            }
            Ok::<_, EngineError>(d)
        };
        let layers = spec
            .layers
            .iter()
            .enumerate()
            .map(|(i, attn)| {
                let p = |part: &str| format!("blk.{i}.{part}.weight");
                let optional = |part: Option<&str>, len| part.map(|n| norm(&p(n), len)).transpose();
                Ok(Layer {
                    attn_norm: norm(&p("attn_norm"), h)?,
                    qkv: Group::new(vec![
                        w.matrix(&p("attn_q"), q_out, h)?,
                        w.matrix(&p("attn_k"), kv_out, h)?,
                        w.matrix(&p("attn_v"), kv_out, h)?,
                    ]),
                    q_norm: optional(spec.parts.q_norm, hd)?,
                    k_norm: optional(spec.parts.k_norm, hd)?,
                    wo: w.matrix(&p("attn_output"), h, q_out)?,
                    post_attention_norm: optional(spec.parts.post_attention_norm, h)?,
                    ffn_norm: norm(&p("ffn_norm"), h)?,
                    gate_up: Group::new(vec![
                        w.matrix(&p("ffn_gate"), f, h)?,
                        w.matrix(&p("ffn_up"), f, h)?,
                    ]),
                    down: w.matrix(&p("ffn_down"), h, f)?,
                    post_ffn_norm: optional(spec.parts.post_ffn_norm, h)?,
                    freqs: rope_freqs(attn.rope_base, hd),
                })
            })
            .collect::<Result<_, EngineError>>()?;
        let head = if w.contains("output.weight") {
            Some(w.matrix("output.weight", spec.vocab, h)?)
        } else {
            None
        };
        Ok(Self {
            embed: w.matrix("token_embd.weight", spec.vocab, h)?,
            head,
            norm: norm("output_norm.weight", h)?,
            layers,
            spec,
        })
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        let norms = |l: &Layer| {
            [
                Some(&l.attn_norm),
                Some(&l.ffn_norm),
                l.q_norm.as_ref(),
                l.k_norm.as_ref(),
                l.post_attention_norm.as_ref(),
                l.post_ffn_norm.as_ref(),
            ]
            .into_iter()
            .flatten()
            .map(|n| 4 * n.len())
            .sum::<usize>()
        };
        let layers: usize = self
            .layers
            .iter()
            .map(|l| l.qkv.bytes() + l.gate_up.bytes() + l.wo.bytes() + l.down.bytes() + norms(l))
            .sum();
        layers
            + self.embed.bytes()
            + self.head.as_ref().map_or(0, Matrix::bytes)
            + 4 * self.norm.len()
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(
            self.spec.layers.iter().map(|l| l.window),
            self.spec.kv_width(),
        )
    }

    /// Runs `tokens` after what `cache` holds; returns logits `[n, vocab]`
    /// for every new position (`all`) or `[1, vocab]` for the last one.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, all: bool) -> Vec<f32> {
        // On a pool thread, the matmuls' parallel loops start without a
        // hand-off to the pool and a wait each (40% of 1-thread decode).
        rayon::scope(|_| self.forward_on_pool(tokens, cache, all))
    }

    fn forward_on_pool(&self, tokens: &[u32], cache: &mut KvCache, all: bool) -> Vec<f32> {
        let s = &self.spec;
        let (n, h) = (tokens.len(), s.hidden);
        let mut x = vec![0f32; n * h];
        for (row, &t) in x.chunks_exact_mut(h).zip(tokens) {
            self.embed.row(t as usize, row);
        }
        if let Some(scale) = s.embed_scale {
            x.iter_mut().for_each(|v| *v *= scale);
        }
        let mut normed = vec![0f32; n * h];
        let mut proj = vec![0f32; n * h];
        let (mut gate, mut up) = (vec![0f32; n * s.ffn], vec![0f32; n * s.ffn]);
        for (i, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, s.eps, &mut normed);
            let ctx = self.attention(layer, &normed, n, i, cache);
            layer.wo.matmul(&ctx, n, &mut proj);
            if let Some(w) = &layer.post_attention_norm {
                rms_norm_in_place(&mut proj, w, s.eps);
            }
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
            rms_norm(&x, &layer.ffn_norm, s.eps, &mut normed);
            layer.gate_up.matmul(&normed, n, &mut [&mut gate, &mut up]);
            match s.gate {
                Gate::Silu => gate
                    .iter_mut()
                    .zip(&up)
                    .for_each(|(g, u)| *g = silu(*g) * u),
                Gate::GeluTanh => gate
                    .iter_mut()
                    .zip(&up)
                    .for_each(|(g, u)| *g = gelu_tanh(*g) * u),
            }
            layer.down.matmul(&gate, n, &mut proj);
            if let Some(w) = &layer.post_ffn_norm {
                rms_norm_in_place(&mut proj, w, s.eps);
            }
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
        }
        cache.len += n;
        let rows = if all { n } else { 1 };
        let last = &x[(n - rows) * h..];
        let mut out_norm = vec![0f32; rows * h];
        rms_norm(last, &self.norm, s.eps, &mut out_norm);
        let head = self.head.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0f32; rows * s.vocab];
        head.matmul(&out_norm, rows, &mut logits);
        if let Some(cap) = s.logit_softcap {
            logits.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        }
        logits
    }

    /// Self-attention of `n` new positions; returns the per-head context `[n, heads * head_dim]`.
    fn attention(
        &self,
        layer: &Layer,
        x: &[f32],
        n: usize,
        index: usize,
        cache: &mut KvCache,
    ) -> Vec<f32> {
        let s = &self.spec;
        let attn = &s.layers[index];
        let (q_w, kv_w) = (s.q_width(), s.kv_width());
        let start = cache.len;
        let mut q = vec![0f32; n * q_w];
        let mut k = vec![0f32; n * kv_w];
        let mut v = vec![0f32; n * kv_w];
        layer.qkv.matmul(x, n, &mut [&mut q, &mut k, &mut v]);
        if let Some(w) = &layer.q_norm {
            rms_norm_in_place(&mut q, w, s.eps);
        }
        if let Some(w) = &layer.k_norm {
            rms_norm_in_place(&mut k, w, s.eps);
        }
        let rope = attention::Rope {
            freqs: &layer.freqs,
            pairs: s.rope_pairs,
            position_scale: attn.rope_position_scale,
        };
        for t in 0..n {
            let pos = (start + t) as f32;
            for head in q[t * q_w..(t + 1) * q_w].chunks_exact_mut(s.head_dim) {
                rope.rotate(head, pos);
            }
            for head in k[t * kv_w..(t + 1) * kv_w].chunks_exact_mut(s.head_dim) {
                rope.rotate(head, pos);
            }
        }
        attention::round_f16(&mut k);
        attention::round_f16(&mut v);
        attention::attend(s, attn.window, &q, &k, &v, start, &mut cache.layers[index])
    }
}

/// As llama.cpp: theta_scale = base^(-2/d) in f32, raised by repeated products.
fn rope_freqs(base: f32, head_dim: usize) -> Vec<f32> {
    let scale = base.powf(-2.0 / head_dim as f32);
    std::iter::successors(Some(1f32), |t| Some(t * scale))
        .take(head_dim / 2)
        .collect()
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
}

/// RMSNorm of each `weight.len()`-wide row of `x` (a hidden state, or one head).
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let h = weight.len();
    for (xr, or) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let scale = rms_scale(xr, eps);
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * scale * w;
        }
    }
}

fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(weight.len()) {
        let scale = rms_scale(row, eps);
        row.iter_mut()
            .zip(weight)
            .for_each(|(v, &w)| *v = *v * scale * w);
    }
}

fn rms_scale(row: &[f32], eps: f32) -> f32 {
    let mean = row
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        / row.len() as f64;
    1.0 / (mean as f32 + eps).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_tanh_matches_known_values() {
        // torch.nn.functional.gelu(x, approximate="tanh")
        for (x, want) in [
            (-3.0, -0.003_637_4),
            (-0.5, -0.154_286),
            (1.0, 0.841_192),
            (2.5, 2.484_916),
        ] {
            assert!((gelu_tanh(x) - want).abs() < 1e-5, "{x}: {}", gelu_tanh(x));
        }
    }
}
