//! The kernel set this CPU runs, chosen once.
//!
//! Every kernel family with more than one build (plain Rust, the same code
//! compiled for AVX2 and FMA, AVX-512, AVX-512 BF16) asks [`kernels`] which one to
//! run. The CPU is probed once, on first use, and the answer is one table,
//! [`KernelSet`], so what runs is decided in one place and can be printed
//! next to a benchmark ([`KernelSet::describe`]).

use std::fmt;
use std::sync::OnceLock;

/// An instruction-set build of a kernel family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust for the baseline target: runs on any CPU.
    Portable,
    /// AVX2 and FMA: the plain-Rust body compiled for them (vectorized by
    /// the compiler), or hand-written intrinsics for the GEMM micro-kernel.
    Avx2Fma,
    /// AVX-512 (F, BW, VL) with FMA: hand-written 16-lane intrinsics (the
    /// f32 GEMM micro-kernel, the GEMV's decode-and-dot rows), or the
    /// plain-Rust body compiled for them (the element-wise families).
    Avx512,
    /// AVX-512F and AVX-512 BF16 (`vdpbf16ps`, `vcvtne2ps2bf16`).
    Avx512Bf16,
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512-bf16",
        })
    }
}

/// Which build each kernel family runs: one row per family.
///
/// A row never names an instruction set the CPU lacks: the kernels call
/// their `#[target_feature]` builds on the strength of this table alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSet {
    /// The f32 GEMM micro-kernel (6 x 16 tile) behind `matmul_wt`,
    /// `matmul_w` and `matmul_tn`: AVX-512 where the CPU has it, else AVX2,
    /// else portable.
    pub gemm_f32: Isa,
    /// Dot products of the one- and two-row products (GEMV) where a row is
    /// decoded first (see `gemv`).
    pub dot: Isa,
    /// The one- and two-row products (GEMV) themselves: with AVX-512 each
    /// row of the common block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
    /// Q6_K) decoded and multiplied in one pass (`quant::dot_avx512`);
    /// otherwise, and for the other formats, each row decoded (`dequant`)
    /// and then multiplied (`dot`).
    pub gemv: Isa,
    /// The block decoders of quantized weights.
    pub dequant: Isa,
    /// `exp_weights`: the `exp` approximation summed over a row (softmax,
    /// sampling).
    pub exp: Isa,
    /// The per-token element-wise passes: SwiGLU and RMSNorm, forward and
    /// backward.
    pub swiglu: Isa,
    /// The per-task routines of flash attention, forward and backward.
    pub attention: Isa,
    /// The bf16 products and f32 -> bf16 conversions of `Precision::Bf16`;
    /// `None`: that precision runs the f32 kernels.
    pub bf16: Option<Isa>,
    /// Whether the bf16 products beat the f32 ones here, which is what
    /// `Precision::auto` (the `"auto"` precision of a run config) goes by.
    /// AMD Zen 4 issues `vdpbf16ps` as fast as an f32 FMA, so it does twice
    /// the multiply-adds: bf16 trained at 2.1x the f32 rate there, and at
    /// 1.6-1.7x on Zen 5, whose full-width units double both
    /// (measurements/train-step-zen5). Intel's Xeons issue it on one of
    /// their two 512-bit FMA ports, the same multiply-add rate as f32 FMAs,
    /// and the conversions come on top: bf16 trained at 0.85x f32 on
    /// `vdpbf16ps` on an Emerald Rapids Xeon (measurements/train-step-intel-amx).
    /// Intel's bf16 speed is AMX's: where [`KernelSet::bf16_amx`] holds,
    /// bf16 beats f32 (2.0-2.7x there).
    pub bf16_beats_f32: bool,
    /// Whether the bf16 products with the weights (`x W^T`, `dy W`) run on
    /// AMX-BF16 tiles (`matmul::amx`) instead of `vdpbf16ps`: wherever the
    /// CPU, the OS and Linux's tile-data permission allow it. On an Emerald
    /// Rapids Xeon the bf16 step ran 2.2-2.9x faster on the tiles
    /// (measurements/train-step-intel-amx). `CLEANER_BF16=avx512` keeps
    /// them on `vdpbf16ps` (and asks Linux for no tile permission), which
    /// makes f32 the faster precision again on Intel.
    pub bf16_amx: bool,
    /// Whether attention's tile products run in bf16 when the model asks
    /// for bf16 ([`crate::matmul::Precision::for_attention`]): where
    /// `vdpbf16ps` beats f32 FMAs (AMD), and where they run on AMX tiles
    /// (with [`KernelSet::bf16_amx`]). On Intel without the tiles
    /// `vdpbf16ps` is the slower: on an Emerald Rapids Xeon the f32
    /// attention ran 1.23-1.26x (forward) and 1.22-1.33x (backward) the
    /// `vdpbf16ps` one in two sessions (measurements/train-step-intel-amx).
    pub attention_bf16: bool,
}

