//! `edgeforge quantize DECODER -o DIR/model.onnx --scheme q4_0` (or
//! `int4_g128_sym`, ...): the folder onnxruntime-genai loads (graph,
//! genai_config.json, tokenizer files, and the HF config.json edgeforge reads).
//! Every file is built in memory and written to a temp file first; they are
//! renamed into place only when all of them were written, so a failure
//! leaves none of them.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::cli::QuantizeArgs;
use crate::exit::ExitStatus;
use crate::format::atomic::{AtomicFile, Overwrite};
use crate::format::onnx::genai::{self, GenaiScheme};
use crate::format::onnx::{llama, OPSET};
use crate::model::Model;
use crate::printer::Printer;
use crate::units::human_bytes;

#[derive(Serialize)]
struct Report<'a> {
    input: &'a Path,
    output: &'a Path,
    format: &'static str,
    runtime: &'static str,
    scheme: String,
    opset: i64,
    bytes: u64,
    files: Vec<PathBuf>,
    /// Weights stored as 4-bit MatMulNBits blocks.
    int4_weights: usize,
    float_weights: Vec<String>,
    matmul_nbits_accuracy_level: i64,
}

pub fn quantize_genai(
    args: &QuantizeArgs,
    scheme: GenaiScheme,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    if args.fit.is_some()
        || args.bpw.is_some()
        || args.dry_run
        || args.calibration.calibration.is_some()
    {
        bail!(
            "The onnxruntime-genai export takes --scheme {} only (not --fit, --bpw, --dry-run or --calibration)",
            genai::SCHEMES
        );
    }
    let overwrite = if args.force {
        Overwrite::Allow
    } else {
        Overwrite::Deny
    };
    let dir = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let Some(model_file) = args.out.file_name().and_then(|n| n.to_str()) else {
        bail!(
            "{}: Output needs a file name such as model.onnx",
            args.out.display()
        );
    };
    let model = Model::open(&args.model).context("Cannot quantize")?;
    genai::llama_spec(&model).context("Cannot quantize")?;
    super::quantize::check_requant(&model, args.allow_requant, printer)?;
    let folder = genai::export(&model, model_file, scheme).context("Cannot quantize")?;
    let targets: Vec<PathBuf> = folder.files.iter().map(|(n, _)| dir.join(n)).collect();
    if overwrite == Overwrite::Deny {
        if let Some(existing) = targets.iter().find(|p| p.exists()) {
            bail!(
                "{}: Output already exists (pass --force to replace it)",
                existing.display()
            );
        }
    }
    fs_err::create_dir_all(&dir).context("Cannot quantize")?;
    let mut pending = Vec::with_capacity(targets.len());
    for ((_, bytes), target) in folder.files.iter().zip(&targets) {
        let mut file = AtomicFile::create(target, overwrite).context("Cannot quantize")?;
        file.write_all(bytes)
            .with_context(|| format!("Cannot quantize: {}", target.display()))?;
        pending.push(file);
    }
    for file in pending {
        file.commit().context("Cannot quantize")?;
    }
    let bytes = folder.files.iter().map(|(_, b)| b.len() as u64).sum();
    let report = Report {
        input: &args.model,
        output: &args.out,
        format: "onnx",
        runtime: "onnxruntime-genai",
        scheme: scheme.name(),
        opset: OPSET,
        bytes,
        files: targets,
        int4_weights: folder.int4_weights,
        float_weights: folder.float_weights,
        matmul_nbits_accuracy_level: llama::ACCURACY_LEVEL,
    };
    if printer.json {
        printer.json_out(&report)?;
    } else {
        printer.out(&render(&report))?;
    }
    Ok(ExitStatus::Success)
}

fn render(r: &Report<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: onnxruntime-genai decoder, ONNX opset {} + MatMulNBits, {} weights as {}, {} ({} files)",
        r.output.display(),
        r.opset,
        r.int4_weights,
        r.scheme,
        human_bytes(r.bytes),
        r.files.len()
    );
    if !r.float_weights.is_empty() {
        let _ = writeln!(
            out,
            "float32 (not 4-bit in the GGUF Q4_0 plan): {}",
            r.float_weights.join(", ")
        );
    }
    for f in &r.files {
        let _ = writeln!(out, "wrote {}", f.display());
    }
    out
}
