//! GGUF: the real SmolLM2 file reads as llama.cpp wrote it, re-writes byte
//! for byte, our writer's output reads back identically through the `gguf`
//! package, and hostile mutations never panic.

use std::path::Path;

use edgeforge::format::atomic::Overwrite;
use edgeforge::format::gguf::{self, GgmlType, GgufFile, GgufWriter, MetaArray, MetaValue};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::common::*;
use crate::safetensors::{must_not_panic, Rng};

#[test]
fn smollm2_header_reads_as_llama_cpp_wrote_it() {
    let f = GgufFile::open(&smollm2_gguf()).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.get_u64("llama.block_count"), Some(30));
    assert_eq!(f.get_u64("llama.embedding_length"), Some(576));
    let Some(MetaValue::Array(tokens)) = f.get("tokenizer.ggml.tokens") else {
        panic!("no tokens")
    };
    assert_eq!(tokens.len(), 49152);
    let count = |t: GgmlType| f.tensors().iter().filter(|i| i.ggml_type == t).count();
    assert_eq!(
        (
            count(GgmlType::Q4_1),
            count(GgmlType::Q8_0),
            count(GgmlType::F32)
        ),
        (210, 1, 61)
    );
    let embd = f.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.dims, [576, 49152]);
    assert_eq!(embd.n_bytes, 30_081_024);
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn rewriting_smollm2_is_byte_identical() {
    let src = GgufFile::open(&smollm2_gguf()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        w.add_kv(k, v.clone());
    }
    for t in src.tensors() {
        w.add_tensor_info(&t.name, t.ggml_type, &t.dims).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy.gguf");
    let mut stream = w.create(&out, Overwrite::Deny).unwrap();
    for t in src.tensors() {
        stream.write_tensor(src.tensor_data(t)).unwrap();
    }
    stream.finish().unwrap();
    let original = std::fs::read(smollm2_gguf()).unwrap();
    let copy = std::fs::read(&out).unwrap();
    assert_eq!(copy.len(), original.len());
    assert!(copy == original, "rewrite differs from the original");
    assert_eq!(w.file_size(), original.len() as u64);
}

/// Every value type, as (key, value, gguf-py type name, element type, JSON).
fn sample_metadata() -> Vec<(&'static str, MetaValue, serde_json::Value)> {
    let arr =
        |elem_type: u32, values: Vec<MetaValue>| MetaValue::Array(MetaArray { elem_type, values });
    vec![
        (
            "general.architecture",
            MetaValue::String("llama".into()),
            json!("llama"),
        ),
        ("t.u8", MetaValue::U8(250), json!(250)),
        ("t.i8", MetaValue::I8(-120), json!(-120)),
        ("t.u16", MetaValue::U16(65000), json!(65000)),
        ("t.i16", MetaValue::I16(-32000), json!(-32000)),
        (
            "t.u32",
            MetaValue::U32(4_000_000_000),
            json!(4_000_000_000u64),
        ),
        (
            "t.i32",
            MetaValue::I32(-2_000_000_000),
            json!(-2_000_000_000i64),
        ),
        ("t.f32", MetaValue::F32(1e-5), json!(1e-5)),
        ("t.bool", MetaValue::Bool(true), json!(true)),
        (
            "t.string",
            MetaValue::String("naïve ▁token\n".into()),
            json!("naïve ▁token\n"),
        ),
        ("t.u64", MetaValue::U64(u64::MAX - 1), json!(u64::MAX - 1)),
        ("t.i64", MetaValue::I64(i64::MIN + 1), json!(i64::MIN + 1)),
        (
            "t.f64",
            MetaValue::F64(std::f64::consts::PI),
            json!(std::f64::consts::PI),
        ),
        (
            "t.arr_i32",
            arr(
                5,
                vec![MetaValue::I32(1), MetaValue::I32(-2), MetaValue::I32(3)],
            ),
            json!([1, -2, 3]),
        ),
        (
            "t.arr_f32",
            arr(6, vec![MetaValue::F32(0.5), MetaValue::F32(-1.25)]),
            json!([0.5, -1.25]),
        ),
        (
            "t.arr_bool",
            arr(7, vec![MetaValue::Bool(true), MetaValue::Bool(false)]),
            json!([true, false]),
        ),
        (
            "t.arr_str",
            arr(
                8,
                vec![
                    MetaValue::String("a b".into()),
                    MetaValue::String("".into()),
                ],
            ),
            json!(["a b", ""]),
        ),
        ("t.arr_empty", arr(8, vec![]), json!([])),
    ]
}

#[test]
fn our_gguf_reads_back_identically_through_the_gguf_package() {
    let mut w = GgufWriter::new();
    let mut expect_meta = Vec::new();
    for (key, value, json_value) in sample_metadata() {
        let (ty, elem) = match &value {
            MetaValue::Array(a) => ("array", gguf::value::type_name(a.elem_type)),
            other => (gguf::value::type_name(other.type_id()), ""),
        };
        expect_meta.push(
            json!({"key": key, "type": ty, "value": json_value, "elem_type": gguf_py_type(elem)}),
        );
        w.add_kv(key, value);
    }
    for m in &mut expect_meta {
        let t = m["type"].as_str().unwrap().to_string();
        m["type"] = json!(gguf_py_type(&t));
    }
    let mut rng = Rng(42);
    let specs: Vec<(&str, GgmlType, Vec<u64>)> = vec![
        ("a.f32", GgmlType::F32, vec![7, 3]),
        ("b.f16", GgmlType::F16, vec![64, 2]),
        ("c.bf16", GgmlType::BF16, vec![5]),
        ("d.q8_0", GgmlType::Q8_0, vec![64, 3]),
        ("e.q4_0", GgmlType::Q4_0, vec![32, 4]),
        ("f.q4_k", GgmlType::Q4_K, vec![256, 2]),
    ];
    let mut datas = Vec::new();
    let mut expect_tensors = Vec::new();
    for (name, ty, dims) in &specs {
        w.add_tensor_info(name, *ty, dims).unwrap();
        let n: u64 = dims.iter().product();
        let mut data: Vec<u8> = (0..ty.bytes_for(n).unwrap())
            .map(|_| rng.next() as u8)
            .collect();
        if *ty == GgmlType::F32 {
            // Finite floats, so numpy views compare cleanly.
            for (i, chunk) in data.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&(i as f32 * 0.5 - 3.0).to_le_bytes());
            }
        }
        expect_tensors
            .push(json!({"name": name, "type": ty.name(), "dims": dims, "sha256": sha256(&data)}));
        datas.push(data);
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("all.gguf");
    let mut stream = w.create(&out, Overwrite::Deny).unwrap();
    for d in &datas {
        stream.write_tensor(d).unwrap();
    }
    stream.finish().unwrap();

    // Our own reader agrees first.
    let ours = GgufFile::open(&out).unwrap();
    assert_eq!(ours.metadata().len(), expect_meta.len());
    for ((_, v), (_, want, _)) in ours.metadata().iter().zip(sample_metadata()) {
        assert_eq!(v, &want);
    }
    let expect_path = dir.path().join("expect.json");
    std::fs::write(
        &expect_path,
        serde_json::to_vec(&json!({"metadata": expect_meta, "tensors": expect_tensors})).unwrap(),
    )
    .unwrap();
    let stdout = run_py("gguf_check.py", &[&out, &expect_path]);
    assert!(stdout.starts_with("ok: 18 keys, 6 tensors"), "{stdout}");
}

