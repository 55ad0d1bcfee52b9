//! Qwen2, Qwen3, Phi-3, Granite and LFM2 against llama.cpp itself, recorded: tiny
//! random-weight GGUFs (f32, and llama.cpp's own Q8_0 copy of each) with
//! llama.cpp's logits at every prompt position and greedy decode step
//! (`tests/fixtures/families/`, made by `scripts/make-family-fixtures`; its
//! README says how). Token ids go in through the library, so the tokenizer
//! plays no part in the comparison; `run generate` is checked end to end on
//! the same files.

use std::path::{Path, PathBuf};

use serde_json::Value;

use edgeforge::engine::{Decoder, Engine, Network};
use edgeforge::model::Model;

use crate::common::{edgeforge, json_success, repo_root};

const FAMILIES: [&str; 5] = ["qwen2", "qwen3", "phi3", "granite", "lfm2"];
/// The families whose Hugging Face checkpoints we read (LFM2: GGUF only).
const HF_FAMILIES: [&str; 4] = ["qwen2", "qwen3", "phi3", "granite"];

/// What each stored dtype must meet at every position: Pearson correlation
/// with llama.cpp's logits, and the largest absolute logit difference.
struct Bar {
    correlation: f64,
    max_abs: f32,
}

/// f32 weights: the same graph in f32 (both sides round keys and values to
/// f16); measured at most 1.3e-3 (qwen2), 1.5e-4 for the others.
const F32: Bar = Bar {
    correlation: 0.9999,
    max_abs: 2e-3,
};
/// Q8_0 weights: both sides quantize activations to 8 bits per 32-block and
/// sum the integer products as llama.cpp does: bit-identical on AVX2 when
/// recorded; the bar leaves room for other kernels' summation order.
const Q8_0: Bar = Bar {
    correlation: 0.9999,
    max_abs: 5e-3,
};

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/families").join(name)
}

/// A float32 `.npy` file's shape and values (little-endian, C order).
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}", path.display());
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let dims = header.split("'shape': (").nth(1).unwrap();
    let shape = dims[..dims.find(')').unwrap()]
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let data = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, data)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let ma = a.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let mb = b.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (f64::from(x) - ma, f64::from(y) - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt()
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap() as u32
}

/// The recording for one fixture file: prompt, greedy tokens, logits rows.
struct Recording {
    prompt: Vec<u32>,
    greedy: Vec<u32>,
    vocab: usize,
    logits: Vec<f32>,
}

fn recording(file: &str) -> Recording {
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{file}.json"))).unwrap())
            .unwrap();
    let (shape, logits) = read_npy(&fixture(meta["logits"].as_str().unwrap()));
    let (prompt, greedy) = (ids(&meta["prompt"]), ids(&meta["greedy"]));
    assert_eq!(shape[0], prompt.len() + greedy.len());
    Recording {
        prompt,
        greedy,
        vocab: shape[1],
        logits,
    }
}

fn decoder(engine: &Engine) -> &Decoder {
    match &engine.network {
        Network::Decoder(d) => d,
        Network::Encoder(_) => panic!("the fixtures are decoders"),
    }
}

/// Our logits for the recording: the prompt in one batch, then each greedy
/// token fed alone through the cache (as llama.cpp's were recorded), and our
/// own greedy choices along the way.
fn ours(d: &Decoder, rec: &Recording) -> (Vec<f32>, Vec<u32>) {
    let mut cache = d.new_cache();
    let mut logits = d.forward(&rec.prompt, &mut cache, rec.prompt.len());
    let mut greedy = vec![argmax(&logits[logits.len() - rec.vocab..])];
    for &t in &rec.greedy {
        let step = d.forward(&[t], &mut cache, 1);
        greedy.push(argmax(&step));
        logits.extend(step);
    }
    greedy.pop();
    (logits, greedy)
}

