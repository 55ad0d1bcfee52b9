//! Memory accounting shared by `quantize --fit` and `profile`: what a model
//! needs resident on a device beside its weights.

use serde::Serialize;

use crate::model::{Architecture, LlamaLikeConfig};

/// Bytes per KV-cache element: llama.cpp's default cache type is F16.
pub const KV_CACHE_ELEM_BYTES: u64 = 2;

/// KV-cache bytes for `context` tokens: layers × kv heads × head dim × 2
/// (keys and values) × context × element size, where a sliding-window
/// layer keeps only its window of positions. Encoders keep no cache.
pub fn kv_cache_bytes(arch: &Architecture, context: u64) -> u64 {
    match arch {
        Architecture::Llama(c) => {
            let per_token =
                c.num_hidden_layers as u64 * c.kv_heads() as u64 * c.head_dim() as u64 * 2;
            per_token * context * KV_CACHE_ELEM_BYTES
        }
        Architecture::LlamaLike(c) => {
            let b = &c.base;
            let per_position = b.kv_heads() as u64 * b.head_dim() as u64 * 2;
            let window = c
                .attention_window
                .map_or(context, |w| context.min(w as u64));
            let attention = (0..b.num_hidden_layers).filter(|&i| !c.is_conv(i)).count() as u64;
            // LFM2's convolution layers keep (kernel - 1) positions of f32 per channel.
            let conv = c.short_conv.as_ref().map_or(0, |s| {
                s.layers.len() as u64 * (s.kernel as u64 - 1) * b.hidden_size as u64 * 4
            });
            per_position * attention * window * KV_CACHE_ELEM_BYTES + conv
        }
        Architecture::Gemma3(c) => {
            let per_position = c.num_key_value_heads as u64 * c.head_dim as u64 * 2;
            let positions: u64 = (0..c.num_hidden_layers)
                .map(|i| match c.is_sliding(i) {
                    true => context.min(c.sliding_window as u64),
                    false => context,
                })
                .sum();
            per_position * positions * KV_CACHE_ELEM_BYTES
        }
        Architecture::Bert(_) | Architecture::Other { .. } => 0,
    }
}

/// Largest context a model supports, when known.
pub fn max_context(arch: &Architecture) -> Option<u64> {
    match arch {
        Architecture::Llama(c) => Some(c.max_position_embeddings as u64),
        Architecture::LlamaLike(c) => Some(c.base.max_position_embeddings as u64),
        Architecture::Gemma3(c) => Some(c.max_position_embeddings as u64),
        Architecture::Bert(c) => Some(c.max_position_embeddings as u64),
        Architecture::Other { .. } => None,
    }
}

/// Peak activation working set for one sequence of `context` tokens in f32:
/// the residual stream, the FFN hidden state, and one layer's attention
/// scores (heads × context × context), which dominate for encoders.
pub fn activation_bytes(arch: &Architecture, context: u64) -> u64 {
    let (hidden, ffn, heads) = match arch {
        Architecture::Llama(c) | Architecture::LlamaLike(LlamaLikeConfig { base: c, .. }) => {
            (c.hidden_size, c.intermediate_size, c.num_attention_heads)
        }
        Architecture::Gemma3(c) => (c.hidden_size, c.intermediate_size, c.num_attention_heads),
        Architecture::Bert(c) => (c.hidden_size, c.intermediate_size, c.num_attention_heads),
        Architecture::Other { .. } => return 0,
    };
    // A decoder attends one new token against the cache; an encoder builds the
    // full context × context score matrix.
    let (scores, rows) = match arch.is_decoder() {
        true => (heads as u64 * context, 1),
        false => (heads as u64 * context * context, context),
    };
    4 * (rows * (4 * hidden as u64 + 2 * ffn as u64) + scores)
}

/// A model's resident memory on a device against its budget.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Footprint {
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    pub activation_bytes: u64,
    pub runtime_overhead_bytes: u64,
    pub total_bytes: u64,
    pub budget_bytes: u64,
    pub context_tokens: u64,
}

impl Footprint {
    /// Sums the parts for `weights_bytes` of weights at `context` tokens.
    pub fn new(
        arch: &Architecture,
        weights_bytes: u64,
        context: u64,
        overhead_bytes: u64,
        budget_bytes: u64,
    ) -> Self {
        let kv = kv_cache_bytes(arch, context);
        let act = activation_bytes(arch, context);
        Self {
            weights_bytes,
            kv_cache_bytes: kv,
            activation_bytes: act,
            runtime_overhead_bytes: overhead_bytes,
            total_bytes: weights_bytes + kv + act + overhead_bytes,
            budget_bytes,
            context_tokens: context,
        }
    }

    /// The same for `batch` sequences at once: KV cache and activations scale.
    pub fn batched(mut self, batch: u64) -> Self {
        self.kv_cache_bytes *= batch;
        self.activation_bytes *= batch;
        self.total_bytes = self.weights_bytes
            + self.kv_cache_bytes
            + self.activation_bytes
            + self.runtime_overhead_bytes;
        self
    }

    /// Whether everything fits the budget.
    pub fn fits(&self) -> bool {
        self.total_bytes <= self.budget_bytes
    }

    /// How far over budget, in MiB (0 when it fits).
    pub fn shortfall_mib(&self) -> f64 {
        self.total_bytes.saturating_sub(self.budget_bytes) as f64 / (1u64 << 20) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LlamaConfig;

    #[test]
    fn smollm2_kv_cache_matches_the_formula() {
        let arch = Architecture::Llama(LlamaConfig {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: Some(3),
            max_position_embeddings: 8192,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            tie_word_embeddings: true,
            head_dim: None,
        });
        // 30 layers × 3 kv heads × 64 dims × 2 (K and V) × 2048 tokens × 2 bytes
        assert_eq!(kv_cache_bytes(&arch, 2048), 30 * 3 * 64 * 2 * 2048 * 2);
        let f = Footprint::new(&arch, 100 << 20, 2048, 50 << 20, 100 << 20);
        assert!(!f.fits());
        assert!(f.shortfall_mib() > 50.0);
    }

    #[test]
    fn gemma3_sliding_layers_cache_only_their_window() {
        let text = r#"{"model_type":"gemma3_text","vocab_size":262144,"hidden_size":640,
            "intermediate_size":2048,"num_hidden_layers":18,"num_attention_heads":4,
            "num_key_value_heads":1,"head_dim":256,"max_position_embeddings":32768,
            "sliding_window":512,"query_pre_attn_scalar":256}"#;
        let arch = crate::model::config::from_hf_config(text).unwrap();
        let per_position = 256 * 2 * KV_CACHE_ELEM_BYTES;
        // Below the window every layer caches every position.
        assert_eq!(kv_cache_bytes(&arch, 128), 18 * 128 * per_position);
        // Past it, 15 sliding layers stop at 512; the 3 global ones grow.
        assert_eq!(
            kv_cache_bytes(&arch, 8192),
            (15 * 512 + 3 * 8192) * per_position
        );
    }
}
