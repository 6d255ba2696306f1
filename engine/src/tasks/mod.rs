//! Tasks: problems with reference answers read from JSONL, final-answer
//! extraction, the math verifier, and rewards.
//!
//! `tasks` builds on `agent`, not the other way round: rewards score agent
//! trajectories and items are prompted through `agent::prompt::Question`.
//! The agent takes one rule from here, [`answer::last_boxed`], for the
//! answer its trajectories report.

pub mod answer;
pub mod dataset;
pub mod reward;
pub mod verify;

pub use dataset::{Dataset, DatasetError, Fields, Item};
pub use reward::{MathReward, Reward};
pub use verify::{math_equal, normalize_answer};
