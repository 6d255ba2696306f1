//! Packing a panel of weight rows for the micro-kernel: rows `j` of a
//! `[NR][kc]` source become columns of `packed[p * NR + j]`, so one 16-lane
//! load at `p` holds input `p` of all the panel's outputs.
//!
//! One scalar store per value into a 64-byte stride cost 3.5 % of the
//! 0.5B model's `x W^T` products at 512 tokens (`perf`, Q8_0); the AVX-512
//! build transposes 16 x 16 blocks in registers and stores whole lines.

use super::NR;
use crate::cpu::Isa;

/// `packed[p * NR + j] = src[j * ld + p]` for `j < n_rows`, `p < kc`; rows
/// `n_rows..NR` are zero. `isa` picks the build ([`Isa::Avx512`], else the
/// portable loop); both store the same values.
pub(super) fn transpose_panel(
    isa: Isa,
    src: &[f32],
    ld: usize,
    n_rows: usize,
    kc: usize,
    packed: &mut [f32],
) {
    const { assert!(NR == 16, "the transpose moves 16 x 16 blocks") };
    // SAFETY: f32 and u32 have the same size and alignment, and moving the
    // bits is all a transpose does.
    let (src, out) = unsafe {
        (
            std::slice::from_raw_parts(src.as_ptr().cast::<u32>(), src.len()),
            std::slice::from_raw_parts_mut(packed.as_mut_ptr().cast::<u32>(), packed.len()),
        )
    };
    transpose_words(isa, src, ld, n_rows, kc, out, NR);
}

