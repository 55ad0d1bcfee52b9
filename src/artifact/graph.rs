//! Accelerator payloads: an ONNX or TFLite graph (`model.onnx`,
//! `model.tflite`) with the model's config and tokenizer beside it, described
//! the way `package` and `verify` describe GGUF and safetensors models: the
//! weights' types and bytes, what a runtime needs to load it, and the
//! accuracy of what the file computes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::accuracy::Accuracy;
use super::manifest::{Compatibility, Quantization};
use super::ArtifactError;
use crate::format::onnx::proto::data_type;
use crate::format::onnx::reader::OnnxFile;
use crate::format::tflite::graph::ElemType;
use crate::model::config::{from_hf_config, Architecture};
use crate::model::Model;

/// Files a graph payload carries beside the graph: what a loader of the
/// format expects next to it (the architecture, the tokenizer).
pub const SIDE_FILES: [&str; 7] = [
    "calibration.txt",
    "config.json",
    "genai_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GraphFormat {
    Onnx,
    Tflite,
}

impl GraphFormat {
    /// The format's name in target profiles (`[[runtimes]] format`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Onnx => "onnx",
            Self::Tflite => "tflite",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "onnx" => Some(Self::Onnx),
            "tflite" => Some(Self::Tflite),
            _ => None,
        }
    }

    /// The graph's file name inside an artifact.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Onnx => "model.onnx",
            Self::Tflite => "model.tflite",
        }
    }

    fn of_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "onnx" => Some(Self::Onnx),
            "tflite" => Some(Self::Tflite),
            _ => None,
        }
    }
}

/// An opened graph payload.
pub struct GraphPayload {
    pub file: PathBuf,
    pub format: GraphFormat,
    /// The graph and its side files, sorted.
    pub files: Vec<PathBuf>,
    /// From the `config.json` beside the graph.
    pub architecture: Architecture,
    pub quantization: Quantization,
    pub compatibility: Compatibility,
}

/// The graph file `path` names: `.onnx`/`.tflite` itself, or inside a
/// folder its `model.onnx`/`model.tflite`, else its only graph file.
pub fn find(path: &Path) -> Option<(PathBuf, GraphFormat)> {
    if path.is_dir() {
        let named = [GraphFormat::Onnx, GraphFormat::Tflite]
            .into_iter()
            .map(|f| (path.join(f.file_name()), f))
            .find(|(p, _)| p.is_file());
        if named.is_some() {
            return named;
        }
        let mut graphs: Vec<(PathBuf, GraphFormat)> = fs_err::read_dir(path)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .filter_map(|p| GraphFormat::of_path(&p).map(|f| (p, f)))
            .collect();
        return (graphs.len() == 1).then(|| graphs.remove(0));
    }
    GraphFormat::of_path(path).map(|f| (path.to_path_buf(), f))
}

