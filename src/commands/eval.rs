use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cli::EvalArgs;
use crate::engine::{Engine, Network};
use crate::eval::{self, ChunkBase, Cosines, Estimate, Quality, Spread};
use crate::exit::ExitStatus;
use crate::format::atomic::Overwrite;
use crate::format::logits;
use crate::model::Model;
use crate::printer::Printer;

const DEFAULT_CTX: usize = 512;

#[derive(Serialize)]
struct Report<'a> {
    model: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Path>,
    /// `model`, `logits` (a base file) or `none`.
    reference_kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a Path>,
    /// sha256 of the evaluated tokens (decoders, as little-endian u32) or
    /// of the text (encoders).
    input_sha256: String,
    #[serde(flatten)]
    result: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    saved_logits: Option<PathBuf>,
    seconds: f64,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Outcome {
    Decoder {
        /// Tokens the text has, when it was read.
        #[serde(skip_serializing_if = "Option::is_none")]
        text_tokens: Option<usize>,
        /// Tokens evaluated: `chunks * context`.
        tokens: usize,
        context: usize,
        chunks: usize,
        #[serde(flatten)]
        quality: Box<Quality>,
    },
    Encoder {
        cosine: Cosines,
    },
}

/// `edgeforge eval MODEL [--reference SRC] [--text FILE]`.
pub fn eval(args: &EvalArgs, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let started = Instant::now();
    let engine = load(&args.model)?;
    let reference = match &args.reference {
        Some(path) if is_logits_file(path) => Reference::Logits(
            logits::Reader::open(path).context("Cannot evaluate against --reference")?,
        ),
        Some(path) => Reference::Model(Box::new(load(path)?)),
        None => Reference::None,
    };
    let reference_kind = reference.kind();
    let (outcome, input_sha256, saved) = match &engine.network {
        Network::Encoder(_) => encoder(args, &engine, &reference)?,
        Network::Decoder(_) => decoder(args, &engine, reference, printer)?,
    };
    let report = Report {
        model: &args.model,
        reference: args.reference.as_deref(),
        reference_kind,
        text: args.text.as_deref(),
        input_sha256,
        result: outcome,
        saved_logits: saved,
        seconds: started.elapsed().as_secs_f64(),
    };
    if printer.json {
        printer.json_out(&report)?;
    } else {
        printer.out(&render(&report))?;
    }
    Ok(ExitStatus::Success)
}

enum Reference {
    None,
    Model(Box<Engine>),
    Logits(logits::Reader),
}

