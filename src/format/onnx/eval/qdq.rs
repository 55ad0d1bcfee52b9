//! QuantizeLinear and DequantizeLinear, per tensor or per axis: quantize
//! rounds half to even and saturates, as the specification says.

use super::data::Data;
use super::ops::{axis_of, Ctx, R};
use super::Value;

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
fn quantize_value(x: f32, scale: f32, zero: i32, lo: i32, hi: i32) -> i32 {
    let q = (x / scale).round_ties_even() as i64 + i64::from(zero);
    q.clamp(i64::from(lo), i64::from(hi)) as i32
}

pub(super) fn quantize(c: &Ctx) -> R<Value> {
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

pub(super) fn dequantize(c: &Ctx) -> R<Value> {
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
