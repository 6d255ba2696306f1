//! The bf16 variants of [`super::matmul_wt`] and [`super::matmul_w`]: both
//! operands rounded to bf16 (round to nearest even), products accumulated in
//! f32 by AVX-512 BF16's `vdpbf16ps`, which does two multiply-adds per f32
//! lane and instruction, twice the rate of an f32 FMA on the same unit
//! (measured on the Zen 4 development machine: the same instructions per
//! second for both).
//!
//! Rounding an operand to bf16 costs at most 2^-9 of its value, less than the
//! 4-6-bit quantization of the base weights it multiplies; sums stay f32.
//!
//! Layout: a pair of consecutive reduction indices `(2q, 2q + 1)` is one u32
//! (low half first), which is what `vdpbf16ps` multiplies lane by lane. The
//! activations are converted once per call (a row-major bf16 row is already a
//! row of pairs); weight tiles are packed `[kc / 2][NB]` pairs, once per
//! panel. Unlike the f32 path, a panel is packed for the whole reduction
//! (up to [`PACK_BYTES`]), not in L1-sized chunks: each output tile then gets
//! its whole sum in registers in one micro-kernel call, where with chunks
//! every chunk after the first reloaded the tile from wherever it had been
//! evicted to while all the other rows ran (about 10 % of the kernel's
//! samples, on those loads). The packed panel stays in L2, and `vdpbf16ps`
//! needs only 128 bytes of it per 16 instructions.

use super::amx;
use super::pack::transpose_words;
use super::weights::PREFETCH_ROWS;
use super::{row_split, Weights, KC};
use crate::cpu::Isa;
use crate::parallel::SharedOut;
use rayon::prelude::*;

/// Activation rows per micro-kernel call: with two columns of registers,
/// 16 independent accumulators hide the latency of `vdpbf16ps`.
const MR: usize = 8;
/// Output columns per micro-kernel call: two zmm registers per row, so each
/// broadcast activation pair feeds two `vdpbf16ps` (16 columns: 1.5x the
/// f32 kernel; 32: 2x).
pub(crate) const NB: usize = 32;
/// Panels of NB weight rows per rayon task: 64 rows, as in the f32 path.
const PANELS_PER_TASK: usize = 2;
/// Packed weights per task at most: half of a 1 MiB L2 (32 columns of 8192
/// reduction values for `x W^T`). Longer reductions are cut into balanced
/// chunks of at most this size.
const PACK_BYTES: usize = 512 << 10;
/// Inputs of a weight panel decoded and rounded at a time before they are
/// transposed into it ([`pack_panel`]): 16 rows' pairs take 8 KiB.
pub(crate) const PACK_SEG: usize = KC;

/// Whether this CPU runs the bf16 kernels (AVX-512F and AVX-512 BF16): the
/// kernel set's `bf16` row.
pub fn available() -> bool {
    crate::cpu::kernels().bf16 == Some(Isa::Avx512Bf16)
}

