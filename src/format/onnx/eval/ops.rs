//! The ops the evaluator knows, with ONNX's semantics (opset 17, and
//! onnxruntime's `MatMulNBits`): the dispatch by op name, the shape and
//! data-movement ops, and the normalisations. Elementwise ops live in
//! `elementwise`, reductions in `reduce`, products in `linalg`, QDQ in `qdq`.

use std::sync::Arc;

use super::data::{by_type, Data, Elem};
use super::elementwise::{self as ew, Arith, Cmp, Logic};
use super::linalg::{self, Dequantized};
use super::qdq;
use super::reduce::{self, Reduce};
use super::{attr, Value};
use crate::format::onnx::proto::{AttributeProto, NodeProto};
use crate::format::onnx::MS_DOMAIN;

/// What an op sees: its node, resolved inputs (`None`: absent, or not
/// known yet when preparing) and what was prepared for it.
pub(super) struct Ctx<'a> {
    pub node: &'a NodeProto,
    pub args: &'a [Option<Arc<Value>>],
    pub attrs: &'a [AttributeProto],
    pub prepared: Option<&'a Dequantized>,
}

pub(super) type R<T> = Result<T, String>;

impl Ctx<'_> {
    pub fn arg(&self, i: usize) -> R<&Value> {
        self.args
            .get(i)
            .and_then(|a| a.as_deref())
            .ok_or_else(|| format!("input {i} is missing"))
    }

    pub fn opt(&self, i: usize) -> Option<&Value> {
        self.args.get(i).and_then(|a| a.as_deref())
    }

    pub fn f32(&self, i: usize) -> R<(&[usize], &[f32])> {
        let v = self.arg(i)?;
        match &v.data {
            Data::F32(d) => Ok((&v.shape, d)),
            other => Err(format!(
                "input {i} is {}, expected float",
                other.type_name()
            )),
        }
    }

    pub fn i64s(&self, i: usize) -> R<&[i64]> {
        match &self.arg(i)?.data {
            Data::I64(d) => Ok(d),
            other => Err(format!(
                "input {i} is {}, expected int64",
                other.type_name()
            )),
        }
    }

    pub fn int(&self, name: &str, default: i64) -> i64 {
        attr(self.attrs, name).and_then(|a| a.i).unwrap_or(default)
    }

    pub fn float(&self, name: &str, default: f32) -> f32 {
        attr(self.attrs, name).and_then(|a| a.f).unwrap_or(default)
    }

    pub fn ints(&self, name: &str) -> Option<&[i64]> {
        attr(self.attrs, name).map(|a| a.ints.as_slice())
    }
}

/// Whether a node's domain is ONNX's own.
fn default_domain(node: &NodeProto) -> bool {
    matches!(node.domain.as_deref(), None | Some("") | Some("ai.onnx"))
}

/// Work done once for a node whose weights are constant, before any run
/// (`None`: nothing to do for this op).
pub(super) fn prepare(c: &Ctx) -> R<Option<Dequantized>> {
    match (c.node.domain.as_deref(), c.node.op_type.as_deref()) {
        (Some(MS_DOMAIN), Some("MatMulNBits")) => linalg::prepare_nbits(c),
        _ => Ok(None),
    }
}

pub(super) fn run(c: &Ctx) -> R<Value> {
    let op = c.node.op_type.as_deref().unwrap_or("");
    if !default_domain(c.node) {
        return match (c.node.domain.as_deref(), op) {
            (Some(MS_DOMAIN), "MatMulNBits") => linalg::matmul_nbits(c),
            (domain, _) => Err(format!(
                "op `{op}` of domain `{}` is not supported by edgeforge's evaluator (of {MS_DOMAIN} it runs MatMulNBits)",
                domain.unwrap_or_default()
            )),
        };
    }
    match op {
        "Identity" => Ok(c.arg(0)?.clone()),
        "Add" => ew::arith(c, Arith::Add),
        "Sub" => ew::arith(c, Arith::Sub),
        "Mul" => ew::arith(c, Arith::Mul),
        "Div" => ew::arith(c, Arith::Div),
        "Max" => ew::arith(c, Arith::Max),
        "Min" => ew::arith(c, Arith::Min),
        "Equal" => ew::compare(c, Cmp::Equal),
        "Less" => ew::compare(c, Cmp::Less),
        "LessOrEqual" => ew::compare(c, Cmp::LessOrEqual),
        "Greater" => ew::compare(c, Cmp::Greater),
        "GreaterOrEqual" => ew::compare(c, Cmp::GreaterOrEqual),
        "And" => ew::logic(c, Logic::And),
        "Or" => ew::logic(c, Logic::Or),
        "Xor" => ew::logic(c, Logic::Xor),
        "Not" => ew::not(c),
        "Where" => ew::select(c),
        "Sqrt" => ew::unary(c, f32::sqrt),
        "Erf" => ew::unary(c, ew::erf),
        "Neg" => ew::unary(c, |x| -x),
        "Exp" => ew::unary(c, f32::exp),
        "Abs" => ew::unary(c, f32::abs),
        "Floor" => ew::unary(c, f32::floor),
        "Sign" => ew::unary(c, ew::sign),
        "Cast" => ew::cast(c),
        "Shape" => shape(c),
        "Range" => range(c),
        "Gather" => gather(c),
        "Reshape" => reshape(c),
        "Unsqueeze" => unsqueeze(c),
        "Transpose" => transpose(c),
        "Concat" => concat(c),
        "MatMul" => linalg::matmul(c),
        "Gemm" => linalg::gemm(c),
        "Softmax" => softmax(c),
        "LayerNormalization" => layer_norm(c),
        "ReduceSum" => reduce::reduce(c, Reduce::Sum),
        "ReduceMean" => reduce::reduce(c, Reduce::Mean),
        "ReduceMax" => reduce::reduce(c, Reduce::Max),
        "ReduceMin" => reduce::reduce(c, Reduce::Min),
        "QuantizeLinear" => qdq::quantize(c),
        "DequantizeLinear" => qdq::dequantize(c),
        other => Err(format!(
            "op `{other}` is not supported by edgeforge's evaluator"
        )),
    }
}

