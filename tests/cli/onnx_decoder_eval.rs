//! edgeforge's ONNX evaluator on the decoder graph `quantize SMOLLM2 --scheme
//! q4_0 -o DIR/model.onnx` writes for onnxruntime-genai: its logits, read from
//! the file, against edgeforge's engine on the Q4_0 GGUF of the same model
//! (the same weight blocks) and against onnxruntime on the same file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use edgeforge::engine::{Engine, Network};
use edgeforge::format::onnx::eval::{decoder_logits, DecoderLayout, Session};
use edgeforge::format::onnx::reader::OnnxFile;
use edgeforge::model::Model;

use crate::common::*;

/// Short sentences like the ones a package step scores (~20 tokens each).
const TEXTS: [&str; 3] = [
    "The quick brown fox jumps over the lazy dog, then sleeps under the old oak tree.",
    "Edge devices run small language models when the network is slow or absent.",
    "My favourite food is a warm bowl of noodle soup on a cold winter evening.",
];

/// `quantize --scheme q4_0 -o <dir>/<name>`: the genai folder's model.onnx, or a GGUF.
fn quantize(out: &Path) {
    edgeforge()
        .args(["-q", "quantize", "--scheme", "q4_0", "--allow-requant"])
        .arg(smollm2_gguf())
        .arg("-o")
        .arg(out)
        .assert()
        .success();
}

fn exported(dir: &Path) -> PathBuf {
    let onnx = dir.join("genai").join("model.onnx");
    quantize(&onnx);
    onnx
}

fn session(onnx: &Path) -> Session {
    let file = OnnxFile::open(onnx).unwrap();
    Session::new(&file.model, onnx).unwrap()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// Largest |a - b| over all rows, and the positions whose argmax differs.
fn compare(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f32, Vec<usize>) {
    assert_eq!(a.len(), b.len(), "one row per token");
    let mut max = 0f32;
    let mut flips = Vec::new();
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.len(), y.len(), "row {i}: vocab sizes");
        max = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(max, f32::max);
        if argmax(x) != argmax(y) {
            flips.push(i);
        }
    }
    (max, flips)
}

/// The engine on the Q4_0 GGUF: token ids of each text and every position's logits.
fn engine_logits(gguf: &Path) -> Vec<(Vec<u32>, Vec<Vec<f32>>)> {
    let engine = Engine::load(&Model::open(gguf).unwrap()).unwrap();
    let Network::Decoder(decoder) = &engine.network else {
        panic!("SmolLM2 loads as a decoder");
    };
    TEXTS
        .iter()
        .map(|t| {
            let ids = engine.tokenizer.encode(t).unwrap();
            let rows = decoder.forward(&ids, &mut decoder.new_cache(), ids.len());
            let rows = rows
                .chunks_exact(decoder.spec.vocab)
                .map(<[f32]>::to_vec)
                .collect();
            (ids, rows)
        })
        .collect()
}

#[test]
fn evaluator_logits_match_the_engine_on_the_q4_0_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = exported(dir.path());
    let gguf = dir.path().join("smollm2.q4_0.gguf");
    quantize(&gguf);
    let started = Instant::now();
    let session = session(&onnx);
    let prepare = started.elapsed().as_secs_f64();
    assert_eq!(
        DecoderLayout::of(&session).unwrap(),
        DecoderLayout {
            layers: 30,
            kv_heads: 3,
            head_dim: 64
        }
    );
    for (ids, want) in engine_logits(&gguf) {
        let started = Instant::now();
        let got = decoder_logits(&session, &ids).unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let (diff, flips) = compare(&got, &want);
        let prefix = decoder_logits(&session, &ids[..ids.len() - 1]).unwrap();
        eprintln!(
            "TMP ours prefix vs ours full {:?}",
            compare(&prefix, &got[..ids.len() - 1])
        );
        let kl = |p: &[f32], q: &[f32]| -> f64 {
            let lse = |x: &[f32]| {
                let m = x.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
                m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
            };
            let (lp, lq) = (lse(p), lse(q));
            p.iter()
                .zip(q)
                .map(|(&a, &b)| {
                    let pa = (a as f64 - lp).exp();
                    pa * ((a as f64 - lp) - (b as f64 - lq))
                })
                .sum()
        };
        let kls: Vec<f64> = want.iter().zip(&got).map(|(w, g)| kl(w, g)).collect();
        eprintln!("TMP KL engine||ours per position {kls:?}");
        for &f in &flips {
            let mut r = want[f].clone();
            r.sort_by(|a, b| b.partial_cmp(a).unwrap());
            let mut q = got[f].clone();
            q.sort_by(|a, b| b.partial_cmp(a).unwrap());
            eprintln!(
                "TMP flip at {f}: engine top2 {:?} ours top2 {:?}",
                &r[..2],
                &q[..2]
            );
        }
        let mean: f64 = got
            .iter()
            .flatten()
            .zip(want.iter().flatten())
            .map(|(a, b)| (a - b).abs() as f64)
            .sum::<f64>()
            / (got.len() * got[0].len()) as f64;
        eprintln!("TMP mean abs diff {mean}");
        eprintln!(
            "{} tokens: max |logit diff| {diff}, argmax flips {flips:?}, forward {seconds:.2} s (prepare {prepare:.2} s)",
            ids.len()
        );
    }
}

