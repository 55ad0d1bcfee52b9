//! `edgeforge eval`: perplexity and KL divergence as llama-perplexity
//! computes them (its figures recorded in tests/fixtures/llamacpp-eval.json
//! by scripts/check-eval-llamacpp), its base-file format both ways, encoder
//! cosines, and refusals.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;

struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The fixture's text: the first 20,000 bytes of the fortunes eval split.
    fn text(&self) -> PathBuf {
        let body = std::fs::read(fortunes().join("eval.txt")).unwrap();
        let out = self.path("text.txt");
        std::fs::write(&out, &body[..20_000]).unwrap();
        out
    }

    /// `model`'s log-probabilities over `chunks` chunks of 64 tokens of `text`, saved as a base.
    fn save_base(&self, model: &Path, text: &Path, chunks: &str) -> PathBuf {
        let base = self.path("base.kld");
        edgeforge()
            .args(["-q", "eval"])
            .arg(model)
            .arg("--text")
            .arg(text)
            .args(["-c", "64", "--chunks", chunks, "--save-logits"])
            .arg(&base)
            .assert()
            .success();
        base
    }

    /// SmolLM2 as F32 (the reference) or quantized from it.
    fn smollm2(&self, scheme: &str) -> PathBuf {
        let f32 = self.path("smollm2.F32.gguf");
        if !f32.exists() {
            edgeforge()
                .args(["-q", "quantize", "--scheme", "F32", "--allow-requant", "-o"])
                .arg(&f32)
                .arg(smollm2_gguf())
                .assert()
                .success();
        }
        if scheme == "F32" {
            return f32;
        }
        let out = self.path(&format!("smollm2.{scheme}.gguf"));
        edgeforge()
            .args(["-q", "quantize", "--scheme", scheme, "-o"])
            .arg(&out)
            .arg(&f32)
            .assert()
            .success();
        out
    }
}

fn eval_json(args: &[&Path], extra: &[&str]) -> Value {
    let mut cmd = edgeforge();
    cmd.args(["--json", "eval"]).arg(args[0]);
    for pair in args[1..].chunks(2) {
        cmd.arg(pair[0]).arg(pair[1]);
    }
    json_success(cmd.args(extra))
}

/// The figures that must not depend on the route or thread count.
fn figures(v: &Value) -> Value {
    let mut v = v.clone();
    for key in [
        "seconds",
        "reference",
        "reference_kind",
        "model",
        "text",
        "text_tokens",
        "saved_logits",
    ] {
        v.as_object_mut().unwrap().remove(key);
    }
    v
}

fn within(ours: f64, theirs: f64, pct: f64) -> bool {
    (ours / theirs - 1.0).abs() * 100.0 <= pct
}

#[test]
fn eval_agrees_with_llama_perplexity_and_reads_what_it_writes() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("tests/fixtures/llamacpp-eval.json")).unwrap(),
    )
    .unwrap();
    let w = Work::new();
    let text = w.text();
    let f32 = w.smollm2("F32");
    let base = w.path("base.kld");
    let saved = eval_json(
        &[
            &f32,
            Path::new("--text"),
            &text,
            Path::new("--save-logits"),
            &base,
        ],
        &["-c", "128"],
    );
    let (chunks, n_vocab) = (saved["chunks"].as_u64().unwrap(), 49152u64);
    // llama-perplexity's layout: header, tokens, one padded u16 record per scored position.
    let records = chunks * (128 - 1 - 64) * (n_vocab + 4) * 2;
    assert_eq!(
        std::fs::metadata(&base).unwrap().len(),
        20 + 4 * 128 * chunks + records
    );
    for ty in ["Q8_0", "Q4_K_M", "Q2_K"] {
        let model = w.smollm2(ty);
        let theirs = &fixture["types"][ty];
        let via_file = eval_json(&[&model, Path::new("--reference"), &base], &[]);
        let (ppl, kld) = (
            via_file["perplexity"]["value"].as_f64().unwrap(),
            via_file["vs_reference"]["kld_mean"]["value"]
                .as_f64()
                .unwrap(),
        );
        let ppl_base = via_file["vs_reference"]["perplexity_reference"]["value"]
            .as_f64()
            .unwrap();
        for (what, ours, want) in [
            ("perplexity", ppl, &theirs["perplexity"]),
            (
                "reference perplexity",
                ppl_base,
                &theirs["perplexity_reference"],
            ),
            ("mean KLD", kld, &theirs["kld_mean"]),
        ] {
            let want = want.as_f64().unwrap();
            assert!(
                within(ours, want, 2.0),
                "{ty} {what}: ours {ours}, llama-perplexity {want}"
            );
        }
    }
}

