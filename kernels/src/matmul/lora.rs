//! LoRA's backward products with the gradient of a projection's output,
//! `dy: [n_tok, n]`, in one pass over it: `g = dy B` (`B: [n, rank]`) and
//! `dB += dy^T u` (`u: [n_tok, rank]`, the saved `x A^T`).
//!
//! Why a kernel of their own: a rank-16 product does 16 multiply-adds per
//! value of `dy` it reads, so it waits on reading `dy` (T = 512: 10 MB for
//! the feed-forward's gate and up), and the backward read `dy` once for `g`
//! and again for `dB`. Here each value of a block of tokens' rows of `dy`
//! is read once and broadcast into both products. The columns are cut into
//! chunks whose rows of `B` and `dB` stay in cache while every token
//! passes; a chunk owns its rows of `dB`, and its share of `g` is added to
//! the others' in chunk order, so the sums do not depend on the thread
//! count. (`dA += g^T x` stays on [`matmul_tn`], which keeps its output in
//! registers over all the tokens and was faster for it; the forward's
//! `u = x A^T` on [`super::matmul_wt`], as fast as this kernel's
//! projection alone in the step.)
//!
//! On CPUs without AVX-512, and for ranks over [`FUSED_MAX_RANK`], the two
//! products run apart on the general kernels ([`matmul_w`], [`matmul_tn`]).

use super::{matmul_tn, matmul_w, Weights};
use crate::cpu::{kernels, Isa};
#[cfg(target_arch = "x86_64")]
use crate::parallel::SharedOut;
#[cfg(target_arch = "x86_64")]
use rayon::prelude::*;

/// The widest rank the AVX-512 kernel keeps in registers (four zmm a row).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub const FUSED_MAX_RANK: usize = 64;

/// The widest chunk of `dy`'s columns a task takes: its rows of `B` and
/// `dB` (512 x 16 f32, 32 KiB each at rank 16) stay in L1/L2 while every
/// token passes, and Qwen2.5-0.5B's 4864 columns make 10 tasks, 896 make 2.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const CHUNK_COLS: usize = 512;

/// The projection `p = d f`.
pub struct Project<'a> {
    /// `[n, rank]`: `B` (for `g = dy B`).
    pub f: &'a [f32],
    /// `[n_tok, rank]`, overwritten.
    pub p: &'a mut [f32],
}

/// The outer products `o += d^T s`.
pub struct Outer<'a> {
    /// `[n_tok, rank]`: `u` (for `dB += dy^T u`).
    pub s: &'a [f32],
    /// `[n, rank]`, added to.
    pub o: &'a mut [f32],
}

/// The projection and the outer products of `d: [n_tok, n]` in one pass
/// over `d` (see the module's text).
pub fn lora_products(d: &[f32], n_tok: usize, rank: usize, project: Project, outer: Outer) {
    // `n` from the factor, so that no tokens (an empty `d`) still has one.
    let n = match rank {
        0 => d.len().checked_div(n_tok).unwrap_or(0),
        _ => project.f.len() / rank,
    };
    assert_eq!(d.len(), n_tok * n, "lora_products: d shape");
    assert!(
        project.f.len() == n * rank && project.p.len() == n_tok * rank,
        "lora_products: projection shapes"
    );
    assert!(
        outer.s.len() == n_tok * rank && outer.o.len() == n * rank,
        "lora_products: outer product shapes"
    );
    if n_tok == 0 || n == 0 || rank == 0 {
        project.p.fill(0.0); // an empty sum
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if fused_available() && rank <= FUSED_MAX_RANK {
        return fused(d, n_tok, n, rank, project, outer);
    }
    composed(d, n_tok, n, rank, project, outer)
}

/// Whether [`lora_products`] runs the fused AVX-512 kernel here.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub fn fused_available() -> bool {
    cfg!(target_arch = "x86_64") && kernels().gemm_f32 == Isa::Avx512
}

/// The two products apart, on the general kernels: each reads `d`.
pub(crate) fn composed(
    d: &[f32],
    n_tok: usize,
    n: usize,
    rank: usize,
    project: Project,
    outer: Outer,
) {
    matmul_w(d, n_tok, &Weights::f32(project.f, n, rank), project.p);
    matmul_tn(d, outer.s, n_tok, outer.o, true);
}

