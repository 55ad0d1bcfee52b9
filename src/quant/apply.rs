//! Executes a [`Plan`]: streams each tensor from the source model's map,
//! decodes it to f32, quantizes it, measures the error and writes it, one
//! tensor at a time, so peak memory is the output of one tensor plus its f32
//! copy, never the whole model twice.
//!
//! Output is byte-identical for any thread count: kernels encode each block
//! from its own input, and tensors are written in plan order.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use indicatif::ProgressBar;
use serde::Serialize;

use crate::format::atomic::Overwrite;
use crate::format::gguf::{GgmlType, GgufWriter, MetaValue};
use crate::format::imatrix::Imatrix;
use crate::format::safetensors::{Dtype, SafetensorsStream, TensorSpec};
use crate::llamacpp;
use crate::model::{Model, Tensor, TensorDtype};
use crate::quant::metrics::ErrorStats;
use crate::quant::plan::{Plan, Reason, TensorPlan};
use crate::quant::{self, Encoded, Scheme};

/// Which container to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Gguf,
    Safetensors,
}

/// One row of the per-tensor error report.
#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    pub name: String,
    /// The name in the output file (llama.cpp's for GGUF).
    pub out_name: String,
    pub scheme: String,
    pub shape: Vec<u64>,
    pub bits_per_weight: f64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Measured when the tensor is encoded; `None` in a dry run's plan.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorStats>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// Decodes a stored tensor to f32 (zero copy when it already is aligned f32).
pub fn tensor_f32<'m>(model: &'m Model, t: &Tensor) -> Result<Cow<'m, [f32]>, String> {
    let bytes = model.tensor_bytes(t);
    let n = usize::try_from(t.n_elems).map_err(|_| format!("Tensor `{}` is too large", t.name))?;
    let ggml = source_type(t).ok_or_else(|| {
        format!(
            "Tensor `{}` has dtype {}, which cannot be quantized",
            t.name,
            t.dtype.name()
        )
    })?;
    if ggml == GgmlType::F32 && cfg!(target_endian = "little") {
        if let Ok(floats) = bytemuck::try_cast_slice::<u8, f32>(bytes) {
            return Ok(Cow::Borrowed(floats));
        }
    }
    let mut out = vec![0f32; n];
    quant::dequantize(ggml, bytes, &mut out).map_err(|e| format!("Tensor `{}`: {e}", t.name))?;
    Ok(Cow::Owned(out))
}

/// The ggml type a stored tensor decodes from.
pub fn source_type(t: &Tensor) -> Option<GgmlType> {
    match t.dtype {
        TensorDtype::Ggml(g) => Some(g),
        TensorDtype::Safetensors(Dtype::F32) => Some(GgmlType::F32),
        TensorDtype::Safetensors(Dtype::F16) => Some(GgmlType::F16),
        TensorDtype::Safetensors(Dtype::BF16) => Some(GgmlType::BF16),
        TensorDtype::Safetensors(Dtype::F64) => Some(GgmlType::F64),
        TensorDtype::Safetensors(_) => None,
    }
}

/// Whether a stored tensor is block-quantized (re-quantizing compounds error).
pub fn is_block_quantized(t: &Tensor) -> bool {
    matches!(t.dtype, TensorDtype::Ggml(g) if g.block_elems() > 1)
}

/// Everything `write` needs besides the model and plan.
pub struct Output<'a> {
    pub path: &'a Path,
    pub format: OutputFormat,
    pub overwrite: Overwrite,
    /// Model name recorded in GGUF metadata.
    pub name: &'a str,
    pub progress: &'a ProgressBar,
    /// Importance weights for the GGUF encoders, and how to name the file
    /// in the output's metadata.
    pub imatrix: Option<ImatrixUse<'a>>,
}

/// An importance matrix applied to a GGUF output.
#[derive(Clone, Copy)]
pub struct ImatrixUse<'a> {
    pub matrix: &'a Imatrix,
    /// The file as the user named it (`quantize.imatrix.file`).
    pub label: &'a str,
}

