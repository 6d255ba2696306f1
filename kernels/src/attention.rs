//! Causal self-attention with grouped-query heads, computed in tiles with an
//! online softmax (Milakov & Gimelshein 2018; FlashAttention's forward), so
//! memory stays O(n_tok * head_dim) per task instead of O(n_tok^2).
//!
//! Shapes: `q: [n_tok, n_head, head_dim]`, `k, v: [n_tok, n_head_kv, head_dim]`,
//! `out: [n_tok, n_head, head_dim]`, `lse: [n_head, n_tok]` (log-sum-exp of each
//! query's scaled scores, kept so the backward pass can recompute
//! probabilities tile by tile). Query head `h` reads key/value head
//! `h / (n_head / n_head_kv)`, as ggml broadcasts.

use crate::parallel::SharedOut;
use crate::softmax::exp_approx;
use rayon::prelude::*;

/// Query rows per task.
pub const ATTN_Q_TILE: usize = 32;
/// Keys per tile.
pub const ATTN_K_TILE: usize = 64;

/// Head geometry.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// Tokens (rows of q, k, v).
    pub n_tok: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (GQA: n_head is a multiple).
    pub n_head_kv: usize,
    /// Width of one head.
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

use crate::matmul::{gemm_tile, NR};

/// Per-head copies of a `[n_tok, n_heads, hd]` tensor laid out for tile
/// products, each padded with zeros to whole tiles (`n_pad` positions) and
/// whole panels (`hd_pad` dimensions) so the micro-kernel never reads past a
/// buffer: `rows` is `[n_heads][n_pad][hd_pad]`; `cols` is transposed per key
/// tile, `[n_heads][n_pad / K_TILE][hd][K_TILE]`, so each tile's block is
/// contiguous (16 KiB at hd = 64: it stays in L1 while a tile product runs).
/// Built once per call, shared by every task.
struct HeadLayout {
    n_pad: usize,
    hd_pad: usize,
    hd: usize,
}

impl HeadLayout {
    fn new(n_tok: usize, hd: usize) -> HeadLayout {
        HeadLayout {
            n_pad: n_tok.div_ceil(ATTN_K_TILE) * ATTN_K_TILE,
            hd_pad: hd.div_ceil(NR) * NR,
            hd,
        }
    }

    fn rows(&self, src: &[f32], n_heads: usize) -> Vec<f32> {
        let mut out = vec![0f32; n_heads * self.n_pad * self.hd_pad];
        let n_tok = src.len() / (n_heads * self.hd).max(1);
        for t in 0..n_tok {
            for h in 0..n_heads {
                let from = &src[(t * n_heads + h) * self.hd..][..self.hd];
                out[(h * self.n_pad + t) * self.hd_pad..][..self.hd].copy_from_slice(from);
            }
        }
        out
    }

    fn cols(&self, src: &[f32], n_heads: usize) -> Vec<f32> {
        let mut out = vec![0f32; n_heads * self.hd * self.n_pad];
        let n_tok = src.len() / (n_heads * self.hd).max(1);
        let n_tiles = self.n_pad / ATTN_K_TILE;
        for t in 0..n_tok {
            let (tile, j) = (t / ATTN_K_TILE, t % ATTN_K_TILE);
            for h in 0..n_heads {
                let from = &src[(t * n_heads + h) * self.hd..][..self.hd];
                let base = (h * n_tiles + tile) * self.hd * ATTN_K_TILE + j;
                for (d, &x) in from.iter().enumerate() {
                    out[base + d * ATTN_K_TILE] = x;
                }
            }
        }
        out
    }
}

/// Whether the AVX2/FMA builds of the per-task routines can run.
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

/// Inputs shared by the forward tasks.
#[derive(Clone, Copy)]
struct ForwardIn<'a> {
    q: &'a [f32],
    /// `[n_head_kv][n_pad / K_TILE][hd][K_TILE]`
    kt: &'a [f32],
    /// `[n_head_kv][n_pad][hd_pad]`
    v_rows: &'a [f32],
    shape: AttnShape,
    scale: f32,
    n_pad: usize,
}

