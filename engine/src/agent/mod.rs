//! The tool-integrated agent: multi-turn generation with Python tool calls,
//! purified inline by CLEANER's Similarity-Aware Adaptive Rollback (SAAR).
//!
//! `Agent::run` collects trajectories for a batch of problems; `format` says
//! how tool calls look; `trajectory` is what comes out (and what the trainer
//! reads); `similarity` is difflib's ratio, exactly.
//!
//! `tasks` builds on `agent`: a task's rewards score agent [`Trajectory`]s
//! and its items are prompted through [`prompt::Question`]. The agent knows
//! no task's types; it takes one rule from `tasks`, the math tasks' final
//! answer (`tasks::answer::last_boxed`), to fill [`Trajectory::answer`].

pub mod backend;
pub mod config;
pub mod format;
pub mod prompt;
pub mod runner;
pub mod similarity;
pub mod stats;
pub mod trajectory;

pub use backend::Backend;
pub use config::AgentConfig;
pub use format::{FormatKind, ToolFormat};
pub use runner::{Agent, AgentError, Problem};
pub use stats::BatchStats;
pub use trajectory::{Role, Trajectory};