impl ImatrixUse<'_> {
    /// The keys `llama-quantize --imatrix` appends after the file type.
    fn metadata(&self) -> Vec<(String, MetaValue)> {
        // llama.cpp copies both strings into 128-byte buffers.
        let bounded = |s: &str| {
            let mut end = s.len().min(127);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            MetaValue::String(s[..end].to_string())
        };
        let m = self.matrix;
        let mut kv = vec![("quantize.imatrix.file".to_string(), bounded(self.label))];
        if let Some(d) = m.datasets.first() {
            kv.push(("quantize.imatrix.dataset".to_string(), bounded(d)));
        }
        kv.push((
            "quantize.imatrix.entries_count".to_string(),
            MetaValue::U32(m.entries.len() as u32),
        ));
        if m.chunk_count > 0 {
            kv.push((
                "quantize.imatrix.chunks_count".to_string(),
                MetaValue::U32(m.chunk_count),
            ));
        }
        kv
    }

    /// The importance weights of the tensor llama.cpp calls `name`, checked
    /// against its row length.
    fn weights(&self, name: &str, row_len: u64) -> Result<Option<Vec<f32>>, String> {
        let Some(w) = self.matrix.weights(name) else {
            return Ok(None);
        };
        if w.len() as u64 != row_len {
            return Err(format!(
                "{}: `{name}` has {} columns in the importance matrix, {row_len} in the model: \
                 the matrix was made for another model",
                self.label,
                w.len()
            ));
        }
        Ok(Some(w))
    }
}

/// Quantizes and writes every planned tensor; returns the per-tensor report.
pub fn write(model: &Model, plan: &Plan, out: &Output<'_>) -> Result<Vec<TensorReport>, String> {
    let planned = planned(model, plan, out.format);
    match out.format {
        OutputFormat::Gguf => write_gguf(model, plan, &planned, out),
        OutputFormat::Safetensors => write_safetensors(model, &planned, out),
    }
}

/// The report rows `write` would give, in file order, without encoding
/// anything (no error measured): what `--dry-run` shows.
pub fn preview(model: &Model, plan: &Plan, format: OutputFormat) -> Vec<TensorReport> {
    planned(model, plan, format)
        .into_iter()
        .map(|(p, t, name)| report(p, t, &name, p.bytes, None))
        .collect()
}

/// Bytes of the tensors the output file holds: the plan less what the
/// format's converter drops (a BERT GGUF has no pooler).
pub fn written_bytes(model: &Model, plan: &Plan, format: OutputFormat) -> u64 {
    planned(model, plan, format)
        .iter()
        .map(|(p, _, _)| p.bytes)
        .sum()
}

/// Each planned tensor with its source tensor and output name, in the order
/// the file holds them.
fn planned<'p>(
    model: &'p Model,
    plan: &'p Plan,
    format: OutputFormat,
) -> Vec<(&'p TensorPlan, &'p Tensor, String)> {
    let mut planned: Vec<(&TensorPlan, &Tensor, String)> = plan
        .tensors
        .iter()
        .filter_map(|p| {
            let t = model.tensor(&p.name)?;
            let name = match format {
                OutputFormat::Gguf if model.gguf().is_none() => {
                    llamacpp::tensor_name(&model.architecture, &p.name)?
                }
                _ => p.name.clone(),
            };
            Some((p, t, name))
        })
        .collect();
    if format == OutputFormat::Gguf && model.gguf().is_some() {
        planned.sort_by(|a, b| llama_quantize_order(&a.2, &b.2));
    }
    planned
}

/// A planned tensor encoded exactly as `write` puts it in a GGUF file: its
/// llama.cpp name, ggml type and bytes (the ONNX decoder export repacks
/// these, so both files hold the same weights).
pub fn encode_for_gguf(
    model: &Model,
    p: &TensorPlan,
) -> Result<Option<(String, GgmlType, Vec<u8>)>, String> {
    let Some(t) = model.tensor(&p.name) else {
        return Ok(None);
    };
    let name = match model.gguf() {
        Some(_) => p.name.clone(),
        None => match llamacpp::tensor_name(&model.architecture, &p.name) {
            Some(n) => n,
            None => return Ok(None),
        },
    };
    let scheme = p
        .scheme
        .ok_or_else(|| format!("Tensor `{}` has no GGUF encoding", t.name))?;
    let ty = quant::ggml_type(scheme)
        .ok_or_else(|| format!("{scheme} is a safetensors encoding, not a GGUF type"))?;
    let (enc, _) = encode(model, p, t, model.gguf().is_none(), None)?;
    Ok(Some((name, ty, enc.data)))
}

