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

/// Quantizes a `[rows, cols]` float matrix to MatMulNBits' symmetric 4-bit
/// form with blocks of `block` along K: each block's scale is its largest
/// magnitude (sign kept) over -8, codes `round(x / d) + 8` clamped to 15,
/// which is ggml's Q4_0 rule at any block size (at 32 it gives Q4_0's codes,
/// with the scale kept in f32 instead of rounded to f16). A last partial
/// block is padded with zeros (code 8), as MatMulNBits pads K.
pub fn quantize_sym(values: &[f32], rows: usize, cols: usize, block: usize) -> NBits {
    assert!(block >= 16 && block.is_power_of_two(), "block {block}");
    assert_eq!(values.len(), rows * cols, "a [{rows}, {cols}] matrix");
    let per_row = cols.div_ceil(block);
    let mut codes = Vec::with_capacity(rows * per_row * block / 2);
    let mut scales = Vec::with_capacity(rows * per_row);
    let mut padded = vec![0f32; block];
    for row in values.chunks_exact(cols) {
        for chunk in row.chunks(block) {
            padded[..chunk.len()].copy_from_slice(chunk);
            padded[chunk.len()..].fill(0.0);
            let max = padded
                .iter()
                .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
            let d = max / -8.0;
            let id = if d == 0.0 { 0.0 } else { 1.0 / d };
            let code = |x: f32| ((x * id + 8.5) as i32).clamp(0, 15) as u8;
            codes.extend(
                padded
                    .chunks_exact(2)
                    .map(|p| code(p[0]) | (code(p[1]) << 4)),
            );
            scales.push(d);
        }
    }
    NBits { codes, scales }
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

    /// `src` as GGUF Q4_0 blocks, by ggml's reference quantizer.
    fn q4_0_bytes(src: &[f32]) -> Vec<u8> {
        let mut bytes = vec![0u8; src.len() / BLOCK * Q4_0_BYTES];
        for (x, out) in src
            .chunks_exact(BLOCK)
            .zip(bytes.chunks_exact_mut(Q4_0_BYTES))
        {
            legacy::q4_0(x.try_into().unwrap(), out);
        }
        bytes
    }

    #[test]
    fn repacked_blocks_decode_to_the_q4_0_values() {
        let (rows, cols) = (3, 64);
        let src: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let bytes = q4_0_bytes(&src);
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
    fn symmetric_quantization_at_32_gives_q4_0s_codes() {
        let (rows, cols) = (2, 96);
        let src: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 5.0)
            .collect();
        let bytes = q4_0_bytes(&src);
        let ours = quantize_sym(&src, rows, cols, BLOCK);
        let q4_0 = from_q4_0(&bytes, rows, cols).unwrap();
        assert_eq!(ours.codes, q4_0.codes);
        for (a, b) in ours.scales.iter().zip(&q4_0.scales) {
            assert_eq!(half::f16::from_f32(*a).to_f32(), *b);
        }
    }

    #[test]
    fn a_partial_last_block_is_padded_with_zero_codes() {
        // K = 576 at block 128: four whole blocks and one of 64 values.
        let (rows, cols, block) = (1, 576, 128);
        let src: Vec<f32> = (0..cols).map(|i| (i as f32 - 300.0) / 40.0).collect();
        let m = quantize_sym(&src, rows, cols, block);
        assert_eq!(m.scales.len(), 5);
        assert_eq!(m.codes.len(), 5 * block / 2);
        let decode = |c: usize| {
            let byte = m.codes[c / 2];
            let code = if c.is_multiple_of(2) {
                byte & 0x0f
            } else {
                byte >> 4
            };
            (f32::from(code) - 8.0) * m.scales[c / block]
        };
        for (c, &x) in src.iter().enumerate() {
            let d = m.scales[c / block].abs();
            assert!(
                (decode(c) - x).abs() <= d / 2.0 + 1e-6,
                "[{c}] {x} vs {}",
                decode(c)
            );
        }
        assert!(
            (cols..5 * block).all(|c| decode(c) == 0.0),
            "padding decodes to 0"
        );
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
