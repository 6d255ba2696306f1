//! Checkpoints of a run: `RUN/checkpoints/step-NNNNNN/` holds the adapter,
//! the optimizer state and `state.json` (step, seeds, data position, the
//! config). A checkpoint is written into a temporary directory, every file
//! fsynced, then renamed into place and only then named in
//! `RUN/checkpoints/latest`; until that rename the previous checkpoint is
//! the one a resume finds, so a run killed at any moment loses at most the
//! step in progress.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::train::{TrainError, Trainer};
use cleaner_models::adapter_file::atomic_write;
use cleaner_models::Transformer;

/// Version of `state.json` this build writes and reads.
pub const STATE_VERSION: u32 = 1;

/// Everything besides adapter and optimizer that a resumed run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Always [`STATE_VERSION`].
    pub format_version: u32,
    /// Steps completed.
    pub step: u64,
    /// `grpo.seed`: prompt order, rollout seeds and adapter init derive from
    /// it and the step, so it is the whole random state.
    pub seed: u64,
    /// Problems drawn so far (the data position).
    pub prompts_drawn: u64,
    /// Seed of the next step's rollouts (derived; recorded for inspection).
    pub next_rollout_seed: u64,
    /// Wall seconds spent in completed steps.
    pub elapsed_s: f64,
    /// The run's config, as TOML.
    pub config: String,
}

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is malformed.
    #[error("{path}: {why}")]
    Invalid {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// What is wrong, in words.
        why: String,
    },
    /// The adapter or optimizer state could not be saved or loaded (boxed:
    /// the trainer's error is large, and every checkpoint call returns this).
    #[error(transparent)]
    Train(Box<TrainError>),
    /// The run has no complete checkpoint.
    #[error("{0}: no complete checkpoint")]
    None(PathBuf),
    /// The run has checkpoints, but none loads.
    #[error("{}: no checkpoint loads; {}", root.display(), describe(skipped))]
    AllDamaged {
        /// The run's checkpoint directory.
        root: PathBuf,
        /// Every checkpoint tried, newest first, and why it does not load.
        skipped: Vec<Skipped>,
    },
}

impl From<TrainError> for CheckpointError {
    fn from(e: TrainError) -> Self {
        CheckpointError::Train(Box::new(e))
    }
}

