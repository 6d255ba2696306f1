//! Synthetic tensors in any supported format: random packed bits with finite,
//! model-like scales. For benchmarks and tests that need real formats without
//! a model file (never for anything a user sees).

use super::QuantType;
use crate::f16::f32_to_f16;

/// Byte offsets of the f16 scales inside one block (ggml-common.h).
fn half_fields(ty: QuantType) -> &'static [usize] {
    use QuantType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        _ => &[],
    }
}

/// Deterministic bytes of format `ty` for `n_values` values (a whole number
/// of blocks), values roughly in [-1, 1] for the float formats and scales in
/// [-0.1, 0.1] for the block formats. `None` if `n_values` is not whole blocks.
pub fn random_tensor(ty: QuantType, n_values: usize, seed: u64) -> Option<Vec<u8>> {
    let mut state = seed;
    let mut next = move || crate::rng::splitmix64(&mut state);
    let uniform = |u: u64| (u >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
    let n_bytes = ty.bytes_for(n_values as u64)? as usize;
    let mut bytes = Vec::with_capacity(n_bytes + 8);
    while bytes.len() < n_bytes {
        bytes.extend_from_slice(&next().to_le_bytes());
    }
    bytes.truncate(n_bytes);
    match ty {
        QuantType::F32 => bytes
            .chunks_exact_mut(4)
            .for_each(|c| c.copy_from_slice(&uniform(next()).to_le_bytes())),
        QuantType::F16 => bytes
            .chunks_exact_mut(2)
            .for_each(|c| c.copy_from_slice(&f32_to_f16(uniform(next())).to_le_bytes())),
        QuantType::BF16 => bytes.chunks_exact_mut(2).for_each(|c| {
            c.copy_from_slice(&((uniform(next()).to_bits() >> 16) as u16).to_le_bytes())
        }),
        _ => {
            for block in bytes.chunks_exact_mut(ty.block_bytes()) {
                for &off in half_fields(ty) {
                    let h = f32_to_f16(uniform(next()) * 0.1);
                    block[off..off + 2].copy_from_slice(&h.to_le_bytes());
                }
            }
        }
    }
    Some(bytes)
}
