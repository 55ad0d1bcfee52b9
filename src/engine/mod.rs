//! CPU inference for the families we run: BERT-style encoders (sentence
//! embeddings, on burn's flex backend) and decoders (generation, on our
//! block kernels: one `decoder` with a small file per family in
//! `families`). Weights come from any format and dtype `Model` opens
//! (docs/engine.md).

pub mod activation;
pub mod bert;
pub mod decoder;
pub mod encoder;
pub mod families;
pub mod sample;
mod spm;
pub mod tokenizer;
pub mod weights;

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::model::{Architecture, Model};
pub use bert::{Batch, BertEncoder};
pub use decoder::{Decoder, KvCache};
pub use encoder::{Encoder, Precision};
pub use sample::{Sampler, Sampling};
pub use tokenizer::TextTokenizer;
use weights::Weights;

/// Families the engine runs, for error messages.
pub const SUPPORTED: &str =
    "bert (encoder); llama, gemma3, qwen2, qwen3, phi3, granite, lfm2 (decoders)";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{}: architecture `{arch}` is not supported by the engine (supported: {SUPPORTED})", path.display())]
    Unsupported { path: PathBuf, arch: String },
    #[error("{}: tensor `{name}` is missing", path.display())]
    MissingTensor { path: PathBuf, name: String },
    #[error("{}: tensor `{name}` has shape {got:?}, expected {want:?}", path.display())]
    Shape {
        path: PathBuf,
        name: String,
        want: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{}: tensor `{name}`: {message}", path.display())]
    BadTensor {
        path: PathBuf,
        name: String,
        message: String,
    },
    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Usage { path: PathBuf, message: String },
}

/// The network of a loaded model.
pub enum Network {
    Encoder(Encoder),
    Decoder(Decoder),
}

/// A model ready to run: network, tokenizer and how long loading took.
pub struct Engine {
    pub network: Network,
    pub tokenizer: TextTokenizer,
    pub load_seconds: f64,
    path: PathBuf,
}

/// What `generate` produced.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub prompt_tokens: Vec<u32>,
    pub tokens: Vec<u32>,
    pub text: String,
    pub stopped_at_eos: bool,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

impl Engine {
    /// Loads weights and the tokenizer of an opened model (encoders in f32).
    pub fn load(model: &Model) -> Result<Self, EngineError> {
        Self::load_with(model, Precision::F32)
    }

    /// As `load`, with the encoder's linear layers in `precision`.
    pub fn load_with(model: &Model, precision: Precision) -> Result<Self, EngineError> {
        let started = Instant::now();
        let weights = Weights::new(model);
        let arch = &model.architecture;
        let network = match (arch, families::spec(arch)) {
            (Architecture::Bert(c), _) => Network::Encoder(Encoder::build(
                c,
                &|name, shape| weights.get(name, shape),
                precision,
            )?),
            (_, Some(spec)) => {
                let spec = spec.map_err(|m| EngineError::Usage {
                    path: model.path.clone(),
                    message: format!("{} hyperparameters: {m}", arch.name()),
                })?;
                Network::Decoder(Decoder::load(spec, &weights)?)
            }
            (_, None) => {
                return Err(EngineError::Unsupported {
                    path: model.path.clone(),
                    arch: arch.name().to_string(),
                })
            }
        };
        let tokenizer = match (&model.tokenizer, model.gguf()) {
            (Some(json), _) => TextTokenizer::from_json(json)?,
            (None, Some(gguf)) => TextTokenizer::from_gguf(gguf)?,
            (None, None) if model.embedded_tokenizer().is_some() => TextTokenizer::from_json_bytes(
                &model.path,
                model.embedded_tokenizer().unwrap_or_default().as_bytes(),
            )?,
            (None, None) => {
                return Err(EngineError::Tokenizer {
                    path: model.path.clone(),
                    message: "no tokenizer.json beside the weights".into(),
                })
            }
        };
        let vocab = match &model.architecture {
            Architecture::Bert(c) => c.vocab_size,
            Architecture::Llama(c) => c.vocab_size,
            Architecture::Gemma3(c) => c.vocab_size,
            Architecture::LlamaLike(c) => c.base.vocab_size,
            Architecture::Other { .. } => usize::MAX,
        };
        // A token id past the embedding table would index out of it.
        if let Some(id) = tokenizer.max_id().filter(|&id| id as usize >= vocab) {
            return Err(EngineError::Tokenizer {
                path: model.path.clone(),
                message: format!("token id {id} is not below the model's vocabulary size {vocab}"),
            });
        }
        Ok(Self {
            network,
            tokenizer,
            load_seconds: started.elapsed().as_secs_f64(),
            path: model.path.clone(),
        })
    }

