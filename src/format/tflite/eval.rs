//! Runs a [`Graph`] on this CPU: float ops in f32, int8 ops with TFLite's
//! integer semantics (int32 accumulation of `(q - zero_point)` products for
//! FULLY_CONNECTED and BATCH_MATMUL, int32 biases at `input * weight`
//! scale, per-channel weight scales; every other int8 op computes on the
//! dequantized inputs and rounds its output to its own scale and zero point,
//! saturating, as the reference kernels' lookup tables and rescales do).
//! Constant subgraphs (DEQUANTIZE of fp16 weights) are folded once, as the
//! interpreter does. Deterministic: integer sums, fixed f32 tiling.

use rayon::prelude::*;

use super::graph::{ElemType, Graph, Op, Quant, Tensor};
use crate::kernels::dense::Linear;
use crate::kernels::math::erf;

/// A tensor's values.
#[derive(Debug, Clone)]
pub enum Value {
    F32(Vec<f32>),
    I32(Vec<i32>),
    I8(Vec<i8>),
}

#[derive(Debug, thiserror::Error)]
#[error("operator {node} ({op}): {message}")]
pub struct EvalError {
    pub node: usize,
    pub op: &'static str,
    pub message: String,
}

/// Sees each f32 activation (tensor index, values) as it is computed.
pub type Observer<'a> = dyn FnMut(usize, &[f32]) + 'a;

pub struct Evaluator<'g> {
    graph: &'g Graph,
    /// Values of constants and of nodes whose inputs are all constant.
    constants: Vec<Option<Value>>,
    /// Nodes left to run at inference (not folded).
    live: Vec<usize>,
    /// f32 FULLY_CONNECTED layers, prepared once (by node).
    linears: Vec<Option<Linear>>,
    /// After which live node each tensor can be dropped.
    last_use: Vec<usize>,
}

impl<'g> Evaluator<'g> {
    pub fn new(graph: &'g Graph) -> Result<Self, EvalError> {
        let mut constants: Vec<Option<Value>> = graph.tensors.iter().map(decode_constant).collect();
        let mut live = Vec::new();
        for (i, n) in graph.nodes.iter().enumerate() {
            if n.inputs.iter().all(|&t| constants[t].is_some()) && !n.inputs.is_empty() {
                let inputs: Vec<&Value> = n
                    .inputs
                    .iter()
                    .map(|&t| constants[t].as_ref().expect("constant"))
                    .collect();
                let v = run_node(graph, i, &inputs, None)?;
                constants[n.outputs[0]] = Some(v);
            } else {
                live.push(i);
            }
        }
        let mut linears: Vec<Option<Linear>> = (0..graph.nodes.len()).map(|_| None).collect();
        for &i in &live {
            let n = &graph.nodes[i];
            if n.op == Op::FullyConnected && graph.tensors[n.inputs[0]].ty == ElemType::F32 {
                let (Some(Value::F32(w)), Some(Value::F32(b))) =
                    (&constants[n.inputs[1]], &constants[n.inputs[2]])
                else {
                    return Err(err(
                        graph,
                        i,
                        "f32 weights and bias must be constant".into(),
                    ));
                };
                let shape = &graph.tensors[n.inputs[1]].shape;
                linears[i] = Some(Linear::f32(
                    w.clone(),
                    b.clone(),
                    shape[0] as usize,
                    shape[1] as usize,
                ));
            }
        }
        let mut last_use = vec![usize::MAX; graph.tensors.len()];
        for (pos, &i) in live.iter().enumerate() {
            for &t in &graph.nodes[i].inputs {
                last_use[t] = pos;
            }
        }
        for &t in &graph.outputs {
            last_use[t] = usize::MAX;
        }
        Ok(Self {
            graph,
            constants,
            live,
            linears,
            last_use,
        })
    }

    /// Runs the graph on `inputs` (in `graph.inputs` order); returns the
    /// outputs. `observe` sees every f32 activation as it is computed.
    pub fn run(
        &self,
        inputs: Vec<Value>,
        observe: Option<&mut Observer>,
    ) -> Result<Vec<Value>, EvalError> {
        let (outputs, _) = self.run_keeping(inputs, observe, false)?;
        Ok(outputs)
    }

