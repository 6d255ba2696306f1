//! The trainer's passes over one sequence as a series of small graphs whose
//! memory does not grow with the model's depth, and grows with the
//! sequence length only through the saved block inputs:
//!
//! - forward: the embedding, then one graph per block writing its output
//!   into the sequence's residual-stream slot for the next block (every
//!   block input kept when training: activation checkpointing), then the
//!   log-prob head in chunks of positions;
//! - backward: the head's backward chunk by chunk into a gradient buffer,
//!   then one graph per block in reverse that rebuilds the block from its
//!   saved input, runs its backward ([`crate::block_backward`]) into the
//!   other gradient buffer and hands back the block's LoRA gradients.
//!
//! Each graph's intermediates live in an allocation freed when the graph
//! is done; what persists is the sequence's [`Seq`] buffer.

use crate::block_backward::{self, FactorGrads};
use crate::error::GgmlError;
use crate::ffi::{Backend, Context, Tensor};
use crate::forward::{check_tokens, Builder};
use crate::head;
use crate::seq::{Chunks, Keep, Seq};
use crate::weights::{proj_dims, DeviceLora, DeviceModel};
use cleaner_models::Lora;

/// A sequence after a training forward: its block inputs on the device,
/// ready for [`backward_from`].
pub struct Checkpoints {
    seq: Seq,
    /// The adapter generation the forward ran with (checked by the backward).
    n_pairs: usize,
}

impl Checkpoints {
    /// Bytes of device memory the sequence holds (block inputs, gradient
    /// buffers, inputs).
    pub fn bytes(&self) -> usize {
        self.seq.bytes()
    }
}

/// Runs one graph over `seq`: `build` makes its outputs (side-effect nodes
/// such as copies into the sequence's buffers included), `read` reads them
/// back after the compute.
fn run<'s, R>(
    backend: &Backend,
    model: &'s DeviceModel,
    lora: Option<&'s DeviceLora>,
    seq: &'s Seq,
    build: impl for<'a> FnOnce(&Builder<'a>) -> Result<Vec<Tensor<'a>>, GgmlError>,
    read: impl for<'a> FnOnce(&[Tensor<'a>]) -> Result<R, GgmlError>,
) -> Result<R, GgmlError> {
    let chunks = seq.chunks();
    let n_tok = seq.n_tok();
    let c = model.config();
    // Nodes per graph: a block's forward and backward are about 250 ops
    // plus 40 per query block; the head about 10 per vocabulary block.
    let q_blocks = n_tok.div_ceil(chunks.query_block);
    let v_blocks = c.n_vocab.div_ceil(chunks.vocab_block);
    let max_tensors = 1024 + 64 * q_blocks + 16 * v_blocks;
    let outside = model.n_tensors() + lora.map_or(0, |l| 2 * l.pairs().len()) + seq.n_tensors();
    let ctx = Context::new(max_tensors, outside)?;
    let b = Builder {
        ctx: &ctx,
        model,
        lora,
        seq,
    };
    let outputs: Vec<Tensor<'_>> = build(&b)?.into_iter().map(|t| t.set_output()).collect();
    let graph = ctx.graph(&outputs, false)?;
    ctx.allocate_graph(&graph, backend)?;
    backend.compute(&graph)?;
    read(&outputs)
}

/// The forward over `seq` (filled for `tokens`): the per-position log-probs,
/// with every block input left in `seq` when it keeps checkpoints.
fn forward(
    backend: &Backend,
    model: &DeviceModel,
    lora: Option<&DeviceLora>,
    seq: &Seq,
) -> Result<Vec<f32>, GgmlError> {
    let n_layer = model.config().n_layer;
    run(
        backend,
        model,
        lora,
        seq,
        |b| Ok(vec![b.ctx.cpy(b.embed()?, b.seq.x(0)?)?]),
        |_| Ok(()),
    )?;
    for l in 0..n_layer {
        run(
            backend,
            model,
            lora,
            seq,
            |b| {
                Ok(vec![b
                    .ctx
                    .cpy(b.block(l, b.seq.x(l)?)?, b.seq.x(l + 1)?)?])
            },
            |_| Ok(()),
        )?;
    }
    let n = seq.n_tok();
    let mut lp = Vec::with_capacity(n);
    for (t0, t1) in Chunks::ranges(n, seq.chunks().head_tokens) {
        let part = run(
            backend,
            model,
            lora,
            seq,
            |b| Ok(vec![b.head(b.seq.x(n_layer)?, t0, t1)?]),
            |out| out[0].get_f32(),
        )?;
        lp.extend(part);
    }
    // The last position predicts nothing.
    lp.truncate(n - 1);
    Ok(lp)
}