/// Forward: `out[i] = sum_{j <= i} softmax_j(scale * q_i . k_j) v_j` per head.
/// Per (head, block of ATTN_Q_TILE queries): for each tile of ATTN_K_TILE keys,
/// scores `Q K^T` and the update `acc += P V` are tile products through the
/// matmul micro-kernel, with the online softmax in between.
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
    let (kt, v_rows) = (
        layout.cols(k, shape.n_head_kv),
        layout.rows(v, shape.n_head_kv),
    );
    let input = ForwardIn {
        q,
        kt: &kt,
        v_rows: &v_rows,
        shape,
        scale,
        n_pad: layout.n_pad,
    };
    let n_qt = shape.n_tok.div_ceil(ATTN_Q_TILE);
    let (out_p, lse_p) = (SharedOut::new(out), SharedOut::new(lse));
    let avx = use_avx2();
    let scratch_len = ATTN_Q_TILE * layout.hd_pad + ATTN_Q_TILE * ATTN_K_TILE;
    (0..shape.n_head * n_qt).into_par_iter().for_each_init(
        || vec![0f32; scratch_len],
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
    let hd_pad = hd.div_ceil(NR) * NR;
    let n_qt = n_tok.div_ceil(ATTN_Q_TILE);
    let (h, qt) = (task / n_qt, task % n_qt);
    let kvh = h / (n_head / n_head_kv);
    let (q0, q1) = (qt * ATTN_Q_TILE, ((qt + 1) * ATTN_Q_TILE).min(n_tok));
    let rows = q1 - q0;
    let (acc, s) = scratch.split_at_mut(ATTN_Q_TILE * hd_pad);
    let mut m = [f32::NEG_INFINITY; ATTN_Q_TILE];
    let mut l = [0f32; ATTN_Q_TILE];
    acc.fill(0.0);
    let kt = &f.kt[kvh * hd * f.n_pad..(kvh + 1) * hd * f.n_pad];
    // Tile t's transposed block starts at t * hd * K_TILE; k0 = t * K_TILE.
    let v_rows = &f.v_rows[kvh * f.n_pad * hd_pad..(kvh + 1) * f.n_pad * hd_pad];
    for k0 in (0..q1).step_by(ATTN_K_TILE) {
        let tile = (k0 + ATTN_K_TILE).min(q1) - k0;
        // S = Q K^T (raw scores; scaled below).
        // SAFETY: q rows q0..q1 of head h (stride n_head * hd, hd values);
        // kt's block of this tile holds hd rows of K_TILE; s holds Q_TILE x K_TILE.
        unsafe {
            gemm_tile(rows, ATTN_K_TILE, hd, f.q.as_ptr().add((q0 * n_head + h) * hd), n_head * hd, kt.as_ptr().add(k0 * hd), ATTN_K_TILE, s.as_mut_ptr(), ATTN_K_TILE, false);
        }
        for r in 0..rows {
            let i = q0 + r;
            let srow = &mut s[r * ATTN_K_TILE..(r + 1) * ATTN_K_TILE];
            if i < k0 {
                srow.fill(0.0); // no key of this tile is visible yet
                continue;
            }
            let width = tile.min(i + 1 - k0);
            let mut tile_max = f32::NEG_INFINITY;
            for x in srow[..width].iter_mut() {
                *x *= f.scale;
                tile_max = tile_max.max(*x);
            }
            let m_new = m[r].max(tile_max);
            let corr = exp_approx(m[r] - m_new);
            if corr != 1.0 {
                l[r] *= corr;
                acc[r * hd_pad..(r + 1) * hd_pad].iter_mut().for_each(|x| *x *= corr);
            }
            let mut sum = 0f32;
            for x in srow[..width].iter_mut() {
                *x = exp_approx(*x - m_new);
                sum += *x;
            }
            srow[width..].fill(0.0);
            l[r] += sum;
            m[r] = m_new;
        }
        // acc += P V.
        // SAFETY: s holds rows x tile probabilities (stride K_TILE); v_rows
        // holds rows k0..k0+tile of hd_pad (a multiple of NR); acc rows x hd_pad.
        unsafe {
            gemm_tile(rows, hd_pad, tile, s.as_ptr(), ATTN_K_TILE, v_rows.as_ptr().add(k0 * hd_pad), hd_pad, acc.as_mut_ptr(), hd_pad, true);
        }
    }
    for r in 0..rows {
        let i = q0 + r;
        let inv = 1.0 / l[r];
        // SAFETY: (i, h) rows of out and lse belong to this task only; in
        // bounds by the shape check.
        unsafe {
            let o = out_p.get().add((i * n_head + h) * hd);
            for d in 0..hd {
                *o.add(d) = acc[r * hd_pad + d] * inv;
            }
            *lse_p.get().add(h * n_tok + i) = m[r] + l[r].ln();
        }
    }
});

