//! `cleaner bench serve`: `cleaner serve` next to llama.cpp's own
//! `llama-server` (built from the same llama.cpp tree by
//! tools/scripts/build-llama-server.sh), both started by the bench as child
//! processes on loopback with the same model, threads, slots, cache and batch
//! sizes, and driven by the same streaming clients in the same run.
//!
//! Each level runs `clients` concurrent clients, each sending
//! `requests_per_client` streaming chat requests one after another: distinct
//! prompts (so no prompt prefix but the chat template's is shared), the same
//! sampler on both (temperature 1, no top-k/top-p/min-p cut, a seed per
//! request) and `ignore_eos`, so every request generates exactly
//! `max_tokens`. Throughput is completion tokens over the level's wall time
//! (prefill included); time to first token is from sending the request to
//! the first streamed content. Rounds alternate which server goes first.
//!
//! What differs: llama-server keeps each slot's last prompt and reuses its
//! common prefix (the chat template's system part here); ours prefills
//! every prompt whole. `--llama-prompt-cache off` turns that off for the
//! request (`cache_prompt: false`) to compare the same work.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    /// Model short name or GGUF path.
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    /// Concurrent clients per level.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    clients: Vec<usize>,
    /// Requests each client sends, one after another.
    #[arg(long, default_value_t = 2)]
    requests_per_client: usize,
    /// Tokens generated per request (EOS ignored).
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Positions per slot on both servers (prompt plus completion).
    #[arg(long, default_value_t = 512)]
    ctx_per_slot: usize,
    /// Decode threads for both servers (default: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Rounds per level, alternating which server goes first; medians reported.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Path of llama-server (default: built by tools/scripts/build-llama-server.sh).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Let llama-server reuse each slot's last prompt (its default,
    /// `cache_prompt`); off makes both servers prefill every prompt whole.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    llama_prompt_cache: String,
    /// First of the two loopback ports used (ours, then llama-server's).
    #[arg(long, default_value_t = 18180)]
    port: u16,
}

/// The id requests name the model by (llama-server answers to any).
const MODEL_ID: &str = "bench";

/// Where a client sends its requests, and how.
#[derive(Clone)]
struct Endpoint {
    name: &'static str,
    base: String,
    /// Request fields only this server accepts (llama-server's min_p).
    extra: Value,
}

/// One server under test: a child process on a loopback port, killed on drop.
struct ServerProcess {
    child: Child,
    endpoint: Endpoint,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    fn peak_rss_mib(&self) -> Option<f64> {
        super::peak_rss_mib_of(&self.child.id().to_string())
    }
}

/// What one level measured on one server.
struct Level {
    tokens_per_s: f64,
    ttft_ms: Vec<f64>,
}

