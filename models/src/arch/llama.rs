//! The `llama` family (Llama 2/3, SmolLM2): the plain pre-norm decoder with
//! RMSNorm, SwiGLU and RoPE. llama.cpp's converter permutes the q/k weight
//! rows so that the rotation pairs adjacent dimensions (ggml's "normal" RoPE).

use super::{common, Architecture, Config};
use crate::error::ModelError;
use crate::gguf::GgufFile;
use cleaner_kernels::rope::RopeLayout;

/// The typed config from the file's metadata.
pub fn config(file: &GgufFile) -> Result<Config, ModelError> {
    Ok(Config {
        rope_layout: RopeLayout::Normal,
        ..common(file, Architecture::Llama)?
    })
}
