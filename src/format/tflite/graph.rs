//! The in-memory form of a single-subgraph TFLite model: what the writer
//! serialises, the reader gives back and the evaluator runs. Constant tensors
//! carry their little-endian bytes; activations have none.

use super::schema::{op, options, tensor_type};

/// Element types we emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    F32,
    F16,
    I32,
    I8,
}

impl ElemType {
    pub fn code(self) -> i8 {
        match self {
            Self::F32 => tensor_type::FLOAT32,
            Self::F16 => tensor_type::FLOAT16,
            Self::I32 => tensor_type::INT32,
            Self::I8 => tensor_type::INT8,
        }
    }

    pub fn from_code(code: i8) -> Option<Self> {
        Some(match code {
            tensor_type::FLOAT32 => Self::F32,
            tensor_type::FLOAT16 => Self::F16,
            tensor_type::INT32 => Self::I32,
            tensor_type::INT8 => Self::I8,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::F16 => 2,
            Self::I8 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::I32 => "int32",
            Self::I8 => "int8",
        }
    }
}

/// Affine quantization `real = scale * (q - zero_point)`, per tensor (one
/// entry) or per slice along `axis`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quant {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    pub axis: i32,
}

impl Quant {
    pub fn per_tensor(scale: f32, zero_point: i64) -> Self {
        Self {
            scale: vec![scale],
            zero_point: vec![zero_point],
            axis: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i32>,
    pub ty: ElemType,
    /// Constant contents; `None` for inputs and activations.
    pub data: Option<Vec<u8>>,
    pub quant: Option<Quant>,
}

impl Tensor {
    pub fn elements(&self) -> usize {
        self.shape.iter().map(|&d| d.max(0) as usize).product()
    }

    /// Per-tensor (scale, zero point); `None` when unquantized or per-axis.
    pub fn scale_zp(&self) -> Option<(f32, i32)> {
        let q = self.quant.as_ref()?;
        (q.scale.len() == 1).then(|| {
            (
                q.scale[0],
                q.zero_point.first().copied().unwrap_or(0) as i32,
            )
        })
    }
}

/// The ops we emit, with their builtin options. Shape/axis/permutation
/// operands are constant int32 input tensors, as the builtins take them.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Add,
    Sub,
    Mul,
    SquaredDifference,
    /// `[rows, in] x [out, in]^T + [out]`.
    FullyConnected,
    BatchMatMul {
        adj_y: bool,
    },
    Reshape {
        new_shape: Vec<i32>,
    },
    Transpose,
    Softmax {
        beta: f32,
    },
    Mean {
        keep_dims: bool,
    },
    Rsqrt,
    Gelu {
        approximate: bool,
    },
    /// Gathers along axis 0 of the first input.
    Gather,
    L2Norm,
    Dequantize,
    Quantize,
}

impl Op {
    pub fn builtin_code(&self) -> i32 {
        match self {
            Self::Add => op::ADD,
            Self::Sub => op::SUB,
            Self::Mul => op::MUL,
            Self::SquaredDifference => op::SQUARED_DIFFERENCE,
            Self::FullyConnected => op::FULLY_CONNECTED,
            Self::BatchMatMul { .. } => op::BATCH_MATMUL,
            Self::Reshape { .. } => op::RESHAPE,
            Self::Transpose => op::TRANSPOSE,
            Self::Softmax { .. } => op::SOFTMAX,
            Self::Mean { .. } => op::MEAN,
            Self::Rsqrt => op::RSQRT,
            Self::Gelu { .. } => op::GELU,
            Self::Gather => op::GATHER,
            Self::L2Norm => op::L2_NORMALIZATION,
            Self::Dequantize => op::DEQUANTIZE,
            Self::Quantize => op::QUANTIZE,
        }
    }

    pub fn options_type(&self) -> u8 {
        match self {
            Self::Add => options::ADD,
            Self::Sub => options::SUB,
            Self::Mul => options::MUL,
            Self::SquaredDifference => options::SQUARED_DIFFERENCE,
            Self::FullyConnected => options::FULLY_CONNECTED,
            Self::BatchMatMul { .. } => options::BATCH_MATMUL,
            Self::Reshape { .. } => options::RESHAPE,
            Self::Transpose => options::TRANSPOSE,
            Self::Softmax { .. } => options::SOFTMAX,
            Self::Mean { .. } => options::REDUCER,
            Self::Rsqrt => options::NONE,
            Self::Gelu { .. } => options::GELU,
            Self::Gather => options::GATHER,
            Self::L2Norm => options::L2_NORM,
            Self::Dequantize => options::DEQUANTIZE,
            Self::Quantize => options::QUANTIZE,
        }
    }

