//! Tensor element formats (ggml's type ids) and their block geometry.
//!
//! A quantized tensor row is stored as blocks of `block_len` elements taking
//! `block_bytes` bytes each. Readers use this table to bound-check tensor data
//! before touching it; dequantization kernels hang off the same enum.

#[cfg(target_arch = "x86_64")]
pub(crate) mod dot_avx512;
pub mod formats;
pub mod synthetic;

/// A ggml tensor element type, numbered as in `ggml.h` (the numbers are part of
/// the GGUF file format).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QuantType {
    /// ggml type `F32`.
    F32,
    /// ggml type `F16`.
    F16,
    /// ggml type `Q4_0`.
    Q4_0,
    /// ggml type `Q4_1`.
    Q4_1,
    /// ggml type `Q5_0`.
    Q5_0,
    /// ggml type `Q5_1`.
    Q5_1,
    /// ggml type `Q8_0`.
    Q8_0,
    /// ggml type `Q8_1`.
    Q8_1,
    /// ggml type `Q2_K`.
    Q2_K,
    /// ggml type `Q3_K`.
    Q3_K,
    /// ggml type `Q4_K`.
    Q4_K,
    /// ggml type `Q5_K`.
    Q5_K,
    /// ggml type `Q6_K`.
    Q6_K,
    /// ggml type `Q8_K`.
    Q8_K,
    /// ggml type `IQ2_XXS`.
    IQ2_XXS,
    /// ggml type `IQ2_XS`.
    IQ2_XS,
    /// ggml type `IQ3_XXS`.
    IQ3_XXS,
    /// ggml type `IQ1_S`.
    IQ1_S,
    /// ggml type `IQ4_NL`.
    IQ4_NL,
    /// ggml type `IQ3_S`.
    IQ3_S,
    /// ggml type `IQ2_S`.
    IQ2_S,
    /// ggml type `IQ4_XS`.
    IQ4_XS,
    /// ggml type `I8`.
    I8,
    /// ggml type `I16`.
    I16,
    /// ggml type `I32`.
    I32,
    /// ggml type `I64`.
    I64,
    /// ggml type `F64`.
    F64,
    /// ggml type `IQ1_M`.
    IQ1_M,
    /// ggml type `BF16`.
    BF16,
    /// ggml type `TQ1_0`.
    TQ1_0,
    /// ggml type `TQ2_0`.
    TQ2_0,
    /// ggml type `MXFP4`.
    MXFP4,
}

/// (type, ggml id, elements per block, bytes per block).
const TABLE: [(QuantType, u32, usize, usize); 32] = {
    use QuantType::*;
    [
        (F32, 0, 1, 4),
        (F16, 1, 1, 2),
        (Q4_0, 2, 32, 18),
        (Q4_1, 3, 32, 20),
        (Q5_0, 6, 32, 22),
        (Q5_1, 7, 32, 24),
        (Q8_0, 8, 32, 34),
        (Q8_1, 9, 32, 36),
        (Q2_K, 10, 256, 84),
        (Q3_K, 11, 256, 110),
        (Q4_K, 12, 256, 144),
        (Q5_K, 13, 256, 176),
        (Q6_K, 14, 256, 210),
        (Q8_K, 15, 256, 292),
        (IQ2_XXS, 16, 256, 66),
        (IQ2_XS, 17, 256, 74),
        (IQ3_XXS, 18, 256, 98),
        (IQ1_S, 19, 256, 50),
        (IQ4_NL, 20, 32, 18),
        (IQ3_S, 21, 256, 110),
        (IQ2_S, 22, 256, 82),
        (IQ4_XS, 23, 256, 136),
        (I8, 24, 1, 1),
        (I16, 25, 1, 2),
        (I32, 26, 1, 4),
        (I64, 27, 1, 8),
        (F64, 28, 1, 8),
        (IQ1_M, 29, 256, 56),
        (BF16, 30, 1, 2),
        (TQ1_0, 34, 256, 54),
        (TQ2_0, 35, 256, 66),
        (MXFP4, 39, 32, 17),
    ]
};

impl QuantType {
    /// The type with ggml id `id`, or `None` for ids that no current ggml uses.
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        TABLE.iter().find(|row| row.1 == id).map(|row| row.0)
    }

    fn row(self) -> &'static (QuantType, u32, usize, usize) {
        // Every variant has exactly one row; the table is checked by a test.
        TABLE.iter().find(|row| row.0 == self).unwrap_or(&TABLE[0])
    }

    /// ggml's numeric id of this type.
    pub fn ggml_id(self) -> u32 {
        self.row().1
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        self.row().2
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.row().3
    }

    /// Bytes taken by `n_elements` elements, or `None` if `n_elements` is not a
    /// whole number of blocks or the size overflows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let block = self.block_len() as u64;
        if !n_elements.is_multiple_of(block) {
            return None;
        }
        (n_elements / block).checked_mul(self.block_bytes() as u64)
    }

    /// ggml's name for the type (`"Q4_K"`, `"F32"`, ...).
    pub fn name(self) -> String {
        format!("{self:?}")
    }
}

