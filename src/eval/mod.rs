//! How far a compressed model strays from its reference on real text:
//! perplexity and next-token KL divergence for decoders (as
//! `llama-perplexity --kl-divergence` measures them), embedding cosines for
//! encoders. `edgeforge eval` and `verify`'s accuracy gate both use it.

pub mod decoder;
pub mod encoder;
pub mod stats;

pub use decoder::{evaluate_chunks, score, summarize, Base, ChunkBase, Quality, Scored};
pub use encoder::{cosines, Cosines};
pub use stats::{Estimate, Spread};
