//! A math answer checker: numbers with commas, signs, decimals, percents,
//! fractions and simple LaTeX (`\frac`, `\dfrac`, `\text{}` units) compared
//! as exact rationals where possible, else numerically.

/// Canonical text of an answer: LaTeX wrappers and units stripped.
pub fn normalize_answer(s: &str) -> String {
    let mut t = s.trim().to_string();
    for (from, to) in [
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("$", ""),
        ("\\%", ""),
        ("%", ""),
    ] {
        t = t.replace(from, to);
    }
    // \text{...} and \mbox{...}: units, dropped.
    for cmd in ["\\text{", "\\mbox{", "\\mathrm{"] {
        while let Some(i) = t.find(cmd) {
            let rest = &t[i + cmd.len()..];
            let end = rest
                .find('}')
                .map(|e| i + cmd.len() + e + 1)
                .unwrap_or(t.len());
            t.replace_range(i..end, "");
        }
    }
    t = t.replace(',', "").replace(' ', "");
    t.trim_end_matches('.').to_string()
}

/// The value of an answer as p/q (or a float), if it is a number.
fn value(s: &str) -> Option<(f64, Option<(i128, i128)>)> {
    let t = normalize_answer(s);
    if let Some(inner) = t.strip_prefix("\\frac{") {
        let (num, rest) = inner.split_once("}{")?;
        let den = rest.strip_suffix('}')?;
        let (a, b) = (int(num)?, int(den)?);
        return (b != 0).then(|| (a as f64 / b as f64, Some((a, b))));
    }
    if let Some((a, b)) = t.split_once('/') {
        let (a, b) = (int(a)?, int(b)?);
        return (b != 0).then(|| (a as f64 / b as f64, Some((a, b))));
    }
    // Leading number with trailing unit words (e.g. "18dollars").
    let end = t
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || ((c == '-' || c == '+') && i == 0)))
        .map(|(i, _)| i)
        .unwrap_or(t.len());
    let num = &t[..end];
    let f: f64 = num.parse().ok()?;
    let exact = int(num).map(|n| (n, 1));
    Some((f, exact))
}

fn int(s: &str) -> Option<i128> {
    s.trim().parse::<i128>().ok()
}

/// Whether a predicted answer equals the reference.
pub fn math_equal(pred: &str, truth: &str) -> bool {
    if normalize_answer(pred) == normalize_answer(truth) {
        return true;
    }
    match (value(pred), value(truth)) {
        (Some((_, Some((a, b)))), Some((_, Some((c, d))))) => a * d == b * c,
        (Some((x, _)), Some((y, _))) => (x - y).abs() <= 1e-6 * y.abs().max(1.0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equalities() {
        for (p, t) in [
            ("18", "18"),
            ("18.0", "18"),
            ("$18", "18"),
            ("1,000", "1000"),
            ("\\frac{1}{2}", "0.5"),
            ("\\dfrac{3}{6}", "1/2"),
            ("50\\%", "50"),
            ("18 \\text{ dollars}", "18"),
            ("-3", "-3"),
            ("27.0", "27"),
        ] {
            assert!(math_equal(p, t), "{p} vs {t}");
        }
        for (p, t) in [("17", "18"), ("", "18"), ("x", "18"), ("1/3", "0.33")] {
            assert!(!math_equal(p, t), "{p} vs {t}");
        }
    }
}
