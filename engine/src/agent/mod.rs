//! The tool-integrated agent: multi-turn generation with Python tool calls,
//! purified inline by CLEANER's Similarity-Aware Adaptive Rollback (SAAR).
//!
//! `Agent::run` (`runner`) collects trajectories for a batch of problems;
//! `purify` is SAAR itself, pure functions from a failed turn and its
//! lookahead to a splice; `format` says how tool calls look; `trajectory` is
//! what comes out (and what the trainer reads); `similarity` is difflib's
//! ratio, exactly.
//!
//! `tasks` builds on `agent`: a task's rewards score agent [`Trajectory`]s
//! and its items are prompted through [`prompt::Question`]. The agent knows
//! no task's types; it takes one rule from `tasks`, the math tasks' final
//! answer (`tasks::answer::last_boxed`), to fill [`Trajectory::answer`].

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
