//! A model on disk, whatever its format: a folder (safetensors + config.json
//! [+ tokenizer.json]), a single or sharded safetensors checkpoint, or a GGUF
//! file. Everything downstream (inspect, quantize, profile, engine) sees one
//! tensor list with row-major shapes, dtypes and roles, and zero-copy bytes.

pub mod config;
pub mod gemma3;
pub mod llama_like;
pub mod role;
pub mod summary;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use config::{Architecture, BertConfig, Gemma3Config, LlamaConfig, LlamaLike, LlamaLikeConfig};
pub use role::TensorRole;

use crate::format::gguf::{GgmlType, GgufFile, MetaValue};
use crate::format::safetensors::{Dtype, ShardedSafetensors};

/// Why a model could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Safetensors(#[from] crate::format::safetensors::SafetensorsError),
    #[error(transparent)]
    Gguf(#[from] crate::format::gguf::GgufError),
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

impl ModelError {
    fn invalid(path: &Path, message: impl Into<String>) -> Self {
        ModelError::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// The container format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Safetensors,
    Gguf,
}

/// A tensor element encoding from either format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorDtype {
    Safetensors(Dtype),
    Ggml(GgmlType),
}

impl TensorDtype {
    /// The dtype's name as its format spells it (`F32`, `BF16`, `Q4_K`).
    pub fn name(self) -> String {
        match self {
            TensorDtype::Safetensors(d) => d.to_string(),
            TensorDtype::Ggml(t) => t.name().to_string(),
        }
    }

    /// Whether values are floating point (trainable weights, not index buffers).
    pub fn is_float(self) -> bool {
        match self {
            TensorDtype::Safetensors(d) => !matches!(
                d,
                Dtype::BOOL
                    | Dtype::U8
                    | Dtype::I8
                    | Dtype::I16
                    | Dtype::U16
                    | Dtype::I32
                    | Dtype::U32
                    | Dtype::I64
                    | Dtype::U64
            ),
            TensorDtype::Ggml(t) => !matches!(
                t,
                GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64
            ),
        }
    }
}

impl Serialize for TensorDtype {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

/// One tensor of a model.
#[derive(Debug, Clone, Serialize)]
pub struct Tensor {
    pub name: String,
    pub dtype: TensorDtype,
    /// Row-major shape, outermost first (GGUF's `ne` reversed): a linear
    /// layer's weight is `[out_features, in_features]`.
    pub shape: Vec<u64>,
    pub n_elems: u64,
    pub n_bytes: u64,
    pub role: TensorRole,
    #[serde(skip)]
    location: Location,
}

impl Tensor {
    /// Length of the innermost (contiguous) dimension.
    pub fn row_len(&self) -> u64 {
        self.shape.last().copied().unwrap_or(1)
    }
}

#[derive(Debug, Clone, Copy)]
enum Location {
    Shard { shard: usize, index: usize },
    Gguf { index: usize },
}

#[derive(Debug)]
enum Source {
    Safetensors(ShardedSafetensors),
    Gguf(GgufFile),
}

/// An opened model.
#[derive(Debug)]
pub struct Model {
    /// What the user passed.
    pub path: PathBuf,
    pub format: ModelFormat,
    pub architecture: Architecture,
    pub tensors: Vec<Tensor>,
    /// Every file the model consists of (weights, config, tokenizer).
    pub files: Vec<PathBuf>,
    /// The tokenizer file beside the weights, if any.
    pub tokenizer: Option<PathBuf>,
    source: Source,
}

/// Safetensors metadata keys under which `quantize` embeds the source's
/// `config.json` and `tokenizer.json`, so a lone `.safetensors` it writes
/// runs without side files.
pub const EMBEDDED_CONFIG: &str = "edgeforge.config.json";
pub const EMBEDDED_TOKENIZER: &str = "edgeforge.tokenizer.json";

impl Model {
    /// The side files a safetensors output should carry: the architecture as
    /// an HF `config.json` and the `tokenizer.json` text, when known.
    pub fn embeddable_side_files(&self) -> Result<BTreeMap<String, String>, ModelError> {
        let mut out = BTreeMap::new();
        let config = match &self.architecture {
            Architecture::Bert(c) => serde_json::to_value(c).map(|mut v| {
                v["model_type"] = "bert".into();
                v
            }),
            Architecture::Llama(c) => serde_json::to_value(c).map(|mut v| {
                v["model_type"] = "llama".into();
                v
            }),
            // LFM2's HF config is not one we read back.
            Architecture::LlamaLike(c) if c.kind == LlamaLike::Lfm2 => return Ok(out),
            Architecture::LlamaLike(c) => Ok(c.to_hf_json()),
            // Gemma-3's HF config has nested text settings our own type does
            // not round-trip: its safetensors outputs keep side files instead.
            Architecture::Gemma3(_) | Architecture::Other { .. } => return Ok(out),
        }
        .expect("configs serialize");
        out.insert(EMBEDDED_CONFIG.to_string(), config.to_string());
        let tokenizer = match &self.tokenizer {
            Some(path) => Some(
                crate::guard::read_text(path, crate::guard::Cap::TOKENIZER)
                    .map_err(|e| ModelError::invalid(path, e.message))?,
            ),
            None => self.embedded_tokenizer().map(str::to_string),
        };
        if let Some(text) = tokenizer {
            out.insert(EMBEDDED_TOKENIZER.to_string(), text);
        }
        Ok(out)
    }

    /// The `tokenizer.json` text a safetensors file carries in its metadata.
    pub fn embedded_tokenizer(&self) -> Option<&str> {
        match &self.source {
            Source::Safetensors(st) => st
                .shards
                .first()
                .and_then(|s| s.metadata().get(EMBEDDED_TOKENIZER))
                .map(String::as_str),
            Source::Gguf(_) => None,
        }
    }

    /// Opens a model folder, a `.safetensors` file, a shard index or a `.gguf` file.
    pub fn open(path: &Path) -> Result<Model, ModelError> {
        if path.is_dir() {
            return Self::open_dir(path);
        }
        if !path.exists() {
            let hint = if path.to_string_lossy().contains("edgeforge-models") {
                " (hint: `scripts/fetch-models` downloads the example models)"
            } else {
                ""
            };
            return Err(ModelError::invalid(
                path,
                format!("No such file or folder{hint}"),
            ));
        }
        if is_gguf(path)? {
            return Self::open_gguf(path);
        }
        if let Some(kind) = graph_kind(path) {
            return Err(ModelError::invalid(
                path,
                format!(
                    "{kind} graph, not weights edgeforge's engine loads: `run embed`, `profile`, \
                     `inspect`, `package` and `verify` read it; other commands take the model it was exported from"
                ),
            ));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::open_safetensors(path, path, dir)
    }

    fn open_dir(dir: &Path) -> Result<Model, ModelError> {
        let candidates = ["model.safetensors.index.json", "model.safetensors"];
        if let Some(weights) = candidates.iter().map(|c| dir.join(c)).find(|p| p.exists()) {
            return Self::open_safetensors(dir, &weights, dir);
        }
        let mut ggufs: Vec<PathBuf> = fs_err::read_dir(dir)
            .map_err(|e| ModelError::invalid(dir, e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
            .collect();
        ggufs.sort();
        let graph = fs_err::read_dir(dir)
            .map_err(|e| ModelError::invalid(dir, e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| graph_kind(p).is_some());
        match (ggufs.as_slice(), graph) {
            ([], Some(graph)) => Self::open(&graph),
            ([one], _) => Self::open_gguf(one),
            ([], None) => Err(ModelError::invalid(
                dir,
                "No model.safetensors, model.safetensors.index.json or .gguf file in this folder",
            )),
            (many, _) => Err(ModelError::invalid(
                dir,
                format!("{} .gguf files in this folder; name one", many.len()),
            )),
        }
    }

    fn open_safetensors(user_path: &Path, weights: &Path, dir: &Path) -> Result<Model, ModelError> {
        let st = ShardedSafetensors::open(weights)?;
        let config_path = dir.join("config.json");
        let embedded_config = st
            .shards
            .first()
            .and_then(|s| s.metadata().get(EMBEDDED_CONFIG).cloned());
        let architecture = if let (false, Some(text)) = (config_path.exists(), &embedded_config) {
            let arch = config::from_hf_config(text)
                .and_then(|a| a.check().map(|()| a))
                .map_err(|m| ModelError::invalid(weights, format!("embedded config: {m}")))?;
            arch
        } else if config_path.exists() {
            let text = crate::guard::read_text(&config_path, crate::guard::Cap::JSON)
                .map_err(|e| ModelError::invalid(&config_path, e.message))?;
            let arch =
                config::from_hf_config(&text).map_err(|m| ModelError::invalid(&config_path, m))?;
            arch.check()
                .map_err(|m| ModelError::invalid(&config_path, format!("config: {m}")))?;
            arch
        } else {
            Architecture::Other {
                name: "unknown (no config.json)".into(),
            }
        };
        let mut tensors = Vec::new();
        for (shard_idx, shard) in st.shards.iter().enumerate() {
            for (index, entry) in shard.tensors().iter().enumerate() {
                let dtype = TensorDtype::Safetensors(entry.dtype);
                tensors.push(Tensor {
                    name: entry.name.clone(),
                    dtype,
                    shape: entry.shape.iter().map(|&d| d as u64).collect(),
                    n_elems: entry.n_elems(),
                    n_bytes: entry.range.len() as u64,
                    role: TensorRole::classify(&entry.name, dtype.is_float()),
                    location: Location::Shard {
                        shard: shard_idx,
                        index,
                    },
                });
            }
        }
        let mut files: Vec<PathBuf> = st.shards.iter().map(|s| s.path().to_path_buf()).collect();
        if weights.extension().is_some_and(|x| x == "json") {
            files.push(weights.to_path_buf());
        }
        let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.exists());
        if config_path.exists() {
            files.push(config_path);
        }
        files.extend(tokenizer.clone());
        files.sort();
        Ok(Model {
            path: user_path.to_path_buf(),
            format: ModelFormat::Safetensors,
            architecture,
            tensors,
            files,
            tokenizer,
            source: Source::Safetensors(st),
        })
    }

    fn open_gguf(path: &Path) -> Result<Model, ModelError> {
        let file = GgufFile::open(path)?;
        let architecture = gguf_architecture(&file);
        architecture.check().map_err(|m| {
            ModelError::invalid(
                path,
                format!("{} hyperparameters: {m}", architecture.name()),
            )
        })?;
        let tensors = file
            .tensors()
            .iter()
            .enumerate()
            .map(|(index, info)| {
                let dtype = TensorDtype::Ggml(info.ggml_type);
                Tensor {
                    name: info.name.clone(),
                    dtype,
                    shape: info.dims.iter().rev().copied().collect(),
                    n_elems: info.n_elems,
                    n_bytes: info.n_bytes,
                    role: TensorRole::classify(&info.name, dtype.is_float()),
                    location: Location::Gguf { index },
                }
            })
            .collect();
        Ok(Model {
            path: path.to_path_buf(),
            format: ModelFormat::Gguf,
            architecture,
            tensors,
            files: vec![path.to_path_buf()],
            tokenizer: None,
            source: Source::Gguf(file),
        })
    }

    /// A tensor's raw bytes in its stored encoding (zero copy from the map).
    pub fn tensor_bytes(&self, tensor: &Tensor) -> &[u8] {
        match (&self.source, tensor.location) {
            (Source::Safetensors(st), Location::Shard { shard, index }) => {
                let file = &st.shards[shard];
                file.data(&file.tensors()[index])
            }
            (Source::Gguf(file), Location::Gguf { index }) => {
                file.tensor_data(&file.tensors()[index])
            }
            _ => unreachable!("a tensor's location always matches its model's source"),
        }
    }

    /// Looks a tensor up by name.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The GGUF file behind this model, if it is one.
    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.source {
            Source::Gguf(f) => Some(f),
            Source::Safetensors(_) => None,
        }
    }

    /// Format-level metadata as display strings (safetensors `__metadata__`,
    /// GGUF key/values with long arrays summarised).
    pub fn metadata(&self) -> BTreeMap<String, String> {
        match &self.source {
            Source::Safetensors(st) => st
                .shards
                .iter()
                .flat_map(|s| s.metadata().iter().map(|(k, v)| (k.clone(), v.clone())))
                .collect(),
            Source::Gguf(file) => file
                .metadata()
                .iter()
                .map(|(k, v)| (k.clone(), v.display_summary(80)))
                .collect(),
        }
    }
}

fn is_gguf(path: &Path) -> Result<bool, ModelError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    crate::guard::regular_file(path).map_err(|e| ModelError::invalid(path, e.message))?;
    let mut file = std::fs::File::open(path)
        .map_err(|e| ModelError::invalid(path, format!("Cannot open: {e}")))?;
    let n = file
        .read(&mut magic)
        .map_err(|e| ModelError::invalid(path, format!("Cannot read: {e}")))?;
    Ok(n == 4 && &magic == b"GGUF")
}

/// Typed hyperparameters from GGUF `<arch>.*` metadata: the family and hyperparameters a GGUF file declares (unchecked: see `Architecture::check`).
pub fn gguf_architecture(file: &GgufFile) -> Architecture {
    let Some(arch) = file.architecture().map(str::to_string) else {
        return Architecture::Other {
            name: "unknown (no general.architecture)".into(),
        };
    };
    let int = |key: &str| file.get_u64(&format!("{arch}.{key}")).map(|v| v as usize);
    let float = |key: &str| file.get_f64(&format!("{arch}.{key}"));
    let vocab = int("vocab_size").or_else(|| match file.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(a)) => Some(a.len()),
        _ => None,
    });
    if arch == "gemma3" {
        if let Some(c) = Gemma3Config::from_gguf(file, vocab) {
            return Architecture::Gemma3(c);
        }
    }
    if let Some(kind) = LlamaLike::from_name(&arch) {
        if let Some(c) = LlamaLikeConfig::from_gguf(kind, file, vocab) {
            return Architecture::LlamaLike(c);
        }
    }
    let parsed = (|| -> Option<Architecture> {
        let hidden = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        match arch.as_str() {
            "llama" => Some(Architecture::Llama(LlamaConfig {
                vocab_size: vocab?,
                hidden_size: hidden,
                intermediate_size: int("feed_forward_length")?,
                num_hidden_layers: int("block_count")?,
                num_attention_heads: heads,
                num_key_value_heads: int("attention.head_count_kv"),
                max_position_embeddings: int("context_length")?,
                rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
                rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
                tie_word_embeddings: !file.tensors().iter().any(|t| t.name == "output.weight"),
                head_dim: int("attention.key_length"),
            })),
            "bert" => Some(Architecture::Bert(BertConfig {
                vocab_size: vocab?,
                hidden_size: hidden,
                num_hidden_layers: int("block_count")?,
                num_attention_heads: heads,
                intermediate_size: int("feed_forward_length")?,
                max_position_embeddings: int("context_length")?,
                type_vocab_size: 2,
                layer_norm_eps: float("attention.layer_norm_epsilon").unwrap_or(1e-12),
                hidden_act: "gelu".into(),
            })),
            _ => None,
        }
    })();
    parsed.unwrap_or(Architecture::Other { name: arch })
}

/// What a graph file's name says it is (`an ONNX`, `a TFLite`).
fn graph_kind(path: &Path) -> Option<&'static str> {
    match path.extension()?.to_str()? {
        "onnx" => Some("an ONNX"),
        "tflite" => Some("a TFLite"),
        _ => None,
    }
}
