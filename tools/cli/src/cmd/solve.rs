use std::path::PathBuf;

use anyhow::{bail, Result};
use cleaner::agent::config::MATH_PROMPT_HERMES;
use cleaner::agent::trajectory::write_jsonl;
use cleaner::agent::{Agent, FormatKind, ToolFormat};
use cleaner::chat::ChatTemplate;
use cleaner::tasks::math_equal;
use cleaner::{Decoder, DecoderConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Model short name or GGUF path.
    #[arg(long, default_value = cleaner::assets::DEFAULT_MODEL)]
    model: String,
    #[command(flatten)]
    data: super::DataArgs,
    #[command(flatten)]
    agent: super::AgentArgs,
    /// First N problems.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Skip the first K problems.
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Rollouts per problem.
    #[arg(long, default_value_t = 4)]
    rollouts: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sequences decoded together (at least rollouts + 1).
    #[arg(long, default_value_t = 17)]
    slots: u32,
    /// Where to write the trajectories (JSONL).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let p = a.agent.purify.rollback_probability();
    let data = a.data.load()?;
    let items: Vec<_> = data
        .items
        .iter()
        .skip(a.offset)
        .take(a.limit)
        .cloned()
        .collect();
    if items.is_empty() {
        bail!(
            "no problems selected from {} ({} items, offset {}, limit {})",
            a.data.dataset,
            data.items.len(),
            a.offset,
            a.limit
        );
    }
    let (_, model) = super::load_model(&a.model)?;
    let sandbox = super::sandbox::open(None)?;
    let template = ChatTemplate::from_model(&model)?;
    let mut config = a.agent.config(a.temperature, a.top_p);
    let format = match a.agent.format {
        FormatKind::Markdown => ToolFormat::markdown(),
        FormatKind::Hermes => {
            config.user_prompt = MATH_PROMPT_HERMES.to_string();
            ToolFormat::hermes(&template)?
        }
    };
    let problems = cleaner::agent::prompt::problems(&template, &model, &config, &items)?;
    let longest = problems.iter().map(|p| p.prompt.len()).max().unwrap_or(0);
    let mut per_seq = config.cells_per_sequence(longest) + 256;
    // No sequence gets more positions than the model was trained on.
    let n_ctx_train = model.n_ctx_train() as usize;
    if n_ctx_train > 0 && per_seq > n_ctx_train {
        eprintln!(
            "each sequence would need up to {per_seq} positions (longest prompt {longest}, --max-response-tokens {}); \
             capped at the model's training context of {n_ctx_train}",
            a.agent.max_response_tokens
        );
        per_seq = n_ctx_train;
    }
    let policy_config = DecoderConfig {
        n_ctx: (per_seq as u32) * a.slots,
        n_seq_max: a.slots,
        n_batch: 512,
        n_threads: a.agent.threads,
        ..Default::default()
    };
    let mut decoder = Decoder::new(model.clone(), &policy_config)?;
    eprintln!(
        "{} problems x {} rollouts, purify {} (p = {p}), format {}, {} slots",
        problems.len(),
        a.rollouts,
        a.agent.purify,
        crate::render::format_kind(a.agent.format),
        a.slots
    );
    let (mut trajectories, stats) = {
        let mut agent = Agent::new(&mut decoder, &sandbox, format, config)?;
        agent.run(&problems, a.rollouts)?
    };
    let mut correct = 0usize;
    for t in &mut trajectories {
        let truth = &items
            .iter()
            .find(|i| i.id == t.problem_id)
            .map(|i| i.answer.clone())
            .unwrap_or_default();
        let ok = t
            .answer
            .as_deref()
            .is_some_and(|ans| math_equal(ans, truth));
        t.reward = Some(if ok { 1.0 } else { -1.0 });
        correct += ok as usize;
    }
    let n = trajectories.len();
    let acc = correct as f64 / n as f64;
    let se = (acc * (1.0 - acc) / n as f64).sqrt();
    let (lo, hi) = cleaner::rl::eval::wilson(acc, n as f64);
    let out = a.out.unwrap_or_else(|| {
        PathBuf::from(format!(
            "runs/solve-{}-{}.jsonl",
            a.data.dataset, a.agent.purify
        ))
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    write_jsonl(&out, &trajectories)?;
    println!(
        "accuracy (pass@1, mean over {n} rollouts): {acc:.3} +- {se:.3} s.e. (95% Wilson interval {lo:.3}..{hi:.3})"
    );
    println!(
        "wall time: {:.1} s ({:.1} s per problem)",
        stats.wall_s,
        stats.wall_s / problems.len() as f64
    );
    println!("{}", serde_json::to_string_pretty(&stats)?);
    println!("trajectories: {}", out.display());
    Ok(())
}
