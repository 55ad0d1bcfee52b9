//! GGUF metadata values: every value type the spec defines, arrays keeping
//! their element type (even when empty) so a writer can reproduce them.

use std::fmt::Write;

/// GGUF value type ids.
pub mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A typed array: the element type id and the values.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaArray {
    pub elem_type: u32,
    pub values: Vec<MetaValue>,
}

impl MetaArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the array is empty.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl MetaValue {
    /// The GGUF value type id.
    pub fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => type_id::U8,
            MetaValue::I8(_) => type_id::I8,
            MetaValue::U16(_) => type_id::U16,
            MetaValue::I16(_) => type_id::I16,
            MetaValue::U32(_) => type_id::U32,
            MetaValue::I32(_) => type_id::I32,
            MetaValue::F32(_) => type_id::F32,
            MetaValue::Bool(_) => type_id::BOOL,
            MetaValue::String(_) => type_id::STRING,
            MetaValue::Array(_) => type_id::ARRAY,
            MetaValue::U64(_) => type_id::U64,
            MetaValue::I64(_) => type_id::I64,
            MetaValue::F64(_) => type_id::F64,
        }
    }

    /// An unsigned integer of any width (negative values excluded).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A float of either width, or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// A display form, long strings and arrays cut to about `max_chars`.
    pub fn display_summary(&self, max_chars: usize) -> String {
        let text = match self {
            MetaValue::Array(a) if a.len() > 8 => {
                return format!("[{} × {}]", a.len(), type_name(a.elem_type));
            }
            MetaValue::Array(a) => {
                let mut s = String::from("[");
                for (i, v) in a.values.iter().enumerate() {
                    if i > 0 {
                        s.push_str(", ");
                    }
                    s.push_str(&v.display_summary(max_chars));
                }
                s.push(']');
                s
            }
            MetaValue::String(s) => s.clone(),
            MetaValue::Bool(b) => b.to_string(),
            MetaValue::F32(v) => v.to_string(),
            MetaValue::F64(v) => v.to_string(),
            MetaValue::I8(v) => v.to_string(),
            MetaValue::I16(v) => v.to_string(),
            MetaValue::I32(v) => v.to_string(),
            MetaValue::I64(v) => v.to_string(),
            MetaValue::U8(v) => v.to_string(),
            MetaValue::U16(v) => v.to_string(),
            MetaValue::U32(v) => v.to_string(),
            MetaValue::U64(v) => v.to_string(),
        };
        if text.chars().count() > max_chars {
            let mut cut: String = text.chars().take(max_chars).collect();
            let _ = write!(cut, "… ({} chars)", text.chars().count());
            cut
        } else {
            text
        }
    }
}

/// The spec's name for a value type id.
pub fn type_name(id: u32) -> &'static str {
    match id {
        type_id::U8 => "u8",
        type_id::I8 => "i8",
        type_id::U16 => "u16",
        type_id::I16 => "i16",
        type_id::U32 => "u32",
        type_id::I32 => "i32",
        type_id::F32 => "f32",
        type_id::BOOL => "bool",
        type_id::STRING => "string",
        type_id::ARRAY => "array",
        type_id::U64 => "u64",
        type_id::I64 => "i64",
        type_id::F64 => "f64",
        _ => "unknown",
    }
}