    /// Every tensor's value after a run (constants included), to compare
    /// two schemes of one graph tensor by tensor.
    pub fn trace(&self, inputs: Vec<Value>) -> Result<Vec<Option<Value>>, EvalError> {
        Ok(self.run_keeping(inputs, None, true)?.1)
    }

    fn run_keeping(
        &self,
        inputs: Vec<Value>,
        mut observe: Option<&mut Observer>,
        keep: bool,
    ) -> Result<(Vec<Value>, Vec<Option<Value>>), EvalError> {
        let g = self.graph;
        let mut values: Vec<Option<Value>> = vec![None; g.tensors.len()];
        for (&t, v) in g.inputs.iter().zip(inputs) {
            values[t] = Some(v);
        }
        for (pos, &i) in self.live.iter().enumerate() {
            let n = &g.nodes[i];
            let inputs: Vec<&Value> = n
                .inputs
                .iter()
                .map(|&t| values[t].as_ref().or(self.constants[t].as_ref()))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    err(
                        g,
                        i,
                        "an input has no value (graph input not given?)".into(),
                    )
                })?;
            let v = run_node(g, i, &inputs, self.linears[i].as_ref())?;
            if let (Some(obs), Value::F32(data)) = (observe.as_mut(), &v) {
                obs(n.outputs[0], data);
            }
            values[n.outputs[0]] = Some(v);
            for &t in &n.inputs {
                if !keep && self.last_use[t] == pos {
                    values[t] = None;
                }
            }
        }
        let outputs = g
            .outputs
            .iter()
            .map(|&t| values[t].clone().or_else(|| self.constants[t].clone()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| err(g, 0, "an output was never computed".into()))?;
        if keep {
            for (v, c) in values.iter_mut().zip(&self.constants) {
                if v.is_none() {
                    v.clone_from(c);
                }
            }
        }
        Ok((outputs, values))
    }
}

fn err(g: &Graph, node: usize, message: String) -> EvalError {
    EvalError {
        node,
        op: g.nodes.get(node).map_or("?", |n| n.op.name()),
        message,
    }
}

fn decode_constant(t: &Tensor) -> Option<Value> {
    let d = t.data.as_ref()?;
    Some(match t.ty {
        ElemType::F32 => Value::F32(
            d.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        // fp16 constants only feed DEQUANTIZE; keep them as f32 bit-exact values.
        ElemType::F16 => Value::F32(
            d.chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        ElemType::I32 => Value::I32(
            d.chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        ElemType::I8 => Value::I8(d.iter().map(|&b| b as i8).collect()),
    })
}

/// Per-tensor (scale, zero point) of an int8 tensor.
fn qparams(t: &Tensor) -> Result<(f32, i32), String> {
    t.scale_zp()
        .ok_or_else(|| format!("int8 tensor `{}` needs per-tensor quantization", t.name))
}

fn quantize(x: f32, scale: f32, zp: i32) -> i8 {
    ((x / scale).round() as i64 + zp as i64).clamp(-128, 127) as i8
}

pub fn dequantize(q: &[i8], t: &Tensor) -> Result<Vec<f32>, String> {
    let quant = t
        .quant
        .as_ref()
        .ok_or_else(|| format!("int8 tensor `{}` has no quantization", t.name))?;
    if quant.scale.len() == 1 {
        let (s, z) = (quant.scale[0], quant.zero_point[0] as i32);
        return Ok(q.iter().map(|&v| s * (v as i32 - z) as f32).collect());
    }
    per_axis_dequantize(q, &t.shape, quant)
}

fn per_axis_dequantize(q: &[i8], shape: &[i32], quant: &Quant) -> Result<Vec<f32>, String> {
    let axis = quant.axis as usize;
    let inner: usize = shape[axis + 1..].iter().map(|&d| d as usize).product();
    let n = shape[axis] as usize;
    Ok(q.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / inner) % n;
            quant.scale[c] * (v as i32 - quant.zero_point[c] as i32) as f32
        })
        .collect())
}

