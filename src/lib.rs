//! # cleaner
//!
//! An embedded, single-process engine for agentic reinforcement learning of
//! small language models with CLEANER trajectory purification: rollouts with
//! llama.cpp, KV-cache rollback and LoRA hot-swap; the Python sandbox (CPython
//! on WASI); the purifying agent loop; our own LoRA trainer over the
//! memory-mapped quantized weights; GRPO training and evaluation.
//!
//! This crate is the public facade: it re-exports the API of the workspace
//! crates so applications depend on one crate.
//!
//! ```no_run
//! use std::sync::Arc;
//! use cleaner::{assets::AssetStore, chat::{ChatTemplate, Message}, GenerateParams, Model, ModelParams, Decoder, DecoderConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let path = AssetStore::default().resolve_model("smollm2-135m", &mut |line| eprintln!("{line}"))?;
//! let model = Arc::new(Model::load(&path, &ModelParams::default())?);
//! let prompt = ChatTemplate::from_model(&model)?.tokenize(&model, &[Message::user("What is 2 + 3?")], None)?;
//! let mut decoder = Decoder::new(model, &DecoderConfig::default())?;
//! let params: Vec<GenerateParams> = (0..4u64)
//!     .map(|seed| GenerateParams { sampling: cleaner::SamplingParams { seed, ..Default::default() }, ..Default::default() })
//!     .collect();
//! for g in decoder.generate_group(&prompt, &params)? {
//!     println!("{} ({} tokens, {:?})", g.text, g.tokens.len(), g.finish);
//! }
//! # Ok(()) }
//! ```
//!
//! The tool-using agent on one question, and GRPO with CLEANER on your own
//! tasks with your own reward (see also `examples/`):
//!
//! ```no_run
//! use cleaner::agent::Trajectory;
//! use cleaner::rl::{Grpo, RunConfig};
//! use cleaner::session::{Session, SessionOptions};
//! use cleaner::tasks::Item;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut session = Session::open("qwen2.5-coder-0.5b", SessionOptions::default())?;
//! let t = session.solve("What is 17 * 23 + 4?")?;
//! println!("{:?} after {} tool calls", t.answer, t.tool_calls.len());
//!
//! let tasks = vec![Item { id: "1".into(), question: "What is 7 * 8?".into(), answer: "56".into() }];
//! let reward = |item: &Item, t: &Trajectory| if t.text.contains(&item.answer) { 1.0 } else { -1.0 };
//! let mut grpo = Grpo::with_tasks(RunConfig::load("quickstart")?, "runs/mine".as_ref(), tasks)?.with_reward(reward);
//! for step in grpo.run()? {
//!     println!("step {}: reward {:.2}", step.step, step.reward_mean);
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
//! use cleaner::{assets::AssetStore, Model, ModelParams, Decoder, DecoderConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let path = AssetStore::default().resolve_model("smollm2-135m", &mut |line| eprintln!("{line}"))?;
//! let llama = Arc::new(Model::load(&path, &ModelParams::default())?);
//! let tokens: Vec<u32> = llama.tokenize("The answer is 42.", true, false)?.iter().map(|&t| t as u32).collect();
//! let mut trainer = Trainer::new(Transformer::open(&path)?, LoraConfig::default(), AdamWConfig { lr: 1e-3, ..Default::default() }, 0)?;
//! let weights = vec![1.0; tokens.len() - 1]; // which next-token positions train
//! for _ in 0..10 {
//!     trainer.accumulate(&tokens, |logprobs| nll_loss(logprobs, &weights).1)?;
//!     let stats = trainer.update()?;
//!     println!("grad norm {:.3}", stats.grad_norm);
//! }
//! let mut decoder = Decoder::new(llama, &DecoderConfig::default())?;
//! trainer.hot_swap(&mut decoder, std::path::Path::new("run/adapters"))?; // llama.cpp now samples from the trained adapter
//! trainer.export_peft(std::path::Path::new("run/peft"))?; // adapter_model.safetensors + adapter_config.json
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub use cleaner_engine::{
    agent, assets, chat, llama, rl, rollout, sampling, sandbox, serve, session, tasks, train,
};
pub use cleaner_engine::{
    Decoder, DecoderConfig, FinishReason, GenerateParams, Generation, LlamaError, LoraAdapter,
    Model, ModelParams, RolloutError, SamplingParams, SeqId, Token,
};
pub use cleaner_kernels as kernels;
pub use cleaner_models as models;
