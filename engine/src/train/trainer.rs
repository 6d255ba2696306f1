//! [`Trainer`]: the model (read-only, mapped), one LoRA adapter, its gradient
//! buffers and optimizer. Gradients accumulate over any number of sequences
//! ([`Trainer::accumulate`]) until [`Trainer::update`] applies them; the
//! adapter then goes into a live [`Decoder`] without reloading anything
//! ([`Trainer::hot_swap`]).
//!
//! Log-probs and gradients come from the backend chosen with
//! [`Trainer::set_backend`] ([`super::backend`]: our CPU kernels, the
//! default, or ggml graphs on a GPU or ggml's CPU backend); the adapter,
//! optimizer (AdamW on the host), checkpoints and exports are the same for
//! both. On ggml the adapter also lives on the device: every update copies
//! its new values there.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cleaner_kernels::matmul::Precision;
use cleaner_models::{Lora, LoraConfig, ModelError, Transformer};
use rayon::prelude::*;

use super::backend::{BackendError, BackendKind, GgmlEngine, TrainerBackend};
use super::optim::{AdamW, AdamWConfig, OptimStateError, UpdateStats};
use crate::llama::{LlamaError, LoraAdapter};
use crate::rollout::{Decoder, RolloutError};

/// Why a training operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model or an adapter file.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The optimizer state file.
    #[error(transparent)]
    Optim(#[from] OptimStateError),
    /// llama.cpp refused the adapter.
    #[error(transparent)]
    Llama(#[from] LlamaError),
    /// The rollout engine.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    /// The backend/device choice cannot be served.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The ggml backend failed (upload, graph, compute).
    #[error("ggml trainer: {0}")]
    Ggml(#[from] cleaner_ggml::GgmlError),
    /// A file operation.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An adapter shape with no rank or no target projection.
    #[error("LoRA rank must be positive and targets non-empty (rank {rank}, {targets} targets)")]
    EmptyAdapter {
        /// The rank asked for.
        rank: usize,
        /// Target projections asked for.
        targets: usize,
    },
    /// The loss returned a gradient of another length than the log-probs.
    #[error("loss gradient has {gradients} entries for {logprobs} log-probs")]
    GradientLength {
        /// Entries of the returned gradient.
        gradients: usize,
        /// Log-probs of the sequence (the expected length).
        logprobs: usize,
    },
    /// The loss returned a NaN or infinite gradient entry.
    #[error("loss gradient is not finite ({value} at position {position})")]
    GradientNotFinite {
        /// The first offending position.
        position: usize,
        /// Its value.
        value: f32,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A LoRA adapter being trained on a mapped model (see the module documentation).
pub struct Trainer {
    model: Transformer,
    lora: Lora,
    grads: Lora,
    optim: AdamW,
    /// Sequences accumulated since the last update.
    pending: usize,
    /// Bytes of block intermediates a forward pass may keep so the backward
    /// pass need not recompute them.
    activation_memory: usize,
    /// The ggml engine when that backend was chosen; `None`: our CPU kernels.
    ggml: Option<GgmlEngine>,
    /// Whether group passes compute a shared prefix once (see
    /// [`Trainer::set_shared_prefix`]).
    shared_prefix: bool,
}

/// The default of [`Trainer::set_activation_memory`]: 2 GiB, which keeps
/// every block of a 1,500-token sequence of Qwen2.5-0.5B (58 KiB per token
/// and block, 24 blocks) and part of a longer one.
pub const DEFAULT_ACTIVATION_MEMORY: usize = 2 << 30;

impl Trainer {
    /// A fresh adapter (A Kaiming-uniform from `seed`, B zero) on `model`.
    pub fn new(
        model: Transformer,
        lora: LoraConfig,
        optim: AdamWConfig,
        seed: u64,
    ) -> Result<Trainer, TrainError> {
        if lora.rank == 0 || lora.targets.is_empty() {
            return Err(TrainError::EmptyAdapter {
                rank: lora.rank,
                targets: lora.targets.len(),
            });
        }
        let lora = Lora::new(&model, lora, seed);
        Ok(Trainer::with_adapter(model, lora, optim))
    }

    /// Trains an existing adapter (shapes are checked at the first forward).
    pub fn with_adapter(model: Transformer, lora: Lora, optim: AdamWConfig) -> Trainer {
        let optim = AdamW::new(optim, &lora);
        Trainer::from_parts(model, lora, optim)
    }

    /// The one constructor: zero gradients, default activation memory, and
    /// the allocator set up for the trainer's large buffers.
    fn from_parts(model: Transformer, lora: Lora, optim: AdamW) -> Trainer {
        super::retain_freed_memory();
        let grads = lora.zeros_like();
        Trainer {
            model,
            lora,
            grads,
            optim,
            pending: 0,
            activation_memory: DEFAULT_ACTIVATION_MEMORY,
            ggml: None,
            shared_prefix: true,
        }
    }

    /// Moves forward and backward to `backend` (see [`TrainerBackend`];
    /// a new trainer computes with our CPU kernels). `auto` resolves here:
    /// the build's GPU when present, else the CPU kernels. On ggml the base
    /// weights and the current adapter are copied to the device; `n_threads`
    /// is for ggml's CPU backend. Errors: a device the build lacks or that is
    /// absent, and bf16 precision with backend `ggml` asked for by name,
    /// which ggml's products do not have (where `auto` picks ggml, bf16 falls
    /// back to f32, as on a CPU without AVX-512 BF16).
    pub fn set_backend(
        &mut self,
        backend: TrainerBackend,
        n_threads: usize,
    ) -> Result<(), TrainError> {
        let started = backend.start(n_threads)?;
        self.ggml = match started {
            None => None,
            Some(b) => {
                if self.model.precision() != Precision::F32 {
                    if backend.backend != BackendKind::Auto {
                        return Err(bf16_on_ggml().into());
                    }
                    log::info!("trainer: ggml multiplies in f32; precision bf16 runs as f32");
                    self.model.set_precision(Precision::F32);
                }
                Some(GgmlEngine::new(b, &self.model, &self.lora)?)
            }
        };
        Ok(())
    }

    /// The memory the ggml backend may use for weights, adapter and one
    /// step's working memory together (default: the device memory free when
    /// the backend started). Each new longest sequence is planned against
    /// it before anything is allocated; one over it is a
    /// [`cleaner_ggml::GgmlError::OverBudget`] error naming the parts. No
    /// effect on the CPU kernels.
    pub fn set_memory_budget(&mut self, bytes: usize) {
        if let Some(g) = &mut self.ggml {
            g.set_budget(bytes);
        }
    }

    /// The backend computing log-probs and gradients, in words: `cpu` or
    /// `ggml on <device>` (ggml's device name: `CPU`, `CUDA0`, ...).
    pub fn backend_name(&self) -> String {
        match &self.ggml {
            None => BackendKind::Cpu.name().into(),
            Some(g) => format!("ggml on {}", g.name()),
        }
    }

    /// How many bytes of block intermediates one sequence's forward pass may
    /// keep for its backward pass (0: checkpoint every block, the least
    /// memory). Blocks that do not fit are recomputed from their input, which
    /// costs a third more matrix work for them; the logits are kept too if
    /// what the blocks left holds them (else the backward computes the
    /// vocabulary product again); the gradients are bit-identical either
    /// way. The CPU backend's setting: ggml plans its own graph memory and
    /// ignores it.
    pub fn set_activation_memory(&mut self, bytes: usize) {
        self.activation_memory = bytes;
    }

    /// The bytes set by [`Trainer::set_activation_memory`].
    pub fn activation_memory(&self) -> usize {
        self.activation_memory
    }

    /// Whether [`Trainer::accumulate_group`] and
    /// [`Trainer::logprobs_group`] compute the prefix a group shares once
    /// (default) or run every sequence whole (the same results within
    /// rounding; for comparisons). The CPU kernels' setting: ggml runs
    /// sequences one by one.
    pub fn set_shared_prefix(&mut self, on: bool) {
        self.shared_prefix = on;
    }

    pub(crate) fn shares_prefixes(&self) -> bool {
        self.shared_prefix
    }

    pub(crate) fn on_ggml(&self) -> bool {
        self.ggml.is_some()
    }

    /// The model, the adapter and the pending gradients, borrowed together.
    pub(crate) fn parts_mut(&mut self) -> (&Transformer, &Lora, &mut Lora) {
        (&self.model, &self.lora, &mut self.grads)
    }

    pub(crate) fn add_pending(&mut self, sequences: usize) {
        self.pending += sequences;
    }

    /// The arithmetic of the products with base weights, forward and
    /// backward (see [`Transformer::set_precision`]; default f32). bf16
    /// roughly doubles their speed on AMD Zen 4, is slower than f32 on
    /// Intel Xeons (`Precision::auto()` picks the faster), and runs f32 on
    /// CPUs without AVX-512 BF16. Set it before the first step: log-probs computed in one
    /// precision are not comparable with the other's at the level of bits.
    /// The ggml backend has f32 products only: bf16 there is an error.
    pub fn set_precision(&mut self, p: Precision) -> Result<(), TrainError> {
        if self.ggml.is_some() && p != Precision::F32 {
            return Err(bf16_on_ggml().into());
        }
        self.model.set_precision(p);
        Ok(())
    }

    /// The mapped model.
    pub fn model(&self) -> &Transformer {
        &self.model
    }
    /// The adapter as trained so far.
    pub fn adapter(&self) -> &Lora {
        &self.lora
    }
    /// The gradients accumulated since the last update (zero after it).
    pub fn gradients(&self) -> &Lora {
        &self.grads
    }
    /// The optimizer and its state.
    pub fn optimizer(&self) -> &AdamW {
        &self.optim
    }
    /// Updates applied so far.
    pub fn step(&self) -> u64 {
        self.optim.step
    }

    /// Next-token log-probs of `tokens` under the current adapter, or under the
    /// base model (the reference policy: same weights, adapter off, no extra
    /// memory) with `adapter = false`.
    pub fn logprobs(&self, tokens: &[u32], adapter: bool) -> Result<Vec<f32>, TrainError> {
        if let Some(g) = &self.ggml {
            return Ok(g.logprobs(tokens, adapter)?);
        }
        Ok(self
            .model
            .forward(tokens, adapter.then_some(&self.lora), None)?
            .logprobs)
    }

    /// Forward and backward of one sequence: `loss_grad` receives the
    /// sequence's log-probs and returns `d loss / d logprob` (same length);
    /// the parameter gradients are added to the pending ones. Returns the
    /// log-probs.
    pub fn accumulate(
        &mut self,
        tokens: &[u32],
        loss_grad: impl FnOnce(&[f32]) -> Vec<f32>,
    ) -> Result<Vec<f32>, TrainError> {
        if let Some(g) = &self.ggml {
            let (logprobs, mut ckpt) = g.forward_train(tokens)?;
            let dlogprob = checked_gradient(&logprobs, loss_grad(&logprobs))?;
            g.backward(&mut ckpt, &dlogprob, &mut self.grads)?;
            self.pending += 1;
            return Ok(logprobs);
        }
        let (logprobs, tape) =
            self.model
                .forward_train_keeping(tokens, &self.lora, self.activation_memory)?;
        let dlogprob = checked_gradient(&logprobs, loss_grad(&logprobs))?;
        self.model
            .backward(&tape, &self.lora, &dlogprob, &mut self.grads)?;
        self.pending += 1;
        Ok(logprobs)
    }

    /// Applies the pending gradients (AdamW, global norm clip) and clears
    /// them; the schedule counts every update as a training step. On ggml
    /// the new adapter is copied to the device (the only way this fails).
    pub fn update(&mut self) -> Result<UpdateStats, TrainError> {
        let step = self.optim.step;
        self.update_at(step)
    }

    /// Applies the pending gradients at the learning rate of training step
    /// `train_step` (0-based; a GRPO step's mini-batch updates share it)
    /// and clears them.
    pub fn update_at(&mut self, train_step: u64) -> Result<UpdateStats, TrainError> {
        let _t = cleaner_kernels::profile::span("AdamW");
        let stats = self
            .optim
            .update_at(&mut self.lora, &self.grads, train_step);
        let grads: Vec<&mut Vec<f32>> = self.grads.tensors_mut().collect();
        grads.into_par_iter().for_each(|t| t.fill(0.0));
        self.pending = 0;
        if let Some(g) = &self.ggml {
            g.set_adapter(&self.lora)?;
        }
        Ok(stats)
    }

    /// Sequences accumulated since the last update.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Writes the adapter in llama.cpp's GGUF format (atomically).
    pub fn export_gguf(&self, path: &Path) -> Result<(), TrainError> {
        Ok(self.lora.write_gguf(&self.model, path)?)
    }

    /// Writes the adapter in PEFT's format into `dir`.
    pub fn export_peft(&self, dir: &Path) -> Result<(), TrainError> {
        Ok(self.lora.write_peft(&self.model, dir)?)
    }

    /// Puts the current adapter into the live rollout engine: writes it to
    /// `dir/adapter-{step}.gguf`, loads it into llama.cpp next to the model
    /// already in memory, and makes `decoder` decode with it from now on. The
    /// previous adapter is freed once nothing holds it; its file is removed.
    pub fn hot_swap(
        &self,
        decoder: &mut Decoder,
        dir: &Path,
    ) -> Result<Arc<LoraAdapter>, TrainError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(format!("adapter-{}.gguf", self.step()));
        self.export_gguf(&path)?;
        let adapter = LoraAdapter::load(decoder.model(), &path)?;
        let previous = decoder.adapter().map(|a| a.path().to_path_buf());
        decoder.set_adapter(Some(adapter.clone()))?;
        if let Some(old) = previous.filter(|p| p != &path && p.starts_with(dir)) {
            let _ = std::fs::remove_file(old);
        }
        Ok(adapter)
    }

    /// Saves adapter and optimizer state into `dir` (each file atomically).
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        self.export_gguf(&dir.join("adapter.gguf"))?;
        let opt = dir.join("optimizer.gguf");
        self.optim.save(&opt).map_err(io(&opt))
    }

    /// Restores a trainer saved by [`Trainer::save`] on `model` (on the CPU
    /// backend; [`Trainer::set_backend`] moves it).
    pub fn load(model: Transformer, dir: &Path) -> Result<Trainer, TrainError> {
        let lora = Lora::read_gguf(&model, &dir.join("adapter.gguf"))?;
        let optim = AdamW::load(&dir.join("optimizer.gguf"), &lora)?;
        Ok(Trainer::from_parts(model, lora, optim))
    }
}

/// The loss's `d loss / d logprob`, checked against the log-probs it was
/// computed from: same length, every entry finite.
pub(crate) fn checked_gradient(
    logprobs: &[f32],
    dlogprob: Vec<f32>,
) -> Result<Vec<f32>, TrainError> {
    if dlogprob.len() != logprobs.len() {
        return Err(TrainError::GradientLength {
            gradients: dlogprob.len(),
            logprobs: logprobs.len(),
        });
    }
    if let Some(position) = dlogprob.iter().position(|g| !g.is_finite()) {
        return Err(TrainError::GradientNotFinite {
            position,
            value: dlogprob[position],
        });
    }
    Ok(dlogprob)
}

fn bf16_on_ggml() -> BackendError {
    BackendError::Unsupported(
        "precision bf16 is the CPU kernels' (ggml multiplies in f32); set [trainer] precision = \"f32\" or backend = \"cpu\"".into(),
    )
}
