//! The backward pass, FlashAttention-2's recomputation: probabilities are
//! rebuilt tile by tile from the saved log-sum-exp, so no `n_tok^2` matrix
//! is ever stored.
//!
//! Each task owns one query head and a run of query blocks, and for every
//! (query block, key tile) pair does the five tile products once: scores and
//! `dO V^T`, then `dV += P^T dO`, `dK += dS^T Q` and `dQ += dS K`. The tiles
//! are computed transposed (keys by queries), so every product reads its
//! operands in the layout the micro-kernel wants and nothing is transposed
//! per tile. `dK`/`dV` land in the task's own partial buffers, summed
//! afterwards in a fixed order: the result does not depend on which thread
//! ran what, nor on how many threads there are.

use super::{use_avx2, AttnShape, HeadLayout, ATTN_K_TILE, ATTN_Q_TILE};
use crate::matmul::gemm_tile;
use crate::parallel::SharedOut;
use crate::softmax::exp_approx;
use rayon::prelude::*;

const Q: usize = ATTN_Q_TILE;
const K: usize = ATTN_K_TILE;

/// Tasks wanted across all heads: enough for 32 threads. A constant, not the
/// pool's size, so the partial sums (and the result's last bits) are the
/// same on every machine.
const TASKS_WANTED: usize = 32;

/// Boundaries (in query blocks) of each head's runs of query blocks. Block
/// `b` sees `~b / 2` key tiles, so a run's cost grows as the square of where
/// it ends: boundaries at `sqrt(c / n)` give runs of equal cost.
fn run_bounds(n_qb: usize, n_head: usize) -> Vec<usize> {
    let n = TASKS_WANTED
        .div_ceil(n_head.max(1))
        .clamp(1, (n_qb / 4).max(1));
    let mut bounds: Vec<usize> = (0..=n)
        .map(|c| (n_qb as f64 * (c as f64 / n as f64).sqrt()).round() as usize)
        .collect();
    bounds.dedup();
    bounds
}

/// Inputs shared by the backward tasks (padded per-head layouts, see
/// [`HeadLayout`]).
#[derive(Clone, Copy)]
struct BackwardIn<'a> {
    /// `[n_head][n_pad / Q][hd][Q]`: each query block transposed.
    q_cols: &'a [f32],
    do_cols: &'a [f32],
    /// `[n_head][n_pad][hd_pad]`
    q_rows: &'a [f32],
    do_rows: &'a [f32],
    /// `[n_head_kv][n_pad][hd_pad]`
    k_rows: &'a [f32],
    v_rows: &'a [f32],
    /// `[n_head_kv][n_pad / K][hd][K]`
    kt: &'a [f32],
    /// `[n_head][n_pad]`; padding queries get `lse = +inf` (so `p = 0`) and
    /// `delta = 0`.
    lse: &'a [f32],
    delta: &'a [f32],
    shape: AttnShape,
    scale: f32,
    n_pad: usize,
    hd_pad: usize,
}