/// Encodes one tensor: f32 in (permuted for llama.cpp where needed), bytes out.
fn encode(
    model: &Model,
    p: &TensorPlan,
    t: &Tensor,
    gguf: bool,
    importance: Option<&[f32]>,
) -> Result<(Encoded, ErrorStats), String> {
    let scheme = p.scheme.expect("only float tensors are encoded");
    if p.reason == Reason::AsStored {
        return kept_as_is(model, t, scheme, gguf)
            .ok_or_else(|| format!("Tensor `{}` cannot be kept as stored", t.name));
    }
    let src = tensor_f32(model, t)?;
    let row = t.row_len() as usize;
    let rows = src.len() / row.max(1);
    let src: Cow<[f32]> = match gguf
        .then(|| llamacpp::qk_row_order(&model.architecture, &t.name, rows))
        .flatten()
    {
        Some(order) => Cow::Owned(
            order
                .iter()
                .flat_map(|&r| src[r * row..(r + 1) * row].iter().copied())
                .collect(),
        ),
        None => src,
    };
    let fail = |e: quant::QuantError| format!("Tensor `{}`: {e}", t.name);
    if let Some(measured) =
        quant::quantize_measured_with(scheme, &src, row, importance).map_err(fail)?
    {
        return Ok(measured);
    }
    let enc = quant::quantize(scheme, &src, row).map_err(fail)?;
    let mut back = vec![0f32; src.len()];
    quant::decode(scheme, &enc, row, &mut back).map_err(fail)?;
    let error = ErrorStats::between(&src, &back);
    Ok((enc, error))
}

/// A tensor planned as stored keeps its bytes: decoding and re-encoding a
/// block type is not exact (K-quants' scale search need not find the same
/// scales again), copying is. Only plans say so (`Reason::AsStored`):
/// `--scheme X` on an X source re-quantizes, as llama-quantize does.
fn kept_as_is(
    model: &Model,
    t: &Tensor,
    scheme: Scheme,
    permuted: bool,
) -> Option<(Encoded, ErrorStats)> {
    let stored = source_type(t)?;
    let same = model.gguf().is_some() && !permuted && quant::ggml_type(scheme) == Some(stored);
    same.then(|| {
        let enc = Encoded {
            data: model.tensor_bytes(t).to_vec(),
            scales: Vec::new(),
            zeros: Vec::new(),
        };
        (enc, ErrorStats::exact())
    })
}

fn report(
    p: &TensorPlan,
    t: &Tensor,
    out_name: &str,
    bytes_after: u64,
    error: Option<ErrorStats>,
) -> TensorReport {
    TensorReport {
        name: p.name.clone(),
        out_name: out_name.to_string(),
        scheme: p.scheme.map_or_else(|| t.dtype.name(), Scheme::name),
        shape: t.shape.clone(),
        bits_per_weight: bytes_after as f64 * 8.0 / t.n_elems.max(1) as f64,
        bytes_before: t.n_bytes,
        bytes_after,
        error,
        note: p.reason.to_string(),
    }
}

/// ggml's block layout version, which llama.cpp stamps on every quantized file.
const GGML_QNT_VERSION: u32 = 2;

/// Keys `llama-quantize` sets afresh or drops rather than copies.
fn is_rewritten_key(key: &str) -> bool {
    matches!(
        key,
        "general.quantization_version"
            | "general.file_type"
            | "split.no"
            | "split.count"
            | "split.tensors.count"
    )
}

