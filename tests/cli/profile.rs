//! `profile`: static sizes agree with what `quantize` writes, the host's
//! peak RSS lies inside the stated estimate, bad input is refused clearly.

use serde_json::Value;

use crate::common::{edgeforge, foreign_gguf, json_success, minilm, smollm2_gguf};
use crate::common::{predicate, OutputAssertExt};

fn profile_json(args: &[&str], model: &std::path::Path) -> Value {
    json_success(
        edgeforge()
            .args(["--json", "profile"])
            .arg(model)
            .args(args),
    )
}

fn written_tensor_bytes(path: &std::path::Path) -> u64 {
    let v = json_success(edgeforge().args(["--json", "inspect"]).arg(path));
    v["tensor_bytes"].as_u64().unwrap()
}

#[test]
fn static_weight_bytes_equal_what_quantize_writes_within_1_percent() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (minilm(), "rpi5-8gb", "Q4_K_M", "gguf"),
        (minilm(), "coral-dev-board", "int8_pc", "safetensors"),
        (smollm2_gguf(), "rpi5-8gb", "Q8_0", "gguf"),
        (smollm2_gguf(), "rpi5-8gb", "Q4_K_M", "gguf"),
    ];
    for (i, (model, target, scheme, ext)) in cases.iter().enumerate() {
        let report = profile_json(
            &["--no-measure", "--target", target, "--scheme", scheme],
            model,
        );
        let predicted = report["targets"][0]["schemes"][0]["weights_bytes"]
            .as_u64()
            .unwrap();
        let out = dir.path().join(format!("{i}.{ext}"));
        let q = edgeforge()
            .args(["-q", "quantize"])
            .arg(model)
            .args([
                "--target",
                target,
                "--scheme",
                scheme,
                "--allow-requant",
                "-o",
            ])
            .arg(&out)
            .output()
            .unwrap();
        assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
        let written = written_tensor_bytes(&out);
        let rel = (predicted as f64 - written as f64).abs() / written as f64;
        assert!(
            rel <= 0.01,
            "{scheme} on {target}: predicted {predicted}, written {written}"
        );
    }
}

#[test]
fn measured_peak_rss_lies_inside_the_static_estimate_margin() {
    for model in [minilm(), smollm2_gguf()] {
        let report = profile_json(
            &[
                "--target", "rpi5-8gb", "--scheme", "Q8_0", "--runs", "2", "--tokens", "64",
            ],
            &model,
        );
        let host = &report["host"];
        let measured = host["measurement"]["peak_rss_bytes"].as_u64().unwrap() as f64;
        let estimate = host["estimated_rss_bytes"].as_u64().unwrap() as f64;
        let margin = host["rss_margin"].as_f64().unwrap();
        assert!(
            (measured - estimate).abs() <= margin * estimate,
            "{}: measured {measured}, estimate {estimate} ± {margin}",
            model.display()
        );
        let eff = &host["efficiency"];
        assert!(eff["compute"].as_f64().unwrap() > 0.0 && eff["compute"].as_f64().unwrap() <= 1.0);
    }
}

#[test]
fn decoder_projection_is_bandwidth_bound_and_ranks_devices_by_bandwidth() {
    let report = profile_json(
        &[
            "--no-measure",
            "--target",
            "rpi5-8gb",
            "--target",
            "rpi-zero-2w",
            "--scheme",
            "Q4_0",
        ],
        &smollm2_gguf(),
    );
    let decode = |i: usize| {
        report["targets"][i]["schemes"][0]["projection"]["decode_tokens_per_second"]
            .as_f64()
            .unwrap()
    };
    let bw = |i: usize| {
        report["targets"][i]["schemes"][0]["projection"]["bandwidth_gbs"]
            .as_f64()
            .unwrap()
    };
    let bytes = report["targets"][0]["schemes"][0]["weights_bytes"]
        .as_f64()
        .unwrap();
    assert!((decode(0) - bw(0) * 1e9 / bytes).abs() < 1e-6 * decode(0));
    assert!(
        decode(0) > decode(1),
        "a Pi 5 decodes faster than a Pi Zero 2 W"
    );
}

