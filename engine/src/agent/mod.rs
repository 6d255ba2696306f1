//! The tool-integrated agent: multi-turn generation with Python tool calls,
//! purified inline by CLEANER's Similarity-Aware Adaptive Rollback (SAAR).
//!
//! `Agent::run` (`runner`) collects trajectories for a batch of problems;
//! `purify` is SAAR itself, pure functions from a failed turn and its
//! lookahead to a splice; `format` says how tool calls look; `trajectory` is
//! what comes out (and what the trainer reads); `similarity` is difflib's
//! ratio, exactly.
//!
//! `agent` builds on `tasks`, never the other way round: it prompts any
//! [`prompt::Question`] (a dataset's `tasks::Item` is one) and takes the
//! final-answer rule (`tasks::answer::last_boxed`) to fill
//! [`Trajectory::answer`]. Scoring trajectories against tasks is `rl`'s job
//! (`rl::reward`).

pub mod backend;
pub mod config;
pub mod failure;
pub mod finish;
pub mod format;
pub mod prompt;
pub mod purify;
pub mod runner;
pub mod sequence;
pub mod similarity;
pub mod stats;
pub mod tool_result;
pub mod trajectory;

pub use backend::Backend;
pub use config::{AgentConfig, ConfigError, Purify};
pub use failure::FailureClass;
pub use finish::Finish;
pub use format::{FormatKind, ToolFormat};
pub use runner::{Agent, AgentError, Problem};
pub use stats::BatchStats;
pub use trajectory::{Role, Trajectory};
