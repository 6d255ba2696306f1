//! SAAR, CLEANER's Similarity-Aware Adaptive Rollback, as pure functions
//! (the algorithm and its rules: `docs/purification.md`).
//!
//! When a tool call fails, [`after_failure`] says what comes next: keep the
//! failure, keep it with the note because the retries ran out, or show the
//! error and sample a lookahead correction. When the lookahead turn is in,
//! [`purify`] compares it with the failed turn and returns a [`Splice`] (what
//! to cut, what to keep, what to graft) with the [`PurificationEvent`] that
//! describes it. The runner owns the sequences and the sandbox; it applies
//! the splice with `Sequence::splice` and nothing here touches a model.

use std::ops::Range;

use super::config::{AgentConfig, EXHAUSTED_NOTE};
use super::failure::FailureClass;
use super::similarity::ratio;
use super::trajectory::{PurificationEvent, PurifyResult, RepairKind};

/// Where a turn's tool call begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallStart {
    /// Byte offset of the call marker in the turn's raw token bytes.
    pub byte: usize,
    /// Index (within the turn) of the token holding the marker's first byte:
    /// the splice point of a shallow repair.
    pub token: usize,
}

/// The first `marker` in a turn, with the token that holds it; `pieces` are
/// the raw bytes of the turn's tokens, in order. The search runs on those
/// bytes, not on a decoded text: a lossy decode turns each invalid UTF-8 byte
/// into a 3-byte replacement character, so its offsets do not line up with
/// the tokens' byte lengths and the split could land on the wrong token. The
/// first marker, as the reference splits (a marker inside the call's own
/// code does not move the split).
pub fn call_start<P: AsRef<[u8]>>(pieces: &[P], marker: &str) -> Option<CallStart> {
    let bytes: Vec<u8> = pieces
        .iter()
        .flat_map(|p| p.as_ref().iter().copied())
        .collect();
    let marker = marker.as_bytes();
    if marker.is_empty() {
        return None;
    }
    let byte = bytes.windows(marker.len()).position(|w| w == marker)?;
    let mut end = 0usize;
    for (token, piece) in pieces.iter().enumerate() {
        end += piece.as_ref().len();
        if end > byte {
            return Some(CallStart { byte, token });
        }
    }
    None
}

/// One assistant turn as purification sees it.
#[derive(Clone, Copy, Debug)]
pub struct Turn<'a> {
    /// Position of the turn's first token in the sequence.
    pub start: usize,
    /// Its length in tokens.
    pub len: usize,
    /// Its decoded text.
    pub text: &'a str,
    /// Where its call marker is (None: no marker).
    pub call: Option<CallStart>,
    /// The text compared for similarity: from the call marker through the
    /// end of the turn, decoded from the token bytes at the marker (empty
    /// without a marker). This is what the reference compares.
    pub call_text: &'a str,
    /// Whether the turn holds a tool call (well-formed or not); a turn
    /// without one is an answer.
    pub has_call: bool,
}

/// The failed call at the position being purified.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// Assistant turn (0-based) the failed call belongs to.
    pub turn: usize,
    /// The code that failed.
    pub code: String,
    /// Its error output, as the model saw it.
    pub error: String,
    /// Its class.
    pub class: FailureClass,
    /// Lookahead corrections spent at this position, the current one included.
    pub retries: usize,
}

/// What follows a failed call (spec steps 2, 7 and 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Purification is off for this trajectory, or the tool-attempt cap has
    /// just turned it off: the failure stays as collected.
    Keep,
    /// The position spent its retries: the last failure stays, its error
    /// followed by `note`, and purification stops for this trajectory.
    Exhausted {
        /// Appended to the error ([`EXHAUSTED_NOTE`] after two or more
        /// retries, else empty).
        note: &'static str,
    },
    /// Show the error as an ordinary observation and sample a lookahead
    /// correction.
    Lookahead,
}

/// What a failed call leads to. `purifying`: rollback is still on for this
/// trajectory; `attempts`: tool executions so far, this one included;
/// `retries`: lookaheads already spent at this position (0 for a failure in
/// a freshly generated turn).
pub fn after_failure(
    purifying: bool,
    attempts: usize,
    retries: usize,
    config: &AgentConfig,
) -> AfterFailure {
    if !purifying || attempts >= config.max_tool_attempts {
        return AfterFailure::Keep;
    }
    if retries >= config.max_retries {
        let note = if retries >= 2 { EXHAUSTED_NOTE } else { "" };
        return AfterFailure::Exhausted { note };
    }
    AfterFailure::Lookahead
}

