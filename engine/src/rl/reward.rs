//! Rewards: one number per trajectory. The built-in [`MathReward`] checks the
//! final assistant turn's last `\boxed{}` against the reference answer
//! (+1 / -1 as in the paper), strictly or with the math verifier
//! ([`AnswerMatch`]); any closure `Fn(&Item, &Trajectory) -> f32` is a reward
//! too.

use crate::agent::Trajectory;
use crate::tasks::answer::last_boxed_strict;
use crate::tasks::{math_equal, strict_equal, Item};

/// Scores a finished trajectory of `item`.
pub trait Reward: Send {
    /// The reward of `trajectory`, a rollout of `item`.
    fn score(&self, item: &Item, trajectory: &Trajectory) -> f32;
    /// Whether a trajectory counts as solved (for accuracy); by default a
    /// positive reward.
    fn solved(&self, item: &Item, trajectory: &Trajectory) -> bool {
        self.score(item, trajectory) > 0.0
    }
}

impl<F: Fn(&Item, &Trajectory) -> f32 + Send> Reward for F {
    fn score(&self, item: &Item, trajectory: &Trajectory) -> f32 {
        self(item, trajectory)
    }
}

/// How a final answer is compared with the reference (`[reward] match`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerMatch {
    /// The reference's: the last `\boxed{}` within the last 300 characters of
    /// the final assistant turn, equal to the reference as normalized text
    /// ([`strict_equal`]).
    Strict,
    /// The lenient math verifier: the final turn's last `\boxed{}`, equal
    /// under [`math_equal`] (arithmetic, fractions, tolerances).
    #[default]
    Math,
}

/// Outcome reward for math: `correct` when the final assistant turn's answer
/// equals the reference answer (as `matching` says), `wrong` otherwise (no
/// answer included).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MathReward {
    /// Reward of a correct final answer.
    pub correct: f32,
    /// Reward of a wrong or missing one.
    pub wrong: f32,
    /// How the answer is compared (`match`: `strict` or `math`).
    #[serde(rename = "match")]
    pub matching: AnswerMatch,
    /// DAPO overlong shaping (applied by the GRPO loop to any reward, see
    /// [`overlong_penalty`]): response tokens before `agent.max_response_tokens`
    /// where the linear penalty starts; 0 turns it off.
    pub overlong_buffer: usize,
    /// The penalty at the response limit (and beyond).
    pub overlong_penalty_factor: f32,
}

impl Default for MathReward {
    fn default() -> Self {
        MathReward {
            correct: 1.0,
            wrong: -1.0,
            matching: AnswerMatch::Math,
            overlong_buffer: 0,
            overlong_penalty_factor: 1.0,
        }
    }
}

impl Reward for MathReward {
    fn score(&self, item: &Item, t: &Trajectory) -> f32 {
        if self.solved(item, t) {
            self.correct
        } else {
            self.wrong
        }
    }
    fn solved(&self, item: &Item, t: &Trajectory) -> bool {
        match self.matching {
            AnswerMatch::Math => t
                .answer
                .as_deref()
                .is_some_and(|a| math_equal(a, &item.answer)),
            AnswerMatch::Strict => {
                last_boxed_strict(&t.final_turn()).is_some_and(|a| strict_equal(&a, &item.answer))
            }
        }
    }
}

/// DAPO's overlong reward shaping: 0 up to `max_response - buffer` response
/// tokens, then falling linearly to `-factor` at `max_response` (and
/// `-factor` beyond it). Added to the reward; `buffer` 0 turns it off.
pub fn overlong_penalty(response: usize, max_response: usize, buffer: usize, factor: f32) -> f32 {
    if buffer == 0 {
        return 0.0;
    }
    let expected = max_response.saturating_sub(buffer);
    let over = response.saturating_sub(expected) as f64;
    -((over / buffer as f64).min(1.0) * factor as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rl::config::{RunConfig, SHIPPED};

    #[test]
    fn match_key_in_configs() {
        for (name, text) in SHIPPED {
            let c = RunConfig::from_toml(text, name).unwrap();
            // The quickstart trains with the filter's reward (strict).
            let want = if name == "paper-qwen3-4b" || name == "quickstart" {
                AnswerMatch::Strict
            } else {
                AnswerMatch::Math
            };
            assert_eq!(c.reward.matching, want, "{name}");
        }
        let err = RunConfig::from_toml("[reward]\nmatch = \"loose\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("reward.match") && err.contains("strict"),
            "{err}"
        );
    }
}
