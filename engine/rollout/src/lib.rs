//! Rollouts for cleaner: the llama.cpp wrapper (models, contexts, LoRA
//! adapters), chat templates, sampling, and the decoder that advances many
//! sequences together by continuous batching with KV rollback and grafting.
//!
//! This crate carries llama.cpp's native build (CMake, and CUDA, Metal or
//! Vulkan through its features). It knows nothing of agents, tasks or
//! training: the engine builds those on top of it.

#![warn(missing_docs)]

pub mod chat;
pub mod decoder;
pub mod kv_budget;
pub mod llama;
pub mod pyjson;
pub mod sampling;

pub use decoder::{
    Decoder, DecoderConfig, FinishReason, GenerateParams, Generation, RolloutError, SeqId,
};
pub use llama::{LlamaError, LoraAdapter, Model, ModelParams, Token};
pub use sampling::SamplingParams;
