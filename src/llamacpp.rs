//! What llama.cpp expects in a GGUF converted from a Hugging Face checkpoint:
//! its tensor names, q/k row order for LLaMA, architecture metadata and
//! tokenizer metadata, as its converter (`convert_hf_to_gguf.py`) writes them.
//! A GGUF input keeps its own names and metadata.

use std::path::Path;

use crate::format::gguf::{MetaArray, MetaValue};
use crate::model::{Architecture, LlamaLike, Model};

/// llama.cpp's `general.file_type` values (`LLAMA_FTYPE_*`) for a plan's main scheme.
pub fn file_type(scheme_name: &str) -> u32 {
    match scheme_name {
        "F32" => 0,
        "F16" => 1,
        "Q4_0" => 2,
        "Q4_1" => 3,
        "Q8_0" => 7,
        "Q5_0" => 8,
        "Q5_1" => 9,
        "Q2_K" => 10,
        "Q3_K_S" => 11,
        "Q3_K_M" | "Q3_K" => 12,
        "Q3_K_L" => 13,
        "Q4_K_S" => 14,
        "Q4_K_M" | "Q4_K" => 15,
        "Q5_K_S" => 16,
        "Q5_K_M" | "Q5_K" => 17,
        "Q6_K" => 18,
        "Q2_K_S" => 21,
        "IQ4_NL" => 25,
        "IQ4_XS" => 30,
        "BF16" => 32,
        _ => 7,
    }
}

/// The mix name of a GGUF's `general.file_type` (`LLAMA_FTYPE_*`).
pub fn file_type_name(file_type: u32) -> Option<&'static str> {
    [
        "F32", "F16", "Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L",
        "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q2_K_S", "IQ4_NL", "IQ4_XS", "BF16",
    ]
    .into_iter()
    .find(|&name| self::file_type(name) == file_type)
}

