//! Running a decoder graph (the `llama` export onnxruntime-genai loads) over
//! one token sequence from an empty KV cache: every position's logits, as
//! `eval` scores a sequence with the engine.

use super::{Session, Value};
use crate::format::onnx::OnnxError;

/// A decoder graph's KV cache as its inputs declare it:
/// `past_key_values.{i}.key` / `.value` for `i` in `0..layers`, each
/// `[batch, kv_heads, past_sequence, head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderLayout {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// The name of layer `i`'s past keys or values.
fn past(i: usize, part: &str) -> String {
    format!("past_key_values.{i}.{part}")
}

impl DecoderLayout {
    /// Reads the layout from the session's input declarations: layers are
    /// counted from `past_key_values.0.key` up, and every key and value
    /// must declare the same fixed `kv_heads` and `head_dim`.
    pub fn of(session: &Session) -> Result<Self, OnnxError> {
        let bad = |message: String| session.unsupported(message);
        let dims = |name: &str| -> Option<Result<(usize, usize), OnnxError>> {
            let decl = session.inputs().iter().find(|d| d.name == name)?;
            Some(match decl.dims.as_deref() {
                Some(&[_, Some(heads), _, Some(width)]) => Ok((heads, width)),
                other => Err(bad(format!(
                    "input `{name}` declares dimensions {other:?}: a KV cache input is \
                     [batch, kv_heads, past_sequence, head_dim] with fixed kv_heads and head_dim"
                ))),
            })
        };
        let mut first = None;
        let mut layers = 0;
        while let Some(key) = dims(&past(layers, "key")) {
            let key = key?;
            let value = dims(&past(layers, "value")).unwrap_or_else(|| {
                Err(bad(format!(
                    "input `{}` is declared but `{}` is not",
                    past(layers, "key"),
                    past(layers, "value")
                )))
            })?;
            let want = *first.get_or_insert(key);
            if key != want || value != want {
                return Err(bad(format!(
                    "layer {layers}'s KV cache is {key:?} / {value:?} (kv_heads, head_dim), layer 0's {want:?}"
                )));
            }
            layers += 1;
        }
        let Some((kv_heads, head_dim)) = first else {
            return Err(bad(
                "the graph has no input `past_key_values.0.key`: not a decoder with a KV cache"
                    .into(),
            ));
        };
        Ok(Self {
            layers,
            kv_heads,
            head_dim,
        })
    }
}

/// The logits a decoder graph gives each of `tokens` (a batch of one, the
/// KV cache empty, `attention_mask` all ones, `position_ids` `0..n`): one
/// row of `vocab` values per token, in order, row `i` predicting the token
/// after `tokens[i]`. The KV cache's shape is read from the graph's input
/// declarations ([`DecoderLayout::of`]); `position_ids` is passed only when
/// the graph declares it.
pub fn decoder_logits(session: &Session, tokens: &[u32]) -> Result<Vec<Vec<f32>>, OnnxError> {
    let n = tokens.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = DecoderLayout::of(session)?;
    let names: Vec<String> = (0..layout.layers)
        .flat_map(|i| [past(i, "key"), past(i, "value")])
        .collect();
    let empty = Value::f32(vec![1, layout.kv_heads, 0, layout.head_dim], Vec::new());
    let mut inputs: Vec<(&str, Value)> = vec![
        (
            "input_ids",
            Value::i64(vec![1, n], tokens.iter().map(|&t| i64::from(t)).collect()),
        ),
        ("attention_mask", Value::i64(vec![1, n], vec![1; n])),
    ];
    if session.inputs().iter().any(|d| d.name == "position_ids") {
        inputs.push((
            "position_ids",
            Value::i64(vec![1, n], (0..n as i64).collect()),
        ));
    }
    inputs.extend(names.iter().map(|name| (name.as_str(), empty.clone())));
    let out = session.run(inputs, &mut |_, _| {})?;
    let logits = out
        .get("logits")
        .ok_or_else(|| session.unsupported("the graph has no output `logits`".into()))?;
    match (logits.shape.as_slice(), logits.as_f32()) {
        (&[1, rows, vocab], Some(v)) if rows == n && vocab > 0 => {
            Ok(v.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
        }
        (shape, _) => Err(session.unsupported(format!(
            "output `logits` is {} {shape:?}, expected float [1, {n}, vocab]",
            logits.data.type_name()
        ))),
    }
}
