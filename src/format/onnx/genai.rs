//! A decoder as the folder onnxruntime-genai loads: `model.onnx` (the
//! `llama` graph over the same Q4_0 blocks our GGUF writer produces),
//! `genai_config.json`, and the Hugging Face tokenizer files genai reads
//! (`tokenizer.json`, `tokenizer_config.json`).
//!
//! The weights come from the quantize planner's Q4_0 plan for a GGUF, each
//! tensor encoded by the GGUF writer's own path (`apply::encode_for_gguf`),
//! so `run generate` on `quantize --scheme q4_0 -o x.gguf` and genai on this
//! folder compute with identical weights.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{json, Value};

use super::llama::{self, StoredTensor, Tensors};
use super::OPSET;
use crate::engine::decoder::Spec;
use crate::engine::{families, TextTokenizer};
use crate::format::gguf::{GgmlType, GgufFile, MetaValue};
use crate::model::Model;
use crate::quant::apply;
use crate::quant::plan::{self, Constraints, Preset};
use crate::quant::Scheme;

/// The families the decoder export builds.
pub const FAMILIES: &str = "llama";

#[derive(Debug, thiserror::Error)]
pub enum GenaiError {
    #[error("{}: architecture `{arch}` cannot be exported as an onnxruntime-genai decoder: the decoder export builds {FAMILIES} only", path.display())]
    Architecture { path: PathBuf, arch: String },
    #[error("{}: {message}", path.display())]
    Input { path: PathBuf, message: String },
}

/// How the folder's graph codes its 4-bit weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenaiScheme {
    /// The GGUF Q4_0 plan's blocks as they are, computing what the engine
    /// and llama.cpp compute (`quantize --scheme q4_0`).
    Q4_0,
    /// Symmetric int4 with blocks of 32, 64 or 128 from the source's float
    /// values, float activations: what NPU runtimes compile (target
    /// profiles' `int4_g{32,64,128}_sym`).
    Int4Sym { block: usize },
}

impl GenaiScheme {
    /// Its name: `q4_0`, or the target-profile scheme `int4_g128_sym`.
    pub fn name(self) -> String {
        match self {
            Self::Q4_0 => "q4_0".into(),
            Self::Int4Sym { block } => format!("int4_g{block}_sym"),
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if lower == "q4_0" {
            return Some(Self::Q4_0);
        }
        let block = lower.strip_prefix("int4_g")?.strip_suffix("_sym")?;
        match block {
            "32" | "64" | "128" => Some(Self::Int4Sym {
                block: block.parse().expect("matched digits"),
            }),
            _ => None,
        }
    }

    fn coding(self) -> llama::Coding {
        match self {
            Self::Q4_0 => llama::Coding::LlamaCpp,
            Self::Int4Sym { block } => llama::Coding::Int4Sym { block },
        }
    }

    fn weights_note(self) -> String {
        match self {
            Self::Q4_0 => {
                "GGUF Q4_0 blocks as MatMulNBits (bits 4, block 32, zero point 8)".into()
            }
            Self::Int4Sym { block } => format!(
                "symmetric int4 from the source's values as MatMulNBits (bits 4, block {block}, zero point 8)"
            ),
        }
    }

    fn activations_note(self) -> &'static str {
        match self {
            Self::Q4_0 => "Q8_0 grid before each block-quantized matmul (llama.cpp's arithmetic)",
            Self::Int4Sym { .. } => "float32",
        }
    }
}

/// The schemes [`GenaiScheme::parse`] takes, for messages.
pub const SCHEMES: &str = "q4_0, int4_g32_sym, int4_g64_sym, int4_g128_sym";

/// The folder's files, named, in the order they are written.
pub struct GenaiFolder {
    pub files: Vec<(String, Vec<u8>)>,
    /// Weights carried as float32 (not 4-bit in the plan).
    pub float_weights: Vec<String>,
    /// Weights as MatMulNBits blocks.
    pub int4_weights: usize,
}

/// The decoder spec, or the error naming what the model is.
pub fn llama_spec(model: &Model) -> Result<Spec, GenaiError> {
    let arch = || GenaiError::Architecture {
        path: model.path.clone(),
        arch: model.architecture.name().to_string(),
    };
    let spec = families::spec(&model.architecture)
        .ok_or_else(arch)?
        .map_err(|message| GenaiError::Input {
            path: model.path.clone(),
            message,
        })?;
    if spec.family != "llama" {
        return Err(arch());
    }
    Ok(spec)
}

