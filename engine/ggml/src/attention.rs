//! Causal softmax attention with GQA in blocks of queries, forward and
//! backward, from ops every GPU backend runs (`mul_mat` on contiguous f32,
//! `soft_max` with a mask, elementwise ops, `cont`, `concat`, `pad`): no
//! flash-attention (ggml has no backward for it) and no `SOFT_MAX_BACK`
//! (Metal lacks it).
//!
//! Query block `[q0, q1)` attends to keys `0..q1`; its scores are
//! `[q1, n_q, n_head]`, so memory grows with `query_block x T`, not `T^2`.
//! Query head `h` reads key/value head `h / group` (`group = n_head /
//! n_head_kv`), ggml's `mul_mat` broadcast; the backward sums the heads of
//! a group by contracting over `(query, head in group)` at once.
//!
//! ```text
//! S = scale * K^T Q + mask      P = softmax(S)       O = V P
//! dP = V^T dO    dS = scale * P * (dP - rowsum(P * dP))
//! dQ = K dS      dK = Q dS^T    dV = dO P^T
//! ```

use crate::error::GgmlError;
use crate::ffi::Tensor;
use crate::forward::Builder;
use crate::seq::Chunks;

/// `q: [hd, n_head, T]`, `k, v: [hd, n_head_kv, T]` (after RoPE) ->
/// `[hd, n_head, T]`.
pub(crate) fn forward<'a>(
    b: &Builder<'a>,
    q: Tensor<'a>,
    k: Tensor<'a>,
    v: Tensor<'a>,
) -> Result<Tensor<'a>, GgmlError> {
    let ctx = b.ctx;
    let mut out: Option<Tensor<'a>> = None;
    for (q0, q1) in Chunks::ranges(b.seq.n_tok(), b.chunks().query_block) {
        let blk = Block::new(b, q, k, v, q0, q1)?;
        let probs = blk.probs(b)?;
        // [hd, n_q, n_head] -> [hd, n_head, n_q]
        let o = ctx.mul_mat(blk.v_t, probs)?;
        let o = ctx.cont(ctx.permute(o, [0, 2, 1, 3])?)?;
        out = Some(match out {
            None => o,
            Some(prev) => ctx.concat(prev, o, 2)?,
        });
    }
    out.ok_or_else(|| GgmlError::BadRequest("no tokens".into()))
}

/// `(dq, dk, dv)` in the layouts of `q`, `k`, `v` from `d_out: [hd,
/// n_head, T]`.
pub(crate) fn backward<'a>(
    b: &Builder<'a>,
    q: Tensor<'a>,
    k: Tensor<'a>,
    v: Tensor<'a>,
    d_out: Tensor<'a>,
) -> Result<(Tensor<'a>, Tensor<'a>, Tensor<'a>), GgmlError> {
    let ctx = b.ctx;
    let c = b.model.config();
    let (hd, n_tok) = (c.head_dim, b.seq.n_tok());
    let group = c.n_head / c.n_head_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut dq: Option<Tensor<'a>> = None;
    let (mut dk, mut dv): (Option<Tensor<'a>>, Option<Tensor<'a>>) = (None, None);
    for (q0, q1) in Chunks::ranges(n_tok, b.chunks().query_block) {
        let n_q = q1 - q0;
        let blk = Block::new(b, q, k, v, q0, q1)?;
        let probs = blk.probs(b)?;
        // dO of the block's queries, [hd, n_q, n_head].
        let d_o = tokens(b, d_out, q0, q1)?;
        let d_o = ctx.cont(ctx.permute(d_o, [0, 2, 1, 3])?)?;
        // dP = V^T dO: [q1, n_q, n_head].
        let v_p = ctx.cont(ctx.permute(tokens(b, v, 0, q1)?, [0, 2, 1, 3])?)?;
        let dp = ctx.mul_mat(v_p, d_o)?;
        // dS = scale * P * (dP - rowsum(P * dP)).
        let row = ctx.sum_rows(ctx.mul(probs, dp)?)?;
        let ds = ctx.mul(probs, ctx.add(dp, ctx.scale(row, -1.0)?)?)?;
        let ds = ctx.scale(ds, scale)?;
        // dQ = K dS: [hd, n_q, n_head].
        let k_t = ctx.cont(ctx.permute(tokens(b, k, 0, q1)?, [1, 2, 0, 3])?)?;
        let dq_b = ctx.mul_mat(k_t, ds)?;
        // dK = Q dS^T and dV = dO P^T per key/value head, contracting over
        // (query, head of the group): [hd, q1, n_head_kv].
        let by_group = |t: Tensor<'a>, n0: usize| -> Result<Tensor<'a>, GgmlError> {
            // [n0, n_q, n_head] -> [n_q * group, n0, n_head_kv]
            let t = ctx.reshape(t, &[n0, n_q, group, c.n_head_kv])?;
            let t = ctx.cont(ctx.permute(t, [2, 0, 1, 3])?)?;
            ctx.reshape(t, &[n_q * group, n0, c.n_head_kv])
        };
        let dk_b = ctx.mul_mat(by_group(blk.q_p, hd)?, by_group(ds, q1)?)?;
        let dv_b = ctx.mul_mat(by_group(d_o, hd)?, by_group(probs, q1)?)?;
        // Keys q1.. get nothing from this block.
        let pad = |t: Tensor<'a>| -> Result<Tensor<'a>, GgmlError> {
            if q1 == n_tok {
                Ok(t)
            } else {
                ctx.pad(t, [0; 4], [0, n_tok - q1, 0, 0])
            }
        };
        let (dk_b, dv_b) = (pad(dk_b)?, pad(dv_b)?);
        dk = Some(match dk {
            None => dk_b,
            Some(prev) => ctx.add(prev, dk_b)?,
        });
        dv = Some(match dv {
            None => dv_b,
            Some(prev) => ctx.add(prev, dv_b)?,
        });
        dq = Some(match dq {
            None => dq_b,
            Some(prev) => ctx.concat(prev, dq_b, 1)?,
        });
    }
    let none = || GgmlError::BadRequest("no tokens".into());
    // [hd, T, heads] -> [hd, heads, T]
    let back = |t: Option<Tensor<'a>>| -> Result<Tensor<'a>, GgmlError> {
        ctx.cont(ctx.permute(t.ok_or_else(none)?, [0, 2, 1, 3])?)
    };
    Ok((back(dq)?, back(dk)?, back(dv)?))
}

