//! `y = x W^T` for one or two tokens (GEMV). Packing a transposed tile (the
//! GEMM's way) costs more than it saves when only a row or two of `x` share
//! it: each weight row is taken once, by one thread, and multiplied into
//! each row of `x`.
//!
//! With AVX-512 the common block formats decode and multiply a row in one
//! pass ([`crate::quant::dot_avx512`]): decoding a row into a buffer and then
//! taking dot products with it writes and re-reads every value for one
//! multiply-add each, which held `x W^T` at T = 1 to 0.29-0.49 of OpenBLAS's
//! f32 sgemv on Zen 5. Elsewhere, and for the other formats, that is still
//! what runs (the kernel set's `gemv` row).

use super::Weights;
use crate::cpu::{call_twin, kernels, twin, Isa};
use crate::parallel::{for_each_task, SharedOut};

/// Up to this many rows of `x`, `x W^T` takes [`gemv`].
pub(super) const GEMV_MAX_TOK: usize = 2;
/// Weight rows per rayon task: 14 tasks on the narrowest real shape (896
/// outputs), so that two threads stay balanced.
const GEMV_ROWS_PER_TASK: usize = 64;

/// `y = x W^T` for `n_tok` (one or two) rows of `x`.
pub(super) fn gemv(x: &[f32], n_tok: usize, w: &Weights, y: &mut [f32]) {
    let (n_out, n_in) = (w.n_rows(), w.n_cols());
    let fused = fused_row(kernels().gemv, w);
    // Each token's 32-value sums of x, which the fused rows of formats
    // with offsets take (`m * sum(x)` once per block instead of per value).
    let mut sums = Vec::new();
    let mut token_sums = Vec::new();
    if fused.is_some_and(|f| f.takes_sums) && n_in.is_multiple_of(32) {
        for t in 0..n_tok {
            block_sums(&x[t * n_in..(t + 1) * n_in], &mut token_sums);
            sums.extend_from_slice(&token_sums);
        }
    }
    let per_tok = sums.len() / n_tok.max(1);
    let out = SharedOut::new(y);
    for_each_task(n_out.div_ceil(GEMV_ROWS_PER_TASK), |task| {
        let mut row = Vec::new();
        if fused.is_none() {
            row.resize(n_in, 0f32);
        }
        let first = task * GEMV_ROWS_PER_TASK;
        for n in first..(first + GEMV_ROWS_PER_TASK).min(n_out) {
            if fused.is_none() {
                w.dequantize_row(n, &mut row);
            }
            for t in 0..n_tok {
                let xt = &x[t * n_in..(t + 1) * n_in];
                let st = &sums[t * per_tok..(t + 1) * per_tok];
                let v = match (fused, w.row_bytes(n)) {
                    (Some(f), Some(bytes)) => (f.dot)(bytes, xt, st),
                    _ => dot(xt, &row),
                };
                // SAFETY: y[t, n] is in bounds and row n belongs to this
                // task alone.
                unsafe { *out.get().add(t * n_out + n) = v };
            }
        }
    });
}

/// `sum_k W[n, k] x[k]` from row `n`'s stored bytes in one pass, where the
/// build `isa` has one for `w`'s format: `dot(row bytes, x, x's 32-value
/// sums)`, the sums read only where `takes_sums`.
#[cfg(target_arch = "x86_64")]
use crate::quant::dot_avx512::{block_sums, Row as FusedRow};

/// Never made off x86-64 ([`fused_row`] is `None` there).
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy)]
struct FusedRow {
    dot: fn(&[u8], &[f32], &[f32]) -> f32,
    takes_sums: bool,
}
#[cfg(not(target_arch = "x86_64"))]
fn block_sums(_: &[f32], _: &mut Vec<f32>) {}

#[cfg(target_arch = "x86_64")]
fn fused_row(isa: Isa, w: &Weights) -> Option<FusedRow> {
    (isa == Isa::Avx512)
        .then(|| crate::quant::dot_avx512::row_for(w.ty()))
        .flatten()
}

#[cfg(not(target_arch = "x86_64"))]
fn fused_row(_: Isa, _: &Weights) -> Option<FusedRow> {
    None
}

/// Dot product of two equal-length slices, AVX2/FMA when the CPU has it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    call_twin!(kernels().dot, dot_body, dot_avx2, a, b)
}

twin!(
    /// Sixteen independent lanes, so the compiler vectorizes (and, inside
    /// `dot_avx2`, fuses) the loop. No `mul_add`: without FMA in the target it
    /// becomes a libm call.
    fn dot_body, dot_avx2 (a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(p, q)| p * q)
        .sum();
    for (p, q) in ca.zip(cb) {
        for i in 0..16 {
            lanes[i] += p[i] * q[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
});
