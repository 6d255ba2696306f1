//! The LoRA trainer on ggml: the forward and backward of
//! `cleaner_models`' transformer as ggml graphs, so one graph
//! runs on every backend llama.cpp was built with: CPU always, CUDA, Metal
//! and Vulkan through this crate's `cuda`, `metal` and `vulkan` features
//! (forwarded to llama-cpp-sys-2). The CPU trainer in `cleaner_models`
//! (`Transformer::forward` / `backward`) is the reference every test here
//! compares against.
//!
//! This crate knows ggml, GGUF tensors (through `cleaner_models`) and LoRA;
//! it knows nothing about rollouts, sampling, losses or GRPO: the caller
//! turns its loss into `d loss / d logprob` and gets LoRA gradients back.
//!
//! # What exists
//! - [`ffi`]: the only module with `unsafe`: owned [`Backend`] (started by
//!   [`Device`] kind; a kind the build lacks or a device that is absent is a
//!   typed error), [`Context`] (metadata plus the backend memory of its
//!   tensors), [`Tensor`] handles, [`Graph`]. Every op wrapper checks what
//!   ggml would assert (and abort on); [`Backend::compute`] checks every node
//!   with `ggml_backend_supports_op` and names op, type and backend in
//!   [`GgmlError::Unsupported`] instead of falling back to the CPU.
//! - [`DeviceModel`]: base weights copied from the memory-mapped GGUF in
//!   their stored quantized types (no dequantized copy); [`DeviceLora`]: A/B
//!   as f32 tensors on the backend.
//! - [`train`]: the trainer's passes as a series of small graphs over a
//!   sequence ([`seq`]): the forward keeps each block's input
//!   (checkpointing) and [`backward_from`] rebuilds one block at a time in
//!   reverse and runs its backward, written from forward ops only
//!   (dequantize with `get_rows` and multiply by the transpose, RMSNorm
//!   and softmax backward as elementwise ops, RoPE backward as RoPE at
//!   negated positions), so no node needs OUT_PROD, RMS_NORM_BACK or
//!   SOFT_MAX_BACK. Attention runs in query blocks and the log-prob head
//!   in position chunks with the output matrix dequantized a vocabulary
//!   block at a time ([`Chunks`]): no `T x T` or `T x vocab` tensor, and
//!   memory bounded by the chunk sizes plus the saved block inputs.
//! - [`reference`]: ggml's automatic backward of the whole-sequence graph,
//!   the independent check of [`train`] in the tests.
//!
//! # Checked (`cargo test --release -p cleaner-ggml`, ggml's CPU backend)
//! Log-probs within `1e-3 * max(|log p|, 1)` of the CPU trainer: tiny
//! llama/qwen2/qwen3 models in Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K with and
//! without an adapter, whole and in small chunks, SmolLM2-135M and
//! Qwen2.5-Coder-0.5B on a real prompt in several blocks and chunks. Every
//! LoRA gradient tensor of the tiny models, from the chunked backward and
//! from the automatic one: cosine >= 0.999 and relative L2 error <= 1e-3,
//! plus finite differences through ggml's own chunked forward. Bad input:
//! typed errors, no abort.
//!
//! # What is next (issue 17, in order)
//! 1. A memory budget: the stage graphs reserved with `ggml_gallocr_reserve`
//!    at the configured chunk sizes, planned peak checked against the
//!    budget, chunk sizes derived from it.
//! 2. The trainer interface (`[trainer] backend`, `device`) in the engine,
//!    the op audit at Qwen3-4B shapes against the vendored CUDA/Metal
//!    `supports_op`, benches, and the GPU check script.

mod attention;
mod block_backward;
pub mod error;
pub mod ffi;
pub mod forward;
mod head;
pub mod reference;
pub mod seq;
pub mod train;
pub mod weights;

pub use error::GgmlError;
pub use ffi::{quantize, Backend, Context, Device, Graph, Tensor};
pub use seq::Chunks;
pub use train::{
    backward, backward_chunked, backward_from, forward_train, logprobs, logprobs_chunked,
    Checkpoints, Stage,
};
pub use weights::{DeviceLora, DeviceModel};
