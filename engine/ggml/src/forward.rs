//! The trainer's forward pass as one ggml graph: token ids in, per-position
//! log-probabilities of the next token out, the function
//! `cleaner_models::Transformer::forward` computes on our CPU kernels:
//!
//! ```text
//! x += Wo . attention(rope(Wq . rmsnorm(x)), rope(Wk . rmsnorm(x)), Wv . rmsnorm(x))
//! x += Wdown . (silu(Wgate . rmsnorm(x)) * Wup . rmsnorm(x))
//! logprob[t] = log_softmax(Wout . rmsnorm(x[t]))[token[t + 1]]
//! ```
//!
//! with q/k/v biases (qwen2), per-head q/k RMSNorm before RoPE (qwen3), GQA
//! (query head `h` reads key/value head `h / (n_head / n_head_kv)`, ggml's
//! `mul_mat` broadcast), RoPE in llama.cpp's mode for the family (`NORM` for
//! llama, whose converter permutes q/k rows; `NEOX` for qwen2/qwen3).
//!
//! Every product with a base weight goes through `linear`, the one choke
//! point of LoRA: `y = x W^T (+ b) + (alpha / rank) (x A^T) B^T`. `W` is first
//! dequantized to f32 with `get_rows` (a transient of one matrix), so the
//! product is f32 x f32 as in the CPU trainer. ggml's quantized `mul_mat`
//! would round the activations to 8 bits (as llama.cpp's inference does) and
//! agree with the CPU trainer only to about 1e-2; the f32 path agrees to f32
//! rounding, and `get_rows` on quantized types runs on every backend, which
//! the backward pass needs anyway (CUDA's OUT_PROD refuses quantized inputs).

//!
//! Attention runs in blocks of queries (block `[q0, q1)` reads keys
//! `0..q1`, its mask the causal triangle left-padded with `q0` zeros), and
//! the head in chunks of positions with the output matrix dequantized a
//! vocabulary block at a time (see [`crate::seq::Chunks`]). With one block
//! and one chunk covering the sequence, the graph is the whole-sequence
//! forward that ggml's automatic backward differentiates
//! ([`crate::reference`]).
//!
//! [`Builder::block_acts`] returns every intermediate of a block: the
//! forward keeps only its output, the backward ([`crate::block_backward`])
//! rebuilds the block from its saved input and reads them.

use crate::error::GgmlError;
use crate::ffi::{Context, Tensor};
use crate::seq::{Chunks, Seq};
use crate::weights::{DeviceLora, DeviceModel};
use cleaner_models::{Architecture, Proj};

/// The pieces of the graphs, each a function of its input tensor: `embed`,
/// one `block` per layer (the unit of activation checkpointing) and the
/// log-prob `head` over a range of positions (the unit of chunking).
pub(crate) struct Builder<'a> {
    pub ctx: &'a Context,
    pub model: &'a DeviceModel,
    pub lora: Option<&'a DeviceLora>,
    pub seq: &'a Seq,
}

/// Every intermediate of one block's forward, for its backward.
pub(crate) struct BlockActs<'a> {
    /// `rmsnorm(x) * attn_norm`.
    pub xn: Tensor<'a>,
    /// q and k before their per-head norm (qwen3) and RoPE, as
    /// `[hd, heads, T]`.
    pub q_lin: Tensor<'a>,
    pub k_lin: Tensor<'a>,
    /// After RoPE: what attention reads.
    pub q: Tensor<'a>,
    pub k: Tensor<'a>,
    /// `[hd, n_head_kv, T]`.
    pub v: Tensor<'a>,
    /// Attention output, `[q_dim, T]`.
    pub att: Tensor<'a>,
    /// The residual stream after attention.
    pub x1: Tensor<'a>,
    /// `rmsnorm(x1) * ffn_norm`.
    pub xn2: Tensor<'a>,
    pub gate: Tensor<'a>,
    pub up: Tensor<'a>,
    /// `silu(gate) * up`.
    pub act: Tensor<'a>,
    /// The block's output.
    pub out: Tensor<'a>,
}

impl<'a> Builder<'a> {
    pub fn chunks(&self) -> Chunks {
        self.seq.chunks()
    }

    /// A weight matrix `[n_in, n_out]` dequantized to f32 (a transient).
    pub fn dequant(&self, w: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        let rows = self.seq.rows(self.ctx, 0, w.ne()[1] as usize)?;
        self.ctx.get_rows(w, rows)
    }

    /// `rmsnorm(x) * w` over dim 0.
    pub fn rms(&self, x: Tensor<'a>, w: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        self.ctx
            .mul(self.ctx.rms_norm(x, self.model.config().rms_eps)?, w)
    }

