//! LLaMA (and SmolLM2, Mistral without its window): the plain skeleton.

use crate::engine::decoder::{Gate, LayerAttention, Mixer, MlpWeights, Parts, RopePairs, Spec};
use crate::model::LlamaConfig;

pub fn spec(c: &LlamaConfig) -> Spec {
    let layer = LayerAttention {
        mixer: Mixer::Attention,
        rope_base: c.rope_theta as f32,
        rope_position_scale: 1.0,
        window: None,
    };
    Spec {
        family: "llama",
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        ffn: c.intermediate_size,
        heads: c.num_attention_heads,
        kv_heads: c.kv_heads(),
        head_dim: c.head_dim(),
        rope_dims: c.head_dim(),
        context: c.max_position_embeddings,
        eps: c.rms_norm_eps as f32,
        final_norm: "output_norm",
        layers: vec![layer; c.num_hidden_layers],
        // HF q/k rows are permuted to GGUF's order on load (`Weights`).
        rope_pairs: RopePairs::Adjacent,
        parts: Parts::NONE,
        gate: Gate::Silu,
        mlp_weights: MlpWeights::Separate,
        embed_scale: None,
        attention_scale: 1.0 / (c.head_dim() as f32).sqrt(),
        residual_scale: None,
        logit_scale: None,
        logit_softcap: None,
        hf_norm_offset: 0.0,
    }
}
