//! Dequantization of ggml block formats into f32, one block at a time.
//!
//! Each format is a zero-sized type implementing [`BlockFormat`]; the code
//! follows ggml's reference `dequantize_row_*` functions (ggml-quants.c) so
//! that results agree with the `gguf` Python package's numpy dequantization up
//! to f32 rounding (checked by `models/tests/dequant.rs` on committed vectors).
//! Layouts are written as byte offsets because blocks in a GGUF file are
//! packed byte arrays with no alignment guarantees.
#![allow(non_camel_case_types)] // the formats keep ggml's names: Q4_K, not Q4K

use super::QuantType;
use crate::cpu::{call_twin, kernels, twin};
use crate::f16::{bf16_to_f32, f16_to_f32};

/// A ggml block format: `BLOCK_LEN` values stored in `BLOCK_BYTES` bytes.
pub trait BlockFormat {
    /// The ggml type.
    const TYPE: QuantType;
    /// Values per block.
    const BLOCK_LEN: usize;
    /// Bytes per block.
    const BLOCK_BYTES: usize;
    /// Decodes one block. `block.len() == BLOCK_BYTES`, `out.len() == BLOCK_LEN`
    /// (callers guarantee it; [`super::dequantize`] checks it).
    fn dequantize_block(block: &[u8], out: &mut [f32]);
}

#[inline(always)]
fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// f32, one value per block.
pub struct F32;
impl BlockFormat for F32 {
    const TYPE: QuantType = QuantType::F32;
    const BLOCK_LEN: usize = 1;
    const BLOCK_BYTES: usize = 4;
    #[inline(always)]
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// IEEE half precision.
pub struct F16;
impl BlockFormat for F16 {
    const TYPE: QuantType = QuantType::F16;
    const BLOCK_LEN: usize = 1;
    const BLOCK_BYTES: usize = 2;
    #[inline(always)]
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        out[0] = half(b, 0);
    }
}

