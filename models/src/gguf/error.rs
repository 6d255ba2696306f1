//! The one error type of the GGUF reader: every failure names the file and
//! what was wrong with it.

use std::fmt;
use std::path::PathBuf;

/// What was wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufErrorKind {
    /// The file could not be read or mapped.
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    /// Not a GGUF file.
    #[error(
        "not a GGUF file: expected magic bytes \"GGUF\", found {}",
        magic_text(found)
    )]
    BadMagic {
        /// The first bytes of the file.
        found: Vec<u8>,
    },
    /// A GGUF version other than 2 and 3.
    #[error("unsupported GGUF version {0} (this reader supports versions 2 and 3)")]
    UnsupportedVersion(u32),
    /// The file ends inside a structure.
    #[error("file is truncated: needed {needed} bytes for {what} at offset {offset}, but the file has {len} bytes")]
    Truncated {
        /// The structure being read.
        what: String,
        /// Byte offset in the file.
        offset: u64,
        /// Bytes the structure needs.
        needed: u64,
        /// File size in bytes.
        len: u64,
    },
    /// A string is not UTF-8.
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// The structure being read.
        what: String,
        /// Byte offset in the file.
        offset: u64,
    },
    /// A metadata value of an unknown type.
    #[error("metadata key {key:?} has unknown value type {ty}")]
    UnknownValueType {
        /// The metadata key.
        key: String,
        /// The type id found.
        ty: u32,
    },
    /// A count larger than the file could hold.
    #[error("{what} claims {count} entries, more than the rest of the file could hold (truncated or corrupt file)")]
    CountTooLarge {
        /// The structure being read.
        what: String,
        /// The count the file claims.
        count: u64,
    },
    /// Arrays nested too deeply.
    #[error("metadata nesting deeper than {0} levels in key {1:?}")]
    TooDeep(usize, String),
    /// A metadata key appears twice.
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    /// A tensor name appears twice.
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    /// A metadata value of the wrong type.
    #[error("metadata key {key:?} has the wrong type: expected {expected}, found {found}")]
    WrongType {
        /// The metadata key.
        key: String,
        /// The type expected.
        expected: &'static str,
        /// The type found.
        found: String,
    },
    /// An alignment that is zero or not a power of two.
    #[error("general.alignment = {0} is not a power of two between 1 and 65536")]
    BadAlignment(u64),
    /// A tensor of an unknown ggml type.
    #[error("tensor {tensor:?} has unknown tensor type id {id}")]
    UnknownTensorType {
        /// The tensor name.
        tensor: String,
        /// The ggml type id.
        id: u32,
    },
    /// A tensor shape that is empty, too deep, overflowing, or ragged for its type.
    #[error("tensor {tensor:?} has an invalid shape {dims:?}: {why}")]
    BadShape {
        /// The tensor name.
        tensor: String,
        /// The dimensions, ggml order.
        dims: Vec<u64>,
        /// What is wrong, in words.
        why: String,
    },
    /// A tensor's bytes extend past the data section.
    #[error("tensor {tensor:?} data [{start}, {end}) lies outside the data section, which holds {data_len} bytes")]
    TensorOutOfBounds {
        /// The tensor name.
        tensor: String,
        /// First byte (data-section offset).
        start: u64,
        /// One past the last byte.
        end: u64,
        /// Size of the data section in bytes.
        data_len: u64,
    },
    /// A tensor offset not on the alignment.
    #[error("tensor {tensor:?} starts at offset {offset}, which is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        /// The tensor name.
        tensor: String,
        /// Byte offset in the file.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// Two tensors share bytes.
    #[error("tensors {a:?} and {b:?} overlap in the data section")]
    OverlappingTensors {
        /// One tensor.
        a: String,
        /// The other tensor.
        b: String,
    },
    /// A required metadata key is absent.
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    /// A required tensor is absent.
    #[error("no tensor named {0:?}")]
    MissingTensor(String),
}

/// The first bytes of a file as a reader recognizes them: text where they
/// are printable (`"127."` for a hosts file, `"\x7fELF"` for a program),
/// and plainly when the file is too short to hold any.
fn magic_text(found: &[u8]) -> String {
    if found.is_empty() {
        "an empty file".to_string()
    } else {
        format!("\"{}\"", found.escape_ascii())
    }
}

/// A GGUF reading error, with the path of the file when there is one.
#[derive(Debug)]
pub struct GgufError {
    /// The file, when opened from one.
    pub path: Option<PathBuf>,
    /// What went wrong.
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