fn as_f32<'a>(v: &'a Value, what: &str) -> Result<&'a [f32], String> {
    match v {
        Value::F32(x) => Ok(x),
        _ => Err(format!("{what} is not float32")),
    }
}

/// The input as f32: itself, or dequantized.
fn real<'a>(v: &'a Value, t: &Tensor) -> Result<std::borrow::Cow<'a, [f32]>, String> {
    match v {
        Value::F32(x) => Ok(std::borrow::Cow::Borrowed(x)),
        Value::I8(q) => Ok(std::borrow::Cow::Owned(dequantize(q, t)?)),
        Value::I32(_) => Err(format!(
            "`{}` is int32 where a number tensor was expected",
            t.name
        )),
    }
}

/// f32 results to the output tensor's type.
fn emit(out: &Tensor, y: Vec<f32>) -> Result<Value, String> {
    match out.ty {
        ElemType::F32 => Ok(Value::F32(y)),
        ElemType::I8 => {
            let (s, z) = qparams(out)?;
            Ok(Value::I8(y.iter().map(|&v| quantize(v, s, z)).collect()))
        }
        other => Err(format!(
            "output `{}` of type {} is not supported here",
            out.name,
            other.name()
        )),
    }
}

fn run_node(
    g: &Graph,
    i: usize,
    inputs: &[&Value],
    linear: Option<&Linear>,
) -> Result<Value, EvalError> {
    let n = &g.nodes[i];
    let t = |k: usize| &g.tensors[n.inputs[k]];
    let out = &g.tensors[n.outputs[0]];
    let want = |k: usize| -> Result<&Value, String> {
        inputs
            .get(k)
            .copied()
            .ok_or_else(|| format!("needs input {k}"))
    };
    let result: Result<Value, String> = (|| match &n.op {
        Op::Add | Op::Sub | Op::Mul | Op::SquaredDifference => {
            let (a, b) = (real(want(0)?, t(0))?, real(want(1)?, t(1))?);
            let f: fn(f32, f32) -> f32 = match n.op {
                Op::Add => |a, b| a + b,
                Op::Sub => |a, b| a - b,
                Op::Mul => |a, b| a * b,
                _ => |a, b| (a - b) * (a - b),
            };
            emit(
                out,
                broadcast(&a, &t(0).shape, &b, &t(1).shape, &out.shape, f)?,
            )
        }
        Op::FullyConnected => fully_connected(g, n.inputs.as_slice(), inputs, out, linear),
        Op::BatchMatMul { adj_y } => batch_matmul(t(0), t(1), out, want(0)?, want(1)?, *adj_y),
        Op::Reshape { .. } => Ok(want(0)?.clone()),
        Op::Transpose => {
            let Value::I32(perm) = want(1)? else {
                return Err("permutation must be int32".into());
            };
            transpose(want(0)?, &t(0).shape, perm)
        }
        Op::Softmax { beta } => {
            let x = real(want(0)?, t(0))?;
            let len = *t(0).shape.last().unwrap_or(&1) as usize;
            let mut y = x.into_owned();
            y.par_chunks_mut(len.max(1)).for_each(|row| {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let mut sum = 0.0;
                for v in row.iter_mut() {
                    *v = ((*v - max) * beta).exp();
                    sum += *v;
                }
                row.iter_mut().for_each(|v| *v /= sum);
            });
            emit(out, y)
        }
        Op::Mean { .. } => {
            let Value::I32(axes) = want(1)? else {
                return Err("axes must be int32".into());
            };
            let [axis] = axes.as_slice() else {
                return Err("one reduction axis is supported".into());
            };
            let x = real(want(0)?, t(0))?;
            let shape = &t(0).shape;
            let axis = if *axis < 0 {
                axis + shape.len() as i32
            } else {
                *axis
            } as usize;
            let outer: usize = shape[..axis].iter().map(|&d| d as usize).product();
            let len = shape[axis] as usize;
            let inner: usize = shape[axis + 1..].iter().map(|&d| d as usize).product();
            let mut y = vec![0f32; outer * inner];
            for o in 0..outer {
                for k in 0..len {
                    let row = &x[(o * len + k) * inner..][..inner];
                    y[o * inner..][..inner]
                        .iter_mut()
                        .zip(row)
                        .for_each(|(a, v)| *a += v);
                }
            }
            y.iter_mut().for_each(|v| *v /= len as f32);
            emit(out, y)
        }
        Op::Rsqrt => unary(want(0)?, t(0), out, |v| 1.0 / v.sqrt()),
        Op::Gelu { approximate } => {
            if *approximate {
                unary(want(0)?, t(0), out, |x| {
                    0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044_715 * x * x * x)).tanh())
                })
            } else {
                unary(want(0)?, t(0), out, |x| {
                    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
                })
            }
        }
        Op::Gather => {
            let Value::I32(idx) = want(1)? else {
                return Err("indices must be int32".into());
            };
            let rows = t(0).shape.first().copied().unwrap_or(0) as usize;
            let row = t(0).elements() / rows.max(1);
            if let Some(bad) = idx.iter().find(|&&k| k < 0 || k as usize >= rows) {
                return Err(format!("index {bad} is outside [0, {rows})"));
            }
            Ok(match want(0)? {
                Value::F32(p) => Value::F32(
                    idx.iter()
                        .flat_map(|&k| p[k as usize * row..][..row].iter().copied())
                        .collect(),
                ),
                Value::I8(p) => Value::I8(
                    idx.iter()
                        .flat_map(|&k| p[k as usize * row..][..row].iter().copied())
                        .collect(),
                ),
                Value::I32(p) => Value::I32(
                    idx.iter()
                        .flat_map(|&k| p[k as usize * row..][..row].iter().copied())
                        .collect(),
                ),
            })
        }
        Op::L2Norm => {
            let x = real(want(0)?, t(0))?;
            let len = *t(0).shape.last().unwrap_or(&1) as usize;
            let mut y = x.into_owned();
            for row in y.chunks_mut(len.max(1)) {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
                row.iter_mut().for_each(|v| *v /= norm);
            }
            emit(out, y)
        }
        Op::Dequantize => match want(0)? {
            Value::F32(x) => Ok(Value::F32(x.clone())),
            Value::I8(q) => Ok(Value::F32(dequantize(q, t(0))?)),
            Value::I32(_) => Err("int32 input".into()),
        },
        Op::Quantize => {
            let x = as_f32(want(0)?, "QUANTIZE input")?;
            emit(out, x.to_vec())
        }
    })();
    result.map_err(|m| err(g, i, m))
}

