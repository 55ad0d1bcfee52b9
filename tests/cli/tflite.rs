//! `edgeforge quantize -o X.tflite`: TFLite exports of MiniLM, loaded and run
//! by LiteRT (ai-edge-litert) on the reference sentences, compared with the
//! fp64 reference and with edgeforge's own figure for the same file.

use std::path::Path;

use serde_json::Value;

use crate::common::*;

fn export(out: &Path, args: &[&str], threads: &str) -> Value {
    json_success(
        edgeforge()
            .arg("quantize")
            .arg(minilm())
            .arg("-o")
            .arg(out)
            .args(args)
            .arg("--json")
            .env("EDGEFORGE_THREADS", threads),
    )
}

/// LiteRT's report for `file`: per-sentence and mean cosine to the fp64 reference.
fn litert(file: &Path) -> Value {
    let refs = refs_dir().join("minilm_reference.json");
    serde_json::from_str(&run_py("tflite_check.py", &[file, &refs])).expect("JSON")
}

fn mean_cosines(report: &Value, litert: &Value) -> (f64, f64) {
    let ours = report["accuracy"]["mean_cosine"].as_f64().unwrap();
    let theirs = litert["mean_cosine"].as_f64().unwrap();
    assert_eq!(litert["runtime"], "ai-edge-litert 2.3.0");
    assert_eq!(report["accuracy"]["sentences"], 5);
    (ours, theirs)
}

#[test]
fn fp32_and_fp16_exports_run_in_litert_and_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    for (scheme, floor) in [("fp32", 0.99999), ("fp16", 0.9999)] {
        let out = dir.path().join(format!("minilm.{scheme}.tflite"));
        let report = export(&out, &["--scheme", scheme], "2");
        assert_eq!(report["format"], "tflite");
        assert_eq!(report["schema_version"], 3);
        assert_eq!(report["bytes"], std::fs::metadata(&out).unwrap().len());
        let rt = litert(&out);
        let (ours, theirs) = mean_cosines(&report, &rt);
        assert!(
            theirs >= floor,
            "{scheme}: LiteRT cosine {theirs} < {floor}: {rt}"
        );
        assert!(rt["min_cosine"].as_f64().unwrap() >= floor, "{rt}");
        assert!(
            (ours - theirs).abs() < 1e-3,
            "{scheme}: edgeforge says {ours}, LiteRT {theirs}"
        );
        assert_eq!(rt["seq_len"], 128);
    }
    // fp16 weights: half the bytes of fp32.
    let size = |s: &str| {
        std::fs::metadata(dir.path().join(format!("minilm.{s}.tflite")))
            .unwrap()
            .len()
    };
    assert!(
        size("fp16") * 100 < size("fp32") * 51,
        "{} vs {}",
        size("fp16"),
        size("fp32")
    );
}

#[test]
fn full_int8_export_runs_in_litert_and_edgeforge_measures_what_it_computes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("minilm.int8.tflite");
    let corpus = fortunes().join("train.txt");
    let report = export(
        &out,
        &[
            "--scheme",
            "int8_pc",
            "--calibration",
            corpus.to_str().unwrap(),
            "--calibration-lines",
            "200",
        ],
        "2",
    );
    assert_eq!(report["calibration"]["texts"], 200);
    assert_eq!(report["calibration"]["sha256"].as_str().unwrap().len(), 64);
    let rt = litert(&out);
    let (ours, theirs) = mean_cosines(&report, &rt);
    assert_eq!(
        rt["output_dtype"], "float32",
        "DEQUANTIZE at the float edge"
    );
    assert!(
        (ours - theirs).abs() < 1e-3,
        "edgeforge says {ours}, LiteRT {theirs}"
    );
    // Every FULLY_CONNECTED weight is per-channel int8 (checked by the reader).
    let bytes = std::fs::read(&out).unwrap();
    let g = edgeforge::format::tflite::read::read(&bytes).unwrap();
    use edgeforge::format::tflite::graph::{ElemType, Op};
    let fcs: Vec<_> = g
        .nodes
        .iter()
        .filter(|n| n.op == Op::FullyConnected)
        .collect();
    assert_eq!(fcs.len(), 36);
    for n in fcs {
        let (x, w, b) = (
            &g.tensors[n.inputs[0]],
            &g.tensors[n.inputs[1]],
            &g.tensors[n.inputs[2]],
        );
        let wq = w.quant.as_ref().unwrap();
        assert_eq!(
            (x.ty, w.ty, b.ty),
            (ElemType::I8, ElemType::I8, ElemType::I32),
            "{}",
            w.name
        );
        assert_eq!(
            (wq.scale.len(), wq.axis),
            (w.shape[0] as usize, 0),
            "{}",
            w.name
        );
        assert!(
            wq.zero_point.iter().all(|&z| z == 0),
            "{} symmetric",
            w.name
        );
        let sx = x.quant.as_ref().unwrap().scale[0];
        for (bs, ws) in b.quant.as_ref().unwrap().scale.iter().zip(&wq.scale) {
            assert!(
                (bs - sx * ws).abs() <= 1e-6 * bs.abs(),
                "{}: bias scale",
                b.name
            );
        }
    }
    let softmax_out: Vec<_> = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Softmax { .. }))
        .map(|n| &g.tensors[n.outputs[0]])
        .collect();
    assert!(softmax_out
        .iter()
        .all(|t| t.scale_zp() == Some((1.0 / 256.0, -128))));
}

