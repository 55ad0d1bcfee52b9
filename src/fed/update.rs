//! A client update: a safetensors file of per-tensor deltas against one
//! global version, with what the server needs to accept or refuse it in
//! `__metadata__` (docs/federated.md). Deltas are F32, or int8 per output
//! row (`int8_pc`: an I8 tensor plus `<name>.scale`, F32 per row, encoded
//! with the same code as `quantize`'s int8_pc).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::format::atomic::Overwrite;
use crate::format::safetensors::{
    Dtype, SafetensorsFile, SafetensorsStream, TensorEntry, TensorSpec,
};
use crate::quant::grouped::int8_row;

pub const SCHEMA: &str = "edgeforge.fed.update/v1";
const SCALE_SUFFIX: &str = ".scale";

/// What an update says about itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UpdateMeta {
    /// The global version's id the deltas are against.
    pub base: String,
    pub tokenizer_sha256: String,
    pub recipe_sha256: String,
    pub client: String,
    pub target: String,
    pub examples: u64,
    pub local_steps: u64,
    pub tool: String,
    pub int8: bool,
}

impl UpdateMeta {
    fn to_map(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("schema".into(), SCHEMA.into()),
            ("base".into(), self.base.clone()),
            ("tokenizer_sha256".into(), self.tokenizer_sha256.clone()),
            ("recipe_sha256".into(), self.recipe_sha256.clone()),
            ("client".into(), self.client.clone()),
            ("target".into(), self.target.clone()),
            ("examples".into(), self.examples.to_string()),
            ("local_steps".into(), self.local_steps.to_string()),
            ("tool".into(), self.tool.clone()),
            (
                "encoding".into(),
                if self.int8 { "int8_pc" } else { "f32" }.into(),
            ),
        ])
    }

    fn from_map(m: &BTreeMap<String, String>) -> Result<Self, String> {
        let get = |k: &str| {
            m.get(k)
                .cloned()
                .ok_or_else(|| format!("metadata has no `{k}`"))
        };
        let schema = get("schema")?;
        if schema != SCHEMA {
            return Err(format!("schema `{schema}`, this server reads {SCHEMA}"));
        }
        let number = |k: &str| -> Result<u64, String> {
            get(k)?
                .parse()
                .map_err(|_| format!("metadata `{k}` is not a number"))
        };
        let int8 = match get("encoding")?.as_str() {
            "f32" => false,
            "int8_pc" => true,
            other => return Err(format!("unknown encoding `{other}`")),
        };
        Ok(Self {
            base: get("base")?,
            tokenizer_sha256: get("tokenizer_sha256")?,
            recipe_sha256: get("recipe_sha256")?,
            client: get("client")?,
            target: get("target")?,
            examples: number("examples")?,
            local_steps: number("local_steps")?,
            tool: get("tool")?,
            int8,
        })
    }
}

/// One delta tensor in an update.
#[derive(Debug, Clone)]
pub struct DeltaTensor {
    pub name: String,
    pub shape: Vec<usize>,
    data: TensorEntry,
    scale: Option<TensorEntry>,
}

impl DeltaTensor {
    pub fn n_elems(&self) -> usize {
        self.shape.iter().product()
    }
    /// Elements per int8 scale.
    fn row_len(&self) -> usize {
        (self.n_elems() / scale_rows(&self.shape)).max(1)
    }
}

/// int8 scales: one per outermost row of a matrix; one for a vector.
fn scale_rows(shape: &[usize]) -> usize {
    if shape.len() <= 1 {
        1
    } else {
        shape[0].max(1)
    }
}

/// An opened (memory-mapped) update.
pub struct Update {
    pub path: PathBuf,
    pub sha256: String,
    pub meta: UpdateMeta,
    pub tensors: Vec<DeltaTensor>,
    file: SafetensorsFile,
}

