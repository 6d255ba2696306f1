//! RMSNorm (Zhang & Sennrich 2019), as llama.cpp's `ggml_rms_norm` followed by
//! the weight multiply: `y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight`.
//!
//! Shapes: `x, y: [n_tok, n_embd]`, `weight: [n_embd]`, `rstd: [n_tok]` (the
//! reciprocal RMS per row, kept for the backward pass).

/// Forward. Writes `rstd[t] = 1 / sqrt(mean(x[t]^2) + eps)` when given.
pub fn rmsnorm_forward(x: &[f32], weight: &[f32], eps: f32, y: &mut [f32], mut rstd: Option<&mut [f32]>) {
    let n_embd = weight.len();
    assert!(n_embd > 0 && x.len() % n_embd == 0 && y.len() == x.len(), "rmsnorm: shapes");
    for (t, (xr, yr)) in x.chunks_exact(n_embd).zip(y.chunks_exact_mut(n_embd)).enumerate() {
        // Sum of squares in f64 like ggml (ggml_float), so long rows lose nothing.
        let ss: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let r = 1.0 / ((ss / n_embd as f64) as f32 + eps).sqrt();
        for ((o, &v), &w) in yr.iter_mut().zip(xr).zip(weight) {
            *o = v * r * w;
        }
        if let Some(rs) = rstd.as_deref_mut() {
            rs[t] = r;
        }
    }
}

/// Scalar twin: everything in f64.
pub fn rmsnorm_forward_scalar(x: &[f32], weight: &[f32], eps: f32, y: &mut [f32]) {
    let n = weight.len();
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        let ms = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
        let r = 1.0 / (ms + eps as f64).sqrt();
        for i in 0..n {
            yr[i] = (xr[i] as f64 * r * weight[i] as f64) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel_err, TestRng};

    /// Relative to the row's largest output: f32 rounding of a few operations.
    pub const RMSNORM_TOL: f64 = 1e-6;

    #[test]
    fn matches_scalar_twin() {
        let mut rng = TestRng(5);
        for &(n_tok, n_embd) in &[(1, 1), (3, 7), (5, 576), (2, 896)] {
            let x: Vec<f32> = (0..n_tok * n_embd).map(|_| rng.uniform() * 4.0).collect();
            let w: Vec<f32> = (0..n_embd).map(|_| rng.uniform()).collect();
            let (mut y, mut y_ref) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            let mut rstd = vec![0f32; n_tok];
            rmsnorm_forward(&x, &w, 1e-5, &mut y, Some(&mut rstd));
            rmsnorm_forward_scalar(&x, &w, 1e-5, &mut y_ref);
            assert!(max_rel_err(&y, &y_ref) <= RMSNORM_TOL, "{n_tok}x{n_embd}");
            assert!(rstd.iter().all(|r| r.is_finite() && *r > 0.0));
        }
    }
}
