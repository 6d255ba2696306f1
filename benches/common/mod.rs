//! What the benches share: one way of timing a call, synthetic values,
//! and the command line of the benches that take a sequence length.

use std::time::Instant;

/// Median seconds of `reps` timed calls of `f` after `warm_ups` untimed
/// ones; with `reps` 0, the last warm-up's time (a smoke test's one call).
pub fn median_secs(warm_ups: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    let mut timed = || {
        let s = Instant::now();
        f();
        s.elapsed().as_secs_f64()
    };
    let last = (0..warm_ups).map(|_| timed()).last().unwrap_or(0.0);
    if reps == 0 {
        return last;
    }
    let mut t: Vec<f64> = (0..reps).map(|_| timed()).collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// `n` reproducible values in [-0.1, 0.1) from `seed` (an LCG): synthetic
/// activations and weights.
#[allow(dead_code)] // not every bench makes synthetic values
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

/// The arguments, whether this is a bench run (`cargo bench` passes
/// `--bench`; `cargo test` does not: then a smoke test), and the sequence
/// length: the first number given, else 512 in a bench and 8 in a smoke
/// test.
#[allow(dead_code)] // not every bench takes a sequence length
pub fn args_and_tokens() -> (Vec<String>, bool, usize) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    let n_tok = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(if bench { 512 } else { 8 });
    (args, bench, n_tok)
}
