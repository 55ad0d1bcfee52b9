//! `edgeforge profile FILE.onnx|FILE.tflite` (or an artifact folder holding
//! one): the graph's op mix and FLOPs, and per target runtime that loads the
//! format, which ops its accelerator takes, which fall back to the CPU, and
//! the projected latency.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::artifact::graph::{self as payload, GraphFormat};
use crate::cli::{GlobalArgs, ProfileArgs};
use crate::exit::ExitStatus;
use crate::printer::{sanitize, Printer};
use crate::profile::graph::{self, GraphCost, Placement, Stage};
use crate::profile::project::ASSUMED;
use crate::target;
use crate::target::schema::Runtime;
use crate::units::human_bytes;

#[derive(Serialize)]
struct Report {
    model: PathBuf,
    format: &'static str,
    /// Opset or schema version, then every op the file uses.
    requires: Vec<String>,
    /// The lowest precision its weights are stored in.
    scheme: String,
    weight_bytes: u64,
    /// Input length the FLOPs are for (a TFLite file's is fixed).
    tokens: u64,
    /// FLOPs of one inference (nodes folded at load or from shapes excluded).
    flops: f64,
    op_mix: Vec<OpRow>,
    folded_at_load: usize,
    shape_arithmetic: usize,
    targets: Vec<TargetReport>,
    /// Targets none of whose runtimes loads this format.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_loaded_by: Vec<String>,
}

#[derive(Serialize)]
struct OpRow {
    op: String,
    count: usize,
    flops: f64,
}

#[derive(Serialize)]
struct TargetReport {
    name: String,
    class: String,
    budget_bytes: u64,
    fits: bool,
    runtimes: Vec<Placement>,
    /// Runtimes that load the format but not this file's weight scheme.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_run: Vec<String>,
}

/// Profiles the graph file `file` (already found to be one).
pub fn profile_graph(
    args: &ProfileArgs,
    global: &GlobalArgs,
    printer: &Printer,
    file: &Path,
    format: GraphFormat,
) -> anyhow::Result<ExitStatus> {
    for (given, flag) in [
        (!args.schemes.is_empty(), "--scheme"),
        (args.plot.is_some(), "--plot"),
        (args.context.is_some(), "--context"),
        (args.batch != 1, "--batch"),
    ] {
        if given {
            bail!(
                "{}: `{flag}` does not apply to a graph file (its schemes and shapes are in the file)",
                file.display()
            );
        }
    }
    let (quantization, compatibility) = payload::describe(file, format)?;
    let cost = cost_of(file, format, args.tokens)?;
    if format == GraphFormat::Tflite && args.tokens != cost.tokens && args.tokens != 128 {
        printer.warn(&format!(
            "--tokens {} ignored: the TFLite file's sequence length is fixed at {}",
            args.tokens, cost.tokens
        ));
    }
    let scheme = payload::main_scheme(&quantization.tensor_types);
    let dir = global.targets_dir.as_deref();
    let targets = target::load_named(&args.targets, dir)?;
    let mut reports = Vec::new();
    let mut not_loaded_by = Vec::new();
    for t in &targets {
        let loaders: Vec<_> = t
            .spec
            .runtimes
            .iter()
            .filter(|r| r.format == format.name())
            .collect();
        let (takes, not_run): (Vec<&Runtime>, Vec<String>) =
            loaders
                .into_iter()
                .fold((Vec::new(), Vec::new()), |(mut takes, mut not_run), r| {
                    match payload::runtime_refuses(r, Some(scheme), &compatibility.requires) {
                        Some(why) => not_run.push(why),
                        None => takes.push(r),
                    }
                    (takes, not_run)
                });
        let runtimes: Vec<Placement> = takes
            .iter()
            .map(|r| graph::place(&cost, t, r, scheme, ASSUMED))
            .collect();
        if takes.is_empty() && not_run.is_empty() {
            if !args.targets.is_empty() {
                bail!(
                    "{}: target {} has no runtime that loads {} (its runtimes load: {})",
                    file.display(),
                    t.name(),
                    format.name(),
                    t.formats().into_iter().collect::<Vec<_>>().join(", ")
                );
            }
            not_loaded_by.push(t.name().to_string());
            continue;
        }
        reports.push(TargetReport {
            name: t.name().to_string(),
            class: t.spec.class.clone(),
            budget_bytes: t.model_budget_bytes(),
            fits: quantization.weight_bytes <= t.model_budget_bytes(),
            runtimes,
            not_run,
        });
    }
    let count = |stage| cost.nodes.iter().filter(|n| n.stage == stage).count();
    let report = Report {
        model: file.to_path_buf(),
        format: format.name(),
        requires: compatibility.requires,
        scheme: scheme.to_string(),
        weight_bytes: quantization.weight_bytes,
        tokens: cost.tokens,
        flops: cost.run_flops(),
        op_mix: cost
            .op_mix()
            .into_iter()
            .map(|(op, (count, flops))| OpRow { op, count, flops })
            .collect(),
        folded_at_load: count(Stage::Load),
        shape_arithmetic: count(Stage::Shape),
        targets: reports,
        not_loaded_by,
    };
    if printer.json {
        printer.json_out(&report)?;
    } else {
        printer.out(&render(&report, args.markdown))?;
    }
    Ok(ExitStatus::Success)
}

