use super::*;
use crate::quant::{QuantType, SUPPORTED};
use crate::testing::TestRng;

/// `|y - y_ref| <= MATMUL_TOL * sum_k |x_k w_k|`: f32 accumulation in a
/// different order than the f64 oracle, relative to the dot product's mass.
pub const MATMUL_TOL: f64 = 2e-5;

fn random_quant(ty: QuantType, n: usize, rng: &mut TestRng) -> Vec<u8> {
    crate::quant::synthetic::random_tensor(ty, n, rng.next_u64()).unwrap()
}

fn check(
    kernel: micro::MicroKernel,
    ty: QuantType,
    n_tok: usize,
    n_out: usize,
    n_in: usize,
    seed: u64,
) {
    let mut rng = TestRng(seed);
    let bytes = random_quant(ty, n_out * n_in, &mut rng);
    let w = Weights::quantized(ty, &bytes, n_out, n_in).unwrap();
    let x: Vec<f32> = (0..n_tok * n_in).map(|_| rng.uniform()).collect();
    let mut y = vec![f32::NAN; n_tok * n_out];
    let mut y_ref = vec![0f32; n_tok * n_out];
    matmul_wt_with(kernel, &x, n_tok, &w, None, &mut y);
    matmul_wt_scalar(&x, n_tok, &w, &mut y_ref);
    let mut row = vec![0f32; n_in];
    for n in 0..n_out {
        w.dequantize_row(n, &mut row);
        for t in 0..n_tok {
            let mass: f64 = x[t * n_in..(t + 1) * n_in]
                .iter()
                .zip(&row)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            let (got, want) = (y[t * n_out + n] as f64, y_ref[t * n_out + n] as f64);
            assert!(
                (got - want).abs() <= MATMUL_TOL * mass + 1e-30,
                "{ty:?} {n_tok}x{n_in} * {n_out}x{n_in}^T: y[{t},{n}] = {got}, oracle {want} (mass {mass})"
            );
        }
    }
}

const SHAPES: [(usize, usize, usize); 9] = [
    (1, 16, 256),
    (2, 21, 512),
    (3, 16, 256),
    (7, 33, 512),
    (13, 17, 768),
    (6, 48, 256),
    (2, 5, 1024),
    (20, 40, 1280),
    // Narrow outputs with many rows: rows split across tasks.
    (100, 16, 256),
];

/// `kernel` against the oracle on every format and every shape of
/// [`SHAPES`], with data seeded from `seed`.
fn check_every_format_and_shape(kernel: micro::MicroKernel, seed: u64) {
    for (i, ty) in SUPPORTED.into_iter().enumerate() {
        for (j, &(t, n, k)) in SHAPES.iter().enumerate() {
            check(kernel, ty, t, n, k, (i * 100 + j) as u64 + seed);
        }
    }
}

#[test]
fn matches_scalar_twin_for_every_format_and_ragged_shapes() {
    check_every_format_and_shape(micro::select(), 0);
}

/// Runs where the CPU has AVX-512F (the 2-core Zen 4 VM does; `select`
/// also takes it there, so the tests above run it too).
#[test]
fn avx512_kernel_matches_where_the_cpu_has_it() {
    let Some(kernel) = micro::avx512_if_available() else {
        eprintln!("no AVX-512F on this CPU: the AVX-512 f32 kernel is not checked here");
        return;
    };
    check_every_format_and_shape(kernel, 31);
    // x W: reductions past one chunk (the accumulating stores), ragged
    // widths (the masked lanes), LoRA-factor shapes, a chunk that is not a
    // whole number of the 6 x 32 kernel's four-k steps (263 = 256 + 7).
    for (j, &(t, r, c)) in [
        (7, 300, 512),
        (6, 263, 70),
        (3, 520, 1280),
        (5, 40, 23),
        (100, 40, 16),
        (1, 5, 7),
    ]
    .iter()
    .enumerate()
    {
        check_w(kernel, QuantType::F32, t, r, c, 50 + j as u64);
    }
    check_w(kernel, QuantType::Q4_K, 4, 20, 512, 57);
}

