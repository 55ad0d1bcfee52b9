//! What an accelerator graph file (ONNX, TFLite) costs node by node, and
//! where each node runs on a target: the accelerator its runtime drives, or
//! the CPU for the ops that runtime cannot place there. Shapes come from the
//! file itself (TFLite stores them; an ONNX graph is run once by our
//! evaluator at the profiled length), so the FLOPs are the graph's own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::Serialize;

use super::project::Efficiency;
use crate::format::onnx::eval::{Session, Value};
use crate::format::onnx::proto::{data_type, ModelProto};
use crate::format::tflite::graph::{Graph as TfliteGraph, Op as TfliteOp};
use crate::target::schema::{Partition, Runtime};
use crate::target::Target;

/// When a node's work happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// All inputs constant: the runtime folds it when it loads the file
    /// (weight dequantization, float16 widening).
    Load,
    /// Computed from input shapes only (ONNX `Shape` and what follows from
    /// it): a constant once the shapes are fixed.
    Shape,
    /// Real work at every inference.
    Run,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub op: String,
    pub stage: Stage,
    /// Multiply-adds count two; any other op one per output element.
    pub flops: f64,
}

/// A graph's nodes in execution order, at one input length.
#[derive(Debug, Clone)]
pub struct GraphCost {
    pub format: &'static str,
    pub tokens: u64,
    pub nodes: Vec<Node>,
    /// Graph inputs with a named (free) dimension.
    pub dynamic_inputs: Vec<String>,
}

impl GraphCost {
    pub fn run_flops(&self) -> f64 {
        self.running().map(|n| n.flops).sum()
    }

    pub fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.stage == Stage::Run)
    }

    /// Op type → (count, FLOPs) of the nodes that run at inference.
    pub fn op_mix(&self) -> BTreeMap<String, (usize, f64)> {
        let mut mix = BTreeMap::new();
        for n in self.running() {
            let e = mix.entry(n.op.clone()).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += n.flops;
        }
        mix
    }
}

fn elements(shape: &[usize]) -> f64 {
    shape.iter().product::<usize>() as f64
}

/// Runs `model` once on `tokens`-long encoder inputs (ids 0, mask 1, token
/// types 0) and costs every node from the shapes it saw.
pub fn onnx_cost(model: &ModelProto, path: &Path, tokens: u64) -> Result<GraphCost, String> {
    let graph = model.graph.as_ref().ok_or("the model has no graph")?;
    let session = Session::new(model, path).map_err(|e| e.to_string())?;
    let initializers: HashSet<&str> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    let mut inputs = Vec::new();
    let mut dynamic_inputs = Vec::new();
    for v in &graph.input {
        let name = v.name.clone().unwrap_or_default();
        if initializers.contains(name.as_str()) {
            continue;
        }
        let tensor = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        let dims = tensor
            .and_then(|t| t.shape.as_ref())
            .map(|s| s.dim.as_slice())
            .unwrap_or_default();
        if dims.iter().any(|d| d.dim_value.is_none()) {
            dynamic_inputs.push(name.clone());
        }
        if tensor.and_then(|t| t.elem_type) != Some(data_type::INT64) || dims.len() != 2 {
            return Err(format!(
                "input `{name}` is not an int64 [batch, sequence] tensor: profile reads encoder graphs \
                 (input_ids, attention_mask, token_type_ids), not this one"
            ));
        }
        let fill = i64::from(name.contains("mask"));
        inputs.push((
            name,
            Value::i64(vec![1, tokens as usize], vec![fill; tokens as usize]),
        ));
    }
    let mut shapes: HashMap<String, Vec<usize>> = HashMap::new();
    let named: Vec<(&str, Value)> = inputs
        .iter()
        .map(|(n, v)| (n.as_str(), v.clone()))
        .collect();
    for (n, v) in &inputs {
        shapes.insert(n.clone(), v.shape.clone());
    }
    session
        .run(named, &mut |name, v| {
            shapes.insert(name.to_string(), v.shape.clone());
        })
        .map_err(|e| e.to_string())?;
    let shape_of = |name: &str| -> Option<Vec<usize>> {
        shapes
            .get(name)
            .cloned()
            .or_else(|| session.constant(name).map(|v| v.shape.clone()))
    };
    let mut from_shapes: HashSet<&str> = HashSet::new();
    let mut nodes = Vec::new();
    for node in &graph.node {
        let op = node.op_type.clone().unwrap_or_default();
        let out = node.output.first().map(String::as_str).unwrap_or_default();
        let live: Vec<&str> = node
            .input
            .iter()
            .map(String::as_str)
            .filter(|i| !i.is_empty() && session.constant(i).is_none())
            .collect();
        let stage = if live.is_empty() && !node.input.is_empty() {
            Stage::Load
        } else if op == "Shape" || live.iter().all(|i| from_shapes.contains(i)) {
            from_shapes.insert(out);
            Stage::Shape
        } else {
            Stage::Run
        };
        let out_elems = shape_of(out).map_or(0.0, |s| elements(&s));
        let flops = match op.as_str() {
            "MatMul" | "MatMulNBits" | "Gemm" => {
                let k = node
                    .input
                    .first()
                    .and_then(|a| shape_of(a))
                    .and_then(|s| s.last().copied())
                    .unwrap_or(0);
                2.0 * out_elems * k as f64
            }
            _ => out_elems,
        };
        nodes.push(Node { op, stage, flops });
    }
    Ok(GraphCost {
        format: "onnx",
        tokens,
        nodes,
        dynamic_inputs,
    })
}

