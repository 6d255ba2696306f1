//! SwiGLU (Shazeer 2020), the feed-forward gate of llama-family models:
//! `out = silu(gate) * up` with `silu(x) = x * sigmoid(x)`.
//!
//! Shapes: `gate, up, out: [n_tok, n_ff]` (elementwise).

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Forward.
pub fn swiglu_forward(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && out.len() == gate.len(), "swiglu: shapes");
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g * sigmoid(g) * u;
    }
}

/// Scalar twin in f64.
pub fn swiglu_forward_scalar(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for i in 0..out.len() {
        let g = gate[i] as f64;
        out[i] = (g / (1.0 + (-g).exp()) * up[i] as f64) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel_err, TestRng};

    /// Relative to the largest |output|.
    pub const SWIGLU_TOL: f64 = 1e-6;

    #[test]
    fn matches_scalar_twin() {
        let mut rng = TestRng(3);
        let g = rng.vec(4099, 12.0);
        let u = rng.vec(4099, 3.0);
        let (mut a, mut b) = (vec![0f32; g.len()], vec![0f32; g.len()]);
        swiglu_forward(&g, &u, &mut a);
        swiglu_forward_scalar(&g, &u, &mut b);
        assert!(max_rel_err(&a, &b) <= SWIGLU_TOL);
        // Large negative gates saturate to 0 without NaN.
        swiglu_forward(&[-200.0, 200.0], &[1.0, 1.0], &mut a[..2]);
        assert_eq!(&a[..2], &[-0.0, 200.0]);
    }
}
