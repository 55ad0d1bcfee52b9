//! The ops the decoder graph added, each on a small graph written, read
//! back and run, against values worked out by hand or by a plain loop.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::format::onnx::builder::{attr_int, attr_ints, Dim, GraphBuilder};
use crate::format::onnx::nbits;
use crate::format::onnx::proto::data_type;
use crate::quant::legacy;

fn session(g: GraphBuilder) -> Session {
    let bytes = crate::format::onnx::encode(&g.finish("t", &BTreeMap::new()));
    let model = crate::format::onnx::decode(&bytes, Path::new("t.onnx")).unwrap();
    Session::new(&model, Path::new("t.onnx")).unwrap()
}

fn run(s: &Session, inputs: Vec<(&str, Value)>) -> HashMap<String, Arc<Value>> {
    s.run(inputs, &mut |_, _| {}).unwrap()
}

fn run_err(s: &Session, inputs: Vec<(&str, Value)>) -> String {
    s.run(inputs, &mut |_, _| {}).unwrap_err().to_string()
}

/// Deterministic values in about [-2, 2].
fn wave(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 37 + seed * 101) % 113) as f32 - 56.0) / 28.0)
        .collect()
}

/// `x [m, k] @ w^T` for `w [n, k]`, in f64.
fn reference_product(x: &[f32], w: &[f32], k: usize) -> Vec<f64> {
    x.chunks_exact(k)
        .flat_map(|row| {
            w.chunks_exact(k).map(move |col| {
                row.iter()
                    .zip(col)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum::<f64>()
            })
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((f64::from(g) - w).abs() <= tol, "[{i}]: {g} vs {w}");
    }
}

/// Q4_0 blocks of `[n, k]` values, and what they decode to.
fn q4_0(w: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = vec![0u8; w.len() / 32 * 18];
    for (x, out) in w.chunks_exact(32).zip(bytes.chunks_exact_mut(18)) {
        legacy::q4_0(x.try_into().unwrap(), out);
    }
    let mut decoded = vec![0f32; w.len()];
    for (b, out) in bytes.chunks_exact(18).zip(decoded.chunks_exact_mut(32)) {
        legacy::dq4_0(b, out);
    }
    (bytes, decoded)
}

fn nbits_attrs(k: usize, n: usize, bits: i64, block: usize) -> Vec<AttributeProto> {
    vec![
        attr_int("K", k as i64),
        attr_int("N", n as i64),
        attr_int("bits", bits),
        attr_int("block_size", block as i64),
        attr_int("accuracy_level", 0),
    ]
}

#[test]
fn matmul_nbits_multiplies_by_the_q4_0_values_decoded_once() {
    let (m, n, k) = (3, 5, 64);
    let (bytes, decoded) = q4_0(&wave(n * k, 1));
    let packed = nbits::from_q4_0(&bytes, n, k).unwrap();
    let mut g = GraphBuilder::new();
    g.input("a", data_type::FLOAT, &[Dim::Named("m"), Dim::Fixed(k)]);
    g.output("y", data_type::FLOAT, &[Dim::Named("m"), Dim::Fixed(n)]);
    g.u8("b", &[n, k / 32, 16], &packed.codes);
    g.f32("s", &[n * k / 32], &packed.scales);
    g.ms_op(
        "MatMulNBits",
        &["a", "b", "s"],
        "y",
        nbits_attrs(k, n, 4, 32),
    );
    let s = session(g);
    assert!(
        s.steps[0].prepared.is_some(),
        "constant weights are dequantized when the session is prepared"
    );
    let a = wave(m * k, 2);
    let y = run(&s, vec![("a", Value::f32(vec![m, k], a.clone()))]);
    assert_eq!(y["y"].shape, [m, n]);
    assert_close(
        y["y"].as_f32().unwrap(),
        &reference_product(&a, &decoded, k),
        1e-4,
    );
}

/// B given at run time (not prepared), K not a multiple of the block, an
/// explicit packed zero point per block and a bias.
#[test]
fn matmul_nbits_pads_the_last_block_and_reads_packed_zero_points() {
    let (n, k, block) = (2, 20, 16);
    // Codes: element e of row r is (r * 7 + e) % 16; blocks of 16 codes in
    // 8 bytes, low nibble first; the second block's last 12 codes are padding.
    let code = |r: usize, e: usize| ((r * 7 + e) % 16) as u8;
    let mut b = Vec::new();
    for r in 0..n {
        for e in (0..2 * block).step_by(2) {
            let (lo, hi) = (code(r, e), code(r, e + 1));
            b.push(lo | (hi << 4));
        }
    }
    let scales = [0.5f32, 0.25, 1.0, 2.0];
    // Zero points 3, 9 (row 0) and 12, 1 (row 1): one byte per row.
    let zeros = [3u8 | (9 << 4), 12 | (1 << 4)];
    let zero = |i: usize| [3.0f32, 9.0, 12.0, 1.0][i];
    let mut w = vec![0f32; n * k];
    for r in 0..n {
        for e in 0..k {
            let blk = r * 2 + e / block;
            w[r * k + e] = (f32::from(code(r, e)) - zero(blk)) * scales[blk];
        }
    }
    let mut g = GraphBuilder::new();
    g.input("a", data_type::FLOAT, &[Dim::Fixed(1), Dim::Fixed(k)]);
    g.input(
        "b",
        data_type::UINT8,
        &[Dim::Fixed(n), Dim::Fixed(2), Dim::Fixed(8)],
    );
    g.output("y", data_type::FLOAT, &[Dim::Fixed(1), Dim::Fixed(n)]);
    g.f32("s", &[n * 2], &scales);
    g.u8("z", &[n], &zeros);
    g.f32("bias", &[n], &[10.0, -10.0]);
    g.ms_op(
        "MatMulNBits",
        &["a", "b", "s", "z", "", "bias"],
        "y",
        nbits_attrs(k, n, 4, block),
    );
    let s = session(g);
    assert!(
        s.steps[0].prepared.is_none(),
        "B is computed: nothing to prepare"
    );
    let a = wave(k, 3);
    let y = run(
        &s,
        vec![
            ("a", Value::f32(vec![1, k], a.clone())),
            ("b", Value::new(vec![n, 2, 8], Data::U8(b))),
        ],
    );
    let mut want = reference_product(&a, &w, k);
    want[0] += 10.0;
    want[1] -= 10.0;
    assert_close(y["y"].as_f32().unwrap(), &want, 1e-4);
}

#[test]
fn matmul_nbits_refuses_what_it_does_not_compute() {
    for (attrs, message) in [
        (nbits_attrs(32, 1, 3, 32), "bits = 3 is not supported"),
        (nbits_attrs(32, 1, 4, 24), "block_size = 24"),
        (
            vec![attr_int("N", 1), attr_int("block_size", 32)],
            "attribute K is missing",
        ),
    ] {
        let mut g = GraphBuilder::new();
        g.input("a", data_type::FLOAT, &[Dim::Fixed(1), Dim::Fixed(32)]);
        g.output("y", data_type::FLOAT, &[Dim::Fixed(1), Dim::Fixed(1)]);
        g.u8("b", &[1, 1, 16], &[0; 16]);
        g.f32("s", &[1], &[1.0]);
        g.ms_op("MatMulNBits", &["a", "b", "s"], "y", attrs);
        let bytes = crate::format::onnx::encode(&g.finish("t", &BTreeMap::new()));
        let model = crate::format::onnx::decode(&bytes, Path::new("t.onnx")).unwrap();
        let err = Session::new(&model, Path::new("t.onnx"))
            .err()
            .expect("refused when prepared")
            .to_string();
        assert!(
            err.contains("(MatMulNBits)") && err.contains(message),
            "{err}"
        );
    }
}

/// The decoder's mask: causal over past + new positions (LessOrEqual on
/// int64 ranges), And-ed with the attention mask cast to bool, then Where.
#[test]
fn causal_mask_ops_follow_the_specification() {
    let mut g = GraphBuilder::new();
    g.input("keep", data_type::INT64, &[Dim::Fixed(1), Dim::Named("t")]);
    g.input(
        "scores",
        data_type::FLOAT,
        &[Dim::Named("s"), Dim::Named("t")],
    );
    g.output("y", data_type::FLOAT, &[Dim::Named("s"), Dim::Named("t")]);
    g.i64("rows", &[2, 1], &[1, 2]);
    g.i64("cols", &[1, 3], &[0, 1, 2]);
    g.scalar("masked", f32::MIN);
    g.op("LessOrEqual", &["cols", "rows"], "causal", vec![]);
    g.op(
        "Cast",
        &["keep"],
        "keep_b",
        vec![attr_int("to", data_type::BOOL as i64)],
    );
    g.op("And", &["causal", "keep_b"], "allowed", vec![]);
    g.op("Where", &["allowed", "scores", "masked"], "y", vec![]);
    let s = session(g);
    let mut seen = HashMap::new();
    let out = s
        .run(
            vec![
                ("keep", Value::i64(vec![1, 3], vec![0, 1, 1])),
                (
                    "scores",
                    Value::f32(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]),
                ),
            ],
            &mut |name, v| {
                seen.insert(name.to_string(), v.clone());
            },
        )
        .unwrap();
    assert!(
        !seen.contains_key("causal"),
        "folded: both ranges are constants"
    );
    assert_eq!(
        s.constant("causal").unwrap().data,
        Data::Bool(vec![true, true, false, true, true, true])
    );
    let m = f32::MIN;
    assert_eq!(out["y"].as_f32().unwrap(), &[m, 2., m, m, 5., 6.]);
}

