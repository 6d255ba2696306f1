//! Trajectories as the trainer consumes them: token ids with a role per token
//! (the loss mask follows from it), sampler log-probs, segments, tool-call
//! records and the purification log. Stored as JSONL, one trajectory a line,
//! each carrying the format version.

use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::failure::FailureClass;
use super::finish::Finish;
use crate::llama::Token;

/// Version of the JSONL trajectory format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Who wrote a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The prompt.
    Prompt,
    /// Sampled by the model and kept: trained on (loss mask 1).
    Model,
    /// Tool output and the text around it: never trained on.
    Observation,
}

/// What a segment of a trajectory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentKind {
    /// The prompt.
    Prompt,
    /// Model text before a tool call in the same turn.
    Reasoning,
    /// The tool call itself.
    Call,
    /// The tool's reply (never trained on).
    Observation,
    /// A turn without a tool call.
    Answer,
}

/// A token range `[start, end)` of one kind, with its text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// What the segment is.
    pub kind: SegmentKind,
    /// First token.
    pub start: usize,
    /// One past the last token.
    pub end: usize,
    /// Decoded text (of the segment; of a trajectory: everything after the prompt).
    pub text: String,
}

/// Status of one tool execution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    /// Exit status 0.
    Ok,
    /// Failed; `class` is the statistics class (`format`, `timeout` and
    /// `memory` included), `exception` the exact name.
    Failed {
        /// Statistics class (`SyntaxError`, ..., `format`, `timeout`, `memory`).
        class: FailureClass,
        /// The exception's exact name.
        exception: String,
    },
}

/// One tool execution, kept in the trajectory or rolled back out of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    /// Assistant turn (0-based) the call belongs to.
    pub turn: usize,
    /// The code that ran.
    pub code: String,
    /// How it ended.
    pub status: CallStatus,
    /// Wall time of the execution.
    pub duration_ms: f64,
    /// Whether the call (and its observation) is in the final trajectory.
    pub kept: bool,
}

/// How a failed call was replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepairKind {
    /// `s >= gamma`: the old reasoning is kept, only the call is replaced.
    Shallow,
    /// `s < gamma` (or no marker to split at): reasoning and call replaced.
    Deep,
}

/// How one purification attempt at a position ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurifyResult {
    /// The correction ran; the failure is gone from the trajectory.
    Grafted,
    /// The correction failed too; another lookahead follows.
    Retried,
    /// Retries exhausted: the last failure stays, with the note.
    Exhausted,
    /// The lookahead answered without a tool call: everything kept, no more
    /// purification in this trajectory.
    NoToolCall,
    /// The correction failed too, and that call reached `max_tool_attempts`:
    /// rollback turned off in the middle of the retries, so the failed
    /// correction stays as collected, without the exhaustion note.
    AttemptCap,
}

/// One rollback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PurificationEvent {
    /// Assistant turn (0-based).
    pub turn: usize,
    /// Token position of the splice (start of the replaced tokens).
    pub position: usize,
    /// The code of the failed call.
    pub failed_code: String,
    /// Its error output (as the model saw it).
    pub error: String,
    /// Its error class.
    pub error_class: FailureClass,
    /// Decoded text of the correction's call segment (or whole turn).
    pub correction: String,
    /// difflib ratio of the failed and corrected call segments.
    pub similarity: Option<f64>,
    /// Shallow or deep (None when nothing was grafted).
    pub repair: Option<RepairKind>,
    /// Lookahead corrections spent at this position so far (1..=3).
    pub retries: usize,
    /// How this attempt ended.
    pub result: PurifyResult,
    /// Tokens sampled for the correction and tokens prefilled for the graft.
    pub tokens_generated: usize,
    /// Tokens prefilled for the graft.
    pub tokens_grafted: usize,
}

/// One collected trajectory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// Always [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Id of the problem.
    pub problem_id: String,
    /// Index of the problem in the batch the agent ran; absent (`None`) in
    /// files written before trajectories recorded it.
    #[serde(default)]
    pub problem_index: Option<usize>,
    /// Index of the rollout within its group.
    pub rollout: usize,
    /// The final (purified) token sequence, prompt included.
    pub tokens: Vec<Token>,
    /// Who wrote each token (the loss mask follows).
    pub roles: Vec<Role>,
    /// Sampler log-probability of each token (0 for non-model tokens).
    pub sampler_logprobs: Vec<f32>,
    /// The sequence cut into prompt, reasoning, calls, observations, answer.
    pub segments: Vec<Segment>,
    /// Every tool execution, kept or rolled back.
    pub tool_calls: Vec<ToolCallRecord>,
    /// Every rollback.
    pub purification: Vec<PurificationEvent>,
    /// Whether this trajectory was collected with rollback (coin with p).
    pub purified: bool,
    /// Assistant turns in the final trajectory.
    pub turns: usize,
    /// Model tokens counted against the response budget.
    pub response_tokens: usize,
    /// Tokens sampled in lookaheads (corrections), kept or not.
    pub correction_tokens: usize,
    /// Decoded text (of the segment; of a trajectory: everything after the prompt).
    pub text: String,
    /// Content of the last `\\boxed{}`.
    pub answer: Option<String>,
    /// Set by whoever scores it (`solve`, `eval`, GRPO).
    pub reward: Option<f32>,
    /// Why generation ended (`answer`, `max_turns`, `max_tokens`, `context`).
    pub finish: Finish,
}

