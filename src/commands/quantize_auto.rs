//! `edgeforge quantize MODEL --fit T --format auto -o DIR`: the file the
//! target's accelerator runtime loads when edgeforge can write the model in
//! its format (ONNX or TFLite for BERT-style encoders), in the cheapest
//! scheme both run that stays within the target's accuracy budget, measured
//! from the written file, as `build` chooses; otherwise the target's CPU
//! format (GGUF, else safetensors) planned by `--fit`.

use std::fmt::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::artifact::accelerated::{plans, GraphUnit, Plan};
use crate::artifact::accuracy::DEFAULT_EVAL;
use crate::artifact::graph::{GraphFormat, GraphPayload, SIDE_FILES};
use crate::cli::{GlobalArgs, OutputFormatArg, QuantizeArgs};
use crate::exit::ExitStatus;
use crate::format::atomic::{write_atomic, Overwrite};
use crate::format::onnx::bert::ActivationType;
use crate::format::onnx::export::{self as onnx, OnnxScheme};
use crate::format::tflite;
use crate::model::Model;
use crate::printer::{sanitize, Printer};
use crate::quant::qdq::Int8Options;
use crate::target::{self, Target};
use crate::units::human_bytes;

#[derive(Serialize)]
struct Report {
    input: PathBuf,
    target: String,
    runtime: String,
    accelerator: String,
    format: &'static str,
    /// The scheme written; `None` when none was within budget (nothing written).
    scheme: Option<String>,
    output: Option<PathBuf>,
    bytes: Option<u64>,
    max_cosine_drop: f64,
    tried: Vec<Attempt>,
}

#[derive(Serialize)]
struct Attempt {
    scheme: String,
    /// Mean cosine of the written file's embeddings to the source model.
    cosine_mean: Option<f64>,
    within_budget: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
}

pub fn quantize_auto(
    args: &QuantizeArgs,
    global: &GlobalArgs,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    let Some(name) = &args.fit else {
        bail!("`--format auto` chooses from a target: pass --fit TARGET");
    };
    let t = target::load(name, global.targets_dir.as_deref())?;
    let model = Model::open(&args.model).context("Cannot quantize")?;
    let unit = plans(&t).into_iter().find_map(|p| match p {
        Plan::Build(u) => Some(u),
        Plan::Unsupported { .. } => None,
    });
    match unit.filter(|_| onnx::bert_config(&model).is_ok()) {
        Some(unit) => write_graph(args, printer, &t, &model, &unit),
        None => {
            let format = if t.runtime_for("gguf").is_some() {
                OutputFormatArg::Gguf
            } else {
                OutputFormatArg::Safetensors
            };
            let file = match format {
                OutputFormatArg::Gguf => "model.gguf",
                _ => "model.safetensors",
            };
            printer.info(&format!(
                "{}: {} (no accelerator runtime of {} loads a format edgeforge writes for `{}`)",
                name,
                file,
                t.name(),
                model.architecture.name()
            ));
            let mut cpu = args.clone();
            cpu.format = Some(format);
            cpu.out = args.out.join(file);
            fs_err::create_dir_all(&args.out).context("Cannot quantize")?;
            super::quantize(&cpu, global, printer)
        }
    }
}

