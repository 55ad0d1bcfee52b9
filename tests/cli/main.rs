//! End-to-end tests of the `edgeforge` binary: one module per subcommand or
//! format, sharing the helpers in `common`.

mod accelerated;
mod accelerated_decoder;
mod common;
mod distill;
mod distribution;
mod engine;
mod eval;
mod families;
mod fed;
mod gemma3;
mod genai;
mod gguf;
mod hostile;
mod imatrix;
mod inspect;
mod mixes;
mod onnx;
mod onnx_decoder_eval;
mod package;
mod profile;
mod quant_kernels;
mod quantize;
mod safetensors;
mod targets;
mod tflite;
mod trust;
