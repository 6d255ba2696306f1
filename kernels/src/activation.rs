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
    assert!(
        gate.len() == up.len() && out.len() == gate.len(),
        "swiglu: shapes"
    );
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g * sigmoid(g) * u;
    }
}

/// Backward: `dgate = dout * up * sigmoid(g) * (1 + g * (1 - sigmoid(g)))`,
/// `dup = dout * silu(g)`.
pub fn swiglu_backward(gate: &[f32], up: &[f32], dout: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    let n = gate.len();
    assert!(
        up.len() == n && dout.len() == n && dgate.len() == n && dup.len() == n,
        "swiglu_backward: shapes"
    );
    for i in 0..n {
        let (g, s) = (gate[i], sigmoid(gate[i]));
        dgate[i] = dout[i] * up[i] * s * (1.0 + g * (1.0 - s));
        dup[i] = dout[i] * g * s;
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

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = TestRng(4);
        let g = rng.vec(257, 6.0);
        let u = rng.vec(257, 2.0);
        let d = rng.vec(257, 1.0);
        let (mut dg, mut du) = (vec![0f32; 257], vec![0f32; 257]);
        swiglu_backward(&g, &u, &d, &mut dg, &mut du);
        let f = |g: f64, u: f64| g / (1.0 + (-g).exp()) * u;
        for i in 0..257 {
            let (gi, ui, h) = (g[i] as f64, u[i] as f64, 1e-6);
            let fd_g = d[i] as f64 * (f(gi + h, ui) - f(gi - h, ui)) / (2.0 * h);
            let fd_u = d[i] as f64 * (f(gi, ui + h) - f(gi, ui - h)) / (2.0 * h);
            assert!(
                (dg[i] as f64 - fd_g).abs() <= 1e-5 * (1.0 + fd_g.abs()),
                "dgate[{i}]"
            );
            assert!(
                (du[i] as f64 - fd_u).abs() <= 1e-5 * (1.0 + fd_u.abs()),
                "dup[{i}]"
            );
        }
    }
}