/// How to splice a correction into the sequence: keep `[..cut]`, drop
/// `[cut..graft.start]` (the failed call or turn, its error, and the part of
/// the lookahead not grafted), keep `graft` (the rest of the lookahead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Splice {
    /// First position dropped.
    pub cut: usize,
    /// The grafted tokens: a tail of the lookahead turn, running to the end
    /// of the sequence.
    pub graft: Range<usize>,
}

/// The outcome of one lookahead.
#[derive(Clone, Debug, PartialEq)]
pub enum Purified {
    /// Spec step 3: the lookahead answered without a tool call. The failed
    /// turn, its error and the answer all stay; purification stops for this
    /// trajectory.
    KeepAll(PurificationEvent),
    /// Spec steps 4-5: the correction replaces the failed call (shallow) or
    /// the whole failed turn (deep); its call runs next.
    Splice(Splice, PurificationEvent),
}

/// Shallow when the failed and corrected call segments are at least `gamma`
/// alike (a similarity exactly at `gamma` is shallow), deep otherwise or when
/// a turn has no call marker to split at.
pub fn repair_kind(similarity: Option<f64>, gamma: f64) -> RepairKind {
    match similarity {
        Some(s) if s >= gamma => RepairKind::Shallow,
        _ => RepairKind::Deep,
    }
}

