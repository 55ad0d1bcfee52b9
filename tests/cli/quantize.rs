//! `edgeforge quantize` end to end on the real models.

use std::path::Path;

use serde_json::Value;

use crate::common::*;

fn quantize_json(args: &[&str], model: &Path, out: &Path) -> (Option<i32>, Value, String) {
    let o = edgeforge()
        .arg("quantize")
        .arg(model)
        .arg("-o")
        .arg(out)
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code(), v, stderr)
}

#[test]
fn minilm_k_quant_mix_reads_through_gguf_within_the_reported_rmse() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("minilm.gguf");
    let (code, report, stderr) = quantize_json(&["--scheme", "Q4_K_M"], &minilm(), &out);
    assert_eq!(code, Some(0), "{stderr}");
    let tensors = report["tensors"].as_array().unwrap();
    // 103 float tensors minus the pooler (2) that llama.cpp's BERT converter drops.
    assert_eq!(tensors.len(), 101);
    assert!(tensors
        .iter()
        .all(|t| !t["name"].as_str().unwrap().starts_with("pooler")));
    let by = |name: &str| {
        tensors
            .iter()
            .find(|t| t["out_name"] == name)
            .unwrap()
            .clone()
    };
    // llama.cpp's use_more_bits over 6 layers picks layers 2 and 5.
    assert_eq!(
        by("blk.2.ffn_down.weight")["scheme"],
        "Q6_K",
        "sensitive layer gets more bits"
    );
    assert_eq!(by("blk.0.ffn_down.weight")["scheme"], "Q4_K");
    assert_eq!(
        by("blk.2.ffn_up.weight")["scheme"],
        "Q5_0",
        "row 384 falls back from Q4_K like llama.cpp"
    );
    assert!(by("blk.2.ffn_up.weight")["note"]
        .as_str()
        .unwrap()
        .contains("fallback"));
    assert_eq!(by("blk.0.attn_output_norm.weight")["scheme"], "F32");
    let report_path = dir.path().join("report.json");
    std::fs::write(&report_path, serde_json::to_vec(&report).unwrap()).unwrap();
    let st = minilm().join("model.safetensors");
    let stdout = run_py("gguf_rmse.py", &[&out, &report_path, &st]);
    assert!(stdout.starts_with("ok: 101 tensors"), "{stdout}");
}

#[test]
fn minilm_q8_0_gguf_has_llama_cpp_bert_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let (code, _, stderr) = quantize_json(&["--scheme", "Q8_0"], &minilm(), &out);
    assert_eq!(code, Some(0), "{stderr}");
    let f = edgeforge::format::gguf::GgufFile::open(&out).unwrap();
    assert_eq!(f.architecture(), Some("bert"));
    assert_eq!(f.get_u64("bert.block_count"), Some(6));
    assert_eq!(
        f.get_u64("bert.pooling_type"),
        Some(1),
        "mean pooling from 1_Pooling/config.json"
    );
    assert_eq!(f.get_u64("tokenizer.ggml.cls_token_id"), Some(101));
    assert_eq!(f.get_u64("general.file_type"), Some(7));
    let Some(edgeforge::format::gguf::MetaValue::Array(tokens)) = f.get("tokenizer.ggml.tokens")
    else {
        panic!()
    };
    assert_eq!(tokens.len(), 30522);
    assert_eq!(tokens.values[101].as_str(), Some("[CLS]"));
    assert_eq!(tokens.values[2023].as_str(), Some("\u{2581}this"));
    // llama.cpp refuses a BERT model without the token-type count, and adds
    // the token-type row with an op that has no quantized kernel.
    assert_eq!(f.get_u64("tokenizer.ggml.token_type_count"), Some(2));
    let token_types = f.tensors().iter().find(|t| t.name == "token_types.weight");
    assert_eq!(
        token_types.map(|t| t.ggml_type),
        Some(edgeforge::format::gguf::GgmlType::F32)
    );
}

