//! Quantization: one file per scheme family, a planner, and the front door
//! that encodes and decodes whole tensors in parallel.
//!
//! Every kernel encodes each block from its own input only, and rows are
//! split into fixed chunks, so output bytes never depend on the thread count.

pub mod apply;
pub mod bpw;
pub mod calibrate;
pub mod float;
pub mod grouped;
pub mod iquants;
pub mod kquants;
pub mod legacy;
pub mod metrics;
pub mod mixes;
pub mod plan;
pub mod qdq;
pub mod scheme;
pub mod weighted;

use half::f16;
use rayon::prelude::*;

pub use scheme::{Scheme, UnknownScheme};

use crate::format::gguf::GgmlType;
use metrics::{chunk_sums, ErrorStats, Partial, CHUNK};

/// A kernel could not run.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("Row length {row_len} is not a multiple of {scheme}'s block of {block}")]
    RowNotBlockMultiple {
        scheme: String,
        row_len: usize,
        block: usize,
    },
    #[error("{got} bytes do not hold {elems} {ty} elements ({want} bytes)")]
    ByteCount {
        ty: String,
        elems: usize,
        got: usize,
        want: usize,
    },
    #[error("{0} is not supported")]
    Unsupported(String),
    #[error("the importance matrix has {got} columns for rows of {row_len}")]
    ImportanceLength { got: usize, row_len: usize },
}

/// The GGUF tensor type of a scheme, for GGUF schemes.
pub fn ggml_type(scheme: Scheme) -> Option<GgmlType> {
    Some(match scheme {
        Scheme::F32 => GgmlType::F32,
        Scheme::F16 => GgmlType::F16,
        Scheme::BF16 => GgmlType::BF16,
        Scheme::Q8_0 => GgmlType::Q8_0,
        Scheme::Q5_1 => GgmlType::Q5_1,
        Scheme::Q5_0 => GgmlType::Q5_0,
        Scheme::Q4_1 => GgmlType::Q4_1,
        Scheme::Q4_0 => GgmlType::Q4_0,
        Scheme::Q6K => GgmlType::Q6_K,
        Scheme::Q5K => GgmlType::Q5_K,
        Scheme::Q4K => GgmlType::Q4_K,
        Scheme::Q3K => GgmlType::Q3_K,
        Scheme::Q2K => GgmlType::Q2_K,
        Scheme::IQ4NL => GgmlType::IQ4_NL,
        Scheme::IQ4XS => GgmlType::IQ4_XS,
        Scheme::Int8PerChannel | Scheme::Int4Group { .. } => return None,
    })
}

/// The scheme that writes ggml type `ty` (the inverse of [`ggml_type`]).
pub fn scheme_of(ty: GgmlType) -> Option<Scheme> {
    [
        Scheme::F32,
        Scheme::F16,
        Scheme::BF16,
        Scheme::Q8_0,
        Scheme::Q5_1,
        Scheme::Q5_0,
        Scheme::Q4_1,
        Scheme::Q4_0,
        Scheme::Q6K,
        Scheme::Q5K,
        Scheme::Q4K,
        Scheme::Q3K,
        Scheme::Q2K,
        Scheme::IQ4NL,
        Scheme::IQ4XS,
    ]
    .into_iter()
    .find(|&s| ggml_type(s) == Some(ty))
}

/// Elements per block (or group) a row must be a multiple of.
pub fn block_elems(scheme: Scheme) -> usize {
    match scheme {
        Scheme::Int4Group { group, .. } => usize::from(group),
        Scheme::Int8PerChannel => 1,
        s => ggml_type(s).map_or(1, |t| t.block_elems() as usize),
    }
}

/// Whether rows of `row_len` encode whole blocks.
pub fn supports_row(scheme: Scheme, row_len: u64) -> bool {
    row_len > 0 && row_len.is_multiple_of(block_elems(scheme) as u64)
}

