//! GGUF Q4_0 blocks as onnxruntime's `MatMulNBits` weights (bits 4, block 32,
//! no zero points). Both decode a block as `(q - 8) * d`: MatMulNBits' default
//! zero point for 4 bits is 8, so repacking is exact. Only the nibble order
//! differs: Q4_0 keeps element `j` in the low nibble of byte `j` and element
//! `j + 16` in its high nibble; MatMulNBits packs codes low-first along K,
//! element `2i` in the low nibble of byte `i` and `2i + 1` in the high one.

use half::f16;

/// Elements per block.
pub const BLOCK: usize = 32;
/// Bytes of one GGUF Q4_0 block: an f16 scale and 16 bytes of nibbles.
const Q4_0_BYTES: usize = 2 + BLOCK / 2;

/// A `[rows, cols]` matrix in MatMulNBits layout, `rows` being its `N`
/// (output features) and `cols` its `K`.
#[derive(Debug, Clone, PartialEq)]
pub struct NBits {
    /// `[N, K / 32, 16]` packed codes.
    pub codes: Vec<u8>,
    /// `[N * K / 32]` scales, row-major by output then block.
    pub scales: Vec<f32>,
}

/// Why Q4_0 bytes could not be repacked.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RepackError {
    #[error("row of {0} values is not a whole number of 32-value blocks")]
    Row(usize),
    #[error("{got} bytes of Q4_0 data, but [{rows}, {cols}] needs {want}")]
    Length {
        rows: usize,
        cols: usize,
        want: usize,
        got: usize,
    },
}

/// Repacks a `[rows, cols]` Q4_0 tensor (GGUF row-major bytes).
pub fn from_q4_0(bytes: &[u8], rows: usize, cols: usize) -> Result<NBits, RepackError> {
    if !cols.is_multiple_of(BLOCK) {
        return Err(RepackError::Row(cols));
    }
    let blocks = rows * cols / BLOCK;
    let want = blocks * Q4_0_BYTES;
    if bytes.len() != want {
        return Err(RepackError::Length {
            rows,
            cols,
            want,
            got: bytes.len(),
        });
    }
    let mut codes = Vec::with_capacity(blocks * BLOCK / 2);
    let mut scales = Vec::with_capacity(blocks);
    for block in bytes.chunks_exact(Q4_0_BYTES) {
        scales.push(f16::from_le_bytes([block[0], block[1]]).to_f32());
        let qs = &block[2..];
        let code = |e: usize| match e < BLOCK / 2 {
            true => qs[e] & 0x0f,
            false => qs[e - BLOCK / 2] >> 4,
        };
        codes.extend((0..BLOCK / 2).map(|i| code(2 * i) | (code(2 * i + 1) << 4)));
    }
    Ok(NBits { codes, scales })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::legacy;

    /// What MatMulNBits computes for one weight: `(code - 8) * scale`, codes
    /// read low nibble first (onnxruntime's ContribOperators.md).
    fn nbits_weight(m: &NBits, cols: usize, row: usize, col: usize) -> f32 {
        let block = (row * cols + col) / BLOCK;
        let within = col % BLOCK;
        let byte = m.codes[block * BLOCK / 2 + within / 2];
        let code = if within.is_multiple_of(2) {
            byte & 0x0f
        } else {
            byte >> 4
        };
        (f32::from(code) - 8.0) * m.scales[block]
    }

    #[test]
    fn repacked_blocks_decode_to_the_q4_0_values() {
        let (rows, cols) = (3, 64);
        let src: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut bytes = vec![0u8; rows * cols / BLOCK * Q4_0_BYTES];
        for (x, out) in src
            .chunks_exact(BLOCK)
            .zip(bytes.chunks_exact_mut(Q4_0_BYTES))
        {
            legacy::q4_0(x.try_into().unwrap(), out);
        }
        let mut want = vec![0f32; rows * cols];
        for (b, out) in bytes
            .chunks_exact(Q4_0_BYTES)
            .zip(want.chunks_exact_mut(BLOCK))
        {
            legacy::dq4_0(b, out);
        }
        let m = from_q4_0(&bytes, rows, cols).unwrap();
        assert_eq!(m.codes.len(), rows * cols / 2);
        assert_eq!(m.scales.len(), rows * cols / BLOCK);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(
                    nbits_weight(&m, cols, r, c),
                    want[r * cols + c],
                    "[{r}, {c}]"
                );
            }
        }
    }

    #[test]
    fn element_order_moves_high_half_nibbles() {
        // Codes 0..16 in the low nibbles (elements 0..16) and 15 - j in the
        // high ones (elements 16..32).
        let mut block = vec![0u8, 0x3c]; // f16 1.0
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let m = from_q4_0(&block, 1, 32).unwrap();
        assert_eq!(m.scales, [1.0]);
        assert_eq!(m.codes[0], 1 << 4, "elements 0 and 1");
        assert_eq!(m.codes[7], 14 | (15 << 4), "elements 14 and 15");
        assert_eq!(m.codes[8], 15 | (14 << 4), "elements 16 and 17");
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert_eq!(from_q4_0(&[0; 18], 1, 48), Err(RepackError::Row(48)));
        assert!(matches!(
            from_q4_0(&[0; 17], 1, 32),
            Err(RepackError::Length { want: 18, .. })
        ));
    }
}