/// The AVX2 kernel, which `select` passes over on AVX-512 CPUs.
#[test]
fn avx2_kernel_matches_where_the_cpu_has_it() {
    let Some(kernel) = micro::avx2_if_available() else {
        eprintln!("no AVX2/FMA on this CPU: the AVX2 f32 kernel is not checked here");
        return;
    };
    check_every_format_and_shape(kernel, 17);
    check_w(kernel, QuantType::F32, 5, 40, 23, 61);
    check_w(kernel, QuantType::F32, 3, 520, 1280, 62);
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
        Err(WeightError::RaggedRow {
            ty: QuantType::Q4_0,
            n_cols: 48
        })
    ));
    assert!(matches!(
        Weights::quantized(QuantType::Q4_0, &bytes, 5, 64),
        Err(WeightError::Size { .. })
    ));
    assert!(matches!(
        Weights::quantized(QuantType::IQ4_NL, &bytes, 4, 64),
        Err(WeightError::Unsupported(_))
    ));
}

/// A prefetch is only a hint, but it slices the row's bytes: every row and
/// segment of a view, to the end of its data and past its last row, must
/// stay inside the bytes (a slicing error panics), for quantized and f32
/// weights, and must leave what decoding gives unchanged.
#[test]
fn prefetch_stays_inside_the_weights() {
    let mut rng = TestRng(3);
    let bytes = random_quant(QuantType::Q5_0, 6 * 96, &mut rng);
    let values = rng.vec(6 * 96, 1.0);
    for w in [
        Weights::quantized(QuantType::Q5_0, &bytes, 6, 96).unwrap(),
        Weights::f32(&values, 6, 96),
    ] {
        let sub = w.rows(2, 5);
        let mut before = vec![0f32; 3 * 96];
        sub.dequantize_segment(0, 0, &mut before[..96]);
        for view in [&w, &sub] {
            for n in 0..=view.n_rows() + 1 {
                for k0 in (0..96).step_by(32) {
                    view.prefetch_segment(n, k0, 96 - k0);
                    view.prefetch_segment(n, k0, 4096);
                }
            }
        }
        let mut after = vec![0f32; 96];
        sub.dequantize_segment(0, 0, &mut after);
        assert_eq!(&before[..96], &after[..]);
    }
}

fn check_w(
    kernel: micro::MicroKernel,
    ty: QuantType,
    n_tok: usize,
    n_red: usize,
    n_cols: usize,
    seed: u64,
) {
    let mut rng = TestRng(seed);
    let bytes = random_quant(ty, n_red * n_cols, &mut rng);
    let w = Weights::quantized(ty, &bytes, n_red, n_cols).unwrap();
    let x: Vec<f32> = (0..n_tok * n_red).map(|_| rng.uniform()).collect();
    let (mut y, mut y_ref) = (vec![f32::NAN; n_tok * n_cols], vec![0f32; n_tok * n_cols]);
    matmul_w_with(kernel, &x, n_tok, &w, None, &mut y, false);
    matmul_w_scalar(&x, n_tok, &w, &mut y_ref);
    // Mass of each output: sum_r |x[t, r] W[r, c]|.
    let mut mass = vec![0f64; n_tok * n_cols];
    let mut row = vec![0f32; n_cols];
    for r in 0..n_red {
        w.dequantize_row(r, &mut row);
        for t in 0..n_tok {
            for c in 0..n_cols {
                mass[t * n_cols + c] += (x[t * n_red + r] as f64 * row[c] as f64).abs();
            }
        }
    }
    for i in 0..y.len() {
        assert!(
            (y[i] as f64 - y_ref[i] as f64).abs() <= MATMUL_TOL * mass[i] + 1e-30,
            "{ty:?} x[{n_tok}x{n_red}] W[{n_red}x{n_cols}]: y[{i}] = {}, oracle {}",
            y[i],
            y_ref[i]
        );
    }
}

