//! `quantize SMOLLM2 --scheme q4_0 -o DIR/model.onnx`: the folder loads in
//! onnxruntime-genai, whose greedy tokens equal `run generate` on the Q4_0
//! GGUF of the same model (the same weight blocks), and the export is
//! byte-identical at any thread count.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;

/// One where no two candidates come within onnxruntime's float noise of
/// each other in 32 steps (docs/accelerators.md: near-ties decide where the
/// two runtimes part on other prompts).
const PROMPT: &str = "My favourite food is";
const NEW_TOKENS: usize = 32;
const FILES: [&str; 5] = [
    "config.json",
    "model.onnx",
    "genai_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
];

fn export(out: &Path, threads: &str) -> Value {
    json_success(
        edgeforge()
            .env("EDGEFORGE_THREADS", threads)
            .args(["--json", "quantize", "--scheme", "q4_0", "--allow-requant"])
            .arg(smollm2_gguf())
            .arg("-o")
            .arg(out),
    )
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

#[test]
fn genai_greedy_tokens_equal_ours_on_the_q4_0_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("t1"), dir.path().join("t2"));
    let report = export(&one.join("model.onnx"), "1");
    export(&two.join("model.onnx"), "2");
    for f in FILES {
        let (a, b) = (one.join(f), two.join(f));
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{f} differs between 1 and 2 threads"
        );
    }
    assert_eq!(report["scheme"], "q4_0");
    assert_eq!(
        report["int4_weights"], 210,
        "every layer matrix as Q4_0 blocks"
    );
    // The tied embedding is Q8_0 in our Q4_0 GGUF (Q6_K's row fallback):
    // carried as float decoded from those exact values.
    assert_eq!(
        report["float_weights"],
        serde_json::json!(["token_embd.weight"])
    );
    let config: Value =
        serde_json::from_slice(&std::fs::read(one.join("genai_config.json")).unwrap()).unwrap();
    assert_eq!(config["model"]["type"], "llama");
    assert_eq!(config["model"]["decoder"]["num_key_value_heads"], 3);
    assert_eq!(config["search"]["do_sample"], false);

    let gguf = dir.path().join("smollm2.q4_0.gguf");
    edgeforge()
        .args(["-q", "quantize", "--scheme", "q4_0", "--allow-requant"])
        .arg(smollm2_gguf())
        .arg("-o")
        .arg(&gguf)
        .assert()
        .success();
    let ours = json_success(
        edgeforge()
            .args(["--json", "run", "generate"])
            .arg(&gguf)
            .args(["--prompt", PROMPT, "--max-tokens", &NEW_TOKENS.to_string()]),
    );
    let n = NEW_TOKENS.to_string();
    let genai: Value = serde_json::from_str(&run_py(
        "genai_check.py",
        &[&one, Path::new(PROMPT), Path::new(&n)],
    ))
    .unwrap();
    assert_eq!(genai["genai"], "0.18.0");
    assert_eq!(
        ids(&genai["prompt_tokens"]),
        ids(&ours["prompt_tokens"]),
        "genai's tokenizer (our tokenizer.json) splits the prompt as we do"
    );
    let (theirs, mine) = (ids(&genai["tokens"]), ids(&ours["tokens"]));
    assert_eq!(mine.len(), NEW_TOKENS, "{ours}");
    assert_eq!(
        theirs, mine,
        "genai: {:?}, ours: {:?}",
        genai["text"], ours["text"]
    );
    assert_eq!(genai["text"], ours["text"]);

    let graph = &genai["graph"];
    let ops: Vec<&str> = graph["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert!(ops.contains(&"com.microsoft:MatMulNBits"), "{ops:?}");
    assert!(
        ops.iter()
            .all(|o| o.starts_with("ai.onnx:") || *o == "com.microsoft:MatMulNBits"),
        "standard ops besides MatMulNBits: {ops:?}"
    );
    assert_eq!(graph["opsets"]["ai.onnx"], 17);
    assert_eq!(graph["metadata"]["edgeforge.scheme"], "q4_0");
    assert_eq!(graph["inputs"]["past_key_values.0.key"], "FLOAT16");
    assert_eq!(graph["inputs"]["position_ids"], "INT64");
}

#[test]
fn architectures_the_decoder_export_cannot_express_exit_2_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out: PathBuf = dir.path().join("genai").join("model.onnx");
    for (model, arch) in [(minilm(), "bert"), (gemma3_gguf(), "gemma3")] {
        let o = edgeforge()
            .args(["quantize", "--scheme", "q4_0", "--allow-requant"])
            .arg(&model)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("architecture `{arch}`")) && err.contains("onnxruntime-genai"),
            "{err}"
        );
        assert!(err.contains(&model.display().to_string()), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing written"
        );
    }
    // An existing file in the folder is kept and named.
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let keep = out.with_file_name("genai_config.json");
    std::fs::write(&keep, b"keep").unwrap();
    let o = edgeforge()
        .args(["quantize", "--scheme", "q4_0", "--allow-requant"])
        .arg(smollm2_gguf())
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("genai_config.json") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(&keep).unwrap(), b"keep");
    assert_eq!(std::fs::read_dir(out.parent().unwrap()).unwrap().count(), 1);
}
