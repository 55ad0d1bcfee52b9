//! `build` makes decoder accelerator variants: for a runtime that loads
//! ONNX and runs int4 weights (QNN on the Hexagon NPU, OpenVINO on the
//! Intel NPU), the onnxruntime-genai folder with symmetric int4 blocks of
//! the size both run, cheapest first, each measured from the graph itself
//! against the source; a runtime that loads TFLite says it gets nothing.

use std::path::Path;

use serde_json::Value;

use crate::common::*;

#[test]
fn build_gives_npu_runtimes_int4_genai_folders_measured_from_the_graph() {
    let d = tempfile::tempdir().unwrap();
    let recipe = d.path().join("release.toml");
    std::fs::write(
        &recipe,
        format!(
            "[build]\nname = \"smollm2\"\nversion = \"1.0.0\"\nmodel = \"{}\"\nformat = \"gguf\"\n\
             targets = [\"snapdragon-8gen3-phone\"]\n",
            smollm2_gguf().display()
        ),
    )
    .unwrap();
    let dist = d.path().join("dist");
    let out = edgeforge()
        .args(["--json", "build"])
        .arg(&recipe)
        .arg("--dist")
        .arg(&dist)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    let tflite = outcome(&v, "snapdragon-8gen3-phone.litert");
    assert_eq!(tflite["status"], "unsupported");
    assert!(
        tflite["detail"].as_str().unwrap().contains("ONNX"),
        "{tflite}"
    );
    // Requantizing the Q4_1 source to 4-bit misses the phone's top-1
    // budget at every block size: the table says by how much, cheapest
    // first, rather than shipping it quietly.
    let qnn = outcome(&v, "snapdragon-8gen3-phone.qnn");
    let detail = qnn["detail"].as_str().unwrap();
    for scheme in ["int4_g128_sym", "int4_g64_sym", "int4_g32_sym"] {
        assert!(detail.contains(scheme), "{detail}");
    }
    assert!(detail.contains("mean KLD"), "{detail}");

    // The last one tried is kept: genai loads and generates from it, and
    // its manifest records what the graph holds and computes.
    let dir = dist.join("smollm2/1.0.0/snapdragon-8gen3-phone.qnn");
    let m: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["target"]["runtime"], "qnn");
    assert_eq!(m["quantization"]["tensor_types"]["int4_g32_sym"], 210);
    let acc = &m["metrics"]["accuracy"];
    let (kld, top1) = (
        acc["mean_kld"].as_f64().unwrap(),
        acc["top1_agreement"].as_f64().unwrap(),
    );
    assert!(kld > 0.0 && (0.0..1.0).contains(&top1), "{acc}");
    let genai: Value = serde_json::from_str(&run_py(
        "genai_check.py",
        &[&dir, Path::new("The capital of France is"), Path::new("8")],
    ))
    .unwrap();
    assert_eq!(genai["tokens"].as_array().unwrap().len(), 8, "{genai}");
    assert_eq!(
        genai["graph"]["metadata"]["edgeforge.scheme"],
        "int4_g32_sym"
    );
    // OpenVINO compiles the same graph on the CPU.
    let ids = genai["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>();
    let mut args: Vec<&Path> = vec![&dir];
    args.extend(ids.iter().map(Path::new));
    let runtimes: Value = serde_json::from_str(&run_py("decoder_runtimes.py", &args)).unwrap();
    let n = ids.len();
    assert_eq!(
        runtimes["openvino"].as_array().unwrap().len(),
        n,
        "{runtimes}"
    );
    assert_eq!(
        runtimes["openvino"][n - 1],
        runtimes["onnxruntime"][n - 1],
        "the next token after the prompt: {runtimes}"
    );
}
