//! The cleaner engine: rollouts over llama.cpp, the asset store, and (built on
//! them) the sandbox, agent loop, purification and RL.
//!
//! It must not know how kernels are implemented or how GGUF bytes are laid out
//! beyond what `cleaner-models` exposes.

#![warn(missing_docs)]

pub mod llama;
pub mod rollout;
pub mod sampling;
pub mod sandbox;
pub mod seeds;
pub mod tasks;
pub mod train;

pub use llama::{LlamaError, LoraAdapter, Model, ModelParams, Token};
pub use rollout::{
    FinishReason, GenerateParams, Generation, Policy, PolicyConfig, RolloutError, SeqId,
};
pub use sampling::SamplingParams;
pub mod agent;
pub mod assets;
pub mod chat;
pub mod rl;
pub mod session;
