//! The tile products of the attention kernels, in f32 ([`F32Tiles`], through
//! the f32 micro-kernel) or bf16 ([`Bf16Tiles`], through `vdpbf16ps`; the
//! operands are rounded to bf16, the sums stay f32, as in
//! [`crate::matmul::matmul_wt_bf16`]). The tasks in `forward` and `backward`
//! run the online softmax and the probability gradients in f32 either way;
//! only these products change.
//!
//! Every product works on one query block (`Q` queries) of head `h` and one
//! key tile (`K` keys from `k0`) of KV head `kvh`, keys by queries: scores
//! are `S^T = K Q^T`, `[K][Q]`. Operands are laid out once per call per head
//! so each product reads whole contiguous blocks (see [`HeadLayout`]).

use super::{per_head, HeadLayout, ATTN_K_TILE, ATTN_Q_TILE};
#[cfg(any(target_arch = "x86_64", test))]
use crate::matmul::amx;
use crate::matmul::bf16::{gemm_tile_bf16, interleave_pairs, to_pairs, NB};
use crate::matmul::gemm_tile;

const Q: usize = ATTN_Q_TILE;
const K: usize = ATTN_K_TILE;

/// The products the forward and backward tasks need.
pub(super) trait Tiles: Sync {
    /// Per-task buffers (bf16 packs its probability tiles there).
    type Scratch: Send;
    fn scratch(&self) -> Self::Scratch;
    /// `st[rows][Q] = K[k0..k0 + rows] Q_b^T`: raw scores of query block
    /// `qb` of head `h`.
    fn scores(&self, h: usize, kvh: usize, qb: usize, k0: usize, rows: usize, st: &mut [f32]);
    /// `dpt[K][Q] = V[k0..k0 + K] dO_b^T`.
    fn dprobs(&self, h: usize, kvh: usize, qb: usize, k0: usize, dpt: &mut [f32]);
    /// `acc[hd][Q] += V[k0..k0 + rows]^T P^T`, with `pt[rows][Q]`.
    fn add_pv(
        &self,
        kvh: usize,
        k0: usize,
        rows: usize,
        pt: &[f32],
        acc: &mut [f32],
        scratch: &mut Self::Scratch,
    );
    /// With `pt = P^T` and `dst = dS^T` (`[K][Q]` each): `dv[k0..] += P^T dO_b`,
    /// `dk[k0..] += dS^T Q_b` (rows of `hd_pad`), `dqt[hd][Q] += K^T dS^T`.
    #[allow(clippy::too_many_arguments)]
    fn add_grads(
        &self,
        h: usize,
        kvh: usize,
        qb: usize,
        k0: usize,
        pt: &[f32],
        dst: &[f32],
        dk: &mut [f32],
        dv: &mut [f32],
        dqt: &mut [f32],
        scratch: &mut Self::Scratch,
    );
}

/// f32 operands (see [`HeadLayout`] for the shapes); the backward's are
/// empty in a forward-only set and the other way round.
pub(super) struct F32Tiles {
    l: HeadLayout,
    /// `[n_head][n_pad / Q][hd][Q]`
    q_cols: Vec<f32>,
    do_cols: Vec<f32>,
    /// `[n_head][n_pad][hd_pad]`
    q_rows: Vec<f32>,
    do_rows: Vec<f32>,
    /// `[n_head_kv][n_pad][hd_pad]`
    k_rows: Vec<f32>,
    v_rows: Vec<f32>,
    /// `[n_head_kv][n_pad / K][hd][K]`
    kt: Vec<f32>,
    vt: Vec<f32>,
}

impl F32Tiles {
    pub(super) fn forward(
        l: HeadLayout,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        heads: (usize, usize),
    ) -> Self {
        F32Tiles {
            q_cols: l.cols(q, heads.0, Q),
            k_rows: l.rows(k, heads.1),
            vt: l.cols(v, heads.1, K),
            do_cols: Vec::new(),
            q_rows: Vec::new(),
            do_rows: Vec::new(),
            v_rows: Vec::new(),
            kt: Vec::new(),
            l,
        }
    }

