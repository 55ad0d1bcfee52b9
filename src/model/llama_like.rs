//! Decoder families llama.cpp builds on the LLaMA skeleton with a few
//! changes each (Qwen2/2.5, Qwen3, Phi-3, Granite, LFM2): the LLaMA sizes plus
//! the family's own switches, from a Hugging Face `config.json` or GGUF
//! `<arch>.*` metadata. What the engine does differently per family is in
//! `engine::families`.

use serde::{Deserialize, Serialize};

use super::config::LlamaConfig;
use crate::format::gguf::{GgufFile, MetaValue};

/// Which LLaMA-derived family: its GGUF `general.architecture` and HF
/// `model_type` are both this name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlamaLike {
    /// q/k/v biases, NeoX RoPE (Qwen2 and Qwen2.5).
    Qwen2,
    /// Per-head q/k RMSNorm, NeoX RoPE, head width independent of d_model.
    Qwen3,
    /// Fused qkv and gate+up projections, NeoX RoPE (Phi-3, Phi-3.5, Phi-4-mini).
    Phi3,
    /// LLaMA with embedding, residual, attention and logit multipliers.
    Granite,
    /// Liquid's hybrid: gated short-convolution blocks between attention
    /// blocks (with per-head q/k RMSNorm). GGUF only: HF configs not read.
    Lfm2,
}

impl LlamaLike {
    pub const ALL: [LlamaLike; 5] = [
        Self::Qwen2,
        Self::Qwen3,
        Self::Phi3,
        Self::Granite,
        Self::Lfm2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Phi3 => "phi3",
            Self::Granite => "granite",
            Self::Lfm2 => "lfm2",
        }
    }

    /// The family a GGUF architecture or HF `model_type` names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// A LLaMA-derived decoder's hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LlamaLikeConfig {
    /// Serialized beside `"family": "llama-like"` (inspect's JSON).
    pub kind: LlamaLike,
    #[serde(flatten)]
    pub base: LlamaConfig,
    /// Rotated width of each head (Phi-4-mini's partial rotary); `None`: all of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotary_dim: Option<usize>,
    /// Granite: embeddings are multiplied by this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_multiplier: Option<f64>,
    /// Granite: attention and MLP outputs are multiplied by this before the residual add.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_multiplier: Option<f64>,
    /// Granite: the attention score scale (instead of 1/sqrt(head_dim)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_multiplier: Option<f64>,
    /// Granite: logits are divided by this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logits_scaling: Option<f64>,
    /// LFM2: which layers are short convolutions instead of attention.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short_conv: Option<ShortConv>,
    /// Sliding window of the attention layers (LFM2 when set; llama.cpp
    /// ignores Phi-3's and the Qwens').
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_window: Option<usize>,
}

/// LFM2's gated short convolutions: `in_proj` to B, C, x; `C * conv(B * x)`
/// over the last `kernel` positions per channel; `out_proj`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShortConv {
    /// Taps per channel (GGUF `shortconv.l_cache`).
    pub kernel: usize,
    /// Indices of the convolution layers (GGUF: KV heads 0).
    pub layers: Vec<usize>,
}

/// The fields of an HF config beyond LLaMA's.
#[derive(Deserialize)]
struct HfExtras {
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    #[serde(default)]
    embedding_multiplier: Option<f64>,
    #[serde(default)]
    residual_multiplier: Option<f64>,
    #[serde(default)]
    attention_multiplier: Option<f64>,
    #[serde(default)]
    logits_scaling: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
}

impl LlamaLikeConfig {
    /// Reads an HF `config.json` of family `kind`.
    pub fn from_hf(kind: LlamaLike, text: &str) -> Result<Self, String> {
        if kind == LlamaLike::Lfm2 {
            return Err("Hugging Face lfm2 configs are not read yet (use its GGUF)".into());
        }
        let typed = |e: serde_json::Error| format!("Not a valid {} config: {e}", kind.name());
        let base: LlamaConfig = serde_json::from_str(text).map_err(typed)?;
        let extras: HfExtras = serde_json::from_str(text).map_err(typed)?;
        if let Some(scaling) = extras.rope_scaling.filter(|v| !v.is_null()) {
            // Phi-3's 128k variants (longrope) and YaRN change the rotation
            // frequencies per dimension: running them as plain RoPE would be wrong.
            return Err(format!(
                "rope_scaling {scaling} is not supported for {} yet",
                kind.name()
            ));
        }
        let rotary_dim = extras
            .partial_rotary_factor
            .filter(|&f| f != 1.0)
            .map(|f| (base.head_dim() as f64 * f).round() as usize);
        let granite = kind == LlamaLike::Granite;
        Ok(Self {
            kind,
            base,
            rotary_dim,
            embedding_multiplier: extras.embedding_multiplier.filter(|_| granite),
            residual_multiplier: extras.residual_multiplier.filter(|_| granite),
            attention_multiplier: extras.attention_multiplier.filter(|_| granite),
            logits_scaling: extras.logits_scaling.filter(|_| granite),
            short_conv: None,
            attention_window: None,
        })
    }

