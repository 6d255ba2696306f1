//! AMX-BF16 tiles for the bf16 products with the weights
//! ([`super::matmul_wt_bf16_plus`], [`super::matmul_w_bf16_plus`]):
//! `tdpbf16ps` multiplies a 16 x 32 bf16 tile by a 16 x 16-pair tile into
//! a 16 x 16 f32 tile, 8,192 multiply-adds per instruction against the 32
//! of an AVX-512 `vdpbf16ps`, on Intel Xeons since Sapphire Rapids.
//!
//! The operands are the bf16 path's own: activations as rows of pairs, and
//! weights packed `[pair row][column]` (`x W^T`'s 32-column panels, `x W`'s
//! column groups), which is the layout a B tile wants (pair `q` of output
//! `j` at row `q`, column `j`). A block is 32 activation rows by 32
//! columns: four C tiles, two A tiles, two B tiles, every tile whole (16
//! rows of 64 bytes): the caller pads the activation rows and the pair rows
//! with zeros to whole tiles, so no tile is ever configured smaller, and
//! configures the tiles once per task.
//!
//! The default wherever the tiles run ([`crate::cpu::kernels`];
//! `CLEANER_BF16=avx512` keeps `vdpbf16ps`): on an Emerald Rapids Xeon the
//! bf16 training step ran 2.2-2.9x faster on them
//! (measurements/train-step-intel-amx). The development machines (AMD
//! Zen 4 and Zen 5) cannot run them: the blocking, padding and packing are
//! tested everywhere through [`Model`], a software model of the tile
//! instructions that the same kernel code drives; [`Hw`] issues the
//! instructions themselves, tested where AMX runs.

/// Rows of a tile, and pairs (or f32 values) in a tile row of 64 bytes.
pub(crate) const TILE: usize = 16;
/// Rows and columns of a block: 2 x 2 tiles of C.
pub(crate) const BLOCK: usize = 2 * TILE;

/// The tile operations the block kernel uses, on tile registers named by
/// number: the instructions ([`Hw`]) or their software model ([`Model`]).
///
/// # Safety
/// Every pointer must be valid for 16 rows of 64 bytes at its stride;
/// [`Tiles::configure`] must precede the other calls on the same thread.
pub(crate) trait Tiles {
    /// Eight 16 x 64-byte tiles: 0-3 for C, 4 and 5 for A, 6 and 7 for B.
    unsafe fn configure();
    /// Tile `T` = 0.
    unsafe fn zero<const T: u8>();
    /// Tile `T` = 16 rows of 64 bytes from `p`, `stride` bytes apart.
    unsafe fn load<const T: u8>(p: *const u8, stride: usize);
    /// 16 rows of 64 bytes at `p`, `stride` apart = tile `T`.
    unsafe fn store<const T: u8>(p: *mut u8, stride: usize);
    /// Tile `C` += tile `A` (bf16 pairs) x tile `B` (bf16 pairs).
    unsafe fn dot<const C: u8, const A: u8, const B: u8>();
    /// Ends the tile state.
    unsafe fn release();
}

/// One run of the left operand of a block: `pairs` pairs of each row,
/// rows `lda` pairs apart, against `pairs` pair rows of B from `b`. Both
/// bf16 kernels take their operands as runs (the `vdpbf16ps` kernel too,
/// on row-major A: pair `q` of row `i` at `a + i * lda + q`); for the tiles
/// `pairs` is a multiple of 16, whole tiles of zeros past the data, and
/// each step of 16 pairs starts `step` u32 after the previous (16 in a
/// row-major A, a block's two tiles in [`super::tiled::TileRows`]).
#[derive(Clone, Copy)]
pub(crate) struct Run {
    pub a: *const u32,
    pub lda: usize,
    pub step: usize,
    pub b: *const u32,
    pub pairs: usize,
}

