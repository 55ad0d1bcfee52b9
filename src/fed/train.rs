//! `fed train`: a client's local round. The global version's model learns
//! from local text towards the federation's teacher (embedding
//! distillation, the distill trainer), training only what the device can
//! afford, and the deltas of the trained tensors become an update.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::AdamWConfig;
use burn::tensor::Device;
use serde::Serialize;

use super::global::{Global, RECIPE};
use super::update::{self, UpdateMeta};
use super::FedError;
use crate::distill::data::{self, Examples};
use crate::distill::recipe::LoadedRecipe;
use crate::distill::{self, student};
use crate::engine::weights::Weights;
use crate::engine::{BertEncoder, TextTokenizer};
use crate::format::atomic::Overwrite;
use crate::model::{Architecture, BertConfig, Model};
use crate::target::Target;

/// AdamW in f32 keeps weights, gradients and two moments per trained parameter.
const BYTES_PER_TRAINED_PARAM: u64 = 16;
const BYTES_PER_FROZEN_PARAM: u64 = 4;

/// What a device trains.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trainable {
    pub embeddings: bool,
    /// Blocks from this index to the top are trained.
    pub first_layer: usize,
    /// The memory model's estimate, and the budget it had to fit.
    pub bytes: u64,
    pub budget: u64,
}

impl Trainable {
    pub fn trains(&self, hf_name: &str) -> bool {
        if let Some(rest) = hf_name.strip_prefix("encoder.layer.") {
            let layer: usize = rest
                .split('.')
                .next()
                .and_then(|i| i.parse().ok())
                .unwrap_or(0);
            return layer >= self.first_layer;
        }
        // The embeddings' LayerNorm trains with the blocks; the tables only when affordable.
        hf_name.starts_with("embeddings.LayerNorm") || self.embeddings
    }
}

fn layer_params(c: &BertConfig) -> u64 {
    let (h, f) = (c.hidden_size as u64, c.intermediate_size as u64);
    4 * (h * h + h) + 2 * h * f + f + h + 4 * h
}

/// Activations kept for the backward pass of `layers` trained blocks: per
/// token about 16 hidden-widths (q, k, v, outputs, norms, the FFN's 4×
/// widths) plus a row of attention probabilities per head.
fn activation_bytes(c: &BertConfig, layers: usize, batch: usize, tokens: usize) -> u64 {
    let per_token = 16 * c.hidden_size + c.num_attention_heads * tokens;
    (layers * batch * tokens * per_token * 4) as u64
}

/// The largest trainable set that fits the target's model budget: all of
/// it, then without the embedding tables, then fewer blocks from the top.
/// `frozen_embeddings`: the recipe keeps the tables fixed for everyone.
pub fn choose(
    c: &BertConfig,
    target: &Target,
    batch: usize,
    tokens: usize,
    frozen_embeddings: bool,
) -> Result<Trainable, String> {
    let budget = target.model_budget_bytes();
    let layers = c.num_hidden_layers;
    let total = student::parameter_count(c);
    let per_layer = layer_params(c);
    let embeddings = total - per_layer * layers as u64;
    let cost = |with_embeddings: bool, trained_layers: usize| {
        let trained =
            per_layer * trained_layers as u64 + if with_embeddings { embeddings } else { 0 };
        trained * BYTES_PER_TRAINED_PARAM
            + (total - trained) * BYTES_PER_FROZEN_PARAM
            + activation_bytes(c, trained_layers, batch, tokens)
    };
    let all = std::iter::once((true, layers)).filter(|_| !frozen_embeddings);
    let options = all.chain((1..=layers).rev().map(|k| (false, k)));
    for (with_embeddings, k) in options {
        let bytes = cost(with_embeddings, k);
        if bytes <= budget {
            return Ok(Trainable {
                embeddings: with_embeddings,
                first_layer: layers - k,
                bytes,
                budget,
            });
        }
    }
    Err(format!(
        "{} cannot train this model: even its top block needs {} (batch {batch}, {tokens} tokens), the model budget is {}",
        target.name(),
        crate::units::human_bytes(cost(false, 1)),
        crate::units::human_bytes(budget)
    ))
}

pub struct Request<'a> {
    pub global: &'a Global,
    pub data: &'a Path,
    pub target: &'a Target,
    pub client: &'a str,
    pub out: &'a Path,
    pub int8: bool,
    /// Local steps (default: the recipe's `train.steps`).
    pub steps: Option<usize>,
    pub force: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trained {
    pub update: PathBuf,
    pub base: String,
    pub examples: usize,
    pub steps: usize,
    pub trainable: Trainable,
    pub tensors: usize,
    pub loss_first: f32,
    pub loss_last: f32,
    pub bytes: u64,
}

fn fail(path: &Path) -> impl Fn(String) -> FedError + '_ {
    move |m| FedError::at(path, m)
}