/// `log p(tokens[t + 1] | tokens[..=t])` for `t` in `0..n_tok - 1`, with
/// an optional adapter, in memory bounded by `chunks` (every node checked
/// with `ggml_backend_supports_op` first).
pub fn logprobs_chunked(
    backend: &Backend,
    model: &DeviceModel,
    lora: Option<&DeviceLora>,
    tokens: &[u32],
    chunks: Chunks,
) -> Result<Vec<f32>, GgmlError> {
    check_tokens(model, tokens)?;
    let seq = Seq::new(backend, model, tokens, chunks, Keep::PingPong)?;
    forward(backend, model, lora, &seq)
}

/// [`logprobs_chunked`] with the default [`Chunks`].
pub fn logprobs(
    backend: &Backend,
    model: &DeviceModel,
    lora: Option<&DeviceLora>,
    tokens: &[u32],
) -> Result<Vec<f32>, GgmlError> {
    logprobs_chunked(backend, model, lora, tokens, Chunks::default())
}

/// The forward of a training step: the log-probs and the block inputs the
/// backward needs.
pub fn forward_train(
    backend: &Backend,
    model: &DeviceModel,
    lora: &DeviceLora,
    tokens: &[u32],
    chunks: Chunks,
) -> Result<(Vec<f32>, Checkpoints), GgmlError> {
    check_tokens(model, tokens)?;
    let seq = Seq::new(backend, model, tokens, chunks, Keep::Checkpoints)?;
    let lp = forward(backend, model, Some(lora), &seq)?;
    Ok((
        lp,
        Checkpoints {
            seq,
            n_pairs: lora.pairs().len(),
        },
    ))
}