/// Why a buffer could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DequantError {
    /// The format has no dequantizer here (the IQ*, TQ*, MXFP4 and integer
    /// types). Names the type so the caller can say which tensor has it.
    Unsupported(QuantType),
    /// `bytes` and `out` do not describe the same whole number of blocks.
    Length {
        /// The quantization type.
        ty: QuantType,
        /// Bytes given.
        bytes: usize,
        /// Values asked for.
        values: usize,
    },
}

impl std::fmt::Display for DequantError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DequantError::Unsupported(ty) => write!(
                f,
                "tensor type {} cannot be dequantized (supported: {})",
                ty.name(),
                SUPPORTED.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
            ),
            DequantError::Length { ty, bytes, values } => write!(
                f,
                "{bytes} bytes of {} do not decode to {values} values (blocks of {} values in {} bytes)",
                ty.name(),
                ty.block_len(),
                ty.block_bytes()
            ),
        }
    }
}

impl std::error::Error for DequantError {}

/// The formats [`dequantize`] decodes.
pub const SUPPORTED: [QuantType; 13] = {
    use QuantType::*;
    [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
    ]
};

/// A function decoding whole blocks: `(bytes, out)` with matching block counts.
pub type DequantFn = fn(&[u8], &mut [f32]);

impl QuantType {
    /// The block decoder of this format, or `None` if it has none. The one
    /// table that maps formats to code: everything else goes through here.
    pub fn dequantizer(self) -> Option<DequantFn> {
        use formats::*;
        Some(match self {
            QuantType::F32 => f32_from_le_bytes,
            QuantType::F16 => dequantize_blocks::<F16>,
            QuantType::BF16 => dequantize_blocks::<BF16>,
            QuantType::Q4_0 => dequantize_blocks::<Q4_0>,
            QuantType::Q4_1 => dequantize_blocks::<Q4_1>,
            QuantType::Q5_0 => dequantize_blocks::<Q5_0>,
            QuantType::Q5_1 => dequantize_blocks::<Q5_1>,
            QuantType::Q8_0 => dequantize_blocks::<Q8_0>,
            QuantType::Q2_K => dequantize_blocks::<Q2_K>,
            QuantType::Q3_K => dequantize_blocks::<Q3_K>,
            QuantType::Q4_K => dequantize_blocks::<Q4_K>,
            QuantType::Q5_K => dequantize_blocks::<Q5_K>,
            QuantType::Q6_K => dequantize_blocks::<Q6_K>,
            _ => return None,
        })
    }
}

/// F32 "decoding" is a copy; one flat loop instead of one call per value.
fn f32_from_le_bytes(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// Decodes `bytes` of format `ty` into `out` (`out.len()` values, a whole
/// number of blocks, exactly filling `bytes`).
pub fn dequantize(ty: QuantType, bytes: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    let f = ty.dequantizer().ok_or(DequantError::Unsupported(ty))?;
    let blocks = out.len() / ty.block_len();
    if !out.len().is_multiple_of(ty.block_len()) || bytes.len() != blocks * ty.block_bytes() {
        return Err(DequantError::Length {
            ty,
            bytes: bytes.len(),
            values: out.len(),
        });
    }
    f(bytes, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trips_ids() {
        for row in TABLE {
            assert_eq!(QuantType::from_ggml_id(row.1), Some(row.0));
            assert_eq!(row.0.ggml_id(), row.1);
            assert_eq!(row.0.block_len(), row.2);
        }
        assert_eq!(QuantType::from_ggml_id(4), None);
        assert_eq!(QuantType::from_ggml_id(1000), None);
    }

    #[test]
    fn format_constants_match_the_table() {
        use formats::BlockFormat;
        fn check<F: BlockFormat>() {
            assert_eq!(F::TYPE.block_len(), F::BLOCK_LEN, "{:?}", F::TYPE);
            assert_eq!(F::TYPE.block_bytes(), F::BLOCK_BYTES, "{:?}", F::TYPE);
        }
        use formats::*;
        check::<F32>();
        check::<F16>();
        check::<BF16>();
        check::<Q4_0>();
        check::<Q4_1>();
        check::<Q5_0>();
        check::<Q5_1>();
        check::<Q8_0>();
        check::<Q2_K>();
        check::<Q3_K>();
        check::<Q4_K>();
        check::<Q5_K>();
        check::<Q6_K>();
        for ty in SUPPORTED {
            assert!(ty.dequantizer().is_some(), "{ty:?}");
        }
    }

    #[test]
    fn dequantize_checks_lengths() {
        let mut out = [0f32; 32];
        assert!(dequantize(QuantType::Q4_0, &[0; 18], &mut out).is_ok());
        assert!(matches!(
            dequantize(QuantType::Q4_0, &[0; 17], &mut out),
            Err(DequantError::Length { .. })
        ));
        assert_eq!(
            dequantize(QuantType::IQ2_XXS, &[0; 66], &mut [0f32; 256]),
            Err(DequantError::Unsupported(QuantType::IQ2_XXS))
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(QuantType::Q4_0.bytes_for(64), Some(36));
        assert_eq!(QuantType::Q6_K.bytes_for(512), Some(420));
        assert_eq!(QuantType::Q6_K.bytes_for(100), None);
        assert_eq!(QuantType::F32.bytes_for(u64::MAX), None);
    }
}