#[test]
fn bad_profile_input_is_one_clear_line_with_exit_2() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["--context", "100000"],
            "exceeds the model's maximum of 8192",
        ),
        (
            &["--target", "coral-dev-board", "--scheme", "Q4_K_M"],
            "does not run",
        ),
        (&["--scheme", "Q9_Z"], "--scheme"),
    ];
    for (args, expect) in cases {
        let out = edgeforge()
            .arg("profile")
            .arg(smollm2_gguf())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}

#[test]
fn a_model_the_engine_cannot_run_still_gets_static_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gemma.gguf");
    foreign_gguf(&path, "gemma3", "blk.0.ffn_up.weight", &[64, 8]);
    let report = profile_json(&["--target", "rpi5-8gb", "--scheme", "Q8_0"], &path);
    assert!(report["host"]["measurement_skipped"]
        .as_str()
        .unwrap()
        .contains("gemma3"));
    assert_eq!(
        report["targets"][0]["schemes"][0]["weights_bytes"],
        8 * 2 * 34
    );
}

#[test]
fn plot_draws_every_target_and_scheme_and_never_overwrites_silently() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("minilm.svg");
    let args = [
        "--no-measure",
        "--target",
        "rpi5-8gb",
        "--target",
        "pixel-8",
        "--plot",
    ];
    let mut cmd = edgeforge();
    cmd.args(["profile", "--json"])
        .args(args)
        .arg(&svg)
        .arg(minilm());
    let report = json_success(&mut cmd);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    for target in report["targets"].as_array().unwrap() {
        assert!(text.contains(target["name"].as_str().unwrap()));
        for row in target["schemes"].as_array().unwrap() {
            assert!(text.contains(&format!(">\n{}\n<", row["scheme"].as_str().unwrap())));
        }
    }
    edgeforge()
        .args(["profile"])
        .args(args)
        .arg(&svg)
        .arg(minilm())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("already exists"));
    assert_eq!(std::fs::read_to_string(&svg).unwrap(), text);
}

/// MiniLM's multiply-adds at 128 tokens, from its config alone (hidden 384,
/// FFN 1536, 6 layers, 12 heads): the linear layers plus q·kᵀ and p·v.
const MINILM_MATMUL_FLOPS_128: f64 =
    2.0 * 128.0 * 6.0 * (4.0 * 384.0 * 384.0 + 2.0 * 384.0 * 1536.0)
        + 6.0 * 2.0 * 2.0 * 128.0 * 128.0 * 384.0;

fn matmul_flops(report: &Value) -> f64 {
    report["op_mix"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| {
            ["MatMul", "FULLY_CONNECTED", "BATCH_MATMUL"].contains(&o["op"].as_str().unwrap())
        })
        .map(|o| o["flops"].as_f64().unwrap())
        .sum()
}

fn runtime<'r>(report: &'r Value, target: &str, runtime: &str) -> &'r Value {
    let t = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == target)
        .unwrap_or_else(|| panic!("no {target}: {report}"));
    t["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["runtime"] == runtime)
        .unwrap_or_else(|| panic!("no {runtime} on {target}: {t}"))
}

