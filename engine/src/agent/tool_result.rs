//! What a sandbox execution becomes in a trajectory: the text the model is
//! shown, and the status the tool-call record keeps.

use super::failure::FailureClass;
use super::trajectory::CallStatus;
use crate::sandbox::{ErrorClass, Execution, Outcome};

/// What the model is shown for an execution.
pub fn observation_text(e: &Execution) -> String {
    let mut s = e.stdout.clone();
    match &e.outcome {
        Outcome::Ok => {
            if s.is_empty() {
                s = "(no output)".into();
            }
        }
        Outcome::Error { .. } | Outcome::Crashed { .. } => s.push_str(&e.stderr),
        Outcome::Timeout => s.push_str("TimeoutError: the code ran longer than the time limit"),
        Outcome::MemoryLimit => s.push_str(if e.stderr.is_empty() {
            "MemoryError: the code used more memory than allowed"
        } else {
            &e.stderr
        }),
        Outcome::OutputLimit => s.push_str("\n[output limit exceeded]"),
    }
    s.trim_end().to_string()
}

/// How an execution ended, as the tool-call record keeps it.
pub fn status_of(e: &Execution) -> CallStatus {
    let failed = |class, exception: &str| CallStatus::Failed {
        class,
        exception: exception.into(),
    };
    match &e.outcome {
        Outcome::Ok => CallStatus::Ok,
        Outcome::Error { class, exception } => failed(FailureClass::Error(*class), exception),
        Outcome::Timeout => failed(FailureClass::Timeout, "timeout"),
        Outcome::MemoryLimit => failed(FailureClass::Memory, "MemoryError"),
        Outcome::OutputLimit => failed(FailureClass::Error(ErrorClass::Other), "output limit"),
        Outcome::Crashed { .. } => failed(FailureClass::Error(ErrorClass::Other), "crashed"),
    }
}