pub fn run(a: Args) -> Result<()> {
    let threads = if a.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        a.threads
    };
    let Some(&slots) = a.clients.iter().max() else {
        bail!("--clients is empty: give at least one level, e.g. 1,8,32");
    };
    if a.clients.contains(&0) || a.requests_per_client == 0 || a.max_tokens == 0 {
        bail!("--clients, --requests-per-client and --max-tokens must be at least 1");
    }
    let path = cleaner::assets::AssetStore::default()
        .resolve_model(&a.model, &mut |line| eprintln!("{line}"))?;
    let baseline = match a.baseline.clone() {
        Some(p) => p,
        None => super::build_with_script("build-llama-server.sh", "llama-server")?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // A fresh connection per request for both: llama-server's HTTP library
    // closes idle keep-alive connections on its own schedule, and a pooled
    // one it closed fails the next request.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .context("building the HTTP client")?;
    let common = Common {
        path: &path,
        slots,
        ctx_per_slot: a.ctx_per_slot,
        threads,
    };
    let servers = [
        start_ours(&common, a.port)?,
        start_llama_server(&baseline, &common, a.port + 1, a.llama_prompt_cache == "on")?,
    ];
    for s in &servers {
        runtime.block_on(wait_ready(&client, &s.endpoint))?;
        // Warm-up outside the timing: page the weights in, size buffers.
        runtime.block_on(stream_one(&client, &s.endpoint, "Say hello.", 0, 8))?;
    }
    let mut rows = Vec::new();
    let mut next_prompt = 1;
    for &c in &a.clients {
        let mut runs: [Vec<Level>; 2] = [Vec::new(), Vec::new()];
        for round in 0..a.rounds.max(1) {
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                // Prompts never repeat over the run: llama-server would
                // answer a repeated one from the prompt its slot kept.
                let first = next_prompt;
                next_prompt += c * a.requests_per_client;
                let level = runtime.block_on(level(&client, &servers[i].endpoint, c, first, &a))?;
                eprintln!(
                    "   {c:>3} clients, round {round}: {:<12} {:8.1} tok/s",
                    servers[i].endpoint.name, level.tokens_per_s
                );
                runs[i].push(level);
            }
        }
        rows.push((c, runs));
    }
    let version = Command::new(&baseline)
        .arg("--version")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stderr).into_owned()
                + &String::from_utf8_lossy(&o.stdout);
            text.lines()
                .find(|l| l.starts_with("version"))
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    println!(
        "\nServing throughput and time to first token: {} ({}), {threads} threads, {slots} slots of {} positions, \
         {} requests per client, {} tokens each (EOS ignored), median of {} rounds; llama-server {version}, \
         its prompt cache {}",
        a.model,
        path.display(),
        a.ctx_per_slot,
        a.requests_per_client,
        a.max_tokens,
        a.rounds.max(1),
        a.llama_prompt_cache
    );
    println!("| clients | cleaner tok/s | llama-server tok/s | ratio | cleaner TTFT p50 / p95 ms | llama-server TTFT p50 / p95 ms |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (c, [ours, theirs]) in rows {
        let (o, t) = (summary(ours), summary(theirs));
        println!(
            "| {c} | {:.1} | {:.1} | {:.3} | {:.0} / {:.0} | {:.0} / {:.0} |",
            o.0,
            t.0,
            o.0 / t.0,
            o.1,
            o.2,
            t.1,
            t.2
        );
    }
    for s in &servers {
        println!(
            "{} peak RSS: {} MiB",
            s.endpoint.name,
            s.peak_rss_mib()
                .map_or_else(|| "?".into(), |m| format!("{m:.0}"))
        );
    }
    Ok(())
}

/// Median tokens/s over rounds, and TTFT p50/p95 over every request.
fn summary(runs: Vec<Level>) -> (f64, f64, f64) {
    let tps = super::median(runs.iter().map(|l| l.tokens_per_s).collect());
    let mut ttft: Vec<f64> = runs.into_iter().flat_map(|l| l.ttft_ms).collect();
    ttft.sort_by(f64::total_cmp);
    (tps, quantile(&ttft, 0.5), quantile(&ttft, 0.95))
}

/// Nearest-rank quantile of a sorted, non-empty sample.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What both servers are started with.
struct Common<'a> {
    path: &'a Path,
    slots: usize,
    ctx_per_slot: usize,
    threads: usize,
}

fn start_ours(c: &Common, port: u16) -> Result<ServerProcess> {
    let exe = std::env::current_exe().context("finding the cleaner binary")?;
    let child = Command::new(exe)
        .arg("serve")
        .arg("--model")
        .arg(c.path)
        .args(["--port", &port.to_string()])
        .args(["--slots", &c.slots.to_string()])
        .args(["--ctx-per-slot", &c.ctx_per_slot.to_string()])
        .args(["--threads", &c.threads.to_string()])
        .args(["--served-model-name", MODEL_ID])
        .arg("--no-code-interpreter")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting cleaner serve")?;
    Ok(ServerProcess {
        child,
        endpoint: Endpoint {
            name: "cleaner",
            base: format!("http://127.0.0.1:{port}"),
            extra: json!({}),
        },
    })
}

