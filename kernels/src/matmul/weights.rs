//! A weight matrix as the matmul sees it: `n_rows` rows of `n_cols` values,
//! either quantized bytes (borrowed from a memory map) or f32 (LoRA factors,
//! tests).

use crate::quant::{DequantFn, QuantType};

/// Rows whose segment the packs prefetch ([`Weights::prefetch_segment`])
/// ahead of the row they decode: quantized rows come from a memory map, a
/// few dozen to a few hundred bytes per segment, rows apart. 12 was
/// measured for the bf16 packs' 44-byte segments; `x W^T`'s f32 pack
/// (256-value segments) ran a Q6_K product at T = 64 at a median 117
/// GFLOP/s with it against 94 without (10 alternating runs, Zen 4).
pub(crate) const PREFETCH_ROWS: usize = 12;

/// Why bytes cannot be viewed as a weight matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightError {
    /// The format has no dequantizer.
    Unsupported(QuantType),
    /// Rows must hold a whole number of blocks.
    RaggedRow {
        /// The quantization type.
        ty: QuantType,
        /// Values per row.
        n_cols: usize,
    },
    /// The data does not hold exactly `n_rows x n_cols` values.
    Size {
        /// The quantization type.
        ty: QuantType,
        /// Rows.
        n_rows: usize,
        /// Values per row.
        n_cols: usize,
        /// Bytes given.
        bytes: usize,
    },
}

impl std::fmt::Display for WeightError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightError::Unsupported(ty) => {
                write!(f, "{}", crate::quant::DequantError::Unsupported(*ty))
            }
            WeightError::RaggedRow { ty, n_cols } => write!(
                f,
                "rows of {n_cols} values are not a whole number of {} blocks ({} values each)",
                ty.name(),
                ty.block_len()
            ),
            WeightError::Size {
                ty,
                n_rows,
                n_cols,
                bytes,
            } => write!(
                f,
                "{bytes} bytes of {} cannot hold a {n_rows}x{n_cols} matrix",
                ty.name()
            ),
        }
    }
}

impl std::error::Error for WeightError {}

#[derive(Clone, Copy)]
enum Source<'a> {
    Quant {
        ty: QuantType,
        data: &'a [u8],
        decode: DequantFn,
        row_bytes: usize,
    },
    F32(&'a [f32]),
}

/// A row-major `[n_rows, n_cols]` matrix in any supported format.
#[derive(Clone, Copy)]
pub struct Weights<'a> {
    src: Source<'a>,
    n_rows: usize,
    n_cols: usize,
}

impl<'a> Weights<'a> {
    /// Views `data` (format `ty`) as `[n_rows, n_cols]`.
    pub fn quantized(
        ty: QuantType,
        data: &'a [u8],
        n_rows: usize,
        n_cols: usize,
    ) -> Result<Self, WeightError> {
        let decode = ty.dequantizer().ok_or(WeightError::Unsupported(ty))?;
        if !n_cols.is_multiple_of(ty.block_len()) {
            return Err(WeightError::RaggedRow { ty, n_cols });
        }
        let row_bytes = n_cols / ty.block_len() * ty.block_bytes();
        if n_rows.checked_mul(row_bytes) != Some(data.len()) {
            return Err(WeightError::Size {
                ty,
                n_rows,
                n_cols,
                bytes: data.len(),
            });
        }
        Ok(Weights {
            src: Source::Quant {
                ty,
                data,
                decode,
                row_bytes,
            },
            n_rows,
            n_cols,
        })
    }

    /// Views f32 values as `[n_rows, n_cols]`. Panics on a length mismatch
    /// (f32 matrices are built by our own code, never read from input).
    pub fn f32(data: &'a [f32], n_rows: usize, n_cols: usize) -> Self {
        assert_eq!(
            data.len(),
            n_rows * n_cols,
            "Weights::f32: not {n_rows}x{n_cols}"
        );
        Weights {
            src: Source::F32(data),
            n_rows,
            n_cols,
        }
    }

