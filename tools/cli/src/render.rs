//! Values as a reader expects them in the tool's output: numbers without
//! needless digits, words instead of Rust's debug text (`reward -1`, not
//! `reward Some(-1.0)`).

use cleaner::agent::trajectory::{PurifyResult, RepairKind};
use cleaner::agent::FormatKind;
use cleaner::sandbox::{ErrorClass, Outcome};
use cleaner::FinishReason;

/// A number with at most `digits` decimals, trailing zeros dropped:
/// `-1`, `0.5`, `0.333`.
pub fn number(x: f64, digits: usize) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let s = format!("{x:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    // `-0.0001` at 3 digits rounds to `-0`.
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// `reward -1`, or `no reward` for a trajectory that was not scored.
pub fn reward(r: Option<f32>) -> String {
    match r {
        Some(r) => format!("reward {}", number(r as f64, 3)),
        None => "no reward".to_string(),
    }
}

/// `answer 3`, or `no answer` when the model gave none.
pub fn answer(a: Option<&str>) -> String {
    match a {
        Some(a) => format!("answer {a}"),
        None => "no answer".to_string(),
    }
}

/// How a purification attempt ended, in words.
pub fn purify_result(r: PurifyResult) -> &'static str {
    match r {
        PurifyResult::Grafted => "grafted",
        PurifyResult::Retried => "retried",
        PurifyResult::Exhausted => "retries exhausted",
        PurifyResult::NoToolCall => "no tool call",
        PurifyResult::AttemptCap => "tool-attempt cap reached",
    }
}

/// A purification attempt: how it ended, then the repair and the difflib
/// similarity where there are any (`grafted, shallow repair, similarity
/// 0.873`; `no tool call`).
pub fn purification(
    r: PurifyResult,
    repair: Option<RepairKind>,
    similarity: Option<f64>,
) -> String {
    let mut parts = vec![purify_result(r).to_string()];
    match repair {
        Some(RepairKind::Shallow) => parts.push("shallow repair".into()),
        Some(RepairKind::Deep) => parts.push("deep repair".into()),
        None => {}
    }
    if let Some(s) = similarity {
        parts.push(format!("similarity {s:.3}"));
    }
    parts.join(", ")
}

/// Why a generation stopped, in words.
pub fn finish_reason(f: &FinishReason) -> String {
    match f {
        FinishReason::Eog => "end of text".to_string(),
        FinishReason::Stop(s) => format!("stop string {s:?}"),
        FinishReason::MaxTokens => "token limit".to_string(),
        FinishReason::ContextLength => "context full".to_string(),
    }
}

/// The tool-call format by the name the option takes.
pub fn format_kind(f: FormatKind) -> &'static str {
    match f {
        FormatKind::Markdown => "markdown",
        FormatKind::Hermes => "hermes",
    }
}

/// How a sandbox run ended: `ok`, `error: OSError (other)`, `timed out`.
pub fn outcome(o: &Outcome) -> String {
    match o {
        Outcome::Ok => "ok".to_string(),
        Outcome::Error { class, exception } => {
            // The class repeats a named exception; `other` says it is counted
            // with the rest.
            if *class == ErrorClass::Other {
                format!("error: {exception} (other)")
            } else {
                format!("error: {exception}")
            }
        }
        Outcome::Timeout => "timed out".to_string(),
        Outcome::MemoryLimit => "hit the memory limit".to_string(),
        Outcome::OutputLimit => "hit the output limit".to_string(),
        Outcome::Crashed { reason } => format!("interpreter crashed: {reason}"),
    }
}

/// An exit status, or `no exit code` when the guest was stopped.
pub fn exit_code(c: Option<i32>) -> String {
    match c {
        Some(c) => format!("exit code {c}"),
        None => "no exit code".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_drop_needless_digits() {
        assert_eq!(number(-1.0, 3), "-1");
        assert_eq!(number(0.5, 3), "0.5");
        assert_eq!(number(1.0 / 3.0, 3), "0.333");
        assert_eq!(number(-0.0001, 3), "0");
        assert_eq!(number(120.0, 1), "120");
    }

    #[test]
    fn words_not_debug_text() {
        assert_eq!(reward(Some(-1.0)), "reward -1");
        assert_eq!(reward(None), "no reward");
        assert_eq!(answer(Some("3")), "answer 3");
        assert_eq!(answer(None), "no answer");
        assert_eq!(
            purification(PurifyResult::NoToolCall, None, None),
            "no tool call"
        );
        assert_eq!(
            purification(
                PurifyResult::Grafted,
                Some(RepairKind::Shallow),
                Some(0.8734)
            ),
            "grafted, shallow repair, similarity 0.873"
        );
        assert_eq!(
            outcome(&Outcome::Error {
                class: ErrorClass::Other,
                exception: "OSError".into()
            }),
            "error: OSError (other)"
        );
        assert_eq!(
            outcome(&Outcome::Error {
                class: ErrorClass::NameError,
                exception: "NameError".into()
            }),
            "error: NameError"
        );
        assert_eq!(exit_code(Some(1)), "exit code 1");
    }
}
