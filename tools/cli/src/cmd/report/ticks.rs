//! Axis ticks a reader can take in: round steps (1, 2 or 5 times a power of
//! ten), labels with just the digits the step needs, and SI prefixes for
//! very small or large values (`20n` for a KL of 2e-8, `12k` tokens/s)
//! instead of Rust's `4.3e-8`.

/// Ticks covering `[lo, hi]` (lo < hi): about `target` round values, the
/// first at or below `lo`, the last at or above `hi`, with their labels.
pub fn ticks(lo: f64, hi: f64, target: usize) -> Vec<(f64, String)> {
    let step = round_step((hi - lo) / target.max(1) as f64);
    let first = (lo / step).floor() as i64;
    let last = (hi / step).ceil() as i64;
    let values: Vec<f64> = (first..=last).map(|k| k as f64 * step).collect();
    let largest = values.iter().fold(0f64, |m, v| m.max(v.abs()));
    let scale = Scale::for_values(largest, step);
    values.into_iter().map(|v| (v, scale.label(v))).collect()
}

/// The smallest of 1, 2, 5 times a power of ten that is at least `raw`.
fn round_step(raw: f64) -> f64 {
    let raw = if raw.is_finite() && raw > 0.0 {
        raw
    } else {
        1.0
    };
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag)
}

/// A value as a reader takes it in: four significant digits at most, with an
/// SI prefix when it is very small or large (`43n`, `1.25M`, `0.5`, `-1`).
pub fn value(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return crate::render::number(v, 0);
    }
    let a = v.abs();
    let exp = if (1e-3..1e4).contains(&a) {
        0
    } else {
        si_exponent(a)
    };
    let scaled = v / 10f64.powi(exp);
    let digits = (3 - scaled.abs().log10().floor() as i32).clamp(0, 3) as usize;
    format!("{}{}", crate::render::number(scaled, digits), prefix(exp))
}

/// How the labels of one axis are written: one prefix, one number of digits.
struct Scale {
    exp: i32,
    digits: usize,
}

impl Scale {
    fn for_values(largest: f64, step: f64) -> Scale {
        let exp = if largest < 1e4 && step >= 1e-3 {
            0
        } else {
            si_exponent(largest.max(step))
        };
        let scaled_step = step / 10f64.powi(exp);
        let digits = (-(scaled_step.log10() + 1e-9).floor()).clamp(0.0, 3.0) as usize;
        Scale { exp, digits }
    }

    fn label(&self, v: f64) -> String {
        let n = crate::render::number(v / 10f64.powi(self.exp), self.digits);
        if n == "0" {
            n
        } else {
            format!("{n}{}", prefix(self.exp))
        }
    }
}

/// The multiple of three at or below the value's power of ten, within the
/// prefixes there are names for.
fn si_exponent(a: f64) -> i32 {
    ((a.log10() / 3.0).floor() as i32 * 3).clamp(-15, 15)
}

fn prefix(exp: i32) -> &'static str {
    match exp {
        -15 => "f",
        -12 => "p",
        -9 => "n",
        -6 => "µ",
        -3 => "m",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(lo: f64, hi: f64) -> Vec<String> {
        ticks(lo, hi, 4).into_iter().map(|(_, l)| l).collect()
    }

    #[test]
    fn round_steps_and_just_the_digits_needed() {
        assert_eq!(labels(-1.0, 1.0), ["-1", "-0.5", "0", "0.5", "1"]);
        assert_eq!(labels(0.0, 3.0), ["0", "1", "2", "3"]);
        assert_eq!(
            labels(0.12, 0.31),
            ["0.1", "0.15", "0.2", "0.25", "0.3", "0.35"]
        );
    }

    #[test]
    fn tiny_and_huge_values_get_si_prefixes() {
        assert_eq!(labels(0.0, 4.3e-8), ["0", "20n", "40n", "60n"]);
        assert_eq!(labels(9000.0, 13000.0), ["9k", "10k", "11k", "12k", "13k"]);
        assert_eq!(value(4.3e-8), "43n");
        assert_eq!(value(12340.0), "12.34k");
        assert_eq!(value(-1.0), "-1");
        assert_eq!(value(0.1234567), "0.123");
    }

    #[test]
    fn ticks_cover_the_range() {
        for (lo, hi) in [(0.013, 0.017), (-3.7, 12.2), (1e-9, 5e-9), (2.0, 2.5)] {
            let t = ticks(lo, hi, 4);
            // Up to rounding: k * step may miss a round `lo` by an ulp.
            let slack = 1e-9 * (hi - lo);
            assert!(t.first().unwrap().0 <= lo + slack && t.last().unwrap().0 >= hi - slack);
            assert!(t.len() >= 2 && t.len() <= 12, "{lo}..{hi}: {t:?}");
        }
    }
}
