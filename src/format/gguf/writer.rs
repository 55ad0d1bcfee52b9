//! A streaming GGUF writer. The header (metadata and tensor infos with their
//! offsets) is written first, then each tensor's bytes in declaration order,
//! each padded to the alignment as llama.cpp's writer does, into a temp file
//! renamed into place on [`GgufStream::finish`].

use std::io::Write;
use std::path::{Path, PathBuf};

use super::reader::{GgufError, DEFAULT_ALIGNMENT};
use super::value::{MetaArray, MetaValue};
use super::GgmlType;
use crate::format::atomic::{AtomicFile, Overwrite};

/// A GGUF file being described: metadata and tensor infos.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    alignment: u64,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<(String, GgmlType, Vec<u64>, u64)>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty description with the default alignment (32).
    pub fn new() -> Self {
        Self {
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Adds (or replaces, keeping its position) a metadata value.
    /// `general.alignment` also sets the data alignment.
    pub fn add_kv(&mut self, key: &str, value: MetaValue) {
        if key == "general.alignment" {
            if let Some(a) = value.as_u64().filter(|a| a.is_power_of_two()) {
                self.alignment = a;
            }
        }
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// Declares a tensor (`dims` in ggml `ne` order, row length first).
    pub fn add_tensor_info(
        &mut self,
        name: &str,
        ggml_type: GgmlType,
        dims: &[u64],
    ) -> Result<(), String> {
        if self.tensors.iter().any(|t| t.0 == name) {
            return Err(format!("Tensor `{name}` is declared twice"));
        }
        let elems = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("Tensor `{name}`: dims overflow"))?;
        let bytes = ggml_type
            .bytes_for(elems)
            .filter(|_| {
                dims.first()
                    .is_some_and(|r| r % ggml_type.block_elems() == 0)
            })
            .ok_or_else(|| {
                format!(
                    "Tensor `{name}`: row {:?} is not a whole number of {ggml_type} blocks",
                    dims.first()
                )
            })?;
        self.tensors
            .push((name.to_string(), ggml_type, dims.to_vec(), bytes));
        Ok(())
    }

    /// The size the finished file will have.
    pub fn file_size(&self) -> u64 {
        let header = self.header_bytes().len() as u64;
        let mut size = header.div_ceil(self.alignment) * self.alignment;
        for (_, _, _, bytes) in &self.tensors {
            size += bytes.div_ceil(self.alignment) * self.alignment;
        }
        size
    }

    fn header_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut b, key);
            b.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut b, value);
        }
        let mut offset = 0u64;
        for (name, ty, dims, bytes) in &self.tensors {
            put_string(&mut b, name);
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&ty.id().to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            offset += bytes.div_ceil(self.alignment) * self.alignment;
        }
        b
    }

    /// Writes the header into a temp file beside `path`; tensor data follows
    /// through [`GgufStream::write_tensor`].
    pub fn create(&self, path: &Path, overwrite: Overwrite) -> Result<GgufStream, GgufError> {
        let err = |m: String| GgufError {
            path: path.to_path_buf(),
            message: m,
        };
        let mut file = AtomicFile::create(path, overwrite).map_err(|e| err(e.to_string()))?;
        let mut header = self.header_bytes();
        let padded = header.len().div_ceil(self.alignment as usize) * self.alignment as usize;
        header.resize(padded, 0);
        file.write_all(&header)
            .map_err(|e| err(format!("Cannot write: {e}")))?;
        Ok(GgufStream {
            file,
            alignment: self.alignment,
            expected: self.tensors.iter().map(|t| (t.0.clone(), t.3)).collect(),
            next: 0,
        })
    }
}

/// Tensor data being streamed into a GGUF file.
pub struct GgufStream {
    file: AtomicFile,
    alignment: u64,
    expected: Vec<(String, u64)>,
    next: usize,
}

impl GgufStream {
    fn err(&self, message: String) -> GgufError {
        GgufError {
            path: self.file.target().to_path_buf(),
            message,
        }
    }

    /// Writes the next declared tensor's bytes, then its alignment padding.
    pub fn write_tensor(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        let Some((name, n_bytes)) = self.expected.get(self.next).cloned() else {
            return Err(self.err("More tensors written than declared".into()));
        };
        if bytes.len() as u64 != n_bytes {
            return Err(self.err(format!(
                "Tensor `{name}` declared {n_bytes} bytes, got {}",
                bytes.len()
            )));
        }
        let pad = (n_bytes.div_ceil(self.alignment) * self.alignment - n_bytes) as usize;
        let result = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.write_all(&vec![0u8; pad]));
        result.map_err(|e| self.err(format!("Cannot write: {e}")))?;
        self.next += 1;
        Ok(())
    }

    /// Checks every tensor was written, syncs and renames into place.
    pub fn finish(self) -> Result<PathBuf, GgufError> {
        if self.next != self.expected.len() {
            return Err(self.err(format!(
                "Only {} of {} tensors were written",
                self.next,
                self.expected.len()
            )));
        }
        let path = self.file.target().to_path_buf();
        self.file.commit().map_err(|e| GgufError {
            path,
            message: e.to_string(),
        })
    }
}

fn put_string(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_value(b: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => b.push(*x),
        MetaValue::I8(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => b.push(u8::from(*x)),
        MetaValue::String(s) => put_string(b, s),
        MetaValue::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array(MetaArray { elem_type, values }) => {
            b.extend_from_slice(&elem_type.to_le_bytes());
            b.extend_from_slice(&(values.len() as u64).to_le_bytes());
            for v in values {
                put_value(b, v);
            }
        }
    }
}
