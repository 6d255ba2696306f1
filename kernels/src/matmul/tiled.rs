//! The bf16 products with the weights on AMX tiles: `x W^T` (the forward)
//! and `x W` (the input gradient), one driver for both.
//!
//! Both are `C = A B` once B is packed: a block of [`BLOCK`] activation
//! rows (A) times a slice of [`BLOCK`] output columns (B), over chunks of
//! the reduction, the C tiles loaded from the output and stored back
//! ([`amx::block_into`]). What differs is only how a slice of B is decoded
//! from the weights: weight rows are output columns in `x W^T`
//! ([`bf16::pack_panel`]), pairs of weight rows are pair rows in `x W`.
//!
//! Per task (a group of [`Tuning::cols`] output columns, some rows): for
//! each chunk of [`Tuning::chunk`] reduction values, the group's B is
//! decoded and packed (slice by slice, each slice one contiguous run of
//! 2 KiB per 16-pair step), then every block of 32 rows meets every slice
//! of the group while its A is in cache. A is laid out tile by tile
//! ([`TileRows`]), so a block's chunk is one contiguous run too and each
//! tile load reads 1 KiB in order.
//!
//! Measured on an Emerald Rapids Xeon (2 threads, `cargo bench --bench
//! weight_products`; that machine's speed varied 2x from one loan to the
//! next, so only settings run side by side were compared): chunks of 1536
//! values with groups of 512 columns were among the fastest; groups of 128
//! columns ran 12-25 % slower, chunks of 256 values 2-11 %; between 256 and
//! 512 columns and 768 to 2560 values the differences stayed within the
//! noise; asking for the next steps of B in L1 was within it too, for A's
//! 3-8 % slower. The products alone run
//! at a fifth to two fifths of the block's speed on operands in L1
//! ([`block_ceiling_gflops`]), the decoding and packing of the weights
//! took 0.15-0.6 s of a 0.65-2 s step's worth of products.

use super::amx::{self, Lines, Run, Tiles, BLOCK, TILE};
use super::bf16::{self, LowRank, PACK_SEG};
use super::Weights;
use crate::parallel::SharedOut;
use rayon::prelude::*;

/// u32 (pairs) of one 16-pair step of a block of [`TileRows`]: two A
/// tiles of 16 rows x 16 pairs.
const STEP: usize = BLOCK * TILE;

/// The blocking of the tile products: reduction values per chunk and output
/// columns per task (each rounded to what the weight format and the tiles
/// need), and which operands are asked into L1 ahead. Environment variables
/// override them for tuning on a machine with AMX (`cargo bench --bench
/// weight_products`): `CLEANER_AMX_CHUNK`, `CLEANER_AMX_COLS`,
/// `CLEANER_AMX_PREFETCH` (`none`, `a`, `b`, `ab`) and
/// `CLEANER_AMX_PREFETCH_STEPS`; `CLEANER_AMX_SKIP=products` or `=packing`
/// leaves that part out, for timing the rest on machines without a
/// profiler (the results are wrong then, and a warning says so). A value
/// that does not parse is reported and the default kept.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tuning {
    pub chunk: usize,
    pub cols: usize,
    pub skip_products: bool,
    pub skip_packing: bool,
    pub prefetch: amx::Prefetch,
}

pub(crate) fn tuning() -> Tuning {
    static TUNING: std::sync::OnceLock<Tuning> = std::sync::OnceLock::new();
    *TUNING.get_or_init(|| {
        let (tuning, warnings) = tuning_from(|name| std::env::var(name).ok());
        warnings.iter().for_each(|w| eprintln!("{w}"));
        tuning
    })
}