/// `c[32][32] = sum over runs of A[32 rows, pairs] B[pairs rows, 32
/// columns]`, B's pair rows `ldb` u32 apart: four C tiles,
/// each A and B tile loaded once for two `tdpbf16ps` (a 16 x 32 block
/// loaded three tiles for two). The caller configures the tiles once per
/// task ([`Tiles::configure`]) and releases them after: `ldtilecfg` per
/// block would cost a noticeable share of a block's 112 `tdpbf16ps` at 896
/// inputs.
///
/// # Safety
/// The tiles must be configured on this thread; each run's A must be
/// readable for 32 rows of `pairs` pairs at stride `lda`, its B for
/// `pairs` rows of 32 pairs at stride `ldb`.
pub(crate) unsafe fn block<T: Tiles>(runs: &[Run], ldb: usize, c: &mut [f32; BLOCK * BLOCK]) {
    block_into::<T>(runs, ldb, c.as_mut_ptr(), BLOCK, false, Prefetch::NONE);
}

/// Which operands [`block_into`] asks the CPU to bring into L1 ahead of
/// their tile loads, and how many 16-pair steps ahead. A tile load waits
/// for its 16 lines; from L2 that wait, not the products, set the pace
/// (the tile products on an Emerald Rapids Xeon ran at a fifth of their
/// speed on operands in L1 when B came from L2), and the CPU's own
/// prefetchers bring lines into L2, not into L1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prefetch {
    pub a: bool,
    pub b: bool,
    pub steps: usize,
}

impl Prefetch {
    pub const NONE: Prefetch = Prefetch {
        a: false,
        b: false,
        steps: 0,
    };
}

