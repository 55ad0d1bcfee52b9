//! Gemma-3 text decoder hyperparameters, from a Hugging Face `config.json`
//! (`gemma3_text`, or `gemma3` with a nested `text_config`) or from GGUF
//! `gemma3.*` metadata. GGUF leaves out what llama.cpp hard-codes for the
//! family (local rope base 10,000, five sliding layers in every six, the
//! query scale); those defaults are llama.cpp's so both routes agree.

use serde::{Deserialize, Serialize};

use crate::format::gguf::GgufFile;

/// A Gemma-3 decoder: RMSNorm before and after attention and MLP, q/k
/// RMSNorm per head, NeoX RoPE with one base for sliding-window layers and
/// another for global ones, GELU-tanh gated MLP, embeddings scaled by
/// sqrt(d), tied output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gemma3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base of the global (full-attention) layers.
    #[serde(default = "default_global_base")]
    pub rope_theta: f64,
    /// RoPE base of the sliding-window layers.
    #[serde(default = "default_local_base")]
    pub rope_local_base_freq: f64,
    /// Positions a sliding-window layer sees, itself included.
    pub sliding_window: usize,
    /// Every `sliding_window_pattern`-th layer is global (used when
    /// `layer_types` is absent, as in older configs and in GGUF).
    #[serde(default = "default_pattern")]
    pub sliding_window_pattern: usize,
    /// Per layer: `sliding_attention` or `full_attention` (newer HF configs).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Attention scores are scaled by `query_pre_attn_scalar^-1/2`.
    pub query_pre_attn_scalar: f64,
    /// Linear RoPE scaling of the global layers (4B and larger).
    #[serde(default, deserialize_with = "linear_rope_factor")]
    pub rope_scaling: Option<f64>,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_global_base() -> f64 {
    1_000_000.0
}
fn default_local_base() -> f64 {
    10_000.0
}
fn default_pattern() -> usize {
    6
}

/// HF `rope_scaling: {"rope_type": "linear", "factor": 8.0}` as its factor.
fn linear_rope_factor<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    struct Scaling {
        #[serde(alias = "type")]
        rope_type: Option<String>,
        factor: f64,
    }
    let Some(s) = Option::<Scaling>::deserialize(d)? else {
        return Ok(None);
    };
    match s.rope_type.as_deref() {
        None | Some("linear") => Ok(Some(s.factor)),
        Some(other) => Err(serde::de::Error::custom(format!(
            "rope_scaling type `{other}` is not supported for gemma3 (supported: linear)"
        ))),
    }
}

impl Gemma3Config {
    /// Whether layer `i` attends through a sliding window (else globally).
    pub fn is_sliding(&self, i: usize) -> bool {
        match &self.layer_types {
            Some(types) => types.get(i).is_some_and(|t| t == "sliding_attention"),
            None => !(i + 1).is_multiple_of(self.sliding_window_pattern.max(1)),
        }
    }

    /// Reads `gemma3.*` GGUF metadata; `None` when a required key is missing.
    pub fn from_gguf(file: &GgufFile, vocab: Option<usize>) -> Option<Self> {
        let int = |key: &str| file.get_u64(&format!("gemma3.{key}")).map(|v| v as usize);
        let float = |key: &str| file.get_f64(&format!("gemma3.{key}"));
        let hidden = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let layers = int("block_count")?;
        let head_dim = int("attention.key_length").unwrap_or(hidden / heads.max(1));
        let linear = file
            .get_str("gemma3.rope.scaling.type")
            .is_none_or(|t| t == "linear");
        Some(Self {
            vocab_size: vocab?,
            hidden_size: hidden,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: int("attention.head_count_kv").unwrap_or(heads),
            head_dim,
            max_position_embeddings: int("context_length")?,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(default_eps()),
            rope_theta: float("rope.freq_base").unwrap_or(default_global_base()),
            rope_local_base_freq: default_local_base(),
            sliding_window: int("attention.sliding_window")?,
            sliding_window_pattern: default_pattern(),
            layer_types: None,
            // As llama.cpp: the 27B (62 blocks) scales by hidden / heads,
            // every other size by the head width.
            query_pre_attn_scalar: if layers == 62 {
                (hidden / heads.max(1)) as f64
            } else {
                head_dim as f64
            },
            rope_scaling: float("rope.scaling.factor").filter(|&f| linear && f != 1.0),
            final_logit_softcapping: float("final_logit_softcapping"),
        })
    }