#[test]
fn output_bytes_do_not_depend_on_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for threads in ["1", "2"] {
        let out = dir.path().join(format!("t{threads}.gguf"));
        let st = edgeforge()
            .args(["--threads", threads, "quantize"])
            .arg(minilm())
            .args(["--scheme", "Q4_K_M", "-o"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(st.status.success());
        digests.push(std::fs::read(&out).unwrap());
    }
    assert!(digests[0] == digests[1]);
}

#[test]
fn fit_picks_per_target_and_exits_1_when_nothing_fits() {
    let dir = tempfile::tempdir().unwrap();
    let (code, rpi, _) = quantize_json(
        &["--fit", "rpi5-8gb", "--dry-run"],
        &minilm(),
        &dir.path().join("a.safetensors"),
    );
    assert_eq!(code, Some(0));
    let (code, coral, _) = quantize_json(
        &["--fit", "coral-dev-board", "--dry-run"],
        &minilm(),
        &dir.path().join("b.safetensors"),
    );
    assert_eq!(code, Some(0));
    assert_eq!(rpi["preset"], "F16");
    assert_eq!(
        coral["preset"], "int8_pc",
        "the Edge TPU runs only int8 per-channel"
    );
    assert!(
        coral["footprint"]["total_bytes"].as_u64() <= coral["footprint"]["budget_bytes"].as_u64()
    );

    let out = dir.path().join("esp.safetensors");
    let (code, v, stderr) = quantize_json(&["--fit", "esp32-s3-8mb"], &minilm(), &out);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(v["fits"], false);
    assert!(
        stderr.contains("minilm: nothing fits esp32-s3-8mb") && stderr.contains("missing it by"),
        "{stderr}"
    );
    assert!(!out.exists(), "no output when nothing fits");
}

/// An already-quantized source is never upcast (F16 or Q8_0 of a Q4_1 file
/// add bytes, not accuracy) nor moved to another lossy type (Q5_1 of a
/// Q4_K_M file): where it fits, `--fit` keeps every tensor as stored, bytes
/// copied, so no --allow-requant is needed.
#[test]
fn fit_keeps_a_quantized_source_as_stored_where_it_fits() {
    let dir = tempfile::tempdir().unwrap();
    for (model, mix) in [(smollm2_gguf(), "Q4_1"), (gemma3_gguf(), "Q4_K_M")] {
        let out = dir.path().join(format!("{mix}.gguf"));
        let (code, v, stderr) = quantize_json(&["--fit", "rpi5-8gb"], &model, &out);
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(v["preset"], mix, "{v}");
        assert!(!stderr.contains("re-quantiz"), "{stderr}");
        let source = std::fs::metadata(&model).unwrap().len();
        assert!(
            v["footprint"]["weights_bytes"].as_u64().unwrap() <= source,
            "{v}"
        );
        for t in v["tensors"].as_array().unwrap() {
            assert_eq!(t["note"], "kept as stored (lossless)", "{t}");
            assert_eq!(t["rmse"], 0.0, "{t}");
        }
        // llama.cpp's reader sees the source's own types and bytes.
        let read =
            |p: &Path| -> Value { serde_json::from_str(&run_py("gguf_tensors.py", &[p])).unwrap() };
        assert_eq!(read(&out), read(&model), "{mix}: tensors changed");
    }
}

#[test]
fn target_restricts_schemes() {
    let dir = tempfile::tempdir().unwrap();
    let (code, v, stderr) = quantize_json(
        &["--scheme", "int4_g32_asym", "--target", "coral-dev-board"],
        &minilm(),
        &dir.path().join("c.safetensors"),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let schemes: std::collections::BTreeSet<&str> = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["scheme"].as_str().unwrap())
        .collect();
    assert!(
        schemes.contains("int8_pc") && !schemes.contains("int4_g32_asym"),
        "{schemes:?}"
    );
}

#[test]
fn bpw_search_reaches_the_budget_spending_bits_unevenly() {
    let dir = tempfile::tempdir().unwrap();
    let (code, v, stderr) = quantize_json(
        &["--bpw", "6.0", "--dry-run"],
        &minilm(),
        &dir.path().join("x.gguf"),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let bpw = v["bits_per_weight"].as_f64().unwrap();
    assert!(bpw <= 6.0 && bpw > 5.0, "{bpw}");
    let (code, _, stderr) = quantize_json(
        &["--bpw", "1.0", "--dry-run"],
        &minilm(),
        &dir.path().join("x.gguf"),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("out of reach"), "{stderr}");
}

#[test]
fn requantizing_needs_allow_requant_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.gguf");
    let (code, _, stderr) = quantize_json(&["--scheme", "Q8_0"], &smollm2_gguf(), &out);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--allow-requant"), "{stderr}");
    let (code, v, stderr) = quantize_json(
        &["--scheme", "Q8_0", "--allow-requant"],
        &smollm2_gguf(),
        &out,
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(v["tensors"].as_array().unwrap().len(), 272);
    let f = edgeforge::format::gguf::GgufFile::open(&out).unwrap();
    assert_eq!(
        f.get_str("tokenizer.chat_template").map(|s| s.len()),
        Some(368),
        "tokenizer metadata kept"
    );
    let before = std::fs::read(&out).unwrap();
    let (code, _, stderr) = quantize_json(
        &["--scheme", "Q4_0", "--allow-requant"],
        &smollm2_gguf(),
        &out,
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("already exists"), "{stderr}");
    assert!(std::fs::read(&out).unwrap() == before);
}

#[test]
fn bad_input_is_one_line_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (vec!["--scheme", "Q7_K"], "Unknown scheme `Q7_K`"),
        (
            vec!["--scheme", "Q8_0", "--target", "nope"],
            "Unknown target `nope`",
        ),
        (vec!["--scheme", "int8_pc"], "is a safetensors encoding"),
    ] {
        let (code, _, stderr) = quantize_json(&args, &minilm(), &dir.path().join("o.gguf"));
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
    let (code, _, stderr) = quantize_json(
        &["--scheme", "Q8_0"],
        &minilm(),
        &dir.path().join("missing-dir/o.gguf"),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no partial files left"
    );
}

/// A write that fails mid-stream (here: a file-size limit, which fails
/// `write` like a full disk once SIGXFSZ is ignored) leaves no partial file
/// and keeps the existing output byte for byte.
#[test]
fn failed_write_mid_stream_leaves_no_partial_file_and_keeps_the_old_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let good = b"an earlier good artifact".to_vec();
    std::fs::write(&out, &good).unwrap();
    // 1 MiB limit (ulimit -f counts 512-byte blocks in POSIX sh); the Q8_0
    // output is ~25 MB, so the write fails well inside the tensor data.
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 2048; exec \"$0\" \"$@\"")
        .arg(assert_cmd::cargo::cargo_bin("edgeforge"))
        .args(["quantize", "--scheme", "Q8_0", "--force", "-o"])
        .arg(&out)
        .arg(minilm())
        .env("EDGEFORGE_NO_PROGRESS", "1")
        .current_dir(repo_root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("m.gguf"), "names the output: {stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), good, "old output kept");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temp file left"
    );
}

