//! llama.cpp's on-the-fly activation quantization as standard ONNX ops: the
//! input of every quantized matmul cut into blocks of 32, each scaled by
//! `d = max|x| / 127`, rounded to integers (half away from zero) and
//! multiplied back by `d` rounded to float16 (`kernels::activation::Q8Row`,
//! ggml's `quantize_row_q8_0`). A Q4_0 × Q8_0 dot product is then the dot
//! product of these values with the weights, so the graph computes what the
//! GGUF engine computes instead of drifting from it by quantization noise
//! (measured: a logit gap of 1.3 on SmolLM2 without it, enough to flip
//! greedy tokens where two candidates lie within 0.2).

use super::builder::{attr_int, attr_ints, GraphBuilder};
use super::proto::data_type;

/// Constants the blocks share; call once per graph before [`q8_0`].
pub fn constants(g: &mut GraphBuilder) {
    g.scalar("q8.qmax", 127.0);
    g.scalar("q8.zero", 0.0);
    g.scalar("q8.one", 1.0);
    g.scalar("q8.half", 0.5);
}

/// `x` ([..., k], `k` a multiple of 32) on the Q8_0 grid; returns the name of
/// the result, same shape.
pub fn q8_0(g: &mut GraphBuilder, x: &str, k: usize, out: &str) -> String {
    let n = |s: &str| format!("{out}.{s}");
    let blocks = g.i64(&n("blocks_shape"), &[4], &[0, 0, (k / 32) as i64, 32]);
    let flat = g.i64(&n("flat_shape"), &[3], &[0, 0, k as i64]);
    let xb = g.op("Reshape", &[x, &blocks], &n("blocks"), vec![]);
    let abs = g.op("Abs", &[&xb], &n("abs"), vec![]);
    let amax = g.op(
        "ReduceMax",
        &[&abs],
        &n("amax"),
        vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)],
    );
    let d = g.op("Div", &[&amax, "q8.qmax"], &n("d"), vec![]);
    // 1 / d, or 0 for an all-zero block (ggml's `d ? 1/d : 0`).
    let zero_block = g.op("Equal", &[&d, "q8.zero"], &n("zero_block"), vec![]);
    let inv = g.op("Div", &["q8.one", &d], &n("inv_raw"), vec![]);
    let inv = g.op("Where", &[&zero_block, "q8.zero", &inv], &n("inv"), vec![]);
    let v = g.op("Mul", &[&xb, &inv], &n("scaled"), vec![]);
    // roundf: sign(v) * floor(|v| + 0.5) (ONNX Round ties to even).
    let mag = g.op("Abs", &[&v], &n("mag"), vec![]);
    let mag = g.op("Add", &[&mag, "q8.half"], &n("mag_half"), vec![]);
    let mag = g.op("Floor", &[&mag], &n("mag_round"), vec![]);
    let sign = g.op("Sign", &[&v], &n("sign"), vec![]);
    let q = g.op("Mul", &[&sign, &mag], &n("q"), vec![]);
    let d16 = g.op(
        "Cast",
        &[&d],
        &n("d_f16"),
        vec![attr_int("to", data_type::FLOAT16 as i64)],
    );
    let d16 = g.op(
        "Cast",
        &[&d16],
        &n("d_rounded"),
        vec![attr_int("to", data_type::FLOAT as i64)],
    );
    let back = g.op("Mul", &[&q, &d16], &n("dequant"), vec![]);
    g.op("Reshape", &[&back, &flat], out, vec![])
}
