//! The log-prob head's backward over positions `[t0, t1)`, from forward
//! ops: with `p = softmax(logits)` and `g = d loss / d logprob`,
//! `d logits = g * (onehot(target) - p)`, so
//!
//! ```text
//! dh = W_out[target] * g  -  sum over vocabulary blocks W_v^T (p_v * g)
//! ```
//!
//! The first term dequantizes only the target rows (`get_rows`); the second
//! one vocabulary block of the output matrix at a time, as the forward
//! does. Then the final RMSNorm's backward.

use crate::block_backward::rms_backward;
use crate::error::GgmlError;
use crate::ffi::Tensor;
use crate::forward::Builder;
use crate::seq::Chunks;

/// `d loss / d x` for positions `[t0, t1)` of the last block's output `x`,
/// `[n_embd, t1 - t0]`, given `d loss / d logprob` in the sequence's
/// `dlogprob` tensor.
pub(crate) fn backward<'a>(
    b: &Builder<'a>,
    x: Tensor<'a>,
    t0: usize,
    t1: usize,
) -> Result<Tensor<'a>, GgmlError> {
    let ctx = b.ctx;
    let c = b.model.config();
    let n = t1 - t0;
    let (xc, h) = b.head_input(x, t0, t1)?;
    let p = ctx.soft_max_ext(b.logits(h)?, None, 1.0)?;
    let g = ctx.view(b.seq.dlogprob()?, [1, n, 1, 1], t0 * 4)?;
    let dz = ctx.mul(p, g)?;
    let targets = ctx.view(b.seq.target_ids()?, [n, 1, 1, 1], t0 * 4)?;
    let mut dh = ctx.mul(ctx.get_rows(b.model.output()?, targets)?, g)?;
    for (v0, v1) in Chunks::ranges(c.n_vocab, b.chunks().vocab_block) {
        let w_t = ctx.cont(ctx.transpose(b.output_rows(v0, v1)?)?)?;
        let dz_v = ctx.cont(ctx.view(dz, [v1 - v0, n, 1, 1], v0 * 4)?)?;
        dh = ctx.sub(dh, ctx.mul_mat(w_t, dz_v)?)?;
    }
    rms_backward(b, xc, b.model.tensor("output_norm.weight")?, dh)
}
