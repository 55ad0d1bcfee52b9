//! `quantize -o model.onnx`: the files load in onnxruntime and OpenVINO, their
//! embeddings meet each scheme's accuracy against the fp64 reference, and
//! edgeforge's own accuracy figure (computed from the written file) agrees
//! with onnxruntime's.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;
use edgeforge::artifact::accuracy::DEFAULT_EVAL;

fn export(args: &[&str], out: &Path, threads: &str) -> Value {
    json_success(
        edgeforge()
            .env("EDGEFORGE_THREADS", threads)
            .args(["--json", "quantize"])
            .arg(minilm())
            .arg("-o")
            .arg(out)
            .args(args),
    )
}

/// edgeforge's f32 engine embeddings of the eval texts, as the check script reads them.
fn eval_json(dir: &Path) -> PathBuf {
    let mut cmd = edgeforge();
    cmd.args(["--json", "run", "embed"]).arg(minilm());
    for t in DEFAULT_EVAL {
        cmd.args(["--text", t]);
    }
    let v = json_success(&mut cmd);
    let path = dir.join("eval.json");
    let body = serde_json::json!({"texts": DEFAULT_EVAL, "embeddings": v["embeddings"]});
    std::fs::write(&path, serde_json::to_vec(&body).unwrap()).unwrap();
    path
}

fn check(model: &Path, eval: &Path) -> Value {
    let refs = refs_dir().join("minilm_reference.json");
    serde_json::from_str(&run_py("onnx_check.py", &[model, &refs, eval])).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Cosines of both runtimes (single and padded batch) at least `min`; the
/// file's own figure within `tolerance` of onnxruntime's on the same texts,
/// and within 1e-3 of onnxruntime running the graph's reference semantics
/// (no integer-kernel fusion).
fn assert_runtimes(report: &Value, checked: &Value, min: f64, tolerance: f64) {
    for key in ["ort_cosines", "ort_batch_cosines", "openvino_cosines"] {
        let cos = floats(&checked[key]);
        assert!(cos.iter().all(|&c| c >= min), "{key} below {min}: {cos:?}");
    }
    let ours = report["accuracy"]["cosine_mean"].as_f64().unwrap();
    let plain = checked["eval_cosine_mean_unfused"].as_f64().unwrap();
    assert!(
        (ours - plain).abs() <= 1e-3,
        "edgeforge says {ours}, onnxruntime (unfused) {plain}"
    );
    let ort = checked["eval_cosine_mean"].as_f64().unwrap();
    assert!(
        (ours - ort).abs() <= tolerance,
        "edgeforge says {ours}, onnxruntime {ort}"
    );
}

#[test]
fn fp32_and_fp16_run_in_onnxruntime_and_openvino_at_reference_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let eval = eval_json(dir.path());
    let fp32 = dir.path().join("fp32/model.onnx");
    let report = export(&["--scheme", "fp32"], &fp32, "2");
    assert_eq!(report["opset"], 17);
    assert_eq!(
        PathBuf::from(report["tokenizer"].as_str().unwrap()),
        dir.path().join("fp32/tokenizer.json")
    );
    let checked = check(&fp32, &eval);
    assert_runtimes(&report, &checked, 0.99999, 1e-3);
    assert!(report["accuracy"]["cosine_min"].as_f64().unwrap() > 0.99999);
    assert_eq!(checked["metadata"]["edgeforge.scheme"], "fp32");

    let fp16 = dir.path().join("fp16/model.onnx");
    let report = export(&["--scheme", "fp16"], &fp16, "2");
    let checked = check(&fp16, &eval);
    assert_runtimes(&report, &checked, 0.9999, 1e-3);
    let (a, b) = (
        std::fs::metadata(&fp32).unwrap().len(),
        std::fs::metadata(&fp16).unwrap().len(),
    );
    assert!(b * 10 < a * 6, "fp16 {b} bytes vs fp32 {a}");

    // Exporting again gives the same bytes; the tokenizer is not copied twice.
    let again = dir.path().join("fp16/again.onnx");
    let report = export(&["--scheme", "F16"], &again, "1");
    assert!(report["tokenizer"].is_null());
    assert_eq!(
        std::fs::read(&fp16).unwrap(),
        std::fs::read(&again).unwrap()
    );
}