    /// Bytes of weights the network holds resident.
    pub fn weight_bytes(&self) -> u64 {
        match &self.network {
            Network::Encoder(e) => e.weight_bytes() as u64,
            Network::Decoder(d) => d.weight_bytes() as u64,
        }
    }

    pub fn is_encoder(&self) -> bool {
        matches!(self.network, Network::Encoder(_))
    }

    /// L2-normalised sentence embeddings, one per text.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EngineError> {
        let Network::Encoder(encoder) = &self.network else {
            return Err(self.usage("`embed` needs an encoder model (bert); this is a decoder"));
        };
        let limit = encoder.config.max_position_embeddings;
        let ids = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut ids = self.tokenizer.encode(t)?;
                if ids.len() > limit {
                    // As sentence-transformers does: keep the first tokens
                    // and the closing one ([SEP]).
                    tracing::warn!(
                        "text {} has {} tokens; the model reads {limit}: truncated",
                        i + 1,
                        ids.len()
                    );
                    let last = ids[ids.len() - 1];
                    ids.truncate(limit);
                    ids[limit - 1] = last;
                }
                Ok(ids)
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        // Batches of 32 bound the activations' memory.
        Ok(ids.chunks(32).flat_map(|c| encoder.embed(c)).collect())
    }

    /// Generates up to `max_tokens` after `prompt`, calling `on_text` with each
    /// newly decoded piece of text as soon as it is complete UTF-8.
    pub fn generate(
        &self,
        prompt: &str,
        max_tokens: usize,
        sampling: Sampling,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation, EngineError> {
        let Network::Decoder(decoder) = &self.network else {
            return Err(self.usage(&format!(
                "`generate` needs a decoder model ({}); this is an encoder",
                families::DECODERS
            )));
        };
        let prompt_tokens = self.tokenizer.encode(prompt)?;
        if prompt_tokens.is_empty() {
            return Err(self.usage("the prompt is empty after tokenization"));
        }
        let context = decoder.spec.context;
        if prompt_tokens.len() + max_tokens > context {
            return Err(self.usage(&format!(
                "prompt ({} tokens) + --max-tokens {max_tokens} exceeds the model's context of {context}",
                prompt_tokens.len()
            )));
        }
        let mut sampler = Sampler::new(sampling);
        let mut cache = decoder.new_cache();
        let started = Instant::now();
        let mut logits = decoder.forward(&prompt_tokens, &mut cache, 1);
        let prefill_seconds = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let (mut tokens, mut printed, mut stopped_at_eos) = (Vec::new(), 0usize, false);
        while tokens.len() < max_tokens {
            let next = sampler.next(&logits);
            if self.tokenizer.eos.contains(&next) {
                stopped_at_eos = true;
                break;
            }
            tokens.push(next);
            let text = self.tokenizer.decode(&tokens)?;
            // A token can end inside a multi-byte character: wait for the rest.
            if !text.ends_with('\u{FFFD}') && text.len() > printed && text.is_char_boundary(printed)
            {
                on_text(&text[printed..]);
                printed = text.len();
            }
            if tokens.len() < max_tokens {
                logits = decoder.forward(&[next], &mut cache, 1);
            }
        }
        let text = self.tokenizer.decode(&tokens)?;
        if text.len() > printed && text.is_char_boundary(printed) {
            on_text(&text[printed..]);
        }
        Ok(Generation {
            prompt_tokens,
            tokens,
            text,
            stopped_at_eos,
            prefill_seconds,
            decode_seconds: started.elapsed().as_secs_f64(),
        })
    }

    fn usage(&self, message: &str) -> EngineError {
        EngineError::Usage {
            path: self.path.clone(),
            message: message.into(),
        }
    }
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