/// Asks for the 64-byte lines of `bytes` bytes from `p` in L1: a hint
/// that never faults, so `p` may point past a buffer.
#[inline(always)]
fn prefetch_l1(p: *const u32, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes).step_by(64) {
        // SAFETY: prefetching has no architectural effect and never
        // faults, whatever the address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                p.cast::<i8>().wrapping_add(off),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

/// [`block`] straight into a whole 32 x 32 block of the output, rows `ldc`
/// f32 apart: the C tiles start from what it holds (`accumulate`) or from
/// zero, and are stored back into it, with no scratch block and no pass
/// adding one into the output (a 4 KiB store, reload and add per block,
/// against 112 `tdpbf16ps` at 896 inputs). The caller takes [`block`] for
/// ragged blocks, whose tiles would reach past the output.
///
/// # Safety
/// As [`block`]; `c` must be valid for 32 rows of 32 values at stride
/// `ldc`, written by no one else meanwhile.
pub(crate) unsafe fn block_into<T: Tiles>(
    runs: &[Run],
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    prefetch: Prefetch,
) {
    let ld = 4 * ldc;
    if accumulate {
        T::load::<0>(c.cast(), ld);
        T::load::<1>(c.add(TILE).cast(), ld);
        T::load::<2>(c.add(TILE * ldc).cast(), ld);
        T::load::<3>(c.add(TILE * ldc + TILE).cast(), ld);
    } else {
        T::zero::<0>();
        T::zero::<1>();
        T::zero::<2>();
        T::zero::<3>();
    }
    for r in runs {
        debug_assert!(r.pairs.is_multiple_of(TILE));
        for g in 0..r.pairs / TILE {
            let a = r.a.add(g * r.step);
            let b = r.b.add(g * TILE * ldb);
            // A step of B is 16 pair rows; of A, two tiles when `step`
            // holds them (a row-major A is not prefetched). Past the run
            // the lines are the next slice's or nobody's: a hint only.
            if prefetch.b {
                prefetch_l1(b.wrapping_add(prefetch.steps * TILE * ldb), 4 * TILE * ldb);
            }
            if prefetch.a && r.step == BLOCK * TILE {
                prefetch_l1(a.wrapping_add(prefetch.steps * r.step), 4 * r.step);
            }
            // Each load just before its first use, so that a product waits
            // for its own operands only.
            T::load::<4>(a.cast(), 4 * r.lda);
            T::load::<6>(b.cast(), 4 * ldb);
            T::dot::<0, 4, 6>();
            T::load::<7>(b.add(TILE).cast(), 4 * ldb);
            T::dot::<1, 4, 7>();
            T::load::<5>(a.add(TILE * r.lda).cast(), 4 * r.lda);
            T::dot::<2, 5, 6>();
            T::dot::<3, 5, 7>();
        }
    }
    T::store::<0>(c.cast(), ld);
    T::store::<1>(c.add(TILE).cast(), ld);
    T::store::<2>(c.add(TILE * ldc).cast(), ld);
    T::store::<3>(c.add(TILE * ldc + TILE).cast(), ld);
}

/// `c[m x n] (+)= a[m x kp pairs] b[kp pairs x n]` on the tiles: the
/// contract of [`super::bf16::gemm_tile_bf16`], the building block of the
/// attention's bf16 products (64 x 64 tiles with 32 pairs of head
/// dimensions or of positions to sum over). Whole 32 x 32 blocks land in
/// `c` ([`block_into`]); ragged ones go through a scratch block. Where the
/// tiles would read past the operands (a ragged last block of rows, pairs
/// not a whole number of tiles), the operands are first copied into
/// zero-padded buffers of this thread. The tiles are configured and
/// released per call: a call is 32 `tdpbf16ps` and more, and the tasks that
/// make the calls are also where other tile code may run.
///
/// # Safety
/// `T`'s instructions must run here (or `T` is the model); `a` must be
/// readable for `m` rows of `kp` pairs (stride `lda`), `b` for `kp` rows of
/// `n` rounded up to a multiple of 32 pairs (stride `ldb`), `c` writable
/// for `m` rows of `n` values (stride `ldc`), written by no one else
/// meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_tile<T: Tiles>(
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
    if m == 0 || n == 0 {
        return;
    }
    let kp16 = kp.div_ceil(TILE) * TILE;
    let (m32, n32) = (m.div_ceil(BLOCK) * BLOCK, n.div_ceil(BLOCK) * BLOCK);
    PADS.with(|pads| {
        let pads = &mut *pads.borrow_mut();
        let (a, lda) = if kp16 != kp || m32 != m {
            pads.a.clear();
            pads.a.resize(m32 * kp16, 0);
            for i in 0..m {
                let row = std::slice::from_raw_parts(a.add(i * lda), kp);
                pads.a[i * kp16..][..kp].copy_from_slice(row);
            }
            (pads.a.as_ptr(), kp16)
        } else {
            (a, lda)
        };
        let (b, ldb) = if kp16 != kp {
            pads.b.clear();
            pads.b.resize(kp16 * n32, 0);
            for r in 0..kp {
                let row = std::slice::from_raw_parts(b.add(r * ldb), n32);
                pads.b[r * n32..][..n32].copy_from_slice(row);
            }
            (pads.b.as_ptr(), n32)
        } else {
            (b, ldb)
        };
        T::configure();
        for i0 in (0..m).step_by(BLOCK) {
            let mr = BLOCK.min(m - i0);
            for j0 in (0..n).step_by(BLOCK) {
                let nv = BLOCK.min(n - j0);
                let run = [Run {
                    a: a.add(i0 * lda),
                    lda,
                    step: TILE,
                    b: b.add(j0),
                    pairs: kp16,
                }];
                let out = c.add(i0 * ldc + j0);
                if mr == BLOCK && nv == BLOCK {
                    block_into::<T>(&run, ldb, out, ldc, accumulate, Prefetch::NONE);
                    continue;
                }
                block::<T>(&run, ldb, &mut pads.c);
                for r in 0..mr {
                    let dst = std::slice::from_raw_parts_mut(out.add(r * ldc), nv);
                    let src = &pads.c[r * BLOCK..][..nv];
                    if accumulate {
                        dst.iter_mut().zip(src).for_each(|(d, &v)| *d += v);
                    } else {
                        dst.copy_from_slice(src);
                    }
                }
            }
        }
        T::release();
    });
}