/// `out[p * ld_out + j] = src[j * ld + p]` for `j < n_rows` (at most 16),
/// `p < kc`; columns `n_rows..16` of `out`'s rows are zero and the rest of
/// each row is left alone: [`transpose_panel`] for any 32-bit values into
/// rows `ld_out` apart (the bf16 path's pairs, 16 of a 32-wide panel's
/// rows at a time).
pub(super) fn transpose_words(
    isa: Isa,
    src: &[u32],
    ld: usize,
    n_rows: usize,
    kc: usize,
    out: &mut [u32],
    ld_out: usize,
) {
    assert!(n_rows <= 16, "pack: {n_rows} rows, at most 16");
    assert!(
        ld_out >= 16 && (kc == 0 || out.len() >= (kc - 1) * ld_out + 16),
        "pack: out holds under {kc} rows of 16 at stride {ld_out}"
    );
    if n_rows > 0 {
        assert!(
            ld >= kc && src.len() >= (n_rows - 1) * ld + kc,
            "pack: src holds under {n_rows} rows of {kc} at stride {ld}"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && crate::cpu::kernels().gemm_f32 == Isa::Avx512 {
        // SAFETY: the kernel set names AVX-512 only where the CPU has it;
        // the bounds are checked above.
        unsafe { avx512::transpose(src, ld, n_rows, kc, out, ld_out) };
        return;
    }
    let _ = isa;
    transpose_portable(src, ld, n_rows, kc, out, ld_out);
}

fn transpose_portable(
    src: &[u32],
    ld: usize,
    n_rows: usize,
    kc: usize,
    out: &mut [u32],
    ld_out: usize,
) {
    for j in 0..16 {
        for p in 0..kc {
            out[p * ld_out + j] = if j < n_rows { src[j * ld + p] } else { 0 };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// 16 x 16 blocks transposed in registers (unpack pairs of rows, then
    /// pairs of pairs, then 128-bit lanes twice); the last `kc % 16` inputs
    /// by the scalar loop.
    ///
    /// # Safety
    /// AVX-512F; `src` holds `n_rows` rows of `kc` at stride `ld`, `out`
    /// `kc` rows of 16 at stride `ld_out`, `n_rows <= 16` (checked by the
    /// caller).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose(
        src: &[u32],
        ld: usize,
        n_rows: usize,
        kc: usize,
        out: &mut [u32],
        ld_out: usize,
    ) {
        let (s, o) = (src.as_ptr(), out.as_mut_ptr());
        let full = kc / 16 * 16;
        for p0 in (0..full).step_by(16) {
            let mut r = [_mm512_setzero_si512(); 16];
            for (j, v) in r.iter_mut().enumerate().take(n_rows) {
                *v = _mm512_loadu_si512(s.add(j * ld + p0).cast());
            }
            // Within each 128-bit lane l, after the three steps below,
            // r[4i + c] holds rows 4i..4i+4 of column 4l + c.
            let mut t = [_mm512_setzero_si512(); 16];
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
            }
            for i in 0..4 {
                let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
                r[4 * i] = _mm512_unpacklo_epi64(a, c);
                r[4 * i + 1] = _mm512_unpackhi_epi64(a, c);
                r[4 * i + 2] = _mm512_unpacklo_epi64(b, d);
                r[4 * i + 3] = _mm512_unpackhi_epi64(b, d);
            }
            // Column 4l + c gathers lane l of r[c], r[4 + c], r[8 + c],
            // r[12 + c]: lanes 0 and 2 (0x88) or 1 and 3 (0xdd) of two
            // registers, twice.
            for c in 0..4 {
                let u_even = _mm512_shuffle_i32x4::<0x88>(r[c], r[4 + c]);
                let u_odd = _mm512_shuffle_i32x4::<0xdd>(r[c], r[4 + c]);
                let v_even = _mm512_shuffle_i32x4::<0x88>(r[8 + c], r[12 + c]);
                let v_odd = _mm512_shuffle_i32x4::<0xdd>(r[8 + c], r[12 + c]);
                let cols = [
                    (c, _mm512_shuffle_i32x4::<0x88>(u_even, v_even)),
                    (4 + c, _mm512_shuffle_i32x4::<0x88>(u_odd, v_odd)),
                    (8 + c, _mm512_shuffle_i32x4::<0xdd>(u_even, v_even)),
                    (12 + c, _mm512_shuffle_i32x4::<0xdd>(u_odd, v_odd)),
                ];
                for (col, v) in cols {
                    _mm512_storeu_si512(o.add((p0 + col) * ld_out).cast(), v);
                }
            }
        }
        for p in full..kc {
            for j in 0..16 {
                *o.add(p * ld_out + j) = if j < n_rows { *s.add(j * ld + p) } else { 0 };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both builds store exactly `src[j][p]` at `p * NR + j` and zeros past
    /// the rows, for whole and ragged panels and chunks.
    #[test]
    fn both_builds_transpose_exactly() {
        for (n_rows, kc, ld) in [
            (16, 256, 256),
            (16, 48, 70),
            (5, 37, 37),
            (1, 16, 20),
            (0, 9, 9),
        ] {
            let src: Vec<f32> = (0..n_rows.max(1) * ld).map(|i| i as f32 + 0.5).collect();
            for isa in [Isa::Portable, Isa::Avx512] {
                let mut packed = vec![f32::NAN; kc * NR];
                transpose_panel(isa, &src, ld, n_rows, kc, &mut packed);
                for p in 0..kc {
                    for j in 0..NR {
                        let want = if j < n_rows { src[j * ld + p] } else { 0.0 };
                        assert_eq!(
                            packed[p * NR + j],
                            want,
                            "{isa}: n_rows {n_rows} kc {kc} ld {ld}, p {p} j {j}"
                        );
                    }
                }
            }
        }
    }

    /// Into rows wider than 16 (the bf16 panels' 32), the 16 columns given
    /// are written and the others left as they were.
    #[test]
    fn words_into_wider_rows_leave_the_other_columns() {
        const SENTINEL: u32 = 0xdead_beef;
        for (n_rows, kc, ld) in [(16, 128, 128), (11, 35, 40), (0, 20, 20)] {
            let src: Vec<u32> = (0..n_rows.max(1) * ld).map(|i| i as u32 * 7 + 1).collect();
            for isa in [Isa::Portable, Isa::Avx512] {
                let mut out = vec![SENTINEL; kc * 32];
                transpose_words(isa, &src, ld, n_rows, kc, &mut out[16..], 32);
                for p in 0..kc {
                    for j in 0..32usize {
                        let want = match j.checked_sub(16) {
                            None => SENTINEL,
                            Some(c) if c < n_rows => src[c * ld + p],
                            Some(_) => 0,
                        };
                        assert_eq!(out[p * 32 + j], want, "{isa}: {n_rows} x {kc}, p {p} j {j}");
                    }
                }
            }
        }
    }
}