/// Given `dout`, writes `dq`, `dk`, `dv` of [`super::attention_forward`]'s
/// output (`out` and `lse` as it returned them).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    shape: AttnShape,
    scale: f32,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    shape.check(q, k, v, out, lse);
    assert!(
        dout.len() == q.len() && dq.len() == q.len() && dk.len() == k.len() && dv.len() == v.len(),
        "attention_backward: shapes"
    );
    let AttnShape {
        n_tok,
        n_head,
        n_head_kv,
        head_dim: hd,
    } = shape;
    let layout = HeadLayout::new(n_tok, hd);
    let (n_pad, hd_pad) = (layout.n_pad, layout.hd_pad);
    // delta[h, i] = dout_i . out_i: the softmax backward's row constant.
    let mut lse_pad = vec![f32::INFINITY; n_head * n_pad];
    let mut delta = vec![0f32; n_head * n_pad];
    for h in 0..n_head {
        lse_pad[h * n_pad..][..n_tok].copy_from_slice(&lse[h * n_tok..][..n_tok]);
        for i in 0..n_tok {
            let at = (i * n_head + h) * hd;
            delta[h * n_pad + i] = dout[at..at + hd]
                .iter()
                .zip(&out[at..at + hd])
                .map(|(a, b)| a * b)
                .sum();
        }
    }
    let (q_cols, do_cols) = (layout.cols(q, n_head, Q), layout.cols(dout, n_head, Q));
    let (q_rows, do_rows) = (layout.rows(q, n_head), layout.rows(dout, n_head));
    let (k_rows, v_rows) = (layout.rows(k, n_head_kv), layout.rows(v, n_head_kv));
    let kt = layout.cols(k, n_head_kv, K);
    let input = BackwardIn {
        q_cols: &q_cols,
        do_cols: &do_cols,
        q_rows: &q_rows,
        do_rows: &do_rows,
        k_rows: &k_rows,
        v_rows: &v_rows,
        kt: &kt,
        lse: &lse_pad,
        delta: &delta,
        shape,
        scale,
        n_pad,
        hd_pad,
    };
    let bounds = run_bounds(n_tok.div_ceil(Q), n_head);
    let n_runs = bounds.len() - 1;
    let avx = use_avx2();
    let dq_p = SharedOut::new(dq);
    let parts: Vec<Vec<f32>> = (0..n_head * n_runs)
        .into_par_iter()
        .map_init(
            || vec![0f32; 2 * K * Q + hd_pad * Q],
            |scratch, task| {
                let (h, run) = (task / n_runs, task % n_runs);
                let (b0, b1) = (bounds[run], bounds[run + 1]);
                // Keys this run's queries can see, in whole tiles.
                let n_keys = ((b1 * Q).min(n_tok)).div_ceil(K) * K;
                let mut part = vec![0f32; 2 * n_keys * hd_pad];
                run_task!(
                    avx,
                    head_task,
                    head_task_avx2,
                    input,
                    h,
                    b0,
                    b1,
                    scratch,
                    &mut part,
                    dq_p
                );
                part
            },
        )
        .collect();
    // dK, dV of a KV head: its query heads' partial sums, runs in order.
    let group = n_head / n_head_kv;
    let n_kt = n_tok.div_ceil(K);
    let (dk_p, dv_p) = (SharedOut::new(dk), SharedOut::new(dv));
    (0..n_head_kv * n_kt).into_par_iter().for_each(|task| {
        let (kvh, tile) = (task / n_kt, task % n_kt);
        for j in tile * K..((tile + 1) * K).min(n_tok) {
            let at = (j * n_head_kv + kvh) * hd;
            // SAFETY: key rows of this tile and KV head belong to this task;
            // in bounds by the shape check.
            let (dk_row, dv_row) = unsafe {
                (
                    std::slice::from_raw_parts_mut(dk_p.get().add(at), hd),
                    std::slice::from_raw_parts_mut(dv_p.get().add(at), hd),
                )
            };
            dk_row.fill(0.0);
            dv_row.fill(0.0);
            for h in kvh * group..(kvh + 1) * group {
                for part in &parts[h * n_runs..(h + 1) * n_runs] {
                    let n_keys = part.len() / (2 * hd_pad);
                    if j >= n_keys {
                        continue;
                    }
                    let (pk, pv) = part.split_at(n_keys * hd_pad);
                    let (pk, pv) = (&pk[j * hd_pad..][..hd], &pv[j * hd_pad..][..hd]);
                    dk_row.iter_mut().zip(pk).for_each(|(a, &b)| *a += b);
                    dv_row.iter_mut().zip(pv).for_each(|(a, &b)| *a += b);
                }
            }
        }
    });
}

