//! LLaMA-style decoder: RMSNorm, RoPE on adjacent pairs (as GGUF llama
//! models lay out q/k), grouped-query attention with a KV cache, SwiGLU,
//! optionally tied embeddings.
//!
//! The projections run on our block kernels (`crate::kernels`) rather than
//! burn: a decode step is a chain of matrix-vector products that are bound by
//! the bytes of weights read, and burn's CPU backend only multiplies f32
//! (its quantization dequantizes first). Keys and values are kept rounded to
//! f16, as llama.cpp's default cache stores them.

use half::f16;
use rayon::prelude::*;

use super::weights::Weights;
use super::EngineError;
use crate::kernels::{Group, Matrix};
use crate::model::LlamaConfig;

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k, v projections.
    qkv: Group,
    wo: Matrix,
    ffn_norm: Vec<f32>,
    /// gate, up projections.
    gate_up: Group,
    down: Matrix,
}

pub struct LlamaDecoder {
    pub config: LlamaConfig,
    embed: Matrix,
    /// `None`: tied to `embed`.
    head: Option<Matrix>,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    /// Per pair i of a head: the rotation frequency `theta^(-2i/d)`.
    freqs: Vec<f32>,
}

/// Keys and values of the positions seen so far, per layer, `[pos][kv_heads * head_dim]`.
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    pub len: usize,
}

impl KvCache {
    /// Bytes this cache would take stored as f16.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|l| l.len() * 2).sum()
    }
}