impl GraphPayload {
    pub fn open(file: &Path, format: GraphFormat) -> Result<Self, ArtifactError> {
        let dir = file.parent().unwrap_or(Path::new("."));
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(ArtifactError::at(
                file,
                "a graph payload needs the model's config.json beside it (the architecture: copy the source model's)",
            ));
        }
        let config = crate::guard::read_text(&config_path, crate::guard::Cap::JSON)
            .map_err(|e| ArtifactError::at(&config_path, e.message))?;
        let architecture =
            from_hf_config(&config).map_err(|m| ArtifactError::at(&config_path, m))?;
        architecture
            .check()
            .map_err(|m| ArtifactError::at(&config_path, m))?;
        let (quantization, compatibility) = describe(file, format)?;
        let mut files = vec![file.to_path_buf()];
        files.extend(
            SIDE_FILES
                .iter()
                .map(|n| dir.join(n))
                .filter(|p| p.is_file()),
        );
        files.sort();
        Ok(Self {
            file: file.to_path_buf(),
            format,
            files,
            architecture,
            quantization,
            compatibility,
        })
    }

    /// The lowest precision its weights are stored in: what an accelerator
    /// must run for the graph to run on it.
    pub fn main_scheme(&self) -> &'static str {
        main_scheme(&self.quantization.tensor_types)
    }

    /// The sentence embeddings the file computes for `texts`, with the
    /// tokenizer beside it: what the graph's runtime would return, computed
    /// by edgeforge's evaluator of the format (QDQ and TFLite integer
    /// semantics included).
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ArtifactError> {
        let dir = self.file.parent().unwrap_or(Path::new("."));
        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.is_file() {
            return Err(ArtifactError::at(
                &self.file,
                "no tokenizer.json beside the graph (copy the source model's)",
            ));
        }
        let tok = crate::engine::TextTokenizer::from_json(&tokenizer)
            .map_err(|e| at(&tokenizer, e.to_string()))?;
        let fail = |e: String| at(&self.file, e);
        // Cut as the ONNX graph's position table allows (TFLite cuts to its own length).
        let max = match self.format {
            GraphFormat::Onnx => crate::memory::max_context(&self.architecture).unwrap_or(512),
            GraphFormat::Tflite => u64::MAX,
        } as usize;
        let ids = crate::format::onnx::export::tokenize(&tok, texts, max)
            .map_err(|e| at(&tokenizer, e.to_string()))?;
        match self.format {
            GraphFormat::Onnx => {
                let onnx = OnnxFile::open(&self.file).map_err(|e| fail(e.to_string()))?;
                let session = crate::format::onnx::eval::Session::new(&onnx.model, &self.file)
                    .map_err(|e| fail(e.to_string()))?;
                crate::quant::calibrate::embed_all(&session, &ids).map_err(|e| fail(e.to_string()))
            }
            GraphFormat::Tflite => {
                let bytes = fs_err::read(&self.file).map_err(|e| fail(e.to_string()))?;
                crate::format::tflite::export::FileEmbedder::new(&bytes, &self.file)
                    .and_then(|f| f.embed(&ids))
                    .map_err(|e| fail(e.to_string()))
            }
        }
    }

    /// Mean cosine of the file's sentence embeddings to `reference`'s f32
    /// engine on `texts`, computed from the file read back.
    pub fn accuracy(&self, reference: &Model, texts: &[String]) -> Result<Accuracy, ArtifactError> {
        if self.architecture.is_decoder() {
            return self.decoder_accuracy(reference, texts);
        }
        let cosine_mean = match self.format {
            GraphFormat::Onnx => {
                crate::format::onnx::export::accuracy(&self.file, reference, texts)
                    .map_err(|e| at(&self.file, e.to_string()))?
                    .cosine_mean
            }
            GraphFormat::Tflite => {
                let bytes = fs_err::read(&self.file)
                    .map_err(|e| ArtifactError::at(&self.file, e.to_string()))?;
                let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                crate::format::tflite::accuracy(&bytes, &self.file, reference, &texts)
                    .map_err(|e| at(&self.file, e.to_string()))?
                    .mean_cosine
            }
        };
        let round6 = |x: f64| (x * 1e6).round() / 1e6;
        Ok(Accuracy {
            cosine_mean: Some(round6(cosine_mean)),
            cosine_drop: Some(round6(1.0 - cosine_mean)),
            ..Accuracy::unmeasured(texts)
        })
    }

    /// A decoder graph's next-token distributions against `reference`'s f32
    /// engine on each text's tokens (the reference's tokenizer), computed by
    /// edgeforge's evaluator from the file read back: perplexity, top-1
    /// agreement and mean KL divergence as `measure` gives them for GGUF.
    fn decoder_accuracy(
        &self,
        reference: &Model,
        texts: &[String],
    ) -> Result<Accuracy, ArtifactError> {
        let fail = |e: String| at(&self.file, e);
        if self.format != GraphFormat::Onnx {
            return Err(fail("edgeforge writes decoders as ONNX graphs only".into()));
        }
        let onnx = OnnxFile::open(&self.file).map_err(|e| fail(e.to_string()))?;
        let session = crate::format::onnx::eval::Session::new(&onnx.model, &self.file)
            .map_err(|e| fail(e.to_string()))?;
        drop(onnx);
        let engine = crate::engine::Engine::load(reference)?;
        let crate::engine::Network::Decoder(decoder) = &engine.network else {
            return Err(ArtifactError::at(
                &reference.path,
                "the reference is not a decoder, but the graph is",
            ));
        };
        let vocab = decoder.spec.vocab;
        let mut positions = Vec::new();
        for text in texts {
            let tokens = engine.tokenizer.encode(text)?;
            if tokens.len() < 2 {
                continue;
            }
            let rows = crate::format::onnx::eval::decoder_logits(&session, &tokens)
                .map_err(|e| fail(e.to_string()))?;
            if rows.len() != tokens.len() || rows.iter().any(|r| r.len() != vocab) {
                return Err(fail(format!(
                    "the graph gave {} rows of logits for {} tokens (vocabulary {vocab})",
                    rows.len(),
                    tokens.len()
                )));
            }
            let logits: Vec<f32> = rows.concat();
            let base = decoder.forward(&tokens, &mut decoder.new_cache(), tokens.len());
            positions.extend(crate::eval::decoder::score_against(
                &logits, &base, vocab, &tokens,
            ));
        }
        let mut acc = Accuracy::unmeasured(texts);
        super::accuracy::decoder_figures(&mut acc, &positions)?;
        Ok(acc)
    }
}

/// `compatibility.requires` of an ONNX graph whose activations are
/// quantized with zero points (uint8, or int8 off zero), which runtimes with
/// `symmetric_activations` (TensorRT) cannot take.
pub const ASYMMETRIC_QDQ: &str = "onnx q/dq activation zero points";

