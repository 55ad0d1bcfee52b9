//! TFLite export of BERT-style encoders: a flatbuffer writer and reader for
//! the TFLite schema (v3, `TFL3`), the encoder as a fixed-shape graph of
//! builtin ops, the fp16 and full-integer int8 passes, calibration, and an
//! evaluator with TFLite's integer semantics that measures what a written
//! file computes.

pub mod bert;
pub mod calibrate;
pub mod eval;
pub mod export;
pub mod graph;
pub mod lower;
pub mod read;
pub mod schema;
pub mod write;

pub use export::{
    accuracy, export, Accuracy, ExportOptions, Exported, Scheme, TfliteError, REFERENCE_SENTENCES,
};