impl LlamaDecoder {
    pub fn load(c: &LlamaConfig, w: &Weights) -> Result<Self, EngineError> {
        let (h, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let (q_out, kv_out) = (c.num_attention_heads * hd, c.kv_heads() * hd);
        let norm = |name: String| w.get(&name, &[h]).map(|d| d.data);
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let p = |part: &str| format!("blk.{i}.{part}.weight");
                Ok(Layer {
                    attn_norm: norm(p("attn_norm"))?,
                    qkv: Group::new(vec![
                        w.matrix(&p("attn_q"), q_out, h)?,
                        w.matrix(&p("attn_k"), kv_out, h)?,
                        w.matrix(&p("attn_v"), kv_out, h)?,
                    ]),
                    wo: w.matrix(&p("attn_output"), h, q_out)?,
                    ffn_norm: norm(p("ffn_norm"))?,
                    gate_up: Group::new(vec![
                        w.matrix(&p("ffn_gate"), f, h)?,
                        w.matrix(&p("ffn_up"), f, h)?,
                    ]),
                    down: w.matrix(&p("ffn_down"), h, f)?,
                })
            })
            .collect::<Result<_, EngineError>>()?;
        let head = if w.contains("output.weight") {
            Some(w.matrix("output.weight", c.vocab_size, h)?)
        } else {
            None
        };
        // As llama.cpp: theta_scale = base^(-2/d) in f32, raised by repeated products.
        let scale = (c.rope_theta as f32).powf(-2.0 / hd as f32);
        let freqs = std::iter::successors(Some(1f32), |t| Some(t * scale))
            .take(hd / 2)
            .collect();
        Ok(Self {
            config: c.clone(),
            embed: w.matrix("token_embd.weight", c.vocab_size, h)?,
            head,
            norm: norm("output_norm.weight".into())?,
            layers,
            freqs,
        })
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.qkv.bytes()
                    + l.gate_up.bytes()
                    + l.wo.bytes()
                    + l.down.bytes()
                    + 4 * (l.attn_norm.len() + l.ffn_norm.len())
            })
            .sum();
        layers
            + self.embed.bytes()
            + self.head.as_ref().map_or(0, Matrix::bytes)
            + 4 * self.norm.len()
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache {
            k: vec![Vec::new(); self.layers.len()],
            v: vec![Vec::new(); self.layers.len()],
            len: 0,
        }
    }

    /// Runs `tokens` after what `cache` holds; returns logits `[n, vocab]`
    /// for every new position (`all`) or `[1, vocab]` for the last one.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, all: bool) -> Vec<f32> {
        // On a pool thread, the matmuls' parallel loops start without a
        // hand-off to the pool and a wait each (40% of 1-thread decode).
        rayon::scope(|_| self.forward_on_pool(tokens, cache, all))
    }

    fn forward_on_pool(&self, tokens: &[u32], cache: &mut KvCache, all: bool) -> Vec<f32> {
        let c = &self.config;
        let (n, h) = (tokens.len(), c.hidden_size);
        let eps = c.rms_norm_eps as f32;
        let mut x = vec![0f32; n * h];
        for (row, &t) in x.chunks_exact_mut(h).zip(tokens) {
            self.embed.row(t as usize, row);
        }
        let mut normed = vec![0f32; n * h];
        let mut proj = vec![0f32; n * h];
        let (mut gate, mut up) = (
            vec![0f32; n * c.intermediate_size],
            vec![0f32; n * c.intermediate_size],
        );
        for (i, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, eps, &mut normed);
            let ctx = self.attention(layer, &normed, n, i, cache);
            layer.wo.matmul(&ctx, n, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
            rms_norm(&x, &layer.ffn_norm, eps, &mut normed);
            layer.gate_up.matmul(&normed, n, &mut [&mut gate, &mut up]);
            gate.iter_mut()
                .zip(&up)
                .for_each(|(g, u)| *g = silu(*g) * u);
            layer.down.matmul(&gate, n, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
        }
        cache.len += n;
        let rows = if all { n } else { 1 };
        let last = &x[(n - rows) * h..];
        let mut out_norm = vec![0f32; rows * h];
        rms_norm(last, &self.norm, eps, &mut out_norm);
        let head = self.head.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0f32; rows * c.vocab_size];
        head.matmul(&out_norm, rows, &mut logits);
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
        let c = &self.config;
        let (hd, heads, kv_heads) = (c.head_dim(), c.num_attention_heads, c.kv_heads());
        let (q_w, kv_w) = (heads * hd, kv_heads * hd);
        let start = cache.len;
        let mut q = vec![0f32; n * q_w];
        let mut k = vec![0f32; n * kv_w];
        let mut v = vec![0f32; n * kv_w];
        layer.qkv.matmul(x, n, &mut [&mut q, &mut k, &mut v]);
        for t in 0..n {
            let pos = (start + t) as f32;
            for head in q[t * q_w..(t + 1) * q_w].chunks_exact_mut(hd) {
                self.rope(head, pos);
            }
            for head in k[t * kv_w..(t + 1) * kv_w].chunks_exact_mut(hd) {
                self.rope(head, pos);
            }
        }
        let to_f16 = |v: f32| f16::from_f32(v).to_f32();
        cache.k[index].extend(k.iter().map(|&v| to_f16(v)));
        cache.v[index].extend(v.iter().map(|&v| to_f16(v)));
        let (keys, values) = (&cache.k[index], &cache.v[index]);
        let group = heads / kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut ctx = vec![0f32; n * q_w];
        // One task per (position, head); each writes its own slice of `ctx`.
        let head_task = |(task, out): (usize, &mut [f32])| {
            let (t, head) = (task / heads, task % heads);
            let kvh = head / group;
            let qh: Vec<f32> = q[t * q_w + head * hd..][..hd]
                .iter()
                .map(|&v| to_f16(v))
                .collect();
            let visible = start + t + 1;
            let mut scores: Vec<f32> = (0..visible)
                .map(|p| {
                    let kp = &keys[p * kv_w + kvh * hd..][..hd];
                    qh.iter().zip(kp).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let mut total = 0f32;
            for s in &mut scores {
                *s = (*s - max).exp();
                total += *s;
            }
            out.fill(0.0);
            for (p, &s) in scores.iter().enumerate() {
                let vp = &values[p * kv_w + kvh * hd..][..hd];
                let w = to_f16(s / total);
                out.iter_mut().zip(vp).for_each(|(o, &v)| *o += w * v);
            }
        };
        ctx.par_chunks_mut(hd).enumerate().for_each(head_task);
        ctx
    }

    /// Rotates adjacent pairs (x[2i], x[2i+1]) by `pos * freq_i`.
    fn rope(&self, head: &mut [f32], pos: f32) {
        for (pair, &freq) in head.chunks_exact_mut(2).zip(&self.freqs) {
            let (sin, cos) = (pos * freq).sin_cos();
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cos - b * sin;
            pair[1] = a * sin + b * cos;
        }
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let h = weight.len();
    for (xr, or) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let mean = xr.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / h as f64;
        let scale = 1.0 / (mean as f32 + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * scale * w;
        }
    }
}
