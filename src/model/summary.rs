//! Counting what a model holds: parameters by role and dtype, bytes, files.
//! `inspect` renders it; `profile` and manifests reuse the same numbers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::{Architecture, Model, ModelFormat, Tensor, TensorRole};

/// Tensors, elements and bytes of one dtype or role.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Count {
    pub tensors: u64,
    pub elements: u64,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, t: &Tensor) {
        self.tensors += 1;
        self.elements += t.n_elems;
        self.bytes += t.n_bytes;
    }
}

/// A file of the model and its size.
#[derive(Debug, Clone, Serialize)]
pub struct FileEntry {
    pub path: PathBuf,
    pub size_bytes: u64,
}

/// Everything `inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub path: PathBuf,
    pub format: ModelFormat,
    pub architecture: Architecture,
    pub files: Vec<FileEntry>,
    /// Elements of floating-point tensors (buffers such as `position_ids` excluded).
    pub parameters: u64,
    /// Integer buffers, listed apart from the parameters.
    pub buffers: Vec<Tensor>,
    pub tensor_count: usize,
    pub tensor_bytes: u64,
    /// Average stored bits per parameter over the floating-point tensors.
    pub bits_per_weight: f64,
    pub by_dtype: BTreeMap<String, Count>,
    pub by_role: BTreeMap<TensorRole, Count>,
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<Tensor>>,
}

impl ModelSummary {
    /// Summarises `model`; `with_tensors` keeps the full tensor table.
    pub fn of(model: &Model, with_tensors: bool) -> Self {
        let mut by_dtype: BTreeMap<String, Count> = BTreeMap::new();
        let mut by_role: BTreeMap<TensorRole, Count> = BTreeMap::new();
        let (mut parameters, mut param_bytes) = (0u64, 0u64);
        for t in &model.tensors {
            by_dtype.entry(t.dtype.name()).or_default().add(t);
            by_role.entry(t.role).or_default().add(t);
            if t.role != TensorRole::Buffer {
                parameters += t.n_elems;
                param_bytes += t.n_bytes;
            }
        }
        let files = model
            .files
            .iter()
            .map(|p| FileEntry {
                path: p.clone(),
                size_bytes: std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            })
            .collect();
        Self {
            path: model.path.clone(),
            format: model.format,
            architecture: model.architecture.clone(),
            files,
            parameters,
            buffers: model
                .tensors
                .iter()
                .filter(|t| t.role == TensorRole::Buffer)
                .cloned()
                .collect(),
            tensor_count: model.tensors.len(),
            tensor_bytes: model.tensors.iter().map(|t| t.n_bytes).sum(),
            bits_per_weight: if parameters == 0 {
                0.0
            } else {
                param_bytes as f64 * 8.0 / parameters as f64
            },
            by_dtype,
            by_role,
            metadata: model
                .metadata()
                .into_iter()
                .map(|(k, v)| {
                    // Embedded config and tokenizer files: their size, not their text.
                    let v = if v.len() > 512 {
                        format!("<{} bytes>", v.len())
                    } else {
                        v
                    };
                    (k, v)
                })
                .collect(),
            tensors: with_tensors.then(|| model.tensors.clone()),
        }
    }
}
