//! Tasks: problems with reference answers read from JSONL, final-answer
//! extraction and the math verifier.
//!
//! `tasks` knows nothing of agents, rollouts or training: the agent takes
//! [`answer::last_boxed`] from here for the answer its trajectories report
//! and prompts [`Item`]s (`agent::prompt`), and `rl` scores trajectories
//! against items (`rl::reward`).

pub mod answer;
pub mod dataset;
pub mod verify;

pub use dataset::{Dataset, DatasetError, Fields, Item};
pub use verify::{math_equal, normalize_answer, strict_equal};
