//! `cleaner bench train`: one LoRA training step (forward + backward, rank 16
//! on all seven projections) over T tokens, tokens/s and peak RSS, next to
//! PyTorch + PEFT on the CPU doing the same step on the same model at the
//! same precision (dequantized from the same GGUF by `transformers` to f32
//! for our f32, to bf16 base weights for our bf16), with the same thread
//! count, measured in the same run (`tools/scripts/bench_train_torch.py`, in
//! an environment made in the cache on first use: see `python_env.rs`). The
//! header names the instruction sets each side dispatched to.
//!
//! Ours runs on each `--backend` in the same run: `cpu` (our kernels) once
//! per `--keep-mib` and `--precision` setting (keep 0 recomputes every block
//! in the backward pass, per-block checkpointing, the least memory; larger
//! values keep that much of the blocks' intermediates instead), and `ggml`
//! once on `--device` (it has neither setting). Peak memory is the process's
//! peak RSS for every backend: for ggml on the CPU it includes the weights
//! ggml copies into its own buffer; on a GPU device memory is not in it.
//! Each implementation's
//! rate is also given in useful GFLOP/s: the matrix work a step cannot avoid
//! (forward and input-gradient products of every projection and the
//! vocabulary, causal attention forward and backward), the same count for
//! both, so the figure can be held against the CPU's sgemm rate.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cleaner::assets::AssetStore;
use cleaner::kernels::matmul::Precision;
use cleaner::kernels::profile;
use cleaner::models::{LoraConfig, Transformer};
use cleaner::train::{nll_loss, AdamWConfig, BackendKind, DeviceKind, Trainer, TrainerBackend};

use super::{median, python_env};

#[derive(clap::Args)]
pub struct Args {
    /// Models (comma-separated asset names).
    #[arg(long, default_value = "smollm2-135m,qwen2.5-coder-0.5b")]
    models: String,
    /// Sequence lengths (comma-separated).
    #[arg(long, default_value = "512,2048")]
    tokens: String,
    /// Timed steps per cell (the median is reported).
    #[arg(long, default_value_t = 2)]
    reps: usize,
    /// Python for the PyTorch baseline: "venv" (made in the cache on first
    /// use: several GB of wheels), an interpreter with torch, transformers,
    /// peft and gguf, or "none" to leave the baseline out.
    #[arg(long, default_value = "venv")]
    python: String,
    /// Activation memory settings of ours to measure (MiB, comma-separated;
    /// 0 = recompute every block).
    #[arg(long, default_value = "0,2048")]
    keep_mib: String,
    /// Precisions of ours to measure (comma-separated: f32, bf16; bf16 runs
    /// f32 on CPUs without AVX-512 BF16, and the table says so).
    #[arg(long, default_value = "f32,bf16")]
    precision: String,
    /// Trainer backends to measure (comma-separated: cpu, ggml).
    #[arg(long, default_value = "cpu,ggml")]
    backend: String,
    /// Device of the ggml backend: auto, cpu, cuda, metal, vulkan.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: DeviceKind,
    /// Rounds per cell: ours and PyTorch take turns this many times, and the
    /// speed ratio is the median of the rounds' ratios, with their range, so
    /// that a slow spell of this shared machine lands on one round of both
    /// sides rather than on one side.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// After the table, where a step's time goes in each CPU setting of
    /// ours: the seconds of each part (projections, attention, norms, the
    /// vocabulary, AdamW, ...) per step, over every timed step.
    #[arg(long)]
    profile: bool,
}

fn parse_device(s: &str) -> Result<DeviceKind, String> {
    DeviceKind::parse(s)
        .ok_or_else(|| format!("{s:?} is not one of auto, cpu, cuda, metal, vulkan"))
}

/// One configuration of ours.
#[derive(Clone, Copy)]
enum Setting {
    /// Our CPU kernels: kept MiB of activations, precision.
    Cpu(usize, Precision),
    /// ggml on a device.
    Ggml(DeviceKind),
}

struct Cell {
    tok_s: f64,
    peak_mib: f64,
    /// What ran, in words (`cpu, keep 0 MiB, f32`, `ggml on CPU`).
    label: String,
    /// With `--profile`, on our CPU kernels: the parts' time summed over
    /// the timed steps, and how many steps.
    parts: Option<(Parts, usize)>,
}

type Parts = std::collections::BTreeMap<&'static str, profile::Part>;

/// The bench's own part: what the step spends outside the model's parts
/// (the loss closure, checks, the tape's allocation).
const STEP_REST: &str = "step: the rest (loss, checks)";

