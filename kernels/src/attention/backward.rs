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

use super::tiles::{Bf16Engine, Bf16Tiles, F32Tiles, Tiles};
use super::{per_head, AttnShape, HeadLayout, ATTN_K_TILE, ATTN_Q_TILE};
use crate::cpu::{call_twin, kernels, twin};
use crate::matmul::{dot, Precision};
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

/// What every task reads besides the tile products.
#[derive(Clone, Copy)]
struct Rows<'a> {
    /// `[n_head][n_pad]`; padding queries get `lse = +inf` (so `p = 0`) and
    /// `delta = 0`.
    lse: &'a [f32],
    delta: &'a [f32],
    shape: AttnShape,
    scale: f32,
    n_pad: usize,
    hd_pad: usize,
}

/// Backward in f32: see [`attention_backward_in`].
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
    attention_backward_in(
        Precision::F32,
        q,
        k,
        v,
        out,
        lse,
        dout,
        shape,
        scale,
        dq,
        dk,
        dv,
    )
}

/// Given `dout`, writes `dq`, `dk`, `dv` of [`super::attention_forward`]'s
/// output (`out` and `lse` as it returned them), with tile products in
/// precision `p` (the same as the forward's, for consistent gradients).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_in(
    p: Precision,
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
    let engine = (p.effective() == Precision::Bf16).then(Bf16Engine::for_cpu);
    backward_on(engine, q, k, v, out, lse, dout, shape, scale, dq, dk, dv)
}

/// [`attention_backward_in`] with bf16 products on `engine`, or f32
/// (`None`).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_on(
    engine: Option<Bf16Engine>,
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
    // delta[h, i] = dout_i . out_i: the softmax backward's row constant,
    // heads in parallel (one thread's scalar loop was 3 % of this call).
    let lse_pad = per_head(n_head, n_pad, |h, row: &mut [f32]| {
        row[..n_tok].copy_from_slice(&lse[h * n_tok..][..n_tok]);
        row[n_tok..].fill(f32::INFINITY);
    });
    let delta = per_head(n_head, n_pad, |h, row: &mut [f32]| {
        for (i, d) in row[..n_tok].iter_mut().enumerate() {
            let at = (i * n_head + h) * hd;
            *d = dot(&dout[at..at + hd], &out[at..at + hd]);
        }
    });
    let rows = Rows {
        lse: &lse_pad,
        delta: &delta,
        shape,
        scale,
        n_pad,
        hd_pad,
    };
    let heads = (n_head, n_head_kv);
    let parts = match engine {
        Some(e) => head_parts(
            &Bf16Tiles::backward(e, layout, q, k, v, dout, heads),
            rows,
            dq,
        ),
        None => head_parts(&F32Tiles::backward(layout, q, k, v, dout, heads), rows, dq),
    };
    let n_runs = parts.len() / n_head;
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

/// Runs every (head, run of query blocks) task: writes `dq` and returns the
/// tasks' partial `dK`/`dV` buffers, head by head, run by run.
fn head_parts<T: Tiles>(t: &T, rows: Rows, dq: &mut [f32]) -> Vec<Vec<f32>> {
    let AttnShape {
        n_tok,
        n_head,
        head_dim: hd,
        ..
    } = rows.shape;
    let bounds = run_bounds(n_tok.div_ceil(Q), n_head);
    let n_runs = bounds.len() - 1;
    let isa = kernels().attention;
    let dq_p = SharedOut::new(dq);
    (0..n_head * n_runs)
        .into_par_iter()
        .map_init(
            || (vec![0f32; 2 * K * Q + hd * Q], t.scratch()),
            |(scratch, tiles_scratch), task| {
                let (h, run) = (task / n_runs, task % n_runs);
                let (b0, b1) = (bounds[run], bounds[run + 1]);
                // Keys this run's queries can see, in whole tiles.
                let n_keys = ((b1 * Q).min(n_tok)).div_ceil(K) * K;
                let mut part = vec![0f32; 2 * n_keys * rows.hd_pad];
                call_twin!(
                    isa,
                    head_task,
                    head_task_avx2,
                    head_task_avx512;
                    t,
                    rows,
                    h,
                    b0,
                    b1,
                    scratch,
                    tiles_scratch,
                    &mut part,
                    dq_p
                );
                part
            },
        )
        .collect()
}

twin!(fn head_task, head_task_avx2, head_task_avx512<T: Tiles> (t: &T, b: Rows, h: usize, b0: usize, b1: usize, scratch: &mut [f32], tiles_scratch: &mut T::Scratch, part: &mut [f32], dq_p: SharedOut) {
    let AttnShape { n_tok, n_head, n_head_kv, head_dim: hd } = b.shape;
    let kvh = h / (n_head / n_head_kv);
    let n_keys = part.len() / (2 * b.hd_pad);
    let (dk_part, dv_part) = part.split_at_mut(n_keys * b.hd_pad);
    let (st, rest) = scratch.split_at_mut(K * Q);
    let (dst, rest) = rest.split_at_mut(K * Q);
    let dqt = &mut rest[..hd * Q];
    for qb in b0..b1 {
        let (i0, q1) = (qb * Q, ((qb + 1) * Q).min(n_tok));
        let lse: &[f32; Q] = b.lse[h * b.n_pad + i0..][..Q].try_into().expect("Q values");
        let delta: &[f32; Q] = b.delta[h * b.n_pad + i0..][..Q].try_into().expect("Q values");
        dqt.fill(0.0);
        for k0 in (0..q1).step_by(K) {
            t.scores(h, kvh, qb, k0, K, st);
            t.dprobs(h, kvh, qb, k0, dst);
            probs_and_grads(st, dst, lse, delta, k0, i0, b.scale);
            t.add_grads(h, kvh, qb, k0, st, dst, dk_part, dv_part, dqt, tiles_scratch);
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
