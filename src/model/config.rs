//! Typed model hyperparameters for the architecture families we run:
//! BERT-style encoders, LLaMA-style and Gemma-3 decoders, read from a
//! Hugging Face `config.json` or from GGUF metadata (`<arch>.*` keys).

use serde::{Deserialize, Serialize};

pub use super::gemma3::Gemma3Config;
pub use super::llama_like::{LlamaLike, LlamaLikeConfig};

/// A BERT-style encoder (post-LayerNorm blocks, GELU, learned positions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

/// A LLaMA-style decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    pub max_position_embeddings: usize,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub head_dim: Option<usize>,
}

impl LlamaConfig {
    /// Key/value heads (equal to attention heads without GQA).
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}

fn default_type_vocab() -> usize {
    2
}
fn default_ln_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}

/// What a model is, as far as edgeforge can tell.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum Architecture {
    Bert(BertConfig),
    Llama(LlamaConfig),
    Gemma3(Gemma3Config),
    /// Qwen2, Qwen3, Phi-3, Granite: LLaMA's sizes plus the family's switches.
    #[serde(rename = "llama-like")]
    LlamaLike(LlamaLikeConfig),
    /// A model we can inspect and quantize but not run: its declared type.
    Other {
        name: String,
    },
}

impl Architecture {
    /// Short family name: `bert`, `llama`, or the declared type.
    pub fn name(&self) -> &str {
        match self {
            Architecture::Bert(_) => "bert",
            Architecture::Llama(_) => "llama",
            Architecture::Gemma3(_) => "gemma3",
            Architecture::LlamaLike(c) => c.kind.name(),
            Architecture::Other { name } => name,
        }
    }

    /// Whether this is a family the engine decodes with (generates text).
    pub fn is_decoder(&self) -> bool {
        matches!(
            self,
            Architecture::Llama(_) | Architecture::Gemma3(_) | Architecture::LlamaLike(_)
        )
    }

    /// The LLaMA sizes of LLaMA and the families derived from it.
    pub fn llama_sizes(&self) -> Option<&LlamaConfig> {
        match self {
            Architecture::Llama(c) => Some(c),
            Architecture::LlamaLike(c) => Some(&c.base),
            _ => None,
        }
    }

    /// Number of transformer blocks, when known.
    pub fn layers(&self) -> Option<usize> {
        match self {
            Architecture::Bert(c) => Some(c.num_hidden_layers),
            Architecture::Llama(c) => Some(c.num_hidden_layers),
            Architecture::Gemma3(c) => Some(c.num_hidden_layers),
            Architecture::LlamaLike(c) => Some(c.base.num_hidden_layers),
            Architecture::Other { .. } => None,
        }
    }

    /// Query heads per key/value head (llama.cpp's `n_gqa`): 1 without
    /// grouped-query attention and for families whose heads we do not read.
    pub fn gqa(&self) -> usize {
        let (heads, kv) = match self {
            Architecture::Llama(c) => (c.num_attention_heads, c.kv_heads()),
            Architecture::LlamaLike(c) => (c.base.num_attention_heads, c.base.kv_heads()),
            Architecture::Gemma3(c) => (c.num_attention_heads, c.num_key_value_heads),
            Architecture::Bert(_) | Architecture::Other { .. } => return 1,
        };
        (heads / kv.max(1)).max(1)
    }

    /// Model width (d_model), when known.
    pub fn hidden_size(&self) -> Option<usize> {
        match self {
            Architecture::Bert(c) => Some(c.hidden_size),
            Architecture::Llama(c) => Some(c.hidden_size),
            Architecture::Gemma3(c) => Some(c.hidden_size),
            Architecture::LlamaLike(c) => Some(c.base.hidden_size),
            Architecture::Other { .. } => None,
        }
    }

