//! GGUF metadata values.

/// One metadata value. Arrays hold values of a single type.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// GGUF `u8`.
    U8(u8),
    /// GGUF `i8`.
    I8(i8),
    /// GGUF `u16`.
    U16(u16),
    /// GGUF `i16`.
    I16(i16),
    /// GGUF `u32`.
    U32(u32),
    /// GGUF `i32`.
    I32(i32),
    /// GGUF `f32`.
    F32(f32),
    /// GGUF `bool`.
    Bool(bool),
    /// GGUF `String`.
    String(String),
    /// GGUF array.
    Array(Vec<Value>),
    /// GGUF `u64`.
    U64(u64),
    /// GGUF `i64`.
    I64(i64),
    /// GGUF `f64`.
    F64(f64),
}

impl Value {
    /// Name of the value's type, for error messages.
    pub fn type_name(&self) -> String {
        match self {
            Value::U8(_) => "u8".into(),
            Value::I8(_) => "i8".into(),
            Value::U16(_) => "u16".into(),
            Value::I16(_) => "i16".into(),
            Value::U32(_) => "u32".into(),
            Value::I32(_) => "i32".into(),
            Value::F32(_) => "f32".into(),
            Value::Bool(_) => "bool".into(),
            Value::String(_) => "string".into(),
            Value::Array(items) => match items.first() {
                Some(v) => format!("array of {}", v.type_name()),
                None => "empty array".into(),
            },
            Value::U64(_) => "u64".into(),
            Value::I64(_) => "i64".into(),
            Value::F64(_) => "f64".into(),
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if it is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }
}