/// Why runtime `r` cannot run a graph whose lowest-precision weights are
/// `scheme` and which needs `requires`, if it cannot.
pub fn runtime_refuses(
    r: &crate::target::schema::Runtime,
    scheme: Option<&str>,
    requires: &[String],
) -> Option<String> {
    let name = &r.name;
    match scheme {
        Some(s) if !r.weight_schemes.iter().any(|w| w == s) => Some(format!(
            "runtime {name} runs {}, not the payload's {s}",
            r.weight_schemes.join(", ")
        )),
        _ if r.symmetric_activations && requires.iter().any(|q| q == ASYMMETRIC_QDQ) => {
            Some(format!(
                "runtime {name} takes Q/DQ with zero points of 0 only; the payload's activations have zero points (export them with --activation-type int8-symmetric)"
            ))
        }
        _ => None,
    }
}

/// The lowest precision among a graph's weight types (counts by scheme name).
pub fn main_scheme(types: &BTreeMap<String, u64>) -> &'static str {
    [
        "int4_g128_sym",
        "int4_g64_sym",
        "int4_g32_sym",
        "int8_pc",
        "int8_pt",
        "F16",
    ]
    .into_iter()
    .find(|s| types.contains_key(*s))
    .unwrap_or("F32")
}

/// What a graph file holds and needs, read from the file alone: its weights'
/// types and bytes, the opset or schema and the ops a runtime must have.
pub fn describe(
    file: &Path,
    format: GraphFormat,
) -> Result<(Quantization, Compatibility), ArtifactError> {
    let bytes = crate::guard::read_bytes(file, crate::guard::Cap::TOKENIZER)
        .map_err(|e| ArtifactError::at(file, e.message))?;
    let (weights, requires) = match format {
        GraphFormat::Onnx => onnx_weights(&bytes, file)?,
        GraphFormat::Tflite => tflite_weights(&bytes, file)?,
    };
    Ok((
        weights.quantization(format),
        Compatibility {
            format: format.name().into(),
            gguf_version: None,
            requires,
            checked_with: super::manifest::checked_with(format.name()),
        },
    ))
}

/// An error about `file` whose message may already start with its path (the
/// format readers name the file themselves): the path said once.
fn at(file: &Path, message: String) -> ArtifactError {
    let prefix = format!("{}: ", file.display());
    let message = message
        .strip_prefix(&prefix)
        .unwrap_or(&message)
        .to_string();
    ArtifactError::at(file, message)
}

/// Weight tensors by name: their type (in target-profile scheme names),
/// element count and stored bytes; plus the bytes of quantization side data.
#[derive(Default)]
struct Weights {
    tensors: BTreeMap<String, (String, u64, u64)>,
    side_bytes: u64,
}

impl Weights {
    fn quantization(&self, format: GraphFormat) -> Quantization {
        let mut tensor_types = BTreeMap::new();
        let (mut parameters, mut bytes) = (0u64, self.side_bytes);
        for (ty, elems, n) in self.tensors.values() {
            *tensor_types.entry(ty.clone()).or_insert(0) += 1;
            parameters += elems;
            bytes += n;
        }
        Quantization {
            format: format.name().into(),
            parameters,
            weight_bytes: bytes,
            bits_per_weight: ((bytes as f64 * 8.0 / parameters.max(1) as f64) * 1e4).round() / 1e4,
            tensor_types,
            plan: self
                .tensors
                .iter()
                .map(|(k, (ty, _, _))| (k.clone(), ty.clone()))
                .collect(),
        }
    }
}

