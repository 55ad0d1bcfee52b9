//! Quantization schemes: one file per family, one canonical name per scheme.

pub mod scheme;

pub use scheme::{Scheme, UnknownScheme};