/// [`gemm_tile`]'s zero-padded operands and ragged block, per thread.
struct Pads {
    a: Vec<u32>,
    b: Vec<u32>,
    c: [f32; BLOCK * BLOCK],
}

thread_local! {
    static PADS: std::cell::RefCell<Pads> = const {
        std::cell::RefCell::new(Pads {
            a: Vec::new(),
            b: Vec::new(),
            c: [0.0; BLOCK * BLOCK],
        })
    };
}

/// A buffer of `u32` starting on a 64-byte line, so that every 64-byte tile
/// row of a panel whose row length is a multiple of 16 lies in one line (a
/// `Vec<u32>` is only 4-byte aligned: a row could span two).
pub(crate) struct Lines(Vec<Line>);

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; 16]);

impl Lines {
    /// `n` zeros (rounded up to whole lines), from the allocator's zeroed
    /// memory as `vec![0u32; n]` is: a large buffer then costs nothing
    /// until written, where filling it line by line first cost a pass over
    /// it (5 MB for `dy W`'s activations at T = 512).
    pub(crate) fn zeros(n: usize) -> Lines {
        let len = n.div_ceil(16);
        if len == 0 {
            return Lines(Vec::new());
        }
        let layout = std::alloc::Layout::array::<Line>(len).expect("Lines: size overflows");
        // SAFETY: the layout is non-empty; all-zero bytes are a valid Line;
        // the Vec takes the allocation with the layout it was made with.
        unsafe {
            let p = std::alloc::alloc_zeroed(layout).cast::<Line>();
            if p.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            Lines(Vec::from_raw_parts(p, len, len))
        }
    }
    pub(crate) fn as_slice(&self) -> &[u32] {
        // SAFETY: Line is 16 u32 with no padding (repr(C), 64 bytes).
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), 16 * self.0.len()) }
    }
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u32] {
        // SAFETY: as in as_slice.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), 16 * self.0.len()) }
    }
}

/// Whether this CPU and OS run AMX-BF16 here: CPUID's AMX-TILE and
/// AMX-BF16, the OS's tile state in XCR0, and Linux's permission for this
/// process to use tile data (asked once; a kernel without it raises SIGILL
/// on the first tile load). Asks for the permission as a side effect.
pub(crate) fn usable() -> Result<(), String> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // CPUID exists on every x86_64 CPU (safe since Rust 1.87); leaf 7
        // is read only when leaf 0 reports it.
        let (max_leaf, leaf1) = (__cpuid(0).eax, __cpuid(1));
        if max_leaf < 7 {
            return Err("CPUID has no leaf 7".into());
        }
        let leaf7 = __cpuid_count(7, 0);
        let (tile, bf16) = (leaf7.edx & (1 << 24) != 0, leaf7.edx & (1 << 22) != 0);
        if !(tile && bf16) {
            return Err("the CPU has no AMX-TILE and AMX-BF16".into());
        }
        if leaf1.ecx & (1 << 27) == 0 {
            return Err("the OS has not enabled XSAVE".into());
        }
        // SAFETY: OSXSAVE is set (checked above), so XGETBV is allowed.
        let xcr0 = unsafe { xcr0() };
        if xcr0 & (0b11 << 17) != 0b11 << 17 {
            return Err(format!(
                "the OS has not enabled the tile state (XCR0 {xcr0:#x})"
            ));
        }
        request_tile_data()
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        Err("AMX is used on x86-64 Linux only".into())
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    std::arch::x86_64::_xgetbv(0)
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: Linux 5.16 and
/// later give a process the tile-data state only when it asks.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_data() -> Result<(), String> {
    const SYS_ARCH_PRCTL: usize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: a plain system call with two integer arguments; it reads and
    // writes no memory of ours (the kernel clobbers rcx and r11).
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL as isize => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret == 0 {
        Ok(())
    } else {
        // ENOSPC (28): some thread's alternate signal stack is too small
        // for the 8 KiB of tile state a signal frame would then carry.
        let why = if ret == -28 {
            ": a thread's alternate signal stack is too small for the tile state"
        } else {
            ""
        };
        Err(format!(
            "Linux refused the tile-data permission (arch_prctl error {}{why})",
            -ret
        ))
    }
}

