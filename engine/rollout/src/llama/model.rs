//! A loaded model: llama.cpp's weights plus our validated view of the GGUF
//! header and a table of every token's text.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Mutex;

use cleaner_models::GgufFile;
use llama_cpp_sys_2 as sys;

use super::{init_backend, log, LlamaError};

/// A token id in the model's vocabulary.
pub type Token = i32;

/// How to load a model.
#[derive(Clone, Debug)]
pub struct ModelParams {
    /// Layers to offload to the GPU (GPU builds only): -1 means all, 0 none.
    pub n_gpu_layers: i32,
}

impl Default for ModelParams {
    fn default() -> Self {
        ModelParams {
            n_gpu_layers: if cfg!(any(feature = "cuda", feature = "metal", feature = "vulkan")) {
                -1
            } else {
                0
            },
        }
    }
}

/// A model loaded by llama.cpp (weights memory-mapped from the GGUF file).
/// Shared between contexts through `Arc<Model>`.
pub struct Model {
    ptr: NonNull<sys::llama_model>,
    vocab: NonNull<sys::llama_vocab>,
    path: PathBuf,
    gguf: GgufFile,
    /// Every token's bytes, special tokens rendered as their text.
    pieces: Vec<Box<[u8]>>,
    /// llama.cpp's adapter loader mutates the model's adapter set: one at a time.
    pub(super) adapter_lock: Mutex<()>,
    /// Layers were offloaded to a GPU: decoding leaves the CPU cores free.
    offloaded: bool,
}

// SAFETY: after loading, a llama_model is read-only for inference; the one
// mutation (registering LoRA adapters) goes through `adapter_lock`.
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

impl Model {
    /// Validates the file's header, then loads it with llama.cpp.
    pub fn load(path: impl AsRef<Path>, params: &ModelParams) -> Result<Model, LlamaError> {
        let path = path.as_ref().to_path_buf();
        // Our reader checks the header and every tensor's bounds first, so a
        // missing, truncated or foreign file gets a precise error (llama.cpp
        // would only log and return NULL, or abort).
        let gguf = GgufFile::open(&path).map_err(|source| LlamaError::ModelFile {
            path: path.clone(),
            source,
        })?;
        if let Err(source) = gguf.architecture() {
            return Err(LlamaError::ModelFile { path, source });
        }
        if gguf.get_str("general.type").ok() == Some("adapter") {
            return Err(LlamaError::ModelLoad {
                path,
                log: "this file is a LoRA adapter, not a model; pass it as an adapter".into(),
            });
        }
        init_backend();
        let c_path =
            CString::new(path.to_string_lossy().as_bytes()).map_err(|_| LlamaError::ModelLoad {
                path: path.clone(),
                log: "path contains a NUL byte".into(),
            })?;
        // SAFETY: default params are plain data; we set two documented fields.
        let mut mp = unsafe { sys::llama_model_default_params() };
        mp.n_gpu_layers = params.n_gpu_layers;
        log::clear();
        // SAFETY: c_path is a valid NUL-terminated string for the duration of
        // the call; the returned pointer is owned by us (freed in Drop).
        let raw = unsafe { sys::llama_model_load_from_file(c_path.as_ptr(), mp) };
        let ptr = NonNull::new(raw).ok_or_else(|| LlamaError::ModelLoad {
            path: path.clone(),
            log: log::take(),
        })?;
        // SAFETY: ptr is a live model; the vocab lives as long as the model.
        let vocab = unsafe { sys::llama_model_get_vocab(ptr.as_ptr()) };
        let vocab = match NonNull::new(vocab as *mut sys::llama_vocab) {
            Some(v) => v,
            None => {
                // SAFETY: ptr came from llama_model_load_from_file and is freed once.
                unsafe { sys::llama_model_free(ptr.as_ptr()) };
                return Err(LlamaError::ModelLoad {
                    path,
                    log: "model has no vocabulary".into(),
                });
            }
        };
        let mut model = Model {
            ptr,
            vocab,
            path,
            gguf,
            pieces: Vec::new(),
            adapter_lock: Mutex::new(()),
            offloaded: params.n_gpu_layers != 0
                && cfg!(any(feature = "cuda", feature = "metal", feature = "vulkan")),
        };
        model.pieces = (0..model.n_vocab() as Token)
            .map(|t| model.piece_uncached(t).into_boxed_slice())
            .collect();
        Ok(model)
    }

    /// Whether the model's layers run on a GPU (a GPU build with
    /// `n_gpu_layers != 0`).
    pub fn offloaded(&self) -> bool {
        self.offloaded
    }

    pub(super) fn as_ptr(&self) -> *mut sys::llama_model {
        self.ptr.as_ptr()
    }