/// Exact encoded bytes of a tensor, including scale and zero-point tensors;
/// `None` when the row is not a whole number of blocks.
pub fn encoded_bytes(scheme: Scheme, n_elems: u64, row_len: u64) -> Option<u64> {
    if !supports_row(scheme, row_len) {
        return None;
    }
    let rows = n_elems / row_len;
    match scheme {
        Scheme::Int8PerChannel => Some(n_elems + rows * 4),
        Scheme::Int4Group { group, symmetric } => {
            let groups = n_elems / u64::from(group);
            Some(n_elems.div_ceil(2) + groups * 2 + if symmetric { 0 } else { groups })
        }
        s => ggml_type(s)?.bytes_for(n_elems),
    }
}

/// Stored bits per weight, side tensors included.
pub fn bits_per_weight(scheme: Scheme) -> f64 {
    let n = 256 * 128;
    encoded_bytes(
        scheme,
        n,
        256 * if matches!(scheme, Scheme::Int4Group { .. }) {
            128
        } else {
            1
        },
    )
    .map_or(32.0, |b| b as f64 * 8.0 / n as f64)
}

/// A tensor encoded with some scheme: the main bytes, and for the
/// safetensors schemes their scale (and zero-point) side tensors.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    pub data: Vec<u8>,
    /// f32 per row (`int8_pc`) or f16 per group (`int4_*`), little endian.
    pub scales: Vec<u8>,
    /// u8 per group (`int4_*_asym`).
    pub zeros: Vec<u8>,
}

/// Input rows per parallel task: large enough to amortize scheduling, fixed
/// so the split never depends on the thread count.
fn rows_per_task(row_len: usize) -> usize {
    (65_536 / row_len.max(1)).max(1)
}

/// Whole rows of whole blocks, or the error that says why not.
fn check_rows(scheme: Scheme, src: &[f32], row_len: usize) -> Result<(), QuantError> {
    if !supports_row(scheme, row_len as u64) || !src.len().is_multiple_of(row_len) {
        return Err(QuantError::RowNotBlockMultiple {
            scheme: scheme.name(),
            row_len,
            block: block_elems(scheme),
        });
    }
    Ok(())
}

/// Encodes a row-major tensor whose rows have `row_len` elements.
pub fn quantize(scheme: Scheme, src: &[f32], row_len: usize) -> Result<Encoded, QuantError> {
    check_rows(scheme, src, row_len)?;
    let rows = src.len() / row_len;
    let chunk_rows = rows_per_task(row_len);
    match scheme {
        Scheme::Int8PerChannel => {
            let mut data = vec![0u8; src.len()];
            let mut scales = vec![0f32; rows];
            data.par_chunks_mut(row_len * chunk_rows)
                .zip(scales.par_chunks_mut(chunk_rows))
                .zip(src.par_chunks(row_len * chunk_rows))
                .for_each(|((q, s), x)| {
                    for ((qr, sr), xr) in q
                        .chunks_mut(row_len)
                        .zip(s.iter_mut())
                        .zip(x.chunks(row_len))
                    {
                        *sr = grouped::int8_row(xr, qr);
                    }
                });
            Ok(Encoded {
                data,
                scales: scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
                zeros: Vec::new(),
            })
        }
        Scheme::Int4Group { group, symmetric } => {
            let g = usize::from(group);
            let groups = src.len() / g;
            let mut data = vec![0u8; src.len() / 2];
            let mut scales = vec![f16::ZERO; groups];
            let mut zeros = vec![0u8; groups];
            let per_task = chunk_rows * row_len / g;
            data.par_chunks_mut(per_task * g / 2)
                .zip(scales.par_chunks_mut(per_task))
                .zip(zeros.par_chunks_mut(per_task))
                .zip(src.par_chunks(per_task * g))
                .for_each(|(((q, s), z), x)| {
                    for (i, xg) in x.chunks(g).enumerate() {
                        (s[i], z[i]) =
                            grouped::int4_group(xg, symmetric, &mut q[i * g / 2..(i + 1) * g / 2]);
                    }
                });
            Ok(Encoded {
                data,
                scales: scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
                zeros: if symmetric { Vec::new() } else { zeros },
            })
        }
        _ => {
            let ty = ggml_type(scheme).expect("GGUF scheme has a ggml type");
            let (be, bb) = (ty.block_elems() as usize, ty.block_bytes() as usize);
            let mut data = vec![0u8; src.len() / be * bb];
            data.par_chunks_mut(chunk_rows * row_len / be * bb)
                .zip(src.par_chunks(chunk_rows * row_len))
                .for_each(|(out, x)| encode_blocks(scheme, x, out));
            Ok(Encoded {
                data,
                ..Encoded::default()
            })
        }
    }
}