/// [`Tuning`] from the variables `read` gives (unset or empty: the
/// default), and a warning for each value not taken or that changes the
/// results.
fn tuning_from(read: impl Fn(&str) -> Option<String>) -> (Tuning, Vec<String>) {
    let read = |name: &str| read(name).filter(|v| !v.is_empty());
    let mut warnings = Vec::new();
    let mut var = |name: &str, default: usize| match read(name) {
        None => default,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                warnings.push(format!(
                    "{name}={v}: expected a positive whole number; using {default}"
                ));
                default
            }
        },
    };
    let chunk = var("CLEANER_AMX_CHUNK", 1536);
    let cols = var("CLEANER_AMX_COLS", 512);
    let steps = var("CLEANER_AMX_PREFETCH_STEPS", 2);
    let skip = read("CLEANER_AMX_SKIP").unwrap_or_default();
    match skip.as_str() {
        "" => {}
        "products" | "packing" => warnings.push(format!(
            "CLEANER_AMX_SKIP={skip}: the bf16 products on AMX tiles leave out their {skip}, so their results are wrong (for timing only)"
        )),
        _ => warnings.push(format!(
            "CLEANER_AMX_SKIP={skip}: expected products or packing; skipping nothing"
        )),
    }
    let which = read("CLEANER_AMX_PREFETCH").unwrap_or_else(|| "b".into());
    let (a, b) = match which.as_str() {
        "none" => (false, false),
        "a" => (true, false),
        "b" => (false, true),
        "ab" => (true, true),
        _ => {
            warnings.push(format!(
                "CLEANER_AMX_PREFETCH={which}: expected none, a, b or ab; using b"
            ));
            (false, true)
        }
    };
    let tuning = Tuning {
        chunk,
        cols,
        skip_products: skip == "products",
        skip_packing: skip == "packing",
        prefetch: amx::Prefetch { a, b, steps },
    };
    (tuning, warnings)
}

/// Activations rounded to bf16 pairs in the order the tiles read them: per
/// block of [`BLOCK`] rows, per step of 16 pairs, the block's 32 rows of 16
/// pairs (two A tiles, 2 KiB, rows 64 bytes apart). Rows past the last
/// and pairs past the row's end are zeros.
pub(crate) struct TileRows {
    data: Lines,
    /// 16-pair steps per row.
    steps: usize,
}

impl TileRows {
    /// `x` (`n_tok` rows of `n` values) rounded to bf16 (to nearest even).
    pub(crate) fn new(x: &[f32], n_tok: usize, n: usize) -> TileRows {
        let np = n.div_ceil(2);
        let steps = np.div_ceil(TILE);
        let n_blocks = n_tok.div_ceil(BLOCK);
        let mut data = Lines::zeros(n_blocks * steps * STEP);
        if steps > 0 {
            data.as_mut_slice()
                .par_chunks_mut(steps * STEP)
                .enumerate()
                .for_each_init(
                    || vec![0u32; steps * TILE],
                    |row, (b, block)| {
                        for r in 0..BLOCK.min(n_tok - b * BLOCK) {
                            let t = b * BLOCK + r;
                            bf16::to_pairs(&x[t * n..(t + 1) * n], &mut row[..np]);
                            for (s, src) in row.chunks_exact(TILE).enumerate() {
                                block[s * STEP + r * TILE..][..TILE].copy_from_slice(src);
                            }
                        }
                    },
                );
        }
        TileRows { data, steps }
    }

    /// The block of rows from `t0` (a multiple of [`BLOCK`]), from pair
    /// `p0` (a multiple of [`TILE`]).
    fn at(&self, t0: usize, p0: usize) -> *const u32 {
        debug_assert!(t0.is_multiple_of(BLOCK) && p0.is_multiple_of(TILE));
        self.data.as_slice()[(t0 / BLOCK * self.steps + p0 / TILE) * STEP..].as_ptr()
    }
}

/// A run over a block of [`TileRows`]: rows 16 pairs apart, steps 2 KiB.
fn run(a: *const u32, b: *const u32, pairs: usize) -> Run {
    Run {
        a,
        lda: TILE,
        step: STEP,
        b,
        pairs,
    }
}

/// Which product: `x W^T` (weight rows are output columns) or `x W`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Wt,
    W,
}

