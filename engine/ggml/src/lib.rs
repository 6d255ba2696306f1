//! The LoRA trainer on ggml: the forward (and, for now, the automatic
//! backward) of `cleaner_models`' transformer as ggml graphs, so one graph
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
//! - [`logprobs`]: the forward graph for llama, qwen2 and qwen3 (see
//!   [`forward`] for the arithmetic and why products run on `get_rows`-
//!   dequantized f32 weights).
//! - [`backward()`]: LoRA gradients by `ggml_build_backward_expand` over the
//!   whole sequence (see [`backward`](mod@backward) for its limits).
//! - [`audit`]: the op audit. The pinned ggml's CUDA, Metal and Vulkan
//!   `supports_op`, transcribed into pure Rust over a node description
//!   (op, op params, types, shapes, strides), so any machine can tell which
//!   nodes of a graph those GPUs would refuse ([`audit::audit`] gives a
//!   [`audit::Violation`] per node naming op, types and rule); ops it does
//!   not transcribe count as refused. [`shapes`] holds weightless model
//!   shapes (Qwen2.5-0.5B and Qwen3-4B in Q4_K_M), [`DeviceModel::planned`]
//!   turns one into tensors without memory, [`plan`] builds today's graphs
//!   over them and [`plan::plan_bytes`] plans a graph's working memory with
//!   ggml's graph allocator without allocating it.
//!
//! # Checked (`cargo test --release -p cleaner-ggml`, ggml's CPU backend)
//! Log-probs within `1e-3 * max(|log p|, 1)` of the CPU trainer: tiny
//! llama/qwen2/qwen3 models in Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K with and
//! without an adapter (measured 2.3e-6), SmolLM2-135M and
//! Qwen2.5-Coder-0.5B on a real prompt (1.3e-5, 4.4e-5). Every LoRA
//! gradient tensor of the tiny models: cosine >= 0.999 and relative L2
//! error <= 1e-3 (measured 1.0000000, 7.6e-6), plus finite differences
//! through ggml's own forward. Bad input: typed errors, no abort.
//! Op audit (`tests/audit.rs`): today's forward at Qwen2.5-0.5B and
//! Qwen3-4B Q4_K_M shapes, T = 4096, with and without a rank-16 adapter on
//! every projection, passes CUDA's, Metal's and Vulkan's `supports_op`; the
//! automatic backward is refused by Metal for exactly OUT_PROD,
//! RMS_NORM_BACK, SOFT_MAX_BACK, GET_ROWS_BACK and REPEAT_BACK, by Vulkan
//! for OUT_PROD of a transposed gradient (CUDA runs it). Plan
//! (`tests/plan.rs`): that forward at Qwen3-4B, T = 4096, needs 6.19 GiB of
//! working memory besides the 2.32 GiB of weights, most of it the
//! `T x vocab` log-prob head.
//!
//! # What is next (issue 17, in order)
//! 1. Backward from forward ops, block by block: the forward graph keeps
//!    only each block's input (f32 `[n_embd, n_tok]`); the backward
//!    rebuilds one block at a time from it (`forward::Builder::block`, the
//!    unit the forward is already written in), dequantizes its weights with
//!    `get_rows` and multiplies by the transpose (no OUT_PROD on quantized
//!    weights), RMSNorm and softmax backward as elementwise ops, so every
//!    node passes CUDA's and Metal's `supports_op`. The automatic
//!    [`backward()`] stays as its test reference.
//! 2. Attention in query blocks (no `n_tok^2 x n_head` score tensor) and
//!    the log-prob head in token chunks (`forward::Builder::logprobs` on a
//!    column range: no `T x vocab` matrix).
//! 3. A memory budget: graphs reserved with `ggml_gallocr_reserve` at the
//!    configured chunk sizes, planned peak checked against the budget,
//!    working buffers freed between steps.
//! 4. The trainer interface (`[trainer] backend`, `device`) in the engine,
//!    the op audit of every graph the trainer makes (today's forward
//!    passes it, see [`audit`]), benches, and the GPU check script.

pub mod audit;
pub mod backward;
pub mod error;
pub mod ffi;
pub mod forward;
pub mod plan;
pub mod shapes;
pub mod weights;

pub use audit::{audit, GpuTarget, Violation};
pub use backward::backward;
pub use error::GgmlError;
pub use ffi::{quantize, Backend, Context, Device, Graph, Tensor};
pub use forward::logprobs;
pub use plan::plan_bytes;
pub use weights::{DeviceLora, DeviceModel};
