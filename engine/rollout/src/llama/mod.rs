//! A small owned wrapper over llama.cpp's C API (`llama-cpp-sys-2`).
//!
//! Why not only the safe `llama-cpp-2` API: its context borrows the model
//! (`LlamaContext<'model>`), so an engine that owns both cannot be built
//! without self-reference; its LoRA loader needs `&mut LlamaModel` (no adapter
//! can be loaded while a context lives) and never frees adapters. These few
//! types own their pointers, share the model through `Arc`, and keep every
//! `unsafe` block of the engine in this module, each with its safety note.
//! `llama-cpp-2` is still used for the process-wide backend initialisation.
//!
//! Many llama.cpp misuses abort the process (GGML_ASSERT) instead of returning
//! an error, so every input is validated here before it reaches C.

mod adapter;
mod context;
mod log;
mod model;

pub use adapter::LoraAdapter;
pub use context::{BatchEntry, Context, ContextParams};
pub use model::{Model, ModelParams, Token};

use std::path::PathBuf;
use std::sync::OnceLock;

/// Errors from loading models and adapters and from running the context.
#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    /// The file is not a valid GGUF.
    #[error("model file: {source}")]
    ModelFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: cleaner_models::GgufError,
    },
    /// llama.cpp refused the model; `log` is its message.
    #[error("{path}: llama.cpp could not load the model: {log}")]
    ModelLoad {
        /// The file.
        path: PathBuf,
        /// llama.cpp's log lines explaining the failure.
        log: String,
    },
    /// llama.cpp could not create the context.
    #[error("llama.cpp could not create a context (n_ctx {n_ctx}, n_seq_max {n_seq_max}): {log}")]
    ContextInit {
        /// Context size in cells.
        n_ctx: u32,
        /// Sequences requested.
        n_seq_max: u32,
        /// llama.cpp's log lines explaining the failure.
        log: String,
    },
    /// Context parameters out of range.
    #[error("invalid context parameters: {0}")]
    ContextParams(String),
    /// The adapter file does not fit the model.
    #[error("adapter {path}: {why}")]
    Adapter {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        why: String,
    },
    /// The KV cache has no room for the batch.
    #[error("the KV cache is full: no room for {n_tokens} more tokens in a context of {n_ctx} cells (close sequences or raise n_ctx)")]
    KvCacheFull {
        /// Tokens that did not fit.
        n_tokens: usize,
        /// Context size in cells.
        n_ctx: u32,
    },
    /// llama_decode failed.
    #[error("llama_decode failed with code {code}: {log}")]
    Decode {
        /// llama_decode's return code.
        code: i32,
        /// llama.cpp's log lines explaining the failure.
        log: String,
    },
    /// Text too long to tokenize.
    #[error("text of {0} bytes is too long to tokenize")]
    TextTooLong(usize),
    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary of {n_vocab} tokens")]
    BadToken {
        /// The token id.
        token: Token,
        /// Vocabulary size.
        n_vocab: usize,
    },
}

static BACKEND: OnceLock<Option<llama_cpp_2::llama_backend::LlamaBackend>> = OnceLock::new();

/// Initialises llama.cpp once per process and routes its log into ours.
/// `init` fails only when another user of `llama-cpp-2` in this process
/// initialised the backend first; it is then usable as it is.
pub(crate) fn init_backend() {
    BACKEND.get_or_init(|| {
        log::install();
        llama_cpp_2::llama_backend::LlamaBackend::init().ok()
    });
}