#[test]
fn families_match_llama_cpp_logits_and_greedy_tokens() {
    let mut failures = Vec::new();
    for family in FAMILIES {
        for (dtype, bar) in [("f32", &F32), ("q8_0", &Q8_0)] {
            let file = format!("{family}.{dtype}.gguf");
            let rec = recording(&file);
            let model = Model::open(&fixture(&file)).unwrap();
            assert_eq!(model.architecture.name(), family);
            let described = serde_json::to_value(&model.architecture).unwrap();
            assert_eq!(
                (described["family"].as_str(), described["kind"].as_str()),
                (Some("llama-like"), Some(family))
            );
            let engine = Engine::load(&model).unwrap();
            let d = decoder(&engine);
            assert_eq!(d.spec.family, family);
            let (logits, greedy) = ours(d, &rec);
            assert_eq!(logits.len(), rec.logits.len());
            let (mut worst_corr, mut worst_abs) = (1f64, 0f32);
            for (pos, (got, want)) in logits
                .chunks_exact(rec.vocab)
                .zip(rec.logits.chunks_exact(rec.vocab))
                .enumerate()
            {
                let corr = correlation(got, want);
                let abs = got
                    .iter()
                    .zip(want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                worst_corr = worst_corr.min(corr);
                worst_abs = worst_abs.max(abs);
                if corr < bar.correlation || abs > bar.max_abs {
                    failures.push(format!(
                        "{file} position {pos}: correlation {corr:.7}, max |diff| {abs:.2e}"
                    ));
                }
                if argmax(got) != argmax(want) {
                    failures.push(format!(
                        "{file} position {pos}: argmax {} vs llama.cpp's {}",
                        argmax(got),
                        argmax(want)
                    ));
                }
            }
            if greedy != rec.greedy {
                failures.push(format!(
                    "{file}: greedy {greedy:?} vs llama.cpp's {:?}",
                    rec.greedy
                ));
            }
            eprintln!(
                "{file}: min correlation {worst_corr:.8}, max |diff| {worst_abs:.3e} over {} positions",
                logits.len() / rec.vocab
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn families_decode_identically_at_1_and_2_threads() {
    for family in FAMILIES {
        let file = format!("{family}.q8_0.gguf");
        let rec = recording(&file);
        let model = Model::open(&fixture(&file)).unwrap();
        let engine = Engine::load(&model).unwrap();
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (logits, _) = pool.install(|| ours(decoder(&engine), &rec));
            logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        assert!(
            on(1) == on(2),
            "{file}: logits differ between 1 and 2 threads"
        );
    }
}

/// `run generate` on each file: the tokenizer loads, and the CLI's greedy
/// tokens are the library's greedy continuation of the same prompt ids.
#[test]
fn families_run_generate_end_to_end() {
    for family in FAMILIES {
        let path = fixture(&format!("{family}.f32.gguf"));
        let report = json_success(
            edgeforge()
                .args(["--json", "run", "generate"])
                .arg(&path)
                .args(["--prompt", "the cat sat on the mat", "-n", "6"]),
        );
        let model = Model::open(&path).unwrap();
        let engine = Engine::load(&model).unwrap();
        let prompt = engine.tokenizer.encode("the cat sat on the mat").unwrap();
        assert_eq!(ids(&report["prompt_tokens"]), prompt, "{family}");
        let d = decoder(&engine);
        let mut cache = d.new_cache();
        let mut next = argmax(&d.forward(&prompt, &mut cache, 1));
        let mut want = Vec::new();
        while want.len() < 6 && !engine.tokenizer.eos.contains(&next) {
            want.push(next);
            next = argmax(&d.forward(&[next], &mut cache, 1));
        }
        assert_eq!(ids(&report["tokens"]), want, "{family}");
    }
}

/// The Hugging Face name of a llama.cpp tensor name in these fixtures
/// (the inverse of `llamacpp::tensor_name` for the LLaMA-derived families).
fn hf_name(family: &str, name: &str) -> String {
    let (stem, suffix) = name.rsplit_once('.').unwrap();
    let fixed = match stem {
        "token_embd" => Some("model.embed_tokens"),
        "output_norm" => Some("model.norm"),
        "output" => Some("lm_head"),
        // HF keeps these as a config setting; a file may carry the tensor.
        "rope_freqs" => Some("rope_freqs"),
        _ => None,
    };
    if let Some(f) = fixed {
        return format!("{f}.{suffix}");
    }
    let rest = stem.strip_prefix("blk.").unwrap();
    let (n, part) = rest.split_once('.').unwrap();
    let hf = match (part, family) {
        ("attn_norm", _) => "input_layernorm",
        ("attn_q", _) => "self_attn.q_proj",
        ("attn_k", _) => "self_attn.k_proj",
        ("attn_v", _) => "self_attn.v_proj",
        ("attn_qkv", _) => "self_attn.qkv_proj",
        ("attn_output", _) => "self_attn.o_proj",
        ("attn_q_norm", _) => "self_attn.q_norm",
        ("attn_k_norm", _) => "self_attn.k_norm",
        ("ffn_norm", _) => "post_attention_layernorm",
        ("ffn_gate", _) => "mlp.gate_proj",
        ("ffn_up", "phi3") => "mlp.gate_up_proj",
        ("ffn_up", _) => "mlp.up_proj",
        ("ffn_down", _) => "mlp.down_proj",
        (other, _) => panic!("no HF name for {other}"),
    };
    format!("model.layers.{n}.{hf}.{suffix}")
}

/// Each f32 fixture rewritten as a Hugging Face folder (HF tensor names,
/// Granite's q/k rows back in HF's rotate-half order, `config.json` from
/// the GGUF's hyperparameters) runs to the same bits as the GGUF.
#[test]
fn families_hf_safetensors_route_equals_the_gguf() {
    use edgeforge::engine::families;
    use edgeforge::engine::weights::Weights;
    use edgeforge::format::atomic::Overwrite;
    use edgeforge::format::safetensors::{Dtype, SafetensorsStream, TensorSpec};

    for family in HF_FAMILIES {
        let gguf = Model::open(&fixture(&format!("{family}.f32.gguf"))).unwrap();
        let edgeforge::model::Architecture::LlamaLike(config) = &gguf.architecture else {
            panic!("{family} reads as a LLaMA-like family")
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            config.to_hf_json().to_string(),
        )
        .unwrap();
        let mut specs = Vec::new();
        let mut data = Vec::new();
        for t in &gguf.tensors {
            let name = hf_name(family, &t.name);
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            let mut bytes = gguf.tensor_bytes(t).to_vec();
            let order = edgeforge::llamacpp::qk_row_order(&gguf.architecture, &name, shape[0]);
            if let (Some(order), [_, cols]) = (order, shape.as_slice()) {
                // GGUF row r came from HF row order[r].
                let row = cols * 4;
                let mut hf = vec![0u8; bytes.len()];
                for (r, &src) in order.iter().enumerate() {
                    hf[src * row..(src + 1) * row].copy_from_slice(&bytes[r * row..(r + 1) * row]);
                }
                bytes = hf;
            }
            specs.push(TensorSpec {
                name,
                dtype: Dtype::F32,
                shape,
            });
            data.push(bytes);
        }
        let path = dir.path().join("model.safetensors");
        let mut out =
            SafetensorsStream::create(&path, &specs, &Default::default(), Overwrite::Deny).unwrap();
        for bytes in &data {
            out.write_tensor(bytes).unwrap();
        }
        out.finish().unwrap();

        let hf = Model::open(dir.path()).unwrap();
        assert_eq!(hf.architecture, gguf.architecture, "{family}");
        let run = |model: &Model| {
            let spec = families::spec(&model.architecture).unwrap().unwrap();
            let d = Decoder::load(spec, &Weights::new(model)).unwrap();
            let rec = recording(&format!("{family}.f32.gguf"));
            let (logits, _) = ours(&d, &rec);
            logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        assert!(run(&hf) == run(&gguf), "{family}: HF route differs");
    }
}

/// `file` with metadata `key` set to `value` (and `extra`, an f32 tensor of
/// ones, added when given), written to `out`.
fn with_key(
    file: &str,
    key: &str,
    value: edgeforge::format::gguf::MetaValue,
    extra: Option<(&str, u64)>,
    out: &Path,
) {
    use edgeforge::format::atomic::Overwrite;
    use edgeforge::format::gguf::{GgmlType, GgufFile, GgufWriter};
    let src = GgufFile::open(&fixture(file)).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        if k != key {
            w.add_kv(k, v.clone());
        }
    }
    w.add_kv(key, value);
    for t in src.tensors() {
        w.add_tensor_info(&t.name, t.ggml_type, &t.dims).unwrap();
    }
    if let Some((name, len)) = extra {
        w.add_tensor_info(name, GgmlType::F32, &[len]).unwrap();
    }
    let mut s = w.create(out, Overwrite::Deny).unwrap();
    for t in src.tensors() {
        s.write_tensor(src.tensor_data(t)).unwrap();
    }
    if let Some((_, len)) = extra {
        s.write_tensor(&1f32.to_le_bytes().repeat(len as usize))
            .unwrap();
    }
    s.finish().unwrap();
}

#[test]
fn impossible_family_hyperparameters_exit_2_naming_the_number() {
    use edgeforge::format::gguf::MetaValue;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "qwen2",
            "qwen2.attention.head_count_kv",
            MetaValue::U32(3),
            None,
            "num_key_value_heads = 3 does not divide",
        ),
        (
            "phi3",
            "phi3.rope.dimension_count",
            MetaValue::U32(15),
            None,
            "rotary dimension 15",
        ),
        (
            "granite",
            "granite.logit_scale",
            MetaValue::F32(0.0),
            None,
            "logits_scaling = 0",
        ),
        (
            "lfm2",
            "lfm2.shortconv.l_cache",
            MetaValue::U32(0),
            None,
            "shortconv.l_cache = 0",
        ),
        // Phi-3 128k's LongRoPE factors: refused, not ignored.
        (
            "phi3",
            "phi3.rope.dimension_count",
            MetaValue::U32(12),
            Some(("rope_factors_long.weight", 6)),
            "LongRoPE",
        ),
    ];
    for (i, (family, key, value, extra, needle)) in cases.into_iter().enumerate() {
        let out = dir.path().join(format!("{i}.{family}.gguf"));
        with_key(&format!("{family}.f32.gguf"), key, value, extra, &out);
        let run = edgeforge()
            .args(["run", "generate"])
            .arg(&out)
            .args(["-p", "the"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{family}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(needle) && err.contains(&format!("{family}.gguf")),
            "{err}"
        );
    }
}
