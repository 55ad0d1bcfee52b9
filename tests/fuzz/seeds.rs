//! Where each campaign starts: real files of the repository (every target
//! profile, every recipe), files our own writers make (GGUF, safetensors,
//! fed updates), and `seeds/<parser>/` (a real manifest and OCI documents
//! `edgeforge package` and `publish` wrote).

use std::path::Path;

use edgeforge::format::atomic::Overwrite;
use edgeforge::format::gguf::{GgmlType, GgufWriter, MetaArray, MetaValue};

pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn files_in(dir: &Path, ext: &str) -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.retain(|p: &std::path::PathBuf| p.is_file() && p.to_string_lossy().ends_with(ext));
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Inputs that once failed: replayed before the mutations, every run.
pub fn regressions(parser: &str) -> Vec<Vec<u8>> {
    files_in(
        &super::repo().join("tests/fuzz/regressions").join(parser),
        "",
    )
}

pub fn for_parser(parser: &str) -> Vec<Vec<u8>> {
    let repo = super::repo();
    let mut seeds = files_in(&repo.join("tests/fuzz/seeds").join(parser), "");
    match parser {
        "gguf" => seeds.extend([gguf_seed("llama", "gpt2"), gguf_seed("bert", "bert")]),
        "safetensors" => seeds.push(safetensors_seed(&[("format", "pt")])),
        "fed-update" => seeds.push(safetensors_seed(&[
            ("schema", "edgeforge.fed.update/v1"),
            ("base", &"a".repeat(64)),
            ("tokenizer_sha256", &"b".repeat(64)),
            ("recipe_sha256", &"c".repeat(64)),
            ("client", "client-1"),
            ("target", "rpi5-8gb"),
            ("examples", "120"),
            ("local_steps", "10"),
            ("tool", "0.1.0"),
            ("encoding", "f32"),
        ])),
        "hf-config" => seeds.push(
            br#"{"model_type":"llama","vocab_size":49152,"hidden_size":576,"intermediate_size":1536,"num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"max_position_embeddings":8192,"rms_norm_eps":1e-5,"rope_theta":100000.0,"tie_word_embeddings":true}"#.to_vec(),
        ),
        "target" => {
            seeds.extend(files_in(&repo.join("targets"), ".toml"));
            seeds.extend(files_in(&repo.join("targets/base"), ".toml"));
        }
        "build-recipe" | "distill-recipe" => seeds.extend(files_in(&repo.join("recipes"), ".toml")),
        _ => {}
    }
    seeds
}

/// A small GGUF as our writer (like llama.cpp's) lays it out: a tokenizer,
/// hyperparameters and three tensors in different block types.
fn gguf_seed(arch: &str, tokenizer: &str) -> Vec<u8> {
    let mut w = GgufWriter::new();
    let key = |k: &str| format!("{arch}.{k}");
    w.add_kv("general.architecture", MetaValue::String(arch.into()));
    w.add_kv("general.name", MetaValue::String("seed".into()));
    w.add_kv("general.alignment", MetaValue::U32(32));
    for (k, v) in [
        ("embedding_length", 64u32),
        ("block_count", 2),
        ("feed_forward_length", 128),
        ("attention.head_count", 4),
        ("attention.head_count_kv", 2),
        ("context_length", 128),
        ("vocab_size", 8),
    ] {
        w.add_kv(&key(k), MetaValue::U32(v));
    }
    w.add_kv(
        &key("attention.layer_norm_rms_epsilon"),
        MetaValue::F32(1e-5),
    );
    w.add_kv(&key("rope.freq_base"), MetaValue::F32(10000.0));
    let tokens = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "\u{2581}a",
        "b",
        "\u{2581}ab",
        "c",
    ];
    let strings = |v: &[&str]| {
        MetaValue::Array(MetaArray {
            elem_type: 8,
            values: v.iter().map(|s| MetaValue::String(s.to_string())).collect(),
        })
    };
    w.add_kv("tokenizer.ggml.model", MetaValue::String(tokenizer.into()));
    w.add_kv("tokenizer.ggml.tokens", strings(&tokens));
    w.add_kv("tokenizer.ggml.merges", strings(&["\u{2581} a", "a b"]));
    w.add_kv(
        "tokenizer.ggml.token_type",
        MetaValue::Array(MetaArray {
            elem_type: 5,
            values: [3, 2, 3, 3, 1, 1, 1, 1]
                .iter()
                .map(|&t| MetaValue::I32(t))
                .collect(),
        }),
    );
    w.add_kv("tokenizer.ggml.cls_token_id", MetaValue::U32(2));
    w.add_kv("tokenizer.ggml.seperator_token_id", MetaValue::U32(3));
    w.add_kv("tokenizer.ggml.bos_token_id", MetaValue::U32(2));
    w.add_kv("tokenizer.ggml.eos_token_id", MetaValue::U32(3));
    let tensors = [
        ("token_embd.weight", GgmlType::Q8_0, [64u64, 8]),
        ("blk.0.attn_q.weight", GgmlType::Q4_0, [64, 64]),
        ("output_norm.weight", GgmlType::F32, [64, 1]),
    ];
    for (name, ty, dims) in &tensors {
        let dims: Vec<u64> = dims.iter().copied().filter(|&d| d != 1).collect();
        w.add_tensor_info(name, *ty, &dims).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.gguf");
    let mut s = w.create(&path, Overwrite::Deny).unwrap();
    for (_, ty, dims) in &tensors {
        let elems: u64 = dims.iter().product();
        let bytes = ty.bytes_for(elems).unwrap();
        s.write_tensor(&vec![0x11u8; bytes as usize]).unwrap();
    }
    s.finish().unwrap();
    std::fs::read(&path).unwrap()
}

/// A safetensors file: an F32 matrix, an F32 vector and an I8 tensor.
fn safetensors_seed(metadata: &[(&str, &str)]) -> Vec<u8> {
    let meta: serde_json::Map<String, serde_json::Value> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    let header = serde_json::json!({
        "__metadata__": meta,
        "a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b.bias": {"dtype": "F32", "shape": [3], "data_offsets": [24, 36]},
        "c.weight": {"dtype": "I8", "shape": [2, 2], "data_offsets": [36, 40]},
    });
    let mut text = header.to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text.as_bytes());
    out.extend((0..40u8).map(|i| i.wrapping_mul(37)));
    out
}
