//! Importance matrices collected with our engine, as `llama-imatrix`
//! collects them: the text in chunks of `ctx` tokens (first token replaced
//! by BOS), every token of every chunk run through the decoder, and for each
//! weight matrix of each block the sum of its input columns' squares
//! (`format::imatrix`). The sums run in f32 in token order, as llama.cpp's
//! do; the activations are our engine's, so the figures are close to
//! llama-imatrix's, not bit-equal.

use std::collections::BTreeMap;

use crate::engine::decoder::Tap;
use crate::engine::Decoder;
use crate::format::imatrix::{Entry, Imatrix};

/// The weight matrices whose input a tap shows, by llama.cpp name suffix.
fn fed_by(tap: Tap) -> &'static [&'static str] {
    match tap {
        Tap::AttentionIn => &["attn_q", "attn_k", "attn_v", "attn_qkv"],
        Tap::AttentionOut => &["attn_output"],
        Tap::MlpIn => &["ffn_gate", "ffn_up"],
        Tap::MlpDown => &["ffn_down"],
    }
}

/// What to collect over.
pub struct Text<'a> {
    pub tokens: &'a [u32],
    pub bos: Option<u32>,
    pub ctx: usize,
    pub n_chunk: usize,
    /// Recorded as the matrix's dataset (`imatrix.datasets`).
    pub dataset: String,
}

/// Collects an importance matrix for every weight matrix `has_tensor`
/// says the model holds (by llama.cpp name, e.g. `blk.0.attn_q.weight`).
pub fn collect(
    decoder: &Decoder,
    text: &Text,
    has_tensor: &dyn Fn(&str) -> bool,
    on_chunk: &mut dyn FnMut(usize),
) -> Imatrix {
    assert!(
        text.tokens.len() >= text.ctx * text.n_chunk,
        "not enough tokens"
    );
    // One accumulator per (layer, tap): q, k and v see the same input, so
    // llama.cpp's three identical sums are one here.
    let mut sums: BTreeMap<(usize, Tap), Vec<f32>> = BTreeMap::new();
    for (c, chunk) in text
        .tokens
        .chunks_exact(text.ctx)
        .take(text.n_chunk)
        .enumerate()
    {
        let mut seq = chunk.to_vec();
        if let Some(b) = text.bos {
            seq[0] = b;
        }
        let n = seq.len();
        let mut tap = |layer: usize, at: Tap, x: &[f32]| {
            let width = x.len() / n;
            let acc = sums.entry((layer, at)).or_insert_with(|| vec![0f32; width]);
            for row in x.chunks_exact(width) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v * v;
                }
            }
        };
        decoder.forward_tapped(&seq, &mut decoder.new_cache(), 1, Some(&mut tap));
        on_chunk(c + 1);
    }
    let count = (text.ctx * text.n_chunk) as i64;
    let mut entries = BTreeMap::new();
    for ((layer, tap), acc) in sums {
        for suffix in fed_by(tap) {
            let name = format!("blk.{layer}.{suffix}.weight");
            if has_tensor(&name) {
                entries.insert(
                    name,
                    Entry {
                        sums: acc.clone(),
                        counts: vec![count],
                    },
                );
            }
        }
    }
    Imatrix {
        entries,
        datasets: vec![text.dataset.clone()],
        chunk_count: text.n_chunk as u32,
        chunk_size: text.ctx as u32,
        legacy: false,
    }
}