/// What the CPU offers that some kernel build needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Features {
    avx2_fma: bool,
    avx512_bf16: bool,
    /// AVX-512F, BW and VL (every AVX-512 CPU since Skylake-SP), with FMA.
    /// Its f32 micro-kernel beats the AVX2 one even on Zen 4, whose 512-bit
    /// FMAs are split into 256-bit halves: 1.13-1.26x on the 0.5B model's
    /// shapes (half the instructions per FMA), so every AVX-512 CPU runs it.
    avx512f: bool,
    /// An AMD CPU (`AuthenticAMD`): see [`KernelSet::bf16_beats_f32`].
    amd: bool,
    /// AMX-BF16 tiles that this process may use (CPU, OS and Linux's
    /// tile-data permission, which detecting asks for).
    amx: bool,
}

impl Features {
    /// What this CPU offers, AMX included (its probe asks Linux for the
    /// tile-data permission).
    #[cfg(test)]
    fn detect() -> Features {
        Features::detect_with(crate::matmul::amx::usable().is_ok())
    }

    /// What this CPU offers, with `amx` the answer of the tile probe
    /// ([`crate::matmul::amx::usable`]), which [`kernels`] asks once, and
    /// not at all for a process that opted out with `CLEANER_BF16=avx512`
    /// (the probe asks Linux for the tile-data permission).
    fn detect_with(amx: bool) -> Features {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            Features {
                avx2_fma: has!("avx2") && has!("fma"),
                avx512_bf16: has!("avx512f") && has!("avx512bf16"),
                avx512f: has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("fma"),
                amd: is_amd(),
                amx,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Features {
                avx2_fma: false,
                avx512_bf16: false,
                avx512f: false,
                amd: false,
                amx, // false: usable() refuses off x86-64
            }
        }
    }
}

/// Whether CPUID's vendor string is `AuthenticAMD`.
#[cfg(target_arch = "x86_64")]
fn is_amd() -> bool {
    // CPUID leaf 0 exists on every x86_64 CPU (safe to call since Rust 1.87).
    let leaf = std::arch::x86_64::__cpuid(0);
    let mut vendor = [0u8; 12];
    for (i, r) in [leaf.ebx, leaf.edx, leaf.ecx].iter().enumerate() {
        vendor[4 * i..4 * i + 4].copy_from_slice(&r.to_le_bytes());
    }
    &vendor == b"AuthenticAMD"
}

impl KernelSet {
    /// The table for a CPU with `features`: the fastest build of each family
    /// that it runs.
    fn for_features(features: Features) -> KernelSet {
        let f32 = if features.avx2_fma {
            Isa::Avx2Fma
        } else {
            Isa::Portable
        };
        // The element-wise families' plain-Rust bodies, compiled for
        // AVX-512 where the CPU has it: on Zen 5, attention forward
        // 1.07-1.23x its AVX2 build in three runs of four, backward mixed,
        // the bf16 training step 1-2 % faster
        // (measurements/train-step-zen5). Zen 4 and Intel not measured.
        let wide = if features.avx512f { Isa::Avx512 } else { f32 };
        // AMX's operands are the bf16 path's, so it needs AVX-512 BF16 too.
        let amx = features.avx512_bf16 && features.amx;
        KernelSet {
            gemm_f32: if features.avx512f { Isa::Avx512 } else { f32 },
            dot: f32,
            gemv: if features.avx512f { Isa::Avx512 } else { f32 },
            dequant: wide,
            exp: wide,
            swiglu: wide,
            attention: wide,
            bf16: features.avx512_bf16.then_some(Isa::Avx512Bf16),
            bf16_beats_f32: features.avx512_bf16 && (features.amd || amx),
            bf16_amx: amx,
            attention_bf16: features.avx512_bf16 && (features.amd || amx),
        }
    }