/// Inputs shared by the backward tasks (padded per-head layouts, see
/// [`HeadLayout`]).
#[derive(Clone, Copy)]
struct BackwardIn<'a> {
    q: &'a [f32],
    dout: &'a [f32],
    /// `[n_head][n_pad][hd_pad]`
    q_rows: &'a [f32],
    do_rows: &'a [f32],
    /// `[n_head_kv][n_pad / K_TILE][hd][K_TILE]`
    kt: &'a [f32],
    vt: &'a [f32],
    /// `[n_head_kv][n_pad][hd_pad]`
    k_rows: &'a [f32],
    lse: &'a [f32],
    delta: &'a [f32],
    shape: AttnShape,
    scale: f32,
    n_pad: usize,
}

/// Backward (FlashAttention-2's, recomputing probabilities from `lse` so no
/// `n_tok^2` matrix is stored): given `dout`, writes `dq`, `dk`, `dv`.
/// Two parallel passes: key tiles own `dk`/`dv` (summing over every query
/// and every query head of their group), query tiles own `dq`. Every product
/// is a tile product through the matmul micro-kernel.
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
    // delta[h, i] = dout_i . out_i: the softmax backward's row constant.
    let mut delta = vec![0f32; n_head * n_tok];
    for h in 0..n_head {
        for i in 0..n_tok {
            let at = (i * n_head + h) * hd;
            delta[h * n_tok + i] = dout[at..at + hd]
                .iter()
                .zip(&out[at..at + hd])
                .map(|(a, b)| a * b)
                .sum();
        }
    }
    let layout = HeadLayout::new(n_tok, hd);
    let (q_rows, do_rows) = (layout.rows(q, n_head), layout.rows(dout, n_head));
    let (kt, vt, k_rows) = (
        layout.cols(k, n_head_kv),
        layout.cols(v, n_head_kv),
        layout.rows(k, n_head_kv),
    );
    let input = BackwardIn {
        q,
        dout,
        q_rows: &q_rows,
        do_rows: &do_rows,
        kt: &kt,
        vt: &vt,
        k_rows: &k_rows,
        lse,
        delta: &delta,
        shape,
        scale,
        n_pad: layout.n_pad,
    };
    let avx = use_avx2();
    let scratch = 2 * ATTN_K_TILE * layout.hd_pad + 4 * ATTN_Q_TILE * ATTN_K_TILE;
    let n_kt = n_tok.div_ceil(ATTN_K_TILE);
    let (dk_p, dv_p) = (SharedOut::new(dk), SharedOut::new(dv));
    (0..n_head_kv * n_kt).into_par_iter().for_each_init(
        || vec![0f32; scratch],
        |buf, task| {
            run_task!(
                avx,
                backward_kv_task,
                backward_kv_task_avx2,
                input,
                task,
                buf,
                dk_p,
                dv_p
            )
        },
    );
    let n_qt = n_tok.div_ceil(ATTN_Q_TILE);
    let dq_p = SharedOut::new(dq);
    (0..n_head * n_qt).into_par_iter().for_each_init(
        || vec![0f32; scratch],
        |buf, task| {
            run_task!(
                avx,
                backward_q_task,
                backward_q_task_avx2,
                input,
                task,
                buf,
                dq_p
            )
        },
    );
}

