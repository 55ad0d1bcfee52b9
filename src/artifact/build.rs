//! `build`: one build recipe in, one verified artifact per target out.
//! For every target: (distill) → plan with fit → quantize → package →
//! verify; a target whose inputs match the artifact already in `dist/` is
//! skipped. `dist/index.json` lists every variant for `select`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::accelerated;
use super::inputs::Inputs;
use super::manifest::Manifest;
use super::verify::{self, read_manifest};
use super::{hash_file, package, ArtifactError, PackageInput};
use crate::format::atomic::Overwrite;
use crate::model::Model;
use crate::quant::apply::{self, OutputFormat};
use crate::quant::plan::{self, Constraints};
use crate::target::{self, Target};

/// `[build]` of a build recipe (docs/recipes.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    pub name: String,
    pub version: String,
    /// The source model; or `distill`, a distill recipe whose student is built.
    pub model: Option<String>,
    pub distill: Option<String>,
    /// `gguf` (default), `safetensors`, or `auto`: GGUF where the target
    /// runs it, safetensors (edgeforge schemes) elsewhere.
    #[serde(default = "default_format")]
    pub format: String,
    /// Targets to build (default: every known target).
    #[serde(default)]
    pub targets: Vec<String>,
    /// Eval texts for the accuracy gate, one per line (default: built-in).
    pub eval: Option<String>,
    /// Calibration text for int8 accelerator variants (ONNX, TFLite), one
    /// sample per line; without it they get fp16 or fp32 only.
    pub calibration: Option<String>,
    /// How many of its non-empty lines to use.
    #[serde(default = "default_calibration_texts")]
    pub calibration_texts: usize,
    /// TFLite's fixed sequence length (the graph's input shape).
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
}

fn default_calibration_texts() -> usize {
    256
}

fn default_seq_len() -> usize {
    128
}

fn default_format() -> String {
    "gguf".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildFile {
    build: BuildSpec,
}

/// One row of `dist/index.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Variant {
    /// The model and version this row is of: one dist folder holds several.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
    pub target: String,
    /// The accelerator runtime an ONNX/TFLite variant is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    pub class: String,
    pub artifact: String,
    pub id: String,
    pub format: String,
    pub size_bytes: u64,
    /// Weights + KV cache + activations + runtime overhead at the target's context.
    pub peak_ram_bytes: u64,
    pub bits_per_weight: f64,
    pub accelerators: Vec<String>,
    /// Cosine drop (encoders) or perplexity increase in % (decoders) against the source.
    pub accuracy_delta: Option<f64>,
    /// Projected latency of one input (encoders) on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Projected generation speed (decoders) on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_tokens_per_second: Option<f64>,
    /// The federated global version it was built from (`fed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_id: Option<String>,
    pub verified: bool,
}

/// `dist/index.json`: every variant of every model and version built into
/// the folder, one self-describing row each.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(from = "StoredIndex")]
pub struct Index {
    pub variants: Vec<Variant>,
}

/// An index as read: before several models shared a folder, `name` and
/// `version` were top-level keys; rows without them take them from there.
#[derive(Deserialize)]
struct StoredIndex {
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: String,
    variants: Vec<Variant>,
}

impl From<StoredIndex> for Index {
    fn from(stored: StoredIndex) -> Self {
        Self::defaulting(stored.variants, &stored.name, &stored.version)
    }
}

impl Index {
    /// The rows, those without a model name or version taking `name` and
    /// `version` (from a legacy index or a registry index's annotations).
    pub fn defaulting(variants: Vec<Variant>, name: &str, version: &str) -> Self {
        let variants = variants
            .into_iter()
            .map(|mut v| {
                if v.name.is_empty() {
                    v.name = name.to_string();
                }
                if v.version.is_empty() {
                    v.version = version.to_string();
                }
                v
            })
            .collect();
        Self { variants }
    }

    /// The distinct model names, sorted.
    pub fn models(&self) -> Vec<&str> {
        let names: std::collections::BTreeSet<&str> =
            self.variants.iter().map(|v| v.name.as_str()).collect();
        names.into_iter().collect()
    }