/// The instructions. Tile numbers are constants, so each `match` folds to
/// one instruction.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Hw;

#[cfg(target_arch = "x86_64")]
mod hw {
    use super::{Hw, Tiles};
    use std::arch::asm;

    /// Palette 1; tiles 0-7 of 16 rows x 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    const CONFIG: Config = {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        let mut t = 0;
        while t < 8 {
            // colsb[t] (u16 at 16 + 2t) = 64; rows[t] (u8 at 48 + t) = 16.
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
            t += 1;
        }
        Config(c)
    };

    macro_rules! on_tile {
        ($t:expr, $($n:literal => $body:expr),*) => {
            match $t {
                $($n => $body,)*
                _ => unreachable!("tile {} is not configured", $t),
            }
        };
    }

    impl Tiles for Hw {
        unsafe fn configure() {
            asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const Config, options(nostack, readonly));
        }
        unsafe fn zero<const T: u8>() {
            on_tile!(T,
                0 => asm!("tilezero tmm0", options(nostack, nomem)),
                1 => asm!("tilezero tmm1", options(nostack, nomem)),
                2 => asm!("tilezero tmm2", options(nostack, nomem)),
                3 => asm!("tilezero tmm3", options(nostack, nomem)),
                4 => asm!("tilezero tmm4", options(nostack, nomem)),
                5 => asm!("tilezero tmm5", options(nostack, nomem)),
                6 => asm!("tilezero tmm6", options(nostack, nomem)),
                7 => asm!("tilezero tmm7", options(nostack, nomem)))
        }
        unsafe fn load<const T: u8>(p: *const u8, stride: usize) {
            // Every tile, as the model: C tiles too (`block_into` starts
            // them from the output).
            on_tile!(T,
                0 => asm!("tileloadd tmm0, [{p} + {s} * 1]", p = in(reg) p, s = in(reg) stride, options(nostack, readonly)),
                1 => asm!("tileloadd tmm1, [{p} + {s} * 1]", p = in(reg) p, s = in(reg) stride, options(nostack, readonly)),
                2 => asm!("tileloadd tmm2, [{p} + {s} * 1]", p = in(reg) p, s = in(reg) stride, options(nostack, readonly)),
                3 => asm!("tileloadd tmm3, [{p} + {s} * 1]", p = in(reg) p, s = in(reg) stride, options(nostack, readonly)),
                4 => asm!("tileloadd tmm4, [{p} + {s} * 1]", p = in(reg) p, s = in(reg) stride, options(nostack, readonly)),
                5 => asm!("tileloadd tmm5, [{p} + {s} * 1]", p = in(reg) p, s = in(reg) stride, options(nostack, readonly)),
                6 => asm!("tileloadd tmm6, [{p} + {s} * 1]", p = in(reg) p, s = in(reg) stride, options(nostack, readonly)),
                7 => asm!("tileloadd tmm7, [{p} + {s} * 1]", p = in(reg) p, s = in(reg) stride, options(nostack, readonly)))
        }
        unsafe fn store<const T: u8>(p: *mut u8, stride: usize) {
            on_tile!(T,
                0 => asm!("tilestored [{p} + {s} * 1], tmm0", p = in(reg) p, s = in(reg) stride, options(nostack)),
                1 => asm!("tilestored [{p} + {s} * 1], tmm1", p = in(reg) p, s = in(reg) stride, options(nostack)),
                2 => asm!("tilestored [{p} + {s} * 1], tmm2", p = in(reg) p, s = in(reg) stride, options(nostack)),
                3 => asm!("tilestored [{p} + {s} * 1], tmm3", p = in(reg) p, s = in(reg) stride, options(nostack)),
                4 => asm!("tilestored [{p} + {s} * 1], tmm4", p = in(reg) p, s = in(reg) stride, options(nostack)),
                5 => asm!("tilestored [{p} + {s} * 1], tmm5", p = in(reg) p, s = in(reg) stride, options(nostack)),
                6 => asm!("tilestored [{p} + {s} * 1], tmm6", p = in(reg) p, s = in(reg) stride, options(nostack)),
                7 => asm!("tilestored [{p} + {s} * 1], tmm7", p = in(reg) p, s = in(reg) stride, options(nostack)))
        }
        unsafe fn dot<const C: u8, const A: u8, const B: u8>() {
            match (C, A, B) {
                (0, 4, 6) => asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem)),
                (1, 4, 7) => asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem)),
                (2, 5, 6) => asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem)),
                (3, 5, 7) => asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem)),
                _ => unreachable!("tdpbf16ps tmm{C}, tmm{A}, tmm{B} is not used"),
            }
        }
        unsafe fn release() {
            asm!("tilerelease", options(nostack, nomem));
        }
    }
}