    /// Reads `<arch>.*` GGUF metadata (defaults as llama.cpp's loader);
    /// `None` when a required key is missing.
    pub fn from_gguf(kind: LlamaLike, file: &GgufFile, vocab: Option<usize>) -> Option<Self> {
        let arch = kind.name();
        let int = |key: &str| file.get_u64(&format!("{arch}.{key}")).map(|v| v as usize);
        let float = |key: &str| file.get_f64(&format!("{arch}.{key}"));
        let heads = int("attention.head_count")?;
        let head_dim = int("attention.key_length");
        // LFM2 stores KV heads per layer, 0 for its convolution layers.
        let kv_per_layer: Option<Vec<usize>> =
            match file.get(&format!("{arch}.attention.head_count_kv")) {
                Some(MetaValue::Array(a)) => a
                    .values
                    .iter()
                    .map(|v| v.as_u64().map(|v| v as usize))
                    .collect(),
                _ => None,
            };
        let kv_heads = match &kv_per_layer {
            Some(per_layer) => per_layer.iter().copied().max(),
            None => int("attention.head_count_kv"),
        };
        let short_conv = match (kind, &kv_per_layer) {
            (LlamaLike::Lfm2, Some(per_layer)) => Some(ShortConv {
                kernel: int("shortconv.l_cache")?,
                layers: (0..per_layer.len())
                    .filter(|&i| per_layer[i] == 0)
                    .collect(),
            }),
            (LlamaLike::Lfm2, None) => Some(ShortConv {
                kernel: int("shortconv.l_cache")?,
                layers: Vec::new(),
            }),
            _ => None,
        };
        let base = LlamaConfig {
            vocab_size: vocab?,
            hidden_size: int("embedding_length")?,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            max_position_embeddings: int("context_length")?,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon")?,
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
            tie_word_embeddings: !file.tensors().iter().any(|t| t.name == "output.weight"),
            head_dim,
        };
        let rotary_dim = int("rope.dimension_count").filter(|&d| d != base.head_dim());
        let granite = kind == LlamaLike::Granite;
        // llama.cpp reads these keys for Granite only; 0 (or absent) means "off".
        let scale = |key: &str| float(key).filter(|&v| granite && v != 0.0);
        Some(Self {
            kind,
            rotary_dim,
            embedding_multiplier: scale("embedding_scale"),
            residual_multiplier: scale("residual_scale"),
            attention_multiplier: scale("attention.scale"),
            // Required by llama.cpp for Granite.
            logits_scaling: if granite {
                Some(float("logit_scale")?)
            } else {
                None
            },
            short_conv,
            attention_window: int("attention.sliding_window")
                .filter(|&w| kind == LlamaLike::Lfm2 && w > 0),
            base,
        })
    }

    /// Whether layer `i` is a short convolution (else attention).
    pub fn is_conv(&self, i: usize) -> bool {
        self.short_conv
            .as_ref()
            .is_some_and(|s| s.layers.contains(&i))
    }

    /// Rotated width of each head.
    pub fn rotary_dim(&self) -> usize {
        self.rotary_dim.unwrap_or_else(|| self.base.head_dim())
    }

