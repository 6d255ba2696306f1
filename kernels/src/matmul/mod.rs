//! `y = x W^T` for f32 activations and a weight matrix stored in any supported
//! format (quantized blocks straight from a memory-mapped file, or f32).
//!
//! Shapes: `x: [n_tok, n_in]`, `W: [n_out, n_in]` (row-major, as in GGUF),
//! `y: [n_tok, n_out]`, all row-major.
//!
//! How: the output columns are cut into panels of [`NR`] weight rows; for each
//! chunk of [`KC`] inputs a panel is dequantized once into an f32 tile laid out
//! `[KC][NR]` (fits in L1), and a register-blocked micro-kernel multiplies
//! [`MR`] activation rows at a time by it. Dequantization is paid once per
//! weight per call and amortized over all `n_tok` rows. Panels are spread over
//! rayon's threads; each thread writes its own output columns.
//! The AVX2/FMA micro-kernel is chosen at run time ([`micro`]); a portable one
//! is the fallback, and [`matmul_wt_scalar`] (f64, one dot product at a time)
//! is the oracle of the tests.

// The tiles run on x86-64 only; elsewhere their code is what the tile
// model's tests drive, unused by the products.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) mod amx;
pub(crate) mod bf16;
mod gemv;
mod lora;
mod micro;
mod pack;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod tiled;
mod weights;

pub use bf16::{
    available as bf16_available, from_bf16, matmul_w_bf16, matmul_w_bf16_plus, matmul_wt_bf16,
    matmul_wt_bf16_plus, micro_kernel_ceiling_gflops as bf16_micro_kernel_ceiling_gflops, to_bf16,
    LowRank,
};
pub use gemv::dot;
pub use lora::{lora_products, Outer, Project};
pub use weights::{WeightError, Weights};

use gemv::{gemv, GEMV_MAX_TOK};

use crate::cpu::kernels;
use crate::parallel::SharedOut;
use rayon::prelude::*;
use weights::PREFETCH_ROWS;

/// Weight rows per panel (two AVX2 vectors).
pub const NR: usize = 16;
/// Activation rows per micro-kernel call.
pub const MR: usize = 6;
/// Inputs per packed chunk: a multiple of every block length (1, 32, 256) so
/// chunks start on block boundaries. 256 x 16 f32 = 16 KiB, half of L1.
pub const KC: usize = 256;
/// Panels per rayon task: big enough to amortize scheduling, small enough to
/// balance two threads on the narrowest real shape (896 outputs = 56 panels).
const PANELS_PER_TASK: usize = 4;

/// The AVX-512 write mask of the first `n` of 16 f32 lanes (all 16 for
/// `n >= 16`): the ragged last panel of the AVX-512 kernels.
#[cfg(target_arch = "x86_64")]
fn lane_mask(n: usize) -> u16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

/// The arithmetic of a product with a weight matrix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 operands, f32 accumulation: the reference.
    #[default]
    F32,
    /// Operands rounded to bf16, f32 accumulation ([`matmul_wt_bf16`]):
    /// twice the multiply-adds per instruction where the CPU has AVX-512
    /// BF16, which is twice the f32 rate on AMD Zen 4 but not on Intel,
    /// whose one `vdpbf16ps` port matches its two f32 FMA ports; there the
    /// AMX tiles, where present, take the products with the weights
    /// ([`Precision::auto`] picks the faster).
    Bf16,
}

