//! The few facts of TFLite's `schema.fbs` (schema version 3, file identifier
//! `TFL3`) that our writer and reader use: enum values and table field slots.
//! A flatbuffer field's vtable offset is `4 + 2 * slot`; a union field takes
//! two slots (its type byte, then its value).

/// Schema version written in `Model.version`.
pub const SCHEMA_VERSION: u32 = 3;
/// The flatbuffer file identifier at bytes 4..8.
pub const FILE_IDENTIFIER: &str = "TFL3";

/// The vtable offset of field `slot`.
pub const fn slot(slot: u16) -> u16 {
    4 + 2 * slot
}

/// `TensorType` values.
pub mod tensor_type {
    pub const FLOAT32: i8 = 0;
    pub const FLOAT16: i8 = 1;
    pub const INT32: i8 = 2;
    pub const INT8: i8 = 9;
}

/// `BuiltinOperator` values of the ops we emit.
pub mod op {
    pub const ADD: i32 = 0;
    pub const DEQUANTIZE: i32 = 6;
    pub const FULLY_CONNECTED: i32 = 9;
    pub const L2_NORMALIZATION: i32 = 11;
    pub const MUL: i32 = 18;
    pub const RESHAPE: i32 = 22;
    pub const SOFTMAX: i32 = 25;
    pub const GATHER: i32 = 36;
    pub const TRANSPOSE: i32 = 39;
    pub const MEAN: i32 = 40;
    pub const SUB: i32 = 41;
    pub const RSQRT: i32 = 76;
    pub const SQUARED_DIFFERENCE: i32 = 99;
    pub const QUANTIZE: i32 = 114;
    pub const BATCH_MATMUL: i32 = 126;
    /// Codes at or above this live only in `OperatorCode.builtin_code`;
    /// below it, `deprecated_builtin_code` carries them too.
    pub const PLACEHOLDER_FOR_GREATER_OP_CODES: i32 = 127;
    pub const GELU: i32 = 150;
}

/// `BuiltinOptions` union type ids (position in the union, NONE = 0).
pub mod options {
    pub const NONE: u8 = 0;
    pub const FULLY_CONNECTED: u8 = 8;
    pub const SOFTMAX: u8 = 9;
    pub const ADD: u8 = 11;
    pub const L2_NORM: u8 = 12;
    pub const RESHAPE: u8 = 17;
    pub const MUL: u8 = 21;
    pub const GATHER: u8 = 23;
    pub const TRANSPOSE: u8 = 26;
    pub const REDUCER: u8 = 27;
    pub const SUB: u8 = 28;
    pub const DEQUANTIZE: u8 = 38;
    pub const SQUARED_DIFFERENCE: u8 = 76;
    pub const QUANTIZE: u8 = 89;
    pub const BATCH_MATMUL: u8 = 101;
    pub const GELU: u8 = 116;
}

/// Field slots per table.
pub mod field {
    pub mod model {
        pub const VERSION: u16 = 0;
        pub const OPERATOR_CODES: u16 = 1;
        pub const SUBGRAPHS: u16 = 2;
        pub const DESCRIPTION: u16 = 3;
        pub const BUFFERS: u16 = 4;
    }
    pub mod operator_code {
        pub const DEPRECATED_BUILTIN_CODE: u16 = 0;
        pub const VERSION: u16 = 2;
        pub const BUILTIN_CODE: u16 = 3;
    }
    pub mod subgraph {
        pub const TENSORS: u16 = 0;
        pub const INPUTS: u16 = 1;
        pub const OUTPUTS: u16 = 2;
        pub const OPERATORS: u16 = 3;
        pub const NAME: u16 = 4;
    }
    pub mod tensor {
        pub const SHAPE: u16 = 0;
        pub const TYPE: u16 = 1;
        pub const BUFFER: u16 = 2;
        pub const NAME: u16 = 3;
        pub const QUANTIZATION: u16 = 4;
    }
    pub mod quantization {
        pub const SCALE: u16 = 2;
        pub const ZERO_POINT: u16 = 3;
        pub const QUANTIZED_DIMENSION: u16 = 6;
    }
    pub mod buffer {
        pub const DATA: u16 = 0;
    }
    pub mod operator {
        pub const OPCODE_INDEX: u16 = 0;
        pub const INPUTS: u16 = 1;
        pub const OUTPUTS: u16 = 2;
        pub const BUILTIN_OPTIONS_TYPE: u16 = 3;
        pub const BUILTIN_OPTIONS: u16 = 4;
    }
    /// `fused_activation_function` is slot 0 of Add/Sub/Mul/FullyConnected/L2Norm options.
    pub const FUSED_ACTIVATION: u16 = 0;
    pub mod fully_connected {
        pub const KEEP_NUM_DIMS: u16 = 2;
    }
    pub mod softmax {
        pub const BETA: u16 = 0;
    }
    pub mod reshape {
        pub const NEW_SHAPE: u16 = 0;
    }
    pub mod gather {
        pub const AXIS: u16 = 0;
    }
    pub mod reducer {
        pub const KEEP_DIMS: u16 = 0;
    }
    pub mod batch_matmul {
        pub const ADJ_X: u16 = 0;
        pub const ADJ_Y: u16 = 1;
    }
    pub mod gelu {
        pub const APPROXIMATE: u16 = 0;
    }
}