    pub(super) fn backward(
        l: HeadLayout,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dout: &[f32],
        heads: (usize, usize),
    ) -> Self {
        F32Tiles {
            q_cols: l.cols(q, heads.0, Q),
            do_cols: l.cols(dout, heads.0, Q),
            q_rows: l.rows(q, heads.0),
            do_rows: l.rows(dout, heads.0),
            k_rows: l.rows(k, heads.1),
            v_rows: l.rows(v, heads.1),
            kt: l.cols(k, heads.1, K),
            vt: Vec::new(),
            l,
        }
    }

    /// Head `h`'s block of a `[heads][n_pad][hd_pad]` layout, from row `t`.
    fn rows_at<'a>(&self, buf: &'a [f32], h: usize, t: usize) -> &'a [f32] {
        let n = self.l.n_pad * self.l.hd_pad;
        &buf[h * n..(h + 1) * n][t * self.l.hd_pad..]
    }

    /// Tile `t0 / tile` of head `h` in a `[heads][n_pad / tile][hd][tile]` layout.
    fn cols_at<'a>(&self, buf: &'a [f32], h: usize, t0: usize, tile: usize) -> &'a [f32] {
        &buf[(h * self.l.n_pad + t0) * self.l.hd..][..self.l.hd * tile]
    }
}

impl Tiles for F32Tiles {
    type Scratch = ();

    fn scratch(&self) {}

    fn scores(&self, h: usize, kvh: usize, qb: usize, k0: usize, rows: usize, st: &mut [f32]) {
        let (a, b) = (
            self.rows_at(&self.k_rows, kvh, k0),
            self.cols_at(&self.q_cols, h, qb * Q, Q),
        );
        let hd = self.l.hd;
        assert!(
            a.len() >= (rows - 1) * self.l.hd_pad + hd && b.len() == hd * Q && st.len() >= rows * Q
        );
        // SAFETY: extents asserted just above (Q is a multiple of NR).
        unsafe {
            gemm_tile(
                rows,
                Q,
                hd,
                a.as_ptr(),
                self.l.hd_pad,
                b.as_ptr(),
                Q,
                st.as_mut_ptr(),
                Q,
                false,
            )
        }
    }

    fn dprobs(&self, h: usize, kvh: usize, qb: usize, k0: usize, dpt: &mut [f32]) {
        let (a, b) = (
            self.rows_at(&self.v_rows, kvh, k0),
            self.cols_at(&self.do_cols, h, qb * Q, Q),
        );
        let hd = self.l.hd;
        assert!(a.len() >= (K - 1) * self.l.hd_pad + hd && b.len() == hd * Q && dpt.len() >= K * Q);
        // SAFETY: extents asserted just above.
        unsafe {
            gemm_tile(
                K,
                Q,
                hd,
                a.as_ptr(),
                self.l.hd_pad,
                b.as_ptr(),
                Q,
                dpt.as_mut_ptr(),
                Q,
                false,
            )
        }
    }

    fn add_pv(&self, kvh: usize, k0: usize, rows: usize, pt: &[f32], acc: &mut [f32], _: &mut ()) {
        let a = self.cols_at(&self.vt, kvh, k0, K);
        let hd = self.l.hd;
        assert!(a.len() == hd * K && rows <= K && pt.len() >= rows * Q && acc.len() >= hd * Q);
        // SAFETY: extents asserted just above.
        unsafe {
            gemm_tile(
                hd,
                Q,
                rows,
                a.as_ptr(),
                K,
                pt.as_ptr(),
                Q,
                acc.as_mut_ptr(),
                Q,
                true,
            )
        }
    }

