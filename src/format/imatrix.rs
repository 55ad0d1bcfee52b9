//! llama.cpp's importance-matrix files, both the GGUF one `llama-imatrix`
//! writes today and the older `.dat`, so a matrix made by either tool
//! quantizes with either.
//!
//! An entry per weight matrix (`blk.0.ffn_down.weight`): the sum over
//! calibration tokens of each input column's squared activation, and how
//! many tokens went in. GGUF: tensors `<name>.in_sum2` (F32 `[n_in, n_mat]`)
//! and `<name>.counts` (F32 `[1, n_mat]`) sorted by name, with
//! `imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`. `.dat`
//! (little-endian): `i32 n_entries`, per entry `i32 len, name, i32 ncall,
//! i32 nval, f32 (sum / count) * ncall ...`, then `i32 chunk_count` and the
//! dataset name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::atomic::{write_atomic, AtomicError, Overwrite};
use super::gguf::{GgmlType, GgufFile, GgufWriter, MetaArray, MetaValue};

const SUMS: &str = ".in_sum2";
const COUNTS: &str = ".counts";
/// GGUF's type id of a string array element.
const GGUF_STRING: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum ImatrixError {
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Write(#[from] AtomicError),
}

/// One weight matrix's statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Σ x² per input column, `n_mat` consecutive runs of `n_in`.
    pub sums: Vec<f32>,
    /// Tokens per matrix (one for a dense tensor). In a `.dat` file: its `ncall`.
    pub counts: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Imatrix {
    pub entries: BTreeMap<String, Entry>,
    pub datasets: Vec<String>,
    pub chunk_count: u32,
    /// Tokens per chunk (0 in a `.dat` file, which does not record it).
    pub chunk_size: u32,
    /// Read from a `.dat` file: sums are pre-averaged, counts are `ncall`.
    pub legacy: bool,
}

impl Imatrix {
    /// Reads either format (a GGUF by its magic, else `.dat`).
    pub fn read(path: &Path) -> Result<Self, ImatrixError> {
        let invalid = |message: String| ImatrixError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let bytes = crate::guard::read_bytes(path, crate::guard::Cap::IMATRIX)
            .map_err(|e| invalid(e.message))?;
        if bytes.starts_with(b"GGUF") {
            let file = GgufFile::from_bytes(path, bytes).map_err(|e| invalid(e.message))?;
            Self::from_gguf(&file).map_err(invalid)
        } else {
            Self::from_dat(&bytes).map_err(invalid)
        }
    }

    fn from_gguf(file: &GgufFile) -> Result<Self, String> {
        let datasets = match file.get("imatrix.datasets") {
            Some(MetaValue::Array(a)) => a
                .values
                .iter()
                .filter_map(|v| match v {
                    MetaValue::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let (Some(chunk_count), Some(chunk_size)) = (
            file.get_u64("imatrix.chunk_count"),
            file.get_u64("imatrix.chunk_size"),
        ) else {
            return Err(
                "a GGUF without imatrix.chunk_count / imatrix.chunk_size: not an importance matrix"
                    .into(),
            );
        };
        let mut sums = BTreeMap::new();
        let mut counts = BTreeMap::new();
        for t in file.tensors() {
            let (map, base) = if let Some(b) = t.name.strip_suffix(SUMS) {
                (&mut sums, b)
            } else if let Some(b) = t.name.strip_suffix(COUNTS) {
                (&mut counts, b)
            } else {
                continue;
            };
            if t.ggml_type != GgmlType::F32 {
                return Err(format!("tensor `{}` is {}, not F32", t.name, t.ggml_type));
            }
            let data = floats(file.tensor_data(t));
            map.insert(base.to_string(), data);
        }
        let mut entries = BTreeMap::new();
        for (name, s) in sums {
            let c = counts
                .remove(&name)
                .ok_or_else(|| format!("`{name}` has sums but no counts"))?;
            if c.is_empty() || s.len() % c.len() != 0 {
                return Err(format!(
                    "`{name}`: {} sums do not split into {} matrices",
                    s.len(),
                    c.len()
                ));
            }
            let counts = c.iter().map(|&v| v.round() as i64).collect();
            entries.insert(name, Entry { sums: s, counts });
        }
        if let Some(name) = counts.keys().next() {
            return Err(format!("`{name}` has counts but no sums"));
        }
        if entries.is_empty() {
            return Err("no entries".into());
        }
        Ok(Self {
            entries,
            datasets,
            chunk_count: u32::try_from(chunk_count).map_err(|_| "chunk_count overflows")?,
            chunk_size: u32::try_from(chunk_size).map_err(|_| "chunk_size overflows")?,
            legacy: false,
        })
    }

    fn from_dat(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Cursor { bytes, at: 0 };
        let n = r.i32("the entry count")?;
        if n < 1 {
            return Err("not an importance matrix (neither GGUF nor a .dat with entries)".into());
        }
        let mut entries = BTreeMap::new();
        for i in 0..n {
            let len = r.i32("a name length")?;
            let name = r.take(len, "a name")?;
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| format!("entry {} has a name that is not UTF-8", i + 1))?;
            let ncall = r.i32("ncall")?;
            let nval = r.i32("a value count")?;
            if nval < 1 {
                return Err(format!("entry `{name}` has {nval} values"));
            }
            let sums = floats(r.take(nval.saturating_mul(4), "values")?);
            entries.insert(
                name,
                Entry {
                    sums,
                    counts: vec![i64::from(ncall)],
                },
            );
        }
        // The chunk count and dataset name are optional, as llama.cpp reads them.
        let mut datasets = Vec::new();
        let mut chunk_count = 0;
        if r.at < bytes.len() {
            chunk_count = r.i32("the chunk count")?.max(0) as u32;
            if let Ok(len) = r.i32("a dataset name length") {
                if len > 0 {
                    let name = r.take(len, "the dataset name")?;
                    datasets.push(String::from_utf8_lossy(name).into_owned());
                }
            }
        }
        Ok(Self {
            entries,
            datasets,
            chunk_count,
            chunk_size: 0,
            legacy: true,
        })
    }

    /// The per-column weights llama-quantize gives `name`'s rows: the mean
    /// squared activation (sums over counts; 1 where a matrix saw no tokens).
    pub fn weights(&self, name: &str) -> Option<Vec<f32>> {
        let e = self.entries.get(name)?;
        if self.legacy {
            let ncall = e.counts.first().copied().unwrap_or(0);
            return Some(if ncall > 0 {
                e.sums.iter().map(|s| s / ncall as f32).collect()
            } else {
                e.sums.clone()
            });
        }
        let n_in = e.sums.len() / e.counts.len();
        Some(
            e.sums
                .chunks_exact(n_in)
                .zip(&e.counts)
                .flat_map(|(run, &count)| {
                    run.iter()
                        .map(move |&s| if count > 0 { s / count as f32 } else { 1.0 })
                })
                .collect(),
        )
    }

    /// Writes the GGUF format, as `llama-imatrix` does.
    pub fn write_gguf(&self, path: &Path, overwrite: Overwrite) -> Result<PathBuf, ImatrixError> {
        let invalid = |message: String| ImatrixError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut w = GgufWriter::new();
        w.add_kv("general.type", MetaValue::String("imatrix".into()));
        w.add_kv(
            "imatrix.datasets",
            MetaValue::Array(MetaArray {
                elem_type: GGUF_STRING,
                values: self
                    .datasets
                    .iter()
                    .cloned()
                    .map(MetaValue::String)
                    .collect(),
            }),
        );
        w.add_kv("imatrix.chunk_count", MetaValue::U32(self.chunk_count));
        w.add_kv("imatrix.chunk_size", MetaValue::U32(self.chunk_size));
        for (name, e) in &self.entries {
            let n_mat = e.counts.len() as u64;
            let n_in = e.sums.len() as u64 / n_mat;
            w.add_tensor_info(&format!("{name}{SUMS}"), GgmlType::F32, &[n_in, n_mat])
                .map_err(invalid)?;
            w.add_tensor_info(&format!("{name}{COUNTS}"), GgmlType::F32, &[1, n_mat])
                .map_err(invalid)?;
        }
        let mut s = w.create(path, overwrite).map_err(|e| invalid(e.message))?;
        for e in self.entries.values() {
            let counts: Vec<f32> = e.counts.iter().map(|&c| c as f32).collect();
            for data in [&e.sums, &counts] {
                let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
                s.write_tensor(&bytes).map_err(|e| invalid(e.message))?;
            }
        }
        s.finish().map_err(|e| invalid(e.message))
    }

    /// Writes the older `.dat` format, as `llama-imatrix --output-format dat` does.
    pub fn write_dat(&self, path: &Path, overwrite: Overwrite) -> Result<PathBuf, ImatrixError> {
        let mut b = Vec::new();
        let i32s = |b: &mut Vec<u8>, v: i32| b.extend_from_slice(&v.to_le_bytes());
        let chunk = i64::from(self.chunk_size.max(1));
        i32s(&mut b, self.entries.len() as i32);
        for (name, e) in &self.entries {
            i32s(&mut b, name.len() as i32);
            b.extend_from_slice(name.as_bytes());
            let max = e.counts.iter().copied().max().unwrap_or(0);
            let ncall = if self.legacy {
                max
            } else {
                (max + chunk - 1) / chunk
            };
            i32s(&mut b, ncall as i32);
            i32s(&mut b, e.sums.len() as i32);
            let n_in = e.sums.len() / e.counts.len();
            for (i, &s) in e.sums.iter().enumerate() {
                let v = if self.legacy {
                    s
                } else {
                    let count = e.counts[i / n_in] as f32;
                    let (s, count) = if count == 0.0 { (1.0, 1.0) } else { (s, count) };
                    (s / count) * ncall as f32
                };
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        i32s(&mut b, self.chunk_count as i32);
        let dataset = self.datasets.last().map_or("", String::as_str);
        i32s(&mut b, dataset.len() as i32);
        b.extend_from_slice(dataset.as_bytes());
        Ok(write_atomic(path, &b, overwrite)?)
    }
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Bounds-checked reads of a `.dat` file.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: i32, what: &str) -> Result<&'a [u8], String> {
        let len = usize::try_from(len).map_err(|_| format!("{what} has negative length {len}"))?;
        let end = self.at.checked_add(len).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| {
            format!(
                "truncated: {what} ({len} bytes) runs past the end at byte {}",
                self.at
            )
        })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn i32(&mut self, what: &str) -> Result<i32, String> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        let mut entries = BTreeMap::new();
        entries.insert(
            "blk.0.ffn_down.weight".to_string(),
            Entry {
                sums: vec![4.0, 8.0, 0.5, 2.0],
                counts: vec![256],
            },
        );
        entries.insert(
            "blk.0.attn_q.weight".to_string(),
            Entry {
                sums: vec![1.0, 3.0],
                counts: vec![256],
            },
        );
        Imatrix {
            entries,
            datasets: vec!["train.txt".into()],
            chunk_count: 2,
            chunk_size: 128,
            legacy: false,
        }
    }

    #[test]
    fn both_formats_read_back_to_the_same_weights() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample();
        let (g, d) = (dir.path().join("m.gguf"), dir.path().join("m.dat"));
        m.write_gguf(&g, Overwrite::Deny).unwrap();
        m.write_dat(&d, Overwrite::Deny).unwrap();
        let (from_g, from_d) = (Imatrix::read(&g).unwrap(), Imatrix::read(&d).unwrap());
        assert_eq!(from_g, m);
        assert!(from_d.legacy && from_d.chunk_count == 2 && from_d.datasets == m.datasets);
        let name = "blk.0.ffn_down.weight";
        assert_eq!(
            from_g.weights(name).unwrap(),
            vec![4.0 / 256.0, 8.0 / 256.0, 0.5 / 256.0, 2.0 / 256.0]
        );
        // ncall = ceil(256 / 128) = 2; stored (sum / count) * 2, read back / 2.
        assert_eq!(from_d.entries[name].counts, vec![2]);
        assert_eq!(from_d.weights(name), from_g.weights(name));
    }

    #[test]
    fn a_cut_dat_file_names_what_ran_out() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("m.dat");
        sample().write_dat(&d, Overwrite::Deny).unwrap();
        let bytes = std::fs::read(&d).unwrap();
        std::fs::write(&d, &bytes[..30]).unwrap();
        let e = Imatrix::read(&d).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }
}
