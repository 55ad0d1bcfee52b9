//! `build` makes accelerator variants: for each runtime an accelerator of a
//! target runs, the ONNX or TFLite file it loads, in the cheapest scheme that
//! stays within the target's accuracy budget. `verify`, the index and
//! `select` treat them as any artifact, and the runtimes themselves
//! (onnxruntime, LiteRT) load what was shipped.

use std::path::Path;

use serde_json::Value;

use crate::common::*;

fn variant<'a>(index: &'a Value, target: &str, runtime: &str) -> &'a Value {
    index["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["target"] == target && v["runtime"] == runtime)
        .unwrap_or_else(|| panic!("no {target} {runtime} variant: {index}"))
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn build_ships_onnx_and_tflite_for_accelerators_and_their_runtimes_load_them() {
    let d = tempfile::tempdir().unwrap();
    let recipe = d.path().join("release.toml");
    std::fs::write(
        &recipe,
        format!(
            "[build]\nname = \"minilm\"\nversion = \"3.0.0\"\nmodel = \"{}\"\nformat = \"auto\"\n\
             calibration = \"{}\"\ncalibration_texts = 32\n\
             targets = [\"intel-core-ultra-laptop\", \"pixel-8\", \"apple-a17pro-phone\"]\n",
            minilm().display(),
            fortunes().join("train.txt").display()
        ),
    )
    .unwrap();
    let dist = d.path().join("dist");
    let build = || {
        let out = edgeforge()
            .args(["--json", "build"])
            .arg(&recipe)
            .args(["--jobs", "2", "--dist"])
            .arg(&dist)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let first = build();
    assert_eq!(
        outcome(&first, "intel-core-ultra-laptop.openvino")["status"],
        "built"
    );
    assert_eq!(outcome(&first, "pixel-8.litert")["status"], "built");
    // Core ML is named by the profile but not written: said, not failed.
    let coreml = outcome(&first, "apple-a17pro-phone.coreml");
    assert_eq!(coreml["status"], "unsupported");
    assert!(coreml["detail"].as_str().unwrap().contains("coreml"));

    let index: Value =
        serde_json::from_slice(&std::fs::read(dist.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["variants"].as_array().unwrap().len(), 5, "{index}");
    let npu = variant(&index, "intel-core-ultra-laptop", "openvino");
    assert_eq!(npu["format"], "onnx");
    assert_eq!(npu["accelerators"], serde_json::json!(["npu"]));
    assert_eq!(npu["verified"], true);
    let tpu = variant(&index, "pixel-8", "litert");
    assert_eq!(tpu["format"], "tflite");
    assert_eq!(tpu["accelerators"], serde_json::json!(["tpu"]));
    assert_eq!(tpu["verified"], true);
    // The GGUF beside them runs on the CPU: no accelerator claimed.
    let cpu = index["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["target"] == "pixel-8" && v["runtime"].is_null())
        .unwrap();
    assert_eq!(cpu["accelerators"], serde_json::json!([]));

    let npu_dir = dist.join(npu["artifact"].as_str().unwrap());
    assert!(npu_dir.ends_with("minilm/3.0.0/intel-core-ultra-laptop.openvino"));
    let m = manifest(&npu_dir);
    assert_eq!(m["target"]["runtime"], "openvino");
    // The int8 plan: int8 weights (some ops kept in float by the budget), the
    // calibration lines it used recorded beside them.
    assert!(
        m["quantization"]["tensor_types"]["int8_pc"]
            .as_u64()
            .unwrap()
            > 0
    );
    let files: Vec<&str> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for f in [
        "model.onnx",
        "tokenizer.json",
        "config.json",
        "calibration.txt",
    ] {
        assert!(files.contains(&f), "{files:?}");
    }
    // inspect reads the folder's graph: the figures the manifest recorded.
    let inspected = json_success(edgeforge().args(["--json", "inspect"]).arg(&npu_dir));
    assert_eq!(inspected["format"], "onnx");
    assert_eq!(inspected["parameters"], m["quantization"]["parameters"]);
    assert_eq!(inspected["tensor_types"], m["quantization"]["tensor_types"]);
    assert_eq!(inspected["requires"], m["compatibility"]["requires"]);
    let calibration = std::fs::read_to_string(npu_dir.join("calibration.txt")).unwrap();
    assert_eq!(calibration.lines().count(), 32);
    let drop = m["metrics"]["accuracy"]["cosine_drop"].as_f64().unwrap();
    assert!(drop <= 0.01, "within the laptop's budget: {drop}");

    // Each is within its target's budget (the TPU's int8 where it holds, else fp16).
    let tpu_dir = dist.join(tpu["artifact"].as_str().unwrap());
    let tm = manifest(&tpu_dir);
    assert!(tm["metrics"]["accuracy"]["cosine_drop"].as_f64().unwrap() <= 0.01);
    // Projected where it runs: the TFLite file on the TPU, the GGUF on the CPU.
    let engine = |m: &Value| {
        m["metrics"]["projection"]["engine"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(engine(&tm).contains("tpu"), "{}", engine(&tm));
    let cpu_manifest = manifest(&dist.join(cpu["artifact"].as_str().unwrap()));
    assert!(
        !engine(&cpu_manifest).contains("tpu"),
        "{}",
        engine(&cpu_manifest)
    );
    let litert_detail = outcome(&first, "pixel-8.litert")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    if tm["quantization"]["tensor_types"].get("int8_pc").is_none() {
        assert!(litert_detail.contains("int8_pc cosine"), "{litert_detail}");
    }

    // verify re-derives and, with the source, re-measures from the file.
    for dir in [&npu_dir, &tpu_dir] {
        let v = json_success(
            edgeforge()
                .args(["--json", "verify"])
                .arg(dir)
                .arg("--reference")
                .arg(minilm()),
        );
        assert_eq!(v["passed"], true, "{v}");
    }

    // Rebuilt from its recorded inputs (calibration lines included): the same bytes.
    let v = json_success(
        edgeforge()
            .args(["--json", "verify"])
            .arg(&tpu_dir)
            .arg("--reference")
            .arg(minilm())
            .arg("--rebuild"),
    );
    let rebuild = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "rebuild")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(rebuild["passed"], true, "{rebuild}");

    // The runtimes load what was shipped and agree with the fp64 reference.
    let refs = refs_dir().join("minilm_reference.json");
    let ort: Value = serde_json::from_str(&run_py(
        "onnx_check.py",
        &[&npu_dir.join("model.onnx"), &refs],
    ))
    .unwrap();
    let cosines: Vec<f64> = ort["ort_cosines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_f64().unwrap())
        .collect();
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    assert!(mean >= 0.99, "onnxruntime: {ort}");
    let litert: Value = serde_json::from_str(&run_py(
        "tflite_check.py",
        &[&tpu_dir.join("model.tflite"), &refs],
    ))
    .unwrap();
    assert!(
        litert["mean_cosine"].as_f64().unwrap() >= 0.99,
        "LiteRT: {litert}"
    );

    // select: asking for the NPU or the TPU hands out the file it loads.
    let select = |args: &[&str]| {
        json_success(
            edgeforge()
                .args(["--json", "select", "--index"])
                .arg(dist.join("index.json"))
                .args(args),
        )
    };
    let picked = select(&["--ram-mb", "32768", "--accelerator", "npu"]);
    assert_eq!(picked["selected"]["runtime"], "openvino", "{picked}");
    let picked = select(&["--ram-mb", "8192", "--accelerator", "tpu"]);
    assert_eq!(picked["selected"]["runtime"], "litert", "{picked}");

    // Unchanged inputs: nothing is rebuilt, the ids stay.
    let second = build();
    assert_eq!(
        outcome(&second, "intel-core-ultra-laptop.openvino")["status"],
        "skipped"
    );
    assert_eq!(outcome(&second, "pixel-8.litert")["status"], "skipped");
    assert_eq!(second["index"], index);

    // A changed graph byte fails verify, naming the file.
    let onnx = npu_dir.join("model.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&onnx, bytes).unwrap();
    let out = edgeforge().arg("verify").arg(&npu_dir).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("model.onnx"));
}
