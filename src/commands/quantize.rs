use std::fmt::Write;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::cli::{GlobalArgs, OutputFormatArg, QuantizeArgs};
use crate::exit::ExitStatus;
use crate::format::atomic::Overwrite;
use crate::memory::Footprint;
use crate::model::Model;
use crate::printer::{sanitize, Printer};
use crate::quant::apply::{self, OutputFormat, TensorReport};
use crate::quant::plan::{self, Constraints, Plan, Preset, Reason};
use crate::quant::{bpw, Scheme};
use crate::target::{self, Target};
use crate::units::human_bytes;

#[derive(Serialize)]
struct Report<'a> {
    input: &'a std::path::Path,
    output: Option<&'a std::path::Path>,
    format: OutputFormat,
    preset: &'a str,
    target: Option<&'a str>,
    footprint: Option<Footprint>,
    bytes_before: u64,
    bytes_after: u64,
    bits_per_weight: f64,
    tensors: Vec<TensorReport>,
}

/// `edgeforge quantize MODEL --out FILE`
pub fn quantize(
    args: &QuantizeArgs,
    global: &GlobalArgs,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    if args.format == Some(OutputFormatArg::Auto) {
        return super::quantize_auto::quantize_auto(args, global, printer);
    }
    let extension = args.out.extension().and_then(|e| e.to_str());
    if matches!(
        (args.format, extension),
        (Some(OutputFormatArg::Tflite), _) | (None, Some("tflite"))
    ) {
        return super::tflite::quantize_tflite(args, printer);
    }
    let format = match (args.format, extension) {
        (Some(OutputFormatArg::Gguf), _) | (None, Some("gguf")) => OutputFormat::Gguf,
        (Some(OutputFormatArg::Safetensors), _) | (None, Some("safetensors")) => {
            OutputFormat::Safetensors
        }
        (Some(OutputFormatArg::Onnx), _) | (None, Some("onnx")) => {
            return super::quantize_onnx::quantize_onnx(args, printer)
        }
        _ => bail!(
            "Cannot tell the output format of {}: name it .gguf, .safetensors, .onnx or .tflite, or pass --format",
            args.out.display()
        ),
    };
    if !args.force && !args.dry_run && args.out.exists() {
        bail!(
            "{}: Output already exists (pass --force to replace it)",
            args.out.display()
        );
    }
    let model = Model::open(&args.model).context("Cannot quantize")?;
    let target_name = args.fit.as_deref().or(args.target.as_deref());
    let target = target_name
        .map(|n| target::load(n, global.targets_dir.as_deref()))
        .transpose()?;
    if let Some(t) = &target {
        warn_if_no_runtime_loads(t, format, printer);
    }
    let mut constraints = Constraints::for_model(
        &model,
        target.as_ref().map(Target::allowed_schemes),
        format == OutputFormat::Gguf,
    );
    constraints.overrides = args.tensor_types.overrides();
    let imatrix = args
        .imatrix
        .as_ref()
        .map(|path| {
            anyhow::ensure!(
                format == OutputFormat::Gguf,
                "{}: --imatrix weights GGUF block quantization; write a .gguf",
                path.display()
            );
            Ok(crate::format::imatrix::Imatrix::read(path)?)
        })
        .transpose()?;
    let imatrix_label = args.imatrix.as_ref().map(|p| p.display().to_string());
    constraints.has_imatrix = imatrix.is_some();
    let context = resolve_context(&model, target.as_ref(), args.context)?;
    let footprint_of = |plan: &Plan| {
        target.as_ref().map(|t| {
            Footprint::new(
                &model.architecture,
                apply::written_bytes(&model, plan, format),
                context,
                t.runtime_overhead_bytes(),
                t.model_budget_bytes(),
            )
        })
    };

    let plan = if let Some(name) = &args.scheme {
        let preset = Preset::parse(name).map_err(|e| anyhow::anyhow!("`--scheme`: {e}"))?;
        plan::plan(&model.tensors, preset, &constraints).map_err(anyhow::Error::msg)?
    } else if let Some(x) = args.bpw {
        anyhow::ensure!(
            x > 0.0 && x.is_finite(),
            "`--bpw` must be a positive number, got {x}"
        );
        let top = if constraints.gguf {
            Scheme::Q8_0
        } else {
            Scheme::F16
        };
        let mut plan = plan::plan(&model.tensors, Preset::Uniform(top), &constraints)
            .map_err(anyhow::Error::msg)?;
        if let Err(e) = bpw::fit_bits(
            &model,
            &mut plan,
            x,
            constraints.allowed.as_ref(),
            constraints.gguf,
        ) {
            printer.warn(&e);
            return Ok(ExitStatus::CheckFailed);
        }
        plan
    } else if let Some(t) = target.as_ref().filter(|_| args.fit.is_some()) {
        match plan::fit(&model, &constraints, &footprint_of).map_err(anyhow::Error::msg)? {
            Ok(plan) => plan,
            Err((plan, miss)) => {
                let msg = format!(
                    "{}: nothing fits {}: the smallest plan ({}, {}) needs {} against a budget of {}, missing it by {:.1} MiB",
                    args.model.display(),
                    t.name(),
                    plan.preset,
                    human_bytes(apply::written_bytes(&model, &plan, format)),
                    human_bytes(miss.total_bytes),
                    human_bytes(miss.budget_bytes),
                    miss.shortfall_mib()
                );
                if printer.json {
                    printer.json_out(&serde_json::json!({"fits": false, "target": t.name(), "smallest_plan": plan.preset, "footprint": miss, "message": msg}))?;
                }
                crate::printer::error_line(&msg);
                return Ok(ExitStatus::CheckFailed);
            }
        }
    } else {
        bail!("Say what to quantize to: --scheme NAME, --fit TARGET or --bpw X");
    };

    if !plan.tensors.iter().all(|t| t.reason == Reason::AsStored) {
        check_requant(&model, args.allow_requant, printer)?;
    }
    let footprint = footprint_of(&plan);
    let bytes_before: u64 = plan
        .tensors
        .iter()
        .filter_map(|p| model.tensor(&p.name))
        .map(|t| t.n_bytes)
        .sum();
    let tensors = if args.dry_run {
        apply::preview(&model, &plan, format)
    } else {
        let bar = printer.bytes_bar(bytes_before, "quantizing");
        let name = args
            .model
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model");
        let out = apply::Output {
            path: &args.out,
            format,
            overwrite: if args.force {
                Overwrite::Allow
            } else {
                Overwrite::Deny
            },
            name,
            progress: &bar,
            imatrix: imatrix
                .as_ref()
                .zip(imatrix_label.as_deref())
                .map(|(matrix, label)| apply::ImatrixUse { matrix, label }),
        };
        let reports = apply::write(&model, &plan, &out)
            .map_err(anyhow::Error::msg)
            .context("Cannot quantize")?;
        bar.finish_and_clear();
        reports
    };
    let report = Report {
        input: &args.model,
        output: (!args.dry_run).then_some(args.out.as_path()),
        format,
        preset: &plan.preset,
        target: target.as_ref().map(Target::name),
        footprint,
        bytes_before,
        bytes_after: apply::written_bytes(&model, &plan, format),
        bits_per_weight: plan.bits_per_weight(),
        tensors,
    };
    if printer.json {
        printer.json_out(&report)?;
    } else {
        printer.out(&render(&report, &plan))?;
    }
    Ok(ExitStatus::Success)
}

