//! Causal self-attention with grouped-query heads, computed in tiles with an
//! online softmax (Milakov & Gimelshein 2018; FlashAttention's forward), so
//! memory stays O(n_tok * head_dim) per task instead of O(n_tok^2).
//!
//! Shapes: `q: [n_tok, n_head, head_dim]`, `k, v: [n_tok, n_head_kv, head_dim]`,
//! `out: [n_tok, n_head, head_dim]`, `lse: [n_head, n_tok]` (log-sum-exp of each
//! query's scaled scores, kept so the backward pass can recompute
//! probabilities tile by tile). Query head `h` reads key/value head
//! `h / (n_head / n_head_kv)`, as ggml broadcasts.

use crate::matmul::dot;
use crate::parallel::SharedOut;
use rayon::prelude::*;

/// Query rows per task.
pub const ATTN_Q_TILE: usize = 32;
/// Keys per tile.
pub const ATTN_K_TILE: usize = 64;

/// Head geometry.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_tok: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
}

impl AttnShape {
    fn check(&self, q: &[f32], k: &[f32], v: &[f32], out: &[f32], lse: &[f32]) {
        let AttnShape {
            n_tok,
            n_head,
            n_head_kv,
            head_dim,
        } = *self;
        assert!(
            n_head_kv > 0 && n_head % n_head_kv == 0,
            "attention: {n_head} heads vs {n_head_kv} kv heads"
        );
        assert_eq!(q.len(), n_tok * n_head * head_dim, "attention: q shape");
        assert_eq!(out.len(), q.len(), "attention: out shape");
        assert_eq!(k.len(), n_tok * n_head_kv * head_dim, "attention: k shape");
        assert_eq!(v.len(), k.len(), "attention: v shape");
        assert_eq!(lse.len(), n_head * n_tok, "attention: lse shape");
    }
}

/// Forward: `out[i] = sum_{j <= i} softmax_j(scale * q_i . k_j) v_j` per head.
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
    let AttnShape {
        n_tok,
        n_head,
        n_head_kv,
        head_dim: hd,
    } = shape;
    let group = n_head / n_head_kv;
    let n_qt = n_tok.div_ceil(ATTN_Q_TILE);
    let (out_p, lse_p) = (SharedOut::new(out), SharedOut::new(lse));
    (0..n_head * n_qt).into_par_iter().for_each_init(
        || (vec![0f32; ATTN_Q_TILE * hd], vec![0f32; ATTN_K_TILE]),
        |(acc, s), task| {
            let (h, qt) = (task / n_qt, task % n_qt);
            let kvh = h / group;
            let (q0, q1) = (qt * ATTN_Q_TILE, ((qt + 1) * ATTN_Q_TILE).min(n_tok));
            let mut m = [f32::NEG_INFINITY; ATTN_Q_TILE];
            let mut l = [0f32; ATTN_Q_TILE];
            acc.fill(0.0);
            for k0 in (0..q1).step_by(ATTN_K_TILE) {
                let k1 = (k0 + ATTN_K_TILE).min(q1);
                for i in q0.max(k0)..q1 {
                    let r = i - q0;
                    let qi = &q[(i * n_head + h) * hd..][..hd];
                    let jmax = k1.min(i + 1);
                    let mut tile_max = f32::NEG_INFINITY;
                    for j in k0..jmax {
                        let sj = scale * dot(qi, &k[(j * n_head_kv + kvh) * hd..][..hd]);
                        s[j - k0] = sj;
                        tile_max = tile_max.max(sj);
                    }
                    let m_new = m[r].max(tile_max);
                    let corr = (m[r] - m_new).exp();
                    let a = &mut acc[r * hd..(r + 1) * hd];
                    if corr != 1.0 {
                        l[r] *= corr;
                        a.iter_mut().for_each(|x| *x *= corr);
                    }
                    for j in k0..jmax {
                        let p = (s[j - k0] - m_new).exp();
                        l[r] += p;
                        let vj = &v[(j * n_head_kv + kvh) * hd..][..hd];
                        for (x, &y) in a.iter_mut().zip(vj) {
                            *x += p * y;
                        }
                    }
                    m[r] = m_new;
                }
            }
            for i in q0..q1 {
                let r = i - q0;
                let inv = 1.0 / l[r];
                // SAFETY: (i, h) rows of out and lse belong to this task only;
                // in bounds by the shape check.
                unsafe {
                    let o = out_p.get().add((i * n_head + h) * hd);
                    for d in 0..hd {
                        *o.add(d) = acc[r * hd + d] * inv;
                    }
                    *lse_p.get().add(h * n_tok + i) = m[r] + l[r].ln();
                }
            }
        },
    );
}

