//! The decode-and-dot rows of [`super::dot`] written with AVX-512
//! intrinsics, for the formats that rows are mostly stored in.
//!
//! The plain-Rust bodies are left to the compiler's vectorizer, which is
//! fragile here: one innocent change (two sets of lanes, a `-0.0` start)
//! turned a Q8_0 row from 16-wide into 2-wide code at a quarter of the speed.
//! These spell out one block's work: unpack the quantized bytes into 16
//! integers per vector, convert them to f32, multiply-add them into the
//! activations, and apply the block's scale once per vector of sums (`d *
//! sum(x q)`, offsets as `m * sum(x)`). Scales are converted sixteen blocks at
//! a time (`vcvtph2ps`), and alternate blocks feed two accumulators so that
//! one chain of adds does not bind.
//!
//! Each format's arithmetic follows its decoder in [`super::formats`]; the
//! tests of [`super::dot`] hold every build to the same f64 oracle.
use super::formats::{scale_min_k4, BlockFormat, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q6_K, Q8_0};
use super::QuantType;
use crate::cpu::{kernels, Isa};
use std::arch::x86_64::*;

/// One row's product: `(row bytes, x, sums) -> sum_k w_k x_k`, where
/// `sums[s]` is the sum of `x[32 s..32 s + 32]` (see [`block_sums`]).
pub(crate) type RowFn = fn(&[u8], &[f32], &[f32]) -> f32;

/// The sums of each 32 values of `x` (`x.len()` a multiple of 32), the
/// third argument of a [`RowFn`]: shared by every row of a product.
pub(crate) fn block_sums(x: &[f32], sums: &mut Vec<f32>) {
    sums.clear();
    sums.extend(x.chunks_exact(32).map(|c| c.iter().sum::<f32>()));
}

/// A format's hand-written row, and whether it reads the 32-value sums of
/// `x` (its format's [`BlockDot::TAKES_SUMS`]: a caller computes them only
/// then).
#[derive(Clone, Copy)]
pub(crate) struct Row {
    pub dot: RowFn,
    pub takes_sums: bool,
}

impl Row {
    fn of<F: BlockDot>() -> Row {
        Row {
            dot: safe_row::<F>,
            takes_sums: F::TAKES_SUMS,
        }
    }
}

/// The hand-written row of format `ty`, where the CPU runs AVX-512 and the
/// format has one.
pub(crate) fn row_for(ty: QuantType) -> Option<Row> {
    if kernels().gemv != Isa::Avx512 {
        return None;
    }
    Some(match ty {
        QuantType::Q4_0 => Row::of::<Q4_0>(),
        QuantType::Q4_1 => Row::of::<Q4_1>(),
        QuantType::Q5_0 => Row::of::<Q5_0>(),
        QuantType::Q5_1 => Row::of::<Q5_1>(),
        QuantType::Q8_0 => Row::of::<Q8_0>(),
        QuantType::Q4_K => Row::of::<Q4_K>(),
        QuantType::Q6_K => Row::of::<Q6_K>(),
        _ => return None,
    })
}

/// [`row`] behind [`row_for`]'s check that the CPU runs it.
fn safe_row<F: BlockDot>(bytes: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    // SAFETY: handed out by `row_for` only where the kernel set names
    // AVX-512, which it does only where the CPU has AVX-512 F, BW, VL, FMA.
    unsafe { row::<F>(bytes, x, sums) }
}

/// One format's block, as the AVX-512 row loop sees it (its sizes are the
/// decoder's, [`BlockFormat`]).
pub(super) trait BlockDot: BlockFormat {
    /// Byte offset of the four bytes holding the block's f16 scale `d`
    /// (and its offset or second scale `m`, where it has one).
    const WORD_AT: usize;
    /// Where `d` sits in that word: bit 0 or bit 16.
    const D_SHIFT: u32 = 0;
    /// Whether `m` sits in the word's high half.
    const HAS_M: bool;
    /// Whether `m` is an offset added to each of the block's 32 values,
    /// which the row applies as `m * sum(x)` from the sums it is given,
    /// sixteen blocks per FMA (`block` then leaves `m` out).
    const M_IS_OFFSET: bool = false;
    /// The constant the format subtracts from each quantized value before
    /// scaling (8 for Q4_0, 16 for Q5_0), which the row likewise applies as
    /// `-offset * d * sum(x)` from the sums (`block` then leaves it out).
    const Q_OFFSET: i32 = 0;
    /// Whether the row reads `x`'s 32-value sums: for an offset, `m` or
    /// the quantized values'.
    const TAKES_SUMS: bool = Self::M_IS_OFFSET || Self::Q_OFFSET != 0;
    /// `acc` plus this block's products with `x` (`BLOCK_LEN` values) in
    /// any arrangement over the 16 lanes; `d` and `m` are the converted
    /// scales (`m` 0 where there is none).
    ///
    /// # Safety
    /// `b` points at `BLOCK_BYTES` readable bytes and `x` at `BLOCK_LEN`
    /// readable f32s; the CPU has AVX-512 F, BW and VL and FMA.
    unsafe fn block(b: *const u8, x: *const f32, d: f32, m: f32, acc: __m512) -> __m512;
}

