use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::artifact::build::{self, BuildOptions, Index, Outcome, Want};
use crate::cli::{BuildArgs, GlobalArgs, IndexMergeArgs, MatrixStyle, SelectArgs};
use crate::distill::{self, Options};
use crate::distribution::pull::{self, Choice};
use crate::distribution::registry::{parse_reference, Connection, Remote};
use crate::distribution::DistributionError;
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
    if let Some(style) = args.matrix {
        return matrix(args, &targets, style, global, printer);
    }
    let remote = args
        .cache
        .as_deref()
        .map(|text| cache_remote(text, args.plain_http))
        .transpose()?;
    let cache =
        |t: &crate::target::Target, inputs: &str, dir: &Path| -> Result<Option<String>, String> {
            let Some(remote) = &remote else {
                return Ok(None);
            };
            let tag = crate::distribution::media::inputs_tag(inputs);
            match pull::pull(remote, &tag, &Choice::Target(t.name()), dir, true, &|_| {}) {
                Ok(o) => Ok(Some(format!(
                    "inputs {} published: pulled artifact {}",
                    &inputs[..12],
                    o.variant.id
                ))),
                Err(DistributionError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        };
    let bars = printer.progress.then(MultiProgress::new);
    let on_done = |o: &Outcome| {
        let line = sanitize(&format!("{:<32} {:<11} {}", o.target, o.status, o.detail));
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
                    "{prefix:<32} {msg:<10} [{bar:30}] {bytes}/{total_bytes} {elapsed}",
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
        cache: args.cache.is_some().then_some(&cache as &build::Cache),
        progress: &progress,
        force: args.force,
    })
    .context("Cannot build")?;
    let failed = outcomes.iter().any(|o| o.status == "failed");
    if printer.json {
        printer.json_out(&serde_json::json!({ "outcomes": outcomes, "index": index }))?;
    } else {
        printer.out(&variants_table(&index))?;
        printer.out(&format!(
            "{} variants in {} ({} built, {} skipped or cached, {} failed)",
            index.variants.len(),
            args.dist.join("index.json").display(),
            outcomes.iter().filter(|o| o.status == "built").count(),
            outcomes
                .iter()
                .filter(|o| o.status == "skipped" || o.status == "cached")
                .count(),
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
        "{:<32} {:<11} {:>6} {:>10} {:>10} {:>9} {:>12}  {}\n",
        "target", "format", "bits/w", "size", "peak RAM", "acc. drop", "projected", "id"
    );
    for v in &index.variants {
        let speed = projected_speed(v);
        let accuracy = v.accuracy_delta.map_or("-".into(), |d| format!("{d:.4}"));
        out.push_str(&sanitize(&format!(
            "{:<32} {:<11} {:>6.2} {:>10} {:>10} {:>9} {:>12}  {}{}",
            match &v.runtime {
                Some(r) => format!("{}.{r}", v.target),
                None => v.target.clone(),
            },
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
                "  (not verified: a file or the accuracy budget failed)"
            },
        )));
        out.push('\n');
    }
    out
}

/// `edgeforge select`.
pub fn select(args: &SelectArgs, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let bytes = crate::guard::read_bytes(&args.index, crate::guard::Cap::JSON)?;
    let index: Index = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a dist index", args.index.display()))?;
    if let Some(kind) = &args.accelerator {
        let known = crate::target::schema::ACCELERATOR_KINDS;
        anyhow::ensure!(
            known.contains(&kind.as_str()),
            "--accelerator `{}`: unknown kind (known: {})",
            crate::guard::bounded(kind, 32),
            known.join(", ")
        );
    }
    let models = index.models();
    let model = match (&args.model, models.as_slice()) {
        (Some(m), _) if models.contains(&m.as_str()) => m.as_str(),
        (Some(m), _) => anyhow::bail!(
            "{}: no model `{}` (it holds {})",
            args.index.display(),
            crate::guard::bounded(m, 64),
            models.join(", ")
        ),
        (None, [one]) => one,
        (None, []) => anyhow::bail!("{}: the index has no variants", args.index.display()),
        (None, several) => anyhow::bail!(
            "{}: the index holds several models ({}): pass --model",
            args.index.display(),
            several.join(", ")
        ),
    };
    let version = match &args.semver {
        Some(v) => v.as_str(),
        None => index.newest_version(model).unwrap_or_default(),
    };
    let want = Want {
        model: Some(model),
        version: Some(version),
        ram_mb: args.ram_mb,
        accelerator: args.accelerator.as_deref(),
        format: args.format.as_deref(),
    };
    let Some(v) = build::select(&index, &want) else {
        if printer.json {
            printer.json_out(&serde_json::json!({ "selected": null }))?;
        }
        crate::printer::error_line(&sanitize(&format!(
            "no verified variant of {model} {version} fits {} MiB with the asked accelerator and format",
            args.ram_mb
        )));
        return Ok(ExitStatus::CheckFailed);
    };
    if printer.json {
        printer.json_out(&serde_json::json!({ "selected": v }))?;
    } else {
        printer.out(&sanitize(&format!(
            "{}  ({} {}, {}, {}, {:.2} bits/weight, peak {}, projected {}; id {})",
            v.artifact,
            v.name,
            v.version,
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

/// The registry repository of `--cache` (a tag, if given, is ignored: cache
/// entries are found by their inputs tag).
fn cache_remote(text: &str, plain_http: bool) -> anyhow::Result<Remote> {
    let (reference, _) = parse_reference(text)?;
    Ok(Remote::connect(reference, &Connection { plain_http })?)
}

/// `build --matrix`: one job per target with its inputs hash.
fn matrix(
    args: &BuildArgs,
    targets: &[String],
    style: MatrixStyle,
    global: &GlobalArgs,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    let planned = build::plan_targets(&args.recipe, targets, global.targets_dir.as_deref())
        .context("Cannot plan the build matrix")?;
    let jobs: Vec<serde_json::Value> = planned
        .targets
        .iter()
        .map(|(t, inputs)| match style {
            MatrixStyle::Github => {
                serde_json::json!({ "target": t.name(), "inputs": inputs.hash() })
            }
            MatrixStyle::Gitlab => {
                serde_json::json!({ "TARGET": t.name(), "INPUTS": inputs.hash() })
            }
        })
        .collect();
    let matrix = match style {
        MatrixStyle::Github => serde_json::json!({ "include": jobs }),
        MatrixStyle::Gitlab => serde_json::json!({ "parallel": { "matrix": jobs } }),
    };
    // One line: CI systems read it from a step output (`echo "matrix=$(...)"`).
    printer.out(&serde_json::to_string(&matrix)?)?;
    Ok(ExitStatus::Success)
}

/// `edgeforge index merge A.json B.json... --out FILE`.
pub fn index_merge(args: &IndexMergeArgs, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let parts = args
        .indexes
        .iter()
        .map(|path| {
            let bytes = crate::guard::read_bytes(path, crate::guard::Cap::JSON)?;
            serde_json::from_slice::<Index>(&bytes)
                .with_context(|| format!("{}: not a dist index", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let merged = build::merge_indexes(&parts).map_err(|e| anyhow::anyhow!("Cannot merge: {e}"))?;
    crate::format::atomic::write_atomic(
        &args.out,
        build::index_json(&merged).as_bytes(),
        crate::format::atomic::Overwrite::Allow,
    )?;
    if printer.json {
        printer.json_out(&merged)?;
    } else {
        printer.out(&variants_table(&merged))?;
        printer.out(&format!(
            "{} variants from {} indexes in {}",
            merged.variants.len(),
            parts.len(),
            args.out.display()
        ))?;
    }
    Ok(ExitStatus::Success)
}