/// A TFLite graph's nodes, costed from the shapes it stores.
pub fn tflite_cost(graph: &TfliteGraph) -> GraphCost {
    let mut constant: Vec<bool> = graph.tensors.iter().map(|t| t.data.is_some()).collect();
    let elems = |t: usize| graph.tensors[t].elements() as f64;
    let mut nodes = Vec::new();
    for n in &graph.nodes {
        let load = !n.inputs.is_empty() && n.inputs.iter().all(|&t| constant[t]);
        if load {
            for &t in &n.outputs {
                constant[t] = true;
            }
        }
        let out = n.outputs.first().map_or(0.0, |&t| elems(t));
        let flops = match n.op {
            TfliteOp::FullyConnected => {
                let k = graph.tensors[n.inputs[1]]
                    .shape
                    .get(1)
                    .copied()
                    .unwrap_or(0);
                2.0 * out * k.max(0) as f64
            }
            TfliteOp::BatchMatMul { .. } => {
                let k = graph.tensors[n.inputs[0]]
                    .shape
                    .last()
                    .copied()
                    .unwrap_or(0);
                2.0 * out * k.max(0) as f64
            }
            _ => out,
        };
        nodes.push(Node {
            op: n.op.name().to_string(),
            stage: if load { Stage::Load } else { Stage::Run },
            flops,
        });
    }
    let tokens = graph
        .inputs
        .first()
        .and_then(|&t| graph.tensors[t].shape.last().copied())
        .unwrap_or(0)
        .max(0) as u64;
    GraphCost {
        format: "tflite",
        tokens,
        nodes,
        dynamic_inputs: Vec::new(),
    }
}

/// Where one runtime of a target runs the graph, and how long it takes.
#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    pub runtime: String,
    /// The accelerator's kind and name, or `cpu`.
    pub engine: String,
    pub accelerator_flops: f64,
    pub cpu_flops: f64,
    /// Share of the inference FLOPs on the accelerator.
    pub accelerator_share: f64,
    /// Nodes on the accelerator, by op.
    pub on_accelerator: BTreeMap<String, usize>,
    /// Nodes that fall back to the CPU, by op: (count, FLOPs).
    pub on_cpu: BTreeMap<String, (usize, f64)>,
    /// Runs of consecutive nodes on one device (each change is a hand-over).
    pub segments: usize,
    pub latency_ms: f64,
    pub notes: Vec<String>,
    pub assumption: String,
}