#[test]
fn evaluator_logits_match_onnxruntime_on_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = exported(dir.path());
    let session = session(&onnx);
    let engine = Engine::load(&Model::open(&smollm2_gguf()).unwrap()).unwrap();
    let seqs: Vec<Vec<u32>> = TEXTS
        .iter()
        .map(|t| engine.tokenizer.encode(t).unwrap())
        .collect();
    let arg = seqs
        .iter()
        .map(|s| s.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
        .collect::<Vec<_>>()
        .join(";");
    let out = dir.path().join("ort");
    let report: serde_json::Value = serde_json::from_str(&run_py(
        "onnx_decoder_logits.py",
        &[&onnx, Path::new(&arg), &out],
    ))
    .unwrap();
    assert_eq!(report["onnxruntime"], "1.31.1");
    let gguf = dir.path().join("smollm2.q4_0.gguf");
    quantize(&gguf);
    let eng = engine_logits(&gguf);
    for (i, ids) in seqs.iter().enumerate() {
        let ours = decoder_logits(&session, ids).unwrap();
        let u = read_rows(
            &out.with_extension(format!("unfused.{i}.f32")),
            ours[0].len(),
        );
        let o = read_rows(
            &out.with_extension(format!("optimized.{i}.f32")),
            ours[0].len(),
        );
        eprintln!("TMP engine vs ort unfused {:?}", compare(&eng[i].1, &u));
        eprintln!("TMP engine vs ort optimized {:?}", compare(&eng[i].1, &o));
        eprintln!("TMP ort unfused vs optimized {:?}", compare(&u, &o));
        let per: Vec<f32> = ours
            .iter()
            .zip(&eng[i].1)
            .map(|(a, b)| {
                a.iter()
                    .zip(b)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0f32, f32::max)
            })
            .collect();
        eprintln!("TMP ours vs engine per position {per:?}");
        let pp = |a: &[Vec<f32>], b: &[Vec<f32>]| -> Vec<f32> {
            a.iter()
                .zip(b)
                .map(|(a, b)| {
                    a.iter()
                        .zip(b)
                        .map(|(p, q)| (p - q).abs())
                        .fold(0f32, f32::max)
                })
                .collect()
        };
        eprintln!(
            "TMP ort-unfused vs engine per position {:?}",
            pp(&u, &eng[i].1)
        );
        eprintln!("TMP ort-unfused vs ours per position {:?}", pp(&u, &ours));
        eprintln!("TMP ort-unfused vs optimized per position {:?}", pp(&u, &o));
        for kind in ["unfused", "optimized"] {
            let theirs = read_rows(
                &out.with_extension(format!("{kind}.{i}.f32")),
                ours[0].len(),
            );
            let (diff, flips) = compare(&ours, &theirs);
            eprintln!(
                "{} tokens vs onnxruntime {kind}: max |logit diff| {diff}, argmax flips {flips:?}",
                ids.len()
            );
        }
    }
}

fn read_rows(path: &Path, vocab: usize) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    values.chunks_exact(vocab).map(<[f32]>::to_vec).collect()
}
