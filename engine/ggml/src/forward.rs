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

use crate::error::GgmlError;
use crate::ffi::{types, Context, Tensor};
use crate::weights::{DeviceLora, DeviceModel};
use cleaner_models::{Architecture, Proj};

/// Graph inputs that the caller fills after allocation.
pub(crate) struct Inputs<'a> {
    /// `[n_tok]` i32 token ids.
    pub tokens: Tensor<'a>,
    /// `[n_tok]` i32 positions `0..n_tok`.
    pub pos: Tensor<'a>,
    /// `[n_tok - 1]` i32 flat indices `t * n_vocab + tokens[t + 1]` into the
    /// logits `[n_vocab, n_tok - 1]`.
    pub targets: Tensor<'a>,
    /// `[n_tok, n_tok]` f32 causal mask: 0 where key <= query, -inf above.
    pub mask: Tensor<'a>,
    /// `(n, [n] i32 0..n)` row indices that dequantize a whole matrix of n rows.
    pub iotas: Vec<(usize, Tensor<'a>)>,
}

impl Inputs<'_> {
    /// Writes the input values for `tokens`.
    pub fn fill(&self, tokens: &[u32], n_vocab: usize) -> Result<(), GgmlError> {
        let n_tok = tokens.len();
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        self.tokens.set_i32(&ids)?;
        self.pos.set_i32(&(0..n_tok as i32).collect::<Vec<_>>())?;
        let targets: Vec<i32> = (0..n_tok - 1)
            .map(|t| (t * n_vocab) as i32 + ids[t + 1])
            .collect();
        self.targets.set_i32(&targets)?;
        let mut mask = vec![0f32; n_tok * n_tok];
        for q in 0..n_tok {
            mask[q * n_tok + q + 1..(q + 1) * n_tok].fill(f32::NEG_INFINITY);
        }
        self.mask.set_f32(&mask)?;
        for (n, t) in &self.iotas {
            t.set_i32(&(0..*n as i32).collect::<Vec<_>>())?;
        }
        Ok(())
    }
}

/// Builds the log-prob graph's tensors in `ctx` (not yet a graph):
/// returns its inputs and the log-probs, `[1, n_tok - 1]`.
pub(crate) fn build<'a>(
    ctx: &'a Context,
    model: &'a DeviceModel,
    lora: Option<&'a DeviceLora>,
    n_tok: usize,
) -> Result<(Inputs<'a>, Tensor<'a>), GgmlError> {
    let b = Builder::new(ctx, model, lora, n_tok)?;
    let mut x = b.embed()?;
    for l in 0..model.config().n_layer {
        x = b.block(l, x)?;
    }
    let lp = b.logprobs(x)?;
    Ok((b.inputs, lp))
}

/// The pieces of the graph, each a function of its input tensor so that
/// later graphs can cut the model where memory demands: `embed`, one
/// `block` per layer (the unit of activation checkpointing: a backward
/// graph rebuilds one block from its saved input), and the `logprobs` head
/// (the unit of chunking over tokens).
pub(crate) struct Builder<'a> {
    ctx: &'a Context,
    model: &'a DeviceModel,
    lora: Option<&'a DeviceLora>,
    n_tok: usize,
    pub inputs: Inputs<'a>,
}

