//! A BERT-style sentence encoder (MiniLM and kin) as a fixed-shape TFLite
//! float graph: batch 1, `seq` tokens, inputs `input_ids` and
//! `attention_mask` (int32 `[1, seq]`), output `embedding` (`[1, hidden]`,
//! mean-pooled over the mask and L2-normalised). Builtin ops only; LayerNorm
//! is MEAN / SQUARED_DIFFERENCE / RSQRT / SUB / MUL / ADD. The scheme passes
//! (`lower`) rewrite this graph; it is also what calibration runs.

use super::graph::{ElemType, Graph, Op};
use crate::engine::bert::TensorSource;
use crate::engine::EngineError;
use crate::model::BertConfig;

/// What a padded key adds to its attention score (fp16-safe, as HF BERT).
pub const MASKED_SCORE: f32 = -10_000.0;

/// Below the lowest calibrated score, where masked scores saturate in int8:
/// `exp(-12)` of weight at most, next to a row's largest score.
pub const MASK_MARGIN: f32 = 12.0;

/// The float graph and the facts the int8 pass needs about it.
pub struct BertGraph {
    pub graph: Graph,
    /// `(masked scores, raw scores)`: the masked tensor's int8 range is the
    /// raw scores' range widened by [`MASK_MARGIN`], not its own (which
    /// reaches [`MASKED_SCORE`] and would leave no resolution for scores).
    pub masked_scores: Vec<(usize, usize)>,
    /// Where each tensor keeps its tokens, so calibration can look at the
    /// real tokens only (padded rows never reach the output).
    pub layout: Vec<Layout>,
}

/// How LayerNorm is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormForm {
    /// MEAN, SQUARED_DIFFERENCE, MEAN, ADD eps, RSQRT, SUB, MUL: the ops
    /// GPU delegates take.
    Moments,
    /// `sqrt(hidden) * L2_NORMALIZATION(x - MEAN(x))`: in int8 the variance
    /// is an int32 sum inside one op, where squared deviations in int8 span
    /// four decades (outlier channels) and the small ones round to zero.
    L2,
}

/// Token positions of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Not per token (constants, the pooled embedding).
    Whole,
    /// `[seq, ...]`: token t is row t.
    Rows,
    /// `[heads, seq, ...]`.
    HeadRows,
    /// `[heads, seq, seq]`: query rows and key columns.
    Scores,
}

/// Names and shapes of the graph's inputs and output.
pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const OUTPUT: &str = "embedding";

struct Builder<'a> {
    g: Graph,
    w: &'a TensorSource<'a>,
    seq: i32,
    h: i32,
    axis0: Option<usize>,
    axis1: Option<usize>,
    perm: Option<usize>,
    norm: NormForm,
    /// Tensors laid out `[heads, seq, ...]` and `[heads, seq, seq]`.
    heads: Vec<usize>,
    scores: Vec<usize>,
}

