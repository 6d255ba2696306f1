//! Models for cleaner: the GGUF file reader (memory-mapped, zero-copy),
//! architecture definitions and LoRA adapter files.
//!
//! This crate knows file formats and model structure; it knows nothing about
//! llama.cpp, sampling, sandboxes or reinforcement learning.

pub mod gguf;

pub use gguf::{GgufError, GgufErrorKind, GgufFile, GgufWriter, TensorInfo, Value};