    /// The newest version of `name` (numeric parts compared as numbers).
    pub fn newest_version(&self, name: &str) -> Option<&str> {
        self.variants
            .iter()
            .filter(|v| v.name == name)
            .map(|v| v.version.as_str())
            .max_by(|a, b| version_key(a).cmp(&version_key(b)))
    }
}

/// What identifies an index row, in the order rows are written: model,
/// version (oldest first), target, then its accelerator runtimes.
type RowKey<'a> = (&'a str, (Vec<u64>, bool, String), &'a str, Option<&'a str>);

fn row_key(v: &Variant) -> RowKey<'_> {
    (
        v.name.as_str(),
        version_key(&v.version),
        v.target.as_str(),
        v.runtime.as_deref(),
    )
}

/// `1.10.0` after `1.9.0`; a pre-release (`1.0.0-rc1`) before its release.
fn version_key(v: &str) -> (Vec<u64>, bool, String) {
    let (core, pre) = v.split_once('-').unwrap_or((v, ""));
    let numbers = core.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    (numbers, pre.is_empty(), pre.to_string())
}

/// What happened to one target.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub target: String,
    /// `built`, `skipped` (inputs unchanged), `cached` (fetched from the
    /// cache), `failed`.
    pub status: &'static str,
    pub detail: String,
}

/// Resolves a build recipe's `[build]` table and the source model path.
pub fn load_spec(path: &Path) -> Result<(BuildSpec, Vec<u8>), ArtifactError> {
    let bytes = crate::guard::read_bytes(path, crate::guard::Cap::TOML)
        .map_err(|e| ArtifactError::at(path, e.message))?;
    parse_spec(path, bytes)
}

/// A build recipe from its bytes, `path` naming it in errors.
pub fn parse_spec(path: &Path, bytes: Vec<u8>) -> Result<(BuildSpec, Vec<u8>), ArtifactError> {
    let text =
        std::str::from_utf8(&bytes).map_err(|_| ArtifactError::at(path, "not UTF-8 text"))?;
    let file: BuildFile = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map_or(1, |s| text[..s.start].matches('\n').count() + 1);
        ArtifactError::at(path, format!("line {line}: {}", e.message()))
    })?;
    let spec = file.build;
    super::check_identity(&spec.name, &spec.version).map_err(|e| match e {
        ArtifactError::At { path: key, message } => {
            ArtifactError::at(path, format!("build.{}: {message}", key.display()))
        }
        other => other,
    })?;
    if spec.model.is_some() == spec.distill.is_some() {
        return Err(ArtifactError::at(
            path,
            "[build] needs exactly one of `model` and `distill`",
        ));
    }
    if !(1..=100_000).contains(&spec.calibration_texts) {
        return Err(ArtifactError::at(
            path,
            format!(
                "build.calibration_texts {}: use 1 to 100000",
                spec.calibration_texts
            ),
        ));
    }
    if !(2..=8192).contains(&spec.seq_len) {
        return Err(ArtifactError::at(
            path,
            format!("build.seq_len {}: use 2 to 8192", spec.seq_len),
        ));
    }
    if !["gguf", "safetensors", "auto"].contains(&spec.format.as_str()) {
        return Err(ArtifactError::at(
            path,
            format!(
                "build.format `{}`: use gguf, safetensors or auto",
                spec.format
            ),
        ));
    }
    Ok((spec, bytes))
}

/// Everything `build` needs besides the recipe.
pub struct BuildOptions<'a> {
    pub recipe: &'a Path,
    pub targets: Vec<String>,
    pub dist: &'a Path,
    pub jobs: usize,
    pub targets_dir: Option<&'a Path>,
    /// Resolves `distill = ...` to the student's model folder (runs or reuses the distillation).
    pub distill: &'a (dyn Fn(&Path, &Path) -> Result<PathBuf, String> + Sync),
    pub on_done: &'a (dyn Fn(&Outcome) + Sync),
    /// Where to look before building a target (`--cache`).
    pub cache: Option<&'a Cache<'a>>,
    /// A progress bar for one target (hidden when nobody watches).
    pub progress: &'a (dyn Fn(&str) -> indicatif::ProgressBar + Sync),
    /// Replace an artifact this recipe did not make (one `package` made).
    pub force: bool,
}

