//! edgeforge: turn trained models into verified, content-hashed artifacts for
//! each class of edge device.
//!
//! The library owns every piece of real work (formats, targets, quantization);
//! `commands` only orchestrate and render, `cli` only declares flags.

pub mod artifact;
pub mod cli;
pub mod commands;
pub mod distill;
pub mod distribution;
pub mod engine;
pub mod eval;
pub mod exit;
pub mod fed;
pub mod format;
pub mod guard;
pub mod importance;
pub mod kernels;
pub mod llamacpp;
pub mod memory;
pub mod model;
pub mod printer;
pub mod profile;
pub mod quant;
pub mod target;
pub mod units;

pub use exit::run;
