//! Models for cleaner: the GGUF file reader (memory-mapped, zero-copy),
//! architecture definitions with typed configurations, the trainer's forward
//! pass over quantized weights, and LoRA adapter files.
//!
//! This crate knows file formats and model structure; it knows nothing about
//! llama.cpp, sampling, sandboxes or reinforcement learning.

#![warn(missing_docs)]

pub mod adapter_file;
pub mod arch;
pub mod backward;
pub mod error;
pub mod forward;
pub mod gguf;
pub mod lora;
pub mod model;
pub mod prefix;
pub mod tiny;

pub use arch::{Architecture, Config};
pub use error::{ModelError, ModelErrorKind};
pub use forward::{ForwardOutput, Tape};
pub use gguf::{GgufError, GgufErrorKind, GgufFile, GgufWriter, TensorInfo, Value};
pub use lora::{Lora, LoraConfig, LoraPair, Proj};
pub use model::{Layer, MatrixRef, Transformer};
pub use prefix::PrefixGrad;
