//! What the benches share: one way of timing a call.

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
