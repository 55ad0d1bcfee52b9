//! The pipeline: model → float graph → scheme pass (calibrating for int8)
//! → bytes; and the accuracy of written bytes, read back and evaluated,
//! against the engine's f32 encoder.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::calibrate::{self, Method};
use super::eval::{EvalError, Evaluator, Value};
use super::graph::Graph;
use super::read::ReadError;
use super::{bert, lower, read, write};
use crate::engine::weights::Weights;
use crate::engine::{EngineError, Network, TextTokenizer};
use crate::model::{Architecture, Model};

/// Weight and activation formats of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Fp32,
    /// fp16 weights, DEQUANTIZE to f32 (arithmetic in f32).
    Fp16,
    /// Full-integer int8 (per-channel weights, calibrated activations).
    Int8,
}

impl Scheme {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" => Self::Fp32,
            "fp16" | "f16" => Self::Fp16,
            "int8_pc" | "int8" => Self::Int8,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Fp16 => "fp16",
            Self::Int8 => "int8_pc",
        }
    }
}

/// The sentences accuracy is measured on (sentence-transformers' examples,
/// the ones `tests/fixtures/refs/minilm_reference.json` holds).
pub const REFERENCE_SENTENCES: [&str; 5] = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "This is an example sentence",
    "Each sentence is converted",
];

pub struct ExportOptions<'a> {
    pub scheme: Scheme,
    pub seq_len: usize,
    /// Calibration text, one sample per non-empty line (int8 only).
    pub calibration: Option<&'a Path>,
    pub calibration_lines: usize,
    pub method: Method,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Calibration {
    pub file: PathBuf,
    pub sha256: String,
    pub texts: usize,
    pub method: String,
}

