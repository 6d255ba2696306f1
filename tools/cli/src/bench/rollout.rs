//! `cleaner bench rollout`: aggregate generated tokens/s at several batch sizes
//! next to llama.cpp's own `llama-batched-bench` (same model, threads, prompt
//! and generation lengths, shared prompt, unified KV cache), plus LoRA swap
//! latency, rollback latency and peak RSS.
//!
//! Fairness: batched-bench decodes `ntg` steps of `B` tokens and samples
//! nothing. We generate `ntg + 1` tokens per sequence, which is exactly `ntg`
//! decode steps of `B` tokens plus `ntg + 1` rounds of real sampling (with
//! temperature-1 log-probs), and count `B * ntg` tokens, so our figure carries
//! all our bookkeeping and one extra sampling round.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cleaner::models::{GgufWriter, Value};
use cleaner::{Decoder, DecoderConfig, GenerateParams, LoraAdapter, Model, SamplingParams, Token};

#[derive(clap::Args)]
pub struct Args {
    /// Models (short names or paths).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "smollm2-135m,qwen2.5-coder-0.5b"
    )]
    models: Vec<String>,
    /// Parallel sequences.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batch: Vec<usize>,
    /// Shared prompt length (tokens).
    #[arg(long, default_value_t = 128)]
    npp: usize,
    /// Generated tokens per sequence.
    #[arg(long, default_value_t = 64)]
    ntg: usize,
    /// Threads (default: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Path of llama-batched-bench (default: built by tools/scripts/build-batched-bench.sh).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Skip the llama.cpp baseline (reports our numbers only).
    #[arg(long)]
    no_baseline: bool,
    /// Repetitions of each latency measurement.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Flash attention for both engines: auto (llama.cpp decides), on, off.
    #[arg(long, default_value = "auto")]
    flash_attention: String,
    /// Throughput rounds, ours and llama.cpp's interleaved; medians reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

struct Row {
    model: String,
    batch: usize,
    ours: f64,
    theirs: Option<f64>,
}

pub fn run(a: Args) -> Result<()> {
    let threads = if a.threads > 0 {
        a.threads
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    };
    if a.batch.iter().any(|&b| b == 0 || b > 255) || a.npp == 0 || a.ntg == 0 {
        bail!("--batch values must be 1..=255 and --npp, --ntg at least 1");
    }
    let baseline = if a.no_baseline {
        None
    } else {
        Some(match a.baseline.clone() {
            Some(path) => path,
            None => super::build_with_script("build-batched-bench.sh", "llama-batched-bench")?,
        })
    };
    let mut rows = Vec::new();
    let mut extras = Vec::new();
    for spec in &a.models {
        let (path, model) = crate::cmd::load_model(spec)?;
        eprintln!("== {spec}: {}", path.display());
        for &b in &a.batch {
            let mut ours_runs = Vec::new();
            let mut theirs_runs = Vec::new();
            let case = TgCase {
                b,
                npp: a.npp,
                ntg: a.ntg,
                threads,
                fa: &a.flash_attention,
            };
            for _ in 0..a.rounds.max(1) {
                ours_runs.push(ours_tg(&model, case)?);
                if let Some(bin) = &baseline {
                    theirs_runs.push(theirs_tg(bin, &path, case)?);
                }
            }
            let ours = super::median(ours_runs);
            let theirs = (!theirs_runs.is_empty()).then(|| super::median(theirs_runs));
            eprintln!(
                "   B={b:<3} ours {ours:8.1} tok/s   llama.cpp {}",
                theirs
                    .map(|t| format!("{t:8.1} tok/s   ratio {:.3}", ours / t))
                    .unwrap_or_else(|| "-".into())
            );
            rows.push(Row {
                model: spec.clone(),
                batch: b,
                ours,
                theirs,
            });
        }
        let lat = latencies(&model, threads, a.reps)?;
        extras.push((spec.clone(), lat, super::peak_rss_mib().unwrap_or(f64::NAN)));
    }

    println!(
        "\nRollout throughput: generated tokens/s (median of {} interleaved rounds), shared prompt {} tokens, {} generated per sequence, {threads} threads",
        a.rounds.max(1),
        a.npp,
        a.ntg
    );
    println!("| model | parallel sequences | cleaner tok/s | llama-batched-bench tok/s | ratio |");
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        let (t, ratio) = match r.theirs {
            Some(t) => (format!("{t:.1}"), format!("{:.3}", r.ours / t)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {:.1} | {t} | {ratio} |",
            r.model, r.batch, r.ours
        );
    }
    println!("\n| model | LoRA load+set ms | LoRA set ms | rollback 64 of {} tokens ms | full re-prefill ms | rollback/full | peak RSS MiB |", LAT_SEQ);
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (m, l, rss) in &extras {
        println!(
            "| {m} | {:.2} | {:.4} | {:.1} | {:.1} | {:.3} | {:.0} |",
            l.lora_load_set_ms,
            l.lora_set_ms,
            l.rollback_ms,
            l.full_prefill_ms,
            l.rollback_ms / l.full_prefill_ms,
            rss
        );
    }
    Ok(())
}

