//! Reads the TFLite flatbuffers we write (and any model using only these
//! ops) back into a [`Graph`], every offset bounds-checked: a truncated or
//! hostile file is an error naming what is wrong, never a panic.

use super::graph::{ElemType, Graph, Node, Op, Quant, Tensor};
use super::schema::{self, field, op, slot};

/// Why a file is not a TFLite model we can read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReadError(pub String);

type Result<T> = std::result::Result<T, ReadError>;

fn bad<T>(what: impl Into<String>) -> Result<T> {
    Err(ReadError(what.into()))
}

#[derive(Clone, Copy)]
struct Buf<'a>(&'a [u8]);

impl<'a> Buf<'a> {
    fn bytes(self, at: usize, n: usize) -> Result<&'a [u8]> {
        at.checked_add(n)
            .and_then(|end| self.0.get(at..end))
            .map_or_else(
                || {
                    bad(format!(
                        "offset {at}+{n} is past the end ({} bytes)",
                        self.0.len()
                    ))
                },
                Ok,
            )
    }
    fn u16(self, at: usize) -> Result<u16> {
        let b = self.bytes(at, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(self, at: usize) -> Result<u32> {
        let b = self.bytes(at, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// The target of the uoffset stored at `at`.
    fn follow(self, at: usize) -> Result<usize> {
        Ok(at + self.u32(at)? as usize)
    }
    fn table(self, at: usize) -> Result<Table<'a>> {
        let soffset = self.u32(at)? as i32 as i64;
        let vt = at as i64 - soffset;
        if vt < 0 {
            return bad(format!(
                "table at {at} has its vtable before the file start"
            ));
        }
        let vt = vt as usize;
        let vt_len = self.u16(vt)? as usize;
        if vt_len < 4 || !vt_len.is_multiple_of(2) {
            return bad(format!("vtable at {vt} has length {vt_len}"));
        }
        self.bytes(vt, vt_len)?;
        Ok(Table {
            buf: self,
            at,
            vt,
            vt_len,
        })
    }
}

#[derive(Clone, Copy)]
struct Table<'a> {
    buf: Buf<'a>,
    at: usize,
    vt: usize,
    vt_len: usize,
}

impl<'a> Table<'a> {
    fn field(&self, slot_index: u16) -> Result<Option<usize>> {
        let voff = slot(slot_index) as usize;
        if voff + 2 > self.vt_len {
            return Ok(None);
        }
        let off = self.buf.u16(self.vt + voff)? as usize;
        Ok((off != 0).then_some(self.at + off))
    }
    fn scalar<const N: usize>(&self, slot_index: u16) -> Result<Option<[u8; N]>> {
        match self.field(slot_index)? {
            Some(at) => Ok(Some(self.buf.bytes(at, N)?.try_into().expect("N bytes"))),
            None => Ok(None),
        }
    }
    fn u8_or(&self, s: u16, default: u8) -> Result<u8> {
        Ok(self.scalar::<1>(s)?.map_or(default, |b| b[0]))
    }
    fn bool_or(&self, s: u16, default: bool) -> Result<bool> {
        Ok(self.u8_or(s, default as u8)? != 0)
    }
    fn i32_or(&self, s: u16, default: i32) -> Result<i32> {
        Ok(self.scalar::<4>(s)?.map_or(default, i32::from_le_bytes))
    }
    fn f32_or(&self, s: u16, default: f32) -> Result<f32> {
        Ok(self.scalar::<4>(s)?.map_or(default, f32::from_le_bytes))
    }
    fn sub_table(&self, s: u16) -> Result<Option<Table<'a>>> {
        match self.field(s)? {
            Some(at) => Ok(Some(self.buf.table(self.buf.follow(at)?)?)),
            None => Ok(None),
        }
    }
    /// (start of the elements, count) of a vector field.
    fn vector(&self, s: u16, elem: usize) -> Result<Option<(usize, usize)>> {
        let Some(at) = self.field(s)? else {
            return Ok(None);
        };
        let v = self.buf.follow(at)?;
        let n = self.buf.u32(v)? as usize;
        let len = n.checked_mul(elem).map_or_else(
            || bad(format!("vector at {v} of {n} elements overflows")),
            Ok,
        )?;
        self.buf.bytes(v + 4, len)?;
        Ok(Some((v + 4, n)))
    }
    fn bytes(&self, s: u16) -> Result<&'a [u8]> {
        match self.vector(s, 1)? {
            Some((at, n)) => self.buf.bytes(at, n),
            None => Ok(&[]),
        }
    }
    fn i32s(&self, s: u16) -> Result<Vec<i32>> {
        Ok(self
            .bytes_of(s, 4)?
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().expect("4")))
            .collect())
    }
    fn f32s(&self, s: u16) -> Result<Vec<f32>> {
        Ok(self
            .bytes_of(s, 4)?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4")))
            .collect())
    }
    fn i64s(&self, s: u16) -> Result<Vec<i64>> {
        Ok(self
            .bytes_of(s, 8)?
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8")))
            .collect())
    }
    fn bytes_of(&self, s: u16, elem: usize) -> Result<&'a [u8]> {
        match self.vector(s, elem)? {
            Some((at, n)) => self.buf.bytes(at, n * elem),
            None => Ok(&[]),
        }
    }
    fn tables(&self, s: u16) -> Result<Vec<Table<'a>>> {
        let Some((at, n)) = self.vector(s, 4)? else {
            return Ok(Vec::new());
        };
        (0..n)
            .map(|i| self.buf.table(self.buf.follow(at + 4 * i)?))
            .collect()
    }
    fn string(&self, s: u16) -> Result<String> {
        Ok(String::from_utf8_lossy(self.bytes(s)?).into_owned())
    }
}

