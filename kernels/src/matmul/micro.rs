//! Register-blocked micro-kernels: `C[mr x n] (+)= A[mr x kc] * B[kc x n]`
//! for up to [`WIDTH`] = two panels of [`NR`] columns, B packed `[kc][NR]` per
//! panel. The AVX-512 one keeps a 6 x 32 block of C in twelve zmm registers
//! (two per row), so each broadcast activation feeds two FMAs: one load per
//! FMA pair where a 16-wide kernel needs one per FMA, which matters on CPUs
//! with two 512-bit FMA units (Intel Xeon) whose load ports then bound the
//! 16-wide kernel; a lone panel takes a 6 x 16 AVX-512 kernel. The AVX2/FMA
//! one keeps a 6 x 16 block in twelve ymm registers and runs once per
//! panel; the portable one is the same loop on arrays. Chosen by [`select`]
//! from the kernel set's `gemm_f32` row.

use super::{MR, NR};
#[cfg(target_arch = "x86_64")]
use crate::cpu::Isa;

/// Columns one micro-kernel call covers: two panels.
pub(super) const WIDTH: usize = 2 * NR;

/// `(mr, kc, a, lda, b, ldb, b_hi, c, ldc, n_valid, accumulate)`: `C[mr x
/// n_valid] (+)= A B` for `n_valid <= WIDTH`. B's row `p` holds columns
/// `0..NR` at `b + p * ldb` and columns `NR..WIDTH` at `b + b_hi + p * ldb`
/// (read only when `n_valid > NR`).
///
/// # Safety
/// `a` must be valid for `mr` rows of `kc` values at stride `lda`; `b` (and
/// `b + b_hi` when `n_valid > NR`) for `kc` rows of `NR` values at stride
/// `ldb`; `c` for `mr` rows of `n_valid` values at stride `ldc`.
pub(super) type MicroKernel = unsafe fn(
    usize,
    usize,
    *const f32,
    usize,
    *const f32,
    usize,
    usize,
    *mut f32,
    usize,
    usize,
    bool,
);

/// Defines `$name`, a [`MicroKernel`] that calls `$panel` once per panel:
/// a one-panel kernel, taking the [`MicroKernel`] arguments without `b_hi`
/// for `n_valid <= NR`.
macro_rules! per_panel {
    ($vis:vis $name:ident, $panel:ident) => {
        #[allow(clippy::too_many_arguments)]
        $vis unsafe fn $name(
            mr: usize,
            kc: usize,
            a: *const f32,
            lda: usize,
            b: *const f32,
            ldb: usize,
            b_hi: usize,
            c: *mut f32,
            ldc: usize,
            n_valid: usize,
            accumulate: bool,
        ) {
            $panel(mr, kc, a, lda, b, ldb, c, ldc, n_valid.min(NR), accumulate);
            if n_valid > NR {
                $panel(
                    mr,
                    kc,
                    a,
                    lda,
                    b.add(b_hi),
                    ldb,
                    c.add(NR),
                    ldc,
                    n_valid - NR,
                    accumulate,
                );
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
use per_panel;

/// The micro-kernel the kernel set names.
pub(super) fn select() -> MicroKernel {
    #[cfg(target_arch = "x86_64")]
    {
        match crate::cpu::kernels().gemm_f32 {
            Isa::Avx512 => return avx512::dispatch,
            Isa::Avx2Fma => return avx2::dispatch,
            _ => {}
        }
    }
    portable_dispatch
}

/// The AVX2 kernel where this CPU has AVX2 and FMA.
#[cfg(test)]
pub(super) fn avx2_if_available() -> Option<MicroKernel> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Some(avx2::dispatch);
        }
    }
    None
}

/// The AVX-512 kernel where this CPU has AVX-512F, whichever the kernel set
/// chose (tests check it on any machine that can run it).
#[cfg(test)]
pub(super) fn avx512_if_available() -> Option<MicroKernel> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return Some(avx512::dispatch);
        }
    }
    None
}

/// The portable kernel (also used by tests to check the AVX2 one).
#[cfg(test)]
pub(super) fn portable() -> MicroKernel {
    portable_dispatch
}

