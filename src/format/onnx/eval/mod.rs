//! Computes what an ONNX graph computes, for the ops our writers emit: the
//! reference semantics of each op in f32 (QuantizeLinear rounds half to even
//! and saturates, DequantizeLinear per tensor or per axis, MatMulNBits
//! decodes `(code - zero_point) * scale`), so accuracy and calibration are
//! measured on the file's own weights and quantization parameters. Nodes
//! whose inputs are all constant (weight dequantization, float16 casts) are
//! evaluated once when the session is prepared, and so are MatMulNBits'
//! constant weights: a run multiplies by them without decoding them again.
//!
//! Encoders (`bert`) and the decoder onnxruntime-genai runs (`llama`: int64
//! ids, bool masks, a float16 KV cache that may be empty) both run; see
//! [`decoder_logits`] for the decoder's inputs.
//!
//! One run is single-threaded and deterministic; callers parallelise over
//! independent inputs.

mod data;
mod decoder;
mod elementwise;
mod linalg;
mod ops;
mod qdq;
mod reduce;

#[cfg(test)]
mod decoder_tests;
#[cfg(test)]
mod op_tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use data::Data;
pub use decoder::{decoder_logits, DecoderLayout};

use super::proto::{data_type, AttributeProto, ModelProto, NodeProto, ValueInfoProto};
use super::reader::tensor_data;
use super::OnnxError;

/// A tensor value: row-major shape and data.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Value {
    pub fn new(shape: Vec<usize>, data: Data) -> Self {
        Self { shape, data }
    }

    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self::new(shape, Data::F32(data))
    }

    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Self {
        Self::new(shape, Data::I64(data))
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            _ => None,
        }
    }
}

/// A graph input as the file declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct InputDecl {
    pub name: String,
    /// Its `TensorProto.DataType` code.
    pub elem_type: Option<i32>,
    /// Each dimension's fixed size (`None`: symbolic); `None` if the file
    /// declares no shape.
    pub dims: Option<Vec<Option<usize>>>,
}

impl InputDecl {
    fn of(v: &ValueInfoProto) -> Self {
        let tensor = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        let dims = tensor.and_then(|t| t.shape.as_ref()).map(|s| {
            s.dim
                .iter()
                .map(|d| d.dim_value.and_then(|v| usize::try_from(v).ok()))
                .collect()
        });
        Self {
            name: v.name.clone().unwrap_or_default(),
            elem_type: tensor.and_then(|t| t.elem_type),
            dims,
        }
    }

    /// Why `v` cannot be this input, if it cannot: another element type
    /// (float16 is passed as float, see `Data`), rank or fixed size.
    fn mismatch(&self, v: &Value) -> Option<String> {
        if v.shape.iter().product::<usize>() != v.data.len() {
            return Some(format!("{} values for shape {:?}", v.data.len(), v.shape));
        }
        let holds = match self.elem_type {
            Some(data_type::FLOAT | data_type::FLOAT16) => matches!(v.data, Data::F32(_)),
            Some(data_type::DOUBLE) => matches!(v.data, Data::F64(_)),
            Some(data_type::INT64) => matches!(v.data, Data::I64(_)),
            Some(data_type::INT8) => matches!(v.data, Data::I8(_)),
            Some(data_type::UINT8) => matches!(v.data, Data::U8(_)),
            Some(data_type::BOOL) => matches!(v.data, Data::Bool(_)),
            _ => true,
        };
        if !holds {
            let want = data_type::name(self.elem_type.unwrap_or_default());
            return Some(format!("{} data for a {want} input", v.data.type_name()));
        }
        let dims = self.dims.as_ref()?;
        let fits = dims.len() == v.shape.len()
            && dims
                .iter()
                .zip(&v.shape)
                .all(|(d, &s)| d.is_none_or(|d| d == s));
        (!fits).then(|| format!("shape {:?} for declared dimensions {dims:?}", v.shape))
    }
}

/// A node ready to run.
struct Step {
    node: NodeProto,
    /// What was computed once from its constant inputs (MatMulNBits' weights).
    prepared: Option<linalg::Dequantized>,
    /// Values this step reads last, dropped once it ran (keeps a run's
    /// memory to the live activations, not every one it computed).
    last_reads: Vec<String>,
}

