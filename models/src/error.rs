//! Errors of loading and running a model: each names the file, the tensor or
//! metadata key, and what was expected.

use crate::gguf::GgufError;
use std::path::PathBuf;

/// What was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ModelErrorKind {
    /// The file is not a valid GGUF.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// An architecture the trainer does not implement.
    #[error("unsupported architecture {found:?}; supported: {}", supported.join(", "))]
    UnknownArchitecture {
        /// The architecture the file declares.
        found: String,
        /// The architectures the trainer implements.
        supported: Vec<&'static str>,
    },
    /// A metadata value the architecture cannot use.
    #[error("metadata {key} = {value} is invalid: {why}")]
    BadConfig {
        /// The metadata key.
        key: String,
        /// The value found.
        value: String,
        /// What is wrong, in words.
        why: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("missing tensor {0:?} (is this a complete model file of the declared architecture?)")]
    MissingTensor(String),
    /// A tensor has the wrong shape.
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?} (ggml order) for this configuration")]
    TensorShape {
        /// The tensor name.
        name: String,
        /// The shape this configuration needs (ggml order).
        expected: Vec<u64>,
        /// The shape in the file (ggml order).
        found: Vec<u64>,
    },
    /// A tensor has a type the trainer cannot read.
    #[error("tensor {name:?} has type {ty}: {why}")]
    TensorType {
        /// The tensor name.
        name: String,
        /// The ggml type name.
        ty: String,
        /// What is wrong, in words.
        why: String,
    },
    #[error(
        "token id {token} at position {position} is outside the vocabulary of {n_vocab} tokens"
    )]
    /// A token id outside the vocabulary.
    TokenOutOfRange {
        /// Index of the token in the sequence.
        position: usize,
        /// The token id.
        token: u32,
        /// Vocabulary size.
        n_vocab: usize,
    },
    /// A call with inconsistent arguments, explained.
    #[error("{0}")]
    BadRequest(String),
}

/// A model error with the model file's path when known.
#[derive(Debug)]
pub struct ModelError {
    /// The file concerned, when there is one.
    pub path: Option<PathBuf>,
    /// What went wrong.
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
