//! The test reference for [`crate::train`]: LoRA gradients through ggml's
//! automatic differentiation of the whole-sequence forward (one query
//! block, one head chunk, one vocabulary block: the same [`Builder`]
//! pieces in a single graph), a loss `sum_t dlogprob[t] * logprob[t]` (the
//! contract of `cleaner_models::Transformer::backward`), the adapter's A
//! and B factors as the only parameters, and `ggml_build_backward_expand`
//! for the rest.
//!
//! It keeps every activation of the sequence, including `T x T x n_head`
//! attention scores, and its backward uses OUT_PROD, RMS_NORM_BACK and
//! SOFT_MAX_BACK, which some GPU backends lack: right for tests on the CPU
//! backend, not for training.

use crate::error::GgmlError;
use crate::ffi::{types, Backend, Context, Graph, Tensor};
use crate::forward::{check_tokens, Builder};
use crate::seq::{Chunks, Keep, Seq};
use crate::train::check_backward;
use crate::weights::{DeviceLora, DeviceModel};
use cleaner_models::{Lora, Proj};

/// Chunk sizes that make every piece cover the whole sequence.
fn whole(model: &DeviceModel, n_tok: usize) -> Chunks {
    Chunks {
        query_block: n_tok,
        head_tokens: n_tok,
        vocab_block: model.config().n_vocab,
    }
}

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
    let n = tokens.len();
    check_backward(model, lora, n, dlogprob, grads)?;
    let seq = Seq::new(backend, model, tokens, whole(model, n), Keep::PingPong)?;
    let ctx = context(model, lora, &seq)?;
    let step = build(&ctx, model, lora, &seq)?;
    ctx.allocate_graph(&step.graph, backend)?;
    let mut padded = dlogprob.to_vec();
    padded.push(0.0);
    step.dlp.set_f32(&padded)?;
    backend.compute(&step.graph)?;
    for ((l, p), [grad_a, grad_b]) in step.grads {
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
    let mut lp = step.lp.get_f32()?;
    lp.truncate(n - 1);
    Ok(lp)
}

/// The autograd graph with its log-prob output, its `dlogprob` input and
/// each adapted pair's gradient tensors.
struct Autograd<'a> {
    graph: Graph<'a>,
    lp: Tensor<'a>,
    dlp: Tensor<'a>,
    grads: Vec<GradPair<'a>>,
}

/// `((layer, projection), [dA, dB])`.
type GradPair<'a> = ((usize, Proj), [Option<Tensor<'a>>; 2]);

fn context(model: &DeviceModel, lora: &DeviceLora, seq: &Seq) -> Result<Context, GgmlError> {
    let outside = model.n_tensors() + 2 * lora.pairs().len() + seq.n_tensors();
    Context::new((128 * model.config().n_layer + 64) * 10, outside)
}

fn build<'a>(
    ctx: &'a Context,
    model: &'a DeviceModel,
    lora: &'a DeviceLora,
    seq: &'a Seq,
) -> Result<Autograd<'a>, GgmlError> {
    let n = seq.n_tok();
    let b = Builder {
        ctx,
        model,
        lora: Some(lora),
        seq,
    };
    let mut x = b.embed()?;
    for l in 0..model.config().n_layer {
        x = b.block(l, x)?;
    }
    // All n positions; the last one's (of token 0) gets weight 0.
    let lp = b.head(x, 0, n)?.set_output();
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
    let grads = params
        .iter()
        .map(|&(pair, a, b)| (pair, [a, b].map(|f| graph.grad(f).map(|g| g.set_output()))))
        .collect();
    Ok(Autograd {
        graph,
        lp,
        dlp,
        grads,
    })
}

/// Builds the autograd graph over `n_tok` tokens on a planned sequence
/// (nothing allocated or computed) and hands it to `f`: for the audit,
/// which must find the backward ops some GPUs lack in it.
pub fn with_autograd_graph<R>(
    model: &DeviceModel,
    lora: &DeviceLora,
    n_tok: usize,
    f: impl FnOnce(&Graph<'_>) -> R,
) -> Result<R, GgmlError> {
    crate::plan::check_len(model, n_tok)?;
    let seq = Seq::planned(model, n_tok, whole(model, n_tok), Keep::PingPong)?;
    let ctx = context(model, lora, &seq)?;
    let step = build(&ctx, model, lora, &seq)?;
    Ok(f(&step.graph))
}