/// Adds into `grads` (an adapter shaped like `lora`, e.g. from
/// [`Lora::zeros_like`]) the gradient of `sum_t dlogprob[t] * logprob[t]`
/// with respect to every LoRA factor, for the sequence of `ckpt` (made by
/// [`forward_train`] with the same adapter values). `dlogprob: [n_tok - 1]`.
pub fn backward_from(
    backend: &Backend,
    model: &DeviceModel,
    lora: &DeviceLora,
    ckpt: &Checkpoints,
    dlogprob: &[f32],
    grads: &mut Lora,
) -> Result<(), GgmlError> {
    let seq = &ckpt.seq;
    let n = seq.n_tok();
    if dlogprob.len() != n - 1 {
        return Err(GgmlError::BadRequest(format!(
            "{} log-prob gradients for {n} tokens (expected {})",
            dlogprob.len(),
            n - 1
        )));
    }
    if ckpt.n_pairs != lora.pairs().len() {
        return Err(GgmlError::BadRequest(
            "the checkpoints were made with another adapter".into(),
        ));
    }
    check_grads(model, lora, grads)?;
    let mut g = dlogprob.to_vec();
    g.push(0.0);
    seq.dlogprob()?.set_f32(&g)?;
    let n_layer = model.config().n_layer;
    let n_embd = model.config().n_embd;
    // The head's backward, chunk by chunk, into gradient buffer 0.
    for (t0, t1) in Chunks::ranges(n, seq.chunks().head_tokens) {
        run(
            backend,
            model,
            Some(lora),
            seq,
            |b| {
                let dx = head::backward(b, b.seq.x(n_layer)?, t0, t1)?;
                let dst = b
                    .ctx
                    .view(b.seq.dx(0)?, [n_embd, t1 - t0, 1, 1], t0 * n_embd * 4)?;
                Ok(vec![b.ctx.cpy(dx, dst)?])
            },
            |_| Ok(()),
        )?;
    }
    // Blocks in reverse: block l reads gradient buffer (n_layer - 1 - l)
    // and writes the other one; block 0's input gradient is not needed.
    for l in (0..n_layer).rev() {
        let read_buf = n_layer - 1 - l;
        // Filled by the build, read by the read-back (both borrow it).
        let pairs = std::cell::RefCell::new(Vec::new());
        let values = run(
            backend,
            model,
            Some(lora),
            seq,
            |b| {
                let mut fg: Vec<FactorGrads<'_>> = Vec::new();
                let dx = block_backward::backward(b, l, b.seq.x(l)?, b.seq.dx(read_buf)?, &mut fg)?;
                let mut outs = Vec::with_capacity(2 * fg.len() + 1);
                for f in fg {
                    pairs.borrow_mut().push((f.layer, f.proj));
                    outs.push(f.a);
                    outs.push(f.b);
                }
                if l > 0 {
                    outs.push(b.ctx.cpy(dx, b.seq.dx(read_buf + 1)?)?);
                }
                Ok(outs)
            },
            |outs| {
                outs.iter()
                    .take(2 * pairs.borrow().len())
                    .map(|t| t.get_f32())
                    .collect::<Result<Vec<_>, _>>()
            },
        )?;
        for (i, (layer, proj)) in pairs.into_inner().into_iter().enumerate() {
            let pair = grads.pair_mut(layer, proj).ok_or_else(|| {
                GgmlError::BadRequest(format!(
                    "gradient buffer lacks blk.{layer}.{}",
                    proj.gguf_name()
                ))
            })?;
            for (dst, src) in [
                (&mut pair.a, &values[2 * i]),
                (&mut pair.b, &values[2 * i + 1]),
            ] {
                for (d, v) in dst.iter_mut().zip(src) {
                    *d += v;
                }
            }
        }
    }
    Ok(())
}

/// Forward and backward of one sequence: adds the gradient of
/// `sum_t dlogprob[t] * logprob[t]` into `grads` and returns the log-probs.
pub fn backward(
    backend: &Backend,
    model: &DeviceModel,
    lora: &DeviceLora,
    tokens: &[u32],
    dlogprob: &[f32],
    grads: &mut Lora,
) -> Result<Vec<f32>, GgmlError> {
    backward_chunked(
        backend,
        model,
        lora,
        tokens,
        dlogprob,
        grads,
        Chunks::default(),
    )
}

/// [`backward`] with explicit [`Chunks`].
pub fn backward_chunked(
    backend: &Backend,
    model: &DeviceModel,
    lora: &DeviceLora,
    tokens: &[u32],
    dlogprob: &[f32],
    grads: &mut Lora,
    chunks: Chunks,
) -> Result<Vec<f32>, GgmlError> {
    if dlogprob.len() + 1 != tokens.len() {
        return Err(GgmlError::BadRequest(format!(
            "{} log-prob gradients for {} tokens (expected {})",
            dlogprob.len(),
            tokens.len(),
            tokens.len().saturating_sub(1)
        )));
    }
    check_grads(model, lora, grads)?;
    let (lp, ckpt) = forward_train(backend, model, lora, tokens, chunks)?;
    backward_from(backend, model, lora, &ckpt, dlogprob, grads)?;
    Ok(lp)
}

/// Fails unless `grads` holds every adapted pair of `lora` at its shape.
pub(crate) fn check_grads(
    model: &DeviceModel,
    lora: &DeviceLora,
    grads: &Lora,
) -> Result<(), GgmlError> {
    for &(l, p) in lora.pairs() {
        let fits = grads.pair(l, p).is_some_and(|g| {
            let (n_out, n_in) = proj_dims(model.config(), p);
            g.a.len() == lora.rank() * n_in && g.b.len() == n_out * lora.rank()
        });
        if !fits {
            return Err(GgmlError::BadRequest(format!(
                "gradient buffer lacks blk.{l}.{} of rank {}",
                p.gguf_name(),
                lora.rank()
            )));
        }
    }
    Ok(())
}
