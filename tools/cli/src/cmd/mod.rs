pub mod eval;
pub mod fetch;
pub mod generate;
pub mod report;
pub mod sandbox;
pub mod show;
pub mod solve;
pub mod train;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use cleaner::assets::AssetStore;
use cleaner::{Model, ModelParams};

/// Resolves a model name or path (fetching it on first use) and loads it.
pub fn load_model(spec: &str) -> Result<(PathBuf, Arc<Model>)> {
    let path = AssetStore::default().resolve_model(spec, &mut |line| eprintln!("{line}"))?;
    let model = Model::load(&path, &ModelParams::default())
        .with_context(|| format!("loading model {spec}"))?;
    Ok((path, Arc::new(model)))
}
