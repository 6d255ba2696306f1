//! `cleaner eval`: pass@1 over K samples per problem, with a 95 % interval.

use std::path::PathBuf;

use anyhow::{bail, Result};
use cleaner::agent::trajectory::write_jsonl;
use cleaner::models::adapter_file::atomic_write;
use cleaner::rl::MathReward;
use cleaner::rl::{checkpoint, evaluate};
use cleaner::session::{Session, SessionOptions};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct Args {
    /// Model short name or GGUF path.
    #[arg(long, default_value = cleaner::assets::DEFAULT_MODEL)]
    model: String,
    /// LoRA adapter: a llama.cpp GGUF adapter file, or a run directory (its
    /// newest checkpoint's adapter).
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    data: super::DataArgs,
    #[command(flatten)]
    agent: super::AgentArgs,
    /// Samples per problem (pass@1 is their mean).
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// First N problems (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// The paper evaluates at temperature 1.0, top-p 0.6.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0.6)]
    top_p: f32,
    /// Write the report (JSON) here; trajectories go next to it (.jsonl).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    if a.samples == 0 {
        bail!("--samples must be at least 1");
    }
    let data = a.data.load()?;
    let take = if a.limit == 0 { usize::MAX } else { a.limit };
    let items: Vec<_> = data
        .items
        .iter()
        .skip(a.offset)
        .take(take)
        .cloned()
        .collect();
    if items.is_empty() {
        bail!(
            "no problems selected from {} (offset {}, limit {})",
            a.data.dataset,
            a.offset,
            a.limit
        );
    }
    let agent = a.agent.config(a.temperature, a.top_p);
    let mut session = Session::open(
        &a.model,
        SessionOptions {
            agent,
            slots: (a.samples as u32 + 1).max(17),
            threads: a.agent.threads,
            max_prompt_tokens: 1024,
            ..Default::default()
        },
    )?;
    let adapter = match &a.adapter {
        Some(p) if p.is_dir() => Some(checkpoint::latest(p)?.join("adapter.gguf")),
        Some(p) => Some(p.clone()),
        None => None,
    };
    session.set_adapter(adapter.as_deref())?;
    eprintln!(
        "eval {} problems of {} x {} samples, model {}, adapter {}, purify {}",
        items.len(),
        a.data.dataset,
        a.samples,
        a.model,
        adapter
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none".into()),
        a.agent.purify
    );
    let bar = ProgressBar::new((items.len() * a.samples) as u64).with_style(
        ProgressStyle::with_template("rollouts [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let b = bar.clone();
    let (report, trajectories) = evaluate(
        &mut session,
        &items,
        a.samples,
        &MathReward::default(),
        &mut |done, _| b.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    println!(
        "pass@1 (mean over {} samples of {} problems): {:.3} +- {:.3} s.e., 95% interval {:.3}..{:.3}",
        a.samples, report.problems, report.accuracy, report.stderr, report.ci95.0, report.ci95.1
    );
    println!(
        "tool calls per trajectory {:.2}; failed calls per trajectory {:.2} raw, {:.2} kept; purify p = {}",
        report.tool_calls_per_trajectory,
        report.stats.failures_per_trajectory_raw,
        report.stats.failures_per_trajectory_kept,
        report.purify
    );
    println!("wall time {:.1} s", report.stats.wall_s);
    if let Some(out) = &a.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        // Trajectories first, then the report, each whole or not at all:
        // a report on disk means the evaluation and its trajectories are
        // complete (scripts that resume evaluations part by part rely on it).
        let tj = out.with_extension("jsonl");
        write_jsonl(&tj, &trajectories)?;
        atomic_write(out, serde_json::to_string_pretty(&report)?.as_bytes())?;
        println!("report {}, trajectories {}", out.display(), tj.display());
    }
    Ok(())
}
