use std::path::Path;

use anyhow::Context;

use crate::artifact::verify::{self as check, Verification};
use crate::artifact::{self, accuracy, PackageInput};
use crate::cli::{GlobalArgs, PackageArgs, VerifyArgs};
use crate::exit::ExitStatus;
use crate::format::atomic::{write_atomic, Overwrite};
use crate::printer::{sanitize, Printer};
use crate::target;
use crate::units::human_bytes;

/// Eval texts from a file (one per non-empty line), else the built-in set.
fn eval_texts(file: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let Some(file) = file else {
        return Ok(accuracy::DEFAULT_EVAL
            .iter()
            .map(|s| s.to_string())
            .collect());
    };
    let text = crate::guard::read_text(file, crate::guard::Cap::TEXT)?;
    let texts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    anyhow::ensure!(
        !texts.is_empty(),
        "{}: no eval texts (the file has no non-empty lines)",
        file.display()
    );
    Ok(texts)
}

/// `edgeforge package MODEL`.
pub fn package(
    args: &PackageArgs,
    global: &GlobalArgs,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    let target = target::load(&args.target, global.targets_dir.as_deref())?;
    let eval = eval_texts(args.eval.as_deref())?;
    let spinner = printer.steps_bar(1, "package");
    let packaged = artifact::package(&PackageInput {
        distill_recipe: None,
        model: &args.model,
        reference: args.reference.as_deref(),
        target: &target,
        name: &args.name,
        version: &args.semver,
        recipe: args.recipe.as_deref(),
        eval,
        out: &args.out,
        force: args.force,
        gate: !args.no_gate,
        runtime: args.runtime.as_deref(),
    });
    let packaged = match packaged {
        Err(e @ artifact::ArtifactError::Gate { .. }) => {
            spinner.finish_and_clear();
            if printer.json {
                printer
                    .json_out(&serde_json::json!({ "packaged": false, "gate": e.to_string() }))?;
            }
            crate::printer::error_line(&format!("{e} (pass --no-gate to package it anyway)"));
            return Ok(ExitStatus::CheckFailed);
        }
        other => other.context("Cannot package")?,
    };
    spinner.finish_and_clear();
    let m = &packaged.manifest;
    let tar = if args.tar {
        Some(artifact::write_tar(&packaged.dir, m).context("Cannot package")?)
    } else {
        None
    };
    if printer.json {
        printer.json_out(&serde_json::json!({
            "artifact": packaged.dir,
            "id": packaged.id,
            "unchanged": packaged.unchanged,
            "tar": tar,
            "manifest": m,
        }))?;
        return Ok(ExitStatus::Success);
    }
    let mut out = format!(
        "{}  {} {} for {}{}\nid          {}\nfiles       {} ({})\nfit         {} of {} at {} tokens: {}\n",
        packaged.dir.display(),
        m.name,
        m.version,
        m.target.name,
        if packaged.unchanged { " (unchanged: identical artifact already there)" } else { "" },
        packaged.id,
        m.files.len(),
        human_bytes(m.metrics.size_bytes),
        human_bytes(m.metrics.total_bytes),
        human_bytes(m.metrics.budget_bytes),
        m.metrics.context_tokens,
        if m.metrics.fits { "fits" } else { "does NOT fit" },
    );
    if let Some(a) = &m.metrics.accuracy {
        if let Some(c) = a.cosine_mean {
            out.push_str(&format!(
                "accuracy    cosine {c:.6} to the reference on {} texts\n",
                a.eval_texts
            ));
        }
        if let (Some(t), Some(p)) = (a.top1_agreement, a.perplexity_increase_pct) {
            out.push_str(&format!(
                "accuracy    top-1 agreement {t:.4}, perplexity {p:+.2}% on {} texts\n",
                a.eval_texts
            ));
        }
    }
    if let Some(t) = &tar {
        out.push_str(&format!("tar         {}\n", t.display()));
    }
    printer.out(&sanitize_lines(&out))?;
    Ok(ExitStatus::Success)
}

/// `edgeforge verify ARTIFACT`.
pub fn verify(
    args: &VerifyArgs,
    global: &GlobalArgs,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    let eval = eval_texts(args.eval.as_deref())?;
    let mut v = check::verify(
        &args.artifact,
        args.reference.as_deref(),
        &eval,
        global.targets_dir.as_deref(),
    )
    .context("Cannot verify")?;
    if let Some(source) = args.rebuild.then_some(args.reference.as_deref()).flatten() {
        let given = args.eval.is_some().then_some(eval.as_slice());
        let check = crate::artifact::rebuild::rebuild(
            &args.artifact,
            source,
            given,
            global.targets_dir.as_deref(),
        )
        .context("Cannot rebuild")?;
        v.passed &= check.passed;
        v.checks.push(check);
    }
    if let Some(dir) = &args.global {
        let g = crate::fed::global::Global::open(dir).context("Cannot verify")?;
        let (m, _) = check::read_manifest(&args.artifact)?;
        let result = crate::fed::global::leads_to(m.global.as_ref(), &m.source.files, &g);
        v.passed &= result.is_ok();
        v.checks.push(check::Check {
            kind: "lineage",
            name: "global".into(),
            passed: result.is_ok(),
            detail: result.unwrap_or_else(|e| e),
        });
    }
    if let Some(want) = &args.expect_id {
        let passed = *want == v.id;
        v.passed &= passed;
        v.checks.push(check::Check {
            kind: "manifest",
            name: "id".into(),
            passed,
            detail: if passed {
                "the expected id".into()
            } else {
                format!("id {}, expected {want}", v.id)
            },
        });
    }
    if args.allow_target_drift {
        for c in v
            .checks
            .iter_mut()
            .filter(|c| c.kind == "manifest" && c.name == "target")
        {
            c.passed = true;
            c.detail.push_str(" (accepted: --allow-target-drift)");
        }
        v.passed = v.checks.iter().all(|c| c.passed);
    }
    if let Some(path) = &args.junit {
        write_atomic(path, check::junit(&v).as_bytes(), Overwrite::Allow)?;
    }
    if printer.json {
        printer.json_out(&v)?;
    } else {
        printer.out(&sanitize_lines(&render(&v)))?;
    }
    Ok(if v.passed {
        ExitStatus::Success
    } else {
        ExitStatus::CheckFailed
    })
}

fn render(v: &Verification) -> String {
    let mut out = format!("{} {} for {}  id {}\n", v.name, v.version, v.target, v.id);
    let failed: Vec<_> = v.checks.iter().filter(|c| !c.passed).collect();
    let integrity = v.checks.iter().filter(|c| c.kind == "integrity").count();
    for c in v
        .checks
        .iter()
        .filter(|c| c.kind != "integrity" || !c.passed)
    {
        out.push_str(&format!(
            "{:4}  {:9}  {}: {}\n",
            if c.passed { "ok" } else { "FAIL" },
            c.kind,
            c.name,
            c.detail
        ));
    }
    if failed.iter().all(|c| c.kind != "integrity") {
        out.push_str(&format!(
            "ok    integrity  {integrity} files: size and sha256 match, nothing extra\n"
        ));
    }
    out.push_str(if v.passed { "verified\n" } else { "FAILED\n" });
    out
}

/// Escapes what a manifest or path could smuggle in, line by line.
fn sanitize_lines(text: &str) -> String {
    text.lines().map(sanitize).collect::<Vec<_>>().join("\n")
}