#[test]
fn eval_figures_are_the_same_at_any_thread_count_and_by_either_route() {
    let w = Work::new();
    let text = w.text();
    let (f32, q) = (w.smollm2("F32"), w.smollm2("Q4_K_M"));
    let run = |threads: &str| {
        let out = edgeforge()
            .env("EDGEFORGE_THREADS", threads)
            .args(["--json", "eval"])
            .arg(&q)
            .arg("--reference")
            .arg(&f32)
            .arg("--text")
            .arg(&text)
            .args(["-c", "64", "--chunks", "3"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        figures(&serde_json::from_slice(&out.stdout).unwrap())
    };
    let one = run("1");
    assert_eq!(one, run("2"));
    assert_eq!(one["scored"], 3 * (64 - 1 - 32));
    let kld = one["vs_reference"]["kld_mean"]["value"].as_f64().unwrap();
    assert!(kld > 0.0 && kld < 1.0, "{one}");
    // A model reference gives the very figures of its saved base.
    let base = w.save_base(&f32, &text, "3");
    let via_file = eval_json(&[&q, Path::new("--reference"), &base], &[]);
    assert_eq!(figures(&via_file), one);
}

#[test]
fn encoders_are_measured_by_embedding_cosine() {
    let w = Work::new();
    let q8 = minilm_gguf(w.dir.path(), "Q8_0");
    let text = w.path("lines.txt");
    let body = std::fs::read_to_string(fortunes().join("eval.txt")).unwrap();
    let lines: Vec<&str> = body.lines().filter(|l| l.len() > 20).take(40).collect();
    std::fs::write(&text, lines.join("\n")).unwrap();
    let v = eval_json(
        &[
            &q8,
            Path::new("--reference"),
            &minilm(),
            Path::new("--text"),
            &text,
        ],
        &[],
    );
    assert_eq!(v["cosine"]["texts"], 40);
    let mean = v["cosine"]["mean"]["value"].as_f64().unwrap();
    let min = v["cosine"]["spread"]["min"].as_f64().unwrap();
    assert!(mean > 0.999 && mean < 1.0 && min <= mean, "{v}");
    let same = eval_json(
        &[
            &minilm(),
            Path::new("--reference"),
            &minilm(),
            Path::new("--text"),
            &text,
        ],
        &[],
    );
    assert!((same["cosine"]["spread"]["min"].as_f64().unwrap() - 1.0).abs() < 1e-6);
}

#[test]
fn eval_refuses_what_it_cannot_measure_in_one_line() {
    let w = Work::new();
    let text = w.text();
    let f32 = w.smollm2("F32");
    let base = w.save_base(&f32, &text, "2");
    let before = std::fs::read(&base).unwrap();
    let refused = |args: &[&std::ffi::OsStr], needle: &str| {
        let out = edgeforge().arg("eval").args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    };
    let os = |p: &Path| p.as_os_str().to_owned();
    // The base exists: not replaced without --force.
    refused(
        &[
            &os(&f32),
            "--text".as_ref(),
            &os(&text),
            "--save-logits".as_ref(),
            &os(&base),
        ],
        "--force",
    );
    assert_eq!(std::fs::read(&base).unwrap(), before);
    // A truncated base names its file and what is wrong.
    let cut = w.path("cut.kld");
    std::fs::write(&cut, &before[..before.len() - 3]).unwrap();
    refused(&[&os(&f32), "--reference".as_ref(), &os(&cut)], "truncated");
    // A base computed on other text.
    let other = w.path("other.txt");
    std::fs::write(&other, "Something else entirely. ".repeat(40)).unwrap();
    refused(
        &[
            &os(&f32),
            "--reference".as_ref(),
            &os(&base),
            "--text".as_ref(),
            &os(&other),
        ],
        "other text",
    );
    // Chunks the model cannot hold, text shorter than a chunk, no text at all.
    refused(
        &[
            &os(&f32),
            "--text".as_ref(),
            &os(&text),
            "-c".as_ref(),
            "100000".as_ref(),
        ],
        "--ctx",
    );
    let short = w.path("short.txt");
    std::fs::write(&short, "Too short.").unwrap();
    refused(
        &[&os(&f32), "--text".as_ref(), &os(&short)],
        "less than one chunk",
    );
    refused(&[&os(&f32)], "--text");
    // An encoder needs a reference model.
    refused(
        &[&os(&minilm()), "--text".as_ref(), &os(&text)],
        "--reference",
    );
}
