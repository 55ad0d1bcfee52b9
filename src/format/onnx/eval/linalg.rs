//! Matrix products: batched `MatMul` (numpy broadcasting of the batch
//! axes), `Gemm`, and onnxruntime's `MatMulNBits` (com.microsoft), all on
//! the `gemm` crate's single-threaded kernels. MatMulNBits' constant weights
//! are dequantized once, when the session is prepared (`prepare`), so a run
//! only multiplies.

use super::data::Data;
use super::elementwise::{broadcast, strides_in};
use super::ops::{Ctx, R};
use super::Value;
use crate::kernels::dense::small_gemm;

/// `dst[m, n] = sum_k a(i, k) * b(k, j)` for `a`, `b` read through strides
/// `(row, column)`, `dst` row-major `m x n`.
fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (a, a_strides): (&[f32], (usize, usize)),
    (b, b_strides): (&[f32], (usize, usize)),
) {
    let last = |(rs, cs): (usize, usize), rows: usize, cols: usize| {
        (rows.saturating_sub(1)) * rs + (cols.saturating_sub(1)) * cs
    };
    assert!(dst.len() >= m * n, "product: destination too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst[..m * n].fill(0.0);
        return;
    }
    assert!(last(a_strides, m, k) < a.len() && last(b_strides, k, n) < b.len());
    // SAFETY: the asserts above keep every (i, k), (k, j) and (i, j) the
    // strides reach inside the three slices.
    unsafe {
        small_gemm(
            (m, n, k),
            dst.as_mut_ptr(),
            n,
            a.as_ptr(),
            a_strides,
            b.as_ptr(),
            b_strides,
        );
    }
}

pub(super) fn matmul(c: &Ctx) -> R<Value> {
    let ((sa, a), (sb, b)) = (c.f32(0)?, c.f32(1)?);
    if sa.len() < 2 || sb.len() < 2 {
        return Err(format!(
            "only matrices (rank >= 2) are supported, got {sa:?} x {sb:?}"
        ));
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
    for (i, dst) in out.chunks_exact_mut((m * n).max(1)).take(count).enumerate() {
        let mut rem = i;
        for d in (0..batch.len()).rev() {
            idx[d] = rem % batch[d];
            rem /= batch[d];
        }
        let oa: usize = idx.iter().zip(&ta).map(|(i, s)| i * s).sum::<usize>() * m * k;
        let ob: usize = idx.iter().zip(&tb).map(|(i, s)| i * s).sum::<usize>() * k * n;
        product((m, n, k), dst, (&a[oa..], (k, 1)), (&b[ob..], (n, 1)));
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Ok(Value::f32(shape, out))
}

/// `Gemm`: `alpha * A' B' + beta * C` for 2-D A and B (`'`: transposed
/// when `transA` / `transB` is set), C broadcast to the `[M, N]` result.
pub(super) fn gemm(c: &Ctx) -> R<Value> {
    let ((sa, a), (sb, b)) = (c.f32(0)?, c.f32(1)?);
    let (&[ra, ca], &[rb, cb]) = (sa, sb) else {
        return Err(format!("A and B must be matrices, got {sa:?} and {sb:?}"));
    };
    let (trans_a, trans_b) = (c.int("transA", 0) != 0, c.int("transB", 0) != 0);
    let ((m, k), a_strides) = match trans_a {
        false => ((ra, ca), (ca, 1)),
        true => ((ca, ra), (1, ca)),
    };
    let ((k2, n), b_strides) = match trans_b {
        false => ((rb, cb), (cb, 1)),
        true => ((cb, rb), (1, cb)),
    };
    if k != k2 {
        return Err(format!(
            "inner dimensions differ: A' is [{m}, {k}], B' is [{k2}, {n}]"
        ));
    }
    let mut out = vec![0f32; m * n];
    product((m, n, k), &mut out, (a, a_strides), (b, b_strides));
    let alpha = c.float("alpha", 1.0);
    if alpha != 1.0 {
        out.iter_mut().for_each(|v| *v *= alpha);
    }
    if let Some(bias) = c.opt(2) {
        add_bias(&mut out, [m, n], bias, c.float("beta", 1.0))?;
    }
    Ok(Value::f32(vec![m, n], out))
}

/// `out += beta * C`, C broadcast (one way) to `shape`.
fn add_bias(out: &mut [f32], shape: [usize; 2], bias: &Value, beta: f32) -> R<()> {
    let Data::F32(cv) = &bias.data else {
        return Err(format!(
            "C of type {}, expected float",
            bias.data.type_name()
        ));
    };
    if broadcast(&bias.shape, &shape)? != shape {
        return Err(format!(
            "C of shape {:?} does not broadcast to {shape:?}",
            bias.shape
        ));
    }
    let st = strides_in(&bias.shape, &shape);
    for (i, row) in out.chunks_exact_mut(shape[1].max(1)).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v += beta * cv[i * st[0] + j * st[1]];
        }
    }
    Ok(())
}