pub(super) fn check_requant(model: &Model, allow: bool, printer: &Printer) -> anyhow::Result<()> {
    let quantized: Vec<&str> = model
        .tensors
        .iter()
        .filter(|t| apply::is_block_quantized(t))
        .map(|t| t.name.as_str())
        .collect();
    if quantized.is_empty() {
        return Ok(());
    }
    let what = format!(
        "{} tensors of {} are already block-quantized (e.g. `{}`)",
        quantized.len(),
        model.path.display(),
        quantized[0]
    );
    if !allow {
        bail!("{what}; re-quantizing compounds their error: pass --allow-requant to do it anyway");
    }
    printer.warn(&format!("{what}; the error reported is against the dequantized input and adds to the error already in it"));
    Ok(())
}

fn resolve_context(
    model: &Model,
    target: Option<&Target>,
    flag: Option<u64>,
) -> anyhow::Result<u64> {
    let context = flag
        .or(target.map(|t| t.spec.workload.context_tokens))
        .unwrap_or(0);
    if let (Some(max), Some(n)) = (crate::memory::max_context(&model.architecture), flag) {
        anyhow::ensure!(
            n <= max,
            "`--context {n}` exceeds the model's maximum of {max} tokens"
        );
    }
    Ok(match crate::memory::max_context(&model.architecture) {
        Some(max) => context.min(max),
        None => context,
    })
}