task_fn!(head_task, head_task_avx2, (b: BackwardIn, h: usize, b0: usize, b1: usize, scratch: &mut [f32], part: &mut [f32], dq_p: SharedOut) {
    let AttnShape { n_tok, n_head, n_head_kv, head_dim: hd } = b.shape;
    let (n_pad, hd_pad) = (b.n_pad, b.hd_pad);
    let kvh = h / (n_head / n_head_kv);
    let n_keys = part.len() / (2 * hd_pad);
    let (dk_part, dv_part) = part.split_at_mut(n_keys * hd_pad);
    let (st, rest) = scratch.split_at_mut(K * Q);
    let (dst, rest) = rest.split_at_mut(K * Q);
    let dqt = &mut rest[..hd * Q];
    let k_rows = &b.k_rows[kvh * n_pad * hd_pad..][..n_pad * hd_pad];
    let v_rows = &b.v_rows[kvh * n_pad * hd_pad..][..n_pad * hd_pad];
    let kt = &b.kt[kvh * hd * n_pad..][..hd * n_pad];
    let q_rows = &b.q_rows[h * n_pad * hd_pad..][..n_pad * hd_pad];
    let do_rows = &b.do_rows[h * n_pad * hd_pad..][..n_pad * hd_pad];
    let q_cols = &b.q_cols[h * hd * n_pad..][..hd * n_pad];
    let do_cols = &b.do_cols[h * hd * n_pad..][..hd * n_pad];
    for qb in b0..b1 {
        let (i0, q1) = (qb * Q, ((qb + 1) * Q).min(n_tok));
        let lse: &[f32; Q] = b.lse[h * n_pad + i0..][..Q].try_into().expect("Q values");
        let delta: &[f32; Q] = b.delta[h * n_pad + i0..][..Q].try_into().expect("Q values");
        dqt.fill(0.0);
        for k0 in (0..q1).step_by(K) {
            // SAFETY (all five products): k_rows/v_rows/q_rows/do_rows hold
            // n_pad >= k0 + K (and >= i0 + Q) rows of hd_pad values; the
            // query block's transposed block in q_cols/do_cols holds hd rows
            // of Q; kt's tile block holds hd rows of K; st/dst hold K x Q,
            // dqt hd x Q; the partial buffers hold n_keys >= k0 + K rows of
            // hd_pad (n_keys covers every key the run's queries see, in
            // whole tiles). Q and hd_pad are multiples of NR.
            unsafe {
                // S^T = K Q^T and dP^T = V dO^T: keys by queries.
                gemm_tile(K, Q, hd, k_rows.as_ptr().add(k0 * hd_pad), hd_pad, q_cols.as_ptr().add(qb * hd * Q), Q, st.as_mut_ptr(), Q, false);
                gemm_tile(K, Q, hd, v_rows.as_ptr().add(k0 * hd_pad), hd_pad, do_cols.as_ptr().add(qb * hd * Q), Q, dst.as_mut_ptr(), Q, false);
            }
            probs_and_grads(st, dst, lse, delta, k0, i0, b.scale);
            unsafe {
                // dV += P^T dO, dK += dS^T Q (this tile's keys).
                gemm_tile(K, hd_pad, Q, st.as_ptr(), Q, do_rows.as_ptr().add(i0 * hd_pad), hd_pad, dv_part.as_mut_ptr().add(k0 * hd_pad), hd_pad, true);
                gemm_tile(K, hd_pad, Q, dst.as_ptr(), Q, q_rows.as_ptr().add(i0 * hd_pad), hd_pad, dk_part.as_mut_ptr().add(k0 * hd_pad), hd_pad, true);
                // dQ^T += K^T dS^T (this block's queries).
                gemm_tile(hd, Q, K, kt.as_ptr().add(k0 * hd), K, dst.as_ptr(), Q, dqt.as_mut_ptr(), Q, true);
            }
        }
        for i in i0..q1 {
            // SAFETY: query row (i, h) belongs to this task (its head, its run).
            let row = unsafe { std::slice::from_raw_parts_mut(dq_p.get().add((i * n_head + h) * hd), hd) };
            for (d, x) in row.iter_mut().enumerate() {
                *x = dqt[d * Q + i - i0];
            }
        }
    }
});

/// In place on a keys-by-queries tile: scores `s` become probabilities
/// `p = exp(scale s - lse)` and `dp` becomes `ds = p (dp - delta) scale`;
/// entries where the key comes after the query are zero. Each key's row runs
/// along queries, so `lse` and `delta` are plain vectors.
#[inline(always)]
fn probs_and_grads(
    st: &mut [f32],
    dst: &mut [f32],
    lse: &[f32; Q],
    delta: &[f32; Q],
    k0: usize,
    i0: usize,
    scale: f32,
) {
    for (j, (srow, dprow)) in st
        .chunks_exact_mut(Q)
        .zip(dst.chunks_exact_mut(Q))
        .enumerate()
    {
        // Queries i0 + r with r < first cannot see key k0 + j.
        let first = (k0 + j).saturating_sub(i0).min(Q);
        if first == Q {
            srow.fill(0.0);
            dprow.fill(0.0);
            continue;
        }
        for r in 0..Q {
            let p = exp_approx(srow[r] * scale - lse[r]);
            srow[r] = p;
            dprow[r] = p * (dprow[r] - delta[r]) * scale;
        }
        srow[..first].fill(0.0);
        dprow[..first].fill(0.0);
    }
}
