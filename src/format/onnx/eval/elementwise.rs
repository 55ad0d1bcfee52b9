//! Elementwise ops with numpy broadcasting: arithmetic on float, double and
//! int64, comparisons and logic to bool, `Where`, float unary functions and
//! `Cast`.

use half::f16;

use super::data::{by_type, Data, Elem};
use super::ops::{Ctx, R};
use super::Value;
use crate::format::onnx::proto::data_type;

/// numpy broadcasting of two shapes.
pub(super) fn broadcast(a: &[usize], b: &[usize]) -> R<Vec<usize>> {
    let n = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        if i + s.len() >= n {
            s[i + s.len() - n]
        } else {
            1
        }
    };
    (0..n)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        })
        .collect()
}

/// Element strides of `shape` read as `out`'s broadcast (0 where repeated).
pub(super) fn strides_in(shape: &[usize], out: &[usize]) -> Vec<usize> {
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

/// Calls `f` with every input's element offset for each element of the
/// inputs' broadcast shape, in row-major order; returns that shape.
fn walk<const N: usize>(shapes: [&[usize]; N], mut f: impl FnMut([usize; N])) -> R<Vec<usize>> {
    let mut out = Vec::new();
    for s in shapes {
        out = broadcast(&out, s)?;
    }
    let strides = shapes.map(|s| strides_in(s, &out));
    let count: usize = out.iter().product();
    let mut idx = vec![0usize; out.len()];
    let mut off = [0usize; N];
    for _ in 0..count {
        f(off);
        for d in (0..out.len()).rev() {
            idx[d] += 1;
            off.iter_mut().zip(&strides).for_each(|(o, s)| *o += s[d]);
            if idx[d] < out[d] {
                break;
            }
            off.iter_mut()
                .zip(&strides)
                .for_each(|(o, s)| *o -= s[d] * out[d]);
            idx[d] = 0;
        }
    }
    Ok(out)
}

/// `f` over the broadcast of two operands.
fn zip<T: Copy, U>(
    (sa, a): (&[usize], &[T]),
    (sb, b): (&[usize], &[T]),
    f: impl Fn(T, T) -> U,
) -> R<(Vec<usize>, Vec<U>)> {
    if sa == sb {
        return Ok((
            sa.to_vec(),
            a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect(),
        ));
    }
    let mut out = Vec::new();
    let shape = walk([sa, sb], |[i, j]| out.push(f(a[i], b[j])))?;
    Ok((shape, out))
}

/// A binary arithmetic op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

/// The numeric element types arithmetic and reductions take.
pub(super) trait Num: Elem + PartialOrd {
    const ZERO: Self;
    /// The identity of `max`.
    const LOWEST: Self;
    /// The identity of `min`.
    const HIGHEST: Self;
    fn arith(op: Arith) -> fn(Self, Self) -> Self;
    /// `self / n`, for means.
    fn per(self, n: usize) -> Self;
}

macro_rules! float_num {
    ($t:ty) => {
        impl Num for $t {
            const ZERO: Self = 0.0;
            const LOWEST: Self = <$t>::NEG_INFINITY;
            const HIGHEST: Self = <$t>::INFINITY;
            fn arith(op: Arith) -> fn(Self, Self) -> Self {
                match op {
                    Arith::Add => |a, b| a + b,
                    Arith::Sub => |a, b| a - b,
                    Arith::Mul => |a, b| a * b,
                    Arith::Div => |a, b| a / b,
                    Arith::Max => <$t>::max,
                    Arith::Min => <$t>::min,
                }
            }
            fn per(self, n: usize) -> Self {
                self / n as $t
            }
        }
    };
}
float_num!(f32);
float_num!(f64);

impl Num for i64 {
    const ZERO: Self = 0;
    const LOWEST: Self = i64::MIN;
    const HIGHEST: Self = i64::MAX;
    /// Wrapping, as two's-complement runtimes compute; division truncates
    /// toward zero, and by zero (undefined in ONNX) gives 0 rather than a panic.
    fn arith(op: Arith) -> fn(Self, Self) -> Self {
        match op {
            Arith::Add => i64::wrapping_add,
            Arith::Sub => i64::wrapping_sub,
            Arith::Mul => i64::wrapping_mul,
            Arith::Div => |a, b| if b == 0 { 0 } else { a.wrapping_div(b) },
            Arith::Max => i64::max,
            Arith::Min => i64::min,
        }
    }
    fn per(self, n: usize) -> Self {
        self.checked_div(n as i64).unwrap_or(0)
    }
}

pub(super) fn arith(c: &Ctx, op: Arith) -> R<Value> {
    let (a, b) = (c.arg(0)?, c.arg(1)?);
    fn typed<T: Num>(a: &Value, b: &Value, op: Arith) -> Option<R<Value>> {
        let (x, y) = (T::slice(&a.data)?, T::slice(&b.data)?);
        Some(
            zip((&a.shape, x), (&b.shape, y), T::arith(op))
                .map(|(shape, v)| Value::new(shape, T::wrap(v))),
        )
    }
    typed::<f32>(a, b, op)
        .or_else(|| typed::<f64>(a, b, op))
        .or_else(|| typed::<i64>(a, b, op))
        .unwrap_or_else(|| Err(mixed(a, b)))
}

fn mixed(a: &Value, b: &Value) -> String {
    format!(
        "inputs of types {} and {} (expected two of float, double or int64, alike)",
        a.data.type_name(),
        b.data.type_name()
    )
}

/// A comparison, to bool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cmp {
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

pub(super) fn compare(c: &Ctx, op: Cmp) -> R<Value> {
    let (a, b) = (c.arg(0)?, c.arg(1)?);
    fn typed<T: Elem + PartialOrd>(a: &Value, b: &Value, op: Cmp) -> Option<R<Value>> {
        let (x, y) = (T::slice(&a.data)?, T::slice(&b.data)?);
        let f: fn(&T, &T) -> bool = match op {
            Cmp::Equal => T::eq,
            Cmp::Less => T::lt,
            Cmp::LessOrEqual => T::le,
            Cmp::Greater => T::gt,
            Cmp::GreaterOrEqual => T::ge,
        };
        Some(
            zip((&a.shape, x), (&b.shape, y), |p, q| f(&p, &q))
                .map(|(shape, v)| Value::new(shape, Data::Bool(v))),
        )
    }
    let bools = (op == Cmp::Equal)
        .then(|| typed::<bool>(a, b, op))
        .flatten();
    bools
        .or_else(|| typed::<f32>(a, b, op))
        .or_else(|| typed::<f64>(a, b, op))
        .or_else(|| typed::<i64>(a, b, op))
        .unwrap_or_else(|| Err(mixed(a, b)))
}

/// A logical op on bool tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Logic {
    And,
    Or,
    Xor,
}