    pub fn weight(&self, l: usize, stem: &str) -> Result<Tensor<'a>, GgmlError> {
        self.model.tensor(&format!("blk.{l}.{stem}"))
    }

    /// The base matrix of projection `p` in block `l` (stored type).
    pub fn proj_weight(&self, l: usize, p: Proj) -> Result<Tensor<'a>, GgmlError> {
        self.weight(l, &format!("{}.weight", p.gguf_name()))
    }

    /// `(A, B, alpha / rank)` of projection `p` in block `l`, if adapted.
    pub fn factors(&self, l: usize, p: Proj) -> Option<(Tensor<'a>, Tensor<'a>, f32)> {
        let d = self.lora?;
        d.factors(l, p).map(|(a, b)| (a, b, d.scale()))
    }

    /// Projection `p` of block `l` on `x: [n_in, T]`, through [`linear`].
    fn lin(
        &self,
        l: usize,
        p: Proj,
        x: Tensor<'a>,
        bias: Option<Tensor<'a>>,
    ) -> Result<Tensor<'a>, GgmlError> {
        let w = self.dequant(self.proj_weight(l, p)?)?;
        linear(self.ctx, x, w, bias, self.factors(l, p))
    }

    /// The token embeddings, `[n_embd, T]`.
    pub fn embed(&self) -> Result<Tensor<'a>, GgmlError> {
        self.ctx
            .get_rows(self.model.tensor("token_embd.weight")?, self.seq.tokens()?)
    }

    /// Block `l`: `x: [n_embd, T]` in, the residual stream after it out.
    pub fn block(&self, l: usize, x: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        Ok(self.block_acts(l, x)?.out)
    }

    /// Block `l` with every intermediate.
    pub fn block_acts(&self, l: usize, x: Tensor<'a>) -> Result<BlockActs<'a>, GgmlError> {
        let (ctx, model, c) = (self.ctx, self.model, self.model.config());
        let (hd, n_tok) = (c.head_dim, self.seq.n_tok());
        let neox = c.arch != Architecture::Llama;
        // Attention.
        let xn = self.rms(x, self.weight(l, "attn_norm.weight")?)?;
        let q = self.lin(l, Proj::Q, xn, model.layer_tensor(l, "attn_q.bias"))?;
        let k = self.lin(l, Proj::K, xn, model.layer_tensor(l, "attn_k.bias"))?;
        let v = self.lin(l, Proj::V, xn, model.layer_tensor(l, "attn_v.bias"))?;
        let q_lin = ctx.reshape(q, &[hd, c.n_head, n_tok])?;
        let k_lin = ctx.reshape(k, &[hd, c.n_head_kv, n_tok])?;
        let v = ctx.reshape(v, &[hd, c.n_head_kv, n_tok])?;
        let (q_normed, k_normed) = match (
            model.layer_tensor(l, "attn_q_norm.weight"),
            model.layer_tensor(l, "attn_k_norm.weight"),
        ) {
            (Some(qn), Some(kn)) => (self.rms(q_lin, qn)?, self.rms(k_lin, kn)?),
            _ => (q_lin, k_lin),
        };
        let pos = self.seq.pos()?;
        let q = ctx.rope(q_normed, pos, c.n_rot, neox, c.rope_freq_base)?;
        let k = ctx.rope(k_normed, pos, c.n_rot, neox, c.rope_freq_base)?;
        let att = crate::attention::forward(self, q, k, v)?;
        let att = ctx.reshape(att, &[c.q_dim(), n_tok])?;
        let x1 = ctx.add(x, self.lin(l, Proj::O, att, None)?)?;
        // Feed-forward.
        let xn2 = self.rms(x1, self.weight(l, "ffn_norm.weight")?)?;
        let gate = self.lin(l, Proj::Gate, xn2, None)?;
        let up = self.lin(l, Proj::Up, xn2, None)?;
        let act = ctx.mul(ctx.silu(gate)?, up)?;
        let out = ctx.add(x1, self.lin(l, Proj::Down, act, None)?)?;
        Ok(BlockActs {
            xn,
            q_lin,
            k_lin,
            q,
            k,
            v,
            att,
            x1,
            xn2,
            gate,
            up,
            act,
            out,
        })
    }

    /// The output matrix's rows `[v0, v1)` dequantized, `[n_embd, v1 - v0]`.
    pub fn output_rows(&self, v0: usize, v1: usize) -> Result<Tensor<'a>, GgmlError> {
        let rows = self.seq.rows(self.ctx, v0, v1 - v0)?;
        self.ctx.get_rows(self.model.output()?, rows)
    }

    /// The logits of `h: [n_embd, n]`, `[n_vocab, n]`: the output matrix
    /// dequantized one vocabulary block at a time, the blocks' logits
    /// joined.
    pub fn logits(&self, h: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        let n_vocab = self.model.config().n_vocab;
        let mut logits: Option<Tensor<'a>> = None;
        for (v0, v1) in Chunks::ranges(n_vocab, self.chunks().vocab_block) {
            let part = self.ctx.mul_mat(self.output_rows(v0, v1)?, h)?;
            logits = Some(match logits {
                None => part,
                Some(l) => self.ctx.concat(l, part, 0)?,
            });
        }
        logits.ok_or_else(|| GgmlError::BadRequest("empty vocabulary".into()))
    }

    /// The final norm of positions `[t0, t1)` of the last block's output
    /// `x: [n_embd, T]`: `(x_chunk, rmsnorm(x_chunk) * output_norm)`.
    pub fn head_input(
        &self,
        x: Tensor<'a>,
        t0: usize,
        t1: usize,
    ) -> Result<(Tensor<'a>, Tensor<'a>), GgmlError> {
        let xc = if t0 == 0 && t1 as i64 == x.ne()[1] {
            x
        } else {
            self.ctx
                .view(x, [x.ne()[0] as usize, t1 - t0, 1, 1], t0 * x.nb()[1])?
        };
        let h = self.rms(xc, self.model.tensor("output_norm.weight")?)?;
        Ok((xc, h))
    }

    /// Next-token log-probs of positions `[t0, t1)` from the last block's
    /// output, `[1, t1 - t0]` (the last position's is of token 0, dropped
    /// by the caller): `logit[target] - m - log(sum(exp(logits - m)))`
    /// with `m = E_p[logit]` (`p` the softmax). `m` is within the entropy
    /// `H(p) <= ln(n_vocab)` below the largest logit (`lse - m = H(p)`,
    /// `lse >= max`), so no exponential overflows and the sum is at least
    /// 1: log-probs of -100 nats and below stay exact, where
    /// `log(softmax)` would underflow. Every op has ggml's automatic
    /// backward; `m`'s gradient cancels (`d lse / d m = 1 - sum p`).
    pub fn head(&self, x: Tensor<'a>, t0: usize, t1: usize) -> Result<Tensor<'a>, GgmlError> {
        let ctx = self.ctx;
        let n_vocab = self.model.config().n_vocab;
        let (_, h) = self.head_input(x, t0, t1)?;
        let logits = self.logits(h)?;
        let p = ctx.soft_max_ext(logits, None, 1.0)?;
        let m = ctx.sum_rows(ctx.mul(logits, p)?)?;
        let sum = ctx.sum_rows(ctx.exp(ctx.add(logits, ctx.scale(m, -1.0)?)?)?)?;
        let flat = ctx.reshape(logits, &[1, n_vocab * (t1 - t0)])?;
        let targets = ctx.view(self.seq.target_flat()?, [t1 - t0, 1, 1, 1], t0 * 4)?;
        let target = ctx.get_rows(flat, targets)?;
        Ok(ctx
            .sub(ctx.sub(target, m)?, ctx.log(sum)?)?
            .set_name("logprobs"))
    }
}