#[test]
fn matmul_w_matches_scalar_twin_for_every_format() {
    // (n_tok, n_red, n_cols): ragged token counts, reductions past one chunk,
    // column counts that are not whole groups.
    let shapes = [
        (1, 16, 256),
        (7, 300, 512),
        (13, 17, 768),
        (3, 520, 1280),
        (9, 33, 896),
        (2, 5, 576),
    ];
    for (i, ty) in SUPPORTED.into_iter().enumerate() {
        for (j, &(t, r, c)) in shapes.iter().enumerate() {
            if c % ty.block_len() == 0 {
                check_w(micro::select(), ty, t, r, c, (i * 10 + j) as u64);
            }
        }
    }
    // f32 with widths that are not multiples of 16 (LoRA factors).
    check_w(micro::select(), QuantType::F32, 5, 40, 23, 1);
    check_w(micro::select(), QuantType::F32, 100, 40, 16, 4);
    check_w(micro::portable(), QuantType::F32, 5, 300, 70, 2);
    check_w(micro::portable(), QuantType::Q4_K, 4, 20, 512, 3);
}

#[test]
fn matmul_tn_matches_naive() {
    let mut rng = TestRng(8);
    for &(t, m, n) in &[
        (1, 1, 1),
        (7, 33, 16),
        (40, 16, 100),
        (30, 16, 900),
        (300, 16, 896),
        (129, 4864, 16),
        (5, 100, 7),
        // Past TN_IN_PLACE_MAX_TOK: the wide operand is tiled by chunks of
        // tokens, the last one ragged.
        (2050, 16, 896),
        (1100, 40, 16),
        (1500, 16, 100),
    ] {
        let a: Vec<f32> = (0..t * m).map(|_| rng.uniform()).collect();
        let b: Vec<f32> = (0..t * n).map(|_| rng.uniform()).collect();
        let mut c = vec![1.0f32; m * n];
        matmul_tn(&a, &b, t, &mut c, true);
        for i in 0..m {
            for j in 0..n {
                let terms = (0..t).map(|k| a[k * m + i] as f64 * b[k * n + j] as f64);
                let want: f64 = 1.0 + terms.clone().sum::<f64>();
                // f32 accumulation over t terms, relative to their mass (as
                // for every matmul here).
                let mass: f64 = 1.0 + terms.map(f64::abs).sum::<f64>();
                assert!(
                    (c[i * n + j] as f64 - want).abs() <= MATMUL_TOL * mass,
                    "t={t} m={m} n={n}: c[{i},{j}] = {}, want {want}",
                    c[i * n + j]
                );
            }
        }
    }
}

/// The vector conversions to bf16 pairs round exactly as the scalar
/// [`bf16::pair`]: lengths around the 16- and 32-value vector widths, the
/// second row present or absent, values across exponents and ties.
#[test]
fn bf16_pair_conversions_match_the_scalar_rounding() {
    if !bf16_available() {
        return; // only bf16 operand builders call them
    }
    let mut rng = TestRng(9);
    for n in [1, 15, 16, 17, 31, 32, 33, 64, 100] {
        let mut vals = |_| {
            let v = rng.uniform() * 10f32.powi((rng.uniform() * 8.0) as i32 - 4);
            // Every fourth value exactly halfway between two bf16 values.
            if rng.uniform() < 0.25 {
                f32::from_bits(v.to_bits() & 0xffff_0000 | 0x8000)
            } else {
                v
            }
        };
        let lo: Vec<f32> = (0..n).map(&mut vals).collect();
        let hi: Vec<f32> = (0..n).map(&mut vals).collect();
        let mut out = vec![0u32; n];
        bf16::interleave_pairs(&lo, Some(&hi), &mut out);
        let want: Vec<u32> = (0..n).map(|j| bf16::pair(lo[j], hi[j])).collect();
        assert_eq!(out, want, "interleave n={n}");
        bf16::interleave_pairs(&lo, None, &mut out);
        let want: Vec<u32> = (0..n).map(|j| bf16::pair(lo[j], 0.0)).collect();
        assert_eq!(out, want, "interleave without hi n={n}");
        let mut pairs = vec![0u32; n.div_ceil(2)];
        bf16::to_pairs(&lo, &mut pairs);
        let want: Vec<u32> = (0..n.div_ceil(2))
            .map(|q| bf16::pair(lo[2 * q], lo.get(2 * q + 1).copied().unwrap_or(0.0)))
            .collect();
        assert_eq!(pairs, want, "to_pairs n={n}");
    }
}

