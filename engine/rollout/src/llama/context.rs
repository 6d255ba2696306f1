//! A llama.cpp context: the KV cache of many sequences, one `decode` call that
//! advances any mix of them, and the LoRA adapters applied to it.

use std::ptr::NonNull;
use std::sync::Arc;

use llama_cpp_sys_2 as sys;

use super::{log, LlamaError, LoraAdapter, Model, Token};

/// Context size and threading.
#[derive(Clone, Debug)]
pub struct ContextParams {
    /// KV cache cells shared by all sequences (`kv_unified`): a prefix copied
    /// with `seq_cp` is stored once.
    pub n_ctx: u32,
    /// Most sequences alive at once.
    pub n_seq_max: u32,
    /// Most tokens in one `decode` call.
    pub n_batch: u32,
    /// Threads for decoding (0: all cores).
    pub n_threads: i32,
    /// llama.cpp's flash attention: `None` lets llama.cpp choose (on, here).
    /// Trade-offs measured in `new`.
    pub flash_attention: Option<bool>,
}

impl Default for ContextParams {
    fn default() -> Self {
        ContextParams {
            n_ctx: 4096,
            n_seq_max: 8,
            n_batch: 512,
            n_threads: 0,
            flash_attention: None,
        }
    }
}

/// One token of a decode batch.
#[derive(Clone, Copy, Debug)]
pub struct BatchEntry {
    /// The token.
    pub token: Token,
    /// Its position in its sequence.
    pub pos: i32,
    /// Its sequence.
    pub seq: i32,
    /// Whether to compute the logits for this position.
    pub logits: bool,
}

/// A llama.cpp context: KV cache and decode calls for several sequences.
pub struct Context {
    ptr: NonNull<sys::llama_context>,
    batch: sys::llama_batch,
    params: ContextParams,
    model: Arc<Model>,
    /// Adapters set on the context; kept alive while set.
    adapters: Vec<(Arc<LoraAdapter>, f32)>,
    /// The adapters changed and no decode has succeeded since: the next one
    /// re-reserves its compute graph, which reads the model's set of loaded
    /// adapters (llama.cpp's `graph_max_nodes`), so it runs under the
    /// model's `adapter_lock` while another thread may load or free one.
    adapters_changed: bool,
    n_vocab: usize,
}

// SAFETY: a llama_context is used from one thread at a time (`&mut self` for
// everything that mutates it); it holds no thread-local state.
unsafe impl Send for Context {}

pub(crate) fn default_threads() -> i32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as i32)
        .unwrap_or(1)
}

