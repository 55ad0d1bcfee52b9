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
mod short_conv;
pub mod spec;

pub use cache::KvCache;
pub use spec::{Gate, LayerAttention, Mixer, MlpWeights, Parts, RopePairs, Spec};

use super::weights::Weights;
use super::EngineError;
use crate::kernels::{Group, Matrix};

/// Biases a file may carry (llama.cpp loads each when present, for any
/// family: Qwen2's q/k/v, Granite's optional output and MLP biases).
#[derive(Default)]
struct Biases {
    q: Option<Vec<f32>>,
    k: Option<Vec<f32>>,
    v: Option<Vec<f32>>,
    wo: Option<Vec<f32>>,
    gate: Option<Vec<f32>>,
    up: Option<Vec<f32>>,
    down: Option<Vec<f32>>,
}

impl Biases {
    fn bytes(&self) -> usize {
        [
            &self.q, &self.k, &self.v, &self.wo, &self.gate, &self.up, &self.down,
        ]
        .into_iter()
        .flatten()
        .map(|b| 4 * b.len())
        .sum()
    }
}

type QkvBias = (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>);

/// What mixes positions in a layer.
enum Mix {
    Attention {
        /// q, k, v projections.
        qkv: Group,
        q_norm: Option<Vec<f32>>,
        k_norm: Option<Vec<f32>>,
        wo: Matrix,
    },
    ShortConv(short_conv::ShortConv),
}

struct Layer {
    attn_norm: Vec<f32>,
    mix: Mix,
    post_attention_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// gate, up projections.
    gate_up: Group,
    down: Matrix,
    post_ffn_norm: Option<Vec<f32>>,
    bias: Biases,
    /// Per pair i of a head: the rotation frequency `base^(-2i/d)`.
    freqs: Vec<f32>,
}

/// Where in a layer `forward_tapped` shows the activations: the inputs of
/// q/k/v, of the attention output projection, of gate/up and of down.
/// (The short-convolution layers' projections are not shown.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tap {
    AttentionIn,
    AttentionOut,
    MlpIn,
    MlpDown,
}

/// What `forward_tapped` calls: layer index, where, the activations.
pub type TapFn<'a> = dyn FnMut(usize, Tap, &[f32]) + Send + 'a;

