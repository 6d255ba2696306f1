//! RMSNorm (Zhang & Sennrich 2019), as llama.cpp's `ggml_rms_norm` followed by
//! the weight multiply: `y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight`.
//!
//! Shapes: `x, y: [n_tok, n_embd]`, `weight: [n_embd]`, `rstd: [n_tok]` (the
//! reciprocal RMS per row, kept for the backward pass).

use crate::cpu::{call_twin, kernels, twin};
use rayon::prelude::*;

/// Rows per rayon task: 16 tasks over 512 tokens of 896 values.
const ROWS_PER_TASK: usize = 32;

/// Forward. Writes `rstd[t] = 1 / sqrt(mean(x[t]^2) + eps)` when given.
/// Rows run in parallel, each through the vector-width build of the kernel
/// set's `swiglu` row (the per-token element-wise passes).
pub fn rmsnorm_forward(
    x: &[f32],
    weight: &[f32],
    eps: f32,
    y: &mut [f32],
    rstd: Option<&mut [f32]>,
) {
    let n_embd = weight.len();
    assert!(
        n_embd > 0 && x.len().is_multiple_of(n_embd) && y.len() == x.len(),
        "rmsnorm: shapes"
    );
    let n_tok = x.len() / n_embd;
    let mut unkept = Vec::new();
    let rstd = match rstd {
        Some(r) => {
            assert!(r.len() >= n_tok, "rmsnorm: rstd holds under {n_tok} rows");
            &mut r[..n_tok]
        }
        None => {
            unkept.resize(n_tok, 0f32);
            &mut unkept[..]
        }
    };
    let isa = kernels().swiglu;
    x.par_chunks(n_embd)
        .zip(y.par_chunks_mut(n_embd))
        .zip(rstd.par_iter_mut())
        .with_min_len(ROWS_PER_TASK)
        .for_each(|((xr, yr), r)| {
            *r = call_twin!(isa, forward_row, forward_row_avx2, forward_row_avx512; xr, weight, eps, yr)
        });
}

twin!(
    /// One row: the sum of squares in f64 like ggml (ggml_float), so long
    /// rows lose nothing, over 8 lanes so that it vectorizes; returns the
    /// row's `rstd`.
    fn forward_row, forward_row_avx2, forward_row_avx512 (xr: &[f32], weight: &[f32], eps: f32, yr: &mut [f32]) -> f32 {
    let mut lanes = [0f64; 8];
    let chunks = xr.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| (v as f64) * (v as f64)).sum();
    for c in chunks {
        for i in 0..8 {
            lanes[i] += (c[i] as f64) * (c[i] as f64);
        }
    }
    let ss = lanes.iter().sum::<f64>() + tail;
    let r = 1.0 / ((ss / xr.len() as f64) as f32 + eps).sqrt();
    for ((o, &v), &w) in yr.iter_mut().zip(xr).zip(weight) {
        *o = v * r * w;
    }
    r
});

/// Backward with respect to `x` (the weight is frozen: LoRA never trains it).
/// `dx[i] = rstd * (w[i] dy[i] - x[i] rstd^2 mean_j(w[j] dy[j] x[j]))`, with
/// `rstd` saved by the forward. Adds into `dx` when `accumulate`. Rows in
/// parallel, as the forward.
pub fn rmsnorm_backward(
    x: &[f32],
    weight: &[f32],
    rstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    accumulate: bool,
) {
    let n = weight.len();
    assert!(
        x.len() == dy.len() && dx.len() == x.len() && rstd.len() * n == x.len(),
        "rmsnorm_backward: shapes"
    );
    let isa = kernels().swiglu;
    x.par_chunks(n)
        .zip(dy.par_chunks(n))
        .zip(dx.par_chunks_mut(n))
        .zip(rstd.par_iter())
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(((xr, dyr), dxr), &r)| {
            call_twin!(isa, backward_row, backward_row_avx2, backward_row_avx512; xr, weight, r, dyr, dxr, accumulate)
        });
}

