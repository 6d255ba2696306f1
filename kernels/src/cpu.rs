//! Run-time CPU feature checks shared by the kernels.

/// Whether the CPU has AVX2 and FMA, which every `*_avx2` build of a kernel
/// is compiled for (`is_x86_feature_detected!` caches the answer).
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
