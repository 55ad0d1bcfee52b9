//! Every `llama-quantize` type, planned by us, gives each tensor the type
//! llama.cpp gives it. The expected types were written by
//! `scripts/check-mixes-llamacpp --write-fixture` from llama-quantize's own
//! files (that script also checks the files are byte-identical); CI has no
//! llama.cpp build, so the plans are checked against what it recorded.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::*;

/// `edgeforge quantize MODEL --dry-run -o x.gguf ARGS...`, run in a fresh
/// temporary folder.
fn dry_run(model: &Path, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    edgeforge()
        .arg("quantize")
        .arg(model)
        .args(["--dry-run", "-o"])
        .arg(dir.path().join("x.gguf"))
        .args(args)
        .output()
        .unwrap()
}

/// The dry run's plan: scheme by name in the GGUF, for every 2-D tensor.
fn planned_types(model: &Path, args: &[&str]) -> BTreeMap<String, String> {
    let out = dry_run(model, &[args, &["--allow-requant", "--json"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["shape"].as_array().is_none_or(|s| s.len() >= 2))
        .map(|t| {
            let name = t["out_name"].as_str().unwrap();
            (name.to_string(), t["scheme"].as_str().unwrap().to_string())
        })
        .collect()
}

fn check_against_llama_cpp(fixture: &str, model: &Path) {
    let path = repo_root()
        .join("tests/fixtures/llamacpp-mixes")
        .join(fixture);
    let fixture: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mixes = fixture["mixes"].as_object().unwrap();
    assert!(mixes.len() >= 14, "every llama-quantize type is recorded");
    let mut wrong = Vec::new();
    for (mix, want) in mixes {
        let default = want["default"].as_str().unwrap();
        let planned = planned_types(model, &["--scheme", mix]);
        assert!(planned.len() > 100, "{mix}: the dry run lists the plan");
        for (name, got) in &planned {
            let expected = want["others"][name].as_str().unwrap_or(default);
            if !got.eq_ignore_ascii_case(expected) {
                wrong.push(format!("{mix} {name}: ours {got}, llama.cpp {expected}"));
            }
        }
        for name in want["others"].as_object().unwrap().keys() {
            if !planned.contains_key(name) {
                wrong.push(format!("{mix} {name}: llama.cpp writes it, we do not"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn smollm2_every_type_matches_llama_quantize_tensor_for_tensor() {
    check_against_llama_cpp("smollm2.json", &smollm2_gguf());
}

#[test]
fn gemma3_every_type_matches_llama_quantize_tensor_for_tensor() {
    check_against_llama_cpp("gemma3.json", &gemma3_gguf());
}

/// Without an importance matrix, the IQ4 files are llama-quantize's bytes
/// (their sha256 recorded by the same script; the other types' encoders are
/// checked against the `gguf` package's in `quant_kernels`).
#[test]
fn iq4_files_are_llama_quantizes_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let f32 = dir.path().join("smollm2.f32.gguf");
    edgeforge()
        .args(["-q", "quantize", "--scheme", "F32", "--allow-requant", "-o"])
        .arg(&f32)
        .arg(smollm2_gguf())
        .assert()
        .success();
    let fixture: Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("tests/fixtures/llamacpp-mixes/smollm2.json")).unwrap(),
    )
    .unwrap();
    for ty in ["IQ4_NL", "IQ4_XS"] {
        let out = dir.path().join(format!("{ty}.gguf"));
        edgeforge()
            .args(["-q", "quantize", "--scheme", ty, "-o"])
            .arg(&out)
            .arg(&f32)
            .assert()
            .success();
        let got = hex::encode(Sha256::digest(std::fs::read(&out).unwrap()));
        assert_eq!(
            got, fixture["sha256"][ty],
            "{ty}: not llama-quantize's bytes"
        );
    }
}

#[test]
fn tensor_type_overrides_win_in_llama_quantize_order() {
    let planned = planned_types(
        &smollm2_gguf(),
        &[
            "--scheme",
            "Q4_K_M",
            "--tensor-type",
            r"blk\.1\d\.ffn_down=Q8_0",
            "--tensor-type",
            "ffn_down=Q2_K",
            "--token-embedding-type",
            "Q5_0",
        ],
    );
    let scheme = |name: &str| planned[name].as_str();
    assert_eq!(scheme("blk.12.ffn_down.weight"), "Q8_0", "first match wins");
    assert_eq!(scheme("blk.2.ffn_down.weight"), "Q2_K");
    assert_eq!(scheme("token_embd.weight"), "Q5_0");
    // Untouched by the flags: Q4_K_M's base, and its 576-wide rows fall
    // back to Q5_0 as llama.cpp's do.
    assert_eq!(scheme("blk.2.ffn_up.weight"), "Q5_0");
}

#[test]
fn a_bad_tensor_type_is_a_usage_error_naming_it() {
    for bad in ["ffn_down", "ffn_down=Q9_9", "(=Q8_0"] {
        let out = dry_run(
            &smollm2_gguf(),
            &["--scheme", "Q4_K_M", "--tensor-type", bad],
        );
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--tensor-type"), "{bad}: {stderr}");
    }
}