/// The bf16 products against an f64 oracle on the same bf16-rounded
/// operands (so only the f32 accumulation order differs: MATMUL_TOL), and
/// against the unrounded product within the rounding of two operands
/// (2 * 2^-9 of the mass, plus the accumulation).
fn check_bf16(ty: QuantType, n_tok: usize, n_a: usize, n_b: usize, transposed: bool, seed: u64) {
    let product = move |x: &[f32], n_tok: usize, w: &Weights, y: &mut [f32]| {
        if transposed {
            matmul_wt_bf16(x, n_tok, w, y);
        } else {
            matmul_w_bf16(x, n_tok, w, y);
        }
    };
    check_bf16_with(&product, ty, n_tok, n_a, n_b, transposed, seed);
}

/// `(x, n_tok, w, y)`: a bf16 product, `x W^T` or `x W`.
type Bf16Product = dyn Fn(&[f32], usize, &Weights, &mut [f32]);

fn check_bf16_with(
    product: &Bf16Product,
    ty: QuantType,
    n_tok: usize,
    n_a: usize,
    n_b: usize,
    transposed: bool,
    seed: u64,
) {
    let round = |v: f32| from_bf16(to_bf16(v)) as f64;
    let mut rng = TestRng(seed);
    // W is [n_a, n_b]; x W^T reduces over n_b, x W over n_a.
    let bytes = random_quant(ty, n_a * n_b, &mut rng);
    let w = Weights::quantized(ty, &bytes, n_a, n_b).unwrap();
    let (n_red, n_out) = if transposed { (n_b, n_a) } else { (n_a, n_b) };
    let x: Vec<f32> = (0..n_tok * n_red).map(|_| rng.uniform()).collect();
    let mut y = vec![f32::NAN; n_tok * n_out];
    product(&x, n_tok, &w, &mut y);
    let mut dense = vec![0f32; n_a * n_b];
    for (r, row) in dense.chunks_exact_mut(n_b).enumerate() {
        w.dequantize_row(r, row);
    }
    let w_at = |o: usize, k: usize| {
        if transposed {
            dense[o * n_b + k]
        } else {
            dense[k * n_b + o]
        }
    };
    for t in 0..n_tok {
        for o in 0..n_out {
            let (mut rounded, mut exact, mut mass) = (0f64, 0f64, 0f64);
            for k in 0..n_red {
                let (xv, wv) = (x[t * n_red + k], w_at(o, k));
                rounded += round(xv) * round(wv);
                exact += xv as f64 * wv as f64;
                mass += (xv as f64 * wv as f64).abs();
            }
            let got = y[t * n_out + o] as f64;
            let what = format!(
                "{ty:?} bf16 {} t={t} o={o}",
                if transposed { "x W^T" } else { "x W" }
            );
            assert!(
                (got - rounded).abs() <= MATMUL_TOL * mass + 1e-30,
                "{what}: {got} vs {rounded}"
            );
            assert!(
                (got - exact).abs() <= (2.0 / 512.0 + MATMUL_TOL) * mass + 1e-30,
                "{what}: {got} vs exact {exact}"
            );
        }
    }
}

