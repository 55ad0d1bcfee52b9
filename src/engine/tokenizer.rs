//! Text to token ids and back with the HF `tokenizers` crate, built either
//! from a `tokenizer.json` or from a GGUF file's `tokenizer.ggml.*` metadata
//! (byte-level BPE for LLaMA-style models, WordPiece for BERT GGUFs we
//! write), or with our SentencePiece BPE (`spm`) for GGUF `llama` tokenizers.

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::format::gguf::{GgufFile, MetaValue};

use super::spm::SentencePiece;
use super::EngineError;

enum Backend {
    Hf(Box<Tokenizer>),
    SentencePiece(Box<SentencePiece>),
}

/// A tokenizer plus the special-token facts generation needs.
pub struct TextTokenizer {
    inner: Backend,
    /// Prepend this id to prompts (GGUF `add_bos_token`).
    pub bos: Option<u32>,
    /// Generation stops at any of these.
    pub eos: Vec<u32>,
    source: PathBuf,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, with its shipped padding and truncation turned
    /// off: a fixed 128-token window would change every embedding.
    pub fn from_json(path: &Path) -> Result<Self, EngineError> {
        let bytes = crate::guard::read_bytes(path, crate::guard::Cap::TOKENIZER).map_err(|e| {
            EngineError::Tokenizer {
                path: path.to_path_buf(),
                message: e.message,
            }
        })?;
        Self::from_json_bytes(path, &bytes)
    }

