//! A LLaMA-family decoder as the ONNX graph onnxruntime-genai runs: one step
//! of the model over new tokens with an explicit KV cache.
//!
//! Inputs `input_ids` [batch, seq], `attention_mask` [batch, total_seq],
//! `position_ids` [batch, seq] (int64) and `past_key_values.{i}.key/value`
//! [batch, kv_heads, past_seq, head_dim]; outputs `logits` [batch, seq, vocab]
//! and `present.{i}.key/value` (past and new positions concatenated), the
//! names genai's `genai_config.json` maps.
//!
//! Standard opset-17 ops but for `MatMulNBits` (com.microsoft), which takes
//! every GGUF Q4_0 weight block as it is (`nbits`); a weight of another type
//! is carried as float32 decoded from the GGUF's exact values. Attention is
//! plain MatMul/Softmax with a causal mask built from the inputs' shapes, so
//! the graph needs no contrib attention kernel.
//!
//! The arithmetic follows edgeforge's decoder (`engine::decoder`), which
//! follows llama.cpp: RoPE on adjacent pairs (GGUF's q/k row order) with
//! the engine's own angle table, keys and values cached as float16 (the KV
//! inputs and outputs are float16), queries and attention weights rounded to
//! float16 before their products, RMSNorm as `x * (1 / sqrt(mean(x²) + ε)) * w`
//! and SiLU as `x / (1 + exp(-x))`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::builder::{attr_int, attr_ints, Dim, GraphBuilder};
use super::nbits::{self, RepackError};
use super::proto::{data_type, ModelProto};
use super::q8_act;
use crate::engine::decoder::{
    rope_freqs, Gate, LayerAttention, Mixer, MlpWeights, Parts, RopePairs, Spec,
};
use crate::format::gguf::GgmlType;
use crate::quant;

/// A tensor as a GGUF file holds it: llama.cpp name, type, row-major dims
/// (outermost first) and bytes.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    pub ty: GgmlType,
    pub dims: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Tensors by llama.cpp name.
pub type Tensors = BTreeMap<String, StoredTensor>;

/// Why the graph could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Unsupported(String),
    #[error("tensor `{0}` is missing")]
    Missing(String),
    #[error("tensor `{name}` is {got:?}, expected {want:?}")]
    Shape {
        name: String,
        want: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("tensor `{name}`: {message}")]
    Decode { name: String, message: String },
    #[error("tensor `{name}`: {source}")]
    Repack { name: String, source: RepackError },
}

/// How `MatMulNBits` may compute (its `accuracy_level` attribute): 0 leaves
/// the choice to onnxruntime (float32 activations on CPU), 4 quantizes
/// activations to int8 blocks, as llama.cpp's Q4_0 × Q8_0 dot product does.
pub const ACCURACY_LEVEL: i64 = 0;

/// How the graph codes its 4-bit weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// The GGUF's Q4_0 blocks as they are, with activations on llama.cpp's
    /// Q8_0 grid before each: the graph computes what the engine computes.
    LlamaCpp,
    /// Every weight the plan makes 4-bit (given as float) quantized
    /// symmetrically with blocks of `block` along K, float activations:
    /// the plain MatMulNBits graph accelerator runtimes compile (OpenVINO's
    /// NPU plugin wants blocks of 128, QNN takes 32 to 128).
    Int4Sym { block: usize },
}

/// Dimension names genai's KV cache code reads.
const BATCH: Dim = Dim::Named("batch_size");
const SEQ: Dim = Dim::Named("sequence_length");
const TOTAL: Dim = Dim::Named("total_sequence_length");
const PAST: Dim = Dim::Named("past_sequence_length");