fn start_llama_server(
    bin: &Path,
    c: &Common,
    port: u16,
    prompt_cache: bool,
) -> Result<ServerProcess> {
    // Offload exactly as our engine does: every layer in a GPU build, none otherwise.
    let gpu_layers = if cleaner::ModelParams::default().n_gpu_layers < 0 {
        "999"
    } else {
        "0"
    };
    let threads = c.threads.to_string();
    // Ours: one unified cache of slots x ctx cells, batches of 512, flash
    // attention as llama.cpp decides.
    let child = Command::new(bin)
        .arg("-m")
        .arg(c.path)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-np", &c.slots.to_string()])
        .args(["-c", &(c.slots * c.ctx_per_slot).to_string(), "-kvu"])
        .args(["-b", "512", "-ub", "512", "-fa", "auto"])
        .args(["-t", &threads, "-tb", &threads, "-ngl", gpu_layers])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(ServerProcess {
        child,
        endpoint: Endpoint {
            name: "llama-server",
            base: format!("http://127.0.0.1:{port}"),
            extra: json!({"min_p": 0.0, "cache_prompt": prompt_cache}),
        },
    })
}

async fn wait_ready(client: &reqwest::Client, s: &Endpoint) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{}/health", s.base)).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{} did not answer /health within 300 s", s.name)
}

/// `clients` concurrent clients, each sending its requests in turn.
async fn level(
    client: &reqwest::Client,
    s: &Endpoint,
    clients: usize,
    first_prompt: usize,
    a: &Args,
) -> Result<Level> {
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (client, s) = (client.clone(), s.clone());
        let (n, max_tokens) = (a.requests_per_client, a.max_tokens);
        tasks.spawn(async move {
            let mut out = Vec::new();
            for r in 0..n {
                let i = first_prompt + c * n + r;
                out.push(stream_one(&client, &s, &prompt(i), i as u64 + 1, max_tokens).await?);
            }
            anyhow::Ok(out)
        });
    }
    let mut tokens = 0;
    let mut ttft_ms = Vec::new();
    while let Some(done) = tasks.join_next().await {
        for (n, ttft) in done.context("a client task panicked")?? {
            tokens += n;
            ttft_ms.push(ttft.as_secs_f64() * 1e3);
        }
    }
    Ok(Level {
        tokens_per_s: tokens as f64 / t0.elapsed().as_secs_f64(),
        ttft_ms,
    })
}

/// Request `i`'s user message: distinct from every other request's from
/// its first tokens, about 100 tokens long.
fn prompt(i: usize) -> String {
    format!(
        "Request {i}. The history of mathematics deals with the origin of discoveries in \
         mathematics and the mathematical methods and notation of the past. Before the modern \
         age and the worldwide spread of knowledge, written examples of new mathematical \
         developments have come to light only in a few locales. Continue this text in your own \
         words, starting from point {i}."
    )
}

/// One streaming chat request; returns (completion tokens, time to the
/// first streamed content).
async fn stream_one(
    client: &reqwest::Client,
    s: &Endpoint,
    text: &str,
    seed: u64,
    max_tokens: usize,
) -> Result<(usize, Duration)> {
    let mut body = json!({
        "model": MODEL_ID,
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": text}],
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "seed": seed,
        "ignore_eos": true,
    });
    if let (Some(b), Some(extra)) = (body.as_object_mut(), s.extra.as_object()) {
        b.extend(extra.clone());
    }
    let t0 = Instant::now();
    let mut resp = client
        .post(format!("{}/v1/chat/completions", s.base))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .with_context(|| format!("{}: sending a request", s.name))?;
    if !resp.status().is_success() {
        let status = resp.status();
        bail!(
            "{}: HTTP {status}: {}",
            s.name,
            resp.text().await.unwrap_or_default()
        );
    }
    let mut buf = String::new();
    let mut first: Option<Duration> = None;
    let mut tokens: Option<usize> = None;
    while let Some(chunk) = resp
        .chunk()
        .await
        .with_context(|| format!("{}: reading the stream", s.name))?
    {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data)
                .with_context(|| format!("{}: a stream event is not JSON: {data}", s.name))?;
            let content = &v["choices"][0]["delta"]["content"];
            if first.is_none() && content.as_str().is_some_and(|c| !c.is_empty()) {
                first = Some(t0.elapsed());
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = Some(n as usize);
            }
        }
    }
    let tokens = tokens.with_context(|| format!("{}: the stream carried no usage", s.name))?;
    if tokens != max_tokens {
        bail!(
            "{}: {tokens} completion tokens, asked for {max_tokens} with ignore_eos",
            s.name
        );
    }
    Ok((tokens, first.unwrap_or_else(|| t0.elapsed())))
}