/// Backward (FlashAttention-2's, recomputing probabilities from `lse` so no
/// `n_tok^2` matrix is stored): given `dout`, writes `dq`, `dk`, `dv`.
/// Two parallel passes: key tiles own `dk`/`dv` (summing over every query
/// and every query head of their group), query tiles own `dq`.
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
    let AttnShape {
        n_tok,
        n_head,
        n_head_kv,
        head_dim: hd,
    } = shape;
    assert!(
        dout.len() == q.len() && dq.len() == q.len() && dk.len() == k.len() && dv.len() == v.len(),
        "attention_backward: shapes"
    );
    let group = n_head / n_head_kv;
    // delta[h, i] = dout_i . out_i: the softmax backward's row constant.
    let mut delta = vec![0f32; n_head * n_tok];
    for h in 0..n_head {
        for i in 0..n_tok {
            let at = (i * n_head + h) * hd;
            delta[h * n_tok + i] = dot(&dout[at..at + hd], &out[at..at + hd]);
        }
    }
    let qh = |i: usize, h: usize| &q[(i * n_head + h) * hd..][..hd];
    let kh = |j: usize, h: usize| &k[(j * n_head_kv + h) * hd..][..hd];
    let vh = |j: usize, h: usize| &v[(j * n_head_kv + h) * hd..][..hd];
    let doh = |i: usize, h: usize| &dout[(i * n_head + h) * hd..][..hd];

    // Pass 1: dk, dv per (kv head, key tile).
    let n_kt = n_tok.div_ceil(ATTN_K_TILE);
    let (dk_p, dv_p) = (SharedOut::new(dk), SharedOut::new(dv));
    (0..n_head_kv * n_kt).into_par_iter().for_each_init(
        || (vec![0f32; ATTN_K_TILE * hd], vec![0f32; ATTN_K_TILE * hd]),
        |(dk_acc, dv_acc), task| {
            let (kvh, kt) = (task / n_kt, task % n_kt);
            let (j0, j1) = (kt * ATTN_K_TILE, ((kt + 1) * ATTN_K_TILE).min(n_tok));
            dk_acc.fill(0.0);
            dv_acc.fill(0.0);
            for h in kvh * group..(kvh + 1) * group {
                for i in j0..n_tok {
                    let (qi, doi) = (qh(i, h), doh(i, h));
                    let (l, d) = (lse[h * n_tok + i], delta[h * n_tok + i]);
                    for j in j0..j1.min(i + 1) {
                        let p = (scale * dot(qi, kh(j, kvh)) - l).exp();
                        let ds = p * (dot(doi, vh(j, kvh)) - d) * scale;
                        let r = (j - j0) * hd;
                        for x in 0..hd {
                            dv_acc[r + x] += p * doi[x];
                            dk_acc[r + x] += ds * qi[x];
                        }
                    }
                }
            }
            for j in j0..j1 {
                // SAFETY: key rows j0..j1 of kv head kvh belong to this task.
                unsafe {
                    let at = (j * n_head_kv + kvh) * hd;
                    std::ptr::copy_nonoverlapping(
                        dk_acc.as_ptr().add((j - j0) * hd),
                        dk_p.get().add(at),
                        hd,
                    );
                    std::ptr::copy_nonoverlapping(
                        dv_acc.as_ptr().add((j - j0) * hd),
                        dv_p.get().add(at),
                        hd,
                    );
                }
            }
        },
    );

    // Pass 2: dq per (head, query tile).
    let n_qt = n_tok.div_ceil(ATTN_Q_TILE);
    let dq_p = SharedOut::new(dq);
    (0..n_head * n_qt).into_par_iter().for_each_init(
        || vec![0f32; hd],
        |acc, task| {
            let (h, qt) = (task / n_qt, task % n_qt);
            let kvh = h / group;
            for i in qt * ATTN_Q_TILE..((qt + 1) * ATTN_Q_TILE).min(n_tok) {
                let (qi, doi) = (qh(i, h), doh(i, h));
                let (l, d) = (lse[h * n_tok + i], delta[h * n_tok + i]);
                acc.fill(0.0);
                for j in 0..=i {
                    let kj = kh(j, kvh);
                    let p = (scale * dot(qi, kj) - l).exp();
                    let ds = p * (dot(doi, vh(j, kvh)) - d) * scale;
                    for x in 0..hd {
                        acc[x] += ds * kj[x];
                    }
                }
                // SAFETY: query row (i, h) belongs to this task.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        acc.as_ptr(),
                        dq_p.get().add((i * n_head + h) * hd),
                        hd,
                    )
                };
            }
        },
    );
}

