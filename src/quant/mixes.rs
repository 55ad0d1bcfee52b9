//! llama.cpp's K-quant (and IQ4) mixes: which block type each tensor gets under a
//! `llama-quantize` file type (its `llama_tensor_get_type`, for dense
//! models: no experts, no Falcon, no 70B special case).
//!
//! A mix is a base block type plus per-category raises: `attn_v` and
//! `ffn_down` are where quantization error hurts most, `attn_output` next,
//! and the output head (or the token embedding when it doubles as the
//! head) gets Q6_K. The layer picks are llama.cpp's, so the same source
//! gets the same types, and with our bit-exact kernels the same bytes.

use crate::quant::Scheme;

/// A `llama-quantize` file type that mixes block types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mix {
    Q2KS,
    Q2K,
    Q3KS,
    Q3KM,
    Q3KL,
    Q4KS,
    Q4KM,
    Q5KS,
    Q5KM,
    /// `IQ4_NL`: IQ4_NL blocks, `attn_v` raised at high GQA and the first
    /// eighth of `ffn_down` without an importance matrix.
    IQ4NL,
    /// `IQ4_XS`: as `IQ4_NL`, in IQ4_XS super-blocks where rows allow.
    IQ4XS,
}

impl Mix {
    /// Every mix, largest first.
    pub const ALL: [Mix; 11] = [
        Mix::Q5KM,
        Mix::Q5KS,
        Mix::Q4KM,
        Mix::Q4KS,
        Mix::IQ4NL,
        Mix::IQ4XS,
        Mix::Q3KL,
        Mix::Q3KM,
        Mix::Q3KS,
        Mix::Q2K,
        Mix::Q2KS,
    ];

    /// The name `llama-quantize` takes.
    pub fn name(self) -> &'static str {
        match self {
            Mix::Q2KS => "Q2_K_S",
            Mix::Q2K => "Q2_K",
            Mix::Q3KS => "Q3_K_S",
            Mix::Q3KM => "Q3_K_M",
            Mix::Q3KL => "Q3_K_L",
            Mix::Q4KS => "Q4_K_S",
            Mix::Q4KM => "Q4_K_M",
            Mix::Q5KS => "Q5_K_S",
            Mix::Q5KM => "Q5_K_M",
            Mix::IQ4NL => "IQ4_NL",
            Mix::IQ4XS => "IQ4_XS",
        }
    }

    /// Parses a mix name, and `llama-quantize`'s aliases `Q3_K`, `Q4_K`,
    /// `Q5_K` for the `_M` mixes.
    pub fn parse(name: &str) -> Option<Mix> {
        let upper = name.to_ascii_uppercase();
        match upper.as_str() {
            "Q3_K" => Some(Mix::Q3KM),
            "Q4_K" => Some(Mix::Q4KM),
            "Q5_K" => Some(Mix::Q5KM),
            _ => Mix::ALL.into_iter().find(|m| m.name() == upper),
        }
    }

    /// The block type every tensor without a rule gets.
    pub fn base(self) -> Scheme {
        match self {
            Mix::Q2KS | Mix::Q2K => Scheme::Q2K,
            Mix::Q3KS | Mix::Q3KM | Mix::Q3KL => Scheme::Q3K,
            Mix::Q4KS | Mix::Q4KM => Scheme::Q4K,
            Mix::Q5KS | Mix::Q5KM => Scheme::Q5K,
            Mix::IQ4NL => Scheme::IQ4NL,
            Mix::IQ4XS => Scheme::IQ4XS,
        }
    }
}

/// What llama.cpp's rules look at in a tensor's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Output,
    TokenEmbedding,
    /// `attn_v`, and fused `attn_qkv` (llama.cpp tests for it in the same
    /// branch, so a fused QKV gets the `attn_v` raises).
    AttentionV,
    AttentionOutput,
    FfnDown,
    Other,
}

impl Category {
    /// The category of a tensor named as llama.cpp or as Hugging Face
    /// names it (LLaMA-style decoders and BERT encoders).
    pub fn of(name: &str) -> Category {
        let any = |patterns: &[&str]| patterns.iter().any(|p| name.contains(p));
        if name == "output.weight" || name == "lm_head.weight" {
            Category::Output
        } else if name == "token_embd.weight"
            || name.ends_with("embed_tokens.weight")
            || name.ends_with("word_embeddings.weight")
        {
            Category::TokenEmbedding
        } else if any(&[
            "attn_qkv.weight",
            "attn_v.weight",
            "self_attn.qkv_proj.weight",
            "self_attn.v_proj.weight",
            "attention.self.value.weight",
        ]) {
            Category::AttentionV
        } else if any(&[
            "attn_output.weight",
            "self_attn.o_proj.weight",
            "attention.output.dense.weight",
        ]) {
            Category::AttentionOutput
        } else if any(&["ffn_down", "mlp.down_proj"]) || is_bert_ffn_down(name) {
            Category::FfnDown
        } else {
            Category::Other
        }
    }
}

