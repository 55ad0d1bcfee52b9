//! Seeded mutations: byte-level for binary formats, and number- and
//! path-shaped edits that reach past a text parser into the checks behind it.

/// xorshift64*: small, seeded, the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [u64; 12] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

const TOKENS: [&str; 16] = [
    "0",
    "-1",
    "1e308",
    "-1e308",
    "5e-324",
    "inf",
    "nan",
    "18446744073709551615",
    "9223372036854775807",
    "4294967296",
    "\"../../x\"",
    "\"\"",
    "\"/dev/zero\"",
    "[]",
    "{}",
    "\"\\u202e\"",
];

/// One to four stacked mutations of a random seed.
pub fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        step(rng, &mut data, seeds);
    }
    data
}

fn step(rng: &mut Rng, d: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    if d.is_empty() {
        d.push(rng.next() as u8);
        return;
    }
    let at = rng.below(d.len());
    match rng.below(10) {
        0 => d[at] ^= 1 << rng.below(8),
        1 => d[at] = INTERESTING[rng.below(INTERESTING.len())] as u8,
        2 => {
            // A little-endian integer field set to a boundary value.
            let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
            let width = [1, 2, 4, 8][rng.below(4)];
            for (i, b) in v.iter().take(width).enumerate() {
                if let Some(x) = d.get_mut(at + i) {
                    *x = *b;
                }
            }
        }
        3 => d.truncate(at),
        4 => {
            let len = rng.below(64.min(d.len() - at)) + 1;
            d.drain(at..(at + len).min(d.len()));
        }
        5 => {
            // Duplicate a chunk (repeated keys, tensors, entries).
            let len = (rng.below(256) + 1).min(d.len() - at);
            let chunk: Vec<u8> = d[at..at + len].to_vec();
            let to = rng.below(d.len());
            d.splice(to..to, chunk);
        }
        6 | 7 => {
            // Replace a run of digits (or a word) with a hostile token.
            let start = (0..=at)
                .rev()
                .find(|&i| !is_word(d[i]))
                .map_or(0, |i| i + 1);
            let end = (at..d.len()).find(|&i| !is_word(d[i])).unwrap_or(d.len());
            let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
            d.splice(start..end.max(start), token.iter().copied());
        }
        8 => {
            // Splice in a piece of another seed.
            let other = &seeds[rng.below(seeds.len())];
            if !other.is_empty() {
                let from = rng.below(other.len());
                let len = (rng.below(512) + 1).min(other.len() - from);
                let to = rng.below(d.len());
                d.splice(to..to, other[from..from + len].iter().copied());
            }
        }
        _ => {
            let v = rng.next().to_le_bytes();
            let n = rng.below(8) + 1;
            d.splice(at..at, v[..n].iter().copied());
        }
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' || b == b'+'
}