    /// Reads an HF `config.json`: `gemma3_text`, or `gemma3`'s `text_config`.
    pub fn from_hf(text: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("Invalid JSON: {e}"))?;
        let text_config = match value.get("text_config") {
            Some(inner) if value["model_type"] == "gemma3" => inner.clone(),
            _ => value,
        };
        serde_json::from_value(text_config).map_err(|e| format!("Not a valid gemma3 config: {e}"))
    }

    /// Every number the decoder sizes buffers or divides by, checked.
    pub fn check(&self) -> Result<(), String> {
        bounded("vocab_size", self.vocab_size, 1 << 22)?;
        bounded("hidden_size", self.hidden_size, 1 << 16)?;
        bounded("num_hidden_layers", self.num_hidden_layers, 1 << 10)?;
        bounded("num_attention_heads", self.num_attention_heads, 1 << 10)?;
        bounded(
            "num_key_value_heads",
            self.num_key_value_heads,
            self.num_attention_heads,
        )?;
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_key_value_heads = {} does not divide num_attention_heads = {}",
                self.num_key_value_heads, self.num_attention_heads
            ));
        }
        bounded("intermediate_size", self.intermediate_size, 1 << 19)?;
        bounded(
            "max_position_embeddings",
            self.max_position_embeddings,
            1 << 22,
        )?;
        bounded("head_dim", self.head_dim, 1 << 12)?;
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim = {}: RoPE needs an even head size",
                self.head_dim
            ));
        }
        bounded("sliding_window", self.sliding_window, 1 << 22)?;
        bounded(
            "sliding_window_pattern",
            self.sliding_window_pattern,
            1 << 10,
        )?;
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return Err(format!(
                    "layer_types has {} entries for {} layers",
                    types.len(),
                    self.num_hidden_layers
                ));
            }
            if let Some(t) = types
                .iter()
                .find(|t| !matches!(t.as_str(), "sliding_attention" | "full_attention"))
            {
                return Err(format!(
                    "layer_types: `{t}` is not sliding_attention or full_attention"
                ));
            }
        }
        positive("rms_norm_eps", self.rms_norm_eps, true)?;
        positive("rope_theta", self.rope_theta, false)?;
        positive("rope_local_base_freq", self.rope_local_base_freq, false)?;
        positive("query_pre_attn_scalar", self.query_pre_attn_scalar, false)?;
        if let Some(f) = self.rope_scaling {
            positive("rope_scaling.factor", f, false)?;
        }
        if let Some(c) = self.final_logit_softcapping {
            positive("final_logit_softcapping", c, false)?;
        }
        Ok(())
    }
}

fn bounded(key: &str, value: usize, max: usize) -> Result<(), String> {
    if (1..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{key} = {value}: must be between 1 and {max}"))
    }
}

/// Finite and above zero (or at zero, when `zero_ok`).
fn positive(key: &str, v: f64, zero_ok: bool) -> Result<(), String> {
    if v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) {
        Ok(())
    } else {
        Err(format!("{key} = {v}: must be finite and above zero"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HF_270M: &str = r#"{"model_type":"gemma3_text","vocab_size":262144,"hidden_size":640,
        "intermediate_size":2048,"num_hidden_layers":18,"num_attention_heads":4,"num_key_value_heads":1,
        "head_dim":256,"max_position_embeddings":32768,"rms_norm_eps":1e-06,"rope_theta":1000000.0,
        "rope_local_base_freq":10000.0,"sliding_window":512,"query_pre_attn_scalar":256,
        "rope_scaling":null,"hidden_activation":"gelu_pytorch_tanh"}"#;

    #[test]
    fn reads_the_270m_config_and_its_layer_pattern() {
        let c = Gemma3Config::from_hf(HF_270M).unwrap();
        c.check().unwrap();
        let global: Vec<usize> = (0..18).filter(|&i| !c.is_sliding(i)).collect();
        assert_eq!(global, [5, 11, 17]);
        assert_eq!((c.head_dim, c.sliding_window), (256, 512));
    }

    #[test]
    fn layer_types_override_the_pattern_and_rope_scaling_is_read() {
        let mut v: serde_json::Value = serde_json::from_str(HF_270M).unwrap();
        let mut types = vec!["full_attention"; 18];
        types[0] = "sliding_attention";
        v["layer_types"] = serde_json::json!(types);
        v["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 8.0});
        let outer = serde_json::json!({"model_type": "gemma3", "text_config": v});
        let c = Gemma3Config::from_hf(&outer.to_string()).unwrap();
        assert!(c.is_sliding(0) && !c.is_sliding(1));
        assert_eq!(c.rope_scaling, Some(8.0));
        v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 8.0});
        let err = Gemma3Config::from_hf(&v.to_string()).unwrap_err();
        assert!(err.contains("yarn"), "{err}");
    }

    #[test]
    fn check_names_the_bad_number() {
        let good = Gemma3Config::from_hf(HF_270M).unwrap();
        type Break = fn(&mut Gemma3Config);
        let cases: [(&str, Break); 7] = [
            ("num_key_value_heads = 3 does not divide", |c| {
                c.num_key_value_heads = 3
            }),
            ("head_dim = 255", |c| c.head_dim = 255),
            ("sliding_window = 0", |c| c.sliding_window = 0),
            ("hidden_size = 0", |c| c.hidden_size = 0),
            ("rope_local_base_freq = NaN", |c| {
                c.rope_local_base_freq = f64::NAN
            }),
            ("query_pre_attn_scalar = 0", |c| {
                c.query_pre_attn_scalar = 0.0
            }),
            ("layer_types has 2 entries", |c| {
                c.layer_types = Some(vec!["full_attention".into(); 2])
            }),
        ];
        for (want, break_it) in cases {
            let mut c = good.clone();
            break_it(&mut c);
            let err = c.check().unwrap_err();
            assert!(err.contains(want), "{err} (want {want})");
        }
    }
}