/// A path named in `recipe`, with `${VAR}`s expanded, relative to the recipe's folder.
pub(super) fn resolve(recipe: &Path, path: &str) -> Result<PathBuf, ArtifactError> {
    let expanded =
        crate::distill::recipe::expand_vars(path).map_err(|m| ArtifactError::at(recipe, m))?;
    Ok(recipe.parent().unwrap_or(Path::new(".")).join(expanded))
}

/// A registry (or any store) that may already hold the artifact for some
/// inputs: given the target, the inputs hash and the artifact folder to
/// fill, it fills it and returns a detail line, or returns `None`.
pub type Cache<'a> = dyn Fn(&Target, &str, &Path) -> Result<Option<String>, String> + Sync + 'a;

/// What `build` would build: the recipe, the chosen targets and each one's inputs.
pub struct Planned {
    pub spec: BuildSpec,
    pub targets: Vec<(Target, Inputs)>,
    /// The source model, for `model = ...` builds (distill builds make it later).
    pub source: Option<PathBuf>,
    pub distill_recipe: Option<PathBuf>,
}

/// Resolves the recipe, the targets and their inputs without building.
pub fn plan_targets(
    recipe: &Path,
    chosen: &[String],
    targets_dir: Option<&Path>,
) -> Result<Planned, ArtifactError> {
    let (spec, recipe_bytes) = load_spec(recipe)?;
    let distill_recipe = spec
        .distill
        .as_deref()
        .map(|p| resolve(recipe, p))
        .transpose()?;
    let source = spec
        .model
        .as_deref()
        .map(|p| resolve(recipe, p))
        .transpose()?;
    let source_hashes: Vec<String> = match &source {
        Some(source) => Model::open(source)?
            .files
            .iter()
            .map(|f| hash_file(f).map(|h| h.1))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let distill_sha = distill_recipe
        .as_deref()
        .map(|d| hash_file(d).map(|h| h.1))
        .transpose()?;
    let names = if !chosen.is_empty() {
        chosen.to_vec()
    } else if !spec.targets.is_empty() {
        spec.targets.clone()
    } else {
        target::load_all(targets_dir)
            .map_err(|e| ArtifactError::at(recipe, e.to_string()))?
            .iter()
            .map(|t| t.name().to_string())
            .collect()
    };
    let recipe_sha = hex::encode(Sha256::digest(&recipe_bytes));
    let targets = names
        .iter()
        .map(|n| {
            let t = target::load(n, targets_dir)
                .map_err(|e| ArtifactError::at(recipe, e.to_string()))?;
            let inputs = Inputs {
                recipe: recipe_sha.clone(),
                distill: distill_sha.clone(),
                source: source_hashes.clone(),
                target: t.sha256.clone(),
                tool: env!("CARGO_PKG_VERSION").into(),
                runtime: None,
                calibration: None,
            };
            Ok((t, inputs))
        })
        .collect::<Result<_, ArtifactError>>()?;
    Ok(Planned {
        spec,
        targets,
        source,
        distill_recipe,
    })
}

/// The eval texts a recipe names, else the built-in set.
fn eval_texts(recipe: &Path, spec: &BuildSpec) -> Result<Vec<String>, ArtifactError> {
    Ok(match &spec.eval {
        Some(e) => {
            let path = resolve(recipe, e)?;
            let text = crate::guard::read_text(&path, crate::guard::Cap::TEXT)
                .map_err(|e| ArtifactError::at(&path, e.message))?;
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        }
        None => super::accuracy::DEFAULT_EVAL
            .iter()
            .map(|s| s.to_string())
            .collect(),
    })
}

/// Builds every target; returns each outcome and the index written.
/// A target whose artifact in `dist/` has the same inputs is skipped; one
/// the cache holds is fetched; only the rest are built (and only then is a
/// distill stage run).
pub fn build(o: &BuildOptions) -> Result<(Vec<Outcome>, Index), ArtifactError> {
    let planned = plan_targets(o.recipe, &o.targets, o.targets_dir)?;
    let spec = &planned.spec;
    let eval = eval_texts(o.recipe, spec)?;
    fs_err::create_dir_all(o.dist).map_err(|e| ArtifactError::at(o.dist, e.to_string()))?;
    let _lock = lock(o.dist)?;
    let version_dir = o.dist.join(&spec.name).join(&spec.version);
    remove_leftovers(&version_dir);

    let calibration = accelerated::calibration_text(o.recipe, spec);
    let units = units(&planned, &calibration);
    let mut outcomes: Vec<Option<Outcome>> = Vec::new();
    for unit in &units {
        let t = &planned.targets[unit.target].0;
        let dir = version_dir.join(&unit.folder);
        let outcome = |status, detail| {
            Some(Outcome {
                target: unit.folder.clone(),
                status,
                detail,
            })
        };
        let local = read_manifest(&dir).ok().filter(|(m, _)| {
            Inputs::of_manifest(m).as_ref() == Some(&unit.inputs)
                && verify::integrity(&dir, m).iter().all(|c| c.passed)
        });
        // An artifact `package` made (no build inputs recorded) is not ours to replace.
        let foreign = read_manifest(&dir)
            .ok()
            .filter(|(m, _)| !o.force && Inputs::of_manifest(m).is_none());
        let done = if let Kind::Unsupported(reason) = &unit.kind {
            outcome("unsupported", reason.clone())
        } else if let Some((_, id)) = local {
            outcome("skipped", format!("inputs unchanged: artifact {id}"))
        } else if let Some((_, id)) = foreign {
            outcome(
                "failed",
                format!("{} holds artifact {id}, which `package` made, not a build: pass --force to replace it", dir.display()),
            )
        } else if let (Kind::Graph(u), Err(e)) = (&unit.kind, &calibration) {
            u.schemes
                .contains(&"int8_pc")
                .then(|| outcome("failed", e.to_string()))
                .flatten()
        } else if let (Kind::Main, Some(cache)) = (&unit.kind, o.cache) {
            match cache(t, &unit.inputs.hash(), &dir) {
                Ok(Some(detail)) => outcome("cached", detail),
                Ok(None) => None,
                Err(e) => outcome("failed", format!("cache: {e}")),
            }
        } else {
            None
        };
        if let Some(d) = &done {
            (o.on_done)(d);
        }
        outcomes.push(done);
    }

    let pending: Vec<usize> = (0..outcomes.len())
        .filter(|&i| outcomes[i].is_none())
        .collect();
    if !pending.is_empty() {
        let source = match (&planned.source, &planned.distill_recipe) {
            (Some(m), _) => m.clone(),
            (None, Some(recipe)) => {
                let work = o.dist.join(".build").join(&spec.name).join("distill");
                (o.distill)(recipe, &work).map_err(|m| ArtifactError::at(recipe, m))?
            }
            _ => unreachable!("checked in load_spec"),
        };
        let exports = accelerated::Exports::default();
        let next = AtomicUsize::new(0);
        let built = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..o.jobs.max(1).min(pending.len()) {
                scope.spawn(|| {
                    while let Some(&i) = pending.get(next.fetch_add(1, Ordering::SeqCst)) {
                        let unit = &units[i];
                        let t = &planned.targets[unit.target].0;
                        let bar = (o.progress)(&unit.folder);
                        let result = match &unit.kind {
                            Kind::Graph(g) => accelerated::build_graph(
                                &accelerated::GraphJob {
                                    options: o,
                                    spec,
                                    source: &source,
                                    eval: &eval,
                                    target: t,
                                    unit: g,
                                    calibration: calibration
                                        .as_ref()
                                        .ok()
                                        .and_then(|c| c.as_deref()),
                                    distill_recipe: planned.distill_recipe.as_deref(),
                                    exports: &exports,
                                },
                                &bar,
                            ),
                            _ => build_target(
                                o,
                                spec,
                                &source,
                                &eval,
                                t,
                                planned.distill_recipe.as_deref(),
                                &bar,
                            ),
                        };
                        let outcome = result.unwrap_or_else(|e| Outcome {
                            target: unit.folder.clone(),
                            status: "failed",
                            detail: e.to_string(),
                        });
                        bar.finish_and_clear();
                        (o.on_done)(&outcome);
                        built
                            .lock()
                            .expect("no panics while holding")
                            .push((i, outcome));
                    }
                });
            }
        });
        for (i, outcome) in built.into_inner().expect("threads joined") {
            outcomes[i] = Some(outcome);
        }
    }
    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .map(|o| o.expect("every target ran"))
        .collect();
    let index = write_index(o.dist, spec, o.targets_dir)?;
    Ok((outcomes, index))
}

