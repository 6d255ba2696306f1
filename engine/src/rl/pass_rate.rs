//! Pass rates of a dataset's problems under the current model, to filter a
//! training set: a GRPO group whose rollouts all fail (or all succeed) has
//! no signal, so the reference recipe drops the problems the starting model
//! solves 0/8 or 8/8 times.
//!
//! Problems are taken in a seeded shuffle of the dataset (the first
//! `problems` of it, rounded up to whole chunks: any budget), in chunks of
//! `chunk` problems rolled out together with the agent of the run config.
//! Each chunk's rollout seed depends on the seed and the chunk's number
//! only, and a chunk's records are appended to `passrates.jsonl` once it is
//! whole, so an interrupted measurement resumes at its first unfinished
//! chunk and writes what the uninterrupted one would have. A smaller budget reads the first chunks and
//! leaves the later ones on file; one directory takes one measurement at a
//! time (`.lock`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::reward::Reward;
use crate::agent::Trajectory;
use crate::seeds;
use crate::session::{Session, SessionError};
use crate::tasks::Item;

/// What a measurement is: a resumed one must match the settings it was
/// started with (saved in `passrate.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PassRateSettings {
    /// The dataset's name or path.
    pub dataset: String,
    /// Its number of problems (the shuffle depends on it).
    pub dataset_len: usize,
    /// The dataset's field names (question, answer, id), as configured.
    pub fields: serde_json::Value,
    /// Model name or path.
    pub model: String,
    /// The adapter the model ran with, if any.
    pub adapter: Option<PathBuf>,
    /// sha256 of the adapter file (a run's latest adapter changes under
    /// the same path).
    pub adapter_sha256: Option<String>,
    /// Rollouts per problem.
    pub samples: usize,
    /// Seed of the problem order and of every chunk's rollouts.
    pub seed: u64,
    /// Problems rolled out together.
    pub chunk: usize,
    /// The agent settings (the run config's `[agent]`; the sampling seed,
    /// which every chunk replaces, left out).
    pub agent: serde_json::Value,
    /// The reward (`[reward]`: answer match, overlong shaping).
    pub reward: serde_json::Value,
    /// Longer prompts are skipped (`engine.max_prompt_tokens`).
    pub max_prompt_tokens: usize,
}

/// One problem's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PassRecord {
    /// The chunk it was measured in.
    pub chunk: usize,
    /// Its index in the dataset (0-based).
    pub index: usize,
    /// Its id.
    pub id: String,
    /// Rollouts the reward counts as solved.
    pub solved: usize,
    /// Rollouts drawn (0: its prompt was too long, it was skipped).
    pub samples: usize,
}

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum PassRateError {
    /// Model, sandbox or agent.
    #[error(transparent)]
    Session(Box<SessionError>),
    /// A file of the output directory.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong, in words.
        why: String,
    },
    /// A resumed measurement's setting differs from the one it started with.
    #[error("{path} was measured with {field} = {was}, now {now}: use another --out or the same settings")]
    Mismatch {
        /// The settings file.
        path: PathBuf,
        /// The differing field.
        field: String,
        /// Its saved value.
        was: String,
        /// The value asked for now.
        now: String,
    },
    /// A setting out of range.
    #[error("{0}")]
    Invalid(String),
}

impl From<SessionError> for PassRateError {
    fn from(e: SessionError) -> Self {
        PassRateError::Session(Box::new(e))
    }
}

fn file_err(path: &Path) -> impl Fn(String) -> PassRateError + '_ {
    move |why| PassRateError::File {
        path: path.to_path_buf(),
        why,
    }
}

/// The order in which measurements take a dataset's indices (a budget
/// takes its first whole chunks).
pub fn measured_order(dataset_len: usize, seed: u64) -> Vec<usize> {
    super::problem_order::shuffled(dataset_len, seeds::pass_rate_order(seed))
}