fn render(r: &Report<'_>, plan: &Plan) -> String {
    let mut out = String::new();
    if !r.tensors.is_empty() {
        let _ = writeln!(
            out,
            "{:<44} {:<8} {:>6} {:>9} {:>8} {:>9}  note",
            "tensor", "scheme", "bpw", "rel rmse", "sqnr dB", "max err"
        );
        for t in &r.tensors {
            let error = t.error.as_ref().map_or_else(
                || format!("{:>9} {:>8} {:>9}", "-", "-", "-"),
                |e| {
                    format!(
                        "{:>9.5} {:>8.1} {:>9.5}",
                        e.rel_rmse,
                        e.sqnr_db.min(999.0),
                        e.max_abs_err
                    )
                },
            );
            let _ = writeln!(
                out,
                "{:<44} {:<8} {:>6.2} {error}  {}",
                sanitize(&t.out_name),
                t.scheme,
                t.bits_per_weight,
                t.note
            );
        }
    }
    let fallbacks = plan
        .tensors
        .iter()
        .filter(|t| matches!(t.reason, plan::Reason::RowFallback { .. }))
        .count();
    let _ = writeln!(
        out,
        "{}: {} -> {} ({:.2} bits/weight, plan {}{})",
        r.output
            .map_or_else(|| "dry run".to_string(), |p| p.display().to_string()),
        human_bytes(r.bytes_before),
        human_bytes(r.bytes_after),
        r.bits_per_weight,
        r.preset,
        if fallbacks > 0 {
            format!(", {fallbacks} tensors fell back to a format their rows fit")
        } else {
            String::new()
        }
    );
    if let (Some(t), Some(f)) = (r.target, &r.footprint) {
        let _ = writeln!(
            out,
            "{t}: weights {} + KV cache {} ({} tokens) + activations {} + runtime {} = {} of {} budget: {}",
            human_bytes(f.weights_bytes),
            human_bytes(f.kv_cache_bytes),
            f.context_tokens,
            human_bytes(f.activation_bytes),
            human_bytes(f.runtime_overhead_bytes),
            human_bytes(f.total_bytes),
            human_bytes(f.budget_bytes),
            if f.fits() { "fits".to_string() } else { format!("misses by {:.1} MiB", f.shortfall_mib()) }
        );
    }
    out
}

/// A file for a target none of whose runtimes reads it is worth saying so
/// before it is shipped: name the runtimes and what each of them loads.
fn warn_if_no_runtime_loads(target: &Target, format: OutputFormat, printer: &Printer) {
    let name = match format {
        OutputFormat::Gguf => "gguf",
        OutputFormat::Safetensors => "safetensors",
    };
    if target.formats().contains(name) {
        return;
    }
    let runtimes: Vec<String> = target
        .spec
        .runtimes
        .iter()
        .map(|r| format!("{} ({})", r.name, r.format))
        .collect();
    printer.warn(&format!(
        "no runtime of {} loads {name} (its runtimes: {}): this file runs in edgeforge's engine only; \
         `edgeforge build` makes the files its accelerators load (docs/accelerators.md)",
        target.name(),
        runtimes.join(", ")
    ));
}
