//! Computes what an ONNX graph computes, for the ops our writers emit: the
//! reference semantics of each op in f32 (QuantizeLinear rounds half to even
//! and saturates, DequantizeLinear per tensor or per axis), so accuracy and
//! calibration are measured on the file's own weights and quantization
//! parameters. Nodes whose inputs are all constant (weight dequantization,
//! float16 casts) are evaluated once when the session is prepared.
//!
//! One run is single-threaded and deterministic; callers parallelise over
//! independent inputs.

mod ops;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::proto::{AttributeProto, ModelProto, NodeProto};
use super::reader::{tensor_data, Data};
use super::OnnxError;

/// A tensor value: row-major shape and data.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Value {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self {
            shape,
            data: Data::F32(data),
        }
    }

    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Self {
        Self {
            shape,
            data: Data::I64(data),
        }
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }
}

/// A node ready to run: its op, attributes and resolved input slots.
struct Step {
    node: NodeProto,
}

/// A prepared graph: constants decoded and folded, nodes in order.
pub struct Session {
    path: PathBuf,
    constants: HashMap<String, Arc<Value>>,
    steps: Vec<Step>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl Session {
    pub fn new(model: &ModelProto, path: &Path) -> Result<Self, OnnxError> {
        let graph = model.graph.as_ref().ok_or_else(|| OnnxError::Decode {
            path: path.to_path_buf(),
            message: "the model has no graph".into(),
        })?;
        let mut constants = HashMap::new();
        for t in &graph.initializer {
            let (shape, data) = tensor_data(t, path)?;
            constants.insert(
                t.name.clone().unwrap_or_default(),
                Arc::new(Value { shape, data }),
            );
        }
        let inputs: Vec<String> = graph
            .input
            .iter()
            .filter_map(|v| v.name.clone())
            .filter(|n| !constants.contains_key(n))
            .collect();
        let mut steps = Vec::new();
        for node in &graph.node {
            let constant = !node.input.is_empty()
                && node
                    .input
                    .iter()
                    .all(|i| i.is_empty() || constants.contains_key(i));
            if constant {
                let args = node
                    .input
                    .iter()
                    .map(|i| (!i.is_empty()).then(|| constants[i].clone()))
                    .collect::<Vec<_>>();
                let out = run_node(node, &args, path)?;
                constants.insert(node.output[0].clone(), Arc::new(out));
            } else {
                steps.push(Step { node: node.clone() });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            constants,
            steps,
            inputs,
            outputs: graph.output.iter().filter_map(|v| v.name.clone()).collect(),
        })
    }

    /// A constant's value: an initializer, or a node output folded when the
    /// session was prepared (all its inputs constant).
    pub fn constant(&self, name: &str) -> Option<&Value> {
        self.constants.get(name).map(|v| v.as_ref())
    }

    /// Runs the graph on named inputs; `observe` sees every node's output.
    pub fn run(
        &self,
        inputs: Vec<(&str, Value)>,
        observe: &mut dyn FnMut(&str, &Value),
    ) -> Result<HashMap<String, Arc<Value>>, OnnxError> {
        let mut values: HashMap<&str, Arc<Value>> = HashMap::new();
        for (name, v) in inputs {
            let Some(slot) = self.inputs.iter().find(|i| *i == name) else {
                return Err(OnnxError::Unsupported {
                    path: self.path.clone(),
                    message: format!("the graph has no input `{name}`"),
                });
            };
            values.insert(slot.as_str(), Arc::new(v));
        }
        for step in &self.steps {
            let node = &step.node;
            let args = node
                .input
                .iter()
                .map(|i| {
                    if i.is_empty() {
                        return Ok(None);
                    }
                    values
                        .get(i.as_str())
                        .or_else(|| self.constants.get(i))
                        .cloned()
                        .map(Some)
                        .ok_or_else(|| {
                            self.node_error(node, format!("input `{i}` is not computed before it"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = run_node(node, &args, &self.path)?;
            observe(&node.output[0], &out);
            values.insert(node.output[0].as_str(), Arc::new(out));
        }
        self.outputs
            .iter()
            .map(|o| {
                let v = values
                    .get(o.as_str())
                    .or_else(|| self.constants.get(o))
                    .cloned()
                    .ok_or_else(|| OnnxError::Unsupported {
                        path: self.path.clone(),
                        message: format!("output `{o}` is never computed"),
                    })?;
                Ok((o.clone(), v))
            })
            .collect()
    }

    fn node_error(&self, node: &NodeProto, message: String) -> OnnxError {
        node_error(node, &self.path, message)
    }
}

fn node_error(node: &NodeProto, path: &Path, message: String) -> OnnxError {
    OnnxError::Node {
        path: path.to_path_buf(),
        node: node.name.clone().unwrap_or_default(),
        op: node.op_type.clone().unwrap_or_default(),
        message,
    }
}

fn run_node(
    node: &NodeProto,
    args: &[Option<Arc<Value>>],
    path: &Path,
) -> Result<Value, OnnxError> {
    let ctx = ops::Ctx {
        node,
        args,
        attrs: &node.attribute,
    };
    ops::run(&ctx).map_err(|m| node_error(node, path, m))
}

/// An attribute by name.
fn attr<'a>(attrs: &'a [AttributeProto], name: &str) -> Option<&'a AttributeProto> {
    attrs.iter().find(|a| a.name.as_deref() == Some(name))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::format::onnx::builder::{attr_int, Dim, GraphBuilder};
    use crate::format::onnx::proto::data_type;

    /// Writes, re-reads and runs `x -> Q -> DQ -> MatMul(W per-axis DQ)`.
    #[test]
    fn qdq_rounds_half_to_even_saturates_and_dequantizes_per_axis() {
        let mut g = GraphBuilder::new();
        g.input("x", data_type::FLOAT, &[Dim::Named("n"), Dim::Fixed(2)]);
        g.output("y", data_type::FLOAT, &[Dim::Named("n"), Dim::Fixed(2)]);
        let s = g.scalar("s", 0.5);
        let z = g.u8("z", &[], &[10]);
        g.op("QuantizeLinear", &["x", &s, &z], "xq", vec![]);
        g.op("DequantizeLinear", &["xq", &s, &z], "xdq", vec![]);
        g.i8("w", &[2, 2], &[1, -2, 3, 4]);
        g.f32("ws", &[2], &[1.0, 0.25]);
        g.i8("wz", &[2], &[0, 0]);
        g.op(
            "DequantizeLinear",
            &["w", "ws", "wz"],
            "wdq",
            vec![attr_int("axis", 1)],
        );
        g.op("MatMul", &["xdq", "wdq"], "y", vec![]);
        let bytes = crate::format::onnx::encode(&g.finish("t", &BTreeMap::new()));
        let model = crate::format::onnx::decode(&bytes, Path::new("t.onnx")).unwrap();
        let session = Session::new(&model, Path::new("t.onnx")).unwrap();
        // 0.25 / 0.5 = 0.5 rounds to 0 (even), 0.75 / 0.5 = 1.5 rounds to 2;
        // -100 saturates at code 0 (value -5), 1000 at 255 (value 122.5).
        let x = Value::f32(vec![2, 2], vec![0.25, 0.75, -100.0, 1000.0]);
        let mut seen = Vec::new();
        let out = session
            .run(vec![("x", x)], &mut |name, v| {
                seen.push((name.to_string(), v.clone()))
            })
            .unwrap();
        let xdq = &seen.iter().find(|(n, _)| n == "xdq").unwrap().1;
        assert_eq!(xdq.as_f32().unwrap(), &[0.0, 1.0, -5.0, 122.5]);
        // W dequantized per column: [[1, -0.5], [3, 1]].
        let y = out["y"].as_f32().unwrap();
        assert_eq!(y, &[3.0, 1.0, 362.5, 125.0]);
        // The weight's DequantizeLinear ran once, when the session was prepared.
        assert!(!seen.iter().any(|(n, _)| n == "wdq"));
        assert_eq!(bytes, crate::format::onnx::encode(&model));
    }
}
