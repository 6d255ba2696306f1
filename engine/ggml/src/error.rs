//! Typed errors of the ggml path: each names what failed (op, tensor type,
//! backend, tensor name, sizes) so a user can tell a missing feature from an
//! absent device from a model this backend cannot run.

use crate::ffi::Device;

/// Everything that can go wrong building or running a ggml graph.
#[derive(Debug, thiserror::Error)]
pub enum GgmlError {
    /// The build lacks the backend (its cargo feature is off).
    #[error("backend {device} is not compiled into this build (enable the `{feature}` feature)")]
    NotCompiled {
        /// The device asked for.
        device: Device,
        /// The cargo feature that adds it.
        feature: &'static str,
    },
    /// The backend is compiled in, but no device of that kind is present.
    #[error("no {device} device is present (ggml found: {found})")]
    DeviceAbsent {
        /// The device asked for.
        device: Device,
        /// The devices ggml did find, comma-separated.
        found: String,
    },
    /// The backend failed to start on a present device.
    #[error("backend {device} failed to initialize")]
    InitFailed {
        /// The device asked for.
        device: Device,
    },
    /// A node of a graph is an op (or op on a tensor type) the backend cannot run.
    #[error("backend {backend} cannot run op {op} on {ty} (node `{node}`)")]
    Unsupported {
        /// ggml's op description (`MUL_MAT`, `SILU`, ...).
        op: String,
        /// Types of the node's sources and of its result (`q8_0, q4_0 -> f32`).
        ty: String,
        /// The backend's name.
        backend: String,
        /// The node's name.
        node: String,
    },
    /// Allocating a buffer on the backend failed.
    #[error("out of memory on {backend}: allocating {what} ({bytes} bytes)")]
    OutOfMemory {
        /// The backend's name.
        backend: String,
        /// What was being allocated.
        what: String,
        /// Size asked for, where known (0 when ggml does not say).
        bytes: usize,
    },
    /// A training step would need more memory than the trainer's budget
    /// (checked with [`crate::plan_step`] before anything is allocated).
    #[error(
        "a training step over {n_tok} tokens needs {needs_mib} MiB on {backend} \
         (weights {weights_mib}, adapter {adapter_mib}, sequence {sequence_mib}, \
         largest graph {graph_mib}), over the trainer's budget of {budget_mib} MiB; \
         shorten the sequences, lower the chunk sizes or raise the budget"
    )]
    OverBudget {
        /// The backend's name.
        backend: String,
        /// Tokens of the sequence.
        n_tok: usize,
        /// Everything together, MiB.
        needs_mib: usize,
        /// The budget, MiB.
        budget_mib: usize,
        /// Parts, MiB.
        weights_mib: usize,
        adapter_mib: usize,
        sequence_mib: usize,
        graph_mib: usize,
    },
    /// A graph's compute call returned a failure status.
    #[error("{backend}: graph compute failed with status {status}")]
    Compute {
        /// The backend's name.
        backend: String,
        /// ggml's status code.
        status: i32,
    },
    /// Operand shapes or types an op does not accept (checked before ggml,
    /// which would abort the process).
    #[error("{op}: {detail}")]
    Shape {
        /// The op.
        op: &'static str,
        /// What does not fit.
        detail: String,
    },
    /// A context ran out of room for tensor or graph metadata.
    #[error("ggml context full: {detail}")]
    ContextFull {
        /// Which limit.
        detail: String,
    },
    /// Host data does not fit a device tensor (size or type), or the tensor
    /// has no memory yet.
    #[error("tensor `{name}`: {detail}")]
    Data {
        /// The tensor's name.
        name: String,
        /// What does not fit.
        detail: String,
    },
    /// A tensor type ggml cannot hold or quantize to.
    #[error("tensor `{name}`: type {ty}: {why}")]
    TensorType {
        /// Tensor name.
        name: String,
        /// Its type.
        ty: String,
        /// Why not.
        why: String,
    },
    /// A request the model cannot serve (too few tokens, a token outside
    /// the vocabulary, a sequence longer than the context, gradients of the
    /// wrong length).
    #[error("bad request: {0}")]
    BadRequest(String),
}