/// A prepared graph: constants decoded and folded, nodes in order.
pub struct Session {
    path: PathBuf,
    constants: HashMap<String, Arc<Value>>,
    steps: Vec<Step>,
    inputs: Vec<InputDecl>,
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
                Arc::new(Value::new(shape, data.into())),
            );
        }
        let inputs: Vec<InputDecl> = graph
            .input
            .iter()
            .map(InputDecl::of)
            .filter(|d| !constants.contains_key(&d.name))
            .collect();
        let mut steps = Vec::new();
        for node in &graph.node {
            let known = |i: &String| (!i.is_empty()).then(|| constants.get(i).cloned()).flatten();
            let args: Vec<Option<Arc<Value>>> = node.input.iter().map(known).collect();
            let constant = !node.input.is_empty()
                && node
                    .input
                    .iter()
                    .all(|i| i.is_empty() || constants.contains_key(i));
            if constant {
                let out = run_node(node, &args, None, path)?;
                constants.insert(node.output[0].clone(), Arc::new(out));
                continue;
            }
            let prepared = ops::prepare(&ops::Ctx {
                node,
                args: &args,
                attrs: &node.attribute,
                prepared: None,
            })
            .map_err(|m| node_error(node, path, m))?;
            steps.push(Step {
                node: node.clone(),
                prepared,
                last_reads: Vec::new(),
            });
        }
        let outputs: Vec<String> = graph.output.iter().filter_map(|v| v.name.clone()).collect();
        mark_last_reads(&mut steps, &outputs);
        Ok(Self {
            path: path.to_path_buf(),
            constants,
            steps,
            inputs,
            outputs,
        })
    }

    /// A constant's value: an initializer, or a node output folded when the
    /// session was prepared (all its inputs constant).
    pub fn constant(&self, name: &str) -> Option<&Value> {
        self.constants.get(name).map(|v| v.as_ref())
    }

    /// The graph's inputs that are not initializers, as declared.
    pub fn inputs(&self) -> &[InputDecl] {
        &self.inputs
    }

    /// The graph's output names, in order.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// Runs the graph on named inputs (each checked against its
    /// declaration); `observe` sees every node's output.
    pub fn run(
        &self,
        inputs: Vec<(&str, Value)>,
        observe: &mut dyn FnMut(&str, &Value),
    ) -> Result<HashMap<String, Arc<Value>>, OnnxError> {
        let mut values: HashMap<&str, Arc<Value>> = HashMap::new();
        for (name, v) in inputs {
            let Some(decl) = self.inputs.iter().find(|i| i.name == name) else {
                return Err(self.unsupported(format!("the graph has no input `{name}`")));
            };
            if let Some(why) = decl.mismatch(&v) {
                return Err(self.unsupported(format!("input `{name}`: {why}")));
            }
            values.insert(decl.name.as_str(), Arc::new(v));
        }
        for step in &self.steps {
            let node = &step.node;
            let args = node
                .input
                .iter()
                .map(|i| self.arg(i, &values).map_err(|m| self.node_error(node, m)))
                .collect::<Result<Vec<_>, _>>()?;
            let out = run_node(node, &args, step.prepared.as_ref(), &self.path)?;
            observe(&node.output[0], &out);
            values.insert(node.output[0].as_str(), Arc::new(out));
            for name in &step.last_reads {
                values.remove(name.as_str());
            }
        }
        self.outputs
            .iter()
            .map(|o| {
                let v = values
                    .get(o.as_str())
                    .or_else(|| self.constants.get(o))
                    .cloned()
                    .ok_or_else(|| self.unsupported(format!("output `{o}` is never computed")))?;
                Ok((o.clone(), v))
            })
            .collect()
    }

    /// A node input: absent (empty name), computed in this run, or constant.
    fn arg(
        &self,
        name: &str,
        values: &HashMap<&str, Arc<Value>>,
    ) -> Result<Option<Arc<Value>>, String> {
        if name.is_empty() {
            return Ok(None);
        }
        if let Some(v) = values.get(name).or_else(|| self.constants.get(name)) {
            return Ok(Some(v.clone()));
        }
        Err(match self.inputs.iter().any(|i| i.name == name) {
            true => format!("graph input `{name}` was not given"),
            false => format!("input `{name}` is not computed before it"),
        })
    }

    fn unsupported(&self, message: String) -> OnnxError {
        OnnxError::Unsupported {
            path: self.path.clone(),
            message,
        }
    }

    fn node_error(&self, node: &NodeProto, message: String) -> OnnxError {
        node_error(node, &self.path, message)
    }
}

/// Records, on the step that reads each value last, that it may be dropped
/// there (graph outputs are kept).
fn mark_last_reads(steps: &mut [Step], outputs: &[String]) {
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        for input in step.node.input.iter().filter(|n| !n.is_empty()) {
            last.insert(input.clone(), i);
        }
    }
    for (name, i) in last {
        if !outputs.contains(&name) {
            steps[i].last_reads.push(name);
        }
    }
    steps.iter_mut().for_each(|s| s.last_reads.sort());
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
    prepared: Option<&linalg::Dequantized>,
    path: &Path,
) -> Result<Value, OnnxError> {
    let ctx = ops::Ctx {
        node,
        args,
        attrs: &node.attribute,
        prepared,
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
