//! The ops the evaluator knows, with ONNX's semantics (opset 17): numpy
//! broadcasting for elementwise ops, batched MatMul, QDQ rounding.

use std::sync::Arc;

use super::{attr, Value};
use crate::format::onnx::proto::{data_type, AttributeProto, NodeProto};
use crate::format::onnx::reader::Data;
use crate::kernels::dense::small_gemm;

pub(super) struct Ctx<'a> {
    pub node: &'a NodeProto,
    pub args: &'a [Option<Arc<Value>>],
    pub attrs: &'a [AttributeProto],
}

type R<T> = Result<T, String>;

impl Ctx<'_> {
    fn arg(&self, i: usize) -> R<&Value> {
        self.args
            .get(i)
            .and_then(|a| a.as_deref())
            .ok_or_else(|| format!("input {i} is missing"))
    }

    fn opt(&self, i: usize) -> Option<&Value> {
        self.args.get(i).and_then(|a| a.as_deref())
    }

    fn f32(&self, i: usize) -> R<(&[usize], &[f32])> {
        let v = self.arg(i)?;
        match &v.data {
            Data::F32(d) => Ok((&v.shape, d)),
            other => Err(format!(
                "input {i} is {}, expected float",
                other.type_name()
            )),
        }
    }

    fn i64s(&self, i: usize) -> R<&[i64]> {
        match &self.arg(i)?.data {
            Data::I64(d) => Ok(d),
            other => Err(format!(
                "input {i} is {}, expected int64",
                other.type_name()
            )),
        }
    }

    fn int(&self, name: &str, default: i64) -> i64 {
        attr(self.attrs, name).and_then(|a| a.i).unwrap_or(default)
    }

    fn float(&self, name: &str, default: f32) -> f32 {
        attr(self.attrs, name).and_then(|a| a.f).unwrap_or(default)
    }

    fn ints(&self, name: &str) -> Option<&[i64]> {
        attr(self.attrs, name).map(|a| a.ints.as_slice())
    }
}

pub(super) fn run(c: &Ctx) -> R<Value> {
    let op = c.node.op_type.as_deref().unwrap_or("");
    let domain = c.node.domain.as_deref().unwrap_or("");
    if !domain.is_empty() {
        return Err(format!("domain `{domain}` is not supported"));
    }
    match op {
        "Identity" => Ok(c.arg(0)?.clone()),
        "Add" => binary(c, |a, b| a + b, |a, b| a + b),
        "Sub" => binary(c, |a, b| a - b, |a, b| a - b),
        "Mul" => binary(c, |a, b| a * b, |a, b| a * b),
        "Div" => binary(c, |a, b| a / b, |a, b| if b == 0 { 0 } else { a / b }),
        "Max" => binary(c, f32::max, i64::max),
        "Sqrt" => unary(c, f32::sqrt),
        "Erf" => unary(c, erf),
        "Shape" => {
            let s = &c.arg(0)?.shape;
            Ok(Value::i64(
                vec![s.len()],
                s.iter().map(|&d| d as i64).collect(),
            ))
        }
        "Range" => {
            let (s, l, d) = (c.i64s(0)?, c.i64s(1)?, c.i64s(2)?);
            let (s, l, d) = (one(s)?, one(l)?, one(d)?);
            if d <= 0 {
                return Err("only positive deltas are supported".into());
            }
            let v: Vec<i64> = (s..l).step_by(d as usize).collect();
            Ok(Value::i64(vec![v.len()], v))
        }
        "Cast" => cast(c),
        "Gather" => gather(c),
        "Reshape" => reshape(c),
        "Unsqueeze" => unsqueeze(c),
        "Transpose" => transpose(c),
        "MatMul" => matmul(c),
        "Softmax" => softmax(c),
        "LayerNormalization" => layer_norm(c),
        "ReduceSum" => reduce_sum(c),
        "QuantizeLinear" => quantize(c),
        "DequantizeLinear" => dequantize(c),
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

fn unary(c: &Ctx, f: impl Fn(f32) -> f32) -> R<Value> {
    let (s, x) = c.f32(0)?;
    Ok(Value::f32(s.to_vec(), x.iter().map(|&v| f(v)).collect()))
}

/// erf to f32 precision (Abramowitz & Stegun 7.1.26 in f64: |error| < 1.5e-7).
pub fn erf(x: f32) -> f32 {
    let x = f64::from(x);
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    ((1.0 - poly * (-a * a).exp()).copysign(x)) as f32
}

/// numpy broadcasting of two shapes.
fn broadcast(a: &[usize], b: &[usize]) -> R<Vec<usize>> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let da = if i + a.len() >= n {
                a[i + a.len() - n]
            } else {
                1
            };
            let db = if i + b.len() >= n {
                b[i + b.len() - n]
            } else {
                1
            };
            match (da, db) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => Err(format!("shapes {a:?} and {b:?} do not broadcast")),
            }
        })
        .collect()
}

