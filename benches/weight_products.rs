//! The products with the base weights of a whole Qwen2.5-0.5B training
//! step, shape by shape: `x W^T` (forward) and `dy W` (input gradient) in
//! one precision, in the formats of the Q4_K_M file the step benchmarks
//! use (synthetic weights, no assets needed), with each shape's count in a
//! step (24 layers of q, k, v, o, gate, up, down and the vocabulary's
//! tiles), so the last line is the step's time in these products at this
//! T, next to the time the same weights take to decode alone. Compare
//! builds or settings by running both in one session (the machine is
//! shared and noisy).
//!
//!     cargo bench --bench weight_products                # bf16, T = 512
//!     cargo bench --bench weight_products -- 2048 f32    # T, precision
//!     cargo bench --bench weight_products -- q8          # every matrix Q8_0
//!     cargo bench --bench weight_products -- f32-weights # nothing to decode
//!
//! Under `cargo test` it runs each shape once on 8 tokens and checks the
//! outputs are finite, so the bench cannot rot unnoticed.

mod common;
use common::{args_and_tokens, median_secs, values};

use cleaner::kernels::cpu::kernels;
use cleaner::kernels::logits::vocab_tile;
use cleaner::kernels::matmul::{
    bf16_micro_kernel_ceiling_gflops, matmul_w_in, matmul_wt_in, micro_kernel_ceiling_gflops,
    Precision, Weights,
};
use cleaner::kernels::quant::{synthetic::random_tensor, QuantType};
use rayon::prelude::*;

/// (name, inputs, outputs, count in one step, weight format): the
/// Qwen2.5-Coder-0.5B Q4_K_M file the step benchmarks use (Q5_0 where rows
/// of 896 are not whole 256-blocks; the vocabulary's separate output
/// matrix is Q8_0, taken in tiles of [`vocab_tile`] rows as the loss does).
fn shapes(n_tok: usize) -> Vec<(&'static str, usize, usize, usize, QuantType)> {
    const VOCAB: usize = 151936;
    let tile = vocab_tile(n_tok, VOCAB);
    vec![
        ("q, o", 896, 896, 48, QuantType::Q5_0),
        ("k, v", 896, 128, 48, QuantType::Q5_0),
        ("gate, up", 896, 4864, 48, QuantType::Q5_0),
        ("down", 4864, 896, 12, QuantType::Q4_K),
        ("down", 4864, 896, 12, QuantType::Q6_K),
        (
            "vocabulary tile",
            896,
            tile,
            VOCAB.div_ceil(tile),
            QuantType::Q8_0,
        ),
    ]
}

fn main() {
    let (args, bench, n_tok) = args_and_tokens();
    // `q8`: every matrix Q8_0, `f32`-weights: none to decode.
    let format = |ty| {
        if args.iter().any(|a| a == "q8") {
            QuantType::Q8_0
        } else if args.iter().any(|a| a == "f32-weights") {
            QuantType::F32
        } else {
            ty
        }
    };
    let precision = if args.iter().any(|a| a == "f32") {
        Precision::F32
    } else {
        Precision::Bf16
    };
    let reps = if bench { 5 } else { 0 };
    if bench {
        println!(
            "Products with the weights, Qwen2.5-0.5B shapes, {:?} (runs {:?}), T = {n_tok}, {} threads, median of {reps}",
            precision,
            precision.effective(),
            rayon::current_num_threads()
        );
        println!("Kernel set: {}\n", kernels().describe());
        println!("| shape | n_in -> n_out | weights | per step | x W^T GFLOP/s | dy W GFLOP/s | step share s | decoding alone s |");
        println!("|---|---|---|---:|---:|---:|---:|---:|");
    }
    let (mut total, mut flops_total, mut decode_total) = (0.0, 0.0, 0.0);
    for (i, (name, n_in, n_out, count, ty)) in shapes(n_tok).into_iter().enumerate() {
        let ty = format(ty);
        let (dense, bytes) = if ty == QuantType::F32 {
            (values(n_in * n_out, 3 * i as u64 + 3), Vec::new())
        } else {
            let bytes = random_tensor(ty, n_in * n_out, i as u64 + 1).expect("blocks");
            (Vec::new(), bytes)
        };
        let w = if ty == QuantType::F32 {
            Weights::f32(&dense, n_out, n_in)
        } else {
            Weights::quantized(ty, &bytes, n_out, n_in).expect("shape")
        };
        let x = values(n_tok * n_in, 2 * i as u64 + 1);
        let dy = values(n_tok * n_out, 2 * i as u64 + 2);
        let (mut y, mut dx) = (vec![0f32; n_tok * n_out], vec![0f32; n_tok * n_in]);
        let flops = 2.0 * (n_tok * n_in * n_out) as f64;
        let fwd = median_secs(1, reps, || matmul_wt_in(precision, &x, n_tok, &w, &mut y));
        let bwd = median_secs(1, reps, || matmul_w_in(precision, &dy, n_tok, &w, &mut dx));
        assert!(
            y.iter().chain(&dx).all(|v| v.is_finite()),
            "{name}: non-finite output"
        );
        // The weights decoded to f32 once, on every thread, into a row each
        // thread reuses: what each product pays at least once (twice a step).
        let decode = median_secs(1, reps, || {
            (0..n_out).into_par_iter().for_each_init(
                || vec![0f32; n_in],
                |row, r| {
                    w.dequantize_row(r, row);
                    std::hint::black_box(&row);
                },
            )
        });
        let share = count as f64 * (fwd + bwd);
        total += share;
        decode_total += 2.0 * count as f64 * decode;
        flops_total += 2.0 * count as f64 * flops;
        if bench {
            println!(
                "| {name} | {n_in} -> {n_out} | {ty:?} | {count} | {:.1} | {:.1} | {share:.3} | {:.3} |",
                flops / fwd / 1e9,
                flops / bwd / 1e9,
                2.0 * count as f64 * decode
            );
        }
    }
    if bench {
        println!(
            "\nOne step's products with the weights at T = {n_tok}: {total:.3} s ({:.1} GFLOP/s); decoding the weights alone, once per product: {decode_total:.3} s",
            flops_total / total / 1e9
        );
        let ceiling = move || match precision.effective() {
            Precision::Bf16 => bf16_micro_kernel_ceiling_gflops(),
            Precision::F32 => Some(micro_kernel_ceiling_gflops()),
        };
        if let Some((_, median)) = ceiling() {
            // One thread alone, times the threads; then every thread at once
            // (the sum of their medians): lower where threads share a core's
            // units (a VM's vCPUs may be one core's two hyperthreads).
            let threads = rayon::current_num_threads();
            let alone = median * threads as f64;
            let together: f64 = rayon::broadcast(|_| ceiling())
                .into_iter()
                .flatten()
                .map(|(_, m)| m)
                .sum();
            let rate = flops_total / total / 1e9;
            println!(
                "The kernel on operands in L1 (median GFLOP/s): one thread {median:.1} ({alone:.1} times {threads}), all {threads} at once {together:.1}; the step's products reach {:.2} of the latter",
                rate / together
            );
        }
    } else {
        println!("weight_products: smoke run on {n_tok} tokens passed");
    }
}
