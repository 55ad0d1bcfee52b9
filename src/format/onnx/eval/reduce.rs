//! ReduceSum, ReduceMean, ReduceMax and ReduceMin over float, double and
//! int64. Axes come from the `axes` attribute (ReduceMean/Max/Min up to
//! opset 17) or the second input (ReduceSum from opset 13, all from 18).
//! Each output accumulates its inputs in row-major order, so a mean over the
//! last axis is the sequential sum a plain loop computes.

use super::data::Data;
use super::elementwise::{strides_in, Arith, Num};
use super::ops::{axis_of, Ctx, R};
use super::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reduce {
    Sum,
    Mean,
    Max,
    Min,
}

pub(super) fn reduce(c: &Ctx, op: Reduce) -> R<Value> {
    let x = c.arg(0)?;
    let axes = axes(c, x.shape.len())?;
    if axes.is_empty() && c.int("noop_with_empty_axes", 0) != 0 {
        return Ok(x.clone());
    }
    let axes = if axes.is_empty() {
        (0..x.shape.len()).collect()
    } else {
        axes
    };
    let keep = c.int("keepdims", 1) != 0;
    let data = match &x.data {
        Data::F32(v) => Data::F32(typed(v, &x.shape, &axes, op)),
        Data::F64(v) => Data::F64(typed(v, &x.shape, &axes, op)),
        Data::I64(v) => Data::I64(typed(v, &x.shape, &axes, op)),
        other => return Err(format!("input of type {}", other.type_name())),
    };
    let shape = x
        .shape
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| match axes.contains(&i) {
            false => Some(d),
            true => keep.then_some(1),
        })
        .collect();
    Ok(Value::new(shape, data))
}

fn axes(c: &Ctx, rank: usize) -> R<Vec<usize>> {
    let listed: Vec<i64> = match (c.ints("axes"), c.opt(1)) {
        (Some(_), Some(_)) => return Err("axes given both as attribute and as input".into()),
        (Some(a), None) => a.to_vec(),
        (None, Some(v)) => match &v.data {
            Data::I64(a) => a.clone(),
            other => {
                return Err(format!(
                    "axes of type {}, expected int64",
                    other.type_name()
                ))
            }
        },
        (None, None) => Vec::new(),
    };
    let mut axes = listed
        .iter()
        .map(|&a| axis_of(a, rank))
        .collect::<R<Vec<_>>>()?;
    axes.sort_unstable();
    axes.dedup();
    Ok(axes)
}

fn typed<T: Num>(x: &[T], shape: &[usize], axes: &[usize], op: Reduce) -> Vec<T> {
    let reduced: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let (init, f) = match op {
        Reduce::Sum | Reduce::Mean => (T::ZERO, T::arith(Arith::Add)),
        Reduce::Max => (T::LOWEST, T::arith(Arith::Max)),
        Reduce::Min => (T::HIGHEST, T::arith(Arith::Min)),
    };
    let mut out = vec![init; reduced.iter().product()];
    let strides = strides_in(&reduced, shape);
    let mut idx = vec![0usize; shape.len()];
    let mut off = 0usize;
    for &v in x {
        out[off] = f(out[off], v);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            off += strides[d];
            if idx[d] < shape[d] {
                break;
            }
            off -= strides[d] * shape[d];
            idx[d] = 0;
        }
    }
    if op == Reduce::Mean {
        let count = x.len() / out.len().max(1);
        out.iter_mut().for_each(|v| *v = v.per(count));
    }
    out
}
