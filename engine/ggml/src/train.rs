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
use crate::ffi::{Backend, Context, Graph, Tensor, Workspace};
use crate::forward::{check_tokens, Builder};
use crate::head;
use crate::seq::{Chunks, Keep, Seq};
use crate::weights::{proj_dims, DeviceLora, DeviceModel};
use cleaner_models::{Lora, Proj};

/// A sequence after a training forward: its block inputs on the device,
/// ready for [`backward_from`].
pub struct Checkpoints {
    seq: Seq,
    /// The buffer every stage graph of the step borrows in turn.
    workspace: Workspace,
    /// How many pairs the adapter the forward ran with adapts (checked by
    /// the backward: another adapter's gradients would not fit).
    n_pairs: usize,
}

impl Checkpoints {
    /// Bytes of device memory the sequence holds (block inputs, gradient
    /// buffers, inputs).
    pub fn bytes(&self) -> usize {
        self.seq.bytes()
    }

    /// Bytes of the stage graphs' shared working buffer (its size is the
    /// largest graph computed so far).
    pub fn workspace_bytes(&self) -> usize {
        self.workspace.bytes()
    }
}

/// One graph of a pass over a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Token embeddings into residual slot 0.
    Embed,
    /// Block `l`: slot `l` in, slot `l + 1` out.
    Block(usize),
    /// Log-probs of positions `[t0, t1)` from the last slot.
    Head(usize, usize),
    /// The head's backward for positions `[t0, t1)` into gradient buffer 0.
    HeadBackward(usize, usize),
    /// Block `l`'s backward: its LoRA gradients, and its input's gradient
    /// into the other gradient buffer (not for block 0, where nothing
    /// needs it).
    BlockBackward(usize),
}

impl Stage {
    /// Every stage of a forward (`training = false`) or a training step
    /// (forward and backward) over `n_tok` tokens, in order.
    pub fn all(n_layer: usize, n_tok: usize, chunks: Chunks, training: bool) -> Vec<Stage> {
        let heads = || Chunks::ranges(n_tok, chunks.head_tokens);
        let mut v = vec![Stage::Embed];
        v.extend((0..n_layer).map(Stage::Block));
        v.extend(heads().map(|(a, b)| Stage::Head(a, b)));
        if training {
            v.extend(heads().map(|(a, b)| Stage::HeadBackward(a, b)));
            v.extend((0..n_layer).rev().map(Stage::BlockBackward));
        }
        v
    }
}

/// A built stage: its graph, its outputs, and for a block backward the
/// `(layer, projection)` of each pair of gradient outputs (A then B),
/// which come first.
pub(crate) struct Built<'a> {
    pub graph: Graph<'a>,
    pub outputs: Vec<Tensor<'a>>,
    pub pairs: Vec<(usize, Proj)>,
}

/// Builds `stage`'s graph over `seq` in a fresh context and hands it to
/// `use_graph` (compute it, plan it, audit it).
pub(crate) fn with_stage<R>(
    model: &DeviceModel,
    lora: Option<&DeviceLora>,
    seq: &Seq,
    stage: Stage,
    use_graph: impl for<'a> FnOnce(&'a Context, Built<'a>) -> Result<R, GgmlError>,
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
    let mut pairs = Vec::new();
    let outputs = build_stage(&b, stage, &mut pairs)?;
    let outputs: Vec<Tensor<'_>> = outputs.into_iter().map(|t| t.set_output()).collect();
    let graph = ctx.graph(&outputs, false)?;
    use_graph(
        &ctx,
        Built {
            graph,
            outputs,
            pairs,
        },
    )
}

/// The outputs of `stage` (copies into the sequence's buffers included).
fn build_stage<'a>(
    b: &Builder<'a>,
    stage: Stage,
    pairs: &mut Vec<(usize, Proj)>,
) -> Result<Vec<Tensor<'a>>, GgmlError> {
    let (ctx, seq) = (b.ctx, b.seq);
    let n_layer = b.model.config().n_layer;
    let n_embd = b.model.config().n_embd;
    Ok(match stage {
        Stage::Embed => vec![ctx.cpy(b.embed()?, seq.x(0)?)?],
        Stage::Block(l) => vec![ctx.cpy(b.block(l, seq.x(l)?)?, seq.x(l + 1)?)?],
        Stage::Head(t0, t1) => vec![b.head(seq.x(n_layer)?, t0, t1)?],
        Stage::HeadBackward(t0, t1) => {
            let dx = head::backward(b, seq.x(n_layer)?, t0, t1)?;
            let dst = ctx.view(seq.dx(0)?, [n_embd, t1 - t0, 1, 1], t0 * n_embd * 4)?;
            vec![ctx.cpy(dx, dst)?]
        }
        Stage::BlockBackward(l) => {
            // Block l reads gradient buffer (n_layer - 1 - l) and writes
            // the other one.
            let read = n_layer - 1 - l;
            let mut grads: Vec<FactorGrads<'_>> = Vec::new();
            let dx = block_backward::backward(b, l, seq.x(l)?, seq.dx(read)?, &mut grads)?;
            let mut outs = Vec::with_capacity(2 * grads.len() + 1);
            for g in grads {
                pairs.push((g.layer, g.proj));
                outs.push(g.a);
                outs.push(g.b);
            }
            if l > 0 {
                outs.push(ctx.cpy(dx, seq.dx(read + 1)?)?);
            }
            outs
        }
    })
}

