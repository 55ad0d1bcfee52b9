//! A BERT-style sentence encoder (MiniLM and kin) as an ONNX graph of
//! standard opset-17 ops: embeddings (Gather + Add, positions from the input's
//! shape), post-LayerNorm blocks with exact erf GELU, and sentence-transformers
//! pooling (mean over the attention mask, then L2 normalisation).
//!
//! Inputs `input_ids`, `attention_mask`, `token_type_ids` (int64 [batch, seq]);
//! outputs `last_hidden_state` [batch, seq, hidden] and `sentence_embedding`
//! [batch, hidden].
//!
//! Weights are stored as the `Storage` says. For static int8, every op
//! static quantization can lower (the embedding Gather and each MatMul) is
//! listed with the activations it reads; the ops the plan names get int8
//! weights (symmetric, one scale per output channel, DequantizeLinear with
//! `axis`) and a QuantizeLinear/DequantizeLinear pair on each activation
//! input (per tensor: uint8 with a zero point, or symmetric int8 for
//! runtimes that take only that), the form onnxruntime fuses into integer
//! kernels.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::builder::{attr_float, attr_int, attr_ints, Dim, GraphBuilder};
use super::proto::{data_type, ModelProto};
use crate::engine::bert::TensorSource;
use crate::engine::weights::Dense;
use crate::engine::EngineError;
use crate::model::BertConfig;

/// How activations are coded between a QuantizeLinear and its DequantizeLinear.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationType {
    /// uint8 with a zero point: the whole observed range, onnxruntime's default.
    #[default]
    Uint8,
    /// int8, symmetric (zero point 0): TensorRT's explicit quantization
    /// takes nothing else.
    Int8Symmetric,
}

impl ActivationType {
    pub fn name(self) -> &'static str {
        match self {
            Self::Uint8 => "uint8",
            Self::Int8Symmetric => "int8_symmetric",
        }
    }
}

/// Per-tensor activation quantization: `x ≈ (q - zero) * scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActQuant {
    pub scale: f32,
    /// 0..=255 for uint8; always 0 for symmetric int8.
    pub zero_point: u8,
    pub ty: ActivationType,
}

impl ActQuant {
    /// The parameters covering `[lo, hi]` (widened to include 0, so zero,
    /// padding and ReLU-like floors are exact); symmetric int8 covers
    /// `[-max|x|, max|x|]`.
    pub fn from_range(lo: f32, hi: f32, ty: ActivationType) -> Self {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let span = match ty {
            ActivationType::Uint8 => hi - lo,
            ActivationType::Int8Symmetric => hi.max(-lo),
        };
        if span <= f32::MIN_POSITIVE {
            return Self {
                scale: 1.0,
                zero_point: 0,
                ty,
            };
        }
        match ty {
            ActivationType::Uint8 => {
                let scale = span / 255.0;
                let zero = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
                Self {
                    scale,
                    zero_point: zero,
                    ty,
                }
            }
            ActivationType::Int8Symmetric => Self {
                scale: span / 127.0,
                zero_point: 0,
                ty,
            },
        }
    }
}

/// Which ops run in int8 and the parameters of every activation they read.
#[derive(Debug, Clone, Default)]
pub struct QdqPlan {
    pub ops: BTreeSet<String>,
    pub activations: BTreeMap<String, ActQuant>,
    /// Weights in [-63, 63] instead of [-127, 127]: x86 CPUs without VNNI sum
    /// uint8 x int8 products in saturating int16 pairs (onnxruntime's
    /// `reduce_range`), which full-range weights can overflow.
    pub reduce_range: bool,
    /// SmoothQuant: activation tensor -> per-channel divisors `s`. Every
    /// weighted op reading the tensor reads `x / s` (an explicit Mul) with
    /// its weight rows multiplied by `s`, the same function with the
    /// activation outliers moved into the weights, which per-channel weight
    /// scales absorb.
    pub smooth: BTreeMap<String, Vec<f32>>,
}