/// The columns of `d` in chunks of at most [`CHUNK_COLS`], one task each:
/// a chunk owns its rows of `o` (summed over every token, in order), and
/// writes its share of the projection's sum into a buffer of its own;
/// those shares are added in chunk order. The chunks depend on `n` alone,
/// so the results do not depend on the thread count.
#[cfg(target_arch = "x86_64")]
pub(crate) fn fused(
    d: &[f32],
    n_tok: usize,
    n: usize,
    rank: usize,
    project: Project,
    outer: Outer,
) {
    assert!(fused_available() && (1..=FUSED_MAX_RANK).contains(&rank) && n > 0 && n_tok > 0);
    let width = super::bf16::balanced_chunk(n, 16, CHUNK_COLS);
    let n_chunks = n.div_ceil(width);
    // The first chunk's share goes straight into `p`.
    let mut shares = vec![0f32; (n_chunks - 1) * n_tok * rank];
    let (p, rest) = (SharedOut::new(project.p), SharedOut::new(&mut shares));
    let o = SharedOut::new(outer.o);
    let (f, s) = (project.f, outer.s);
    let run = |chunk: usize| {
        let c0 = chunk * width;
        // SAFETY: each chunk writes its own columns' rows of `o` and its
        // own share of `p`; every pointer is in bounds for the shapes the
        // caller checked.
        unsafe {
            let operands = avx512::Operands {
                d: d.as_ptr().add(c0),
                ld: n,
                n: width.min(n - c0),
                rank,
                f: f.as_ptr().add(c0 * rank),
                p: match chunk {
                    0 => p.get(),
                    _ => rest.get().add((chunk - 1) * n_tok * rank),
                },
                s: s.as_ptr(),
                o: o.get().add(c0 * rank),
            };
            avx512::tokens(operands, n_tok)
        }
    };
    // Handed to the pool (the caller sleeps) rather than `for_each_task`
    // (the caller takes a share and spins for the helpers): in the training
    // step, between the products' parallel loops, the latter made these
    // passes 2.4x slower on a 2-vCPU Zen 5 (`bench train --profile`: 0.207
    // against 0.087 s a step), slower than one thread alone (0.121 s).
    (0..n_chunks).into_par_iter().for_each(run);
    for share in shares.chunks_exact(n_tok * rank) {
        project.p.iter_mut().zip(share).for_each(|(v, &w)| *v += w);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `n` columns of `d` (rows `ld` apart) for `p = d f` and `o += d^T s`:
    /// `p` and `s` hold a row of `rank` values per token, `f` and `o` one
    /// per column.
    #[derive(Clone, Copy)]
    pub(super) struct Operands {
        pub d: *const f32,
        pub ld: usize,
        pub n: usize,
        pub rank: usize,
        pub f: *const f32,
        pub p: *mut f32,
        pub s: *const f32,
        pub o: *mut f32,
    }

    /// Both products over `n_tok` tokens, in blocks of as many tokens as
    /// the registers hold (a token's `rank` lanes take G zmm, for its
    /// projection's accumulators and its row of `s`), a ragged end one
    /// token at a time.
    ///
    /// # Safety
    /// AVX-512F; `d` holds `n_tok` rows of `ld >= n` values, `p` and `s`
    /// `n_tok x rank`, `f` and `o` `n x rank` values; `rank` in 1..=64.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tokens(x: Operands, n_tok: usize) {
        match x.rank.div_ceil(16) {
            1 => blocks::<1, 12>(x, n_tok),
            2 => blocks::<2, 6>(x, n_tok),
            3 => blocks::<3, 4>(x, n_tok),
            4 => blocks::<4, 3>(x, n_tok),
            _ => unreachable!("rank {} over the fused kernel's 64", x.rank),
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn blocks<const G: usize, const TB: usize>(x: Operands, n_tok: usize) {
        let mut masks = [0xffffu16; G];
        masks[G - 1] = super::super::lane_mask(x.rank - 16 * (G - 1));
        let mut t = 0;
        while t + TB <= n_tok {
            block::<G, TB>(x, t, &masks);
            t += TB;
        }
        while t < n_tok {
            block::<G, 1>(x, t, &masks);
            t += 1;
        }
    }

    /// Tokens `t..t + TB`: each value of their rows of `d`, column by
    /// column, feeds `TB x G` projection accumulators (with `f`'s row `c`)
    /// and `o`'s row `c` (with the tokens' rows of `s`, kept in registers).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const G: usize, const TB: usize>(x: Operands, t: usize, masks: &[u16; G]) {
        let Operands {
            d,
            ld,
            n,
            rank,
            f,
            p,
            s,
            o,
        } = x;
        let d = d.add(t * ld);
        let mut acc = [[_mm512_setzero_ps(); G]; TB];
        let mut s_rows = [[_mm512_setzero_ps(); G]; TB];
        for (i, row) in s_rows.iter_mut().enumerate() {
            for (g, v) in row.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_ps(masks[g], s.add((t + i) * rank + 16 * g));
            }
        }
        for c in 0..n {
            let dv = |i: usize| _mm512_set1_ps(*d.add(i * ld + c));
            let f_row = f.add(c * rank);
            let o_row = o.add(c * rank);
            for g in 0..G {
                let fv = _mm512_maskz_loadu_ps(masks[g], f_row.add(16 * g));
                for (i, acc) in acc.iter_mut().enumerate() {
                    acc[g] = _mm512_fmadd_ps(dv(i), fv, acc[g]);
                }
                // Two chains of the tokens' multiply-adds into `o`,
                // halving the latency each column waits on.
                let mut even = _mm512_maskz_loadu_ps(masks[g], o_row.add(16 * g));
                let mut odd = _mm512_setzero_ps();
                for i in (0..TB).step_by(2) {
                    even = _mm512_fmadd_ps(dv(i), s_rows[i][g], even);
                    if i + 1 < TB {
                        odd = _mm512_fmadd_ps(dv(i + 1), s_rows[i + 1][g], odd);
                    }
                }
                let ov = if TB > 1 {
                    _mm512_add_ps(even, odd)
                } else {
                    even
                };
                _mm512_mask_storeu_ps(o_row.add(16 * g), masks[g], ov);
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (g, &v) in row.iter().enumerate() {
                _mm512_mask_storeu_ps(p.add((t + i) * rank + 16 * g), masks[g], v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::tests::MATMUL_TOL;
    use crate::testing::TestRng;

    /// `p = d f` and `o0 + d^T s` in f64, with each entry's mass
    /// (`sum |terms|`) for the tolerance.
    #[allow(clippy::type_complexity)]
    fn oracle(
        d: &[f32],
        n_tok: usize,
        n: usize,
        rank: usize,
        f: &[f32],
        s: &[f32],
        o0: &[f32],
    ) -> ((Vec<f64>, Vec<f64>), (Vec<f64>, Vec<f64>)) {
        let (mut p, mut p_mass) = (vec![0f64; n_tok * rank], vec![0f64; n_tok * rank]);
        let mut o: Vec<f64> = o0.iter().map(|&v| v as f64).collect();
        let mut o_mass: Vec<f64> = o.iter().map(|v| v.abs()).collect();
        for t in 0..n_tok {
            for c in 0..n {
                let dv = d[t * n + c] as f64;
                for r in 0..rank {
                    let term = dv * f[c * rank + r] as f64;
                    p[t * rank + r] += term;
                    p_mass[t * rank + r] += term.abs();
                    let term = dv * s[t * rank + r] as f64;
                    o[c * rank + r] += term;
                    o_mass[c * rank + r] += term.abs();
                }
            }
        }
        ((p, p_mass), (o, o_mass))
    }

    fn close(what: &str, got: &[f32], want: &[f64], mass: &[f64]) {
        for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mass).enumerate() {
            assert!(
                (g as f64 - w).abs() <= MATMUL_TOL * m + 1e-30,
                "{what}[{i}]: {g} vs {w} (mass {m})"
            );
        }
    }

    type Kernel = fn(&[f32], usize, usize, usize, Project, Outer);

    /// Both products against the oracle, the outer products added to
    /// non-zero values.
    fn check(kernel: Kernel, name: &str, n_tok: usize, n: usize, rank: usize, seed: u64) {
        let mut rng = TestRng(seed);
        let mut values = |len: usize| (0..len).map(|_| rng.uniform()).collect::<Vec<f32>>();
        let (d, f, s, o0) = (
            values(n_tok * n),
            values(n * rank),
            values(n_tok * rank),
            values(n * rank),
        );
        let ((p_want, p_mass), (o_want, o_mass)) = oracle(&d, n_tok, n, rank, &f, &s, &o0);
        let what = format!("{name}: n_tok {n_tok}, n {n}, rank {rank}");
        let mut p = vec![f32::NAN; n_tok * rank];
        let mut o = o0.clone();
        kernel(
            &d,
            n_tok,
            n,
            rank,
            Project { f: &f, p: &mut p },
            Outer { s: &s, o: &mut o },
        );
        close(&format!("{what}: p"), &p, &p_want, &p_mass);
        close(&format!("{what}: o"), &o, &o_want, &o_mass);
    }

    /// The shapes: token counts around the blocks (16, 12, 8, 6, 4 and 3
    /// tokens), ranks around the 16-lane groups, one chunk of columns and
    /// three (1100 = 368 + 368 + 364).
    fn check_shapes(kernel: Kernel, name: &str, ranks: &[usize]) {
        let mut seed = 1;
        for &rank in ranks {
            for n_tok in [1, 2, 7, 13, 33, 100, 257] {
                for n in [1, 13, 64, 1100] {
                    check(kernel, name, n_tok, n, rank, seed);
                    seed += 1;
                }
            }
        }
    }

    #[test]
    fn composed_products_match_the_oracle() {
        check_shapes(composed, "composed", &[1, 16, 33, 80]);
    }

    /// On one thread and on three (whose shares sum their outer products
    /// apart), where this CPU runs the fused kernel.
    #[test]
    fn fused_products_match_the_oracle_on_one_and_three_threads() {
        if !fused_available() {
            eprintln!("no AVX-512 here: the fused LoRA kernel is not tested on this CPU");
            return;
        }
        #[cfg(target_arch = "x86_64")]
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                check_shapes(
                    fused,
                    &format!("fused, {threads} threads"),
                    &[1, 5, 16, 17, 32, 40, 48, 64],
                )
            });
        }
    }

    /// The same bits on one thread and on three: the chunks depend on the
    /// shape alone, and their shares are added in order.
    #[test]
    fn fused_products_do_not_depend_on_the_thread_count() {
        if !fused_available() {
            eprintln!("no AVX-512 here: the fused LoRA kernel is not tested on this CPU");
            return;
        }
        let (n_tok, n, rank) = (77, 2000, 16);
        let mut rng = TestRng(3);
        let mut values = |len: usize| (0..len).map(|_| rng.uniform()).collect::<Vec<f32>>();
        let (d, f, s) = (values(n_tok * n), values(n * rank), values(n_tok * rank));
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (mut p, mut o) = (vec![0f32; n_tok * rank], vec![0.5f32; n * rank]);
            pool.install(|| {
                let project = Project { f: &f, p: &mut p };
                lora_products(&d, n_tok, rank, project, Outer { s: &s, o: &mut o })
            });
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            (bits(&p), bits(&o))
        };
        assert!(on(1) == on(3), "the sums moved with the thread count");
    }

    /// The public entry: empty shapes, and ranks past the fused kernel's.
    #[test]
    fn lora_products_handles_empty_and_wide_shapes() {
        let mut p = vec![f32::NAN; 4 * 16];
        let mut o = vec![1f32; 0];
        lora_products(
            &[],
            4,
            16,
            Project { f: &[], p: &mut p },
            Outer {
                s: &[0.0; 4 * 16],
                o: &mut o,
            },
        );
        assert!(p.iter().all(|&v| v == 0.0), "an empty sum is zero");
        // No tokens: nothing to write, nothing added to `o`.
        let mut o = vec![1f32; 24 * 16];
        lora_products(
            &[],
            0,
            16,
            Project {
                f: &[0.5; 24 * 16],
                p: &mut [],
            },
            Outer { s: &[], o: &mut o },
        );
        assert!(o.iter().all(|&v| v == 1.0), "no tokens add nothing");
        check(
            |d, n_tok, _, rank, pr, ou| lora_products(d, n_tok, rank, pr, ou),
            "lora_products",
            40,
            24,
            FUSED_MAX_RANK + 8,
            9,
        );
        check(
            |d, n_tok, _, rank, pr, ou| lora_products(d, n_tok, rank, pr, ou),
            "lora_products",
            40,
            24,
            16,
            10,
        );
    }
}
