//! The `qwen3` family: no projection biases, but an RMSNorm over each head of
//! q and k (weights `attn_q_norm`/`attn_k_norm`, `[head_dim]`) before RoPE;
//! NeoX-layout RoPE; head size given by `attention.key_length`.

use super::{common, Architecture, Config};
use crate::error::ModelError;
use crate::gguf::GgufFile;
use cleaner_kernels::rope::RopeLayout;

/// The typed config from the file's metadata.
pub fn config(file: &GgufFile) -> Result<Config, ModelError> {
    Ok(Config {
        rope_layout: RopeLayout::Neox,
        qk_norm: true,
        ..common(file, Architecture::Qwen3)?
    })
}