#[test]
fn a_lone_safetensors_output_runs_packages_and_verifies_without_side_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("minilm.int8pc.safetensors");
    edgeforge()
        .args(["-q", "quantize", "--scheme", "int8_pc", "-o"])
        .arg(&out)
        .arg(minilm())
        .assert()
        .success();
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "one file, no side files"
    );
    let v = json_success(
        edgeforge()
            .args(["--json", "run", "embed"])
            .arg(&out)
            .args(["--text", "The weather is lovely today."])
            .args(["--text", "It's so sunny outside!", "--similarity"]),
    );
    // The published sentence-transformers figure is 0.6660; int8 stays close.
    let sim = v["similarity"][0][1].as_f64().unwrap();
    assert!((sim - 0.666).abs() < 0.02, "{sim}");
    let inspect = edgeforge().arg("inspect").arg(&out).output().unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("bert encoder"), "{text}");
    assert!(text.contains("edgeforge.tokenizer.json = <"), "{text}");
    let dist = dir.path().join("dist");
    edgeforge()
        .args(["-q", "package"])
        .arg(&out)
        .args([
            "--target",
            "rpi5-8gb",
            "--name",
            "minilm",
            "--version",
            "1.0.0",
            "--reference",
        ])
        .arg(minilm())
        .arg("--out")
        .arg(&dist)
        .assert()
        .success();
    edgeforge()
        .arg("verify")
        .arg(dist.join("minilm/1.0.0/rpi5-8gb"))
        .assert()
        .success();
}

