//! `cleaner serve`: an OpenAI-compatible HTTP server on the engine.
//!
//! Every request shares one continuous-batching decoding loop (`worker`),
//! which owns the [`Decoder`] on a thread of its own; HTTP (axum on tokio)
//! only parses, checks and translates (`http`, `request`, `response`). What
//! is supported, and what is not yet, is in docs/serve.md.

pub mod adapter_routes;
pub mod adapter_swap;
pub mod adapters;
pub mod completions;
pub mod error;
pub mod http;
pub mod interpreter;
pub mod latency;
pub mod metrics;
pub mod request;
pub mod response;
pub mod session_backend;
pub mod signal;
pub mod text;
pub mod tool_calls;
pub mod tools;
pub mod worker;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::chat::{ChatError, ChatTemplate};
use crate::rollout::{Decoder, DecoderConfig, RolloutError};
use crate::Model;

/// The server's settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The id clients name the model by (`model` in requests).
    pub model_id: String,
    /// Sequences decoding at once, over all requests (a request's `n`
    /// choices take `n`); more wait in a queue.
    pub slots: u32,
    /// Positions one sequence may hold (prompt plus completion); capped at
    /// the model's training context.
    pub ctx_per_slot: u32,
    /// Decode threads (0: all cores).
    pub threads: i32,
    /// When set, every `/v1` request needs `Authorization: Bearer` this key.
    pub api_key: Option<String>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// After a shutdown signal, in-flight requests get this long to finish
    /// before they are cancelled.
    pub shutdown_grace: Duration,
    /// LoRA adapters loaded at start, as (name, GGUF file) (`--adapter
    /// NAME=FILE`); more can be loaded at run time.
    pub adapters: Vec<(String, PathBuf)>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            model_id: String::new(),
            slots: 4,
            ctx_per_slot: 4096,
            threads: 0,
            api_key: None,
            max_body_bytes: 4 << 20,
            shutdown_grace: Duration::from_secs(10),
            adapters: Vec::new(),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
    /// The model has no usable chat template.
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// The decoder could not be created.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    /// An `--adapter` could not be loaded.
    #[error("--adapter {name}={path}: {message}")]
    Adapter {
        /// Its name.
        name: String,
        /// Its file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The decoding thread could not start.
    #[error("could not start the decoding thread: {0}")]
    Thread(std::io::Error),
}

/// A server ready to run: model, template and decoding loop set up.
pub struct Server {
    state: Arc<http::AppState>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Sets up the decoding loop for `model`.
    pub fn new(model: Arc<Model>, mut config: ServeConfig) -> Result<Server, ServeError> {
        if config.slots == 0 || config.slots > 255 {
            return Err(ServeError::Config(format!(
                "--slots must be between 1 and 255 (llama.cpp allows 256 sequences, one is kept for forking), got {}",
                config.slots
            )));
        }
        let n_ctx_train = model.n_ctx_train();
        if n_ctx_train > 0 && config.ctx_per_slot > n_ctx_train {
            log::warn!(
                "context per slot lowered from {} to {n_ctx_train}, the positions the model was trained on",
                config.ctx_per_slot
            );
            config.ctx_per_slot = n_ctx_train;
        }
        if config.ctx_per_slot < 16 {
            return Err(ServeError::Config(format!(
                "the context per slot must be at least 16 tokens, got {}",
                config.ctx_per_slot
            )));
        }
        let template = ChatTemplate::from_model(&model)?;
        let registry = adapters::Adapters::default();
        for (name, path) in &config.adapters {
            let failed = |e: error::ApiError| ServeError::Adapter {
                name: name.clone(),
                path: path.display().to_string(),
                message: e.message,
            };
            adapters::check_name(name, &config.model_id).map_err(failed)?;
            let adapter = adapters::load(&model, name, path).map_err(failed)?;
            let loaded = adapters::Loaded {
                name: name.clone(),
                path: path.clone(),
                created: http::unix_now(),
                adapter,
            };
            registry.insert(loaded, false).map_err(failed)?;
        }
        let tool_support = tools::template_support(&template);
        if let Err(why) = &tool_support {
            log::info!("requests with tools will be refused: {why}");
        }
        let decoder = Decoder::new(
            model.clone(),
            &DecoderConfig {
                n_ctx: config.slots * config.ctx_per_slot,
                n_seq_max: config.slots + 1,
                n_threads: config.threads,
                ..Default::default()
            },
        )?;
        let (worker, thread) =
            worker::spawn(decoder, config.slots as usize).map_err(ServeError::Thread)?;
        let state = Arc::new(http::AppState {
            model,
            template,
            tool_support,
            config,
            worker,
            started: http::unix_now(),
            metrics: Default::default(),
            sandbox: Default::default(),
            adapters: registry,
        });
        Ok(Server { state, thread })
    }

    /// Turns the built-in code interpreter on, its calls running in
    /// `sandbox`. Returns false if one was already set.
    pub fn set_sandbox(&self, sandbox: Arc<crate::sandbox::Sandbox>) -> bool {
        self.state.sandbox.set(sandbox)
    }

    /// The settings in force (context per slot possibly capped).
    pub fn config(&self) -> &ServeConfig {
        &self.state.config
    }

    /// Serves on `listener` until `shutdown` completes; then stops accepting,
    /// lets in-flight requests finish for `shutdown_grace`, cancels the rest,
    /// and stops the decoding loop.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
        let worker = self.state.worker.clone();
        let grace = self.state.config.shutdown_grace;
        let deadline = tokio::spawn(async move {
            if on_signal.await.is_ok() {
                tokio::time::sleep(grace).await;
                log::warn!("shutdown deadline reached: cancelling requests still running");
                worker.cancel_all();
            }
        });
        let app = http::router(self.state.clone());
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                log::info!("shutting down: no new connections, in-flight requests finish");
                let _ = signalled.send(());
            })
            .await;
        deadline.abort();
        // The loop stops once every handle is gone; wait for it so the
        // decoder (and its memory) is freed before returning.
        drop(self.state);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        served
    }
}
