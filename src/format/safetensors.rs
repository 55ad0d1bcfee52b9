//! safetensors (<https://huggingface.co/docs/safetensors>): an 8-byte
//! little-endian header length, a JSON header, then the tensor bytes.
//!
//! Reading leans on the `safetensors` crate's header validation (offsets must
//! tile the data section exactly, shape × dtype must equal the byte count, a
//! 100 MB header cap) over an mmap, so tensor data is never copied. Sharded
//! checkpoints (`model.safetensors.index.json`) are a set of such files.
//! Writing is ours because it must stream tensor by tensor into a temp file
//! and rename, which the crate's `serialize_to_file` does not do.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use ::safetensors::Dtype;
use memmap2::Mmap;

use crate::format::atomic::{AtomicFile, Overwrite};

/// A safetensors file or shard index that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct SafetensorsError {
    pub path: PathBuf,
    pub message: String,
}

impl SafetensorsError {
    fn new(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// One tensor's header entry, with its byte range in the whole file.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    /// Row-major shape, outermost first.
    pub shape: Vec<usize>,
    /// Byte range inside the file (header included in the offsets).
    pub range: Range<usize>,
}

impl TensorEntry {
    /// Number of elements (1 for a scalar).
    pub fn n_elems(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// A memory-mapped, validated safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: FileBytes,
    header_len: usize,
    tensors: Vec<TensorEntry>,
    metadata: BTreeMap<String, String>,
}

#[derive(Debug)]
enum FileBytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

impl SafetensorsFile {
    /// Maps and validates a file.
    pub fn open(path: &Path) -> Result<Self, SafetensorsError> {
        crate::guard::regular_file(path).map_err(|e| SafetensorsError::new(path, e.message))?;
        let file = std::fs::File::open(path)
            .map_err(|e| SafetensorsError::new(path, format!("Cannot open: {e}")))?;
        // SAFETY: the map is read-only; a concurrent writer truncating the file
        // could fault, which is the documented limit of every mmap reader.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| SafetensorsError::new(path, format!("Cannot map: {e}")))?;
        Self::parse(path, FileBytes::Mapped(map))
    }

    /// Validates an in-memory file (fuzzing, tests); `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, SafetensorsError> {
        Self::parse(path, FileBytes::Owned(bytes))
    }

    fn parse(path: &Path, bytes: FileBytes) -> Result<Self, SafetensorsError> {
        let (header_len, tensors, metadata) = parse_header(path, &bytes)?;
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            header_len,
            tensors,
            metadata,
        })
    }

    /// Drops the mapped pages of `range` (bytes of the file) from this
    /// process: they stay in the page cache and come back from the file if
    /// touched again. Lets a reader stream through many large files without
    /// its resident set growing with everything it has read.
    pub fn release(&self, range: std::ops::Range<usize>) {
        if let FileBytes::Mapped(map) = &self.bytes {
            // Whole pages inside the range only: a page shared with the next
            // range is left for that range's release.
            let page = 4096;
            let start = range.start.div_ceil(page) * page;
            let end = (range.end / page * page).min(map.len());
            if end > start {
                // SAFETY: the map is read-only and file-backed, so MADV_DONTNEED
                // only drops this process's copies; later reads fault the same
                // bytes back in from the file. No reference into the range is
                // held across this call by the callers (they copy values out).
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
    }

    /// Validates a whole file's bytes without keeping them (fuzzing).
    pub fn validate(path: &Path, bytes: &[u8]) -> Result<usize, SafetensorsError> {
        parse_header(path, bytes).map(|(_, tensors, _)| tensors.len())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// The `__metadata__` string map.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Size of the JSON header in bytes.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// A tensor's raw little-endian bytes (zero copy).
    pub fn data(&self, entry: &TensorEntry) -> &[u8] {
        &self.bytes[entry.range.clone()]
    }
}

type Parsed = (usize, Vec<TensorEntry>, BTreeMap<String, String>);

/// Checks the header against the whole file and lists the tensors.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<Parsed, SafetensorsError> {
    if bytes.len() < 8 {
        return Err(SafetensorsError::new(
            path,
            format!(
                "Truncated: {} bytes, shorter than the 8-byte header length",
                bytes.len()
            ),
        ));
    }
    let declared = u64::from_le_bytes(bytes[..8].try_into().expect("slice of 8 bytes"));
    if declared > bytes.len() as u64 - 8 {
        return Err(SafetensorsError::new(
            path,
            format!(
                "Header length {declared} is larger than the {} bytes after it",
                bytes.len() - 8
            ),
        ));
    }
    let (header_len, meta) = ::safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| SafetensorsError::new(path, describe(&e)))?;
    let data_start = 8 + header_len;
    let mut tensors: Vec<TensorEntry> = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| TensorEntry {
            name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            range: data_start + info.data_offsets.0..data_start + info.data_offsets.1,
        })
        .collect();
    tensors.sort_by(|a, b| (a.range.start, &a.name).cmp(&(b.range.start, &b.name)));
    let metadata = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok((header_len, tensors, metadata))
}