/// An empty past concatenated with new keys, through float16 casts.
#[test]
fn concat_takes_zero_length_inputs_and_casts_round_to_float16() {
    let mut g = GraphBuilder::new();
    let kv = [Dim::Fixed(1), Dim::Fixed(2), Dim::Named("p"), Dim::Fixed(2)];
    g.input("past", data_type::FLOAT16, &kv);
    g.input("new", data_type::FLOAT, &kv);
    g.output("present", data_type::FLOAT16, &kv);
    g.op(
        "Cast",
        &["new"],
        "new16",
        vec![attr_int("to", data_type::FLOAT16 as i64)],
    );
    g.op(
        "Concat",
        &["past", "new16"],
        "present",
        vec![attr_int("axis", 2)],
    );
    let s = session(g);
    // 1 + 2^-11 is halfway between float16 neighbours 1 and 1 + 2^-10:
    // rounds to even (1); 70000 overflows float16 to infinity.
    let x = [1.0 + 2f32.powi(-11), 0.1, -3.0, 70000.0];
    let empty = Value::f32(vec![1, 2, 0, 2], vec![]);
    let out = run(
        &s,
        vec![
            ("past", empty),
            ("new", Value::f32(vec![1, 2, 1, 2], x.to_vec())),
        ],
    );
    let want = [1.0, half::f16::from_f32(0.1).to_f32(), -3.0, f32::INFINITY];
    assert_eq!(out["present"].shape, [1, 2, 1, 2]);
    assert_eq!(out["present"].as_f32().unwrap(), &want);
    // A past of one position: rows interleave per head along axis 2.
    let past = Value::f32(vec![1, 2, 1, 2], vec![7., 8., 9., 10.]);
    let out = run(
        &s,
        vec![
            ("past", past),
            ("new", Value::f32(vec![1, 2, 1, 2], vec![1., 2., 3., 4.])),
        ],
    );
    assert_eq!(out["present"].shape, [1, 2, 2, 2]);
    assert_eq!(
        out["present"].as_f32().unwrap(),
        &[7., 8., 1., 2., 9., 10., 3., 4.]
    );
}