#[test]
fn bf16_products_match_their_oracles_or_fall_back_to_f32() {
    let mut rng = TestRng(5);
    if !bf16_available() {
        // Without AVX-512 BF16 the bf16 request runs the f32 kernels.
        let bytes = random_quant(QuantType::Q8_0, 40 * 256, &mut rng);
        let w = Weights::quantized(QuantType::Q8_0, &bytes, 40, 256).unwrap();
        let x = rng.vec(9 * 256, 1.0);
        let (mut a, mut b) = (vec![0f32; 9 * 40], vec![0f32; 9 * 40]);
        matmul_wt_in(Precision::Bf16, &x, 9, &w, &mut a);
        matmul_wt(&x, 9, &w, &mut b);
        assert_eq!(a, b);
        assert_eq!(Precision::Bf16.effective(), Precision::F32);
        return;
    }
    // (n_tok, rows of W, columns of W): ragged token counts (not multiples
    // of the 8-row kernel), outputs that are not whole panels, and
    // reductions past one packed chunk: 9216 inputs of `x W^T` (chunks of at
    // most 8192), 4200 rows of `x W` (at most 4096 for 64-column groups,
    // 1024 for the K-quants' 256).
    let shapes = [
        (1, 16, 256),
        (9, 21, 512),
        (17, 40, 896),
        (3, 300, 256),
        (100, 16, 256),
        (8, 33, 768),
        (3, 40, 9216),
        (2, 4200, 256),
    ];
    for (i, ty) in [
        QuantType::Q4_K,
        QuantType::Q8_0,
        QuantType::Q5_0,
        QuantType::Q6_K,
        QuantType::F32,
    ]
    .into_iter()
    .enumerate()
    {
        for (j, &(t, a, b)) in shapes.iter().enumerate() {
            if b % ty.block_len() == 0 {
                check_bf16(ty, t, a, b, true, (i * 10 + j) as u64);
                check_bf16(ty, t, a, b, false, (i * 10 + j + 100) as u64);
            }
        }
    }
    // Odd reductions (f32 weights only: quantized rows are whole blocks),
    // one of them past the first 256-input segment of `x W^T`'s pack.
    check_bf16(QuantType::F32, 5, 7, 33, true, 1);
    check_bf16(QuantType::F32, 5, 301, 32, false, 2);
    check_bf16(QuantType::F32, 5, 7, 301, true, 4);
}

/// The bf16 products on AMX tiles, run through the tile instructions'
/// software model (`amx::Model`) on any CPU, against the same oracles and
/// shapes as the `vdpbf16ps` kernels: ragged token counts (not multiples of
/// the 16-row tile), outputs that are not whole panels or groups,
/// reductions that are not whole tiles (odd ones included) and past one
/// packed chunk (9216 inputs of `x W^T`, 4200 rows of `x W`), whole blocks
/// (written in place) next to ragged ones (through a scratch block). The
/// instructions themselves are compared with the model on one block where
/// the CPU has AMX (`amx::tests`).
#[test]
fn bf16_products_on_amx_tiles_match_the_oracles_in_the_model() {
    let shapes = [
        (1, 16, 256),
        (9, 21, 512),
        (17, 40, 896),
        (3, 300, 256),
        (40, 33, 768),
        (3, 40, 9216),
        (2, 4200, 256),
        // Whole 32 x 32 blocks written in place, past one chunk too (the
        // second chunk adds onto the first's).
        (33, 40, 9216),
        (33, 4200, 64),
    ];
    for transposed in [true, false] {
        let product = move |x: &[f32], n_tok: usize, w: &Weights, y: &mut [f32]| {
            if transposed {
                tiled::matmul_wt::<amx::Model>(x, n_tok, w, None, y)
            } else {
                tiled::matmul_w::<amx::Model>(x, n_tok, w, None, y, false)
            }
        };
        for (i, ty) in [QuantType::Q4_K, QuantType::Q8_0, QuantType::F32]
            .into_iter()
            .enumerate()
        {
            for (j, &(t, a, b)) in shapes.iter().enumerate() {
                if b % ty.block_len() == 0 {
                    let seed = (i * 10 + j + 200 + 100 * transposed as usize) as u64;
                    check_bf16_with(&product, ty, t, a, b, transposed, seed);
                }
            }
        }
        check_bf16_with(&product, QuantType::F32, 5, 7, 33, transposed, 3);
        check_bf16_with(&product, QuantType::F32, 5, 7, 301, transposed, 4);
    }
}

