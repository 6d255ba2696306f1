//! Errors of loading and running a model: each names the file, the tensor or
//! metadata key, and what was expected.

use crate::gguf::GgufError;
use std::path::PathBuf;

/// What was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ModelErrorKind {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture {found:?}; supported: {}", supported.join(", "))]
    UnknownArchitecture {
        found: String,
        supported: Vec<&'static str>,
    },
    #[error("metadata {key} = {value} is invalid: {why}")]
    BadConfig {
        key: String,
        value: String,
        why: String,
    },
    #[error("missing tensor {0:?} (is this a complete model file of the declared architecture?)")]
    MissingTensor(String),
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?} (ggml order) for this configuration")]
    TensorShape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("tensor {name:?} has type {ty}: {why}")]
    TensorType {
        name: String,
        ty: String,
        why: String,
    },
    #[error(
        "token id {token} at position {position} is outside the vocabulary of {n_vocab} tokens"
    )]
    TokenOutOfRange {
        position: usize,
        token: u32,
        n_vocab: usize,
    },
    #[error("{0}")]
    BadRequest(String),
}

/// A model error with the model file's path when known.
#[derive(Debug)]
pub struct ModelError {
    pub path: Option<PathBuf>,
    pub kind: ModelErrorKind,
}

impl ModelError {
    pub(crate) fn at(path: Option<&std::path::Path>, kind: ModelErrorKind) -> Self {
        ModelError {
            path: path.map(|p| p.to_path_buf()),
            kind,
        }
    }
}

impl From<GgufError> for ModelError {
    fn from(e: GgufError) -> Self {
        ModelError {
            path: e.path.clone(),
            kind: ModelErrorKind::Gguf(e),
        }
    }
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.path, &self.kind) {
            // GGUF errors already carry the path.
            (_, ModelErrorKind::Gguf(e)) => write!(f, "{e}"),
            (Some(p), k) => write!(f, "{}: {k}", p.display()),
            (None, k) => write!(f, "{k}"),
        }
    }
}

impl std::error::Error for ModelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ModelErrorKind::Gguf(e) => Some(e),
            _ => None,
        }
    }
}