pub struct Decoder {
    pub spec: Spec,
    embed: Matrix,
    /// `None`: tied to `embed`.
    head: Option<Matrix>,
    head_bias: Option<Vec<f32>>,
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
        let bias = |name: &str, len: usize| {
            w.contains(name)
                .then(|| w.get(name, &[len]).map(|d| d.data))
                .transpose()
        };
        for longrope in ["rope_factors_long.weight", "rope_factors_short.weight"] {
            if w.contains(longrope) {
                // llama.cpp picks long or short factors by the context a run
                // asks for, and scales attention with them: not done yet.
                return Err(EngineError::Usage {
                    path: w.path().to_path_buf(),
                    message: format!(
                        "{}: LongRoPE (`{longrope}`, Phi-3 128k contexts) is not supported yet",
                        spec.family
                    ),
                });
            }
        }
        // Per-pair frequency divisors (LLaMA 3's long-context RoPE; any
        // family llama.cpp builds with `rope_freqs`).
        let rope_factors = bias("rope_freqs.weight", spec.rope_dims / 2)?;
        // The layer's position mixer, and its q/k/v biases if any.
        let mixer = |i: usize, attn: &LayerAttention| -> Result<(Mix, QkvBias), EngineError> {
            let p = |part: &str| format!("blk.{i}.{part}.weight");
            let b = |part: &str| format!("blk.{i}.{part}.bias");
            let optional = |part: Option<&str>, len| part.map(|n| norm(&p(n), len)).transpose();
            if let Mixer::ShortConv { kernel } = attn.mixer {
                let conv = short_conv::ShortConv::load(w, i, h, kernel)?;
                return Ok((Mix::ShortConv(conv), (None, None, None)));
            }
            // Any family's q/k/v may come fused (llama.cpp's loader takes
            // `attn_qkv` wherever it takes separate ones): split its rows.
            let (qkv, qkv_bias) = if w.contains(&p("attn_qkv")) {
                let rows = [q_out, kv_out, kv_out];
                let parts = w.matrices(&p("attn_qkv"), &rows, h)?;
                let fused_bias = bias(&b("attn_qkv"), q_out + 2 * kv_out)?;
                let split = fused_bias.map(|v| {
                    let (q, kv) = v.split_at(q_out);
                    let (k, v) = kv.split_at(kv_out);
                    (Some(q.to_vec()), Some(k.to_vec()), Some(v.to_vec()))
                });
                (parts, split)
            } else {
                let parts = vec![
                    w.matrix(&p("attn_q"), q_out, h)?,
                    w.matrix(&p("attn_k"), kv_out, h)?,
                    w.matrix(&p("attn_v"), kv_out, h)?,
                ];
                (parts, None)
            };
            let qkv_bias = match qkv_bias {
                Some(split) => split,
                None => (
                    bias(&b("attn_q"), q_out)?,
                    bias(&b("attn_k"), kv_out)?,
                    bias(&b("attn_v"), kv_out)?,
                ),
            };
            let mix = Mix::Attention {
                qkv: Group::new(qkv),
                q_norm: optional(spec.parts.q_norm, hd)?,
                k_norm: optional(spec.parts.k_norm, hd)?,
                wo: w.matrix(&p("attn_output"), h, q_out)?,
            };
            Ok((mix, qkv_bias))
        };
        let layers = spec
            .layers
            .iter()
            .enumerate()
            .map(|(i, attn)| {
                let p = |part: &str| format!("blk.{i}.{part}.weight");
                let b = |part: &str| format!("blk.{i}.{part}.bias");
                let optional = |part: Option<&str>, len| part.map(|n| norm(&p(n), len)).transpose();
                let (mix, (q_b, k_b, v_b)) = mixer(i, attn)?;
                let gate_up = match spec.mlp_weights {
                    MlpWeights::Separate => vec![
                        w.matrix(&p("ffn_gate"), f, h)?,
                        w.matrix(&p("ffn_up"), f, h)?,
                    ],
                    MlpWeights::FusedUp => w.matrices(&p("ffn_up"), &[f, f], h)?,
                };
                Ok(Layer {
                    attn_norm: norm(&p("attn_norm"), h)?,
                    mix,
                    post_attention_norm: optional(spec.parts.post_attention_norm, h)?,
                    ffn_norm: norm(&p("ffn_norm"), h)?,
                    gate_up: Group::new(gate_up),
                    down: w.matrix(&p("ffn_down"), h, f)?,
                    post_ffn_norm: optional(spec.parts.post_ffn_norm, h)?,
                    bias: Biases {
                        q: q_b,
                        k: k_b,
                        v: v_b,
                        wo: bias(&b("attn_output"), h)?,
                        gate: match spec.mlp_weights {
                            MlpWeights::Separate => bias(&b("ffn_gate"), f)?,
                            MlpWeights::FusedUp => None,
                        },
                        up: match spec.mlp_weights {
                            MlpWeights::Separate => bias(&b("ffn_up"), f)?,
                            MlpWeights::FusedUp => None,
                        },
                        down: bias(&b("ffn_down"), h)?,
                    },
                    freqs: rope_freqs(attn.rope_base, spec.rope_dims, rope_factors.as_deref()),
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
            head_bias: bias("output.bias", spec.vocab)?,
            norm: norm(&format!("{}.weight", spec.final_norm), h)?,
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
            .map(|l| {
                let mix = match &l.mix {
                    Mix::Attention {
                        qkv,
                        q_norm,
                        k_norm,
                        wo,
                    } => {
                        let head_norms = [q_norm, k_norm].into_iter().flatten();
                        qkv.bytes() + wo.bytes() + head_norms.map(|n| 4 * n.len()).sum::<usize>()
                    }
                    Mix::ShortConv(conv) => conv.bytes(),
                };
                mix + l.gate_up.bytes() + l.down.bytes() + norms(l) + l.bias.bytes()
            })
            .sum();
        layers
            + self.embed.bytes()
            + self.head_bias.as_ref().map_or(0, |b| 4 * b.len())
            + self.head.as_ref().map_or(0, Matrix::bytes)
            + 4 * self.norm.len()
    }

    pub fn new_cache(&self) -> KvCache {
        let conv_states = self.layers.iter().map(|l| match &l.mix {
            Mix::ShortConv(conv) => conv.state_len(),
            Mix::Attention { .. } => 0,
        });
        KvCache::new(
            self.spec.layers.iter().map(|l| l.window),
            self.spec.kv_width(),
        )
        .with_conv_states(conv_states)
    }

    /// Runs `tokens` after what `cache` holds; returns the logits of the
    /// last `rows` new positions, `[rows, vocab]` (1 to sample the next
    /// token, `tokens.len()` to score every one).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, rows: usize) -> Vec<f32> {
        self.forward_tapped(tokens, cache, rows, None)
    }

    /// As `forward`, showing `tap` the input `[n, width]` of every weight
    /// matrix in each layer (what an importance matrix is collected from).
    pub fn forward_tapped(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        rows: usize,
        tap: Option<&mut TapFn<'_>>,
    ) -> Vec<f32> {
        assert!(
            (1..=tokens.len()).contains(&rows),
            "forward: {rows} rows of {} tokens",
            tokens.len()
        );
        // On a pool thread, the matmuls' parallel loops start without a
        // hand-off to the pool and a wait each (40% of 1-thread decode).
        rayon::scope(|_| self.forward_on_pool(tokens, cache, rows, tap))
    }

    fn forward_on_pool(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        rows: usize,
        mut tap: Option<&mut TapFn<'_>>,
    ) -> Vec<f32> {
        let mut show = |layer: usize, at: Tap, x: &[f32]| {
            if let Some(t) = tap.as_mut() {
                t(layer, at, x);
            }
        };
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
            match &layer.mix {
                Mix::Attention { wo, .. } => {
                    show(i, Tap::AttentionIn, &normed);
                    let ctx = self.attention(layer, &normed, n, i, cache);
                    show(i, Tap::AttentionOut, &ctx);
                    wo.matmul(&ctx, n, &mut proj);
                }
                Mix::ShortConv(conv) => conv.forward(&normed, n, &mut cache.conv[i], &mut proj),
            }
            add_bias(&mut proj, &layer.bias.wo);
            if let Some(w) = &layer.post_attention_norm {
                rms_norm_in_place(&mut proj, w, s.eps);
            }
            residual_add(&mut x, &mut proj, s.residual_scale);
            rms_norm(&x, &layer.ffn_norm, s.eps, &mut normed);
            show(i, Tap::MlpIn, &normed);
            layer.gate_up.matmul(&normed, n, &mut [&mut gate, &mut up]);
            add_bias(&mut gate, &layer.bias.gate);
            add_bias(&mut up, &layer.bias.up);
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
            show(i, Tap::MlpDown, &gate);
            layer.down.matmul(&gate, n, &mut proj);
            add_bias(&mut proj, &layer.bias.down);
            if let Some(w) = &layer.post_ffn_norm {
                rms_norm_in_place(&mut proj, w, s.eps);
            }
            residual_add(&mut x, &mut proj, s.residual_scale);
        }
        cache.len += n;
        let last = &x[(n - rows) * h..];
        let mut out_norm = vec![0f32; rows * h];
        rms_norm(last, &self.norm, s.eps, &mut out_norm);
        let head = self.head.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0f32; rows * s.vocab];
        head.matmul(&out_norm, rows, &mut logits);
        add_bias(&mut logits, &self.head_bias);
        if let Some(scale) = s.logit_scale {
            logits.iter_mut().for_each(|v| *v *= scale);
        }
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
        let Mix::Attention {
            qkv,
            q_norm,
            k_norm,
            ..
        } = &layer.mix
        else {
            unreachable!("forward calls attention on attention layers only")
        };
        let start = cache.len;
        let mut q = vec![0f32; n * q_w];
        let mut k = vec![0f32; n * kv_w];
        let mut v = vec![0f32; n * kv_w];
        qkv.matmul(x, n, &mut [&mut q, &mut k, &mut v]);
        add_bias(&mut q, &layer.bias.q);
        add_bias(&mut k, &layer.bias.k);
        add_bias(&mut v, &layer.bias.v);
        if let Some(w) = q_norm {
            rms_norm_in_place(&mut q, w, s.eps);
        }
        if let Some(w) = k_norm {
            rms_norm_in_place(&mut k, w, s.eps);
        }
        let rope = attention::Rope {
            freqs: &layer.freqs,
            pairs: s.rope_pairs,
            dims: s.rope_dims,
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

/// As llama.cpp: theta_scale = base^(-2/d) in f32 (d the rotated width),
/// raised by repeated products, each divided by its factor when given.
pub(crate) fn rope_freqs(base: f32, dims: usize, factors: Option<&[f32]>) -> Vec<f32> {
    let scale = base.powf(-2.0 / dims as f32);
    let freqs = std::iter::successors(Some(1f32), |t| Some(t * scale)).take(dims / 2);
    match factors {
        Some(f) => freqs.zip(f).map(|(t, f)| t / f).collect(),
        None => freqs.collect(),
    }
}

/// Adds a `[width]` bias to every row of `x`, when there is one.
fn add_bias(x: &mut [f32], bias: &Option<Vec<f32>>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(v, &b)| *v += b);
        }
    }
}

/// `x += branch` (times `scale`, Granite's residual multiplier, when set).
fn residual_add(x: &mut [f32], branch: &mut [f32], scale: Option<f32>) {
    if let Some(s) = scale {
        branch.iter_mut().for_each(|v| *v *= s);
    }
    x.iter_mut().zip(branch.iter()).for_each(|(a, b)| *a += b);
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