/// `y = x W^T + act factor^T` in bf16 on the tiles `T` (see the module):
/// the contract of [`bf16::matmul_wt_bf16_plus`].
pub(crate) fn matmul_wt<T: Tiles>(
    x: &[f32],
    n_tok: usize,
    w: &Weights,
    low_rank: Option<LowRank>,
    y: &mut [f32],
) {
    product::<T>(Side::Wt, x, n_tok, w, low_rank, y, false);
}

/// `y (+)= x W + act factor` in bf16 on the tiles `T`: the contract of
/// [`bf16::matmul_w_bf16_plus`].
pub(crate) fn matmul_w<T: Tiles>(
    x: &[f32],
    n_tok: usize,
    w: &Weights,
    low_rank: Option<LowRank>,
    y: &mut [f32],
    accumulate: bool,
) {
    product::<T>(Side::W, x, n_tok, w, low_rank, y, accumulate);
}

/// Whole tiles of pair rows.
fn whole(pairs: usize) -> usize {
    pairs.div_ceil(TILE) * TILE
}

/// `y (+)= x W^T` or `x W`, with the low-rank term after the last chunk:
/// the shared driver of [`matmul_wt`] and [`matmul_w`] (see the module).
fn product<T: Tiles>(
    side: Side,
    x: &[f32],
    n_tok: usize,
    w: &Weights,
    low_rank: Option<LowRank>,
    y: &mut [f32],
    accumulate: bool,
) {
    let (n_red, n_cols, what) = match side {
        Side::Wt => (w.n_cols(), w.n_rows(), "matmul_wt_bf16"),
        Side::W => (w.n_rows(), w.n_cols(), "matmul_w_bf16"),
    };
    assert_eq!(x.len(), n_tok * n_red, "{what}: x shape");
    assert_eq!(y.len(), n_tok * n_cols, "{what}: y shape");
    if n_tok == 0 || n_cols == 0 {
        return;
    }
    let tune = tuning();
    let block_len = w.ty().block_len();
    // Chunks start on whole tiles of pairs (32 values), and in `x W^T` on
    // the weight format's blocks; groups of columns in `x W` too.
    let red_align = match side {
        Side::Wt => lcm(2 * TILE, block_len),
        Side::W => 2 * TILE,
    };
    let col_align = match side {
        Side::Wt => BLOCK,
        Side::W => lcm(BLOCK, block_len),
    };
    let chunk = bf16::balanced_chunk(n_red, red_align, tune.chunk);
    let n_groups = n_cols.div_ceil(tune.cols.max(col_align));
    let group = n_cols.div_ceil(n_groups).div_ceil(col_align) * col_align;
    let n_groups = n_cols.div_ceil(group);
    let max_slices = group / BLOCK;

    let a = TileRows::new(x, n_tok, n_red);
    let extra = low_rank.map(|lr| {
        bf16::check_low_rank(&lr, n_tok, n_cols, what);
        (lr, TileRows::new(lr.act, n_tok, lr.rank))
    });
    let lr_rows = extra
        .as_ref()
        .map_or(0, |(lr, _)| whole(lr.rank.div_ceil(2)));
    // Pair rows of one slice's room: the chunk's, then the term's.
    let slice_rows = whole(chunk.div_ceil(2)) + lr_rows;
    let slice_len = slice_rows * BLOCK;
    let (n_row_tasks, rows_per_task) = bf16::split_rows(n_tok, n_groups, BLOCK);
    let out = SharedOut::new(y);
    (0..n_groups * n_row_tasks).into_par_iter().for_each_init(
        || Scratch {
            b: Lines::zeros(max_slices * slice_len),
            row_buf: vec![0f32; PACK_SEG],
            staging: vec![0u32; 16 * PACK_SEG / 2],
            rows: vec![0f32; 2 * group],
            pairs: vec![0u32; group],
            block: Box::new([0f32; BLOCK * BLOCK]),
        },
        |s, task| {
            let (g, row_task) = (task / n_row_tasks, task % n_row_tasks);
            let t_first = row_task * rows_per_task;
            let t_end = (t_first + rows_per_task).min(n_tok);
            let c0 = g * group;
            let width = group.min(n_cols - c0);
            let n_slices = width.div_ceil(BLOCK);
            // SAFETY: the caller chose T's instructions (the kernel set
            // found AMX usable) or T is the model; released below.
            unsafe { T::configure() };
            for r0 in bf16::chunk_starts(n_red, chunk) {
                let kc = chunk.min(n_red - r0);
                let kp = whole(kc.div_ceil(2));
                let last = r0 + kc >= n_red;
                let b = s.b.as_mut_slice();
                match side {
                    _ if tune.skip_packing => {}
                    Side::Wt => {
                        let (row_buf, staging) = (&mut s.row_buf, &mut s.staging);
                        pack_wt(w, c0, width, r0, kc, b, slice_len, row_buf, staging)
                    }
                    Side::W => {
                        let (rows, pairs) = (&mut s.rows, &mut s.pairs);
                        pack_w(w, r0, kc, c0, width, b, slice_len, rows, pairs)
                    }
                }
                let tail = match &extra {
                    Some((lr, act)) if last => {
                        pack_tail(side, lr, n_cols, c0, width, kp, lr_rows, b, slice_len);
                        Some(act)
                    }
                    _ => None,
                };
                let b = s.b.as_slice();
                if tune.skip_products {
                    continue;
                }
                for t0 in (t_first..t_end).step_by(BLOCK) {
                    let mr = BLOCK.min(t_end - t0);
                    let a_main = a.at(t0, r0 / 2);
                    for j in 0..n_slices {
                        let n_valid = BLOCK.min(width - j * BLOCK);
                        let bj = &b[j * slice_len..];
                        let mut runs = [run(a_main, bj.as_ptr(), kp); 2];
                        let mut n_runs = 1;
                        if let Some(act) = tail {
                            runs[1] = run(act.at(t0, 0), bj[kp * BLOCK..].as_ptr(), lr_rows);
                            n_runs = 2;
                        }
                        let acc = r0 > 0 || accumulate;
                        let c = out.get().wrapping_add(t0 * n_cols + c0 + j * BLOCK);
                        // SAFETY: A holds whole blocks of rows and whole
                        // steps past each chunk (zeros), B whole tiles of
                        // pair rows per slice; y's rows t0..t0 + mr,
                        // columns of this group belong to this task alone,
                        // and a block written in place lies within y.
                        unsafe {
                            if mr == BLOCK && n_valid == BLOCK {
                                let pf = tune.prefetch;
                                amx::block_into::<T>(&runs[..n_runs], BLOCK, c, n_cols, acc, pf);
                            } else {
                                amx::block::<T>(&runs[..n_runs], BLOCK, &mut s.block);
                                add_block(&s.block, c, n_cols, mr, n_valid, acc);
                            }
                        }
                    }
                }
            }
            // SAFETY: configured above on this thread.
            unsafe { T::release() };
        },
    );
}