#[test]
fn graph_files_are_profiled_op_by_op_with_what_falls_back_to_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let export = |out: &std::path::Path, args: &[&str]| {
        json_success(
            edgeforge()
                .args(["--json", "quantize"])
                .arg(minilm())
                .arg("-o")
                .arg(out)
                .args(args),
        )
    };
    let onnx = dir.path().join("fp16/model.onnx");
    export(&onnx, &["--scheme", "fp16"]);
    // A device whose runtime lists every op of the graph but Erf.
    let toml = std::fs::read_to_string("targets/jetson-orin-nano-8gb.toml")
        .unwrap()
        .replace(
            "name = \"jetson-orin-nano-8gb\"",
            "name = \"jetson-no-erf\"",
        )
        .replace("\"Equal\", \"Erf\",", "\"Equal\",")
        .replace(
            "extends = \"base/",
            &format!("extends = \"{}/targets/base/", env!("CARGO_MANIFEST_DIR")),
        );
    let no_erf = dir.path().join("jetson-no-erf.toml");
    std::fs::write(&no_erf, toml).unwrap();
    let r = profile_json(
        &[
            "--target",
            "jetson-orin-nano-8gb",
            "--target",
            no_erf.to_str().unwrap(),
            "--target",
            "snapdragon-8gen3-phone",
        ],
        &onnx,
    );
    assert_eq!(r["format"], "onnx");
    assert_eq!(r["scheme"], "F16");
    assert_eq!(r["tokens"], 128);
    assert_eq!(matmul_flops(&r), MINILM_MATMUL_FLOPS_128);
    assert_eq!(
        r["shape_arithmetic"], 4,
        "Shape, its Gather, Range and the cast"
    );
    let trt = runtime(&r, "jetson-orin-nano-8gb", "tensorrt");
    assert_eq!(
        (trt["accelerator_share"].as_f64(), trt["segments"].as_u64()),
        (Some(1.0), Some(1))
    );
    let no = runtime(&r, "jetson-no-erf", "tensorrt");
    assert_eq!(
        no["on_cpu"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["Erf"]
    );
    assert_eq!(no["on_cpu"]["Erf"][0], 6);
    assert_eq!(no["segments"], 13, "six Erf round trips");
    assert!(no["latency_ms"].as_f64() > trt["latency_ms"].as_f64());
    // The Hexagon NPU lists no float weights: QNN runs this file on the CPU, and says so.
    let qnn = runtime(&r, "snapdragon-8gen3-phone", "qnn");
    assert_eq!(qnn["engine"], "cpu");
    assert!(qnn["notes"][0].as_str().unwrap().contains("F16"), "{qnn}");

    // Full-integer TFLite on the Coral: its graph starts with GATHER, which the
    // Edge TPU compiler does not map, so nothing after it reaches the TPU.
    let tflite = dir.path().join("int8.tflite");
    let corpus = crate::common::fortunes().join("train.txt");
    export(
        &tflite,
        &[
            "--scheme",
            "int8_pc",
            "--calibration",
            corpus.to_str().unwrap(),
            "--calibration-lines",
            "8",
        ],
    );
    let r = profile_json(
        &["--target", "coral-dev-board", "--target", "pixel-8"],
        &tflite,
    );
    assert_eq!(
        (r["format"].as_str(), r["scheme"].as_str()),
        (Some("tflite"), Some("int8_pc"))
    );
    assert_eq!(matmul_flops(&r), MINILM_MATMUL_FLOPS_128);
    let coral = runtime(&r, "coral-dev-board", "tflite-edgetpu");
    assert_eq!(coral["engine"], "tpu Edge TPU");
    assert!(
        coral["accelerator_share"].as_f64().unwrap() < 1e-6,
        "{coral}"
    );
    assert_eq!(coral["on_cpu"]["FULLY_CONNECTED"][0], 36);
    assert!(
        coral["notes"].to_string().contains("first GATHER"),
        "{coral}"
    );
    let pixel = runtime(&r, "pixel-8", "litert");
    assert_eq!(pixel["accelerator_share"], 1.0);
    assert!(
        pixel["notes"]
            .to_string()
            .contains("lists no accelerator ops"),
        "{pixel}"
    );

    // Flags that do not apply to a graph, and a target that cannot load it.
    edgeforge()
        .args(["profile"])
        .arg(&tflite)
        .args(["--scheme", "Q4_0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "`--scheme` does not apply to a graph file",
        ));
    edgeforge()
        .args(["profile"])
        .arg(&onnx)
        .args(["--target", "coral-dev-board"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("has no runtime that loads onnx"));
}