impl Precision {
    /// The faster of the two on this CPU: bf16 where its products beat the
    /// f32 ones ([`crate::cpu::KernelSet::bf16_beats_f32`]: AMD with
    /// AVX-512 BF16, Intel with AMX), else f32.
    pub fn auto() -> Precision {
        let set = kernels();
        if set.bf16.is_some() && set.bf16_beats_f32 {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }

    /// What this CPU runs when asked for `self`: bf16 falls back to f32
    /// without AVX-512 BF16.
    pub fn effective(self) -> Precision {
        match self {
            Precision::Bf16 if bf16::available() => Precision::Bf16,
            _ => Precision::F32,
        }
    }

    /// The precision a model asking for `self` gives attention's tile
    /// products: bf16 where `vdpbf16ps` beats f32 FMAs (AMD) or AMX tiles
    /// run them ([`crate::cpu::KernelSet::attention_bf16`]), f32 elsewhere
    /// (Intel's `vdpbf16ps` is slower than its f32 FMAs).
    pub fn for_attention(self) -> Precision {
        match self.effective() {
            Precision::Bf16 if kernels().attention_bf16 => Precision::Bf16,
            _ => Precision::F32,
        }
    }
}

/// `y = x W^T` in precision `p` ([`matmul_wt`] or [`matmul_wt_bf16`]; one
/// or two rows always take the f32 GEMV, which is memory-bound anyway).
pub fn matmul_wt_in(p: Precision, x: &[f32], n_tok: usize, w: &Weights, y: &mut [f32]) {
    match p.effective() {
        Precision::Bf16 if n_tok > GEMV_MAX_TOK => matmul_wt_bf16(x, n_tok, w, y),
        _ => matmul_wt(x, n_tok, w, y),
    }
}

/// `y = x W^T + act factor^T` in precision `p`: LoRA's forward
/// `x W^T + (s u) B^T` with `act = s u`, `factor = B`. The low-rank term
/// rides in the base product as `rank` more reduction indices, into the same
/// accumulators ([`matmul_wt_bf16_plus`] in bf16; in f32 one more reduction
/// of [`matmul_wt`]'s tasks), so `y` is written once (up to two rows, the
/// GEMV path, add a second product instead).
pub fn matmul_wt_plus_in(
    p: Precision,
    x: &[f32],
    n_tok: usize,
    w: &Weights,
    low_rank: Option<LowRank>,
    y: &mut [f32],
) {
    match p.effective() {
        Precision::Bf16 if n_tok > GEMV_MAX_TOK => matmul_wt_bf16_plus(x, n_tok, w, low_rank, y),
        _ => matmul_wt_with(micro::select(), x, n_tok, w, low_rank, y),
    }
}

/// `y += x W + act factor` in precision `p`: LoRA's input gradient
/// `dy W + g A` with `act = g`, `factor = A`, both reductions accumulated
/// straight into `y` ([`matmul_w_bf16_plus`] in bf16).
pub fn matmul_w_plus_acc_in(
    p: Precision,
    x: &[f32],
    n_tok: usize,
    w: &Weights,
    low_rank: Option<LowRank>,
    y: &mut [f32],
) {
    match p.effective() {
        Precision::Bf16 => matmul_w_bf16_plus(x, n_tok, w, low_rank, y, true),
        Precision::F32 => matmul_w_with(micro::select(), x, n_tok, w, low_rank, y, true),
    }
}

/// `y = x W` in precision `p` ([`matmul_w`] or [`matmul_w_bf16`]).
pub fn matmul_w_in(p: Precision, x: &[f32], n_tok: usize, w: &Weights, y: &mut [f32]) {
    match p.effective() {
        Precision::Bf16 => matmul_w_bf16(x, n_tok, w, y),
        Precision::F32 => matmul_w(x, n_tok, w, y),
    }
}

/// `y = x W^T`. Panics if the slice lengths do not match `n_tok` and `w`'s shape
/// (shapes are validated where weights are loaded; a mismatch here is a bug).
pub fn matmul_wt(x: &[f32], n_tok: usize, w: &Weights, y: &mut [f32]) {
    matmul_wt_with(micro::select(), x, n_tok, w, None, y)
}

/// `y = x W^T (+ act factor^T)`: the low-rank term is a second reduction
/// into the same accumulators, after W's (see [`matmul_wt_plus_in`]).
fn matmul_wt_with(
    kernel: micro::MicroKernel,
    x: &[f32],
    n_tok: usize,
    w: &Weights,
    low_rank: Option<LowRank>,
    y: &mut [f32],
) {
    let (n_out, n_in) = (w.n_rows(), w.n_cols());
    assert_eq!(
        x.len(),
        n_tok * n_in,
        "matmul_wt: x is not [n_tok={n_tok}, n_in={n_in}]"
    );
    assert_eq!(
        y.len(),
        n_tok * n_out,
        "matmul_wt: y is not [n_tok={n_tok}, n_out={n_out}]"
    );
    // The low-rank term as a [n_out, rank] weight matrix over `act`.
    let term = low_rank.map(|lr| {
        assert_eq!(
            lr.act.len(),
            n_tok * lr.rank,
            "matmul_wt: the low-rank act is not [n_tok={n_tok}, rank={}]",
            lr.rank
        );
        (lr.act, Weights::f32(lr.factor, n_out, lr.rank))
    });
    if n_tok == 0 || n_out == 0 {
        return;
    }
    if n_tok <= GEMV_MAX_TOK {
        gemv(x, n_tok, w, y);
        if let Some((act, factor)) = &term {
            let mut t = vec![0f32; y.len()];
            gemv(act, n_tok, factor, &mut t);
            y.iter_mut().zip(&t).for_each(|(v, d)| *v += d);
        }
        return;
    }
    if n_in == 0 {
        y.fill(0.0);
    }
    let n_panels = n_out.div_ceil(NR);
    let n_col_tasks = n_panels.div_ceil(PANELS_PER_TASK);
    let (n_row_tasks, rows_per_task) = row_split(n_tok, n_col_tasks);
    let out = SharedOut::new(y);
    (0..n_col_tasks * n_row_tasks)
        .into_par_iter()
        .for_each_init(
            // Two packed panels, [KC][NR] each: one micro-kernel call's B;
            // and the [NR][KC] rows a quantized panel is decoded into.
            || (vec![0f32; 2 * KC * NR], vec![0f32; NR * KC]),
            |(packed, row_buf), task| {
                let (task, row_task) = (task / n_row_tasks, task % n_row_tasks);
                let (t_first, t_end) = (
                    row_task * rows_per_task,
                    ((row_task + 1) * rows_per_task).min(n_tok),
                );
                let first = task * PANELS_PER_TASK;
                let last = (first + PANELS_PER_TASK).min(n_panels);
                // `C (+)= A src^T` over src's inputs, into this task's block
                // of y: W over x (C written unless n_in == 0), then the
                // low-rank factor over act (added).
                let mut reduce = |a: &[f32], src: &Weights, accumulate: bool| {
                    let n_k = src.n_cols();
                    for k0 in (0..n_k).step_by(KC) {
                        let kc = KC.min(n_k - k0);
                        for pair in (first..last).step_by(2) {
                            // This task's one or two panels from `pair` on.
                            let n0 = pair * NR;
                            let n_valid = ((last - pair).min(2) * NR).min(n_out - n0);
                            let (lo, hi) = packed.split_at_mut(KC * NR);
                            src.pack_transposed(n0, n_valid.min(NR), k0, kc, lo, row_buf);
                            if n_valid > NR {
                                src.pack_transposed(n0 + NR, n_valid - NR, k0, kc, hi, row_buf);
                            }
                            for t0 in (t_first..t_end).step_by(MR) {
                                let mr = MR.min(t_end - t0);
                                // SAFETY: rows t0..t0+mr of a (n_tok rows of
                                // n_k values, checked above) and y exist;
                                // columns n0..n0+n_valid of y belong to this
                                // task's panels only.
                                unsafe {
                                    kernel(
                                        mr,
                                        kc,
                                        a.as_ptr().add(t0 * n_k + k0),
                                        n_k,
                                        packed.as_ptr(),
                                        NR,
                                        KC * NR,
                                        out.get().add(t0 * n_out + n0),
                                        n_out,
                                        n_valid,
                                        accumulate || k0 > 0,
                                    );
                                }
                            }
                        }
                    }
                };
                reduce(x, w, false);
                if let Some((act, factor)) = &term {
                    reduce(act, factor, true);
                }
            },
        );
}

/// `y = x W`: the product with the weight matrix itself, not its transpose
/// (the backward of [`matmul_wt`] with respect to its input).
/// Shapes: `x: [n_tok, n_rows]`, `W: [n_rows, n_cols]`, `y: [n_tok, n_cols]`.
///
/// Output columns are taken in groups of whole blocks ([`Weights::group_width`]
/// values); for each chunk of [`KC`] weight rows the group is decoded once into
/// a `[KC][group]` tile whose 32-column slices feed the same micro-kernel.
pub fn matmul_w(x: &[f32], n_tok: usize, w: &Weights, y: &mut [f32]) {
    matmul_w_with(micro::select(), x, n_tok, w, None, y, false)
}

/// `y (+)= x W (+ act factor)`: the low-rank term is a second reduction
/// into the same accumulators, after W's (see [`matmul_w_plus_acc_in`]).
fn matmul_w_with(
    kernel: micro::MicroKernel,
    x: &[f32],
    n_tok: usize,
    w: &Weights,
    low_rank: Option<LowRank>,
    y: &mut [f32],
    accumulate: bool,
) {
    let (n_red, n_cols) = (w.n_rows(), w.n_cols());
    assert_eq!(
        x.len(),
        n_tok * n_red,
        "matmul_w: x is not [n_tok={n_tok}, {n_red}]"
    );
    assert_eq!(
        y.len(),
        n_tok * n_cols,
        "matmul_w: y is not [n_tok={n_tok}, {n_cols}]"
    );
    // The low-rank term as a [rank, n_cols] weight matrix under `act`.
    let term = low_rank.map(|lr| {
        assert_eq!(
            lr.act.len(),
            n_tok * lr.rank,
            "matmul_w: the low-rank act is not [n_tok={n_tok}, rank={}]",
            lr.rank
        );
        (lr.act, Weights::f32(lr.factor, lr.rank, n_cols))
    });
    if n_tok == 0 || n_cols == 0 {
        return;
    }
    if n_red == 0 && !accumulate {
        y.fill(0.0);
    }
    let gw = w.group_width();
    let n_groups = n_cols.div_ceil(gw);
    let (n_row_tasks, rows_per_task) = row_split(n_tok, n_groups);
    let out = SharedOut::new(y);
    (0..n_groups * n_row_tasks).into_par_iter().for_each_init(
        || (vec![0f32; KC * gw], vec![0f32; gw]),
        |(tile, row), task| {
            let (group, row_task) = (task / n_row_tasks, task % n_row_tasks);
            let (t_first, t_end) = (
                row_task * rows_per_task,
                ((row_task + 1) * rows_per_task).min(n_tok),
            );
            let c0 = group * gw;
            let width = gw.min(n_cols - c0);
            // `C (+)= A src` over src's rows, into this task's block of y:
            // W under x, then the low-rank factor under act (added).
            let mut reduce = |a: &[f32], src: &Weights, accumulate: bool| {
                let n_k = src.n_rows();
                for r0 in (0..n_k).step_by(KC) {
                    let kc = KC.min(n_k - r0);
                    // The group's kc rows, decoded and laid out panel by
                    // panel ([gw / NR][KC][NR]), as matmul_wt packs: a
                    // micro-kernel call then reads two contiguous 16 KiB
                    // panels. Row-major [KC][gw] (64 values a row for Q8_0)
                    // spread them over half of L1's sets at a 256-byte
                    // stride, so they did not stay in L1.
                    (0..PREFETCH_ROWS).for_each(|p| src.prefetch_segment(r0 + p, c0, width));
                    for p in 0..kc {
                        src.prefetch_segment(r0 + p + PREFETCH_ROWS, c0, width);
                        src.dequantize_segment(r0 + p, c0, &mut row[..width]);
                        row[width..].fill(0.0);
                        for (j, panel) in row.chunks_exact(NR).enumerate() {
                            tile[(j * KC + p) * NR..][..NR].copy_from_slice(panel);
                        }
                    }
                    for j0 in (0..width).step_by(micro::WIDTH) {
                        let n_valid = micro::WIDTH.min(width - j0);
                        for t0 in (t_first..t_end).step_by(MR) {
                            let mr = MR.min(t_end - t0);
                            // SAFETY: a's rows t0..t0+mr and columns
                            // r0..r0+kc exist (n_tok rows of n_k, checked
                            // above); the tile holds gw / NR panels of kc
                            // rows of NR values, KC * NR apart, and gw (a
                            // multiple of 32) >= j0 + WIDTH wherever
                            // n_valid > NR; y's columns c0+j0.. belong to
                            // this task's group only.
                            unsafe {
                                kernel(
                                    mr,
                                    kc,
                                    a.as_ptr().add(t0 * n_k + r0),
                                    n_k,
                                    tile.as_ptr().add(j0 / NR * KC * NR),
                                    NR,
                                    KC * NR,
                                    out.get().add(t0 * n_cols + c0 + j0),
                                    n_cols,
                                    n_valid,
                                    accumulate || r0 > 0,
                                );
                            }
                        }
                    }
                }
            };
            reduce(x, w, accumulate);
            if let Some((act, factor)) = &term {
                reduce(act, factor, true);
            }
        },
    );
}

/// Scalar twin of [`matmul_w`], in f64.
pub fn matmul_w_scalar(x: &[f32], n_tok: usize, w: &Weights, y: &mut [f32]) {
    let (n_red, n_cols) = (w.n_rows(), w.n_cols());
    let mut acc = vec![0f64; n_tok * n_cols];
    let mut row = vec![0f32; n_cols];
    for r in 0..n_red {
        w.dequantize_row(r, &mut row);
        for t in 0..n_tok {
            let xv = x[t * n_red + r] as f64;
            for (a, &wv) in acc[t * n_cols..(t + 1) * n_cols].iter_mut().zip(&row) {
                *a += xv * wv as f64;
            }
        }
    }
    y.iter_mut().zip(acc).for_each(|(o, a)| *o = a as f32);
}

/// `c = a^T b` for f32 row-major `a: [n_tok, m]`, `b: [n_tok, n]`, `c: [m, n]`:
/// the weight gradient of a linear layer (LoRA's `dA`, `dB`). Adds into `c`
/// when `accumulate`.
///
/// The narrow operand (LoRA's rank-wide one) is transposed once, which turns
/// the product into an ordinary `[m, n_tok] x [n_tok, n]` for the matmul
/// micro-kernel, parallel over 16-column panels; each output is one dot
/// product over all tokens, so the result does not depend on the thread
/// count (the sum runs over chunks of [`KC`] tokens in a fixed order). When `m > n` it computes `c^T = b^T a` and transposes the small
/// result back.
pub fn matmul_tn(a: &[f32], b: &[f32], n_tok: usize, c: &mut [f32], accumulate: bool) {
    let m = a.len().checked_div(n_tok).unwrap_or(0);
    let n = b.len().checked_div(n_tok).unwrap_or(0);
    assert!(
        a.len() == n_tok * m && b.len() == n_tok * n && c.len() == m * n,
        "matmul_tn: shapes"
    );
    if !accumulate {
        c.fill(0.0);
    }
    if n_tok == 0 || m == 0 || n == 0 {
        return;
    }
    if m <= n {
        tn_narrow_left(micro::select(), a, b, n_tok, m, n, c);
    } else {
        let mut ct = vec![0f32; n * m];
        tn_narrow_left(micro::select(), b, a, n_tok, n, m, &mut ct);
        for (i, row) in c.chunks_exact_mut(n).enumerate() {
            row.iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v += ct[j * m + i]);
        }
    }
}