/// For a block of `rows` queries (from `i0`, head `h`) against keys
/// `k0..k0+tile`: scores `s = Q K^T` and `dp = dO V^T` by tile products, then
/// in place `s <- p` (probabilities) and `dp <- ds = p (dp - delta) scale`;
/// masked entries are zero.
#[inline(always)]
fn block_grads(
    b: &BackwardIn,
    h: usize,
    i0: usize,
    rows: usize,
    k0: usize,
    tile: usize,
    s: &mut [f32],
    dp: &mut [f32],
) {
    let AttnShape {
        n_tok,
        n_head,
        n_head_kv,
        head_dim: hd,
    } = b.shape;
    let kvh = h / (n_head / n_head_kv);
    let at = (i0 * n_head + h) * hd;
    let (kt, vt) = (&b.kt[kvh * hd * b.n_pad..], &b.vt[kvh * hd * b.n_pad..]);
    // SAFETY: rows of q/dout from i0 (stride n_head * hd, hd values each);
    // the tile's blocks of kt/vt hold hd rows of K_TILE; s/dp hold Q_TILE x K_TILE.
    unsafe {
        gemm_tile(
            rows,
            ATTN_K_TILE,
            hd,
            b.q.as_ptr().add(at),
            n_head * hd,
            kt.as_ptr().add(k0 * hd),
            ATTN_K_TILE,
            s.as_mut_ptr(),
            ATTN_K_TILE,
            false,
        );
        gemm_tile(
            rows,
            ATTN_K_TILE,
            hd,
            b.dout.as_ptr().add(at),
            n_head * hd,
            vt.as_ptr().add(k0 * hd),
            ATTN_K_TILE,
            dp.as_mut_ptr(),
            ATTN_K_TILE,
            false,
        );
    }
    for r in 0..ATTN_Q_TILE {
        let (srow, dprow) = (
            &mut s[r * ATTN_K_TILE..(r + 1) * ATTN_K_TILE],
            &mut dp[r * ATTN_K_TILE..(r + 1) * ATTN_K_TILE],
        );
        let i = i0 + r;
        if r >= rows || i < k0 {
            srow.fill(0.0);
            dprow.fill(0.0);
            continue;
        }
        let width = tile.min(i + 1 - k0);
        let (l, d) = (b.lse[h * n_tok + i], b.delta[h * n_tok + i]);
        for j in 0..width {
            let p = exp_approx(srow[j] * b.scale - l);
            srow[j] = p;
            dprow[j] = p * (dprow[j] - d) * b.scale;
        }
        srow[width..].fill(0.0);
        dprow[width..].fill(0.0);
    }
}

/// Transposes a `[Q_TILE][K_TILE]` block into `[K_TILE][Q_TILE]`.
#[inline(always)]
fn transpose_block(src: &[f32], out: &mut [f32]) {
    for r in 0..ATTN_Q_TILE {
        for j in 0..ATTN_K_TILE {
            out[j * ATTN_Q_TILE + r] = src[r * ATTN_K_TILE + j];
        }
    }
}

