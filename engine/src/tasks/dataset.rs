//! JSONL datasets with configurable field names.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

/// One problem and its reference answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Identifier (the `id` field, else the 1-based line number).
    pub id: String,
    /// The problem statement.
    pub question: String,
    /// The reference answer (GSM8K: the text after `####`).
    pub answer: String,
}

/// Which JSON fields hold the question and the answer; GSM8K answers end in
/// `#### N`, which is taken as the answer.
#[derive(Clone, Debug)]
pub struct Fields {
    /// Fields tried in order for the question.
    pub question: Vec<String>,
    /// Field of the reference answer (string or number).
    pub answer: String,
    /// Field of the identifier (None: line numbers).
    pub id: Option<String>,
}

impl Default for Fields {
    fn default() -> Self {
        Fields {
            question: vec!["question".into(), "problem".into()],
            answer: "answer".into(),
            id: Some("id".into()),
        }
    }
}

/// Why a dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line is not JSON or lacks a field; `line` is 1-based.
    #[error("{path} line {line}: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong, in words.
        why: String,
    },
    /// Neither a known dataset name nor a `.jsonl` path.
    #[error(
        "unknown dataset {0:?}: expected gsm8k, gsm8k-train, gsm8k-train-filtered, aime24, amc23 or a .jsonl path"
    )]
    Unknown(String),
}

/// Where the named datasets are read from: `$CLEANER_DATA` when set, else the
/// `data/` folder the repository ships (found through this crate's source
/// directory, so it works from any clone and any working directory).
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("CLEANER_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../data"))
}

/// A loaded dataset.
pub struct Dataset {
    /// The name or path it was loaded by.
    pub name: String,
    /// Its problems, in file order.
    pub items: Vec<Item>,
}

impl Dataset {
    /// A named dataset under `data_dir` (`gsm8k` is the test split;
    /// `gsm8k-train-filtered` the train problems the default model solves
    /// sometimes but not always, `data/gsm8k/FILTERED.md`) or a path.
    pub fn load(spec: &str, data_dir: &Path, fields: &Fields) -> Result<Dataset, DatasetError> {
        let path = match spec {
            "gsm8k" => data_dir.join("gsm8k/test.jsonl"),
            "gsm8k-train" => data_dir.join("gsm8k/train.jsonl"),
            "gsm8k-train-filtered" => data_dir.join("gsm8k/train-filtered.jsonl"),
            "aime24" => data_dir.join("aime24/test.jsonl"),
            "amc23" => data_dir.join("amc23/test.jsonl"),
            p if p.ends_with(".jsonl") => PathBuf::from(p),
            other => return Err(DatasetError::Unknown(other.to_string())),
        };
        Ok(Dataset {
            name: spec.to_string(),
            items: read(&path, fields)?,
        })
    }
}

fn read(path: &Path, fields: &Fields) -> Result<Vec<Item>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
        path: path.into(),
        source,
    })?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| DatasetError::Malformed {
            path: path.into(),
            line: i + 1,
            why,
        };
        let v: Json = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let question = fields
            .question
            .iter()
            .find_map(|f| v.get(f).and_then(Json::as_str))
            .ok_or_else(|| bad(format!("no string field {:?}", fields.question)))?;
        let raw = match v.get(&fields.answer) {
            Some(Json::String(s)) => s.clone(),
            Some(Json::Number(n)) => n.to_string(),
            _ => {
                return Err(bad(format!(
                    "no string or number field {:?}",
                    fields.answer
                )))
            }
        };
        let answer = match raw.rsplit_once("####") {
            Some((_, a)) => a.trim().to_string(),
            None => raw.trim().to_string(),
        };
        let id = fields
            .id
            .as_ref()
            .and_then(|f| v.get(f))
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .unwrap_or_else(|| format!("{}", i + 1));
        items.push(Item {
            id,
            question: question.to_string(),
            answer,
        });
    }
    Ok(items)
}
