use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::Context;

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
    let on_done = |o: &Outcome| {
        if !printer.json {
            printer.info(&sanitize(&format!(
                "{:<24} {:<8} {}",
                o.target, o.status, o.detail
            )));
        }
    };
    let (outcomes, index) = build::build(&BuildOptions {
        recipe: &args.recipe,
        targets,
        dist: &args.dist,
        jobs: args.jobs,
        targets_dir: global.targets_dir.as_deref(),
        distill: &distilled,
        on_done: &on_done,
    })
    .context("Cannot build")?;
    let failed = outcomes.iter().any(|o| o.status == "failed");
    if printer.json {
        printer.json_out(&serde_json::json!({ "outcomes": outcomes, "index": index }))?;
    } else {
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
            "{}  ({}, {}, {:.2} bits/weight, peak {}; id {})",
            v.artifact,
            v.target,
            v.format,
            v.bits_per_weight,
            human_bytes(v.peak_ram_bytes),
            v.id
        )))?;
    }
    Ok(ExitStatus::Success)
}
