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
    /// Most tokens in one turn. `None` (the default, and the reference's
    /// recipe): a turn may use all that is left of `max_response_tokens`, so
    /// a long reasoning turn is not cut (and scored -1) for its length alone.
    pub max_turn_tokens: Option<usize>,
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
            max_turn_tokens: None,
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
    /// Most tokens one turn may take: what is left of the response budget,
    /// within `max_turn_tokens` when it is set.
    pub fn turn_budget(&self, response_tokens: usize) -> usize {
        let left = self.max_response_tokens.saturating_sub(response_tokens);
        self.max_turn_tokens.map_or(left, |cap| left.min(cap))
    }

    /// KV cells to plan for one trajectory with a prompt of `prompt` tokens:
    /// the prompt, the response budget, and twice the longest lookahead (a
    /// correction is exempt from the budget and coexists with the failed
    /// turn until it is spliced; the second share covers the observations
    /// and grafts around it), plus 256 for the chat template's wrapping.
    /// A lookahead may be as long as the turn it corrects, so without
    /// `max_turn_tokens` that is the whole response budget.
    pub fn cells_per_sequence(&self, prompt: usize) -> usize {
        let lookahead = self
            .max_turn_tokens
            .map_or(self.max_response_tokens, |cap| {
                cap.min(self.max_response_tokens)
            });
        prompt + self.max_response_tokens + 2 * lookahead + 256
    }

    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("rollback_probability", self.rollback_probability),
            ("similarity_threshold", self.similarity_threshold),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::NotAProbability { field, value });
            }
        }
        for (field, value) in [
            ("max_turns", self.max_turns),
            ("max_turn_tokens", self.max_turn_tokens.unwrap_or(1)),
            ("max_response_tokens", self.max_response_tokens),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if !self.user_prompt.contains("{problem}") {
            return Err(ConfigError::PromptWithoutProblem);
        }
        self.sampling.validate().map_err(ConfigError::Sampling)
    }
}

/// A setting of an [`AgentConfig`] out of range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A probability or similarity outside [0, 1] (NaN included).
    #[error("{field} must be in [0, 1], got {value}")]
    NotAProbability {
        /// The field.
        field: &'static str,
        /// Its value.
        value: f64,
    },
    /// A count or budget that must be at least 1 is 0.
    #[error("{field} must be at least 1, got 0")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// `user_prompt` has no `{problem}` for the problem text to go in.
    #[error("user_prompt must contain {{problem}}, where the problem text goes")]
    PromptWithoutProblem,
    /// `sampling` is out of range; `SamplingParams::validate` says how, in
    /// words that name the field.
    #[error("sampling: {0}")]
    Sampling(crate::sampling::SamplingError),
}

/// How much a run purifies, as the command line says it: `on` (every
/// trajectory, p = 1), `off` (none, p = 0) or a rollback probability in
/// [0, 1]. It sets [`AgentConfig::rollback_probability`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Purify {
    /// Every trajectory is purified.
    On,
    /// Plain rollouts.
    Off,
    /// Each trajectory is purified with this probability.
    Probability(f64),
}

impl Purify {
    /// The rollback probability it stands for.
    pub fn rollback_probability(self) -> f64 {
        match self {
            Purify::On => 1.0,
            Purify::Off => 0.0,
            Purify::Probability(p) => p,
        }
    }
}

/// Why a `--purify` value was rejected; it holds the value. The message
/// leaves the value out, since clap (like most callers) already shows it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected on, off or a probability in [0, 1]")]
pub struct PurifyParseError(pub String);

impl std::str::FromStr for Purify {
    type Err = PurifyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(Purify::On),
            "off" => Ok(Purify::Off),
            p => match p.parse::<f64>() {
                Ok(v) if (0.0..=1.0).contains(&v) => Ok(Purify::Probability(v)),
                _ => Err(PurifyParseError(p.to_string())),
            },
        }
    }
}

/// `on`, `off`, or the probability (run names are made of it).
impl std::fmt::Display for Purify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Purify::On => f.write_str("on"),
            Purify::Off => f.write_str("off"),
            Purify::Probability(p) => write!(f, "{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let bad = |c: AgentConfig| c.validate().unwrap_err();
        assert_eq!(
            bad(AgentConfig {
                similarity_threshold: 1.5,
                ..AgentConfig::default()
            }),
            ConfigError::NotAProbability {
                field: "similarity_threshold",
                value: 1.5
            }
        );
        assert_eq!(
            bad(AgentConfig {
                max_turn_tokens: Some(0),
                ..AgentConfig::default()
            }),
            ConfigError::Zero {
                field: "max_turn_tokens"
            }
        );
        assert_eq!(
            bad(AgentConfig {
                user_prompt: "no slot".into(),
                ..AgentConfig::default()
            }),
            ConfigError::PromptWithoutProblem
        );
        let nan = bad(AgentConfig {
            rollback_probability: f64::NAN,
            ..AgentConfig::default()
        });
        assert!(nan
            .to_string()
            .starts_with("rollback_probability must be in [0, 1]"));
        assert_eq!(AgentConfig::default().validate(), Ok(()));
    }

    #[test]
    fn a_turn_may_use_all_that_is_left_of_the_budget_by_default() {
        let free = AgentConfig {
            max_response_tokens: 20480,
            ..AgentConfig::default()
        };
        assert_eq!(free.max_turn_tokens, None);
        assert_eq!(free.turn_budget(0), 20480);
        assert_eq!(free.turn_budget(20000), 480);
        assert_eq!(free.turn_budget(30000), 0);
        let capped = AgentConfig {
            max_turn_tokens: Some(4096),
            ..free.clone()
        };
        assert_eq!(capped.turn_budget(0), 4096);
        assert_eq!(capped.turn_budget(20000), 480);
        // Cells: prompt + budget + two lookaheads + 256.
        assert_eq!(
            free.cells_per_sequence(2560),
            2560 + 20480 + 2 * 20480 + 256
        );
        assert_eq!(
            capped.cells_per_sequence(2560),
            2560 + 20480 + 2 * 4096 + 256
        );
    }

    #[test]
    fn purify_reads_on_off_and_probabilities() {
        assert_eq!("on".parse(), Ok(Purify::On));
        assert_eq!("off".parse(), Ok(Purify::Off));
        assert_eq!("0.25".parse(), Ok(Purify::Probability(0.25)));
        assert_eq!(Purify::Probability(0.25).rollback_probability(), 0.25);
        assert_eq!(Purify::On.rollback_probability(), 1.0);
        for bad in ["1.5", "-0.1", "NaN", "yes", ""] {
            let e = bad.parse::<Purify>().unwrap_err();
            assert_eq!(e, PurifyParseError(bad.to_string()));
        }
        assert_eq!(
            "maybe".parse::<Purify>().unwrap_err().to_string(),
            "expected on, off or a probability in [0, 1]"
        );
        for p in ["on", "off", "0.5"] {
            assert_eq!(p.parse::<Purify>().unwrap().to_string(), p);
        }
    }
}
