//! The BERT encoder for inference, on our kernels: the same network as the
//! burn `BertEncoder` (which stays for training), without a tensor library in
//! between. Each sequence runs at its own length (no padding: the tokens of a
//! batch are concatenated and only attention looks at sequence boundaries),
//! linear layers take every token of the batch at once, biases are added by
//! the GEMM, residual adds are fused into LayerNorm, q/k/v are one matrix.
//! `Precision::Int8` quantizes the linear weights per output channel at load
//! and the activations per token on the fly.

use std::sync::Mutex;

use rayon::prelude::*;

use super::weights::Dense;
use super::EngineError;
use crate::engine::bert::TensorSource;
use crate::kernels::dense::{small_gemm, Linear, SharedOut};
use crate::kernels::math::{add_layer_norm, gelu_inplace, softmax_inplace};
use crate::model::BertConfig;

/// Arithmetic of the linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    /// Weights int8 per output channel, activations int8 per token.
    Int8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Int8 => "int8",
        }
    }
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

pub struct Encoder {
    pub config: BertConfig,
    pub precision: Precision,
    word: Vec<f32>,
    position: Vec<f32>,
    /// Token type 0 (sentence encoders use no other).
    token_type: Vec<f32>,
    embed_norm: Norm,
    layers: Vec<Layer>,
    /// Activation buffers kept between calls: fresh ones of this size are
    /// mapped pages, faulted in and zeroed on every forward.
    scratch: Mutex<Vec<Vec<f32>>>,
}

