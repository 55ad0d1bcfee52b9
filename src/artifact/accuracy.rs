//! Accuracy of an artifact against its reference model, measured with the
//! engine on an eval set: mean cosine of sentence embeddings (encoders), or
//! top-1 next-token agreement and perplexity (decoders). Figures are rounded
//! to 6 decimals so the manifest does not depend on float summation order.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::{Engine, EngineError, Network};
use crate::eval::{self, Base};
use crate::target::schema::Accuracy as Budget;

/// Built-in eval texts: short, varied English, used when no eval file is given.
pub const DEFAULT_EVAL: &[&str] = &[
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium to watch the match.",
    "The capital of France is Paris, a city on the Seine.",
    "A computer scientist is someone who fixes things that aren't broken.",
    "Quantization stores weights with fewer bits to save memory.",
    "She planted tomatoes, basil and peppers in the garden this spring.",
    "The train was delayed by forty minutes because of snow on the tracks.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Please remember to back up your files before upgrading the system.",
    "The orchestra played Beethoven's ninth symphony to a full house.",
    "Small language models can run on phones and single-board computers.",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accuracy {
    pub eval_texts: usize,
    /// sha256 of the eval texts joined by newlines.
    pub eval_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_drop: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity_reference: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity_increase_pct: Option<f64>,
    /// Mean KL divergence of the next-token distributions from the reference's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_kld: Option<f64>,
}

/// One accuracy check against the target's budget.
#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    pub metric: &'static str,
    pub value: f64,
    pub limit: f64,
    /// `max` (value must not exceed limit) or `min`.
    pub kind: &'static str,
    pub passed: bool,
}

impl Accuracy {
    /// No figures yet, for `texts`.
    pub fn unmeasured(texts: &[String]) -> Self {
        Self {
            eval_texts: texts.len(),
            eval_sha256: hex::encode(Sha256::digest(texts.join("\n").as_bytes())),
            cosine_mean: None,
            cosine_drop: None,
            top1_agreement: None,
            perplexity_reference: None,
            perplexity: None,
            perplexity_increase_pct: None,
            mean_kld: None,
        }
    }

    /// Checks every figure this accuracy has against the budget.
    pub fn gates(&self, budget: &Budget) -> Vec<Gate> {
        let mut gates = Vec::new();
        let mut push = |metric, value: Option<f64>, limit: f64, kind| {
            if let Some(value) = value {
                let passed = if kind == "max" {
                    value <= limit
                } else {
                    value >= limit
                };
                gates.push(Gate {
                    metric,
                    value,
                    limit,
                    kind,
                    passed,
                });
            }
        };
        push(
            "cosine_drop",
            self.cosine_drop,
            budget.max_cosine_drop,
            "max",
        );
        push(
            "perplexity_increase_pct",
            self.perplexity_increase_pct,
            budget.max_perplexity_increase_pct,
            "max",
        );
        if let Some(limit) = budget.max_mean_kld {
            push("mean_kld", self.mean_kld, limit, "max");
        }
        push(
            "top1_agreement",
            self.top1_agreement,
            budget.min_top1_agreement,
            "min",
        );
        gates
    }
}

/// Measures `artifact` against `reference` on `texts`.
pub fn measure(
    artifact: &Engine,
    reference: &Engine,
    texts: &[String],
) -> Result<Accuracy, EngineError> {
    let mut acc = Accuracy::unmeasured(texts);
    match (&artifact.network, &reference.network) {
        (Network::Encoder(_), Network::Encoder(_)) => {
            let (a, r) = (artifact.embed(texts)?, reference.embed(texts)?);
            let mean = a.iter().zip(&r).map(|(x, y)| dot(x, y)).sum::<f64>() / texts.len() as f64;
            acc.cosine_mean = Some(round6(mean));
            acc.cosine_drop = Some(round6(1.0 - mean));
        }
        (Network::Decoder(da), Network::Decoder(dr)) => {
            let mut positions = Vec::new();
            for text in texts {
                let tokens = reference.tokenizer.encode(text)?;
                if tokens.len() >= 2 {
                    positions.extend(eval::score(da, &tokens, 0, Base::Model(dr), false).0);
                }
            }
            decoder_figures(&mut acc, &positions)?;
        }
        _ => return Err(EngineError::Usage {
            path: std::path::PathBuf::from("--reference"),
            message:
                "the reference and the artifact are different kinds of model (encoder vs decoder)"
                    .into(),
        }),
    }
    Ok(acc)
}

/// A decoder's figures from its scored positions (every eval text's).
pub fn decoder_figures(acc: &mut Accuracy, positions: &[eval::Scored]) -> Result<(), EngineError> {
    let quality = eval::summarize(positions);
    let Some(v) = quality.vs_reference else {
        return Err(EngineError::Usage {
            path: std::path::PathBuf::from("eval texts"),
            message: "no eval text is two tokens long: nothing to score".into(),
        });
    };
    let (pa, pr) = (quality.perplexity.value, v.perplexity_reference.value);
    acc.top1_agreement = Some(round6(v.same_top1.value));
    acc.perplexity = Some(round6(pa));
    acc.perplexity_reference = Some(round6(pr));
    acc.perplexity_increase_pct = Some(round6((pa / pr - 1.0) * 100.0));
    acc.mean_kld = Some(round6(v.kld_mean.value));
    Ok(())
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}