/// What one row of a build makes.
enum Kind {
    /// The target's main artifact (GGUF or safetensors).
    Main,
    /// An accelerator variant (ONNX or TFLite).
    Graph(accelerated::GraphUnit),
    /// An accelerator runtime edgeforge cannot write for, and why.
    Unsupported(String),
}

struct Unit {
    /// Index into `Planned::targets`.
    target: usize,
    kind: Kind,
    inputs: Inputs,
    /// Its folder under `dist/<name>/<version>/`.
    folder: String,
}

/// Every target's main artifact, then its accelerator variants.
fn units(planned: &Planned, calibration: &Result<Option<String>, ArtifactError>) -> Vec<Unit> {
    let calibration_sha = calibration
        .as_ref()
        .ok()
        .and_then(|c| c.as_ref())
        .map(|text| hex::encode(Sha256::digest(text.as_bytes())));
    let mut units = Vec::new();
    for (i, (t, inputs)) in planned.targets.iter().enumerate() {
        units.push(Unit {
            target: i,
            kind: Kind::Main,
            inputs: inputs.clone(),
            folder: t.name().into(),
        });
        for plan in accelerated::plans(t) {
            let (runtime, kind) = match plan {
                accelerated::Plan::Build(u) => (u.runtime.clone(), Kind::Graph(u)),
                accelerated::Plan::Unsupported { runtime, reason } => {
                    (runtime, Kind::Unsupported(reason))
                }
            };
            units.push(Unit {
                target: i,
                kind,
                inputs: Inputs {
                    runtime: Some(runtime.clone()),
                    calibration: calibration_sha.clone(),
                    ..inputs.clone()
                },
                folder: format!("{}.{runtime}", t.name()),
            });
        }
    }
    units
}