/// bfloat16.
pub struct BF16;
impl BlockFormat for BF16 {
    const TYPE: QuantType = QuantType::BF16;
    const BLOCK_LEN: usize = 1;
    const BLOCK_BYTES: usize = 2;
    #[inline(always)]
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        out[0] = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// `{ d: f16, qs: [u8; 16] }`, x = (q - 8) * d.
pub struct Q4_0;
impl BlockFormat for Q4_0 {
    const TYPE: QuantType = QuantType::Q4_0;
    const BLOCK_LEN: usize = 32;
    const BLOCK_BYTES: usize = 18;
    #[inline(always)]
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let d = half(b, 0);
        let qs = &b[2..18];
        for j in 0..16 {
            out[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
            out[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// `{ d: f16, m: f16, qs: [u8; 16] }`, x = q * d + m.
pub struct Q4_1;
impl BlockFormat for Q4_1 {
    const TYPE: QuantType = QuantType::Q4_1;
    const BLOCK_LEN: usize = 32;
    const BLOCK_BYTES: usize = 20;
    #[inline(always)]
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let (d, m) = (half(b, 0), half(b, 2));
        let qs = &b[4..20];
        for j in 0..16 {
            out[j] = (qs[j] & 0x0f) as f32 * d + m;
            out[j + 16] = (qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// `{ d: f16, qh: u32, qs: [u8; 16] }`, 5-bit q with the high bit in qh, x = (q - 16) * d.
pub struct Q5_0;
impl BlockFormat for Q5_0 {
    const TYPE: QuantType = QuantType::Q5_0;
    const BLOCK_LEN: usize = 32;
    const BLOCK_BYTES: usize = 22;
    #[inline(always)]
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let d = half(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        for j in 0..16 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            out[j] = ((((qs[j] & 0x0f) as u32) | h0) as i32 - 16) as f32 * d;
            out[j + 16] = ((((qs[j] >> 4) as u32) | h1) as i32 - 16) as f32 * d;
        }
    }
}

/// `{ d: f16, m: f16, qh: u32, qs: [u8; 16] }`, x = q * d + m.
pub struct Q5_1;
impl BlockFormat for Q5_1 {
    const TYPE: QuantType = QuantType::Q5_1;
    const BLOCK_LEN: usize = 32;
    const BLOCK_BYTES: usize = 24;
    #[inline(always)]
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let (d, m) = (half(b, 0), half(b, 2));
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let qs = &b[8..24];
        for j in 0..16 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            out[j] = (((qs[j] & 0x0f) as u32) | h0) as f32 * d + m;
            out[j + 16] = (((qs[j] >> 4) as u32) | h1) as f32 * d + m;
        }
    }
}

/// `{ d: f16, qs: [i8; 32] }`, x = q * d.
pub struct Q8_0;
impl BlockFormat for Q8_0 {
    const TYPE: QuantType = QuantType::Q8_0;
    const BLOCK_LEN: usize = 32;
    const BLOCK_BYTES: usize = 34;
    #[inline(always)]
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let d = half(b, 0);
        for j in 0..32 {
            out[j] = (b[2 + j] as i8) as f32 * d;
        }
    }
}

/// `{ scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16 }`: 2-bit q in 16
/// groups of 16, each with a 4-bit scale and a 4-bit min.
pub struct Q2_K;
impl BlockFormat for Q2_K {
    const TYPE: QuantType = QuantType::Q2_K;
    const BLOCK_LEN: usize = 256;
    const BLOCK_BYTES: usize = 84;
    #[inline(always)]
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let scales = &b[0..16];
        let (d, min) = (half(b, 80), half(b, 82));
        let mut y = 0;
        let mut is = 0;
        for n in 0..2 {
            let q = &b[16 + 32 * n..16 + 32 * n + 32];
            for shift in [0u32, 2, 4, 6] {
                for half_group in 0..2 {
                    let sc = scales[is];
                    is += 1;
                    let dl = d * (sc & 0x0f) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for l in 0..16 {
                        let v = (q[l + 16 * half_group] >> shift) & 3;
                        out[y] = dl * v as f32 - ml;
                        y += 1;
                    }
                }
            }
        }
    }
}

/// `{ hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16 }`: 3-bit q
/// (low 2 bits in qs, high bit in hmask), 16 groups with 6-bit signed scales.
pub struct Q3_K;
impl BlockFormat for Q3_K {
    const TYPE: QuantType = QuantType::Q3_K;
    const BLOCK_LEN: usize = 256;
    const BLOCK_BYTES: usize = 110;
    #[inline(always)]
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let hm = &b[0..32];
        let d_all = half(b, 108);
        let scales = q3k_scales(&b[96..108]);
        let mut y = 0;
        let mut is = 0;
        let mut m = 1u8;
        for n in 0..2 {
            let q = &b[32 + 32 * n..32 + 32 * n + 32];
            for shift in [0u32, 2, 4, 6] {
                for half_group in 0..2 {
                    let dl = d_all * (scales[is] as i32 - 32) as f32;
                    is += 1;
                    for l in 0..16 {
                        let i = l + 16 * half_group;
                        let low = ((q[i] >> shift) & 3) as i32;
                        let high = if hm[i] & m != 0 { 0 } else { 4 };
                        out[y] = dl * (low - high) as f32;
                        y += 1;
                    }
                }
                m <<= 1;
            }
        }
    }
}

/// Unpacks Q3_K's twelve bytes into sixteen 6-bit scales (ggml's kmask dance:
/// low 4 bits from bytes 0..8, high 2 bits from bytes 8..12).
fn q3k_scales(packed: &[u8]) -> [u8; 16] {
    let mut s = [0u8; 16];
    for (j, out) in s.iter_mut().enumerate() {
        let low = if j < 8 {
            packed[j] & 0x0f
        } else {
            packed[j - 8] >> 4
        };
        let high = (packed[8 + (j % 4)] >> (2 * (j / 4))) & 3;
        *out = low | (high << 4);
    }
    s
}

/// The (scale, min) pair `j` of a Q4_K/Q5_K block's 12 packed bytes (ggml's
/// `get_scale_min_k4`).
#[inline(always)]
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `{ d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] }`: 8 groups of 32
/// with 6-bit scales and mins.
pub struct Q4_K;
impl BlockFormat for Q4_K {
    const TYPE: QuantType = QuantType::Q4_K;
    const BLOCK_LEN: usize = 256;
    const BLOCK_BYTES: usize = 144;
    #[inline(always)]
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let (d, min) = (half(b, 0), half(b, 2));
        let scales = &b[4..16];
        for g in 0..4 {
            let q = &b[16 + 32 * g..16 + 32 * g + 32];
            let (sc1, m1) = scale_min_k4(2 * g, scales);
            let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let y = &mut out[64 * g..64 * g + 64];
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// `{ d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }`.
pub struct Q5_K;
impl BlockFormat for Q5_K {
    const TYPE: QuantType = QuantType::Q5_K;
    const BLOCK_LEN: usize = 256;
    const BLOCK_BYTES: usize = 176;
    #[inline(always)]
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let (d, min) = (half(b, 0), half(b, 2));
        let scales = &b[4..16];
        let qh = &b[16..48];
        for g in 0..4 {
            let ql = &b[48 + 32 * g..48 + 32 * g + 32];
            let (sc1, m1) = scale_min_k4(2 * g, scales);
            let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
            let y = &mut out[64 * g..64 * g + 64];
            for l in 0..32 {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * ((ql[l] & 0x0f) + h1) as f32 - m1;
                y[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

/// `{ ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 }`: 6-bit q, 16
/// groups of 16 with 8-bit signed scales.
pub struct Q6_K;
impl BlockFormat for Q6_K {
    const TYPE: QuantType = QuantType::Q6_K;
    const BLOCK_LEN: usize = 256;
    const BLOCK_BYTES: usize = 210;
    #[inline(always)]
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let d = half(b, 208);
        for n in 0..2 {
            let ql = &b[64 * n..64 * n + 64];
            let qh = &b[128 + 32 * n..128 + 32 * n + 32];
            let sc = &b[192 + 8 * n..192 + 8 * n + 8];
            let y = &mut out[128 * n..128 * n + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                let s = |k: usize| d * (sc[is + k] as i8) as f32;
                y[l] = s(0) * q1 as f32;
                y[l + 32] = s(2) * q2 as f32;
                y[l + 64] = s(4) * q3 as f32;
                y[l + 96] = s(6) * q4 as f32;
            }
        }
    }
}

/// Decodes a run of whole blocks of format `F` in the build the kernel set
/// names (with AVX2 and FMA the block decoders are inlined into that build,
/// so the compiler vectorizes them for it).
pub(super) fn dequantize_blocks<F: BlockFormat>(bytes: &[u8], out: &mut [f32]) {
    call_twin!(
        kernels().dequant,
        dequantize_blocks_body::<F>,
        dequantize_blocks_avx2::<F>,
        dequantize_blocks_avx512::<F>;
        bytes,
        out
    )
}

twin!(fn dequantize_blocks_body, dequantize_blocks_avx2, dequantize_blocks_avx512<F: BlockFormat> (bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes
        .chunks_exact(F::BLOCK_BYTES)
        .zip(out.chunks_exact_mut(F::BLOCK_LEN))
    {
        F::dequantize_block(block, y);
    }
});
