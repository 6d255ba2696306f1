//! Causal self-attention with grouped-query heads, computed in tiles with an
//! online softmax (Milakov & Gimelshein 2018; FlashAttention's forward), so
//! memory stays O(n_tok * head_dim) per task instead of O(n_tok^2).
//!
//! Shapes: `q: [n_tok, n_head, head_dim]`, `k, v: [n_tok, n_head_kv, head_dim]`,
//! `out: [n_tok, n_head, head_dim]`, `lse: [n_head, n_tok]` (log-sum-exp of each
//! query's scaled scores, kept so the backward pass can recompute
//! probabilities tile by tile). Query head `h` reads key/value head
//! `h / (n_head / n_head_kv)`, as ggml broadcasts.

use crate::softmax::exp_approx;
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

/// Key/value rows of one tile, transposed to `[head_dim][ATTN_K_TILE]` so that
/// a query's scores against the whole tile are `head_dim` vector AXPYs.
#[inline(always)]
fn transpose_tile(src: &[f32], n_head_kv: usize, kvh: usize, hd: usize, j0: usize, j1: usize, out: &mut [f32]) {
    for j in j0..j1 {
        let row = &src[(j * n_head_kv + kvh) * hd..][..hd];
        for d in 0..hd {
            out[d * ATTN_K_TILE + (j - j0)] = row[d];
        }
    }
}

/// `s[j] = scale * q . k_j` for the `width` keys of a transposed tile.
#[inline(always)]
fn tile_scores(q: &[f32], kt: &[f32], scale: f32, width: usize, s: &mut [f32; ATTN_K_TILE]) {
    s.fill(0.0);
    for (d, &qd) in q.iter().enumerate() {
        let row = &kt[d * ATTN_K_TILE..d * ATTN_K_TILE + ATTN_K_TILE];
        let qd = qd * scale;
        for j in 0..ATTN_K_TILE {
            s[j] += qd * row[j];
        }
    }
    for x in s[width..].iter_mut() {
        *x = f32::NEG_INFINITY;
    }
}

/// Whether the AVX2/FMA builds of the tile routines can run (checked once per call).
fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `$name` (portable) and `$avx2` (the same body compiled with AVX2 and
/// FMA) for a per-task routine; rayon's closures call one or the other. The
/// work must live in such functions, not in the closures: code inside a
/// closure is not compiled with the enclosing function's target features.
macro_rules! task_fn {
    ($name:ident, $avx2:ident, ($($arg:ident: $ty:ty),*) $body:block) => {
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) $body

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx2($($arg: $ty),*) {
            $name($($arg),*)
        }
    };
}

macro_rules! run_task {
    ($avx:expr, $name:ident, $avx2:ident, $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if $avx {
                // SAFETY: the CPU supports AVX2 and FMA (use_avx2()).
                unsafe { $avx2($($arg),*) }
            } else {
                $name($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = $avx;
            $name($($arg),*)
        }
    }};
}

/// Forward: `out[i] = sum_{j <= i} softmax_j(scale * q_i . k_j) v_j` per head.
pub fn attention_forward(q: &[f32], k: &[f32], v: &[f32], shape: AttnShape, scale: f32, out: &mut [f32], lse: &mut [f32]) {
    shape.check(q, k, v, out, lse);
    let hd = shape.head_dim;
    let n_qt = shape.n_tok.div_ceil(ATTN_Q_TILE);
    let (out_p, lse_p) = (SharedOut::new(out), SharedOut::new(lse));
    let avx = use_avx2();
    (0..shape.n_head * n_qt).into_par_iter().for_each_init(
        || (vec![0f32; ATTN_Q_TILE * hd], vec![0f32; hd * ATTN_K_TILE]),
        |(acc, kt), task| run_task!(avx, forward_task, forward_task_avx2, q, k, v, shape, scale, task, acc, kt, out_p, lse_p),
    );
}