#[test]
fn completions_and_man_page_come_from_the_parser() {
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = edgeforge().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("quantize") && text.contains("--fit"),
            "{shell}"
        );
    }
    let out = edgeforge().arg("man").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(".ie") || text.contains(".TH"),
        "{}",
        &text[..200.min(text.len())]
    );
    assert!(text.contains("quantize"));
}

#[test]
fn format_auto_writes_what_the_targets_accelerator_runtime_loads_within_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = fortunes().join("train.txt");
    let auto = |target: &str, out: &Path| {
        quantize_json(
            &[
                "--fit",
                target,
                "--format",
                "auto",
                "--calibration",
                corpus.to_str().unwrap(),
                "--calibration-texts",
                "8",
            ],
            &minilm(),
            out,
        )
    };
    // The Edge TPU runs full-integer int8 only, and MiniLM's misses the
    // Coral's budget there: exit 1, nothing written, no scratch left behind.
    let coral = dir.path().join("coral");
    let (code, report, _) = auto("coral-dev-board", &coral);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["runtime"], "tflite-edgetpu");
    assert_eq!(report["tried"].as_array().unwrap().len(), 1);
    assert!(report["output"].is_null());
    assert_eq!(std::fs::read_dir(&coral).unwrap().count(), 0);
    // Pixel 8: LiteRT on its TPU; int8 over budget, so the F16 TFLite, with
    // the config and tokenizer that make the folder a payload.
    let pixel = dir.path().join("pixel");
    let (code, report, _) = auto("pixel-8", &pixel);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        (report["format"].as_str(), report["scheme"].as_str()),
        (Some("tflite"), Some("F16"))
    );
    assert_eq!(report["tried"][0]["within_budget"], false);
    assert!(report["tried"][1]["cosine_mean"].as_f64().unwrap() > 0.9999);
    let mut names: Vec<String> = std::fs::read_dir(&pixel)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["config.json", "model.tflite", "tokenizer.json"]);
    let (code, _, stderr) = auto("pixel-8", &pixel);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("already exists"), "{stderr}");
    // A decoder has no graph writer for these runtimes: the CPU format, planned by --fit.
    let smol = dir.path().join("smol");
    let (code, report, _) = quantize_json(
        &["--fit", "rpi5-8gb", "--format", "auto", "--allow-requant"],
        &smollm2_gguf(),
        &smol,
    );
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["format"], "gguf");
    assert!(smol.join("model.gguf").is_file());
}

#[test]
fn graph_files_quantize_writes_run_with_run_embed_beside_their_config_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let texts = ["The weather is lovely today.", "He drove to the stadium."];
    let embed = |model: &Path| {
        let mut cmd = edgeforge();
        cmd.args(["--json", "run", "embed"]).arg(model);
        for t in texts {
            cmd.args(["--text", t]);
        }
        json_success(&mut cmd)
    };
    let source = embed(&minilm());
    for out in ["onnx/model.onnx", "tflite/minilm.tflite"] {
        let out = dir.path().join(out);
        let (code, report, stderr) = quantize_json(&["--scheme", "fp16"], &minilm(), &out);
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(report["copied"].as_array().unwrap().len(), 2, "{report}");
        let parent = out.parent().unwrap();
        assert!(parent.join("config.json").is_file() && parent.join("tokenizer.json").is_file());
        // The file itself and its folder both run, in the scheme it holds.
        for model in [out.as_path(), parent] {
            let got = embed(model);
            assert_eq!(got["precision"], "F16");
            for i in 0..texts.len() {
                let (a, b) = (&got["embeddings"][i], &source["embeddings"][i]);
                let dot: f64 = (0..384)
                    .map(|j| a[j].as_f64().unwrap() * b[j].as_f64().unwrap())
                    .sum();
                assert!(dot > 0.9999, "{}: cosine {dot}", model.display());
            }
        }
        edgeforge()
            .args(["run", "generate"])
            .arg(&out)
            .args(["--prompt", "hi"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(
                "graph, not weights edgeforge's engine loads",
            ));
    }
}
