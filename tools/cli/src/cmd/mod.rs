pub mod eval;
pub mod fetch;
pub mod generate;
pub mod report;
pub mod sandbox;
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

/// Loads a named dataset (from `data_dir`, default the repository's data/) or
/// a `.jsonl` file.
pub fn load_dataset(spec: &str, data_dir: Option<&Path>) -> Result<Dataset> {
    let data_dir = data_dir.map_or_else(default_data_dir, Path::to_path_buf);
    let data = Dataset::load(spec, &data_dir, &Fields::default());
    // The error names the file; a dataset's name is added, a path would repeat.
    if spec.ends_with(".jsonl") {
        Ok(data?)
    } else {
        data.with_context(|| format!("dataset {spec}"))
    }
}
