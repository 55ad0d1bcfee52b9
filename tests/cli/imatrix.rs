//! Importance matrices: `quantize --imatrix` against `llama-quantize
//! --imatrix`'s files (their sha256 and llama-imatrix's matrix recorded in
//! tests/fixtures/llamacpp-imatrix/ by scripts/check-imatrix-llamacpp), and
//! `edgeforge imatrix` against llama-imatrix's matrix.

use std::path::{Path, PathBuf};

use edgeforge::format::imatrix::Imatrix;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::*;

fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/llamacpp-imatrix")
}

fn f32_of(source: &Path, out: &Path) {
    edgeforge()
        .args(["-q", "quantize", "--scheme", "F32", "--allow-requant", "-o"])
        .arg(out)
        .arg(source)
        .assert()
        .success();
}

/// Quantizes `f32` to each type with the fixture's matrix, named as
/// llama-quantize was given it (the name is recorded in the file).
fn assert_bytes_equal_llama_quantize(name: &str, f32: &Path, types: &[&str], dir: &Path) {
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("{name}.json"))).unwrap(),
    )
    .unwrap();
    for ty in types {
        let out = dir.join(format!("{name}.{ty}.gguf"));
        edgeforge()
            .current_dir(fixtures())
            .args(["-q", "quantize", "--scheme", ty, "--imatrix"])
            .arg(format!("{name}.imatrix.gguf"))
            .arg("-o")
            .arg(&out)
            .arg(f32)
            .assert()
            .success();
        let got = hex::encode(Sha256::digest(std::fs::read(&out).unwrap()));
        assert_eq!(
            got, want["sha256"][ty],
            "{name} {ty}: not llama-quantize --imatrix's bytes"
        );
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn quantize_with_an_imatrix_writes_llama_quantizes_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let f32 = dir.path().join("smollm2.f32.gguf");
    f32_of(&smollm2_gguf(), &f32);
    // Every weighted kernel: Q4_0/Q5_0 (and their early ffn_down at
    // Q4_1/Q5_1), Q4_1/Q5_1, Q2_K..Q6_K through the mixes, IQ4_XS (and
    // IQ4_NL where SmolLM2's 576-wide rows fall back to it).
    let types = [
        "Q4_0", "Q5_0", "Q4_1", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_XS",
    ];
    assert_bytes_equal_llama_quantize("smollm2", &f32, &types, dir.path());
    let f32 = dir.path().join("gemma3.f32.gguf");
    f32_of(&gemma3_gguf(), &f32);
    assert_bytes_equal_llama_quantize("gemma3", &f32, &["Q4_K_M", "Q2_K"], dir.path());
}

#[test]
fn edgeforge_imatrix_agrees_with_llama_imatrix_entry_by_entry() {
    let dir = tempfile::tempdir().unwrap();
    let f32 = dir.path().join("smollm2.f32.gguf");
    f32_of(&smollm2_gguf(), &f32);
    let text = dir.path().join("calibration.txt");
    let body = std::fs::read(fortunes().join("train.txt")).unwrap();
    std::fs::write(&text, &body[..40_000]).unwrap();
    let ours = dir.path().join("ours.gguf");
    let report = json_success(
        edgeforge()
            .args(["--json", "imatrix"])
            .arg(&f32)
            .arg("--text")
            .arg(&text)
            .args(["-c", "128", "--chunks", "20", "-o"])
            .arg(&ours),
    );
    assert_eq!(
        (report["entries"].as_u64(), report["chunks"].as_u64()),
        (Some(210), Some(20))
    );
    let (a, b) = (
        Imatrix::read(&fixtures().join("smollm2.imatrix.gguf")).unwrap(),
        Imatrix::read(&ours).unwrap(),
    );
    assert_eq!(
        a.entries.keys().collect::<Vec<_>>(),
        b.entries.keys().collect::<Vec<_>>()
    );
    assert_eq!((b.chunk_count, b.chunk_size), (a.chunk_count, a.chunk_size));
    for (name, theirs) in &a.entries {
        let mine = &b.entries[name];
        assert_eq!(mine.counts, theirs.counts, "{name}");
        let dot = |x: &[f32], y: &[f32]| -> f64 {
            x.iter()
                .zip(y)
                .map(|(&p, &q)| f64::from(p) * f64::from(q))
                .sum()
        };
        let cos = dot(&mine.sums, &theirs.sums)
            / (dot(&mine.sums, &mine.sums) * dot(&theirs.sums, &theirs.sums)).sqrt();
        assert!(cos > 0.999_999, "{name}: cosine {cos}");
    }
    // The older format holds the same weights (to f32 rounding).
    let dat = dir.path().join("ours.dat");
    edgeforge()
        .args(["-q", "imatrix"])
        .arg(&f32)
        .arg("--text")
        .arg(&text)
        .args(["-c", "128", "--chunks", "2", "-o"])
        .arg(&dat)
        .assert()
        .success();
    let legacy = Imatrix::read(&dat).unwrap();
    assert!(legacy.legacy && legacy.entries.len() == 210);
}

#[test]
fn an_imatrix_that_does_not_fit_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let f32 = dir.path().join("smollm2.f32.gguf");
    f32_of(&smollm2_gguf(), &f32);
    let refused = |imatrix: &Path, out: &str, needle: &str| {
        let target = dir.path().join(out);
        let o = edgeforge()
            .args(["quantize", "--scheme", "Q4_K_M", "--imatrix"])
            .arg(imatrix)
            .arg("-o")
            .arg(&target)
            .arg(&f32)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(stderr.contains(&imatrix.display().to_string()), "{stderr}");
        assert!(!target.exists());
    };
    // Gemma-3's matrix has 640 columns where SmolLM2's rows have 576.
    refused(
        &fixtures().join("gemma3.imatrix.gguf"),
        "a.gguf",
        "another model",
    );
    let cut = dir.path().join("cut.dat");
    std::fs::write(&cut, [2u8, 0, 0, 0, 200, 0, 0, 0, b'b']).unwrap();
    refused(&cut, "b.gguf", "truncated");
    refused(
        &fixtures().join("smollm2.imatrix.gguf"),
        "c.safetensors",
        "GGUF",
    );
}
