//! Reinforcement learning: GRPO over purified trajectories ([`grpo`]), its
//! config ([`config`]), checkpoints ([`checkpoint`]), per-step metrics
//! ([`metrics`]), rewards ([`reward`]), evaluation ([`eval`]) and the
//! pass-rate filter of training sets ([`pass_rate`]).

pub mod advantage;
pub mod checkpoint;
pub mod config;
pub mod eval;
pub mod grpo;
pub mod metrics;
pub mod pass_rate;
pub mod problem_index;
mod problem_order;
pub mod reward;
mod samples;

pub use config::{ConfigError, MatmulPrecision, RunConfig};
pub use eval::{evaluate, EvalError, EvalReport};
pub use grpo::{train_on, Grpo, GrpoError, Progress};
pub use metrics::StepMetrics;
pub use reward::{AnswerMatch, MathReward, Reward};