/// ONNX: float, float16 and int8 initializers with two or more elements are
/// weights; scales and zero points (inputs 1 and 2 of Q/DQ nodes) are side
/// data; int64 initializers are shapes and indices.
fn onnx_weights(bytes: &[u8], file: &Path) -> Result<(Weights, Vec<String>), ArtifactError> {
    let onnx = OnnxFile::from_bytes(bytes, file).map_err(|e| at(file, e.to_string()))?;
    let graph = onnx.model.graph.as_ref().expect("checked by from_bytes");
    let side: BTreeSet<&str> = graph
        .node
        .iter()
        .filter(|n| {
            matches!(
                n.op_type.as_deref(),
                Some("QuantizeLinear" | "DequantizeLinear")
            )
        })
        .flat_map(|n| n.input.iter().skip(1).map(String::as_str))
        .collect();
    // MatMulNBits weights: codes (input 1) in target-profile scheme names
    // by bits and block, scales and zero points (inputs 2, 3) side data.
    let mut nbits: BTreeMap<&str, (String, u64)> = BTreeMap::new();
    let mut side = side;
    for n in graph
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("MatMulNBits"))
    {
        let int = |name: &str| {
            n.attribute
                .iter()
                .find(|a| a.name.as_deref() == Some(name))
                .and_then(|a| a.i)
                .unwrap_or(0)
        };
        let (bits, block, k, rows) = (int("bits"), int("block_size"), int("K"), int("N"));
        let zero = if n.input.get(3).is_some_and(|z| !z.is_empty()) {
            "asym"
        } else {
            "sym"
        };
        if let Some(codes) = n.input.get(1) {
            let scheme = format!("int{bits}_g{block}_{zero}");
            nbits.insert(codes.as_str(), (scheme, (k.max(0) * rows.max(0)) as u64));
        }
        side.extend(n.input.iter().skip(2).map(String::as_str));
    }
    // Activation zero points: the third input of each QuantizeLinear.
    let act_zeros: BTreeSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("QuantizeLinear"))
        .filter_map(|n| n.input.get(2).map(String::as_str))
        .collect();
    let mut asymmetric = false;
    let mut w = Weights::default();
    for t in &graph.initializer {
        let name = t.name.clone().unwrap_or_default();
        if act_zeros.contains(name.as_str()) {
            asymmetric |= t.data_type != Some(data_type::INT8)
                || t.raw_data
                    .as_ref()
                    .is_some_and(|b| b.iter().any(|&z| z != 0))
                || t.int32_data.iter().any(|&z| z != 0);
        }
        let elems: u64 = t.dims.iter().map(|&d| d.max(0) as u64).product();
        let ty = t.data_type.unwrap_or(0);
        let size = match ty {
            data_type::FLOAT | data_type::INT32 => 4,
            data_type::FLOAT16 => 2,
            data_type::INT8 | data_type::UINT8 => 1,
            data_type::INT64 => continue,
            other => {
                return Err(ArtifactError::at(
                    file,
                    format!(
                    "initializer `{name}` has data type {other}, which edgeforge does not write"
                ),
                ))
            }
        };
        if side.contains(name.as_str()) {
            w.side_bytes += elems * size;
            continue;
        }
        if let Some((scheme, weights)) = nbits.get(name.as_str()) {
            w.tensors
                .insert(name, (scheme.clone(), *weights, elems * size));
            continue;
        }
        if elems < 2 {
            continue;
        }
        let scheme = match ty {
            data_type::FLOAT => "F32",
            data_type::FLOAT16 => "F16",
            data_type::INT32 => "I32",
            _ => "int8_pc",
        };
        w.tensors.insert(name, (scheme.into(), elems, elems * size));
    }
    let opset = onnx
        .model
        .opset_import
        .iter()
        .filter_map(|o| o.version)
        .max()
        .unwrap_or(0);
    let ops: BTreeSet<&str> = graph
        .node
        .iter()
        .filter_map(|n| n.op_type.as_deref())
        .collect();
    let mut requires = vec![
        format!("onnx opset {opset}"),
        format!("onnx ir {}", onnx.model.ir_version.unwrap_or(0)),
    ];
    requires.extend(ops.into_iter().map(|op| format!("onnx op {op}")));
    if asymmetric {
        requires.push(ASYMMETRIC_QDQ.into());
    }
    Ok((w, requires))
}

/// TFLite: constant float32/float16/int8 tensors with two or more elements
/// are weights, int32 constants with quantization are biases; unquantized
/// int32 constants are shape operands. Scales and zero points are side data.
fn tflite_weights(bytes: &[u8], file: &Path) -> Result<(Weights, Vec<String>), ArtifactError> {
    let graph = crate::format::tflite::read::read(bytes).map_err(|e| {
        ArtifactError::at(file, format!("not a TFLite model edgeforge reads: {}", e.0))
    })?;
    let mut w = Weights::default();
    for t in &graph.tensors {
        let Some(data) = &t.data else { continue };
        if let Some(q) = &t.quant {
            w.side_bytes += 4 * q.scale.len() as u64 + 8 * q.zero_point.len() as u64;
        }
        let elems = t.elements() as u64;
        let scheme = match (t.ty, &t.quant) {
            (ElemType::F32, _) => "F32",
            (ElemType::F16, _) => "F16",
            (ElemType::I8, Some(q)) if q.scale.len() > 1 => "int8_pc",
            (ElemType::I8, _) => "int8_pt",
            (ElemType::I32, Some(_)) => "I32",
            (ElemType::I32, None) => continue,
        };
        if elems < 2 {
            continue;
        }
        w.tensors
            .insert(t.name.clone(), (scheme.into(), elems, data.len() as u64));
    }
    let ops: BTreeSet<&str> = graph.nodes.iter().map(|n| n.op.name()).collect();
    let mut requires = vec![format!(
        "tflite schema v{}",
        crate::format::tflite::schema::SCHEMA_VERSION
    )];
    requires.extend(ops.into_iter().map(|op| format!("tflite builtin {op}")));
    Ok((w, requires))
}