/// The llama.cpp name of a Hugging Face tensor; `None` for tensors its
/// converter drops (BERT `position_ids` and pooler, LLaMA `rotary_emb`).
pub fn tensor_name(arch: &Architecture, hf: &str) -> Option<String> {
    if hf.starts_with("blk.")
        || matches!(
            hf.split('.').next(),
            Some(
                "token_embd"
                    | "output"
                    | "output_norm"
                    | "position_embd"
                    | "token_types"
                    | "token_embd_norm"
                    | "rope_freqs"
                    | "rope_factors_long"
                    | "rope_factors_short"
            )
        )
    {
        return Some(hf.to_string());
    }
    let (suffix, stem) = match hf.rsplit_once('.') {
        Some((stem, s @ ("weight" | "bias"))) => (s, stem),
        _ => return None,
    };
    let layer = |rest: &str| -> Option<(usize, String)> {
        let (n, tail) = rest.split_once('.')?;
        Some((n.parse().ok()?, tail.to_string()))
    };
    let name = match arch {
        Architecture::Bert(_) => {
            let stem = stem.strip_prefix("bert.").unwrap_or(stem);
            match stem {
                "embeddings.word_embeddings" => "token_embd".to_string(),
                "embeddings.token_type_embeddings" => "token_types".to_string(),
                "embeddings.position_embeddings" => "position_embd".to_string(),
                "embeddings.LayerNorm" => "token_embd_norm".to_string(),
                s => {
                    let (n, tail) = layer(s.strip_prefix("encoder.layer.")?)?;
                    let part = match tail.as_str() {
                        "attention.self.query" => "attn_q",
                        "attention.self.key" => "attn_k",
                        "attention.self.value" => "attn_v",
                        "attention.output.dense" => "attn_output",
                        "attention.output.LayerNorm" => "attn_output_norm",
                        "intermediate.dense" => "ffn_up",
                        "output.dense" => "ffn_down",
                        "output.LayerNorm" => "layer_output_norm",
                        _ => return None,
                    };
                    format!("blk.{n}.{part}")
                }
            }
        }
        Architecture::Llama(_) | Architecture::LlamaLike(_) => match stem {
            "model.embed_tokens" => "token_embd".to_string(),
            "model.norm" => "output_norm".to_string(),
            "lm_head" => "output".to_string(),
            s => {
                let (n, tail) = layer(s.strip_prefix("model.layers.")?)?;
                let part = match tail.as_str() {
                    "input_layernorm" => "attn_norm",
                    "self_attn.q_proj" => "attn_q",
                    "self_attn.k_proj" => "attn_k",
                    "self_attn.v_proj" => "attn_v",
                    "self_attn.o_proj" => "attn_output",
                    "post_attention_layernorm" => "ffn_norm",
                    "mlp.gate_proj" => "ffn_gate",
                    "mlp.up_proj" => "ffn_up",
                    "mlp.down_proj" => "ffn_down",
                    // Qwen3's per-head norms; Phi-3's fused projections.
                    "self_attn.q_norm" => "attn_q_norm",
                    "self_attn.k_norm" => "attn_k_norm",
                    "self_attn.qkv_proj" => "attn_qkv",
                    "mlp.gate_up_proj" => "ffn_up",
                    _ => return None,
                };
                format!("blk.{n}.{part}")
            }
        },
        Architecture::Gemma3(_) => {
            // Text-only checkpoints say `model.`, multimodal ones nest it.
            let stem = stem.strip_prefix("language_model.").unwrap_or(stem);
            match stem {
                "model.embed_tokens" => "token_embd".to_string(),
                "model.norm" => "output_norm".to_string(),
                "lm_head" => "output".to_string(),
                s => {
                    let (n, tail) = layer(s.strip_prefix("model.layers.")?)?;
                    let part = match tail.as_str() {
                        "input_layernorm" => "attn_norm",
                        "self_attn.q_proj" => "attn_q",
                        "self_attn.k_proj" => "attn_k",
                        "self_attn.v_proj" => "attn_v",
                        "self_attn.o_proj" => "attn_output",
                        "self_attn.q_norm" => "attn_q_norm",
                        "self_attn.k_norm" => "attn_k_norm",
                        "post_attention_layernorm" => "post_attention_norm",
                        "pre_feedforward_layernorm" => "ffn_norm",
                        "post_feedforward_layernorm" => "post_ffw_norm",
                        "mlp.gate_proj" => "ffn_gate",
                        "mlp.up_proj" => "ffn_up",
                        "mlp.down_proj" => "ffn_down",
                        _ => return None,
                    };
                    format!("blk.{n}.{part}")
                }
            }
        }
        Architecture::Other { .. } => stem.to_string(),
    };
    Some(format!("{name}.{suffix}"))
}

/// llama.cpp's converter reorders the rows of LLaMA `q_proj`/`k_proj` so
/// that RoPE rotates adjacent pairs: per head, rows `[0..d/2)` and
/// `[d/2..d)` are interleaved. Returns the source row for each output row,
/// or `None` when the tensor is not permuted.
pub fn qk_row_order(arch: &Architecture, hf: &str, rows: usize) -> Option<Vec<usize>> {
    // Granite's converter is LLaMA's; Qwen and Phi-3 keep HF's order (NeoX RoPE).
    let c = match arch {
        Architecture::Llama(c) => c,
        Architecture::LlamaLike(c) if c.kind == LlamaLike::Granite => &c.base,
        _ => return None,
    };
    let heads = if hf.ends_with("self_attn.q_proj.weight") {
        c.num_attention_heads
    } else if hf.ends_with("self_attn.k_proj.weight") {
        c.kv_heads()
    } else {
        return None;
    };
    let head_dim = rows / heads.max(1);
    let half = head_dim / 2;
    // numpy: w.reshape(heads, 2, half, cols).swapaxes(1, 2): out row
    // (h, i, j) comes from in row (h, j, i).
    let mut order = Vec::with_capacity(rows);
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                order.push(h * head_dim + j * half + i);
            }
        }
    }
    Some(order)
}

fn u32v(v: usize) -> MetaValue {
    MetaValue::U32(u32::try_from(v).unwrap_or(u32::MAX))
}