impl Context {
    /// Creates a context for `model`.
    pub fn new(model: Arc<Model>, params: ContextParams) -> Result<Context, LlamaError> {
        let p = &params;
        if p.n_ctx < 16 || p.n_seq_max == 0 || p.n_batch == 0 {
            return Err(LlamaError::ContextParams(format!(
                "n_ctx {} (min 16), n_seq_max {} (min 1), n_batch {} (min 1)",
                p.n_ctx, p.n_seq_max, p.n_batch
            )));
        }
        // llama.cpp's limit on sequences (LLAMA_MAX_SEQ).
        if p.n_seq_max > 256 {
            return Err(LlamaError::ContextParams(format!(
                "n_seq_max {} exceeds llama.cpp's 256",
                p.n_seq_max
            )));
        }
        // The cache is shared, so llama.cpp's own check compares all of it
        // with the training context (and is kept out of the terminal, see
        // `log.rs`); callers size it as a share per sequence, which is what
        // must stay within the positions the model was trained on.
        let share = p.n_ctx / p.n_seq_max;
        let n_ctx_train = model.n_ctx_train();
        if n_ctx_train > 0 && share > n_ctx_train {
            ::log::warn!(
                "a context of {} cells for {} sequences gives each about {share} positions, \
                 more than the {n_ctx_train} the model was trained with: text past that \
                 length may degrade (ask for fewer tokens per sequence)",
                p.n_ctx,
                p.n_seq_max
            );
        }
        let threads = if p.n_threads > 0 {
            p.n_threads
        } else {
            default_threads()
        };
        // SAFETY: default params are plain data; we set documented fields.
        let mut cp = unsafe { sys::llama_context_default_params() };
        cp.n_ctx = p.n_ctx;
        cp.n_batch = p.n_batch;
        cp.n_ubatch = p.n_batch.min(512);
        cp.n_seq_max = p.n_seq_max;
        cp.n_threads = threads;
        cp.n_threads_batch = threads;
        // One cache shared by all sequences: partial copies between split
        // streams abort the process (docs/rollout.md), and a shared prompt
        // prefix is stored once.
        cp.kv_unified = true;
        // Measured here (tests/agent_real.rs, bench): with flash attention
        // (llama.cpp's auto choice on CPU) logits are the same whichever other
        // sequences share a decode call, but a sequence split differently into
        // calls (one prefill vs prompt + increments) differs by up to ~1 in
        // the largest logit; without it, every split of a sequence gives
        // bit-identical logits, while batch composition moves log-probs by up
        // to ~0.1. Activation quantization in the matmuls turns rounding
        // differences into these jumps.
        cp.flash_attn_type = match p.flash_attention {
            None => sys::LLAMA_FLASH_ATTN_TYPE_AUTO,
            Some(true) => sys::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            Some(false) => sys::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        };
        cp.no_perf = true;
        log::clear();
        // SAFETY: the model pointer is live (we hold its Arc for our lifetime).
        let raw = unsafe { sys::llama_init_from_model(model.as_ptr(), cp) };
        let ptr = NonNull::new(raw).ok_or_else(|| LlamaError::ContextInit {
            n_ctx: p.n_ctx,
            n_seq_max: p.n_seq_max,
            log: log::take(),
        })?;
        // SAFETY: allocates token/pos/seq/logits arrays for n_batch entries,
        // each with room for one sequence id; freed in Drop.
        let batch = unsafe { sys::llama_batch_init(p.n_batch as i32, 0, 1) };
        let n_vocab = model.n_vocab();
        Ok(Context {
            ptr,
            batch,
            params,
            model,
            adapters: Vec::new(),
            adapters_changed: false,
            n_vocab,
        })
    }

    /// The parameters it was created with.
    pub fn params(&self) -> &ContextParams {
        &self.params
    }

    /// Its model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Cells in the KV cache as llama.cpp allocated it (may round up).
    pub fn n_ctx(&self) -> u32 {
        // SAFETY: ptr is live.
        unsafe { sys::llama_n_ctx(self.ptr.as_ptr()) }
    }

    /// Decodes one batch of at most `n_batch` entries. On `KvCacheFull` the
    /// cache is left as it was before the call.
    pub fn decode(&mut self, entries: &[BatchEntry]) -> Result<(), LlamaError> {
        if entries.is_empty() {
            return Ok(());
        }
        if entries.len() > self.params.n_batch as usize {
            return Err(LlamaError::ContextParams(format!(
                "{} tokens in one decode call, n_batch is {}",
                entries.len(),
                self.params.n_batch
            )));
        }
        for e in entries {
            self.model.check_token(e.token)?;
            if e.seq < 0 || e.seq as u32 >= self.params.n_seq_max || e.pos < 0 {
                return Err(LlamaError::ContextParams(format!(
                    "sequence {} position {} out of range",
                    e.seq, e.pos
                )));
            }
        }
        let b = &mut self.batch;
        for (i, e) in entries.iter().enumerate() {
            // SAFETY: i < n_batch, the capacity the arrays were allocated with;
            // each seq_id array has room for one id.
            unsafe {
                *b.token.add(i) = e.token;
                *b.pos.add(i) = e.pos;
                *b.n_seq_id.add(i) = 1;
                *(*b.seq_id.add(i)) = e.seq;
                *b.logits.add(i) = e.logits as i8;
            }
        }
        b.n_tokens = entries.len() as i32;
        log::clear();
        let model = &self.model;
        let _reserving = self
            .adapters_changed
            .then(|| model.adapter_lock.lock().unwrap_or_else(|p| p.into_inner()));
        // SAFETY: the batch is filled with n_tokens valid entries (tokens and
        // sequence ids checked above).
        let code = unsafe { sys::llama_decode(self.ptr.as_ptr(), *b) };
        if code == 0 {
            self.adapters_changed = false;
        }
        match code {
            0 => Ok(()),
            1 => Err(LlamaError::KvCacheFull {
                n_tokens: entries.len(),
                n_ctx: self.params.n_ctx,
            }),
            _ => Err(LlamaError::Decode {
                code,
                log: log::take(),
            }),
        }
    }