/// Builds every file of the folder; `model_file` is the graph's file name.
pub fn export(
    model: &Model,
    model_file: &str,
    scheme: GenaiScheme,
) -> Result<GenaiFolder, GenaiError> {
    let input = |message: String| GenaiError::Input {
        path: model.path.clone(),
        message,
    };
    let spec = llama_spec(model)?;
    let (tensors, int4) = plan_tensors(model, scheme).map_err(input)?;
    let int4_weights = int4.len();
    let specials = Specials::of(model).map_err(input)?;
    let metadata = BTreeMap::from([
        ("edgeforge.scheme".to_string(), scheme.name()),
        ("edgeforge.opset".to_string(), OPSET.to_string()),
        ("edgeforge.family".to_string(), spec.family.to_string()),
        (
            "edgeforge.runtime".to_string(),
            "onnxruntime-genai".to_string(),
        ),
        ("edgeforge.weights".to_string(), scheme.weights_note()),
        ("edgeforge.kv_cache".to_string(), "float16".to_string()),
        (
            "edgeforge.activations".to_string(),
            scheme.activations_note().to_string(),
        ),
    ]);
    let graph = llama::build(&spec, &tensors, &metadata, scheme.coding(), &int4)
        .map_err(|e| input(e.to_string()))?;
    let tied = !tensors.contains_key("output.weight");
    drop(tensors);
    let onnx = super::encode(&graph.model);
    drop(graph.model);
    let (tokenizer, tokenizer_config) = tokenizer_files(model, &specials, spec.context)?;
    let json = |v: &Value| {
        let mut bytes = serde_json::to_vec_pretty(v).expect("JSON values serialise");
        bytes.push(b'\n');
        bytes
    };
    let genai = json(&genai_config(&spec, &specials, model_file));
    let hf = json(&hf_config(&spec, &specials, tied));
    Ok(GenaiFolder {
        files: vec![
            ("config.json".into(), hf),
            ("genai_config.json".into(), genai),
            ("tokenizer.json".into(), tokenizer),
            ("tokenizer_config.json".into(), tokenizer_config),
            (model_file.to_string(), onnx),
        ],
        float_weights: graph.float_weights,
        int4_weights,
    })
}

/// Every weight by llama.cpp name, and the names to store as int4: the GGUF
/// Q4_0 plan decides which weights are 4-bit (the tied embedding and norms
/// stay in other types). For [`GenaiScheme::Q4_0`] each tensor is encoded
/// by the GGUF writer's own path; for int4 at other blocks every tensor is
/// the source's float values, quantized by the graph builder.
fn plan_tensors(model: &Model, scheme: GenaiScheme) -> Result<(Tensors, BTreeSet<String>), String> {
    let constraints = Constraints::for_model(model, None, true);
    let plan = plan::plan(&model.tensors, Preset::Uniform(Scheme::Q4_0), &constraints)?;
    let mut tensors = Tensors::new();
    let mut int4 = BTreeSet::new();
    for p in &plan.tensors {
        let Some((name, ty, bytes)) = apply::encode_for_gguf(model, p)? else {
            continue;
        };
        let dims: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
        if ty == GgmlType::Q4_0 {
            int4.insert(name.clone());
        }
        let stored = match scheme {
            GenaiScheme::Q4_0 => StoredTensor { ty, dims, bytes },
            GenaiScheme::Int4Sym { .. } => {
                let source = model
                    .tensor(&p.name)
                    .ok_or_else(|| format!("tensor `{}` is not in the model", p.name))?;
                let values = apply::tensor_f32(model, source)?;
                StoredTensor {
                    ty: GgmlType::F32,
                    dims,
                    bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                }
            }
        };
        tensors.insert(name, stored);
    }
    Ok((tensors, int4))
}

/// Special token ids genai and the tokenizer files name.
struct Specials {
    bos: Option<u32>,
    eos: u32,
    pad: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
}

impl Specials {
    fn of(model: &Model) -> Result<Self, String> {
        if let Some(g) = model.gguf() {
            let id = |key: &str| g.get_u64(key).map(|v| v as u32);
            return Ok(Self {
                bos: id("tokenizer.ggml.bos_token_id"),
                eos: id("tokenizer.ggml.eos_token_id")
                    .ok_or("the GGUF names no `tokenizer.ggml.eos_token_id`")?,
                pad: id("tokenizer.ggml.padding_token_id"),
                unk: id("tokenizer.ggml.unknown_token_id"),
                add_bos: matches!(
                    g.get("tokenizer.ggml.add_bos_token"),
                    Some(MetaValue::Bool(true))
                ),
            });
        }
        // A Hugging Face folder: config.json beside the weights names them.
        let dir = model.path.parent().unwrap_or(&model.path);
        let dir = if model.path.is_dir() {
            &model.path
        } else {
            dir
        };
        let path = dir.join("config.json");
        let text = fs_err::read_to_string(&path).map_err(|e| e.to_string())?;
        let config: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        let id = |key: &str| match &config[key] {
            Value::Number(n) => n.as_u64().map(|v| v as u32),
            Value::Array(a) => a.first().and_then(Value::as_u64).map(|v| v as u32),
            _ => None,
        };
        Ok(Self {
            bos: id("bos_token_id"),
            eos: id("eos_token_id")
                .ok_or_else(|| format!("{}: no `eos_token_id`", path.display()))?,
            pad: id("pad_token_id"),
            unk: None,
            add_bos: false,
        })
    }
}