/// Parses a TFLite model with one subgraph of the ops in [`Op`].
pub fn read(bytes: &[u8]) -> Result<Graph> {
    let buf = Buf(bytes);
    if buf.bytes(4, 4)? != schema::FILE_IDENTIFIER.as_bytes() {
        return bad("not a TFLite file (no TFL3 identifier at byte 4)");
    }
    let model = buf.table(buf.follow(0)?)?;
    let version = model
        .scalar::<4>(field::model::VERSION)?
        .map_or(0, u32::from_le_bytes);
    if version != schema::SCHEMA_VERSION {
        return bad(format!(
            "schema version {version}, expected {}",
            schema::SCHEMA_VERSION
        ));
    }
    let buffers: Vec<&[u8]> = model
        .tables(field::model::BUFFERS)?
        .iter()
        .map(|b| b.bytes(field::buffer::DATA))
        .collect::<Result<_>>()?;
    let codes: Vec<i32> = model
        .tables(field::model::OPERATOR_CODES)?
        .iter()
        .map(|c| {
            let code = c.i32_or(field::operator_code::BUILTIN_CODE, 0)?;
            let old = c.u8_or(field::operator_code::DEPRECATED_BUILTIN_CODE, 0)? as i8 as i32;
            Ok(code.max(old))
        })
        .collect::<Result<_>>()?;
    let subgraphs = model.tables(field::model::SUBGRAPHS)?;
    let [sg] = subgraphs.as_slice() else {
        return bad(format!(
            "{} subgraphs; we read models with exactly one",
            subgraphs.len()
        ));
    };
    let tensors = sg
        .tables(field::subgraph::TENSORS)?
        .iter()
        .enumerate()
        .map(|(i, t)| {
            read_tensor(t, &buffers).map_err(|e| ReadError(format!("tensor {i}: {}", e.0)))
        })
        .collect::<Result<Vec<_>>>()?;
    let index = |v: Vec<i32>, what: &str| -> Result<Vec<usize>> {
        v.into_iter()
            .map(|i| match usize::try_from(i) {
                Ok(i) if i < tensors.len() => Ok(i),
                _ => bad(format!("{what} names tensor {i} of {}", tensors.len())),
            })
            .collect()
    };
    let nodes = sg
        .tables(field::subgraph::OPERATORS)?
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let code_index = o
                .scalar::<4>(field::operator::OPCODE_INDEX)?
                .map_or(0, u32::from_le_bytes) as usize;
            let Some(&code) = codes.get(code_index) else {
                return bad(format!(
                    "operator {i} names operator code {code_index} of {}",
                    codes.len()
                ));
            };
            let opts = o.sub_table(field::operator::BUILTIN_OPTIONS)?;
            Ok(Node {
                op: read_op(code, opts.as_ref())
                    .map_err(|e| ReadError(format!("operator {i}: {}", e.0)))?,
                inputs: index(o.i32s(field::operator::INPUTS)?, &format!("operator {i}"))?,
                outputs: index(o.i32s(field::operator::OUTPUTS)?, &format!("operator {i}"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Graph {
        inputs: index(sg.i32s(field::subgraph::INPUTS)?, "subgraph inputs")?,
        outputs: index(sg.i32s(field::subgraph::OUTPUTS)?, "subgraph outputs")?,
        tensors,
        nodes,
        description: model.string(field::model::DESCRIPTION)?,
    })
}

fn read_tensor(t: &Table, buffers: &[&[u8]]) -> Result<Tensor> {
    let code = t.u8_or(field::tensor::TYPE, 0)? as i8;
    let Some(ty) = ElemType::from_code(code) else {
        return bad(format!(
            "tensor type {code} is not one we read (float32, float16, int32, int8)"
        ));
    };
    let shape = t.i32s(field::tensor::SHAPE)?;
    if shape.iter().any(|&d| d < 0) {
        return bad(format!("shape {shape:?} has a negative dimension"));
    }
    let buffer = t
        .scalar::<4>(field::tensor::BUFFER)?
        .map_or(0, u32::from_le_bytes) as usize;
    let Some(&bytes) = buffers.get(buffer) else {
        return bad(format!("buffer {buffer} of {}", buffers.len()));
    };
    let name = t.string(field::tensor::NAME)?;
    let data = (!bytes.is_empty()).then(|| bytes.to_vec());
    let elements = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d as usize));
    if let Some(d) = &data {
        if elements.and_then(|e| e.checked_mul(ty.size())) != Some(d.len()) {
            return bad(format!(
                "`{name}`: {} bytes of data for shape {shape:?} of {}",
                d.len(),
                ty.name()
            ));
        }
    }
    let quant = match t.sub_table(field::tensor::QUANTIZATION)? {
        Some(q) => {
            let scale = q.f32s(field::quantization::SCALE)?;
            let zero_point = q.i64s(field::quantization::ZERO_POINT)?;
            let axis = q.i32_or(field::quantization::QUANTIZED_DIMENSION, 0)?;
            if scale.is_empty() {
                None
            } else {
                if zero_point.len() != scale.len() {
                    return bad(format!(
                        "`{name}`: {} scales but {} zero points",
                        scale.len(),
                        zero_point.len()
                    ));
                }
                if scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                    return bad(format!(
                        "`{name}`: a quantization scale is not a positive number"
                    ));
                }
                if scale.len() > 1
                    && shape.get(axis as usize).map(|&d| d as usize) != Some(scale.len())
                {
                    return bad(format!(
                        "`{name}`: {} scales along axis {axis} of shape {shape:?}",
                        scale.len()
                    ));
                }
                Some(Quant {
                    scale,
                    zero_point,
                    axis,
                })
            }
        }
        None => None,
    };
    Ok(Tensor {
        name,
        shape,
        ty,
        data,
        quant,
    })
}