fn cost_of(file: &Path, format: GraphFormat, tokens: u64) -> anyhow::Result<GraphCost> {
    let bytes = crate::guard::read_bytes(file, crate::guard::Cap::TOKENIZER)
        .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.message))?;
    match format {
        GraphFormat::Onnx => {
            let model = crate::format::onnx::decode(&bytes, file)?;
            graph::onnx_cost(&model, file, tokens)
                .map_err(|m| anyhow::anyhow!("{}: cannot profile the graph: {m}", file.display()))
        }
        GraphFormat::Tflite => {
            let g = crate::format::tflite::read::read(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not a TFLite model edgeforge reads: {}",
                    file.display(),
                    e.0
                )
            })?;
            Ok(graph::tflite_cost(&g))
        }
    }
    .context("Cannot profile")
}

fn render(r: &Report, markdown: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}  {} ({}), {} weights {}",
        sanitize(&r.model.display().to_string()),
        r.format,
        r.requires.first().map_or("", String::as_str),
        r.scheme,
        human_bytes(r.weight_bytes)
    );
    let _ = writeln!(
        out,
        "{:.2} GFLOP per input of {} tokens; {} nodes folded at load, {} of shape arithmetic",
        r.flops / 1e9,
        r.tokens,
        r.folded_at_load,
        r.shape_arithmetic
    );
    let mut mix: Vec<&OpRow> = r.op_mix.iter().collect();
    mix.sort_by(|a, b| b.flops.total_cmp(&a.flops).then(a.op.cmp(&b.op)));
    let mix: Vec<String> = mix
        .iter()
        .map(|o| {
            format!(
                "{} x{} {:.1}%",
                o.op,
                o.count,
                100.0 * o.flops / r.flops.max(1.0)
            )
        })
        .collect();
    let _ = writeln!(out, "ops: {}", mix.join(", "));
    for t in &r.targets {
        let _ = writeln!(
            out,
            "\n{}{} ({}): budget {}, weights {}",
            if markdown { "### " } else { "" },
            t.name,
            t.class,
            human_bytes(t.budget_bytes),
            if t.fits { "fit" } else { "do not fit" }
        );
        for p in &t.runtimes {
            let _ = writeln!(
                out,
                "{}: {}, {:.0}% of FLOPs there, {} segment{}, projected {:.2} ms",
                p.runtime,
                p.engine,
                p.accelerator_share * 100.0,
                p.segments,
                if p.segments == 1 { "" } else { "s" },
                p.latency_ms
            );
            if p.engine != "cpu" && !p.on_cpu.is_empty() {
                let falls: Vec<String> = p
                    .on_cpu
                    .iter()
                    .map(|(op, (n, _))| format!("{op} x{n}"))
                    .collect();
                let _ = writeln!(out, "  on the CPU: {}", falls.join(", "));
            }
            for n in &p.notes {
                let _ = writeln!(out, "  note: {}", sanitize(n));
            }
            let _ = writeln!(out, "  projection: {}", p.assumption);
        }
        for n in &t.not_run {
            let _ = writeln!(out, "not run: {}", sanitize(n));
        }
    }
    if !r.not_loaded_by.is_empty() {
        let _ = writeln!(
            out,
            "\nno runtime loads {} on: {}",
            r.format,
            r.not_loaded_by.join(", ")
        );
    }
    out
}
