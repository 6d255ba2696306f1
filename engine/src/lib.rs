//! The cleaner engine: the agent loop with purification, tasks and rewards,
//! the LoRA trainer, GRPO, the asset store and the session that ties them
//! together. It is built on two crates with a native build each:
//! `cleaner-rollout` (llama.cpp: models, chat templates, sampling, the
//! continuous-batching decoder) and `cleaner-sandbox` (CPython on WASI under
//! wasmer), re-exported here as `rollout`, `llama`, `chat`, `sampling` and
//! `sandbox`.
//!
//! It must not know how kernels are implemented or how GGUF bytes are laid out
//! beyond what `cleaner-models` exposes.

#![warn(missing_docs)]

pub use cleaner_rollout as rollout;
pub use cleaner_rollout::{chat, llama, sampling};
pub use cleaner_sandbox as sandbox;
pub mod seeds;
pub mod tasks;
pub mod train;

pub use llama::{LlamaError, LoraAdapter, Model, ModelParams, Token};
pub use rollout::{
    Decoder, DecoderConfig, FinishReason, GenerateParams, Generation, RolloutError, SeqId,
};
pub use sampling::SamplingParams;
pub mod agent;
pub mod assets;
pub mod rl;
pub mod serve;
pub mod session;
