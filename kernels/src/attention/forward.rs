//! The forward pass: per (head, block of queries), key tiles with an online
//! softmax.
//!
//! Tiles are computed transposed, keys by queries (`S^T = K Q^T`), as in the
//! backward pass: the softmax's running max and sum are then per column, so
//! every step of the online softmax is a vector operation along the block's
//! queries, with no reduction across vector lanes.

use super::tiles::{Bf16Engine, Bf16Tiles, F32Tiles, Tiles};
use super::{AttnShape, HeadLayout, ATTN_K_TILE, ATTN_Q_TILE};
use crate::cpu::{call_twin, kernels, twin};
use crate::matmul::Precision;
use crate::parallel::SharedOut;
use crate::softmax::exp_approx;
use rayon::prelude::*;

const Q: usize = ATTN_Q_TILE;
const K: usize = ATTN_K_TILE;

/// Forward in f32: see [`attention_forward_in`].
pub fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttnShape,
    scale: f32,
    out: &mut [f32],
    lse: &mut [f32],
) {
    attention_forward_in(Precision::F32, q, k, v, shape, scale, out, lse)
}

/// Forward: `out[i] = sum_{j <= i} softmax_j(scale * q_i . k_j) v_j` per head,
/// and each query's log-sum-exp. Per (head, block of ATTN_Q_TILE queries):
/// for each tile of ATTN_K_TILE keys, the scores `K Q^T` and the update
/// `acc^T += V^T P^T` are tile products in precision `p` (bf16 rounds q, k,
/// v and the probabilities), with the online softmax in f32 in between.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_in(
    p: Precision,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttnShape,
    scale: f32,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let engine = (p.effective() == Precision::Bf16).then(Bf16Engine::for_cpu);
    forward_on(engine, q, k, v, shape, scale, out, lse)
}

/// [`attention_forward_in`] with bf16 products on `engine`, or f32 (`None`).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_on(
    engine: Option<Bf16Engine>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttnShape,
    scale: f32,
    out: &mut [f32],
    lse: &mut [f32],
) {
    shape.check(q, k, v, out, lse);
    let layout = HeadLayout::new(shape.n_tok, shape.head_dim);
    let heads = (shape.n_head, shape.n_head_kv);
    match engine {
        Some(engine) => run(
            &Bf16Tiles::forward(engine, layout, q, k, v, heads),
            shape,
            scale,
            out,
            lse,
        ),
        None => run(
            &F32Tiles::forward(layout, q, k, v, heads),
            shape,
            scale,
            out,
            lse,
        ),
    }
}

fn run<T: Tiles>(t: &T, shape: AttnShape, scale: f32, out: &mut [f32], lse: &mut [f32]) {
    let n_qb = shape.n_tok.div_ceil(Q);
    let (out_p, lse_p) = (SharedOut::new(out), SharedOut::new(lse));
    let isa = kernels().attention;
    (0..shape.n_head * n_qb).into_par_iter().for_each_init(
        || (vec![0f32; K * Q + shape.head_dim * Q], t.scratch()),
        |(scratch, tiles_scratch), task| {
            call_twin!(
                isa,
                forward_task,
                forward_task_avx2,
                forward_task_avx512;
                t,
                shape,
                scale,
                task,
                scratch,
                tiles_scratch,
                out_p,
                lse_p
            )
        },
    );
}

twin!(fn forward_task, forward_task_avx2, forward_task_avx512<T: Tiles> (t: &T, shape: AttnShape, scale: f32, task: usize, scratch: &mut [f32], tiles_scratch: &mut T::Scratch, out_p: SharedOut, lse_p: SharedOut) {
    let AttnShape { n_tok, n_head, n_head_kv, head_dim: hd } = shape;
    let n_qb = n_tok.div_ceil(Q);
    let (h, qb) = (task / n_qb, task % n_qb);
    let kvh = h / (n_head / n_head_kv);
    let (i0, q1) = (qb * Q, ((qb + 1) * Q).min(n_tok));
    let (st, acc) = scratch.split_at_mut(K * Q);
    let acc = &mut acc[..hd * Q];
    acc.fill(0.0);
    let mut m = [f32::NEG_INFINITY; Q];
    let mut l = [0f32; Q];
    for k0 in (0..q1).step_by(K) {
        let tile = K.min(q1 - k0);
        t.scores(h, kvh, qb, k0, tile, st);
        let st = &mut st[..tile * Q];
        // Scale; keys after a query (or past the sequence) get -inf, so exp
        // gives 0. Every query column keeps a finite entry: k0 <= i0 (key
        // tiles are whole multiples of query blocks), and key k0 sees all.
        let mut tile_max = [f32::NEG_INFINITY; Q];
        for (j, row) in st.chunks_exact_mut(Q).enumerate() {
            row.iter_mut().for_each(|x| *x *= scale);
            row[..(k0 + j).saturating_sub(i0).min(Q)].fill(f32::NEG_INFINITY);
            for (x, mx) in row.iter().zip(tile_max.iter_mut()) {
                *mx = mx.max(*x);
            }
        }
        let mut corr = [0f32; Q];
        for r in 0..Q {
            let m_new = m[r].max(tile_max[r]);
            corr[r] = exp_approx(m[r] - m_new);
            l[r] *= corr[r];
            m[r] = m_new;
        }
        for row in acc.chunks_exact_mut(Q) {
            row.iter_mut().zip(&corr).for_each(|(x, c)| *x *= c);
        }
        for row in st.chunks_exact_mut(Q) {
            for r in 0..Q {
                row[r] = exp_approx(row[r] - m[r]);
                l[r] += row[r];
            }
        }
        t.add_pv(kvh, k0, tile, st, acc, tiles_scratch);
    }
    for i in i0..q1 {
        let r = i - i0;
        let inv = 1.0 / l[r];
        // SAFETY: (i, h) rows of out and lse belong to this task only; in
        // bounds by the shape check.
        unsafe {
            let o = std::slice::from_raw_parts_mut(out_p.get().add((i * n_head + h) * hd), hd);
            for (d, x) in o.iter_mut().enumerate() {
                *x = acc[d * Q + r] * inv;
            }
            *lse_p.get().add(h * n_tok + i) = m[r] + l[r].ln();
        }
    }
});
