//! `cleaner bench group`: a GRPO group's training passes with the prompt
//! its rollouts share computed once (`[trainer] shared_prefix`, the
//! default) next to every sequence computed whole, in the same run, on our
//! CPU kernels. Both passes of a step are timed: the forward-only pass
//! (old log-probs of later mini-batches, the reference's log-probs for the
//! KL) and forward + backward + AdamW. Rates count every sequence's tokens
//! (what the step trains on), so the ratio is the step's speed-up.
//!
//! The defaults are the shapes of the quickstart when it was measured
//! (measurements/train-shared-prefix): a group of 6, a 155-token prompt (the
//! median of the tool-use system prompt plus a GSM8K question for Qwen2.5),
//! responses of 210-390 tokens (mean 300, under its 320-token response
//! budget then, plus tool output).

use std::time::Instant;

use anyhow::{bail, Result};
use cleaner::assets::AssetStore;
use cleaner::kernels::matmul::Precision;
use cleaner::models::{LoraConfig, Transformer};
use cleaner::train::{nll_loss, AdamWConfig, Trainer};

use super::median;

#[derive(clap::Args)]
pub struct Args {
    /// Model (asset name).
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    /// Tokens of the prompt the group shares.
    #[arg(long, default_value_t = 155)]
    prompt: usize,
    /// Mean tokens after the prompt; the group's responses spread evenly
    /// over 0.7x-1.3x of it.
    #[arg(long, default_value_t = 300)]
    response: usize,
    /// Rollouts in the group.
    #[arg(long, default_value_t = 6)]
    group: usize,
    /// Rounds: shared and whole take turns this many times; tok/s and the
    /// ratio are medians over rounds.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Precision of the products: f32 or bf16.
    #[arg(long, default_value = "f32")]
    precision: String,
}

/// The group's sequences: one prompt, then responses of different lengths.
fn group_tokens(a: &Args, n_vocab: usize) -> Vec<Vec<u32>> {
    let id = |i: usize| ((i * 7919 + 11) % n_vocab.min(32000)) as u32;
    let prompt: Vec<u32> = (0..a.prompt).map(id).collect();
    (0..a.group)
        .map(|g| {
            let spread = if a.group > 1 {
                0.7 + 0.6 * g as f64 / (a.group - 1) as f64
            } else {
                1.0
            };
            let n = ((a.response as f64 * spread).round() as usize).max(1);
            let response = (0..n).map(|i| id(a.prompt + 1000 * (g + 1) + i));
            prompt.iter().copied().chain(response).collect()
        })
        .collect()
}

/// Seconds of (forward-only pass, training pass) over the group.
fn time_passes(trainer: &mut Trainer, seqs: &[&[u32]], shared: bool) -> Result<(f64, f64)> {
    trainer.set_shared_prefix(shared);
    let s = Instant::now();
    trainer.logprobs_group(seqs, true)?;
    let forward = s.elapsed().as_secs_f64();
    let s = Instant::now();
    trainer.accumulate_group(seqs, |_, lp| nll_loss(lp, &vec![1.0; lp.len()]).1)?;
    trainer.update()?;
    Ok((forward, s.elapsed().as_secs_f64()))
}

pub fn run(a: Args) -> Result<()> {
    if a.rounds == 0 || a.group == 0 || a.prompt == 0 {
        bail!("--rounds, --group and --prompt must be at least 1");
    }
    let precision = match a.precision.as_str() {
        "f32" => Precision::F32,
        "bf16" => Precision::Bf16,
        other => bail!("--precision: {other:?} is not f32 or bf16"),
    };
    let path = AssetStore::default().resolve_model(&a.model, &mut |l| eprintln!("{l}"))?;
    let model = Transformer::open(&path)?;
    let seqs = group_tokens(&a, model.config().n_vocab);
    let tokens: usize = seqs.iter().map(Vec::len).sum();
    let views: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let lora = LoraConfig {
        rank: 16,
        alpha: 32.0,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, lora, AdamWConfig::default(), 1)?;
    trainer.set_precision(precision)?;
    let threads = rayon::current_num_threads();
    println!(
        "GRPO group on {}: {} rollouts after a {}-token prompt, {tokens} sequence tokens; {threads} threads, {:?}, {} round(s) alternating",
        a.model, a.group, a.prompt, precision, a.rounds
    );
    // Warm-up: pages the weights in.
    time_passes(&mut trainer, &views[..1], false)?;
    let mut rounds = Vec::new();
    for r in 0..a.rounds {
        // Alternate which goes first, so a slow spell hits both.
        let (first, second) = if r % 2 == 0 {
            (false, true)
        } else {
            (true, false)
        };
        let x = time_passes(&mut trainer, &views, first)?;
        let y = time_passes(&mut trainer, &views, second)?;
        let (whole, shared) = if first { (y, x) } else { (x, y) };
        rounds.push((whole, shared));
    }
    println!("\n| pass | whole sequences tok/s | shared prompt tok/s | speed-up |");
    println!("|---|---|---|---|");
    let rate = |s: f64| tokens as f64 / s;
    for (name, pick) in [
        ("forward (old / reference log-probs)", 0),
        ("forward + backward + AdamW", 1),
    ] {
        let get = |p: (f64, f64)| if pick == 0 { p.0 } else { p.1 };
        let whole = median(rounds.iter().map(|r| rate(get(r.0))).collect());
        let shared = median(rounds.iter().map(|r| rate(get(r.1))).collect());
        let ratio = median(rounds.iter().map(|r| get(r.0) / get(r.1)).collect());
        println!("| {name} | {whole:.1} | {shared:.1} | {ratio:.2}x |");
    }
    Ok(())
}