    fn add_grads(
        &self,
        h: usize,
        kvh: usize,
        qb: usize,
        k0: usize,
        pt: &[f32],
        dst: &[f32],
        dk: &mut [f32],
        dv: &mut [f32],
        dqt: &mut [f32],
        _: &mut (),
    ) {
        let (hd, hd_pad) = (self.l.hd, self.l.hd_pad);
        let (q_rows, do_rows) = (
            self.rows_at(&self.q_rows, h, qb * Q),
            self.rows_at(&self.do_rows, h, qb * Q),
        );
        let kt = self.cols_at(&self.kt, kvh, k0, K);
        let (dk, dv) = (&mut dk[k0 * hd_pad..], &mut dv[k0 * hd_pad..]);
        assert!(pt.len() >= K * Q && dst.len() >= K * Q && dqt.len() >= hd * Q);
        assert!(q_rows.len() >= Q * hd_pad && do_rows.len() >= Q * hd_pad);
        assert!(dk.len() >= K * hd_pad && dv.len() >= K * hd_pad);
        // SAFETY: extents asserted just above (hd_pad is a multiple of NR).
        unsafe {
            gemm_tile(
                K,
                hd_pad,
                Q,
                pt.as_ptr(),
                Q,
                do_rows.as_ptr(),
                hd_pad,
                dv.as_mut_ptr(),
                hd_pad,
                true,
            );
            gemm_tile(
                K,
                hd_pad,
                Q,
                dst.as_ptr(),
                Q,
                q_rows.as_ptr(),
                hd_pad,
                dk.as_mut_ptr(),
                hd_pad,
                true,
            );
            gemm_tile(
                hd,
                Q,
                K,
                kt.as_ptr(),
                K,
                dst.as_ptr(),
                Q,
                dqt.as_mut_ptr(),
                Q,
                true,
            );
        }
    }
}

/// What runs the bf16 products of the attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Bf16Engine {
    /// `vdpbf16ps` (AVX-512 BF16).
    Vdp,
    /// AMX-BF16 tiles, where the kernel set puts the bf16 products on them.
    #[cfg(target_arch = "x86_64")]
    Amx,
    /// The tiles' software model, for testing the tile path anywhere.
    #[cfg(test)]
    AmxModel,
}

/// `c[m x n] (+)= a[m x kp pairs] b[kp pairs x n]`: the signature and the
/// contract of [`gemm_tile_bf16`], which [`amx::gemm_tile`] shares.
type GemmTile =
    unsafe fn(usize, usize, usize, *const u32, usize, *const u32, usize, *mut f32, usize, bool);

impl Bf16Engine {
    /// The engine's tile product.
    fn gemm(self) -> GemmTile {
        match self {
            Bf16Engine::Vdp => gemm_tile_bf16,
            #[cfg(target_arch = "x86_64")]
            Bf16Engine::Amx => amx::gemm_tile::<amx::Hw>,
            #[cfg(test)]
            Bf16Engine::AmxModel => amx::gemm_tile::<amx::Model>,
        }
    }

    /// This CPU's: the tiles where the kernel set runs bf16 on them.
    pub(super) fn for_cpu() -> Bf16Engine {
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::kernels().bf16_amx {
            return Bf16Engine::Amx;
        }
        Bf16Engine::Vdp
    }
}

/// bf16 operands as `vdpbf16ps` pairs (`u32`: two consecutive values of the
/// reduction index, low half first). Pairs along the head dimension (`hdp`
/// of them per row) for products that sum over it, pairs of consecutive
/// positions for products that sum over tokens.
pub(super) struct Bf16Tiles {
    /// The engine's tile product ([`Bf16Engine::gemm`]).
    gemm: GemmTile,
    l: HeadLayout,
    /// `hd / 2` rounded up.
    hdp: usize,
    /// `hd` rounded up to whole micro-kernel panels ([`NB`]).
    hdb: usize,
    /// `[n_head][n_pad / Q][hdp][Q]`: Q^T per block, pairs along dims.
    q_cols: Vec<u32>,
    do_cols: Vec<u32>,
    /// `[n_head][n_pad / 2][hdb]`: pairs of consecutive tokens.
    q_rows: Vec<u32>,
    do_rows: Vec<u32>,
    /// `[n_head_kv][n_pad][hdp]`: pairs along dims.
    k_rows: Vec<u32>,
    v_rows: Vec<u32>,
    /// `[n_head_kv][n_pad / K][hd][K / 2]`: K^T per tile, pairs of tokens.
    kt: Vec<u32>,
    vt: Vec<u32>,
}

