//! What a family's decoder is made of: the shared LLaMA skeleton (RMSNorm,
//! RoPE, grouped-query attention with a KV cache, gated MLP) and the few
//! places families differ. A family file (`engine::families::*`) builds one
//! of these from its config; the decoder reads nothing else.

/// How RoPE pairs a head's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopePairs {
    /// (x[2i], x[2i+1]): GGUF LLaMA, whose converter permutes q/k rows.
    Adjacent,
    /// (x[i], x[i + d/2]) (HF `rotate_half`, llama.cpp's NeoX mode).
    Halves,
}

/// The MLP gate's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// How the MLP's gate and up projections are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpWeights {
    /// `ffn_gate` and `ffn_up`, `[ffn, hidden]` each.
    Separate,
    /// One `ffn_up` of `[2 * ffn, hidden]`: gate rows first, then up (Phi-3).
    FusedUp,
}

/// How a layer mixes positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mixer {
    /// Self-attention over the KV cache.
    Attention,
    /// LFM2's gated short convolution over the last `kernel` positions.
    ShortConv { kernel: usize },
}

/// Attention (or what replaces it) of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerAttention {
    pub mixer: Mixer,
    pub rope_base: f32,
    /// Positions are multiplied by this before rotation (linear RoPE scaling).
    pub rope_position_scale: f32,
    /// Sliding window: positions a query sees, itself included. `None`: all.
    pub window: Option<usize>,
}

/// Optional tensors, by llama.cpp name within `blk.N.` (`None`: the family has none).
#[derive(Debug, Clone, PartialEq)]
pub struct Parts {
    /// RMSNorm of the attention output before the residual add.
    pub post_attention_norm: Option<&'static str>,
    /// RMSNorm of the MLP output before the residual add.
    pub post_ffn_norm: Option<&'static str>,
    /// Per-head RMSNorm of queries and keys before RoPE.
    pub q_norm: Option<&'static str>,
    pub k_norm: Option<&'static str>,
}

impl Parts {
    pub const NONE: Parts = Parts {
        post_attention_norm: None,
        post_ffn_norm: None,
        q_norm: None,
        k_norm: None,
    };
}

#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// The family's name, for messages.
    pub family: &'static str,
    pub vocab: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Leading values of each head that RoPE rotates (the rest pass
    /// through): `head_dim` but for partial rotary (Phi-4-mini).
    pub rope_dims: usize,
    /// Largest number of positions.
    pub context: usize,
    pub eps: f32,
    /// The final norm's tensor (`output_norm`; LFM2's converter names it `token_embd_norm`).
    pub final_norm: &'static str,
    /// One per layer.
    pub layers: Vec<LayerAttention>,
    pub rope_pairs: RopePairs,
    pub parts: Parts,
    pub gate: Gate,
    pub mlp_weights: MlpWeights,
    /// Embedding rows are multiplied by this (Gemma: sqrt(hidden)).
    pub embed_scale: Option<f32>,
    /// Attention scores are multiplied by this (usually 1/sqrt(head_dim)).
    pub attention_scale: f32,
    /// Attention and MLP outputs are multiplied by this before each
    /// residual add (Granite).
    pub residual_scale: Option<f32>,
    /// Final logits are multiplied by this (Granite: 1 / logits_scaling).
    pub logit_scale: Option<f32>,
    /// Final logits become `cap * tanh(logits / cap)`.
    pub logit_softcap: Option<f32>,
    /// Added to RMSNorm weights read under Hugging Face names (Gemma stores
    /// `w` and multiplies by `1 + w`; llama.cpp's converter folds the 1 in).
    pub hf_norm_offset: f32,
}

impl Spec {
    /// Width of all query heads.
    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of all key (or value) heads.
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}
