//! How an error reaches the terminal: its chain of causes, each said once,
//! then what to do about it where the tool knows.
//!
//! Most of the workspace's error types follow the `"{path}: {source}"`
//! pattern: their message already holds their source's text, and they return
//! that source from `source()` too, so a plain walk of the chain (`{:#}`)
//! printed every such cause twice. A cause whose text is already in the line
//! is therefore left out; nothing is lost, it is there.

use std::io::ErrorKind;

use cleaner::rl::checkpoint::CheckpointError;
use cleaner::rl::GrpoError;
use cleaner::tasks::DatasetError;

/// The error as one line (`error: ...` without the prefix), causes joined by
/// `: `, each cause once.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line
}

/// What the user can do about the error, when the tool knows.
pub fn hint(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|cause| {
        let grpo = cause.downcast_ref::<GrpoError>();
        let dataset = cause.downcast_ref::<DatasetError>().or(match grpo {
            Some(GrpoError::Dataset(d)) => Some(d),
            _ => None,
        });
        let checkpoint = cause.downcast_ref::<CheckpointError>().or(match grpo {
            Some(GrpoError::Checkpoint(c)) => Some(c),
            _ => None,
        });
        match (dataset, checkpoint) {
            (Some(DatasetError::Io { source, .. }), _) if source.kind() == ErrorKind::NotFound => {
                Some(MISSING_DATASET)
            }
            (_, Some(CheckpointError::None(_))) => Some(NO_CHECKPOINT),
            _ => None,
        }
        .map(str::to_string)
    })
}

/// What to do when a dataset file is not there.
const MISSING_DATASET: &str =
    "the named datasets (gsm8k, gsm8k-train, gsm8k-train-filtered, aime24, amc23) are read \
     from the data directory: point --data-dir or CLEANER_DATA at it (data.data_dir in a \
     training config); --dataset (data.dataset) also takes the path of a .jsonl file";

/// What to do when a run has no checkpoint to continue from.
const NO_CHECKPOINT: &str = "a run has a checkpoint once its first step is done; \
     `cleaner train --run DIR` starts a new one";

/// The full text main prints for an error: the line, then the hint if any.
pub fn render(e: &anyhow::Error) -> String {
    match hint(e) {
        Some(h) => format!("error: {}\nhint: {h}", one_line(e)),
        None => format!("error: {}", one_line(e)),
    }
}