fn one(v: &[i64]) -> R<i64> {
    match v {
        [x] => Ok(*x),
        _ => Err(format!("expected a scalar, got {} values", v.len())),
    }
}

pub(super) fn axis_of(axis: i64, rank: usize) -> R<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    usize::try_from(a)
        .ok()
        .filter(|&a| a < rank)
        .ok_or_else(|| format!("axis {axis} is out of range for rank {rank}"))
}

/// `Shape`, with opset 15's `start` / `end` slice of the dimensions.
fn shape(c: &Ctx) -> R<Value> {
    let s = &c.arg(0)?.shape;
    let rank = s.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
    let (start, end) = (clamp(c.int("start", 0)), clamp(c.int("end", rank)));
    let dims: Vec<i64> = s[start..end.max(start)].iter().map(|&d| d as i64).collect();
    Ok(Value::i64(vec![dims.len()], dims))
}

fn range(c: &Ctx) -> R<Value> {
    let (s, l, d) = (one(c.i64s(0)?)?, one(c.i64s(1)?)?, one(c.i64s(2)?)?);
    if d <= 0 {
        return Err(format!("delta {d}: only positive deltas are supported"));
    }
    let v: Vec<i64> = (s..l).step_by(d as usize).collect();
    Ok(Value::i64(vec![v.len()], v))
}

fn gather(c: &Ctx) -> R<Value> {
    let data = c.arg(0)?;
    let idx_v = c.arg(1)?;
    let idx = c.i64s(1)?;
    let axis = axis_of(c.int("axis", 0), data.shape.len())?;
    let outer: usize = data.shape[..axis].iter().product();
    let n = data.shape[axis];
    let inner: usize = data.shape[axis + 1..].iter().product();
    let mut shape = data.shape[..axis].to_vec();
    shape.extend(&idx_v.shape);
    shape.extend(&data.shape[axis + 1..]);
    let rows = idx
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + n as i64 } else { i };
            usize::try_from(j)
                .ok()
                .filter(|&j| j < n)
                .ok_or_else(|| format!("index {i} is out of range for {n} entries"))
        })
        .collect::<R<Vec<usize>>>()?;
    fn pick<T: Elem>(d: &Data, outer: usize, n: usize, inner: usize, rows: &[usize]) -> Data {
        let src = T::slice(d).expect("by_type picked T from d");
        let mut out = Vec::with_capacity(outer * rows.len() * inner);
        for o in 0..outer {
            for &r in rows {
                out.extend_from_slice(&src[(o * n + r) * inner..][..inner]);
            }
        }
        T::wrap(out)
    }
    let out = by_type!(&data.data, T => pick::<T>(&data.data, outer, n, inner, &rows));
    Ok(Value::new(shape, out))
}

fn reshape(c: &Ctx) -> R<Value> {
    let x = c.arg(0)?;
    let spec = c.i64s(1)?;
    // allowzero = 1: a 0 is a zero-length dimension, not "copy the input's".
    let literal_zero = c.int("allowzero", 0) != 0;
    let n: usize = x.shape.iter().product();
    let mut shape = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            0 if !literal_zero => shape.push(*x.shape.get(i).ok_or("0 past the input's rank")?),
            -1 if infer.is_none() => {
                infer = Some(i);
                shape.push(1);
            }
            d if d >= 0 => shape.push(d as usize),
            d => return Err(format!("bad dimension {d} in the shape {spec:?}")),
        }
    }
    if let Some(i) = infer {
        let known: usize = shape.iter().product();
        if known == 0 || !n.is_multiple_of(known) {
            return Err(format!(
                "cannot infer a dimension of {spec:?} for {n} elements"
            ));
        }
        shape[i] = n / known;
    }
    if shape.iter().product::<usize>() != n {
        return Err(format!("cannot reshape {:?} to {spec:?}", x.shape));
    }
    Ok(Value::new(shape, x.data.clone()))
}