/// The `tdpbf16ps` operand triples (C, A, B) that `Hw`'s `dot` issues: the
/// model refuses any other. `Hw`'s loads, stores and zeroing take every
/// tile, as the model's do.
#[cfg(test)]
const HW_DOTS: [(u8, u8, u8); 4] = [(0, 4, 6), (1, 4, 7), (2, 5, 6), (3, 5, 7)];

/// A software model of the tile instructions: eight tiles of 16 rows of 64
/// bytes per thread, `tdpbf16ps` as Intel's pseudo-code defines it (each
/// f32 lane of C adds the two products of a pair, products of bf16 values
/// being exact in f32). It runs the block kernel's addressing on any CPU.
#[cfg(test)]
pub(crate) struct Model;

#[cfg(test)]
thread_local! {
    static MODEL_TILES: std::cell::RefCell<[[u8; 64 * TILE]; 8]> =
        const { std::cell::RefCell::new([[0; 64 * TILE]; 8]) };
}

#[cfg(test)]
impl Model {
    fn with<R>(f: impl FnOnce(&mut [[u8; 64 * TILE]; 8]) -> R) -> R {
        MODEL_TILES.with(|t| f(&mut t.borrow_mut()))
    }

    fn word(tile: &[u8; 64 * TILE], row: usize, col: usize) -> u32 {
        let i = row * 64 + 4 * col;
        u32::from_le_bytes([tile[i], tile[i + 1], tile[i + 2], tile[i + 3]])
    }
}