    /// A one-line description for humans.
    pub fn summary(&self) -> String {
        match self {
            Architecture::Bert(c) => format!(
                "bert encoder: {} layers, hidden {}, {} heads, ffn {}, vocab {}, max positions {}",
                c.num_hidden_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.intermediate_size,
                c.vocab_size,
                c.max_position_embeddings
            ),
            Architecture::Llama(c) => format!(
                "llama decoder: {} blocks, d_model {}, {} heads / {} kv heads, ffn {}, vocab {}, context {}",
                c.num_hidden_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.kv_heads(),
                c.intermediate_size,
                c.vocab_size,
                c.max_position_embeddings
            ),
            Architecture::Gemma3(c) => format!(
                "gemma3 decoder: {} blocks ({} sliding-window {}), d_model {}, {} heads / {} kv heads, head dim {}, ffn {}, vocab {}, context {}",
                c.num_hidden_layers,
                (0..c.num_hidden_layers).filter(|&i| c.is_sliding(i)).count(),
                c.sliding_window,
                c.hidden_size,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.head_dim,
                c.intermediate_size,
                c.vocab_size,
                c.max_position_embeddings
            ),
            Architecture::LlamaLike(c) => format!(
                "{} decoder: {} blocks, d_model {}, {} heads / {} kv heads, head dim {}, ffn {}, vocab {}, context {}",
                c.kind.name(),
                c.base.num_hidden_layers,
                c.base.hidden_size,
                c.base.num_attention_heads,
                c.base.kv_heads(),
                c.base.head_dim(),
                c.base.intermediate_size,
                c.base.vocab_size,
                c.base.max_position_embeddings
            ),
            Architecture::Other { name } => format!("{name} (not a family edgeforge runs)"),
        }
    }
}

/// Bounds on hyperparameters read from files: far above every real model
/// (Gemma's 262,144-token vocabulary, 128k contexts), far below what would
/// make a shape product overflow or an allocation abort.
mod bounds {
    pub const VOCAB: usize = 1 << 22;
    pub const WIDTH: usize = 1 << 16;
    pub const LAYERS: usize = 1 << 10;
    pub const POSITIONS: usize = 1 << 22;
}

fn bounded(key: &str, value: usize, max: usize) -> Result<(), String> {
    if (1..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{key} = {value}: must be between 1 and {max}"))
    }
}

fn divides(what: &str, a: usize, b_key: &str, b: usize) -> Result<(), String> {
    if b.is_multiple_of(a) {
        Ok(())
    } else {
        Err(format!("{what} = {a} does not divide {b_key} = {b}"))
    }
}

/// The sizes every transformer family shares: vocabulary, width, depth,
/// heads, FFN width and positions.
struct Sizes {
    vocab: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
    ffn: usize,
    positions: usize,
}

impl Sizes {
    fn check(&self) -> Result<(), String> {
        bounded("vocab_size", self.vocab, bounds::VOCAB)?;
        bounded("hidden_size", self.hidden, bounds::WIDTH)?;
        bounded("num_hidden_layers", self.layers, bounds::LAYERS)?;
        bounded("num_attention_heads", self.heads, self.hidden)?;
        bounded("intermediate_size", self.ffn, bounds::WIDTH * 8)?;
        bounded("max_position_embeddings", self.positions, bounds::POSITIONS)
    }
}

fn finite_non_negative(key: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(format!("{key} = {v}: must be finite and not negative"))
    }
}

impl BertConfig {
    /// Every number the encoder sizes buffers or divides by, checked.
    pub fn check(&self) -> Result<(), String> {
        Sizes {
            vocab: self.vocab_size,
            hidden: self.hidden_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            ffn: self.intermediate_size,
            positions: self.max_position_embeddings,
        }
        .check()?;
        divides(
            "num_attention_heads",
            self.num_attention_heads,
            "hidden_size",
            self.hidden_size,
        )?;
        bounded("type_vocab_size", self.type_vocab_size, 1 << 10)?;
        finite_non_negative("layer_norm_eps", self.layer_norm_eps)
    }
}

impl LlamaConfig {
    /// Every number the decoder sizes buffers or divides by, checked.
    pub fn check(&self) -> Result<(), String> {
        Sizes {
            vocab: self.vocab_size,
            hidden: self.hidden_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            ffn: self.intermediate_size,
            positions: self.max_position_embeddings,
        }
        .check()?;
        bounded(
            "num_key_value_heads",
            self.kv_heads(),
            self.num_attention_heads,
        )?;
        divides(
            "num_key_value_heads",
            self.kv_heads(),
            "num_attention_heads",
            self.num_attention_heads,
        )?;
        let head_dim = self.head_dim();
        bounded("head_dim", head_dim, 1 << 12)?;
        if !head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim = {head_dim}: RoPE needs an even head size"
            ));
        }
        if self.head_dim.is_none() {
            divides(
                "num_attention_heads",
                self.num_attention_heads,
                "hidden_size",
                self.hidden_size,
            )?;
        }
        finite_non_negative("rms_norm_eps", self.rms_norm_eps)?;
        finite_non_negative("rope_theta", self.rope_theta)
    }
}