twin!(
    /// One row of [`rmsnorm_backward`]; `sum_j w[j] dy[j] x[j]` in f64 over
    /// 8 lanes.
    fn backward_row, backward_row_avx2, backward_row_avx512 (xr: &[f32], weight: &[f32], r: f32, dyr: &[f32], dxr: &mut [f32], accumulate: bool) {
    let n = weight.len();
    let mut lanes = [0f64; 8];
    let (xc, gc, wc) = (xr.chunks_exact(8), dyr.chunks_exact(8), weight.chunks_exact(8));
    let tail: f64 = xc
        .remainder()
        .iter()
        .zip(gc.remainder())
        .zip(wc.remainder())
        .map(|((&a, &g), &w)| (a * g * w) as f64)
        .sum();
    for ((a, g), w) in xc.zip(gc).zip(wc) {
        for i in 0..8 {
            lanes[i] += (a[i] * g[i] * w[i]) as f64;
        }
    }
    let dot = lanes.iter().sum::<f64>() + tail;
    let c = r * r * (dot / n as f64) as f32;
    for i in 0..n {
        let v = r * (weight[i] * dyr[i] - xr[i] * c);
        dxr[i] = if accumulate { dxr[i] + v } else { v };
    }
});

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
        for &(n_tok, n_embd) in &[(1, 1), (3, 7), (5, 576), (2, 896), (70, 64)] {
            let x: Vec<f32> = (0..n_tok * n_embd).map(|_| rng.uniform() * 4.0).collect();
            let w: Vec<f32> = (0..n_embd).map(|_| rng.uniform()).collect();
            let (mut y, mut y_ref) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            // rstd longer than the rows: the entries past them are left.
            let mut rstd = vec![-1f32; n_tok + 3];
            rmsnorm_forward(&x, &w, 1e-5, &mut y, Some(&mut rstd));
            rmsnorm_forward_scalar(&x, &w, 1e-5, &mut y_ref);
            assert!(max_rel_err(&y, &y_ref) <= RMSNORM_TOL, "{n_tok}x{n_embd}");
            for (t, &r) in rstd[..n_tok].iter().enumerate() {
                let row = &x[t * n_embd..(t + 1) * n_embd];
                let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n_embd as f64;
                let want = 1.0 / (ms + 1e-5).sqrt();
                assert!(
                    (r as f64 - want).abs() <= 1e-6 * want,
                    "rstd[{t}] {r} vs {want}"
                );
            }
            assert_eq!(rstd[n_tok..], [-1.0; 3]);
            // Without rstd: the same outputs.
            let mut y_none = vec![0f32; x.len()];
            rmsnorm_forward(&x, &w, 1e-5, &mut y_none, None);
            assert_eq!(y_none, y);
        }
    }

    /// Over more rows than one task takes, from a `dx` that is not zero:
    /// each row adds the f64 formula's value.
    #[test]
    fn backward_over_many_rows_adds_the_f64_formula() {
        let mut rng = TestRng(8);
        let (n_tok, n) = (70, 40);
        let x: Vec<f32> = (0..n_tok * n).map(|_| rng.uniform() * 3.0).collect();
        let w: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
        let dy: Vec<f32> = (0..n_tok * n).map(|_| rng.uniform() - 0.5).collect();
        let (mut y, mut rstd) = (vec![0f32; x.len()], vec![0f32; n_tok]);
        rmsnorm_forward(&x, &w, 1e-5, &mut y, Some(&mut rstd));
        let mut dx = vec![1f32; x.len()];
        rmsnorm_backward(&x, &w, &rstd, &dy, &mut dx, true);
        for t in 0..n_tok {
            let row = t * n..(t + 1) * n;
            let r = rstd[t] as f64;
            let dot: f64 = row
                .clone()
                .map(|i| x[i] as f64 * dy[i] as f64 * w[i - t * n] as f64)
                .sum();
            for i in row {
                let j = i - t * n;
                let want =
                    1.0 + r * (w[j] as f64 * dy[i] as f64 - x[i] as f64 * r * r * dot / n as f64);
                assert!(
                    (dx[i] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "t {t} i {j}: {} vs {want}",
                    dx[i]
                );
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = TestRng(6);
        let (n_tok, n) = (3, 37);
        let x: Vec<f64> = (0..n_tok * n).map(|_| rng.uniform() as f64 * 3.0).collect();
        let w: Vec<f64> = (0..n).map(|_| rng.uniform() as f64).collect();
        let dy: Vec<f64> = (0..n_tok * n).map(|_| rng.uniform() as f64).collect();
        let eps = 1e-5;
        // Loss L = sum(dy * rmsnorm(x)) in f64.
        let loss = |x: &[f64]| -> f64 {
            x.chunks(n)
                .zip(dy.chunks(n))
                .map(|(xr, g)| {
                    let r = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / n as f64 + eps).sqrt();
                    xr.iter()
                        .zip(g)
                        .zip(&w)
                        .map(|((a, b), c)| a * r * c * b)
                        .sum::<f64>()
                })
                .sum()
        };
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let wf: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        let dyf: Vec<f32> = dy.iter().map(|&v| v as f32).collect();
        let (mut y, mut rstd, mut dx) = (
            vec![0f32; xf.len()],
            vec![0f32; n_tok],
            vec![0f32; xf.len()],
        );
        rmsnorm_forward(&xf, &wf, eps as f32, &mut y, Some(&mut rstd));
        rmsnorm_backward(&xf, &wf, &rstd, &dyf, &mut dx, false);
        let fd: Vec<f32> = (0..x.len())
            .map(|i| {
                let h = 1e-6;
                let (mut p, mut m) = (x.clone(), x.clone());
                p[i] += h;
                m[i] -= h;
                ((loss(&p) - loss(&m)) / (2.0 * h)) as f32
            })
            .collect();
        assert!(max_rel_err(&dx, &fd) <= 1e-4, "{}", max_rel_err(&dx, &fd));
    }
}
