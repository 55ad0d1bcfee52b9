//! llama.cpp's KL-divergence base file, as `llama-perplexity
//! --kl-divergence-base F` writes it and `--kl-divergence` reads it: so a
//! reference's log-probabilities computed once by either tool can be read
//! by both.
//!
//! Layout (little-endian): `_logits_`, `u32 n_ctx`, `i32 n_vocab`,
//! `i32 n_chunk`, the `n_ctx * n_chunk` evaluated tokens (`i32`), then per
//! chunk one record per scored position (`n_ctx - 1 - n_ctx/2` of them).
//! A record is `f32 scale`, `f32 min_log_prob` and one `u16` per vocabulary
//! entry, padded to an even count: log p(i) ≈ scale * q(i) + min_log_prob,
//! spanning the 16 nats below the most likely token.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use super::atomic::{AtomicError, AtomicFile, Overwrite};

const MAGIC: &[u8; 8] = b"_logits_";

/// Why a logits file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LogitsError {
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}: Cannot read: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Write(#[from] AtomicError),
}

/// Shape of a logits file: what it was computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunk: usize,
    pub tokens: Vec<u32>,
}

impl Header {
    /// Positions scored per chunk: the second half of each, as llama-perplexity does.
    pub fn scored_per_chunk(&self) -> usize {
        scored_per_chunk(self.n_ctx)
    }

    fn record_len(&self) -> usize {
        record_len(self.n_vocab)
    }

    fn file_len(&self) -> u64 {
        let header = 8 + 4 * 3 + 4 * (self.n_ctx * self.n_chunk) as u64;
        let records = (self.n_chunk * self.scored_per_chunk() * self.record_len()) as u64;
        header + 2 * records
    }
}

/// Positions scored in a chunk of `n_ctx` tokens: from `n_ctx / 2` to the
/// second last (each predicts the next token).
pub fn scored_per_chunk(n_ctx: usize) -> usize {
    n_ctx - 1 - n_ctx / 2
}

/// `u16` words per record: two f32 and the padded vocabulary.
fn record_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// One position's quantized log-probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub scale: f32,
    pub min_log_prob: f32,
    pub q: Vec<u16>,
}

impl Record {
    /// Quantizes a row of logits as llama-perplexity does; returns the record
    /// and the negative log-likelihood of `target`.
    pub fn from_logits(logits: &[f32], target: usize) -> (Self, f64) {
        let max = logits.iter().copied().fold(logits[0], f32::max);
        let min = logits
            .iter()
            .copied()
            .fold(logits[0], f32::min)
            .max(max - 16.0);
        let sum_exp: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
        let log_sum_exp = sum_exp.ln() as f32;
        let scale = (max - min) / 65535.0;
        let q = if scale != 0.0 {
            let inv = 1.0 / scale;
            logits
                .iter()
                .map(|&l| {
                    if l > min {
                        nearest_int(inv * (l - min)) as u16
                    } else {
                        0
                    }
                })
                .collect()
        } else {
            vec![0; logits.len()]
        };
        let record = Self {
            scale,
            min_log_prob: min - max - log_sum_exp,
            q,
        };
        let nll = f64::from(max) + f64::from(log_sum_exp) - f64::from(logits[target]);
        (record, nll)
    }

    /// The recorded log-probability of token `i`.
    pub fn log_prob(&self, i: usize) -> f32 {
        self.scale * f32::from(self.q[i]) + self.min_log_prob
    }
}

