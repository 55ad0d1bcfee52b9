//! `edgeforge quantize MODEL -o OUT.tflite --scheme fp32|fp16|int8_pc`: the
//! TFLite export, then the written file's accuracy as edgeforge computes it
//! (read back, evaluated with TFLite integer semantics, against f32).

use std::fmt::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cli::{CalibrationMethodArg, QuantizeArgs};
use crate::exit::ExitStatus;
use crate::format::atomic::{AtomicFile, Overwrite};
use crate::format::tflite::calibrate::Method;
use crate::format::tflite::export::Calibration;
use crate::format::tflite::{self, Accuracy, ExportOptions, Scheme, REFERENCE_SENTENCES};
use crate::model::Model;
use crate::printer::Printer;

#[derive(Serialize)]
struct Report<'a> {
    input: &'a Path,
    output: &'a Path,
    format: &'static str,
    schema_version: u32,
    scheme: &'static str,
    seq_len: usize,
    bytes: usize,
    sha256: String,
    ops: serde_json::Map<String, serde_json::Value>,
    calibration: Option<Calibration>,
    accuracy: Accuracy,
    /// Side files copied beside the graph (config, tokenizer).
    copied: Vec<std::path::PathBuf>,
    seconds: f64,
}

pub fn quantize_tflite(args: &QuantizeArgs, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let Some(name) = args.scheme.as_deref() else {
        bail!("A .tflite export needs --scheme fp32, fp16 or int8_pc");
    };
    let scheme = Scheme::parse(name).ok_or_else(|| {
        anyhow::anyhow!("`--scheme {name}`: a .tflite export takes fp32, fp16 or int8_pc")
    })?;
    if args.fit.is_some() || args.bpw.is_some() || args.dry_run {
        bail!("A .tflite export takes --scheme (not --fit, --bpw or --dry-run)");
    }
    let cal = &args.calibration;
    if scheme != Scheme::Int8 && cal.calibration.is_some() {
        bail!("--calibration applies to int8_pc only");
    }
    let method = match cal.calibration_method {
        None | Some(CalibrationMethodArg::Minmax) => "minmax".to_string(),
        Some(CalibrationMethodArg::Percentile) => format!("percentile:{}", cal.percentile),
        Some(CalibrationMethodArg::Entropy) => {
            bail!("--calibration-method entropy is ONNX-only; TFLite takes minmax or percentile")
        }
    };
    let method = Method::parse(&method).map_err(anyhow::Error::msg)?;
    let overwrite = if args.force {
        Overwrite::Allow
    } else {
        Overwrite::Deny
    };
    // Refuse early (before minutes of calibration) when the output exists.
    if let Some(dir) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs_err::create_dir_all(dir).context("Cannot export")?;
    }
    let file = AtomicFile::create(&args.out, overwrite)?;
    let model = Model::open(&args.model).context("Cannot export")?;
    let started = Instant::now();
    let opts = ExportOptions {
        scheme,
        seq_len: args.tflite.seq_len,
        calibration: cal.calibration.as_deref(),
        calibration_lines: cal.calibration_texts,
        method,
    };
    let exported = tflite::export(&model, &opts).context("Cannot export")?;
    let accuracy = tflite::accuracy(&exported.bytes, &args.out, &model, &REFERENCE_SENTENCES)
        .context("Cannot measure the export")?;
    let mut file = file;
    std::io::Write::write_all(&mut file, &exported.bytes)
        .with_context(|| format!("{}: Cannot write", args.out.display()))?;
    file.commit()?;
    let copied = super::quantize_onnx::copy_side_files(&model, &args.out)?;
    let report = Report {
        input: &args.model,
        output: &args.out,
        format: "tflite",
        schema_version: tflite::schema::SCHEMA_VERSION,
        scheme: scheme.name(),
        seq_len: opts.seq_len,
        bytes: exported.bytes.len(),
        sha256: hex::encode(Sha256::digest(&exported.bytes)),
        ops: exported
            .ops
            .iter()
            .map(|(n, c)| (n.to_string(), (*c).into()))
            .collect(),
        calibration: exported.calibration,
        accuracy,
        copied,
        seconds: started.elapsed().as_secs_f64(),
    };
    if printer.json {
        printer.json_out(&report)?;
    } else {
        printer.out(&render(&report))?;
    }
    Ok(ExitStatus::Success)
}

fn render(r: &Report) -> String {
    let mut out = String::new();
    let ops: Vec<String> = r.ops.iter().map(|(n, c)| format!("{n} x{c}")).collect();
    let _ = writeln!(out, "ops: {}", ops.join(", "));
    if let Some(c) = &r.calibration {
        let _ = writeln!(
            out,
            "calibration: {} texts of {} ({}, sha256 {})",
            c.texts,
            c.file.display(),
            c.method,
            &c.sha256[..12]
        );
    }
    let _ = writeln!(
        out,
        "{}: TFLite {} (seq {}), {}; cosine to f32 on {} sentences: mean {:.6}, min {:.6}",
        r.output.display(),
        r.scheme,
        r.seq_len,
        crate::units::human_bytes(r.bytes as u64),
        r.accuracy.sentences,
        r.accuracy.mean_cosine,
        r.accuracy.min_cosine
    );
    for c in &r.copied {
        let _ = writeln!(out, "copied {}", c.display());
    }
    out
}
