//! The `qwen2` family (Qwen2, Qwen2.5): the llama decoder plus biases on the
//! q, k and v projections, and NeoX-layout RoPE (pairs `i`, `i + n_rot/2`).

use super::{common, Architecture, Config};
use crate::error::ModelError;
use crate::gguf::GgufFile;
use cleaner_kernels::rope::RopeLayout;

/// The typed config from the file's metadata.
pub fn config(file: &GgufFile) -> Result<Config, ModelError> {
    Ok(Config {
        rope_layout: RopeLayout::Neox,
        qkv_bias: true,
        ..common(file, Architecture::Qwen2)?
    })
}