#[cfg(test)]
impl Tiles for Model {
    unsafe fn configure() {}
    unsafe fn zero<const T: u8>() {
        Model::with(|t| t[T as usize] = [0; 64 * TILE]);
    }
    unsafe fn load<const T: u8>(p: *const u8, stride: usize) {
        Model::with(|t| {
            for r in 0..TILE {
                std::ptr::copy_nonoverlapping(
                    p.add(r * stride),
                    t[T as usize][64 * r..].as_mut_ptr(),
                    64,
                );
            }
        });
    }
    unsafe fn store<const T: u8>(p: *mut u8, stride: usize) {
        Model::with(|t| {
            for r in 0..TILE {
                std::ptr::copy_nonoverlapping(
                    t[T as usize][64 * r..].as_ptr(),
                    p.add(r * stride),
                    64,
                );
            }
        });
    }
    unsafe fn dot<const C: u8, const A: u8, const B: u8>() {
        // The model runs only what `Hw` issues, so that a test through it
        // cannot pass on an instruction the hardware path lacks.
        assert!(
            HW_DOTS.contains(&(C, A, B)),
            "tdpbf16ps tmm{C}, tmm{A}, tmm{B}: not issued by Hw"
        );
        let half = |w: u32, hi: bool| f32::from_bits(if hi { w & 0xffff_0000 } else { w << 16 });
        Model::with(|t| {
            let (a, b) = (t[A as usize], t[B as usize]);
            let c = &mut t[C as usize];
            for m in 0..TILE {
                for n in 0..TILE {
                    let mut acc = f32::from_bits(Model::word(c, m, n));
                    for k in 0..TILE {
                        let (x, y) = (Model::word(&a, m, k), Model::word(&b, k, n));
                        acc += half(x, false) * half(y, false);
                        acc += half(x, true) * half(y, true);
                    }
                    c[m * 64 + 4 * n..][..4].copy_from_slice(&acc.to_bits().to_le_bytes());
                }
            }
        });
    }
    unsafe fn release() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::bf16::{from_bf16, pair};

