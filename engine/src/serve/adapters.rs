//! The LoRA adapters a server holds, by the name requests give as `model`.
//!
//! Adapters are loaded next to the model already in memory (llama.cpp's GGUF
//! LoRA format, as `cleaner train` exports it) from `--adapter NAME=FILE` at
//! start or `POST /v1/load_lora_adapter` at run time. A request takes an
//! [`Arc`] of its adapter when it is accepted, so unloading (or replacing) a
//! name only affects requests accepted afterwards; the adapter itself is
//! freed when the last request using it ends.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

use crate::serve::error::ApiError;
use crate::{LoraAdapter, Model};

/// Longest adapter name accepted.
const MAX_NAME: usize = 128;

/// One loaded adapter.
#[derive(Clone)]
pub struct Loaded {
    /// The name requests select it by.
    pub name: String,
    /// The file it was loaded from, as given.
    pub path: PathBuf,
    /// Unix seconds when it was loaded.
    pub created: u64,
    /// The adapter, shared with the requests using it.
    pub adapter: Arc<LoraAdapter>,
}

/// The adapters by name, in loading order.
#[derive(Default)]
pub struct Adapters {
    list: Mutex<Vec<Loaded>>,
}

impl Adapters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Loaded>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The adapter named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<LoraAdapter>> {
        self.lock()
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.adapter.clone())
    }

    /// Every adapter, in loading order.
    pub fn list(&self) -> Vec<Loaded> {
        self.lock().clone()
    }

    /// How many are loaded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `loaded`; a name already taken is a 400 unless `replace` (vLLM's
    /// `load_inplace`), which swaps the adapter behind the name in place.
    pub fn insert(&self, loaded: Loaded, replace: bool) -> Result<(), ApiError> {
        let mut list = self.lock();
        match list.iter_mut().find(|l| l.name == loaded.name) {
            Some(old) if replace => *old = loaded,
            Some(_) => return Err(duplicate(&loaded.name)),
            None => list.push(loaded),
        }
        Ok(())
    }

    /// Removes `name`; whether it was there.
    pub fn remove(&self, name: &str) -> bool {
        let mut list = self.lock();
        let before = list.len();
        list.retain(|l| l.name != name);
        list.len() != before
    }

    /// Whether `name` is taken.
    pub fn contains(&self, name: &str) -> bool {
        self.lock().iter().any(|l| l.name == name)
    }
}

/// The 400 for a name already loaded.
pub fn duplicate(name: &str) -> ApiError {
    ApiError::invalid(
        "lora_name",
        format!(
            "a LoRA adapter named `{name}` is already loaded; unload it first, or send \
             \"load_inplace\": true to replace its weights"
        ),
    )
}

/// Checks a new adapter's name: not empty, not the base model's id, short,
/// and of the characters model ids use (so it is safe in URLs, logs and
/// Prometheus labels).
pub fn check_name(name: &str, base_id: &str) -> Result<(), ApiError> {
    let bad = |why: String| Err(ApiError::invalid("lora_name", why));
    if name.is_empty() {
        return bad("lora_name must not be empty".into());
    }
    if name == base_id {
        return bad(format!(
            "lora_name `{name}` is the base model's id; give the adapter a name of its own"
        ));
    }
    if name.len() > MAX_NAME {
        return bad(format!(
            "lora_name is {} bytes long, at most {MAX_NAME} are accepted",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-:/@+".contains(*c)))
    {
        return bad(format!(
            "lora_name `{name}` contains {c:?}; use letters, digits and . _ - : / @ +"
        ));
    }
    Ok(())
}

/// Loads the adapter at `path` for `model` (blocking: file reading and
/// llama.cpp's loader). A missing file is a 404, anything else wrong with it
/// (not a file, not GGUF, not a LoRA adapter, made for another model) a
/// 400; both name `lora_path` and say what was expected.
pub fn load(model: &Arc<Model>, name: &str, path: &Path) -> Result<Arc<LoraAdapter>, ApiError> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "loading LoRA adapter `{name}` failed: no file at lora_path {shown} \
                     (paths are read by the server, relative to its working directory)"
                ),
                kind: "invalid_request_error",
                param: Some("lora_path".into()),
                code: Some("adapter_not_found"),
            })
        }
        Err(e) => {
            return Err(bad_file(
                name,
                format!("cannot read lora_path {shown}: {e}"),
            ));
        }
        Ok(m) if !m.is_file() => {
            return Err(bad_file(
                name,
                format!("lora_path {shown} is not a file; expected a GGUF LoRA adapter"),
            ));
        }
        Ok(_) => {}
    }
    LoraAdapter::load(model, path).map_err(|e| {
        bad_file(
            name,
            format!("{e}; expected a GGUF LoRA adapter for this model, as `cleaner train` exports"),
        )
    })
}

fn bad_file(name: &str, why: String) -> ApiError {
    ApiError::invalid(
        "lora_path",
        format!("loading LoRA adapter `{name}` failed: {why}"),
    )
    .with_code("invalid_adapter")
}

/// Splits `--adapter NAME=FILE`.
pub fn parse_spec(spec: &str) -> Result<(String, PathBuf), String> {
    match spec.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => {
            Ok((name.to_string(), PathBuf::from(file)))
        }
        _ => Err(format!(
            "expected NAME=FILE (the name requests give as `model`, then a GGUF LoRA adapter file), got {spec:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_names_are_checked() {
        assert_eq!(
            parse_spec("sql=/a/b=c.gguf").unwrap(),
            ("sql".to_string(), PathBuf::from("/a/b=c.gguf"))
        );
        for bad in ["sql", "=x.gguf", "sql=", ""] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
        assert!(check_name("org/sql-v2.1", "base").is_ok());
        for bad in ["", "base", "a b", "a\"b", &"x".repeat(MAX_NAME + 1)] {
            let e = check_name(bad, "base").unwrap_err();
            assert_eq!(e.param.as_deref(), Some("lora_name"), "{bad}");
        }
    }
}