    /// The GGUF file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Our validated view of the model file's header and metadata.
    pub fn gguf(&self) -> &GgufFile {
        &self.gguf
    }

    /// `general.architecture` (e.g. `llama`, `qwen2`).
    pub fn architecture(&self) -> &str {
        self.gguf.architecture().unwrap_or("unknown")
    }

    /// The Jinja chat template stored in the file, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.gguf.get_str("tokenizer.chat_template").ok()
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> usize {
        // SAFETY: vocab is valid for the model's life.
        unsafe { sys::llama_vocab_n_tokens(self.vocab.as_ptr()) }.max(0) as usize
    }

    /// Context length the model was trained with.
    pub fn n_ctx_train(&self) -> u32 {
        // SAFETY: ptr is a live model.
        unsafe { sys::llama_model_n_ctx_train(self.ptr.as_ptr()) }.max(0) as u32
    }

    /// Embedding width.
    pub fn n_embd(&self) -> usize {
        // SAFETY: ptr is a live model.
        unsafe { sys::llama_model_n_embd(self.ptr.as_ptr()) }.max(0) as usize
    }

    /// Size of the weights in bytes.
    pub fn size_bytes(&self) -> u64 {
        // SAFETY: ptr is a live model.
        unsafe { sys::llama_model_size(self.ptr.as_ptr()) }
    }

    /// Whether `token` ends generation (EOS, EOT, `<|im_end|>`, ...).
    pub fn is_eog(&self, token: Token) -> bool {
        // SAFETY: vocab is valid; out-of-range ids are rejected first.
        self.check_token(token).is_ok()
            && unsafe { sys::llama_vocab_is_eog(self.vocab.as_ptr(), token) }
    }

    /// The beginning-of-sequence token, if the vocabulary has one.
    pub fn bos(&self) -> Option<Token> {
        // SAFETY: vocab is valid.
        let t = unsafe { sys::llama_vocab_bos(self.vocab.as_ptr()) };
        (t >= 0).then_some(t)
    }

    /// Whether the tokenizer prepends BOS when asked to add special tokens.
    pub fn adds_bos(&self) -> bool {
        // SAFETY: vocab is valid.
        unsafe { sys::llama_vocab_get_add_bos(self.vocab.as_ptr()) }
    }

    /// Rejects ids outside the vocabulary.
    pub fn check_token(&self, token: Token) -> Result<(), LlamaError> {
        if token < 0 || token as usize >= self.pieces.len().max(self.n_vocab()) {
            return Err(LlamaError::BadToken {
                token,
                n_vocab: self.n_vocab(),
            });
        }
        Ok(())
    }

    /// Tokenizes `text`. `add_special` adds BOS where the model wants it;
    /// `parse_special` turns special-token text (`<|im_start|>`) into its id.
    pub fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<Token>, LlamaError> {
        let len = i32::try_from(text.len()).map_err(|_| LlamaError::TextTooLong(text.len()))?;
        let mut out: Vec<Token> = vec![0; text.len() + 2];
        for _ in 0..2 {
            // SAFETY: text points to len valid bytes (no NUL needed: length is
            // passed); out has room for out.len() tokens, which we pass.
            let n = unsafe {
                sys::llama_tokenize(
                    self.vocab.as_ptr(),
                    text.as_ptr() as *const _,
                    len,
                    out.as_mut_ptr(),
                    out.len() as i32,
                    add_special,
                    parse_special,
                )
            };
            if n >= 0 {
                out.truncate(n as usize);
                return Ok(out);
            }
            // Negative: the number of tokens needed.
            out.resize((-n) as usize, 0);
        }
        Err(LlamaError::TextTooLong(text.len()))
    }

    fn piece_uncached(&self, token: Token) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        for _ in 0..2 {
            // SAFETY: buf has buf.len() writable bytes, which we pass.
            let n = unsafe {
                sys::llama_token_to_piece(
                    self.vocab.as_ptr(),
                    token,
                    buf.as_mut_ptr() as *mut _,
                    buf.len() as i32,
                    0,
                    true,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
        Vec::new()
    }

    /// The bytes of one token (a token may hold part of a UTF-8 character).
    pub fn piece(&self, token: Token) -> &[u8] {
        self.pieces
            .get(token as usize)
            .map(|p| &p[..])
            .unwrap_or(&[])
    }

    /// Text of a token sequence (lossy only where the sequence itself cuts a
    /// UTF-8 character).
    pub fn detokenize(&self, tokens: &[Token]) -> String {
        let bytes: Vec<u8> = tokens
            .iter()
            .flat_map(|&t| self.piece(t).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: contexts and adapters hold an Arc<Model>, so none outlives this.
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) };
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("arch", &self.architecture())
            .finish()
    }
}
