//! `edgeforge inspect` on the real models: the figures the issue names.

use serde_json::Value;

use crate::common::*;

fn inspect_json(path: &std::path::Path, extra: &[&str]) -> Value {
    let out = edgeforge()
        .arg("inspect")
        .arg(path)
        .args(extra)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON")
}

#[test]
fn minilm_reports_its_parameters_with_position_ids_apart() {
    let v = inspect_json(&minilm(), &[]);
    assert_eq!(v["format"], "safetensors");
    assert_eq!(v["parameters"], 22_713_216u64);
    assert_eq!(v["architecture"]["family"], "bert");
    assert_eq!(v["architecture"]["num_hidden_layers"], 6);
    assert_eq!(v["architecture"]["hidden_size"], 384);
    let buffers = v["buffers"].as_array().unwrap();
    assert_eq!(buffers.len(), 1);
    assert_eq!(buffers[0]["name"], "embeddings.position_ids");
    assert_eq!(buffers[0]["dtype"], "I64");
    assert_eq!(v["by_dtype"]["F32"]["elements"], 22_713_216u64);
    assert_eq!(v["by_dtype"]["I64"]["tensors"], 1);
    assert!(
        v.get("tensors").is_none(),
        "tensor table only with --tensors"
    );
}

#[test]
fn minilm_human_output_groups_digits() {
    edgeforge()
        .arg("inspect")
        .arg(minilm())
        .assert()
        .success()
        .stdout(predicate::str::contains("parameters    22,713,216"))
        .stdout(predicate::str::contains("embeddings.position_ids I64 512"));
}

#[test]
fn smollm2_reports_blocks_width_and_type_counts() {
    let v = inspect_json(&smollm2_gguf(), &["--tensors"]);
    assert_eq!(v["format"], "gguf");
    assert_eq!(v["architecture"]["family"], "llama");
    assert_eq!(v["architecture"]["num_hidden_layers"], 30);
    assert_eq!(v["architecture"]["hidden_size"], 576);
    assert_eq!(v["architecture"]["num_key_value_heads"], 3);
    assert_eq!(v["by_dtype"]["Q4_1"]["tensors"], 210);
    assert_eq!(v["by_dtype"]["Q8_0"]["tensors"], 1);
    assert_eq!(v["by_dtype"]["F32"]["tensors"], 61);
    let params = v["parameters"].as_u64().unwrap();
    assert!((134_000_000..135_000_000).contains(&params), "{params}");
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 272);
    let embd = tensors
        .iter()
        .find(|t| t["name"] == "token_embd.weight")
        .unwrap();
    assert_eq!(embd["shape"], serde_json::json!([49152, 576]));
    assert_eq!(embd["n_bytes"], 30_081_024u64);
    assert_eq!(v["metadata"]["general.architecture"], "llama");
}

#[test]
fn missing_path_is_an_input_error() {
    edgeforge()
        .args(["inspect", "no/such/model"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::starts_with("error: ").and(predicate::str::contains(
                "no/such/model: No such file or folder",
            )),
        );
}

#[test]
fn a_file_that_is_not_the_graph_its_name_says_exits_2_naming_it_once() {
    let dir = tempfile::tempdir().unwrap();
    for (name, says) in [
        ("x.onnx", "not an ONNX model"),
        ("x.tflite", "not a TFLite model"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, b"0123456789 not a graph").unwrap();
        let out = edgeforge().arg("inspect").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(says), "{err}");
        assert_eq!(err.matches(name).count(), 1, "the path once: {err}");
    }
}
