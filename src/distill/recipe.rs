//! The distillation recipe: a TOML file under `recipes/` (schema in
//! `docs/recipes.md`). Parsing is strict (unknown keys are errors) and every
//! check that can fail runs here, before any training starts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DistillError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Names the output (`<out>/<name>`); defaults to the recipe's file stem.
    pub name: Option<String>,
    pub teacher: TeacherSpec,
    pub student: StudentSpec,
    pub data: DataSpec,
    #[serde(default)]
    pub loss: LossSpec,
    pub train: TrainSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSpec {
    /// A model folder (safetensors + config.json + tokenizer.json).
    pub model: String,
}

/// Either a subset of the teacher's layers (DistilBERT-style initialisation:
/// embeddings and the chosen blocks copied) or explicit dims (random init).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentSpec {
    pub layers: Layers,
    pub hidden: Option<usize>,
    pub heads: Option<usize>,
    pub ffn: Option<usize>,
    /// A tokenizer.json for the student; it must equal the teacher's vocabulary.
    pub tokenizer: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Layers {
    /// Teacher layer indices to copy, in order.
    Subset(Vec<usize>),
    /// A layer count for a randomly initialised student.
    Count(usize),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// One training example per line.
    pub train: String,
    /// One held-out example per line.
    pub eval: String,
    /// Tokens per example (longer examples are truncated, keeping the final special token).
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Use at most this many training lines (all by default).
    pub max_examples: Option<usize>,
    /// Use at most this many eval lines (all by default).
    pub max_eval: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossSpec {
    /// Weight of the mean squared error between pooled embeddings (encoders).
    #[serde(default = "one")]
    pub mse: f64,
    /// Weight of `1 - cosine` between pooled embeddings (encoders).
    #[serde(default = "one")]
    pub cosine: f64,
    /// Weight of KL divergence on temperature-softened logits (decoders).
    pub kl: Option<f64>,
    pub temperature: Option<f64>,
    /// Weight of cross-entropy on the data's next tokens (decoders).
    pub hard_label: Option<f64>,
}

impl Default for LossSpec {
    fn default() -> Self {
        Self {
            mse: 1.0,
            cosine: 1.0,
            kl: None,
            temperature: None,
            hard_label: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    #[serde(default = "default_optimizer")]
    pub optimizer: String,
    pub lr: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    pub batch_size: usize,
    /// Optimizer steps; or give `epochs` (passes over the training data).
    pub steps: Option<usize>,
    pub epochs: Option<usize>,
    #[serde(default)]
    pub seed: u64,
    /// Keep the word, position and type embeddings fixed (copied from the
    /// teacher or initialised): most of a small encoder's parameters, and the
    /// optimizer's most expensive update.
    #[serde(default)]
    pub freeze_embeddings: bool,
    /// Steps between checkpoints (0: only at the end and on Ctrl-C).
    #[serde(default)]
    pub checkpoint_every: usize,
}

fn default_max_length() -> usize {
    128
}
fn one() -> f64 {
    1.0
}
fn default_optimizer() -> String {
    "adamw".into()
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_schedule() -> Schedule {
    Schedule::Linear
}

/// A parsed recipe with its paths resolved.
#[derive(Debug, Clone)]
pub struct LoadedRecipe {
    pub path: PathBuf,
    pub name: String,
    pub recipe: Recipe,
    pub teacher: PathBuf,
    pub student_tokenizer: Option<PathBuf>,
    pub train: PathBuf,
    pub eval: PathBuf,
    /// The recipe file's bytes (hashed into the teacher cache key and the output).
    pub bytes: Vec<u8>,
}

impl LoadedRecipe {
    /// Reads and checks a recipe; paths are relative to the recipe's folder
    /// after `${VAR}` expansion (`EDGEFORGE_MODELS` and `EDGEFORGE_DATA`
    /// default to the folders `scripts/fetch-models` and `scripts/fetch-corpus` fill).
    pub fn load(path: &Path) -> Result<Self, DistillError> {
        let bytes = crate::guard::read_bytes(path, crate::guard::Cap::TOML)
            .map_err(|e| DistillError::at(path, e.message))?;
        Self::from_bytes(path, bytes)
    }

    /// A recipe from its bytes, `path` naming it and anchoring relative paths.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, DistillError> {
        let text =
            std::str::from_utf8(&bytes).map_err(|_| DistillError::at(path, "not UTF-8 text"))?;
        let recipe: Recipe = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map_or(1, |s| text[..s.start].matches('\n').count() + 1);
            DistillError::at(path, format!("line {line}: {}", e.message()))
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &str| -> Result<PathBuf, DistillError> {
            let expanded = expand_vars(p).map_err(|m| DistillError::at(path, m))?;
            Ok(dir.join(expanded))
        };
        let name = recipe.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map_or("student".into(), |s| s.to_string_lossy().into_owned())
        });
        let loaded = Self {
            teacher: resolve(&recipe.teacher.model)?,
            student_tokenizer: recipe
                .student
                .tokenizer
                .as_deref()
                .map(resolve)
                .transpose()?,
            train: resolve(&recipe.data.train)?,
            eval: resolve(&recipe.data.eval)?,
            path: path.to_path_buf(),
            name,
            recipe,
            bytes,
        };
        loaded.check_numbers()?;
        Ok(loaded)
    }

    fn check_numbers(&self) -> Result<(), DistillError> {
        let t = &self.recipe.train;
        let bad = |m: &str| Err(DistillError::at(&self.path, m));
        if t.optimizer != "adamw" {
            return bad("train.optimizer: only `adamw` is supported");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return bad("train.lr must be a positive number");
        }
        if t.batch_size == 0 {
            return bad("train.batch_size must be at least 1");
        }
        match (t.steps, t.epochs) {
            (Some(0), _) | (_, Some(0)) => {
                return bad("train.steps / train.epochs must be at least 1")
            }
            (Some(_), Some(_)) => return bad("give train.steps or train.epochs, not both"),
            (None, None) => return bad("give train.steps or train.epochs"),
            _ => {}
        }
        if self.recipe.data.max_length < 3 {
            return bad("data.max_length must be at least 3 tokens");
        }
        let l = &self.recipe.loss;
        if l.mse < 0.0 || l.cosine < 0.0 || l.mse + l.cosine <= 0.0 {
            return bad("loss.mse and loss.cosine must be >= 0 and not both 0");
        }
        Ok(())
    }
}

/// Expands `${NAME}` and `$NAME`; the two data folders have defaults.
pub fn expand_vars(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in `{text}`"))?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        out.push_str(
            &env_or_default(name)
                .ok_or_else(|| format!("`{text}`: environment variable {name} is not set"))?,
        );
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

fn env_or_default(name: &str) -> Option<String> {
    if let Ok(v) = std::env::var(name) {
        return Some(v);
    }
    let cache = || {
        std::env::var("XDG_CACHE_HOME")
            .ok()
            .or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.cache")))
    };
    match name {
        "EDGEFORGE_MODELS" => Some(format!("{}/edgeforge-models", cache()?)),
        "EDGEFORGE_DATA" => Some(format!("{}/edgeforge-data", cache()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_braced_and_bare_variables() {
        std::env::set_var("EF_TEST_DIR", "/x");
        assert_eq!(expand_vars("${EF_TEST_DIR}/a").unwrap(), "/x/a");
        assert_eq!(expand_vars("$EF_TEST_DIR/b").unwrap(), "/x/b");
        assert!(expand_vars("${EF_TEST_UNSET_VAR}/a").is_err());
        assert!(expand_vars("${EF_TEST_DIR").is_err());
    }
}
