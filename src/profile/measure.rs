//! Measurement on this host with the engine: load time, peak RSS, latency
//! percentiles after a warm-up run.

use std::time::Instant;

use serde::Serialize;

use crate::engine::{peak_rss_bytes, Engine, EngineError, Network};
use crate::model::Model;

/// Latency of one encoder input length.
#[derive(Debug, Clone, Serialize)]
pub struct LengthLatency {
    pub tokens: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

/// What the host measured.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub threads: usize,
    pub runs: usize,
    pub load_seconds: f64,
    pub peak_rss_bytes: Option<u64>,
    /// Bytes of weights the engine holds resident (f32 for burn's encoder,
    /// packed blocks for the decoder).
    pub engine_weight_bytes: u64,
    /// Encoders: latency per input length.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub encoder: Vec<LengthLatency>,
    /// Decoders: prompt tokens, prefill and decode rates, per-step latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoder: Option<DecoderRates>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecoderRates {
    pub prompt_tokens: u64,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
    pub decode_p50_ms: f64,
    pub decode_p95_ms: f64,
}

/// Synthetic token ids: latency does not depend on which tokens they are.
fn ids(n: u64, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 100 + (i * 7919) % (vocab - 200))
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the model: encoders at each of `lengths`, decoders with a prompt of
/// `lengths`' largest and `decode_steps` generated tokens. `tick` is called
/// after each timed run (for a progress bar).
pub fn measure(
    model: &Model,
    lengths: &[u64],
    runs: usize,
    decode_steps: usize,
    mut tick: impl FnMut(),
) -> Result<Measurement, EngineError> {
    let engine = Engine::load(model)?;
    let vocab = match &model.architecture {
        crate::model::Architecture::Bert(c) => c.vocab_size,
        crate::model::Architecture::Llama(c) => c.vocab_size,
        crate::model::Architecture::Gemma3(c) => c.vocab_size,
        crate::model::Architecture::LlamaLike(c) => c.base.vocab_size,
        crate::model::Architecture::Other { .. } => 1000,
    } as u32;
    let mut m = Measurement {
        threads: rayon::current_num_threads(),
        runs,
        load_seconds: engine.load_seconds,
        peak_rss_bytes: None,
        engine_weight_bytes: engine.weight_bytes(),
        encoder: Vec::new(),
        decoder: None,
    };
    match &engine.network {
        Network::Encoder(encoder) => {
            for &len in lengths {
                let batch = vec![ids(len, vocab)];
                let _ = encoder.embed(&batch);
                let mut times: Vec<f64> = (0..runs)
                    .map(|_| {
                        let t = Instant::now();
                        let _ = encoder.embed(&batch);
                        tick();
                        t.elapsed().as_secs_f64() * 1e3
                    })
                    .collect();
                times.sort_by(f64::total_cmp);
                m.encoder.push(LengthLatency {
                    tokens: len,
                    p50_ms: percentile(&times, 0.5),
                    p95_ms: percentile(&times, 0.95),
                });
            }
        }
        Network::Decoder(decoder) => {
            let prompt = ids(lengths.iter().copied().max().unwrap_or(128), vocab);
            let mut prefill = Vec::new();
            let mut steps = Vec::new();
            for run in 0..=runs {
                let mut cache = decoder.new_cache();
                let t = Instant::now();
                let mut logits = decoder.forward(&prompt, &mut cache, 1);
                let prefill_s = t.elapsed().as_secs_f64();
                for _ in 0..decode_steps {
                    let next = crate::engine::sample::argmax(&logits);
                    let t = Instant::now();
                    logits = decoder.forward(&[next], &mut cache, 1);
                    if run > 0 {
                        steps.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
                // Run 0 warms caches and allocations; it is not counted.
                if run > 0 {
                    prefill.push(prefill_s);
                    tick();
                }
            }
            prefill.sort_by(f64::total_cmp);
            steps.sort_by(f64::total_cmp);
            let step_p50 = percentile(&steps, 0.5);
            m.decoder = Some(DecoderRates {
                prompt_tokens: prompt.len() as u64,
                prefill_tokens_per_second: prompt.len() as f64 / percentile(&prefill, 0.5),
                decode_tokens_per_second: 1e3 / step_p50,
                decode_p50_ms: step_p50,
                decode_p95_ms: percentile(&steps, 0.95),
            });
        }
    }
    m.peak_rss_bytes = peak_rss_bytes();
    Ok(m)
}
