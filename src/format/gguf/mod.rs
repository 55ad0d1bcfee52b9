//! GGUF v3 (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>):
//! a bounds-checked mmap reader and a streaming, atomic writer.

pub mod reader;
pub mod types;
pub mod value;
pub mod writer;

pub use reader::{validate, GgufError, GgufFile, Header, TensorInfo};
pub use types::GgmlType;
pub use value::{MetaArray, MetaValue};
pub use writer::{GgufStream, GgufWriter};