/// Element strides of `shape` read as `out`'s broadcast (0 where repeated).
fn strides_in(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let n = out.len();
    let mut strides = vec![0; n];
    let mut s = 1;
    for i in (0..shape.len()).rev() {
        let o = i + n - shape.len();
        strides[o] = if shape[i] == 1 { 0 } else { s };
        s *= shape[i];
    }
    strides
}

fn zip_broadcast<T: Copy, U>(
    (sa, a): (&[usize], &[T]),
    (sb, b): (&[usize], &[T]),
    f: impl Fn(T, T) -> U,
) -> R<(Vec<usize>, Vec<U>)> {
    let out = broadcast(sa, sb)?;
    if sa == sb {
        return Ok((out, a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()));
    }
    let n: usize = out.iter().product();
    let (ta, tb) = (strides_in(sa, &out), strides_in(sb, &out));
    let mut res = Vec::with_capacity(n);
    let mut idx = vec![0usize; out.len()];
    let (mut oa, mut ob) = (0usize, 0usize);
    for _ in 0..n {
        res.push(f(a[oa], b[ob]));
        for d in (0..out.len()).rev() {
            idx[d] += 1;
            oa += ta[d];
            ob += tb[d];
            if idx[d] < out[d] {
                break;
            }
            oa -= ta[d] * out[d];
            ob -= tb[d] * out[d];
            idx[d] = 0;
        }
    }
    Ok((out, res))
}

fn binary(c: &Ctx, ff: impl Fn(f32, f32) -> f32, fi: impl Fn(i64, i64) -> i64) -> R<Value> {
    let (a, b) = (c.arg(0)?, c.arg(1)?);
    match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => {
            let (s, v) = zip_broadcast((&a.shape, x), (&b.shape, y), ff)?;
            Ok(Value::f32(s, v))
        }
        (Data::I64(x), Data::I64(y)) => {
            let (s, v) = zip_broadcast((&a.shape, x), (&b.shape, y), fi)?;
            Ok(Value::i64(s, v))
        }
        (x, y) => Err(format!("{} and {} inputs", x.type_name(), y.type_name())),
    }
}

fn cast(c: &Ctx) -> R<Value> {
    let x = c.arg(0)?;
    let to = c.int("to", 0) as i32;
    let data = match (to, &x.data) {
        (data_type::FLOAT, Data::F32(v)) => Data::F32(v.clone()),
        (data_type::FLOAT, Data::I64(v)) => Data::F32(v.iter().map(|&i| i as f32).collect()),
        (data_type::INT64, Data::I64(v)) => Data::I64(v.clone()),
        (data_type::INT64, Data::F32(v)) => Data::I64(v.iter().map(|&f| f as i64).collect()),
        (to, from) => {
            return Err(format!(
                "Cast from {} to {} is not supported",
                from.type_name(),
                data_type::name(to)
            ))
        }
    };
    Ok(Value {
        shape: x.shape.clone(),
        data,
    })
}

fn axis_of(axis: i64, rank: usize) -> R<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    usize::try_from(a)
        .ok()
        .filter(|&a| a < rank)
        .ok_or_else(|| format!("axis {axis} is out of range for rank {rank}"))
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
    fn pick<T: Copy>(src: &[T], outer: usize, n: usize, inner: usize, rows: &[usize]) -> Vec<T> {
        let mut out = Vec::with_capacity(outer * rows.len() * inner);
        for o in 0..outer {
            for &r in rows {
                out.extend_from_slice(&src[(o * n + r) * inner..][..inner]);
            }
        }
        out
    }
    let data = match &data.data {
        Data::F32(v) => Data::F32(pick(v, outer, n, inner, &rows)),
        Data::I64(v) => Data::I64(pick(v, outer, n, inner, &rows)),
        Data::I8(v) => Data::I8(pick(v, outer, n, inner, &rows)),
        Data::U8(v) => Data::U8(pick(v, outer, n, inner, &rows)),
    };
    Ok(Value { shape, data })
}