    /// Logits of batch entry `i` of the last decode (which must have asked for
    /// them), `n_vocab` floats.
    pub fn logits(&self, i: usize) -> Option<&[f32]> {
        // SAFETY: llama_get_logits_ith returns NULL for invalid indices (this
        // build logs instead of aborting); a non-null row holds n_vocab floats
        // valid until the next decode, which needs `&mut self`.
        unsafe {
            let p = sys::llama_get_logits_ith(self.ptr.as_ptr(), i as i32);
            (!p.is_null()).then(|| std::slice::from_raw_parts(p, self.n_vocab))
        }
    }

    fn memory(&self) -> sys::llama_memory_t {
        // SAFETY: ptr is live; the memory object lives as long as the context.
        unsafe { sys::llama_get_memory(self.ptr.as_ptr()) }
    }

    /// Drops positions `>= p0` of sequence `seq` from the cache.
    pub fn seq_rm(&mut self, seq: i32, p0: i32) -> bool {
        // SAFETY: memory is live; seq is in range (callers pass slot ids).
        unsafe { sys::llama_memory_seq_rm(self.memory(), seq, p0, -1) }
    }

    /// Makes `dst` share every cached position of `src` (no copy of data with
    /// a unified cache).
    pub fn seq_cp(&mut self, src: i32, dst: i32) {
        // SAFETY: memory is live; both ids are in range.
        unsafe { sys::llama_memory_seq_cp(self.memory(), src, dst, -1, -1) }
    }

    /// Largest cached position of `seq`, -1 if empty.
    pub fn seq_pos_max(&self, seq: i32) -> i32 {
        // SAFETY: memory is live.
        unsafe { sys::llama_memory_seq_pos_max(self.memory(), seq) }
    }

    /// Empties the whole cache.
    pub fn clear(&mut self) {
        // SAFETY: memory is live.
        unsafe { sys::llama_memory_clear(self.memory(), true) }
    }

    /// Replaces the adapters applied to every following decode. An empty list
    /// returns to the base model. Cache entries computed before belong to the
    /// previous weights.
    pub fn set_adapters(&mut self, adapters: &[(Arc<LoraAdapter>, f32)]) -> Result<(), LlamaError> {
        for (a, _) in adapters {
            if !Arc::ptr_eq(a.model(), &self.model) {
                return Err(LlamaError::Adapter {
                    path: a.path().to_path_buf(),
                    why: "the adapter was loaded for another model instance".into(),
                });
            }
        }
        let mut ptrs: Vec<*mut sys::llama_adapter_lora> =
            adapters.iter().map(|(a, _)| a.as_ptr()).collect();
        let mut scales: Vec<f32> = adapters.iter().map(|(_, s)| *s).collect();
        // SAFETY: the pointers are live adapters of this context's model; we keep
        // Arcs to them in self.adapters until they are replaced, so none is
        // freed while the context uses it. Arrays hold n entries.
        let code = unsafe {
            sys::llama_set_adapters_lora(
                self.ptr.as_ptr(),
                ptrs.as_mut_ptr(),
                ptrs.len(),
                scales.as_mut_ptr(),
            )
        };
        if code != 0 {
            return Err(LlamaError::Adapter {
                path: Default::default(),
                why: format!("llama_set_adapters_lora failed ({code})"),
            });
        }
        self.adapters = adapters.to_vec();
        self.adapters_changed = true;
        Ok(())
    }

    /// Adapters applied to decodes, with their scales.
    pub fn adapters(&self) -> &[(Arc<LoraAdapter>, f32)] {
        &self.adapters
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: batch and context were allocated in `new` and are freed once;
        // the context goes before its adapters and model (fields drop after).
        unsafe {
            sys::llama_batch_free(self.batch);
            sys::llama_free(self.ptr.as_ptr());
        }
    }
}