/// A MatMulNBits weight decoded to float: `[N, K]` row-major, as B's rows
/// are output features.
pub(super) struct Dequantized {
    n: usize,
    k: usize,
    w: Vec<f32>,
}

/// MatMulNBits' attributes, checked.
struct NBitsAttrs {
    k: usize,
    n: usize,
    bits: usize,
    block: usize,
}

impl NBitsAttrs {
    fn of(c: &Ctx) -> R<Self> {
        let need = |name: &str| {
            let v = c.int(name, -1);
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| format!("attribute {name} is missing or not positive ({v})"))
        };
        let (k, n, block) = (need("K")?, need("N")?, need("block_size")?);
        let bits = c.int("bits", 4);
        if ![2, 4, 8].contains(&bits) {
            return Err(format!(
                "bits = {bits} is not supported (the evaluator reads 2-, 4- and 8-bit codes)"
            ));
        }
        let bits = bits as usize;
        if block < 16 || !block.is_power_of_two() {
            return Err(format!(
                "block_size = {block}: MatMulNBits takes a power of two of at least 16"
            ));
        }
        // accuracy_level only lowers the precision onnxruntime may use;
        // these reference semantics compute in float whatever it says.
        let level = c.int("accuracy_level", 0);
        if !(0..=4).contains(&level) {
            return Err(format!("accuracy_level = {level} is outside 0..=4"));
        }
        Ok(Self { k, n, bits, block })
    }

    fn blocks(&self) -> usize {
        self.k.div_ceil(self.block)
    }
}

/// Dequantizes B when B, scales and zero points are all constants (the
/// usual case: weights are initializers); `None` if any is computed.
pub(super) fn prepare_nbits(c: &Ctx) -> R<Option<Dequantized>> {
    let a = NBitsAttrs::of(c)?;
    let (Some(b), Some(scales)) = (c.opt(1), c.opt(2)) else {
        return Ok(None);
    };
    let zero_named = c.node.input.get(3).is_some_and(|n| !n.is_empty());
    if zero_named && c.opt(3).is_none() {
        return Ok(None);
    }
    dequantize_nbits(&a, b, scales, c.opt(3)).map(Some)
}

/// `(code - zero_point) * scale` for every weight, codes packed low-first
/// along K within each block's blob of `block_size * bits / 8` bytes.
fn dequantize_nbits(
    a: &NBitsAttrs,
    b: &Value,
    scales: &Value,
    zero: Option<&Value>,
) -> R<Dequantized> {
    let (blocks, blob) = (a.blocks(), a.block * a.bits / 8);
    let Data::U8(codes) = &b.data else {
        return Err(format!("B of type {}, expected uint8", b.data.type_name()));
    };
    if b.shape != [a.n, blocks, blob] {
        return Err(format!(
            "B is {:?}, expected [N, ceil(K / block_size), block_size * bits / 8] = {:?}",
            b.shape,
            [a.n, blocks, blob]
        ));
    }
    let Data::F32(scale) = &scales.data else {
        return Err(format!(
            "scales of type {}, expected float",
            scales.data.type_name()
        ));
    };
    if scale.len() != a.n * blocks {
        return Err(format!(
            "{} scales, expected N * ceil(K / block_size) = {}",
            scale.len(),
            a.n * blocks
        ));
    }
    let zeros = zero_points(a, zero)?;
    let per_byte = 8 / a.bits;
    let mask = (1u16 << a.bits) as u8 - 1;
    let mut w = vec![0f32; a.n * a.k];
    for (row, out) in w.chunks_exact_mut(a.k).enumerate() {
        for (j, part) in out.chunks_mut(a.block).enumerate() {
            let at = row * blocks + j;
            let (s, z) = (scale[at], zeros[at]);
            let bytes = &codes[at * blob..][..blob];
            for (e, v) in part.iter_mut().enumerate() {
                let code = (bytes[e / per_byte] >> ((e % per_byte) * a.bits)) & mask;
                *v = (f32::from(code) - z) * s;
            }
        }
    }
    Ok(Dequantized { n: a.n, k: a.k, w })
}

