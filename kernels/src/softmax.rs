//! Softmax-family reductions over one row of logits.
//!
//! The rollout engine needs, for every sampled token, its log-probability under
//! the model at temperature 1: `logits[t] - logsumexp(logits)`. Vocabularies are
//! 49k-152k entries, so these run once per generated token and must be cheap:
//! the loops are written in chunks of 8 lanes so the compiler vectorizes them.

use crate::cpu::{call_twin, kernels, twin};

/// `log(sum(exp(x)))` computed stably (max-shifted). Returns `-inf` for an
/// empty row and `NaN` if any entry is `NaN`.
pub fn logsumexp(x: &[f32]) -> f32 {
    if x.is_empty() {
        return f32::NEG_INFINITY;
    }
    let max = max(x);
    if !max.is_finite() {
        return max;
    }
    let sum = sum_exp_shifted(x, max);
    max + (sum as f32).ln()
}

/// Scalar twin of [`logsumexp`]: the same quantity computed in f64, one element
/// at a time. Used as the test oracle.
pub fn logsumexp_scalar(x: &[f32]) -> f64 {
    if x.is_empty() {
        return f64::NEG_INFINITY;
    }
    let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    if !max.is_finite() {
        return max;
    }
    max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

/// Largest element (`-inf` for an empty row; `NaN` if any entry is `NaN`).
pub fn max(x: &[f32]) -> f32 {
    call_twin!(kernels().exp, max_body, max_avx2, max_avx512; x)
}

twin!(
    /// Sixteen lanes, so that each build fills its vectors (the vocabulary
    /// pass takes the max of 78 million logits a step at T = 512).
    fn max_body, max_avx2, max_avx512 (x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    let mut nan = false;
    for c in &mut chunks {
        for i in 0..16 {
            lanes[i] = lanes[i].max(c[i]);
            nan |= c[i].is_nan();
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in chunks.remainder() {
        m = m.max(v);
        nan |= v.is_nan();
    }
    if nan {
        return f32::NAN;
    }
    lanes.iter().fold(m, |a, &b| a.max(b))
});

/// `sum(exp(x - shift))`, accumulated in f64 across blocks so long rows
/// lose no precision.
pub fn sum_exp_shifted(x: &[f32], shift: f32) -> f64 {
    exp_weights(x, 1.0, shift, None)
}

/// `out[i] = exp(scale * x[i] - shift)` (when `out` is given) and returns the
/// sum of those values. The workhorse of sampling: one pass gives both the
/// normaliser and the unnormalised probabilities. Uses [`exp_approx`], with
/// AVX2/FMA where the kernel set ([`crate::cpu::kernels`]) names them.
pub fn exp_weights(x: &[f32], scale: f32, shift: f32, out: Option<&mut [f32]>) -> f64 {
    if let Some(o) = &out {
        assert_eq!(o.len(), x.len(), "exp_weights: output length mismatch");
    }
    call_twin!(
        kernels().exp,
        exp_weights_body,
        exp_weights_avx2,
        exp_weights_avx512;
        x,
        scale,
        shift,
        out
    )
}

twin!(
    /// Portable body; compiled again for AVX2 so the compiler vectorizes it
    /// for that target too.
    fn exp_weights_body, exp_weights_avx2, exp_weights_avx512 (x: &[f32], scale: f32, shift: f32, out: Option<&mut [f32]>) -> f64 {
    const BLOCK: usize = 1024;
    let mut total = 0f64;
    match out {
        Some(out) => {
            for (xb, ob) in x.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
                let mut lanes = [0f32; 8];
                let mut xc = xb.chunks_exact(8);
                let mut oc = ob.chunks_exact_mut(8);
                for (xs, os) in (&mut xc).zip(&mut oc) {
                    for i in 0..8 {
                        let e = exp_approx(xs[i] * scale - shift);
                        os[i] = e;
                        lanes[i] += e;
                    }
                }
                for (xv, ov) in xc.remainder().iter().zip(oc.into_remainder()) {
                    let e = exp_approx(xv * scale - shift);
                    *ov = e;
                    lanes[0] += e;
                }
                total += lanes.iter().map(|&l| l as f64).sum::<f64>();
            }
        }
        None => {
            for xb in x.chunks(BLOCK) {
                let mut lanes = [0f32; 8];
                let mut xc = xb.chunks_exact(8);
                for xs in &mut xc {
                    for i in 0..8 {
                        lanes[i] += exp_approx(xs[i] * scale - shift);
                    }
                }
                for xv in xc.remainder() {
                    lanes[0] += exp_approx(xv * scale - shift);
                }
                total += lanes.iter().map(|&l| l as f64).sum::<f64>();
            }
        }
    }
    total
});

/// `exp(x)` in f32, branch-free so loops over it vectorize: range reduction
/// `x = n ln2 + r`, a degree-6 polynomial for `exp(r)` on |r| <= ln2/2, and
/// `2^n` built in the exponent bits. Relative error below
/// [`EXP_APPROX_REL_ERR`]; returns 0 below -87.3 (where f32 goes subnormal)
/// and for -inf, and saturates at f32's largest exponent above 88.7.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.5);
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // `shifted` is 1.5 * 2^23 + n exactly, so its bits are ROUND's plus n:
    // the integer comes out with integer arithmetic. (`n as i32`, a
    // saturating conversion, made the compiler fall back to scalar code
    // with compares and cmovs in every loop this is inlined into.)
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let pow2 = f32::from_bits(n_int.wrapping_add(127) << 23);
    let v = p * pow2;
    if x < -87.0 {
        0.0
    } else {
        v
    }
}

/// Bound on the relative error of [`exp_approx`] over [-87, 88].
pub const EXP_APPROX_REL_ERR: f64 = 4e-7;

/// Log-softmax of one row into `out` (same length as `x`).
pub fn log_softmax_forward(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "log_softmax_forward: length mismatch");
    let lse = logsumexp(x);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v - lse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative bound between the f32 kernel and the f64 scalar twin: the
    /// kernel sums f32 exponentials in f64, so only `exp` rounding remains.
    const LOGSUMEXP_TOL: f64 = 1e-5;

    fn rows() -> Vec<Vec<f32>> {
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        [1usize, 7, 8, 9, 63, 1000, 49152, 151_936]
            .iter()
            .map(|&n| (0..n).map(|_| (next() - 0.5) * 40.0).collect())
            .collect()
    }

    #[test]
    fn logsumexp_matches_scalar_twin() {
        for row in rows() {
            let fast = logsumexp(&row) as f64;
            let slow = logsumexp_scalar(&row);
            let err = (fast - slow).abs() / slow.abs().max(1.0);
            assert!(
                err < LOGSUMEXP_TOL,
                "n={} fast={fast} slow={slow}",
                row.len()
            );
        }
    }

    #[test]
    fn log_softmax_normalizes() {
        for row in rows() {
            let mut out = vec![0.0; row.len()];
            log_softmax_forward(&row, &mut out);
            let total: f64 = out.iter().map(|&v| (v as f64).exp()).sum();
            assert!((total - 1.0).abs() < 1e-4, "n={} total={total}", row.len());
        }
    }

    #[test]
    fn exp_approx_matches_f64_exp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_approx(x) as f64;
            worst = worst.max((got - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < EXP_APPROX_REL_ERR, "worst relative error {worst}");
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_approx(-100.0), 0.0);
        assert_eq!(exp_approx(0.0), 1.0);
    }

    #[test]
    fn exp_weights_matches_scalar_twin() {
        for row in rows() {
            let m = max(&row);
            let mut out = vec![0.0; row.len()];
            let sum = exp_weights(&row, 0.7, m * 0.7, Some(&mut out));
            let want: f64 = row
                .iter()
                .map(|&v| (v as f64 * 0.7 - m as f64 * 0.7).exp())
                .sum();
            assert!(
                (sum - want).abs() / want < 1e-5,
                "n={} sum {sum} want {want}",
                row.len()
            );
            for (o, &v) in out.iter().zip(&row) {
                let w = (v as f64 * 0.7 - m as f64 * 0.7).exp();
                // f32 rounding of the argument (|arg| <= 30 here) adds ~2e-6 relative.
                assert!((*o as f64 - w).abs() <= 4e-6 * w + 2e-38, "{o} vs {w}");
            }
        }
    }

    #[test]
    fn max_is_the_largest_element_and_nan_wins() {
        for row in rows() {
            let want = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&row), want, "n={}", row.len());
            // A NaN in the vector part and in the remainder.
            for at in [0, row.len() - 1] {
                let mut r = row.clone();
                r[at] = f32::NAN;
                assert!(max(&r).is_nan(), "n={} NaN at {at}", row.len());
            }
        }
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn edge_cases() {
        assert_eq!(logsumexp(&[]), f32::NEG_INFINITY);
        assert!(logsumexp(&[1.0, f32::NAN, 2.0]).is_nan());
        assert_eq!(logsumexp(&[f32::NEG_INFINITY; 3]), f32::NEG_INFINITY);
        assert!((logsumexp(&[0.0, 0.0]) - 2f32.ln()).abs() < 1e-7);
    }
}