/// Tokens `[t0, t1)` of `t: [hd, heads, T]` (a contiguous view).
fn tokens<'a>(
    b: &Builder<'a>,
    t: Tensor<'a>,
    t0: usize,
    t1: usize,
) -> Result<Tensor<'a>, GgmlError> {
    let ne = t.ne();
    if t0 == 0 && t1 as i64 == ne[2] {
        // The whole tensor: no view node (ggml's automatic backward of a
        // view of a permuted gradient asserts; see `crate::reference`).
        return Ok(t);
    }
    b.ctx.view(
        t,
        [ne[0] as usize, ne[1] as usize, t1 - t0, 1],
        t0 * t.nb()[2],
    )
}

/// One query block's operands, laid out for `mul_mat`.
struct Block<'a> {
    q0: usize,
    q1: usize,
    /// `[hd, n_q, n_head]`.
    q_p: Tensor<'a>,
    /// `[hd, q1, n_head_kv]`.
    k_p: Tensor<'a>,
    /// `[q1, hd, n_head_kv]`.
    v_t: Tensor<'a>,
}

impl<'a> Block<'a> {
    fn new(
        b: &Builder<'a>,
        q: Tensor<'a>,
        k: Tensor<'a>,
        v: Tensor<'a>,
        q0: usize,
        q1: usize,
    ) -> Result<Block<'a>, GgmlError> {
        let ctx = b.ctx;
        Ok(Block {
            q0,
            q1,
            q_p: ctx.cont(ctx.permute(tokens(b, q, q0, q1)?, [0, 2, 1, 3])?)?,
            k_p: ctx.cont(ctx.permute(tokens(b, k, 0, q1)?, [0, 2, 1, 3])?)?,
            v_t: ctx.cont(ctx.permute(tokens(b, v, 0, q1)?, [1, 2, 0, 3])?)?,
        })
    }

    /// `softmax(scale * K^T Q + mask)`, `[q1, n_q, n_head]`.
    fn probs(&self, b: &Builder<'a>) -> Result<Tensor<'a>, GgmlError> {
        let ctx = b.ctx;
        let n_q = self.q1 - self.q0;
        let scale = 1.0 / (b.model.config().head_dim as f32).sqrt();
        let scores = ctx.mul_mat(self.k_p, self.q_p)?;
        let mut mask = b.seq.causal(n_q)?;
        if self.q0 > 0 {
            mask = ctx.pad(mask, [self.q0, 0, 0, 0], [0; 4])?;
        }
        ctx.soft_max_ext(scores, Some(mask), scale)
    }
}
