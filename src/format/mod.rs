//! Model file formats: bounds-checked, mmap-backed readers and atomic writers.

pub mod atomic;
pub mod gguf;
pub mod imatrix;
pub mod logits;
pub mod onnx;
pub mod safetensors;
pub mod tflite;