/// The matrix work one training step cannot avoid, in FLOPs: every
/// projection and the vocabulary projection forward and input-gradient
/// (2 x 2 T n_in n_out), causal attention forward (QK^T, PV: 2 T^2 q_dim per
/// block) and backward (four products: 4 T^2 q_dim). Recomputation and the
/// small LoRA products are not counted.
fn useful_flops(model: &Transformer, n_tok: usize) -> f64 {
    use cleaner::models::lora::{proj_shape, Proj};
    let c = model.config();
    let params: usize = (0..model.layers.len())
        .flat_map(|l| Proj::ALL.iter().map(move |&p| (l, p)))
        .map(|(l, p)| {
            let (o, i) = proj_shape(model, l, p);
            o * i
        })
        .sum::<usize>()
        + c.n_vocab * c.n_embd;
    let t = n_tok as f64;
    4.0 * t * params as f64 + 6.0 * t * t * (c.q_dim() * model.layers.len()) as f64
}

fn ours(
    path: &std::path::Path,
    n_tok: usize,
    reps: usize,
    setting: Setting,
    profiled: bool,
) -> Result<Cell> {
    // The previous cell's freed (and retained) heap would count in this
    // one's peak: give it back first.
    cleaner::train::release_freed_memory();
    super::kernels::reset_peak_rss();
    let model = Transformer::open(path)?;
    let n_vocab = model.config().n_vocab as u64;
    let tokens: Vec<u32> = (0..n_tok as u64)
        .map(|i| ((i * 7919 + 11) % n_vocab.min(32000)) as u32)
        .collect();
    let mut trainer = Trainer::new(
        model,
        LoraConfig {
            rank: 16,
            alpha: 32.0,
            ..Default::default()
        },
        AdamWConfig::default(),
        1,
    )?;
    let label = match setting {
        Setting::Cpu(keep_mib, precision) => {
            trainer.set_activation_memory(keep_mib << 20);
            trainer.set_precision(precision)?;
            let prec = match (precision, precision.effective()) {
                (Precision::F32, _) => "f32",
                (Precision::Bf16, Precision::Bf16) => "bf16",
                (Precision::Bf16, Precision::F32) => "bf16 (ran f32: no AVX-512 BF16)",
            };
            format!("cpu, keep {keep_mib} MiB, {prec}")
        }
        Setting::Ggml(device) => {
            let threads = rayon::current_num_threads();
            trainer
                .set_backend(TrainerBackend::ggml(device), threads)
                .with_context(|| format!("--backend ggml --device {}", device.name()))?;
            trainer.backend_name()
        }
    };
    let profiled = profiled && matches!(setting, Setting::Cpu(..));
    let weights = vec![1f32; n_tok - 1];
    let mut times = Vec::new();
    for rep in 0..WARMUP_STEPS + reps {
        // The warm-up steps (weights paged in, buffers allocated) are
        // neither timed nor profiled.
        let timed = rep >= WARMUP_STEPS;
        profile::set_enabled(profiled && timed);
        let s = Instant::now();
        let step = {
            let _t = profile::span(STEP_REST);
            let mut step = || -> Result<()> {
                trainer.accumulate(&tokens, |lp| nll_loss(lp, &weights).1)?;
                trainer.update()?;
                Ok(())
            };
            step()
        };
        profile::set_enabled(false);
        step?;
        if timed {
            times.push(s.elapsed().as_secs_f64());
        } else {
            let _ = profile::take();
        }
    }
    Ok(Cell {
        tok_s: n_tok as f64 / median(times),
        peak_mib: super::peak_rss_mib().unwrap_or(f64::NAN),
        label,
        parts: profiled.then(|| (profile::take(), reps)),
    })
}

/// Where a step's time goes in `cells` (one setting's rounds): each part's
/// seconds per step and share of the step, largest first.
fn parts_table(name: &str, n_tok: usize, cells: &[&Cell]) -> Option<String> {
    use std::fmt::Write;
    let mut sum = Parts::new();
    let mut steps = 0;
    for (parts, n) in cells.iter().filter_map(|c| c.parts.as_ref()) {
        for (k, p) in parts {
            let s = sum.entry(*k).or_default();
            s.seconds += p.seconds;
            s.calls += p.calls;
        }
        steps += n;
    }
    if steps == 0 {
        return None;
    }
    let total: f64 = sum.values().map(|p| p.seconds).sum();
    let mut rows: Vec<_> = sum.into_iter().collect();
    rows.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
    let mut out = format!(
        "\nWhere a step's time goes: {name}, T = {n_tok}, {} ({steps} steps; a part's own time, the parts inside it left out)\n\n| part | s per step | share | calls per step |\n|---|---|---|---|\n",
        cells[0].label
    );
    for (k, p) in rows {
        let _ = writeln!(
            out,
            "| {k} | {:.3} | {:.1} % | {} |",
            p.seconds / steps as f64,
            100.0 * p.seconds / total,
            p.calls / steps as u64
        );
    }
    let _ = writeln!(out, "| all | {:.3} | 100 % | |", total / steps as f64);
    Some(out)
}

