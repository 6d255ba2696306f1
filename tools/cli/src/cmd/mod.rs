pub mod eval;
pub mod fetch;
pub mod generate;
pub mod passrate;
pub mod report;
pub mod sandbox;
pub mod serve;
pub mod show;
pub mod solve;
pub mod train;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use cleaner::assets::AssetStore;
use cleaner::tasks::dataset::default_data_dir;
use cleaner::tasks::{Dataset, Fields};
use cleaner::{Model, ModelParams};

/// Resolves a model name or path (fetching it on first use) and loads it.
pub fn load_model(spec: &str) -> Result<(PathBuf, Arc<Model>)> {
    let path = AssetStore::default().resolve_model(spec, &mut |line| eprintln!("{line}"))?;
    let model = Model::load(&path, &ModelParams::default());
    // The load error names the file; a short name is added, a path would repeat.
    let model = if path == Path::new(spec) {
        model?
    } else {
        model.with_context(|| format!("model {spec}"))?
    };
    Ok((path, Arc::new(model)))
}

/// Which problems: a named dataset or a `.jsonl` file (`eval`, `solve`).
#[derive(clap::Args)]
pub struct DataArgs {
    /// gsm8k (test split), gsm8k-train, gsm8k-train-filtered, aime24, amc23,
    /// or a .jsonl file.
    #[arg(long, default_value = "gsm8k")]
    pub dataset: String,
    /// Folder holding the named datasets (default: $CLEANER_DATA, else the
    /// repository's data/).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl DataArgs {
    /// Loads the named dataset (from `data_dir`, default the repository's
    /// data/) or the `.jsonl` file.
    pub fn load(&self) -> Result<Dataset> {
        let data_dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
        let data = Dataset::load(&self.dataset, &data_dir, &Fields::default());
        // The error names the file; a dataset's name is added, a path would repeat.
        if self.dataset.ends_with(".jsonl") {
            Ok(data?)
        } else {
            data.with_context(|| format!("dataset {}", self.dataset))
        }
    }
}

/// How the agent runs (`eval`, `solve`).
#[derive(clap::Args)]
pub struct AgentArgs {
    /// Purification: on, off, or a rollback probability in [0, 1] (the paper
    /// evaluates CLEANER-trained models with it on).
    #[arg(long, default_value = "on")]
    pub purify: cleaner::agent::Purify,
    /// Tool-call format: markdown or hermes.
    #[arg(long, default_value = "markdown")]
    pub format: cleaner::agent::FormatKind,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 768)]
    pub max_response_tokens: usize,
    #[arg(long, default_value_t = 6)]
    pub max_turns: usize,
    #[arg(long, default_value_t = 0)]
    pub threads: i32,
}

impl AgentArgs {
    /// The agent's config from these options, sampling at `temperature` and
    /// `top_p` (whose defaults differ between commands).
    pub fn config(&self, temperature: f32, top_p: f32) -> cleaner::agent::AgentConfig {
        let mut config = cleaner::agent::AgentConfig {
            format: self.format,
            rollback_probability: self.purify.rollback_probability(),
            max_response_tokens: self.max_response_tokens,
            max_turns: self.max_turns,
            ..Default::default()
        };
        config.sampling.temperature = temperature;
        config.sampling.top_p = top_p;
        config.sampling.seed = self.seed;
        config
    }
}