/// Measures the pass rates of the first `problems` problems of `items` in
/// the measurement order, resuming what `dir` holds; returns every record,
/// in measurement order. `progress(done, total)` counts problems.
pub fn measure(
    session: &mut Session,
    items: &[Item],
    settings: &PassRateSettings,
    problems: usize,
    reward: &dyn Reward,
    dir: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<PassRecord>, PassRateError> {
    if settings.samples == 0 || settings.chunk == 0 {
        return Err(PassRateError::Invalid(
            "samples and chunk must be at least 1".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir)(e.to_string()))?;
    let _lock = lock_dir(dir)?;
    check_settings(&dir.join("passrate.json"), settings)?;
    if settings.dataset_len != items.len() {
        return Err(PassRateError::Invalid(format!(
            "settings.dataset_len is {}, the dataset has {} problems",
            settings.dataset_len,
            items.len()
        )));
    }
    // Chunks are always those of the whole shuffle (the budget rounds up to
    // whole chunks), so a budget's records are a prefix of a larger one's,
    // and chunks past this budget stay on file for a later, larger one.
    let order = measured_order(items.len(), settings.seed);
    let chunks: Vec<&[usize]> = order.chunks(settings.chunk).collect();
    let n_chunks = problems.div_ceil(settings.chunk).min(chunks.len());
    let total: usize = chunks[..n_chunks].iter().map(|c| c.len()).sum();
    let records_path = dir.join("passrates.jsonl");
    let saved: Vec<PassRecord> = read_records(&records_path)?
        .into_iter()
        .filter(|r| items.get(r.index).is_some_and(|i| i.id == r.id))
        .collect();
    let kept = whole_chunks(saved, &chunks);
    // Rewrite what is kept: drops a torn last line and chunks whose
    // problems differ now.
    write_records(&records_path, &kept)?;
    let mut records: Vec<PassRecord> = kept.into_iter().filter(|r| r.chunk < n_chunks).collect();
    let max_prompt = session.max_prompt_tokens();
    for (c, chunk) in chunks.iter().enumerate().take(n_chunks) {
        progress(records.len(), total);
        if records.iter().any(|r| r.chunk == c) {
            continue;
        }
        let chunk_items: Vec<Item> = chunk.iter().map(|&i| items[i].clone()).collect();
        let tokenized = session.problems(&chunk_items)?;
        let fits: Vec<usize> = (0..chunk.len())
            .filter(|&k| tokenized[k].prompt.len() <= max_prompt)
            .collect();
        let run: Vec<_> = fits.iter().map(|&k| tokenized[k].clone()).collect();
        let seed = seeds::pass_rate_chunk(settings.seed, c as u64);
        let (trajectories, _) = if run.is_empty() {
            (Vec::new(), Default::default())
        } else {
            session.run_problems(&run, settings.samples, seed, &mut |_, _| {})?
        };
        let solved = solved_per_problem(&trajectories, &fits, &chunk_items, reward);
        let new: Vec<PassRecord> = chunk
            .iter()
            .enumerate()
            .map(|(k, &index)| PassRecord {
                chunk: c,
                index,
                id: items[index].id.clone(),
                solved: solved[k],
                samples: if fits.contains(&k) {
                    settings.samples
                } else {
                    0
                },
            })
            .collect();
        append_records(&records_path, &new)?;
        records.extend(new);
    }
    progress(records.len(), total);
    records.sort_by_key(|r| r.chunk);
    Ok(records)
}

/// Holds `dir/.lock` exclusively while a measurement writes there: a second
/// measurement into the same directory would interleave its records.
fn lock_dir(dir: &Path) -> Result<std::fs::File, PassRateError> {
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| file_err(&path)(e.to_string()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(file_err(&path)(
            "another pass-rate measurement is writing this directory; wait for it or use another --out".into(),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(file_err(&path)(e.to_string())),
    }
}

/// Solved rollouts of each problem of a chunk (`fits[j]` is the chunk
/// position of the `j`-th problem rolled out, the trajectories' problem
/// index).
fn solved_per_problem(
    trajectories: &[Trajectory],
    fits: &[usize],
    chunk_items: &[Item],
    reward: &dyn Reward,
) -> Vec<usize> {
    let mut solved = vec![0; chunk_items.len()];
    for t in trajectories {
        let Some(&k) = t.problem_index.and_then(|j| fits.get(j)) else {
            continue;
        };
        solved[k] += reward.solved(&chunk_items[k], t) as usize;
    }
    solved
}

fn check_settings(path: &Path, settings: &PassRateSettings) -> Result<(), PassRateError> {
    let now = serde_json::to_value(settings).expect("settings serialize");
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let was: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| file_err(path)(e.to_string()))?;
            for (field, value) in now.as_object().expect("an object") {
                let saved = was.get(field).cloned().unwrap_or(serde_json::Value::Null);
                if &saved != value {
                    return Err(PassRateError::Mismatch {
                        path: path.to_path_buf(),
                        field: field.clone(),
                        was: saved.to_string(),
                        now: value.to_string(),
                    });
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_json::to_string_pretty(&now).expect("settings serialize");
            cleaner_models::adapter_file::atomic_write(path, text.as_bytes())
                .map_err(|e| file_err(path)(e.to_string()))
        }
        Err(e) => Err(file_err(path)(e.to_string())),
    }
}

/// The records of a file; a last line cut short by an interruption is
/// dropped, any other bad line is an error.
fn read_records(path: &Path) -> Result<Vec<PassRecord>, PassRateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file_err(path)(e.to_string())),
    };
    // (1-based line number, line), blank lines skipped.
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect();
    let mut out = Vec::new();
    for (k, &(number, line)) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(r) => out.push(r),
            Err(_) if k + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => return Err(file_err(path)(format!("line {number}: {e}"))),
        }
    }
    Ok(out)
}

