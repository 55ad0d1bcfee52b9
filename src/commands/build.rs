use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::artifact::build::{self, BuildOptions, Index, Outcome, Want};
use crate::cli::{BuildArgs, GlobalArgs, SelectArgs};
use crate::distill::{self, Options};
use crate::exit::ExitStatus;
use crate::printer::{sanitize, Printer};
use crate::target;
use crate::units::human_bytes;

/// Runs (or reuses) a distillation into `work`; returns the student's folder.
fn distilled(recipe: &Path, work: &Path) -> Result<PathBuf, String> {
    let never = AtomicBool::new(false);
    let options = Options {
        out: work.to_path_buf(),
        resume: distill::checkpoint::exists(work) && !work.join("model").exists(),
        force: true,
        until_step: None,
        interrupt: &never,
    };
    let (_, sha) = crate::artifact::hash_file(recipe).map_err(|e| e.to_string())?;
    let metrics = std::fs::read(work.join("metrics.json")).ok();
    let reusable = metrics
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|m| m["recipe_sha256"] == sha.as_str() && work.join("model").exists());
    if !reusable {
        distill::run(recipe, &options, &mut |_| {}).map_err(|e| e.to_string())?;
    }
    Ok(work.join("model"))
}

/// `edgeforge build RECIPE`.
pub fn build(
    args: &BuildArgs,
    global: &GlobalArgs,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    let targets = if args.all_targets {
        target::load_all(global.targets_dir.as_deref())?
            .iter()
            .map(|t| t.name().to_string())
            .collect()
    } else {
        args.targets.clone()
    };
    anyhow::ensure!(args.jobs > 0, "`--jobs` must be at least 1");
    let bars = printer.progress.then(MultiProgress::new);
    let on_done = |o: &Outcome| {
        let line = sanitize(&format!("{:<24} {:<8} {}", o.target, o.status, o.detail));
        match &bars {
            _ if printer.json || printer.quiet => {}
            Some(bars) => {
                let _ = bars.println(line);
            }
            None => printer.info(&line),
        }
    };
    let progress = |target: &str| match &bars {
        Some(bars) => {
            let bar = bars.add(ProgressBar::new(0));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:<24} {msg:<10} [{bar:30}] {bytes}/{total_bytes} {elapsed}",
                )
                .expect("static progress template is valid")
                .progress_chars("=> "),
            );
            bar.set_prefix(sanitize(target));
            bar
        }
        None => ProgressBar::hidden(),
    };
    let (outcomes, index) = build::build(&BuildOptions {
        recipe: &args.recipe,
        targets,
        dist: &args.dist,
        jobs: args.jobs,
        targets_dir: global.targets_dir.as_deref(),
        distill: &distilled,
        on_done: &on_done,
        progress: &progress,
    })
    .context("Cannot build")?;
    let failed = outcomes.iter().any(|o| o.status == "failed");
    if printer.json {
        printer.json_out(&serde_json::json!({ "outcomes": outcomes, "index": index }))?;
    } else {
        printer.out(&variants_table(&index))?;
        printer.out(&format!(
            "{} variants in {} ({} built, {} skipped, {} failed)",
            index.variants.len(),
            args.dist.join("index.json").display(),
            outcomes.iter().filter(|o| o.status == "built").count(),
            outcomes.iter().filter(|o| o.status == "skipped").count(),
            outcomes.iter().filter(|o| o.status == "failed").count(),
        ))?;
    }
    Ok(if failed {
        ExitStatus::CheckFailed
    } else {
        ExitStatus::Success
    })
}

fn projected_speed(v: &build::Variant) -> String {
    match (v.latency_ms, v.decode_tokens_per_second) {
        (Some(ms), _) => format!("{ms:.1} ms"),
        (None, Some(tps)) => format!("{tps:.1} tok/s"),
        _ => "-".into(),
    }
}

/// The variants of `index`, one row each.
fn variants_table(index: &Index) -> String {
    let mut out = format!(
        "{:<24} {:<11} {:>6} {:>10} {:>10} {:>9} {:>12}  {}\n",
        "target", "format", "bits/w", "size", "peak RAM", "acc. drop", "projected", "id"
    );
    for v in &index.variants {
        let speed = projected_speed(v);
        let accuracy = v.accuracy_delta.map_or("-".into(), |d| format!("{d:.4}"));
        out.push_str(&sanitize(&format!(
            "{:<24} {:<11} {:>6.2} {:>10} {:>10} {:>9} {:>12}  {}{}",
            v.target,
            v.format,
            v.bits_per_weight,
            human_bytes(v.size_bytes),
            human_bytes(v.peak_ram_bytes),
            accuracy,
            speed,
            &v.id[..12.min(v.id.len())],
            if v.verified {
                ""
            } else {
                "  (integrity FAILED)"
            },
        )));
        out.push('\n');
    }
    out
}

/// `edgeforge select`.
pub fn select(args: &SelectArgs, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let bytes = fs_err::read(&args.index)?;
    let index: Index = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a dist index", args.index.display()))?;
    let want = Want {
        ram_mb: args.ram_mb,
        accelerator: args.accelerator.as_deref(),
        format: args.format.as_deref(),
    };
    let Some(v) = build::select(&index, &want) else {
        if printer.json {
            printer.json_out(&serde_json::json!({ "selected": null }))?;
        }
        eprintln!(
            "error: no verified variant of {} {} fits {} MiB with the asked accelerator and format",
            index.name, index.version, args.ram_mb
        );
        return Ok(ExitStatus::CheckFailed);
    };
    if printer.json {
        printer.json_out(&serde_json::json!({ "selected": v }))?;
    } else {
        printer.out(&sanitize(&format!(
            "{}  ({}, {}, {:.2} bits/weight, peak {}, projected {}; id {})",
            v.artifact,
            v.target,
            v.format,
            v.bits_per_weight,
            human_bytes(v.peak_ram_bytes),
            projected_speed(v),
            v.id
        )))?;
    }
    Ok(ExitStatus::Success)
}