/// `sum_k w_k x_k` over one row of `F`'s blocks. Panics unless `bytes` and
/// `x` hold the same whole number of blocks and, for a format whose `m` is
/// an offset, `sums` holds `x`'s 32-value sums.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VL and FMA.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn row<F: BlockDot>(bytes: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    let n_blocks = bytes.len() / F::BLOCK_BYTES;
    assert!(
        bytes.len() == n_blocks * F::BLOCK_BYTES && x.len() == n_blocks * F::BLOCK_LEN,
        "row dot: {} bytes and {} values are not whole blocks of one row",
        bytes.len(),
        x.len()
    );
    assert!(
        !F::TAKES_SUMS || (F::BLOCK_LEN == 32 && sums.len() == n_blocks),
        "row dot: {} sums for {n_blocks} blocks of 32 values",
        sums.len()
    );
    let (bp, xp) = (bytes.as_ptr(), x.as_ptr());
    // Four accumulators, blocks dealt round: a block adds one or two FMAs
    // into its accumulator, and one accumulator for all of them would be
    // a chain of FMAs, four cycles each, through the whole row.
    let mut acc = [_mm512_setzero_ps(); 4];
    // Byte offsets of sixteen consecutive blocks.
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(F::BLOCK_BYTES as i32),
    );
    // The offsets' terms, m times the block's sum of x.
    let mut offset_terms = _mm512_setzero_ps();
    let mut first = 0;
    while first < n_blocks {
        let n = (n_blocks - first).min(16);
        // The scales of these blocks, one gather: sixteen narrow stores
        // read back as one vector would wait for the stores to retire.
        let lanes: __mmask16 = if n == 16 { 0xffff } else { (1 << n) - 1 };
        let word_at = bp.add(first * F::BLOCK_BYTES + F::WORD_AT).cast::<i32>();
        let words =
            _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), lanes, offsets, word_at);
        let (mut d, mut m) = ([0f32; 16], [0f32; 16]);
        let d_vec = halves(_mm512_srlv_epi32(
            words,
            _mm512_set1_epi32(F::D_SHIFT as i32),
        ));
        _mm512_storeu_ps(d.as_mut_ptr(), d_vec);
        if F::Q_OFFSET != 0 {
            let s = _mm512_maskz_loadu_ps(lanes, sums.as_ptr().add(first));
            let m = _mm512_mul_ps(d_vec, _mm512_set1_ps(-F::Q_OFFSET as f32));
            offset_terms = _mm512_fmadd_ps(m, s, offset_terms);
        }
        if F::M_IS_OFFSET {
            let m = halves(_mm512_srli_epi32(words, 16));
            let s = _mm512_maskz_loadu_ps(lanes, sums.as_ptr().add(first));
            offset_terms = _mm512_fmadd_ps(m, s, offset_terms);
        } else if F::HAS_M {
            _mm512_storeu_ps(m.as_mut_ptr(), halves(_mm512_srli_epi32(words, 16)));
        }
        let (b, x) = (bp.add(first * F::BLOCK_BYTES), xp.add(first * F::BLOCK_LEN));
        let (bb, bl) = (F::BLOCK_BYTES, F::BLOCK_LEN);
        let mut j = 0;
        while j + 4 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let i = j + k;
                *a = F::block(b.add(i * bb), x.add(i * bl), d[i], m[i], *a);
            }
            j += 4;
        }
        for (k, i) in (j..n).enumerate() {
            acc[k] = F::block(b.add(i * bb), x.add(i * bl), d[i], m[i], acc[k]);
        }
        first += n;
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    let sum = _mm512_add_ps(sum, offset_terms);
    _mm512_reduce_add_ps(sum)
}

/// The f16 values in the low halves of sixteen lanes, as f32 (exact, like
/// `f16_to_f32`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn halves(words: __m512i) -> __m512 {
    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(words))
}

