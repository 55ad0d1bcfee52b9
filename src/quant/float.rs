//! F16 and BF16 encodings, bit-exact with ggml (and the `gguf` package):
//! F16 rounds to nearest even; BF16 quiets NaNs and rounds to nearest even
//! on the upper 16 bits, as `ggml_compute_fp32_to_bf16` does.

use half::f16;

/// f32 -> F16 little-endian bytes.
pub fn encode_f16(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.iter().zip(dst.chunks_exact_mut(2)) {
        out.copy_from_slice(&f16::from_f32(*x).to_le_bytes());
    }
}

/// One f32 to BF16 bits.
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        // NaN: keep sign and payload top bits, force quiet.
        return (((n & 0xffff_0000) | (64 << 16)) >> 16) as u16;
    }
    ((u64::from(n) + u64::from(0x7fff + ((n >> 16) & 1))) >> 16) as u16
}

/// f32 -> BF16 little-endian bytes.
pub fn encode_bf16(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.iter().zip(dst.chunks_exact_mut(2)) {
        out.copy_from_slice(&f32_to_bf16_bits(*x).to_le_bytes());
    }
}

/// F16 bytes -> f32.
pub fn decode_f16(src: &[u8], dst: &mut [f32]) {
    for (b, out) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *out = f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

/// BF16 bytes -> f32.
pub fn decode_bf16(src: &[u8], dst: &mut [f32]) {
    for (b, out) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *out = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
    }
}

/// An f16 stored in two little-endian bytes, read as f32.
#[inline(always)]
pub fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Stores `x` as f16 at `at`, returning the value it rounds to.
#[inline(always)]
pub fn put_f16(b: &mut [u8], at: usize, x: f32) -> f32 {
    let h = f16::from_f32(x);
    b[at..at + 2].copy_from_slice(&h.to_le_bytes());
    h.to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties to even (down).
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
    }
}