#[test]
fn int8_qdq_is_calibrated_deterministic_and_what_onnxruntime_computes() {
    let dir = tempfile::tempdir().unwrap();
    let eval = eval_json(dir.path());
    let train = fortunes().join("train.txt");
    let args = |method: &'static str| {
        vec![
            "--scheme".to_string(),
            "int8_pc".into(),
            "--calibration".into(),
            train.display().to_string(),
            "--calibration-texts".into(),
            "64".into(),
            "--calibration-method".into(),
            method.into(),
            // This host's CPU may lack VNNI: see `assert_runtimes` below.
            "--reduce-range".into(),
        ]
    };
    let a = dir.path().join("t1/model.onnx");
    let b = dir.path().join("t2/model.onnx");
    let pct = args("percentile");
    let pct: Vec<&str> = pct.iter().map(String::as_str).collect();
    let report = export(&pct, &a, "1");
    export(&pct, &b, "2");
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "int8 bytes differ between 1 and 2 threads"
    );
    let cal = &report["calibration"];
    assert_eq!(cal["texts"], 64);
    assert_eq!(cal["method"], "percentile 99.99");
    let sens = cal["sensitivity"].as_array().unwrap();
    assert_eq!(
        sens.len(),
        1 + 6 * 8,
        "embedding gather + 8 MatMuls per layer"
    );
    // Most sensitive first, and the ops kept in float are the head of that list.
    let drops: Vec<f64> = sens
        .iter()
        .map(|s| s["cosine_drop"].as_f64().unwrap())
        .collect();
    assert!(drops.windows(2).all(|w| w[0] >= w[1]), "{drops:?}");
    let floated = cal["float_ops"].as_array().unwrap().len();
    assert!(sens[..floated].iter().all(|s| s["int8"] == false));
    assert!(sens[floated..].iter().all(|s| s["int8"] == true));
    assert!(floated < sens.len() / 2, "{floated} ops kept in float");
    assert!(cal["cosine_planned"].as_f64().unwrap() >= 0.999);

    let checked = check(&a, &eval);
    assert!(checked["ops"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o == "QuantizeLinear"));
    assert_eq!(
        checked["metadata"]["edgeforge.calibration.sha256"],
        cal["sha256"]
    );
    // onnxruntime's fused u8s8 kernels on AVX2 without VNNI sum byte
    // products in saturating int16 pairs (vpmaddubsw): full-range weights
    // put its figure ~1.5e-3 below the graph's; with --reduce-range nothing
    // saturates and the fused kernels compute what the graph says.
    assert_eq!(checked["metadata"]["edgeforge.weight_range"], "[-63, 63]");
    assert_runtimes(&report, &checked, 0.995, 1e-3);
    let ort = mean(&floats(&checked["ort_cosines"]));
    assert!(ort >= 0.997, "onnxruntime int8 mean cosine {ort}");
    let f32_bytes = 90_000_000;
    assert!(std::fs::metadata(&a).unwrap().len() < f32_bytes * 6 / 10);
}

