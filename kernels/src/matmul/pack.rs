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
    assert!(n_rows <= NR, "pack: {n_rows} rows, at most {NR}");
    assert!(
        packed.len() >= kc * NR,
        "pack: packed holds under {kc} x {NR}"
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
        unsafe { avx512::transpose_panel(src, ld, n_rows, kc, packed) };
        return;
    }
    let _ = isa;
    transpose_panel_portable(src, ld, n_rows, kc, packed);
}

fn transpose_panel_portable(src: &[f32], ld: usize, n_rows: usize, kc: usize, packed: &mut [f32]) {
    for j in 0..NR {
        if j < n_rows {
            let row = &src[j * ld..j * ld + kc];
            for (p, &v) in row.iter().enumerate() {
                packed[p * NR + j] = v;
            }
        } else {
            for p in 0..kc {
                packed[p * NR + j] = 0.0;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::NR;
    use std::arch::x86_64::*;

    /// 16 x 16 blocks transposed in registers (unpack pairs of rows, then
    /// pairs of pairs, then 128-bit lanes twice); the last `kc % 16` inputs
    /// by the scalar loop.
    ///
    /// # Safety
    /// AVX-512F; `src` holds `n_rows` rows of `kc` at stride `ld`, `packed`
    /// `kc * NR` values, `n_rows <= NR` (checked by the caller).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_panel(
        src: &[f32],
        ld: usize,
        n_rows: usize,
        kc: usize,
        packed: &mut [f32],
    ) {
        let (s, out) = (src.as_ptr(), packed.as_mut_ptr());
        let full = kc / 16 * 16;
        for p0 in (0..full).step_by(16) {
            let mut r = [_mm512_setzero_ps(); 16];
            for (j, v) in r.iter_mut().enumerate().take(n_rows) {
                *v = _mm512_loadu_ps(s.add(j * ld + p0));
            }
            // Within each 128-bit lane l, after the three steps below,
            // r[4i + c] holds rows 4i..4i+4 of column 4l + c.
            let mut t = [_mm512_setzero_ps(); 16];
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            for i in 0..4 {
                let pd = |v: __m512| _mm512_castps_pd(v);
                let (a, b, c, d) = (
                    pd(t[4 * i]),
                    pd(t[4 * i + 1]),
                    pd(t[4 * i + 2]),
                    pd(t[4 * i + 3]),
                );
                r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
                r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
                r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
                r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
            }
            // Column 4l + c gathers lane l of r[c], r[4 + c], r[8 + c],
            // r[12 + c]: lanes 0 and 2 (0x88) or 1 and 3 (0xdd) of two
            // registers, twice.
            for c in 0..4 {
                let u_even = _mm512_shuffle_f32x4::<0x88>(r[c], r[4 + c]);
                let u_odd = _mm512_shuffle_f32x4::<0xdd>(r[c], r[4 + c]);
                let v_even = _mm512_shuffle_f32x4::<0x88>(r[8 + c], r[12 + c]);
                let v_odd = _mm512_shuffle_f32x4::<0xdd>(r[8 + c], r[12 + c]);
                let cols = [
                    (c, _mm512_shuffle_f32x4::<0x88>(u_even, v_even)),
                    (4 + c, _mm512_shuffle_f32x4::<0x88>(u_odd, v_odd)),
                    (8 + c, _mm512_shuffle_f32x4::<0xdd>(u_even, v_even)),
                    (12 + c, _mm512_shuffle_f32x4::<0xdd>(u_odd, v_odd)),
                ];
                for (col, v) in cols {
                    _mm512_storeu_ps(out.add((p0 + col) * NR), v);
                }
            }
        }
        for p in full..kc {
            for j in 0..NR {
                *out.add(p * NR + j) = if j < n_rows { *s.add(j * ld + p) } else { 0.0 };
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
}