task_fn!(forward_task, forward_task_avx2, (q: &[f32], k: &[f32], v: &[f32], shape: AttnShape, scale: f32, task: usize, acc: &mut [f32], kt: &mut [f32], out_p: SharedOut, lse_p: SharedOut) {
    let AttnShape { n_tok, n_head, n_head_kv, head_dim: hd } = shape;
    let kvh = (task / n_tok.div_ceil(ATTN_Q_TILE)) / (n_head / n_head_kv);
    let n_qt = n_tok.div_ceil(ATTN_Q_TILE);
    let (h, qt) = (task / n_qt, task % n_qt);
    let (q0, q1) = (qt * ATTN_Q_TILE, ((qt + 1) * ATTN_Q_TILE).min(n_tok));
    let mut m = [f32::NEG_INFINITY; ATTN_Q_TILE];
    let mut l = [0f32; ATTN_Q_TILE];
    let mut s = [0f32; ATTN_K_TILE];
    acc.fill(0.0);
    for k0 in (0..q1).step_by(ATTN_K_TILE) {
        let k1 = (k0 + ATTN_K_TILE).min(q1);
        transpose_tile(k, n_head_kv, kvh, hd, k0, k1, kt);
        for i in q0.max(k0)..q1 {
            let r = i - q0;
            let qi = &q[(i * n_head + h) * hd..][..hd];
            // Causal: keys k0..=i of this tile.
            let width = k1.min(i + 1) - k0;
            tile_scores(qi, kt, scale, width, &mut s);
            let tile_max = s[..width].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let m_new = m[r].max(tile_max);
            let corr = exp_approx(m[r] - m_new);
            let a = &mut acc[r * hd..(r + 1) * hd];
            if corr != 1.0 {
                l[r] *= corr;
                a.iter_mut().for_each(|x| *x *= corr);
            }
            for x in s.iter_mut() {
                *x = exp_approx(*x - m_new);
            }
            l[r] += s[..width].iter().sum::<f32>();
            for (j, &p) in s[..width].iter().enumerate() {
                let vj = &v[((k0 + j) * n_head_kv + kvh) * hd..][..hd];
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
        // SAFETY: (i, h) rows of out and lse belong to this task only; in
        // bounds by the shape check.
        unsafe {
            let o = out_p.get().add((i * n_head + h) * hd);
            for d in 0..hd {
                *o.add(d) = acc[r * hd + d] * inv;
            }
            *lse_p.get().add(h * n_tok + i) = m[r] + l[r].ln();
        }
    }
});

/// For query row `qi` (with upstream gradient `doi`, log-sum-exp `l`, row
/// constant `d`) against a tile of transposed keys `kt` and values `vt`:
/// `p[j]` (probabilities) and `ds[j] = p[j] (doi . v_j - d) scale`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_probs(qi: &[f32], doi: &[f32], l: f32, d: f32, kt: &[f32], vt: &[f32], scale: f32, width: usize, p: &mut [f32; ATTN_K_TILE], ds: &mut [f32; ATTN_K_TILE]) {
    tile_scores(qi, kt, scale, width, p);
    for x in p.iter_mut() {
        *x = exp_approx(*x - l);
    }
    tile_scores(doi, vt, 1.0, width, ds);
    for j in 0..ATTN_K_TILE {
        ds[j] = if j < width { p[j] * (ds[j] - d) * scale } else { 0.0 };
    }
}

/// Gradient inputs shared by the backward tasks.
#[derive(Clone, Copy)]
struct BackwardIn<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    lse: &'a [f32],
    dout: &'a [f32],
    delta: &'a [f32],
    shape: AttnShape,
    scale: f32,
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
    assert!(dout.len() == q.len() && dq.len() == q.len() && dk.len() == k.len() && dv.len() == v.len(), "attention_backward: shapes");
    let AttnShape { n_tok, n_head, n_head_kv, head_dim: hd } = shape;
    // delta[h, i] = dout_i . out_i: the softmax backward's row constant.
    let mut delta = vec![0f32; n_head * n_tok];
    for h in 0..n_head {
        for i in 0..n_tok {
            let at = (i * n_head + h) * hd;
            delta[h * n_tok + i] = dout[at..at + hd].iter().zip(&out[at..at + hd]).map(|(a, b)| a * b).sum();
        }
    }
    let input = BackwardIn { q, k, v, lse, dout, delta: &delta, shape, scale };
    let avx = use_avx2();
    let n_kt = n_tok.div_ceil(ATTN_K_TILE);
    let (dk_p, dv_p) = (SharedOut::new(dk), SharedOut::new(dv));
    (0..n_head_kv * n_kt).into_par_iter().for_each_init(
        || vec![0f32; 4 * ATTN_K_TILE * hd],
        |scratch, task| run_task!(avx, backward_kv_task, backward_kv_task_avx2, input, task, scratch, dk_p, dv_p),
    );
    let n_qt = n_tok.div_ceil(ATTN_Q_TILE);
    let dq_p = SharedOut::new(dq);
    (0..n_head * n_qt).into_par_iter().for_each_init(
        || vec![0f32; ATTN_Q_TILE * hd + 2 * ATTN_K_TILE * hd],
        |scratch, task| run_task!(avx, backward_q_task, backward_q_task_avx2, input, task, scratch, dq_p),
    );
}

