//! The LLaMA-derived families, as llama.cpp builds them
//! (`src/models/{qwen2,qwen3,phi3,granite}.cpp`):
//!
//! - qwen2: LLaMA with NeoX RoPE; its q/k/v biases are optional tensors the
//!   decoder adds wherever a file has them;
//! - qwen3: NeoX RoPE and per-head RMSNorm of queries and keys before it;
//! - phi3: NeoX RoPE, fused `attn_qkv` (split by the decoder as for any
//!   family) and one `ffn_up` holding gate and up;
//! - granite: LLaMA (adjacent RoPE, q/k permuted by the converter) with
//!   multipliers on embeddings, residual branches, attention scores and logits;
//! - lfm2: gated short-convolution layers between attention layers (NeoX
//!   RoPE, per-head q/k norms), final norm stored as `token_embd_norm`.

use crate::engine::decoder::{Gate, LayerAttention, Mixer, MlpWeights, Parts, RopePairs, Spec};
use crate::model::{LlamaLike, LlamaLikeConfig};

pub fn spec(c: &LlamaLikeConfig) -> Spec {
    let b = &c.base;
    let layer = LayerAttention {
        mixer: Mixer::Attention,
        rope_base: b.rope_theta as f32,
        rope_position_scale: 1.0,
        window: None,
    };
    let (rope_pairs, parts, mlp_weights) = match c.kind {
        LlamaLike::Qwen2 => (RopePairs::Halves, Parts::NONE, MlpWeights::Separate),
        LlamaLike::Qwen3 => (
            RopePairs::Halves,
            Parts {
                q_norm: Some("attn_q_norm"),
                k_norm: Some("attn_k_norm"),
                ..Parts::NONE
            },
            MlpWeights::Separate,
        ),
        LlamaLike::Phi3 => (RopePairs::Halves, Parts::NONE, MlpWeights::FusedUp),
        LlamaLike::Granite => (RopePairs::Adjacent, Parts::NONE, MlpWeights::Separate),
        LlamaLike::Lfm2 => (
            RopePairs::Halves,
            Parts {
                q_norm: Some("attn_q_norm"),
                k_norm: Some("attn_k_norm"),
                ..Parts::NONE
            },
            MlpWeights::Separate,
        ),
    };
    let head_dim = b.head_dim();
    Spec {
        family: c.kind.name(),
        vocab: b.vocab_size,
        hidden: b.hidden_size,
        ffn: b.intermediate_size,
        heads: b.num_attention_heads,
        kv_heads: b.kv_heads(),
        head_dim,
        rope_dims: c.rotary_dim(),
        context: b.max_position_embeddings,
        eps: b.rms_norm_eps as f32,
        final_norm: match c.kind {
            LlamaLike::Lfm2 => "token_embd_norm",
            _ => "output_norm",
        },
        layers: (0..b.num_hidden_layers)
            .map(|i| match &c.short_conv {
                Some(sc) if c.is_conv(i) => LayerAttention {
                    mixer: Mixer::ShortConv { kernel: sc.kernel },
                    ..layer.clone()
                },
                _ => LayerAttention {
                    window: c.attention_window,
                    ..layer.clone()
                },
            })
            .collect(),
        rope_pairs,
        parts,
        gate: Gate::Silu,
        mlp_weights,
        embed_scale: c.embedding_multiplier.map(|v| v as f32),
        attention_scale: c
            .attention_multiplier
            .map_or(1.0 / (head_dim as f32).sqrt(), |v| v as f32),
        residual_scale: c.residual_multiplier.map(|v| v as f32),
        // In f32, as llama.cpp's `ggml_scale(cur, 1.0f / f_logit_scale)`.
        logit_scale: c.logits_scaling.map(|v| 1.0 / v as f32),
        logit_softcap: None,
        hf_norm_offset: 0.0,
    }
}