/// Sixteen signed bytes as sixteen f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn i8_to_f32(v: __m128i) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v))
}

/// Sixteen bytes at `p`, one per 32-bit lane. Widening is a cross-lane
/// shuffle, the scarce kind: the 4-bit formats widen each byte once and
/// split its nibbles in the lanes, rather than split bytes and widen twice.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn widen(p: *const u8) -> __m512i {
    _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast()))
}

/// The low and the high nibbles of widened bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn nibbles(v: __m512i) -> (__m512i, __m512i) {
    let m4 = _mm512_set1_epi32(0x0f);
    (_mm512_and_si512(v, m4), _mm512_srli_epi32(v, 4))
}

/// Integers as f32, less `offset`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn to_f32(v: __m512i, offset: i32) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_sub_epi32(v, _mm512_set1_epi32(offset)))
}

/// `x[0..16] a + x[16..32] b`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn pair(x: *const f32, a: __m512, b: __m512) -> __m512 {
    _mm512_fmadd_ps(
        _mm512_loadu_ps(x.add(16)),
        b,
        _mm512_mul_ps(_mm512_loadu_ps(x), a),
    )
}

/// `x[0..16] + x[16..32]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn pair_sum(x: *const f32) -> __m512 {
    _mm512_add_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(x.add(16)))
}

/// Q5's fifth bits: lane `i` of `q` gains 16 where bit `i` of `bits` is set.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn with_bit4(q: __m512i, bits: u16) -> __m512i {
    _mm512_mask_or_epi32(q, bits, q, _mm512_set1_epi32(16))
}

/// `acc + d (x . q)` for 32 four-bit values `q` in the 16 bytes at `qs`
/// (Q4_0 and Q4_1: their offsets are the row's, from the sums of `x`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn four_bit(qs: *const u8, x: *const f32, d: f32, acc: __m512) -> __m512 {
    let (lo, hi) = nibbles(widen(qs));
    let t = pair(x, _mm512_cvtepi32_ps(lo), _mm512_cvtepi32_ps(hi));
    _mm512_fmadd_ps(_mm512_set1_ps(d), t, acc)
}

/// [`four_bit`] with each value's fifth bit from the 32 bits at `qh` (Q5_0
/// and Q5_1).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn five_bit(qh: *const u8, qs: *const u8, x: *const f32, d: f32, acc: __m512) -> __m512 {
    let qh = qh.cast::<u32>().read_unaligned();
    let (lo, hi) = nibbles(widen(qs));
    let lo = _mm512_cvtepi32_ps(with_bit4(lo, qh as u16));
    let hi = _mm512_cvtepi32_ps(with_bit4(hi, (qh >> 16) as u16));
    _mm512_fmadd_ps(_mm512_set1_ps(d), pair(x, lo, hi), acc)
}

impl BlockDot for Q4_0 {
    const WORD_AT: usize = 0;
    const HAS_M: bool = false;
    const Q_OFFSET: i32 = 8;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn block(b: *const u8, x: *const f32, d: f32, _: f32, acc: __m512) -> __m512 {
        four_bit(b.add(2), x, d, acc)
    }
}

impl BlockDot for Q4_1 {
    const WORD_AT: usize = 0;
    const HAS_M: bool = true;
    const M_IS_OFFSET: bool = true;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn block(b: *const u8, x: *const f32, d: f32, _: f32, acc: __m512) -> __m512 {
        four_bit(b.add(4), x, d, acc)
    }
}

impl BlockDot for Q5_0 {
    const WORD_AT: usize = 0;
    const HAS_M: bool = false;
    const Q_OFFSET: i32 = 16;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn block(b: *const u8, x: *const f32, d: f32, _: f32, acc: __m512) -> __m512 {
        five_bit(b.add(2), b.add(6), x, d, acc)
    }
}

impl BlockDot for Q5_1 {
    const WORD_AT: usize = 0;
    const HAS_M: bool = true;
    const M_IS_OFFSET: bool = true;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn block(b: *const u8, x: *const f32, d: f32, _: f32, acc: __m512) -> __m512 {
        five_bit(b.add(4), b.add(8), x, d, acc)
    }
}

impl BlockDot for Q8_0 {
    const WORD_AT: usize = 0;
    const HAS_M: bool = false;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn block(b: *const u8, x: *const f32, d: f32, _: f32, acc: __m512) -> __m512 {
        let lo = i8_to_f32(_mm_loadu_si128(b.add(2).cast()));
        let hi = i8_to_f32(_mm_loadu_si128(b.add(18).cast()));
        _mm512_fmadd_ps(_mm512_set1_ps(d), pair(x, lo, hi), acc)
    }
}