/// f32 -> bf16, round to nearest even (finite inputs; the matmul never sees
/// NaN from valid weights and activations).
#[inline]
pub fn to_bf16(v: f32) -> u16 {
    let b = v.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 -> f32 (exact).
#[inline]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Two values rounded to bf16 as one `vdpbf16ps` operand lane (`lo` first).
#[inline]
pub(crate) fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

/// Consecutive values of `v` as pairs; an odd count ends with a zero.
#[inline]
fn pair_at(v: &[f32], q: usize) -> u32 {
    pair(v[2 * q], v.get(2 * q + 1).copied().unwrap_or(0.0))
}

/// `src` rounded to bf16 as pairs into `out` (`src.len().div_ceil(2)`
/// values; an odd count ends with a zero): 32 values per conversion
/// instruction where the CPU has AVX-512 BF16, with the same rounding (to
/// nearest even) as [`to_bf16`], one at a time elsewhere (the AMX kernel's
/// software model runs in tests on any CPU).
pub(crate) fn to_pairs(src: &[f32], out: &mut [u32]) {
    debug_assert_eq!(out.len(), src.len().div_ceil(2));
    let whole = if available() { src.len() / 32 * 32 } else { 0 };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512 BF16 is present wherever `whole` > 0; chunks are in
    // bounds.
    unsafe {
        to_pairs_avx512(&src[..whole], &mut out[..whole / 2]);
    }
    for (q, o) in out.iter_mut().enumerate().skip(whole / 2) {
        *o = pair_at(src, q);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn to_pairs_avx512(src: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    for (s, o) in src.chunks_exact(32).zip(out.chunks_exact_mut(16)) {
        let lo = _mm512_loadu_ps(s.as_ptr());
        let hi = _mm512_loadu_ps(s.as_ptr().add(16));
        // The second operand fills the low half: values in memory order.
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(o.as_mut_ptr().cast(), v);
    }
}

/// `out[j] = pair(lo[j], hi[j])` (`hi` absent: zeros), as [`pair`] does one
/// at a time: two rows interleaved into one row of pairs (the attention
/// kernels' operands that sum over tokens): 16 at a time where the CPU has
/// AVX-512 BF16, one at a time elsewhere (the AMX kernels' software model
/// runs in tests on any CPU).
pub(crate) fn interleave_pairs(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
    debug_assert!(lo.len() == out.len() && hi.is_none_or(|h| h.len() == lo.len()));
    let whole = if available() { lo.len() / 16 * 16 } else { 0 };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512 BF16 is present wherever `whole` > 0; chunks are in
    // bounds.
    unsafe {
        interleave_pairs_avx512(&lo[..whole], hi.map(|h| &h[..whole]), &mut out[..whole]);
    }
    for j in whole..lo.len() {
        out[j] = pair(lo[j], hi.map_or(0.0, |h| h[j]));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn interleave_pairs_avx512(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
    use std::arch::x86_64::*;
    for (j, o) in out.chunks_exact_mut(16).enumerate() {
        // Round to bf16 (to nearest even, as to_bf16), widen each to the
        // low half of a u32 lane, and put hi's in the high half.
        let l: __m256i =
            std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(lo.as_ptr().add(16 * j))));
        let mut v = _mm512_cvtepu16_epi32(l);
        if let Some(hi) = hi {
            let h: __m256i =
                std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(hi.as_ptr().add(16 * j))));
            v = _mm512_or_si512(v, _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
        }
        _mm512_storeu_si512(o.as_mut_ptr().cast(), v);
    }
}

/// The reduction cut into as few chunks of at most `max` values as
/// possible, of equal length (a multiple of `align`, the weight format's
/// block, so chunks start on block boundaries): 9000 = 4504 + 4496 with
/// `max` 8192, not 8192 + 808, whose short last chunk would pay a whole pass
/// of loads and stores of the output tile for a tenth of the work.
pub(crate) fn balanced_chunk(n: usize, align: usize, max: usize) -> usize {
    let align = align.max(2); // whole pairs
    let n_chunks = n.div_ceil(max.max(align)).max(1);
    n.div_ceil(n_chunks).div_ceil(align) * align
}

/// Where each chunk of a reduction of `n` values starts (one empty chunk
/// when `n` is 0, so a low-rank term still has a pass to ride in).
pub(crate) fn chunk_starts(n: usize, chunk: usize) -> impl Iterator<Item = usize> {
    (0..n.max(1)).step_by(chunk.max(1))
}

/// The reduction chunk of `x W^T` in bf16: at most [`PACK_BYTES`] of a
/// packed panel, whole blocks of the weight format.
fn wt_chunk(w: &Weights) -> usize {
    balanced_chunk(w.n_cols(), w.ty().block_len(), PACK_BYTES / (4 * NB) * 2)
}

/// The reduction chunk of `x W` in bf16: at most [`PACK_BYTES`] of a
/// group's tile, at least [`KC`] rows.
fn w_chunk(w: &Weights) -> usize {
    balanced_chunk(
        w.n_rows(),
        2,
        (PACK_BYTES / (4 * w.group_width()) * 2).max(KC),
    )
}

/// Panics unless the low-rank term fits a product of `n_tok` rows with
/// `n_other` values on the factor's other side (`n_out` of `x W^T`,
/// `n_cols` of `x W`) and rides in one chunk (`rank <= KC`).
pub(crate) fn check_low_rank(lr: &LowRank, n_tok: usize, n_other: usize, what: &str) {
    assert!(
        lr.rank <= KC && lr.act.len() == n_tok * lr.rank && lr.factor.len() == n_other * lr.rank,
        "{what}: low-rank term shapes"
    );
}

/// `y = x W^T` in bf16 (see the module). Same shapes and contract as
/// [`super::matmul_wt`]. Panics if the CPU lacks the instructions
/// (check [`available`]).
pub fn matmul_wt_bf16(x: &[f32], n_tok: usize, w: &Weights, y: &mut [f32]) {
    matmul_wt_bf16_plus(x, n_tok, w, None, y)
}

/// A rank-`rank` term that a product takes in as `rank` more reduction
/// indices, at the cost of that many more inputs: LoRA's `(s u) B^T` in
/// [`matmul_wt_bf16_plus`], `g A` in [`matmul_w_bf16_plus`].
#[derive(Clone, Copy, Debug)]
pub struct LowRank<'a> {
    /// `[n_tok, rank]` activations (scaled as wanted).
    pub act: &'a [f32],
    /// `[n_out, rank]` for `x W^T` (`B`), `[rank, n_cols]` for `x W` (`A`).
    pub factor: &'a [f32],
    /// The shared dimension (LoRA's rank).
    pub rank: usize,
}

/// Packs rows `n0..n0 + n_valid` of `w`, inputs `k0..k0 + kc`, as pairs
/// `[kc / 2][NB]`, as the bf16 kernels read them: `packed[q * NB + j]`
/// holds inputs `k0 + 2q` and `k0 + 2q + 1` of row `n0 + j` rounded to bf16
/// (an odd `kc` ends with a zero); rows past `n_valid` are zero.
///
/// [`PACK_SEG`] inputs at a time, 16 rows at a time: each row's segment is
/// decoded into `row_buf` (`PACK_SEG` values) and rounded into its row of
/// `staging` (16 rows of `PACK_SEG / 2` pairs), then the 16 rows are
/// transposed into the panel in registers, 64-byte stores. One scalar
/// store per pair into the panel's 128-byte stride took 3 % of a bf16
/// training step's samples (Zen 5).
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_panel(
    w: &Weights,
    n0: usize,
    n_valid: usize,
    k0: usize,
    kc: usize,
    packed: &mut [u32],
    row_buf: &mut [f32],
    staging: &mut [u32],
) {
    let isa = crate::cpu::kernels().gemm_f32;
    let seg_pairs = PACK_SEG / 2;
    // The valid rows are visited segment by segment (visit `v` is row
    // `v % n_valid` of segment `v / n_valid`); the hint goes PREFETCH_ROWS
    // visits ahead, into the next segment near the end of one.
    let ahead = |visit: usize| {
        let (s0, j) = (visit / n_valid.max(1) * PACK_SEG, visit % n_valid.max(1));
        if j < n_valid && s0 < kc {
            w.prefetch_segment(n0 + j, k0 + s0, PACK_SEG.min(kc - s0));
        }
    };
    (0..PREFETCH_ROWS).for_each(ahead);
    for (seg, s0) in (0..kc).step_by(PACK_SEG).enumerate() {
        let len = PACK_SEG.min(kc - s0);
        let lp = len.div_ceil(2);
        for j0 in (0..NB).step_by(16) {
            let rows = n_valid.saturating_sub(j0).min(16);
            for j in 0..rows {
                ahead(seg * n_valid + j0 + j + PREFETCH_ROWS);
                let values = &mut row_buf[..len];
                w.dequantize_segment(n0 + j0 + j, k0 + s0, values);
                to_pairs(values, &mut staging[j * seg_pairs..][..lp]);
            }
            let out = &mut packed[s0 / 2 * NB + j0..];
            transpose_words(isa, staging, seg_pairs, rows, lp, out, NB);
        }
    }
}

/// Packs the low-rank factor's rows `n0..n0 + n_valid` as [`pack_panel`]
/// packs weights, its `rank` values as `rank.div_ceil(2)` pair rows.
pub(crate) fn pack_factor(lr: &LowRank, n0: usize, n_valid: usize, packed: &mut [u32]) {
    for j in 0..NB {
        let row = (j < n_valid).then(|| &lr.factor[(n0 + j) * lr.rank..][..lr.rank]);
        for q in 0..lr.rank.div_ceil(2) {
            packed[q * NB + j] = row.map_or(0, |r| pair_at(r, q));
        }
    }
}

/// `x` (`n_tok` rows of `n`) rounded to bf16 as pairs, row after row (an
/// odd row ends with a zero), and the row stride in pairs. (64-byte
/// aligned rows ran `dy W` 10-15 % slower than the allocator's own
/// alignment on Zen 4, `cargo bench --bench train_kernels`.)
fn pairs(x: &[f32], n_tok: usize, n: usize) -> (Vec<u32>, usize) {
    let np = n.div_ceil(2);
    let mut out = vec![0u32; n_tok * np];
    if np > 0 {
        out.par_chunks_mut(np)
            .zip(x.par_chunks(n))
            .with_min_len(16)
            .for_each(|(o, row)| to_pairs(row, o));
    }
    (out, np)
}

/// `y = x W` in bf16: the backward of [`matmul_wt_bf16`] with respect to its
/// input. Same shapes and contract as [`super::matmul_w`].
pub fn matmul_w_bf16(x: &[f32], n_tok: usize, w: &Weights, y: &mut [f32]) {
    matmul_w_bf16_plus(x, n_tok, w, None, y, false)
}

/// GFLOP/s of the bf16 micro-kernel on one thread with every operand in L1
/// (an [`MR`] x [`KC`] activation block of pairs times one packed panel of
/// [`NB`] columns; on AMX tiles where the products run there, a 32 x 32
/// block, [`super::tiled::block_ceiling_gflops`]), as (best, median) like
/// the f32 kernel's [`super::micro_kernel_ceiling_gflops`]: the ceiling of
/// the bf16 products. A multiply and an add per bf16 pair element count
/// two flops, as in f32. `None` where the CPU lacks AVX-512 BF16.
#[doc(hidden)]
pub fn micro_kernel_ceiling_gflops() -> Option<(f64, f64)> {
    if !available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::kernels().bf16_amx {
        // SAFETY: the kernel set found the tiles usable here.
        return Some(unsafe { super::tiled::block_ceiling_gflops::<amx::Hw>() });
    }
    const CALLS: usize = 256;
    const KP: usize = KC / 2;
    let a = vec![pair(0.25, 0.25); MR * KP];
    let b = vec![pair(0.5, 0.5); KP * NB];
    let mut c = vec![0f32; MR * NB];
    let flop = 2.0 * (MR * NB * KC * CALLS) as f64;
    let rates = super::ceiling_trials(flop, || {
        for _ in 0..CALLS {
            // SAFETY: the CPU has the instructions (checked above); a holds
            // MR rows of KP pairs, b KP rows of NB pairs, c MR rows of NB.
            unsafe {
                let run = amx::Run {
                    a: a.as_ptr(),
                    lda: KP,
                    step: amx::TILE,
                    b: b.as_ptr(),
                    pairs: KP,
                };
                kernel::dispatch(MR, &[run], NB, c.as_mut_ptr(), NB, NB, true);
            }
        }
    });
    std::hint::black_box(&c);
    Some(rates)
}

/// Decodes weight rows `r0..r0 + kc`, columns `c0..c0 + width`, a pair of
/// rows at a time, each row's bytes asked for [`PREFETCH_ROWS`] rows
/// ahead: `pair(q, lo, hi)` gets rows `r0 + 2q` and `r0 + 2q + 1` (`hi`
/// `None` past an odd `kc`). `rows` is scratch of at least `2 * width`
/// values, split in halves. What both bf16 `x W` packings start from.
pub(crate) fn decode_row_pairs(
    w: &Weights,
    r0: usize,
    kc: usize,
    c0: usize,
    width: usize,
    rows: &mut [f32],
    mut pair: impl FnMut(usize, &[f32], Option<&[f32]>),
) {
    let ahead = |r: usize| {
        if r < kc {
            w.prefetch_segment(r0 + r, c0, width);
        }
    };
    (0..PREFETCH_ROWS).for_each(ahead);
    let (lo, hi) = rows.split_at_mut(rows.len() / 2);
    let (lo, hi) = (&mut lo[..width], &mut hi[..width]);
    for q in 0..kc.div_ceil(2) {
        ahead(2 * q + PREFETCH_ROWS);
        ahead(2 * q + 1 + PREFETCH_ROWS);
        w.dequantize_segment(r0 + 2 * q, c0, lo);
        let has_hi = 2 * q + 1 < kc;
        if has_hi {
            w.dequantize_segment(r0 + 2 * q + 1, c0, hi);
        }
        pair(q, lo, has_hi.then_some(&*hi));
    }
}

/// Packs weight rows `r0..r0 + kc`, columns `c0..c0 + width` of a group of
/// `gw` (the tile's row length) as `x W`'s bf16 kernels read them:
/// `tile[q * gw + j]` holds rows `r0 + 2q` and `r0 + 2q + 1` of column
/// `c0 + j` (an odd `kc` ends with a zero), columns past `width` zero.
/// `rows` is scratch of `2 * gw` values.
fn pack_group(
    w: &Weights,
    r0: usize,
    kc: usize,
    c0: usize,
    width: usize,
    tile: &mut [u32],
    rows: &mut [f32],
) {
    let gw = rows.len() / 2;
    decode_row_pairs(w, r0, kc, c0, width, rows, |q, lo, hi| {
        let dst = &mut tile[q * gw..(q + 1) * gw];
        interleave_pairs(lo, hi, &mut dst[..width]);
        dst[width..].fill(0);
    });
}

/// Packs the low-rank factor (`[rank, n_cols]`) as [`pack_group`] packs
/// weights: its `rank` rows as `rank.div_ceil(2)` pair rows of `gw`.
pub(crate) fn pack_factor_group(
    lr: &LowRank,
    n_cols: usize,
    c0: usize,
    width: usize,
    gw: usize,
    tile: &mut [u32],
) {
    for q in 0..lr.rank.div_ceil(2) {
        let lo = &lr.factor[2 * q * n_cols + c0..][..width];
        let hi = (2 * q + 1 < lr.rank).then(|| &lr.factor[(2 * q + 1) * n_cols + c0..][..width]);
        let dst = &mut tile[q * gw..(q + 1) * gw];
        interleave_pairs(lo, hi, &mut dst[..width]);
        dst[width..].fill(0);
    }
}

/// `y = x W^T + act factor^T` in bf16, the low-rank term packed as one more
/// chunk of the reduction (see [`LowRank`]; `rank <= KC`): on AMX tiles
/// where the kernel set says so ([`crate::cpu::KernelSet::bf16_amx`]),
/// else on `vdpbf16ps`.
pub fn matmul_wt_bf16_plus(
    x: &[f32],
    n_tok: usize,
    w: &Weights,
    low_rank: Option<LowRank>,
    y: &mut [f32],
) {
    assert!(available(), "matmul_wt_bf16: this CPU has no AVX-512 BF16");
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::kernels().bf16_amx {
        return super::tiled::matmul_wt::<amx::Hw>(x, n_tok, w, low_rank, y);
    }
    matmul_wt_dot(x, n_tok, w, low_rank, y)
}

/// `y (+)= x W + act factor` in bf16 (`factor` is `A`, `[rank, n_cols]`),
/// the low-rank term packed as one more chunk of the reduction; with
/// `accumulate` the result is added into `y`. AMX tiles or `vdpbf16ps`, as
/// [`matmul_wt_bf16_plus`].
pub fn matmul_w_bf16_plus(
    x: &[f32],
    n_tok: usize,
    w: &Weights,
    low_rank: Option<LowRank>,
    y: &mut [f32],
    accumulate: bool,
) {
    assert!(available(), "matmul_w_bf16: this CPU has no AVX-512 BF16");
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::kernels().bf16_amx {
        return super::tiled::matmul_w::<amx::Hw>(x, n_tok, w, low_rank, y, accumulate);
    }
    matmul_w_dot(x, n_tok, w, low_rank, y, accumulate)
}

/// `row_split`'s rows rounded up to whole calls of `rows`: a task's last
/// call would otherwise compute rows it throws away.
pub(crate) fn split_rows(n_tok: usize, n_col_tasks: usize, rows: usize) -> (usize, usize) {
    let (_, per_task) = row_split(n_tok, n_col_tasks);
    let per_task = per_task.div_ceil(rows) * rows;
    (n_tok.div_ceil(per_task).max(1), per_task)
}

/// The two runs of a block's left operand: the chunk's pairs, then the
/// low-rank term's after the last chunk. Their `a` is set per block.
#[derive(Clone, Copy)]
struct Runs {
    runs: [amx::Run; 2],
    len: usize,
}

impl Runs {
    /// The same runs `j` columns on in B.
    fn shifted(&self, j: usize) -> Runs {
        let mut r = *self;
        r.runs
            .iter_mut()
            .for_each(|run| run.b = run.b.wrapping_add(j));
        r
    }

    /// The runs with their left operands at `main` and `tail`.
    fn at(&mut self, main: *const u32, tail: Option<*const u32>) -> &[amx::Run] {
        self.runs[0].a = main;
        if let Some(t) = tail {
            self.runs[1].a = t;
        }
        &self.runs[..self.len]
    }
}

/// `x W^T (+ act factor^T)` on `vdpbf16ps`: the output columns in panels of
/// [`NB`] weight rows, [`PANELS_PER_TASK`] a task (rows split too when
/// there are few), each panel packed per chunk of the reduction
/// ([`pack_panel`]) and multiplied by every activation row of the task.
fn matmul_wt_dot(x: &[f32], n_tok: usize, w: &Weights, low_rank: Option<LowRank>, y: &mut [f32]) {
    let (n_out, n_in) = (w.n_rows(), w.n_cols());
    assert_eq!(x.len(), n_tok * n_in, "matmul_wt_bf16: x shape");
    assert_eq!(y.len(), n_tok * n_out, "matmul_wt_bf16: y shape");
    if n_tok == 0 || n_out == 0 {
        return;
    }
    let (xp, lda) = pairs(x, n_tok, n_in);
    let chunk = wt_chunk(w);
    let extra = low_rank.map(|lr| {
        check_low_rank(&lr, n_tok, n_out, "matmul_wt_bf16");
        (lr, pairs(lr.act, n_tok, lr.rank))
    });
    let lr_rows = extra.as_ref().map_or(0, |(lr, _)| lr.rank.div_ceil(2));
    let n_panels = n_out.div_ceil(NB);
    let n_col_tasks = n_panels.div_ceil(PANELS_PER_TASK);
    let (n_row_tasks, rows_per_task) = split_rows(n_tok, n_col_tasks, MR);
    let out = SharedOut::new(y);
    (0..n_col_tasks * n_row_tasks)
        .into_par_iter()
        .for_each_init(
            || {
                (
                    vec![0u32; (chunk.div_ceil(2) + lr_rows) * NB],
                    vec![0f32; PACK_SEG],
                    vec![0u32; 16 * PACK_SEG / 2],
                )
            },
            |(packed, row_buf, staging), task| {
                let (task, row_task) = (task / n_row_tasks, task % n_row_tasks);
                let t_first = row_task * rows_per_task;
                let t_end = (t_first + rows_per_task).min(n_tok);
                let first = task * PANELS_PER_TASK;
                for panel in first..(first + PANELS_PER_TASK).min(n_panels) {
                    let n0 = panel * NB;
                    let n_valid = NB.min(n_out - n0);
                    for k0 in chunk_starts(n_in, chunk) {
                        let kc = chunk.min(n_in - k0);
                        let kp = kc.div_ceil(2);
                        pack_panel(w, n0, n_valid, k0, kc, packed, row_buf, staging);
                        let main = amx::Run {
                            a: std::ptr::null(),
                            lda,
                            step: amx::TILE,
                            b: packed.as_ptr(),
                            pairs: kp,
                        };
                        let mut runs = Runs {
                            runs: [main; 2],
                            len: 1,
                        };
                        // The low-rank term's factor rows follow the last
                        // chunk's: one more run of pairs of the same sum.
                        let tail = match &extra {
                            Some((lr, (ap, ld_act))) if k0 + kc >= n_in => {
                                let rows = &mut packed[kp * NB..];
                                pack_factor(lr, n0, n_valid, rows);
                                runs.runs[1] = amx::Run {
                                    a: std::ptr::null(),
                                    lda: *ld_act,
                                    step: amx::TILE,
                                    b: rows.as_ptr(),
                                    pairs: lr_rows,
                                };
                                runs.len = 2;
                                Some((&ap[..], *ld_act))
                            }
                            _ => None,
                        };
                        for t0 in (t_first..t_end).step_by(MR) {
                            let main = xp[t0 * lda + k0 / 2..].as_ptr();
                            let tail = tail.map(|(ap, ld)| ap[t0 * ld..].as_ptr());
                            // SAFETY: the CPU has AVX-512 BF16 (asserted by
                            // the caller); the activation pairs hold rows
                            // t0..t_end from pair k0 / 2, the packed runs
                            // their pair rows; y's columns n0..n0 + n_valid
                            // of these rows belong to this task alone.
                            unsafe {
                                kernel::dispatch(
                                    MR.min(t_end - t0),
                                    runs.at(main, tail),
                                    NB,
                                    out.get().add(t0 * n_out + n0),
                                    n_out,
                                    n_valid,
                                    k0 > 0,
                                );
                            }
                        }
                    }
                }
            },
        );
}

/// `x W (+ act factor)` on `vdpbf16ps`: the output columns in groups of
/// whole blocks ([`Weights::group_width`]), each decoded per chunk of the
/// reduction into a tile of pairs ([`pack_group`]) whose 32-column slices
/// are multiplied by every row of the task.
fn matmul_w_dot(
    x: &[f32],
    n_tok: usize,
    w: &Weights,
    low_rank: Option<LowRank>,
    y: &mut [f32],
    accumulate: bool,
) {
    let (n_red, n_cols) = (w.n_rows(), w.n_cols());
    assert_eq!(x.len(), n_tok * n_red, "matmul_w_bf16: x shape");
    assert_eq!(y.len(), n_tok * n_cols, "matmul_w_bf16: y shape");
    if n_tok == 0 || n_cols == 0 {
        return;
    }
    let (xp, lda) = pairs(x, n_tok, n_red);
    let gw = w.group_width();
    let chunk = w_chunk(w);
    let extra = low_rank.map(|lr| {
        check_low_rank(&lr, n_tok, n_cols, "matmul_w_bf16");
        (lr, pairs(lr.act, n_tok, lr.rank))
    });
    let lr_rows = extra.as_ref().map_or(0, |(lr, _)| lr.rank.div_ceil(2));
    let n_groups = n_cols.div_ceil(gw);
    let (n_row_tasks, rows_per_task) = split_rows(n_tok, n_groups, MR);
    let out = SharedOut::new(y);
    (0..n_groups * n_row_tasks).into_par_iter().for_each_init(
        || {
            (
                vec![0u32; (chunk.div_ceil(2) + lr_rows) * gw],
                vec![0f32; 2 * gw],
            )
        },
        |(tile, rows), task| {
            let (group, row_task) = (task / n_row_tasks, task % n_row_tasks);
            let t_first = row_task * rows_per_task;
            let t_end = (t_first + rows_per_task).min(n_tok);
            let c0 = group * gw;
            let width = gw.min(n_cols - c0);
            for r0 in chunk_starts(n_red, chunk) {
                let kc = chunk.min(n_red - r0);
                let kp = kc.div_ceil(2);
                pack_group(w, r0, kc, c0, width, tile, rows);
                let main = amx::Run {
                    a: std::ptr::null(),
                    lda,
                    step: amx::TILE,
                    b: tile.as_ptr(),
                    pairs: kp,
                };
                let mut runs = Runs {
                    runs: [main; 2],
                    len: 1,
                };
                // The low-rank factor's rows follow the last chunk's.
                let tail = match &extra {
                    Some((lr, (ap, ld_act))) if r0 + kc >= n_red => {
                        let rows = &mut tile[kp * gw..];
                        pack_factor_group(lr, n_cols, c0, width, gw, rows);
                        runs.runs[1] = amx::Run {
                            a: std::ptr::null(),
                            lda: *ld_act,
                            step: amx::TILE,
                            b: rows.as_ptr(),
                            pairs: lr_rows,
                        };
                        runs.len = 2;
                        Some((&ap[..], *ld_act))
                    }
                    _ => None,
                };
                // Each block of activation rows meets every 32-column
                // slice of the tile while it is in cache: with the slices
                // outside, a chunk's rows (2.5 MB for 4864 -> 896 at
                // T = 512) streamed from L3 once per slice.
                for t0 in (t_first..t_end).step_by(MR) {
                    let main = xp[t0 * lda + r0 / 2..].as_ptr();
                    let tail = tail.map(|(ap, ld)| ap[t0 * ld..].as_ptr());
                    for j0 in (0..width).step_by(NB) {
                        let n_valid = NB.min(width - j0);
                        // This slice's columns of the tile (and of the tail).
                        let mut runs = runs.shifted(j0);
                        // SAFETY: as in matmul_wt_dot; the tile's rows hold
                        // gw >= j0 + NB pairs; y's columns c0 + j0.. belong
                        // to this task's group alone.
                        unsafe {
                            kernel::dispatch(
                                MR.min(t_end - t0),
                                runs.at(main, tail),
                                gw,
                                out.get().add(t0 * n_cols + c0 + j0),
                                n_cols,
                                n_valid,
                                r0 > 0 || accumulate,
                            );
                        }
                    }
                }
            }
        },
    );
}

/// `c[m x n] (+)= a[m x kp pairs] b[kp pairs x n]` on small dense tiles with
/// arbitrary strides, through the same micro-kernel: the bf16 building block
/// of the attention kernels.
///
/// # Safety
/// The CPU must have AVX-512 BF16 ([`available`]); `a` must be readable for
/// `m` rows of `kp` pairs (stride `lda`), `b` for `kp` rows of `n` rounded
/// up to a multiple of [`NB`] pairs (stride `ldb`), `c` writable for `m`
/// rows of `n` values (stride `ldc`).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_tile_bf16(
    m: usize,
    n: usize,
    kp: usize,
    a: *const u32,
    lda: usize,
    b: *const u32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    for j0 in (0..n).step_by(NB) {
        let n_valid = NB.min(n - j0);
        for i0 in (0..m).step_by(MR) {
            let run = amx::Run {
                a: a.add(i0 * lda),
                lda,
                step: amx::TILE,
                b: b.add(j0),
                pairs: kp,
            };
            kernel::dispatch(
                MR.min(m - i0),
                &[run],
                ldb,
                c.add(i0 * ldc + j0),
                ldc,
                n_valid,
                accumulate,
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::{amx::Run, MR, NB};
    use std::arch::x86_64::*;

    /// `C[mr x NB] (+)= sum over runs of A[mr x run.pairs] B[run's pair
    /// rows x NB]`: each run's row `i` of pairs from `a + i * lda`, its B's
    /// pair row `q` at `b + q * ldb` (a call takes one run, or two when a
    /// low-rank term follows the weights).
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512 BF16; the runs' pointers must
    /// be valid for the extents above and `c` for `mr` rows of `n_valid`
    /// values.
    pub(super) unsafe fn dispatch(
        mr: usize,
        runs: &[Run],
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        n_valid: usize,
        accumulate: bool,
    ) {
        // Monomorphized per row count so the accumulators stay in registers.
        match mr {
            8 => kernel::<8>(runs, ldb, c, ldc, n_valid, accumulate),
            7 => kernel::<7>(runs, ldb, c, ldc, n_valid, accumulate),
            6 => kernel::<6>(runs, ldb, c, ldc, n_valid, accumulate),
            5 => kernel::<5>(runs, ldb, c, ldc, n_valid, accumulate),
            4 => kernel::<4>(runs, ldb, c, ldc, n_valid, accumulate),
            3 => kernel::<3>(runs, ldb, c, ldc, n_valid, accumulate),
            2 => kernel::<2>(runs, ldb, c, ldc, n_valid, accumulate),
            _ => kernel::<1>(runs, ldb, c, ldc, n_valid, accumulate),
        }
    }

    /// `acc += A[.., run] B[run's rows]` for one run of the left operand.
    #[inline(always)]
    unsafe fn run<const R: usize>(lo: &mut [__m512; R], hi: &mut [__m512; R], r: &Run, ldb: usize) {
        for q in 0..r.pairs {
            let bp = r.b.add(q * ldb);
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(16).cast()));
            for i in 0..R {
                let av: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*r.a.add(i * r.lda + q) as i32));
                lo[i] = _mm512_dpbf16_ps(lo[i], av, b0);
                hi[i] = _mm512_dpbf16_ps(hi[i], av, b1);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn kernel<const R: usize>(
        runs: &[Run],
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        n_valid: usize,
        accumulate: bool,
    ) {
        debug_assert!(R <= MR && NB == 32);
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        for r in runs {
            run::<R>(&mut lo, &mut hi, r, ldb);
        }
        let mask = super::super::lane_mask;
        let (m0, m1) = (mask(n_valid), mask(n_valid.saturating_sub(16)));
        for i in 0..R {
            let cp = c.add(i * ldc);
            for (v, m, off) in [(lo[i], m0, 0), (hi[i], m1, 16)] {
                if m == 0 {
                    continue;
                }
                let v = if accumulate {
                    _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, cp.add(off)))
                } else {
                    v
                };
                _mm512_mask_storeu_ps(cp.add(off), m, v);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    /// Never called: [`super::available`] is false off x86-64.
    pub(super) unsafe fn dispatch(
        _: usize,
        _: &[super::amx::Run],
        _: usize,
        _: *mut f32,
        _: usize,
        _: usize,
        _: bool,
    ) {
        unreachable!("bf16 kernels need x86-64 AVX-512 BF16")
    }
}