fn reshape(c: &Ctx) -> R<Value> {
    let x = c.arg(0)?;
    let spec = c.i64s(1)?;
    let n: usize = x.shape.iter().product();
    let mut shape = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            0 => shape.push(*x.shape.get(i).ok_or("0 past the input's rank")?),
            -1 => {
                infer = Some(i);
                shape.push(1);
            }
            d if d > 0 => shape.push(d as usize),
            d => return Err(format!("bad dimension {d} in the shape")),
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
    Ok(Value {
        shape,
        data: x.data.clone(),
    })
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
    Ok(Value {
        shape,
        data: x.data.clone(),
    })
}

fn transpose(c: &Ctx) -> R<Value> {
    let (s, x) = c.f32(0)?;
    let rank = s.len();
    let perm: Vec<usize> = match c.ints("perm") {
        Some(p) => p.iter().map(|&a| axis_of(a, rank)).collect::<R<_>>()?,
        None => (0..rank).rev().collect(),
    };
    let out: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
    let mut in_strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * s[i + 1];
    }
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let n = x.len();
    let mut res = Vec::with_capacity(n);
    let mut idx = vec![0usize; rank];
    let mut off = 0usize;
    for _ in 0..n {
        res.push(x[off]);
        for d in (0..rank).rev() {
            idx[d] += 1;
            off += strides[d];
            if idx[d] < out[d] {
                break;
            }
            off -= strides[d] * out[d];
            idx[d] = 0;
        }
    }
    Ok(Value::f32(out, res))
}

