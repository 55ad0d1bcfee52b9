//! Keys and values of the positions seen so far, rounded to f16 as
//! llama.cpp's default cache stores them. A global layer keeps every
//! position; a sliding-window layer keeps only its last `window` positions,
//! in a ring (position `p` in slot `p % window`), so its memory stops
//! growing at the window.

/// One layer's keys and values, `[slot][kv_heads * head_dim]`.
#[derive(Debug, Clone)]
pub struct LayerCache {
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
    /// Ring size for a sliding-window layer.
    window: Option<usize>,
    width: usize,
}

impl LayerCache {
    fn new(window: Option<usize>, width: usize) -> Self {
        Self {
            k: Vec::new(),
            v: Vec::new(),
            window,
            width,
        }
    }

    /// Key and value rows of position `p` (which the cache must still hold).
    pub(super) fn at(&self, p: usize) -> (&[f32], &[f32]) {
        let slot = self.window.map_or(p, |w| p % w);
        let at = slot * self.width;
        (&self.k[at..at + self.width], &self.v[at..at + self.width])
    }

    /// Stores rows for positions `start..start + n` (`k`, `v` are `[n][width]`).
    pub(super) fn store(&mut self, start: usize, k: &[f32], v: &[f32]) {
        let n = k.len() / self.width;
        let Some(window) = self.window else {
            self.k.extend_from_slice(k);
            self.v.extend_from_slice(v);
            return;
        };
        // Only the last `window` of the new positions can ever be seen again;
        // the ring grows to the window and then wraps.
        let skip = n.saturating_sub(window);
        let slots = (start + n).min(window) * self.width;
        if self.k.len() < slots {
            self.k.resize(slots, 0.0);
            self.v.resize(slots, 0.0);
        }
        for t in skip..n {
            let at = (start + t) % window * self.width;
            let row = t * self.width..(t + 1) * self.width;
            self.k[at..at + self.width].copy_from_slice(&k[row.clone()]);
            self.v[at..at + self.width].copy_from_slice(&v[row]);
        }
    }

    fn positions(&self) -> usize {
        self.k.len() / self.width.max(1)
    }
}

/// The cache of every layer, and how many positions it has seen.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(super) layers: Vec<LayerCache>,
    /// Per layer, a convolution layer's last positions in f32 (LFM2; empty for attention).
    pub(super) conv: Vec<Vec<f32>>,
    pub len: usize,
}

impl KvCache {
    pub(super) fn new(windows: impl Iterator<Item = Option<usize>>, width: usize) -> Self {
        Self {
            layers: windows.map(|w| LayerCache::new(w, width)).collect(),
            conv: Vec::new(),
            len: 0,
        }
    }

    /// Zeroed convolution states of `sizes` floats, one per layer.
    pub(super) fn with_conv_states(mut self, sizes: impl Iterator<Item = usize>) -> Self {
        self.conv = sizes.map(|n| vec![0f32; n]).collect();
        self
    }

    /// Bytes this cache would take with keys and values stored as f16
    /// (convolution states as f32).
    pub fn bytes(&self) -> usize {
        let kv: usize = self
            .layers
            .iter()
            .map(|l| l.positions() * l.width * 2 * 2)
            .sum();
        kv + self.conv.iter().map(|c| 4 * c.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(start: usize, n: usize, width: usize) -> Vec<f32> {
        (start..start + n)
            .flat_map(|p| (0..width).map(move |i| (p * 10 + i) as f32))
            .collect()
    }

    #[test]
    fn a_window_layer_keeps_only_its_last_positions() {
        let width = 2;
        let mut cache = KvCache::new([None, Some(3)].into_iter(), width);
        let mut start = 0;
        for n in [2, 5, 1, 1, 7] {
            let k = rows(start, n, width);
            for layer in &mut cache.layers {
                layer.store(start, &k, &k);
            }
            start += n;
            cache.len = start;
            let (global, window) = (&cache.layers[0], &cache.layers[1]);
            assert_eq!(global.positions(), start);
            assert_eq!(window.positions(), start.min(3));
            for p in start.saturating_sub(3)..start {
                assert_eq!(window.at(p).0, &rows(p, 1, width)[..], "position {p}");
                assert_eq!(global.at(p).1, &rows(p, 1, width)[..]);
            }
        }
        assert_eq!(cache.bytes(), (16 + 3) * width * 2 * 2);
        // A first chunk longer than the window keeps its last positions.
        let mut cache = KvCache::new([Some(3)].into_iter(), width);
        let k = rows(0, 8, width);
        cache.layers[0].store(0, &k, &k);
        for p in 5..8 {
            assert_eq!(
                cache.layers[0].at(p).0,
                &rows(p, 1, width)[..],
                "position {p}"
            );
        }
    }
}
