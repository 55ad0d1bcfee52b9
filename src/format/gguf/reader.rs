//! A bounds-checked GGUF reader over an mmap. Every count and length read
//! from the file is checked against the bytes left before anything is
//! allocated, so a hostile file gets an error, never a panic or a huge
//! allocation.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::value::{type_id, MetaArray, MetaValue};
use super::GgmlType;

/// GGML's limit on tensor dimensions.
pub const MAX_DIMS: u32 = 4;
/// Longest string we accept (a chat template or a tokenizer entry is far less).
pub const MAX_STRING_BYTES: u64 = 64 << 20;
/// Deepest array nesting we accept.
const MAX_ARRAY_DEPTH: u32 = 4;
/// Alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A GGUF file that could not be read; one line naming file, offset, problem.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct GgufError {
    pub path: PathBuf,
    pub message: String,
}

/// One tensor's info entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml `ne` order: `dims[0]` is the contiguous row length.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset relative to the data section.
    pub offset: u64,
    pub n_elems: u64,
    pub n_bytes: u64,
}

#[derive(Debug)]
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file; tensor data stays in the map.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    header: Header,
}

/// Everything before the data section.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub alignment: u64,
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorInfo>,
    pub data_offset: u64,
}

impl GgufFile {
    /// Maps and parses a file.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let err = |m: String| GgufError {
            path: path.to_path_buf(),
            message: m,
        };
        crate::guard::regular_file(path).map_err(|e| err(e.message))?;
        let file = std::fs::File::open(path).map_err(|e| err(format!("Cannot open: {e}")))?;
        // SAFETY: read-only map; a concurrent truncation is the limit of any mmap reader.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| err(format!("Cannot map: {e}")))?;
        let header = parse(path, &map)?;
        Ok(Self {
            path: path.to_path_buf(),
            bytes: Bytes::Mapped(map),
            header,
        })
    }

    /// Parses an in-memory file; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, GgufError> {
        let header = parse(path, &bytes)?;
        Ok(Self {
            path: path.to_path_buf(),
            bytes: Bytes::Owned(bytes),
            header,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }
    /// Data alignment in bytes.
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }
    /// Key/value metadata in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.header.metadata
    }
    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }
    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }
    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.header
            .metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
    /// A string value by key.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }
    /// An integer value of any width by key.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }
    /// A float (or integer) value by key.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(MetaValue::as_f64)
    }
    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
    /// A tensor info by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.iter().find(|t| t.name == name)
    }
    /// A tensor's bytes (zero copy; bounds were checked at parse time).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.header.data_offset + info.offset) as usize;
        &self.bytes[start..start + info.n_bytes as usize]
    }
}

/// Validates a whole file's bytes without keeping them (fuzzing).
pub fn validate(path: &Path, bytes: &[u8]) -> Result<Header, GgufError> {
    parse(path, bytes)
}

struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn fail<T>(&self, message: String) -> Result<T, GgufError> {
        Err(GgufError {
            path: self.path.to_path_buf(),
            message: format!("at byte {}: {message}", self.pos),
        })
    }

    fn left(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        if (n as u64) > self.left() {
            return self.fail(format!(
                "Truncated: {what} needs {n} bytes, {} left",
                self.left()
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        Ok(self
            .take(N, what)?
            .try_into()
            .expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        if len > MAX_STRING_BYTES || len > self.left() {
            return self.fail(format!(
                "{what}: string length {len} exceeds the {} bytes left",
                self.left()
            ));
        }
        let raw = self.take(len as usize, what)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => self.fail(format!("{what}: invalid UTF-8: {e}")),
        }
    }

    /// Smallest encoded size of one value of `ty`, to bound counts.
    fn min_size(ty: u32) -> u64 {
        match ty {
            type_id::U8 | type_id::I8 | type_id::BOOL => 1,
            type_id::U16 | type_id::I16 => 2,
            type_id::U32 | type_id::I32 | type_id::F32 => 4,
            type_id::U64 | type_id::I64 | type_id::F64 | type_id::STRING => 8,
            _ => 12, // array: type + count
        }
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<MetaValue, GgufError> {
        Ok(match ty {
            type_id::U8 => MetaValue::U8(self.array::<1>(key)?[0]),
            type_id::I8 => MetaValue::I8(i8::from_le_bytes(self.array(key)?)),
            type_id::U16 => MetaValue::U16(u16::from_le_bytes(self.array(key)?)),
            type_id::I16 => MetaValue::I16(i16::from_le_bytes(self.array(key)?)),
            type_id::U32 => MetaValue::U32(self.u32(key)?),
            type_id::I32 => MetaValue::I32(i32::from_le_bytes(self.array(key)?)),
            type_id::F32 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            type_id::BOOL => match self.array::<1>(key)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return self.fail(format!("`{key}`: bool byte {b} is neither 0 nor 1")),
            },
            type_id::STRING => MetaValue::String(self.string(key)?),
            type_id::U64 => MetaValue::U64(self.u64(key)?),
            type_id::I64 => MetaValue::I64(i64::from_le_bytes(self.array(key)?)),
            type_id::F64 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            type_id::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return self.fail(format!(
                        "`{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    ));
                }
                let elem_type = self.u32(key)?;
                if elem_type > type_id::F64 {
                    return self.fail(format!("`{key}`: unknown array element type {elem_type}"));
                }
                let count = self.u64(key)?;
                if count.saturating_mul(Self::min_size(elem_type)) > self.left() {
                    return self.fail(format!(
                        "`{key}`: array of {count} elements cannot fit in the {} bytes left",
                        self.left()
                    ));
                }
                let mut values = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    values.push(self.value(elem_type, key, depth + 1)?);
                }
                MetaValue::Array(MetaArray { elem_type, values })
            }
            other => return self.fail(format!("`{key}`: unknown value type {other}")),
        })
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Header, GgufError> {
    let mut c = Cursor {
        path,
        bytes,
        pos: 0,
    };
    if c.take(4, "magic")? != b"GGUF" {
        c.pos = 0;
        return c.fail("Not a GGUF file (magic is not `GGUF`)".into());
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return c.fail(format!(
            "Unsupported GGUF version {version} (2 and 3 are read)"
        ));
    }
    let tensor_count = c.u64("tensor count")?;
    let kv_count = c.u64("metadata count")?;
    // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a
    // tensor info at least 8 + 4 + 8 + 4 + 8.
    if kv_count.saturating_mul(13) > c.left() {
        return c.fail(format!(
            "Metadata count {kv_count} cannot fit in the {} bytes left",
            c.left()
        ));
    }
    if tensor_count.saturating_mul(32) > c.left() {
        return c.fail(format!(
            "Tensor count {tensor_count} cannot fit in the {} bytes left",
            c.left()
        ));
    }
    let mut metadata = Vec::with_capacity(kv_count as usize);
    let mut keys = HashSet::new();
    for _ in 0..kv_count {
        let key = c.string("metadata key")?;
        if !keys.insert(key.clone()) {
            return c.fail(format!("Metadata key `{key}` appears twice"));
        }
        let ty = c.u32(&key)?;
        let value = c.value(ty, &key, 0)?;
        metadata.push((key, value));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, MetaValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
        Some((_, v)) => {
            return c.fail(format!(
                "`general.alignment` must be a power-of-two u32, got {v:?}"
            ))
        }
    };
    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut names = HashSet::new();
    for _ in 0..tensor_count {
        let name = c.string("tensor name")?;
        if !names.insert(name.clone()) {
            return c.fail(format!("Tensor `{name}` appears twice"));
        }
        let n_dims = c.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return c.fail(format!(
                "Tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&name)?);
        }
        let n_elems = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let Some(n_elems) = n_elems.filter(|_| dims.iter().all(|&d| d > 0)) else {
            return c.fail(format!(
                "Tensor `{name}` has impossible dimensions {dims:?}"
            ));
        };
        let type_id = c.u32(&name)?;
        let Some(ggml_type) = GgmlType::from_id(type_id) else {
            return c.fail(format!(
                "Tensor `{name}` has unknown ggml type id {type_id}"
            ));
        };
        if dims[0] % ggml_type.block_elems() != 0 {
            return c.fail(format!(
                "Tensor `{name}`: row length {} is not a multiple of {ggml_type}'s block of {}",
                dims[0],
                ggml_type.block_elems()
            ));
        }
        let Some(n_bytes) = ggml_type.bytes_for(n_elems) else {
            return c.fail(format!(
                "Tensor `{name}`: size of {n_elems} {ggml_type} elements overflows"
            ));
        };
        let offset = c.u64(&name)?;
        if offset % alignment != 0 {
            return c.fail(format!(
                "Tensor `{name}`: offset {offset} is not aligned to {alignment}"
            ));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_elems,
            n_bytes,
        });
    }
    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;
    if data_offset > file_len && !tensors.is_empty() {
        return c.fail(format!(
            "Data section at {data_offset} starts past the end of the file ({file_len} bytes)"
        ));
    }
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(tensors.len());
    for t in &tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => spans.push((start, end, &t.name)),
            _ => {
                return Err(GgufError {
                    path: path.to_path_buf(),
                    message: format!(
                        "Tensor `{}` data [{}, +{}) lies outside the file ({file_len} bytes)",
                        t.name,
                        data_offset.saturating_add(t.offset),
                        t.n_bytes
                    ),
                })
            }
        }
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(GgufError {
                path: path.to_path_buf(),
                message: format!("Tensors `{}` and `{}` overlap", pair[0].2, pair[1].2),
            });
        }
    }
    Ok(Header {
        version,
        alignment,
        metadata,
        tensors,
        data_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(tensor_count: u64, kv_count: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&tensor_count.to_le_bytes());
        b.extend_from_slice(&kv_count.to_le_bytes());
        b
    }

    fn err(bytes: Vec<u8>) -> String {
        GgufFile::from_bytes(Path::new("bad.gguf"), bytes)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn rejects_wrong_magic_and_version() {
        assert!(err(b"GGML".to_vec()).contains("Not a GGUF file"));
        let mut b = header(0, 0);
        b[4] = 1;
        assert!(err(b).contains("Unsupported GGUF version 1"));
    }

    #[test]
    fn rejects_counts_larger_than_the_file() {
        assert!(err(header(u64::MAX, 0)).contains("Tensor count 18446744073709551615 cannot fit"));
        assert!(err(header(0, 1 << 40)).contains("Metadata count"));
    }

    #[test]
    fn rejects_string_length_past_the_end() {
        let mut b = header(0, 1);
        b.extend_from_slice(&1000u64.to_le_bytes());
        b.extend_from_slice(&[b'a'; 20]);
        let e = err(b);
        assert!(
            e.starts_with("bad.gguf: at byte 32: metadata key: string length 1000"),
            "{e}"
        );
    }

    #[test]
    fn rejects_bad_utf8_key() {
        let mut b = header(0, 1);
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&[0xff, 0xfe]);
        b.extend_from_slice(&[0; 20]);
        assert!(err(b).contains("invalid UTF-8"));
    }

    fn kv_array(b: &mut Vec<u8>, elem_type: u32, count: u64) {
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b'a');
        b.extend_from_slice(&type_id::ARRAY.to_le_bytes());
        b.extend_from_slice(&elem_type.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
    }

    #[test]
    fn rejects_absurd_array_count_without_allocating() {
        let mut b = header(0, 1);
        kv_array(&mut b, type_id::U64, u64::MAX / 2);
        assert!(err(b).contains("cannot fit"));
    }

    fn tensor(b: &mut Vec<u8>, name: &str, dims: &[u64], ty: u32, offset: u64) {
        b.extend_from_slice(&(name.len() as u64).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
    }

    #[test]
    fn rejects_tensor_problems() {
        let mut b = header(1, 0);
        tensor(&mut b, "w", &[4, 4], 0, 0);
        b.resize(b.len().div_ceil(32) * 32, 0);
        let e = err(b);
        assert!(
            e.contains("Tensor `w` data") && e.contains("lies outside the file"),
            "{e}"
        );

        let mut b = header(1, 0);
        tensor(&mut b, "w", &[1 << 40, 1 << 40], 0, 0);
        assert!(err(b).contains("impossible dimensions"));

        let mut b = header(1, 0);
        tensor(&mut b, "w", &[30], 2, 0);
        assert!(err(b).contains("not a multiple of Q4_0's block of 32"));

        let mut b = header(1, 0);
        tensor(&mut b, "w", &[4], 99, 0);
        assert!(err(b).contains("unknown ggml type id 99"));

        let mut b = header(1, 0);
        tensor(&mut b, "w", &[4], 0, 3);
        assert!(err(b).contains("not aligned"));

        let mut b = header(2, 0);
        tensor(&mut b, "a", &[16], 0, 0);
        tensor(&mut b, "b", &[16], 0, 32);
        b.resize(256, 0);
        assert!(err(b).contains("overlap"));
    }

    #[test]
    fn reads_a_minimal_valid_file() {
        let mut b = header(1, 1);
        b.extend_from_slice(&3u64.to_le_bytes());
        b.extend_from_slice(b"k.x");
        b.extend_from_slice(&type_id::U32.to_le_bytes());
        b.extend_from_slice(&7u32.to_le_bytes());
        tensor(&mut b, "w", &[2], 0, 0);
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend_from_slice(&1f32.to_le_bytes());
        b.extend_from_slice(&2f32.to_le_bytes());
        let f = GgufFile::from_bytes(Path::new("ok.gguf"), b).unwrap();
        assert_eq!(f.get_u64("k.x"), Some(7));
        let t = &f.tensors()[0];
        assert_eq!(
            f.tensor_data(t),
            [1f32.to_le_bytes(), 2f32.to_le_bytes()].concat()
        );
    }
}