/// How weights are stored.
#[derive(Debug, Clone)]
pub enum Storage {
    F32,
    /// float16 initializers, each widened by a Cast: float32 compute, so every
    /// CPU runtime (onnxruntime, OpenVINO) runs it as is.
    F16,
    /// Static int8 QDQ for the plan's ops; every other op in float32.
    Int8(QdqPlan),
}

/// An op static quantization can lower to int8.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantOp {
    pub name: String,
    /// Activation tensors it reads (each gets a Q/DQ pair when it is quantized).
    pub activations: Vec<String>,
    /// Whether it has a weight matrix (int8 when quantized).
    pub weight: bool,
    /// Of a weighted op: max |w| over each input channel's weight row (as
    /// stored in the model, before any smoothing), what SmoothQuant balances.
    pub weight_row_max: Vec<f32>,
}

/// The graph and the quantizable ops in it.
pub struct BertGraph {
    pub model: ModelProto,
    pub ops: Vec<QuantOp>,
}

/// Why a graph could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Weights(#[from] EngineError),
    #[error("activation `{0}` of a quantized op has no calibrated range")]
    Uncalibrated(String),
}

pub fn build(
    c: &BertConfig,
    w: &TensorSource,
    storage: &Storage,
    metadata: &BTreeMap<String, String>,
) -> Result<BertGraph, BuildError> {
    let mut b = Builder {
        g: GraphBuilder::new(),
        storage,
        w,
        qdq: HashMap::new(),
        smoothed: BTreeSet::new(),
        ops: Vec::new(),
    };
    b.encoder(c)?;
    Ok(BertGraph {
        model: b.g.finish("bert_encoder", metadata),
        ops: b.ops,
    })
}

struct Builder<'a> {
    g: GraphBuilder,
    storage: &'a Storage,
    w: &'a TensorSource<'a>,
    /// Activation -> its dequantized twin, so readers of one tensor share one pair.
    qdq: HashMap<String, String>,
    /// Smoothed twins already in the graph.
    smoothed: BTreeSet<String>,
    ops: Vec<QuantOp>,
}