pub fn build(
    c: &BertConfig,
    w: &TensorSource,
    seq: usize,
    norm: NormForm,
) -> Result<BertGraph, EngineError> {
    let (h, heads) = (c.hidden_size, c.num_attention_heads);
    let hd = h / heads;
    let mut b = Builder {
        g: Graph::default(),
        w,
        seq: seq as i32,
        h: h as i32,
        axis0: None,
        axis1: None,
        perm: None,
        norm,
        heads: Vec::new(),
        scores: Vec::new(),
    };
    let s = seq as i32;
    let ids = b.g.tensor(INPUT_IDS, &[1, s], ElemType::I32);
    let mask = b.g.tensor(ATTENTION_MASK, &[1, s], ElemType::I32);
    b.g.inputs = vec![ids, mask];

    let ids_flat = b.reshape(ids, &[s], "input_ids.flat", ElemType::I32);
    let word = b.weight("token_embd.weight", &[c.vocab_size, h])?;
    let word =
        b.g.const_f32("embeddings.word", &[c.vocab_size as i32, h as i32], &word);
    let gathered = b.g.push(
        Op::Gather,
        &[word, ids_flat],
        "embeddings.word_rows",
        &[s, h as i32],
        ElemType::F32,
    );
    // Positions 0..seq plus token type 0, folded into one constant.
    let pos = b.weight("position_embd.weight", &[c.max_position_embeddings, h])?;
    let types = b.weight("token_types.weight", &[c.type_vocab_size, h])?;
    let folded: Vec<f32> = pos[..seq * h]
        .iter()
        .enumerate()
        .map(|(i, p)| p + types[i % h])
        .collect();
    let pos =
        b.g.const_f32("embeddings.position_and_type", &[s, h as i32], &folded);
    let x = b.binary(Op::Add, gathered, pos, "embeddings.sum", &[s, h as i32]);
    let mut x = b.layer_norm(
        x,
        "token_embd_norm",
        "embeddings.norm",
        c.layer_norm_eps as f32,
    )?;

    // The mask as a 0/1 row weight and as an additive attention bias, both
    // looked up by the int32 mask (no casts: the same graph lowers to int8).
    let mask_flat = b.reshape(mask, &[s], "attention_mask.flat", ElemType::I32);
    let keep_table = b.g.const_f32("mask.keep_table", &[2, 1], &[0.0, 1.0]);
    let keep = b.g.push(
        Op::Gather,
        &[keep_table, mask_flat],
        "mask.keep",
        &[s, 1],
        ElemType::F32,
    );
    let mask_keys = b.reshape(mask, &[1, 1, s], "attention_mask.keys", ElemType::I32);
    let bias_table = b.g.const_f32("mask.bias_table", &[2], &[MASKED_SCORE, 0.0]);
    let bias = b.g.push(
        Op::Gather,
        &[bias_table, mask_keys],
        "mask.bias",
        &[1, 1, s],
        ElemType::F32,
    );

    let mut masked_scores = Vec::new();
    let scale = 1.0 / (hd as f32).sqrt();
    for i in 0..c.num_hidden_layers {
        let p = |part: &str| format!("blk.{i}.{part}");
        let n = |part: &str| format!("layer{i}.{part}");
        // The 1/sqrt(head_dim) of the scores is folded into the query projection.
        let q = b.linear(x, &p("attn_q"), &n("attention.query"), h, h, scale)?;
        let k = b.linear(x, &p("attn_k"), &n("attention.key"), h, h, 1.0)?;
        let v = b.linear(x, &p("attn_v"), &n("attention.value"), h, h, 1.0)?;
        let split = |b: &mut Builder, t: usize, name: &str| {
            let r = b.reshape(
                t,
                &[s, heads as i32, hd as i32],
                &format!("{name}.split"),
                ElemType::F32,
            );
            b.transpose(r, &[heads as i32, s, hd as i32], &format!("{name}.heads"))
        };
        let (qh, kh, vh) = (
            split(&mut b, q, &n("attention.query")),
            split(&mut b, k, &n("attention.key")),
            split(&mut b, v, &n("attention.value")),
        );
        let scores = b.g.push(
            Op::BatchMatMul { adj_y: true },
            &[qh, kh],
            &n("attention.scores"),
            &[heads as i32, s, s],
            ElemType::F32,
        );
        let masked = b.binary(
            Op::Add,
            scores,
            bias,
            &n("attention.masked_scores"),
            &[heads as i32, s, s],
        );
        masked_scores.push((masked, scores));
        b.heads.extend([qh, kh, vh]);
        let probs = b.g.push(
            Op::Softmax { beta: 1.0 },
            &[masked],
            &n("attention.probs"),
            &[heads as i32, s, s],
            ElemType::F32,
        );
        let ctx = b.g.push(
            Op::BatchMatMul { adj_y: false },
            &[probs, vh],
            &n("attention.context_heads"),
            &[heads as i32, s, hd as i32],
            ElemType::F32,
        );
        b.scores.extend([scores, masked, probs]);
        b.heads.push(ctx);
        let ctx = b.transpose(
            ctx,
            &[s, heads as i32, hd as i32],
            &n("attention.context_tokens"),
        );
        let ctx = b.reshape(ctx, &[s, h as i32], &n("attention.context"), ElemType::F32);
        let out = b.linear(ctx, &p("attn_output"), &n("attention.output"), h, h, 1.0)?;
        let r = b.binary(Op::Add, x, out, &n("attention.residual"), &[s, h as i32]);
        x = b.layer_norm(
            r,
            &p("attn_output_norm"),
            &n("attention.norm"),
            c.layer_norm_eps as f32,
        )?;
        let f = c.intermediate_size;
        let up = b.linear(x, &p("ffn_up"), &n("ffn.up"), f, h, 1.0)?;
        let act = b.g.push(
            Op::Gelu { approximate: false },
            &[up],
            &n("ffn.gelu"),
            &[s, f as i32],
            ElemType::F32,
        );
        let down = b.linear(act, &p("ffn_down"), &n("ffn.down"), h, f, 1.0)?;
        let r = b.binary(Op::Add, x, down, &n("ffn.residual"), &[s, h as i32]);
        x = b.layer_norm(
            r,
            &p("layer_output_norm"),
            &n("ffn.norm"),
            c.layer_norm_eps as f32,
        )?;
    }

    // Masked mean over tokens: padded rows are zeroed; MEAN then divides by
    // `seq` instead of the token count, a factor the L2 norm removes.
    let kept = b.binary(Op::Mul, x, keep, "pooling.masked", &[s, h as i32]);
    let axis0 = b.axis(0);
    let pooled = b.g.push(
        Op::Mean { keep_dims: true },
        &[kept, axis0],
        "pooling.mean",
        &[1, h as i32],
        ElemType::F32,
    );
    let out =
        b.g.push(Op::L2Norm, &[pooled], OUTPUT, &[1, h as i32], ElemType::F32);
    b.g.outputs = vec![out];
    let layout = (0..b.g.tensors.len())
        .map(|t| {
            let shape = &b.g.tensors[t].shape;
            if b.scores.contains(&t) {
                Layout::Scores
            } else if b.heads.contains(&t) {
                Layout::HeadRows
            } else if b.g.tensors[t].data.is_none() && shape.len() >= 2 && shape[0] == s {
                Layout::Rows
            } else {
                Layout::Whole
            }
        })
        .collect();
    Ok(BertGraph {
        graph: b.g,
        masked_scores,
        layout,
    })
}