/// Why a trajectory file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TrajectoryError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line is not a valid trajectory; `line` is 1-based.
    #[error("{path} line {line}: {why}")]
    Malformed {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong, in words.
        why: String,
    },
}

impl Trajectory {
    /// The text of the final assistant turn: the model's text after the last
    /// observation (all of the response when no tool replied). The answer is
    /// read here only, never from tool output or an earlier turn.
    pub fn final_turn(&self) -> String {
        let from = self
            .segments
            .iter()
            .rposition(|s| s.kind == SegmentKind::Observation)
            .map_or(0, |i| i + 1);
        self.segments[from..]
            .iter()
            .filter(|s| s.kind != SegmentKind::Prompt)
            .map(|s| s.text.as_str())
            .collect()
    }

    /// Loss mask: 1 on model tokens, 0 on prompt and observations.
    pub fn loss_mask(&self) -> Vec<u8> {
        self.roles
            .iter()
            .map(|r| u8::from(*r == Role::Model))
            .collect()
    }

    /// Checks the invariants a loaded trajectory must satisfy.
    pub fn validate(&self) -> Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format_version {} (this build reads {FORMAT_VERSION})",
                self.format_version
            ));
        }
        let n = self.tokens.len();
        if self.roles.len() != n || self.sampler_logprobs.len() != n {
            return Err(format!(
                "{} tokens but {} roles and {} logprobs",
                n,
                self.roles.len(),
                self.sampler_logprobs.len()
            ));
        }
        for s in &self.segments {
            if s.start > s.end || s.end > n {
                return Err(format!(
                    "segment {:?} [{}, {}) outside {} tokens",
                    s.kind, s.start, s.end, n
                ));
            }
        }
        Ok(())
    }

    /// Failed tool calls left in the final trajectory.
    pub fn failures_kept(&self) -> usize {
        self.tool_calls
            .iter()
            .filter(|c| c.kept && c.status != CallStatus::Ok)
            .count()
    }

    /// Failed tool calls made while collecting (kept or rolled back).
    pub fn failures_raw(&self) -> usize {
        self.tool_calls
            .iter()
            .filter(|c| c.status != CallStatus::Ok)
            .count()
    }
}

/// A two-token trajectory (a prompt token, a model token) of `problem_id`,
/// for tests that need one to carry other fields.
#[cfg(test)]
pub(crate) fn test_trajectory(problem_id: &str, problem_index: Option<usize>) -> Trajectory {
    Trajectory {
        format_version: FORMAT_VERSION,
        problem_id: problem_id.into(),
        problem_index,
        rollout: 1,
        tokens: vec![1, 2],
        roles: vec![Role::Prompt, Role::Model],
        sampler_logprobs: vec![0.0, -0.5],
        segments: Vec::new(),
        tool_calls: Vec::new(),
        purification: Vec::new(),
        purified: false,
        turns: 1,
        response_tokens: 1,
        correction_tokens: 0,
        text: "x".into(),
        answer: None,
        reward: None,
        finish: Finish::Answer,
    }
}

/// Writes trajectories as JSONL, whole or not at all (a temporary file
/// renamed over `path`): a file on disk is a finished write, which scripts
/// that resume evaluations part by part rely on.
pub fn write_jsonl(path: &Path, trajectories: &[Trajectory]) -> Result<(), TrajectoryError> {
    let io = |source| TrajectoryError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut bytes = Vec::new();
    for t in trajectories {
        serde_json::to_writer(&mut bytes, t).map_err(|e| io(std::io::Error::other(e)))?;
        bytes.push(b'\n');
    }
    cleaner_models::adapter_file::atomic_write(path, &bytes).map_err(io)
}

/// Reads trajectories from JSONL, rejecting malformed lines with their number.
pub fn read_jsonl(path: &Path) -> Result<Vec<Trajectory>, TrajectoryError> {
    let p = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| TrajectoryError::Io {
        path: p.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| TrajectoryError::Io {
            path: p.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| TrajectoryError::Malformed {
            path: p.clone(),
            line: i + 1,
            why,
        };
        let t: Trajectory = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        t.validate().map_err(bad)?;
        out.push(t);
    }
    Ok(out)
}
