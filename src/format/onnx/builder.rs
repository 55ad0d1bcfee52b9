//! Building a graph node by node: initializers from typed slices, nodes with
//! attributes, graph inputs and outputs, then one `ModelProto`. Everything is
//! kept in insertion order, so the same calls give the same bytes.

use std::collections::BTreeMap;

use half::f16;

use super::proto::{
    attribute_type, data_type, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    TypeProtoTensor, ValueInfoProto,
};
use super::{IR_VERSION, MS_DOMAIN, OPSET};

/// A graph input or output dimension.
#[derive(Debug, Clone)]
pub enum Dim {
    Fixed(usize),
    Named(&'static str),
}

#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    uses_ms_domain: bool,
}

impl GraphBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn raw(&mut self, name: &str, dims: &[usize], ty: i32, bytes: Vec<u8>) -> String {
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(ty),
            name: Some(name.to_string()),
            raw_data: Some(bytes),
            ..Default::default()
        });
        name.to_string()
    }

    pub fn f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        let bytes = if cfg!(target_endian = "little") {
            bytemuck::cast_slice(data).to_vec()
        } else {
            data.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
        self.raw(name, dims, data_type::FLOAT, bytes)
    }

    /// Stored as float16 (values rounded to nearest even).
    pub fn f16(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        let bytes = data
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        self.raw(name, dims, data_type::FLOAT16, bytes)
    }

    pub fn i64(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.raw(name, dims, data_type::INT64, bytes)
    }

    pub fn i8(&mut self, name: &str, dims: &[usize], data: &[i8]) -> String {
        self.raw(
            name,
            dims,
            data_type::INT8,
            bytemuck::cast_slice(data).to_vec(),
        )
    }

    pub fn u8(&mut self, name: &str, dims: &[usize], data: &[u8]) -> String {
        self.raw(name, dims, data_type::UINT8, data.to_vec())
    }

    /// A scalar float initializer.
    pub fn scalar(&mut self, name: &str, v: f32) -> String {
        self.f32(name, &[], &[v])
    }

    /// A node in the default domain with one output named `out`.
    pub fn op(
        &mut self,
        op: &str,
        inputs: &[&str],
        out: &str,
        attrs: Vec<AttributeProto>,
    ) -> String {
        self.node(None, op, inputs, out, attrs)
    }

    /// A `com.microsoft` contrib node (onnxruntime only).
    pub fn ms_op(
        &mut self,
        op: &str,
        inputs: &[&str],
        out: &str,
        attrs: Vec<AttributeProto>,
    ) -> String {
        self.uses_ms_domain = true;
        self.node(Some(MS_DOMAIN), op, inputs, out, attrs)
    }

    fn node(
        &mut self,
        domain: Option<&str>,
        op: &str,
        inputs: &[&str],
        out: &str,
        attribute: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            name: Some(format!("{out}/{op}")),
            op_type: Some(op.to_string()),
            attribute,
            domain: domain.map(str::to_string),
        });
        out.to_string()
    }

    pub fn input(&mut self, name: &str, elem: i32, dims: &[Dim]) {
        self.inputs.push(value_info(name, elem, dims));
    }

    pub fn output(&mut self, name: &str, elem: i32, dims: &[Dim]) {
        self.outputs.push(value_info(name, elem, dims));
    }

    /// The finished model, with `metadata` as `metadata_props` (sorted by key).
    pub fn finish(self, graph_name: &str, metadata: &BTreeMap<String, String>) -> ModelProto {
        let mut opset_import = vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }];
        if self.uses_ms_domain {
            opset_import.push(OperatorSetIdProto {
                domain: Some(MS_DOMAIN.into()),
                version: Some(1),
            });
        }
        ModelProto {
            ir_version: Some(IR_VERSION),
            producer_name: Some("edgeforge".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            domain: None,
            model_version: None,
            doc_string: None,
            graph: Some(GraphProto {
                node: self.nodes,
                name: Some(graph_name.into()),
                initializer: self.initializers,
                doc_string: None,
                input: self.inputs,
                output: self.outputs,
            }),
            opset_import,
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some(k.clone()),
                    value: Some(v.clone()),
                })
                .collect(),
        }
    }
}

fn value_info(name: &str, elem: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => Dimension {
                dim_value: Some(*n as i64),
                dim_param: None,
            },
            Dim::Named(s) => Dimension {
                dim_value: None,
                dim_param: Some(s.to_string()),
            },
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(attribute_type::INT),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(attribute_type::FLOAT),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(attribute_type::INTS),
        ..Default::default()
    }
}

pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        s: Some(v.as_bytes().to_vec()),
        r#type: Some(attribute_type::STRING),
        ..Default::default()
    }
}