task_fn!(backward_kv_task, backward_kv_task_avx2, (b: BackwardIn, task: usize, buf: &mut [f32], dk_p: SharedOut, dv_p: SharedOut) {
    let AttnShape { n_tok, n_head, n_head_kv, head_dim: hd } = b.shape;
    let hd_pad = hd.div_ceil(NR) * NR;
    let group = n_head / n_head_kv;
    let n_kt = n_tok.div_ceil(ATTN_K_TILE);
    let (kvh, ktile) = (task / n_kt, task % n_kt);
    let (j0, j1) = (ktile * ATTN_K_TILE, ((ktile + 1) * ATTN_K_TILE).min(n_tok));
    let tile = j1 - j0;
    let (dk_acc, rest) = buf.split_at_mut(ATTN_K_TILE * hd_pad);
    let (dv_acc, rest) = rest.split_at_mut(ATTN_K_TILE * hd_pad);
    let (s, rest) = rest.split_at_mut(ATTN_Q_TILE * ATTN_K_TILE);
    let (dp, rest) = rest.split_at_mut(ATTN_Q_TILE * ATTN_K_TILE);
    let (pt, dst) = rest.split_at_mut(ATTN_Q_TILE * ATTN_K_TILE);
    dk_acc.fill(0.0);
    dv_acc.fill(0.0);
    for h in kvh * group..(kvh + 1) * group {
        let (q_rows, do_rows) = (&b.q_rows[h * b.n_pad * hd_pad..], &b.do_rows[h * b.n_pad * hd_pad..]);
        // Query blocks that can see these keys: from the one holding j0.
        for i0 in ((j0 / ATTN_Q_TILE) * ATTN_Q_TILE..n_tok).step_by(ATTN_Q_TILE) {
            let rows = ATTN_Q_TILE.min(n_tok - i0);
            block_grads(&b, h, i0, rows, j0, tile, s, dp);
            transpose_block(s, pt);
            transpose_block(dp, dst);
            // dV += P^T dO, dK += dS^T Q over this block's rows.
            // SAFETY: pt/dst hold K_TILE rows of Q_TILE; q_rows/do_rows hold
            // n_pad >= i0 + rows rows of hd_pad (a multiple of NR).
            unsafe {
                gemm_tile(tile, hd_pad, rows, pt.as_ptr(), ATTN_Q_TILE, do_rows.as_ptr().add(i0 * hd_pad), hd_pad, dv_acc.as_mut_ptr(), hd_pad, true);
                gemm_tile(tile, hd_pad, rows, dst.as_ptr(), ATTN_Q_TILE, q_rows.as_ptr().add(i0 * hd_pad), hd_pad, dk_acc.as_mut_ptr(), hd_pad, true);
            }
        }
    }
    for j in j0..j1 {
        // SAFETY: key rows j0..j1 of kv head kvh belong to this task.
        unsafe {
            let at = (j * n_head_kv + kvh) * hd;
            std::ptr::copy_nonoverlapping(dk_acc.as_ptr().add((j - j0) * hd_pad), dk_p.get().add(at), hd);
            std::ptr::copy_nonoverlapping(dv_acc.as_ptr().add((j - j0) * hd_pad), dv_p.get().add(at), hd);
        }
    }
});

task_fn!(backward_q_task, backward_q_task_avx2, (b: BackwardIn, task: usize, buf: &mut [f32], dq_p: SharedOut) {
    let AttnShape { n_tok, n_head, n_head_kv, head_dim: hd } = b.shape;
    let hd_pad = hd.div_ceil(NR) * NR;
    let n_qt = n_tok.div_ceil(ATTN_Q_TILE);
    let (h, qtile) = (task / n_qt, task % n_qt);
    let kvh = h / (n_head / n_head_kv);
    let (q0, q1) = (qtile * ATTN_Q_TILE, ((qtile + 1) * ATTN_Q_TILE).min(n_tok));
    let rows = q1 - q0;
    let (acc, rest) = buf.split_at_mut(ATTN_K_TILE * hd_pad);
    let (_, rest) = rest.split_at_mut(ATTN_K_TILE * hd_pad);
    let (s, rest) = rest.split_at_mut(ATTN_Q_TILE * ATTN_K_TILE);
    let (dp, _) = rest.split_at_mut(ATTN_Q_TILE * ATTN_K_TILE);
    acc.fill(0.0);
    let k_rows = &b.k_rows[kvh * b.n_pad * hd_pad..];
    for k0 in (0..q1).step_by(ATTN_K_TILE) {
        let tile = (k0 + ATTN_K_TILE).min(q1) - k0;
        block_grads(&b, h, q0, rows, k0, tile, s, dp);
        // dQ += dS K.
        // SAFETY: dp holds rows x K_TILE (stride K_TILE); k_rows holds rows
        // k0..k0+tile of hd_pad; acc rows x hd_pad.
        unsafe {
            gemm_tile(rows, hd_pad, tile, dp.as_ptr(), ATTN_K_TILE, k_rows.as_ptr().add(k0 * hd_pad), hd_pad, acc.as_mut_ptr(), hd_pad, true);
        }
    }
    for i in q0..q1 {
        // SAFETY: query row (i, h) belongs to this task.
        unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr().add((i - q0) * hd_pad), dq_p.get().add((i * n_head + h) * hd), hd) };
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
