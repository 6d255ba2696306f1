//! GGUF v2/v3 over a memory map: typed metadata and zero-copy tensor views.
//!
//! The whole header is validated when the file is opened (counts, lengths,
//! tensor types, shapes, offsets, overlaps), so later accessors can hand out
//! tensor bytes without re-checking. Format reference: ggml's `docs/gguf.md`.

mod cursor;
mod error;
mod value;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use cleaner_kernels::quant::QuantType;
use cursor::Cursor;
pub use error::{GgufError, GgufErrorKind};
pub use value::Value;
pub use writer::GgufWriter;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal but never deeper than this in real files.
const MAX_NESTING: usize = 8;

/// One tensor's header entry. `dims` are in ggml order: `dims[0]` is the
/// contiguous (row) dimension, so a weight `W` with numpy shape
/// `(n_out, n_in)` has `dims = [n_in, n_out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Dimensions, innermost first (ggml order).
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: QuantType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Size of the tensor's data in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// An opened, fully validated GGUF file.
pub struct GgufFile {
    storage: Storage,
    path: Option<PathBuf>,
    version: u32,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: u64,
    alignment: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and validates the file at `path`. Tensor data is not read
    /// (and so not paged in) until asked for.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let map = || -> Result<memmap2::Mmap, GgufErrorKind> {
            let file = File::open(path)?;
            // SAFETY: the map is read-only and lives inside `GgufFile`, which hands
            // out only borrows of it. Another process truncating the file while
            // it is mapped would fault (SIGBUS); model files are not rewritten in
            // place by this program, and the loaders document that requirement.
            Ok(unsafe { memmap2::Mmap::map(&file)? })
        };
        let mmap = map().map_err(|k| GgufError::new(k).at(path))?;
        Self::parse(Storage::Mapped(mmap), Some(path.to_path_buf())).map_err(|e| e.at(path))
    }

    /// Validates a GGUF image held in memory (tests, fuzzing, in-memory adapters).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(Storage::Owned(bytes), None)
    }

    fn parse(storage: Storage, path: Option<PathBuf>) -> Result<Self, GgufError> {
        let bytes = storage.bytes();
        let mut cur = Cursor::new(bytes);
        let magic = cur.take(4, "magic").map_err(|_| GgufErrorKind::BadMagic {
            found: bytes[..bytes.len().min(4)].to_vec(),
        })?;
        if magic != MAGIC {
            return Err(GgufErrorKind::BadMagic {
                found: magic.to_vec(),
            }
            .into());
        }
        let version = cur.u32("version")?;
        if version != 2 && version != 3 {
            return Err(GgufErrorKind::UnsupportedVersion(version).into());
        }
        let n_tensors = cur.u64("tensor count")?;
        let n_kv = cur.u64("metadata count")?;
        // Each key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes;
        // each tensor info at least 8 + 4 + 4 + 8 bytes.
        check_count(&cur, n_kv, 13, "metadata")?;
        check_count(&cur, n_tensors, 24, "tensor")?;

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut key_index = HashMap::with_capacity(n_kv as usize);
        for _ in 0..n_kv {
            let key = cur.string("metadata key")?;
            let ty = cur.u32("metadata value type")?;
            let value = read_value(&mut cur, ty, &key, 0)?;
            if key_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufErrorKind::DuplicateKey(key).into());
            }
            metadata.push((key, value));
        }

        let alignment = match key_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => {
                let v = &metadata[i].1;
                let a = v.as_u64().ok_or_else(|| GgufErrorKind::WrongType {
                    key: "general.alignment".into(),
                    expected: "unsigned integer",
                    found: v.type_name(),
                })?;
                if a == 0 || !a.is_power_of_two() || a > 65536 {
                    return Err(GgufErrorKind::BadAlignment(a).into());
                }
                a
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let info = read_tensor_info(&mut cur, alignment)?;
            if tensor_index
                .insert(info.name.clone(), tensors.len())
                .is_some()
            {
                return Err(GgufErrorKind::DuplicateTensor(info.name).into());
            }
            tensors.push(info);
        }

        let data_offset = align_up(cur.pos() as u64, alignment);
        let data_len = (bytes.len() as u64).saturating_sub(data_offset);
        check_tensor_layout(&tensors, data_len)?;

        Ok(GgufFile {
            storage,
            path,
            version,
            metadata,
            key_index,
            tensors,
            tensor_index,
            data_offset,
            alignment,
        })
    }

    /// The file, when opened from one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }
    /// Data alignment.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// File offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
    /// Size of the whole file in bytes.
    pub fn file_len(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key)
            .ok_or_else(|| self.err(GgufErrorKind::MissingKey(key.to_string())))
    }

    fn wrong_type(&self, key: &str, expected: &'static str, v: &Value) -> GgufError {
        self.err(GgufErrorKind::WrongType {
            key: key.into(),
            expected,
            found: v.type_name(),
        })
    }

    fn err(&self, kind: GgufErrorKind) -> GgufError {
        let e = GgufError::new(kind);
        match &self.path {
            Some(p) => e.at(p),
            None => e,
        }
    }

    /// A required string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong_type(key, "string", v))
    }

    /// A required non-negative integer of any width.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, "unsigned integer", v))
    }

    /// A required number of any type.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| self.wrong_type(key, "number", v))
    }

    /// `general.architecture`, the key every model and adapter file carries.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Position of the tensor called `name` in [`GgufFile::tensors`].
    pub fn tensor_position(&self, name: &str) -> Option<usize> {
        self.tensor_index.get(name).copied()
    }

    /// The tensor's bytes, borrowed from the map (validated at open).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.storage.bytes()[start..start + info.size as usize]
    }

    /// The bytes of the tensor called `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self
            .tensor(name)
            .ok_or_else(|| self.err(GgufErrorKind::MissingTensor(name.to_string())))?;
        Ok(self.tensor_data(info))
    }
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