    /// `block` over `runs` (A rows `lda` apart, B rows 32 apart) against the
    /// f64 sum of the same bf16 values: products of bf16 values are exact,
    /// so the only difference is f32 summation.
    fn check_block(c: &[f32; BLOCK * BLOCK], runs: &[(&[u32], usize, &[u32], usize)]) {
        let lo = |w: u32| from_bf16(w as u16) as f64;
        let hi = |w: u32| from_bf16((w >> 16) as u16) as f64;
        for m in 0..BLOCK {
            for n in 0..BLOCK {
                let mut want = 0f64;
                for &(a, lda, b, groups) in runs {
                    for q in 0..groups * TILE {
                        let (x, y) = (a[m * lda + q], b[q * BLOCK + n]);
                        want += lo(x) * lo(y) + hi(x) * hi(y);
                    }
                }
                let got = c[m * BLOCK + n] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "row {m} column {n}: {got} against {want}"
                );
            }
        }
    }

    /// One block through the model, with two runs (the main reduction and
    /// a low-rank tail) at their own strides, every C tile different.
    #[test]
    fn the_model_block_sums_both_runs() {
        let (lda, lda2) = (40, 16);
        let val = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 25.0;
        let a: Vec<u32> = (0..BLOCK * lda).map(|i| pair(val(i), val(i + 7))).collect();
        let a2: Vec<u32> = (0..BLOCK * lda2)
            .map(|i| pair(val(i + 3), val(i + 11)))
            .collect();
        // B: 2 groups of the main run, then 1 of the tail.
        let b: Vec<u32> = (0..3 * TILE * BLOCK)
            .map(|i| pair(val(i + 5), val(i + 13)))
            .collect();
        let tail = &b[2 * TILE * BLOCK..];
        let runs = [
            Run {
                a: a.as_ptr(),
                lda,
                step: TILE,
                b: b.as_ptr(),
                pairs: 2 * TILE,
            },
            Run {
                a: a2.as_ptr(),
                lda: lda2,
                step: TILE,
                b: tail.as_ptr(),
                pairs: TILE,
            },
        ];
        let mut c = [f32::NAN; BLOCK * BLOCK];
        // SAFETY: every run's A has 32 rows of its groups' pairs at its
        // stride and B its pair rows; the model needs nothing of the CPU.
        unsafe {
            Model::configure();
            block::<Model>(&runs, BLOCK, &mut c);
            Model::release();
        }
        check_block(&c, &[(&a, lda, &b, 2), (&a2, lda2, tail, 1)]);
    }

    /// `block_into` writes a whole block of an output with rows 40 apart:
    /// the same values as `block` from zero, `block`'s plus what the block
    /// held when accumulating, and nothing past its 32 columns.
    #[test]
    fn the_model_block_lands_in_place_from_zero_or_on_what_was_there() {
        let lda = 24;
        let val = |i: usize| ((i * 29 % 89) as f32 - 44.0) / 22.0;
        let a: Vec<u32> = (0..BLOCK * lda).map(|i| pair(val(i), val(i + 5))).collect();
        let b: Vec<u32> = (0..TILE * BLOCK)
            .map(|i| pair(val(i + 3), val(i + 8)))
            .collect();
        let runs = [Run {
            a: a.as_ptr(),
            lda,
            step: TILE,
            b: b.as_ptr(),
            pairs: TILE,
        }];
        let mut sum = [f32::NAN; BLOCK * BLOCK];
        let ldc = 40;
        let before = |i: usize| (i % 13) as f32 - 6.0;
        let mut fresh: Vec<f32> = (0..BLOCK * ldc).map(before).collect();
        let mut added = fresh.clone();
        // SAFETY: A has 32 rows of 16 pairs, B 16 pair rows of 32; both
        // outputs hold 32 rows of ldc >= 32 values.
        unsafe {
            Model::configure();
            block::<Model>(&runs, BLOCK, &mut sum);
            block_into::<Model>(&runs, BLOCK, fresh.as_mut_ptr(), ldc, false, Prefetch::NONE);
            let ahead = Prefetch {
                a: true,
                b: true,
                steps: 2,
            };
            block_into::<Model>(&runs, BLOCK, added.as_mut_ptr(), ldc, true, ahead);
            Model::release();
        }
        check_block(&sum, &[(&a, lda, &b, 1)]);
        for m in 0..BLOCK {
            for n in 0..ldc {
                let i = m * ldc + n;
                if n >= BLOCK {
                    assert_eq!(
                        (fresh[i], added[i]),
                        (before(i), before(i)),
                        "past the block"
                    );
                    continue;
                }
                let s = sum[m * BLOCK + n];
                assert_eq!(fresh[i], s, "row {m} column {n} from zero");
                let want = before(i) + s;
                assert!(
                    (added[i] - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "row {m} column {n}: {} against {want}",
                    added[i]
                );
            }
        }
    }

    /// Where the CPU and OS have AMX, the instructions sum a block as the
    /// f64 oracle does (and so as the model, which the other tests drive
    /// through every product shape); elsewhere this says why it did not run
    /// them and checks that the refusal names the missing piece.
    #[test]
    fn the_instructions_match_the_oracle_where_amx_runs() {
        match usable() {
            Err(why) => {
                eprintln!("AMX not run here: {why}");
                assert!(
                    why.contains("AMX") || why.contains("XSAVE") || why.contains("tile"),
                    "{why}"
                );
            }
            Ok(()) => {
                #[cfg(target_arch = "x86_64")]
                {
                    let val = |i: usize| ((i * 53 % 97) as f32 - 48.0) / 16.0;
                    let a = Lines::zeros(BLOCK * 48);
                    let mut a = a;
                    for (i, v) in a.as_mut_slice().iter_mut().enumerate() {
                        *v = pair(val(i), val(i + 1));
                    }
                    let b: Vec<u32> = (0..3 * TILE * BLOCK)
                        .map(|i| pair(val(i + 2), val(i + 9)))
                        .collect();
                    let runs = [Run {
                        a: a.as_slice().as_ptr(),
                        lda: 48,
                        step: TILE,
                        b: b.as_ptr(),
                        pairs: 3 * TILE,
                    }];
                    let mut c = [f32::NAN; BLOCK * BLOCK];
                    // SAFETY: usable() said the instructions run here; the
                    // operands hold 3 groups of whole tiles.
                    unsafe {
                        Hw::configure();
                        block::<Hw>(&runs, BLOCK, &mut c);
                        Hw::release();
                    }
                    check_block(&c, &[(a.as_slice(), 48, &b, 3)]);
                }
            }
        }
    }
}