impl BlockDot for Q4_K {
    const WORD_AT: usize = 0;
    const HAS_M: bool = true;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn block(b: *const u8, x: *const f32, d: f32, min: f32, acc: __m512) -> __m512 {
        let scales = b.add(4).cast::<[u8; 12]>().read_unaligned();
        // The scaled products and the minimums times the activations' sums,
        // each in two sums, so that no chain of FMAs is longer than four.
        let mut sums = [_mm512_setzero_ps(); 4];
        for g in 0..4 {
            let q = b.add(16 + 32 * g);
            let x = x.add(64 * g);
            let (a_lo, a_hi) = nibbles(widen(q));
            let (b_lo, b_hi) = nibbles(widen(q.add(16)));
            let (sc1, m1) = scale_min_k4(2 * g, &scales);
            let (sc2, m2) = scale_min_k4(2 * g + 1, &scales);
            let f = _mm512_cvtepi32_ps;
            let low = pair(x, f(a_lo), f(b_lo));
            let high = pair(x.add(32), f(a_hi), f(b_hi));
            sums[0] = _mm512_fmadd_ps(_mm512_set1_ps(d * sc1 as f32), low, sums[0]);
            sums[1] = _mm512_fmadd_ps(_mm512_set1_ps(d * sc2 as f32), high, sums[1]);
            sums[2] = _mm512_fmadd_ps(_mm512_set1_ps(min * m1 as f32), pair_sum(x), sums[2]);
            sums[3] = _mm512_fmadd_ps(
                _mm512_set1_ps(min * m2 as f32),
                pair_sum(x.add(32)),
                sums[3],
            );
        }
        let prod = _mm512_add_ps(sums[0], sums[1]);
        let offs = _mm512_add_ps(sums[2], sums[3]);
        _mm512_add_ps(acc, _mm512_sub_ps(prod, offs))
    }
}

