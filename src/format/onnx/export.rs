//! A model to ONNX bytes by scheme (fp32, fp16, static int8 QDQ), and the
//! accuracy of a written file: its graph evaluated from the file's own
//! weights and quantization parameters, against edgeforge's f32 engine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::bert::{self, Storage};
use super::eval::Session;
use super::reader::OnnxFile;
use super::{OnnxError, OPSET};
use crate::engine::weights::Weights;
use crate::engine::{Engine, EngineError, TextTokenizer};
use crate::model::{Architecture, BertConfig, Model};
use crate::quant::calibrate;
use crate::quant::qdq::{self, Int8Options, Int8Plan, QdqError};

/// Tokens per calibration text: longer lines are cut (as sentence encoders
/// are usually fed), which bounds calibration time.
pub const CALIBRATION_MAX_TOKENS: usize = 128;
/// Of the calibration texts, how many measure sensitivity and the cosine budget.
pub const PROBE_TEXTS: usize = 16;

/// An ONNX scheme.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnnxScheme {
    Fp32,
    Fp16,
    /// Static int8 QDQ: int8 per-channel weights, calibrated per-tensor
    /// activations (uint8, or symmetric int8: `Calibration::activations`).
    Int8Qdq,
}

impl OnnxScheme {
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Fp16 => "fp16",
            Self::Int8Qdq => "int8_pc",
        }
    }

    /// Parses a scheme name: `fp32`/`F32`, `fp16`/`F16`, `int8_pc`.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "fp32" | "f32" => Ok(Self::Fp32),
            "fp16" | "f16" => Ok(Self::Fp16),
            "int8_pc" | "int8_qdq" => Ok(Self::Int8Qdq),
            other => Err(format!(
                "scheme `{other}` cannot be written as ONNX (ONNX schemes: fp32, fp16, int8_pc for encoders, q4_0 for decoders)"
            )),
        }
    }
}