/// Scalar twin: full softmax per query in f64.
pub fn attention_forward_scalar(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttnShape,
    scale: f32,
    out: &mut [f32],
    lse: &mut [f32],
) {
    shape.check(q, k, v, out, lse);
    let AttnShape {
        n_tok,
        n_head,
        n_head_kv,
        head_dim: hd,
    } = shape;
    let group = n_head / n_head_kv;
    for h in 0..n_head {
        let kvh = h / group;
        for i in 0..n_tok {
            let qi = &q[(i * n_head + h) * hd..][..hd];
            let s: Vec<f64> = (0..=i)
                .map(|j| {
                    let kj = &k[(j * n_head_kv + kvh) * hd..][..hd];
                    scale as f64
                        * qi.iter()
                            .zip(kj)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
            for d in 0..hd {
                let val: f64 = (0..=i)
                    .map(|j| (s[j] - mx).exp() / z * v[(j * n_head_kv + kvh) * hd + d] as f64)
                    .sum();
                out[(i * n_head + h) * hd + d] = val as f32;
            }
            lse[h * n_tok + i] = (mx + z.ln()) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel_err, TestRng};

    /// Relative to the largest |output|: f32 exp and accumulation over <= 200 keys.
    pub const ATTENTION_TOL: f64 = 2e-5;

    #[test]
    fn matches_scalar_twin_with_gqa_and_ragged_tiles() {
        let mut rng = TestRng(11);
        for &(n_tok, n_head, n_head_kv, head_dim) in &[
            (1, 1, 1, 4),
            (5, 2, 1, 8),
            (33, 4, 2, 16),
            (130, 6, 2, 64),
            (200, 3, 3, 20),
        ] {
            let shape = AttnShape {
                n_tok,
                n_head,
                n_head_kv,
                head_dim,
            };
            let q = rng.vec(n_tok * n_head * head_dim, 2.0);
            let k = rng.vec(n_tok * n_head_kv * head_dim, 2.0);
            let v = rng.vec(n_tok * n_head_kv * head_dim, 1.0);
            let scale = 1.0 / (head_dim as f32).sqrt();
            let (mut o, mut o_ref) = (vec![0f32; q.len()], vec![0f32; q.len()]);
            let (mut lse, mut lse_ref) = (vec![0f32; n_head * n_tok], vec![0f32; n_head * n_tok]);
            attention_forward(&q, &k, &v, shape, scale, &mut o, &mut lse);
            attention_forward_scalar(&q, &k, &v, shape, scale, &mut o_ref, &mut lse_ref);
            assert!(
                max_rel_err(&o, &o_ref) <= ATTENTION_TOL,
                "{shape:?}: out {}",
                max_rel_err(&o, &o_ref)
            );
            assert!(
                max_rel_err(&lse, &lse_ref) <= ATTENTION_TOL,
                "{shape:?}: lse"
            );
        }
    }

    /// Backward vs central finite differences of `L = sum(dout * out)` in f64.
    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = TestRng(12);
        for &(n_tok, n_head, n_head_kv, head_dim) in &[(5, 2, 1, 4), (70, 2, 2, 3)] {
            let shape = AttnShape {
                n_tok,
                n_head,
                n_head_kv,
                head_dim,
            };
            let q = rng.vec(n_tok * n_head * head_dim, 1.5);
            let k = rng.vec(n_tok * n_head_kv * head_dim, 1.5);
            let v = rng.vec(n_tok * n_head_kv * head_dim, 1.0);
            let dout = rng.vec(q.len(), 1.0);
            let scale = 0.7;
            let (mut o, mut lse) = (vec![0f32; q.len()], vec![0f32; n_head * n_tok]);
            attention_forward(&q, &k, &v, shape, scale, &mut o, &mut lse);
            let (mut dq, mut dk, mut dv) = (
                vec![0f32; q.len()],
                vec![0f32; k.len()],
                vec![0f32; v.len()],
            );
            attention_backward(
                &q, &k, &v, &o, &lse, &dout, shape, scale, &mut dq, &mut dk, &mut dv,
            );
            let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
                let (mut o, mut l) = (vec![0f32; q.len()], vec![0f32; n_head * n_tok]);
                attention_forward_scalar(q, k, v, shape, scale, &mut o, &mut l);
                o.iter()
                    .zip(&dout)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum()
            };
            let h = 1e-3f32;
            let fd = |which: usize, i: usize| -> f32 {
                let mut t = [q.clone(), k.clone(), v.clone()];
                t[which][i] += h;
                let p = loss(&t[0], &t[1], &t[2]);
                t[which][i] -= 2.0 * h;
                let m = loss(&t[0], &t[1], &t[2]);
                ((p - m) / (2.0 * h as f64)) as f32
            };
            let fd_q: Vec<f32> = (0..q.len()).map(|i| fd(0, i)).collect();
            let fd_k: Vec<f32> = (0..k.len()).map(|i| fd(1, i)).collect();
            let fd_v: Vec<f32> = (0..v.len()).map(|i| fd(2, i)).collect();
            for (name, got, want) in [("dq", &dq, &fd_q), ("dk", &dk, &fd_k), ("dv", &dv, &fd_v)] {
                let err = max_rel_err(got, want);
                assert!(err <= 2e-3, "{shape:?} {name}: {err}");
            }
        }
    }

    #[test]
    fn first_token_attends_only_to_itself() {
        let shape = AttnShape {
            n_tok: 3,
            n_head: 1,
            n_head_kv: 1,
            head_dim: 2,
        };
        let q = vec![1.0; 6];
        let k = vec![0.5; 6];
        let v = vec![1.0, 2.0, 30.0, 40.0, 500.0, 600.0];
        let (mut o, mut lse) = (vec![0f32; 6], vec![0f32; 3]);
        attention_forward(&q, &k, &v, shape, 1.0, &mut o, &mut lse);
        assert_eq!(&o[..2], &[1.0, 2.0]);
        // Equal scores: the second token averages the first two values.
        assert!((o[2] - 15.5).abs() < 1e-5 && (o[3] - 21.0).abs() < 1e-5);
    }
}
