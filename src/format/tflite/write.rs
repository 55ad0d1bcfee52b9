//! Serialises a [`Graph`] as a TFLite flatbuffer with the `flatbuffers`
//! crate's builder and hand-written table layouts (slots from `schema`).
//! The same graph gives the same bytes: every table is built in graph order.

use flatbuffers::{FlatBufferBuilder, Push, PushAlignment, UnionWIPOffset, WIPOffset};

use super::graph::{Graph, Op, Tensor};
use super::schema::{self, field, slot};

/// A zero-sized push that only aligns the builder to 16 bytes: buffer data
/// is `force_align: 16` in the schema (kernels may read it in place).
struct Align16;

impl Push for Align16 {
    type Output = ();
    unsafe fn push(&self, _dst: &mut [u8], _written_len: usize) {}
    fn size() -> usize {
        0
    }
    fn alignment() -> PushAlignment {
        PushAlignment::new(16)
    }
}

/// The flatbuffer bytes of `graph`.
pub fn write(graph: &Graph) -> Vec<u8> {
    let data_bytes: usize = graph
        .tensors
        .iter()
        .filter_map(|t| t.data.as_ref().map(Vec::len))
        .sum();
    let mut fbb =
        FlatBufferBuilder::with_capacity(data_bytes + 16 * graph.tensors.len() + (1 << 20));

    // Buffer 0 is the schema's empty sentinel; each constant gets its own.
    let mut buffers = vec![empty_table(&mut fbb)];
    let mut buffer_of = vec![0u32; graph.tensors.len()];
    for (i, t) in graph.tensors.iter().enumerate() {
        if let Some(data) = &t.data {
            let vector = aligned_bytes(&mut fbb, data);
            let start = fbb.start_table();
            fbb.push_slot_always(slot(field::buffer::DATA), vector);
            buffers.push(fbb.end_table(start));
            buffer_of[i] = (buffers.len() - 1) as u32;
        }
    }

    let tensors: Vec<_> = graph
        .tensors
        .iter()
        .zip(&buffer_of)
        .map(|(t, &buffer)| tensor(&mut fbb, t, buffer))
        .collect();

    // Operator codes in first-use order, one per (builtin, version).
    let mut codes: Vec<(i32, i32)> = Vec::new();
    let mut code_of = Vec::with_capacity(graph.nodes.len());
    for n in &graph.nodes {
        let first = n.inputs.first().map(|&i| graph.tensors[i].ty);
        let key = (
            n.op.builtin_code(),
            n.op.version(first.unwrap_or(super::graph::ElemType::F32)),
        );
        let index = codes.iter().position(|c| *c == key).unwrap_or_else(|| {
            codes.push(key);
            codes.len() - 1
        });
        code_of.push(index as u32);
    }
    let operator_codes: Vec<_> = codes
        .iter()
        .map(|&(code, version)| {
            let start = fbb.start_table();
            fbb.push_slot(slot(field::operator_code::BUILTIN_CODE), code, 0);
            fbb.push_slot(slot(field::operator_code::VERSION), version, 1);
            let deprecated = code.min(schema::op::PLACEHOLDER_FOR_GREATER_OP_CODES) as i8;
            fbb.push_slot(
                slot(field::operator_code::DEPRECATED_BUILTIN_CODE),
                deprecated,
                0,
            );
            fbb.end_table(start)
        })
        .collect();

    let operators: Vec<_> = graph
        .nodes
        .iter()
        .zip(&code_of)
        .map(|(n, &code)| {
            let inputs = index_vector(&mut fbb, &n.inputs);
            let outputs = index_vector(&mut fbb, &n.outputs);
            let opts = options(&mut fbb, &n.op);
            let start = fbb.start_table();
            fbb.push_slot(slot(field::operator::OPCODE_INDEX), code, 0);
            fbb.push_slot_always(slot(field::operator::INPUTS), inputs);
            fbb.push_slot_always(slot(field::operator::OUTPUTS), outputs);
            if let Some(opts) = opts {
                fbb.push_slot(
                    slot(field::operator::BUILTIN_OPTIONS_TYPE),
                    n.op.options_type(),
                    0,
                );
                fbb.push_slot_always(slot(field::operator::BUILTIN_OPTIONS), opts);
            }
            fbb.end_table(start)
        })
        .collect();

    let tensors = fbb.create_vector(&tensors);
    let inputs = index_vector(&mut fbb, &graph.inputs);
    let outputs = index_vector(&mut fbb, &graph.outputs);
    let operators = fbb.create_vector(&operators);
    let name = fbb.create_string("main");
    let start = fbb.start_table();
    fbb.push_slot_always(slot(field::subgraph::TENSORS), tensors);
    fbb.push_slot_always(slot(field::subgraph::INPUTS), inputs);
    fbb.push_slot_always(slot(field::subgraph::OUTPUTS), outputs);
    fbb.push_slot_always(slot(field::subgraph::OPERATORS), operators);
    fbb.push_slot_always(slot(field::subgraph::NAME), name);
    let subgraph = fbb.end_table(start);

    let operator_codes = fbb.create_vector(&operator_codes);
    let subgraphs = fbb.create_vector(&[subgraph]);
    let description = fbb.create_string(&graph.description);
    let buffers = fbb.create_vector(&buffers);
    let start = fbb.start_table();
    fbb.push_slot(slot(field::model::VERSION), schema::SCHEMA_VERSION, 0);
    fbb.push_slot_always(slot(field::model::OPERATOR_CODES), operator_codes);
    fbb.push_slot_always(slot(field::model::SUBGRAPHS), subgraphs);
    fbb.push_slot_always(slot(field::model::DESCRIPTION), description);
    fbb.push_slot_always(slot(field::model::BUFFERS), buffers);
    let model = fbb.end_table(start);
    fbb.finish(model, Some(schema::FILE_IDENTIFIER));
    fbb.finished_data().to_vec()
}