impl Builder<'_> {
    fn weight(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EngineError> {
        Ok((self.w)(name, shape)?.data)
    }

    fn axis(&mut self, axis: i32) -> usize {
        let slot = if axis == 0 {
            &mut self.axis0
        } else {
            &mut self.axis1
        };
        if let Some(t) = *slot {
            return t;
        }
        let t = self.g.const_i32(&format!("axis{axis}"), &[axis]);
        *(if axis == 0 {
            &mut self.axis0
        } else {
            &mut self.axis1
        }) = Some(t);
        t
    }

    fn reshape(&mut self, x: usize, shape: &[i32], name: &str, ty: ElemType) -> usize {
        let target = self.g.const_i32(&format!("{name}.shape"), shape);
        self.g.push(
            Op::Reshape {
                new_shape: shape.to_vec(),
            },
            &[x, target],
            name,
            shape,
            ty,
        )
    }

    /// Swaps the first two of three axes.
    fn transpose(&mut self, x: usize, shape: &[i32], name: &str) -> usize {
        let perm = match self.perm {
            Some(p) => p,
            None => {
                let p = self.g.const_i32("perm_102", &[1, 0, 2]);
                self.perm = Some(p);
                p
            }
        };
        self.g
            .push(Op::Transpose, &[x, perm], name, shape, ElemType::F32)
    }

    fn binary(&mut self, op: Op, a: usize, b: usize, name: &str, shape: &[i32]) -> usize {
        self.g.push(op, &[a, b], name, shape, ElemType::F32)
    }

    /// `x W^T + b` with W `[out, inp]`, both scaled by `scale`.
    fn linear(
        &mut self,
        x: usize,
        src: &str,
        name: &str,
        out: usize,
        inp: usize,
        scale: f32,
    ) -> Result<usize, EngineError> {
        let mut w = self.weight(&format!("{src}.weight"), &[out, inp])?;
        let mut bias = self.weight(&format!("{src}.bias"), &[out])?;
        if scale != 1.0 {
            w.iter_mut()
                .chain(bias.iter_mut())
                .for_each(|v| *v *= scale);
        }
        let w = self
            .g
            .const_f32(&format!("{name}.weight"), &[out as i32, inp as i32], &w);
        let bias = self
            .g
            .const_f32(&format!("{name}.bias"), &[out as i32], &bias);
        let rows = self.g.tensors[x].elements() as i32 / inp as i32;
        Ok(self.g.push(
            Op::FullyConnected,
            &[x, w, bias],
            name,
            &[rows, out as i32],
            ElemType::F32,
        ))
    }

    fn layer_norm(
        &mut self,
        x: usize,
        src: &str,
        name: &str,
        eps: f32,
    ) -> Result<usize, EngineError> {
        let h = self.h as usize;
        let gamma = self.weight(&format!("{src}.weight"), &[h])?;
        let beta = self.weight(&format!("{src}.bias"), &[h])?;
        let (s, hh) = (self.seq, self.h);
        let axis1 = self.axis(1);
        let mean = self.g.push(
            Op::Mean { keep_dims: true },
            &[x, axis1],
            &format!("{name}.mean"),
            &[s, 1],
            ElemType::F32,
        );
        let centered = self.binary(Op::Sub, x, mean, &format!("{name}.centered"), &[s, hh]);
        let (normed, gamma) = match self.norm {
            NormForm::Moments => {
                let sq = self.binary(
                    Op::SquaredDifference,
                    x,
                    mean,
                    &format!("{name}.squared_deviation"),
                    &[s, hh],
                );
                let var = self.g.push(
                    Op::Mean { keep_dims: true },
                    &[sq, axis1],
                    &format!("{name}.variance"),
                    &[s, 1],
                    ElemType::F32,
                );
                let eps = self.g.const_f32(&format!("{name}.epsilon"), &[1], &[eps]);
                let var_eps =
                    self.binary(Op::Add, var, eps, &format!("{name}.variance_eps"), &[s, 1]);
                let inv = self.g.push(
                    Op::Rsqrt,
                    &[var_eps],
                    &format!("{name}.inv_std"),
                    &[s, 1],
                    ElemType::F32,
                );
                let normed = self.binary(
                    Op::Mul,
                    centered,
                    inv,
                    &format!("{name}.normalized"),
                    &[s, hh],
                );
                (normed, gamma)
            }
            NormForm::L2 => {
                // x / std = sqrt(hidden) * x / |x| for centred x: the factor
                // goes into gamma (LayerNorm's tiny epsilon is dropped).
                let unit = self.g.push(
                    Op::L2Norm,
                    &[centered],
                    &format!("{name}.unit"),
                    &[s, hh],
                    ElemType::F32,
                );
                let root = (h as f32).sqrt();
                (unit, gamma.iter().map(|g| g * root).collect())
            }
        };
        let gamma = self.g.const_f32(&format!("{name}.gamma"), &[hh], &gamma);
        let beta = self.g.const_f32(&format!("{name}.beta"), &[hh], &beta);
        let scaled = self.binary(Op::Mul, normed, gamma, &format!("{name}.scaled"), &[s, hh]);
        Ok(self.binary(Op::Add, scaled, beta, name, &[s, hh]))
    }
}