/// Checks that `spec` is the plain LLaMA skeleton this graph expresses,
/// naming the first part that is not.
pub fn check_spec(spec: &Spec, tensors: &Tensors) -> Result<(), BuildError> {
    let no = |what: &str| {
        Err(BuildError::Unsupported(format!(
            "{}: {what} is not expressed by the decoder export (it builds LLaMA-style decoders)",
            spec.family
        )))
    };
    let plain_layer = |l: &LayerAttention| {
        l.mixer == Mixer::Attention && l.window.is_none() && l.rope_position_scale == 1.0
    };
    if !spec.layers.iter().all(plain_layer) {
        return no("a sliding-window, scaled-RoPE or convolution layer");
    }
    if spec.parts != Parts::NONE {
        return no("a post-norm or per-head q/k norm");
    }
    if spec.gate != Gate::Silu || spec.mlp_weights != MlpWeights::Separate {
        return no("a non-SiLU or fused MLP");
    }
    if spec.rope_pairs != RopePairs::Adjacent || spec.rope_dims != spec.head_dim {
        return no("NeoX or partial RoPE");
    }
    if spec.embed_scale.is_some()
        || spec.residual_scale.is_some()
        || spec.logit_scale.is_some()
        || spec.logit_softcap.is_some()
    {
        return no("an embedding, residual or logit multiplier");
    }
    if !spec.head_dim.is_multiple_of(2) || !spec.heads.is_multiple_of(spec.kv_heads.max(1)) {
        return no("an odd head width or a query head count not a multiple of the KV heads");
    }
    let extra = tensors
        .keys()
        .find(|n| n.ends_with(".bias") || n.starts_with("rope_") || n.contains("attn_qkv"));
    if let Some(name) = extra {
        return no(&format!("tensor `{name}`"));
    }
    Ok(())
}

/// The graph, and the names of weights carried as float (not Q4_0 in the source).
pub struct DecoderGraph {
    pub model: ModelProto,
    pub float_weights: Vec<String>,
}

/// The graph over `tensors`; with [`Coding::Int4Sym`], `int4` names the
/// weights to quantize (held as float in `tensors`).
pub fn build(
    spec: &Spec,
    tensors: &Tensors,
    metadata: &BTreeMap<String, String>,
    coding: Coding,
    int4: &BTreeSet<String>,
) -> Result<DecoderGraph, BuildError> {
    check_spec(spec, tensors)?;
    let mut b = Builder {
        g: GraphBuilder::new(),
        t: tensors,
        coding,
        int4,
        float_weights: Vec::new(),
        q8: HashMap::new(),
    };
    b.decoder(spec)?;
    Ok(DecoderGraph {
        model: b.g.finish("llama_decoder", metadata),
        float_weights: b.float_weights,
    })
}

struct Builder<'a> {
    g: GraphBuilder,
    t: &'a Tensors,
    coding: Coding,
    int4: &'a BTreeSet<String>,
    float_weights: Vec<String>,
    /// Activation -> its Q8_0-grid twin, so q/k/v (and gate/up) share one.
    q8: HashMap<String, String>,
}

