//! An encoder's quality against a reference: the cosine between the two
//! models' sentence embeddings of each text.

use serde::Serialize;

use super::stats::{mean_and_uncertainty, Estimate, Spread};
use crate::engine::{Engine, EngineError};

#[derive(Debug, Clone, Serialize)]
pub struct Cosines {
    pub texts: usize,
    pub mean: Estimate,
    pub spread: Spread,
}

/// Embeds every text with both engines and compares them pairwise.
pub fn cosines(
    model: &Engine,
    reference: &Engine,
    texts: &[String],
) -> Result<Cosines, EngineError> {
    let (a, r) = (model.embed(texts)?, reference.embed(texts)?);
    // Both are L2-normalised: the dot product is the cosine.
    let values: Vec<f64> = a
        .iter()
        .zip(&r)
        .map(|(x, y)| {
            x.iter()
                .zip(y)
                .map(|(&p, &q)| f64::from(p) * f64::from(q))
                .sum()
        })
        .collect();
    let sum: f64 = values.iter().sum();
    let sum2: f64 = values.iter().map(|v| v * v).sum();
    Ok(Cosines {
        texts: values.len(),
        mean: mean_and_uncertainty(sum, sum2, values.len()),
        spread: Spread::of(values),
    })
}