/// RMSNorm's mean of squares in double, as the graph writes it.
#[test]
fn reduce_mean_in_double_is_one_rounding() {
    let mut g = GraphBuilder::new();
    g.input("x", data_type::FLOAT, &[Dim::Fixed(2), Dim::Fixed(3)]);
    g.output("m", data_type::FLOAT, &[Dim::Fixed(2), Dim::Fixed(1)]);
    g.op(
        "Cast",
        &["x"],
        "x64",
        vec![attr_int("to", data_type::DOUBLE as i64)],
    );
    g.op("Mul", &["x64", "x64"], "sq", vec![]);
    g.op(
        "ReduceMean",
        &["sq"],
        "mean64",
        vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)],
    );
    g.op(
        "Cast",
        &["mean64"],
        "m",
        vec![attr_int("to", data_type::FLOAT as i64)],
    );
    let s = session(g);
    let x = vec![0.1f32, 0.2, 0.3, 1e4, 1e-4, 3.0];
    let out = run(&s, vec![("x", Value::f32(vec![2, 3], x.clone()))]);
    let want: Vec<f32> = x
        .chunks(3)
        .map(|r| (r.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / 3.0) as f32)
        .collect();
    assert_eq!(out["m"].shape, [2, 1]);
    assert_eq!(out["m"].as_f32().unwrap(), &want[..]);
}