pub(super) fn logic(c: &Ctx, op: Logic) -> R<Value> {
    let (a, b) = (c.arg(0)?, c.arg(1)?);
    let (Data::Bool(x), Data::Bool(y)) = (&a.data, &b.data) else {
        return Err(format!(
            "inputs of types {} and {}, expected bool",
            a.data.type_name(),
            b.data.type_name()
        ));
    };
    let f = match op {
        Logic::And => |p: bool, q: bool| p & q,
        Logic::Or => |p: bool, q: bool| p | q,
        Logic::Xor => |p: bool, q: bool| p ^ q,
    };
    let (shape, v) = zip((&a.shape, x), (&b.shape, y), f)?;
    Ok(Value::new(shape, Data::Bool(v)))
}

pub(super) fn not(c: &Ctx) -> R<Value> {
    let x = c.arg(0)?;
    let Data::Bool(v) = &x.data else {
        return Err(format!(
            "input of type {}, expected bool",
            x.data.type_name()
        ));
    };
    Ok(Value::new(
        x.shape.clone(),
        Data::Bool(v.iter().map(|b| !b).collect()),
    ))
}

/// `Where(condition, X, Y)`: X where the condition holds, else Y, all three
/// broadcast.
pub(super) fn select(c: &Ctx) -> R<Value> {
    let (cond, x, y) = (c.arg(0)?, c.arg(1)?, c.arg(2)?);
    let Data::Bool(keep) = &cond.data else {
        return Err(format!(
            "condition of type {}, expected bool",
            cond.data.type_name()
        ));
    };
    fn typed<T: Elem>(keep: &[bool], shapes: [&[usize]; 3], x: &Data, y: &Data) -> R<Value> {
        let (Some(a), Some(b)) = (T::slice(x), T::slice(y)) else {
            return Err(format!(
                "X of type {} and Y of type {} differ",
                x.type_name(),
                y.type_name()
            ));
        };
        let mut out = Vec::new();
        let shape = walk(shapes, |[i, j, k]| {
            out.push(if keep[i] { a[j] } else { b[k] })
        })?;
        Ok(Value::new(shape, T::wrap(out)))
    }
    let shapes = [&cond.shape[..], &x.shape, &y.shape];
    by_type!(&x.data, T => typed::<T>(keep, shapes, &x.data, &y.data))
}