impl Builder<'_> {
    fn quantized(&self, op: &str) -> Option<&QdqPlan> {
        match self.storage {
            Storage::Int8(plan) if plan.ops.contains(op) => Some(plan),
            _ => None,
        }
    }

    /// Registers `op` and returns its activation inputs as it reads them:
    /// through a Q/DQ pair when it is quantized.
    fn op_inputs(
        &mut self,
        op: &str,
        acts: &[&str],
        weight: bool,
    ) -> Result<Vec<String>, BuildError> {
        self.ops.push(QuantOp {
            name: op.into(),
            activations: acts.iter().map(|s| s.to_string()).collect(),
            weight,
            weight_row_max: Vec::new(),
        });
        let Some(plan) = self.quantized(op) else {
            return Ok(acts.iter().map(|s| s.to_string()).collect());
        };
        let plan = plan.clone();
        acts.iter()
            .map(|&x| {
                if let Some(dq) = self.qdq.get(x) {
                    return Ok(dq.clone());
                }
                let q = plan
                    .activations
                    .get(x)
                    .ok_or_else(|| BuildError::Uncalibrated(x.into()))?;
                let s = self.g.scalar(&format!("{x}.scale"), q.scale);
                let zname = format!("{x}.zero_point");
                let z = match q.ty {
                    ActivationType::Uint8 => self.g.u8(&zname, &[], &[q.zero_point]),
                    ActivationType::Int8Symmetric => self.g.i8(&zname, &[], &[0]),
                };
                let qx = self
                    .g
                    .op("QuantizeLinear", &[x, &s, &z], &format!("{x}.q"), vec![]);
                let dq = self.g.op(
                    "DequantizeLinear",
                    &[&qx, &s, &z],
                    &format!("{x}.dq"),
                    vec![],
                );
                self.qdq.insert(x.into(), dq.clone());
                Ok(dq)
            })
            .collect()
    }

    /// A float parameter (bias, norm, table) as the storage keeps floats.
    fn float(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        match self.storage {
            Storage::F16 => {
                let h = self.g.f16(&format!("{name}.f16"), dims, data);
                self.g.op(
                    "Cast",
                    &[&h],
                    name,
                    vec![attr_int("to", data_type::FLOAT as i64)],
                )
            }
            _ => self.g.f32(name, dims, data),
        }
    }

    /// A `[rows, cols]` matrix, int8 with one scale per entry along `axis`
    /// when `int8`, else as the storage keeps floats.
    fn matrix(&mut self, name: &str, m: &Dense, axis: usize, int8: bool) -> String {
        if !int8 {
            return self.float(name, &m.shape, &m.data);
        }
        let qmax = match self.storage {
            Storage::Int8(plan) if plan.reduce_range => 63.0,
            _ => 127.0,
        };
        let (codes, scales) = quantize_per_channel(m, axis, qmax);
        let q = self.g.i8(&format!("{name}.int8"), &m.shape, &codes);
        let s = self
            .g
            .f32(&format!("{name}.scale"), &[scales.len()], &scales);
        let z = self.g.i8(
            &format!("{name}.zero_point"),
            &[scales.len()],
            &vec![0; scales.len()],
        );
        self.g.op(
            "DequantizeLinear",
            &[&q, &s, &z],
            name,
            vec![attr_int("axis", axis as i64)],
        )
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Dense, BuildError> {
        Ok((self.w)(name, shape)?)
    }

    /// `x @ W^T + b` for a stored `[out, in]` weight.
    fn linear(
        &mut self,
        op: &str,
        x: &str,
        tensor: &str,
        out: usize,
        inp: usize,
    ) -> Result<String, BuildError> {
        let smooth = match self.storage {
            Storage::Int8(plan) => plan.smooth.get(x).cloned(),
            _ => None,
        };
        let x = match &smooth {
            Some(s) => self.smoothed(x, s),
            None => x.to_string(),
        };
        let xin = self.op_inputs(op, &[&x], true)?.remove(0);
        let int8 = self.quantized(op).is_some();
        let mut weight = transpose(&self.get(&format!("{tensor}.weight"), &[out, inp])?);
        let row_max = weight
            .data
            .chunks(out)
            .map(|row| row.iter().fold(0f32, |m, v| m.max(v.abs())))
            .collect();
        self.ops
            .last_mut()
            .expect("registered above")
            .weight_row_max = row_max;
        if let Some(s) = &smooth {
            for (row, &sj) in weight.data.chunks_mut(out).zip(s) {
                row.iter_mut().for_each(|v| *v *= sj);
            }
        }
        let wt = self.matrix(&format!("{op}.weight"), &weight, 1, int8);
        let bias = self.get(&format!("{tensor}.bias"), &[out])?;
        let bias = self.float(&format!("{op}.bias"), &[out], &bias.data);
        let mm = self
            .g
            .op("MatMul", &[&xin, &wt], &format!("{op}.matmul"), vec![]);
        Ok(self.g.op("Add", &[&mm, &bias], op, vec![]))
    }

    /// `x / s` per channel (last axis), built once per tensor.
    fn smoothed(&mut self, x: &str, s: &[f32]) -> String {
        let out = format!("{x}.smoothed");
        if self.smoothed.insert(out.clone()) {
            let inv: Vec<f32> = s.iter().map(|&v| 1.0 / v).collect();
            let inv = self.g.f32(&format!("{x}.smooth_inv"), &[inv.len()], &inv);
            self.g.op("Mul", &[x, &inv], &out, vec![]);
        }
        out
    }

    fn layer_norm(
        &mut self,
        x: &str,
        tensor: &str,
        h: usize,
        eps: f64,
        out: &str,
    ) -> Result<String, BuildError> {
        let gamma = self.get(&format!("{tensor}.weight"), &[h])?;
        let beta = self.get(&format!("{tensor}.bias"), &[h])?;
        let gamma = self.float(&format!("{out}.gamma"), &[h], &gamma.data);
        let beta = self.float(&format!("{out}.beta"), &[h], &beta.data);
        Ok(self.g.op(
            "LayerNormalization",
            &[x, &gamma, &beta],
            out,
            vec![attr_int("axis", -1), attr_float("epsilon", eps as f32)],
        ))
    }

    fn encoder(&mut self, c: &BertConfig) -> Result<(), BuildError> {
        let (h, f, heads) = (c.hidden_size, c.intermediate_size, c.num_attention_heads);
        let hd = h / heads;
        let ids_dims = [Dim::Named("batch"), Dim::Named("sequence")];
        for name in ["input_ids", "attention_mask", "token_type_ids"] {
            self.g.input(name, data_type::INT64, &ids_dims);
        }
        self.g.output(
            "last_hidden_state",
            data_type::FLOAT,
            &[Dim::Named("batch"), Dim::Named("sequence"), Dim::Fixed(h)],
        );
        self.g.output(
            "sentence_embedding",
            data_type::FLOAT,
            &[Dim::Named("batch"), Dim::Fixed(h)],
        );
        let one_i = self.g.i64("const.one_i64", &[], &[1]);
        let zero_i = self.g.i64("const.zero_i64", &[], &[0]);
        let one = self.g.scalar("const.one", 1.0);

        // Embeddings: word + token type + absolute position, then LayerNorm.
        let ids = self.op_inputs("embeddings.word", &[], true)?;
        debug_assert!(ids.is_empty());
        let word = self.get("token_embd.weight", &[c.vocab_size, h])?;
        let int8 = self.quantized("embeddings.word").is_some();
        let word = self.matrix("embeddings.word.table", &word, 0, int8);
        let types = self.get("token_types.weight", &[c.type_vocab_size, h])?;
        let types = self.float(
            "embeddings.token_type.table",
            &[c.type_vocab_size, h],
            &types.data,
        );
        let pos = self.get("position_embd.weight", &[c.max_position_embeddings, h])?;
        let pos = self.float(
            "embeddings.position.table",
            &[c.max_position_embeddings, h],
            &pos.data,
        );
        let g = &mut self.g;
        g.op("Shape", &["input_ids"], "embeddings.ids_shape", vec![]);
        g.op(
            "Gather",
            &["embeddings.ids_shape", &one_i],
            "embeddings.seq_len",
            vec![attr_int("axis", 0)],
        );
        g.op(
            "Range",
            &[&zero_i, "embeddings.seq_len", &one_i],
            "embeddings.position_ids",
            vec![],
        );
        g.op(
            "Gather",
            &[&word, "input_ids"],
            "embeddings.word",
            vec![attr_int("axis", 0)],
        );
        g.op(
            "Gather",
            &[&types, "token_type_ids"],
            "embeddings.token_type",
            vec![attr_int("axis", 0)],
        );
        g.op(
            "Gather",
            &[&pos, "embeddings.position_ids"],
            "embeddings.position",
            vec![attr_int("axis", 0)],
        );
        g.op(
            "Add",
            &["embeddings.word", "embeddings.token_type"],
            "embeddings.word_type",
            vec![],
        );
        g.op(
            "Add",
            &["embeddings.word_type", "embeddings.position"],
            "embeddings.sum",
            vec![],
        );
        let mut x = self.layer_norm(
            "embeddings.sum",
            "token_embd_norm",
            h,
            c.layer_norm_eps,
            "embeddings.out",
        )?;

        // Additive attention mask [batch, 1, 1, seq]: 0 where attended, -1e9 where padded.
        let g = &mut self.g;
        let axes12 = g.i64("const.axes_1_2", &[2], &[1, 2]);
        let neg = g.scalar("const.mask_negative", -1e9);
        g.op(
            "Cast",
            &["attention_mask"],
            "mask.float",
            vec![attr_int("to", data_type::FLOAT as i64)],
        );
        g.op("Unsqueeze", &["mask.float", &axes12], "mask.4d", vec![]);
        g.op("Sub", &[&one, "mask.4d"], "mask.inverted", vec![]);
        g.op("Mul", &["mask.inverted", &neg], "mask.additive", vec![]);
        let split = g.i64("const.split_heads", &[4], &[0, 0, heads as i64, hd as i64]);
        let merge = g.i64("const.merge_heads", &[3], &[0, 0, h as i64]);
        let scale = g.scalar("const.attention_scale", 1.0 / (hd as f32).sqrt());
        let inv_sqrt2 = g.scalar("const.inv_sqrt2", std::f32::consts::FRAC_1_SQRT_2);
        let half = g.scalar("const.half", 0.5);

        for i in 0..c.num_hidden_layers {
            let l = format!("layer{i}");
            let t = |part: &str| format!("blk.{i}.{part}");
            let heads_of = |b: &mut Self,
                            name: &str,
                            tensor: &str,
                            perm: &[i64]|
             -> Result<String, BuildError> {
                let y = b.linear(&format!("{l}.{name}"), &x, &t(tensor), h, h)?;
                let s = b.g.op(
                    "Reshape",
                    &[&y, &split],
                    &format!("{l}.{name}.split"),
                    vec![],
                );
                Ok(b.g.op(
                    "Transpose",
                    &[&s],
                    &format!("{l}.{name}.heads"),
                    vec![attr_ints("perm", perm)],
                ))
            };
            let q = heads_of(self, "query", "attn_q", &[0, 2, 1, 3])?;
            let k = heads_of(self, "key", "attn_k", &[0, 2, 3, 1])?;
            let v = heads_of(self, "value", "attn_v", &[0, 2, 1, 3])?;
            let qk = self.op_inputs(&format!("{l}.scores"), &[&q, &k], false)?;
            let g = &mut self.g;
            let raw = g.op(
                "MatMul",
                &[&qk[0], &qk[1]],
                &format!("{l}.scores.raw"),
                vec![],
            );
            let scaled = g.op(
                "Mul",
                &[&raw, &scale],
                &format!("{l}.scores.scaled"),
                vec![],
            );
            let scores = g.op(
                "Add",
                &[&scaled, "mask.additive"],
                &format!("{l}.scores"),
                vec![],
            );
            let probs = g.op(
                "Softmax",
                &[&scores],
                &format!("{l}.probs"),
                vec![attr_int("axis", -1)],
            );
            let pv = self.op_inputs(&format!("{l}.context"), &[&probs, &v], false)?;
            let g = &mut self.g;
            let ctx = g.op(
                "MatMul",
                &[&pv[0], &pv[1]],
                &format!("{l}.context.heads"),
                vec![],
            );
            let ctx = g.op(
                "Transpose",
                &[&ctx],
                &format!("{l}.context.merged_t"),
                vec![attr_ints("perm", &[0, 2, 1, 3])],
            );
            let ctx = g.op("Reshape", &[&ctx, &merge], &format!("{l}.context"), vec![]);
            let attn = self.linear(&format!("{l}.attn_out"), &ctx, &t("attn_output"), h, h)?;
            let res = self
                .g
                .op("Add", &[&attn, &x], &format!("{l}.attn_residual"), vec![]);
            let x1 = self.layer_norm(
                &res,
                &t("attn_output_norm"),
                h,
                c.layer_norm_eps,
                &format!("{l}.attn_norm"),
            )?;
            let up = self.linear(&format!("{l}.ffn_up"), &x1, &t("ffn_up"), f, h)?;
            // Exact GELU: 0.5 * x * (1 + erf(x / sqrt 2)).
            let g = &mut self.g;
            let a = g.op(
                "Mul",
                &[&up, &inv_sqrt2],
                &format!("{l}.gelu.scaled"),
                vec![],
            );
            let a = g.op("Erf", &[&a], &format!("{l}.gelu.erf"), vec![]);
            let a = g.op("Add", &[&a, &one], &format!("{l}.gelu.plus_one"), vec![]);
            let a = g.op("Mul", &[&up, &a], &format!("{l}.gelu.product"), vec![]);
            let gelu = g.op("Mul", &[&a, &half], &format!("{l}.gelu"), vec![]);
            let down = self.linear(&format!("{l}.ffn_down"), &gelu, &t("ffn_down"), h, f)?;
            let res = self
                .g
                .op("Add", &[&down, &x1], &format!("{l}.ffn_residual"), vec![]);
            x = self.layer_norm(
                &res,
                &t("layer_output_norm"),
                h,
                c.layer_norm_eps,
                &format!("{l}.out"),
            )?;
        }
        let g = &mut self.g;
        g.op("Identity", &[&x], "last_hidden_state", vec![]);

        // Mean over attended tokens, then L2 normalisation.
        let axis2 = g.i64("const.axis_2", &[1], &[2]);
        let axis1 = g.i64("const.axis_1", &[1], &[1]);
        let last = g.i64("const.axis_last", &[1], &[-1]);
        let tiny = g.scalar("const.count_floor", 1e-9);
        let tiny12 = g.scalar("const.norm_floor", 1e-12);
        let keep0 = || vec![attr_int("keepdims", 0)];
        g.op("Unsqueeze", &["mask.float", &axis2], "pool.mask", vec![]);
        g.op(
            "Mul",
            &["last_hidden_state", "pool.mask"],
            "pool.masked",
            vec![],
        );
        g.op("ReduceSum", &["pool.masked", &axis1], "pool.sum", keep0());
        g.op("ReduceSum", &["pool.mask", &axis1], "pool.count", keep0());
        g.op("Max", &["pool.count", &tiny], "pool.count_floored", vec![]);
        g.op(
            "Div",
            &["pool.sum", "pool.count_floored"],
            "pool.mean",
            vec![],
        );
        g.op("Mul", &["pool.mean", "pool.mean"], "pool.squares", vec![]);
        g.op(
            "ReduceSum",
            &["pool.squares", &last],
            "pool.norm_sq",
            vec![attr_int("keepdims", 1)],
        );
        g.op("Sqrt", &["pool.norm_sq"], "pool.norm", vec![]);
        g.op("Max", &["pool.norm", &tiny12], "pool.norm_floored", vec![]);
        g.op(
            "Div",
            &["pool.mean", "pool.norm_floored"],
            "sentence_embedding",
            vec![],
        );
        Ok(())
    }
}

