//! Next-token choice: greedy, or seeded sampling with temperature, top-k and
//! top-p. The generator is our own SplitMix64 so a seed gives the same text
//! on every platform and crate version.

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

pub struct Sampler {
    config: Sampling,
    state: u64,
}

impl Sampler {
    pub fn new(config: Sampling) -> Self {
        Self {
            config,
            state: config.seed,
        }
    }

    pub fn next(&mut self, logits: &[f32]) -> u32 {
        if self.config.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .copied()
            .zip(0u32..)
            .map(|(l, i)| (i, l))
            .collect();
        // Sort by logit, ties by id, so the order never depends on the sort's stability.
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.config.top_k > 0 {
            candidates.truncate(self.config.top_k);
        }
        let max = candidates[0].1;
        let t = f64::from(self.config.temperature);
        let mut probs: Vec<f64> = candidates
            .iter()
            .map(|&(_, l)| ((f64::from(l) - f64::from(max)) / t).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.config.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    acc += p;
                    acc >= f64::from(self.config.top_p)
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.uniform() * total;
        for (p, (id, _)) in probs.iter().zip(&candidates) {
            if r < *p {
                return *id;
            }
            r -= p;
        }
        candidates[probs.len() - 1].0
    }

    /// Uniform in [0, 1) from SplitMix64.
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Index of the largest logit; the lowest index wins ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_and_the_first_of_ties() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn same_seed_same_choices_and_top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let cfg = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.9,
            seed: 7,
        };
        let run = || {
            let mut s = Sampler::new(cfg);
            (0..20).map(|_| s.next(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
        assert!(
            run()
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 1
        );
        let mut k1 = Sampler::new(Sampling { top_k: 1, ..cfg });
        assert!((0..10).all(|_| k1.next(&logits) == argmax(&logits)));
    }

    #[test]
    fn top_p_never_picks_outside_the_nucleus() {
        let mut logits = vec![-10.0f32; 100];
        logits[3] = 5.0;
        logits[7] = 4.5;
        let mut s = Sampler::new(Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 1,
        });
        assert!((0..200).all(|_| s.next(&logits) == 3));
    }
}