fn read_op(code: i32, opts: Option<&Table>) -> Result<Op> {
    let bool_opt = |s: u16| opts.map_or(Ok(false), |o| o.bool_or(s, false));
    Ok(match code {
        op::ADD => Op::Add,
        op::SUB => Op::Sub,
        op::MUL => Op::Mul,
        op::SQUARED_DIFFERENCE => Op::SquaredDifference,
        op::FULLY_CONNECTED => {
            if bool_opt(field::fully_connected::KEEP_NUM_DIMS)? {
                return bad("FULLY_CONNECTED with keep_num_dims is not supported");
            }
            Op::FullyConnected
        }
        op::BATCH_MATMUL => {
            if bool_opt(field::batch_matmul::ADJ_X)? {
                return bad("BATCH_MATMUL with adj_x is not supported");
            }
            Op::BatchMatMul {
                adj_y: bool_opt(field::batch_matmul::ADJ_Y)?,
            }
        }
        op::RESHAPE => Op::Reshape {
            new_shape: opts.map_or(Ok(Vec::new()), |o| o.i32s(field::reshape::NEW_SHAPE))?,
        },
        op::TRANSPOSE => Op::Transpose,
        op::SOFTMAX => Op::Softmax {
            beta: opts.map_or(Ok(1.0), |o| o.f32_or(field::softmax::BETA, 0.0))?,
        },
        op::MEAN => Op::Mean {
            keep_dims: bool_opt(field::reducer::KEEP_DIMS)?,
        },
        op::RSQRT => Op::Rsqrt,
        op::GELU => Op::Gelu {
            approximate: bool_opt(field::gelu::APPROXIMATE)?,
        },
        op::GATHER => {
            let axis = opts.map_or(Ok(0), |o| o.i32_or(field::gather::AXIS, 0))?;
            if axis != 0 {
                return bad(format!("GATHER on axis {axis} is not supported"));
            }
            Op::Gather
        }
        op::L2_NORMALIZATION => Op::L2Norm,
        op::DEQUANTIZE => Op::Dequantize,
        op::QUANTIZE => Op::Quantize,
        other => {
            return bad(format!(
                "builtin operator {other} is not one edgeforge evaluates"
            ))
        }
    })
}