/// Builds one target's artifact from `source`; `distill_recipe` is copied
/// into the artifact.
#[allow(clippy::too_many_arguments)]
pub(super) fn build_target(
    o: &BuildOptions,
    spec: &BuildSpec,
    source: &Path,
    eval: &[String],
    target: &Target,
    distill_recipe: Option<&Path>,
    bar: &indicatif::ProgressBar,
) -> Result<Outcome, ArtifactError> {
    bar.set_message("planning");
    let model = Model::open(source)?;
    let gguf = match spec.format.as_str() {
        "auto" => crate::profile::accounting::wants_gguf(target),
        other => other == "gguf",
    };
    let constraints = Constraints::for_model(&model, Some(target.allowed_schemes()), gguf);
    let footprint_of = |p: &plan::Plan| Some(super::footprint_on(&model, target, p.total_bytes()));
    let plan = match plan::fit(&model, &constraints, &footprint_of)
        .map_err(|m| ArtifactError::at(source, m))?
    {
        Ok(plan) => plan,
        Err((plan, miss)) => {
            return Ok(Outcome {
                target: target.name().into(),
                status: "failed",
                detail: format!(
                    "nothing fits: the smallest plan ({}) misses the budget by {:.1} MiB",
                    plan.preset,
                    miss.shortfall_mib()
                ),
            })
        }
    };
    // Safetensors variants are model folders: the weights plus the source's
    // config and tokenizer, so the engine (and any HF loader) can run them.
    let work = o.dist.join(".build").join(&spec.name).join(target.name());
    let _ = fs_err::remove_dir_all(&work);
    fs_err::create_dir_all(&work).map_err(|e| ArtifactError::at(&work, e.to_string()))?;
    let _cleanup = RemoveOnDrop(&work);
    let file = if gguf {
        work.join(format!("{}.{}.gguf", spec.name, target.name()))
    } else {
        for sidecar in model
            .files
            .iter()
            .filter(|f| !f.to_string_lossy().contains(".safetensors"))
        {
            let to = work.join(sidecar.file_name().expect("model files have names"));
            fs_err::copy(sidecar, &to).map_err(|e| ArtifactError::at(&to, e.to_string()))?;
        }
        work.join("model.safetensors")
    };
    bar.set_message("quantizing");
    bar.set_length(model.tensors.iter().map(|t| t.n_bytes).sum());
    apply::write(
        &model,
        &plan,
        &apply::Output {
            path: &file,
            format: if gguf {
                OutputFormat::Gguf
            } else {
                OutputFormat::Safetensors
            },
            overwrite: Overwrite::Allow,
            name: &spec.name,
            progress: bar,
            imatrix: None,
        },
    )
    .map_err(|m| ArtifactError::at(&file, m))?;
    bar.set_message("packaging");
    let payload = if gguf { file.clone() } else { work.clone() };
    let packaged = package(&PackageInput {
        distill_recipe,
        model: &payload,
        reference: Some(source),
        target,
        name: &spec.name,
        version: &spec.version,
        recipe: Some(o.recipe),
        eval: eval.to_vec(),
        out: o.dist,
        force: true,
        // Built anyway, so the table shows by how much; the index marks it unverified.
        gate: false,
        runtime: None,
    })?;
    let _ = fs_err::remove_dir_all(&work);
    bar.set_message("verifying");
    let v = verify::verify(&packaged.dir, None, eval, o.targets_dir)?;
    let failed = v.failures();
    Ok(Outcome {
        target: target.name().into(),
        status: if failed.is_empty() { "built" } else { "failed" },
        detail: if failed.is_empty() {
            format!(
                "{} ({}), artifact {}",
                plan.preset,
                crate::units::human_bytes(packaged.manifest.metrics.size_bytes),
                packaged.id
            )
        } else {
            format!("verify failed: {}", failed.join("; "))
        },
    })
}