fn genai_config(s: &Spec, sp: &Specials, model_file: &str) -> Value {
    json!({
        "model": {
            "bos_token_id": sp.bos,
            "context_length": s.context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": model_file,
                "head_size": s.head_dim,
                "hidden_size": s.hidden,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": s.heads,
                "num_hidden_layers": s.layers.len(),
                "num_key_value_heads": s.kv_heads,
            },
            "eos_token_id": sp.eos,
            "pad_token_id": sp.pad.unwrap_or(sp.eos),
            "type": "llama",
            "vocab_size": s.vocab,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": false,
            "early_stopping": true,
            "length_penalty": 1.0,
            "max_length": s.context,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            // Our present is past + new positions (Concat), not a buffer
            // genai preallocates and the graph writes into.
            "past_present_share_buffer": false,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    })
}

/// A Hugging Face `config.json` for the graph's decoder: genai does not
/// read it, but edgeforge (package, verify, run) and HF loaders learn the
/// architecture from it, as they do beside an encoder's graph.
fn hf_config(s: &Spec, sp: &Specials, tied: bool) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": sp.bos,
        "eos_token_id": sp.eos,
        "head_dim": s.head_dim,
        "hidden_act": "silu",
        "hidden_size": s.hidden,
        "intermediate_size": s.ffn,
        "max_position_embeddings": s.context,
        "model_type": "llama",
        "num_attention_heads": s.heads,
        "num_hidden_layers": s.layers.len(),
        "num_key_value_heads": s.kv_heads,
        "rms_norm_eps": s.eps,
        "rope_theta": s.layers[0].rope_base,
        "tie_word_embeddings": tied,
        "vocab_size": s.vocab,
    })
}

/// `tokenizer.json` and `tokenizer_config.json`: copied from a Hugging Face
/// folder, or written from the vocabulary a GGUF file carries.
fn tokenizer_files(
    model: &Model,
    sp: &Specials,
    context: usize,
) -> Result<(Vec<u8>, Vec<u8>), GenaiError> {
    let input = |path: PathBuf, message: String| GenaiError::Input { path, message };
    if let Some(json) = &model.tokenizer {
        let config = json.with_file_name("tokenizer_config.json");
        let read = |p: &PathBuf| fs_err::read(p).map_err(|e| input(p.clone(), e.to_string()));
        if !config.exists() {
            return Err(input(
                config,
                "missing: onnxruntime-genai needs tokenizer_config.json beside tokenizer.json"
                    .into(),
            ));
        }
        return Ok((read(json)?, read(&config)?));
    }
    let Some(g) = model.gguf() else {
        return Err(input(
            model.path.clone(),
            "no tokenizer.json beside the weights (onnxruntime-genai needs one)".into(),
        ));
    };
    let tok = TextTokenizer::from_gguf(g).map_err(|e| input(model.path.clone(), e.to_string()))?;
    let json = tok
        .hf_json()
        .ok_or_else(|| {
            input(
                model.path.clone(),
                format!(
                    "tokenizer model `{}` has no tokenizer.json form here (the decoder export writes byte-level BPE vocabularies, `gpt2`)",
                    g.get_str("tokenizer.ggml.model").unwrap_or("?")
                ),
            )
        })?
        .map_err(|e| input(model.path.clone(), e.to_string()))?;
    let config = gguf_tokenizer_config(g, sp, context)
        .map_err(|message| input(model.path.clone(), message))?;
    let mut config = serde_json::to_vec_pretty(&config).expect("JSON values serialise");
    config.push(b'\n');
    Ok((json.into_bytes(), config))
}

/// The `tokenizer_config.json` of a GGUF byte-level BPE vocabulary: its
/// special tokens by text, control tokens (type 3) as added special tokens.
fn gguf_tokenizer_config(g: &GgufFile, sp: &Specials, context: usize) -> Result<Value, String> {
    let Some(MetaValue::Array(tokens)) = g.get("tokenizer.ggml.tokens") else {
        return Err("`tokenizer.ggml.tokens` is missing".into());
    };
    let text = |id: Option<u32>| -> Result<Value, String> {
        let Some(id) = id else {
            return Ok(Value::Null);
        };
        tokens
            .values
            .get(id as usize)
            .and_then(MetaValue::as_str)
            .map(|s| Value::String(s.to_string()))
            .ok_or_else(|| format!("special token id {id} is not in the vocabulary"))
    };
    let mut added = serde_json::Map::new();
    if let Some(MetaValue::Array(types)) = g.get("tokenizer.ggml.token_type") {
        for (id, (t, ty)) in tokens.values.iter().zip(&types.values).enumerate() {
            if ty.as_u64() == Some(3) {
                added.insert(
                    id.to_string(),
                    json!({
                        "content": t.as_str().unwrap_or_default(),
                        "lstrip": false,
                        "normalized": false,
                        "rstrip": false,
                        "single_word": false,
                        "special": true,
                    }),
                );
            }
        }
    }
    Ok(json!({
        "add_bos_token": sp.add_bos,
        "add_eos_token": false,
        "added_tokens_decoder": added,
        "bos_token": text(sp.bos)?,
        "clean_up_tokenization_spaces": false,
        "eos_token": text(Some(sp.eos))?,
        "model_max_length": context,
        "pad_token": text(sp.pad)?,
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": text(sp.unk)?,
    }))
}