/// The one LoRA choke point: `x: [n_in, T]`, `w: [n_in, n_out]` f32 ->
/// `w x (+ b) + scale * B (A x)`, `[n_out, T]`.
pub(crate) fn linear<'a>(
    ctx: &'a Context,
    x: Tensor<'a>,
    w: Tensor<'a>,
    bias: Option<Tensor<'a>>,
    lora: Option<(Tensor<'a>, Tensor<'a>, f32)>,
) -> Result<Tensor<'a>, GgmlError> {
    let mut y = ctx.mul_mat(w, x)?;
    if let Some((a, b, scale)) = lora {
        let u = ctx.mul_mat(a, x)?;
        y = ctx.add(y, ctx.scale(ctx.mul_mat(b, u)?, scale)?)?;
    }
    if let Some(b) = bias {
        y = ctx.add(y, b)?;
    }
    Ok(y)
}

/// Checks a token sequence against the model before any graph is built.
pub(crate) fn check_tokens(model: &DeviceModel, tokens: &[u32]) -> Result<(), GgmlError> {
    let c = model.config();
    let why = if tokens.len() < 2 {
        format!("need at least 2 tokens, got {}", tokens.len())
    } else if tokens.len() > c.context_length {
        format!(
            "{} tokens exceed the model's context length {}",
            tokens.len(),
            c.context_length
        )
    } else if let Some((i, t)) = tokens
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= c.n_vocab)
    {
        format!(
            "token {t} at position {i} is outside the vocabulary of {}",
            c.n_vocab
        )
    } else {
        return Ok(());
    };
    Err(GgmlError::BadRequest(why))
}