    /// A `tokenizer.json` held in memory (embedded in a safetensors file),
    /// `path` naming where it came from.
    pub fn from_json_bytes(path: &Path, bytes: &[u8]) -> Result<Self, EngineError> {
        let err = |m: String| EngineError::Tokenizer {
            path: path.to_path_buf(),
            message: m,
        };
        let mut inner = Tokenizer::from_bytes(bytes).map_err(|e| err(e.to_string()))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| err(e.to_string()))?;
        let eos = ["</s>", "<|endoftext|>", "<|im_end|>", "[SEP]"]
            .iter()
            .filter_map(|t| inner.token_to_id(t))
            .take(1)
            .collect();
        Ok(Self {
            inner: Backend::Hf(Box::new(inner)),
            bos: None,
            eos,
            source: path.to_path_buf(),
        })
    }

    /// The largest token id, special tokens included.
    pub fn max_id(&self) -> Option<u32> {
        match &self.inner {
            Backend::Hf(t) => t.get_vocab(true).into_values().max(),
            Backend::SentencePiece(sp) => sp.vocabulary().map(|(_, i)| i).max(),
        }
    }

    /// Token text to id, special tokens included (to compare two tokenizers).
    pub fn vocabulary(&self) -> std::collections::BTreeMap<String, u32> {
        match &self.inner {
            Backend::Hf(t) => t.get_vocab(true).into_iter().collect(),
            Backend::SentencePiece(sp) => sp.vocabulary().map(|(p, i)| (p.into(), i)).collect(),
        }
    }

    /// Builds the tokenizer a GGUF file describes.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, EngineError> {
        let path = file.path().to_path_buf();
        let err = |m: String| EngineError::Tokenizer {
            path: path.clone(),
            message: m,
        };
        let strings = |key: &str| -> Result<Vec<String>, EngineError> {
            let Some(MetaValue::Array(a)) = file.get(key) else {
                return Err(err(format!("`{key}` is missing or not an array")));
            };
            a.values
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err(format!("`{key}` is not a string array")))
        };
        let id = |key: &str| file.get_u64(key).map(|v| v as u32);
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<i64> = match file.get("tokenizer.ggml.token_type") {
            Some(MetaValue::Array(a)) => a
                .values
                .iter()
                .map(|v| v.as_u64().map_or(1, |t| t as i64))
                .collect(),
            _ => vec![1; tokens.len()],
        };
        let model = file.get_str("tokenizer.ggml.model").unwrap_or("");
        let add_bos = matches!(
            file.get("tokenizer.ggml.add_bos_token"),
            Some(MetaValue::Bool(true))
        );
        let bos = if add_bos {
            id("tokenizer.ggml.bos_token_id")
        } else {
            None
        };
        let eos: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
        if model == "llama" {
            let scores: Vec<f32> = match file.get("tokenizer.ggml.scores") {
                Some(MetaValue::Array(a)) => a
                    .values
                    .iter()
                    .map(|v| v.as_f64().map(|s| s as f32))
                    .collect::<Option<_>>()
                    .ok_or_else(|| err("`tokenizer.ggml.scores` is not a number array".into()))?,
                _ => {
                    return Err(err(
                        "`tokenizer.ggml.scores` is missing or not an array".into()
                    ))
                }
            };
            // llama.cpp's default for SentencePiece vocabularies is to add one.
            let space_prefix = !matches!(
                file.get("tokenizer.ggml.add_space_prefix"),
                Some(MetaValue::Bool(false))
            );
            let n = tokens.len();
            for (key, v) in [("bos", bos), ("eos", eos.first().copied())] {
                if v.is_some_and(|v| v as usize >= n) {
                    return Err(err(format!(
                        "{key} token id is not below the vocabulary size {n}"
                    )));
                }
            }
            let unknown = id("tokenizer.ggml.unknown_token_id").filter(|&u| (u as usize) < n);
            let sp =
                SentencePiece::new(tokens, scores, types, unknown, space_prefix).map_err(err)?;
            return Ok(Self {
                inner: Backend::SentencePiece(Box::new(sp)),
                bos,
                eos,
                source: file.path().to_path_buf(),
            });
        }
        let mut inner = match model {
            "gpt2" => {
                let merges = strings("tokenizer.ggml.merges")?
                    .into_iter()
                    .map(|m| match m.split_once(' ') {
                        Some((a, b)) => Ok((a.to_string(), b.to_string())),
                        None => Err(err(format!("merge `{m}` has no space"))),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let vocab: Vec<(String, u32)> = tokens.iter().cloned().zip(0u32..).collect();
                let bpe = BPE::builder()
                    .vocab_and_merges(
                        vocab
                            .into_iter()
                            .collect::<tokenizers::models::bpe::Vocab>(),
                        merges,
                    )
                    .build()
                    .map_err(|e| err(e.to_string()))?;
                let mut t = Tokenizer::new(bpe);
                t.with_pre_tokenizer(Some(gpt2_pre_tokenizer(file.get_str("tokenizer.ggml.pre"))));
                t.with_decoder(Some(ByteLevelDecoder::default()));
                t
            }
            "bert" => {
                // Our GGUF writer (like llama.cpp's converter) marks word starts
                // with U+2581 and strips `##`; undo that for WordPiece.
                let vocab: Vec<(String, u32)> = tokens
                    .iter()
                    .map(|t| {
                        if t.starts_with('[') && t.ends_with(']') {
                            t.clone()
                        } else if let Some(word) = t.strip_prefix('\u{2581}') {
                            word.to_string()
                        } else {
                            format!("##{t}")
                        }
                    })
                    .zip(0u32..)
                    .collect();
                let wp = WordPiece::builder()
                    .vocab(
                        vocab
                            .into_iter()
                            .collect::<tokenizers::models::bpe::Vocab>(),
                    )
                    .unk_token("[UNK]".into())
                    .build()
                    .map_err(|e| err(e.to_string()))?;
                let cls = id("tokenizer.ggml.cls_token_id").or(id("tokenizer.ggml.bos_token_id"));
                let sep =
                    id("tokenizer.ggml.seperator_token_id").or(id("tokenizer.ggml.eos_token_id"));
                let (Some(cls), Some(sep)) = (cls, sep) else {
                    return Err(err(
                        "BERT tokenizer needs cls and separator token ids".into()
                    ));
                };
                for (key, id) in [("cls", cls), ("separator", sep)] {
                    if id as usize >= tokens.len() {
                        return Err(err(format!(
                            "{key} token id {id} is not below the vocabulary size {}",
                            tokens.len()
                        )));
                    }
                }
                let mut t = Tokenizer::new(wp);
                t.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
                    .map_err(|e| err(e.to_string()))?;
                t.with_pre_tokenizer(Some(BertPreTokenizer));
                t.with_post_processor(Some(BertProcessing::new(
                    (tokens[sep as usize].clone(), sep),
                    (tokens[cls as usize].clone(), cls),
                )));
                t.with_decoder(Some(WordPieceDecoder::default()));
                t
            }
            other => {
                return Err(err(format!(
                    "tokenizer model `{other}` is not supported (supported: gpt2, bert, llama)"
                )))
            }
        };
        // Control tokens (type 3) such as <|im_start|> are matched whole, never split.
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 3)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            inner: Backend::Hf(Box::new(inner)),
            bos,
            eos,
            source: file.path().to_path_buf(),
        })
    }

    /// Token ids of `text`, with the special tokens the model expects.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let mut ids = Vec::new();
        ids.extend(self.bos);
        match &self.inner {
            Backend::Hf(t) => {
                let enc = t
                    .encode(text, true)
                    .map_err(|e| self.error(e.to_string()))?;
                ids.extend_from_slice(enc.get_ids());
            }
            Backend::SentencePiece(sp) => ids.extend(sp.encode(text)),
        }
        Ok(ids)
    }

    /// Text of `ids`, special tokens left out (a character cut between
    /// byte tokens shows as U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        match &self.inner {
            Backend::Hf(t) => t.decode(ids, true).map_err(|e| self.error(e.to_string())),
            Backend::SentencePiece(sp) => Ok(String::from_utf8_lossy(&sp.decode(ids)).into_owned()),
        }
    }

    /// The token's own string (for reports and tests).
    pub fn token(&self, id: u32) -> Option<String> {
        match &self.inner {
            Backend::Hf(t) => t.id_to_token(id),
            Backend::SentencePiece(sp) => sp.piece(id).map(str::to_string),
        }
    }

    /// The tokenizer as Hugging Face `tokenizer.json` text (what other
    /// runtimes load); `None` for SentencePiece vocabularies, which have no
    /// such form here.
    pub fn hf_json(&self) -> Option<Result<String, EngineError>> {
        match &self.inner {
            Backend::Hf(t) => Some(t.to_string(false).map_err(|e| self.error(e.to_string()))),
            Backend::SentencePiece(_) => None,
        }
    }

    fn error(&self, message: String) -> EngineError {
        EngineError::Tokenizer {
            path: self.source.clone(),
            message,
        }
    }
}

/// llama.cpp's pre-tokenizer families that differ from plain GPT-2 byte-level
/// splitting; `smollm` splits digits one by one first.
fn gpt2_pre_tokenizer(pre: Option<&str>) -> PreTokenizerWrapper {
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        Some("smollm") => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        _ => byte_level.into(),
    }
}