fn matmul(c: &Ctx) -> R<Value> {
    let ((sa, a), (sb, b)) = (c.f32(0)?, c.f32(1)?);
    if sa.len() < 2 || sb.len() < 2 {
        return Err("only matrices (rank >= 2) are supported".into());
    }
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (k2, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    if k != k2 {
        return Err(format!("inner dimensions differ: {sa:?} x {sb:?}"));
    }
    let (ba, bb) = (&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
    let batch = broadcast(ba, bb)?;
    let count: usize = batch.iter().product();
    let (ta, tb) = (strides_in(ba, &batch), strides_in(bb, &batch));
    let mut out = vec![0f32; count * m * n];
    let mut idx = vec![0usize; batch.len()];
    for i in 0..count {
        let mut rem = i;
        for d in (0..batch.len()).rev() {
            idx[d] = rem % batch[d];
            rem /= batch[d];
        }
        let oa: usize = idx.iter().zip(&ta).map(|(i, s)| i * s).sum::<usize>() * m * k;
        let ob: usize = idx.iter().zip(&tb).map(|(i, s)| i * s).sum::<usize>() * k * n;
        // SAFETY: the three matrices are `m x k`, `k x n` and `m x n`
        // row-major blocks inside their vectors, at the offsets computed
        // from in-range batch indices.
        unsafe {
            small_gemm(
                (m, n, k),
                out[i * m * n..].as_mut_ptr(),
                n,
                a[oa..].as_ptr(),
                (k, 1),
                b[ob..].as_ptr(),
                (n, 1),
            );
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Ok(Value::f32(shape, out))
}

fn last_axis(c: &Ctx, s: &[usize], default: i64) -> R<usize> {
    let axis = axis_of(c.int("axis", default), s.len())?;
    if axis != s.len() - 1 {
        return Err("only the last axis is supported".into());
    }
    Ok(s[axis])
}

fn softmax(c: &Ctx) -> R<Value> {
    let (s, x) = c.f32(0)?;
    let w = last_axis(c, s, -1)?;
    let mut out = x.to_vec();
    for row in out.chunks_exact_mut(w) {
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
    for row in x.chunks_exact(w) {
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

fn reduce_sum(c: &Ctx) -> R<Value> {
    let (s, x) = c.f32(0)?;
    let keep = c.int("keepdims", 1) != 0;
    let axes: Vec<usize> = match c.opt(1) {
        Some(v) => match &v.data {
            Data::I64(a) => a.iter().map(|&a| axis_of(a, s.len())).collect::<R<_>>()?,
            _ => return Err("axes must be int64".into()),
        },
        None => (0..s.len()).collect(),
    };
    let reduced: Vec<usize> = s
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let n_out: usize = reduced.iter().product();
    let mut out = vec![0f32; n_out];
    let strides = strides_in(&reduced, s);
    let mut idx = vec![0usize; s.len()];
    let mut off = 0usize;
    for &v in x {
        out[off] += v;
        for d in (0..s.len()).rev() {
            idx[d] += 1;
            off += strides[d];
            if idx[d] < s[d] {
                break;
            }
            off -= strides[d] * s[d];
            idx[d] = 0;
        }
    }
    let shape = if keep {
        reduced
    } else {
        s.iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect()
    };
    Ok(Value::f32(shape, out))
}

/// Per-tensor or per-axis quantization parameters as one value per element
/// position along `axis`.
struct QParams<'a> {
    scale: &'a [f32],
    zero: Vec<i32>,
    /// Elements between consecutive channels along the axis, and channel count.
    inner: usize,
    channels: usize,
}

impl QParams<'_> {
    fn at(&self, i: usize) -> (f32, i32) {
        let ch = if self.channels == 1 {
            0
        } else {
            (i / self.inner) % self.channels
        };
        (self.scale[ch], self.zero[ch])
    }
}

fn qparams<'a>(c: &'a Ctx, shape: &[usize]) -> R<(QParams<'a>, Option<&'a Data>)> {
    let (ss, scale) = c.f32(1)?;
    let zp = c.opt(2);
    let zero: Vec<i32> = match zp.map(|z| &z.data) {
        None => vec![0; scale.len()],
        Some(Data::U8(z)) => z.iter().map(|&v| i32::from(v)).collect(),
        Some(Data::I8(z)) => z.iter().map(|&v| i32::from(v)).collect(),
        Some(other) => return Err(format!("zero point of type {}", other.type_name())),
    };
    if zero.len() != scale.len() {
        return Err("scale and zero point differ in size".into());
    }
    let (inner, channels) =
        if ss.iter().product::<usize>() <= 1 && ss.len() <= 1 && scale.len() == 1 {
            (1, 1)
        } else {
            let axis = axis_of(c.int("axis", 1), shape.len())?;
            if shape[axis] != scale.len() {
                return Err(format!(
                    "{} scales for axis {axis} of {shape:?}",
                    scale.len()
                ));
            }
            (shape[axis + 1..].iter().product(), shape[axis])
        };
    Ok((
        QParams {
            scale,
            zero,
            inner,
            channels,
        },
        zp.map(|z| &z.data),
    ))
}

/// `saturate(round_half_even(x / scale) + zero_point)`.
pub fn quantize_value(x: f32, scale: f32, zero: i32, lo: i32, hi: i32) -> i32 {
    let q = (x / scale).round_ties_even() as i64 + i64::from(zero);
    q.clamp(i64::from(lo), i64::from(hi)) as i32
}

fn quantize(c: &Ctx) -> R<Value> {
    let (s, x) = c.f32(0)?;
    let (p, zp) = qparams(c, s)?;
    let data = match zp {
        Some(Data::I8(_)) => Data::I8(
            x.iter()
                .enumerate()
                .map(|(i, &v)| {
                    let (sc, z) = p.at(i);
                    quantize_value(v, sc, z, -128, 127) as i8
                })
                .collect(),
        ),
        _ => Data::U8(
            x.iter()
                .enumerate()
                .map(|(i, &v)| {
                    let (sc, z) = p.at(i);
                    quantize_value(v, sc, z, 0, 255) as u8
                })
                .collect(),
        ),
    };
    Ok(Value {
        shape: s.to_vec(),
        data,
    })
}

fn dequantize(c: &Ctx) -> R<Value> {
    let x = c.arg(0)?;
    let (p, _) = qparams(c, &x.shape)?;
    let codes: Vec<i32> = match &x.data {
        Data::I8(v) => v.iter().map(|&q| i32::from(q)).collect(),
        Data::U8(v) => v.iter().map(|&q| i32::from(q)).collect(),
        other => return Err(format!("input of type {}", other.type_name())),
    };
    // Runs of `inner` elements share one channel's parameters.
    let mut out = Vec::with_capacity(codes.len());
    for (run, qs) in codes.chunks(p.inner.max(1)).enumerate() {
        let (sc, z) = p.at(run * p.inner);
        out.extend(qs.iter().map(|&q| (q - z) as f32 * sc));
    }
    Ok(Value::f32(x.shape.clone(), out))
}