/// The metadata llama.cpp needs for a model converted from Hugging Face
/// files (arch keys, then tokenizer), in its converter's order.
pub fn hf_metadata(
    model: &Model,
    file_type: u32,
    name: &str,
) -> Result<Vec<(String, MetaValue)>, String> {
    let mut kv: Vec<(String, MetaValue)> = Vec::new();
    let mut put = |k: &str, v: MetaValue| kv.push((k.to_string(), v));
    match &model.architecture {
        Architecture::Bert(c) => {
            put("general.architecture", MetaValue::String("bert".into()));
            put("general.name", MetaValue::String(name.into()));
            put("bert.block_count", u32v(c.num_hidden_layers));
            put("bert.context_length", u32v(c.max_position_embeddings));
            put("bert.embedding_length", u32v(c.hidden_size));
            put("bert.feed_forward_length", u32v(c.intermediate_size));
            put("bert.attention.head_count", u32v(c.num_attention_heads));
            put(
                "bert.attention.layer_norm_epsilon",
                MetaValue::F32(c.layer_norm_eps as f32),
            );
            put("general.file_type", MetaValue::U32(file_type));
            put("bert.attention.causal", MetaValue::Bool(false));
            put(
                "bert.pooling_type",
                MetaValue::U32(pooling_type(&model.path)),
            );
            // llama.cpp refuses a BERT model without its token-type count.
            put("tokenizer.ggml.token_type_count", u32v(c.type_vocab_size));
        }
        Architecture::Llama(c) => {
            put("general.architecture", MetaValue::String("llama".into()));
            put("general.name", MetaValue::String(name.into()));
            put("llama.block_count", u32v(c.num_hidden_layers));
            put("llama.context_length", u32v(c.max_position_embeddings));
            put("llama.embedding_length", u32v(c.hidden_size));
            put("llama.feed_forward_length", u32v(c.intermediate_size));
            put("llama.attention.head_count", u32v(c.num_attention_heads));
            put("llama.attention.head_count_kv", u32v(c.kv_heads()));
            put("llama.rope.freq_base", MetaValue::F32(c.rope_theta as f32));
            put(
                "llama.attention.layer_norm_rms_epsilon",
                MetaValue::F32(c.rms_norm_eps as f32),
            );
            put("general.file_type", MetaValue::U32(file_type));
            put("llama.vocab_size", u32v(c.vocab_size));
            put("llama.rope.dimension_count", u32v(c.head_dim()));
        }
        Architecture::LlamaLike(c) => {
            let arch = c.kind.name();
            let b = &c.base;
            let key = |k: &str| format!("{arch}.{k}");
            put("general.architecture", MetaValue::String(arch.into()));
            put("general.name", MetaValue::String(name.into()));
            put(&key("block_count"), u32v(b.num_hidden_layers));
            put(&key("context_length"), u32v(b.max_position_embeddings));
            put(&key("embedding_length"), u32v(b.hidden_size));
            put(&key("feed_forward_length"), u32v(b.intermediate_size));
            put(&key("attention.head_count"), u32v(b.num_attention_heads));
            put(&key("attention.head_count_kv"), u32v(b.kv_heads()));
            put(&key("rope.freq_base"), MetaValue::F32(b.rope_theta as f32));
            put(
                &key("attention.layer_norm_rms_epsilon"),
                MetaValue::F32(b.rms_norm_eps as f32),
            );
            put(&key("attention.key_length"), u32v(b.head_dim()));
            put(&key("attention.value_length"), u32v(b.head_dim()));
            put(&key("rope.dimension_count"), u32v(c.rotary_dim()));
            for (k, v) in [
                ("embedding_scale", c.embedding_multiplier),
                ("residual_scale", c.residual_multiplier),
                ("attention.scale", c.attention_multiplier),
                ("logit_scale", c.logits_scaling),
            ] {
                if let Some(v) = v {
                    put(&key(k), MetaValue::F32(v as f32));
                }
            }
            put("general.file_type", MetaValue::U32(file_type));
        }
        Architecture::Gemma3(_) => {
            // llama.cpp's converter also adds 1 to every Gemma norm weight;
            // writing HF weights under GGUF names without that would run wrong.
            return Err(
                "converting a Hugging Face gemma3 checkpoint to GGUF is not supported yet \
                 (quantize its GGUF instead)"
                    .into(),
            );
        }
        Architecture::Other { name: arch } => {
            put("general.architecture", MetaValue::String(arch.clone()));
            put("general.name", MetaValue::String(name.into()));
            put("general.file_type", MetaValue::U32(file_type));
        }
    }
    put("general.quantization_version", MetaValue::U32(2));
    if let Some(tok) = &model.tokenizer {
        kv.extend(tokenizer_metadata(tok, &model.architecture)?);
    }
    Ok(kv)
}