/// Symmetric int8 codes in [-qmax, qmax] with one scale per entry along
/// `axis` (0: rows, 1: columns) of a `[rows, cols]` matrix.
pub fn quantize_per_channel(m: &Dense, axis: usize, qmax: f32) -> (Vec<i8>, Vec<f32>) {
    let (rows, cols) = (m.shape[0], m.shape[1]);
    let channels = if axis == 0 { rows } else { cols };
    let mut absmax = vec![0f32; channels];
    for (r, row) in m.data.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let ch = if axis == 0 { r } else { c };
            absmax[ch] = absmax[ch].max(v.abs());
        }
    }
    let scales: Vec<f32> = absmax
        .iter()
        .map(|&a| if a > 0.0 { a / qmax } else { 1.0 })
        .collect();
    let codes = m
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = if axis == 0 { i / cols } else { i % cols };
            (v / scales[ch]).round_ties_even().clamp(-qmax, qmax) as i8
        })
        .collect();
    (codes, scales)
}

/// Row-major `[r, c]` to `[c, r]`.
fn transpose(d: &Dense) -> Dense {
    let (r, c) = (d.shape[0], d.shape[1]);
    let mut data = vec![0f32; d.data.len()];
    for (i, row) in d.data.chunks_exact(c).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            data[j * r + i] = v;
        }
    }
    Dense {
        shape: vec![c, r],
        data,
    }
}
