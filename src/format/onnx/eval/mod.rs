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
