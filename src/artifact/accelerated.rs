//! A target's accelerator variants: for each runtime an accelerator of the
//! target runs (OpenVINO on an Intel NPU, TensorRT on a Jetson, QNN on a
//! Hexagon NPU, LiteRT or the Edge TPU runtime on a TPU), the ONNX or TFLite
//! file that runtime loads, in the cheapest scheme both run (int8, then
//! fp16, then fp32) that stays within the target's accuracy budget.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::build::{BuildOptions, BuildSpec, Outcome};
use super::graph::{GraphFormat, SIDE_FILES};
use super::{package, verify, ArtifactError, PackageInput};
use crate::format::onnx::bert::ActivationType;
use crate::format::onnx::export::{self as onnx, OnnxScheme};
use crate::format::onnx::genai;
use crate::format::tflite;
use crate::model::Model;
use crate::quant::qdq::Int8Options;
use crate::target::Target;

/// Schemes edgeforge writes as encoder graphs, cheapest first, in
/// target-profile names.
const SCHEMES: [&str; 3] = ["int8_pc", "F16", "F32"];
/// Schemes edgeforge writes as decoder graphs (onnxruntime-genai folders),
/// cheapest first: fewer scales per weight first.
const DECODER_SCHEMES: [&str; 3] = ["int4_g128_sym", "int4_g64_sym", "int4_g32_sym"];

/// Calibration text file name inside an artifact (the lines int8 used).
pub const CALIBRATION: &str = "calibration.txt";

/// One accelerator runtime of a target that edgeforge can write for.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphUnit {
    pub runtime: String,
    pub accelerator: String,
    pub format: GraphFormat,
    /// Candidate schemes for an encoder, cheapest first.
    pub schemes: Vec<&'static str>,
    /// Candidate schemes for a decoder, cheapest first.
    pub decoder_schemes: Vec<&'static str>,
    /// How an int8 graph codes its activations for this runtime.
    pub activations: ActivationType,
}

/// What a target's accelerators get: a unit to build, or why not.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Build(GraphUnit),
    Unsupported { runtime: String, reason: String },
}

