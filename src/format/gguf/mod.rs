//! GGUF v3 (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>).

pub mod types;

pub use types::GgmlType;