/// Rewrites this name and version's rows of `dist/index.json` from its
/// artifacts on disk, keeping the rows of every other model and version
/// whose folder is still there; returns this build's rows.
fn write_index(
    dist: &Path,
    spec: &BuildSpec,
    targets_dir: Option<&Path>,
) -> Result<Index, ArtifactError> {
    let root = dist.join(&spec.name).join(&spec.version);
    let mut variants = Vec::new();
    let mut dirs: Vec<PathBuf> = fs_err::read_dir(&root)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    for dir in dirs {
        let Ok((m, id)) = read_manifest(&dir) else {
            continue;
        };
        let artifact = dir
            .strip_prefix(dist)
            .unwrap_or(&dir)
            .to_string_lossy()
            .into_owned();
        // Selectable only if intact and within its target's accuracy budget:
        // `select` must never hand out a variant `verify` fails.
        let within_budget = match (
            &m.metrics.accuracy,
            target::load(&m.target.name, targets_dir),
        ) {
            (Some(acc), Ok(t)) => acc.gates(&t.spec.accuracy).iter().all(|g| g.passed),
            _ => true,
        };
        let verified = within_budget && verify::integrity(&dir, &m).iter().all(|c| c.passed);
        variants.push(variant_of(&m, id, artifact, verified, targets_dir));
    }
    let path = dist.join("index.json");
    let mut rows = match fs_err::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Index>(&bytes)
            .map_err(|e| {
                ArtifactError::at(
                    &path,
                    format!("not a dist index ({e}): move it away to write a new one"),
                )
            })?
            .variants
            .into_iter()
            .filter(|v| v.name != spec.name || v.version != spec.version)
            .filter(|v| dist.join(&v.artifact).join("manifest.json").is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    rows.extend(variants.iter().cloned());
    rows.sort_by(|a, b| row_key(a).cmp(&row_key(b)));
    let json = index_json(&Index { variants: rows });
    crate::format::atomic::write_atomic(&path, json.as_bytes(), Overwrite::Allow)
        .map_err(|e| ArtifactError::at(&path, e.to_string()))?;
    Ok(Index { variants })
}

/// The index row of one artifact.
pub fn variant_of(
    m: &Manifest,
    id: String,
    artifact: String,
    verified: bool,
    targets_dir: Option<&Path>,
) -> Variant {
    let target = target::load(&m.target.name, targets_dir).ok();
    let acc = m.metrics.accuracy.as_ref();
    let projection = m.metrics.projection.as_ref();
    Variant {
        name: m.name.clone(),
        version: m.version.clone(),
        target: m.target.name.clone(),
        runtime: m.target.runtime.clone(),
        class: m.target.class.clone(),
        artifact,
        id,
        format: m.quantization.format.clone(),
        size_bytes: m.metrics.size_bytes,
        peak_ram_bytes: m.metrics.total_bytes,
        bits_per_weight: m.quantization.bits_per_weight,
        // Only the accelerators whose runtime loads this variant's format: a
        // GGUF on a Pixel runs on its CPU, not on its TPU (LiteRT reads TFLite).
        accelerators: target
            .map(|t| {
                t.spec
                    .accelerators
                    .iter()
                    .filter(|a| {
                        t.spec.runtimes.iter().any(|r| {
                            a.runtimes.contains(&r.name)
                                && r.format == m.quantization.format
                                && m.target.runtime.as_ref().is_none_or(|n| n == &r.name)
                        })
                    })
                    .map(|a| a.kind.clone())
                    .collect()
            })
            .unwrap_or_default(),
        accuracy_delta: acc.and_then(|a| a.cosine_drop.or(a.perplexity_increase_pct)),
        latency_ms: projection.and_then(|p| p.latency_ms),
        decode_tokens_per_second: projection.and_then(|p| p.decode_tokens_per_second),
        global_version: m.global.as_ref().map(|g| g.version),
        global_id: m.global.as_ref().map(|g| g.id.clone()),
        verified,
    }
}

/// An exclusive lock on `dist/.lock` for the build: a second build into the
/// same folder waits instead of interleaving writes.
fn lock(dist: &Path) -> Result<std::fs::File, ArtifactError> {
    let path = dist.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ArtifactError::at(&path, e.to_string()))?;
    file.lock()
        .map_err(|e| ArtifactError::at(&path, format!("cannot lock: {e}")))?;
    Ok(file)
}