#[test]
fn what_onnx_cannot_express_exits_2_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let run = |model: &Path, args: &[&str]| {
        let o = edgeforge()
            .arg("quantize")
            .arg(model)
            .arg("-o")
            .arg(&out)
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, err) = run(&smollm2_gguf(), &["--scheme", "fp16"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("architecture `llama`") && err.contains("ONNX"),
        "{err}"
    );
    let (code, err) = run(&minilm(), &["--scheme", "Q4_K"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("Q4_K") || err.contains("q4_k"), "{err}");
    let (code, err) = run(&minilm(), &["--scheme", "int8_pc"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--calibration"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, err) = run(&minilm(), &["--scheme", "int8_pc", "--smooth-alpha", "1.5"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--smooth-alpha"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    std::fs::write(&out, b"keep").unwrap();
    let (code, err) = run(&minilm(), &["--scheme", "fp32"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");
}

/// TensorRT takes int8 Q/DQ with zero points of 0 only: the Jetson's
/// runtime gets symmetric int8 activations, and a graph with zero points is
/// refused for it by package (and would fail verify and profile's placement).
/// SmoothQuant (`--smooth-alpha`) on the uint8 graph keeps fewer ops in float.
#[test]
fn activation_codings_symmetric_for_tensorrt_and_smoothed() {
    let dir = tempfile::tempdir().unwrap();
    let eval = eval_json(dir.path());
    let train = fortunes().join("train.txt");
    let int8 = |out: &Path, texts: &str, extra: &[&str]| {
        let mut args = vec!["--scheme", "int8_pc", "--calibration"];
        let train = train.to_str().unwrap();
        args.extend([train, "--calibration-texts", texts, "--reduce-range"]);
        args.extend(extra);
        export(&args, out, "2")
    };
    let sym = dir.path().join("sym/model.onnx");
    let report = int8(&sym, "32", &["--activation-type", "int8-symmetric"]);
    assert_eq!(report["calibration"]["activation_type"], "int8_symmetric");
    let checked = check(&sym, &eval);
    assert_eq!(
        checked["activation_zero_points"],
        serde_json::json!({"types": ["int8"], "nonzero": 0}),
        "every activation QuantizeLinear symmetric int8"
    );
    assert_eq!(
        checked["metadata"]["edgeforge.activation_type"],
        "int8_symmetric"
    );
    assert_runtimes(&report, &checked, 0.995, 1e-3);

    let uint8 = dir.path().join("u8/model.onnx");
    let plain = int8(&uint8, "32", &[]);
    let zero_points = check(&uint8, &eval)["activation_zero_points"].clone();
    assert_eq!(zero_points["types"], serde_json::json!(["uint8"]));

    // SmoothQuant moves activation outliers into the weights: on the same
    // text and budget, fewer ops have to stay in float.
    let smoothed = dir.path().join("smooth/model.onnx");
    let report = int8(&smoothed, "32", &["--smooth-alpha", "0.75"]);
    let floats = |r: &Value| r["calibration"]["float_ops"].as_array().unwrap().len();
    assert!(
        floats(&report) < floats(&plain),
        "smoothed {} float ops, plain {}",
        floats(&report),
        floats(&plain)
    );
    assert_eq!(report["calibration"]["smooth_alpha"], 0.75);
    let checked = check(&smoothed, &eval);
    assert_eq!(checked["metadata"]["edgeforge.smooth_alpha"], "0.75");
    assert_runtimes(&report, &checked, 0.99, 1e-3);

    let package = |graph: &Path, out: &Path| {
        edgeforge()
            .args(["--json", "package"])
            .arg(graph.parent().unwrap())
            .arg("--reference")
            .arg(minilm())
            .args(["--target", "jetson-orin-nano-8gb", "--runtime", "tensorrt"])
            .args(["--name", "m", "--version", "1.0.0", "-o"])
            .arg(out)
            .output()
            .unwrap()
    };
    let shipped = dir.path().join("dist-sym");
    let o = package(&sym, &shipped);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let artifact = shipped.join("m/1.0.0/jetson-orin-nano-8gb.tensorrt");
    let v = json_success(edgeforge().args(["--json", "verify"]).arg(&artifact));
    assert_eq!(v["passed"], true, "{v}");

    let refused = dir.path().join("dist-u8");
    let o = package(&uint8, &refused);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("tensorrt") && err.contains("zero points"),
        "{err}"
    );
    assert!(!refused.exists(), "nothing written for a refused runtime");

    // profile places the symmetric graph on TensorRT and says why not the other.
    let profiled = |graph: &Path| {
        json_success(
            edgeforge()
                .args(["--json", "profile"])
                .arg(graph)
                .args(["--target", "jetson-orin-nano-8gb"]),
        )
    };
    let p = profiled(&uint8).to_string();
    assert!(p.contains("zero points of 0 only"), "{p}");
    let p = profiled(&sym).to_string();
    assert!(!p.contains("zero points of 0 only"), "{p}");
}