    /// The builtin's name as TFLite spells it (reports, errors, docs).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Sub => "SUB",
            Self::Mul => "MUL",
            Self::SquaredDifference => "SQUARED_DIFFERENCE",
            Self::FullyConnected => "FULLY_CONNECTED",
            Self::BatchMatMul { .. } => "BATCH_MATMUL",
            Self::Reshape { .. } => "RESHAPE",
            Self::Transpose => "TRANSPOSE",
            Self::Softmax { .. } => "SOFTMAX",
            Self::Mean { .. } => "MEAN",
            Self::Rsqrt => "RSQRT",
            Self::Gelu { .. } => "GELU",
            Self::Gather => "GATHER",
            Self::L2Norm => "L2_NORMALIZATION",
            Self::Dequantize => "DEQUANTIZE",
            Self::Quantize => "QUANTIZE",
        }
    }

    /// The operator version TFLite's converter records for these input
    /// types (tensorflow/lite/tools/versioning): int8 kernels are newer.
    pub fn version(&self, first_input: ElemType) -> i32 {
        match (self, first_input) {
            (Self::FullyConnected, ElemType::I8) => 4,
            (Self::Dequantize, ElemType::F16) => 3,
            (Self::Reshape { .. } | Self::Quantize, _) => 1,
            (_, ElemType::I8) => 2,
            _ => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
}

/// One subgraph: tensors, nodes in execution order, graph inputs/outputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub tensors: Vec<Tensor>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    pub description: String,
}

impl Graph {
    pub fn tensor(&mut self, name: &str, shape: &[i32], ty: ElemType) -> usize {
        self.tensors.push(Tensor {
            name: name.to_string(),
            shape: shape.to_vec(),
            ty,
            data: None,
            quant: None,
        });
        self.tensors.len() - 1
    }

    pub fn const_f32(&mut self, name: &str, shape: &[i32], values: &[f32]) -> usize {
        let t = self.tensor(name, shape, ElemType::F32);
        self.tensors[t].data = Some(values.iter().flat_map(|v| v.to_le_bytes()).collect());
        t
    }

    pub fn const_i32(&mut self, name: &str, values: &[i32]) -> usize {
        let t = self.tensor(name, &[values.len() as i32], ElemType::I32);
        self.tensors[t].data = Some(values.iter().flat_map(|v| v.to_le_bytes()).collect());
        t
    }

    /// Adds `op` reading `inputs` and writing a new activation `name`.
    pub fn push(
        &mut self,
        op: Op,
        inputs: &[usize],
        name: &str,
        shape: &[i32],
        ty: ElemType,
    ) -> usize {
        let out = self.tensor(name, shape, ty);
        self.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            outputs: vec![out],
        });
        out
    }

    /// The node writing tensor `t`, if any.
    pub fn producer(&self, t: usize) -> Option<&Node> {
        self.nodes.iter().find(|n| n.outputs.contains(&t))
    }

    /// Constant f32 values of tensor `t`.
    pub fn f32_values(&self, t: usize) -> Option<Vec<f32>> {
        let tensor = &self.tensors[t];
        let data = tensor.data.as_ref()?;
        match tensor.ty {
            ElemType::F32 => Some(
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            ElemType::F16 => Some(
                data.chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Constant int32 values of tensor `t`.
    pub fn i32_values(&self, t: usize) -> Option<Vec<i32>> {
        let tensor = &self.tensors[t];
        (tensor.ty == ElemType::I32).then_some(())?;
        Some(
            tensor
                .data
                .as_ref()?
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }

    /// Ops by name with their count, in first-use order (reports, docs).
    pub fn op_census(&self) -> Vec<(&'static str, usize)> {
        let mut census: Vec<(&'static str, usize)> = Vec::new();
        for n in &self.nodes {
            match census.iter_mut().find(|(name, _)| *name == n.op.name()) {
                Some((_, c)) => *c += 1,
                None => census.push((n.op.name(), 1)),
            }
        }
        census
    }
}