/// The records of chunks measured whole with the problems `chunks` assigns
/// them.
fn whole_chunks(records: Vec<PassRecord>, chunks: &[&[usize]]) -> Vec<PassRecord> {
    let whole = |c: usize| {
        let got: Vec<usize> = records
            .iter()
            .filter(|r| r.chunk == c)
            .map(|r| r.index)
            .collect();
        chunks.get(c).is_some_and(|want| got == *want)
    };
    let keep: Vec<bool> = (0..chunks.len()).map(whole).collect();
    records
        .into_iter()
        .filter(|r| keep.get(r.chunk).copied().unwrap_or(false))
        .collect()
}

fn jsonl(records: &[PassRecord]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).expect("record serializes") + "\n")
        .collect()
}

fn write_records(path: &Path, records: &[PassRecord]) -> Result<(), PassRateError> {
    cleaner_models::adapter_file::atomic_write(path, jsonl(records).as_bytes())
        .map_err(|e| file_err(path)(e.to_string()))
}

fn append_records(path: &Path, records: &[PassRecord]) -> Result<(), PassRateError> {
    super::metrics::append_jsonl_synced(path, records).map_err(|e| file_err(path)(e.to_string()))
}

/// The items whose pass count lies in `keep` (inclusive; skipped problems
/// never), in dataset order, as JSONL the same config loads: the question,
/// answer and id under its field names (`id` when it has none), with the
/// measured `solved` and `samples`.
pub fn filtered_jsonl(
    items: &[Item],
    records: &[PassRecord],
    keep: std::ops::RangeInclusive<usize>,
    fields: &crate::tasks::Fields,
) -> String {
    let mut kept: Vec<&PassRecord> = records
        .iter()
        .filter(|r| r.samples > 0 && keep.contains(&r.solved))
        .collect();
    kept.sort_by_key(|r| r.index);
    let question = fields.question.first().map_or("question", String::as_str);
    let id = fields.id.as_deref().unwrap_or("id");
    kept.iter()
        .map(|r| {
            let item = &items[r.index];
            let mut line = serde_json::Map::new();
            line.insert(id.into(), item.id.clone().into());
            line.insert(question.into(), item.question.clone().into());
            line.insert(fields.answer.clone(), item.answer.clone().into());
            line.insert("solved".into(), r.solved.into());
            line.insert("samples".into(), r.samples.into());
            serde_json::Value::Object(line).to_string() + "\n"
        })
        .collect()
}
