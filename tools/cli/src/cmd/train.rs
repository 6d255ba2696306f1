//! `cleaner train`: GRPO with CLEANER from a config, resumable.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cleaner::agent::config::Purify;
use cleaner::rl::{Grpo, MatmulPrecision, Progress, RunConfig};
use cleaner::train::{BackendKind, DeviceKind, TrainerBackend};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct Args {
    /// Shipped config (quickstart, gsm8k-qwen0.5b, paper-qwen3-4b) or a TOML file.
    #[arg(long, default_value = "quickstart")]
    config: String,
    /// Run directory (default runs/train-<config>-<purify>).
    #[arg(long)]
    run: Option<PathBuf>,
    /// Continue the run in DIR from its newest complete checkpoint.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["run", "config"])]
    resume: Option<PathBuf>,
    /// Override grpo.steps (the total budget, counting steps already done).
    #[arg(long)]
    steps: Option<u64>,
    /// Override agent.rollback_probability: on, off, or P in [0, 1].
    #[arg(long)]
    purify: Option<Purify>,
    /// Override grpo.seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override the model (short name or GGUF path).
    #[arg(long)]
    model: Option<String>,
    /// Override data.limit (train on the first N problems).
    #[arg(long)]
    limit: Option<usize>,
    /// Override data.data_dir (folder of the named datasets; default
    /// `$CLEANER_DATA` or the repository's data/).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Override trainer.backend: auto (the build's GPU if present, else
    /// cpu), cpu (our CPU kernels) or ggml (ggml graphs on --device).
    #[arg(long, value_parser = parse_backend)]
    backend: Option<BackendKind>,
    /// Override trainer.device (where ggml runs): auto, cuda, metal, vulkan
    /// or cpu.
    #[arg(long, value_parser = parse_device)]
    device: Option<DeviceKind>,
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    BackendKind::parse(s).ok_or_else(|| format!("{s:?} is not one of auto, cpu, ggml"))
}

fn parse_device(s: &str) -> Result<DeviceKind, String> {
    DeviceKind::parse(s)
        .ok_or_else(|| format!("{s:?} is not one of auto, cpu, cuda, metal, vulkan"))
}

/// The flags' backend over the config's; checked and started once here, so
/// a device the build lacks or that is absent is an error naming the flags
/// before a model is loaded.
fn trainer_backend(a: &Args, config: TrainerBackend) -> Result<TrainerBackend> {
    let chosen = TrainerBackend {
        backend: a.backend.unwrap_or(config.backend),
        device: a.device.unwrap_or(config.device),
    };
    if a.backend.is_some() || a.device.is_some() {
        let flags = format!(
            "--backend {} --device {}",
            chosen.backend.name(),
            chosen.device.name()
        );
        let what = chosen.describe().with_context(|| flags.clone())?;
        eprintln!("trainer ({flags}): {what}");
    }
    Ok(chosen)
}