/// The same products on the tile instructions themselves, where the CPU
/// and OS have AMX (first passed on an Emerald Rapids Xeon; elsewhere this
/// prints why it ran nothing).
#[test]
fn bf16_products_on_amx_instructions_match_the_oracles_where_amx_runs() {
    #[cfg(target_arch = "x86_64")]
    match amx::usable() {
        Err(why) => eprintln!("AMX not run here: {why}"),
        Ok(()) => {
            for transposed in [true, false] {
                let product = move |x: &[f32], n_tok: usize, w: &Weights, y: &mut [f32]| {
                    if transposed {
                        tiled::matmul_wt::<amx::Hw>(x, n_tok, w, None, y)
                    } else {
                        tiled::matmul_w::<amx::Hw>(x, n_tok, w, None, y, false)
                    }
                };
                for (t, a, b) in [
                    (17, 40, 896),
                    (40, 33, 768),
                    (3, 40, 9216),
                    (2, 4200, 256),
                    (33, 40, 9216),
                    (33, 4200, 64),
                ] {
                    check_bf16_with(&product, QuantType::Q8_0, t, a, b, transposed, 7);
                }
                check_bf16_with(&product, QuantType::F32, 5, 7, 33, transposed, 3);
                check_bf16_with(&product, QuantType::F32, 5, 7, 301, transposed, 4);
            }
            let tiles: Box<LowRankProduct> = Box::new(|x, n_tok, w, lr, y, transposed| {
                if transposed {
                    tiled::matmul_wt::<amx::Hw>(x, n_tok, w, Some(lr), y)
                } else {
                    tiled::matmul_w::<amx::Hw>(x, n_tok, w, Some(lr), y, true)
                }
            });
            let tol = 2.0 / 512.0 + MATMUL_TOL;
            check_low_rank("bf16 on AMX tiles", &tiles, tol, &[true, false]);
        }
    }
}

/// The low-rank term riding in a product (LoRA's `(s u) B^T` and `g A`),
/// against the f64 sum of both products: in f32 through every micro-kernel
/// this CPU runs, within [`MATMUL_TOL`] of the mass; in bf16 (where the CPU
/// has it) within the rounding of two operands (as `check_bf16`). `x W`
/// accumulates into what `y` held.
#[test]
fn products_with_a_low_rank_term_match_the_f64_sum() {
    let mut runs: Vec<(&str, Box<LowRankProduct>, f64)> = Vec::new();
    for (name, kernel) in kernels_here() {
        runs.push((
            name,
            Box::new(move |x, n_tok, w, lr, y, transposed| {
                if transposed {
                    matmul_wt_with(kernel, x, n_tok, w, Some(lr), y)
                } else {
                    matmul_w_with(kernel, x, n_tok, w, Some(lr), y, true)
                }
            }),
            MATMUL_TOL,
        ));
    }
    if bf16_available() {
        runs.push((
            "bf16",
            Box::new(|x, n_tok, w, lr, y, transposed| {
                if transposed {
                    matmul_wt_bf16_plus(x, n_tok, w, Some(lr), y)
                } else {
                    matmul_w_bf16_plus(x, n_tok, w, Some(lr), y, true)
                }
            }),
            2.0 / 512.0 + MATMUL_TOL,
        ));
    }
    for (name, product, tol) in &runs {
        check_low_rank(name, product, *tol, &[true, false]);
    }
    // On AMX tiles (their software model): the term is one more run of
    // tiles after the last chunk's.
    let tiles: Box<LowRankProduct> = Box::new(|x, n_tok, w, lr, y, transposed| {
        if transposed {
            tiled::matmul_wt::<amx::Model>(x, n_tok, w, Some(lr), y)
        } else {
            tiled::matmul_w::<amx::Model>(x, n_tok, w, Some(lr), y, true)
        }
    });
    let tol = 2.0 / 512.0 + MATMUL_TOL;
    check_low_rank("bf16 on AMX tiles (model)", &tiles, tol, &[true, false]);
}