/// Per-task packs of a probability tile: `[K][Q / 2]` pairs along queries
/// (a left operand), `[K / 2][Q]` pairs along keys (a right operand).
pub(super) struct Bf16Scratch {
    along_q: Vec<u32>,
    along_k: Vec<u32>,
}

impl Bf16Tiles {
    pub(super) fn forward(
        engine: Bf16Engine,
        l: HeadLayout,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        heads: (usize, usize),
    ) -> Self {
        let mut t = Bf16Tiles::empty(engine, l);
        t.q_cols = t.dim_pair_cols(q, heads.0);
        t.k_rows = t.dim_pair_rows(k, heads.1);
        t.vt = t.tok_pair_cols(v, heads.1);
        t
    }

    pub(super) fn backward(
        engine: Bf16Engine,
        l: HeadLayout,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dout: &[f32],
        heads: (usize, usize),
    ) -> Self {
        let mut t = Bf16Tiles::empty(engine, l);
        t.q_cols = t.dim_pair_cols(q, heads.0);
        t.do_cols = t.dim_pair_cols(dout, heads.0);
        t.q_rows = t.tok_pair_rows(q, heads.0);
        t.do_rows = t.tok_pair_rows(dout, heads.0);
        t.k_rows = t.dim_pair_rows(k, heads.1);
        t.v_rows = t.dim_pair_rows(v, heads.1);
        t.kt = t.tok_pair_cols(k, heads.1);
        t
    }

    fn empty(engine: Bf16Engine, l: HeadLayout) -> Self {
        Bf16Tiles {
            gemm: engine.gemm(),
            hdp: l.hd.div_ceil(2),
            hdb: l.hd.div_ceil(NB) * NB,
            l,
            q_cols: Vec::new(),
            do_cols: Vec::new(),
            q_rows: Vec::new(),
            do_rows: Vec::new(),
            k_rows: Vec::new(),
            v_rows: Vec::new(),
            kt: Vec::new(),
            vt: Vec::new(),
        }
    }

    /// `[heads][n_pad][hdp]`: each token's values as pairs along dims.
    fn dim_pair_rows(&self, src: &[f32], heads: usize) -> Vec<u32> {
        let (l, hdp) = (self.l, self.hdp);
        let n_tok = l.n_tok(src, heads);
        per_head(heads, l.n_pad * hdp, |h, out| {
            for t in 0..n_tok {
                to_pairs(l.row(src, heads, h, t), &mut out[t * hdp..][..hdp]);
            }
        })
    }

    /// `[heads][n_pad / Q][hdp][Q]`: each query block transposed, pairs
    /// along dims.
    fn dim_pair_cols(&self, src: &[f32], heads: usize) -> Vec<u32> {
        let (l, hdp) = (self.l, self.hdp);
        let n_tok = l.n_tok(src, heads);
        per_head(heads, l.n_pad * hdp, |h, out| {
            // Rounded as one row of pairs, then spread down the column.
            let mut pairs = vec![0u32; hdp];
            for t in 0..n_tok {
                to_pairs(l.row(src, heads, h, t), &mut pairs);
                let base = t / Q * hdp * Q + t % Q;
                for (p, &v) in pairs.iter().enumerate() {
                    out[base + p * Q] = v;
                }
            }
        })
    }

