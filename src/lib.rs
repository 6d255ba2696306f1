//! # cleaner
//!
//! An embedded, single-process engine for agentic reinforcement learning of
//! small language models with CLEANER trajectory purification: rollouts with
//! llama.cpp, KV-cache rollback, LoRA hot-swap, and (as they land) the Python
//! sandbox, the purifying agent loop and GRPO training.
//!
//! This crate is the public facade: it re-exports the API of the workspace
//! crates so applications depend on one crate.
//!
//! ```no_run
//! use std::sync::Arc;
//! use cleaner::{assets::AssetStore, chat::{ChatTemplate, Message}, GenerateParams, Model, ModelParams, Policy, PolicyConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let path = AssetStore::default().resolve_model("smollm2-135m", &mut |line| eprintln!("{line}"))?;
//! let model = Arc::new(Model::load(&path, &ModelParams::default())?);
//! let prompt = ChatTemplate::from_model(&model)?.tokenize(&model, &[Message::user("What is 2 + 3?")], None)?;
//! let mut policy = Policy::new(model, &PolicyConfig::default())?;
//! let params: Vec<GenerateParams> = (0..4u64)
//!     .map(|seed| GenerateParams { sampling: cleaner::SamplingParams { seed, ..Default::default() }, ..Default::default() })
//!     .collect();
//! for g in policy.generate_group(&prompt, &params)? {
//!     println!("{} ({} tokens, {:?})", g.text, g.tokens.len(), g.finish);
//! }
//! # Ok(()) }
//! ```
//!
//! Training a LoRA adapter with our own forward and backward passes over the
//! memory-mapped quantized weights, then sampling from it with llama.cpp:
//!
//! ```no_run
//! use std::sync::Arc;
//! use cleaner::models::{LoraConfig, Transformer};
//! use cleaner::train::{nll_loss, AdamWConfig, Trainer};
//! use cleaner::{assets::AssetStore, Model, ModelParams, Policy, PolicyConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let path = AssetStore::default().resolve_model("smollm2-135m", &mut |line| eprintln!("{line}"))?;
//! let llama = Arc::new(Model::load(&path, &ModelParams::default())?);
//! let tokens: Vec<u32> = llama.tokenize("The answer is 42.", true, false)?.iter().map(|&t| t as u32).collect();
//! let mut trainer = Trainer::new(Transformer::open(&path)?, LoraConfig::default(), AdamWConfig { lr: 1e-3, ..Default::default() }, 0)?;
//! let weights = vec![1.0; tokens.len() - 1]; // which next-token positions train
//! for _ in 0..10 {
//!     trainer.accumulate(&tokens, |logprobs| nll_loss(logprobs, &weights).1)?;
//!     let stats = trainer.update();
//!     println!("grad norm {:.3}", stats.grad_norm);
//! }
//! let mut policy = Policy::new(llama, &PolicyConfig::default())?;
//! trainer.hot_swap(&mut policy, std::path::Path::new("run/adapters"))?; // llama.cpp now samples from the trained adapter
//! trainer.export_peft(std::path::Path::new("run/peft"))?; // adapter_model.safetensors + adapter_config.json
//! # Ok(()) }
//! ```

pub use cleaner_engine::{
    agent, assets, chat, llama, rl, rollout, sampling, sandbox, session, tasks, train,
};
pub use cleaner_engine::{
    FinishReason, GenerateParams, Generation, LlamaError, LoraAdapter, Model, ModelParams, Policy,
    PolicyConfig, RolloutError, SamplingParams, SeqId, Token,
};
pub use cleaner_kernels as kernels;
pub use cleaner_models as models;