/// Joins indexes (matrix jobs' partial ones, other models' dist folders):
/// each (model, version, target, runtime) once (the same artifact if it
/// appears twice), ordered by those keys so the inputs' order does not matter.
pub fn merge_indexes(parts: &[Index]) -> Result<Index, String> {
    if parts.is_empty() {
        return Err("nothing to merge".into());
    }
    let mut rows = std::collections::BTreeMap::<RowKey, &Variant>::new();
    for v in parts.iter().flat_map(|p| &p.variants) {
        match rows.insert(row_key(v), v) {
            Some(other) if other != v => {
                return Err(format!(
                    "{} {} target `{}`{} appears twice with different artifacts ({} and {})",
                    v.name,
                    v.version,
                    v.target,
                    v.runtime
                        .as_ref()
                        .map(|r| format!(" runtime `{r}`"))
                        .unwrap_or_default(),
                    other.id,
                    v.id
                ))
            }
            _ => {}
        }
    }
    Ok(Index {
        variants: rows.into_values().cloned().collect(),
    })
}

/// The index as `build` writes it (pretty JSON, one trailing newline).
pub fn index_json(index: &Index) -> String {
    let mut json = serde_json::to_string_pretty(index).expect("index serializes");
    json.push('\n');
    json
}

/// What a device asks for.
pub struct Want<'a> {
    /// The model and version (`None`: any; the caller resolves ambiguity).
    pub model: Option<&'a str>,
    pub version: Option<&'a str>,
    pub ram_mb: u64,
    pub accelerator: Option<&'a str>,
    pub format: Option<&'a str>,
}

