//! Gemma-3: sliding-window attention on most layers with its own RoPE base,
//! norms after attention and MLP as well as before, per-head q/k norms,
//! NeoX RoPE, GELU-tanh gate, embeddings scaled by sqrt(d).

use crate::engine::decoder::{Gate, LayerAttention, Mixer, MlpWeights, Parts, RopePairs, Spec};
use crate::model::Gemma3Config;

pub fn spec(c: &Gemma3Config) -> Spec {
    let layers = (0..c.num_hidden_layers)
        .map(|i| match c.is_sliding(i) {
            true => LayerAttention {
                mixer: Mixer::Attention,
                rope_base: c.rope_local_base_freq as f32,
                rope_position_scale: 1.0,
                window: Some(c.sliding_window),
            },
            false => LayerAttention {
                mixer: Mixer::Attention,
                rope_base: c.rope_theta as f32,
                rope_position_scale: c.rope_scaling.map_or(1.0, |f| 1.0 / f as f32),
                window: None,
            },
        })
        .collect();
    Spec {
        family: "gemma3",
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        ffn: c.intermediate_size,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        rope_dims: c.head_dim,
        context: c.max_position_embeddings,
        eps: c.rms_norm_eps as f32,
        final_norm: "output_norm",
        layers,
        rope_pairs: RopePairs::Halves,
        parts: Parts {
            post_attention_norm: Some("post_attention_norm"),
            post_ffn_norm: Some("post_ffw_norm"),
            q_norm: Some("attn_q_norm"),
            k_norm: Some("attn_k_norm"),
        },
        gate: Gate::GeluTanh,
        mlp_weights: MlpWeights::Separate,
        // In f32, as llama.cpp (HF rounds it to the weights' dtype first).
        embed_scale: Some((c.hidden_size as f32).sqrt()),
        attention_scale: 1.0 / (c.query_pre_attn_scalar as f32).sqrt(),
        residual_scale: None,
        logit_scale: None,
        logit_softcap: c.final_logit_softcapping.map(|v| v as f32),
        hf_norm_offset: 1.0,
    }
}
