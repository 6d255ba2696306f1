//! llama.cpp's log, routed into the `log` crate and kept for error messages.
//!
//! llama.cpp reports most load failures only through its log (the C call just
//! returns NULL), so the last error lines are kept here and attached to the
//! typed errors the wrapper returns.

use std::ffi::{c_char, c_void, CStr};
use std::sync::Mutex;

use llama_cpp_sys_2 as sys;

/// Recent warning and error lines, newest last.
static RECENT: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// A line still being assembled from continuation fragments.
static PARTIAL: Mutex<(u32, String)> = Mutex::new((0, String::new()));
const KEEP: usize = 16;

pub(super) fn install() {
    // SAFETY: the callback is a plain function with the C signature ggml expects
    // and ignores `user_data`; it stays valid for the life of the process.
    unsafe { sys::llama_log_set(Some(callback), std::ptr::null_mut()) };
}

unsafe extern "C" fn callback(level: sys::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: ggml passes a NUL-terminated string valid for this call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let Ok(mut partial) = PARTIAL.lock() else {
        return;
    };
    if level != sys::GGML_LOG_LEVEL_CONT {
        partial.0 = level;
    }
    partial.1.push_str(&text);
    if !partial.1.ends_with('\n') {
        return;
    }
    let line = std::mem::take(&mut partial.1).trim_end().to_string();
    let level = partial.0;
    drop(partial);
    match level {
        sys::GGML_LOG_LEVEL_ERROR => log::error!(target: "llama.cpp", "{line}"),
        sys::GGML_LOG_LEVEL_WARN if is_harmless(&line) => {
            log::debug!(target: "llama.cpp", "{line}")
        }
        sys::GGML_LOG_LEVEL_WARN => log::warn!(target: "llama.cpp", "{line}"),
        sys::GGML_LOG_LEVEL_INFO => log::debug!(target: "llama.cpp", "{line}"),
        _ => log::trace!(target: "llama.cpp", "{line}"),
    }
    if level == sys::GGML_LOG_LEVEL_ERROR || level == sys::GGML_LOG_LEVEL_WARN {
        if let Ok(mut recent) = RECENT.lock() {
            recent.push(line);
            let n = recent.len();
            if n > KEEP {
                recent.drain(..n - KEEP);
            }
        }
    }
}

/// Warnings that say nothing is wrong: one line per adapted tensor on every
/// adapter load (LoRA tensors cannot live in the repacked CPU buffer, so
/// llama.cpp keeps them in the plain one), a vocabulary oddity of the
/// Qwen2.5 GGUF that llama.cpp corrects itself, and the training-context
/// check of a unified KV cache: llama.cpp then compares the whole cache,
/// shared by all sequences, with the model's training context, while what
/// matters is each sequence's share, which `Context::new` checks itself.
/// Also a decode that found the cache full: the decoder answers it by making
/// a sequence wait for cells, and returns its own error when none can.
/// Shown with RUST_LOG=debug.
fn is_harmless(line: &str) -> bool {
    (line.contains("llama_adapter_lora_init_impl") && line.contains("cannot use buft"))
        || line.contains("control-looking token")
        || (line.contains("n_ctx_seq") && line.contains("> n_ctx_train"))
        || line.contains("failed to find a memory slot for batch")
}

/// Forgets the kept lines; call before an operation whose errors you want.
pub(super) fn clear() {
    if let Ok(mut recent) = RECENT.lock() {
        recent.clear();
    }
}

/// The warning and error lines logged since the last [`clear`], joined.
pub(super) fn take() -> String {
    let lines = RECENT
        .lock()
        .map(|mut r| std::mem::take(&mut *r))
        .unwrap_or_default();
    if lines.is_empty() {
        "no details in llama.cpp's log".to_string()
    } else {
        lines.join("; ")
    }
}
