use std::io::Write;

use anyhow::Context;
use serde::Serialize;

use crate::cli::{EmbedArgs, GenerateArgs, RunCommand};
use crate::engine::{peak_rss_bytes, Engine, Precision, Sampling};
use crate::exit::ExitStatus;
use crate::model::Model;
use crate::printer::Printer;
use crate::units::human_bytes;

/// `edgeforge run embed|generate`.
pub fn run(cmd: &RunCommand, printer: &Printer) -> anyhow::Result<ExitStatus> {
    match cmd {
        RunCommand::Embed(args) => embed(args, printer),
        RunCommand::Generate(args) => generate(args, printer),
    }
}

fn load(path: &std::path::Path, precision: Precision) -> anyhow::Result<Engine> {
    let model = Model::open(path).context("Cannot run")?;
    let engine = Engine::load_with(&model, precision).context("Cannot run")?;
    tracing::info!("loaded {} in {:.2} s", path.display(), engine.load_seconds);
    Ok(engine)
}

fn report_rss() -> Option<u64> {
    let peak = peak_rss_bytes();
    if let Some(p) = peak {
        tracing::info!("peak RSS {}", human_bytes(p));
    }
    peak
}

#[derive(Serialize)]
struct EmbedReport<'a> {
    model: &'a std::path::Path,
    texts: &'a [String],
    dimensions: usize,
    /// Arithmetic of the linear layers: f32 or int8; for a graph file, the
    /// scheme its weights are stored in (edgeforge's evaluator computes it).
    precision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    embeddings: Option<&'a [Vec<f32>]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    similarity: Option<Vec<Vec<f32>>>,
    load_seconds: f64,
    embed_seconds: f64,
    peak_rss_bytes: Option<u64>,
}

fn embed(args: &EmbedArgs, printer: &Printer) -> anyhow::Result<ExitStatus> {
    anyhow::ensure!(
        args.texts.iter().all(|t| !t.trim().is_empty()),
        "--text is empty: give the text to embed"
    );
    let mut texts = args.texts.clone();
    if let Some(file) = &args.file {
        let body = crate::guard::read_text(file, crate::guard::Cap::TEXT)?;
        texts.extend(
            body.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
    }
    anyhow::ensure!(
        !texts.is_empty(),
        "Nothing to embed: give --text or a non-empty --file"
    );
    let (vectors, precision, load_seconds, embed_seconds) = match crate::artifact::graph::find(
        &args.model,
    )
    .filter(|(f, _)| f.is_file())
    {
        Some((file, format)) => {
            anyhow::ensure!(
                    !args.int8,
                    "{}: `--int8` is for weights the engine loads; a graph computes in the scheme it was written in",
                    file.display()
                );
            let started = std::time::Instant::now();
            let graph =
                crate::artifact::graph::GraphPayload::open(&file, format).context("Cannot run")?;
            let load_seconds = started.elapsed().as_secs_f64();
            let started = std::time::Instant::now();
            let vectors = graph.embed(&texts).context("Cannot run")?;
            (
                vectors,
                graph.main_scheme(),
                load_seconds,
                started.elapsed().as_secs_f64(),
            )
        }
        None => {
            let precision = if args.int8 {
                Precision::Int8
            } else {
                Precision::F32
            };
            let engine = load(&args.model, precision)?;
            let started = std::time::Instant::now();
            let vectors = engine.embed(&texts).context("Cannot run")?;
            let took = started.elapsed().as_secs_f64();
            (vectors, precision.name(), engine.load_seconds, took)
        }
    };
    let similarity = args.similarity.then(|| cosine_matrix(&vectors));
    let report = EmbedReport {
        model: &args.model,
        texts: &texts,
        dimensions: vectors.first().map_or(0, Vec::len),
        precision,
        embeddings: (!args.similarity).then_some(vectors.as_slice()),
        similarity,
        load_seconds,
        embed_seconds,
        peak_rss_bytes: report_rss(),
    };
    if printer.json {
        printer.json_out(&report)?;
        return Ok(ExitStatus::Success);
    }
    let mut out = String::new();
    match &report.similarity {
        Some(m) => {
            // Numbered rows and columns, the texts listed below by number.
            let header: Vec<String> = (1..=m.len()).map(|j| format!("{j:>7}")).collect();
            out.push_str(&format!("    {}\n", header.join(" ")));
            for (i, row) in m.iter().enumerate() {
                let cells: Vec<String> = row.iter().map(|v| format!("{v:7.4}")).collect();
                out.push_str(&format!("{:>3} {}\n", i + 1, cells.join(" ")));
            }
            for (i, text) in texts.iter().enumerate() {
                out.push_str(&format!(
                    "{:>3}  {}\n",
                    i + 1,
                    crate::guard::bounded(text, 72)
                ));
            }
        }
        None => {
            for v in &vectors {
                let cells: Vec<String> = v.iter().map(|x| format!("{x:.6}")).collect();
                out.push_str(&cells.join(" "));
                out.push('\n');
            }
        }
    }
    printer.out(&out)?;
    Ok(ExitStatus::Success)
}

/// Cosines of L2-normalised vectors: plain dot products.
fn cosine_matrix(v: &[Vec<f32>]) -> Vec<Vec<f32>> {
    v.iter()
        .map(|a| {
            v.iter()
                .map(|b| a.iter().zip(b).map(|(x, y)| x * y).sum())
                .collect()
        })
        .collect()
}

#[derive(Serialize)]
struct GenerateReport<'a> {
    model: &'a std::path::Path,
    prompt: &'a str,
    #[serde(flatten)]
    generation: &'a crate::engine::Generation,
    prefill_tokens_per_second: f64,
    decode_tokens_per_second: f64,
    load_seconds: f64,
    peak_rss_bytes: Option<u64>,
}

fn generate(args: &GenerateArgs, printer: &Printer) -> anyhow::Result<ExitStatus> {
    anyhow::ensure!(
        args.temperature >= 0.0 && args.temperature.is_finite(),
        "--temperature must be a finite number >= 0"
    );
    anyhow::ensure!(
        args.top_p > 0.0 && args.top_p <= 1.0,
        "--top-p must be in (0, 1]"
    );
    let engine = load(&args.model, Precision::F32)?;
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    let stream = !printer.json;
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let generation = engine
        .generate(&args.prompt, args.max_tokens, sampling, |piece| {
            if stream && write_error.is_none() {
                if let Err(e) = stdout
                    .write_all(piece.as_bytes())
                    .and_then(|()| stdout.flush())
                {
                    write_error = Some(e);
                }
            }
        })
        .context("Cannot run")?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let report = GenerateReport {
        model: &args.model,
        prompt: &args.prompt,
        generation: &generation,
        prefill_tokens_per_second: rate(generation.prompt_tokens.len(), generation.prefill_seconds),
        decode_tokens_per_second: rate(generation.tokens.len(), generation.decode_seconds),
        load_seconds: engine.load_seconds,
        peak_rss_bytes: report_rss(),
    };
    if printer.json {
        drop(stdout);
        printer.json_out(&report)?;
    } else {
        writeln!(stdout)?;
        drop(stdout);
        printer.info(&format!(
            "{} prompt tokens at {:.1} tok/s, {} new tokens at {:.1} tok/s",
            generation.prompt_tokens.len(),
            report.prefill_tokens_per_second,
            generation.tokens.len(),
            report.decode_tokens_per_second
        ));
    }
    Ok(ExitStatus::Success)
}
