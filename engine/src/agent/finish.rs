//! Why a trajectory ended, as the agent sees it. The rollout engine's
//! [`FinishReason`](crate::rollout::FinishReason) says why one generation
//! stopped; a trajectory spans many generations and tool calls, so it ends for
//! reasons of its own (a turn cap, an answer).

use serde::{Deserialize, Serialize};

/// Why a trajectory ended. Stored in trajectory files as the snake_case name
/// (`"answer"`, `"max_turns"`, `"max_tokens"`, `"context"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// A turn without a tool call: the model answered.
    Answer,
    /// `max_turns` assistant turns were taken.
    MaxTurns,
    /// The response token budget ran out (`max_response_tokens`, or the last
    /// turn hit `max_turn_tokens` where one is set).
    MaxTokens,
    /// The sequence filled the rollout context.
    Context,
}

impl Finish {
    /// The name trajectory files use.
    pub fn name(self) -> &'static str {
        match self {
            Finish::Answer => "answer",
            Finish::MaxTurns => "max_turns",
            Finish::MaxTokens => "max_tokens",
            Finish::Context => "context",
        }
    }
}

impl std::fmt::Display for Finish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Finish;

    #[test]
    fn serializes_to_the_names_older_files_hold() {
        for f in [
            Finish::Answer,
            Finish::MaxTurns,
            Finish::MaxTokens,
            Finish::Context,
        ] {
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(json, format!("\"{}\"", f.name()));
            assert_eq!(serde_json::from_str::<Finish>(&json).unwrap(), f);
        }
        assert!(serde_json::from_str::<Finish>("\"done\"").is_err());
    }
}
