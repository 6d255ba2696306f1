//! LoRA training on the memory-mapped quantized base: the loss interface for
//! RL ([`loss`]), AdamW ([`optim`]), and [`Trainer`], which ties our forward
//! and backward passes to an adapter, its optimizer, checkpoints and the hot
//! swap into the live rollout engine; [`backend`] chooses where forward and
//! backward run (our CPU kernels or ggml on a GPU).

mod alloc;
pub mod backend;
mod group;
pub mod loss;
pub mod optim;
mod trainer;

pub use alloc::{release_freed_memory, retain_freed_memory};
pub use backend::{BackendError, BackendKind, DeviceKind, TrainerBackend};
pub use group::shared_prefix_len;
pub use loss::{
    nll_loss, policy_loss, sequence_loss, Aggregation, BatchShape, LossConfig, LossStats,
    SeqLossInput,
};
pub use optim::{AdamW, AdamWConfig, Decay, UpdateStats};
pub use trainer::{TrainError, Trainer, DEFAULT_ACTIVATION_MEMORY};