    /// Output features (rows of W).
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }
    /// Input features (columns of W).
    pub fn n_cols(&self) -> usize {
        self.n_cols
    }

    /// The storage format.
    pub fn ty(&self) -> QuantType {
        match self.src {
            Source::Quant { ty, .. } => ty,
            Source::F32(_) => QuantType::F32,
        }
    }

    /// Columns decoded together by [`super::matmul_w`]: a whole number of
    /// blocks and of 16-wide panels (256 for the K-quants, 64 otherwise).
    pub fn group_width(&self) -> usize {
        self.ty().block_len().max(64)
    }

    /// Rows `start..end` as a matrix of their own (rows are contiguous).
    pub fn rows(&self, start: usize, end: usize) -> Weights<'a> {
        assert!(
            start <= end && end <= self.n_rows,
            "Weights::rows out of range"
        );
        let src = match self.src {
            Source::Quant {
                ty,
                data,
                decode,
                row_bytes,
            } => Source::Quant {
                ty,
                data: &data[start * row_bytes..end * row_bytes],
                decode,
                row_bytes,
            },
            Source::F32(d) => Source::F32(&d[start * self.n_cols..end * self.n_cols]),
        };
        Weights {
            src,
            n_rows: end - start,
            n_cols: self.n_cols,
        }
    }

    /// Values `k0..k0 + out.len()` of row `n`; `k0` and the length must fall
    /// on block boundaries (any multiple of 256 does) unless the range ends
    /// the row.
    #[inline]
    pub fn dequantize_segment(&self, n: usize, k0: usize, out: &mut [f32]) {
        match self.src {
            Source::Quant {
                ty,
                data,
                decode,
                row_bytes,
            } => {
                let bl = ty.block_len();
                debug_assert!(k0.is_multiple_of(bl) && out.len().is_multiple_of(bl));
                decode(&data[block_range(ty, row_bytes, n, k0, out.len())], out);
            }
            Source::F32(d) => {
                let start = n * self.n_cols + k0;
                out.copy_from_slice(&d[start..start + out.len()]);
            }
        }
    }

    /// Asks the CPU to bring the bytes of row `n`'s values `k0..k0 + len`
    /// into cache ahead of [`Weights::dequantize_segment`]: quantized rows
    /// come from a memory map that no cache holds, a few hundred bytes per
    /// row segment, too short for the hardware prefetchers to follow from
    /// one row to the next. Only a hint; out-of-range rows are ignored.
    #[inline]
    pub fn prefetch_segment(&self, n: usize, k0: usize, len: usize) {
        if n >= self.n_rows {
            return;
        }
        // Clamped to the data: a hint past the last block is dropped.
        let clamp = |r: std::ops::Range<usize>, len: usize| r.start.min(len)..r.end.min(len);
        match self.src {
            Source::Quant {
                ty,
                data,
                row_bytes,
                ..
            } => prefetch_lines(&data[clamp(block_range(ty, row_bytes, n, k0, len), data.len())]),
            Source::F32(d) => {
                let start = n * self.n_cols + k0;
                prefetch_lines(&d[clamp(start..start + len, d.len())]);
            }
        }
    }

    /// The stored bytes of row `n`, where the matrix is quantized (f32
    /// matrices have none: they are read as f32).
    pub(crate) fn row_bytes(&self, n: usize) -> Option<&'a [u8]> {
        match self.src {
            Source::Quant {
                data, row_bytes, ..
            } => Some(&data[n * row_bytes..(n + 1) * row_bytes]),
            Source::F32(_) => None,
        }
    }

    /// Row `n`, dequantized (`out.len() == n_cols`).
    pub fn dequantize_row(&self, n: usize, out: &mut [f32]) {
        self.dequantize_segment(n, 0, out);
    }

    /// Packs rows `n0..n0 + n_valid`, inputs `k0..k0 + kc`, transposed into
    /// `packed[p * NR + j] = W[n0 + j, k0 + p]`; missing rows (`j >= n_valid`)
    /// are zero. `rows` is scratch of at least `NR * kc` values: quantized
    /// rows are decoded into it first (f32 rows are read in place).
    pub(crate) fn pack_transposed(
        &self,
        n0: usize,
        n_valid: usize,
        k0: usize,
        kc: usize,
        packed: &mut [f32],
        rows: &mut [f32],
    ) {
        use super::{pack::transpose_panel, NR};
        let isa = crate::cpu::kernels().gemm_f32;
        let n_valid = n_valid.min(NR);
        match self.src {
            Source::F32(d) => {
                let first = n0 * self.n_cols + k0;
                let src = if n_valid == 0 { &d[..0] } else { &d[first..] };
                transpose_panel(isa, src, self.n_cols, n_valid, kc, packed);
            }
            Source::Quant { .. } => {
                (0..PREFETCH_ROWS).for_each(|j| self.prefetch_segment(n0 + j, k0, kc));
                for (j, seg) in rows[..n_valid * kc].chunks_exact_mut(kc).enumerate() {
                    self.prefetch_segment(n0 + j + PREFETCH_ROWS, k0, kc);
                    self.dequantize_segment(n0 + j, k0, seg);
                }
                transpose_panel(isa, &rows[..n_valid * kc], kc, n_valid, kc, packed);
            }
        }
    }
}

/// The bytes of row `n`'s values `k0..k0 + len` in a quantized matrix of
/// `row_bytes` a row: from the block holding `k0`, whole blocks.
fn block_range(
    ty: QuantType,
    row_bytes: usize,
    n: usize,
    k0: usize,
    len: usize,
) -> std::ops::Range<usize> {
    let (bl, bb) = (ty.block_len(), ty.block_bytes());
    let start = n * row_bytes + k0 / bl * bb;
    start..start + len.div_ceil(bl) * bb
}

/// Prefetches every 64-byte line of `s` into all cache levels.
#[inline]
fn prefetch_lines<T>(s: &[T]) {
    #[cfg(target_arch = "x86_64")]
    for line in s.chunks((64 / std::mem::size_of::<T>()).max(1)) {
        // SAFETY: a prefetch reads nothing; the address is inside `s`.
        unsafe {
            std::arch::x86_64::_mm_prefetch(line.as_ptr().cast(), std::arch::x86_64::_MM_HINT_T0)
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = s;
}