impl<'a> Builder<'a> {
    /// Makes the graph inputs for `n_tok` tokens.
    pub fn new(
        ctx: &'a Context,
        model: &'a DeviceModel,
        lora: Option<&'a DeviceLora>,
        n_tok: usize,
    ) -> Result<Builder<'a>, GgmlError> {
        let c = model.config();
        let i32_input = |n: usize, name: &str| -> Result<Tensor<'a>, GgmlError> {
            Ok(ctx.new_tensor(types::I32, &[n], name)?.set_input())
        };
        let mut iotas: Vec<(usize, Tensor<'a>)> = Vec::new();
        for n in [c.q_dim(), c.kv_dim(), c.n_embd, c.n_ff, c.n_vocab] {
            if !iotas.iter().any(|(m, _)| *m == n) {
                iotas.push((n, i32_input(n, &format!("rows_0_{n}"))?));
            }
        }
        let inputs = Inputs {
            tokens: i32_input(n_tok, "tokens")?,
            pos: i32_input(n_tok, "positions")?,
            targets: i32_input(n_tok - 1, "targets")?,
            mask: ctx
                .new_tensor(types::F32, &[n_tok, n_tok], "causal_mask")?
                .set_input(),
            iotas,
        };
        Ok(Builder {
            ctx,
            model,
            lora,
            n_tok,
            inputs,
        })
    }

    /// A weight matrix `[n_in, n_out]` dequantized to f32 (a transient).
    fn dequant(&self, w: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        let n_rows = w.ne()[1] as usize;
        let idx = self
            .inputs
            .iotas
            .iter()
            .find(|(n, _)| *n == n_rows)
            .map(|(_, t)| *t)
            .ok_or_else(|| GgmlError::Shape {
                op: "dequantize",
                detail: format!("no row index of {n_rows} rows for {w:?}"),
            })?;
        self.ctx.get_rows(w, idx)
    }

    /// `rmsnorm(x) * w` over dim 0.
    fn rms(&self, x: Tensor<'a>, w: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        self.ctx
            .mul(self.ctx.rms_norm(x, self.model.config().rms_eps)?, w)
    }

    fn weight(&self, l: usize, stem: &str) -> Result<Tensor<'a>, GgmlError> {
        self.model.tensor(&format!("blk.{l}.{stem}"))
    }

    /// Projection `p` of block `l` on `x: [n_in, n_tok]`, through [`linear`].
    fn lin(
        &self,
        l: usize,
        p: Proj,
        x: Tensor<'a>,
        bias: Option<Tensor<'a>>,
    ) -> Result<Tensor<'a>, GgmlError> {
        let w = self.weight(l, &format!("{}.weight", p.gguf_name()))?;
        let lora = self
            .lora
            .and_then(|d| d.factors(l, p).map(|f| (f, d.scale())));
        linear(self.ctx, x, self.dequant(w)?, bias, lora)
    }

    /// The token embeddings, `[n_embd, n_tok]`.
    pub fn embed(&self) -> Result<Tensor<'a>, GgmlError> {
        self.ctx
            .get_rows(self.model.tensor("token_embd.weight")?, self.inputs.tokens)
    }

    /// Block `l`: `x: [n_embd, n_tok]` in, the residual stream after it out.
    pub fn block(&self, l: usize, x: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        let (ctx, model, c) = (self.ctx, self.model, self.model.config());
        let (hd, n_tok) = (c.head_dim, self.n_tok);
        let neox = c.arch != Architecture::Llama;
        // Attention.
        let xn = self.rms(x, self.weight(l, "attn_norm.weight")?)?;
        let q = self.lin(l, Proj::Q, xn, model.layer_tensor(l, "attn_q.bias"))?;
        let k = self.lin(l, Proj::K, xn, model.layer_tensor(l, "attn_k.bias"))?;
        let v = self.lin(l, Proj::V, xn, model.layer_tensor(l, "attn_v.bias"))?;
        let mut q = ctx.reshape(q, &[hd, c.n_head, n_tok])?;
        let mut k = ctx.reshape(k, &[hd, c.n_head_kv, n_tok])?;
        let v = ctx.reshape(v, &[hd, c.n_head_kv, n_tok])?;
        if let (Some(qn), Some(kn)) = (
            model.layer_tensor(l, "attn_q_norm.weight"),
            model.layer_tensor(l, "attn_k_norm.weight"),
        ) {
            q = self.rms(q, qn)?;
            k = self.rms(k, kn)?;
        }
        let pos = self.inputs.pos;
        let q = ctx.rope(q, pos, c.n_rot, neox, c.rope_freq_base)?;
        let k = ctx.rope(k, pos, c.n_rot, neox, c.rope_freq_base)?;
        let scale = 1.0 / (hd as f32).sqrt();
        let att = attention(ctx, q, k, v, self.inputs.mask, scale)?;
        let att = ctx.reshape(att, &[c.q_dim(), n_tok])?;
        let x = ctx.add(x, self.lin(l, Proj::O, att, None)?)?;
        // Feed-forward.
        let xn = self.rms(x, self.weight(l, "ffn_norm.weight")?)?;
        let gate = self.lin(l, Proj::Gate, xn, None)?;
        let up = self.lin(l, Proj::Up, xn, None)?;
        let act = ctx.mul(ctx.silu(gate)?, up)?;
        ctx.add(x, self.lin(l, Proj::Down, act, None)?)
    }

    /// Next-token log-probs of positions `0..n_tok - 1` from the last
    /// block's output, `[1, n_tok - 1]`:
    /// `logit[target] - m - log(sum(exp(logits - m)))` with `m = E_p[logit]`
    /// (`p` the softmax). `m` is within the entropy `H(p) <= ln(n_vocab)`
    /// below the largest logit (`lse - m = H(p)`, `lse >= max`), so no
    /// exponential overflows and the sum is at least 1: log-probs of -100
    /// nats and below stay exact, where `log(softmax)` would underflow.
    /// Every op has ggml's automatic backward; `m`'s gradient cancels
    /// (`d lse / d m = 1 - sum p`).
    pub fn logprobs(&self, x: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        let (ctx, c) = (self.ctx, self.model.config());
        let n = self.n_tok - 1;
        let h = self.rms(x, self.model.tensor("output_norm.weight")?)?;
        let h = ctx.columns(h, n)?;
        let logits = ctx.mul_mat(self.dequant(self.model.output()?)?, h)?;
        let p = ctx.soft_max_ext(logits, None, 1.0)?;
        let m = ctx.sum_rows(ctx.mul(logits, p)?)?;
        let sum = ctx.sum_rows(ctx.exp(ctx.add(logits, ctx.scale(m, -1.0)?)?)?)?;
        let flat = ctx.reshape(logits, &[1, c.n_vocab * n])?;
        let target = ctx.get_rows(flat, self.inputs.targets)?;
        Ok(ctx
            .sub(ctx.sub(target, m)?, ctx.log(sum)?)?
            .set_name("logprobs"))
    }
}