/// `c[m, n] += a^T b` with `m` small: `a^T` is materialized `[m, n_tok]`
/// and multiplied by `b` panel by panel.
fn tn_narrow_left(
    kernel: micro::MicroKernel,
    a: &[f32],
    b: &[f32],
    n_tok: usize,
    m: usize,
    n: usize,
    c: &mut [f32],
) {
    let mut at = vec![0f32; m * n_tok];
    for (t, row) in a.chunks_exact(m).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            at[i * n_tok + t] = v;
        }
    }
    // Whole panels through the micro-kernel; a ragged last panel by plain
    // loops. Up to TN_IN_PLACE_MAX_TOK tokens, b is read in place. Beyond,
    // a task's panels are copied chunk by chunk of tokens into one contiguous
    // tile: b's rows are n values apart, and a long sequence (T = 2048,
    // n = 4864: 2048 pages per panel) thrashed the TLB (LoRA's gradients ran
    // at a third of their T = 512 speed), while at T = 512 the copy costs
    // more than it saves (the product is thin: rank 16).
    let in_place = n_tok <= TN_IN_PLACE_MAX_TOK;
    let chunk = if in_place { n_tok } else { KC };
    let full = n / NR * NR;
    let n_panels = full / NR;
    let out = SharedOut::new(c);
    (0..n_panels.div_ceil(PANELS_PER_TASK))
        .into_par_iter()
        .for_each_init(
            || {
                vec![
                    0f32;
                    if in_place {
                        0
                    } else {
                        KC * NR * PANELS_PER_TASK
                    }
                ]
            },
            |tile, task| {
                let first = task * PANELS_PER_TASK;
                let last = (first + PANELS_PER_TASK).min(n_panels);
                let (j_first, width) = (first * NR, (last - first) * NR);
                for k0 in (0..n_tok).step_by(chunk) {
                    let kc = chunk.min(n_tok - k0);
                    let (tile_ptr, ld) = if in_place {
                        (b[j_first..].as_ptr(), n)
                    } else {
                        for p in 0..kc {
                            let src = &b[(k0 + p) * n + j_first..][..width];
                            tile[p * width..(p + 1) * width].copy_from_slice(src);
                        }
                        (tile.as_ptr(), width)
                    };
                    for pair in (first..last).step_by(2) {
                        let j0 = pair * NR;
                        let n_valid = micro::WIDTH.min((last - pair) * NR);
                        for i0 in (0..m).step_by(MR) {
                            let mr = MR.min(m - i0);
                            // SAFETY: rows i0..i0+mr of `at` hold n_tok values
                            // (columns k0..k0+kc used); the tile (or b in
                            // place, k0 = 0) holds kc rows of >= j0 - j_first
                            // + n_valid values at stride ld;
                            // c[i0.., j0..j0+n_valid] belongs to this task alone.
                            unsafe {
                                kernel(
                                    mr,
                                    kc,
                                    at.as_ptr().add(i0 * n_tok + k0),
                                    n_tok,
                                    tile_ptr.add(j0 - j_first),
                                    ld,
                                    NR,
                                    out.get().add(i0 * n + j0),
                                    n,
                                    n_valid,
                                    true,
                                );
                            }
                        }
                    }
                }
            },
        );
    for i in 0..m {
        for j in full..n {
            let dot: f32 = (0..n_tok).map(|t| at[i * n_tok + t] * b[t * n + j]).sum();
            c[i * n + j] += dot;
        }
    }
}