    /// `[heads][n_pad / 2][hdb]`: tokens `2p, 2p + 1` as one row of pairs.
    fn tok_pair_rows(&self, src: &[f32], heads: usize) -> Vec<u32> {
        let (l, hdb) = (self.l, self.hdb);
        let n_tok = l.n_tok(src, heads);
        per_head(heads, l.n_pad / 2 * hdb, |h, out| {
            for p in 0..n_tok.div_ceil(2) {
                let lo = l.row(src, heads, h, 2 * p);
                let hi = (2 * p + 1 < n_tok).then(|| l.row(src, heads, h, 2 * p + 1));
                interleave_pairs(lo, hi, &mut out[p * hdb..][..l.hd]);
            }
        })
    }

    /// `[heads][n_pad / K][hd][K / 2]`: each key tile transposed, pairs of
    /// consecutive tokens.
    fn tok_pair_cols(&self, src: &[f32], heads: usize) -> Vec<u32> {
        let (l, hd) = (self.l, self.l.hd);
        let n_tok = l.n_tok(src, heads);
        per_head(heads, l.n_pad / 2 * hd, |h, out| {
            // Each pair of rows is rounded 16 values at a time into `row`
            // (AVX-512 BF16), then spread down its column, rather than
            // rounded one value at a time in scalar code.
            let mut row = vec![0u32; hd];
            for p in 0..n_tok.div_ceil(2) {
                let t = 2 * p;
                let lo = l.row(src, heads, h, t);
                let hi = (t + 1 < n_tok).then(|| l.row(src, heads, h, t + 1));
                interleave_pairs(lo, hi, &mut row);
                let base = t / K * hd * K / 2 + t % K / 2;
                for (d, &v) in row.iter().enumerate() {
                    out[base + d * K / 2] = v;
                }
            }
        })
    }

    /// Each of the first `rows` rows of `pt` (`Q` values) as `Q / 2` pairs.
    fn pack_along_q(pt: &[f32], rows: usize, out: &mut [u32]) {
        for (o, row) in out
            .chunks_exact_mut(Q / 2)
            .zip(pt.chunks_exact(Q))
            .take(rows)
        {
            to_pairs(row, o);
        }
    }

    /// Rows `2p, 2p + 1` of `pt` (`rows` of them; an odd count ends with a
    /// zero row) as one row of pairs.
    fn pack_along_k(pt: &[f32], rows: usize, out: &mut [u32]) {
        for (p, o) in out.chunks_exact_mut(Q).take(rows.div_ceil(2)).enumerate() {
            let lo = &pt[2 * p * Q..][..Q];
            let hi = (2 * p + 1 < rows).then(|| &pt[(2 * p + 1) * Q..][..Q]);
            interleave_pairs(lo, hi, o);
        }
    }
}

impl Tiles for Bf16Tiles {
    type Scratch = Bf16Scratch;

    fn scratch(&self) -> Bf16Scratch {
        Bf16Scratch {
            along_q: vec![0; K * Q / 2],
            along_k: vec![0; K / 2 * Q],
        }
    }

    fn scores(&self, h: usize, kvh: usize, qb: usize, k0: usize, rows: usize, st: &mut [f32]) {
        let (n_pad, hdp) = (self.l.n_pad, self.hdp);
        let a = &self.k_rows[(kvh * n_pad + k0) * hdp..];
        let b = &self.q_cols[(h * n_pad + qb * Q) * hdp..][..hdp * Q];
        assert!(a.len() >= rows * hdp && st.len() >= rows * Q);
        // SAFETY: extents asserted just above (Q == NB); the callers built
        // this set only where bf16 is available.
        unsafe {
            (self.gemm)(
                rows,
                Q,
                hdp,
                a.as_ptr(),
                hdp,
                b.as_ptr(),
                Q,
                st.as_mut_ptr(),
                Q,
                false,
            )
        }
    }

