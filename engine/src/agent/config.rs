//! Agent settings, with the paper's values as defaults where it gives them.

use serde::{Deserialize, Serialize};

use super::format::FormatKind;
use crate::sampling::SamplingParams;
use crate::sandbox::Limits;

/// The user prompt for math, in the paper's substance; `{problem}` is replaced.
pub const MATH_PROMPT: &str = "Analyze and solve the following math problem step by step.\n\n{problem}\n\n\
After forming a strategy, use the Python tool for precise calculation: write code in a ```python block and it will \
be executed, its output shown to you. Once you are sure of the final answer, do not call the tool again; put the \
final answer in \\boxed{} (no units inside \\boxed{}).";

/// The same for the Hermes format, where the tool is described by the template.
pub const MATH_PROMPT_HERMES: &str = "Analyze and solve the following math problem step by step.\n\n{problem}\n\n\
After forming a strategy, use the code_interpreter tool for precise calculation. Once you are sure of the final \
answer, do not call the tool again; put the final answer in \\boxed{} (no units inside \\boxed{}).";

/// Appended to the error when a position exhausted its retries (spec step 7).
pub const EXHAUSTED_NOTE: &str =
    "\n[This approach has failed repeatedly. Try a different method instead of repeating it.]";

/// How the agent prompts, samples, calls tools and purifies.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Tool-call format.
    pub format: FormatKind,
    /// System message (None: the template's default).
    pub system_prompt: Option<String>,
    /// User message; `{problem}` is replaced by the problem text.
    pub user_prompt: String,
    /// Sampling of every turn; `seed` is the base of per-rollout seeds.
    pub sampling: SamplingParams,
    /// Most assistant turns (tool calls + answer).
    pub max_turns: usize,
    /// Budget of model tokens per trajectory (corrections exempt).
    pub max_response_tokens: usize,
    /// Most tokens in one turn.
    pub max_turn_tokens: usize,
    /// Tool output is cut in the middle to this many characters.
    pub observation_chars: usize,
    /// Probability that a trajectory is purified (0: plain rollouts).
    pub rollback_probability: f64,
    /// Shallow repair when the call similarity is at least this.
    pub similarity_threshold: f64,
    /// Lookahead corrections per position.
    pub max_retries: usize,
    /// Tool executions after which rollback turns off.
    pub max_tool_attempts: usize,
    /// Sandbox limits of each call.
    pub limits: Limits,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            format: FormatKind::Markdown,
            system_prompt: None,
            user_prompt: MATH_PROMPT.to_string(),
            sampling: SamplingParams {
                temperature: 1.0,
                top_p: 1.0,
                top_k: 0,
                seed: 0,
            },
            max_turns: 8,
            max_response_tokens: 1024,
            max_turn_tokens: 512,
            observation_chars: 256,
            rollback_probability: 1.0,
            similarity_threshold: 0.5,
            max_retries: 3,
            max_tool_attempts: 30,
            limits: Limits::default(),
        }
    }
}

impl AgentConfig {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.rollback_probability) {
            return Err(format!(
                "rollback_probability must be in [0, 1], got {}",
                self.rollback_probability
            ));
        }
        if !(0.0..=1.0).contains(&self.similarity_threshold) {
            return Err(format!(
                "similarity_threshold must be in [0, 1], got {}",
                self.similarity_threshold
            ));
        }
        if self.max_turns == 0 || self.max_turn_tokens == 0 || self.max_response_tokens == 0 {
            return Err(
                "max_turns, max_turn_tokens and max_response_tokens must be at least 1".into(),
            );
        }
        if !self.user_prompt.contains("{problem}") {
            return Err("user_prompt must contain {problem}".into());
        }
        self.sampling.validate()
    }
}
