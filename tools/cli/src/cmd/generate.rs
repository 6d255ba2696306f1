use std::time::Instant;

use anyhow::{bail, Result};
use cleaner::chat::{ChatTemplate, Message};
use cleaner::{Decoder, DecoderConfig, GenerateParams, SamplingParams};

#[derive(clap::Args)]
pub struct Args {
    /// Model short name (smollm2-135m, qwen2.5-coder-0.5b) or GGUF path.
    #[arg(long, default_value = cleaner::assets::DEFAULT_MODEL)]
    model: String,
    /// The user message.
    #[arg(long)]
    prompt: String,
    /// Optional system message.
    #[arg(long)]
    system: Option<String>,
    /// Send the prompt as raw text instead of through the chat template.
    #[arg(long)]
    raw: bool,
    /// Completions to sample (they share the prompt's prefill).
    #[arg(short = 'n', long, default_value_t = 1)]
    n: usize,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop strings (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Path to a LoRA adapter in llama.cpp's GGUF format.
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
    /// Decode threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: i32,
}

pub fn run(a: Args) -> Result<()> {
    if a.n == 0 || a.n > 256 {
        bail!("-n must be between 1 and 256, got {}", a.n);
    }
    let (_, model) = super::load_model(&a.model)?;
    let prompt = if a.raw {
        model.tokenize(&a.prompt, true, false)?
    } else {
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(Message::system(s.clone()));
        }
        messages.push(Message::user(a.prompt.clone()));
        ChatTemplate::from_model(&model)?.tokenize(&model, &messages, None)?
    };
    // Each sequence stays within the positions the model was trained on.
    let n_ctx_train = model.n_ctx_train() as usize;
    let mut max_tokens = a.max_tokens;
    if n_ctx_train > 0 && prompt.len() + max_tokens > n_ctx_train {
        if prompt.len() >= n_ctx_train {
            bail!(
                "the prompt is {} tokens, more than the {n_ctx_train} the model was trained with",
                prompt.len()
            );
        }
        max_tokens = n_ctx_train - prompt.len();
        eprintln!(
            "--max-tokens {} lowered to {max_tokens}: the model was trained on {n_ctx_train} positions and the prompt takes {}",
            a.max_tokens,
            prompt.len()
        );
    }
    let n_ctx = ((prompt.len() + max_tokens) * (a.n + 1)).max(512) as u32;
    let config = DecoderConfig {
        n_ctx,
        n_seq_max: a.n as u32 + 1,
        n_threads: a.threads,
        ..Default::default()
    };
    let mut decoder = Decoder::new(model.clone(), &config)?;
    if let Some(path) = &a.adapter {
        decoder.set_adapter(Some(cleaner::LoraAdapter::load(&model, path)?))?;
    }
    let params: Vec<GenerateParams> = (0..a.n as u64)
        .map(|i| GenerateParams {
            sampling: SamplingParams {
                temperature: a.temperature,
                top_p: a.top_p,
                top_k: a.top_k,
                seed: a.seed.wrapping_add(i),
            },
            max_new_tokens: max_tokens,
            stop: a.stop.clone(),
            stop_at_eog: true,
            stop_after: None,
        })
        .collect();
    let t0 = Instant::now();
    let outs = decoder.generate_group(&prompt, &params)?;
    let secs = t0.elapsed().as_secs_f64();
    let total: usize = outs.iter().map(|g| g.tokens.len()).sum();
    for (i, g) in outs.iter().enumerate() {
        println!(
            "--- completion {} ({} tokens, stopped at {})",
            i + 1,
            g.tokens.len(),
            crate::render::finish_reason(&g.finish)
        );
        println!("{}", g.text);
    }
    eprintln!(
        "{} completions, {} prompt tokens, {} generated tokens in {:.2} s: {:.1} tokens/s",
        outs.len(),
        prompt.len(),
        total,
        secs,
        total as f64 / secs
    );
    Ok(())
}