fn unary(
    v: &Value,
    t: &Tensor,
    out: &Tensor,
    f: impl Fn(f32) -> f32 + Sync,
) -> Result<Value, String> {
    match v {
        // int8: a 256-entry table of the function on every input code, as
        // TFLite's int8 kernels build.
        Value::I8(q) => {
            let (s, z) = qparams(t)?;
            let (so, zo) = qparams(out)?;
            let table: Vec<i8> = (-128i32..=127)
                .map(|c| quantize(f(s * (c - z) as f32), so, zo))
                .collect();
            Ok(Value::I8(
                q.iter()
                    .map(|&c| table[(c as i32 + 128) as usize])
                    .collect(),
            ))
        }
        _ => {
            let x = real(v, t)?;
            emit(out, x.par_iter().map(|&v| f(v)).collect())
        }
    }
}

/// Numpy-style broadcasting of two tensors to `out_shape`.
fn broadcast(
    a: &[f32],
    ashape: &[i32],
    b: &[f32],
    bshape: &[i32],
    out_shape: &[i32],
    f: fn(f32, f32) -> f32,
) -> Result<Vec<f32>, String> {
    if ashape == bshape {
        return Ok(a.par_iter().zip(b).map(|(&x, &y)| f(x, y)).collect());
    }
    let rank = out_shape.len();
    let strides = |shape: &[i32]| -> Result<Vec<usize>, String> {
        let pad = rank
            .checked_sub(shape.len())
            .ok_or("input has a higher rank than the output")?;
        let mut st = vec![0usize; rank];
        let mut acc = 1usize;
        for d in (0..shape.len()).rev() {
            let (dim, od) = (shape[d], out_shape[d + pad]);
            if dim == od {
                st[d + pad] = acc;
            } else if dim != 1 {
                return Err(format!("shapes {ashape:?} and {bshape:?} do not broadcast"));
            }
            acc *= dim as usize;
        }
        Ok(st)
    };
    let (sa, sb) = (strides(ashape)?, strides(bshape)?);
    let total: usize = out_shape.iter().map(|&d| d as usize).product();
    let last = *out_shape.last().unwrap_or(&1) as usize;
    let mut y = vec![0f32; total];
    y.par_chunks_mut(last.max(1))
        .enumerate()
        .for_each(|(row, out)| {
            // Offsets of this row's first element in a and b.
            let (mut ia, mut ib, mut rem) = (0usize, 0usize, row);
            for d in (0..rank.saturating_sub(1)).rev() {
                let k = rem % out_shape[d] as usize;
                rem /= out_shape[d] as usize;
                ia += k * sa[d];
                ib += k * sb[d];
            }
            let (da, db) = (sa[rank - 1], sb[rank - 1]);
            for (j, o) in out.iter_mut().enumerate() {
                *o = f(a[ia + j * da], b[ib + j * db]);
            }
        });
    Ok(y)
}