/// SAAR's decision for one lookahead: `failed` is the turn whose call failed
/// (as spliced so far), `lookahead` the correction sampled after its error,
/// `gamma` the similarity threshold.
pub fn purify(failed: &Turn, lookahead: &Turn, failure: &Failure, gamma: f64) -> Purified {
    // Spec step 3 first: an answer keeps everything.
    let kept = PurificationEvent {
        turn: failure.turn,
        position: failed.start,
        failed_code: failure.code.clone(),
        error: failure.error.clone(),
        error_class: failure.class,
        correction: String::new(),
        similarity: None,
        repair: None,
        retries: failure.retries,
        result: PurifyResult::NoToolCall,
        tokens_generated: lookahead.len,
        tokens_grafted: 0,
    };
    if !lookahead.has_call {
        return Purified::KeepAll(kept);
    }
    let similarity = match (failed.call, lookahead.call) {
        (Some(_), Some(_)) => Some(ratio(failed.call_text, lookahead.call_text)),
        _ => None,
    };
    let repair = repair_kind(similarity, gamma);
    let (cut, graft_from) = match (repair, failed.call, lookahead.call) {
        (RepairKind::Shallow, Some(old), Some(new)) => (failed.start + old.token, new.token),
        _ => (failed.start, 0),
    };
    let graft = lookahead.start + graft_from..lookahead.start + lookahead.len;
    let event = PurificationEvent {
        position: cut,
        correction: lookahead.text.to_string(),
        similarity,
        repair: Some(repair),
        result: PurifyResult::Retried,
        tokens_grafted: graft.len(),
        ..kept
    };
    Purified::Splice(Splice { cut, graft }, event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::sequence::Sequence;
    use crate::agent::trajectory::{Role, SegmentKind};
    use crate::llama::Token;
    use crate::sandbox::ErrorClass;

    const MARKER: &str = "```python";

    /// A turn of one-byte tokens starting at `start`, split at the marker
    /// the way the runner splits it.
    fn turn(start: usize, text: &str) -> Turn<'_> {
        let pieces: Vec<[u8; 1]> = text.bytes().map(|b| [b]).collect();
        let call = call_start(&pieces, MARKER);
        Turn {
            start,
            len: text.len(),
            text,
            call,
            call_text: call.map_or("", |c| &text[c.byte..]),
            has_call: text.contains(MARKER),
        }
    }

    fn failure() -> Failure {
        Failure {
            turn: 0,
            code: "print(7 / 0)".into(),
            error: "ZeroDivisionError: division by zero".into(),
            class: FailureClass::Error(ErrorClass::ZeroDivisionError),
            retries: 1,
        }
    }

    // Call segments "```python\naaaaaaaaaa" and "```python\nbbbbbbbbbb" share
    // exactly the marker line: 2 * 10 / 40 = 0.5 exactly.
    const FAILED: &str = "Think.\n```python\naaaaaaaaaa";
    const HALF_ALIKE: &str = "Again.\n```python\nbbbbbbbbbb";
    const PROMPT: usize = 8;

    const OBSERVATION: &str = "\n```output\nerror\n```\n";

    fn lookahead_start() -> usize {
        PROMPT + FAILED.len() + OBSERVATION.len()
    }

    #[test]
    fn call_start_finds_the_token_holding_the_first_marker() {
        let pieces: [&[u8]; 6] = [b"a", b"b", b"```p", b"ython ", b"x`", b"``python"];
        assert_eq!(
            call_start(&pieces, MARKER),
            Some(CallStart { byte: 2, token: 2 })
        );
        assert_eq!(call_start(&[b"no call"], MARKER), None);
    }

    #[test]
    fn call_start_counts_raw_bytes_before_the_marker() {
        // Two invalid UTF-8 bytes before a marker split over two tokens: a
        // lossy decode makes each a 3-byte U+FFFD, so the decoded text has
        // the marker at byte 6 while the raw bytes have it at 2, in token 2.
        // Offsets from the decode name token 3, past the marker's start: a
        // shallow splice there keeps "``" and grafts a whole new marker.
        let pieces: [&[u8]; 5] = [b"\xff", b"\xfe", b"``", b"`python\n", b"print(1)"];
        let decoded = String::from_utf8_lossy(&pieces.concat()).into_owned();
        assert_eq!(decoded.find(MARKER), Some(6));
        assert_eq!(
            call_start(&pieces, MARKER),
            Some(CallStart { byte: 2, token: 2 })
        );
    }

    #[test]
    fn similarity_exactly_gamma_is_shallow_and_just_below_is_deep() {
        assert_eq!(repair_kind(Some(0.5), 0.5), RepairKind::Shallow);
        assert_eq!(repair_kind(Some(0.4999), 0.5), RepairKind::Deep);
        assert_eq!(repair_kind(Some(1.0), 1.0), RepairKind::Shallow);
        assert_eq!(repair_kind(Some(0.0), 0.0), RepairKind::Shallow);
        assert_eq!(repair_kind(None, 0.0), RepairKind::Deep, "no marker");
    }

    #[test]
    fn shallow_repair_keeps_the_reasoning_and_grafts_the_new_call() {
        let failed = turn(PROMPT, FAILED);
        let look = turn(lookahead_start(), HALF_ALIKE);
        assert_eq!(ratio(failed.call_text, look.call_text), 0.5);
        let Purified::Splice(splice, event) = purify(&failed, &look, &failure(), 0.5) else {
            panic!("a lookahead with a call is spliced");
        };
        let reasoning = "Think.\n".len();
        let new_call = "Again.\n".len();
        assert_eq!(
            splice,
            Splice {
                cut: PROMPT + reasoning,
                graft: lookahead_start() + new_call..lookahead_start() + HALF_ALIKE.len(),
            }
        );
        assert_eq!(event.repair, Some(RepairKind::Shallow));
        assert_eq!(event.similarity, Some(0.5));
        assert_eq!(event.result, PurifyResult::Retried);
        assert_eq!(event.position, splice.cut);
        assert_eq!(event.correction, HALF_ALIKE);
        assert_eq!(
            (event.tokens_generated, event.tokens_grafted),
            (HALF_ALIKE.len(), splice.graft.len())
        );
        assert_eq!(
            (event.failed_code.as_str(), event.error_class, event.retries),
            (
                "print(7 / 0)",
                FailureClass::Error(ErrorClass::ZeroDivisionError),
                1
            )
        );
    }

    #[test]
    fn the_splice_applied_to_the_sequence_leaves_the_corrected_turn() {
        let bytes = |s: &str| s.bytes().map(Token::from).collect::<Vec<_>>();
        let mut seq = Sequence::default();
        seq.push(&bytes("<prompt>"), Role::Prompt, None, SegmentKind::Prompt);
        seq.push(&bytes(FAILED), Role::Model, None, SegmentKind::Call);
        seq.push(
            &bytes(OBSERVATION),
            Role::Observation,
            None,
            SegmentKind::Observation,
        );
        seq.push(&bytes(HALF_ALIKE), Role::Model, None, SegmentKind::Call);
        assert_eq!(seq.len(), lookahead_start() + HALF_ALIKE.len());
        for (gamma, expected) in [
            (0.5, "<prompt>Think.\n```python\nbbbbbbbbbb"),
            (0.5001, "<prompt>Again.\n```python\nbbbbbbbbbb"),
        ] {
            let failed = turn(PROMPT, FAILED);
            let look = turn(lookahead_start(), HALF_ALIKE);
            let Purified::Splice(splice, _) = purify(&failed, &look, &failure(), gamma) else {
                panic!("a lookahead with a call is spliced");
            };
            let mut s = seq.clone();
            s.splice(&splice);
            let text: Vec<u8> = s.tokens.iter().map(|&t| t as u8).collect();
            assert_eq!(String::from_utf8(text).unwrap(), expected, "gamma {gamma}");
            assert!(s.roles[PROMPT..].iter().all(|r| *r == Role::Model));
        }
    }

    #[test]
    fn below_gamma_deep_repair_replaces_the_whole_turn() {
        let failed = turn(PROMPT, FAILED);
        let look = turn(lookahead_start(), HALF_ALIKE);
        let Purified::Splice(splice, event) = purify(&failed, &look, &failure(), 0.5001) else {
            panic!("a lookahead with a call is spliced");
        };
        assert_eq!(
            splice,
            Splice {
                cut: PROMPT,
                graft: lookahead_start()..lookahead_start() + HALF_ALIKE.len(),
            }
        );
        assert_eq!(event.repair, Some(RepairKind::Deep));
        assert_eq!(event.similarity, Some(0.5));
        assert_eq!(event.position, PROMPT);
        assert_eq!(event.tokens_grafted, HALF_ALIKE.len());
    }

    #[test]
    fn a_turn_without_a_marker_is_repaired_deep_without_a_similarity() {
        // A malformed call the format recognised without the marker (Hermes
        // JSON outside <tool_call>, say): nothing to split at.
        let failed = Turn {
            call: None,
            call_text: "",
            ..turn(PROMPT, FAILED)
        };
        let look = turn(lookahead_start(), HALF_ALIKE);
        let Purified::Splice(splice, event) = purify(&failed, &look, &failure(), 0.0) else {
            panic!("a lookahead with a call is spliced");
        };
        assert_eq!(splice.cut, PROMPT);
        assert_eq!(
            (event.similarity, event.repair),
            (None, Some(RepairKind::Deep))
        );
    }

    #[test]
    fn a_lookahead_that_answers_keeps_everything() {
        let failed = turn(PROMPT, FAILED);
        let look = turn(lookahead_start(), "It is \\boxed{2}.");
        let failure = Failure {
            turn: 3,
            ..failure()
        };
        let Purified::KeepAll(event) = purify(&failed, &look, &failure, 0.5) else {
            panic!("an answer is not spliced");
        };
        assert_eq!(event.result, PurifyResult::NoToolCall);
        assert_eq!((event.similarity, event.repair), (None, None));
        assert_eq!(event.correction, "");
        assert_eq!((event.turn, event.position), (3, PROMPT));
        assert_eq!(
            (event.tokens_generated, event.tokens_grafted),
            (look.len, 0)
        );
    }

    #[test]
    fn after_failure_follows_the_caps() {
        let config = AgentConfig {
            max_retries: 3,
            max_tool_attempts: 5,
            ..AgentConfig::default()
        };
        assert_eq!(after_failure(true, 1, 0, &config), AfterFailure::Lookahead);
        assert_eq!(after_failure(true, 4, 2, &config), AfterFailure::Lookahead);
        assert_eq!(after_failure(false, 1, 0, &config), AfterFailure::Keep);
        // Step 8: the attempt cap turns rollback off, retries left or not.
        assert_eq!(after_failure(true, 5, 0, &config), AfterFailure::Keep);
        // Step 7: retries spent; the note follows two or more of them.
        assert_eq!(
            after_failure(true, 4, 3, &config),
            AfterFailure::Exhausted {
                note: EXHAUSTED_NOTE
            }
        );
        let one = AgentConfig {
            max_retries: 1,
            ..config
        };
        assert_eq!(
            after_failure(true, 2, 1, &one),
            AfterFailure::Exhausted { note: "" }
        );
    }
}