/// Encodes a tensor in a GGUF block format and measures its error in the
/// same pass: each task decodes the blocks it has just written and sums the
/// error while its input is still in cache (a second pass over the tensor
/// re-read it from memory). Partial sums per `CHUNK` within each task, in
/// order: the same figures at any thread count. Other schemes: `None`.
pub fn quantize_measured(
    scheme: Scheme,
    src: &[f32],
    row_len: usize,
) -> Result<Option<(Encoded, ErrorStats)>, QuantError> {
    quantize_measured_with(scheme, src, row_len, None)
}

/// As [`quantize_measured`], each row weighted by `importance` (one value
/// per column, from an importance matrix) where the scheme has a weighted
/// quantizer (`weighted::is_weighted`), as `llama-quantize --imatrix` does.
pub fn quantize_measured_with(
    scheme: Scheme,
    src: &[f32],
    row_len: usize,
    importance: Option<&[f32]>,
) -> Result<Option<(Encoded, ErrorStats)>, QuantError> {
    let Some(ty) = ggml_type(scheme) else {
        return Ok(None);
    };
    check_rows(scheme, src, row_len)?;
    let importance = importance.filter(|_| weighted::is_weighted(scheme));
    if let Some(qw) = importance.filter(|qw| qw.len() != row_len) {
        return Err(QuantError::ImportanceLength {
            got: qw.len(),
            row_len,
        });
    }
    let task = rows_per_task(row_len) * row_len;
    let (be, bb) = (ty.block_elems() as usize, ty.block_bytes() as usize);
    let row_bytes = row_len / be * bb;
    let mut data = vec![0u8; src.len() / be * bb];
    let partials: Vec<Vec<Partial>> = data
        .par_chunks_mut(task / be * bb)
        .zip(src.par_chunks(task))
        .map_init(Vec::new, |back, (out, x)| {
            match importance {
                Some(qw) => {
                    for (xr, or) in x.chunks_exact(row_len).zip(out.chunks_exact_mut(row_bytes)) {
                        weighted::encode_row(scheme, xr, qw, or);
                    }
                }
                None => encode_blocks(scheme, x, out),
            }
            back.resize(x.len(), 0f32);
            dequantize(ty, out, back).expect("whole blocks, checked lengths");
            x.chunks(CHUNK)
                .zip(back.chunks(CHUNK))
                .map(|(a, b)| chunk_sums(a, b))
                .collect()
        })
        .collect();
    let error = ErrorStats::combine(&partials.concat(), src.len());
    let enc = Encoded {
        data,
        ..Encoded::default()
    };
    Ok(Some((enc, error)))
}

