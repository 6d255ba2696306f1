//! The one error type of the GGUF reader: every failure names the file and
//! what was wrong with it.

use std::fmt;
use std::path::PathBuf;

/// What was wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufErrorKind {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a GGUF file: expected magic bytes \"GGUF\", found {found:?}")]
    BadMagic { found: Vec<u8> },
    #[error("unsupported GGUF version {0} (this reader supports versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("file is truncated: needed {needed} bytes for {what} at offset {offset}, but the file has {len} bytes")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        len: u64,
    },
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },
    #[error("metadata key {key:?} has unknown value type {ty}")]
    UnknownValueType { key: String, ty: u32 },
    #[error("{what} claims {count} entries, more than the rest of the file could hold (truncated or corrupt file)")]
    CountTooLarge { what: String, count: u64 },
    #[error("metadata nesting deeper than {0} levels in key {1:?}")]
    TooDeep(usize, String),
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    #[error("metadata key {key:?} has the wrong type: expected {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("general.alignment = {0} is not a power of two between 1 and 65536")]
    BadAlignment(u64),
    #[error("tensor {tensor:?} has unknown tensor type id {id}")]
    UnknownTensorType { tensor: String, id: u32 },
    #[error("tensor {tensor:?} has an invalid shape {dims:?}: {why}")]
    BadShape {
        tensor: String,
        dims: Vec<u64>,
        why: String,
    },
    #[error("tensor {tensor:?} data [{start}, {end}) lies outside the data section, which holds {data_len} bytes")]
    TensorOutOfBounds {
        tensor: String,
        start: u64,
        end: u64,
        data_len: u64,
    },
    #[error("tensor {tensor:?} starts at offset {offset}, which is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensors {a:?} and {b:?} overlap in the data section")]
    OverlappingTensors { a: String, b: String },
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    #[error("no tensor named {0:?}")]
    MissingTensor(String),
}

/// A GGUF reading error, with the path of the file when there is one.
#[derive(Debug)]
pub struct GgufError {
    pub path: Option<PathBuf>,
    pub kind: GgufErrorKind,
}

impl GgufError {
    pub(crate) fn new(kind: GgufErrorKind) -> Self {
        GgufError { path: None, kind }
    }

    pub(crate) fn at(mut self, path: &std::path::Path) -> Self {
        self.path = Some(path.to_path_buf());
        self
    }
}

impl From<GgufErrorKind> for GgufError {
    fn from(kind: GgufErrorKind) -> Self {
        GgufError::new(kind)
    }
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}: {}", p.display(), self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl std::error::Error for GgufError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.kind.source()
    }
}