/// `c[m x n] (+)= a[m x kc] b[kc x n]` on small dense f32 tiles with arbitrary
/// strides, through the same register-blocked micro-kernel: the building
/// block of the attention kernels.
///
/// # Safety
/// `a` must be readable for `m` rows of `kc` values (stride `lda`); `b` for
/// `kc` rows of `n` rounded up to a multiple of [`NR`] values (stride `ldb`);
/// `c` writable for `m` rows of `n` values (stride `ldc`).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_tile(
    m: usize,
    n: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let kernel = micro::select();
    for j0 in (0..n).step_by(micro::WIDTH) {
        let n_valid = micro::WIDTH.min(n - j0);
        for i0 in (0..m).step_by(MR) {
            let mr = MR.min(m - i0);
            kernel(
                mr,
                kc,
                a.add(i0 * lda),
                lda,
                b.add(j0),
                ldb,
                NR,
                c.add(i0 * ldc + j0),
                ldc,
                n_valid,
                accumulate,
            );
        }
    }
}

/// Trials of [`micro_kernel_ceiling_gflops`] (odd, so the median is one of them).
#[doc(hidden)]
pub const MICRO_KERNEL_CEILING_TRIALS: usize = 101;

/// GFLOP/s of this CPU's f32 micro-kernel on one thread with every operand
/// in L1 (an [`MR`] x [`KC`] activation block times two packed panels): the
/// ceiling of every product built on it, which `cleaner bench kernels` sets
/// the whole products against, so that the gap shows what packing, decoding
/// and memory traffic cost. Returns (best, median) over
/// [`MICRO_KERNEL_CEILING_TRIALS`] short trials: the best is the kernel with
/// a shared machine's slow spells left out, the median the same statistic
/// as the products' timings.
#[doc(hidden)]
pub fn micro_kernel_ceiling_gflops() -> (f64, f64) {
    const CALLS: usize = 256;
    let kernel = micro::select();
    let a = vec![0.25f32; MR * KC];
    let b = vec![0.5f32; 2 * KC * NR];
    let mut c = vec![0f32; MR * micro::WIDTH];
    let flop = 2.0 * (MR * micro::WIDTH * KC * CALLS) as f64;
    let rates = ceiling_trials(flop, || {
        for _ in 0..CALLS {
            // SAFETY: a holds MR rows of KC values, b two panels of KC rows
            // of NR values (KC * NR apart), c MR rows of WIDTH values.
            unsafe {
                kernel(
                    MR,
                    KC,
                    a.as_ptr(),
                    KC,
                    b.as_ptr(),
                    NR,
                    KC * NR,
                    c.as_mut_ptr(),
                    micro::WIDTH,
                    micro::WIDTH,
                    true,
                );
            }
        }
    });
    std::hint::black_box(&c);
    rates
}