/// The order `llama-quantize` writes tensors in (its loader's
/// `weight_name_comparer`): tensors outside the blocks first, then block by
/// block, by name within each.
fn llama_quantize_order(a: &str, b: &str) -> std::cmp::Ordering {
    let block = |name: &str| {
        name.strip_prefix("blk.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(-1)
    };
    block(a).cmp(&block(b)).then_with(|| a.cmp(b))
}

fn write_gguf(
    model: &Model,
    plan: &Plan,
    planned: &[(&TensorPlan, &Tensor, String)],
    out: &Output<'_>,
) -> Result<Vec<TensorReport>, String> {
    let file_type = llamacpp::file_type(&plan.preset);
    let imatrix_kv = out.imatrix.map(|m| m.metadata()).unwrap_or_default();
    let metadata: Vec<(String, MetaValue)> = match model.gguf() {
        // As `llama-quantize` writes it: the source's keys, less the split
        // keys, then the quantization version and the file type appended
        // last (setting a key moves it to the end).
        Some(src) => src
            .metadata()
            .iter()
            .filter(|(k, _)| !is_rewritten_key(k) && !imatrix_kv.iter().any(|(i, _)| i == k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain([
                (
                    "general.quantization_version".to_string(),
                    MetaValue::U32(GGML_QNT_VERSION),
                ),
                ("general.file_type".to_string(), MetaValue::U32(file_type)),
            ])
            .collect(),
        None => llamacpp::hf_metadata(model, file_type, out.name)?,
    };
    let mut w = GgufWriter::new();
    for (k, v) in metadata.into_iter().chain(imatrix_kv) {
        w.add_kv(&k, v);
    }
    for (p, t, name) in planned {
        let scheme = p
            .scheme
            .ok_or_else(|| format!("Tensor `{}` has no GGUF encoding", t.name))?;
        let ty = quant::ggml_type(scheme).ok_or_else(|| {
            format!("{scheme} is a safetensors encoding; write a .safetensors file")
        })?;
        let dims: Vec<u64> = t.shape.iter().rev().copied().collect();
        w.add_tensor_info(name, ty, &dims)
            .map_err(|e| format!("{}: {e}", out.path.display()))?;
    }
    let mut stream = w
        .create(out.path, out.overwrite)
        .map_err(|e| e.to_string())?;
    let mut reports = Vec::with_capacity(planned.len());
    for (p, t, name) in planned {
        let importance = match out.imatrix {
            Some(m) => m.weights(name, t.row_len())?,
            None => None,
        };
        let (enc, err) = encode(model, p, t, model.gguf().is_none(), importance.as_deref())?;
        stream.write_tensor(&enc.data).map_err(|e| e.to_string())?;
        reports.push(report(p, t, name, enc.data.len() as u64, Some(err)));
        out.progress.inc(t.n_bytes);
    }
    stream.finish().map_err(|e| e.to_string())?;
    Ok(reports)
}

fn write_safetensors(
    model: &Model,
    planned: &[(&TensorPlan, &Tensor, String)],
    out: &Output<'_>,
) -> Result<Vec<TensorReport>, String> {
    let mut specs = Vec::new();
    let mut meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    // The output runs on its own: `run`, `profile`, `package` read these
    // when no config.json / tokenizer.json sits beside it.
    meta.extend(model.embeddable_side_files().map_err(|e| e.to_string())?);
    for (p, t, name) in planned {
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
        let row = *shape.last().unwrap_or(&1);
        match p.scheme {
            None => {
                let TensorDtype::Safetensors(dtype) = t.dtype else {
                    return Err(format!(
                        "Tensor `{}` ({}) cannot be stored in safetensors",
                        t.name,
                        t.dtype.name()
                    ));
                };
                specs.push(TensorSpec {
                    name: name.clone(),
                    dtype,
                    shape,
                });
            }
            Some(Scheme::Int8PerChannel) => {
                specs.push(TensorSpec {
                    name: name.clone(),
                    dtype: Dtype::I8,
                    shape,
                });
                specs.push(TensorSpec {
                    name: format!("{name}.scale"),
                    dtype: Dtype::F32,
                    shape: vec![rows],
                });
                meta.insert(format!("edgeforge.scheme.{name}"), "int8_pc".into());
            }
            Some(s @ Scheme::Int4Group { group, symmetric }) => {
                let groups = row / usize::from(group);
                let mut packed = shape.clone();
                *packed.last_mut().expect("2-D or more") = row / 2;
                specs.push(TensorSpec {
                    name: name.clone(),
                    dtype: Dtype::U8,
                    shape: packed,
                });
                let mut side = shape.clone();
                *side.last_mut().expect("2-D or more") = groups;
                specs.push(TensorSpec {
                    name: format!("{name}.scale"),
                    dtype: Dtype::F16,
                    shape: side.clone(),
                });
                if !symmetric {
                    specs.push(TensorSpec {
                        name: format!("{name}.zero"),
                        dtype: Dtype::U8,
                        shape: side,
                    });
                }
                meta.insert(format!("edgeforge.scheme.{name}"), s.name());
            }
            Some(Scheme::F32) => specs.push(TensorSpec {
                name: name.clone(),
                dtype: Dtype::F32,
                shape,
            }),
            Some(Scheme::F16) => specs.push(TensorSpec {
                name: name.clone(),
                dtype: Dtype::F16,
                shape,
            }),
            Some(Scheme::BF16) => specs.push(TensorSpec {
                name: name.clone(),
                dtype: Dtype::BF16,
                shape,
            }),
            Some(other) => return Err(format!("{other} is a GGUF block type; write a .gguf file")),
        }
    }
    let mut stream = SafetensorsStream::create(out.path, &specs, &meta, out.overwrite)
        .map_err(|e| e.to_string())?;
    let mut reports = Vec::with_capacity(planned.len());
    for (p, t, name) in planned {
        if p.scheme.is_none() {
            stream
                .write_tensor(model.tensor_bytes(t))
                .map_err(|e| e.to_string())?;
            // Not numbers quantization acts on (ids, masks): no error to report.
            reports.push(report(p, t, name, t.n_bytes, None));
        } else {
            let (enc, err) = encode(model, p, t, false, None)?;
            let mut bytes = 0;
            for part in [&enc.data, &enc.scales, &enc.zeros] {
                if !part.is_empty() {
                    stream.write_tensor(part).map_err(|e| e.to_string())?;
                    bytes += part.len() as u64;
                }
            }
            reports.push(report(p, t, name, bytes, Some(err)));
        }
        out.progress.inc(t.n_bytes);
    }
    stream.finish().map_err(|e| e.to_string())?;
    Ok(reports)
}
