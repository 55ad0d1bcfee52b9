//! ONNX files: a protobuf writer and reader over hand-derived `onnx.proto`
//! messages (`proto`), a graph builder (`builder`), the BERT encoder graph
//! (`bert`), the LLaMA decoder graph onnxruntime-genai runs (`llama`, over
//! Q4_0 blocks repacked by `nbits`, in the folder `genai` writes), and an
//! evaluator that computes what a written graph computes (`eval`), so
//! accuracy is measured on the file itself.

pub mod bert;
pub mod builder;
pub mod eval;
pub mod export;
pub mod genai;
pub mod llama;
pub mod nbits;
pub mod proto;
pub mod q8_act;
pub mod reader;

use std::path::PathBuf;

pub use builder::GraphBuilder;
pub use proto::ModelProto;

/// The default-domain opset every graph we write imports.
pub const OPSET: i64 = 17;
/// ONNX IR version 8: the one opset 17 was released with.
pub const IR_VERSION: i64 = 8;
/// Domain of onnxruntime's contrib ops (`MatMulNBits`).
pub const MS_DOMAIN: &str = "com.microsoft";

/// Why an ONNX file could not be written, read or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("{}: not an ONNX model: {message}", path.display())]
    Decode { path: PathBuf, message: String },
    #[error("{}: tensor `{name}`: {message}", path.display())]
    Tensor {
        path: PathBuf,
        name: String,
        message: String,
    },
    #[error("{}: node `{node}` ({op}): {message}", path.display())]
    Node {
        path: PathBuf,
        node: String,
        op: String,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Unsupported { path: PathBuf, message: String },
}

/// Serialises a model: prost writes fields in tag order and our builders
/// fill every list in a fixed order, so equal models give equal bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    use prost::Message;
    model.encode_to_vec()
}

/// Parses a serialised model.
pub fn decode(bytes: &[u8], path: &std::path::Path) -> Result<ModelProto, OnnxError> {
    use prost::Message;
    ModelProto::decode(bytes).map_err(|e| OnnxError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
