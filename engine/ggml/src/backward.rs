//! LoRA gradients through ggml's automatic differentiation: the forward graph
//! of [`crate::forward`], a loss `sum_t dlogprob[t] * logprob[t]` (the
//! contract of `cleaner_models::Transformer::backward`: the caller's loss
//! gives `dlogprob`), the adapter's A and B factors as the only parameters,
//! and `ggml_build_backward_expand` for the rest.
//!
//! This differentiates the whole sequence at once and keeps every
//! activation, including each layer's dequantized weights and its
//! `n_tok x n_tok x n_head` attention scores, until the backward uses them:
//! right for tests and short sequences, not for T = 4096. The backward also
//! uses OUT_PROD, RMS_NORM_BACK and SOFT_MAX_BACK, which ggml's CPU backend
//! runs and some GPU backends lack; [`crate::ffi::Backend::compute`] refuses
//! such a graph with a typed error before running it. The block-checkpointed
//! backward built from forward ops replaces it (see the crate docs).

use crate::error::GgmlError;
use crate::ffi::{types, Backend, Context};
use crate::forward::{build, check_tokens, max_tensors};
use crate::weights::{DeviceLora, DeviceModel};
use cleaner_models::Lora;

/// Adds into `grads` (an adapter shaped like the one on the device, e.g.
/// from [`Lora::zeros_like`]) the gradient of `sum_t dlogprob[t] *
/// logprob[t]` with respect to every LoRA factor, and returns the
/// log-probs. `dlogprob: [n_tok - 1]`.
pub fn backward(
    backend: &Backend,
    model: &DeviceModel,
    lora: &DeviceLora,
    tokens: &[u32],
    dlogprob: &[f32],
    grads: &mut Lora,
) -> Result<Vec<f32>, GgmlError> {
    check_tokens(model, tokens)?;
    let n = tokens.len() - 1;
    if dlogprob.len() != n {
        return Err(GgmlError::BadRequest(format!(
            "{} log-prob gradients for {} tokens (expected {n})",
            dlogprob.len(),
            tokens.len()
        )));
    }
    for &(l, p) in lora.pairs() {
        let fits = grads.pair(l, p).is_some_and(|g| {
            let (n_out, n_in) = crate::weights::proj_dims(model.config(), p);
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
    let outside = model.n_tensors() + 2 * lora.pairs().len();
    let ctx = Context::new(max_tensors(model, 10), outside)?;
    let (inputs, lp) = build(&ctx, model, Some(lora), tokens.len())?;
    let lp = lp.set_output();
    let dlp = ctx.new_tensor(types::F32, &[1, n], "dlogprob")?.set_input();
    let loss = ctx.sum(ctx.mul(lp, dlp)?)?.set_loss()?;
    let mut params = Vec::new();
    for &(l, p) in lora.pairs() {
        if let Some((a, b)) = lora.factors(l, p) {
            params.push(a.set_param()?);
            params.push(b.set_param()?);
        }
    }
    let mut graph = ctx.graph(&[loss], true)?;
    graph.build_backward(loss, &params)?;
    let mut grad_tensors = Vec::with_capacity(params.len());
    for &p in &params {
        // A parameter the loss does not reach has no gradient (cannot
        // happen: every factor feeds a projection), and reads as zero.
        grad_tensors.push(graph.grad(p).map(|g| g.set_output()));
    }
    ctx.allocate_graph(&graph, backend)?;
    inputs.fill(tokens, model.config().n_vocab)?;
    dlp.set_f32(dlogprob)?;
    backend.compute(&graph)?;
    let mut it = grad_tensors.into_iter();
    for &(l, p) in lora.pairs() {
        let pair = grads.pair_mut(l, p).ok_or_else(|| {
            GgmlError::BadRequest(format!("gradient buffer lacks blk.{l}.{}", p.gguf_name()))
        })?;
        for dst in [&mut pair.a, &mut pair.b] {
            if let Some(Some(g)) = it.next() {
                for (d, v) in dst.iter_mut().zip(g.get_f32()?) {
                    *d += v;
                }
            }
        }
    }
    lp.get_f32()
}