/// BERT's second FFN matrix, `encoder.layer.N.output.dense` (llama.cpp's
/// `ffn_down`), not the attention's `attention.output.dense`.
fn is_bert_ffn_down(name: &str) -> bool {
    name.ends_with(".output.dense.weight") && !name.contains("attention.")
}

/// Where a tensor sits, as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Site {
    pub category: Category,
    /// Its block's index (llama.cpp counts `attn_v` and `ffn_down` tensors
    /// in layer order, which is this for one of each per block).
    pub layer: Option<usize>,
    pub n_layers: usize,
    /// Query heads per KV head.
    pub gqa: usize,
    /// The token embedding is also the output head (no separate head).
    pub tied: bool,
    pub row_len: u64,
    /// Quantizing with an importance matrix (the IQ4 mixes then leave
    /// `ffn_down` at their base).
    pub has_imatrix: bool,
}

/// llama.cpp's choice of layers that get more bits: the first and last
/// eighth, and every third layer in between.
pub fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    let eighth = n_layers / 8;
    layer < eighth || layer >= 7 * n_layers / 8 || (layer as isize - eighth as isize) % 3 == 2
}

/// The output head's type under a file type whose base is `base`
/// (llama.cpp applies this to every quantized file type, mixes or not).
pub fn head_type(base: Scheme, row_len: u64) -> Scheme {
    if !row_len.is_multiple_of(crate::quant::block_elems(base) as u64) {
        Scheme::Q8_0
    } else if base == Scheme::Q8_0 {
        base
    } else {
        Scheme::Q6K
    }
}

/// The head rule alone, as every quantized file type applies it: the
/// output head, or the token embedding when it is the head.
pub fn head_raise(base: Scheme, site: &Site) -> Option<Scheme> {
    let is_head = site.category == Category::Output
        || (site.tied && site.category == Category::TokenEmbedding);
    is_head.then(|| head_type(base, site.row_len))
}

/// With an importance matrix, llama.cpp guards the first eighth of
/// `ffn_down` in Q4_0 and Q5_0 files with the formats that have a minimum.
pub fn imatrix_raise(base: Scheme, site: &Site, has_imatrix: bool) -> Option<Scheme> {
    let early_down =
        site.category == Category::FfnDown && site.layer.is_some_and(|i| i < site.n_layers / 8);
    match base {
        Scheme::Q4_0 if has_imatrix && early_down => Some(Scheme::Q4_1),
        Scheme::Q5_0 if has_imatrix && early_down => Some(Scheme::Q5_1),
        _ => None,
    }
}

