//! Tasks: problems with reference answers read from JSONL, the math
//! verifier, and rewards.

pub mod dataset;
pub mod reward;
pub mod verify;

pub use dataset::{Dataset, DatasetError, Fields, Item};
pub use reward::{MathReward, Reward};
pub use verify::{math_equal, normalize_answer};