fn unsqueeze(c: &Ctx) -> R<Value> {
    let x = c.arg(0)?;
    let axes = c.i64s(1)?;
    let rank = x.shape.len() + axes.len();
    let mut axes = axes
        .iter()
        .map(|&a| axis_of(a, rank))
        .collect::<R<Vec<_>>>()?;
    axes.sort_unstable();
    let mut shape = x.shape.clone();
    for a in axes {
        shape.insert(a, 1);
    }
    Ok(Value::new(shape, x.data.clone()))
}

fn transpose(c: &Ctx) -> R<Value> {
    let x = c.arg(0)?;
    let s = &x.shape;
    let rank = s.len();
    let perm: Vec<usize> = match c.ints("perm") {
        Some(p) => p.iter().map(|&a| axis_of(a, rank)).collect::<R<_>>()?,
        None => (0..rank).rev().collect(),
    };
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..rank).collect::<Vec<_>>() {
        return Err(format!("perm {perm:?} is not a permutation of {rank} axes"));
    }
    let out: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
    let mut in_strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * s[i + 1];
    }
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    fn permute<T: Elem>(d: &Data, out: &[usize], strides: &[usize]) -> Data {
        let x = T::slice(d).expect("by_type picked T from d");
        let mut res = Vec::with_capacity(x.len());
        let mut idx = vec![0usize; out.len()];
        let mut off = 0usize;
        for _ in 0..x.len() {
            res.push(x[off]);
            for d in (0..out.len()).rev() {
                idx[d] += 1;
                off += strides[d];
                if idx[d] < out[d] {
                    break;
                }
                off -= strides[d] * out[d];
                idx[d] = 0;
            }
        }
        T::wrap(res)
    }
    let data = by_type!(&x.data, T => permute::<T>(&x.data, &out, &strides));
    Ok(Value::new(out, data))
}

/// `Concat` along `axis`; inputs may be empty along it (an empty KV cache).
fn concat(c: &Ctx) -> R<Value> {
    let parts = (0..c.args.len())
        .map(|i| c.arg(i))
        .collect::<R<Vec<&Value>>>()?;
    let first = *parts.first().ok_or("no inputs")?;
    let rank = first.shape.len();
    let axis = axis_of(
        attr(c.attrs, "axis")
            .and_then(|a| a.i)
            .ok_or("attribute axis is missing")?,
        rank,
    )?;
    let mut shape = first.shape.clone();
    shape[axis] = 0;
    for (i, p) in parts.iter().enumerate() {
        let same_elsewhere =
            p.shape.len() == rank && (0..rank).all(|d| d == axis || p.shape[d] == first.shape[d]);
        if !same_elsewhere {
            return Err(format!(
                "input {i} is {:?}, input 0 {:?}: they may differ only on axis {axis}",
                p.shape, first.shape
            ));
        }
        if std::mem::discriminant(&p.data) != std::mem::discriminant(&first.data) {
            return Err(format!(
                "input {i} is {}, input 0 {}",
                p.data.type_name(),
                first.data.type_name()
            ));
        }
        shape[axis] += p.shape[axis];
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    fn join<T: Elem>(parts: &[&Value], axis: usize, outer: usize, inner: usize) -> Data {
        let total: usize = parts.iter().map(|p| p.data.len()).sum();
        let mut out = Vec::with_capacity(total);
        for o in 0..outer {
            for p in parts {
                let run = p.shape[axis] * inner;
                let src = T::slice(&p.data).expect("types checked equal");
                out.extend_from_slice(&src[o * run..][..run]);
            }
        }
        T::wrap(out)
    }
    let data = by_type!(&first.data, T => join::<T>(&parts, axis, outer, inner));
    Ok(Value::new(shape, data))
}

fn last_axis(c: &Ctx, s: &[usize], default: i64) -> R<usize> {
    let axis = axis_of(c.int("axis", default), s.len())?;
    if axis != s.len() - 1 {
        return Err(format!(
            "axis {axis} of rank {}: only the last axis is supported",
            s.len()
        ));
    }
    Ok(s[axis])
}

fn softmax(c: &Ctx) -> R<Value> {
    let (s, x) = c.f32(0)?;
    let w = last_axis(c, s, -1)?;
    let mut out = x.to_vec();
    for row in out.chunks_exact_mut(w.max(1)) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0f32;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        row.iter_mut().for_each(|v| *v /= sum);
    }
    Ok(Value::f32(s.to_vec(), out))
}

fn layer_norm(c: &Ctx) -> R<Value> {
    let (s, x) = c.f32(0)?;
    let w = last_axis(c, s, -1)?;
    let (_, gamma) = c.f32(1)?;
    let beta = c.opt(2).and_then(Value::as_f32);
    if gamma.len() != w || beta.is_some_and(|b| b.len() != w) {
        return Err("scale and bias must match the normalised axis".into());
    }
    let eps = c.float("epsilon", 1e-5);
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(w.max(1)) {
        let mean = row.iter().sum::<f32>() / w as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / w as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (j, &v) in row.iter().enumerate() {
            let y = (v - mean) * inv * gamma[j];
            out.push(beta.map_or(y, |b| y + b[j]));
        }
    }
    Ok(Value::f32(s.to_vec(), out))
}
