//! The backward of one transformer block, rebuilt from its saved input:
//! the block's forward ([`Builder::block_acts`]) and then, in reverse, the
//! backward of each piece, written from forward ops only, so that every
//! node runs on CUDA, Metal and Vulkan alike:
//!
//! - a projection's input gradient multiplies by the dequantized weight's
//!   transpose (`get_rows`, `cont(transpose)`, f32 `mul_mat`): no OUT_PROD,
//!   which CUDA refuses on quantized weights and Metal lacks;
//! - RMSNorm's backward from `rms_norm`, `sum_rows`, `sqr`, `sqrt`, `div`
//!   (Metal lacks RMS_NORM_BACK);
//! - RoPE's backward is RoPE at negated positions (the inverse rotation);
//! - SiLU's derivative from `sigmoid` (`silu' = s + silu - silu * s`);
//! - attention's in [`crate::attention::backward`].
//!
//! Only the LoRA factors get gradients; the base weights are frozen.

use crate::attention;
use crate::error::GgmlError;
use crate::ffi::Tensor;
use crate::forward::Builder;
use cleaner_models::{Architecture, Proj};

/// The gradients of one adapted projection's factors, in the factors'
/// ggml shapes (`A: [n_in, rank]`, `B: [rank, n_out]`).
pub(crate) struct FactorGrads<'a> {
    pub layer: usize,
    pub proj: Proj,
    pub a: Tensor<'a>,
    pub b: Tensor<'a>,
}

/// `d loss / d x` for block `l` with input `x` and output gradient
/// `d_out`; the LoRA factors' gradients are pushed onto `grads`.
pub(crate) fn backward<'a>(
    b: &Builder<'a>,
    l: usize,
    x: Tensor<'a>,
    d_out: Tensor<'a>,
    grads: &mut Vec<FactorGrads<'a>>,
) -> Result<Tensor<'a>, GgmlError> {
    let (ctx, model, c) = (b.ctx, b.model, b.model.config());
    let n_tok = b.seq.n_tok();
    let acts = b.block_acts(l, x)?;
    // out = x1 + Down(silu(gate) * up)
    let d_act = linear_backward(b, l, Proj::Down, acts.act, d_out, grads)?;
    let sig = ctx.sigmoid(acts.gate)?;
    let silu = ctx.mul(acts.gate, sig)?;
    let d_up = ctx.mul(d_act, silu)?;
    let d_silu = ctx.add(sig, ctx.sub(silu, ctx.mul(silu, sig)?)?)?;
    let d_gate = ctx.mul(ctx.mul(d_act, acts.up)?, d_silu)?;
    let d_xn2 = ctx.add(
        linear_backward(b, l, Proj::Gate, acts.xn2, d_gate, grads)?,
        linear_backward(b, l, Proj::Up, acts.xn2, d_up, grads)?,
    )?;
    let ffn_norm = b.weight(l, "ffn_norm.weight")?;
    let dx1 = ctx.add(d_out, rms_backward(b, acts.x1, ffn_norm, d_xn2)?)?;
    // x1 = x + O(attention(rope(norm(Q xn)), rope(norm(K xn)), V xn))
    let d_att = linear_backward(b, l, Proj::O, acts.att, dx1, grads)?;
    let d_att = ctx.reshape(d_att, &[c.head_dim, c.n_head, n_tok])?;
    let (dq, dk, dv) = attention::backward(b, acts.q, acts.k, acts.v, d_att)?;
    let neox = c.arch != Architecture::Llama;
    let neg = b.seq.neg_pos()?;
    let mut dq = ctx.rope(dq, neg, c.n_rot, neox, c.rope_freq_base)?;
    let mut dk = ctx.rope(dk, neg, c.n_rot, neox, c.rope_freq_base)?;
    if let (Some(qn), Some(kn)) = (
        model.layer_tensor(l, "attn_q_norm.weight"),
        model.layer_tensor(l, "attn_k_norm.weight"),
    ) {
        dq = rms_backward(b, acts.q_lin, qn, dq)?;
        dk = rms_backward(b, acts.k_lin, kn, dk)?;
    }
    let dq = ctx.reshape(dq, &[c.q_dim(), n_tok])?;
    let dk = ctx.reshape(dk, &[c.kv_dim(), n_tok])?;
    let dv = ctx.reshape(dv, &[c.kv_dim(), n_tok])?;
    let d_xn = ctx.add(
        ctx.add(
            linear_backward(b, l, Proj::Q, acts.xn, dq, grads)?,
            linear_backward(b, l, Proj::K, acts.xn, dk, grads)?,
        )?,
        linear_backward(b, l, Proj::V, acts.xn, dv, grads)?,
    )?;
    let attn_norm = b.weight(l, "attn_norm.weight")?;
    ctx.add(dx1, rms_backward(b, x, attn_norm, d_xn)?)
}

/// The backward of `y = W x (+ bias) + s B (A x)` (see
/// [`crate::forward::linear`]) for `x: [n_in, T]`, `dy: [n_out, T]`:
/// returns `dx = W^T dy + s A^T (B^T dy)` and pushes
/// `dA = s (B^T dy) x^T`, `dB = s dy (A x)^T` when the projection is
/// adapted.
pub(crate) fn linear_backward<'a>(
    b: &Builder<'a>,
    l: usize,
    p: Proj,
    x: Tensor<'a>,
    dy: Tensor<'a>,
    grads: &mut Vec<FactorGrads<'a>>,
) -> Result<Tensor<'a>, GgmlError> {
    let ctx = b.ctx;
    let t = |a: Tensor<'a>| ctx.cont(ctx.transpose(a)?);
    let w = b.dequant(b.proj_weight(l, p)?)?;
    let mut dx = ctx.mul_mat(t(w)?, dy)?;
    if let Some((fa, fb, s)) = b.factors(l, p) {
        let u = ctx.mul_mat(fa, x)?;
        let g = ctx.mul_mat(t(fb)?, dy)?;
        dx = ctx.add(dx, ctx.scale(ctx.mul_mat(t(fa)?, g)?, s)?)?;
        let da = ctx.scale(ctx.mul_mat(t(x)?, t(g)?)?, s)?;
        let db = ctx.scale(ctx.mul_mat(t(u)?, t(dy)?)?, s)?;
        grads.push(FactorGrads {
            layer: l,
            proj: p,
            a: da,
            b: db,
        });
    }
    Ok(dx)
}

/// The backward of `y = w * x / sqrt(mean(x^2) + eps)` over dim 0:
/// with `g = w * dy` and `x^ = rmsnorm(x)`,
/// `dx = (g - x^ * mean(g * x^)) / sqrt(mean(x^2) + eps)`.
pub(crate) fn rms_backward<'a>(
    b: &Builder<'a>,
    x: Tensor<'a>,
    w: Tensor<'a>,
    dy: Tensor<'a>,
) -> Result<Tensor<'a>, GgmlError> {
    let ctx = b.ctx;
    let eps = b.model.config().rms_eps;
    let inv_n = 1.0 / x.ne()[0] as f32;
    let g = ctx.mul(dy, w)?;
    let xhat = ctx.rms_norm(x, eps)?;
    let m = ctx.scale(ctx.sum_rows(ctx.mul(g, xhat)?)?, inv_n)?;
    let ms = ctx.scale_bias(ctx.sum_rows(ctx.sqr(x)?)?, inv_n, eps)?;
    ctx.div(ctx.sub(g, ctx.mul(xhat, m)?)?, ctx.sqrt(ms)?)
}