/// A float function applied to every element.
pub(super) fn unary(c: &Ctx, f: impl Fn(f32) -> f32) -> R<Value> {
    let (s, x) = c.f32(0)?;
    Ok(Value::f32(s.to_vec(), x.iter().map(|&v| f(v)).collect()))
}

/// ONNX Sign: -1, 0 or 1 (`f32::signum` gives 1 for +0), NaN kept.
pub(super) fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x * 0.0
    }
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

/// `Cast`: float conversions round to nearest (even), float to int64
/// truncates toward zero (saturating, NaN to 0), anything to bool is `!= 0`.
/// Float16 results are float values rounded to the float16 grid (see `Data`).
pub(super) fn cast(c: &Ctx) -> R<Value> {
    let x = c.arg(0)?;
    let to = c.int("to", 0) as i32;
    let d = &x.data;
    let data = match to {
        data_type::FLOAT => Data::F32(floats(d)),
        data_type::FLOAT16 => Data::F32(halves(d)),
        data_type::DOUBLE => Data::F64(doubles(d)),
        data_type::INT64 => Data::I64(ints(d)),
        data_type::BOOL => Data::Bool(bools(d)),
        data_type::UINT8 | data_type::INT8 | data_type::INT32 => {
            return Err(format!(
                "Cast to {} is not supported (the evaluator casts to float, float16, double, int64 and bool)",
                data_type::name(to)
            ))
        }
        other => return Err(format!("Cast to data type {other} is not supported")),
    };
    Ok(Value::new(x.shape.clone(), data))
}

fn floats(d: &Data) -> Vec<f32> {
    match d {
        Data::F32(v) => v.clone(),
        Data::F64(v) => v.iter().map(|&x| x as f32).collect(),
        Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        Data::I8(v) => v.iter().map(|&x| f32::from(x)).collect(),
        Data::U8(v) => v.iter().map(|&x| f32::from(x)).collect(),
        Data::Bool(v) => v.iter().map(|&x| f32::from(u8::from(x))).collect(),
    }
}

/// Straight from double, so a double is rounded once, not twice.
fn halves(d: &Data) -> Vec<f32> {
    match d {
        Data::F64(v) => v.iter().map(|&x| f16::from_f64(x).to_f32()).collect(),
        other => floats(other)
            .into_iter()
            .map(|x| f16::from_f32(x).to_f32())
            .collect(),
    }
}

fn doubles(d: &Data) -> Vec<f64> {
    match d {
        Data::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        Data::F64(v) => v.clone(),
        Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
        Data::I8(v) => v.iter().map(|&x| f64::from(x)).collect(),
        Data::U8(v) => v.iter().map(|&x| f64::from(x)).collect(),
        Data::Bool(v) => v.iter().map(|&x| f64::from(u8::from(x))).collect(),
    }
}

fn ints(d: &Data) -> Vec<i64> {
    match d {
        Data::F32(v) => v.iter().map(|&x| x as i64).collect(),
        Data::F64(v) => v.iter().map(|&x| x as i64).collect(),
        Data::I64(v) => v.clone(),
        Data::I8(v) => v.iter().map(|&x| i64::from(x)).collect(),
        Data::U8(v) => v.iter().map(|&x| i64::from(x)).collect(),
        Data::Bool(v) => v.iter().map(|&x| i64::from(x)).collect(),
    }
}

fn bools(d: &Data) -> Vec<bool> {
    match d {
        Data::F32(v) => v.iter().map(|&x| x != 0.0).collect(),
        Data::F64(v) => v.iter().map(|&x| x != 0.0).collect(),
        Data::I64(v) => v.iter().map(|&x| x != 0).collect(),
        Data::I8(v) => v.iter().map(|&x| x != 0).collect(),
        Data::U8(v) => v.iter().map(|&x| x != 0).collect(),
        Data::Bool(v) => v.clone(),
    }
}
