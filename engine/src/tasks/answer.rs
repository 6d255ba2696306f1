//! Final answers: the last `\boxed{...}` of a text (nested braces allowed)
//! for math, the last fenced code block for code tasks. Task knowledge: the
//! agent reads a trajectory's answer with [`last_boxed`], the verifier
//! normalizes `\boxed`/`\frac` arguments with `balanced`.

/// Content of the last `\boxed{...}` (or `\fbox{...}`), braces balanced.
pub fn last_boxed(text: &str) -> Option<String> {
    let mut best = None;
    for marker in ["\\boxed{", "\\fbox{"] {
        let mut from = 0;
        while let Some(rel) = text[from..].find(marker) {
            let start = from + rel + marker.len();
            if let Some(content) = balanced(&text[start..]) {
                if best.as_ref().is_none_or(|(pos, _)| start > *pos) {
                    best = Some((start, content.to_string()));
                }
            }
            from = start;
        }
    }
    best.map(|(_, c)| c)
}

/// How many characters at the end of a response the strict match reads (the
/// reference's window).
pub const STRICT_WINDOW: usize = 300;

/// The last `\boxed{}` within the last [`STRICT_WINDOW`] characters of
/// `text` (the reference's strict extraction: a box that starts earlier is
/// not read).
pub fn last_boxed_strict(text: &str) -> Option<String> {
    // The window's first character, counted back from the end in one pass.
    let from = text
        .char_indices()
        .rev()
        .nth(STRICT_WINDOW - 1)
        .map_or(0, |(i, _)| i);
    last_boxed(&text[from..])
}

/// The text up to the brace closing an already opened one.
pub(crate) fn balanced(s: &str) -> Option<&str> {
    let mut depth = 1usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&s[..i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The content of the last fenced code block (```` ```lang ... ``` ````).
pub fn last_code_block(text: &str) -> Option<String> {
    let end = text.rfind("```")?;
    let open = text[..end].rfind("```")?;
    let body = &text[open + 3..end];
    let body = body.split_once('\n').map(|(_, rest)| rest).unwrap_or(body);
    Some(body.trim_end_matches('\n').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed() {
        assert_eq!(last_boxed("so \\boxed{18} dollars").as_deref(), Some("18"));
        assert_eq!(
            last_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}}").as_deref(),
            Some("\\frac{1}{2}")
        );
        assert_eq!(last_boxed("\\boxed{unclosed"), None);
        assert_eq!(last_boxed("none"), None);
    }

    #[test]
    fn strict_window() {
        let tail = "x".repeat(STRICT_WINDOW - "\\boxed{7}".len());
        assert_eq!(
            last_boxed_strict(&format!("\\boxed{{7}}{tail}")).as_deref(),
            Some("7")
        );
        // One character more and the box starts outside the window.
        assert_eq!(last_boxed_strict(&format!("\\boxed{{7}}{tail}x")), None);
        assert_eq!(last_boxed_strict("é \\boxed{1}").as_deref(), Some("1"));
    }

    #[test]
    fn code_block() {
        assert_eq!(
            last_code_block("a\n```python\nprint(1)\n```\nb").as_deref(),
            Some("print(1)")
        );
        assert_eq!(last_code_block("no code"), None);
    }
}