/// The one LoRA choke point: `x: [n_in, n_tok]`, `w: [n_in, n_out]` f32 ->
/// `w x (+ b) + scale * B (A x)`, `[n_out, n_tok]`.
pub(crate) fn linear<'a>(
    ctx: &'a Context,
    x: Tensor<'a>,
    w: Tensor<'a>,
    bias: Option<Tensor<'a>>,
    lora: Option<((Tensor<'a>, Tensor<'a>), f32)>,
) -> Result<Tensor<'a>, GgmlError> {
    let mut y = ctx.mul_mat(w, x)?;
    if let Some(((a, b), scale)) = lora {
        let u = ctx.mul_mat(a, x)?;
        y = ctx.add(y, ctx.scale(ctx.mul_mat(b, u)?, scale)?)?;
    }
    if let Some(b) = bias {
        y = ctx.add(y, b)?;
    }
    Ok(y)
}

/// Causal softmax attention with GQA. `q: [hd, n_head, n_tok]`,
/// `k, v: [hd, n_head_kv, n_tok]` -> `[hd, n_head, n_tok]`.
fn attention<'a>(
    ctx: &'a Context,
    q: Tensor<'a>,
    k: Tensor<'a>,
    v: Tensor<'a>,
    mask: Tensor<'a>,
    scale: f32,
) -> Result<Tensor<'a>, GgmlError> {
    // [hd, n_tok, heads]: one matrix of tokens per head.
    let qp = ctx.cont(ctx.permute(q, [0, 2, 1, 3])?)?;
    let kp = ctx.cont(ctx.permute(k, [0, 2, 1, 3])?)?;
    // [n_tok (keys), hd, n_head_kv]
    let vt = ctx.cont(ctx.permute(v, [1, 2, 0, 3])?)?;
    // [n_tok (keys), n_tok (queries), n_head]
    let scores = ctx.mul_mat(kp, qp)?;
    let probs = ctx.soft_max_ext(scores, Some(mask), scale)?;
    // [hd, n_tok, n_head] -> [hd, n_head, n_tok]
    let out = ctx.mul_mat(vt, probs)?;
    ctx.cont(ctx.permute(out, [0, 2, 1, 3])?)
}

/// Upper bound on the tensors [`build`] makes (times `factor` for a
/// backward pass).
pub(crate) fn max_tensors(model: &DeviceModel, factor: usize) -> usize {
    (128 * model.config().n_layer + 64) * factor
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

/// `log p(tokens[t + 1] | tokens[..=t])` for `t` in `0..n_tok - 1`, with an
/// optional adapter, computed on `backend` (every node checked with
/// `ggml_backend_supports_op` first).
pub fn logprobs(
    backend: &crate::Backend,
    model: &DeviceModel,
    lora: Option<&DeviceLora>,
    tokens: &[u32],
) -> Result<Vec<f32>, GgmlError> {
    check_tokens(model, tokens)?;
    let outside = model.n_tensors() + lora.map_or(0, |l| 2 * l.pairs().len());
    let ctx = Context::new(max_tensors(model, 1), outside)?;
    let (inputs, lp) = build(&ctx, model, lora, tokens.len())?;
    let lp = lp.set_output();
    let graph = ctx.graph(&[lp], false)?;
    ctx.allocate_graph(&graph, backend)?;
    inputs.fill(tokens, model.config().n_vocab)?;
    backend.compute(&graph)?;
    lp.get_f32()
}