pub struct Exported {
    pub bytes: Vec<u8>,
    pub ops: Vec<(&'static str, usize)>,
    pub calibration: Option<Calibration>,
}

#[derive(Debug, thiserror::Error)]
pub enum TfliteError {
    #[error("{}: architecture `{arch}` cannot be exported to TFLite: the writer expresses BERT-style encoders only", path.display())]
    Unsupported { path: PathBuf, arch: String },
    #[error("{}: `--seq-len {seq}` must be between 2 and the model's {max} positions", path.display())]
    SeqLen {
        path: PathBuf,
        seq: usize,
        max: usize,
    },
    #[error("int8_pc needs calibration text: pass --calibration FILE (one text per line)")]
    NoCalibration,
    #[error("{}: {message}", path.display())]
    Calibration { path: PathBuf, message: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{}: not a TFLite model edgeforge reads: {source}", path.display())]
    Read { path: PathBuf, source: ReadError },
    #[error("evaluating the graph: {0}")]
    Eval(#[from] EvalError),
    #[error(transparent)]
    Lower(#[from] lower::LowerError),
}

fn bert_config(model: &Model) -> Result<&crate::model::BertConfig, TfliteError> {
    match &model.architecture {
        Architecture::Bert(c) => Ok(c),
        other => Err(TfliteError::Unsupported {
            path: model.path.clone(),
            arch: other.name().to_string(),
        }),
    }
}

fn tokenizer(model: &Model) -> Result<TextTokenizer, TfliteError> {
    let json = model
        .tokenizer
        .as_ref()
        .ok_or_else(|| EngineError::Tokenizer {
            path: model.path.clone(),
            message: "no tokenizer.json beside the weights".into(),
        })?;
    Ok(TextTokenizer::from_json(json)?)
}

/// Token ids padded (or truncated, keeping the closing token) to `seq`,
/// with the attention mask.
pub fn fixed_length(mut ids: Vec<u32>, seq: usize) -> (Vec<i32>, Vec<i32>) {
    if ids.len() > seq {
        let last = ids[ids.len() - 1];
        ids.truncate(seq);
        ids[seq - 1] = last;
    }
    let n = ids.len();
    let mut out: Vec<i32> = ids.into_iter().map(|t| t as i32).collect();
    out.resize(seq, 0);
    let mask = (0..seq).map(|i| (i < n) as i32).collect();
    (out, mask)
}

/// Builds the float graph of `model` at `seq` tokens.
pub fn float_graph(
    model: &Model,
    seq: usize,
    norm: bert::NormForm,
) -> Result<bert::BertGraph, TfliteError> {
    let c = bert_config(model)?;
    if seq < 2 || seq > c.max_position_embeddings {
        return Err(TfliteError::SeqLen {
            path: model.path.clone(),
            seq,
            max: c.max_position_embeddings,
        });
    }
    let weights = Weights::new(model);
    let mut g = bert::build(c, &|name, shape| weights.get(name, shape), seq, norm)?;
    g.graph.description = format!("edgeforge {}: {}", env!("CARGO_PKG_VERSION"), c.hidden_size);
    Ok(g)
}

pub fn export(model: &Model, opts: &ExportOptions) -> Result<Exported, TfliteError> {
    // Float schemes keep the GPU delegates' LayerNorm ops; int8 needs the L2 form.
    let norm = match opts.scheme {
        Scheme::Int8 => bert::NormForm::L2,
        _ => bert::NormForm::Moments,
    };
    let bert = float_graph(model, opts.seq_len, norm)?;
    let (graph, calibration) = match opts.scheme {
        Scheme::Fp32 => (bert.graph.clone(), None),
        Scheme::Fp16 => (lower::to_fp16(&bert.graph), None),
        Scheme::Int8 => {
            let path = opts.calibration.ok_or(TfliteError::NoCalibration)?;
            let cal_err = |message: String| TfliteError::Calibration {
                path: path.to_path_buf(),
                message,
            };
            let text = fs_err::read(path).map_err(|e| cal_err(e.to_string()))?;
            let sha256 = hex::encode(Sha256::digest(&text));
            let text = String::from_utf8(text).map_err(|_| cal_err("not UTF-8 text".into()))?;
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .take(opts.calibration_lines)
                .collect();
            if lines.is_empty() {
                return Err(cal_err(
                    "no text to calibrate on (every line is empty)".into(),
                ));
            }
            let tok = tokenizer(model)?;
            let samples = lines
                .iter()
                .map(|l| Ok(fixed_length(tok.encode(l)?, opts.seq_len)))
                .collect::<Result<Vec<_>, EngineError>>()?;
            let ranges = calibrate::calibrate(&bert, &samples, opts.method)?;
            let graph = lower::to_int8(&bert, &ranges)?;
            let info = Calibration {
                file: path.to_path_buf(),
                sha256,
                texts: lines.len(),
                method: opts.method.name(),
            };
            (graph, Some(info))
        }
    };
    let mut graph = graph;
    graph.description = format!(
        "edgeforge {} {} BERT encoder, seq {}",
        env!("CARGO_PKG_VERSION"),
        opts.scheme.name(),
        opts.seq_len
    );
    Ok(Exported {
        bytes: write::write(&graph),
        ops: graph.op_census(),
        calibration,
    })
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Accuracy {
    /// Mean cosine of the file's embeddings to the f32 engine's.
    pub mean_cosine: f64,
    pub min_cosine: f64,
    pub sentences: usize,
    pub seq_len: usize,
}

/// A TFLite encoder file read back, ready to embed token sequences at its
/// fixed length.
pub struct FileEmbedder {
    graph: Graph,
    path: PathBuf,
    /// The file's sequence length.
    pub seq: usize,
}

impl FileEmbedder {
    pub fn new(bytes: &[u8], file: &Path) -> Result<Self, TfliteError> {
        let read_error = |m: &str| TfliteError::Read {
            path: file.to_path_buf(),
            source: ReadError(m.into()),
        };
        let graph: Graph = read::read(bytes).map_err(|source| TfliteError::Read {
            path: file.to_path_buf(),
            source,
        })?;
        let [ids_t, _] = graph.inputs.as_slice() else {
            return Err(read_error(
                "expected two inputs (input_ids, attention_mask)",
            ));
        };
        let seq = graph.tensors[*ids_t]
            .shape
            .last()
            .copied()
            .unwrap_or(0)
            .max(0) as usize;
        Ok(Self {
            graph,
            path: file.to_path_buf(),
            seq,
        })
    }

    /// The embedding the file computes for each of `ids` (cut to its length,
    /// keeping the closing token; padded with mask 0).
    pub fn embed(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, TfliteError> {
        let eval = Evaluator::new(&self.graph)?;
        ids.iter()
            .map(|ids| {
                let (fixed, mask) = fixed_length(ids.clone(), self.seq);
                let out = eval.run(vec![Value::I32(fixed), Value::I32(mask)], None)?;
                match out.into_iter().next() {
                    Some(Value::F32(got)) => Ok(got),
                    _ => Err(TfliteError::Read {
                        path: self.path.clone(),
                        source: ReadError("the output is not float32".into()),
                    }),
                }
            })
            .collect()
    }
}

/// Reads `bytes` back (as a file is read), runs it on `texts` and compares
/// its embeddings with the f32 engine's for the same model.
pub fn accuracy(
    bytes: &[u8],
    file: &Path,
    model: &Model,
    texts: &[&str],
) -> Result<Accuracy, TfliteError> {
    bert_config(model)?;
    let embedder = FileEmbedder::new(bytes, file)?;
    let seq = embedder.seq;
    let engine = crate::engine::Engine::load(model)?;
    let Network::Encoder(encoder) = &engine.network else {
        return Err(TfliteError::Unsupported {
            path: model.path.clone(),
            arch: model.architecture.name().into(),
        });
    };
    let ids = texts
        .iter()
        .map(|t| engine.tokenizer.encode(t))
        .collect::<Result<Vec<_>, _>>()?;
    let got = embedder.embed(&ids)?;
    let mut cosines = Vec::with_capacity(texts.len());
    for (ids, got) in ids.into_iter().zip(&got) {
        let (fixed, mask) = fixed_length(ids, seq);
        let reference = encoder
            .embed(&[fixed
                .iter()
                .zip(&mask)
                .filter(|(_, &m)| m == 1)
                .map(|(&t, _)| t as u32)
                .collect()])
            .remove(0);
        cosines.push(cosine(got, &reference));
    }
    let mean = cosines.iter().sum::<f64>() / cosines.len().max(1) as f64;
    let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(Accuracy {
        mean_cosine: mean,
        min_cosine: min,
        sentences: cosines.len(),
        seq_len: seq,
    })
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}