/// gguf-py's GGUFValueType names, lowercased.
fn gguf_py_type(ours: &str) -> &str {
    match ours {
        "u8" => "uint8",
        "i8" => "int8",
        "u16" => "uint16",
        "i16" => "int16",
        "u32" => "uint32",
        "i32" => "int32",
        "f32" => "float32",
        "u64" => "uint64",
        "i64" => "int64",
        "f64" => "float64",
        "bool" => "bool",
        "string" => "string",
        "array" => "array",
        other => other,
    }
}

#[test]
fn smollm2_cut_at_200_points_and_200_flipped_bytes_never_panics() {
    let original = std::fs::read(smollm2_gguf()).unwrap();
    let header_end = GgufFile::open(&smollm2_gguf()).unwrap().data_offset() as usize;
    let name = Path::new("smollm2.gguf");
    let mut rng = Rng(0x6606_F00D);
    let mut cuts: Vec<usize> = (0..fuzz_cases())
        .map(|i| {
            if i % 2 == 0 {
                rng.below(header_end + 64)
            } else {
                rng.below(original.len())
            }
        })
        .collect();
    cuts.sort_unstable_by(|a, b| b.cmp(a));
    let mut buf = original.clone();
    for cut in cuts {
        buf.truncate(cut);
        let view = buf.as_slice();
        must_not_panic(&format!("cut at {cut}"), || {
            assert!(
                gguf::validate(name, view).is_err(),
                "cut at {cut} validated"
            )
        });
    }
    let mut buf = original;
    let mut rejected = 0;
    for _ in 0..fuzz_cases() {
        let at = rng.below(header_end);
        let old = buf[at];
        buf[at] ^= 1 << rng.below(8);
        let view = buf.as_slice();
        let result = std::panic::catch_unwind(|| gguf::validate(name, view).is_err());
        match result {
            Ok(true) => rejected += 1,
            Ok(false) => {}
            Err(_) => panic!("parser panicked on flip at {at}"),
        }
        buf[at] = old;
    }
    eprintln!(
        "{} hostile GGUF cases, {rejected} of {} flips rejected, no panic",
        2 * fuzz_cases(),
        fuzz_cases()
    );
}

#[test]
fn truncated_gguf_is_a_one_line_error_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read(smollm2_gguf()).unwrap();
    let cut = dir.path().join("cut.gguf");
    let data_offset = GgufFile::open(&smollm2_gguf()).unwrap().data_offset() as usize;
    std::fs::write(&cut, &src[..data_offset + 1000]).unwrap();
    let out = edgeforge().arg("inspect").arg(&cut).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cut.gguf") && stderr.contains("lies outside the file"),
        "{stderr}"
    );
}