/// The floor full-integer int8 must reach in LiteRT (issue 30 aims at 0.995).
const INT8_FLOOR: f64 = 0.98;

/// Known to fail today (mean cosine 0.78, docs/accelerators.md): MiniLM's
/// residual stream has an outlier channel (~220 against ~1 elsewhere after
/// layer 0's FFN) that per-tensor int8 cannot hold next to the others. Kept
/// at the floor, not lowered to what passes; run with `--ignored`.
#[test]
#[ignore = "full-int8 MiniLM reaches 0.78 in LiteRT, below the 0.98 floor (outlier channel)"]
fn full_int8_export_reaches_the_accuracy_floor_in_litert() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("minilm.int8.tflite");
    let corpus = fortunes().join("train.txt");
    export(
        &out,
        &[
            "--scheme",
            "int8_pc",
            "--calibration",
            corpus.to_str().unwrap(),
        ],
        "2",
    );
    let rt = litert(&out);
    let theirs = rt["mean_cosine"].as_f64().unwrap();
    assert!(
        theirs >= INT8_FLOOR,
        "LiteRT int8 cosine {theirs} < {INT8_FLOOR}: {rt}"
    );
}

#[test]
fn exports_are_byte_identical_across_runs_and_thread_counts() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = fortunes().join("train.txt");
    // Short sequences and a few texts keep the int8 run (calibration included) quick.
    let int8 = [
        "--scheme",
        "int8_pc",
        "--seq-len",
        "32",
        "--calibration",
        corpus.to_str().unwrap(),
        "--calibration-lines",
        "12",
    ];
    for (name, args) in [
        ("fp16", &["--scheme", "fp16", "--seq-len", "32"][..]),
        ("int8", &int8[..]),
    ] {
        let a = dir.path().join(format!("{name}.1.tflite"));
        let b = dir.path().join(format!("{name}.2.tflite"));
        let ra = export(&a, args, "1");
        let rb = export(&b, args, "2");
        assert_eq!(ra["sha256"], rb["sha256"], "{name}");
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{name} differs between 1 and 2 threads"
        );
        let rt = litert(&a);
        assert_eq!(rt["seq_len"], 32);
    }
}

#[test]
fn what_tflite_cannot_express_is_refused_with_exit_2_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2.tflite");
    edgeforge()
        .args(["quantize"])
        .arg(smollm2_gguf())
        .arg("-o")
        .arg(&out)
        .args(["--scheme", "fp16"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "architecture `llama` cannot be exported to TFLite",
        ));
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no temp file left"
    );
    // int8 without calibration text, an unknown scheme, a too-long sequence.
    for (args, message) in [
        (&["--scheme", "int8_pc"][..], "needs calibration text"),
        (&["--scheme", "Q4_K_M"][..], "takes fp32, fp16 or int8_pc"),
        (
            &["--scheme", "fp32", "--seq-len", "513"][..],
            "--seq-len 513",
        ),
    ] {
        let out = dir.path().join("minilm.tflite");
        edgeforge()
            .arg("quantize")
            .arg(minilm())
            .arg("-o")
            .arg(&out)
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(message));
        assert!(!out.exists(), "{args:?}");
    }
    // An existing output is not replaced without --force.
    let out = dir.path().join("exists.tflite");
    std::fs::write(&out, b"keep").unwrap();
    edgeforge()
        .arg("quantize")
        .arg(minilm())
        .arg("-o")
        .arg(&out)
        .args(["--scheme", "fp32"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("already exists"));
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");
}

#[test]
fn the_reader_rejects_damaged_files_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("small.tflite");
    export(&out, &["--scheme", "fp16", "--seq-len", "8"], "2");
    let bytes = std::fs::read(&out).unwrap();
    use edgeforge::format::tflite::read::read;
    let good = read(&bytes).unwrap();
    assert_eq!(good.inputs.len(), 2);
    // Truncations and flipped bytes in the first 64 KiB (tables, vtables, offsets).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for case in 0..fuzz_cases() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut damaged = bytes.clone();
        if case % 4 == 0 {
            damaged.truncate((state as usize) % bytes.len());
        } else {
            let at = (state as usize >> 8) % bytes.len().min(1 << 16);
            damaged[at] ^= (state as u8) | 1;
        }
        let _ = read(&damaged); // an error or a graph, never a panic
    }
}