/// The accelerator runtimes of `target`, each planned once. Runtimes that
/// load GGUF or safetensors are served by the target's main artifact.
pub fn plans(target: &Target) -> Vec<Plan> {
    let mut out: Vec<Plan> = Vec::new();
    for (accel, name, runtime) in target.accelerator_runtimes() {
        let seen = out.iter().any(|p| match p {
            Plan::Build(u) => u.runtime == name,
            Plan::Unsupported { runtime, .. } => runtime == name,
        });
        if seen {
            continue;
        }
        let Some(runtime) = runtime else {
            out.push(Plan::Unsupported {
                runtime: name.into(),
                reason: format!(
                    "{}'s profile has no [[runtimes]] entry `{name}`",
                    target.name()
                ),
            });
            continue;
        };
        if ["gguf", "safetensors"].contains(&runtime.format.as_str()) {
            continue;
        }
        let Some(format) = GraphFormat::parse(&runtime.format) else {
            out.push(Plan::Unsupported {
                runtime: name.into(),
                reason: format!(
                    "{} loads {}, which edgeforge does not write (it writes onnx and tflite)",
                    name, runtime.format
                ),
            });
            continue;
        };
        let both_run = |candidates: &[&'static str]| -> Vec<&'static str> {
            candidates
                .iter()
                .copied()
                .filter(|s| runtime.weight_schemes.iter().any(|w| w == s))
                .filter(|s| accel.weight_schemes.iter().any(|w| w == s))
                .collect()
        };
        let (schemes, decoder_schemes) = (both_run(&SCHEMES), both_run(&DECODER_SCHEMES));
        if schemes.is_empty() && decoder_schemes.is_empty() {
            out.push(Plan::Unsupported {
                runtime: name.into(),
                reason: format!(
                    "{} on the {} runs none of the graph schemes edgeforge writes ({}, {})",
                    name,
                    accel.name,
                    SCHEMES.join(", "),
                    DECODER_SCHEMES.join(", ")
                ),
            });
            continue;
        }
        out.push(Plan::Build(GraphUnit {
            runtime: name.into(),
            accelerator: accel.name.clone(),
            format,
            schemes,
            decoder_schemes,
            activations: if runtime.symmetric_activations {
                ActivationType::Int8Symmetric
            } else {
                ActivationType::Uint8
            },
        }));
    }
    out
}

/// The calibration lines a recipe names: the first `texts` non-empty lines
/// of its `calibration` file, as the text written into the artifact.
pub fn calibration_text(recipe: &Path, spec: &BuildSpec) -> Result<Option<String>, ArtifactError> {
    let Some(file) = &spec.calibration else {
        return Ok(None);
    };
    let path = super::build::resolve(recipe, file)?;
    let text = crate::guard::read_text(&path, crate::guard::Cap::TEXT).map_err(|e| {
        ArtifactError::at(
            &path,
            format!(
                "{} (build.calibration; scripts/fetch-corpus writes the fortunes corpus)",
                e.message
            ),
        )
    })?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(spec.calibration_texts)
        .collect();
    if lines.is_empty() {
        return Err(ArtifactError::at(
            &path,
            "build.calibration: the file has no non-empty lines",
        ));
    }
    Ok(Some(lines.join("\n") + "\n"))
}

/// A graph's files by name (the graph alone for an encoder; the whole
/// onnxruntime-genai folder for a decoder).
type Files = Arc<Vec<(String, Vec<u8>)>>;

/// Exported graphs of one build, by format, scheme and settings: targets
/// with the same runtime needs share one export.
#[derive(Default)]
pub struct Exports(Mutex<HashMap<String, Files>>);

impl Exports {
    fn get_or(
        &self,
        key: String,
        make: impl FnOnce() -> Result<Vec<(String, Vec<u8>)>, String>,
    ) -> Result<Files, String> {
        if let Some(b) = self.0.lock().expect("no panics while holding").get(&key) {
            return Ok(b.clone());
        }
        let files = Arc::new(make()?);
        self.0
            .lock()
            .expect("no panics while holding")
            .insert(key, files.clone());
        Ok(files)
    }
}

/// Everything one accelerator variant's build reads.
pub struct GraphJob<'a> {
    pub options: &'a BuildOptions<'a>,
    pub spec: &'a BuildSpec,
    pub source: &'a Path,
    pub eval: &'a [String],
    pub target: &'a Target,
    pub unit: &'a GraphUnit,
    pub calibration: Option<&'a str>,
    pub distill_recipe: Option<&'a Path>,
    pub exports: &'a Exports,
}