/// Encodes whole blocks of `x` into `out`, on the widest SIMD the CPU has.
///
/// The AVX2 build of the same code lets LLVM use `roundps` and vector
/// min/max instead of libm calls; it performs the same IEEE operations in
/// the same order (no fused multiply-add, no reassociation), so both builds
/// produce identical bytes, which a test checks.
fn encode_blocks(scheme: Scheme, x: &[f32], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("sse4.1") {
        // SAFETY: the CPU supports the features this function is built with.
        return unsafe { encode_blocks_avx2(scheme, x, out) };
    }
    encode_blocks_portable(scheme, x, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,sse4.1")]
unsafe fn encode_blocks_avx2(scheme: Scheme, x: &[f32], out: &mut [u8]) {
    encode_blocks_portable(scheme, x, out);
}

#[inline(always)]
fn encode_blocks_portable(scheme: Scheme, x: &[f32], out: &mut [u8]) {
    fn arr(x: &[f32]) -> &[f32; legacy::QK] {
        x.try_into().expect("block of 32")
    }
    macro_rules! each {
        ($bytes:expr, $elems:expr, |$xb:ident, $o:ident| $body:expr) => {
            for ($o, $xb) in out.chunks_exact_mut($bytes).zip(x.chunks_exact($elems)) {
                $body;
            }
        };
    }
    match scheme {
        Scheme::Q8_0 => each!(legacy::Q8_0_BYTES, 32, |xb, o| legacy::q8_0(arr(xb), o)),
        Scheme::Q4_0 => each!(legacy::Q4_0_BYTES, 32, |xb, o| legacy::q4_0(arr(xb), o)),
        Scheme::Q4_1 => each!(legacy::Q4_1_BYTES, 32, |xb, o| legacy::q4_1(arr(xb), o)),
        Scheme::Q5_0 => each!(legacy::Q5_0_BYTES, 32, |xb, o| legacy::q5_0(arr(xb), o)),
        Scheme::Q5_1 => each!(legacy::Q5_1_BYTES, 32, |xb, o| legacy::q5_1(arr(xb), o)),
        Scheme::Q2K => each!(kquants::Q2_K_BYTES, kquants::QK_K, |xb, o| kquants::q2_k(
            xb, o
        )),
        Scheme::Q3K => each!(kquants::Q3_K_BYTES, kquants::QK_K, |xb, o| kquants::q3_k(
            xb, o
        )),
        Scheme::Q4K => each!(kquants::Q4_K_BYTES, kquants::QK_K, |xb, o| kquants::q4_k(
            xb, o
        )),
        Scheme::Q5K => each!(kquants::Q5_K_BYTES, kquants::QK_K, |xb, o| kquants::q5_k(
            xb, o
        )),
        Scheme::Q6K => each!(kquants::Q6_K_BYTES, kquants::QK_K, |xb, o| kquants::q6_k(
            xb, o
        )),
        Scheme::IQ4NL => each!(iquants::IQ4_NL_BYTES, iquants::QK4_NL, |xb, o| {
            iquants::iq4_nl(xb, None, o)
        }),
        Scheme::IQ4XS => each!(iquants::IQ4_XS_BYTES, kquants::QK_K, |xb, o| {
            iquants::iq4_xs(xb, None, o)
        }),
        Scheme::F16 => float::encode_f16(x, out),
        Scheme::BF16 => float::encode_bf16(x, out),
        _ => each!(4, 1, |xb, o| o.copy_from_slice(&xb[0].to_le_bytes())),
    }
}

/// Decodes an [`Encoded`] tensor back to f32 (for error reports).
pub fn decode(
    scheme: Scheme,
    enc: &Encoded,
    row_len: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    match scheme {
        Scheme::Int8PerChannel => {
            for ((o, q), s) in out
                .chunks_mut(row_len)
                .zip(enc.data.chunks(row_len))
                .zip(enc.scales.chunks_exact(4))
            {
                let s = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                for (v, &c) in o.iter_mut().zip(q) {
                    *v = s * f32::from(c as i8);
                }
            }
            Ok(())
        }
        Scheme::Int4Group { group, symmetric } => {
            let g = usize::from(group);
            for (i, (o, q)) in out.chunks_mut(g).zip(enc.data.chunks(g / 2)).enumerate() {
                let s = f16::from_le_bytes([enc.scales[2 * i], enc.scales[2 * i + 1]]);
                let z = if symmetric { 8 } else { enc.zeros[i] };
                grouped::int4_group_decode(q, s, z, o);
            }
            Ok(())
        }
        s => dequantize(ggml_type(s).expect("GGUF scheme"), &enc.data, out),
    }
}

/// Decodes `bytes` of ggml type `ty` into `out` (its element count).
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let want = ty.bytes_for(out.len() as u64).unwrap_or(u64::MAX);
    if bytes.len() as u64 != want {
        return Err(QuantError::ByteCount {
            ty: ty.name().into(),
            elems: out.len(),
            got: bytes.len(),
            want: want as usize,
        });
    }
    let block: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => |b, o| {
            for (v, c) in o.iter_mut().zip(b.chunks_exact(4)) {
                *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        },
        GgmlType::F16 => float::decode_f16,
        GgmlType::BF16 => float::decode_bf16,
        GgmlType::F64 => |b, o| {
            for (v, c) in o.iter_mut().zip(b.chunks_exact(8)) {
                *v = f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32;
            }
        },
        GgmlType::I8 => |b, o| {
            o.iter_mut()
                .zip(b)
                .for_each(|(v, &c)| *v = f32::from(c as i8))
        },
        GgmlType::I16 => |b, o| {
            for (v, c) in o.iter_mut().zip(b.chunks_exact(2)) {
                *v = f32::from(i16::from_le_bytes([c[0], c[1]]));
            }
        },
        GgmlType::I32 => |b, o| {
            for (v, c) in o.iter_mut().zip(b.chunks_exact(4)) {
                *v = i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32;
            }
        },
        GgmlType::Q8_0 => legacy::dq8_0,
        GgmlType::Q4_0 => legacy::dq4_0,
        GgmlType::Q4_1 => legacy::dq4_1,
        GgmlType::Q5_0 => legacy::dq5_0,
        GgmlType::Q5_1 => legacy::dq5_1,
        GgmlType::Q2_K => kquants::dq2_k,
        GgmlType::Q3_K => kquants::dq3_k,
        GgmlType::Q4_K => kquants::dq4_k,
        GgmlType::Q5_K => kquants::dq5_k,
        GgmlType::Q6_K => kquants::dq6_k,
        GgmlType::IQ4_NL => iquants::dq_iq4_nl,
        GgmlType::IQ4_XS => iquants::dq_iq4_xs,
        other => return Err(QuantError::Unsupported(format!("Decoding {other}"))),
    };
    let (be, bb) = (ty.block_elems() as usize, ty.block_bytes() as usize);
    // Plain types decode in one call per task; block types per block.
    let elems_per_task = 65_536usize.div_ceil(be) * be;
    out.par_chunks_mut(elems_per_task)
        .zip(bytes.par_chunks(elems_per_task / be * bb))
        .for_each(|(o, b)| {
            if be == 1 {
                block(b, o);
            } else {
                for (ob, bb_) in o.chunks_exact_mut(be).zip(b.chunks_exact(bb)) {
                    block(bb_, ob);
                }
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_and_portable_builds_give_identical_bytes() {
        let x: Vec<f32> = (0..4096)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 13) as f32))
            .collect();
        for scheme in [
            Scheme::Q8_0,
            Scheme::Q4_0,
            Scheme::Q4_1,
            Scheme::Q5_0,
            Scheme::Q5_1,
            Scheme::Q2K,
            Scheme::Q3K,
            Scheme::Q4K,
            Scheme::Q5K,
            Scheme::Q6K,
            Scheme::IQ4NL,
            Scheme::IQ4XS,
        ] {
            let ty = ggml_type(scheme).unwrap();
            let n = ty.bytes_for(x.len() as u64).unwrap() as usize;
            let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
            encode_blocks(scheme, &x, &mut a);
            encode_blocks_portable(scheme, &x, &mut b);
            assert!(a == b, "{scheme}");
        }
    }
}