impl BlockDot for Q6_K {
    // d is the block's last two bytes: read the word ending there.
    const WORD_AT: usize = 206;
    const D_SHIFT: u32 = 16;
    const HAS_M: bool = false;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn block(b: *const u8, x: *const f32, d: f32, _: f32, acc: __m512) -> __m512 {
        let m4 = _mm512_set1_epi32(0x0f);
        let m30 = _mm512_set1_epi32(0x30);
        // The sixteen scales times d, converted in one vector: one at a
        // time they were a third of the block's instructions.
        let mut scales = [0f32; 16];
        let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(b.add(192).cast())));
        _mm512_storeu_ps(scales.as_mut_ptr(), _mm512_mul_ps(sc, _mm512_set1_ps(d)));
        // One sum per quarter (values l + 32 k share a scale), four chains.
        let mut sums = [_mm512_setzero_ps(); 4];
        for n in 0..2 {
            let (ql, qh) = (b.add(64 * n), b.add(128 + 32 * n));
            let sc = &scales[8 * n..8 * n + 8];
            let x = x.add(128 * n);
            for h in 0..2 {
                let l = 16 * h;
                let (a, c, hb) = (widen(ql.add(l)), widen(ql.add(l + 32)), widen(qh.add(l)));
                // Each quarter's two high bits, moved to bits 4-5.
                let q = [
                    _mm512_or_si512(
                        _mm512_and_si512(a, m4),
                        _mm512_and_si512(_mm512_slli_epi32(hb, 4), m30),
                    ),
                    _mm512_or_si512(
                        _mm512_and_si512(c, m4),
                        _mm512_and_si512(_mm512_slli_epi32(hb, 2), m30),
                    ),
                    _mm512_or_si512(_mm512_srli_epi32(a, 4), _mm512_and_si512(hb, m30)),
                    _mm512_or_si512(
                        _mm512_srli_epi32(c, 4),
                        _mm512_and_si512(_mm512_srli_epi32(hb, 2), m30),
                    ),
                ];
                for k in 0..4 {
                    let v = to_f32(q[k], 32);
                    let s = _mm512_set1_ps(sc[h + 2 * k]);
                    let xv = _mm512_mul_ps(_mm512_loadu_ps(x.add(l + 32 * k)), v);
                    sums[k] = _mm512_fmadd_ps(s, xv, sums[k]);
                }
            }
        }
        let all = _mm512_add_ps(
            _mm512_add_ps(sums[0], sums[1]),
            _mm512_add_ps(sums[2], sums[3]),
        );
        _mm512_add_ps(acc, all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize, synthetic::random_tensor};
    use crate::testing::TestRng;

    /// `|got - want| <= TOL * sum_k |w_k x_k|`: f32 sums in another order
    /// than the f64 oracle, and the scales applied to sums of products
    /// rather than to each value (the GEMM's `MATMUL_TOL`).
    const TOL: f64 = 2e-5;

    const FORMATS: [QuantType; 7] = {
        use QuantType::*;
        [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K]
    };

    fn rows_here() -> bool {
        let here = kernels().gemv == Isa::Avx512;
        if !here {
            eprintln!("no AVX-512 here: the hand-written GEMV rows are not checked on this CPU");
        }
        here
    }

    #[test]
    fn every_row_matches_the_decoded_f64_dot() {
        if !rows_here() {
            return;
        }
        let mut rng = TestRng(7);
        for ty in FORMATS {
            let row = row_for(ty).expect("an AVX-512 row for each of FORMATS").dot;
            // One block; odd and even block counts; more than one group of
            // 16 blocks, and a last group that is not full.
            let blocks: &[usize] = if ty.block_len() == 32 {
                &[1, 2, 3, 16, 17, 28, 152]
            } else {
                &[1, 2, 3, 19]
            };
            for &nb in blocks {
                let n = nb * ty.block_len();
                let bytes = random_tensor(ty, n, rng.next_u64()).unwrap();
                let mut w = vec![0f32; n];
                dequantize(ty, &bytes, &mut w).unwrap();
                let x: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
                let want: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
                let mass: f64 = w
                    .iter()
                    .zip(&x)
                    .map(|(&a, &b)| (a as f64 * b as f64).abs())
                    .sum();
                let mut sums = Vec::new();
                block_sums(&x, &mut sums);
                let got = row(&bytes, &x, &sums) as f64;
                assert!(
                    (got - want).abs() <= TOL * mass + 1e-30,
                    "{ty:?} row of {n}: {got}, oracle {want} (mass {mass})"
                );
            }
        }
    }

    /// The GEMV computes the sums only for the formats whose rows read
    /// them: those with an offset, Q4_0, Q4_1, Q5_0 and Q5_1.
    #[test]
    fn takes_sums_names_the_formats_with_offsets() {
        let takes = [
            Q4_0::TAKES_SUMS,
            Q4_1::TAKES_SUMS,
            Q5_0::TAKES_SUMS,
            Q5_1::TAKES_SUMS,
            Q8_0::TAKES_SUMS,
            Q4_K::TAKES_SUMS,
            Q6_K::TAKES_SUMS,
        ];
        for (ty, t) in FORMATS.into_iter().zip(takes) {
            let want = matches!(
                ty,
                QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q5_1
            );
            assert_eq!(t, want, "{ty:?}");
        }
    }

    #[test]
    fn formats_without_a_row_are_left_to_the_decoder() {
        if !rows_here() {
            return;
        }
        for ty in [
            QuantType::F32,
            QuantType::F16,
            QuantType::Q2_K,
            QuantType::Q5_K,
        ] {
            assert!(row_for(ty).is_none(), "{ty:?}");
        }
    }

    /// A NaN scale makes a NaN output, as it does through the decoder,
    /// never a silent number.
    #[test]
    fn a_nan_scale_makes_a_nan_dot() {
        if !rows_here() {
            return;
        }
        for ty in FORMATS {
            let n = 2 * ty.block_len();
            let mut bytes = random_tensor(ty, n, 1).unwrap();
            let at = ty.block_bytes() + if ty == QuantType::Q6_K { 208 } else { 0 };
            bytes[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes()); // f16 NaN
            let x = vec![1f32; n];
            let sums = vec![32f32; n / 32];
            assert!(
                (row_for(ty).unwrap().dot)(&bytes, &x, &sums).is_nan(),
                "{ty:?}"
            );
        }
    }

    #[test]
    fn a_row_of_mismatched_lengths_panics_instead_of_reading_past_it() {
        if !rows_here() {
            return;
        }
        let bytes = random_tensor(QuantType::Q8_0, 64, 1).unwrap();
        let row = row_for(QuantType::Q8_0).unwrap().dot;
        let caught = std::panic::catch_unwind(|| row(&bytes, &[1.0; 32], &[32.0]));
        let message = caught.expect_err("two blocks against 32 values must panic");
        let message = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("whole blocks"), "{message}");
    }
}