/// Places `cost`'s inference nodes for `runtime` on `target`: on the
/// accelerator that runtime drives when it runs the file's weight `scheme`
/// and lists the op (with `Prefix` partitioning, only up to the first op it
/// lacks), on the CPU otherwise; each side at its peak times `eff.compute`.
pub fn place(
    cost: &GraphCost,
    target: &Target,
    runtime: &Runtime,
    scheme: &str,
    eff: Efficiency,
) -> Placement {
    let cpu = &target.spec.cpu;
    let accelerator = target
        .spec
        .accelerators
        .iter()
        .find(|a| a.runtimes.contains(&runtime.name));
    let mut notes = Vec::new();
    let usable = accelerator.filter(|a| {
        let runs = a
            .weight_schemes
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme));
        if !runs {
            notes.push(format!(
                "the {} runs {} weights only; this file's are {scheme}: every op on the CPU",
                a.name,
                a.weight_schemes.join(", ")
            ));
        }
        runs
    });
    if let Some(a) = usable {
        let float = matches!(scheme, "F16" | "F32");
        if float && a.peak_tops_dtype.starts_with("int") {
            notes.push(format!(
                "the {}'s {} TOPS are for {}; {scheme} work is projected at that rate, which most \
                 NPUs do not reach in float",
                a.name, a.peak_tops, a.peak_tops_dtype
            ));
        }
        if runtime.accelerator_ops.is_empty() {
            notes.push(format!(
                "the profile lists no accelerator ops for `{}`: every op assumed to run on the {}",
                runtime.name, a.name
            ));
        }
        if runtime.fixed_shapes && !cost.dynamic_inputs.is_empty() {
            notes.push(format!(
                "`{}` compiles fixed shapes only; this graph's inputs {} have free dimensions: fix them \
                 (e.g. onnxruntime's make_dynamic_shape_fixed) before loading it",
                runtime.name,
                cost.dynamic_inputs.join(", ")
            ));
        }
    }
    let mut on_accelerator = BTreeMap::new();
    let mut on_cpu: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    let (mut accelerator_flops, mut cpu_flops) = (0.0, 0.0);
    let mut segments = 0;
    let mut last: Option<bool> = None;
    let mut mapped_so_far = true;
    for n in cost.running() {
        let listed = runtime.accelerator_ops.is_empty() || runtime.accelerator_ops.contains(&n.op);
        let here = usable.is_some() && listed && mapped_so_far;
        if usable.is_some() && !listed && mapped_so_far && runtime.partition == Partition::Prefix {
            mapped_so_far = false;
            notes.push(format!(
                "`{}` maps one leading segment: it stops at the first {} (not an accelerator op), \
                 and everything after it runs on the CPU",
                runtime.name, n.op
            ));
        }
        if here {
            *on_accelerator.entry(n.op.clone()).or_insert(0) += 1;
            accelerator_flops += n.flops;
        } else {
            let e = on_cpu.entry(n.op.clone()).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += n.flops;
            cpu_flops += n.flops;
        }
        if last != Some(here) {
            segments += 1;
            last = Some(here);
        }
    }
    let cpu_seconds = cpu_flops / (cpu.peak_gflops * 1e9 * eff.compute);
    let (engine, accelerator_seconds, assumption) = match usable {
        Some(a) => (
            format!("{} {}", a.kind, a.name),
            accelerator_flops / (a.peak_tops * 1e12 * eff.compute),
            format!(
                "{} at {} TOPS {} and CPU {} GFLOP/s, each x {:.0}% efficiency (assumed); hand-overs not costed",
                a.name,
                a.peak_tops,
                a.peak_tops_dtype,
                cpu.peak_gflops,
                eff.compute * 100.0
            ),
        ),
        None => (
            "cpu".to_string(),
            0.0,
            format!(
                "CPU {} GFLOP/s x {:.0}% efficiency (assumed)",
                cpu.peak_gflops,
                eff.compute * 100.0
            ),
        ),
    };
    let total = accelerator_flops + cpu_flops;
    Placement {
        runtime: runtime.name.clone(),
        engine,
        accelerator_flops,
        cpu_flops,
        accelerator_share: if total > 0.0 {
            accelerator_flops / total
        } else {
            0.0
        },
        on_accelerator,
        on_cpu,
        segments,
        latency_ms: (accelerator_seconds + cpu_seconds) * 1e3,
        notes,
        assumption,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(nodes: &[(&str, Stage, f64)]) -> GraphCost {
        GraphCost {
            format: "test",
            tokens: 8,
            nodes: nodes
                .iter()
                .map(|&(op, stage, flops)| Node {
                    op: op.into(),
                    stage,
                    flops,
                })
                .collect(),
            dynamic_inputs: vec!["input_ids".into()],
        }
    }

    fn runtime<'t>(t: &'t Target, name: &str) -> &'t Runtime {
        t.spec.runtimes.iter().find(|r| r.name == name).unwrap()
    }

    #[test]
    fn the_edge_tpu_maps_only_up_to_the_first_op_it_lacks() {
        let t = crate::target::load("coral-dev-board", None).unwrap();
        let g = cost(&[
            ("RESHAPE", Stage::Run, 1.0),
            ("DEQUANTIZE", Stage::Load, 50.0),
            ("FULLY_CONNECTED", Stage::Run, 100.0),
            ("GATHER", Stage::Run, 2.0),
            ("FULLY_CONNECTED", Stage::Run, 1000.0),
        ]);
        let p = place(
            &g,
            &t,
            runtime(&t, "tflite-edgetpu"),
            "int8_pc",
            ASSUMED_TEST,
        );
        assert_eq!(p.accelerator_flops, 101.0);
        assert_eq!(
            p.cpu_flops, 1002.0,
            "load-time nodes are not inference work"
        );
        assert_eq!(p.on_cpu["FULLY_CONNECTED"], (1, 1000.0));
        assert_eq!(p.segments, 2);
        assert!(
            p.notes.iter().any(|n| n.contains("first GATHER")),
            "{:?}",
            p.notes
        );
        // Float weights: the Edge TPU takes none of it.
        let p = place(&g, &t, runtime(&t, "tflite-edgetpu"), "F16", ASSUMED_TEST);
        assert_eq!((p.accelerator_flops, p.engine.as_str()), (0.0, "cpu"));
        let expected_ms = 1103.0 / (t.spec.cpu.peak_gflops * 1e9 * 0.5) * 1e3;
        assert!((p.latency_ms - expected_ms).abs() < 1e-12);
    }

    #[test]
    fn a_per_op_runtime_sends_only_unlisted_ops_to_the_cpu_and_counts_hand_overs() {
        let t = crate::target::load("snapdragon-8gen3-phone", None).unwrap();
        let g = cost(&[
            ("Shape", Stage::Shape, 0.0),
            ("MatMul", Stage::Run, 100.0),
            ("NonZero", Stage::Run, 3.0),
            ("MatMul", Stage::Run, 100.0),
        ]);
        let p = place(&g, &t, runtime(&t, "qnn"), "int8_pc", ASSUMED_TEST);
        assert_eq!(p.on_accelerator["MatMul"], 2);
        assert_eq!(p.on_cpu.keys().collect::<Vec<_>>(), ["NonZero"]);
        assert_eq!(p.segments, 3);
        assert!((p.accelerator_share - 200.0 / 203.0).abs() < 1e-12);
        assert!(
            p.notes.iter().any(|n| n.contains("fixed shapes")),
            "{:?}",
            p.notes
        );
        // A runtime with no accelerator: all on the CPU, one segment.
        let p = place(&g, &t, runtime(&t, "onnxruntime"), "int8_pc", ASSUMED_TEST);
        assert_eq!((p.cpu_flops, p.segments), (203.0, 1));
    }

    const ASSUMED_TEST: Efficiency = Efficiency {
        compute: 0.5,
        bandwidth: 0.5,
    };
}
