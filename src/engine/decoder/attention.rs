//! RoPE and causal attention of new positions against the cache, with the
//! sliding window masking what a layer no longer sees.

use half::f16;
use rayon::prelude::*;

use super::cache::LayerCache;
use super::spec::{RopePairs, Spec};

pub(super) struct Rope<'a> {
    pub freqs: &'a [f32],
    pub pairs: RopePairs,
    /// Leading values of a head that rotate; the rest pass through.
    pub dims: usize,
    pub position_scale: f32,
}

impl Rope<'_> {
    /// Rotates each pair i of `head` by `pos * freq_i`.
    pub fn rotate(&self, head: &mut [f32], pos: f32) {
        let head = &mut head[..self.dims];
        let pos = pos * self.position_scale;
        let turn = |a: f32, b: f32, freq: f32| {
            let (sin, cos) = (pos * freq).sin_cos();
            (a * cos - b * sin, a * sin + b * cos)
        };
        match self.pairs {
            RopePairs::Adjacent => {
                for (pair, &freq) in head.chunks_exact_mut(2).zip(self.freqs) {
                    (pair[0], pair[1]) = turn(pair[0], pair[1], freq);
                }
            }
            RopePairs::Halves => {
                let (lo, hi) = head.split_at_mut(head.len() / 2);
                for ((a, b), &freq) in lo.iter_mut().zip(hi).zip(self.freqs) {
                    (*a, *b) = turn(*a, *b, freq);
                }
            }
        }
    }
}

fn to_f16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// Rounds to f16 precision, as the cache stores keys and values.
pub(super) fn round_f16(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = to_f16(*v));
}

/// Attention of the new positions `start..` (queries `q`, keys `k` and
/// values `v` already rounded) over everything visible to them; stores the
/// new keys and values in `cache`. Returns the context `[n, heads * head_dim]`.
pub(super) fn attend(
    s: &Spec,
    window: Option<usize>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    start: usize,
    cache: &mut LayerCache,
) -> Vec<f32> {
    match window {
        // Everything stays: store first and read every position from the cache.
        None => {
            cache.store(start, k, v);
            let cache = &*cache;
            attend_with(s, None, q, start, |p| cache.at(p))
        }
        // The ring may not hold all new positions at once: read earlier
        // positions from it and new ones from `k`/`v`, then store.
        Some(w) => {
            let kv_w = s.kv_width();
            let ctx = {
                let cache = &*cache;
                attend_with(s, Some(w), q, start, |p| match p.checked_sub(start) {
                    Some(t) => (&k[t * kv_w..(t + 1) * kv_w], &v[t * kv_w..(t + 1) * kv_w]),
                    None => cache.at(p),
                })
            };
            cache.store(start, k, v);
            ctx
        }
    }
}

/// The attention itself, with key/value rows of position `p` from `kv(p)`.
fn attend_with<'a>(
    s: &Spec,
    window: Option<usize>,
    q: &[f32],
    start: usize,
    kv: impl Fn(usize) -> (&'a [f32], &'a [f32]) + Sync,
) -> Vec<f32> {
    let (hd, heads) = (s.head_dim, s.heads);
    let q_w = s.q_width();
    let group = heads / s.kv_heads;
    let scale = s.attention_scale;
    let mut ctx = vec![0f32; q.len()];
    // One task per (position, head); each writes its own slice of `ctx`.
    let head_task = |(task, out): (usize, &mut [f32])| {
        let (t, head) = (task / heads, task % heads);
        let kv_off = head / group * hd;
        let qh: Vec<f32> = q[t * q_w + head * hd..][..hd]
            .iter()
            .map(|&v| to_f16(v))
            .collect();
        let pos = start + t;
        let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let mut scores: Vec<f32> = (first..=pos)
            .map(|p| {
                let kp = &kv(p).0[kv_off..kv_off + hd];
                qh.iter().zip(kp).map(|(a, b)| a * b).sum::<f32>() * scale
            })
            .collect();
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut total = 0f32;
        for s in &mut scores {
            *s = (*s - max).exp();
            total += *s;
        }
        out.fill(0.0);
        for (p, &s) in (first..=pos).zip(&scores) {
            let vp = &kv(p).1[kv_off..kv_off + hd];
            let w = to_f16(s / total);
            out.iter_mut().zip(vp).for_each(|(o, &v)| *o += w * v);
        }
    };
    ctx.par_chunks_mut(hd).enumerate().for_each(head_task);
    ctx
}
