use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::cli::ImatrixArgs;
use crate::engine::{Engine, Network};
use crate::exit::ExitStatus;
use crate::format::atomic::Overwrite;
use crate::importance::{self, Text};
use crate::model::Model;
use crate::printer::Printer;

#[derive(Serialize)]
struct Report<'a> {
    model: &'a Path,
    text: &'a Path,
    out: &'a Path,
    /// `gguf` or `dat`.
    format: &'static str,
    entries: usize,
    chunks: usize,
    context: usize,
    tokens: usize,
    seconds: f64,
}

/// `edgeforge imatrix MODEL --text FILE -o OUT`.
pub fn imatrix(args: &ImatrixArgs, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let started = Instant::now();
    let model = Model::open(&args.model).context("Cannot collect an importance matrix")?;
    let engine = Engine::load(&model).context("Cannot collect an importance matrix")?;
    let Network::Decoder(decoder) = &engine.network else {
        anyhow::bail!(
            "{}: an importance matrix is collected from a decoder; this is an encoder",
            args.model.display()
        );
    };
    let overwrite = if args.force {
        Overwrite::Allow
    } else {
        Overwrite::Deny
    };
    anyhow::ensure!(
        overwrite == Overwrite::Allow || !args.out.exists(),
        "{}: Output already exists (pass --force to replace it)",
        args.out.display()
    );
    let body = crate::guard::read_text(&args.text, crate::guard::Cap::TEXT)?;
    let tokens = engine
        .tokenizer
        .encode(&body)
        .context("Cannot collect an importance matrix")?;
    let n_chunk =
        super::eval::chunk_count(tokens.len(), args.ctx, decoder.spec.context, args.chunks)?;
    let names: std::collections::BTreeSet<String> = match model.gguf() {
        Some(_) => model.tensors.iter().map(|t| t.name.clone()).collect(),
        None => model
            .tensors
            .iter()
            .filter_map(|t| crate::llamacpp::tensor_name(&model.architecture, &t.name))
            .collect(),
    };
    let text = Text {
        tokens: &tokens,
        bos: engine.tokenizer.bos,
        ctx: args.ctx,
        n_chunk,
        dataset: args.text.display().to_string(),
    };
    let bar = printer.steps_bar(n_chunk as u64, "chunks");
    let matrix = importance::collect(decoder, &text, &|name| names.contains(name), &mut |done| {
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    let legacy = args.out.extension().is_some_and(|e| e == "dat");
    if legacy {
        matrix.write_dat(&args.out, overwrite)?;
    } else {
        matrix.write_gguf(&args.out, overwrite)?;
    }
    let report = Report {
        model: &args.model,
        text: &args.text,
        out: &args.out,
        format: if legacy { "dat" } else { "gguf" },
        entries: matrix.entries.len(),
        chunks: n_chunk,
        context: args.ctx,
        tokens: n_chunk * args.ctx,
        seconds: started.elapsed().as_secs_f64(),
    };
    if printer.json {
        printer.json_out(&report)?;
    } else {
        printer.out(&format!(
            "wrote {}: {} matrices from {} chunks of {} tokens of {} ({:.1} s)\n",
            args.out.display(),
            report.entries,
            n_chunk,
            args.ctx,
            args.text.display(),
            report.seconds
        ))?;
    }
    Ok(ExitStatus::Success)
}