type TableOffset = WIPOffset<flatbuffers::TableFinishedWIPOffset>;

fn empty_table(fbb: &mut FlatBufferBuilder) -> TableOffset {
    let start = fbb.start_table();
    fbb.end_table(start)
}

/// A `[ubyte]` whose first element sits on a 16-byte boundary of the file.
fn aligned_bytes<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    data: &[u8],
) -> WIPOffset<flatbuffers::Vector<'a, u8>> {
    // The builder writes back to front: align the end, pad so the data's
    // start lands on 16, and `create_vector` adds no padding of its own
    // (the length prefix then ends on a 4-byte boundary).
    fbb.push(Align16);
    for _ in 0..(16 - data.len() % 16) % 16 {
        fbb.push(0u8);
    }
    fbb.create_vector(data)
}

fn index_vector<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    indices: &[usize],
) -> WIPOffset<flatbuffers::Vector<'a, i32>> {
    let v: Vec<i32> = indices.iter().map(|&i| i as i32).collect();
    fbb.create_vector(&v)
}

fn tensor(fbb: &mut FlatBufferBuilder, t: &Tensor, buffer: u32) -> TableOffset {
    let shape = fbb.create_vector(&t.shape);
    let name = fbb.create_string(&t.name);
    let quant = t.quant.as_ref().map(|q| {
        let scale = fbb.create_vector(&q.scale);
        let zero_point = fbb.create_vector(&q.zero_point);
        let start = fbb.start_table();
        fbb.push_slot_always(slot(field::quantization::SCALE), scale);
        fbb.push_slot_always(slot(field::quantization::ZERO_POINT), zero_point);
        fbb.push_slot(slot(field::quantization::QUANTIZED_DIMENSION), q.axis, 0);
        fbb.end_table(start)
    });
    let start = fbb.start_table();
    fbb.push_slot_always(slot(field::tensor::SHAPE), shape);
    fbb.push_slot(slot(field::tensor::TYPE), t.ty.code(), 0);
    fbb.push_slot(slot(field::tensor::BUFFER), buffer, 0);
    fbb.push_slot_always(slot(field::tensor::NAME), name);
    if let Some(q) = quant {
        fbb.push_slot_always(slot(field::tensor::QUANTIZATION), q);
    }
    fbb.end_table(start)
}

/// The builtin options table of `op`, `None` for ops that take none.
fn options(fbb: &mut FlatBufferBuilder, op: &Op) -> Option<WIPOffset<UnionWIPOffset>> {
    let new_shape = match op {
        Op::Reshape { new_shape } => Some(fbb.create_vector(new_shape)),
        _ => None,
    };
    if matches!(op, Op::Rsqrt) {
        return None;
    }
    let start = fbb.start_table();
    match op {
        Op::Softmax { beta } => fbb.push_slot(slot(field::softmax::BETA), *beta, 0.0),
        Op::Mean { keep_dims } => fbb.push_slot(slot(field::reducer::KEEP_DIMS), *keep_dims, false),
        Op::BatchMatMul { adj_y } => {
            fbb.push_slot(slot(field::batch_matmul::ADJ_X), false, false);
            fbb.push_slot(slot(field::batch_matmul::ADJ_Y), *adj_y, false);
        }
        Op::Gelu { approximate } => {
            fbb.push_slot(slot(field::gelu::APPROXIMATE), *approximate, false)
        }
        Op::Gather => fbb.push_slot(slot(field::gather::AXIS), 0i32, 0),
        Op::Reshape { .. } => {
            if let Some(v) = new_shape {
                fbb.push_slot_always(slot(field::reshape::NEW_SHAPE), v);
            }
        }
        // Add/Sub/Mul/FullyConnected/L2Norm: no fused activation (NONE = 0);
        // FullyConnected's weights_format DEFAULT and keep_num_dims false.
        _ => {}
    }
    Some(fbb.end_table(start).as_union_value())
}
