//! Turning an interpreter's exit into an outcome: the exception class is read
//! from the last line of the traceback, the way the paper's statistics count
//! tool errors (SyntaxError, NameError, ...). Every class is a failure for
//! purification; the class is for statistics only.

use serde::{Deserialize, Serialize};

/// The error classes tool failures are counted by (spec: "When a tool call
/// counts as failed").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorClass {
    /// SyntaxError.
    SyntaxError,
    /// NameError.
    NameError,
    /// `ImportError` and its subclass `ModuleNotFoundError`.
    ImportError,
    /// `IndentationError` and its subclass `TabError`.
    IndentationError,
    /// IndexError.
    IndexError,
    /// TypeError.
    TypeError,
    /// ValueError.
    ValueError,
    /// ZeroDivisionError.
    ZeroDivisionError,
    /// NotImplementedError.
    NotImplementedError,
    /// Any other exception.
    Other,
}

impl ErrorClass {
    /// The class of a Python exception name (`"ModuleNotFoundError"`,
    /// `"json.decoder.JSONDecodeError"`).
    pub fn of_exception(name: &str) -> ErrorClass {
        let short = name.rsplit('.').next().unwrap_or(name);
        match short {
            "SyntaxError" => ErrorClass::SyntaxError,
            "NameError" | "UnboundLocalError" => ErrorClass::NameError,
            "ImportError" | "ModuleNotFoundError" => ErrorClass::ImportError,
            "IndentationError" | "TabError" => ErrorClass::IndentationError,
            "IndexError" => ErrorClass::IndexError,
            "TypeError" => ErrorClass::TypeError,
            "ValueError" => ErrorClass::ValueError,
            "ZeroDivisionError" => ErrorClass::ZeroDivisionError,
            "NotImplementedError" => ErrorClass::NotImplementedError,
            _ => ErrorClass::Other,
        }
    }

    /// The class's name in statistics.
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::SyntaxError => "SyntaxError",
            ErrorClass::NameError => "NameError",
            ErrorClass::ImportError => "ImportError",
            ErrorClass::IndentationError => "IndentationError",
            ErrorClass::IndexError => "IndexError",
            ErrorClass::TypeError => "TypeError",
            ErrorClass::ValueError => "ValueError",
            ErrorClass::ZeroDivisionError => "ZeroDivisionError",
            ErrorClass::NotImplementedError => "NotImplementedError",
            ErrorClass::Other => "other",
        }
    }
}

/// The exception named on the last line of a traceback in `stderr`, if the
/// text holds a traceback (or a bare `SyntaxError` report).
pub fn exception_name(stderr: &str) -> Option<String> {
    if !stderr.contains("Traceback (most recent call last):") && !stderr.contains("Error") {
        return None;
    }
    let last = stderr
        .lines()
        .rev()
        .map(str::trim_end)
        .find(|l| !l.trim().is_empty())?;
    if last.starts_with(' ') {
        return None;
    }
    let name = last.split(':').next()?.trim();
    let valid = !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    valid.then(|| name.to_string())
}

/// The lines our bootstrap adds to every traceback (its module line and the
/// `exec` inside `__run`); removed so the model sees the traceback a plain
/// `python script.py` would print.
pub(crate) const BOOTSTRAP_FRAMES: [&str; 2] = [
    "  File \"<string>\", line 17, in <module>\n",
    "  File \"<string>\", line 5, in __run\n",
];

/// Removes the bootstrap's own frame from tracebacks.
pub(crate) fn clean_traceback(stderr: &str) -> String {
    let cleaned = BOOTSTRAP_FRAMES
        .iter()
        .fold(stderr.to_string(), |s, f| s.replace(f, ""));
    // A syntax error in the code itself is reported without a traceback
    // header by `python script.py`; after removing our frames, only the
    // header is left above its location line.
    const HEADER: &str = "Traceback (most recent call last):\n";
    if let Some(rest) = cleaned.strip_prefix(HEADER) {
        let first = rest.lines().next().unwrap_or("");
        if first.starts_with("  File \"<code>\", line ") && !first.contains(", in ") {
            return rest.to_string();
        }
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_tracebacks() {
        let tb = "Traceback (most recent call last):\n  File \"<code>\", line 2, in <module>\nNameError: name 'x' is not defined\n";
        assert_eq!(exception_name(tb).as_deref(), Some("NameError"));
        let syntax =
            "  File \"<code>\", line 1\n    x = (\n        ^\nSyntaxError: '(' was never closed\n";
        assert_eq!(exception_name(syntax).as_deref(), Some("SyntaxError"));
        let dotted =
            "Traceback (most recent call last):\njson.decoder.JSONDecodeError: Expecting value\n";
        assert_eq!(
            exception_name(dotted).as_deref(),
            Some("json.decoder.JSONDecodeError")
        );
        assert_eq!(
            exception_name("Traceback (most recent call last):\nKeyboardInterrupt\n").as_deref(),
            Some("KeyboardInterrupt")
        );
        assert_eq!(exception_name("just some output\n"), None);
        assert_eq!(exception_name(""), None);
    }

    #[test]
    fn classes() {
        assert_eq!(
            ErrorClass::of_exception("ModuleNotFoundError"),
            ErrorClass::ImportError
        );
        assert_eq!(
            ErrorClass::of_exception("TabError"),
            ErrorClass::IndentationError
        );
        assert_eq!(
            ErrorClass::of_exception("UnboundLocalError"),
            ErrorClass::NameError
        );
        assert_eq!(
            ErrorClass::of_exception("RecursionError"),
            ErrorClass::Other
        );
        assert_eq!(
            ErrorClass::of_exception("decimal.InvalidOperation"),
            ErrorClass::Other
        );
    }

    #[test]
    fn syntax_error_has_no_traceback_header() {
        let raw = format!("Traceback (most recent call last):\n{}{}  File \"<code>\", line 1\n    x = (\n        ^\nSyntaxError: '(' was never closed\n", BOOTSTRAP_FRAMES[0], BOOTSTRAP_FRAMES[1]);
        assert_eq!(
            clean_traceback(&raw),
            "  File \"<code>\", line 1\n    x = (\n        ^\nSyntaxError: '(' was never closed\n"
        );
    }

    #[test]
    fn bootstrap_frame_removed() {
        let tb = format!("Traceback (most recent call last):\n{}{}  File \"<code>\", line 1, in <module>\nZeroDivisionError: division by zero\n", BOOTSTRAP_FRAMES[0], BOOTSTRAP_FRAMES[1]);
        assert_eq!(
            clean_traceback(&tb),
            "Traceback (most recent call last):\n  File \"<code>\", line 1, in <module>\nZeroDivisionError: division by zero\n"
        );
    }
}
