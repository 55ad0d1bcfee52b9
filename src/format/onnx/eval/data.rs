//! Tensor element data as the evaluator holds it, and the generic access
//! the ops use to handle every element type with one function.

use crate::format::onnx::reader;

/// Element data of a tensor, in its ONNX element type, but for float16:
/// a float16 tensor is held as `F32` values on the float16 grid (widening
/// is exact, as the reader decodes float16 initializers), and a Cast to
/// float16 rounds to that grid. So float16 inputs (a decoder's KV cache) are
/// passed as `F32`, and float16 outputs come back as `F32`.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

impl Data {
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::I8(v) => v.len(),
            Data::U8(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ONNX name of the element type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Data::F32(_) => "float",
            Data::F64(_) => "double",
            Data::I64(_) => "int64",
            Data::I8(_) => "int8",
            Data::U8(_) => "uint8",
            Data::Bool(_) => "bool",
        }
    }
}

impl From<reader::Data> for Data {
    fn from(d: reader::Data) -> Self {
        match d {
            reader::Data::F32(v) => Data::F32(v),
            reader::Data::I64(v) => Data::I64(v),
            reader::Data::I8(v) => Data::I8(v),
            reader::Data::U8(v) => Data::U8(v),
        }
    }
}

/// An element type: how to view `Data` as a slice of it and wrap a vector
/// of it back, so shape ops (Concat, Gather, Transpose) are written once.
pub(super) trait Elem: Copy + 'static {
    fn slice(d: &Data) -> Option<&[Self]>;
    fn wrap(v: Vec<Self>) -> Data;
}

macro_rules! elem {
    ($t:ty, $variant:ident) => {
        impl Elem for $t {
            fn slice(d: &Data) -> Option<&[Self]> {
                match d {
                    Data::$variant(v) => Some(v),
                    _ => None,
                }
            }

            fn wrap(v: Vec<Self>) -> Data {
                Data::$variant(v)
            }
        }
    };
}

elem!(f32, F32);
elem!(f64, F64);
elem!(i64, I64);
elem!(i8, I8);
elem!(u8, U8);
elem!(bool, Bool);

/// Evaluates `$body` with the type alias `$t` bound to the element type of
/// `$data` (a generic function called once per variant).
macro_rules! by_type {
    ($data:expr, $t:ident => $body:expr) => {
        match $data {
            Data::F32(_) => {
                type $t = f32;
                $body
            }
            Data::F64(_) => {
                type $t = f64;
                $body
            }
            Data::I64(_) => {
                type $t = i64;
                $body
            }
            Data::I8(_) => {
                type $t = i8;
                $body
            }
            Data::U8(_) => {
                type $t = u8;
                $body
            }
            Data::Bool(_) => {
                type $t = bool;
                $body
            }
        }
    };
}
pub(super) use by_type;
