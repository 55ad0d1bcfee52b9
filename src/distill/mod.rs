//! Knowledge distillation on burn's autodiff CPU backend: a student encoder
//! learns to reproduce a teacher's pooled sentence embeddings (MSE + cosine,
//! sentence-transformers' model-distillation recipe), from a recipe, with
//! atomic checkpoints that resume to the same weights as an unbroken run.

pub mod checkpoint;
pub mod data;
pub mod recipe;
pub mod student;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::engine::weights::Weights;
use crate::engine::{Batch, BertEncoder, EngineError, TextTokenizer};
use crate::model::{Architecture, BertConfig, Model, ModelError};
use checkpoint::TrainState;
use data::{Examples, TeacherOutputs};
use recipe::{LoadedRecipe, Schedule};
use student::SplitMix64;

#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    #[error("{}: {message}", path.display())]
    At { path: PathBuf, message: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl DistillError {
    pub fn at(path: &Path, message: impl Into<String>) -> Self {
        Self::At {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// How a run is driven from the command line.
pub struct Options<'a> {
    pub out: PathBuf,
    pub resume: bool,
    pub force: bool,
    /// Stop after this many steps with a checkpoint (a later `--resume` continues).
    pub until_step: Option<usize>,
    /// Set by Ctrl-C: checkpoint and stop after the current step.
    pub interrupt: &'a AtomicBool,
}

/// What a run reports as it goes.
pub enum Event {
    Teacher {
        examples: usize,
    },
    TeacherProgress(usize),
    Training {
        from_step: usize,
        steps: usize,
    },
    Step {
        step: usize,
        loss: f32,
        examples_per_second: f64,
    },
    Checkpoint {
        step: usize,
        dir: PathBuf,
    },
    Evaluating,
}

/// How a run ended.
pub enum Outcome {
    Finished(Box<Metrics>),
    /// Stopped at `--until-step` or by Ctrl-C, with a checkpoint to resume from.
    Paused {
        step: usize,
        checkpoint: PathBuf,
        interrupted: bool,
    },
}

/// `metrics.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub name: String,
    pub recipe_sha256: String,
    pub teacher_sha256: String,
    pub model: PathBuf,
    pub init: String,
    pub teacher_parameters: u64,
    pub student_parameters: u64,
    pub layers: usize,
    pub train_examples: usize,
    pub eval_examples: usize,
    pub steps: usize,
    pub batch_size: usize,
    /// Held-out cosine between student and teacher embeddings.
    pub eval_cosine_init: f64,
    pub eval_cosine: f64,
    pub eval_cosine_min: f64,
    /// Mean loss of the first and last 10% of steps.
    pub loss_start: f64,
    pub loss_end: f64,
    pub teacher_cache_hit: bool,
    pub train_seconds: f64,
    pub speed: Speed,
    pub losses: Vec<f32>,
}

/// Measured inference time per example on the eval texts (batch 32, best of 3).
#[derive(Debug, Clone, Serialize)]
pub struct Speed {
    pub examples: usize,
    pub teacher_ms_per_example: f64,
    pub student_ms_per_example: f64,
    pub speedup: f64,
}

/// Everything checked and loaded before training.
struct Prepared {
    recipe: LoadedRecipe,
    recipe_sha256: String,
    teacher_sha256: String,
    teacher_dir: PathBuf,
    teacher_config: BertConfig,
    config: BertConfig,
    tokenizer_dir: PathBuf,
    train: Examples,
    eval: Examples,
}

/// Checks the recipe, the teacher and the data: every error here comes
/// before any training starts.
fn prepare(recipe_path: &Path) -> Result<Prepared, DistillError> {
    let recipe = LoadedRecipe::load(recipe_path)?;
    let teacher_dir = recipe.teacher.clone();
    if !teacher_dir.is_dir() {
        return Err(DistillError::at(
            &teacher_dir,
            "teacher.model must be a model folder (safetensors + config.json + tokenizer.json)",
        ));
    }
    let teacher = Model::open(&teacher_dir)?;
    let teacher_config = match &teacher.architecture {
        Architecture::Bert(c) => c.clone(),
        Architecture::Llama(_) | Architecture::Gemma3(_) | Architecture::LlamaLike(_) => {
            return Err(DistillError::at(
                &teacher_dir,
                "decoder distillation (KL on logits) is not supported yet: teachers must be BERT-style encoders",
            ))
        }
        Architecture::Other { name } => {
            return Err(DistillError::at(
                &teacher_dir,
                format!("teacher architecture `{name}` cannot be distilled (supported: bert encoders)"),
            ))
        }
    };
    let loss = &recipe.recipe.loss;
    if loss.kl.is_some() || loss.temperature.is_some() || loss.hard_label.is_some() {
        return Err(DistillError::at(
            &recipe.path,
            "loss.kl / loss.temperature / loss.hard_label apply to decoder teachers; this teacher is an encoder (use loss.mse and loss.cosine)",
        ));
    }
    let config = student::student_config(&recipe, &teacher_config)?;
    let teacher_tokenizer_path = teacher
        .tokenizer
        .clone()
        .ok_or_else(|| DistillError::at(&teacher_dir, "no tokenizer.json beside the teacher"))?;
    let tokenizer = TextTokenizer::from_json(&teacher_tokenizer_path)?;
    let tokenizer_dir = match &recipe.student_tokenizer {
        Some(path) => {
            let theirs = TextTokenizer::from_json(path)?;
            if theirs.vocabulary() != tokenizer.vocabulary() {
                return Err(DistillError::at(
                    path,
                    format!(
                        "tokenizer mismatch: its vocabulary ({} tokens) differs from the teacher's ({} tokens); the student must share the teacher's tokenizer",
                        theirs.vocabulary().len(),
                        tokenizer.vocabulary().len()
                    ),
                ));
            }
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        }
        None => teacher_dir.clone(),
    };
    let d = &recipe.recipe.data;
    let train = Examples::read(&recipe.train, &tokenizer, d.max_length, d.max_examples)?;
    let eval = Examples::read(&recipe.eval, &tokenizer, d.max_length, d.max_eval)?;
    let teacher_sha256 = files_sha256(&teacher.files)?;
    Ok(Prepared {
        recipe_sha256: hex::encode(Sha256::digest(&recipe.bytes)),
        recipe,
        teacher_sha256,
        teacher_dir,
        teacher_config,
        config,
        tokenizer_dir,
        train,
        eval,
    })
}

/// The recipe's untrained student (its layer subset or random init) as a
/// model folder at `dir`: the starting point of a federation.
pub fn initial_model(recipe_path: &Path, dir: &Path) -> Result<(), DistillError> {
    let p = prepare(recipe_path)?;
    let teacher = Model::open(&p.teacher_dir)?;
    let weights = Weights::new(&teacher);
    let student = student::initial_student(&p.recipe, &p.config, &weights, &Device::flex())?;
    let config_json = student::student_config_json(&p.teacher_dir.join("config.json"), &p.config)?;
    write_model(&p, &student, &config_json, dir)
}

/// Mean held-out cosine between the model in `dir` and the recipe's teacher
/// on the recipe's eval texts (the teacher's outputs are cached).
pub fn held_out_cosine(recipe_path: &Path, dir: &Path) -> Result<f64, DistillError> {
    let p = prepare(recipe_path)?;
    let teacher_model = Model::open(&p.teacher_dir)?;
    let plain = Device::flex();
    let teacher = BertEncoder::load(&p.teacher_config, &Weights::new(&teacher_model), &plain)?;
    let key = data::cache_key(&p.teacher_sha256, &p.eval);
    let (targets, _) = data::teacher_outputs(
        &teacher,
        &p.eval,
        &key,
        p.teacher_config.hidden_size,
        |_| {},
    )?;
    let model = Model::open(dir)?;
    let Architecture::Bert(config) = &model.architecture else {
        return Err(DistillError::at(dir, "not a BERT-style encoder"));
    };
    let student = BertEncoder::load(config, &Weights::new(&model), &plain)?;
    Ok(eval_cosine(&student, &p.eval, &targets).0)
}

/// Checks a recipe without training (`--check`): the errors `run` would give first.
pub fn check(recipe_path: &Path) -> Result<(), DistillError> {
    prepare(recipe_path).map(|_| ())
}

/// Runs a recipe to the end, to `--until-step`, or to Ctrl-C.
pub fn run(
    recipe_path: &Path,
    options: &Options,
    on_event: &mut dyn FnMut(Event),
) -> Result<Outcome, DistillError> {
    let p = prepare(recipe_path)?;
    let out = &options.out;
    let model_dir = out.join("model");
    if !options.resume && !options.force && (checkpoint::exists(out) || model_dir.exists()) {
        return Err(DistillError::at(
            out,
            "holds an earlier run; pass --resume to continue it or --force to start over",
        ));
    }
    if options.resume && !checkpoint::exists(out) {
        return Err(DistillError::at(out, "no checkpoint to resume from"));
    }
    if options.force && !options.resume {
        for dir in [checkpoint::checkpoints_dir(out), model_dir.clone()] {
            if dir.exists() {
                fs_err::remove_dir_all(&dir).map_err(|e| DistillError::at(&dir, e.to_string()))?;
            }
        }
    }
    fs_err::create_dir_all(out).map_err(|e| DistillError::at(out, e.to_string()))?;

    let teacher_model = Model::open(&p.teacher_dir)?;
    let weights = Weights::new(&teacher_model);
    let plain = Device::flex();
    let teacher = BertEncoder::load(&p.teacher_config, &weights, &plain)?;
    let hidden = p.teacher_config.hidden_size;
    if p.config.hidden_size != hidden {
        return Err(DistillError::at(
            &p.recipe.path,
            format!(
                "student.hidden {} differs from the teacher's {hidden}: embedding distillation needs equal widths",
                p.config.hidden_size
            ),
        ));
    }
    let mut cached = true;
    let mut teacher_for = |examples: &Examples| -> Result<TeacherOutputs, DistillError> {
        let key = data::cache_key(&p.teacher_sha256, examples);
        on_event(Event::Teacher {
            examples: examples.len(),
        });
        let (outputs, hit) = data::teacher_outputs(&teacher, examples, &key, hidden, |n| {
            on_event(Event::TeacherProgress(n))
        })?;
        cached &= hit;
        Ok(outputs)
    };
    let train_targets = teacher_for(&p.train)?;
    let eval_targets = teacher_for(&p.eval)?;
    let inputs_key = data::cache_key(&p.teacher_sha256, &p.train);

    let t = &p.recipe.recipe.train;
    let steps = t
        .steps
        .unwrap_or_else(|| t.epochs.unwrap_or(1) * p.train.len().div_ceil(t.batch_size));
    let device = Device::flex().autodiff();
    let config_json = student::student_config_json(&p.teacher_dir.join("config.json"), &p.config)?;
    let optimizer = AdamWConfig::new()
        .with_weight_decay(t.weight_decay as f32)
        .with_epsilon(1e-8)
        .init();
    let initial = student::initial_student(&p.recipe, &p.config, &weights, &device)?;
    let eval_cosine_init = eval_cosine(&initial.valid(), &p.eval, &eval_targets).0;
    let (mut model, mut optimizer, mut state) = if options.resume {
        let (m, o, s) = checkpoint::load(out, &p.recipe, &p.config, optimizer, &device)?;
        if s.recipe_sha256 != p.recipe_sha256 || s.inputs_key != inputs_key {
            return Err(DistillError::at(
                &checkpoint::checkpoints_dir(out),
                "the checkpoint was made from a different recipe, teacher or data; use --force to start over",
            ));
        }
        (m, o, s)
    } else {
        let state = TrainState {
            step: 0,
            recipe_sha256: p.recipe_sha256.clone(),
            inputs_key,
            losses: Vec::new(),
        };
        (initial, optimizer, state)
    };

    on_event(Event::Training {
        from_step: state.step,
        steps,
    });
    let started = Instant::now();
    let stop_at = options.until_step.unwrap_or(steps).min(steps);
    let mut batches = Batches {
        epoch: 0,
        batches: Vec::new(),
    };
    while state.step < stop_at {
        let step_started = Instant::now();
        let indices = batches.for_step(state.step, t.batch_size, &p.train, t.seed);
        let lr = lr_at(t, state.step, steps);
        let loss = train_step(
            &mut model,
            &mut optimizer,
            &p.train,
            &p.recipe.recipe.loss,
            indices,
            &train_targets,
            lr,
            &device,
        );
        state.losses.push(loss);
        state.step += 1;
        on_event(Event::Step {
            step: state.step,
            loss,
            examples_per_second: indices.len() as f64 / step_started.elapsed().as_secs_f64(),
        });
        let interrupted = options.interrupt.load(Ordering::SeqCst);
        let scheduled = t.checkpoint_every > 0 && state.step % t.checkpoint_every == 0;
        let pausing = interrupted || (state.step == stop_at && stop_at < steps);
        if scheduled || pausing {
            let dir = checkpoint::save(out, &model, &config_json, &optimizer, &state)?;
            on_event(Event::Checkpoint {
                step: state.step,
                dir: dir.clone(),
            });
            if pausing {
                return Ok(Outcome::Paused {
                    step: state.step,
                    checkpoint: dir,
                    interrupted,
                });
            }
        }
    }
    let train_seconds = started.elapsed().as_secs_f64();

    on_event(Event::Evaluating);
    let trained = model.valid();
    write_model(&p, &trained, &config_json, &model_dir)?;
    let (eval_cosine, eval_cosine_min) = eval_cosine(&trained, &p.eval, &eval_targets);
    let speed = measure_speed(&teacher, &trained, &p.eval);
    let tenth = (state.losses.len() / 10).max(1);
    let mean = |xs: &[f32]| xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len().max(1) as f64;
    let metrics = Metrics {
        name: p.recipe.name.clone(),
        recipe_sha256: p.recipe_sha256.clone(),
        teacher_sha256: p.teacher_sha256.clone(),
        model: model_dir,
        init: match &p.recipe.recipe.student.layers {
            recipe::Layers::Subset(l) => format!("teacher layers {l:?}"),
            recipe::Layers::Count(_) => format!("random (seed {})", t.seed),
        },
        teacher_parameters: student::parameter_count(&p.teacher_config),
        student_parameters: student::parameter_count(&p.config),
        layers: p.config.num_hidden_layers,
        train_examples: p.train.len(),
        eval_examples: p.eval.len(),
        steps,
        batch_size: t.batch_size,
        eval_cosine_init,
        eval_cosine,
        eval_cosine_min,
        loss_start: mean(&state.losses[..tenth.min(state.losses.len())]),
        loss_end: mean(&state.losses[state.losses.len().saturating_sub(tenth)..]),
        teacher_cache_hit: cached,
        train_seconds,
        speed,
        losses: state.losses,
    };
    let mut json = serde_json::to_string_pretty(&metrics).expect("metrics serialize");
    json.push('\n');
    checkpoint::write_file(&out.join("metrics.json"), json.as_bytes())?;
    Ok(Outcome::Finished(Box::new(metrics)))
}

/// One optimizer step on one batch; returns the batch loss.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_step(
    model: &mut BertEncoder,
    optimizer: &mut ModuleOptimizer,
    train: &Examples,
    l: &recipe::LossSpec,
    indices: &[usize],
    targets: &TeacherOutputs,
    lr: f64,
    device: &Device,
) -> f32 {
    let batch = Batch {
        ids: indices.iter().map(|&i| train.ids[i].clone()).collect(),
    };
    let hidden = targets.hidden;
    let rows: Vec<f32> = indices
        .iter()
        .flat_map(|&i| targets.row(i).iter().copied())
        .collect();
    let target = Tensor::<2>::from_data(TensorData::new(rows, [indices.len(), hidden]), device);
    let pooled = model.pooled(&batch);
    let loss = embedding_loss(pooled, target, l.mse, l.cosine);
    let value = loss
        .clone()
        .into_data()
        .try_into_vec::<f32>()
        .expect("scalar loss")[0];
    let grads = GradientsParams::from_grads(loss.backward(), &*model);
    let current = std::mem::replace(model, model.clone());
    *model = optimizer.step(lr, current, grads);
    value
}

/// `mse · mean((s - t)²) + cosine · mean(1 - cos(s, t))` over the batch.
fn embedding_loss(student: Tensor<2>, teacher: Tensor<2>, mse: f64, cosine: f64) -> Tensor<1> {
    let squared = (student.clone() - teacher.clone()).square().mean();
    let dot = (student.clone() * teacher.clone()).sum_dim(1);
    let norms = student.square().sum_dim(1).sqrt() * teacher.square().sum_dim(1).sqrt();
    let cos = (dot / norms.clamp_min(1e-12)).mean();
    squared.mul_scalar(mse) + cos.neg().add_scalar(1.0).mul_scalar(cosine)
}

/// Batches of one epoch: a seeded shuffle, cut into windows of 50 batches
/// whose examples are sorted by length (less padding, as Hugging Face's
/// length-grouped sampler does), then the batches themselves shuffled.
/// Any step's batch follows from the seed alone, which makes `--resume` exact.
pub(crate) struct Batches {
    epoch: usize,
    batches: Vec<Vec<usize>>,
}

impl Batches {
    pub(crate) fn new() -> Self {
        Self {
            epoch: 0,
            batches: Vec::new(),
        }
    }

    pub(crate) fn for_step<'a>(
        &'a mut self,
        step: usize,
        size: usize,
        examples: &Examples,
        seed: u64,
    ) -> &'a [usize] {
        let n = examples.len();
        let per_epoch = n.div_ceil(size);
        let epoch = step / per_epoch;
        if epoch != self.epoch || self.batches.is_empty() {
            let mix = |salt: u64| seed ^ (epoch as u64 + 1).wrapping_mul(salt);
            let mut order = shuffled(n, mix(0x9E37_79B9_7F4A_7C15));
            for window in order.chunks_mut(size * 50) {
                window.sort_by_key(|&i| examples.ids[i].len());
            }
            let batches: Vec<Vec<usize>> = order.chunks(size).map(<[usize]>::to_vec).collect();
            let shuffle = shuffled(batches.len(), mix(0xD1B5_4A32_D192_ED03));
            self.batches = shuffle.into_iter().map(|i| batches[i].clone()).collect();
            self.epoch = epoch;
        }
        &self.batches[step % per_epoch]
    }
}

fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Learning rate at `step`: linear warm-up, then constant, linear or cosine decay to 0.
pub(crate) fn lr_at(t: &recipe::TrainSpec, step: usize, steps: usize) -> f64 {
    if step < t.warmup_steps {
        return t.lr * (step + 1) as f64 / t.warmup_steps as f64;
    }
    let span = steps.saturating_sub(t.warmup_steps).max(1) as f64;
    let progress = (step - t.warmup_steps) as f64 / span;
    match t.schedule {
        Schedule::Constant => t.lr,
        Schedule::Linear => t.lr * (1.0 - progress),
        Schedule::Cosine => t.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

/// Mean and minimum cosine between student and teacher embeddings.
pub(crate) fn eval_cosine(
    student: &BertEncoder,
    eval: &Examples,
    targets: &TeacherOutputs,
) -> (f64, f64) {
    let h = targets.hidden;
    let rows = data::pooled_outputs(student, eval, h, &mut |_| {});
    let cosines: Vec<f64> = rows
        .chunks_exact(h)
        .enumerate()
        .map(|(i, s)| cosine(s, targets.row(i)))
        .collect();
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    (mean, cosines.iter().copied().fold(f64::INFINITY, f64::min))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    dot / (na.sqrt() * nb.sqrt()).max(1e-30)
}

fn measure_speed(teacher: &BertEncoder, student: &BertEncoder, eval: &Examples) -> Speed {
    let sample = Examples {
        path: eval.path.clone(),
        ids: eval.ids.iter().take(256).cloned().collect(),
    };
    let h = student.word.weight.dims()[1];
    let time = |encoder: &BertEncoder| {
        (0..3)
            .map(|_| {
                let started = Instant::now();
                data::pooled_outputs(encoder, &sample, h, &mut |_| {});
                started.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let (t, s) = (time(teacher), time(student));
    let per = |secs: f64| secs * 1000.0 / sample.len() as f64;
    Speed {
        examples: sample.len(),
        teacher_ms_per_example: per(t),
        student_ms_per_example: per(s),
        speedup: t / s,
    }
}

/// Tokenizer and sentence-transformers files copied beside the weights.
const SIDECARS: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
];

/// Writes the student model folder into a temp folder, then renames it into place.
fn write_model(
    p: &Prepared,
    student: &BertEncoder,
    config_json: &str,
    dir: &Path,
) -> Result<(), DistillError> {
    let parent = dir.parent().expect("model folder has a parent");
    let tmp = tempfile::Builder::new()
        .prefix(".model.")
        .tempdir_in(parent)
        .map_err(|e| DistillError::at(parent, e.to_string()))?;
    let metadata = [
        ("format".to_string(), "pt".to_string()),
        (
            "edgeforge.distill.recipe_sha256".into(),
            p.recipe_sha256.clone(),
        ),
        (
            "edgeforge.distill.teacher_sha256".into(),
            p.teacher_sha256.clone(),
        ),
    ]
    .into_iter()
    .collect();
    student::save_safetensors(student, &tmp.path().join("model.safetensors"), &metadata)?;
    checkpoint::write_file(&tmp.path().join("config.json"), config_json.as_bytes())?;
    for name in SIDECARS {
        let from = p.tokenizer_dir.join(name);
        let from = if from.exists() {
            from
        } else {
            p.teacher_dir.join(name)
        };
        if from.exists() {
            let to = tmp.path().join(name);
            if let Some(d) = to.parent() {
                fs_err::create_dir_all(d).map_err(|e| DistillError::at(d, e.to_string()))?;
            }
            fs_err::copy(&from, &to).map_err(|e| DistillError::at(&from, e.to_string()))?;
        }
    }
    if dir.exists() {
        fs_err::remove_dir_all(dir).map_err(|e| DistillError::at(dir, e.to_string()))?;
    }
    fs_err::rename(tmp.keep(), dir).map_err(|e| DistillError::at(dir, e.to_string()))?;
    Ok(())
}

/// sha256 over the sorted files' names and contents.
pub(crate) fn files_sha256(files: &[PathBuf]) -> Result<String, DistillError> {
    let mut h = Sha256::new();
    for f in files {
        let (_, sha) =
            crate::artifact::hash_file(f).map_err(|e| DistillError::at(f, e.to_string()))?;
        h.update(
            f.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        h.update(sha.as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_each_epoch_once_grouped_by_length() {
        let examples = Examples {
            path: PathBuf::new(),
            ids: (0..10).map(|i| vec![0; 1 + (i * 7) % 5]).collect(),
        };
        let mut b = Batches {
            epoch: 0,
            batches: Vec::new(),
        };
        let mut seen: Vec<usize> = (0..4)
            .flat_map(|s| b.for_step(s, 3, &examples, 3).to_vec())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        let again = b.for_step(5, 3, &examples, 3).to_vec();
        let mut fresh = Batches {
            epoch: 0,
            batches: Vec::new(),
        };
        assert_eq!(fresh.for_step(5, 3, &examples, 3), again.as_slice());
        let lens: Vec<usize> = again.iter().map(|&i| examples.ids[i].len()).collect();
        assert!(lens.windows(2).all(|w| w[0] <= w[1]), "{lens:?}");
    }
}