impl Update {
    /// Opens and checks an update's structure; the error is the reason to
    /// reject it.
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = SafetensorsFile::open(path).map_err(|e| e.message)?;
        let (_, sha256) = crate::artifact::hash_file(path).map_err(|e| e.to_string())?;
        Self::from_file(path, file, sha256)
    }

    /// An update held in memory (the fuzzer's entry point; no file read).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, String> {
        use sha2::Digest;
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        let file = SafetensorsFile::from_bytes(path, bytes).map_err(|e| e.message)?;
        Self::from_file(path, file, sha256)
    }

    fn from_file(path: &Path, file: SafetensorsFile, sha256: String) -> Result<Self, String> {
        let meta = UpdateMeta::from_map(file.metadata())?;
        let by_name: BTreeMap<&str, &TensorEntry> = file
            .tensors()
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let mut tensors = Vec::new();
        for t in file.tensors() {
            if meta.int8 && t.name.ends_with(SCALE_SUFFIX) && t.dtype == Dtype::F32 {
                continue;
            }
            let scale = match (meta.int8, t.dtype) {
                (false, Dtype::F32) => None,
                (true, Dtype::I8) => {
                    let name = format!("{}{SCALE_SUFFIX}", t.name);
                    let s = by_name
                        .get(name.as_str())
                        .ok_or_else(|| format!("int8 tensor `{}` has no `{name}`", t.name))?;
                    let rows = scale_rows(&t.shape);
                    if s.dtype != Dtype::F32 || s.shape != [rows] {
                        return Err(format!("`{name}` must be F32 of shape [{rows}]"));
                    }
                    Some((*s).clone())
                }
                (int8, dtype) => {
                    return Err(format!(
                        "tensor `{}` is {dtype:?}; {} updates carry {}",
                        t.name,
                        if int8 { "int8_pc" } else { "f32" },
                        if int8 { "I8 with a .scale" } else { "F32" }
                    ))
                }
            };
            tensors.push(DeltaTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: t.clone(),
                scale,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            sha256,
            meta,
            tensors,
            file,
        })
    }

    /// The file itself (for the signature check).
    pub fn file(&self) -> &SafetensorsFile {
        &self.file
    }

    /// Lets go of the mapped pages behind elements `range` of `t` once read
    /// (see `SafetensorsFile::release`): aggregating a thousand updates keeps
    /// one chunk of each resident, not every byte read.
    pub fn release(&self, t: &DeltaTensor, range: Range<usize>) {
        let width = if t.scale.is_some() { 1 } else { 4 };
        let base = t.data.range.start;
        self.file
            .release(base + range.start * width..base + range.end * width);
    }

    /// The deltas `range` (elements, row-major) of tensor `t`, decoded into `out`.
    pub fn read(&self, t: &DeltaTensor, range: Range<usize>, out: &mut [f32]) {
        let bytes = self.file.data(&t.data);
        match &t.scale {
            None => {
                for (o, b) in out
                    .iter_mut()
                    .zip(bytes[range.start * 4..range.end * 4].chunks_exact(4))
                {
                    *o = f32::from_le_bytes(b.try_into().expect("4 bytes"));
                }
            }
            Some(scale_entry) => {
                let scales = self.file.data(scale_entry);
                let row_len = t.row_len();
                // Row by row: one scale per run of codes.
                let mut i = range.start;
                let mut out = out.iter_mut();
                while i < range.end {
                    let r = i / row_len;
                    let row_end = ((r + 1) * row_len).min(range.end);
                    let s =
                        f32::from_le_bytes(scales[r * 4..r * 4 + 4].try_into().expect("4 bytes"));
                    // Codes first: zip stops on them without taking an extra output slot.
                    for (&q, o) in bytes[i..row_end].iter().zip(&mut out) {
                        *o = q as i8 as f32 * s;
                    }
                    i = row_end;
                }
            }
        }
    }
}

/// Writes an update (atomically); `int8` encodes each tensor per row.
pub fn write(
    path: &Path,
    meta: &UpdateMeta,
    deltas: &[(String, Vec<usize>, Vec<f32>)],
    overwrite: Overwrite,
) -> Result<(), String> {
    let mut specs = Vec::new();
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    for (name, shape, values) in deltas {
        if !meta.int8 {
            specs.push(TensorSpec {
                name: name.clone(),
                dtype: Dtype::F32,
                shape: shape.clone(),
            });
            payloads.push(values.iter().flat_map(|v| v.to_le_bytes()).collect());
            continue;
        }
        let rows = scale_rows(shape);
        let row_len = values.len() / rows;
        let mut q = vec![0u8; values.len()];
        let mut scales = Vec::with_capacity(rows * 4);
        for (x, qr) in values
            .chunks(row_len.max(1))
            .zip(q.chunks_mut(row_len.max(1)))
        {
            scales.extend_from_slice(&int8_row(x, qr).to_le_bytes());
        }
        specs.push(TensorSpec {
            name: name.clone(),
            dtype: Dtype::I8,
            shape: shape.clone(),
        });
        payloads.push(q);
        specs.push(TensorSpec {
            name: format!("{name}{SCALE_SUFFIX}"),
            dtype: Dtype::F32,
            shape: vec![rows],
        });
        payloads.push(scales);
    }
    let mut stream = SafetensorsStream::create(path, &specs, &meta.to_map(), overwrite)
        .map_err(|e| e.to_string())?;
    for p in &payloads {
        stream.write_tensor(p).map_err(|e| e.to_string())?;
    }
    stream.finish().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_updates_decode_within_half_a_step_and_f32_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let deltas = vec![
            (
                "w".to_string(),
                vec![3, 4],
                (0..12)
                    .map(|i| (i as f32 - 5.5) * 0.37)
                    .collect::<Vec<f32>>(),
            ),
            ("b".to_string(), vec![5], vec![0.5, -1.0, 0.25, 0.0, 2.0]),
        ];
        for int8 in [false, true] {
            let meta = UpdateMeta {
                base: "ab".repeat(32),
                tokenizer_sha256: "t".into(),
                recipe_sha256: "r".into(),
                client: "c".into(),
                target: "rpi5-8gb".into(),
                examples: 3,
                local_steps: 1,
                tool: "test".into(),
                int8,
            };
            let path = dir.path().join(format!("u{int8}.safetensors"));
            write(&path, &meta, &deltas, Overwrite::Deny).unwrap();
            let u = Update::open(&path).unwrap();
            assert_eq!(u.meta, meta);
            assert_eq!(u.tensors.len(), 2);
            for (t, (_, shape, values)) in u.tensors.iter().zip(&deltas) {
                assert_eq!(&t.shape, shape);
                let mut out = vec![0f32; values.len()];
                u.read(t, 0..values.len(), &mut out);
                let rows = scale_rows(shape);
                for (r, (got, want)) in out
                    .chunks(values.len() / rows)
                    .zip(values.chunks(values.len() / rows))
                    .enumerate()
                {
                    let step = want.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                    for (g, w) in got.iter().zip(want) {
                        let tol = if int8 { step / 2.0 + 1e-6 } else { 0.0 };
                        assert!((g - w).abs() <= tol, "row {r}: {g} vs {w}");
                    }
                }
            }
        }
    }
}
