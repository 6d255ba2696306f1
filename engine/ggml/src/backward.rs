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
    // Per adapted projection, its A and B marked as parameters; one list
    // serves both the backward and reading the gradients back.
    let mut params = Vec::with_capacity(lora.pairs().len());
    for &(l, p) in lora.pairs() {
        let (a, b) = lora.factors(l, p).ok_or_else(|| {
            GgmlError::BadRequest(format!("adapter lacks blk.{l}.{}", p.gguf_name()))
        })?;
        params.push(((l, p), a.set_param()?, b.set_param()?));
    }
    let factors: Vec<_> = params.iter().flat_map(|&(_, a, b)| [a, b]).collect();
    let mut graph = ctx.graph(&[loss], true)?;
    graph.build_backward(loss, &factors)?;
    // A parameter the loss does not reach has no gradient (cannot happen:
    // every factor feeds a projection), and reads as zero.
    let grad_tensors: Vec<_> = params
        .iter()
        .map(|&(pair, a, b)| (pair, [a, b].map(|f| graph.grad(f).map(|g| g.set_output()))))
        .collect();
    ctx.allocate_graph(&graph, backend)?;
    inputs.fill(tokens, model.config().n_vocab)?;
    dlp.set_f32(dlogprob)?;
    backend.compute(&graph)?;
    for ((l, p), [grad_a, grad_b]) in grad_tensors {
        let pair = grads.pair_mut(l, p).ok_or_else(|| {
            GgmlError::BadRequest(format!("gradient buffer lacks blk.{l}.{}", p.gguf_name()))
        })?;
        for (dst, grad) in [(&mut pair.a, grad_a), (&mut pair.b, grad_b)] {
            if let Some(g) = grad {
                for (d, v) in dst.iter_mut().zip(g.get_f32()?) {
                    *d += v;
                }
            }
        }
    }
    lp.get_f32()
}