/// A deterministic prompt of exactly `n` real-text tokens.
fn prompt_tokens(model: &Model, n: usize) -> Result<Vec<Token>> {
    let text =
        "The history of mathematics deals with the origin of discoveries in mathematics and the \
                mathematical methods and notation of the past. ";
    let mut toks = Vec::new();
    while toks.len() < n {
        toks.extend(model.tokenize(text, false, false)?);
    }
    toks.truncate(n);
    Ok(toks)
}

fn fa_choice(s: &str) -> Result<Option<bool>> {
    match s {
        "auto" => Ok(None),
        "on" => Ok(Some(true)),
        "off" => Ok(Some(false)),
        _ => bail!("--flash-attention must be auto, on or off, got {s:?}"),
    }
}

/// One generation-throughput measurement: `b` sequences after a shared
/// prompt of `npp` tokens, `ntg` generated each.
#[derive(Clone, Copy)]
struct TgCase<'a> {
    b: usize,
    npp: usize,
    ntg: usize,
    threads: usize,
    /// Flash attention: auto, on or off.
    fa: &'a str,
}

fn ours_tg(model: &Arc<Model>, case: TgCase) -> Result<f64> {
    let n_ctx = (case.npp + case.b * (case.ntg + 2) + 64) as u32;
    let cfg = DecoderConfig {
        n_ctx,
        n_seq_max: case.b as u32 + 1,
        n_batch: 512,
        n_threads: case.threads as i32,
        flash_attention: fa_choice(case.fa)?,
    };
    let mut decoder = Decoder::new(model.clone(), &cfg)?;
    let prompt = prompt_tokens(model, case.npp)?;
    // Warm-up outside the timing (page in weights, allocate buffers).
    decoder.generate(&[(
        prompt.clone(),
        GenerateParams {
            max_new_tokens: 4,
            stop_at_eog: false,
            ..Default::default()
        },
    )])?;
    let root = decoder.open_with(&prompt)?;
    decoder.next_logits(root)?;
    let mut seqs = Vec::new();
    for i in 0..case.b {
        let s = decoder.fork(root)?;
        decoder.start(
            s,
            GenerateParams {
                sampling: SamplingParams {
                    temperature: 1.0,
                    seed: i as u64,
                    ..Default::default()
                },
                max_new_tokens: case.ntg + 1,
                stop: Vec::new(),
                stop_at_eog: false,
                stop_after: None,
            },
        )?;
        seqs.push(s);
    }
    decoder.close(root);
    let t0 = Instant::now();
    let done = decoder.run_to_completion()?;
    let secs = t0.elapsed().as_secs_f64();
    if done.len() != case.b || done.iter().any(|(_, g)| g.tokens.len() != case.ntg + 1) {
        bail!("benchmark generation ended early");
    }
    Ok((case.b * case.ntg) as f64 / secs)
}

fn theirs_tg(bin: &Path, model: &Path, case: TgCase) -> Result<f64> {
    let n_ctx = case.npp + case.b * case.ntg + 64;
    // Offload exactly as our engine does: every layer in a GPU build, none otherwise.
    let gpu_layers = if cleaner::ModelParams::default().n_gpu_layers < 0 {
        "999"
    } else {
        "0"
    };
    let out = Command::new(bin)
        .arg("-m")
        .arg(model)
        .args([
            "-c",
            &n_ctx.to_string(),
            "-b",
            "512",
            "-ub",
            "512",
            "-t",
            &case.threads.to_string(),
            "-tb",
            &case.threads.to_string(),
        ])
        .args([
            "-npp",
            &case.npp.to_string(),
            "-ntg",
            &case.ntg.to_string(),
            "-npl",
            &case.b.to_string(),
            "-pps",
            "-kvu",
            "-ngl",
            gpu_layers,
            "-fa",
            case.fa,
        ])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("llama-batched-bench failed:\n{text}");
    }
    // Table row: | PP | TG | B | N_KV | T_PP | S_PP | T_TG | S_TG | T | S |
    for line in text.lines() {
        let cells: Vec<&str> = line
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        if cells.len() == 10 && cells[0] == case.npp.to_string() && cells[2] == case.b.to_string() {
            return cells[7]
                .parse::<f64>()
                .with_context(|| format!("parsing S_TG in {line:?}"));
        }
    }
    bail!("no result row in llama-batched-bench output:\n{text}")
}