impl Reference {
    fn kind(&self) -> &'static str {
        match self {
            Reference::None => "none",
            Reference::Model(_) => "model",
            Reference::Logits(_) => "logits",
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Engine> {
    let model = Model::open(path).context("Cannot evaluate")?;
    Engine::load(&model).context("Cannot evaluate")
}

/// A llama-perplexity base file starts with `_logits_`; anything else is a model.
fn is_logits_file(path: &Path) -> bool {
    let mut magic = [0u8; 8];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && &magic == b"_logits_"
}

fn read_text(args: &EvalArgs) -> anyhow::Result<Option<(PathBuf, String)>> {
    args.text
        .as_ref()
        .map(|p| {
            let body = crate::guard::read_text(p, crate::guard::Cap::TEXT)?;
            Ok((p.clone(), body))
        })
        .transpose()
}

fn encoder(
    args: &EvalArgs,
    engine: &Engine,
    reference: &Reference,
) -> anyhow::Result<(Outcome, String, Option<PathBuf>)> {
    let Reference::Model(reference) = reference else {
        bail!(
            "{}: an encoder is measured against a reference model: give --reference MODEL",
            args.model.display()
        );
    };
    ensure!(
        reference.is_encoder(),
        "{}: --reference is a decoder; {} is an encoder",
        args.reference.as_deref().unwrap_or(Path::new("")).display(),
        args.model.display()
    );
    ensure!(
        args.save_logits.is_none() && args.ctx.is_none() && args.chunks.is_none(),
        "--save-logits, --ctx and --chunks are for decoders; {} is an encoder",
        args.model.display()
    );
    let Some((path, body)) = read_text(args)? else {
        bail!("an encoder is evaluated on texts: give --text FILE (one text per line)");
    };
    let texts: Vec<String> = body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    ensure!(
        !texts.is_empty(),
        "{}: no non-empty line to embed",
        path.display()
    );
    let cosine = eval::cosines(engine, reference, &texts).context("Cannot evaluate")?;
    let sha = hex::encode(Sha256::digest(body.as_bytes()));
    Ok((Outcome::Encoder { cosine }, sha, None))
}

fn decoder(
    args: &EvalArgs,
    engine: &Engine,
    reference: Reference,
    printer: &Printer,
) -> anyhow::Result<(Outcome, String, Option<PathBuf>)> {
    let Network::Decoder(model) = &engine.network else {
        unreachable!("called for decoders")
    };
    let ref_path = args.reference.as_deref().unwrap_or(Path::new(""));
    let text = read_text(args)?;
    let tokenize = |e: &Engine, body: &str| e.tokenizer.encode(body).context("Cannot evaluate");
    let mut reader = None;
    let mut ref_engine = None;
    let mut text_tokens = None;
    let (tokens, ctx) = match reference {
        Reference::Logits(r) => {
            let h = &r.header;
            ensure!(
                h.n_vocab == model.spec.vocab,
                "{}: computed over a vocabulary of {} tokens; {} has {}",
                ref_path.display(),
                h.n_vocab,
                args.model.display(),
                model.spec.vocab
            );
            ensure!(
                args.ctx.is_none_or(|c| c == h.n_ctx),
                "{}: computed with chunks of {} tokens; --ctx {} differs",
                ref_path.display(),
                h.n_ctx,
                args.ctx.unwrap_or_default()
            );
            if let Some((path, body)) = &text {
                let ours = tokenize(engine, body)?;
                text_tokens = Some(ours.len());
                ensure!(
                    ours.get(..h.tokens.len()) == Some(&h.tokens[..]),
                    "{}: its tokens are not {}'s first {} tokens: it was computed on other \
                     text or with another tokenizer",
                    ref_path.display(),
                    path.display(),
                    h.tokens.len()
                );
            }
            let out = (h.tokens.clone(), h.n_ctx);
            reader = Some(r);
            out
        }
        other => {
            let Some((path, body)) = &text else {
                bail!("give --text FILE: the text to evaluate on");
            };
            let tokens = tokenize(engine, body)?;
            if let Reference::Model(r) = other {
                let Network::Decoder(_) = &r.network else {
                    bail!(
                        "{}: --reference is an encoder; {} is a decoder",
                        ref_path.display(),
                        args.model.display()
                    );
                };
                let theirs = tokenize(&r, body)?;
                ensure!(
                    theirs == tokens,
                    "{}: tokenizes {} differently from {}: their next-token distributions \
                     cannot be compared",
                    ref_path.display(),
                    path.display(),
                    args.model.display()
                );
                ref_engine = Some(r);
            }
            (tokens, args.ctx.unwrap_or(DEFAULT_CTX))
        }
    };
    let n_chunk = chunk_count(tokens.len(), ctx, model.spec.context, args.chunks)?;
    let evaluated = &tokens[..n_chunk * ctx];
    let sha = hex::encode(Sha256::digest(
        evaluated
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect::<Vec<u8>>(),
    ));
    let mut writer = args
        .save_logits
        .as_ref()
        .map(|p| {
            let header = logits::Header {
                n_ctx: ctx,
                n_vocab: model.spec.vocab,
                n_chunk,
                tokens: evaluated.to_vec(),
            };
            let overwrite = if args.force {
                Overwrite::Allow
            } else {
                Overwrite::Deny
            };
            logits::Writer::create(p, header, overwrite)
        })
        .transpose()
        .context("Cannot write --save-logits")?;
    let base = match (&mut reader, &ref_engine) {
        (Some(r), _) => ChunkBase::File(r),
        (None, Some(e)) => match &e.network {
            Network::Decoder(d) => ChunkBase::Model(d),
            Network::Encoder(_) => unreachable!("checked above"),
        },
        (None, None) => ChunkBase::None,
    };
    let bar = printer.steps_bar(n_chunk as u64, "chunks");
    let scored = eval::evaluate_chunks(
        model,
        engine.tokenizer.bos,
        evaluated,
        ctx,
        n_chunk,
        base,
        writer.as_mut(),
        &mut |done| bar.set_position(done as u64),
    )
    .context("Cannot evaluate")?;
    bar.finish_and_clear();
    let saved = writer
        .map(logits::Writer::finish)
        .transpose()
        .context("Cannot write --save-logits")?;
    let outcome = Outcome::Decoder {
        text_tokens: text_tokens.or(text.as_ref().map(|_| tokens.len())),
        tokens: evaluated.len(),
        context: ctx,
        chunks: n_chunk,
        quality: Box::new(eval::summarize(&scored)),
    };
    Ok((outcome, sha, saved))
}

/// How many whole chunks of `ctx` tokens to run: all the text holds, or
/// `chunks` if fewer; `ctx` must fit the model's `context`.
pub(super) fn chunk_count(
    tokens: usize,
    ctx: usize,
    context: usize,
    chunks: Option<usize>,
) -> anyhow::Result<usize> {
    ensure!(
        (16..=context).contains(&ctx),
        "--ctx {ctx}: give 16 to {context} tokens per chunk (the model's context)"
    );
    let available = tokens / ctx;
    ensure!(
        available > 0,
        "the text is {tokens} tokens, less than one chunk of {ctx}: give more text or a smaller --ctx"
    );
    let n_chunk = chunks.map_or(available, |c| c.min(available));
    ensure!(n_chunk > 0, "--chunks 0: nothing to evaluate");
    Ok(n_chunk)
}

fn render(r: &Report) -> String {
    let mut out = format!("eval        {}\n", r.model.display());
    if let Some(p) = r.reference {
        out += &format!("reference   {} ({})\n", p.display(), r.reference_kind);
    }
    let est = |e: &Estimate, digits: usize| {
        format!("{:.*} ± {:.*}", digits, e.value, digits, e.uncertainty)
    };
    let pct = |e: &Estimate| format!("{:.3} ± {:.3} %", 100.0 * e.value, 100.0 * e.uncertainty);
    let spread = |s: &Spread| {
        format!(
            "median {:.5}   p90 {:.5}   p99 {:.5}   max {:.5}",
            s.median, s.p90, s.p99, s.max
        )
    };
    match &r.result {
        Outcome::Decoder {
            text_tokens,
            context,
            chunks,
            quality,
            ..
        } => {
            let of_text = text_tokens.map_or(String::new(), |t| format!(" of {t}"));
            out += &format!(
                "tokens      {}{of_text}: {chunks} chunks of {context}, {} positions scored\n",
                chunks * context,
                quality.scored
            );
            out += &format!("perplexity  {}\n", est(&quality.perplexity, 4));
            if let Some(v) = &quality.vs_reference {
                out += &format!(
                    "  reference {}   ratio {}\n",
                    est(&v.perplexity_reference, 4),
                    est(&v.ppl_ratio, 5)
                );
                out += &format!(
                    "KLD         mean {}   {}\n",
                    est(&v.kld_mean, 6),
                    spread(&v.kld)
                );
                out += &format!("same top-1  {}\n", pct(&v.same_top1));
                out += &format!(
                    "Δp          mean {}   RMS {}\n",
                    pct(&v.delta_p_mean),
                    pct(&v.delta_p_rms)
                );
            }
        }
        Outcome::Encoder { cosine } => {
            out += &format!(
                "cosine      mean {} over {} texts   median {:.6}   p1 {:.6}   min {:.6}\n",
                est(&cosine.mean, 6),
                cosine.texts,
                cosine.spread.median,
                cosine.spread.p1,
                cosine.spread.min
            );
        }
    }
    if let Some(p) = &r.saved_logits {
        out += &format!("wrote       {}\n", p.display());
    }
    out
}
