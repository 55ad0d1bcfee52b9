//! `edgeforge quantize MODEL -o DIR/model.onnx --scheme fp32|fp16|int8_pc`:
//! the ONNX branch of quantize. Writes the file atomically, copies the
//! tokenizer beside it when absent, then reads the file back and reports the
//! accuracy of what its graph computes.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::artifact::accelerated::CALIBRATION;
use crate::artifact::accuracy::DEFAULT_EVAL;
use crate::artifact::graph::SIDE_FILES;
use crate::cli::{CalibrationMethodArg, QuantizeArgs};
use crate::exit::ExitStatus;
use crate::format::atomic::{write_atomic, Overwrite};
use crate::format::onnx::export::{self, Calibration, CalibrationInfo, FileAccuracy, OnnxScheme};
use crate::format::onnx::OPSET;
use crate::model::Model;
use crate::printer::Printer;
use crate::quant::calibrate::Method;
use crate::quant::qdq::Int8Options;
use crate::units::human_bytes;

#[derive(Serialize)]
struct Report<'a> {
    input: &'a Path,
    output: &'a Path,
    format: &'static str,
    scheme: &'static str,
    opset: i64,
    bytes: u64,
    tokenizer: Option<PathBuf>,
    /// Side files copied beside the graph (config, tokenizer).
    copied: Vec<PathBuf>,
    accuracy: FileAccuracy,
    #[serde(skip_serializing_if = "Option::is_none")]
    calibration: Option<CalibrationInfo>,
}

pub fn quantize_onnx(args: &QuantizeArgs, printer: &Printer) -> anyhow::Result<ExitStatus> {
    if args.fit.is_some() || args.bpw.is_some() || args.dry_run {
        bail!("ONNX output takes --scheme fp32, fp16 or int8_pc (not --fit, --bpw or --dry-run)");
    }
    let Some(name) = &args.scheme else {
        bail!("Say which ONNX scheme to write: --scheme fp32, fp16 or int8_pc (encoders), q4_0 or int4_g32|64|128_sym (decoders)");
    };
    if let Some(scheme) = crate::format::onnx::genai::GenaiScheme::parse(name) {
        return super::quantize_genai::quantize_genai(args, scheme, printer);
    }
    let scheme = OnnxScheme::parse(name).map_err(|e| anyhow::anyhow!("`--scheme`: {e}"))?;
    let overwrite = if args.force {
        Overwrite::Allow
    } else {
        Overwrite::Deny
    };
    if overwrite == Overwrite::Deny && args.out.exists() {
        bail!(
            "{}: Output already exists (pass --force to replace it)",
            args.out.display()
        );
    }
    let model = Model::open(&args.model).context("Cannot quantize")?;
    export::bert_config(&model).context("Cannot quantize")?;
    let cal = &args.calibration;
    let calibration = cal.calibration.as_ref().map(|file| Calibration {
        file: file.clone(),
        texts: cal.calibration_texts,
        int8: Int8Options {
            method: match cal.calibration_method {
                Some(CalibrationMethodArg::Minmax) => Method::MinMax,
                None | Some(CalibrationMethodArg::Percentile) => Method::Percentile(cal.percentile),
                Some(CalibrationMethodArg::Entropy) => Method::Entropy,
            },
            reduce_range: cal.reduce_range,
            min_cosine: cal.min_cosine,
            activations: cal.activation_type.map(Into::into).unwrap_or_default(),
            smooth_alpha: cal.smooth_alpha,
        },
    });
    if let Some(a) = cal.smooth_alpha {
        anyhow::ensure!(
            (0.0..=1.0).contains(&a),
            "`--smooth-alpha` must be in [0, 1], got {a}"
        );
    }
    anyhow::ensure!(
        cal.calibration_texts > 0,
        "`--calibration-texts` must be at least 1"
    );
    if let None | Some(CalibrationMethodArg::Percentile) = cal.calibration_method {
        anyhow::ensure!(
            cal.percentile > 50.0 && cal.percentile <= 100.0,
            "`--percentile` must be in (50, 100], got {}",
            cal.percentile
        );
    }
    let exported =
        export::export(&model, scheme, calibration.as_ref()).context("Cannot quantize")?;
    if let Some(dir) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs_err::create_dir_all(dir).context("Cannot quantize")?;
    }
    write_atomic(&args.out, &exported.bytes, overwrite).context("Cannot quantize")?;
    let copied = copy_side_files(&model, &args.out)?;
    let tokenizer = copied
        .iter()
        .find(|p| p.ends_with("tokenizer.json"))
        .cloned();
    let texts: Vec<String> = DEFAULT_EVAL.iter().map(|s| s.to_string()).collect();
    let accuracy =
        export::accuracy(&args.out, &model, &texts).context("Cannot check the written file")?;
    let report = Report {
        input: &args.model,
        output: &args.out,
        format: "onnx",
        scheme: scheme.name(),
        opset: OPSET,
        bytes: exported.bytes.len() as u64,
        tokenizer,
        copied,
        accuracy,
        calibration: exported.calibration,
    };
    if printer.json {
        printer.json_out(&report)?;
    } else {
        printer.out(&render(&report))?;
    }
    Ok(ExitStatus::Success)
}

/// ONNX users expect `model.onnx` with `tokenizer.json` beside it.
/// Copies the source model's config and tokenizer files beside `out` (those
/// not there yet), so the folder is a graph payload every command reads;
/// returns what it copied.
pub(super) fn copy_side_files(model: &Model, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut copied = Vec::new();
    for src in &model.files {
        let Some(name) = src.file_name() else {
            continue;
        };
        let dst = dir.join(name);
        let side = SIDE_FILES.contains(&name.to_string_lossy().as_ref());
        if !side || name == CALIBRATION || dst.exists() {
            continue;
        }
        let bytes = fs_err::read(src).context("Cannot copy the model's side files")?;
        write_atomic(&dst, &bytes, Overwrite::Deny)
            .context("Cannot copy the model's side files")?;
        copied.push(dst);
    }
    Ok(copied)
}

fn render(r: &Report<'_>) -> String {
    let mut out = String::new();
    if let Some(c) = &r.calibration {
        let _ = writeln!(
            out,
            "calibration: {} texts ({} tokens) from {}, {}; {} of {} ops kept in float (most sensitive: {})",
            c.texts,
            c.tokens,
            c.file.display(),
            c.plan.method,
            c.plan.float_ops.len(),
            c.plan.sensitivity.len(),
            c.plan
                .sensitivity
                .iter()
                .take(3)
                .map(|s| format!("{} {:.1e}", s.op, s.cosine_drop))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(
        out,
        "{}: ONNX opset {} {}, {}; cosine to f32 {:.7} (min {:.7}) on {} texts, computed from the file",
        r.output.display(),
        r.opset,
        r.scheme,
        human_bytes(r.bytes),
        r.accuracy.cosine_mean,
        r.accuracy.cosine_min,
        r.accuracy.eval_texts
    );
    for c in &r.copied {
        let _ = writeln!(out, "copied {}", c.display());
    }
    out
}
