//! Register-blocked micro-kernels: `C[mr x NR] (+)= A[mr x kc] * B[kc x NR]`
//! with B packed `[kc][NR]`. The AVX2/FMA version keeps the 6x16 block of C in
//! twelve ymm registers; the AVX-512 one keeps it in six zmm registers twice
//! over (even and odd `k` accumulate apart, so twelve FMA chains are in
//! flight, enough to fill two 512-bit FMA units); the portable one is the same
//! loop on arrays. Chosen by [`select`] from the kernel set's `gemm_f32` row.

use super::{MR, NR};
#[cfg(target_arch = "x86_64")]
use crate::cpu::Isa;

/// `(mr, kc, a, lda, b_packed, ldb, c, ldc, n_valid, accumulate)`; B's row `p`
/// (NR values) starts at `b + p * ldb`.
///
/// # Safety
/// `a` must be valid for `mr` rows of `kc` values at stride `lda`; `b` for
/// `kc` rows of `NR` values at stride `ldb`; `c` for `mr` rows of `n_valid` values at stride `ldc`.
pub(super) type MicroKernel =
    unsafe fn(usize, usize, *const f32, usize, *const f32, usize, *mut f32, usize, usize, bool);

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

#[allow(clippy::too_many_arguments)]
unsafe fn portable_dispatch(
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

/// Defines a SIMD module's `dispatch` (a [`MicroKernel`]) over its
/// `kernel::<R>`, monomorphized per row count so the accumulators stay in
/// registers.
#[cfg(target_arch = "x86_64")]
macro_rules! dispatch_by_rows {
    () => {
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn dispatch(
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
            match mr {
                6 => kernel::<6>(kc, a, lda, b, ldb, c, ldc, n_valid, accumulate),
                5 => kernel::<5>(kc, a, lda, b, ldb, c, ldc, n_valid, accumulate),
                4 => kernel::<4>(kc, a, lda, b, ldb, c, ldc, n_valid, accumulate),
                3 => kernel::<3>(kc, a, lda, b, ldb, c, ldc, n_valid, accumulate),
                2 => kernel::<2>(kc, a, lda, b, ldb, c, ldc, n_valid, accumulate),
                _ => kernel::<1>(kc, a, lda, b, ldb, c, ldc, n_valid, accumulate),
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
use dispatch_by_rows;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    super::dispatch_by_rows!();

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

    super::dispatch_by_rows!();

    /// One zmm holds a row's 16 outputs; `even` and `odd` accumulate the even
    /// and odd `k`, so each row has two independent FMA chains (a 4-cycle
    /// FMA on two units needs eight in flight; six rows give twelve).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
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
        // Lanes past n_valid are neither read nor written.
        let mask = super::super::lane_mask(n_valid);
        for i in 0..R {
            let cp = c.add(i * ldc);
            let mut v = _mm512_add_ps(even[i], odd[i]);
            if accumulate {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, cp));
            }
            _mm512_mask_storeu_ps(cp, mask, v);
        }
    }
}