task_fn!(backward_kv_task, backward_kv_task_avx2, (b: BackwardIn, task: usize, scratch: &mut [f32], dk_p: SharedOut, dv_p: SharedOut) {
    let AttnShape { n_tok, n_head, n_head_kv, head_dim: hd } = b.shape;
    let group = n_head / n_head_kv;
    let n_kt = n_tok.div_ceil(ATTN_K_TILE);
    let (kvh, ktile) = (task / n_kt, task % n_kt);
    let (j0, j1) = (ktile * ATTN_K_TILE, ((ktile + 1) * ATTN_K_TILE).min(n_tok));
    let (dk_acc, rest) = scratch.split_at_mut(ATTN_K_TILE * hd);
    let (dv_acc, rest) = rest.split_at_mut(ATTN_K_TILE * hd);
    let (kt, vt) = rest.split_at_mut(ATTN_K_TILE * hd);
    dk_acc.fill(0.0);
    dv_acc.fill(0.0);
    transpose_tile(b.k, n_head_kv, kvh, hd, j0, j1, kt);
    transpose_tile(b.v, n_head_kv, kvh, hd, j0, j1, vt);
    let (mut p, mut ds) = ([0f32; ATTN_K_TILE], [0f32; ATTN_K_TILE]);
    for h in kvh * group..(kvh + 1) * group {
        for i in j0..n_tok {
            let qi = &b.q[(i * n_head + h) * hd..][..hd];
            let doi = &b.dout[(i * n_head + h) * hd..][..hd];
            let width = j1.min(i + 1) - j0;
            tile_probs(qi, doi, b.lse[h * n_tok + i], b.delta[h * n_tok + i], kt, vt, b.scale, width, &mut p, &mut ds);
            for j in 0..width {
                let (pj, dsj) = (p[j], ds[j]);
                let dvr = &mut dv_acc[j * hd..(j + 1) * hd];
                for x in 0..hd {
                    dvr[x] += pj * doi[x];
                }
                let dkr = &mut dk_acc[j * hd..(j + 1) * hd];
                for x in 0..hd {
                    dkr[x] += dsj * qi[x];
                }
            }
        }
    }
    for j in j0..j1 {
        // SAFETY: key rows j0..j1 of kv head kvh belong to this task.
        unsafe {
            let at = (j * n_head_kv + kvh) * hd;
            std::ptr::copy_nonoverlapping(dk_acc.as_ptr().add((j - j0) * hd), dk_p.get().add(at), hd);
            std::ptr::copy_nonoverlapping(dv_acc.as_ptr().add((j - j0) * hd), dv_p.get().add(at), hd);
        }
    }
});

task_fn!(backward_q_task, backward_q_task_avx2, (b: BackwardIn, task: usize, scratch: &mut [f32], dq_p: SharedOut) {
    let AttnShape { n_tok, n_head, n_head_kv, head_dim: hd } = b.shape;
    let group = n_head / n_head_kv;
    let n_qt = n_tok.div_ceil(ATTN_Q_TILE);
    let (h, qtile) = (task / n_qt, task % n_qt);
    let kvh = h / group;
    let (q0, q1) = (qtile * ATTN_Q_TILE, ((qtile + 1) * ATTN_Q_TILE).min(n_tok));
    let (acc, rest) = scratch.split_at_mut(ATTN_Q_TILE * hd);
    let (kt, vt) = rest.split_at_mut(ATTN_K_TILE * hd);
    acc.fill(0.0);
    let (mut p, mut ds) = ([0f32; ATTN_K_TILE], [0f32; ATTN_K_TILE]);
    for k0 in (0..q1).step_by(ATTN_K_TILE) {
        let k1 = (k0 + ATTN_K_TILE).min(q1);
        transpose_tile(b.k, n_head_kv, kvh, hd, k0, k1, kt);
        transpose_tile(b.v, n_head_kv, kvh, hd, k0, k1, vt);
        for i in q0.max(k0)..q1 {
            let qi = &b.q[(i * n_head + h) * hd..][..hd];
            let doi = &b.dout[(i * n_head + h) * hd..][..hd];
            let width = k1.min(i + 1) - k0;
            tile_probs(qi, doi, b.lse[h * n_tok + i], b.delta[h * n_tok + i], kt, vt, b.scale, width, &mut p, &mut ds);
            let a = &mut acc[(i - q0) * hd..(i - q0 + 1) * hd];
            for (j, &dsj) in ds[..width].iter().enumerate() {
                let kj = &b.k[((k0 + j) * n_head_kv + kvh) * hd..][..hd];
                for x in 0..hd {
                    a[x] += dsj * kj[x];
                }
            }
        }
    }
    for i in q0..q1 {
        // SAFETY: query row (i, h) belongs to this task.
        unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr().add((i - q0) * hd), dq_p.get().add((i * n_head + h) * hd), hd) };
    }
});

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
