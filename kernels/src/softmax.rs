//! Softmax-family reductions over one row of logits.
//!
//! The rollout engine needs, for every sampled token, its log-probability under
//! the model at temperature 1: `logits[t] - logsumexp(logits)`. Vocabularies are
//! 49k-152k entries, so these run once per generated token and must be cheap:
//! the loops are written in chunks of 8 lanes so the compiler vectorizes them.

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
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    let mut nan = false;
    for c in &mut chunks {
        for i in 0..8 {
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
}

/// `sum(exp(x - shift))`, accumulated in f64 per lane so long rows lose no
/// precision.
pub fn sum_exp_shifted(x: &[f32], shift: f32) -> f64 {
    let mut lanes = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lanes[i] += ((c[i] - shift).exp()) as f64;
        }
    }
    let mut s: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| ((v - shift).exp()) as f64)
        .sum();
    for l in lanes {
        s += l;
    }
    s
}

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
    fn edge_cases() {
        assert_eq!(logsumexp(&[]), f32::NEG_INFINITY);
        assert!(logsumexp(&[1.0, f32::NAN, 2.0]).is_nan());
        assert_eq!(logsumexp(&[f32::NEG_INFINITY; 3]), f32::NEG_INFINITY);
        assert!((logsumexp(&[0.0, 0.0]) - 2f32.ln()).abs() < 1e-7);
    }
}