fn transpose(v: &Value, shape: &[i32], perm: &[i32]) -> Result<Value, String> {
    if shape.len() != 3 || perm != [1, 0, 2] {
        return Err(format!(
            "only the [1, 0, 2] permutation of rank 3 is supported, got {perm:?} of {shape:?}"
        ));
    }
    let (d0, d1, d2) = (shape[0] as usize, shape[1] as usize, shape[2] as usize);
    fn swap<T: Copy + Default>(x: &[T], d0: usize, d1: usize, d2: usize) -> Vec<T> {
        let mut y = vec![T::default(); x.len()];
        for i in 0..d0 {
            for j in 0..d1 {
                y[(j * d0 + i) * d2..][..d2].copy_from_slice(&x[(i * d1 + j) * d2..][..d2]);
            }
        }
        y
    }
    Ok(match v {
        Value::F32(x) => Value::F32(swap(x, d0, d1, d2)),
        Value::I8(x) => Value::I8(swap(x, d0, d1, d2)),
        Value::I32(x) => Value::I32(swap(x, d0, d1, d2)),
    })
}

fn fully_connected(
    g: &Graph,
    ids: &[usize],
    inputs: &[&Value],
    out: &Tensor,
    linear: Option<&Linear>,
) -> Result<Value, String> {
    let wt = &g.tensors[ids[1]];
    let (o, k) = (wt.shape[0] as usize, wt.shape[1] as usize);
    match (inputs[0], linear) {
        (Value::F32(x), Some(l)) => {
            let rows = x.len() / k;
            let mut y = vec![0f32; rows * o];
            l.forward(x, rows, &mut y);
            Ok(Value::F32(y))
        }
        (Value::F32(x), None) => {
            // Only in constant folding; never on a hot path.
            let (Value::F32(w), Some(Value::F32(b))) = (inputs[1], inputs.get(2)) else {
                return Err("f32 weights expected".into());
            };
            let rows = x.len() / k;
            let mut y = vec![0f32; rows * o];
            for r in 0..rows {
                for c in 0..o {
                    y[r * o + c] = b[c] + (0..k).map(|j| x[r * k + j] * w[c * k + j]).sum::<f32>();
                }
            }
            Ok(Value::F32(y))
        }
        (Value::I8(x), _) => {
            let Value::I8(w) = inputs[1] else {
                return Err("int8 input needs int8 weights".into());
            };
            let bias = match inputs.get(2) {
                Some(Value::I32(b)) => b.as_slice(),
                Some(_) => return Err("int8 FULLY_CONNECTED needs an int32 bias".into()),
                None => &[],
            };
            let (sx, zx) = qparams(&g.tensors[ids[0]])?;
            let (sy, zy) = qparams(out)?;
            let wq = wt.quant.as_ref().ok_or("weights have no quantization")?;
            if wq.zero_point.iter().any(|&z| z != 0) {
                return Err("weights must be symmetric (zero point 0)".into());
            }
            let ws = |c: usize| {
                if wq.scale.len() == 1 {
                    wq.scale[0]
                } else {
                    wq.scale[c]
                }
            };
            let multipliers: Vec<f64> = (0..o)
                .map(|c| sx as f64 * ws(c) as f64 / sy as f64)
                .collect();
            let rows = x.len() / k;
            let mut y = vec![0i8; rows * o];
            y.par_chunks_mut(o).enumerate().for_each(|(r, yr)| {
                let xr: Vec<i32> = x[r * k..][..k].iter().map(|&v| v as i32 - zx).collect();
                for (c, yc) in yr.iter_mut().enumerate() {
                    let wr = &w[c * k..][..k];
                    let acc: i32 = xr.iter().zip(wr).map(|(&a, &b)| a * b as i32).sum::<i32>()
                        + bias.get(c).copied().unwrap_or(0);
                    *yc = ((acc as f64 * multipliers[c]).round() as i64 + zy as i64)
                        .clamp(-128, 127) as i8;
                }
            });
            Ok(Value::I8(y))
        }
        _ => Err("unsupported input type".into()),
    }
}