/// One zero point per block: the default `2^(bits - 1)`, uint8 codes packed
/// low-first (each row of N padded to whole bytes), or float values.
fn zero_points(a: &NBitsAttrs, zero: Option<&Value>) -> R<Vec<f32>> {
    let blocks = a.blocks();
    let Some(z) = zero else {
        return Ok(vec![(1u32 << (a.bits - 1)) as f32; a.n * blocks]);
    };
    match &z.data {
        Data::U8(packed) => {
            let row_bytes = (blocks * a.bits).div_ceil(8);
            if packed.len() != a.n * row_bytes {
                return Err(format!(
                    "{} bytes of zero points, expected N * ceil(blocks * bits / 8) = {}",
                    packed.len(),
                    a.n * row_bytes
                ));
            }
            let per_byte = 8 / a.bits;
            let mask = (1u16 << a.bits) as u8 - 1;
            Ok((0..a.n * blocks)
                .map(|i| {
                    let (row, j) = (i / blocks, i % blocks);
                    let byte = packed[row * row_bytes + j / per_byte];
                    f32::from((byte >> ((j % per_byte) * a.bits)) & mask)
                })
                .collect())
        }
        Data::F32(v) if v.len() == a.n * blocks => Ok(v.clone()),
        Data::F32(v) => Err(format!(
            "{} float zero points, expected N * ceil(K / block_size) = {}",
            v.len(),
            a.n * blocks
        )),
        other => Err(format!(
            "zero points of type {}, expected uint8 or float",
            other.type_name()
        )),
    }
}

/// `MatMulNBits`: `A [..., K] x dequantized(B)^T -> [..., N]` (+ bias).
pub(super) fn matmul_nbits(c: &Ctx) -> R<Value> {
    let attrs = NBitsAttrs::of(c)?;
    if c.node.input.get(4).is_some_and(|n| !n.is_empty()) {
        return Err("input g_idx (act-order block indices) is not supported".into());
    }
    let computed;
    let w = match c.prepared {
        Some(w) => w,
        None => {
            computed = dequantize_nbits(&attrs, c.arg(1)?, c.arg(2)?, c.opt(3))?;
            &computed
        }
    };
    let (sa, a) = c.f32(0)?;
    if sa.last() != Some(&w.k) {
        return Err(format!("A is {sa:?}, its last axis must be K = {}", w.k));
    }
    let m = a.len() / w.k;
    let mut out = vec![0f32; m * w.n];
    // b(k, j) = W[j, k]: W's rows are B's columns.
    product((m, w.n, w.k), &mut out, (a, (w.k, 1)), (&w.w, (1, w.k)));
    if let Some(bias) = c.opt(5) {
        match &bias.data {
            Data::F32(b) if b.len() == w.n => out
                .chunks_exact_mut(w.n)
                .for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v += b)),
            other => {
                return Err(format!(
                    "bias of type {} and {} values, expected {} floats",
                    other.type_name(),
                    other.len(),
                    w.n
                ))
            }
        }
    }
    let mut shape = sa.to_vec();
    *shape.last_mut().expect("A has rank >= 1") = w.n;
    Ok(Value::f32(shape, out))
}
