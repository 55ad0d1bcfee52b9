//! What a tensor does in the network, from its name (Hugging Face or
//! llama.cpp naming). Quantization plans and parameter accounting key on it.

use serde::Serialize;

/// A tensor's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorRole {
    Embedding,
    Attention,
    Mlp,
    Norm,
    /// The output projection (LM head, pooler, classifier).
    Head,
    /// A non-trainable buffer such as BERT's int64 `position_ids`.
    Buffer,
    Other,
}

impl TensorRole {
    /// Every role, in report order.
    pub const ALL: [TensorRole; 7] = [
        TensorRole::Embedding,
        TensorRole::Attention,
        TensorRole::Mlp,
        TensorRole::Norm,
        TensorRole::Head,
        TensorRole::Buffer,
        TensorRole::Other,
    ];

    /// Classifies a tensor by name; `is_float` is false for integer buffers.
    pub fn classify(name: &str, is_float: bool) -> TensorRole {
        let n = name.to_ascii_lowercase();
        let has = |s: &str| n.contains(s);
        if !is_float || n.ends_with("position_ids") {
            TensorRole::Buffer
        } else if has("norm") {
            TensorRole::Norm
        } else if has("embed")
            || n.starts_with("token_embd")
            || n.starts_with("position_embd")
            || n.starts_with("token_types")
        {
            TensorRole::Embedding
        } else if n.starts_with("lm_head")
            || n.starts_with("output.")
            || has("pooler")
            || has("classifier")
            || n == "output"
        {
            TensorRole::Head
        } else if has("attention") || has("attn") || has("self_attn") {
            TensorRole::Attention
        } else if has("mlp") || has("ffn") || has("intermediate") || has(".output.dense") {
            TensorRole::Mlp
        } else {
            TensorRole::Other
        }
    }

    /// The role's report name.
    pub fn name(self) -> &'static str {
        match self {
            TensorRole::Embedding => "embedding",
            TensorRole::Attention => "attention",
            TensorRole::Mlp => "mlp",
            TensorRole::Norm => "norm",
            TensorRole::Head => "head",
            TensorRole::Buffer => "buffer",
            TensorRole::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TensorRole::{self, *};

    #[test]
    fn classifies_bert_and_llama_names() {
        let cases = [
            ("embeddings.word_embeddings.weight", Embedding),
            ("embeddings.LayerNorm.weight", Norm),
            ("encoder.layer.0.attention.output.LayerNorm.bias", Norm),
            ("encoder.layer.0.attention.self.query.weight", Attention),
            ("encoder.layer.0.attention.output.dense.weight", Attention),
            ("encoder.layer.0.intermediate.dense.weight", Mlp),
            ("encoder.layer.0.output.dense.weight", Mlp),
            ("pooler.dense.weight", Head),
            ("token_embd.weight", Embedding),
            ("blk.3.attn_q.weight", Attention),
            ("blk.3.ffn_gate.weight", Mlp),
            ("blk.3.attn_norm.weight", Norm),
            ("output_norm.weight", Norm),
            ("output.weight", Head),
            ("model.layers.0.self_attn.k_proj.weight", Attention),
            ("model.layers.0.mlp.up_proj.weight", Mlp),
            ("lm_head.weight", Head),
        ];
        for (name, role) in cases {
            assert_eq!(TensorRole::classify(name, true), role, "{name}");
        }
        assert_eq!(
            TensorRole::classify("embeddings.position_ids", false),
            Buffer
        );
    }
}