impl<'a> Builder<'a> {
    /// Borrowed from the map, not from `self`, so the graph can grow meanwhile.
    fn stored(&self, name: &str, dims: &[usize]) -> Result<&'a StoredTensor, BuildError> {
        let tensors: &'a Tensors = self.t;
        let t = tensors
            .get(name)
            .ok_or_else(|| BuildError::Missing(name.into()))?;
        if t.dims != dims {
            return Err(BuildError::Shape {
                name: name.into(),
                want: dims.to_vec(),
                got: t.dims.clone(),
            });
        }
        Ok(t)
    }

    /// A tensor decoded to f32 from its stored type.
    fn dense(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, BuildError> {
        let t = self.stored(name, dims)?;
        let mut out = vec![0f32; dims.iter().product()];
        quant::dequantize(t.ty, &t.bytes, &mut out).map_err(|e| BuildError::Decode {
            name: name.into(),
            message: e.to_string(),
        })?;
        Ok(out)
    }

    fn i64s(&mut self, name: &str, v: &[i64]) -> String {
        self.g.i64(name, &[v.len()], v)
    }

    /// `x @ W^T` for the `[n, k]` weight `name`: MatMulNBits over its Q4_0
    /// blocks (or, with [`Coding::Int4Sym`], over its float values quantized
    /// at the coding's block), else a float32 MatMul of its decoded values.
    fn linear(
        &mut self,
        x: &str,
        name: &str,
        n: usize,
        k: usize,
        out: &str,
    ) -> Result<String, BuildError> {
        let t = self.stored(name, &[n, k])?;
        if let Coding::Int4Sym { block } = self.coding {
            if self.int4.contains(name) {
                let w = self.dense(name, &[n, k])?;
                let packed = nbits::quantize_sym(&w, n, k, block);
                return Ok(self.matmul_nbits(x, name, (n, k, block), &packed, out));
            }
            return self.float_linear(x, name, n, k, out);
        }
        let x = &self.activation(x, k, name, t.ty)?;
        if t.ty == GgmlType::Q4_0 {
            let packed = nbits::from_q4_0(&t.bytes, n, k).map_err(|source| BuildError::Repack {
                name: name.into(),
                source,
            })?;
            return Ok(self.matmul_nbits(x, name, (n, k, nbits::BLOCK), &packed, out));
        }
        self.float_linear(x, name, n, k, out)
    }

    /// `x @ W^T` with `W` `[n, k]` as MatMulNBits codes of `block` along K.
    fn matmul_nbits(
        &mut self,
        x: &str,
        name: &str,
        (n, k, block): (usize, usize, usize),
        packed: &nbits::NBits,
        out: &str,
    ) -> String {
        let blocks = k.div_ceil(block);
        let codes = self.g.u8(
            &format!("{name}.q4"),
            &[n, blocks, block / 2],
            &packed.codes,
        );
        let scales = self
            .g
            .f32(&format!("{name}.scales"), &[n * blocks], &packed.scales);
        let attrs = vec![
            attr_int("K", k as i64),
            attr_int("N", n as i64),
            attr_int("bits", 4),
            attr_int("block_size", block as i64),
            attr_int("accuracy_level", ACCURACY_LEVEL),
        ];
        self.g
            .ms_op("MatMulNBits", &[x, &codes, &scales], out, attrs)
    }

    /// `x @ W^T` as a float32 MatMul of the weight's decoded values.
    fn float_linear(
        &mut self,
        x: &str,
        name: &str,
        n: usize,
        k: usize,
        out: &str,
    ) -> Result<String, BuildError> {
        let w = self.dense(name, &[n, k])?;
        let mut wt = vec![0f32; n * k];
        for (r, row) in w.chunks_exact(k).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                wt[c * n + r] = v;
            }
        }
        self.float_weights.push(name.to_string());
        let w = self.g.f32(&format!("{name}.t"), &[k, n], &wt);
        Ok(self.g.op("MatMul", &[x, &w], out, vec![]))
    }

    /// What the engine multiplies a weight of type `ty` with: activations on
    /// the Q8_0 grid for the 32-block types, float for float weights.
    fn activation(
        &mut self,
        x: &str,
        k: usize,
        weight: &str,
        ty: GgmlType,
    ) -> Result<String, BuildError> {
        if self.coding != Coding::LlamaCpp {
            return Ok(x.to_string());
        }
        match ty {
            GgmlType::Q4_0 | GgmlType::Q8_0 => {}
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => return Ok(x.to_string()),
            other => {
                return Err(BuildError::Unsupported(format!(
                    "tensor `{weight}` is {other}: the decoder export takes Q4_0, Q8_0 and float weights"
                )))
            }
        }
        if let Some(q) = self.q8.get(x) {
            return Ok(q.clone());
        }
        let q = q8_act::q8_0(&mut self.g, x, k, &format!("{x}.q8"));
        self.q8.insert(x.to_string(), q.clone());
        Ok(q)
    }

    /// `x * (1 / sqrt(mean(x²) + eps)) * w` over the last axis.
    fn rms_norm(
        &mut self,
        x: &str,
        weight: &str,
        h: usize,
        eps: &str,
        out: &str,
    ) -> Result<String, BuildError> {
        let w = self.dense(weight, &[h])?;
        let w = self.g.f32(weight, &[h], &w);
        let g = &mut self.g;
        // The engine sums squares in f64 (one rounding, at the mean).
        let to = |t: i32| vec![attr_int("to", t as i64)];
        let wide = g.op("Cast", &[x], &format!("{out}.f64"), to(data_type::DOUBLE));
        let sq = g.op("Mul", &[&wide, &wide], &format!("{out}.sq"), vec![]);
        let mean = g.op(
            "ReduceMean",
            &[&sq],
            &format!("{out}.mean64"),
            vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)],
        );
        let mean = g.op(
            "Cast",
            &[&mean],
            &format!("{out}.mean"),
            to(data_type::FLOAT),
        );
        let var = g.op("Add", &[&mean, eps], &format!("{out}.var"), vec![]);
        let root = g.op("Sqrt", &[&var], &format!("{out}.root"), vec![]);
        let scale = g.op(
            "Div",
            &["const.one", &root],
            &format!("{out}.scale"),
            vec![],
        );
        let scaled = g.op("Mul", &[x, &scale], &format!("{out}.scaled"), vec![]);
        Ok(g.op("Mul", &[&scaled, &w], out, vec![]))
    }

    /// Rounds to float16 precision and back (the engine's f16 rounding points).
    fn round_f16(&mut self, x: &str, out: &str) -> String {
        let half = self.g.op(
            "Cast",
            &[x],
            &format!("{out}.f16"),
            vec![attr_int("to", data_type::FLOAT16 as i64)],
        );
        self.g.op(
            "Cast",
            &[&half],
            out,
            vec![attr_int("to", data_type::FLOAT as i64)],
        )
    }

    /// RoPE of `[batch, seq, heads * head_dim]` on adjacent pairs; returns `[batch, seq, heads, head_dim]`.
    fn rope(&mut self, x: &str, heads: usize, hd: usize, out: &str) -> String {
        let pairs = self.i64s(
            &format!("{out}.pairs_shape"),
            &[0, 0, heads as i64, hd as i64 / 2, 2],
        );
        let heads_shape = self.i64s(
            &format!("{out}.heads_shape"),
            &[0, 0, heads as i64, hd as i64],
        );
        let g = &mut self.g;
        let x5 = g.op("Reshape", &[x, &pairs], &format!("{out}.pairs"), vec![]);
        let a = g.op(
            "Gather",
            &[&x5, "const.zero_i64"],
            &format!("{out}.a"),
            vec![attr_int("axis", 4)],
        );
        let b = g.op(
            "Gather",
            &[&x5, "const.one_i64"],
            &format!("{out}.b"),
            vec![attr_int("axis", 4)],
        );
        let ac = g.op("Mul", &[&a, "rope.cos"], &format!("{out}.ac"), vec![]);
        let bs = g.op("Mul", &[&b, "rope.sin"], &format!("{out}.bs"), vec![]);
        let as_ = g.op("Mul", &[&a, "rope.sin"], &format!("{out}.as"), vec![]);
        let bc = g.op("Mul", &[&b, "rope.cos"], &format!("{out}.bc"), vec![]);
        let ra = g.op("Sub", &[&ac, &bs], &format!("{out}.ra"), vec![]);
        let rb = g.op("Add", &[&as_, &bc], &format!("{out}.rb"), vec![]);
        let ra = g.op(
            "Unsqueeze",
            &[&ra, "const.axis4"],
            &format!("{out}.ra5"),
            vec![],
        );
        let rb = g.op(
            "Unsqueeze",
            &[&rb, "const.axis4"],
            &format!("{out}.rb5"),
            vec![],
        );
        let joined = g.op(
            "Concat",
            &[&ra, &rb],
            &format!("{out}.joined"),
            vec![attr_int("axis", 4)],
        );
        g.op("Reshape", &[&joined, &heads_shape], out, vec![])
    }

    fn decoder(&mut self, s: &Spec) -> Result<(), BuildError> {
        let (h, f, hd) = (s.hidden, s.ffn, s.head_dim);
        let (heads, kv) = (s.heads, s.kv_heads);
        let group = heads / kv;
        let layers = s.layers.len();
        let g = &mut self.g;
        g.input("input_ids", data_type::INT64, &[BATCH, SEQ]);
        g.input("attention_mask", data_type::INT64, &[BATCH, TOTAL]);
        g.input("position_ids", data_type::INT64, &[BATCH, SEQ]);
        let cache_dims = [BATCH, Dim::Fixed(kv), PAST, Dim::Fixed(hd)];
        let present_dims = [BATCH, Dim::Fixed(kv), TOTAL, Dim::Fixed(hd)];
        for i in 0..layers {
            for part in ["key", "value"] {
                g.input(
                    &format!("past_key_values.{i}.{part}"),
                    data_type::FLOAT16,
                    &cache_dims,
                );
            }
        }
        g.output(
            "logits",
            data_type::FLOAT,
            &[BATCH, SEQ, Dim::Fixed(s.vocab)],
        );
        for i in 0..layers {
            for part in ["key", "value"] {
                g.output(
                    &format!("present.{i}.{part}"),
                    data_type::FLOAT16,
                    &present_dims,
                );
            }
        }
        g.i64("const.zero_i64", &[], &[0]);
        g.i64("const.one_i64", &[], &[1]);
        g.i64("const.two_i64", &[], &[2]);
        for (name, axes) in [
            ("const.axis0", &[0i64][..]),
            ("const.axis1", &[1]),
            ("const.axis2", &[2]),
            ("const.axis4", &[4]),
            ("const.axes123", &[1, 2, 3]),
        ] {
            g.i64(name, &[axes.len()], axes);
        }
        let eps = g.scalar("const.eps", s.eps);
        g.scalar("const.one", 1.0);
        g.scalar("const.attention_scale", s.attention_scale);
        g.scalar("const.masked", f32::MIN);
        if self.coding == Coding::LlamaCpp {
            q8_act::constants(g);
        }

        // The engine's angles: position p (as f32) times each pair's frequency.
        let freqs = rope_freqs(s.layers[0].rope_base, s.rope_dims, None);
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in 0..s.context {
            for &freq in &freqs {
                let (sn, cs) = (p as f32 * freq).sin_cos();
                cos.push(cs);
                sin.push(sn);
            }
        }
        g.f32("rope.cos_table", &[s.context, hd / 2], &cos);
        g.f32("rope.sin_table", &[s.context, hd / 2], &sin);
        for part in ["cos", "sin"] {
            let rows = g.op(
                "Gather",
                &[&format!("rope.{part}_table"), "position_ids"],
                &format!("rope.{part}_rows"),
                vec![attr_int("axis", 0)],
            );
            g.op(
                "Unsqueeze",
                &[&rows, "const.axis2"],
                &format!("rope.{part}"),
                vec![],
            );
        }

        // Which keys each query sees: causal over past + new positions, and
        // only where attention_mask is 1. Shaped [batch, 1, 1, seq, total]
        // against scores [batch, kv_heads, group, seq, total].
        g.op("Shape", &["input_ids"], "mask.ids_shape", vec![]);
        g.op(
            "Gather",
            &["mask.ids_shape", "const.one_i64"],
            "mask.seq",
            vec![attr_int("axis", 0)],
        );
        g.op("Shape", &["attention_mask"], "mask.mask_shape", vec![]);
        g.op(
            "Gather",
            &["mask.mask_shape", "const.one_i64"],
            "mask.total",
            vec![attr_int("axis", 0)],
        );
        g.op(
            "Shape",
            &["past_key_values.0.key"],
            "mask.past_shape",
            vec![],
        );
        g.op(
            "Gather",
            &["mask.past_shape", "const.two_i64"],
            "mask.past",
            vec![attr_int("axis", 0)],
        );
        g.op(
            "Range",
            &["const.zero_i64", "mask.seq", "const.one_i64"],
            "mask.new",
            vec![],
        );
        g.op("Add", &["mask.new", "mask.past"], "mask.query_pos", vec![]);
        g.op(
            "Unsqueeze",
            &["mask.query_pos", "const.axis1"],
            "mask.rows",
            vec![],
        );
        g.op(
            "Range",
            &["const.zero_i64", "mask.total", "const.one_i64"],
            "mask.key_pos",
            vec![],
        );
        g.op(
            "Unsqueeze",
            &["mask.key_pos", "const.axis0"],
            "mask.cols",
            vec![],
        );
        g.op(
            "LessOrEqual",
            &["mask.cols", "mask.rows"],
            "mask.causal",
            vec![],
        );
        g.op(
            "Cast",
            &["attention_mask"],
            "mask.keep",
            vec![attr_int("to", data_type::BOOL as i64)],
        );
        g.op(
            "Unsqueeze",
            &["mask.keep", "const.axes123"],
            "mask.keep5",
            vec![],
        );
        g.op(
            "And",
            &["mask.causal", "mask.keep5"],
            "mask.allowed",
            vec![],
        );

        // The Gather reads float rows decoded from the GGUF's exact values.
        let embed = self.dense("token_embd.weight", &[s.vocab, h])?;
        if self.stored("token_embd.weight", &[s.vocab, h])?.ty != GgmlType::Q4_0 {
            self.float_weights.push("token_embd.weight".into());
        }
        let table = self.g.f32("token_embd.weight", &[s.vocab, h], &embed);
        drop(embed);
        let mut x = self.g.op(
            "Gather",
            &[&table, "input_ids"],
            "embed",
            vec![attr_int("axis", 0)],
        );

        let q5_shape = self.i64s("shape.q5", &[0, 0, kv as i64, group as i64, hd as i64]);
        let kv_shape = self.i64s("shape.kv", &[0, 0, kv as i64, hd as i64]);
        let ctx_shape = self.i64s("shape.ctx", &[0, 0, (heads * hd) as i64]);
        let (q_w, kv_w) = (s.q_width(), s.kv_width());
        for i in 0..layers {
            let p = |part: &str| format!("blk.{i}.{part}.weight");
            let l = |name: &str| format!("l{i}.{name}");
            let n = self.rms_norm(&x, &p("attn_norm"), h, &eps, &l("attn_in"))?;
            let q = self.linear(&n, &p("attn_q"), q_w, h, &l("q"))?;
            let k = self.linear(&n, &p("attn_k"), kv_w, h, &l("k"))?;
            let v = self.linear(&n, &p("attn_v"), kv_w, h, &l("v"))?;
            let q = self.rope(&q, heads, hd, &l("q_rot"));
            let k = self.rope(&k, kv, hd, &l("k_rot"));
            let q = self.round_f16(&q, &l("q_f16"));
            let g = &mut self.g;
            let q = g.op("Reshape", &[&q, &q5_shape], &l("q5"), vec![]);
            let q = g.op(
                "Transpose",
                &[&q],
                &l("q_heads"),
                vec![attr_ints("perm", &[0, 2, 3, 1, 4])],
            );
            let k = g.op(
                "Transpose",
                &[&k],
                &l("k_heads"),
                vec![attr_ints("perm", &[0, 2, 1, 3])],
            );
            let v = g.op("Reshape", &[&v, &kv_shape], &l("v4"), vec![]);
            let v = g.op(
                "Transpose",
                &[&v],
                &l("v_heads"),
                vec![attr_ints("perm", &[0, 2, 1, 3])],
            );
            let to_half = vec![attr_int("to", data_type::FLOAT16 as i64)];
            let to_float = || vec![attr_int("to", data_type::FLOAT as i64)];
            let k16 = g.op("Cast", &[&k], &l("k16"), to_half.clone());
            let v16 = g.op("Cast", &[&v], &l("v16"), to_half);
            let concat = vec![attr_int("axis", 2)];
            let past_k = format!("past_key_values.{i}.key");
            let past_v = format!("past_key_values.{i}.value");
            let keys = g.op(
                "Concat",
                &[&past_k, &k16],
                &format!("present.{i}.key"),
                concat.clone(),
            );
            let values = g.op(
                "Concat",
                &[&past_v, &v16],
                &format!("present.{i}.value"),
                concat,
            );
            let keys = g.op("Cast", &[&keys], &l("keys"), to_float());
            let values = g.op("Cast", &[&values], &l("values"), to_float());
            let keys = g.op("Unsqueeze", &[&keys, "const.axis2"], &l("keys5"), vec![]);
            let keys = g.op(
                "Transpose",
                &[&keys],
                &l("keys_t"),
                vec![attr_ints("perm", &[0, 1, 2, 4, 3])],
            );
            let values = g.op(
                "Unsqueeze",
                &[&values, "const.axis2"],
                &l("values5"),
                vec![],
            );
            let dots = g.op("MatMul", &[&q, &keys], &l("dots"), vec![]);
            let scores = g.op(
                "Mul",
                &[&dots, "const.attention_scale"],
                &l("scores"),
                vec![],
            );
            let scores = g.op(
                "Where",
                &["mask.allowed", &scores, "const.masked"],
                &l("masked"),
                vec![],
            );
            let probs = g.op(
                "Softmax",
                &[&scores],
                &l("probs"),
                vec![attr_int("axis", -1)],
            );
            let probs = self.round_f16(&probs, &l("probs_f16"));
            let g = &mut self.g;
            let ctx = g.op("MatMul", &[&probs, &values], &l("ctx5"), vec![]);
            let ctx = g.op(
                "Transpose",
                &[&ctx],
                &l("ctx_t"),
                vec![attr_ints("perm", &[0, 3, 1, 2, 4])],
            );
            let ctx = g.op("Reshape", &[&ctx, &ctx_shape], &l("ctx"), vec![]);
            let o = self.linear(&ctx, &p("attn_output"), h, q_w, &l("attn_out"))?;
            x = self.g.op("Add", &[&x, &o], &l("attn_res"), vec![]);

            let n = self.rms_norm(&x, &p("ffn_norm"), h, &eps, &l("ffn_in"))?;
            let gate = self.linear(&n, &p("ffn_gate"), f, h, &l("gate"))?;
            let up = self.linear(&n, &p("ffn_up"), f, h, &l("up"))?;
            let g = &mut self.g;
            let neg = g.op("Neg", &[&gate], &l("gate_neg"), vec![]);
            let exp = g.op("Exp", &[&neg], &l("gate_exp"), vec![]);
            let den = g.op("Add", &[&exp, "const.one"], &l("gate_den"), vec![]);
            let silu = g.op("Div", &[&gate, &den], &l("silu"), vec![]);
            let act = g.op("Mul", &[&silu, &up], &l("act"), vec![]);
            let down = self.linear(&act, &p("ffn_down"), h, f, &l("down"))?;
            x = self.g.op("Add", &[&x, &down], &l("ffn_res"), vec![]);
        }
        let n = self.rms_norm(
            &x,
            &format!("{}.weight", s.final_norm),
            h,
            &eps,
            "final_norm",
        )?;
        if self.t.contains_key("output.weight") {
            self.linear(&n, "output.weight", s.vocab, h, "logits")?;
            return Ok(());
        }
        // Tied head: the embedding table itself, as Gemm(x, table, transB).
        let flat_shape = self.i64s("shape.flat", &[-1, h as i64]);
        let vocab = self.i64s("shape.vocab", &[s.vocab as i64]);
        let ty = self.stored("token_embd.weight", &[s.vocab, h])?.ty;
        let n = self.activation(&n, h, "token_embd.weight", ty)?;
        let g = &mut self.g;
        let flat = g.op("Reshape", &[&n, &flat_shape], "head.flat", vec![]);
        let rows = g.op(
            "Gemm",
            &[&flat, &table],
            "head.rows",
            vec![attr_int("transB", 1)],
        );
        let shape = g.op(
            "Concat",
            &["mask.ids_shape", &vocab],
            "head.shape",
            vec![attr_int("axis", 0)],
        );
        g.op("Reshape", &[&rows, &shape], "logits", vec![]);
        Ok(())
    }
}