/// One PyTorch + PEFT cell at `precision` (bf16: base weights in bf16,
/// adapter in f32); the reason when the baseline cannot run. Its label
/// names the instruction sets PyTorch reported.
fn torch(
    python: &Path,
    path: &std::path::Path,
    n_tok: usize,
    reps: usize,
    threads: usize,
    precision: Precision,
) -> Result<Cell, String> {
    let script = super::script("bench_train_torch.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script).args([
        path.to_string_lossy().as_ref(),
        &n_tok.to_string(),
        &reps.to_string(),
        &threads.to_string(),
        precision_name(precision),
        &WARMUP_STEPS.to_string(),
    ]);
    let v = super::python_env::run_baseline(python, &mut cmd)?;
    Ok(Cell {
        tok_s: v["tok_s"].as_f64().unwrap_or(f64::NAN),
        peak_mib: v["peak_mib"].as_f64().unwrap_or(f64::NAN),
        parts: None,
        label: format!(
            "{} ({})",
            precision_name(precision),
            v["cpu"].as_str().unwrap_or("?")
        ),
    })
}

/// Steps each side runs before the timed ones, ours and PyTorch's alike.
/// PyTorch + PEFT needs two on a 2-vCPU Zen 5 (2026-12-04): its steps took
/// 11.1, 7.3 and 4.6 s at T = 512 in bf16, the second still paying for
/// memory its allocator was settling (3.1 million page faults in a
/// 4-step run), so one warm-up step timed it at 70 tok/s for a steady
/// 110.
const WARMUP_STEPS: usize = 2;

fn precision_name(p: Precision) -> &'static str {
    match p {
        Precision::F32 => "f32",
        Precision::Bf16 => "bf16",
    }
}

/// The precision of PyTorch's cell a setting of ours is compared with: the
/// one it computes in (bf16 where the CPU runs it, else f32; ggml: f32).
fn baseline_precision(setting: Setting) -> Precision {
    match setting {
        Setting::Cpu(_, p) => p.effective(),
        Setting::Ggml(_) => Precision::F32,
    }
}

/// `median` or, over several rounds, `median (min-max)`.
fn ratio_text(ratios: &[f64]) -> String {
    let m = median(ratios.to_vec());
    if ratios.len() < 2 {
        return format!("{m:.2}");
    }
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{m:.2} ({lo:.2}-{hi:.2})")
}

fn list(flag: &str, s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|t| {
            t.trim()
                .parse()
                .with_context(|| format!("{flag}: {t:?} is not a whole number"))
        })
        .collect()
}

