//! The trainer allocates and frees buffers of tens of MiB for every block of
//! every sequence (a `[T, n_ff]` activation is 40 MiB at T = 2048 for
//! Qwen2.5-0.5B). glibc serves blocks above its mmap threshold (at most
//! 32 MiB by its dynamic rule) with fresh `mmap`s and unmaps them on free, so
//! each one is page-faulted in again, zeroed by the kernel, on its next use:
//! measured 3.4 million page faults in 4 training steps of SmolLM2 at
//! T = 2048, and keeping more activations made a step slower, not faster.
//! Raising the threshold and the trim threshold keeps freed memory in the heap
//! for reuse: 0.5 million faults, and the step 1.2x faster. The trim
//! threshold must be "never" (-1), not merely large: `mallopt` takes an `int`,
//! and the 2 GiB of `i32::MAX` is less than Qwen2.5-0.5B's tape at T = 2048
//! (2.4 GB freed at once at the end of each step), which was then handed back
//! and faulted in again every step (630 k faults, a tenth of the step).

use std::sync::Once;

/// Makes glibc's malloc keep freed memory for reuse (process-wide; once).
/// [`crate::train::Trainer`] calls it when built. The process's resident
/// memory then stays near its peak instead of shrinking between steps. A
/// no-op on other C libraries.
///
/// It works fully on the process's main thread, whose heap grows without
/// bound. glibc gives every other thread an arena of 64 MiB heaps, and a
/// block larger than that is mapped and unmapped on each use whatever this
/// sets: a trainer stepped from a spawned thread keeps Qwen2.5-0.5B's
/// 40 MiB activations at T = 2048, but not a 1.5B model's 70 MiB ones
/// (`[T, n_ff]` in f32, n_ff = 8960); step it from the main thread, as the
/// `cleaner` command does.
///
/// Blocks freed together keep the heap's top where it was, even above the
/// 2 GiB that the largest positive trim threshold `mallopt` takes would
/// allow (a doctest runs on its process's main thread, whose heap this is):
///
/// ```
/// # #[cfg(all(target_os = "linux", target_env = "gnu"))]
/// # {
/// cleaner_engine::train::retain_freed_memory();
/// let top = || unsafe { libc::sbrk(0) } as usize;
/// // 24 blocks of 100 MiB, as a 2.4 GB training tape is; never written, so
/// // only address space is taken.
/// let blocks: Vec<Vec<u8>> = (0..24).map(|_| Vec::with_capacity(100 << 20)).collect();
/// let grown = top();
/// drop(blocks);
/// assert_eq!(top(), grown, "the heap was trimmed after freeing 2.4 GB");
/// # }
/// ```
pub fn retain_freed_memory() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; it is called
        // once, and glibc serializes it with allocations.
        unsafe {
            // Blocks up to 1 GiB come from the heap, not their own mmap.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            // Never give the top of the heap back on free (-1 is glibc's
            // "disable trimming"; i32::MAX, 2 GiB, was passed before and a
            // step that frees more at once, Qwen2.5-0.5B's 2.4 GB tape at
            // T = 2048, was trimmed and faulted in again every step).
            libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        }
    });
}

/// Hands the heap's free memory back to the system now (glibc's
/// `malloc_trim`): for a process that is done training, or that measures
/// one run's peak after another's. A no-op on other C libraries.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages; glibc serializes it with
    // allocations.
    unsafe {
        libc::malloc_trim(0);
    }
}