/// The block type `mix` gives the tensor at `site`, before the fallback
/// for rows that are not whole blocks; `None` where the base applies.
pub fn raise(mix: Mix, site: &Site) -> Option<Scheme> {
    use Scheme::{Q3K, Q4K, Q5K, Q6K};
    let i = site.layer.unwrap_or(0);
    let n = site.n_layers;
    if let Some(head) = head_raise(mix.base(), site) {
        return Some(head);
    }
    match site.category {
        Category::Output | Category::TokenEmbedding | Category::Other => None,
        Category::AttentionV => match mix {
            Mix::Q2K => Some(if site.gqa >= 4 { Q4K } else { Q3K }),
            Mix::Q2KS if site.gqa >= 4 => Some(Q4K),
            Mix::Q3KM => Some(if i < 2 { Q5K } else { Q4K }),
            Mix::Q3KL => Some(Q5K),
            Mix::Q4KM | Mix::Q5KM if use_more_bits(i, n) => Some(Q6K),
            Mix::Q4KS if i < 4 => Some(Q5K),
            Mix::IQ4NL | Mix::IQ4XS if site.gqa >= 4 => Some(Q5K),
            _ => None,
        },
        Category::FfnDown => match mix {
            Mix::Q2K => Some(Q3K),
            Mix::Q2KS if i < n / 8 => Some(Q4K),
            Mix::Q3KM => Some(if i < n / 16 { Q5K } else { Q4K }),
            Mix::Q3KL => Some(Q5K),
            Mix::Q4KM | Mix::Q5KM if use_more_bits(i, n) => Some(Q6K),
            Mix::Q4KS if i < n / 8 => Some(Q5K),
            Mix::IQ4NL | Mix::IQ4XS if i < n / 8 && !site.has_imatrix => Some(Q5K),
            _ => None,
        },
        Category::AttentionOutput => match mix {
            Mix::Q2K => Some(Q3K),
            Mix::Q3KM => Some(Q4K),
            Mix::Q3KL => Some(Q5K),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(category: Category, layer: usize, n_layers: usize, gqa: usize) -> Site {
        Site {
            category,
            layer: Some(layer),
            n_layers,
            gqa,
            tied: true,
            row_len: 576,
            has_imatrix: false,
        }
    }

    #[test]
    fn iq4_mixes_raise_attn_v_at_gqa_4_and_early_ffn_down_without_an_imatrix() {
        for mix in [Mix::IQ4NL, Mix::IQ4XS] {
            assert_eq!(
                raise(mix, &site(Category::AttentionV, 5, 18, 4)),
                Some(Scheme::Q5K)
            );
            assert_eq!(raise(mix, &site(Category::AttentionV, 5, 30, 3)), None);
            let down = site(Category::FfnDown, 2, 30, 3);
            assert_eq!(raise(mix, &down), Some(Scheme::Q5K));
            let weighted = Site {
                has_imatrix: true,
                ..down
            };
            assert_eq!(raise(mix, &weighted), None);
            assert_eq!(raise(mix, &site(Category::FfnDown, 3, 30, 3)), None);
        }
        // The head: Q8_0 where rows are not whole IQ4_XS super-blocks.
        assert_eq!(head_type(Scheme::IQ4XS, 576), Scheme::Q8_0);
        assert_eq!(head_type(Scheme::IQ4NL, 576), Scheme::Q6K);
    }

    #[test]
    fn categories_follow_both_namings() {
        for (name, want) in [
            ("blk.3.attn_v.weight", Category::AttentionV),
            (
                "model.layers.3.self_attn.v_proj.weight",
                Category::AttentionV,
            ),
            ("blk.0.attn_qkv.weight", Category::AttentionV),
            ("blk.3.ffn_down.weight", Category::FfnDown),
            ("encoder.layer.2.output.dense.weight", Category::FfnDown),
            (
                "encoder.layer.2.attention.output.dense.weight",
                Category::AttentionOutput,
            ),
            ("model.embed_tokens.weight", Category::TokenEmbedding),
            ("output.weight", Category::Output),
            ("blk.3.ffn_up.weight", Category::Other),
            ("blk.3.attn_k.weight", Category::Other),
        ] {
            assert_eq!(Category::of(name), want, "{name}");
        }
    }

    #[test]
    fn q2_k_raises_what_llama_cpp_raises() {
        // SmolLM2-135M: 30 blocks, 9 heads over 3 KV heads.
        let down = raise(Mix::Q2K, &site(Category::FfnDown, 17, 30, 3));
        assert_eq!(down, Some(Scheme::Q3K));
        let v = raise(Mix::Q2K, &site(Category::AttentionV, 17, 30, 3));
        assert_eq!(v, Some(Scheme::Q3K));
        let v_gqa4 = raise(Mix::Q2K, &site(Category::AttentionV, 17, 18, 4));
        assert_eq!(v_gqa4, Some(Scheme::Q4K));
        let o = raise(Mix::Q2K, &site(Category::AttentionOutput, 0, 30, 3));
        assert_eq!(o, Some(Scheme::Q3K));
        assert_eq!(raise(Mix::Q2K, &site(Category::Other, 0, 30, 3)), None);
    }

    #[test]
    fn q3_k_m_gives_the_first_two_attn_v_q5_k_and_the_rest_q4_k() {
        let at = |l| raise(Mix::Q3KM, &site(Category::AttentionV, l, 30, 3));
        assert_eq!(at(0), Some(Scheme::Q5K));
        assert_eq!(at(1), Some(Scheme::Q5K));
        assert_eq!(at(2), Some(Scheme::Q4K));
        let down = |l| raise(Mix::Q3KM, &site(Category::FfnDown, l, 32, 3));
        assert_eq!(down(1), Some(Scheme::Q5K));
        assert_eq!(down(2), Some(Scheme::Q4K));
    }

    #[test]
    fn head_is_q6_k_unless_its_row_is_not_whole_blocks_or_the_base_is_q8_0() {
        assert_eq!(head_type(Scheme::Q4K, 576), Scheme::Q8_0);
        assert_eq!(head_type(Scheme::Q4K, 512), Scheme::Q6K);
        assert_eq!(head_type(Scheme::Q4_0, 576), Scheme::Q6K);
        assert_eq!(head_type(Scheme::Q8_0, 576), Scheme::Q8_0);
    }

    #[test]
    fn more_bits_in_the_first_and_last_eighth_and_every_third_between() {
        let picked: Vec<usize> = (0..30).filter(|&l| use_more_bits(l, 30)).collect();
        assert_eq!(
            picked,
            vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
        );
    }
}