/// A task's buffers, reused across the tasks of a thread.
struct Scratch {
    /// The group's packed B: per slice, `slice_rows` pair rows of 32.
    b: Lines,
    /// `x W^T`'s packing: one row segment, and 16 rows of its pairs.
    row_buf: Vec<f32>,
    staging: Vec<u32>,
    /// `x W`'s packing: two weight rows of the group, and their pairs.
    rows: Vec<f32>,
    pairs: Vec<u32>,
    /// A ragged block's result.
    block: Box<[f32; BLOCK * BLOCK]>,
}

fn lcm(a: usize, b: usize) -> usize {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    a / gcd(a, b) * b
}

/// `x W^T`'s B for output columns `c0..c0 + width` (weight rows), inputs
/// `r0..r0 + kc`: one panel per slice ([`bf16::pack_panel`]), pair rows
/// past the chunk zero up to a whole tile.
#[allow(clippy::too_many_arguments)]
fn pack_wt(
    w: &Weights,
    c0: usize,
    width: usize,
    r0: usize,
    kc: usize,
    b: &mut [u32],
    slice_len: usize,
    row_buf: &mut [f32],
    staging: &mut [u32],
) {
    let kp = kc.div_ceil(2);
    for (j, slice) in b
        .chunks_exact_mut(slice_len)
        .take(width.div_ceil(BLOCK))
        .enumerate()
    {
        let n0 = c0 + j * BLOCK;
        let n_valid = BLOCK.min(c0 + width - n0);
        bf16::pack_panel(w, n0, n_valid, r0, kc, slice, row_buf, staging);
        slice[kp * BLOCK..whole(kp) * BLOCK].fill(0);
    }
}

