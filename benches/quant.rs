//! Quantization throughput: MB/s of f32 input for Q8_0, Q4_0 and Q4_K on a
//! 4096x4096 matrix (seeded pseudo-normal values) and on the whole MiniLM
//! checkpoint, at 1 and 2 threads, beside a plain memcpy of the same bytes.
//!
//! Run through `scripts/bench-quant`, which also times the `gguf` package's
//! numpy reference on the same matrix in the same run. Alone:
//! `cargo bench --bench quant -- [MATRIX_OUT.f32]` (writes the matrix for
//! the numpy side when given a path).

use std::time::Instant;

use edgeforge::model::Model;
use edgeforge::quant::{self, Scheme};

const SIDE: usize = 4096;
const REPEATS: usize = 5;

fn matrix() -> Vec<f32> {
    // xorshift + Box-Muller: deterministic, no dependency.
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..SIDE * SIDE)
        .map(|_| {
            let (u, v) = (next().max(1e-12), next());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos() * 0.02) as f32
        })
        .collect()
}

/// Median seconds of `REPEATS` runs.
fn median(mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..REPEATS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[REPEATS / 2]
}

fn main() {
    let x = matrix();
    if let Some(path) = std::env::args().skip(1).find(|a| a.ends_with(".f32")) {
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, bytes).expect("write matrix");
    }
    let mb = (x.len() * 4) as f64 / 1e6;
    let mut dst = vec![0f32; x.len()];
    let copy = median(|| dst.copy_from_slice(std::hint::black_box(&x)));
    println!("memcpy 4096x4096 f32: {:.0} MB/s", mb / copy);

    let minilm = std::env::var("EDGEFORGE_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/edgeforge-models")
        })
        .join("minilm");
    let model = Model::open(&minilm).ok();
    let tensors: Vec<(Vec<f32>, usize)> = model
        .iter()
        .flat_map(|m| m.tensors.iter().map(move |t| (m, t)))
        .filter(|(_, t)| t.shape.len() == 2 && t.dtype.is_float())
        .map(|(m, t)| {
            let floats = m
                .tensor_bytes(t)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (floats, t.row_len() as usize)
        })
        .collect();
    let minilm_mb = tensors.iter().map(|(v, _)| v.len() * 4).sum::<usize>() as f64 / 1e6;

    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for scheme in [Scheme::Q8_0, Scheme::Q4_0, Scheme::Q4K] {
            let t = pool.install(|| {
                median(|| {
                    drop(std::hint::black_box(
                        quant::quantize(scheme, &x, SIDE).unwrap(),
                    ))
                })
            });
            println!("rust {scheme} matrix threads={threads}: {:.0} MB/s", mb / t);
            if !tensors.is_empty() {
                // Whole model: rows that do not fit the block use the plan's
                // fallback in practice; here they are skipped and excluded.
                let fits: Vec<&(Vec<f32>, usize)> = tensors
                    .iter()
                    .filter(|(_, r)| quant::supports_row(scheme, *r as u64))
                    .collect();
                let bytes = fits.iter().map(|(v, _)| v.len() * 4).sum::<usize>() as f64 / 1e6;
                let t = pool.install(|| {
                    median(|| {
                        for (v, r) in &fits {
                            drop(std::hint::black_box(
                                quant::quantize(scheme, v, *r).unwrap(),
                            ));
                        }
                    })
                });
                println!("rust {scheme} minilm threads={threads}: {:.0} MB/s ({bytes:.1} of {minilm_mb:.1} MB fit the block)", bytes / t);
            }
        }
    }
}