fn write_graph(
    args: &QuantizeArgs,
    printer: &Printer,
    t: &Target,
    model: &Model,
    unit: &GraphUnit,
) -> anyhow::Result<ExitStatus> {
    let out = args.out.join(unit.format.file_name());
    let sides: Vec<&PathBuf> = model
        .files
        .iter()
        .filter(|f| {
            f.file_name()
                .is_some_and(|n| SIDE_FILES.contains(&n.to_string_lossy().as_ref()))
        })
        .collect();
    let overwrite = if args.force {
        Overwrite::Allow
    } else {
        Overwrite::Deny
    };
    let destinations = std::iter::once(out.clone()).chain(
        sides
            .iter()
            .filter_map(|s| s.file_name().map(|n| args.out.join(n))),
    );
    for d in destinations {
        if d.exists() && overwrite == Overwrite::Deny {
            bail!(
                "{}: Output already exists (pass --force to replace it)",
                d.display()
            );
        }
    }
    fs_err::create_dir_all(&args.out).context("Cannot quantize")?;
    // Candidates are written and measured here, beside their side files (the
    // config a graph payload is read with); only the winner leaves it.
    let work = tempfile::Builder::new()
        .prefix(".edgeforge-auto-")
        .tempdir_in(&args.out)
        .context("Cannot quantize")?;
    for s in &sides {
        let to = work
            .path()
            .join(s.file_name().expect("filtered on the name"));
        fs_err::copy(s, &to).context("Cannot quantize")?;
    }
    let mut unit = unit.clone();
    if let Some(asked) = args.calibration.activation_type {
        let asked = ActivationType::from(asked);
        if unit.activations == ActivationType::Int8Symmetric && asked != unit.activations {
            bail!(
                "--activation-type {}: {} on {} takes symmetric int8 activations only (zero points of 0)",
                asked.name(),
                unit.runtime,
                t.name()
            );
        }
        unit.activations = asked;
    }
    let budget = t.spec.accuracy.max_cosine_drop;
    let texts: Vec<String> = DEFAULT_EVAL.iter().map(|s| s.to_string()).collect();
    let mut tried = Vec::new();
    let mut winner = None;
    for &scheme in &unit.schemes {
        if scheme == "int8_pc" && args.calibration.calibration.is_none() {
            tried.push(Attempt {
                scheme: scheme.into(),
                cosine_mean: None,
                within_budget: false,
                skipped: Some("int8_pc needs --calibration FILE".into()),
            });
            continue;
        }
        let bytes = export(args, model, &unit, scheme, budget)?;
        let file = work.path().join(unit.format.file_name());
        fs_err::write(&file, &bytes).context("Cannot quantize")?;
        let cosine = GraphPayload::open(&file, unit.format)?
            .accuracy(model, &texts)?
            .cosine_mean
            .unwrap_or(0.0);
        let within = 1.0 - cosine <= budget;
        tried.push(Attempt {
            scheme: scheme.into(),
            cosine_mean: Some(cosine),
            within_budget: within,
            skipped: None,
        });
        if within {
            winner = Some((scheme, bytes));
            break;
        }
    }
    let written = winner.as_ref().map(|(_, b)| b.len() as u64);
    if let Some((_, bytes)) = &winner {
        write_atomic(&out, bytes, overwrite).context("Cannot quantize")?;
        for s in &sides {
            let to = args.out.join(s.file_name().expect("filtered on the name"));
            let side = fs_err::read(s).context("Cannot quantize")?;
            write_atomic(&to, &side, overwrite).context("Cannot quantize")?;
        }
    }
    let report = Report {
        input: args.model.clone(),
        target: t.name().to_string(),
        runtime: unit.runtime.clone(),
        accelerator: unit.accelerator.clone(),
        format: unit.format.name(),
        scheme: winner.as_ref().map(|(s, _)| s.to_string()),
        output: winner.as_ref().map(|_| out.clone()),
        bytes: written,
        max_cosine_drop: budget,
        tried,
    };
    if printer.json {
        printer.json_out(&report)?;
    } else {
        printer.out(&render(&report))?;
    }
    Ok(if winner.is_some() {
        ExitStatus::Success
    } else {
        ExitStatus::CheckFailed
    })
}

/// The graph bytes for `scheme`, as `build` writes them: ONNX int8 keeps the
/// most sensitive ops in float until the graph is within half the budget.
fn export(
    args: &QuantizeArgs,
    model: &Model,
    unit: &GraphUnit,
    scheme: &str,
    budget: f64,
) -> anyhow::Result<Vec<u8>> {
    let cal = &args.calibration;
    Ok(match unit.format {
        GraphFormat::Onnx => {
            let s = OnnxScheme::parse(scheme).map_err(anyhow::Error::msg)?;
            let calibration = cal.calibration.as_ref().map(|file| onnx::Calibration {
                file: file.clone(),
                texts: cal.calibration_texts,
                int8: Int8Options {
                    method: crate::quant::calibrate::Method::Percentile(cal.percentile),
                    reduce_range: cal.reduce_range,
                    min_cosine: 1.0 - budget / 2.0,
                    activations: unit.activations,
                    smooth_alpha: cal.smooth_alpha,
                },
            });
            onnx::export(
                model,
                s,
                calibration.as_ref().filter(|_| scheme == "int8_pc"),
            )
            .context("Cannot quantize")?
            .bytes
        }
        GraphFormat::Tflite => {
            let s = tflite::Scheme::parse(scheme)
                .ok_or_else(|| anyhow::anyhow!("{scheme} is not a TFLite scheme"))?;
            let opts = tflite::ExportOptions {
                scheme: s,
                seq_len: args.tflite.seq_len,
                calibration: cal.calibration.as_deref().filter(|_| scheme == "int8_pc"),
                calibration_lines: cal.calibration_texts,
                method: tflite::calibrate::Method::MinMax,
            };
            tflite::export(model, &opts)
                .context("Cannot quantize")?
                .bytes
        }
    })
}

fn render(r: &Report) -> String {
    let mut out = String::new();
    for a in &r.tried {
        let what = match (&a.skipped, a.cosine_mean) {
            (Some(why), _) => format!("skipped: {why}"),
            (None, Some(c)) => format!(
                "cosine to the source {c:.4}{}",
                if a.within_budget { "" } else { ", over budget" }
            ),
            _ => String::new(),
        };
        let _ = writeln!(out, "{} {}: {what}", r.format, a.scheme);
    }
    match (&r.output, &r.scheme, r.bytes) {
        (Some(path), Some(scheme), Some(bytes)) => {
            let _ = writeln!(
                out,
                "{}: {} {scheme} for {} on the {} ({}), within {}'s max cosine drop {}",
                sanitize(&path.display().to_string()),
                r.format,
                r.runtime,
                r.accelerator,
                human_bytes(bytes),
                r.target,
                r.max_cosine_drop
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "{}: no scheme {} runs on the {} is within the max cosine drop {}: nothing written",
                sanitize(&r.input.display().to_string()),
                r.runtime,
                r.accelerator,
                r.max_cosine_drop
            );
        }
    }
    out
}
