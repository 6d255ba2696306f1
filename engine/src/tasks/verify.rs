//! The math verifier: is a predicted answer equal to the reference?
//!
//! Both sides are normalized (LaTeX spacing, `$`, `\%`, degrees, `\text{}`
//! units, thousands separators, a leading `x =`), then evaluated as
//! arithmetic over exact rationals where possible: numbers (signs, decimals,
//! commas), `+ - * / ^`, `\frac`/`\dfrac`/`\tfrac` (also `\frac12`),
//! `\sqrt{}`/`\sqrt[n]{}`, `\pi`, `\cdot`, `\times`, parentheses and implicit
//! products (`2\sqrt{3}`). Two exact values must be equal; a value that went
//! through an irrational operation compares with a relative tolerance of
//! 1e-6. Tuples compare element by element; anything that is not arithmetic
//! compares as normalized text (`(C)` equals `C`).

/// Relative tolerance for values that are not exact rationals.
pub const TOLERANCE: f64 = 1e-6;

/// Relative tolerance between a written decimal and an exact value.
pub const DECIMAL_TOLERANCE: f64 = 1e-9;

fn close(x: f64, y: f64, tol: f64) -> bool {
    x.is_finite() && y.is_finite() && (x - y).abs() <= tol * y.abs().max(1.0)
}

/// Whether a predicted answer equals the reference.
pub fn math_equal(pred: &str, truth: &str) -> bool {
    let (p, t) = (normalize_answer(pred), normalize_answer(truth));
    if p.is_empty() || t.is_empty() {
        return false;
    }
    if p == t {
        return true;
    }
    let (pe, te) = (elements(&p), elements(&t));
    if pe.len() > 1 || te.len() > 1 {
        return pe.len() == te.len() && pe.iter().zip(&te).all(|(a, b)| scalar_equal(a, b));
    }
    scalar_equal(&p, &t)
}

fn scalar_equal(p: &str, t: &str) -> bool {
    if p == t {
        return true;
    }
    match (evaluate(p), evaluate(t)) {
        // A long decimal stands for the fraction it rounds (33.3333333333 for 100/3).
        (Some(a), Some(b)) if p.contains('.') || t.contains('.') => {
            a.equals(&b) || close(a.value(), b.value(), DECIMAL_TOLERANCE)
        }
        (Some(a), Some(b)) => a.equals(&b),
        _ => choice_letter(p).is_some() && choice_letter(p) == choice_letter(t),
    }
}

/// `(C)`, `C`, `\text{(C)}` all name choice C.
fn choice_letter(s: &str) -> Option<char> {
    let s = s.trim_matches(|c| c == '(' || c == ')');
    let mut cs = s.chars();
    match (cs.next(), cs.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() => Some(c.to_ascii_uppercase()),
        _ => None,
    }
}

/// The reference's strict match: both sides normalized, then equal as text
/// (no arithmetic: `0.5` is not `\frac{1}{2}`).
pub fn strict_equal(pred: &str, truth: &str) -> bool {
    let (p, t) = (normalize_answer(pred), normalize_answer(truth));
    !p.is_empty() && p == t
}

