//! What a call into the kernels costs from outside rayon's pool, and the
//! one-token `x W^T` (GEMV) it matters most for.
//!
//!     cargo bench --bench gemv_calls
//!
//! The trainer and the benchmarks call the kernels from their main thread,
//! which is not one of rayon's. A parallel iterator started there hands the
//! job to the pool and sleeps until it is done; from inside the pool it costs
//! next to nothing. The first table measures that hand-over with rayon's own
//! parallel iterator over 14 empty tasks; the second, the GEMV called from
//! the main thread (which takes a share of the rows itself and spins for the
//! rest, `parallel::for_each_task`) against the same call made from inside
//! the pool, in the same run: a ratio near 1 means the call pays no
//! hand-over.
//!
//! Under `cargo test` it makes each call once and checks both give the same
//! outputs, so the bench cannot rot unnoticed.

mod common;
use common::median_secs;

use cleaner::kernels::matmul::{matmul_wt, Weights};
use cleaner::kernels::quant::{synthetic::random_tensor, QuantType};
use rayon::prelude::*;

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let reps = if bench { 2000 } else { 1 };

    let empty = || {
        (0..14usize).into_par_iter().for_each(|i| {
            std::hint::black_box(i);
        })
    };
    let outside = median_secs(reps, reps, empty);
    let inside = rayon::scope(|_| median_secs(reps, reps, empty));

    let mut rows = Vec::new();
    for ty in [QuantType::Q8_0, QuantType::Q4_1] {
        for (n_in, n_out) in [(896, 896), (896, 4864), (4864, 896)] {
            let bytes = random_tensor(ty, n_in * n_out, 7).unwrap();
            let w = Weights::quantized(ty, &bytes, n_out, n_in).unwrap();
            let x: Vec<f32> = (0..n_in).map(|i| (i as f32 * 0.37).sin()).collect();
            let (mut y_main, mut y_pool) = (vec![0f32; n_out], vec![0f32; n_out]);
            let main = median_secs(reps, reps, || matmul_wt(&x, 1, &w, &mut y_main));
            let pool =
                rayon::scope(|_| median_secs(reps, reps, || matmul_wt(&x, 1, &w, &mut y_pool)));
            assert_eq!(
                y_main, y_pool,
                "{ty:?} {n_in}x{n_out}: the two calls disagree"
            );
            assert!(
                y_main.iter().all(|v| v.is_finite()),
                "{ty:?}: non-finite output"
            );
            let flops = 2.0 * (n_in * n_out) as f64;
            rows.push((ty, n_in, n_out, flops / main / 1e9, flops / pool / 1e9));
        }
    }

    if !bench {
        println!("gemv_calls: smoke run passed");
        return;
    }
    println!(
        "{} threads, median of {reps} calls after as many warm-up calls\n",
        rayon::current_num_threads()
    );
    println!("| rayon parallel loop, 14 empty tasks | us per call |");
    println!("|---|---:|");
    println!("| from the main thread | {:.2} |", outside * 1e6);
    println!("| from inside the pool | {:.2} |\n", inside * 1e6);
    println!(
        "| x W^T, T = 1 | from the main thread GFLOP/s | from inside the pool GFLOP/s | ratio |"
    );
    println!("|---|---:|---:|---:|");
    for (ty, n_in, n_out, main, pool) in rows {
        println!(
            "| {ty:?} {n_in} -> {n_out} | {main:.1} | {pool:.1} | {:.2} |",
            main / pool
        );
    }
}