/// The q8 activation blocks' ops: ReduceMax, Equal, Sign (0 at 0), Floor.
#[test]
fn reduce_max_equal_sign_and_floor() {
    let mut g = GraphBuilder::new();
    g.input("x", data_type::FLOAT, &[Dim::Fixed(2), Dim::Fixed(3)]);
    g.output("sign", data_type::FLOAT, &[Dim::Fixed(2), Dim::Fixed(3)]);
    g.output("floor", data_type::FLOAT, &[Dim::Fixed(2), Dim::Fixed(3)]);
    g.output("zero", data_type::BOOL, &[Dim::Fixed(2), Dim::Fixed(1)]);
    g.scalar("z", 0.0);
    g.op("Abs", &["x"], "abs", vec![]);
    g.op(
        "ReduceMax",
        &["abs"],
        "amax",
        vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)],
    );
    g.op("Equal", &["amax", "z"], "zero", vec![]);
    g.op("Sign", &["x"], "sign", vec![]);
    g.op("Floor", &["x"], "floor", vec![]);
    let s = session(g);
    let x = vec![0.0, -0.0, 0.0, -2.5, 0.5, 1.5];
    let out = run(&s, vec![("x", Value::f32(vec![2, 3], x))]);
    assert_eq!(out["zero"].data, Data::Bool(vec![true, false]));
    assert_eq!(out["sign"].as_f32().unwrap(), &[0., 0., 0., -1., 1., 1.]);
    assert_eq!(out["floor"].as_f32().unwrap(), &[0., -0., 0., -3., 0., 1.]);
}

/// The tied head: `Gemm(x, table, transB = 1)`, and with alpha, beta and a
/// row-broadcast C.
#[test]
fn gemm_transposes_scales_and_adds_c() {
    let (m, k, n) = (2, 3, 4);
    let x = wave(m * k, 4);
    let table = wave(n * k, 5);
    let mut g = GraphBuilder::new();
    g.input("x", data_type::FLOAT, &[Dim::Fixed(m), Dim::Fixed(k)]);
    g.output("y", data_type::FLOAT, &[Dim::Fixed(m), Dim::Fixed(n)]);
    g.output("z", data_type::FLOAT, &[Dim::Fixed(k), Dim::Fixed(k)]);
    g.f32("t", &[n, k], &table);
    g.f32("c", &[n], &[1., 2., 3., 4.]);
    g.op("Gemm", &["x", "t"], "y", vec![attr_int("transB", 1)]);
    g.op(
        "Gemm",
        &["x", "x", "c3"],
        "z",
        vec![
            attr_int("transA", 1),
            crate::format::onnx::builder::attr_float("alpha", 2.0),
            crate::format::onnx::builder::attr_float("beta", 0.5),
        ],
    );
    g.f32("c3", &[k, 1], &[1., 2., 3.]);
    let s = session(g);
    let out = run(&s, vec![("x", Value::f32(vec![m, k], x.clone()))]);
    assert_close(
        out["y"].as_f32().unwrap(),
        &reference_product(&x, &table, k),
        1e-5,
    );
    // x^T x: [k, k], plus half of C's row value on each row.
    let mut want = vec![0f64; k * k];
    for i in 0..k {
        for j in 0..k {
            let dot: f64 = (0..m)
                .map(|r| f64::from(x[r * k + i]) * f64::from(x[r * k + j]))
                .sum();
            want[i * k + j] = 2.0 * dot + 0.5 * (i + 1) as f64;
        }
    }
    assert_close(out["z"].as_f32().unwrap(), &want, 1e-5);
}

#[test]
fn inputs_are_checked_against_their_declarations() {
    let mut g = GraphBuilder::new();
    g.input("x", data_type::FLOAT16, &[Dim::Named("n"), Dim::Fixed(2)]);
    g.output("y", data_type::FLOAT, &[Dim::Named("n"), Dim::Fixed(2)]);
    g.op("Neg", &["x"], "y", vec![]);
    let s = session(g);
    let y = run(&s, vec![("x", Value::f32(vec![1, 2], vec![1.0, -0.5]))]);
    assert_eq!(y["y"].as_f32().unwrap(), &[-1.0, 0.5]);
    let err = run_err(&s, vec![("x", Value::f32(vec![1, 3], vec![0.0; 3]))]);
    assert!(err.contains("input `x`: shape [1, 3]"), "{err}");
    let err = run_err(&s, vec![("x", Value::i64(vec![1, 2], vec![0; 2]))]);
    assert!(err.contains("int64 data for a float16 input"), "{err}");
    let err = run_err(&s, vec![]);
    assert!(
        err.contains("(Neg)") && err.contains("graph input `x` was not given"),
        "{err}"
    );
}

#[test]
fn unknown_ops_and_domains_are_named() {
    let mut g = GraphBuilder::new();
    g.input("x", data_type::FLOAT, &[Dim::Fixed(1)]);
    g.output("y", data_type::FLOAT, &[Dim::Fixed(1)]);
    g.ms_op("FusedGemm", &["x"], "y", vec![]);
    let err = run_err(&session(g), vec![("x", Value::f32(vec![1], vec![1.0]))]);
    assert!(
        err.contains("op `FusedGemm` of domain `com.microsoft` is not supported"),
        "{err}"
    );
}
