//! Weights by llama.cpp name, decoded to f32 from whatever the model stores:
//! safetensors F32/F16/BF16, our `int8_pc` / `int4_g*` schemes, or any GGUF
//! type (legacy and K-quant blocks). One naming scheme for both formats keeps
//! the model code free of format cases.

use std::collections::HashMap;

use crate::format::safetensors::Dtype;
use crate::kernels::Matrix;
use crate::llamacpp;
use crate::model::{Model, Tensor, TensorDtype};
use crate::quant::{self, Encoded, Scheme};

use super::EngineError;

/// A dense row-major f32 tensor.
#[derive(Debug, Clone)]
pub struct Dense {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Read-only view of a model's weights under llama.cpp names.
pub struct Weights<'m> {
    model: &'m Model,
    /// llama.cpp name -> (stored tensor, its name in the file).
    index: HashMap<String, &'m Tensor>,
    schemes: HashMap<String, String>,
}

impl<'m> Weights<'m> {
    pub fn new(model: &'m Model) -> Self {
        let schemes: HashMap<String, String> = model
            .metadata()
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("edgeforge.scheme.")?.to_string(), v)))
            .collect();
        let index = model
            .tensors
            .iter()
            .filter(|t| !t.name.ends_with(".scale") && !t.name.ends_with(".zero"))
            .filter_map(|t| {
                let name = llamacpp::tensor_name(&model.architecture, &t.name)?;
                Some((name, t))
            })
            .collect();
        Self {
            model,
            index,
            schemes,
        }
    }

    /// The model's path, for messages.
    pub fn path(&self) -> &std::path::Path {
        &self.model.path
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Whether `name` is stored under its Hugging Face name (not llama.cpp's).
    pub fn is_hf_named(&self, name: &str) -> bool {
        self.index.get(name).is_some_and(|t| t.name != name)
    }

    /// Decodes a tensor to f32, checking its shape (row-major, outermost first).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Dense, EngineError> {
        let dense = self.decode(name)?;
        if dense.shape != shape {
            return Err(EngineError::Shape {
                path: self.model.path.clone(),
                name: name.into(),
                want: shape.to_vec(),
                got: dense.shape,
            });
        }
        Ok(dense)
    }

    /// A `[rows, cols]` matrix for the decoder's kernels: GGUF block formats
    /// stay packed, everything else is decoded to f32.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix, EngineError> {
        let tensor = self.lookup(name)?;
        let packed = matches!(tensor.dtype, TensorDtype::Ggml(_))
            && tensor.shape == [rows as u64, cols as u64];
        if let (true, TensorDtype::Ggml(ty)) = (packed, tensor.dtype) {
            return Matrix::from_ggml(ty, self.model.tensor_bytes(tensor), rows, cols).map_err(
                |e| EngineError::BadTensor {
                    path: self.model.path.clone(),
                    name: tensor.name.clone(),
                    message: e.to_string(),
                },
            );
        }
        let dense = self.get(name, &[rows, cols])?;
        Ok(Matrix::from_f32(dense.data, rows, cols))
    }

    /// A fused `[sum(rows), cols]` tensor (Phi-3's `attn_qkv`, its gate+up
    /// `ffn_up`) cut into consecutive `[rows[i], cols]` matrices. Block
    /// formats are cut between whole rows and stay packed.
    pub fn matrices(
        &self,
        name: &str,
        rows: &[usize],
        cols: usize,
    ) -> Result<Vec<Matrix>, EngineError> {
        let total: usize = rows.iter().sum();
        let tensor = self.lookup(name)?;
        if let (TensorDtype::Ggml(ty), true) =
            (tensor.dtype, tensor.shape == [total as u64, cols as u64])
        {
            let bytes = self.model.tensor_bytes(tensor);
            let row_bytes = bytes.len() / total.max(1);
            let mut at = 0;
            return rows
                .iter()
                .map(|&r| {
                    let part = &bytes[at * row_bytes..(at + r) * row_bytes];
                    at += r;
                    Matrix::from_ggml(ty, part, r, cols).map_err(|e| EngineError::BadTensor {
                        path: self.model.path.clone(),
                        name: tensor.name.clone(),
                        message: e.to_string(),
                    })
                })
                .collect();
        }
        let dense = self.get(name, &[total, cols])?;
        let mut at = 0;
        Ok(rows
            .iter()
            .map(|&r| {
                let part = dense.data[at * cols..(at + r) * cols].to_vec();
                at += r;
                Matrix::from_f32(part, r, cols)
            })
            .collect())
    }

    fn lookup(&self, name: &str) -> Result<&'m Tensor, EngineError> {
        self.index
            .get(name)
            .copied()
            .ok_or_else(|| EngineError::MissingTensor {
                path: self.model.path.clone(),
                name: name.into(),
            })
    }

    fn decode(&self, name: &str) -> Result<Dense, EngineError> {
        let tensor = self.lookup(name)?;
        let shape: Vec<usize> = tensor.shape.iter().map(|&d| d as usize).collect();
        let n = tensor.n_elems as usize;
        let row_len = tensor.row_len() as usize;
        let bytes = self.model.tensor_bytes(tensor);
        let mut data = vec![0f32; n];
        let bad = |message: String| EngineError::BadTensor {
            path: self.model.path.clone(),
            name: tensor.name.clone(),
            message,
        };
        match (tensor.dtype, self.schemes.get(&tensor.name)) {
            (TensorDtype::Ggml(ty), _) => {
                quant::dequantize(ty, bytes, &mut data).map_err(|e| bad(e.to_string()))?
            }
            (TensorDtype::Safetensors(_), Some(scheme)) => {
                let scheme: Scheme = scheme.parse().map_err(|e| bad(format!("{e}")))?;
                let side = |suffix: &str| {
                    self.model
                        .tensor(&format!("{}.{suffix}", tensor.name))
                        .map(|t| self.model.tensor_bytes(t).to_vec())
                        .unwrap_or_default()
                };
                let enc = Encoded {
                    data: bytes.to_vec(),
                    scales: side("scale"),
                    zeros: side("zero"),
                };
                // Packed int4 stores two codes per byte: the logical row is twice as wide.
                let row_len = match scheme {
                    Scheme::Int4Group { .. } => row_len * 2,
                    _ => row_len,
                };
                let logical: usize =
                    shape.iter().product::<usize>() / shape.last().unwrap_or(&1) * row_len;
                data.resize(logical, 0.0);
                quant::decode(scheme, &enc, row_len, &mut data).map_err(|e| bad(e.to_string()))?;
                let last = shape.len() - 1;
                let mut shape = shape;
                shape[last] = row_len;
                return Ok(self.reorder(name, tensor, Dense { shape, data }));
            }
            (TensorDtype::Safetensors(dtype), None) => {
                let ty = match dtype {
                    Dtype::F32 => crate::format::gguf::GgmlType::F32,
                    Dtype::F16 => crate::format::gguf::GgmlType::F16,
                    Dtype::BF16 => crate::format::gguf::GgmlType::BF16,
                    Dtype::F64 => crate::format::gguf::GgmlType::F64,
                    other => return Err(bad(format!("dtype {other} is not a weight dtype"))),
                };
                quant::dequantize(ty, bytes, &mut data).map_err(|e| bad(e.to_string()))?
            }
        }
        Ok(self.reorder(name, tensor, Dense { shape, data }))
    }

    /// Hugging Face LLaMA q/k rows are in rotate-half order; the engine's RoPE
    /// rotates adjacent pairs as GGUF files lay them out, so permute on load.
    fn reorder(&self, name: &str, tensor: &Tensor, dense: Dense) -> Dense {
        if tensor.name == name || dense.shape.len() != 2 {
            return dense;
        }
        let (rows, cols) = (dense.shape[0], dense.shape[1]);
        let Some(order) = llamacpp::qk_row_order(&self.model.architecture, &tensor.name, rows)
        else {
            return dense;
        };
        let mut data = vec![0f32; dense.data.len()];
        for (dst, &src) in data.chunks_exact_mut(cols).zip(&order) {
            dst.copy_from_slice(&dense.data[src * cols..(src + 1) * cols]);
        }
        Dense {
            shape: dense.shape,
            data,
        }
    }
}
