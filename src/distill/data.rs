//! Training text and the teacher's outputs for it. Teacher outputs are
//! computed once and cached on disk under a key that hashes the teacher's
//! files and the data, so later runs and epochs cost only the student.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::DistillError;
use crate::engine::{Batch, BertEncoder, TextTokenizer};
use crate::format::atomic::{write_atomic, Overwrite};

/// Token ids of one text file, one example per non-empty line.
pub struct Examples {
    pub path: PathBuf,
    pub ids: Vec<Vec<u32>>,
}

impl Examples {
    pub fn read(
        path: &Path,
        tokenizer: &TextTokenizer,
        max_length: usize,
        limit: Option<usize>,
    ) -> Result<Self, DistillError> {
        let text = crate::guard::read_text(path, crate::guard::Cap::TEXT).map_err(|e| {
            let hint = if path.exists() {
                ""
            } else {
                " (hint: `scripts/fetch-corpus` fetches the fortunes corpus the shipped recipes use)"
            };
            DistillError::at(path, format!("{}{hint}", e.message))
        })?;
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take(limit.unwrap_or(usize::MAX))
            .collect();
        if lines.is_empty() {
            return Err(DistillError::at(
                path,
                "no examples (the file has no non-empty lines)",
            ));
        }
        let ids = lines
            .iter()
            .map(|l| tokenizer.encode(l).map(|ids| truncate(ids, max_length)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            path: path.to_path_buf(),
            ids,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Keeps the first `max - 1` tokens and the final special token ([SEP]).
fn truncate(mut ids: Vec<u32>, max: usize) -> Vec<u32> {
    if ids.len() > max {
        let last = *ids.last().expect("non-empty");
        ids.truncate(max - 1);
        ids.push(last);
    }
    ids
}

/// Pooled teacher embeddings, `[examples, hidden]` row-major.
pub struct TeacherOutputs {
    pub hidden: usize,
    pub rows: Vec<f32>,
}

impl TeacherOutputs {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.rows[i * self.hidden..(i + 1) * self.hidden]
    }
}

/// The cache key: the teacher's files (their combined sha256), the
/// examples' token ids and the output kind.
pub fn cache_key(teacher_sha256: &str, examples: &Examples) -> String {
    let mut h = Sha256::new();
    h.update(b"edgeforge-distill-teacher-pooled-v2\n");
    h.update(teacher_sha256.as_bytes());
    for row in &examples.ids {
        h.update((row.len() as u32).to_le_bytes());
        h.update(bytemuck::cast_slice::<u32, u8>(row));
    }
    hex::encode(h.finalize())
}

/// Where teacher outputs live: `$EDGEFORGE_CACHE/teacher`, else the user cache.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EDGEFORGE_CACHE") {
        return PathBuf::from(dir).join("teacher");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("edgeforge").join("teacher")
}

/// Loads the teacher's outputs from the cache, or computes and stores them.
/// Returns the outputs and whether they came from the cache.
pub fn teacher_outputs(
    teacher: &BertEncoder,
    examples: &Examples,
    key: &str,
    hidden: usize,
    mut progress: impl FnMut(usize),
) -> Result<(TeacherOutputs, bool), DistillError> {
    let path = cache_dir().join(format!("{key}.f32"));
    let want = examples.len() * hidden * 4;
    if let Ok(bytes) = fs_err::read(&path) {
        if bytes.len() == want {
            let rows = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            return Ok((TeacherOutputs { hidden, rows }, true));
        }
        tracing::warn!("{}: wrong size, recomputing", path.display());
    }
    let rows = pooled_outputs(teacher, examples, hidden, &mut progress);
    fs_err::create_dir_all(path.parent().expect("cache file has a folder"))
        .map_err(|e| DistillError::at(&path, e.to_string()))?;
    // A cache that cannot be written only costs time later.
    if let Err(e) = write_atomic(&path, bytemuck::cast_slice(&rows), Overwrite::Allow) {
        tracing::warn!("teacher cache not written: {e}");
    }
    Ok((TeacherOutputs { hidden, rows }, false))
}

/// Pooled embeddings of every example, batched by similar length (less
/// padding), each written back to its own row.
pub fn pooled_outputs(
    encoder: &BertEncoder,
    examples: &Examples,
    hidden: usize,
    progress: &mut dyn FnMut(usize),
) -> Vec<f32> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| (examples.ids[i].len(), i));
    let mut rows = vec![0f32; examples.len() * hidden];
    for chunk in order.chunks(32) {
        let batch = Batch {
            ids: chunk.iter().map(|&i| examples.ids[i].clone()).collect(),
        };
        let pooled = encoder
            .pooled(&batch)
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 embeddings");
        for (&i, row) in chunk.iter().zip(pooled.chunks_exact(hidden)) {
            rows[i * hidden..(i + 1) * hidden].copy_from_slice(row);
        }
        progress(chunk.len());
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_final_special_token() {
        assert_eq!(
            truncate(vec![101, 1, 2, 3, 4, 102], 4),
            vec![101, 1, 2, 102]
        );
        assert_eq!(truncate(vec![101, 1, 102], 4), vec![101, 1, 102]);
    }
}