/// The crate's errors, reworded to say what is wrong with the file.
fn describe(err: &::safetensors::SafeTensorError) -> String {
    use ::safetensors::SafeTensorError as E;
    match err {
        E::InvalidHeader(e) => format!("Header is not valid UTF-8: {e}"),
        E::InvalidHeaderStart | E::InvalidHeaderDeserialization(_) | E::JsonError(_) => {
            format!("Header is not a valid safetensors JSON header: {err}")
        }
        E::HeaderTooLarge => "Header is larger than the 100 MB limit".into(),
        E::HeaderTooSmall | E::InvalidHeaderLength => {
            "Header length points past the end of the file".into()
        }
        E::InvalidOffset(name) => {
            format!("Tensor `{name}` has data offsets that overlap, leave a gap or run backwards")
        }
        E::TensorInvalidInfo => "A tensor's byte range does not match its shape and dtype".into(),
        E::MetadataIncompleteBuffer => {
            "Tensor data does not end where the file ends (truncated or trailing bytes)".into()
        }
        E::ValidationOverflow => "A tensor's shape overflows when multiplied out".into(),
        E::MisalignedSlice => "A sub-byte dtype tensor does not fill whole bytes".into(),
        other => other.to_string(),
    }
}

/// `model.safetensors.index.json`: which shard holds each tensor.
#[derive(Debug, serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// A checkpoint split over shards, or a single file, behind one lookup.
#[derive(Debug)]
pub struct ShardedSafetensors {
    pub shards: Vec<SafetensorsFile>,
}

impl ShardedSafetensors {
    /// Opens a single `.safetensors` file, or every shard a
    /// `*.safetensors.index.json` names (each shard opened once).
    pub fn open(path: &Path) -> Result<Self, SafetensorsError> {
        let is_index = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".index.json"));
        if !is_index {
            return Ok(Self {
                shards: vec![SafetensorsFile::open(path)?],
            });
        }
        let text = crate::guard::read_text(path, crate::guard::Cap::JSON)
            .map_err(|e| SafetensorsError::new(path, format!("Cannot read: {}", e.message)))?;
        let index: ShardIndex = serde_json::from_str(&text)
            .map_err(|e| SafetensorsError::new(path, format!("Invalid shard index: {e}")))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut shard_names: Vec<&String> = index.weight_map.values().collect();
        shard_names.sort();
        shard_names.dedup();
        let mut shards = Vec::with_capacity(shard_names.len());
        for name in shard_names {
            if name.contains('/') || name.contains('\\') || name.starts_with("..") {
                return Err(SafetensorsError::new(
                    path,
                    format!("Shard name `{name}` leaves the model folder"),
                ));
            }
            shards.push(SafetensorsFile::open(&dir.join(name))?);
        }
        let sharded = Self { shards };
        for (tensor, shard) in &index.weight_map {
            let found = sharded
                .shards
                .iter()
                .find(|s| s.path().file_name().and_then(|n| n.to_str()) == Some(shard.as_str()))
                .is_some_and(|s| s.tensors().iter().any(|t| &t.name == tensor));
            if !found {
                return Err(SafetensorsError::new(
                    path,
                    format!(
                        "Index maps tensor `{tensor}` to shard `{shard}`, which does not hold it"
                    ),
                ));
            }
        }
        Ok(sharded)
    }

    /// Every tensor with the shard that holds it, shards in name order.
    pub fn tensors(&self) -> impl Iterator<Item = (&SafetensorsFile, &TensorEntry)> {
        self.shards
            .iter()
            .flat_map(|s| s.tensors().iter().map(move |t| (s, t)))
    }
}

