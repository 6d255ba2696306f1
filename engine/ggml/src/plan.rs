//! Today's graphs, built but not computed, for the op audit
//! ([`crate::audit`]) and memory planning ([`plan_bytes`]): over planned
//! weights ([`DeviceModel::planned`]) they need no model file and no memory.

use crate::error::GgmlError;
use crate::ffi::{types, Backend, Context, Graph};
use crate::forward::{build, max_tensors};
use crate::weights::{DeviceLora, DeviceModel};

/// Working memory `graph` would take on `backend`'s buffer type: ggml's
/// graph allocator plans it without allocating (see [`Graph::plan_bytes`];
/// weights and adapters are not counted).
pub fn plan_bytes(graph: &Graph<'_>, backend: &Backend) -> Result<usize, GgmlError> {
    graph.plan_bytes(backend)
}

fn outside(model: &DeviceModel, lora: Option<&DeviceLora>) -> usize {
    model.n_tensors() + lora.map_or(0, |l| 2 * l.pairs().len())
}

/// A context with room for [`forward_graph`] over `model` (and `lora`).
pub fn forward_context(
    model: &DeviceModel,
    lora: Option<&DeviceLora>,
) -> Result<Context, GgmlError> {
    Context::new(max_tensors(model, 1), outside(model, lora))
}

/// The log-prob graph [`crate::logprobs`] computes, for `n_tok` tokens, in
/// `ctx` (from [`forward_context`]).
pub fn forward_graph<'a>(
    ctx: &'a Context,
    model: &'a DeviceModel,
    lora: Option<&'a DeviceLora>,
    n_tok: usize,
) -> Result<Graph<'a>, GgmlError> {
    check_len(model, n_tok)?;
    let (_, lp) = build(ctx, model, lora, n_tok)?;
    ctx.graph(&[lp.set_output()], false)
}

/// A context with room for [`autograd_backward_graph`].
pub fn backward_context(model: &DeviceModel, lora: &DeviceLora) -> Result<Context, GgmlError> {
    Context::new(max_tensors(model, 10), outside(model, Some(lora)))
}

/// The graph [`crate::backward()`] computes (ggml's automatic backward of
/// `sum_t dlogprob[t] * logprob[t]` with respect to every LoRA factor), for
/// `n_tok` tokens, in `ctx` (from [`backward_context`]). Built the same way
/// as there, step for step; it goes with that backward when the
/// block-checkpointed one replaces it.
pub fn autograd_backward_graph<'a>(
    ctx: &'a Context,
    model: &'a DeviceModel,
    lora: &'a DeviceLora,
    n_tok: usize,
) -> Result<Graph<'a>, GgmlError> {
    check_len(model, n_tok)?;
    let (_, lp) = build(ctx, model, Some(lora), n_tok)?;
    let lp = lp.set_output();
    let dlp = ctx
        .new_tensor(types::F32, &[1, n_tok - 1], "dlogprob")?
        .set_input();
    let loss = ctx.sum(ctx.mul(lp, dlp)?)?.set_loss()?;
    let mut factors = Vec::with_capacity(2 * lora.pairs().len());
    for &(l, p) in lora.pairs() {
        let (a, b) = lora.factors(l, p).ok_or_else(|| {
            GgmlError::BadRequest(format!("adapter lacks blk.{l}.{}", p.gguf_name()))
        })?;
        factors.push(a.set_param()?);
        factors.push(b.set_param()?);
    }
    let mut graph = ctx.graph(&[loss], true)?;
    graph.build_backward(loss, &factors)?;
    for f in &factors {
        if let Some(g) = graph.grad(*f) {
            g.set_output();
        }
    }
    Ok(graph)
}

fn check_len(model: &DeviceModel, n_tok: usize) -> Result<(), GgmlError> {
    let max = model.config().context_length;
    if n_tok < 2 || n_tok > max {
        return Err(GgmlError::BadRequest(format!(
            "{n_tok} tokens: a graph needs 2 to {max} (the model's context length)"
        )));
    }
    Ok(())
}