const LAT_SEQ: usize = 512;

struct Latencies {
    lora_load_set_ms: f64,
    lora_set_ms: f64,
    rollback_ms: f64,
    full_prefill_ms: f64,
}

fn latencies(model: &Arc<Model>, threads: usize, reps: usize) -> Result<Latencies> {
    let reps = reps.max(1);
    let cfg = DecoderConfig {
        n_ctx: 2048,
        n_seq_max: 2,
        n_batch: 512,
        n_threads: threads as i32,
        ..Default::default()
    };
    let mut decoder = Decoder::new(model.clone(), &cfg)?;
    let toks = prompt_tokens(model, LAT_SEQ)?;
    let alt = prompt_tokens(model, LAT_SEQ + 64)?[LAT_SEQ..].to_vec();

    // Rollback: drop the last 64 tokens of a cached 512-token sequence and
    // prefill 64 others, vs prefilling all 512 in a fresh sequence.
    let seq = decoder.open_with(&toks)?;
    decoder.next_logits(seq)?;
    let mut rollback = Vec::new();
    let mut full = Vec::new();
    for r in 0..reps {
        let tail = if r % 2 == 0 {
            &alt
        } else {
            &toks[LAT_SEQ - 64..]
        };
        let t0 = Instant::now();
        decoder.truncate(seq, LAT_SEQ - 64)?;
        decoder.append(seq, tail)?;
        decoder.next_logits(seq)?;
        rollback.push(t0.elapsed().as_secs_f64() * 1e3);

        let t0 = Instant::now();
        let fresh = decoder.open_with(&toks)?;
        decoder.next_logits(fresh)?;
        full.push(t0.elapsed().as_secs_f64() * 1e3);
        decoder.close(fresh);
    }

    // LoRA: a rank-16 adapter on every attention and MLP projection.
    let dir = tempfile_dir()?;
    let path = dir.join("bench-adapter.gguf");
    write_full_adapter(model, &path, 16)?;
    let mut load_set = Vec::new();
    let mut set_only = Vec::new();
    for _ in 0..reps {
        decoder.set_adapter(None)?;
        let t0 = Instant::now();
        let adapter = LoraAdapter::load(model, &path)?;
        decoder.set_adapter(Some(adapter.clone()))?;
        load_set.push(t0.elapsed().as_secs_f64() * 1e3);
        decoder.set_adapter(None)?;
        let t0 = Instant::now();
        decoder.set_adapter(Some(adapter))?;
        set_only.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    decoder.set_adapter(None)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Latencies {
        lora_load_set_ms: super::median(load_set),
        lora_set_ms: super::median(set_only),
        rollback_ms: super::median(rollback),
        full_prefill_ms: super::median(full),
    })
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cleaner-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn write_full_adapter(model: &Model, path: &Path, rank: u64) -> Result<()> {
    let g = model.gguf();
    let mut w = GgufWriter::new();
    w.set(
        "general.architecture",
        Value::String(model.architecture().into()),
    )
    .set("general.type", Value::String("adapter".into()))
    .set("adapter.type", Value::String("lora".into()))
    .set("adapter.lora.alpha", Value::F32(rank as f32));
    for t in g.tensors() {
        let Some(base) = t.name.strip_suffix(".weight") else {
            continue;
        };
        let kind = base.rsplit('.').next().unwrap_or("");
        if ![
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ]
        .contains(&kind)
        {
            continue;
        }
        let (n_in, n_out) = (t.dims[0], t.dims[1]);
        let a: Vec<f32> = (0..n_in * rank)
            .map(|i| ((i % 7) as f32 - 3.0) * 1e-3)
            .collect();
        w.add_f32(&format!("{}.lora_a", t.name), &[n_in, rank], &a);
        w.add_f32(
            &format!("{}.lora_b", t.name),
            &[rank, n_out],
            &vec![0.0; (rank * n_out) as usize],
        );
    }
    std::fs::write(path, w.to_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