    /// Every number the decoder sizes buffers or divides by, checked.
    pub fn check(&self) -> Result<(), String> {
        self.base.check()?;
        let rot = self.rotary_dim();
        if rot == 0 || rot > self.base.head_dim() || !rot.is_multiple_of(2) {
            return Err(format!(
                "rotary dimension {rot}: must be even and between 2 and head_dim = {}",
                self.base.head_dim()
            ));
        }
        if let Some(sc) = &self.short_conv {
            if !(2..=64).contains(&sc.kernel) {
                return Err(format!(
                    "shortconv.l_cache = {}: must be between 2 and 64",
                    sc.kernel
                ));
            }
            if let Some(&i) = sc
                .layers
                .iter()
                .find(|&&i| i >= self.base.num_hidden_layers)
            {
                return Err(format!(
                    "convolution layer {i} is past the {} layers",
                    self.base.num_hidden_layers
                ));
            }
        }
        if self.attention_window == Some(0) {
            return Err("attention.sliding_window = 0: must be at least 1".into());
        }
        for (key, v) in [
            ("embedding_multiplier", self.embedding_multiplier),
            ("residual_multiplier", self.residual_multiplier),
            ("attention_multiplier", self.attention_multiplier),
            ("logits_scaling", self.logits_scaling),
        ] {
            if let Some(v) = v.filter(|v| !v.is_finite() || *v == 0.0) {
                return Err(format!("{key} = {v}: must be finite and not zero"));
            }
        }
        Ok(())
    }

    /// The HF `config.json` this config reads back from.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("configs serialize");
        if let Some(map) = v.as_object_mut() {
            map.remove("kind");
        }
        v["model_type"] = self.kind.name().into();
        if let Some(rot) = self.rotary_dim {
            v["partial_rotary_factor"] = (rot as f64 / self.base.head_dim() as f64).into();
            if let Some(map) = v.as_object_mut() {
                map.remove("rotary_dim");
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN25_05B: &str = r#"{"model_type":"qwen2","vocab_size":151936,"hidden_size":896,
        "intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,
        "max_position_embeddings":32768,"rms_norm_eps":1e-06,"rope_theta":1000000.0,
        "tie_word_embeddings":true,"sliding_window":32768,"use_sliding_window":false}"#;

    #[test]
    fn reads_qwen25_and_round_trips_through_hf_json() {
        let c = LlamaLikeConfig::from_hf(LlamaLike::Qwen2, QWEN25_05B).unwrap();
        c.check().unwrap();
        assert_eq!(
            (c.base.head_dim(), c.base.kv_heads(), c.rotary_dim()),
            (64, 2, 64)
        );
        let back = c.to_hf_json().to_string();
        assert_eq!(
            LlamaLikeConfig::from_hf(LlamaLike::Qwen2, &back).unwrap(),
            c
        );
    }

    #[test]
    fn granite_multipliers_and_partial_rotary_are_read() {
        let mut v: serde_json::Value = serde_json::from_str(QWEN25_05B).unwrap();
        v["embedding_multiplier"] = 12.0.into();
        v["residual_multiplier"] = 0.22.into();
        v["attention_multiplier"] = 0.015625.into();
        v["logits_scaling"] = 8.0.into();
        v["partial_rotary_factor"] = 0.75.into();
        let c = LlamaLikeConfig::from_hf(LlamaLike::Granite, &v.to_string()).unwrap();
        assert_eq!(c.embedding_multiplier, Some(12.0));
        assert_eq!(c.logits_scaling, Some(8.0));
        assert_eq!(c.rotary_dim(), 48);
        let back = c.to_hf_json().to_string();
        assert_eq!(
            LlamaLikeConfig::from_hf(LlamaLike::Granite, &back).unwrap(),
            c
        );
        // Qwen2 has no multipliers: a stray key is not read as one.
        let q = LlamaLikeConfig::from_hf(LlamaLike::Qwen2, &v.to_string()).unwrap();
        assert_eq!(q.logits_scaling, None);
    }

    #[test]
    fn unsupported_rope_scaling_and_bad_numbers_are_refused() {
        let mut v: serde_json::Value = serde_json::from_str(QWEN25_05B).unwrap();
        v["rope_scaling"] = serde_json::json!({"type": "longrope", "long_factor": [1.0]});
        let e = LlamaLikeConfig::from_hf(LlamaLike::Phi3, &v.to_string()).unwrap_err();
        assert!(e.contains("longrope") && e.contains("phi3"), "{e}");
        let mut c = LlamaLikeConfig::from_hf(LlamaLike::Granite, QWEN25_05B).unwrap();
        c.logits_scaling = Some(0.0);
        assert!(c.check().unwrap_err().contains("logits_scaling = 0"));
        c.logits_scaling = None;
        c.rotary_dim = Some(65);
        assert!(c.check().unwrap_err().contains("rotary dimension 65"));
    }
}
