//! Half-precision conversions (IEEE binary16 and bfloat16) to f32.
//!
//! Quantized blocks carry their scales as f16; tensors may be stored as f16 or
//! bf16. Conversion is exact (every f16/bf16 value is an f32), so these are
//! bit-manipulation only: no rounding happens here.

/// The f32 with the same value as the IEEE binary16 number `bits`
/// (subnormals, infinities and NaN included).
///
/// Without branches: every quantized block converts one or two of these
/// scales, and the case analysis (`reference` in the tests) cost the
/// decode-and-dot rows a mispredicted jump chain per block. Exponent and
/// mantissa are moved into f32's fields, which reads the half's exponent
/// `e` as `e - 127` instead of `e - 15`; one multiply by 2^112 puts it right
/// for normal and subnormal halves alike (a subnormal half lands on an f32
/// subnormal first, which the multiply makes normal, exactly). Infinity and
/// NaN (exponent 31) are picked by a select.
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits as u32) & 0x8000) << 16;
    let em = (bits as u32) & 0x7fff;
    let finite = (f32::from_bits(em << 13) * f32::from_bits(0x7780_0000)).to_bits(); // 2^112
    let special = if em > 0x7c00 {
        0x7fc0_0000 | ((em & 0x3ff) << 13) // NaN, quieted, payload kept
    } else {
        0x7f80_0000 // infinity
    };
    f32::from_bits(sign | if em >= 0x7c00 { special } else { finite })
}

/// The f32 with the same value as the bfloat16 number `bits`.
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// The nearest IEEE binary16 to `x` (round to nearest even; overflow to
/// infinity). Used when writing f16 tensors and test data.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mant = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if mant != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // Subnormal half: shift the mantissa (with its implicit 1) into place.
        let m = mant | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1 << shift) - 1);
        let mut h = m >> shift;
        if rest > half || (rest == half && h & 1 == 1) {
            h += 1;
        }
        return sign | h as u16;
    }
    let mut h = ((e as u32) << 10) | (mant >> 13);
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1; // may carry into the exponent, which is the right answer
    }
    sign | h as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
    }

    /// The case-by-case conversion: the oracle of the branch-free one.
    fn reference(bits: u16) -> f32 {
        let sign = ((bits as u32) & 0x8000) << 16;
        let exp = ((bits >> 10) & 0x1f) as u32;
        let mant = (bits & 0x3ff) as u32;
        let out = match (exp, mant) {
            (0, 0) => sign,
            (0, _) => {
                // Subnormal: value = mant * 2^-24, exactly representable in f32.
                let v = mant as f32 * f32::from_bits(0x3380_0000); // 2^-24
                return if sign != 0 { -v } else { v };
            }
            (0x1f, 0) => sign | 0x7f80_0000,
            (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
            (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
        };
        f32::from_bits(out)
    }

    #[test]
    fn every_half_converts_to_the_same_bits_as_the_case_analysis() {
        for bits in 0..=u16::MAX {
            assert_eq!(
                f16_to_f32(bits).to_bits(),
                reference(bits).to_bits(),
                "bits {bits:#06x}"
            );
        }
    }

    #[test]
    fn every_finite_half_round_trips() {
        for bits in 0..=u16::MAX {
            let x = f16_to_f32(bits);
            if x.is_nan() {
                assert!(f16_to_f32(f32_to_f16(x)).is_nan());
                continue;
            }
            assert_eq!(f32_to_f16(x), bits, "bits {bits:#06x} value {x}");
        }
    }

    #[test]
    fn rounds_to_nearest_even() {
        // 1 + 2^-11 lies halfway between 1 and the next half; ties go to even.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(f32_to_f16(1e6), 0x7c00);
    }
}