/// The best variant for a device: verified, within its RAM, with the
/// accelerator and format asked for; best = most bits per weight (quality),
/// then the smaller file, then the most headroom (least peak RAM).
pub fn select<'a>(index: &'a Index, want: &Want) -> Option<&'a Variant> {
    let ram = want.ram_mb << 20;
    index
        .variants
        .iter()
        .filter(|v| v.verified && v.peak_ram_bytes <= ram)
        .filter(|v| want.model.is_none_or(|m| v.name == m))
        .filter(|v| want.version.is_none_or(|n| v.version == n))
        .filter(|v| want.format.is_none_or(|f| v.format == f))
        .filter(|v| {
            want.accelerator
                .is_none_or(|a| v.accelerators.iter().any(|k| k == a))
        })
        .max_by(|a, b| {
            a.bits_per_weight
                .total_cmp(&b.bits_per_weight)
                .then(b.size_bytes.cmp(&a.size_bytes))
                .then(b.peak_ram_bytes.cmp(&a.peak_ram_bytes))
                .then(b.target.cmp(&a.target))
        })
}

/// Temp folders a killed build left beside the artifacts (`.<target>.XXXX`);
/// safe to remove while holding the lock.
fn remove_leftovers(version_dir: &Path) {
    let Ok(entries) = fs_err::read_dir(version_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') && entry.path().is_dir() {
            let _ = fs_err::remove_dir_all(entry.path());
        }
    }
}

/// A scratch folder removed however the step ends (a failed target must not
/// leave its half-made files under `.build/`).
pub(super) struct RemoveOnDrop<'a>(pub(super) &'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = fs_err::remove_dir_all(self.0);
        if let Some(parent) = self.0.parent() {
            // Only succeeds once the last target of this name is done.
            let _ = std::fs::remove_dir(parent);
            if let Some(build) = parent.parent() {
                let _ = std::fs::remove_dir(build);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, version: &str, target: &str, runtime: Option<&str>, id: &str) -> Variant {
        Variant {
            name: name.into(),
            version: version.into(),
            target: target.into(),
            runtime: runtime.map(Into::into),
            class: "sbc".into(),
            artifact: format!("{name}/{version}/{target}"),
            id: id.into(),
            format: "gguf".into(),
            size_bytes: 1,
            peak_ram_bytes: 1,
            bits_per_weight: 8.0,
            accelerators: vec![],
            accuracy_delta: None,
            latency_ms: None,
            decode_tokens_per_second: None,
            global_version: None,
            global_id: None,
            verified: true,
        }
    }

    #[test]
    fn versions_order_numerically_with_pre_releases_first() {
        let index = Index {
            variants: ["1.9.0", "1.10.0", "1.10.0-rc1", "0.2.0"]
                .iter()
                .map(|v| row("m", v, "t", None, v))
                .collect(),
        };
        assert_eq!(index.newest_version("m"), Some("1.10.0"));
        assert_eq!(index.newest_version("other"), None);
    }

    #[test]
    fn merge_keeps_every_model_and_each_runtime_of_one_target() {
        let a = Index {
            variants: vec![
                row("b", "1.0.0", "pi", None, "1"),
                row("a", "1.0.0", "npu", Some("onnx"), "2"),
            ],
        };
        let b = Index {
            variants: vec![
                row("a", "1.0.0", "npu", None, "3"),
                row("b", "1.0.0", "pi", None, "1"),
            ],
        };
        let merged = merge_indexes(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(merged, merge_indexes(&[b, a.clone()]).unwrap());
        let ids: Vec<&str> = merged.variants.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["3", "2", "1"]);
        let clash = Index {
            variants: vec![row("b", "1.0.0", "pi", None, "9")],
        };
        let err = merge_indexes(&[a, clash]).unwrap_err();
        assert!(err.contains("b 1.0.0 target `pi`"), "{err}");
    }

    #[test]
    fn a_legacy_index_gives_its_rows_the_top_level_name_and_version() {
        let json = r#"{"name":"m","version":"1.0.0","variants":[]}"#;
        let mut legacy: serde_json::Value = serde_json::from_str(json).unwrap();
        let mut v = serde_json::to_value(row("", "", "pi", None, "1")).unwrap();
        v.as_object_mut().unwrap().remove("name");
        v.as_object_mut().unwrap().remove("version");
        legacy["variants"] = serde_json::json!([v]);
        let index: Index = serde_json::from_value(legacy).unwrap();
        assert_eq!(index.models(), ["m"]);
        assert_eq!(index.variants[0].version, "1.0.0");
    }
}