/// A tensor to be written: its header entry; bytes follow in `write_tensor`.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl From<&TensorEntry> for TensorSpec {
    /// The same tensor declared again (rewriting a file with new metadata or data).
    fn from(t: &TensorEntry) -> Self {
        Self {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        }
    }
}

impl TensorSpec {
    /// Bytes this tensor occupies, or `None` on overflow / sub-byte remainder.
    pub fn n_bytes(&self) -> Option<usize> {
        let elems = self
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
        let bits = elems.checked_mul(self.dtype.bitsize())?;
        (bits % 8 == 0).then_some(bits / 8)
    }
}

/// Streams a safetensors file: header first (all sizes known up front), then
/// each tensor's bytes in declaration order, into a temp file that is renamed
/// into place by [`SafetensorsStream::finish`].
pub struct SafetensorsStream {
    file: AtomicFile,
    expected: Vec<(String, usize)>,
    next: usize,
}

impl SafetensorsStream {
    /// Writes the header for `tensors` (in this order) and `metadata`.
    ///
    /// The header is deterministic: `__metadata__` first, then tensors in the
    /// given order, padded with spaces to a multiple of 8 bytes so the data
    /// section starts aligned (as the reference writer does).
    pub fn create(
        path: &Path,
        tensors: &[TensorSpec],
        metadata: &BTreeMap<String, String>,
        overwrite: Overwrite,
    ) -> Result<Self, SafetensorsError> {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert(
                "__metadata__".into(),
                serde_json::to_value(metadata).expect("string map serializes"),
            );
        }
        let mut offset = 0usize;
        let mut expected = Vec::with_capacity(tensors.len());
        for spec in tensors {
            let n_bytes = spec.n_bytes().ok_or_else(|| {
                SafetensorsError::new(
                    path,
                    format!("Tensor `{}` has an impossible size", spec.name),
                )
            })?;
            if header.contains_key(&spec.name) {
                return Err(SafetensorsError::new(
                    path,
                    format!("Tensor `{}` is declared twice", spec.name),
                ));
            }
            header.insert(
                spec.name.clone(),
                serde_json::json!({
                    "dtype": spec.dtype.to_string(),
                    "shape": spec.shape,
                    "data_offsets": [offset, offset + n_bytes],
                }),
            );
            offset += n_bytes;
            expected.push((spec.name.clone(), n_bytes));
        }
        let mut json = serde_json::to_vec(&header).expect("JSON map serializes");
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let mut file = AtomicFile::create(path, overwrite)
            .map_err(|e| SafetensorsError::new(path, e.to_string()))?;
        let io = |e: std::io::Error| SafetensorsError::new(path, format!("Cannot write: {e}"));
        file.write_all(&(json.len() as u64).to_le_bytes())
            .map_err(io)?;
        file.write_all(&json).map_err(io)?;
        Ok(Self {
            file,
            expected,
            next: 0,
        })
    }

    /// Writes the next tensor's bytes; they must match its declared size.
    pub fn write_tensor(&mut self, bytes: &[u8]) -> Result<(), SafetensorsError> {
        let path = self.file.target().to_path_buf();
        let Some((name, n_bytes)) = self.expected.get(self.next) else {
            return Err(SafetensorsError::new(
                &path,
                "More tensors written than declared",
            ));
        };
        if bytes.len() != *n_bytes {
            return Err(SafetensorsError::new(
                &path,
                format!(
                    "Tensor `{name}` declared {n_bytes} bytes, got {}",
                    bytes.len()
                ),
            ));
        }
        self.file
            .write_all(bytes)
            .map_err(|e| SafetensorsError::new(&path, format!("Cannot write: {e}")))?;
        self.next += 1;
        Ok(())
    }

    /// Checks every tensor was written, syncs and renames into place.
    pub fn finish(self) -> Result<PathBuf, SafetensorsError> {
        let path = self.file.target().to_path_buf();
        if self.next != self.expected.len() {
            return Err(SafetensorsError::new(
                &path,
                format!(
                    "Only {} of {} tensors were written",
                    self.next,
                    self.expected.len()
                ),
            ));
        }
        self.file
            .commit()
            .map_err(|e| SafetensorsError::new(&path, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> PathBuf {
        let path = dir.join("m.safetensors");
        let specs = vec![
            TensorSpec {
                name: "b".into(),
                dtype: Dtype::F32,
                shape: vec![2, 2],
            },
            TensorSpec {
                name: "a".into(),
                dtype: Dtype::I8,
                shape: vec![3],
            },
        ];
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let mut w = SafetensorsStream::create(&path, &specs, &meta, Overwrite::Deny).unwrap();
        w.write_tensor(&[0u8; 16]).unwrap();
        w.write_tensor(&[1, 2, 3]).unwrap();
        w.finish().unwrap();
        path
    }

    #[test]
    fn writes_and_reads_back_in_declaration_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = SafetensorsFile::open(&sample(dir.path())).unwrap();
        let names: Vec<_> = file.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(file.data(&file.tensors()[1]), &[1, 2, 3]);
        assert_eq!(file.metadata()["format"], "pt");
        assert_eq!((8 + file.header_len()) % 8, 0);
    }

    #[test]
    fn refuses_to_replace_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let err = SafetensorsStream::create(&path, &[], &BTreeMap::new(), Overwrite::Deny)
            .err()
            .unwrap();
        assert!(err.to_string().contains("already exists"), "{err}");
    }

    #[test]
    fn rejects_header_longer_than_file() {
        let mut bytes = 1000u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let err = SafetensorsFile::from_bytes(Path::new("x.safetensors"), bytes).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("x.safetensors: Header length 1000"),
            "{err}"
        );
    }

    #[test]
    fn rejects_truncated_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = std::fs::read(sample(dir.path())).unwrap();
        bytes.pop();
        let err = SafetensorsFile::from_bytes(Path::new("t.safetensors"), bytes).unwrap_err();
        assert!(
            err.to_string().contains("does not end where the file ends"),
            "{err}"
        );
    }

    #[test]
    fn rejects_unknown_dtype() {
        let header = br#"{"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.push(0);
        let err = SafetensorsFile::from_bytes(Path::new("d.safetensors"), bytes).unwrap_err();
        assert!(err.to_string().contains("unknown variant `Q4`"), "{err}");
    }

    #[test]
    fn unfinished_stream_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("half.safetensors");
        let specs = vec![TensorSpec {
            name: "w".into(),
            dtype: Dtype::F32,
            shape: vec![4],
        }];
        let mut w =
            SafetensorsStream::create(&path, &specs, &BTreeMap::new(), Overwrite::Deny).unwrap();
        w.write_tensor(&[0u8; 16]).unwrap();
        drop(w);
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "temp file left behind"
        );
    }
}
