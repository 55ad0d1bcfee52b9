//! Reading an ONNX file back: the model, its metadata, and initializers as
//! typed values (raw little-endian bytes or the typed repeated fields).

use std::path::{Path, PathBuf};

use half::f16;

use super::proto::{data_type, ModelProto, TensorProto};
use super::OnnxError;

/// Element data of a tensor, in its stored type (float16 widened to f32,
/// which is exact).
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
    I8(Vec<i8>),
    U8(Vec<u8>),
}

impl Data {
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::I8(v) => v.len(),
            Data::U8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Data::F32(_) => "float",
            Data::I64(_) => "int64",
            Data::I8(_) => "int8",
            Data::U8(_) => "uint8",
        }
    }
}

/// An opened ONNX file.
pub struct OnnxFile {
    pub path: PathBuf,
    pub model: ModelProto,
}

impl OnnxFile {
    pub fn open(path: &Path) -> Result<Self, OnnxError> {
        let bytes = fs_err::read(path).map_err(|e| OnnxError::Decode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_bytes(&bytes, path)
    }

    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, OnnxError> {
        let model = super::decode(bytes, path)?;
        if model.graph.is_none() {
            return Err(OnnxError::Decode {
                path: path.to_path_buf(),
                message: "the model has no graph".into(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            model,
        })
    }

    /// A `metadata_props` value.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.model
            .metadata_props
            .iter()
            .find(|p| p.key.as_deref() == Some(key))
            .and_then(|p| p.value.as_deref())
    }

    pub fn initializer(&self, name: &str) -> Option<&TensorProto> {
        self.model
            .graph
            .as_ref()?
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(name))
    }
}

/// A tensor's shape and data, checked against each other.
pub fn tensor_data(t: &TensorProto, path: &Path) -> Result<(Vec<usize>, Data), OnnxError> {
    let name = t.name.clone().unwrap_or_default();
    let bad = |message: String| OnnxError::Tensor {
        path: path.to_path_buf(),
        name: name.clone(),
        message,
    };
    if t.data_location.unwrap_or(0) != 0 {
        return Err(bad("external data is not supported".into()));
    }
    let dims = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let n: usize = dims.iter().product();
    let raw = t.raw_data.as_deref();
    let ty = t.data_type.unwrap_or(0);
    let data = match (ty, raw) {
        (data_type::FLOAT, Some(b)) => Data::F32(
            chunks(b, 4, n, &bad)?
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        (data_type::FLOAT, None) => Data::F32(t.float_data.clone()),
        (data_type::FLOAT16, Some(b)) => Data::F32(
            chunks(b, 2, n, &bad)?
                .map(|c| f16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect(),
        ),
        (data_type::FLOAT16, None) => Data::F32(
            t.int32_data
                .iter()
                .map(|&v| f16::from_bits(v as u16).to_f32())
                .collect(),
        ),
        (data_type::INT64, Some(b)) => Data::I64(
            chunks(b, 8, n, &bad)?
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        (data_type::INT64, None) => Data::I64(t.int64_data.clone()),
        (data_type::INT8, Some(b)) => {
            Data::I8(chunks(b, 1, n, &bad)?.map(|c| c[0] as i8).collect())
        }
        (data_type::INT8, None) => Data::I8(t.int32_data.iter().map(|&v| v as i8).collect()),
        (data_type::UINT8, Some(b)) => Data::U8(chunks(b, 1, n, &bad)?.map(|c| c[0]).collect()),
        (data_type::UINT8, None) => Data::U8(t.int32_data.iter().map(|&v| v as u8).collect()),
        (other, _) => return Err(bad(format!("data type {other} is not supported"))),
    };
    if data.len() != n {
        return Err(bad(format!(
            "{} values for shape {dims:?} ({n} elements)",
            data.len()
        )));
    }
    Ok((dims, data))
}

fn chunks<'b>(
    bytes: &'b [u8],
    width: usize,
    n: usize,
    bad: &dyn Fn(String) -> OnnxError,
) -> Result<std::slice::ChunksExact<'b, u8>, OnnxError> {
    if bytes.len() != n * width {
        return Err(bad(format!(
            "{} bytes of raw data for {n} elements of {width} bytes",
            bytes.len()
        )));
    }
    Ok(bytes.chunks_exact(width))
}

/// Name of a data type code, for messages.
pub fn type_name(t: i32) -> &'static str {
    data_type::name(t)
}