impl Encoder {
    pub fn build(
        c: &BertConfig,
        w: &TensorSource,
        precision: Precision,
    ) -> Result<Self, EngineError> {
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let int8 = precision == Precision::Int8;
        let linear = |name: &str, out: usize, inp: usize| -> Result<(Vec<f32>, Vec<f32>), _> {
            Ok::<_, EngineError>((
                w(&format!("{name}.weight"), &[out, inp])?.data,
                w(&format!("{name}.bias"), &[out])?.data,
            ))
        };
        let norm = |name: &str| -> Result<Norm, EngineError> {
            Ok(Norm {
                gamma: w(&format!("{name}.weight"), &[h])?.data,
                beta: w(&format!("{name}.bias"), &[h])?.data,
            })
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let p = |part: &str| format!("blk.{i}.{part}");
                let qkv = ["attn_q", "attn_k", "attn_v"]
                    .iter()
                    .map(|part| linear(&p(part), h, h))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Layer {
                    qkv: Linear::stack(qkv, h, int8),
                    attn_out: Linear::stack(vec![linear(&p("attn_output"), h, h)?], h, int8),
                    attn_norm: norm(&p("attn_output_norm"))?,
                    up: Linear::stack(vec![linear(&p("ffn_up"), f, h)?], h, int8),
                    down: Linear::stack(vec![linear(&p("ffn_down"), h, f)?], f, int8),
                    out_norm: norm(&p("layer_output_norm"))?,
                })
            })
            .collect::<Result<_, EngineError>>()?;
        let table = |name: &str, rows: usize| -> Result<Dense, EngineError> { w(name, &[rows, h]) };
        Ok(Self {
            config: c.clone(),
            precision,
            word: table("token_embd.weight", c.vocab_size)?.data,
            position: table("position_embd.weight", c.max_position_embeddings)?.data,
            token_type: table("token_types.weight", c.type_vocab_size)?.data[..h].to_vec(),
            embed_norm: norm("token_embd_norm")?,
            layers,
            scratch: Mutex::new(Vec::new()),
        })
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        let norms = (2 * self.layers.len() + 1) * 2 * self.config.hidden_size * 4;
        let tables = (self.word.len() + self.position.len() + self.token_type.len()) * 4;
        let linears: usize = self
            .layers
            .iter()
            .map(|l| l.qkv.bytes() + l.attn_out.bytes() + l.up.bytes() + l.down.bytes())
            .sum();
        norms + tables + linears
    }

    /// Mean-pooled, L2-normalised embeddings, one per sequence.
    pub fn embed(&self, seqs: &[Vec<u32>]) -> Vec<Vec<f32>> {
        self.pooled(seqs)
            .into_iter()
            .map(|mut v| {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= norm);
                v
            })
            .collect()
    }

    /// Token states averaged over each sequence, before normalisation.
    pub fn pooled(&self, seqs: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let h = self.config.hidden_size;
        let x = self.hidden_states(seqs);
        let mut at = 0;
        seqs.iter()
            .map(|s| {
                let mut sum = vec![0f32; h];
                for row in x[at * h..(at + s.len()) * h].chunks_exact(h) {
                    sum.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                }
                at += s.len();
                let count = s.len().max(1) as f32;
                sum.iter_mut().for_each(|v| *v /= count);
                sum
            })
            .collect()
    }

    /// Last-layer states of every token, sequences one after the other: `[tokens, hidden]`.
    pub fn hidden_states(&self, seqs: &[Vec<u32>]) -> Vec<f32> {
        // On a pool thread, every parallel loop inside starts without a
        // hand-off to the pool and a wait (one per forward instead of ~50).
        rayon::scope(|_| self.forward_on_pool(seqs))
    }

    fn forward_on_pool(&self, seqs: &[Vec<u32>]) -> Vec<f32> {
        let c = &self.config;
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let n: usize = seqs.iter().map(Vec::len).sum();
        let mut x = self.embeddings(seqs);
        let (mut qkv, mut ctx) = (self.buffer(n * 3 * h), self.buffer(n * h));
        let (mut y, mut up) = (self.buffer(n * h), self.buffer(n * f));
        for layer in &self.layers {
            layer.qkv.forward(&x, n, &mut qkv);
            self.attention(&qkv, seqs, &mut ctx);
            layer.attn_out.forward(&ctx, n, &mut y);
            residual_norm(&mut y, &x, &layer.attn_norm, c.layer_norm_eps as f32, h);
            std::mem::swap(&mut x, &mut y);
            layer.up.forward_then(&x, n, &mut up, gelu_inplace);
            layer.down.forward(&up, n, &mut y);
            residual_norm(&mut y, &x, &layer.out_norm, c.layer_norm_eps as f32, h);
            std::mem::swap(&mut x, &mut y);
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        scratch.extend([qkv, ctx, y, up]);
        scratch.truncate(8);
        x
    }

    /// A zeroed buffer of `len`, from the scratch pool when there is one.
    fn buffer(&self, len: usize) -> Vec<f32> {
        let reused = self.scratch.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut b = reused.unwrap_or_default();
        b.clear();
        b.resize(len, 0.0);
        b
    }

    fn embeddings(&self, seqs: &[Vec<u32>]) -> Vec<f32> {
        let h = self.config.hidden_size;
        let eps = self.config.layer_norm_eps as f32;
        let (gamma, beta) = (&self.embed_norm.gamma, &self.embed_norm.beta);
        let mut x = Vec::with_capacity(seqs.iter().map(Vec::len).sum::<usize>() * h);
        for s in seqs {
            for (p, &id) in s.iter().enumerate() {
                let word = &self.word[id as usize * h..][..h];
                let at = x.len();
                x.extend(word.iter().zip(&self.token_type).map(|(a, b)| a + b));
                add_layer_norm(&mut x[at..], &self.position[p * h..][..h], gamma, beta, eps);
            }
        }
        x
    }

    /// Multi-head self-attention of each sequence over itself; one task per
    /// (sequence, head), each writing its own columns of `ctx`.
    fn attention(&self, qkv: &[f32], seqs: &[Vec<u32>], ctx: &mut [f32]) {
        let h = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let hd = h / heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut starts = Vec::with_capacity(seqs.len());
        let mut at = 0;
        for s in seqs {
            starts.push((at, s.len()));
            at += s.len();
        }
        let out = SharedOut(ctx.as_mut_ptr());
        let tasks: Vec<(usize, usize, usize)> = starts
            .iter()
            .flat_map(|&(start, len)| (0..heads).map(move |head| (start, len, head)))
            .collect();
        tasks.par_iter().for_each(|&(start, len, head)| {
            let q = qkv[start * 3 * h + head * hd..].as_ptr();
            let k = qkv[start * 3 * h + h + head * hd..].as_ptr();
            let v = qkv[start * 3 * h + 2 * h + head * hd..].as_ptr();
            let mut scores = vec![0f32; len * len];
            // SAFETY: q/k/v rows are `3h` apart within `qkv`, `len` rows from
            // `start`; `scores` is `[len, len]`; each task writes the `hd`
            // columns of its head in its own sequence's rows of `ctx`.
            unsafe {
                small_gemm(
                    (len, len, hd),
                    scores.as_mut_ptr(),
                    len,
                    q,
                    (3 * h, 1),
                    k,
                    (1, 3 * h),
                );
            }
            for row in scores.chunks_exact_mut(len) {
                softmax_inplace(row, scale);
            }
            let dst = out.at(start * h + head * hd);
            unsafe {
                small_gemm(
                    (len, hd, len),
                    dst,
                    h,
                    scores.as_ptr(),
                    (len, 1),
                    v,
                    (3 * h, 1),
                );
            }
        });
    }
}

/// `y = LayerNorm(y + residual)`, row by row in parallel.
fn residual_norm(y: &mut [f32], residual: &[f32], norm: &Norm, eps: f32, h: usize) {
    y.par_chunks_mut(h * 64)
        .zip(residual.par_chunks(h * 64))
        .for_each(|(y, r)| {
            for (y, r) in y.chunks_exact_mut(h).zip(r.chunks_exact(h)) {
                add_layer_norm(y, r, &norm.gamma, &norm.beta, eps);
            }
        });
}