/// `x W`'s B for output columns `c0..c0 + width`, reduction rows
/// `r0..r0 + kc`: each pair of weight rows decoded once over the group and
/// interleaved into every slice's pair row; columns past `width` and pair
/// rows past the chunk zero up to a whole tile. `rows` holds two of the
/// group's rows, `pairs` one row of pairs (whole slices, zero past
/// `width`).
#[allow(clippy::too_many_arguments)]
fn pack_w(
    w: &Weights,
    r0: usize,
    kc: usize,
    c0: usize,
    width: usize,
    b: &mut [u32],
    slice_len: usize,
    rows: &mut [f32],
    pairs: &mut [u32],
) {
    pairs[width..].fill(0);
    let kp = kc.div_ceil(2);
    let n_slices = width.div_ceil(BLOCK);
    bf16::decode_row_pairs(w, r0, kc, c0, width, rows, |q, lo, hi| {
        // One call over the group's width (a call per 32-column slice
        // cost as much as its 32 conversions), then 128 bytes per slice.
        bf16::interleave_pairs(lo, hi, &mut pairs[..width]);
        for (j, src) in pairs.chunks_exact(BLOCK).take(n_slices).enumerate() {
            b[j * slice_len + q * BLOCK..][..BLOCK].copy_from_slice(src);
        }
    });
    for j in 0..n_slices {
        b[j * slice_len + kp * BLOCK..j * slice_len + whole(kp) * BLOCK].fill(0);
    }
}

/// The low-rank factor's pair rows after the last chunk's `kp` in every
/// slice, zeros up to `lr_rows`: `B`'s rows (`x W^T`) or `A`'s columns
/// (`x W`) of the group's columns.
#[allow(clippy::too_many_arguments)]
fn pack_tail(
    side: Side,
    lr: &LowRank,
    n_cols: usize,
    c0: usize,
    width: usize,
    kp: usize,
    lr_rows: usize,
    b: &mut [u32],
    slice_len: usize,
) {
    let used = lr.rank.div_ceil(2) * BLOCK;
    for j in 0..width.div_ceil(BLOCK) {
        let (j0, n) = (c0 + j * BLOCK, BLOCK.min(width - j * BLOCK));
        let rows = &mut b[j * slice_len + kp * BLOCK..][..lr_rows * BLOCK];
        match side {
            Side::Wt => bf16::pack_factor(lr, j0, n, rows),
            Side::W => bf16::pack_factor_group(lr, n_cols, j0, n, BLOCK, rows),
        }
        rows[used..].fill(0);
    }
}

/// Adds (`accumulate`) or writes a block's 32 x 32 result into `y`'s first
/// `mr` rows (stride `ldy`) and `n_valid` columns from `y`.
///
/// # Safety
/// `y` must be valid for `mr` rows of `n_valid` values at stride `ldy`,
/// written by no one else meanwhile.
unsafe fn add_block(
    c: &[f32; BLOCK * BLOCK],
    y: *mut f32,
    ldy: usize,
    mr: usize,
    n_valid: usize,
    accumulate: bool,
) {
    for i in 0..mr {
        let yr = std::slice::from_raw_parts_mut(y.add(i * ldy), n_valid);
        let cr = &c[i * BLOCK..i * BLOCK + n_valid];
        if accumulate {
            yr.iter_mut().zip(cr).for_each(|(v, d)| *v += d);
        } else {
            yr.copy_from_slice(cr);
        }
    }
}

