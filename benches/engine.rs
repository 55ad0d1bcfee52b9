//! Engine speed: MiniLM embedding of a 128-token input at batch 1 and 32,
//! SmolLM2 prefill of 128 tokens and decode tokens/s. Thread count from
//! `RAYON_NUM_THREADS` (one process per count: rayon's pool is global).
//!
//! Run through `scripts/bench-engine`, which times onnxruntime on the same
//! MiniLM and the same token ids in the same run. Alone:
//! `RAYON_NUM_THREADS=2 cargo bench --bench engine`.

use std::path::PathBuf;
use std::time::Instant;

use edgeforge::engine::{Engine, Network, Precision};
use edgeforge::model::Model;

const SEQ: usize = 128;

fn models() -> PathBuf {
    std::env::var_os("EDGEFORGE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/edgeforge-models")
        })
}

/// The same ids the onnxruntime side feeds: [CLS], 126 word pieces, [SEP].
fn bert_ids() -> Vec<u32> {
    let mut ids = vec![101];
    ids.extend((1..SEQ as u32 - 1).map(|i| 1000 + (i * 7919) % 20000));
    ids.push(102);
    ids
}

fn median_seconds(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[runs / 2]
}

fn main() {
    let threads = rayon::current_num_threads();
    let minilm = Model::open(&models().join("minilm"))
        .expect("minilm: run ../shared/models/fetch.sh minilm");
    // `EDGEFORGE_BENCH="int8 seq=128 batch=1"` (say) runs only the rows
    // whose label has it (for perf).
    let only = std::env::var("EDGEFORGE_BENCH").unwrap_or_default();
    for precision in [Precision::F32, Precision::Int8] {
        let label = |batch: usize| format!("minilm {} seq={SEQ} batch={batch}", precision.name());
        if ![1, 32].iter().any(|&b| label(b).contains(&only)) {
            continue;
        }
        let engine = Engine::load_with(&minilm, precision).unwrap();
        let Network::Encoder(encoder) = &engine.network else {
            unreachable!()
        };
        for batch in [1usize, 32] {
            if !label(batch).contains(&only) {
                continue;
            }
            let input = vec![bert_ids(); batch];
            let runs = if batch == 1 { 21 } else { 5 };
            let s = median_seconds(runs, || {
                let _ = encoder.embed(&input);
            });
            println!("{} threads={threads}: {:.1} ms", label(batch), s * 1e3);
        }
    }
    if !"smollm2 prefill decode".contains(&only) {
        return;
    }
    let smollm2 =
        Model::open(&models().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")).expect("smollm2");
    let engine = Engine::load(&smollm2).unwrap();
    let Network::Decoder(decoder) = &engine.network else {
        unreachable!()
    };
    let prompt: Vec<u32> = (0..SEQ as u32).map(|i| 300 + (i * 7919) % 40000).collect();
    let s = median_seconds(3, || {
        let mut cache = decoder.new_cache();
        let _ = decoder.forward(&prompt, &mut cache, 1);
    });
    println!(
        "smollm2 prefill tokens={SEQ} threads={threads}: {:.1} tok/s",
        SEQ as f64 / s
    );
    let steps = 64;
    let s = median_seconds(3, || {
        let mut cache = decoder.new_cache();
        let mut logits = decoder.forward(&prompt[..5], &mut cache, 1);
        for _ in 0..steps {
            let next = edgeforge::engine::sample::argmax(&logits);
            logits = decoder.forward(&[next], &mut cache, 1);
        }
    });
    println!(
        "smollm2 decode tokens={steps} threads={threads}: {:.1} tok/s (incl. 5-token prompt)",
        steps as f64 / s
    );
}