/// Builds, packages and verifies one accelerator variant: each candidate
/// scheme in turn until one is within the accuracy budget (the last one
/// tried is kept either way, so the table shows by how much it misses).
pub fn build_graph(job: &GraphJob, bar: &indicatif::ProgressBar) -> Result<Outcome, ArtifactError> {
    let (target, unit) = (job.target, job.unit);
    let folder = format!("{}.{}", target.name(), unit.runtime);
    let outcome = |status, detail| Outcome {
        target: folder.clone(),
        status,
        detail,
    };
    let model = Model::open(job.source)?;
    let decoder = model.architecture.is_decoder();
    if let Some(reason) = unsupported(&model, unit) {
        return Ok(outcome("unsupported", reason));
    }
    let schemes = if decoder {
        &unit.decoder_schemes
    } else {
        &unit.schemes
    };
    let work = job
        .options
        .dist
        .join(".build")
        .join(&job.spec.name)
        .join(&folder);
    let _ = fs_err::remove_dir_all(&work);
    fs_err::create_dir_all(&work).map_err(|e| ArtifactError::at(&work, e.to_string()))?;
    let _cleanup = super::build::RemoveOnDrop(&work);
    // A decoder's export writes its own config and tokenizer files.
    let sides = model.files.iter().filter(|f| {
        !decoder
            && f.file_name()
                .is_some_and(|n| SIDE_FILES.contains(&n.to_string_lossy().as_ref()))
    });
    for side in sides {
        let to = work.join(side.file_name().expect("filtered on the name"));
        fs_err::copy(side, &to).map_err(|e| ArtifactError::at(&to, e.to_string()))?;
    }
    // Recorded whichever scheme wins: it is an input of the build (int8
    // encoder graphs only read it).
    let calibration = match job.calibration.filter(|_| !decoder) {
        Some(text) => {
            let path = work.join(CALIBRATION);
            fs_err::write(&path, text).map_err(|e| ArtifactError::at(&path, e.to_string()))?;
            Some(path)
        }
        None => None,
    };
    let mut missed = Vec::new();
    for (i, &scheme) in schemes.iter().enumerate() {
        let last = i + 1 == schemes.len();
        let calibration = match (scheme, &calibration) {
            ("int8_pc", None) => {
                missed.push("int8_pc needs `calibration` in the recipe".to_string());
                if last {
                    return Ok(outcome("unsupported", missed.join("; ")));
                }
                continue;
            }
            ("int8_pc", Some(path)) => Some(path.as_path()),
            _ => None,
        };
        bar.set_message(format!("{} {scheme}", unit.format.name()));
        let files = export(job, &model, scheme, calibration)
            .map_err(|m| ArtifactError::at(job.source, m))?;
        for (name, bytes) in files.iter() {
            let file = work.join(name);
            fs_err::write(&file, bytes).map_err(|e| ArtifactError::at(&file, e.to_string()))?;
        }
        bar.set_message("packaging");
        let packaged = package(&PackageInput {
            distill_recipe: job.distill_recipe,
            model: &work,
            reference: Some(job.source),
            target,
            name: &job.spec.name,
            version: &job.spec.version,
            recipe: Some(job.options.recipe),
            eval: job.eval.to_vec(),
            out: job.options.dist,
            force: true,
            gate: false,
            runtime: Some(&unit.runtime),
        })?;
        let acc = packaged.manifest.metrics.accuracy.as_ref();
        let within = acc.is_some_and(|a| a.gates(&target.spec.accuracy).iter().all(|g| g.passed));
        if !within && !last {
            missed.push(format!("{scheme} {} misses the budget", figures(acc)));
            continue;
        }
        bar.set_message("verifying");
        let v = verify::verify(&packaged.dir, None, job.eval, job.options.targets_dir)?;
        let failed = v.failures();
        let tried = if missed.is_empty() {
            String::new()
        } else {
            format!(" (after {})", missed.join("; "))
        };
        return Ok(if failed.is_empty() {
            outcome(
                "built",
                format!(
                    "{} {scheme} for the {} ({}, {}), artifact {}{tried}",
                    unit.format.name(),
                    unit.accelerator,
                    crate::units::human_bytes(packaged.manifest.metrics.size_bytes),
                    figures(acc),
                    packaged.id
                ),
            )
        } else {
            outcome(
                "failed",
                format!(
                    "{} {scheme}: verify failed: {}{tried}",
                    unit.format.name(),
                    failed.join("; ")
                ),
            )
        });
    }
    unreachable!("unsupported() returned None, so there is a scheme")
}