    /// One line naming each family's build, for benchmark headers and logs:
    /// `gemm_f32 avx2+fma, gemv avx2+fma, dot avx2+fma, ..., bf16 avx512-bf16`.
    pub fn describe(&self) -> String {
        let bf16 = match (self.bf16, self.bf16_beats_f32) {
            (None, _) => "none (runs f32)".to_string(),
            (Some(i), true) => i.to_string(),
            (Some(i), false) => format!("{i} (slower than f32 here: precision auto runs f32)"),
        };
        let bf16 = if self.bf16_amx {
            format!("{bf16}, products and attention on amx-bf16 tiles")
        } else {
            bf16
        };
        let bf16 = if self.bf16.is_some() && !self.attention_bf16 {
            format!("{bf16}, attention in f32 (faster here)")
        } else {
            bf16
        };
        format!(
            "gemm_f32 {}, gemv {}, dot {}, dequant {}, exp {}, swiglu {}, attention {}, bf16 {bf16}",
            self.gemm_f32, self.gemv, self.dot, self.dequant, self.exp, self.swiglu, self.attention
        )
    }
}

/// The kernel set of this CPU (probed on the first call). The environment
/// variable `CLEANER_GEMM_F32` (`portable`, `avx2` or `avx512`) picks another
/// f32 GEMM build this CPU runs, to benchmark one against another, and
/// `CLEANER_ELEMENTWISE` the same for the GEMV, the decoders, `exp`,
/// SwiGLU and attention;
/// `CLEANER_BF16=avx512` keeps the bf16 products on `vdpbf16ps` where AMX
/// would run them (`amx`, the default where the tiles run), and then, on
/// Intel, `Precision::auto` is f32 again (`vdpbf16ps` is the slower there).
pub fn kernels() -> &'static KernelSet {
    static SET: OnceLock<KernelSet> = OnceLock::new();
    SET.get_or_init(|| {
        let bf16_choice = std::env::var("CLEANER_BF16").ok();
        let amx = if bf16_choice.as_deref() == Some("avx512") {
            Err("not probed: CLEANER_BF16=avx512".to_string())
        } else {
            crate::matmul::amx::usable()
        };
        let mut features = Features::detect_with(amx.is_ok());
        if let Some(name) = bf16_choice {
            match bf16_override(&name, features.avx512_bf16, amx) {
                Ok(amx) => features.amx = amx,
                Err(why) => eprintln!("CLEANER_BF16={name:?} ignored: {why}"),
            }
        }
        let mut set = KernelSet::for_features(features);
        if let Ok(name) = std::env::var("CLEANER_GEMM_F32") {
            match gemm_override(&name, features) {
                Ok(isa) => set.gemm_f32 = isa,
                Err(why) => eprintln!("CLEANER_GEMM_F32={name:?} ignored: {why}"),
            }
        }
        if let Ok(name) = std::env::var("CLEANER_ELEMENTWISE") {
            match gemm_override(&name, features) {
                Ok(isa) => {
                    set.gemv = isa;
                    set.dequant = isa;
                    set.exp = isa;
                    set.swiglu = isa;
                    set.attention = isa;
                }
                Err(why) => eprintln!("CLEANER_ELEMENTWISE={name:?} ignored: {why}"),
            }
        }
        set
    })
}

/// The build `name` asks for (`CLEANER_GEMM_F32`, `CLEANER_ELEMENTWISE`),
/// if this CPU runs it.
fn gemm_override(name: &str, f: Features) -> Result<Isa, String> {
    let (isa, runs) = match name {
        "portable" => (Isa::Portable, true),
        "avx2" => (Isa::Avx2Fma, f.avx2_fma),
        "avx512" => (Isa::Avx512, f.avx512f),
        _ => return Err("expected portable, avx2 or avx512".into()),
    };
    if runs {
        Ok(isa)
    } else {
        Err(format!("this CPU lacks what {isa} needs"))
    }
}

/// Whether `CLEANER_BF16=name` puts the bf16 products on AMX tiles: `amx`
/// where the CPU has the bf16 kernels and the tile probe (`amx_usable`:
/// the CPU, OS and permission check) said yes; `avx512` never.
fn bf16_override(
    name: &str,
    has_bf16: bool,
    amx_usable: Result<(), String>,
) -> Result<bool, String> {
    match name {
        "avx512" => Ok(false),
        "amx" if !has_bf16 => Err("this CPU has no AVX-512 BF16, which AMX's operands need".into()),
        "amx" => amx_usable.map(|()| true),
        _ => Err("expected avx512 or amx".into()),
    }
}