pub fn run(a: Args) -> Result<()> {
    let threads = rayon::current_num_threads();
    let lens = list("--tokens", &a.tokens)?;
    let keeps = list("--keep-mib", &a.keep_mib)?;
    let precisions = a
        .precision
        .split(',')
        .map(|p| match p.trim() {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => bail!("--precision: {other:?} is not f32 or bf16"),
        })
        .collect::<Result<Vec<_>>>()?;
    let mut settings = Vec::new();
    for b in a.backend.split(',') {
        match BackendKind::parse(b) {
            Some(BackendKind::Cpu) => settings.extend(
                keeps
                    .iter()
                    .flat_map(|&k| precisions.iter().map(move |&p| Setting::Cpu(k, p))),
            ),
            Some(BackendKind::Ggml) => settings.push(Setting::Ggml(a.device)),
            _ => bail!("--backend: {b:?} is not cpu or ggml"),
        }
    }
    if let Some(device) = settings.iter().find_map(|s| match s {
        Setting::Ggml(d) => Some(*d),
        Setting::Cpu(..) => None,
    }) {
        // A device the build lacks fails here, before any model is timed.
        TrainerBackend::ggml(device)
            .check()
            .with_context(|| format!("--device {}", device.name()))?;
    }
    if a.rounds == 0 || a.reps == 0 {
        bail!("--rounds and --reps must be at least 1");
    }
    let mut python = python_env::interpreter(&a.python, &python_env::TORCH);
    // The precisions PyTorch runs in: f32 first, each once.
    let mut baselines: Vec<Precision> = settings.iter().map(|&s| baseline_precision(s)).collect();
    baselines.sort_by_key(|&p| p == Precision::Bf16);
    baselines.dedup();
    println!(
        "LoRA step (forward + backward + AdamW, rank 16, q k v o gate up down), {threads} threads, median of {} steps after {WARMUP_STEPS} warm-up steps, {} round(s) alternating ours and PyTorch",
        a.reps, a.rounds
    );
    println!(
        "ours: {}; PyTorch's dispatch in its column",
        cleaner::kernels::cpu::kernels().describe()
    );
    println!("(each setting of ours against PyTorch + PEFT at the precision it computes in: f32 with f32, bf16 with bf16 base weights; useful GFLOP/s in parentheses; tok/s are medians over rounds; the speed ratio is the median of the rounds' ratios ours / PyTorch, with their range)\n");
    println!("| model | T | ours: backend, setting | ours tok/s | PyTorch+PEFT: precision (CPU) | PyTorch tok/s | speed ratio | ours peak RSS MiB | PyTorch peak RSS MiB | memory ratio |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut profiles = Vec::new();
    for name in a.models.split(',') {
        let path = AssetStore::default().resolve_model(name.trim(), &mut |l| eprintln!("{l}"))?;
        let flops = {
            let m = Transformer::open(&path)?;
            move |t| useful_flops(&m, t)
        };
        for &t in &lens {
            let gflops = |tok_s: f64| tok_s / t as f64 * flops(t) / 1e9;
            // rounds[r] = (ours per setting, PyTorch per baseline precision).
            let mut rounds = Vec::new();
            for _ in 0..a.rounds {
                let mine = settings
                    .iter()
                    .map(|&setting| ours(&path, t, a.reps, setting, a.profile))
                    .collect::<Result<Vec<_>>>()?;
                let theirs: Vec<Option<Cell>> = baselines
                    .iter()
                    .map(|&p| {
                        let py = python.as_deref()?;
                        torch(py, &path, t, a.reps, threads, p)
                            .map_err(|why| python_env::left_out(&python_env::TORCH, &why))
                            .ok()
                    })
                    .collect();
                if theirs.iter().all(Option::is_none) {
                    // Failed once, it would fail again: stop trying.
                    python = None;
                }
                rounds.push((mine, theirs));
            }
            for (i, &setting) in settings.iter().enumerate() {
                let b = baselines
                    .iter()
                    .position(|&p| p == baseline_precision(setting))
                    .expect("every setting's baseline precision is listed");
                let mine: Vec<&Cell> = rounds.iter().map(|r| &r.0[i]).collect();
                let torch_cells: Vec<&Cell> =
                    rounds.iter().filter_map(|r| r.1[b].as_ref()).collect();
                profiles.extend(parts_table(name, t, &mine));
                let tok_s = median(mine.iter().map(|c| c.tok_s).collect());
                let peak = mine.iter().map(|c| c.peak_mib).fold(f64::NAN, f64::max);
                let ratios: Vec<f64> = rounds
                    .iter()
                    .filter_map(|(m, p)| p[b].as_ref().map(|p| m[i].tok_s / p.tok_s))
                    .collect();
                let (label, pt, pm, sr, mr) = match torch_cells.first() {
                    None => (
                        "n/a".into(),
                        "n/a".into(),
                        "n/a".into(),
                        "n/a".into(),
                        "n/a".into(),
                    ),
                    Some(first) => {
                        let torch_tok_s = median(torch_cells.iter().map(|c| c.tok_s).collect());
                        let torch_peak = torch_cells
                            .iter()
                            .map(|c| c.peak_mib)
                            .fold(f64::NAN, f64::max);
                        (
                            first.label.clone(),
                            format!("{torch_tok_s:.1} ({:.0})", gflops(torch_tok_s)),
                            format!("{torch_peak:.0}"),
                            ratio_text(&ratios),
                            format!("{:.2}", peak / torch_peak),
                        )
                    }
                };
                println!(
                    "| {name} | {t} | {} | {tok_s:.1} ({:.0}) | {label} | {pt} | {sr} | {peak:.0} | {pm} | {mr} |",
                    mine[0].label,
                    gflops(tok_s),
                );
            }
        }
    }
    profiles.iter().for_each(|p| print!("{p}"));
    Ok(())
}
