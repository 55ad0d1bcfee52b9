use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use serde_json::json;

use crate::cli::DistillArgs;
use crate::distill::{self, Event, Metrics, Options, Outcome};
use crate::exit::ExitStatus;
use crate::printer::Printer;

/// `edgeforge distill RECIPE`.
pub fn distill(args: &DistillArgs, printer: &Printer) -> anyhow::Result<ExitStatus> {
    if args.check {
        distill::check(&args.recipe).context("Bad recipe")?;
        if printer.json {
            printer.json_out(&json!({ "recipe": args.recipe, "ok": true }))?;
        } else {
            printer.out(&format!("{}: ok", args.recipe.display()))?;
        }
        return Ok(ExitStatus::Success);
    }
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupt);
    // A second Ctrl-C while the checkpoint is written still kills the process.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args
            .recipe
            .file_stem()
            .map_or("student".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from("runs").join(stem)
    });
    let options = Options {
        out,
        resume: args.resume,
        force: args.force,
        until_step: args.until_step,
        interrupt: &interrupt,
    };
    let mut bar = printer.steps_bar(0, "teacher");
    let mut on_event = |event: Event| match event {
        Event::Teacher { examples } => {
            bar = printer.steps_bar(examples as u64, "teacher");
        }
        Event::TeacherProgress(n) => bar.inc(n as u64),
        Event::Training { from_step, steps } => {
            bar.finish_and_clear();
            bar = printer.steps_bar(steps as u64, "distill");
            bar.set_position(from_step as u64);
            tracing::info!("training steps {from_step}..{steps}");
        }
        Event::Step {
            step,
            loss,
            examples_per_second,
        } => {
            bar.set_position(step as u64);
            bar.set_message(format!("loss {loss:.4} {examples_per_second:.0} ex/s"));
            tracing::debug!("step {step} loss {loss:.5}");
        }
        Event::Checkpoint { step, dir } => {
            tracing::info!("checkpoint at step {step}: {}", dir.display());
        }
        Event::Evaluating => {
            bar.finish_and_clear();
            printer.info("evaluating the student against the teacher");
        }
    };
    let outcome = distill::run(&args.recipe, &options, &mut on_event).context("Cannot distill")?;
    bar.finish_and_clear();
    match outcome {
        Outcome::Finished(metrics) => {
            report(&metrics, printer)?;
            Ok(ExitStatus::Success)
        }
        Outcome::Paused {
            step,
            checkpoint,
            interrupted,
        } => {
            if printer.json {
                printer.json_out(&json!({
                    "paused_at_step": step,
                    "checkpoint": checkpoint,
                    "interrupted": interrupted,
                }))?;
            } else {
                printer.info(&format!(
                    "{} at step {step}; checkpoint {}; continue with --resume",
                    if interrupted {
                        "interrupted"
                    } else {
                        "stopped"
                    },
                    checkpoint.display()
                ));
            }
            Ok(if interrupted {
                ExitStatus::Interrupted
            } else {
                ExitStatus::Success
            })
        }
    }
}

fn report(m: &Metrics, printer: &Printer) -> anyhow::Result<()> {
    if printer.json {
        return printer.json_out(m);
    }
    printer.out(&format!(
        "student     {}  ({} layers, {} parameters vs the teacher's {})\n\
         training    {} steps x {} on {} examples in {:.0} s; loss {:.4} -> {:.4}{}\n\
         eval cosine {:.4} after distillation (init {:.4}; min {:.4}) on {} held-out examples\n\
         speed-up    {:.2}x  ({:.2} vs {:.2} ms per example, batch 32, {} examples)",
        m.model.display(),
        m.layers,
        m.student_parameters,
        m.teacher_parameters,
        m.steps,
        m.batch_size,
        m.train_examples,
        m.train_seconds,
        m.loss_start,
        m.loss_end,
        if m.teacher_cache_hit {
            " (teacher outputs cached)"
        } else {
            ""
        },
        m.eval_cosine,
        m.eval_cosine_init,
        m.eval_cosine_min,
        m.eval_examples,
        m.speed.speedup,
        m.speed.student_ms_per_example,
        m.speed.teacher_ms_per_example,
        m.speed.examples,
    ))?;
    Ok(())
}
