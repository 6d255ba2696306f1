//! SwiGLU (Shazeer 2020), the feed-forward gate of llama-family models:
//! `out = silu(gate) * up` with `silu(x) = x * sigmoid(x)`.
//!
//! Shapes: `gate, up, out: [n_tok, n_ff]` (elementwise).

use crate::cpu::{call_twin, kernels, twin};
use crate::softmax::exp_approx;
use rayon::prelude::*;

/// Elements per rayon task: big enough to amortize the task, small enough
/// to share a 512-token step between threads.
const CHUNK: usize = 16 * 1024;

/// Branch-free (through [`exp_approx`]) so the loops below vectorize.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_approx(-x))
}

twin!(
    /// One chunk of [`swiglu_forward`]; compiled twice so the compiler
    /// vectorizes `exp_approx` for AVX2.
    fn forward_chunk, forward_chunk_avx2, forward_chunk_avx512 (gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g * sigmoid(g) * u;
    }
});

twin!(
    /// One chunk of [`swiglu_backward`].
    fn backward_chunk, backward_chunk_avx2, backward_chunk_avx512 (gate: &[f32], up: &[f32], dout: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    for i in 0..gate.len().min(up.len()).min(dout.len()).min(dgate.len()).min(dup.len()) {
        let (g, s) = (gate[i], sigmoid(gate[i]));
        dgate[i] = dout[i] * up[i] * s * (1.0 + g * (1.0 - s));
        dup[i] = dout[i] * g * s;
    }
});

/// Forward.
pub fn swiglu_forward(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && out.len() == gate.len(),
        "swiglu: shapes"
    );
    let isa = kernels().swiglu;
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(o, (g, u))| call_twin!(isa, forward_chunk, forward_chunk_avx2, forward_chunk_avx512; g, u, o));
}

/// Backward: `dgate = dout * up * sigmoid(g) * (1 + g * (1 - sigmoid(g)))`,
/// `dup = dout * silu(g)`.
pub fn swiglu_backward(gate: &[f32], up: &[f32], dout: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    let n = gate.len();
    assert!(
        up.len() == n && dout.len() == n && dgate.len() == n && dup.len() == n,
        "swiglu_backward: shapes"
    );
    let isa = kernels().swiglu;
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(
            gate.par_chunks(CHUNK)
                .zip(up.par_chunks(CHUNK))
                .zip(dout.par_chunks(CHUNK)),
        )
        .for_each(|((dg, du), ((g, u), d))| {
            call_twin!(isa, backward_chunk, backward_chunk_avx2, backward_chunk_avx512; g, u, d, dg, du)
        });
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
        let g = rng.vec(40_009, 12.0); // several rayon chunks, a ragged last one
        let u = rng.vec(40_009, 3.0);
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
