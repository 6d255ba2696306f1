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
//!   sequence ([`seq`]), one per [`Stage`]: the forward keeps each block's
//!   input (checkpointing) and [`backward_from`] rebuilds one block at a
//!   time in reverse and runs its backward, written from forward ops only
//!   (dequantize with `get_rows` and multiply by the transpose, RMSNorm
//!   and softmax backward as elementwise ops, RoPE backward as RoPE at
//!   negated positions), so no node needs OUT_PROD, RMS_NORM_BACK or
//!   SOFT_MAX_BACK. Attention runs in query blocks and the log-prob head
//!   in position chunks with the output matrix dequantized a vocabulary
//!   block at a time ([`Chunks`]): no `T x T` or `T x vocab` tensor.
//! - [`reference`]: ggml's automatic backward of the whole-sequence graph,
//!   the independent check of [`train`] in the tests.
//! - [`audit`]: the pinned ggml's CUDA, Metal and Vulkan `supports_op`,
//!   transcribed into pure Rust over a node description (op, op params,
//!   types, shapes, strides), so any machine can tell which nodes of a
//!   graph those GPUs would refuse ([`audit::audit`] gives a
//!   [`audit::Violation`] per node naming op, types and rule); ops it does
//!   not transcribe count as refused.
//! - [`plan`]: every stage graph of a training step built over planned
//!   weights ([`shapes`], [`DeviceModel::planned`]: tensors without
//!   memory) and a planned sequence, then sized by ggml's graph allocator
//!   without allocating ([`plan::plan_step`]) or audited
//!   ([`plan::audit_step`]).
//!
//! # Checked (`cargo test --release -p cleaner-ggml`, ggml's CPU backend)
//! Log-probs within `1e-3 * max(|log p|, 1)` of the CPU trainer: tiny
//! llama/qwen2/qwen3 models in Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K with and
//! without an adapter, whole and in small chunks, SmolLM2-135M and
//! Qwen2.5-Coder-0.5B on a real prompt in several blocks and chunks. Every
//! LoRA gradient tensor of the tiny models, from the chunked backward and
//! from the automatic one: cosine >= 0.999 and relative L2 error <= 1e-3,
//! plus finite differences through ggml's own chunked forward. Bad input:
//! typed errors, no abort. Op audit (`tests/audit.rs`): every graph of a
//! training step at Qwen2.5-0.5B and Qwen3-4B Q4_K_M shapes, T = 4096,
//! rank-16 LoRA on every projection, passes CUDA's, Metal's and Vulkan's
//! `supports_op`; the automatic backward is refused by Metal for exactly
//! OUT_PROD, RMS_NORM_BACK, SOFT_MAX_BACK, GET_ROWS_BACK and REPEAT_BACK,
//! by Vulkan for OUT_PROD of a transposed gradient (the audit can fail).
//! Plan (`tests/plan.rs`): the step's working memory at Qwen3-4B, T = 4096,
//! stays within the budget documented in `docs/gpu.md`.
//!
//! # Not yet
//! - No run on a GPU has measured speed or device memory (none was lent
//!   while this was built); `tools/scripts/gpu-check.sh` runs the agreement
//!   tests on CUDA when one is.
//! - The weights are a second copy next to llama.cpp's (2.3 GiB for
//!   Qwen3-4B Q4_K_M); sharing llama.cpp's model buffer would save it.
//! - AdamW runs on the host (the adapter goes to the device after each
//!   update); `ggml_opt_step_adamw` would keep it there.
//! - Products dequantize each weight matrix to f32 (a transient of one
//!   matrix and its transpose); a GPU would be faster multiplying the
//!   quantized weights directly in the forward, at about 1e-2 agreement
//!   with the CPU trainer instead of 1e-5.

mod attention;
pub mod audit;
mod block_backward;
pub mod error;
pub mod ffi;
pub mod forward;
mod head;
pub mod plan;
pub mod reference;
pub mod seq;
pub mod shapes;
pub mod train;
pub mod weights;

pub use audit::{audit, GpuTarget, Violation};
pub use error::GgmlError;
pub use ffi::{quantize, Backend, Context, Device, Graph, Tensor, Workspace};
pub use plan::{check_budget, plan_bytes, plan_step, StepPlan};
pub use seq::Chunks;
pub use train::{
    backward, backward_chunked, backward_from, forward_train, logprobs, logprobs_chunked,
    Checkpoints, Stage,
};
pub use weights::{DeviceLora, DeviceModel};