/// GFLOP/s of the tile block on one thread with every operand in L1 (a
/// block of 32 rows of 128 pairs, a slice of 128 pair rows, C in place), as
/// (best, median) like [`super::micro_kernel_ceiling_gflops`]: the ceiling
/// of the bf16 products on the tiles. A multiply and an add per bf16 pair
/// element count two flops, as in f32.
///
/// # Safety
/// The tile instructions `T` must run here.
pub(crate) unsafe fn block_ceiling_gflops<T: Tiles>() -> (f64, f64) {
    const CALLS: usize = 256;
    const PAIRS: usize = 128;
    let x = vec![0.25f32; BLOCK * 2 * PAIRS];
    let a = TileRows::new(&x, BLOCK, 2 * PAIRS);
    let mut b = Lines::zeros(PAIRS * BLOCK);
    b.as_mut_slice().fill(bf16::pair(0.5, 0.5));
    let mut c = vec![0f32; BLOCK * BLOCK];
    let runs = [run(a.at(0, 0), b.as_slice().as_ptr(), PAIRS)];
    let flop = 2.0 * (BLOCK * BLOCK * 2 * PAIRS * CALLS) as f64;
    T::configure();
    let rates = super::ceiling_trials(flop, || {
        for _ in 0..CALLS {
            // SAFETY: the operands hold a whole block of PAIRS pairs and
            // PAIRS pair rows of 32; c is one 32 x 32 block.
            unsafe {
                amx::block_into::<T>(
                    &runs,
                    BLOCK,
                    c.as_mut_ptr(),
                    BLOCK,
                    true,
                    amx::Prefetch::NONE,
                )
            };
        }
    });
    T::release();
    std::hint::black_box(&c);
    rates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuning_with(vars: &[(&str, &str)]) -> (Tuning, Vec<String>) {
        tuning_from(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    /// Unset variables give the measured defaults without a word; set ones
    /// are taken.
    #[test]
    fn the_tuning_defaults_and_takes_valid_values() {
        let (t, warnings) = tuning_with(&[]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!((t.chunk, t.cols), (1536, 512));
        assert!(!t.skip_products && !t.skip_packing);
        assert_eq!(
            (t.prefetch.a, t.prefetch.b, t.prefetch.steps),
            (false, true, 2)
        );
        let (t, warnings) = tuning_with(&[
            ("CLEANER_AMX_CHUNK", "384"),
            ("CLEANER_AMX_COLS", "256"),
            ("CLEANER_AMX_PREFETCH", "ab"),
            ("CLEANER_AMX_PREFETCH_STEPS", "4"),
        ]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!((t.chunk, t.cols), (384, 256));
        assert_eq!(
            (t.prefetch.a, t.prefetch.b, t.prefetch.steps),
            (true, true, 4)
        );
    }

    /// A value that does not parse is named with what was expected and
    /// the default kept; leaving a part out warns that results are wrong.
    #[test]
    fn bad_tuning_values_are_named_and_the_defaults_kept() {
        let (t, warnings) = tuning_with(&[
            ("CLEANER_AMX_CHUNK", "big"),
            ("CLEANER_AMX_COLS", "0"),
            ("CLEANER_AMX_PREFETCH", "c"),
            ("CLEANER_AMX_SKIP", "everything"),
        ]);
        assert_eq!((t.chunk, t.cols), (1536, 512));
        assert!(!t.skip_products && !t.skip_packing);
        assert!(t.prefetch.b && !t.prefetch.a);
        for (name, expected) in [
            ("CLEANER_AMX_CHUNK=big", "positive whole number"),
            ("CLEANER_AMX_COLS=0", "positive whole number"),
            ("CLEANER_AMX_PREFETCH=c", "none, a, b or ab"),
            ("CLEANER_AMX_SKIP=everything", "products or packing"),
        ] {
            assert!(
                warnings
                    .iter()
                    .any(|w| w.starts_with(name) && w.contains(expected)),
                "{name}: {warnings:?}"
            );
        }
        let (t, warnings) = tuning_with(&[("CLEANER_AMX_SKIP", "packing")]);
        assert!(t.skip_packing && !t.skip_products);
        assert!(
            warnings.len() == 1 && warnings[0].contains("wrong"),
            "{warnings:?}"
        );
    }
}