    fn dprobs(&self, h: usize, kvh: usize, qb: usize, k0: usize, dpt: &mut [f32]) {
        let (n_pad, hdp) = (self.l.n_pad, self.hdp);
        let a = &self.v_rows[(kvh * n_pad + k0) * hdp..];
        let b = &self.do_cols[(h * n_pad + qb * Q) * hdp..][..hdp * Q];
        assert!(a.len() >= K * hdp && dpt.len() >= K * Q);
        // SAFETY: as in `scores`.
        unsafe {
            (self.gemm)(
                K,
                Q,
                hdp,
                a.as_ptr(),
                hdp,
                b.as_ptr(),
                Q,
                dpt.as_mut_ptr(),
                Q,
                false,
            )
        }
    }

    fn add_pv(
        &self,
        kvh: usize,
        k0: usize,
        rows: usize,
        pt: &[f32],
        acc: &mut [f32],
        s: &mut Bf16Scratch,
    ) {
        let (n_pad, hd) = (self.l.n_pad, self.l.hd);
        let a = &self.vt[(kvh * n_pad + k0) / 2 * hd..][..hd * K / 2];
        let kp = rows.div_ceil(2);
        Self::pack_along_k(pt, rows, &mut s.along_k);
        assert!(acc.len() >= hd * Q);
        // SAFETY: a holds hd rows of K / 2 >= kp pairs; along_k holds kp rows
        // of Q pairs; acc hd rows of Q.
        unsafe {
            (self.gemm)(
                hd,
                Q,
                kp,
                a.as_ptr(),
                K / 2,
                s.along_k.as_ptr(),
                Q,
                acc.as_mut_ptr(),
                Q,
                true,
            )
        }
    }

    fn add_grads(
        &self,
        h: usize,
        kvh: usize,
        qb: usize,
        k0: usize,
        pt: &[f32],
        dst: &[f32],
        dk: &mut [f32],
        dv: &mut [f32],
        dqt: &mut [f32],
        s: &mut Bf16Scratch,
    ) {
        let (n_pad, hd, hd_pad, hdb) = (self.l.n_pad, self.l.hd, self.l.hd_pad, self.hdb);
        let i0 = qb * Q;
        let q_rows = &self.q_rows[(h * n_pad + i0) / 2 * hdb..][..Q / 2 * hdb];
        let do_rows = &self.do_rows[(h * n_pad + i0) / 2 * hdb..][..Q / 2 * hdb];
        let kt = &self.kt[(kvh * n_pad + k0) / 2 * hd..][..hd * K / 2];
        let (dk, dv) = (&mut dk[k0 * hd_pad..], &mut dv[k0 * hd_pad..]);
        assert!(dk.len() >= K * hd_pad && dv.len() >= K * hd_pad && dqt.len() >= hd * Q);
        // SAFETY (all three): the packs hold K rows of Q / 2 pairs and K / 2
        // rows of Q; q_rows/do_rows Q / 2 rows of hdb (whole panels) pairs;
        // kt hd rows of K / 2; the outputs' extents asserted just above.
        Self::pack_along_q(pt, K, &mut s.along_q);
        unsafe {
            (self.gemm)(
                K,
                hd,
                Q / 2,
                s.along_q.as_ptr(),
                Q / 2,
                do_rows.as_ptr(),
                hdb,
                dv.as_mut_ptr(),
                hd_pad,
                true,
            );
        }
        Self::pack_along_q(dst, K, &mut s.along_q);
        Self::pack_along_k(dst, K, &mut s.along_k);
        unsafe {
            (self.gemm)(
                K,
                hd,
                Q / 2,
                s.along_q.as_ptr(),
                Q / 2,
                q_rows.as_ptr(),
                hdb,
                dk.as_mut_ptr(),
                hd_pad,
                true,
            );
            (self.gemm)(
                hd,
                Q,
                K / 2,
                kt.as_ptr(),
                K / 2,
                s.along_k.as_ptr(),
                Q,
                dqt.as_mut_ptr(),
                Q,
                true,
            );
        }
    }
}