/// Defines `$name` (plain Rust, inlined into its callers) and `$avx2`, the
/// same body compiled with AVX2 and FMA, which the compiler vectorizes for
/// them, and, where a third name is given, `$avx512`, the body compiled for
/// AVX-512 (F, BW, VL) as well; [`call_twin!`] calls the one a [`KernelSet`]
/// row names. The work must live in such functions, not in closures: code
/// inside a closure is not compiled with the enclosing function's target
/// features.
macro_rules! twin {
    ($(#[$meta:meta])* fn $name:ident, $avx2:ident, $avx512:ident $(<$g:ident: $bound:path>)?
        ($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $crate::cpu::twin!($(#[$meta])* fn $name, $avx2 $(<$g: $bound>)?
            ($($arg: $ty),*) $(-> $ret)? $body);

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx512$(<$g: $bound>)?($($arg: $ty),*) $(-> $ret)? {
            $name$(::<$g>)?($($arg),*)
        }
    };
    ($(#[$meta:meta])* fn $name:ident, $avx2:ident $(<$g:ident: $bound:path>)?
        ($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        fn $name$(<$g: $bound>)?($($arg: $ty),*) $(-> $ret)? $body

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx2$(<$g: $bound>)?($($arg: $ty),*) $(-> $ret)? {
            $name$(::<$g>)?($($arg),*)
        }
    };
}
pub(crate) use twin;

/// Calls the build of a [`twin!`] pair that `$isa` (a [`KernelSet`] row)
/// names: `call_twin!(kernels().exp, body, body_avx2, x, out)`; with three
/// builds, `call_twin!(isa, body, body_avx2, body_avx512; x, out)`.
macro_rules! call_twin {
    ($isa:expr, $name:expr, $avx2:expr, $avx512:expr; $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        {
            match $isa {
                // SAFETY: the kernel set names an instruction set only
                // where the CPU has it.
                $crate::cpu::Isa::Avx512 => unsafe { $avx512($($arg),*) },
                $crate::cpu::Isa::Avx2Fma => unsafe { $avx2($($arg),*) },
                _ => $name($($arg),*),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = $isa;
            $name($($arg),*)
        }
    }};
    ($isa:expr, $name:expr, $avx2:expr, $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if $isa == $crate::cpu::Isa::Avx2Fma {
                // SAFETY: the kernel set names AVX2 and FMA only where the
                // CPU has them.
                unsafe { $avx2($($arg),*) }
            } else {
                $name($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = $isa;
            $name($($arg),*)
        }
    }};
}
pub(crate) use call_twin;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_without_extensions_runs_portable_builds_and_no_bf16() {
        let none = Features {
            avx2_fma: false,
            avx512_bf16: false,
            avx512f: false,
            amd: false,
            amx: false,
        };
        let set = KernelSet::for_features(none);
        assert_eq!(
            set.describe(),
            "gemm_f32 portable, gemv portable, dot portable, dequant portable, exp portable, \
             swiglu portable, attention portable, bf16 none (runs f32)"
        );
    }

    /// bf16 runs wherever the CPU has AVX-512 BF16; `auto` takes it on AMD,
    /// and on Intel only where AMX tiles run its products.
    #[test]
    fn bf16_is_available_with_avx512_bf16_and_preferred_on_amd_or_with_amx() {
        for (amd, amx, preferred, shown) in [
            (true, false, true, "bf16 avx512-bf16"),
            (
                false,
                false,
                false,
                "bf16 avx512-bf16 (slower than f32 here: precision auto runs f32), \
                 attention in f32 (faster here)",
            ),
            (
                false,
                true,
                true,
                "bf16 avx512-bf16, products and attention on amx-bf16 tiles",
            ),
        ] {
            let f = Features {
                avx2_fma: true,
                avx512_bf16: true,
                avx512f: true,
                amd,
                amx,
            };
            let set = KernelSet::for_features(f);
            assert_eq!(set.bf16, Some(Isa::Avx512Bf16));
            assert_eq!(set.bf16_beats_f32, preferred);
            assert_eq!(set.bf16_amx, amx);
            // Attention's tiles take bf16 where vdpbf16ps is the fast path
            // or the tiles run them, not on Intel's vdpbf16ps.
            assert_eq!(set.attention_bf16, amd || amx);
            assert!(set.describe().ends_with(shown), "{}", set.describe());
        }
        let amd_without_bf16 = Features {
            avx2_fma: true,
            avx512_bf16: false,
            avx512f: true,
            amd: true,
            amx: false,
        };
        assert!(!KernelSet::for_features(amd_without_bf16).bf16_beats_f32);
        // Tiles without AVX-512 BF16 (no such CPU is known) would lack the
        // operand conversions: no AMX, no bf16.
        let tiles_without_bf16 = Features {
            avx512_bf16: false,
            amx: true,
            ..amd_without_bf16
        };
        let set = KernelSet::for_features(tiles_without_bf16);
        assert!(!set.bf16_amx && !set.bf16_beats_f32 && set.bf16.is_none());
        assert!(!set.attention_bf16);
    }

    #[test]
    fn a_gemm_override_names_a_build_the_cpu_runs() {
        let avx2_only = Features {
            avx2_fma: true,
            avx512_bf16: false,
            avx512f: false,
            amd: false,
            amx: false,
        };
        assert_eq!(gemm_override("avx2", avx2_only), Ok(Isa::Avx2Fma));
        assert_eq!(gemm_override("portable", avx2_only), Ok(Isa::Portable));
        assert!(gemm_override("avx512", avx2_only)
            .unwrap_err()
            .contains("lacks"));
        assert!(gemm_override("sse", avx2_only)
            .unwrap_err()
            .contains("expected portable, avx2 or avx512"));
    }

    #[test]
    fn amx_is_left_only_when_asked_for_or_unusable() {
        assert_eq!(bf16_override("avx512", true, Ok(())), Ok(false));
        assert_eq!(
            bf16_override("avx512", true, Err("unprobed".into())),
            Ok(false)
        );
        assert_eq!(bf16_override("amx", true, Ok(())), Ok(true));
        assert_eq!(
            bf16_override("amx", true, Err("no tiles".into())),
            Err("no tiles".into())
        );
        assert!(bf16_override("amx", false, Ok(()))
            .unwrap_err()
            .contains("no AVX-512 BF16"));
        assert!(bf16_override("tiles", true, Ok(()))
            .unwrap_err()
            .contains("expected avx512 or amx"));
    }

    #[test]
    fn the_table_follows_the_detected_features() {
        let set = kernels();
        let f = Features::detect();
        let gemm = match (f.avx512f, f.avx2_fma) {
            (true, _) => Isa::Avx512,
            (false, true) => Isa::Avx2Fma,
            (false, false) => Isa::Portable,
        };
        if std::env::var_os("CLEANER_GEMM_F32").is_none() {
            assert_eq!(set.gemm_f32, gemm);
        }
        assert_eq!(set.bf16.is_some(), f.avx512_bf16);
        if std::env::var_os("CLEANER_BF16").is_none() {
            assert_eq!(set.bf16_amx, f.avx512_bf16 && f.amx);
        }
        let mut want = KernelSet::for_features(f);
        if std::env::var_os("CLEANER_BF16").is_some() {
            (want.bf16_amx, want.bf16_beats_f32) = (set.bf16_amx, set.bf16_beats_f32);
        }
        if std::env::var_os("CLEANER_ELEMENTWISE").is_some() {
            (
                want.gemv,
                want.dequant,
                want.exp,
                want.swiglu,
                want.attention,
            ) = (set.gemv, set.dequant, set.exp, set.swiglu, set.attention);
        }
        assert_eq!(
            KernelSet {
                gemm_f32: gemm,
                ..*set
            },
            want
        );
    }

    /// The element-wise families and the GEMV run their AVX-512 builds
    /// wherever the CPU has AVX-512, their AVX2 ones where it has only that.
    #[test]
    fn element_wise_families_take_the_widest_build() {
        for (avx512f, isa) in [(true, Isa::Avx512), (false, Isa::Avx2Fma)] {
            let set = KernelSet::for_features(Features {
                avx2_fma: true,
                avx512_bf16: false,
                avx512f,
                amd: true,
                amx: false,
            });
            let rows = [set.gemv, set.dequant, set.exp, set.swiglu, set.attention];
            assert_eq!(rows, [isa; 5], "avx512f = {avx512f}");
            assert_eq!(set.dot, Isa::Avx2Fma);
        }
    }
}