/// (best, median) GFLOP/s over [`MICRO_KERNEL_CEILING_TRIALS`] runs of
/// `trial`, each doing `flop` floating-point operations.
fn ceiling_trials(flop: f64, mut trial: impl FnMut()) -> (f64, f64) {
    let mut seconds: Vec<f64> = (0..MICRO_KERNEL_CEILING_TRIALS)
        .map(|_| {
            let start = std::time::Instant::now();
            trial();
            start.elapsed().as_secs_f64()
        })
        .collect();
    seconds.sort_by(f64::total_cmp);
    let median = seconds[MICRO_KERNEL_CEILING_TRIALS / 2];
    (flop / seconds[0] / 1e9, flop / median / 1e9)
}

/// When there are too few column tasks to feed every thread (narrow outputs
/// such as LoRA's rank-16 products) or to share out evenly, rows are split
/// too: returns (row tasks, rows per task, a multiple of MR). Each row task
/// repacks its panels, which is cheap next to a panel's product over
/// hundreds of rows.
fn row_split(n_tok: usize, n_col_tasks: usize) -> (usize, usize) {
    let threads = rayon::current_num_threads().max(1);
    let cols = n_col_tasks.max(1);
    let max_n = n_tok.div_ceil(4 * MR).max(1);
    // Also split rows until the tasks share out evenly: a total that is a
    // multiple of the thread count, or at least 8 tasks per thread (the last
    // round is then at most an eighth of the work). 9 column tasks (576
    // outputs in bf16) on 2 threads ran as 5 + 4, one tenth idle.
    let mut n = (2 * threads).div_ceil(cols).max(1);
    while n < max_n && !(cols * n).is_multiple_of(threads) && cols * n < 8 * threads {
        n += 1;
    }
    let n = n.min(max_n);
    let rows = (n_tok.div_ceil(n).div_ceil(MR) * MR).max(MR);
    (n_tok.div_ceil(rows).max(1), rows)
}

/// Up to this many tokens [`matmul_tn`] reads its wide operand in place.
const TN_IN_PLACE_MAX_TOK: usize = 1024;

/// Scalar twin of [`matmul_wt`]: each output is one dot product accumulated in
/// f64 over the dequantized weight row. Slow; the oracle for tests.
pub fn matmul_wt_scalar(x: &[f32], n_tok: usize, w: &Weights, y: &mut [f32]) {
    let (n_out, n_in) = (w.n_rows(), w.n_cols());
    assert_eq!(x.len(), n_tok * n_in);
    assert_eq!(y.len(), n_tok * n_out);
    let mut row = vec![0f32; n_in];
    for n in 0..n_out {
        w.dequantize_row(n, &mut row);
        for t in 0..n_tok {
            let xt = &x[t * n_in..(t + 1) * n_in];
            let dot: f64 = xt
                .iter()
                .zip(&row)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            y[t * n_out + n] = dot as f32;
        }
    }
}

#[cfg(test)]
mod tests;