/// Canonical text of an answer (see the module documentation).
pub fn normalize_answer(s: &str) -> String {
    let mut t = s.trim().to_string();
    if let Some(inner) = super::answer::last_boxed(&t) {
        if t.starts_with("\\boxed{") && t.ends_with('}') {
            t = inner;
        }
    }
    for (from, to) in [
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\displaystyle", ""),
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\(", ""),
        ("\\)", ""),
        ("\\[", ""),
        ("\\]", ""),
        ("\\%", ""),
        ("%", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("°", ""),
        ("{,}", ""),
        ("\\times", "*"),
        ("\\cdot", "*"),
        ("\\div", "/"),
        ("−", "-"),
        ("~", ""),
    ] {
        t = t.replace(from, to);
    }
    t = unwrap_text_commands(&t);
    t = t.split_whitespace().collect::<Vec<_>>().join(" ");
    t = strip_thousands_separators(&t);
    t = strip_assignment(&t);
    t = strip_trailing_units(&t);
    let t = t.replace(' ', "");
    t.trim_end_matches('.').to_string()
}

/// `\text{X}`, `\textbf{X}`, `\mathrm{X}`, `\mbox{X}` -> ` X `.
fn unwrap_text_commands(s: &str) -> String {
    let mut t = s.to_string();
    for cmd in [
        "\\text{",
        "\\textbf{",
        "\\textit{",
        "\\mathrm{",
        "\\mathbf{",
        "\\mbox{",
    ] {
        while let Some(i) = t.find(cmd) {
            let start = i + cmd.len();
            let end = match close_brace(&t[start..]) {
                Some(e) => start + e,
                None => break,
            };
            let inner = t[start..end].to_string();
            t.replace_range(i..end + 1, &format!(" {inner} "));
        }
    }
    t
}

/// Index of the brace closing one already opened.
fn close_brace(s: &str) -> Option<usize> {
    super::answer::balanced(s).map(str::len)
}

/// `1,234,567` -> `1234567`; commas between other things (tuples) stay.
fn strip_thousands_separators(s: &str) -> String {
    let b: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    for i in 0..b.len() {
        if b[i] == ',' && i > 0 && b[i - 1].is_ascii_digit() {
            let group = b.get(i + 1..i + 4);
            let after = b.get(i + 4).copied();
            let digits3 = group.is_some_and(|g| g.iter().all(char::is_ascii_digit));
            let ends = after.is_none_or(|c| !c.is_ascii_digit());
            // The number before must not already hold a decimal point.
            let int_part = b[..i]
                .iter()
                .rev()
                .take_while(|c| c.is_ascii_digit() || **c == ',')
                .count();
            let decimal_before = i > int_part && b[i - int_part - 1] == '.';
            if digits3 && ends && !decimal_before {
                continue;
            }
        }
        out.push(b[i]);
    }
    out
}

/// `x = 5` -> `5` (one variable, or `\theta`-like command, then `=`).
fn strip_assignment(s: &str) -> String {
    if let Some((lhs, rhs)) = s.split_once('=') {
        let lhs = lhs.trim();
        let is_var = !lhs.is_empty()
            && lhs.len() <= 12
            && lhs
                .chars()
                .all(|c| c.is_ascii_alphabetic() || c == '\\' || c == '_');
        if is_var && !rhs.contains('=') {
            return rhs.trim().to_string();
        }
    }
    s.to_string()
}

/// `18 dollars`, `5 cm^2`, `3 hours.` -> the number, when what follows the
/// arithmetic is words only.
fn strip_trailing_units(s: &str) -> String {
    let t = s.trim().trim_end_matches('.');
    if evaluate(&t.replace(' ', "")).is_some() {
        return t.to_string();
    }
    let cut = t
        .char_indices()
        .find(|&(i, c)| {
            c.is_ascii_alphabetic() && !t[..i].ends_with('\\') && !is_command_tail(t, i)
        })
        .map(|(i, _)| i);
    if let Some(i) = cut {
        let (head, tail) = t.split_at(i);
        let unit_like = tail
            .chars()
            .all(|c| c.is_ascii_alphabetic() || " ^23./-".contains(c));
        if unit_like && evaluate(&head.replace(' ', "")).is_some() {
            return head.trim().to_string();
        }
    }
    t.to_string()
}

/// Whether byte `i` is inside a LaTeX command name (`\frac`, `\sqrt`, `\pi`).
fn is_command_tail(s: &str, i: usize) -> bool {
    s[..i]
        .rfind('\\')
        .is_some_and(|b| s[b + 1..i].chars().all(|c| c.is_ascii_alphabetic()))
}

/// Top-level comma-separated elements, outer `()`/`[]` removed when they
/// wrap a list.
fn elements(s: &str) -> Vec<String> {
    let inner = match (s.chars().next(), s.chars().last()) {
        (Some('('), Some(')')) | (Some('['), Some(']')) if s.contains(',') => &s[1..s.len() - 1],
        _ => s,
    };
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(inner[start..i].to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(inner[start..].to_string());
    out
}

/// A number: an exact rational p/q (q > 0, reduced), or approximate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    /// p / q, reduced, q > 0.
    Exact(i128, i128),
    /// A value that went through an irrational operation.
    Approx(f64),
}

impl Number {
    fn value(self) -> f64 {
        match self {
            Number::Exact(p, q) => p as f64 / q as f64,
            Number::Approx(x) => x,
        }
    }

    fn exact(p: i128, q: i128) -> Option<Number> {
        if q == 0 {
            return None;
        }
        let g = gcd(p.unsigned_abs(), q.unsigned_abs()).max(1) as i128;
        let s = if q < 0 { -1 } else { 1 };
        Some(Number::Exact(s * p / g, s * q / g))
    }

    fn equals(&self, other: &Number) -> bool {
        match (*self, *other) {
            (Number::Exact(a, b), Number::Exact(c, d)) => a == c && b == d,
            (x, y) => close(x.value(), y.value(), TOLERANCE),
        }
    }

    fn add(self, o: Number) -> Option<Number> {
        if let (Number::Exact(a, b), Number::Exact(c, d)) = (self, o) {
            if let Some(n) = a
                .checked_mul(d)
                .and_then(|x| c.checked_mul(b).and_then(|y| x.checked_add(y)))
            {
                if let Some(q) = b.checked_mul(d) {
                    return Number::exact(n, q);
                }
            }
        }
        Some(Number::Approx(self.value() + o.value()))
    }

    fn neg(self) -> Number {
        match self {
            Number::Exact(p, q) => Number::Exact(-p, q),
            Number::Approx(x) => Number::Approx(-x),
        }
    }

    fn mul(self, o: Number) -> Option<Number> {
        if let (Number::Exact(a, b), Number::Exact(c, d)) = (self, o) {
            if let (Some(n), Some(q)) = (a.checked_mul(c), b.checked_mul(d)) {
                return Number::exact(n, q);
            }
        }
        Some(Number::Approx(self.value() * o.value()))
    }

    fn recip(self) -> Option<Number> {
        match self {
            Number::Exact(0, _) => None,
            Number::Exact(p, q) => Number::exact(q, p),
            Number::Approx(0.0) => None,
            Number::Approx(x) => Some(Number::Approx(1.0 / x)),
        }
    }

    fn pow(self, e: Number) -> Option<Number> {
        if let (Number::Exact(p, q), Number::Exact(n, 1)) = (self, e) {
            if n.unsigned_abs() <= 64 {
                let (mut num, mut den) = (1i128, 1i128);
                let mut exact = true;
                for _ in 0..n.unsigned_abs() {
                    match (num.checked_mul(p), den.checked_mul(q)) {
                        (Some(a), Some(b)) => (num, den) = (a, b),
                        _ => {
                            exact = false;
                            break;
                        }
                    }
                }
                if exact {
                    let r = Number::exact(num, den)?;
                    return if n < 0 { r.recip() } else { Some(r) };
                }
            }
        }
        let r = self.value().powf(e.value());
        r.is_finite().then_some(Number::Approx(r))
    }

    fn root(self, n: u32) -> Option<Number> {
        if let Number::Exact(p, q) = self {
            if let (Some(a), Some(b)) = (int_root(p, n), int_root(q, n)) {
                return Number::exact(a, b);
            }
        }
        let x = self.value();
        if x < 0.0 && n.is_multiple_of(2) {
            return None;
        }
        let r = x.signum() * x.abs().powf(1.0 / n as f64);
        r.is_finite().then_some(Number::Approx(r))
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The exact integer n-th root of `x`, if there is one.
fn int_root(x: i128, n: u32) -> Option<i128> {
    if x < 0 {
        return (n % 2 == 1).then(|| int_root(-x, n).map(|r| -r)).flatten();
    }
    let guess = (x as f64).powf(1.0 / n as f64).round() as i128;
    (guess.saturating_sub(1)..=guess + 1).find(|&r| r >= 0 && r.checked_pow(n) == Some(x))
}

/// The value of a normalized arithmetic expression, if it is one.
pub fn evaluate(s: &str) -> Option<Number> {
    let mut p = Parser {
        s: s.as_bytes(),
        i: 0,
    };
    let v = p.expr()?;
    (p.i == p.s.len()).then_some(v)
}

/// Recursive descent over the normalized text (no spaces).
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn eat_str(&mut self, word: &str) -> bool {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Option<Number> {
        let mut v = self.term()?;
        loop {
            if self.eat(b'+') {
                v = v.add(self.term()?)?;
            } else if self.eat(b'-') {
                v = v.add(self.term()?.neg())?;
            } else {
                return Some(v);
            }
        }
    }

    fn term(&mut self) -> Option<Number> {
        let mut v = self.unary()?;
        loop {
            if self.eat(b'*') {
                v = v.mul(self.unary()?)?;
            } else if self.eat(b'/') {
                v = v.mul(self.unary()?.recip()?)?;
            } else if self.starts_atom() {
                // Implicit product: 2\sqrt{3}, 3\pi, 2(4).
                v = v.mul(self.power()?)?;
            } else {
                return Some(v);
            }
        }
    }

    fn starts_atom(&self) -> bool {
        match self.peek() {
            Some(b'(' | b'{') => true,
            Some(b'\\') => ["\\frac", "\\sqrt", "\\pi"]
                .iter()
                .any(|w| self.s[self.i..].starts_with(w.as_bytes())),
            _ => false,
        }
    }

    fn unary(&mut self) -> Option<Number> {
        if self.eat(b'-') {
            return Some(self.unary()?.neg());
        }
        if self.eat(b'+') {
            return self.unary();
        }
        self.power()
    }

    fn power(&mut self) -> Option<Number> {
        let base = self.atom()?;
        if self.eat(b'^') {
            let e = if self.peek() == Some(b'{') {
                self.group(b'{', b'}')?
            } else if self.peek() == Some(b'-') {
                self.i += 1;
                self.atom()?.neg()
            } else if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                // `2^10` is 1024 as models mean it (LaTeX would render 2^1 0).
                self.number()?
            } else {
                self.atom()?
            };
            return base.pow(e);
        }
        Some(base)
    }

    /// After `^`, `\frac` or `\sqrt` without braces, one digit is one argument.
    fn digit_or_atom(&mut self) -> Option<Number> {
        match self.peek() {
            Some(c) if c.is_ascii_digit() => {
                self.i += 1;
                Some(Number::Exact((c - b'0') as i128, 1))
            }
            _ => self.atom(),
        }
    }

    fn group(&mut self, open: u8, close: u8) -> Option<Number> {
        if !self.eat(open) {
            return None;
        }
        let v = self.expr()?;
        self.eat(close).then_some(v)
    }

    fn atom(&mut self) -> Option<Number> {
        match self.peek()? {
            b'(' => self.group(b'(', b')'),
            b'{' => self.group(b'{', b'}'),
            b'\\' => {
                if self.eat_str("\\frac") {
                    let num = self.braced_or_digit()?;
                    let den = self.braced_or_digit()?;
                    num.mul(den.recip()?)
                } else if self.eat_str("\\sqrt") {
                    let n = if self.peek() == Some(b'[') {
                        match self.group(b'[', b']')? {
                            Number::Exact(n, 1) if (2..=16).contains(&n) => n as u32,
                            _ => return None,
                        }
                    } else {
                        2
                    };
                    self.braced_or_digit()?.root(n)
                } else if self.eat_str("\\pi") {
                    Some(Number::Approx(std::f64::consts::PI))
                } else {
                    None
                }
            }
            c if c.is_ascii_digit() || c == b'.' => self.number(),
            _ => None,
        }
    }

    fn braced_or_digit(&mut self) -> Option<Number> {
        if self.peek() == Some(b'{') {
            self.group(b'{', b'}')
        } else {
            self.digit_or_atom()
        }
    }

    /// Decimal literal (`12`, `0.5`, `.5`, `1.5e3`) as an exact rational.
    fn number(&mut self) -> Option<Number> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        let int_end = self.i;
        let mut frac = "";
        if self.eat(b'.') {
            let f0 = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
            frac = std::str::from_utf8(&self.s[f0..self.i]).ok()?;
        }
        let int = std::str::from_utf8(&self.s[start..int_end]).ok()?;
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut exp = 0i32;
        if self.peek() == Some(b'e')
            && self
                .s
                .get(self.i + 1)
                .is_some_and(|c| c.is_ascii_digit() || *c == b'-')
        {
            let save = self.i;
            self.i += 1;
            let neg = self.eat(b'-');
            let e0 = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
            match std::str::from_utf8(&self.s[e0..self.i])
                .ok()?
                .parse::<i32>()
            {
                Ok(e) if e <= 30 => exp = if neg { -e } else { e },
                _ => self.i = save,
            }
        }
        let digits = format!("{int}{frac}");
        let approx = || {
            let text = format!(
                "{}.{}e{}",
                if int.is_empty() { "0" } else { int },
                frac,
                exp
            );
            text.parse::<f64>().ok().map(Number::Approx)
        };
        let Ok(n) = digits.trim_start_matches('0').parse::<i128>().or_else(|e| {
            if digits.trim_start_matches('0').is_empty() {
                Ok(0)
            } else {
                Err(e)
            }
        }) else {
            return approx();
        };
        let scale = exp - frac.len() as i32;
        let ten = |k: i32| 10i128.checked_pow(k.unsigned_abs());
        let exact = if scale >= 0 {
            ten(scale).and_then(|t| n.checked_mul(t)).map(|p| (p, 1))
        } else {
            ten(-scale).map(|q| (n, q))
        };
        match exact {
            Some((p, q)) => Number::exact(p, q),
            None => approx(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_forms() {
        for (p, t) in [
            ("18", "18"),
            ("18.0", "18"),
            ("$18", "18"),
            ("\\$18.00", "18"),
            ("1,000", "1000"),
            ("1{,}000", "1000"),
            ("12,345,678", "12345678"),
            ("\\frac{1}{2}", "0.5"),
            ("\\dfrac{3}{6}", "1/2"),
            ("\\frac12", "0.5"),
            ("50\\%", "50"),
            ("18 \\text{ dollars}", "18"),
            ("18 dollars", "18"),
            ("5 \\text{cm}^2", "5"),
            ("-3", "-3"),
            ("27.0", "27"),
            ("x = 5", "5"),
            ("\\boxed{7}", "7"),
            ("2\\sqrt{3}", "\\sqrt{12}"),
            ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),
            ("\\sqrt[3]{27}", "3"),
            ("2^{10}", "1024"),
            ("2^10", "1024"),
            ("\\frac{100}{3}", "33.3333333333"),
            ("3 \\times 4", "12"),
            ("(1, 2)", "(1,2)"),
            ("(C)", "C"),
            ("\\text{(C)}", "C"),
            ("90^\\circ", "90"),
            ("1.5e3", "1500"),
            ("-\\frac{3}{4}", "-0.75"),
            ("\\left(\\frac{1}{2}\\right)", "0.5"),
            ("2\\pi", "6.283185307"),
        ] {
            assert!(math_equal(p, t), "{p} should equal {t}");
        }
    }

    #[test]
    fn different_forms() {
        for (p, t) in [
            ("17", "18"),
            ("", "18"),
            ("x", "18"),
            ("1/3", "0.33"),
            ("1,2", "12"),
            ("(1,2)", "(2,1)"),
            ("\\sqrt{2}", "1.414"),
            ("2.5", "25"),
            ("1,000.5", "1000"),
            ("(A)", "B"),
            ("-18", "18"),
            ("0", "\\frac{0}{0}"),
        ] {
            assert!(!math_equal(p, t), "{p} should differ from {t}");
        }
    }

    #[test]
    fn thousands_separators_only_between_digit_groups() {
        assert_eq!(strip_thousands_separators("1,234"), "1234");
        assert_eq!(strip_thousands_separators("1,23"), "1,23");
        assert_eq!(strip_thousands_separators("0.1,234"), "0.1,234");
        assert_eq!(strip_thousands_separators("(1,2)"), "(1,2)");
    }
}