/// ggml's round-half-to-even of an f32 in range, bit for bit.
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Reads a logits file one chunk at a time (the records of a whole text
/// run to gigabytes: 20k positions × a 49k vocabulary × 2 bytes).
pub struct Reader {
    path: PathBuf,
    input: BufReader<File>,
    pub header: Header,
    chunks_read: usize,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Self, LogitsError> {
        let invalid = |message: String| LogitsError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let size = crate::guard::regular_file(path).map_err(|e| invalid(e.message))?;
        let io = |source| LogitsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut input = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
        let mut magic = [0u8; 8];
        let mut word = [0u8; 4];
        let mut fields = [0u32; 3];
        let mut read_head =
            |input: &mut BufReader<File>, magic: &mut [u8; 8], fields: &mut [u32; 3]| {
                input.read_exact(magic)?;
                for f in fields.iter_mut() {
                    input.read_exact(&mut word)?;
                    *f = u32::from_le_bytes(word);
                }
                Ok::<_, io::Error>(())
            };
        if read_head(&mut input, &mut magic, &mut fields).is_err() || &magic != MAGIC {
            return Err(invalid(
                "not a llama-perplexity logits file (no `_logits_` header)".into(),
            ));
        }
        let [n_ctx, n_vocab, n_chunk] = fields.map(|f| f as usize);
        if n_ctx < 3 || n_vocab == 0 || n_chunk == 0 || n_vocab > i32::MAX as usize {
            return Err(invalid(format!(
                "header n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk} is not a usable shape"
            )));
        }
        let mut header = Header {
            n_ctx,
            n_vocab,
            n_chunk,
            tokens: Vec::new(),
        };
        // The header's sizes must account for every byte before anything
        // is allocated from them.
        let want = n_ctx
            .checked_mul(n_chunk)
            .filter(|&t| t <= u32::MAX as usize)
            .map(|_| header.file_len());
        if want != Some(size) {
            return Err(invalid(format!(
                "is {size} bytes; a logits file of {n_chunk} chunks of {n_ctx} tokens over \
                 {n_vocab} tokens of vocabulary is {} bytes (truncated or not from llama-perplexity)",
                want.map_or("more than 2^64".into(), |w| w.to_string())
            )));
        }
        let mut raw = vec![0u8; 4 * n_ctx * n_chunk];
        input.read_exact(&mut raw).map_err(io)?;
        header.tokens = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(t) = header.tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(invalid(format!(
                "token {t} is not below the vocabulary size {n_vocab}"
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            input,
            header,
            chunks_read: 0,
        })
    }

    /// The records of the next chunk, in position order.
    pub fn next_chunk(&mut self) -> Result<Vec<Record>, LogitsError> {
        if self.chunks_read == self.header.n_chunk {
            return Err(LogitsError::Invalid {
                path: self.path.clone(),
                message: format!("has only {} chunks", self.header.n_chunk),
            });
        }
        let (n_vocab, len) = (self.header.n_vocab, self.header.record_len());
        let mut raw = vec![0u8; 2 * len];
        let records = (0..self.header.scored_per_chunk())
            .map(|_| {
                self.input.read_exact(&mut raw)?;
                let f = |i: usize| f32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
                let q = raw[8..8 + 2 * n_vocab]
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect();
                Ok(Record {
                    scale: f(0),
                    min_log_prob: f(4),
                    q,
                })
            })
            .collect::<Result<_, io::Error>>()
            .map_err(|source| LogitsError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.chunks_read += 1;
        Ok(records)
    }
}

/// Writes a logits file chunk by chunk; it appears only on `finish`.
pub struct Writer {
    file: AtomicFile,
    header: Header,
    chunks_written: usize,
}

impl Writer {
    pub fn create(path: &Path, header: Header, overwrite: Overwrite) -> Result<Self, LogitsError> {
        let mut file = AtomicFile::create(path, overwrite)?;
        let io = |source| LogitsError::Io {
            path: path.to_path_buf(),
            source,
        };
        file.write_all(MAGIC).map_err(io)?;
        for v in [header.n_ctx, header.n_vocab, header.n_chunk] {
            file.write_all(&(v as u32).to_le_bytes()).map_err(io)?;
        }
        for t in &header.tokens {
            file.write_all(&t.to_le_bytes()).map_err(io)?;
        }
        Ok(Self {
            file,
            header,
            chunks_written: 0,
        })
    }

    pub fn write_chunk(&mut self, records: &[Record]) -> Result<(), LogitsError> {
        debug_assert_eq!(records.len(), self.header.scored_per_chunk());
        let pad = self.header.record_len() - 4 - self.header.n_vocab;
        let mut raw = Vec::with_capacity(2 * self.header.record_len());
        for r in records {
            raw.clear();
            raw.extend_from_slice(&r.scale.to_le_bytes());
            raw.extend_from_slice(&r.min_log_prob.to_le_bytes());
            raw.extend(r.q.iter().flat_map(|q| q.to_le_bytes()));
            raw.extend(std::iter::repeat_n(0u8, 2 * pad));
            self.file
                .write_all(&raw)
                .map_err(|source| LogitsError::Io {
                    path: self.file.target().to_path_buf(),
                    source,
                })?;
        }
        self.chunks_written += 1;
        Ok(())
    }

    pub fn finish(self) -> Result<PathBuf, LogitsError> {
        if self.chunks_written != self.header.n_chunk {
            return Err(LogitsError::Invalid {
                path: self.file.target().to_path_buf(),
                message: format!(
                    "{} of {} chunks written",
                    self.chunks_written, self.header.n_chunk
                ),
            });
        }
        Ok(self.file.commit()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_reads_back_record_for_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base.kld");
        let header = Header {
            n_ctx: 8,
            n_vocab: 5,
            n_chunk: 2,
            tokens: (0..16).map(|t| t % 5).collect(),
        };
        let chunk = |c: usize| -> Vec<Record> {
            (0..header.scored_per_chunk())
                .map(|i| Record::from_logits(&[0.5, -1.0, 2.0 + i as f32, 0.0, c as f32], 2).0)
                .collect()
        };
        let mut w = Writer::create(&path, header.clone(), Overwrite::Deny).unwrap();
        w.write_chunk(&chunk(0)).unwrap();
        w.write_chunk(&chunk(1)).unwrap();
        w.finish().unwrap();
        let mut r = Reader::open(&path).unwrap();
        assert_eq!(r.header, header);
        assert_eq!(r.next_chunk().unwrap(), chunk(0));
        assert_eq!(r.next_chunk().unwrap(), chunk(1));
        assert!(r.next_chunk().is_err());
    }

    #[test]
    fn a_record_spans_sixteen_nats_below_the_top() {
        let logits = [10.0f32, 9.0, -30.0, 0.0];
        let (r, nll) = Record::from_logits(&logits, 1);
        let lse = logits.iter().map(|&l| (l - 10.0).exp()).sum::<f32>().ln() + 10.0;
        assert!((r.log_prob(0) - (10.0 - lse)).abs() < 1e-3);
        assert!((r.log_prob(1) - (9.0 - lse)).abs() < 1e-3);
        // Below the window: clamped to its floor.
        assert!((r.log_prob(2) - (-6.0 - lse)).abs() < 1e-3);
        assert!((nll - f64::from(lse - 9.0)).abs() < 1e-5);
    }

    #[test]
    fn a_short_or_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"_logits_\x08\0\0\0\x05\0\0\0\x02\0\0\0").unwrap();
        let e = Reader::open(&path).err().unwrap().to_string();
        assert!(e.contains("truncated"), "{e}");
        std::fs::write(&path, b"GGUF....").unwrap();
        let e = Reader::open(&path).err().unwrap().to_string();
        assert!(e.contains("_logits_"), "{e}");
    }
}
