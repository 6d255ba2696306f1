//! `cleaner bench ...`: measurements against baselines run in the same process.

use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum Which {
    /// Rollout throughput vs llama.cpp's llama-batched-bench, LoRA swap and rollback latency.
    Rollout(crate::bench::rollout::Args),
}

pub mod rollout {
    #[derive(clap::Args)]
    pub struct Args {}
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Rollout(_) => anyhow::bail!("not built yet"),
    }
}