/// Every f32 micro-kernel this CPU runs, by name.
fn kernels_here() -> Vec<(&'static str, micro::MicroKernel)> {
    let mut found = vec![("portable", micro::portable())];
    if let Some(k) = micro::avx2_if_available() {
        found.push(("avx2", k));
    }
    if let Some(k) = micro::avx512_if_available() {
        found.push(("avx512", k));
    }
    found
}

/// `(x, n_tok, w, low_rank, y, transposed)`: `y = x W^T + act factor^T`
/// when `transposed`, else `y += x W + act factor`.
type LowRankProduct = dyn Fn(&[f32], usize, &Weights, LowRank, &mut [f32], bool);

fn check_low_rank(name: &str, product: &LowRankProduct, tol: f64, directions: &[bool]) {
    let mut rng = TestRng(6);
    // The last two go past one packed chunk (see the test above): in bf16
    // the term rides in the last chunk only, in f32 it is a reduction of
    // its own; their two rows take the GEMV path in f32 x W^T.
    for &(n_tok, n_a, n_b, rank) in &[
        (9, 40, 256, 16),
        (13, 70, 512, 20),
        (17, 33, 512, 5),
        (3, 64, 256, 1),
        (2, 40, 9216, 16),
        (2, 4200, 256, 3),
        // Whole 32 x 32 blocks: AMX tiles write them in place, and `x W`
        // adds them onto what `y` held from its first chunk on.
        (33, 64, 256, 8),
    ] {
        let bytes = random_quant(QuantType::Q8_0, n_a * n_b, &mut rng);
        let w = Weights::quantized(QuantType::Q8_0, &bytes, n_a, n_b).unwrap();
        let mut dense = vec![0f32; n_a * n_b];
        for (r, row) in dense.chunks_exact_mut(n_b).enumerate() {
            w.dequantize_row(r, row);
        }
        for &transposed in directions {
            // x W^T: x [n_tok, n_b], factor B [n_a, rank]; x W: x [n_tok, n_a], factor A [rank, n_b].
            let (n_red, n_out) = if transposed { (n_b, n_a) } else { (n_a, n_b) };
            let x = rng.vec(n_tok * n_red, 1.0);
            // Large enough that the term outweighs the bound's share of the
            // base product's mass: a term added twice or not at all fails.
            let act = rng.vec(n_tok * rank, n_red as f32);
            let factor = rng.vec(n_out * rank, 1.0);
            let lr = LowRank {
                act: &act,
                factor: &factor,
                rank,
            };
            let start = rng.vec(n_tok * n_out, 1.0);
            let mut y = start.clone();
            product(&x, n_tok, &w, lr, &mut y, transposed);
            for t in 0..n_tok {
                for o in 0..n_out {
                    let (mut exact, mut mass) = (0f64, 0f64);
                    for k in 0..n_red {
                        let wv = if transposed {
                            dense[o * n_b + k]
                        } else {
                            dense[k * n_b + o]
                        };
                        exact += x[t * n_red + k] as f64 * wv as f64;
                        mass += (x[t * n_red + k] as f64 * wv as f64).abs();
                    }
                    for r in 0..rank {
                        let fv = if transposed {
                            factor[o * rank + r]
                        } else {
                            factor[r * n_out + o]
                        };
                        exact += act[t * rank + r] as f64 * fv as f64;
                        mass += (act[t * rank + r] as f64 * fv as f64).abs();
                    }
                    if !transposed {
                        exact += start[t * n_out + o] as f64; // accumulated
                    }
                    let got = y[t * n_out + o] as f64;
                    assert!(
                        (got - exact).abs() <= tol * mass + 1e-6,
                        "{name}: rank {rank} transposed {transposed} t={t} o={o}: {got} vs {exact}"
                    );
                }
            }
        }
    }
}