pub fn run(a: Args) -> Result<()> {
    let mut grpo = if let Some(dir) = &a.resume {
        if a.purify.is_some()
            || a.seed.is_some()
            || a.model.is_some()
            || a.limit.is_some()
            || a.data_dir.is_some()
        {
            bail!("--resume continues a run with its own config; only --steps may change");
        }
        let mut grpo = Grpo::resume(dir, a.steps)?;
        if a.backend.is_some() || a.device.is_some() {
            let backend = trainer_backend(&a, grpo.config().trainer.backend())?;
            grpo.set_trainer_backend(backend)?;
        }
        grpo
    } else {
        let mut config = RunConfig::load(&a.config)?;
        if let Some(p) = a.purify {
            config.agent.rollback_probability = p.rollback_probability();
        }
        if let Some(s) = a.steps {
            config.grpo.steps = s;
        }
        if let Some(s) = a.seed {
            config.grpo.seed = s;
        }
        if let Some(m) = &a.model {
            config.model = m.clone();
        }
        if let Some(l) = a.limit {
            config.data.limit = l;
        }
        if let Some(d) = &a.data_dir {
            config.data.data_dir = Some(d.clone());
        }
        let backend = trainer_backend(&a, config.trainer.backend())?;
        (config.trainer.backend, config.trainer.device) = (backend.backend, backend.device);
        if a.backend == Some(BackendKind::Ggml) && config.trainer.precision == MatmulPrecision::Bf16
        {
            // The config's bf16 is the CPU kernels' setting; --backend ggml
            // on the command line asks for f32 products.
            eprintln!("trainer: --backend ggml multiplies in f32; the config's precision bf16 is set to f32");
            config.trainer.precision = MatmulPrecision::F32;
        }
        config
            .validate()
            .map_err(|(key, why)| anyhow::anyhow!("key `{key}`: {why}"))?;
        let name = std::path::Path::new(&a.config)
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| a.config.clone());
        let purify = match config.agent.rollback_probability {
            1.0 => "on".to_string(),
            0.0 => "off".to_string(),
            p => format!("p{p}"),
        };
        let run = a
            .run
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("runs/train-{name}-{purify}")));
        Grpo::new(config, &run)?
    };
    let c = grpo.config().clone();
    eprintln!(
        "run {}: model {}, {} steps x {} prompts x {} rollouts, purify p = {}, lr {}, from step {}",
        grpo.run_dir().display(),
        c.model,
        c.grpo.steps,
        c.grpo.prompts_per_step,
        c.grpo.group_size,
        c.agent.rollback_probability,
        c.optim.lr,
        grpo.step()
    );
    let bar = ProgressBar::new(0);
    bar.enable_steady_tick(Duration::from_millis(500));
    let style = |what: &str| {
        ProgressStyle::with_template(&format!(
            "{{prefix}} {what:>9} [{{bar:30}}] {{pos}}/{{len}} {{elapsed_precise}}"
        ))
        .expect("valid template")
        .progress_chars("=> ")
    };
    let (roll, upd) = (style("rollouts"), style("training"));
    let b = bar.clone();
    grpo = grpo.with_progress(move |p| match p {
        Progress::Rollouts { step, done, total } => {
            b.set_style(roll.clone());
            b.set_prefix(format!("step {step}"));
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
        Progress::Training { step, done, total } => {
            b.set_style(upd.clone());
            b.set_prefix(format!("step {step}"));
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
        Progress::StepDone(m) => {
            let line = format!(
                "step {:>3}: reward {:+.3} acc {:.3} | failures/traj raw {:.2} kept {:.2} | rollbacks {}s/{}d | trained {} seqs ({} degenerate groups) | clip {:.3} kl0 {} H {} |g| {:.3} | {:.0}s (rollout {:.0}, train {:.0})",
                m.step,
                m.reward_mean,
                m.accuracy,
                m.failures_raw,
                m.failures_kept,
                m.rollbacks_shallow,
                m.rollbacks_deep,
                m.trained_sequences,
                m.degenerate_groups,
                m.clip_fraction,
                m.kl_to_start.map(|k| format!("{k:.2e}")).unwrap_or_else(|| "-".into()),
                m.entropy.map(|h| format!("{h:.3}")).unwrap_or_else(|| "-".into()),
                m.grad_norm,
                m.time_step_s,
                m.time_rollout_s,
                m.time_train_s
            );
            // A hidden bar (no terminal) drops its println: log lines must not be lost.
            if b.is_hidden() {
                eprintln!("{line}");
            } else {
                b.println(line);
            }
        }
    });
    let steps = grpo.run()?;
    bar.finish_and_clear();
    let run = grpo.run_dir().to_path_buf();
    eprintln!(
        "{} steps done; metrics {}, checkpoints {}; `cleaner report {}` draws the curves",
        steps.len(),
        run.join("metrics.jsonl").display(),
        run.join("checkpoints").display(),
        run.display()
    );
    Ok(())
}