/// Why `unit` cannot be built for `model`, if it cannot.
fn unsupported(model: &Model, unit: &GraphUnit) -> Option<String> {
    let kind = model.architecture.name();
    if model.architecture.is_decoder() {
        if unit.format != GraphFormat::Onnx {
            return Some(format!(
                "{}: edgeforge writes decoders as ONNX (onnxruntime-genai) only, not {}",
                unit.runtime,
                unit.format.name()
            ));
        }
        if let Err(e) = genai::llama_spec(model) {
            return Some(format!("{}: {e}", unit.runtime));
        }
        return unit.decoder_schemes.is_empty().then(|| {
            format!(
                "{} on the {} runs none of the decoder schemes edgeforge writes ({})",
                unit.runtime,
                unit.accelerator,
                DECODER_SCHEMES.join(", ")
            )
        });
    }
    if onnx::bert_config(model).is_err() {
        return Some(format!(
            "{}: edgeforge writes {} for BERT-style encoders and LLaMA-style decoders; this model is `{kind}`",
            unit.runtime,
            unit.format.name(),
        ));
    }
    unit.schemes.is_empty().then(|| {
        format!(
            "{} on the {} runs none of the encoder schemes edgeforge writes ({})",
            unit.runtime,
            unit.accelerator,
            SCHEMES.join(", ")
        )
    })
}

/// The accuracy figures a build table shows: cosine for an encoder, mean
/// KL divergence and top-1 agreement for a decoder.
fn figures(acc: Option<&super::accuracy::Accuracy>) -> String {
    match acc {
        Some(a) if a.mean_kld.is_some() => format!(
            "mean KLD {:.4}, top-1 {:.3}",
            a.mean_kld.unwrap_or(0.0),
            a.top1_agreement.unwrap_or(0.0)
        ),
        Some(a) => format!("cosine {:.4}", a.cosine_mean.unwrap_or(0.0)),
        None => "not measured".into(),
    }
}

/// The files for `scheme`, shared with any target that needs the same.
fn export(
    job: &GraphJob,
    model: &Model,
    scheme: &str,
    calibration: Option<&Path>,
) -> Result<Files, String> {
    let texts = job.spec.calibration_texts;
    let cal_sha = job
        .calibration
        .map(|t| hex::encode(Sha256::digest(t.as_bytes())))
        .unwrap_or_default();
    let graph = job.unit.format.file_name().to_string();
    if model.architecture.is_decoder() {
        let s = genai::GenaiScheme::parse(scheme).ok_or("not a decoder scheme")?;
        return job.exports.get_or(format!("genai {scheme}"), || {
            genai::export(model, &graph, s)
                .map(|f| f.files)
                .map_err(|e| e.to_string())
        });
    }
    match job.unit.format {
        GraphFormat::Onnx => {
            // The mixed-precision plan keeps the most sensitive ops in float
            // until the graph is within half the target's cosine budget.
            let min_cosine = 1.0 - job.target.spec.accuracy.max_cosine_drop / 2.0;
            let acts = job.unit.activations;
            let key = format!("onnx {scheme} {min_cosine} {} {cal_sha}", acts.name());
            job.exports.get_or(key, || {
                let s = OnnxScheme::parse(scheme)?;
                let cal = calibration.map(|file| onnx::Calibration {
                    file: file.to_path_buf(),
                    texts,
                    int8: Int8Options {
                        method: crate::quant::calibrate::Method::Percentile(99.99),
                        reduce_range: false,
                        min_cosine,
                        activations: acts,
                        smooth_alpha: None,
                    },
                });
                onnx::export(model, s, cal.as_ref())
                    .map(|e| vec![(graph, e.bytes)])
                    .map_err(|e| e.to_string())
            })
        }
        GraphFormat::Tflite => {
            let seq = job.spec.seq_len;
            let key = format!("tflite {scheme} {seq} {cal_sha}");
            job.exports.get_or(key, || {
                let s = tflite::Scheme::parse(scheme).ok_or("not a TFLite scheme")?;
                let opts = tflite::ExportOptions {
                    scheme: s,
                    seq_len: seq,
                    calibration,
                    calibration_lines: texts,
                    method: tflite::calibrate::Method::MinMax,
                };
                tflite::export(model, &opts)
                    .map(|e| vec![(graph, e.bytes)])
                    .map_err(|e| e.to_string())
            })
        }
    }
}
