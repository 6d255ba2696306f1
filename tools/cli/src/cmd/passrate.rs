//! `cleaner passrate`: how often the current model solves each problem of a
//! training set, and the set filtered to the problems a GRPO group can
//! learn from (neither always failed nor always solved). Resumable: run it
//! again with the same `--out` (and a larger `--problems` for more).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cleaner::rl::grpo::open_session;
use cleaner::rl::pass_rate::{filtered_jsonl, measure, PassRateSettings};
use cleaner::rl::RunConfig;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::Digest;

#[derive(clap::Args)]
pub struct Args {
    /// The run config whose model, dataset, agent and engine are measured
    /// (shipped name or TOML file): the settings training will use.
    #[arg(long, default_value = "quickstart")]
    config: String,
    /// LoRA adapter (llama.cpp GGUF) to measure with, e.g. a run's latest.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Override data.dataset.
    #[arg(long)]
    dataset: Option<String>,
    /// Rollouts per problem.
    #[arg(long, default_value_t = 8)]
    samples: usize,
    /// Problems to measure, in a seeded shuffle of the dataset (the budget,
    /// rounded up to whole --chunk; more later resumes).
    #[arg(long)]
    problems: usize,
    /// Problems rolled out together (slots = chunk x samples).
    #[arg(long, default_value_t = 2)]
    chunk: usize,
    /// Seed of the problem order and of the rollouts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep problems solved this many times, MIN-MAX (default: 1 to
    /// samples - 1, i.e. drop never and always solved).
    #[arg(long)]
    keep: Option<String>,
    /// Output folder: passrate.json (settings), passrates.jsonl (one record
    /// per problem), filtered.jsonl (the kept problems, a dataset).
    #[arg(long)]
    out: PathBuf,
}

fn keep_range(a: &Args) -> Result<std::ops::RangeInclusive<usize>> {
    let Some(text) = &a.keep else {
        return Ok(1..=a.samples.saturating_sub(1));
    };
    let parsed = text
        .split_once('-')
        .and_then(|(lo, hi)| Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?)));
    match parsed {
        Some((lo, hi)) if lo <= hi && hi <= a.samples => Ok(lo..=hi),
        _ => bail!(
            "--keep {text:?}: expected MIN-MAX with MIN <= MAX <= --samples ({})",
            a.samples
        ),
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.samples == 0 || a.chunk == 0 || a.problems == 0 {
        bail!("--samples, --chunk and --problems must be at least 1");
    }
    let keep = keep_range(&a)?;
    let mut config = RunConfig::load(&a.config)?;
    if let Some(d) = &a.dataset {
        config.data.dataset = d.clone();
    }
    // The engine holds one chunk's rollouts; a "group" here is one
    // problem's samples (what the config's training checks look at).
    let slots = a
        .chunk
        .checked_mul(a.samples)
        .and_then(|n| u32::try_from(n + 1).ok())
        .context("--chunk x --samples is too large")?;
    config.engine.slots = slots;
    config.grpo.group_size = a.samples;
    config
        .validate()
        .map_err(|(key, why)| anyhow::anyhow!("{}: {key}: {why}", a.config))?;
    let items = config.data.load()?;
    let adapter_sha256 = a
        .adapter
        .as_ref()
        .map(|p| {
            std::fs::read(p)
                .map(|b| format!("{:x}", sha2::Sha256::digest(&b)))
                .with_context(|| p.display().to_string())
        })
        .transpose()?;
    let mut agent = config.agent.clone();
    agent.sampling.seed = 0; // every chunk sets its own
    let settings = PassRateSettings {
        dataset: config.data.dataset.clone(),
        dataset_len: items.len(),
        fields: serde_json::json!({
            "question": config.data.question_fields,
            "answer": config.data.answer_field,
            "id": config.data.id_field,
        }),
        model: config.model.clone(),
        adapter: a.adapter.clone(),
        adapter_sha256,
        samples: a.samples,
        seed: a.seed,
        chunk: a.chunk,
        agent: serde_json::to_value(&agent).context("agent settings")?,
        reward: serde_json::to_value(config.reward).context("reward settings")?,
        max_prompt_tokens: config.engine.max_prompt_tokens,
    };
    let mut session = open_session(&config)?;
    session.set_adapter(a.adapter.as_deref())?;
    let problems = a.problems.min(items.len());
    eprintln!(
        "pass rates of {problems} problems of {} x {} rollouts, model {}, adapter {}, into {}",
        settings.dataset,
        a.samples,
        config.model,
        a.adapter
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string()),
        a.out.display()
    );
    let bar = ProgressBar::new(problems as u64).with_style(
        ProgressStyle::with_template("problems [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let b = bar.clone();
    let records = measure(
        &mut session,
        &items,
        &settings,
        problems,
        &config.reward,
        &a.out,
        &mut |done, _| b.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    let mut histogram = vec![0usize; a.samples + 1];
    let mut skipped = 0;
    for r in &records {
        if r.samples == 0 {
            skipped += 1;
        } else {
            histogram[r.solved.min(a.samples)] += 1;
        }
    }
    println!("solved of {} | problems", a.samples);
    println!("---|---");
    for (k, n) in histogram.iter().enumerate() {
        println!("{k} | {n}");
    }
    if skipped > 0 {
        println!("skipped (prompt over engine.max_prompt_tokens): {skipped}");
    }
    let filtered = a.out.join("filtered.jsonl");
    let text = filtered_jsonl(&items, &records, keep.clone(), &config.data.fields());
    cleaner::models::adapter_file::atomic_write(&filtered, text.as_bytes())
        .with_context(|| filtered.display().to_string())?;
    println!(
        "kept {} of {} problems (solved {}-{} of {}): {}",
        text.lines().count(),
        records.len(),
        keep.start(),
        keep.end(),
        a.samples,
        filtered.display()
    );
    Ok(())
}