/// `[b, m, k] x [b, k, n]` (or `[b, n, k]` with `adj_y`), batch dims equal.
fn batch_matmul(
    ta: &Tensor,
    tb: &Tensor,
    out: &Tensor,
    a: &Value,
    b: &Value,
    adj_y: bool,
) -> Result<Value, String> {
    let (sa, sb) = (&ta.shape, &tb.shape);
    if sa.len() != 3 || sb.len() != 3 || sa[0] != sb[0] {
        return Err(format!(
            "shapes {sa:?} x {sb:?}: rank-3 inputs with equal batch are supported"
        ));
    }
    let (batch, m, k) = (sa[0] as usize, sa[1] as usize, sa[2] as usize);
    let n = if adj_y { sb[1] } else { sb[2] } as usize;
    // Element (kk, j) of batch `bi` of the right-hand side.
    let bidx = move |bi: usize, kk: usize, j: usize| {
        if adj_y {
            (bi * n + j) * k + kk
        } else {
            (bi * k + kk) * n + j
        }
    };
    match (a, b) {
        (Value::F32(a), Value::F32(b)) => {
            let mut y = vec![0f32; batch * m * n];
            y.par_chunks_mut(m * n).enumerate().for_each(|(bi, yb)| {
                for i in 0..m {
                    let ar = &a[(bi * m + i) * k..][..k];
                    for j in 0..n {
                        yb[i * n + j] = (0..k).map(|kk| ar[kk] * b[bidx(bi, kk, j)]).sum();
                    }
                }
            });
            Ok(Value::F32(y))
        }
        (Value::I8(a), Value::I8(b)) => {
            let ((s1, z1), (s2, z2), (so, zo)) = (qparams(ta)?, qparams(tb)?, qparams(out)?);
            let mult = s1 as f64 * s2 as f64 / so as f64;
            let mut y = vec![0i8; batch * m * n];
            y.par_chunks_mut(m * n).enumerate().for_each(|(bi, yb)| {
                // Right-hand side of this batch as `[n, k]` rows, zero point removed.
                let bt: Vec<i32> = (0..n)
                    .flat_map(|j| (0..k).map(move |kk| (j, kk)))
                    .map(|(j, kk)| b[bidx(bi, kk, j)] as i32 - z2)
                    .collect();
                for i in 0..m {
                    let ar: Vec<i32> = a[(bi * m + i) * k..][..k]
                        .iter()
                        .map(|&v| v as i32 - z1)
                        .collect();
                    for j in 0..n {
                        let acc: i32 = ar.iter().zip(&bt[j * k..][..k]).map(|(&x, &w)| x * w).sum();
                        yb[i * n + j] =
                            ((acc as f64 * mult).round() as i64 + zo as i64).clamp(-128, 127) as i8;
                    }
                }
            });
            Ok(Value::I8(y))
        }
        _ => Err("inputs must both be float32 or both int8".into()),
    }
}