/// Static int8 settings.
#[derive(Debug, Clone)]
pub struct Calibration {
    pub file: PathBuf,
    /// Texts used: the first non-empty lines of the file.
    pub texts: usize,
    /// What the planner is asked for.
    pub int8: Int8Options,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: architecture `{arch}` cannot be exported to ONNX as fp32, fp16 or int8_pc: those build BERT-style encoders (a llama decoder exports for onnxruntime-genai with --scheme q4_0)", path.display())]
    Architecture { path: PathBuf, arch: String },
    #[error("{}: {message}", path.display())]
    Input { path: PathBuf, message: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Build(#[from] bert::BuildError),
    #[error(transparent)]
    Qdq(#[from] QdqError),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
}

/// Calibration facts recorded in the file and the report.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationInfo {
    pub file: PathBuf,
    pub sha256: String,
    pub texts: usize,
    pub tokens: usize,
    #[serde(flatten)]
    pub plan: Int8Plan,
}

pub struct Exported {
    pub bytes: Vec<u8>,
    pub calibration: Option<CalibrationInfo>,
}

/// The encoder config, or the error naming what the model is.
pub fn bert_config(model: &Model) -> Result<&BertConfig, ExportError> {
    match &model.architecture {
        Architecture::Bert(c) => Ok(c),
        other => Err(ExportError::Architecture {
            path: model.path.clone(),
            arch: other.name().to_string(),
        }),
    }
}

fn tokenizer(model: &Model) -> Result<TextTokenizer, ExportError> {
    match (&model.tokenizer, model.gguf()) {
        (Some(json), _) => Ok(TextTokenizer::from_json(json)?),
        (None, Some(g)) => Ok(TextTokenizer::from_gguf(g)?),
        (None, None) => Err(ExportError::Input {
            path: model.path.clone(),
            message:
                "no tokenizer.json beside the weights (calibration and the accuracy check need it)"
                    .into(),
        }),
    }
}

/// Token ids of `texts`, cut to `max` tokens (keeping the closing token).
pub fn tokenize(
    tok: &TextTokenizer,
    texts: &[String],
    max: usize,
) -> Result<Vec<Vec<u32>>, ExportError> {
    texts
        .iter()
        .map(|t| {
            let mut ids = tok.encode(t)?;
            if ids.len() > max {
                let last = ids[ids.len() - 1];
                ids.truncate(max);
                ids[max - 1] = last;
            }
            Ok(ids)
        })
        .collect()
}

pub fn export(
    model: &Model,
    scheme: OnnxScheme,
    calibration: Option<&Calibration>,
) -> Result<Exported, ExportError> {
    let c = bert_config(model)?;
    let weights = Weights::new(model);
    let w = |name: &str, shape: &[usize]| weights.get(name, shape);
    let mut metadata = BTreeMap::from([
        ("edgeforge.scheme".to_string(), scheme.name().to_string()),
        ("edgeforge.opset".to_string(), OPSET.to_string()),
    ]);
    let (storage, info) = match scheme {
        OnnxScheme::Fp32 => (Storage::F32, None),
        OnnxScheme::Fp16 => (Storage::F16, None),
        OnnxScheme::Int8Qdq => {
            let cal = calibration.ok_or_else(|| ExportError::Input {
                path: model.path.clone(),
                message: "static int8 needs calibration text: pass --calibration FILE (one text per line)".into(),
            })?;
            let text = fs_err::read_to_string(&cal.file).map_err(|e| ExportError::Input {
                path: cal.file.clone(),
                message: format!("Cannot read calibration text: {e}"),
            })?;
            let lines: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .take(cal.texts)
                .map(str::to_string)
                .collect();
            if lines.is_empty() {
                return Err(ExportError::Input {
                    path: cal.file.clone(),
                    message: "the calibration file has no non-empty line".into(),
                });
            }
            let seqs = tokenize(
                &tokenizer(model)?,
                &lines,
                CALIBRATION_MAX_TOKENS.min(c.max_position_embeddings),
            )?;
            let probe = &seqs[..seqs.len().min(PROBE_TEXTS)];
            let opts = &cal.int8;
            let plan = qdq::plan_int8(c, &w, &seqs, probe, opts)?;
            let sha = hex::encode(Sha256::digest(lines.join("\n").as_bytes()));
            metadata.insert("edgeforge.calibration.sha256".into(), sha.clone());
            metadata.insert("edgeforge.calibration.method".into(), plan.method.clone());
            metadata.insert(
                "edgeforge.calibration.texts".into(),
                lines.len().to_string(),
            );
            metadata.insert("edgeforge.float_ops".into(), plan.float_ops.join(","));
            let range = if opts.reduce_range {
                "[-63, 63]"
            } else {
                "[-127, 127]"
            };
            metadata.insert("edgeforge.weight_range".into(), range.into());
            metadata.insert(
                "edgeforge.activation_type".into(),
                opts.activations.name().into(),
            );
            if let Some(alpha) = opts.smooth_alpha {
                metadata.insert("edgeforge.smooth_alpha".into(), alpha.to_string());
            }
            let storage = Storage::Int8(plan.plan.clone());
            let info = CalibrationInfo {
                file: cal.file.clone(),
                sha256: sha,
                texts: lines.len(),
                tokens: seqs.iter().map(Vec::len).sum(),
                plan,
            };
            (storage, Some(info))
        }
    };
    let graph = bert::build(c, &w, &storage, &metadata)?;
    Ok(Exported {
        bytes: super::encode(&graph.model),
        calibration: info,
    })
}

/// Accuracy of an exported file against the f32 engine.
#[derive(Debug, Clone, Serialize)]
pub struct FileAccuracy {
    pub eval_texts: usize,
    pub cosine_mean: f64,
    pub cosine_min: f64,
}

/// Evaluates the graph in `file` (read back from disk) on `texts` and
/// compares its sentence embeddings with `model`'s f32 engine.
pub fn accuracy(file: &Path, model: &Model, texts: &[String]) -> Result<FileAccuracy, ExportError> {
    let onnx = OnnxFile::open(file)?;
    let session = Session::new(&onnx.model, file)?;
    drop(onnx);
    let c = bert_config(model)?;
    let seqs = tokenize(&tokenizer(model)?, texts, c.max_position_embeddings)?;
    let got = calibrate::embed_all(&session, &seqs)?;
    let want = Engine::load(model)?.embed(texts)?;
    let cos: Vec<f64> = got
        .iter()
        .zip(&want)
        .map(|(a, b)| qdq::cosine(a, b))
        .collect();
    Ok(FileAccuracy {
        eval_texts: texts.len(),
        cosine_mean: cos.iter().sum::<f64>() / cos.len().max(1) as f64,
        cosine_min: cos.iter().copied().fold(1.0, f64::min),
    })
}