pub fn train(r: &Request, on_step: &dyn Fn(usize, usize, f32)) -> Result<Trained, FedError> {
    let g = r.global;
    g.check_files()?;
    let recipe_path = g.dir.join(RECIPE);
    let recipe = LoadedRecipe::load(&recipe_path).map_err(|e| fail(&recipe_path)(e.to_string()))?;
    let model_dir = g.dir.join(super::global::MODEL_DIR);
    let model = Model::open(&model_dir).map_err(|e| fail(&model_dir)(e.to_string()))?;
    let Architecture::Bert(config) = &model.architecture else {
        return Err(FedError::at(
            &model_dir,
            "fed train supports BERT-style encoders",
        ));
    };
    let teacher_model =
        Model::open(&recipe.teacher).map_err(|e| fail(&recipe.teacher)(e.to_string()))?;
    let Architecture::Bert(teacher_config) = &teacher_model.architecture else {
        return Err(FedError::at(
            &recipe.teacher,
            "the teacher must be a BERT-style encoder",
        ));
    };
    let tokenizer_path = model_dir.join("tokenizer.json");
    let tokenizer = TextTokenizer::from_json(&tokenizer_path)
        .map_err(|e| fail(&tokenizer_path)(e.to_string()))?;
    let t = &recipe.recipe.train;
    let examples = Examples::read(r.data, &tokenizer, recipe.recipe.data.max_length, None)
        .map_err(|e| fail(r.data)(e.to_string()))?;
    let trainable = choose(
        config,
        r.target,
        t.batch_size,
        recipe.recipe.data.max_length,
        t.freeze_embeddings,
    )
    .map_err(fail(&recipe_path))?;

    let plain = Device::flex();
    let teacher_weights = Weights::new(&teacher_model);
    let teacher = BertEncoder::load(teacher_config, &teacher_weights, &plain)
        .map_err(|e| fail(&recipe.teacher)(e.to_string()))?;
    let teacher_sha = distill::files_sha256(&teacher_model.files)
        .map_err(|e| fail(&recipe.teacher)(e.to_string()))?;
    let key = data::cache_key(&teacher_sha, &examples);
    let (targets, _) = data::teacher_outputs(
        &teacher,
        &examples,
        &key,
        teacher_config.hidden_size,
        |_| {},
    )
    .map_err(|e| fail(r.data)(e.to_string()))?;

    let device = Device::flex().autodiff();
    let weights = Weights::new(&model);
    let base = BertEncoder::load(config, &weights, &device)
        .map_err(|e| fail(&model_dir)(e.to_string()))?;
    let before = student::hf_tensors(&base.clone().valid());
    let mut encoder = student::prepare_for_training(base, &recipe);
    if !trainable.embeddings {
        encoder.word = encoder.word.no_grad();
        encoder.position = encoder.position.no_grad();
        encoder.token_type = encoder.token_type.no_grad();
    }
    for layer in &mut encoder.layers[..trainable.first_layer] {
        *layer = layer.clone().no_grad();
    }
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(t.weight_decay as f32)
        .with_epsilon(1e-8)
        .init();
    let steps = r.steps.or(t.steps).unwrap_or(10).max(1);
    let mut batches = distill::Batches::new();
    let mut losses = Vec::with_capacity(steps);
    for step in 0..steps {
        let indices = batches
            .for_step(step, t.batch_size, &examples, t.seed)
            .to_vec();
        let lr = distill::lr_at(t, step, steps);
        let loss = distill::train_step(
            &mut encoder,
            &mut optimizer,
            &examples,
            &recipe.recipe.loss,
            &indices,
            &targets,
            lr,
            &device,
        );
        losses.push(loss);
        on_step(step + 1, steps, loss);
    }
    let after = student::hf_tensors(&encoder.valid());
    let deltas: Vec<(String, Vec<usize>, Vec<f32>)> = before
        .into_iter()
        .zip(after)
        .filter(|((name, _, _), _)| trainable.trains(name))
        .map(|((name, shape, b), (_, _, a))| {
            let d = a.iter().zip(&b).map(|(x, y)| x - y).collect();
            (name, shape, d)
        })
        .collect();
    let meta = UpdateMeta {
        base: g.id.clone(),
        tokenizer_sha256: g.lineage.tokenizer_sha256.clone(),
        recipe_sha256: g.lineage.recipe_sha256.clone(),
        client: r.client.into(),
        target: r.target.name().into(),
        examples: examples.len() as u64,
        local_steps: steps as u64,
        tool: format!("edgeforge {}", env!("CARGO_PKG_VERSION")),
        int8: r.int8,
    };
    let overwrite = if r.force {
        Overwrite::Allow
    } else {
        Overwrite::Deny
    };
    update::write(r.out, &meta, &deltas, overwrite).map_err(fail(r.out))?;
    Ok(Trained {
        update: r.out.to_path_buf(),
        base: g.id.clone(),
        examples: examples.len(),
        steps,
        tensors: deltas.len(),
        trainable,
        loss_first: losses[0],
        loss_last: *losses.last().expect("at least one step"),
        bytes: std::fs::metadata(r.out).map(|m| m.len()).unwrap_or(0),
    })
}