impl Architecture {
    /// The family's hyperparameters checked, for models we run.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Architecture::Bert(c) => c.check(),
            Architecture::Llama(c) => c.check(),
            Architecture::Gemma3(c) => c.check(),
            Architecture::LlamaLike(c) => c.check(),
            Architecture::Other { .. } => Ok(()),
        }
    }
}

/// Reads the architecture from a Hugging Face `config.json` text.
pub fn from_hf_config(text: &str) -> Result<Architecture, String> {
    #[derive(Deserialize)]
    struct Probe {
        model_type: Option<String>,
        #[serde(default)]
        architectures: Vec<String>,
    }
    let probe: Probe = serde_json::from_str(text).map_err(|e| format!("Invalid JSON: {e}"))?;
    let model_type = probe
        .model_type
        .or_else(|| probe.architectures.first().cloned())
        .unwrap_or_else(|| "unknown".into());
    let typed = |e: serde_json::Error| format!("Not a valid {model_type} config: {e}");
    match model_type.as_str() {
        "bert" => Ok(Architecture::Bert(
            serde_json::from_str(text).map_err(typed)?,
        )),
        // Mistral is LLaMA with a sliding window (llama.cpp converts it as llama).
        "llama" | "mistral" => Ok(Architecture::Llama(
            serde_json::from_str(text).map_err(typed)?,
        )),
        "gemma3_text" | "gemma3" => Ok(Architecture::Gemma3(Gemma3Config::from_hf(text)?)),
        // LFM2's HF config (layer types, FFN width adjustment) is not read yet.
        name if LlamaLike::from_name(name).is_some_and(|k| k != LlamaLike::Lfm2) => {
            let kind = LlamaLike::from_name(name).expect("matched above");
            Ok(Architecture::LlamaLike(LlamaLikeConfig::from_hf(
                kind, text,
            )?))
        }
        other => Ok(Architecture::Other {
            name: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_bert_config() {
        let text = r#"{"model_type":"bert","vocab_size":30522,"hidden_size":384,"num_hidden_layers":6,
            "num_attention_heads":12,"intermediate_size":1536,"max_position_embeddings":512,"extra":1}"#;
        let Architecture::Bert(c) = from_hf_config(text).unwrap() else {
            panic!("not bert")
        };
        assert_eq!((c.hidden_size, c.type_vocab_size), (384, 2));
    }

    #[test]
    fn names_the_missing_field() {
        let err = from_hf_config(r#"{"model_type":"llama","vocab_size":10}"#).unwrap_err();
        assert!(err.contains("missing field `hidden_size`"), "{err}");
    }

    #[test]
    fn llama_head_dim_and_kv_heads_default_sensibly() {
        let text = r#"{"model_type":"llama","vocab_size":49152,"hidden_size":576,"intermediate_size":1536,
            "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"max_position_embeddings":8192}"#;
        let Architecture::Llama(c) = from_hf_config(text).unwrap() else {
            panic!("not llama")
        };
        assert_eq!((c.head_dim(), c.kv_heads()), (64, 3));
    }

    #[test]
    fn hyperparameters_that_would_divide_by_zero_or_overflow_are_refused() {
        let text = r#"{"model_type":"llama","vocab_size":49152,"hidden_size":576,"intermediate_size":1536,
            "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"max_position_embeddings":8192}"#;
        let Architecture::Llama(good) = from_hf_config(text).unwrap() else {
            panic!("not llama")
        };
        assert!(good.check().is_ok());
        type Edit = fn(&mut LlamaConfig);
        let cases: [(Edit, &str); 5] = [
            (|c| c.num_attention_heads = 0, "num_attention_heads = 0"),
            (
                |c| c.num_key_value_heads = Some(2),
                "num_key_value_heads = 2 does not divide",
            ),
            (
                |c| c.num_attention_heads = 1 << 31,
                "num_attention_heads = 2147483648",
            ),
            (|c| c.vocab_size = usize::MAX, "vocab_size"),
            (|c| c.rope_theta = f64::INFINITY, "rope_theta = inf"),
        ];
        for (edit, needle) in cases {
            let mut c = good.clone();
            edit(&mut c);
            let e = c.check().unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        let bert = r#"{"model_type":"bert","vocab_size":30522,"hidden_size":384,"num_hidden_layers":6,
            "num_attention_heads":0,"intermediate_size":1536,"max_position_embeddings":512}"#;
        let e = from_hf_config(bert).unwrap().check().unwrap_err();
        assert!(e.contains("num_attention_heads = 0"), "{e}");
    }
}
