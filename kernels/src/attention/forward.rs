//! The forward pass: per (head, block of queries), key tiles with an online
//! softmax.
//!
//! Tiles are computed transposed, keys by queries (`S^T = K Q^T`), as in the
//! backward pass: the softmax's running max and sum are then per column, so
//! every step of the online softmax is a vector operation along the block's
//! queries, with no reduction across vector lanes.

use super::{use_avx2, AttnShape, HeadLayout, ATTN_K_TILE, ATTN_Q_TILE};
use crate::matmul::gemm_tile;
use crate::parallel::SharedOut;
use crate::softmax::exp_approx;
use rayon::prelude::*;

const Q: usize = ATTN_Q_TILE;
const K: usize = ATTN_K_TILE;

/// Inputs shared by the forward tasks (padded per-head layouts, see
/// [`HeadLayout`]).
#[derive(Clone, Copy)]
struct ForwardIn<'a> {
    /// `[n_head][n_pad / Q][hd][Q]`: each query block transposed.
    q_cols: &'a [f32],
    /// `[n_head_kv][n_pad][hd_pad]`
    k_rows: &'a [f32],
    /// `[n_head_kv][n_pad / K][hd][K]`: each key tile of V transposed.
    vt: &'a [f32],
    shape: AttnShape,
    scale: f32,
    n_pad: usize,
    hd_pad: usize,
}

/// Forward: `out[i] = sum_{j <= i} softmax_j(scale * q_i . k_j) v_j` per head,
/// and each query's log-sum-exp. Per (head, block of ATTN_Q_TILE queries):
/// for each tile of ATTN_K_TILE keys, the scores `K Q^T` and the update
/// `acc^T += V^T P^T` are tile products through the matmul micro-kernel,
/// with the online softmax in between.
pub fn attention_forward(
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
    let (q_cols, k_rows, vt) = (
        layout.cols(q, shape.n_head, Q),
        layout.rows(k, shape.n_head_kv),
        layout.cols(v, shape.n_head_kv, K),
    );
    let input = ForwardIn {
        q_cols: &q_cols,
        k_rows: &k_rows,
        vt: &vt,
        shape,
        scale,
        n_pad: layout.n_pad,
        hd_pad: layout.hd_pad,
    };
    let n_qb = shape.n_tok.div_ceil(Q);
    let (out_p, lse_p) = (SharedOut::new(out), SharedOut::new(lse));
    let avx = use_avx2();
    (0..shape.n_head * n_qb).into_par_iter().for_each_init(
        || vec![0f32; K * Q + shape.head_dim * Q],
        |scratch, task| {
            run_task!(
                avx,
                forward_task,
                forward_task_avx2,
                input,
                task,
                scratch,
                out_p,
                lse_p
            )
        },
    );
}

task_fn!(forward_task, forward_task_avx2, (f: ForwardIn, task: usize, scratch: &mut [f32], out_p: SharedOut, lse_p: SharedOut) {
    let AttnShape { n_tok, n_head, n_head_kv, head_dim: hd } = f.shape;
    let (n_pad, hd_pad) = (f.n_pad, f.hd_pad);
    let n_qb = n_tok.div_ceil(Q);
    let (h, qb) = (task / n_qb, task % n_qb);
    let kvh = h / (n_head / n_head_kv);
    let (i0, q1) = (qb * Q, ((qb + 1) * Q).min(n_tok));
    let (st, acc) = scratch.split_at_mut(K * Q);
    let acc = &mut acc[..hd * Q];
    acc.fill(0.0);
    let mut m = [f32::NEG_INFINITY; Q];
    let mut l = [0f32; Q];
    let k_rows = &f.k_rows[kvh * n_pad * hd_pad..][..n_pad * hd_pad];
    let vt = &f.vt[kvh * hd * n_pad..][..hd * n_pad];
    let q_block = &f.q_cols[(h * n_pad + i0) * hd..][..hd * Q];
    for k0 in (0..q1).step_by(K) {
        let tile = K.min(q1 - k0);
        // SAFETY: k_rows holds n_pad >= k0 + tile rows of hd_pad values;
        // q_block holds hd rows of Q; st holds K x Q.
        unsafe {
            gemm_tile(tile, Q, hd, k_rows.as_ptr().add(k0 * hd_pad), hd_pad, q_block.as_ptr(), Q, st.as_mut_ptr(), Q, false);
        }
        let st = &mut st[..tile * Q];
        // Scale; keys after a query (or past the sequence) get -inf, so exp
        // gives 0. Every query column keeps a finite entry: k0 <= i0 (key
        // tiles are whole multiples of query blocks), and key k0 sees all.
        let mut tile_max = [f32::NEG_INFINITY; Q];
        for (j, row) in st.chunks_exact_mut(Q).enumerate() {
            row.iter_mut().for_each(|x| *x *= f.scale);
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
        // acc^T += V^T P^T.
        // SAFETY: vt's tile block holds hd rows of K (tile <= K used); st
        // holds tile rows of Q; acc holds hd rows of Q.
        unsafe {
            gemm_tile(hd, Q, tile, vt.as_ptr().add(k0 * hd), K, st.as_ptr(), Q, acc.as_mut_ptr(), Q, true);
        }
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
