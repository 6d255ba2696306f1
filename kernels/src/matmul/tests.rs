use super::*;
use crate::f16::f32_to_f16;
use crate::quant::{QuantType, SUPPORTED};
use crate::testing::TestRng;

/// `|y - y_ref| <= MATMUL_TOL * sum_k |x_k w_k|`: f32 accumulation in a
/// different order than the f64 oracle, relative to the dot product's mass.
pub const MATMUL_TOL: f64 = 2e-5;

/// Byte offsets of the f16 scales in each block (ggml-common.h).
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

/// Random bytes of format `ty` for `n` values, with finite scales.
pub fn random_quant(ty: QuantType, n: usize, rng: &mut TestRng) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..ty.bytes_for(n as u64).unwrap()).map(|_| rng.next_u64() as u8).collect();
    match ty {
        QuantType::F32 => {
            for c in bytes.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.uniform().to_le_bytes());
            }
        }
        QuantType::F16 | QuantType::BF16 => {
            for c in bytes.chunks_exact_mut(2) {
                let v = rng.uniform();
                let h = if ty == QuantType::F16 { f32_to_f16(v) } else { (v.to_bits() >> 16) as u16 };
                c.copy_from_slice(&h.to_le_bytes());
            }
        }
        _ => {
            for block in bytes.chunks_exact_mut(ty.block_bytes()) {
                for &off in half_fields(ty) {
                    let h = f32_to_f16(rng.uniform() * 0.1);
                    block[off..off + 2].copy_from_slice(&h.to_le_bytes());
                }
            }
        }
    }
    bytes
}

fn check(kernel: micro::MicroKernel, ty: QuantType, n_tok: usize, n_out: usize, n_in: usize, seed: u64) {
    let mut rng = TestRng(seed);
    let bytes = random_quant(ty, n_out * n_in, &mut rng);
    let w = Weights::quantized(ty, &bytes, n_out, n_in).unwrap();
    let x: Vec<f32> = (0..n_tok * n_in).map(|_| rng.uniform()).collect();
    let mut y = vec![f32::NAN; n_tok * n_out];
    let mut y_ref = vec![0f32; n_tok * n_out];
    matmul_wt_with(kernel, &x, n_tok, &w, &mut y);
    matmul_wt_scalar(&x, n_tok, &w, &mut y_ref);
    let mut row = vec![0f32; n_in];
    for n in 0..n_out {
        w.dequantize_row(n, &mut row);
        for t in 0..n_tok {
            let mass: f64 = x[t * n_in..(t + 1) * n_in].iter().zip(&row).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
            let (got, want) = (y[t * n_out + n] as f64, y_ref[t * n_out + n] as f64);
            assert!(
                (got - want).abs() <= MATMUL_TOL * mass + 1e-30,
                "{ty:?} {n_tok}x{n_in} * {n_out}x{n_in}^T: y[{t},{n}] = {got}, oracle {want} (mass {mass})"
            );
        }
    }
}

const SHAPES: [(usize, usize, usize); 8] = [
    (1, 16, 256),
    (2, 21, 512),
    (3, 16, 256),
    (7, 33, 512),
    (13, 17, 768),
    (6, 48, 256),
    (2, 5, 1024),
    (20, 40, 1280),
];

#[test]
fn matches_scalar_twin_for_every_format_and_ragged_shapes() {
    for (i, ty) in SUPPORTED.into_iter().enumerate() {
        for (j, &(t, n, k)) in SHAPES.iter().enumerate() {
            check(micro::select(), ty, t, n, k, (i * 100 + j) as u64);
        }
    }
}

#[test]
fn portable_kernel_matches_too() {
    for ty in [QuantType::F32, QuantType::Q4_K, QuantType::Q8_0] {
        for (j, &(t, n, k)) in SHAPES.iter().enumerate() {
            check(micro::portable(), ty, t, n, k, 7 + j as u64);
        }
    }
}

#[test]
fn block32_formats_with_inputs_not_multiple_of_256() {
    // Qwen2.5-0.5B rows have 896 inputs: Q5_0/Q8_0, 3.5 chunks of 256.
    for ty in [QuantType::Q5_0, QuantType::Q8_0, QuantType::F16] {
        check(micro::select(), ty, 9, 19, 896, 3);
    }
}

#[test]
fn row_views_and_shape_errors() {
    let mut rng = TestRng(1);
    let bytes = random_quant(QuantType::Q4_0, 4 * 64, &mut rng);
    let w = Weights::quantized(QuantType::Q4_0, &bytes, 4, 64).unwrap();
    let sub = w.rows(1, 3);
    let (mut a, mut b) = (vec![0f32; 64], vec![0f32; 64]);
    w.dequantize_row(2, &mut a);
    sub.dequantize_row(1, &mut b);
    assert_eq!(a, b);
    assert!(matches!(
        Weights::quantized(QuantType::Q4_0, &bytes, 4, 48),
        Err(WeightError::RaggedRow { ty: QuantType::Q4_0, n_cols: 48 })
    ));
    assert!(matches!(Weights::quantized(QuantType::Q4_0, &bytes, 5, 64), Err(WeightError::Size { .. })));
    assert!(matches!(Weights::quantized(QuantType::IQ4_NL, &bytes, 4, 64), Err(WeightError::Unsupported(_))));
}