/// A computed stage's read-back values and the pairs its gradients belong to.
type StageValues = (Vec<Vec<f32>>, Vec<(usize, Proj)>);

/// Computes `stage` on `backend`; returns the values of its log-prob or
/// gradient outputs (none for stages that only write the sequence's
/// buffers) with the pairs the gradients belong to.
fn run(
    backend: &Backend,
    ws: &mut Workspace,
    model: &DeviceModel,
    lora: Option<&DeviceLora>,
    seq: &Seq,
    stage: Stage,
) -> Result<StageValues, GgmlError> {
    with_stage(model, lora, seq, stage, |ctx, built| {
        let _attached = ctx.allocate_graph_in(&built.graph, ws)?;
        backend.compute(&built.graph)?;
        let n_read = match stage {
            Stage::Head(..) => 1,
            Stage::BlockBackward(_) => 2 * built.pairs.len(),
            _ => 0,
        };
        let values = built.outputs[..n_read]
            .iter()
            .map(|t| t.get_f32())
            .collect::<Result<Vec<_>, _>>()?;
        Ok((values, built.pairs))
    })
}

/// The forward over `seq` (filled for `tokens`): the per-position log-probs,
/// with every block input left in `seq` when it keeps checkpoints.
fn forward(
    backend: &Backend,
    ws: &mut Workspace,
    model: &DeviceModel,
    lora: Option<&DeviceLora>,
    seq: &Seq,
) -> Result<Vec<f32>, GgmlError> {
    let n = seq.n_tok();
    let mut lp = Vec::with_capacity(n);
    for stage in Stage::all(model.config().n_layer, n, seq.chunks(), false) {
        let (values, _) = run(backend, ws, model, lora, seq, stage)?;
        for v in values {
            lp.extend(v);
        }
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
    forward(backend, &mut Workspace::new(backend)?, model, lora, &seq)
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
    let mut workspace = Workspace::new(backend)?;
    let lp = forward(backend, &mut workspace, model, Some(lora), &seq)?;
    Ok((
        lp,
        Checkpoints {
            seq,
            workspace,
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
    ckpt: &mut Checkpoints,
    dlogprob: &[f32],
    grads: &mut Lora,
) -> Result<(), GgmlError> {
    let seq = &ckpt.seq;
    let n = seq.n_tok();
    if ckpt.n_pairs != lora.pairs().len() {
        return Err(GgmlError::BadRequest(
            "the checkpoints were made with another adapter".into(),
        ));
    }
    check_backward(model, lora, n, dlogprob, grads)?;
    let mut g = dlogprob.to_vec();
    g.push(0.0);
    seq.dlogprob()?.set_f32(&g)?;
    let c = model.config();
    let stages = Stage::all(c.n_layer, n, seq.chunks(), true);
    for stage in stages
        .into_iter()
        .filter(|s| matches!(s, Stage::HeadBackward(..) | Stage::BlockBackward(_)))
    {
        let (values, pairs) = run(backend, &mut ckpt.workspace, model, Some(lora), seq, stage)?;
        for (i, (layer, proj)) in pairs.into_iter().enumerate() {
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
    // Before the forward, so that a bad request costs nothing.
    check_backward(model, lora, tokens.len(), dlogprob, grads)?;
    let (lp, mut ckpt) = forward_train(backend, model, lora, tokens, chunks)?;
    backward_from(backend, model, lora, &mut ckpt, dlogprob, grads)?;
    Ok(lp)
}

/// Fails unless `dlogprob` has one entry per predicted position of an
/// `n_tok`-token sequence and `grads` holds every adapted pair of `lora` at
/// its shape.
pub(crate) fn check_backward(
    model: &DeviceModel,
    lora: &DeviceLora,
    n_tok: usize,
    dlogprob: &[f32],
    grads: &Lora,
) -> Result<(), GgmlError> {
    if dlogprob.len() + 1 != n_tok {
        return Err(GgmlError::BadRequest(format!(
            "{} log-prob gradients for {n_tok} tokens (expected {})",
            dlogprob.len(),
            n_tok.saturating_sub(1)
        )));
    }
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