fn check_count(cur: &Cursor, count: u64, min_bytes: u64, what: &str) -> Result<(), GgufErrorKind> {
    if count.saturating_mul(min_bytes) > cur.remaining() as u64 {
        return Err(GgufErrorKind::CountTooLarge {
            what: format!("{what} count"),
            count,
        });
    }
    Ok(())
}

fn read_value(cur: &mut Cursor, ty: u32, key: &str, depth: usize) -> Result<Value, GgufErrorKind> {
    let what = key;
    Ok(match ty {
        0 => Value::U8(cur.u8(what)?),
        1 => Value::I8(cur.u8(what)? as i8),
        2 => Value::U16(cur.u16(what)?),
        3 => Value::I16(cur.u16(what)? as i16),
        4 => Value::U32(cur.u32(what)?),
        5 => Value::I32(cur.u32(what)? as i32),
        6 => Value::F32(f32::from_bits(cur.u32(what)?)),
        7 => Value::Bool(cur.u8(what)? != 0),
        8 => Value::String(cur.string(what)?),
        9 => {
            if depth >= MAX_NESTING {
                return Err(GgufErrorKind::TooDeep(MAX_NESTING, key.to_string()));
            }
            let item_ty = cur.u32(what)?;
            let n = cur.u64(what)?;
            let min_item = match item_ty {
                0 | 1 | 7 => 1,
                2 | 3 => 2,
                4..=6 => 4,
                8 | 10..=12 => 8,
                9 => 12,
                _ => {
                    return Err(GgufErrorKind::UnknownValueType {
                        key: key.into(),
                        ty: item_ty,
                    })
                }
            };
            check_count(cur, n, min_item, &format!("array {key:?}"))?;
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(read_value(cur, item_ty, key, depth + 1)?);
            }
            Value::Array(items)
        }
        10 => Value::U64(cur.u64(what)?),
        11 => Value::I64(cur.u64(what)? as i64),
        12 => Value::F64(f64::from_bits(cur.u64(what)?)),
        _ => {
            return Err(GgufErrorKind::UnknownValueType {
                key: key.into(),
                ty,
            })
        }
    })
}

fn read_tensor_info(cur: &mut Cursor, alignment: u64) -> Result<TensorInfo, GgufErrorKind> {
    let name = cur.string("tensor name")?;
    let n_dims = cur.u32(&format!("tensor {name:?} dimension count"))?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(GgufErrorKind::BadShape {
            tensor: name,
            dims: vec![],
            why: format!("{n_dims} dimensions (expected 1 to {MAX_DIMS})"),
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(cur.u64(&format!("tensor {name:?} dimensions"))?);
    }
    let id = cur.u32(&format!("tensor {name:?} type"))?;
    let offset = cur.u64(&format!("tensor {name:?} offset"))?;
    let ty = QuantType::from_ggml_id(id).ok_or_else(|| GgufErrorKind::UnknownTensorType {
        tensor: name.clone(),
        id,
    })?;
    let bad = |why: String| GgufErrorKind::BadShape {
        tensor: name.clone(),
        dims: dims.clone(),
        why,
    };
    if dims.iter().any(|&d| d == 0 || d > i64::MAX as u64) {
        return Err(bad("every dimension must be between 1 and 2^63".into()));
    }
    let n = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad("element count overflows".into()))?;
    if dims[0] % ty.block_len() as u64 != 0 {
        return Err(bad(format!(
            "row length {} is not a multiple of the {} block size {}",
            dims[0],
            ty.name(),
            ty.block_len()
        )));
    }
    let size = ty
        .bytes_for(n)
        .ok_or_else(|| bad("byte size overflows".into()))?;
    if offset % alignment != 0 {
        return Err(GgufErrorKind::MisalignedTensor {
            tensor: name,
            offset,
            alignment,
        });
    }
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        size,
    })
}

fn check_tensor_layout(tensors: &[TensorInfo], data_len: u64) -> Result<(), GgufErrorKind> {
    for t in tensors {
        let end = t.offset.saturating_add(t.size);
        if end > data_len {
            return Err(GgufErrorKind::TensorOutOfBounds {
                tensor: t.name.clone(),
                start: t.offset,
                end,
                data_len,
            });
        }
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        if pair[0].offset + pair[0].size > pair[1].offset {
            return Err(GgufErrorKind::OverlappingTensors {
                a: pair[0].name.clone(),
                b: pair[1].name.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