per_panel!(portable_dispatch, portable_panel);

#[allow(clippy::too_many_arguments)]
unsafe fn portable_panel(
    mr: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    n_valid: usize,
    accumulate: bool,
) {
    let mut acc = [[0f32; NR]; MR];
    for p in 0..kc {
        let bp = std::slice::from_raw_parts(b.add(p * ldb), NR);
        for (i, row) in acc.iter_mut().enumerate().take(mr) {
            let av = *a.add(i * lda + p);
            for j in 0..NR {
                row[j] += av * bp[j];
            }
        }
    }
    store(&acc, mr, c, ldc, n_valid, accumulate);
}

unsafe fn store(
    acc: &[[f32; NR]; MR],
    mr: usize,
    c: *mut f32,
    ldc: usize,
    n_valid: usize,
    accumulate: bool,
) {
    for (i, row) in acc.iter().enumerate().take(mr) {
        let out = std::slice::from_raw_parts_mut(c.add(i * ldc), n_valid);
        for j in 0..n_valid {
            out[j] = if accumulate { out[j] + row[j] } else { row[j] };
        }
    }
}

/// `$kernel::<mr>($args)`: a SIMD kernel monomorphized per row count, so
/// its accumulators stay in registers.
#[cfg(target_arch = "x86_64")]
macro_rules! by_rows {
    ($mr:expr, $kernel:ident, ($($arg:expr),*)) => {
        match $mr {
            6 => $kernel::<6>($($arg),*),
            5 => $kernel::<5>($($arg),*),
            4 => $kernel::<4>($($arg),*),
            3 => $kernel::<3>($($arg),*),
            2 => $kernel::<2>($($arg),*),
            _ => $kernel::<1>($($arg),*),
        }
    };
}
#[cfg(target_arch = "x86_64")]
use by_rows;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    // One call of the 6 x 16 kernel per panel.
    super::per_panel!(pub(super) dispatch, panel);

    #[allow(clippy::too_many_arguments)]
    unsafe fn panel(
        mr: usize,
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        n_valid: usize,
        accumulate: bool,
    ) {
        super::by_rows!(
            mr,
            kernel,
            (kc, a, lda, b, ldb, c, ldc, n_valid, accumulate)
        )
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel<const R: usize>(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        n_valid: usize,
        accumulate: bool,
    ) {
        debug_assert!(R <= MR && NR == 16);
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        for p in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(p * ldb));
            let b1 = _mm256_loadu_ps(b.add(p * ldb + 8));
            for i in 0..R {
                let av = _mm256_broadcast_ss(&*a.add(i * lda + p));
                lo[i] = _mm256_fmadd_ps(av, b0, lo[i]);
                hi[i] = _mm256_fmadd_ps(av, b1, hi[i]);
            }
        }
        if n_valid == NR {
            for i in 0..R {
                let cp = c.add(i * ldc);
                let (mut v0, mut v1) = (lo[i], hi[i]);
                if accumulate {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(cp));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(cp.add(8)));
                }
                _mm256_storeu_ps(cp, v0);
                _mm256_storeu_ps(cp.add(8), v1);
            }
        } else {
            let mut tmp = [0f32; NR];
            for i in 0..R {
                _mm256_storeu_ps(tmp.as_mut_ptr(), lo[i]);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), hi[i]);
                let cp = c.add(i * ldc);
                for (j, &v) in tmp.iter().enumerate().take(n_valid) {
                    *cp.add(j) = if accumulate { *cp.add(j) + v } else { v };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// The 6 x 32 kernel where both panels have columns, the 6 x 16 one
    /// where only the first has.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn dispatch(
        mr: usize,
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        b_hi: usize,
        c: *mut f32,
        ldc: usize,
        n_valid: usize,
        accumulate: bool,
    ) {
        if n_valid > NR {
            super::by_rows!(
                mr,
                two_panels,
                (kc, a, lda, b, ldb, b_hi, c, ldc, n_valid, accumulate)
            )
        } else {
            super::by_rows!(
                mr,
                one_panel,
                (kc, a, lda, b, ldb, c, ldc, n_valid, accumulate)
            )
        }
    }

    /// Two zmm hold a row's 32 outputs: each broadcast activation feeds two
    /// FMAs, and six rows keep twelve FMA chains in flight (a 4-cycle FMA
    /// on two units needs eight).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn two_panels<const R: usize>(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        b_hi: usize,
        c: *mut f32,
        ldc: usize,
        n_valid: usize,
        accumulate: bool,
    ) {
        debug_assert!(R <= MR && NR == 16 && n_valid > NR && n_valid <= 2 * NR);
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        // Four k per iteration: the address arithmetic of the six rows and
        // the loop's own uops are paid once per 48 FMAs. One k per
        // iteration took 34 uops for 12 FMAs, at the front end's limit
        // (six a cycle) for the six cycles the FMAs need on two units.
        let step = |p: usize, lo: &mut [__m512; R], hi: &mut [__m512; R]| {
            let b0 = _mm512_loadu_ps(b.add(p * ldb));
            let b1 = _mm512_loadu_ps(b.add(b_hi + p * ldb));
            for i in 0..R {
                let av = _mm512_set1_ps(*a.add(i * lda + p));
                lo[i] = _mm512_fmadd_ps(av, b0, lo[i]);
                hi[i] = _mm512_fmadd_ps(av, b1, hi[i]);
            }
        };
        let mut p = 0;
        while p + 4 <= kc {
            for u in 0..4 {
                step(p + u, &mut lo, &mut hi);
            }
            p += 4;
        }
        while p < kc {
            step(p, &mut lo, &mut hi);
            p += 1;
        }
        // Lanes of the second panel past n_valid are neither read nor written.
        let mask = super::super::lane_mask(n_valid - NR);
        for i in 0..R {
            let cp = c.add(i * ldc);
            let (mut v0, mut v1) = (lo[i], hi[i]);
            if accumulate {
                v0 = _mm512_add_ps(v0, _mm512_loadu_ps(cp));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mask, cp.add(NR)));
            }
            _mm512_storeu_ps(cp, v0);
            _mm512_mask_storeu_ps(cp.add(NR), mask, v1);
        }
    }

    /// One zmm holds a row's 16 outputs: a ragged last panel, and LoRA's
    /// rank-16 products (`x A^T`, `dy B`), which are all one panel wide.
    /// `even` and `odd` accumulate the even and odd `k`, so six rows keep
    /// twelve FMA chains in flight where one chain per row would leave the
    /// FMA units waiting on latency (the rank-16 products ran 15 % slower).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn one_panel<const R: usize>(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        n_valid: usize,
        accumulate: bool,
    ) {
        debug_assert!(R <= MR && NR == 16 && n_valid <= NR);
        let mut even = [_mm512_setzero_ps(); R];
        let mut odd = [_mm512_setzero_ps(); R];
        let mut p = 0;
        while p + 1 < kc {
            let b0 = _mm512_loadu_ps(b.add(p * ldb));
            let b1 = _mm512_loadu_ps(b.add((p + 1) * ldb));
            for i in 0..R {
                let row = a.add(i * lda + p);
                even[i] = _mm512_fmadd_ps(_mm512_set1_ps(*row), b0, even[i]);
                odd[i] = _mm512_fmadd_ps(_mm512_set1_ps(*row.add(1)), b1, odd[i]);
            }
            p += 2;
        }
        if p < kc {
            let b0 = _mm512_loadu_ps(b.add(p * ldb));
            for (i, acc) in even.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(i * lda + p)), b0, *acc);
            }
        }
        let mut acc = even;
        for (acc, &odd) in acc.iter_mut().zip(&odd) {
            *acc = _mm512_add_ps(*acc, odd);
        }
        let mask = super::super::lane_mask(n_valid);
        for (i, &acc) in acc.iter().enumerate() {
            let cp = c.add(i * ldc);
            let mut v = acc;
            if accumulate {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, cp));
            }
            _mm512_mask_storeu_ps(cp, mask, v);
        }
    }
}