fn describe(skipped: &[Skipped]) -> String {
    let newest = skipped
        .first()
        .map(|s| format!("the newest, {}, is damaged: {}", s.dir.display(), s.why))
        .unwrap_or_default();
    match skipped.len() {
        0 | 1 => newest,
        n => format!("{newest} (and {} older ones)", n - 1),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The directory holding a run's checkpoints.
pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

fn step_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// Writes a checkpoint of `trainer` and `state` under `run`, then removes
/// all but the newest `keep`. Returns the checkpoint's directory.
pub fn write(
    run: &Path,
    trainer: &Trainer,
    state: &TrainState,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    let root = checkpoints_dir(run);
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    let name = step_name(state.step);
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    trainer.save(&tmp)?;
    let state_path = tmp.join("state.json");
    let json = serde_json::to_vec_pretty(state).map_err(|e| io(&state_path)(e.into()))?;
    atomic_write(&state_path, &json).map_err(io(&state_path))?;
    sync_dir(&tmp);
    let dir = root.join(&name);
    if dir.exists() {
        // A resumed run redoing this step: the old copy is not `latest`.
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    sync_dir(&root);
    let latest = root.join("latest");
    atomic_write(&latest, name.as_bytes()).map_err(io(&latest))?;
    prune(&root, keep.max(1), state.step);
    Ok(dir)
}

/// Removes complete checkpoints older than the newest `keep` (never the one
/// just written) and stale temporary directories.
fn prune(root: &Path, keep: usize, current: u64) {
    let mut steps = list(root);
    steps.sort();
    let n = steps.len();
    for (step, dir) in steps.into_iter().take(n.saturating_sub(keep)) {
        if step != current {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Complete checkpoint directories (those named `step-N`), with their steps.
fn list(root: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect()
}

/// Reads a checkpoint's state.
pub fn read_state(dir: &Path) -> Result<TrainState, CheckpointError> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| CheckpointError::Invalid {
        path: path.clone(),
        why: e.to_string(),
    })?;
    if state.format_version != STATE_VERSION {
        return Err(CheckpointError::Invalid {
            path,
            why: format!(
                "format_version {} (this build reads {STATE_VERSION})",
                state.format_version
            ),
        });
    }
    Ok(state)
}

/// A checkpoint newer than the one found that does not load, and why.
#[derive(Debug)]
pub struct Skipped {
    /// Its directory.
    pub dir: PathBuf,
    /// What is wrong with it.
    pub why: CheckpointError,
}

/// The checkpoint a resume starts from, and the newer ones passed over.
#[derive(Debug)]
pub struct Found {
    /// The newest checkpoint that loads.
    pub dir: PathBuf,
    /// Checkpoints tried before it that are damaged or incomplete, newest first.
    pub skipped: Vec<Skipped>,
}

/// The newest checkpoint of `run` that loads: the one `latest` names, else
/// (if that is missing or damaged) the highest complete step; each one passed
/// over is returned with the reason.
pub fn find_latest(run: &Path) -> Result<Found, CheckpointError> {
    let root = checkpoints_dir(run);
    let named = std::fs::read_to_string(root.join("latest"))
        .ok()
        .map(|n| root.join(n.trim()));
    let mut candidates: Vec<PathBuf> = named.into_iter().collect();
    let mut steps = list(&root);
    steps.sort_by_key(|s| std::cmp::Reverse(s.0));
    for (_, dir) in steps {
        if !candidates.contains(&dir) {
            candidates.push(dir);
        }
    }
    let mut skipped = Vec::new();
    for dir in candidates {
        match damage(&dir) {
            None => return Ok(Found { dir, skipped }),
            Some(why) => skipped.push(Skipped { dir, why }),
        }
    }
    if skipped.is_empty() {
        Err(CheckpointError::None(root))
    } else {
        Err(CheckpointError::AllDamaged { root, skipped })
    }
}

/// What keeps the checkpoint in `dir` from loading, if anything: a state
/// that does not read, or a missing adapter or optimizer file.
fn damage(dir: &Path) -> Option<CheckpointError> {
    if let Err(e) = read_state(dir) {
        return Some(e);
    }
    ["adapter.gguf", "optimizer.gguf"]
        .into_iter()
        .map(|file| dir.join(file))
        .find(|path| !path.is_file())
        .map(|path| CheckpointError::Invalid {
            path,
            why: "missing (the checkpoint is incomplete)".into(),
        })
}

/// [`find_latest`]'s checkpoint; each one passed over is logged as a warning,
/// so a resume never falls back without saying so.
pub fn latest(run: &Path) -> Result<PathBuf, CheckpointError> {
    let found = find_latest(run)?;
    for s in &found.skipped {
        log::warn!(
            "checkpoint {} skipped: {}; using {}",
            s.dir.display(),
            s.why,
            found.dir.display()
        );
    }
    Ok(found.dir)
}

/// Loads the trainer and state of checkpoint `dir` on `model`.
pub fn load(dir: &Path, model: Transformer) -> Result<(Trainer, TrainState), CheckpointError> {
    let state = read_state(dir)?;
    let trainer = Trainer::load(model, dir)?;
    Ok((trainer, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint as `write` leaves it, without a trainer: the state and
    /// the two files `find_latest` looks for.
    fn fake_checkpoint(run: &Path, step: u64) -> PathBuf {
        let dir = checkpoints_dir(run).join(step_name(step));
        std::fs::create_dir_all(&dir).unwrap();
        let state = TrainState {
            format_version: STATE_VERSION,
            step,
            seed: 1,
            prompts_drawn: 4 * step,
            next_rollout_seed: 7,
            elapsed_s: 1.5,
            config: String::new(),
        };
        std::fs::write(
            dir.join("state.json"),
            serde_json::to_vec_pretty(&state).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join("adapter.gguf"), b"a").unwrap();
        std::fs::write(dir.join("optimizer.gguf"), b"o").unwrap();
        std::fs::write(checkpoints_dir(run).join("latest"), step_name(step)).unwrap();
        dir
    }

    fn cut_short(file: &Path) {
        let text = std::fs::read(file).unwrap();
        std::fs::write(file, &text[..text.len() / 2]).unwrap();
    }

    #[test]
    fn a_damaged_newest_checkpoint_is_skipped_and_reported() {
        let run = tempfile::tempdir().unwrap();
        let older = fake_checkpoint(run.path(), 2);
        let newest = fake_checkpoint(run.path(), 3);
        cut_short(&newest.join("state.json"));

        let found = find_latest(run.path()).unwrap();
        assert_eq!(found.dir, older, "falls back to the one before");
        assert_eq!(found.skipped.len(), 1, "{:?}", found.skipped);
        assert_eq!(found.skipped[0].dir, newest);
        let why = found.skipped[0].why.to_string();
        assert!(
            matches!(&found.skipped[0].why, CheckpointError::Invalid { path, .. } if *path == newest.join("state.json")),
            "{why}"
        );
        assert_eq!(latest(run.path()).unwrap(), older);
    }

    #[test]
    fn an_incomplete_checkpoint_is_skipped_with_the_missing_file_named() {
        let run = tempfile::tempdir().unwrap();
        let older = fake_checkpoint(run.path(), 1);
        let newest = fake_checkpoint(run.path(), 2);
        std::fs::remove_file(newest.join("optimizer.gguf")).unwrap();

        let found = find_latest(run.path()).unwrap();
        assert_eq!(found.dir, older);
        assert_eq!(found.skipped.len(), 1);
        let why = found.skipped[0].why.to_string();
        assert!(
            why.contains("optimizer.gguf") && why.contains("missing"),
            "{why}"
        );
    }

    #[test]
    fn a_sound_newest_checkpoint_skips_nothing() {
        let run = tempfile::tempdir().unwrap();
        fake_checkpoint(run.path(), 1);
        let newest = fake_checkpoint(run.path(), 2);
        let found = find_latest(run.path()).unwrap();
        assert_eq!(found.dir, newest);
        assert!(found.skipped.is_empty(), "{:?}", found.skipped);
    }

    #[test]
    fn no_loadable_checkpoint_says_why() {
        let run = tempfile::tempdir().unwrap();
        assert!(matches!(
            find_latest(run.path()),
            Err(CheckpointError::None(_))
        ));
        let only = fake_checkpoint(run.path(), 1);
        cut_short(&only.join("state.json"));
        let err = find_latest(run.path()).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::AllDamaged { skipped, .. } if skipped.len() == 1),
            "{err}"
        );
        assert!(err.to_string().contains("state.json"), "{err}");
    }
}
