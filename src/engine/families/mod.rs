//! One small file per decoder family: its config mapped onto the shared
//! decoder's `Spec` (see docs/engine.md for adding one).

pub mod gemma3;
pub mod llama;
pub mod llama_like;

use super::decoder::Spec;
use crate::model::Architecture;

/// Decoder families the engine runs, for messages.
pub const DECODERS: &str = "llama, gemma3, qwen2, qwen3, phi3, granite, lfm2";

/// The decoder spec of `arch`, when it is a decoder family we run.
pub fn spec(arch: &Architecture) -> Option<Result<Spec, String>> {
    match arch {
        Architecture::Llama(c) => Some(Ok(llama::spec(c))),
        Architecture::Gemma3(c) => Some(c.check().map(|()| gemma3::spec(c))),
        Architecture::LlamaLike(c) => Some(c.check().map(|()| llama_like::spec(c))),
        Architecture::Bert(_) | Architecture::Other { .. } => None,
    }
}