/// sentence-transformers' `1_Pooling/config.json`: mean -> 1, cls -> 2.
fn pooling_type(model_dir: &Path) -> u32 {
    let dir = if model_dir.is_dir() {
        model_dir
    } else {
        model_dir.parent().unwrap_or(Path::new("."))
    };
    let Ok(text) = std::fs::read_to_string(dir.join("1_Pooling/config.json")) else {
        return 1;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if v["pooling_mode_cls_token"] == true {
        2
    } else {
        1
    }
}

fn strings(values: Vec<String>) -> MetaValue {
    MetaValue::Array(MetaArray {
        elem_type: 8,
        values: values.into_iter().map(MetaValue::String).collect(),
    })
}

/// Token list, types and special ids from `tokenizer.json`.
fn tokenizer_metadata(
    path: &Path,
    arch: &Architecture,
) -> Result<Vec<(String, MetaValue)>, String> {
    let err = |m: String| format!("{}: {m}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("Cannot read: {e}")))?;
    let tok: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("Invalid JSON: {e}")))?;
    let vocab = tok["model"]["vocab"]
        .as_object()
        .ok_or_else(|| err("`model.vocab` is missing".into()))?;
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        let id = id
            .as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < tokens.len());
        let id = id.ok_or_else(|| err(format!("token `{t}` has an id outside the vocabulary")))?;
        tokens[id] = t.clone();
    }
    let added: Vec<(usize, bool)> = tok["added_tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| {
                    Some((
                        t["id"].as_u64()? as usize,
                        t["special"].as_bool().unwrap_or(false),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let types: Vec<MetaValue> = (0..tokens.len())
        .map(|i| {
            let t = match added.iter().find(|(id, _)| *id == i) {
                Some((_, true)) => 3,
                Some((_, false)) => 4,
                None => 1,
            };
            MetaValue::I32(t)
        })
        .collect();
    let id_of = |t: &str| {
        vocab
            .get(t)
            .and_then(serde_json::Value::as_u64)
            .map(|v| MetaValue::U32(v as u32))
    };
    let mut kv: Vec<(String, MetaValue)> = Vec::new();
    match arch {
        Architecture::Bert(_) => {
            let phantom = |t: &String| {
                if t.starts_with('[') && t.ends_with(']') {
                    t.clone()
                } else if let Some(rest) = t.strip_prefix("##") {
                    rest.to_string()
                } else {
                    format!("\u{2581}{t}")
                }
            };
            kv.push((
                "tokenizer.ggml.model".into(),
                MetaValue::String("bert".into()),
            ));
            kv.push((
                "tokenizer.ggml.pre".into(),
                MetaValue::String("default".into()),
            ));
            kv.push((
                "tokenizer.ggml.tokens".into(),
                strings(tokens.iter().map(phantom).collect()),
            ));
            kv.push((
                "tokenizer.ggml.token_type".into(),
                MetaValue::Array(MetaArray {
                    elem_type: 5,
                    values: types,
                }),
            ));
            for (key, tok) in [
                ("unknown", "[UNK]"),
                ("seperator", "[SEP]"),
                ("padding", "[PAD]"),
                ("cls", "[CLS]"),
                ("mask", "[MASK]"),
            ] {
                if let Some(id) = id_of(tok) {
                    kv.push((format!("tokenizer.ggml.{key}_token_id"), id));
                }
            }
        }
        _ => {
            let merges: Vec<String> = tok["model"]["merges"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(|v| {
                            v.as_str().map(str::to_string).or_else(|| {
                                let pair = v.as_array()?;
                                Some(format!(
                                    "{} {}",
                                    pair.first()?.as_str()?,
                                    pair.get(1)?.as_str()?
                                ))
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            kv.push((
                "tokenizer.ggml.model".into(),
                MetaValue::String("gpt2".into()),
            ));
            kv.push((
                "tokenizer.ggml.pre".into(),
                MetaValue::String("default".into()),
            ));
            kv.push(("tokenizer.ggml.tokens".into(), strings(tokens)));
            kv.push((
                "tokenizer.ggml.token_type".into(),
                MetaValue::Array(MetaArray {
                    elem_type: 5,
                    values: types,
                }),
            ));
            kv.push(("tokenizer.ggml.merges".into(), strings(merges)));
        }
    }
    Ok(kv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BertConfig, LlamaConfig};

    fn llama() -> Architecture {
        Architecture::Llama(LlamaConfig {
            vocab_size: 10,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: Some(1),
            max_position_embeddings: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            tie_word_embeddings: true,
            head_dim: None,
        })
    }

    #[test]
    fn maps_hf_names_to_llama_cpp() {
        let bert = Architecture::Bert(BertConfig {
            vocab_size: 10,
            hidden_size: 8,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            intermediate_size: 16,
            max_position_embeddings: 64,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
        });
        assert_eq!(
            tensor_name(&bert, "encoder.layer.3.output.dense.weight").as_deref(),
            Some("blk.3.ffn_down.weight")
        );
        assert_eq!(
            tensor_name(&bert, "encoder.layer.0.attention.output.LayerNorm.bias").as_deref(),
            Some("blk.0.attn_output_norm.bias")
        );
        assert_eq!(
            tensor_name(&bert, "embeddings.LayerNorm.weight").as_deref(),
            Some("token_embd_norm.weight")
        );
        assert_eq!(tensor_name(&bert, "pooler.dense.weight"), None);
        assert_eq!(
            tensor_name(&llama(), "model.layers.2.mlp.gate_proj.weight").as_deref(),
            Some("blk.2.ffn_gate.weight")
        );
        assert_eq!(
            tensor_name(&llama(), "blk.2.ffn_gate.weight").as_deref(),
            Some("blk.2.ffn_gate.weight")
        );
    }

    #[test]
    fn maps_gemma3_hf_names_to_llama_cpp() {
        let text = r#"{"model_type":"gemma3_text","vocab_size":16,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
            "num_key_value_heads":1,"head_dim":4,"max_position_embeddings":64,
            "sliding_window":8,"query_pre_attn_scalar":4}"#;
        let gemma = crate::model::config::from_hf_config(text).unwrap();
        for (hf, gguf) in [
            (
                "model.layers.0.pre_feedforward_layernorm.weight",
                "blk.0.ffn_norm.weight",
            ),
            (
                "model.layers.0.post_feedforward_layernorm.weight",
                "blk.0.post_ffw_norm.weight",
            ),
            (
                "model.layers.0.post_attention_layernorm.weight",
                "blk.0.post_attention_norm.weight",
            ),
            (
                "model.layers.0.self_attn.k_norm.weight",
                "blk.0.attn_k_norm.weight",
            ),
            (
                "language_model.model.embed_tokens.weight",
                "token_embd.weight",
            ),
        ] {
            assert_eq!(tensor_name(&gemma, hf).as_deref(), Some(gguf), "{hf}");
        }
    }

    #[test]
    fn q_rows_interleave_the_two_halves_of_each_head() {
        // 2 heads of dim 4: rows (h0: 0 1 | 2 3), (h1: 4 5 | 6 7).
        let order = qk_row_order(&llama(), "model.layers.0.self_attn.q_proj.weight", 8).unwrap();
        assert_eq!(order, [0, 2, 1, 3, 4, 6, 5, 7]);
        // k uses the kv head count: one head of dim 8.
        let order = qk_row_order(&llama(), "model.layers.0.self_attn.k_proj.weight", 8).unwrap();
        assert_eq!(order, [0, 4, 1, 5, 2, 6, 3, 7]);
        assert!(qk_row_order(&llama(), "model.layers.0.self_attn.v_proj.weight", 8).is_none());
    }
}
