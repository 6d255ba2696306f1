//! `cleaner serve`: the OpenAI-compatible server (docs/serve.md).

use std::path::Path;

use anyhow::{Context, Result};
use cleaner::serve::{ServeConfig, Server};

#[derive(clap::Args)]
pub struct Args {
    /// Model short name (smollm2-135m, qwen2.5-coder-0.5b) or GGUF path.
    #[arg(long, default_value = cleaner::assets::DEFAULT_MODEL)]
    model: String,
    /// The id clients name the model by (default: the short name, or the
    /// file name without .gguf).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Address to listen on; loopback unless you mean to expose it.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences decoding at once over all requests (a request's n choices
    /// take n); further requests queue.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Positions per sequence (prompt plus completion), at most the model's
    /// training context; the cache holds slots x this many cells.
    #[arg(long, default_value_t = 4096)]
    ctx_per_slot: u32,
    /// Decode threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// Require `Authorization: Bearer KEY` on /v1 routes.
    #[arg(long, env = "CLEANER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10)]
    shutdown_grace: u64,
    /// Start no sandbox: requests with the `cleaner` object (the built-in
    /// code interpreter) are refused.
    #[arg(long)]
    no_code_interpreter: bool,
    /// A LoRA adapter requests select by giving NAME as `model`: FILE is a
    /// GGUF adapter for this model, as `cleaner train` exports. Repeatable.
    #[arg(long = "adapter", value_name = "NAME=FILE", value_parser = cleaner::serve::adapters::parse_spec)]
    adapters: Vec<(String, std::path::PathBuf)>,
}

pub fn run(a: Args) -> Result<()> {
    let (path, model) = super::load_model(&a.model)?;
    let model_id = a.served_model_name.clone().unwrap_or_else(|| {
        if Path::new(&a.model) == path {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| a.model.clone())
        } else {
            a.model.clone()
        }
    });
    let server = Server::new(
        model,
        ServeConfig {
            model_id: model_id.clone(),
            slots: a.slots,
            ctx_per_slot: a.ctx_per_slot,
            threads: a.threads,
            api_key: a.api_key.clone(),
            max_body_bytes: a.max_body_bytes,
            shutdown_grace: std::time::Duration::from_secs(a.shutdown_grace),
            adapters: a.adapters.clone(),
        },
    )?;
    if !a.no_code_interpreter {
        let sandbox =
            super::sandbox::open(None).context("opening the code interpreter's sandbox")?;
        server.set_sandbox(std::sync::Arc::new(sandbox));
    }
    let ctx = server.config().ctx_per_slot;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!(
            "serving {model_id}{} on http://{} ({} slots of {ctx} positions{}{}); Ctrl-C stops",
            a.adapters
                .iter()
                .map(|(name, _)| format!(" + adapter {name}"))
                .collect::<String>(),
            listener.local_addr()?,
            a.slots,
            if a.api_key.is_some() {
                ", API key required"
            } else {
                ""
            },
            if a.no_code_interpreter {
                ""
            } else {
                ", code interpreter on"
            }
        );
        server
            .run(listener, cleaner::serve::signal::interrupted())
            .await
            .context("serving")
    })?;
    eprintln!("stopped");
    Ok(())
}
