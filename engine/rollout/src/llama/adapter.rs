//! LoRA adapters in llama.cpp's GGUF adapter format, loaded while contexts of
//! the model are alive and freed when the last holder lets go.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use cleaner_models::GgufFile;
use llama_cpp_sys_2 as sys;

use super::{log, LlamaError, Model};

/// A llama.cpp LoRA adapter loaded for one model; freed when the last holder drops it.
pub struct LoraAdapter {
    ptr: NonNull<sys::llama_adapter_lora>,
    model: Arc<Model>,
    path: PathBuf,
}

// SAFETY: an adapter is immutable after loading; contexts only read it.
unsafe impl Send for LoraAdapter {}
unsafe impl Sync for LoraAdapter {}

impl LoraAdapter {
    /// Loads the adapter at `path` for `model`, checking first that it is an
    /// adapter for this architecture whose tensors fit the model's, so a wrong
    /// file is a clear error rather than a line in llama.cpp's log.
    pub fn load(
        model: &Arc<Model>,
        path: impl AsRef<Path>,
    ) -> Result<Arc<LoraAdapter>, LlamaError> {
        let path = path.as_ref().to_path_buf();
        let err = |why: String| LlamaError::Adapter {
            path: path.clone(),
            why,
        };
        let file = GgufFile::open(&path).map_err(|e| err(e.kind.to_string()))?;
        check_against_model(&file, model).map_err(&err)?;
        let c_path = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| err("path contains a NUL byte".into()))?;
        let _guard = model.adapter_lock.lock().unwrap_or_else(|p| p.into_inner());
        log::clear();
        // SAFETY: model pointer is live (we keep an Arc); c_path is a valid C
        // string. llama.cpp adds the adapter to the model's set, which the lock
        // above serialises; a context reads that set only in the first decode
        // after its adapters change, which takes the same lock (`Context::decode`).
        let raw = unsafe { sys::llama_adapter_lora_init(model.as_ptr(), c_path.as_ptr()) };
        let ptr = NonNull::new(raw).ok_or_else(|| err(log::take()))?;
        Ok(Arc::new(LoraAdapter {
            ptr,
            model: model.clone(),
            path,
        }))
    }

    pub(super) fn as_ptr(&self) -> *mut sys::llama_adapter_lora {
        self.ptr.as_ptr()
    }

    /// The model it belongs to.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LoraAdapter {
    fn drop(&mut self) {
        let _guard = self
            .model
            .adapter_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // SAFETY: contexts hold an Arc to every adapter set on them, so when
        // the last Arc drops no context uses it; the model is still alive.
        unsafe { sys::llama_adapter_lora_free(self.ptr.as_ptr()) };
    }
}

/// The checks llama.cpp makes, done first so the error names the problem.
fn check_against_model(file: &GgufFile, model: &Model) -> Result<(), String> {
    match file.get_str("general.type") {
        Ok("adapter") => {}
        Ok(other) => return Err(format!("general.type is {other:?}, expected \"adapter\"")),
        Err(e) => return Err(e.kind.to_string()),
    }
    match file.get_str("adapter.type") {
        Ok("lora") => {}
        Ok(other) => return Err(format!("adapter.type is {other:?}, expected \"lora\"")),
        Err(e) => return Err(e.kind.to_string()),
    }
    let arch = file.architecture().map_err(|e| e.kind.to_string())?;
    if arch != model.architecture() {
        return Err(format!(
            "adapter is for architecture {arch:?}, the model is {:?}",
            model.architecture()
        ));
    }
    let base = model.gguf();
    let mut n_pairs = 0;
    for t in file.tensors() {
        let (name, is_a) = if let Some(n) = t.name.strip_suffix(".lora_a") {
            (n, true)
        } else if let Some(n) = t.name.strip_suffix(".lora_b") {
            (n, false)
        } else {
            return Err(format!(
                "tensor {:?} is neither .lora_a nor .lora_b",
                t.name
            ));
        };
        let w = base.tensor(name).ok_or_else(|| {
            format!(
                "tensor {:?} has no base tensor {name:?} in the model (adapter for another model?)",
                t.name
            )
        })?;
        if t.dims.len() != 2 || w.dims.len() != 2 {
            return Err(format!(
                "tensor {:?} must be 2-D, has dims {:?}",
                t.name, t.dims
            ));
        }
        // ggml order: W [n_in, n_out]; lora_a [n_in, r]; lora_b [r, n_out].
        let ok = if is_a {
            t.dims[0] == w.dims[0]
        } else {
            t.dims[1] == w.dims[1]
        };
        if !ok {
            return Err(format!(
                "tensor {:?} has dims {:?}, which do not fit base tensor {name:?} {:?} (adapter for another model?)",
                t.name, t.dims, w.dims
            ));
        }
        if is_a {
            n_pairs += 1;
            let b_name = format!("{name}.lora_b");
            let b = file
                .tensor(&b_name)
                .ok_or_else(|| format!("tensor {:?} has no matching {b_name:?}", t.name))?;
            if b.dims.len() != 2 || b.dims[0] != t.dims[1] {
                return Err(format!(
                    "rank of {:?} {:?} and {b_name:?} {:?} disagree",
                    t.name, t.dims, b.dims
                ));
            }
        }
    }
    if n_pairs == 0 {
        return Err("the adapter holds no lora_a/lora_b tensor pairs".into());
    }
    Ok(())
}
