//! The trainer's forward pass: token ids in, per-position log-probabilities of
//! the next token out (the quantity RL needs), optionally full logits for a
//! range of positions. Pre-norm decoder, per block:
//!
//! ```text
//! x += Wo . attention(rope(Wq . rmsnorm(x)), rope(Wk . rmsnorm(x)), Wv . rmsnorm(x))
//! x += Wdown . swiglu(Wgate . rmsnorm(x), Wup . rmsnorm(x))
//! ```
//! then `log_softmax(Wout . rmsnorm(x))`. Every matrix product goes through
//! [`Transformer::linear`], the single place where LoRA will join the base weights.

use crate::error::{ModelError, ModelErrorKind};
use crate::lora::{Lora, LoraPair, Proj};
use crate::model::{Layer, MatrixRef, Transformer};
use crate::prefix::{past_kv, PastKv, Span};
use cleaner_kernels::activation::swiglu_forward;
use cleaner_kernels::attention::AttnShape;
use cleaner_kernels::logits::{
    kept_logits_bytes, token_logprobs_forward, token_logprobs_forward_keeping, KeptLogits,
};
use cleaner_kernels::matmul::{matmul_wt, matmul_wt_in, matmul_wt_plus_in, LowRank, Weights};
use cleaner_kernels::norm::rmsnorm_forward;
use cleaner_kernels::profile;
use cleaner_kernels::rope::Rope;
use std::ops::Range;

/// What [`Transformer::forward`] returns.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// `[n_tok - 1]`: `logprobs[t] = log p(tokens[t + 1] | tokens[..=t])`.
    pub logprobs: Vec<f32>,
    /// `[range.len(), n_vocab]` logits of the positions asked for, if any.
    pub logits: Option<Vec<f32>>,
}

/// Everything one block computes, kept so the backward pass can use it. The
/// forward fills one of these per layer in turn (reusing the buffers); the
/// backward recomputes one layer at a time from its saved input
/// (activation checkpointing: memory O(n_layer * n_tok * n_embd)).
#[derive(Default)]
pub(crate) struct BlockActs {
    pub xn1: Vec<f32>,    // [n_tok, n_embd]   rmsnorm(x) before attention
    pub rstd1: Vec<f32>,  // [n_tok]
    pub q_lin: Vec<f32>,  // [n_tok, q_dim]    Wq xn1 (+b), before q-norm (Qwen3) and RoPE
    pub k_lin: Vec<f32>,  // [n_tok, kv_dim]
    pub rstd_q: Vec<f32>, // [n_tok * n_head]  (Qwen3)
    pub rstd_k: Vec<f32>, // [n_tok * n_head_kv]
    pub q: Vec<f32>,      // [n_tok, q_dim]    after norm and RoPE
    pub k: Vec<f32>,      // [n_tok, kv_dim]
    pub v: Vec<f32>,      // [n_tok, kv_dim]
    pub att: Vec<f32>,    // [n_tok, q_dim]
    pub lse: Vec<f32>,    // [n_head, n_tok]
    pub x_mid: Vec<f32>,  // [n_tok, n_embd]   x after the attention residual
    pub xn2: Vec<f32>,    // [n_tok, n_embd]
    pub rstd2: Vec<f32>,  // [n_tok]
    pub gate: Vec<f32>,   // [n_tok, n_ff]
    pub up: Vec<f32>,     // [n_tok, n_ff]
    pub act: Vec<f32>,    // [n_tok, n_ff]
    pub proj: Vec<f32>,   // [n_tok, max(n_embd, ...)] scratch for projections
    /// `x A^T` of each adapted projection, `[n_tok, rank]`, in `Proj` order.
    pub lora_u: Vec<(Proj, Vec<f32>)>,
}

impl BlockActs {
    pub fn new(model: &Transformer, n_tok: usize, lora: Option<&Lora>) -> BlockActs {
        BlockActs::new_taking(model, n_tok, lora, None)
    }

    /// [`BlockActs::new`], taking the buffers of `donor` that hold only
    /// what the next block overwrites (its scratch, its SwiGLU output, and
    /// without q/k norms the pre-norm q/k) instead of allocating them: a
    /// new allocation is zeroed, 14 MB per block of Qwen2.5-0.5B at
    /// T = 512, and zeroing the kept blocks' buffers was 2-5 % of a bf16
    /// step (`cleaner bench train --profile`, "forward: the rest").
    fn new_taking(
        model: &Transformer,
        n_tok: usize,
        lora: Option<&Lora>,
        mut donor: Option<&mut BlockActs>,
    ) -> BlockActs {
        let c = model.config();
        let z = |n: usize| vec![0f32; n];
        let mut reuse = |pick: fn(&mut BlockActs) -> &mut Vec<f32>, n: usize| {
            if let Some(v) = donor.as_deref_mut().map(pick).filter(|v| v.len() == n) {
                return std::mem::take(v);
            }
            z(n)
        };
        let (proj, act) = (
            reuse(|a| &mut a.proj, n_tok * c.n_embd),
            reuse(|a| &mut a.act, n_tok * c.n_ff),
        );
        let (q_lin, k_lin) = (
            reuse(|a| &mut a.q_lin, n_tok * c.q_dim()),
            reuse(|a| &mut a.k_lin, n_tok * c.kv_dim()),
        );
        let (rstd_q, rstd_k) = (
            reuse(|a| &mut a.rstd_q, n_tok * c.n_head),
            reuse(|a| &mut a.rstd_k, n_tok * c.n_head_kv),
        );
        let rank = lora.map_or(0, |l| l.config.rank);
        let lora_u = lora.map_or(Vec::new(), |l| {
            l.config
                .targets
                .iter()
                .map(|&p| (p, z(n_tok * rank)))
                .collect()
        });
        BlockActs {
            xn1: z(n_tok * c.n_embd),
            rstd1: z(n_tok),
            q_lin,
            k_lin,
            rstd_q,
            rstd_k,
            q: z(n_tok * c.q_dim()),
            k: z(n_tok * c.kv_dim()),
            v: z(n_tok * c.kv_dim()),
            att: z(n_tok * c.q_dim()),
            lse: z(c.n_head * n_tok),
            x_mid: z(n_tok * c.n_embd),
            xn2: z(n_tok * c.n_embd),
            rstd2: z(n_tok),
            gate: z(n_tok * c.n_ff),
            up: z(n_tok * c.n_ff),
            act,
            proj,
            lora_u,
        }
    }

    pub fn u_saved(&self, p: Proj) -> Option<&Vec<f32>> {
        self.lora_u.iter().find(|(q, _)| *q == p).map(|(_, u)| u)
    }

    pub fn u(&mut self, p: Proj) -> Option<&mut Vec<f32>> {
        self.lora_u
            .iter_mut()
            .find(|(q, _)| *q == p)
            .map(|(_, u)| u)
    }

    /// Bytes held by all buffers as they are now.
    fn held_bytes(&self) -> usize {
        let lens = [
            &self.xn1,
            &self.rstd1,
            &self.q_lin,
            &self.k_lin,
            &self.rstd_q,
            &self.rstd_k,
            &self.q,
            &self.k,
            &self.v,
            &self.att,
            &self.lse,
            &self.x_mid,
            &self.xn2,
            &self.rstd2,
            &self.gate,
            &self.up,
            &self.act,
            &self.proj,
        ]
        .iter()
        .map(|b| b.len())
        .sum::<usize>();
        let u: usize = self.lora_u.iter().map(|(_, u)| u.len()).sum();
        (lens + u) * std::mem::size_of::<f32>()
    }

    /// Bytes this block keeps once [`BlockActs::into_saved`] drops what the
    /// backward pass does not read.
    fn saved_bytes(&self, has_qk_norm: bool) -> usize {
        let dropped = self.proj.len()
            + self.act.len()
            + if has_qk_norm {
                0
            } else {
                self.q_lin.len() + self.k_lin.len() + self.rstd_q.len() + self.rstd_k.len()
            };
        self.held_bytes() - dropped * std::mem::size_of::<f32>()
    }

    /// This block's intermediates as kept ([`BlockActs::into_saved`]),
    /// leaving in `self` a set for the next block that took over the
    /// buffers the kept one drops.
    fn keep(&mut self, model: &Transformer, lora: Option<&Lora>, has_qk_norm: bool) -> BlockActs {
        let n_tok = self.rstd1.len();
        let mut donor = std::mem::take(self);
        if has_qk_norm {
            // The kept block reads its pre-norm q/k: not the next one's.
            let q = (
                std::mem::take(&mut donor.q_lin),
                std::mem::take(&mut donor.k_lin),
                std::mem::take(&mut donor.rstd_q),
                std::mem::take(&mut donor.rstd_k),
            );
            *self = BlockActs::new_taking(model, n_tok, lora, Some(&mut donor));
            (donor.q_lin, donor.k_lin, donor.rstd_q, donor.rstd_k) = q;
        } else {
            *self = BlockActs::new_taking(model, n_tok, lora, Some(&mut donor));
        }
        donor.into_saved(has_qk_norm)
    }

    /// The block's intermediates as the backward pass reads them: the
    /// projection scratch is dropped, and so are the SwiGLU output (the
    /// backward recomputes it from gate and up, an element-wise op) and the
    /// pre-norm q/k of models without q/k norms (their backward never reads
    /// them).
    fn into_saved(mut self, has_qk_norm: bool) -> BlockActs {
        self.proj = Vec::new();
        self.act = Vec::new();
        if !has_qk_norm {
            self.q_lin = Vec::new();
            self.k_lin = Vec::new();
            self.rstd_q = Vec::new();
            self.rstd_k = Vec::new();
        }
        self
    }
}

/// Saved state of a training forward pass: each block's input, the final
/// hidden states and what the log-prob backward needs; and, for the first
/// blocks that fit the memory allowed (see
/// [`Transformer::forward_train_keeping`]), all of the block's
/// intermediates, so the backward pass need not recompute them.
pub struct Tape {
    pub(crate) tokens: Vec<u32>,
    /// Position of `tokens[0]`: 0, or the length of the shared prefix this
    /// pass continued (see [`crate::prefix`]).
    pub(crate) start: usize,
    /// The next token of each position whose log-prob the pass computed:
    /// `tokens[1..]`, or for a shared prefix `tokens[1..]` and the first
    /// token every continuation shares.
    pub(crate) targets: Vec<u32>,
    /// `[n_layer]` of (K after RoPE `[n_tok, kv_dim]`, V `[n_tok, kv_dim]`):
    /// kept only by a shared prefix, whose continuations attend to them.
    pub(crate) kv: Vec<(Vec<f32>, Vec<f32>)>,
    /// `[n_layer][n_tok, n_embd]`: input of each block.
    pub(crate) block_inputs: Vec<Vec<f32>>,
    /// `[n_layer]`: every intermediate of the blocks kept whole; `None` for
    /// the blocks the backward pass recomputes from their input.
    pub(crate) kept: Vec<Option<BlockActs>>,
    /// `[n_layer]` of (attention output `[n_tok, q_dim]`, its log-sum-exps
    /// `[n_head, n_tok]`): the backward's recomputation of a block skips its
    /// attention, the one op whose cost grows with `n_tok^2`.
    pub(crate) attention: Vec<(Vec<f32>, Vec<f32>)>,
    /// `[n_tok, n_embd]`: output of the last block.
    pub(crate) x_final: Vec<f32>,
    /// `[n_tok]`
    pub(crate) rstd_final: Vec<f32>,
    /// `[n_tok, n_embd]`: normalized final hidden states.
    pub(crate) h: Vec<f32>,
    /// `[n_tok - 1]`: log-sum-exp of each position's logits.
    pub(crate) lse: Vec<f32>,
    /// The logits themselves, when the memory the forward was allowed still
    /// held them after the blocks: the backward pass then skips their
    /// product.
    pub(crate) logits: Option<KeptLogits>,
}

impl Tape {
    /// Tokens of the recorded forward pass.
    pub fn n_tok(&self) -> usize {
        self.tokens.len()
    }

    /// Positions of the recorded tokens (after a shared prefix, if any).
    pub(crate) fn positions(&self) -> Vec<u32> {
        (self.start as u32..(self.start + self.n_tok()) as u32).collect()
    }

    /// Blocks whose intermediates are kept whole (not recomputed by the
    /// backward pass).
    pub fn kept_blocks(&self) -> usize {
        self.kept.iter().filter(|k| k.is_some()).count()
    }

    /// Whether the logits are kept (not recomputed by the backward pass).
    pub fn kept_logits(&self) -> bool {
        self.logits.is_some()
    }

    /// Bytes held by the blocks kept whole and the kept logits.
    pub fn kept_bytes(&self) -> usize {
        let blocks: usize = self.kept.iter().flatten().map(BlockActs::held_bytes).sum();
        blocks + self.logits.as_ref().map_or(0, KeptLogits::bytes)
    }
}

impl Transformer {
    /// `log p(tokens[t + 1] | tokens[..=t])` for `t` in `0..n_tok - 1`.
    pub fn next_token_logprobs(&self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        Ok(self.forward(tokens, None, None)?.logprobs)
    }

    pub(crate) fn check_tokens(&self, tokens: &[u32]) -> Result<(), ModelError> {
        let c = self.config();
        let n_tok = tokens.len();
        if n_tok < 2 {
            return Err(self.err(ModelErrorKind::BadRequest(format!(
                "forward: need at least 2 tokens, got {n_tok}"
            ))));
        }
        if n_tok > c.context_length {
            return Err(self.err(ModelErrorKind::BadRequest(format!(
                "forward: {n_tok} tokens exceed the model's context length {}",
                c.context_length
            ))));
        }
        if let Some((position, &token)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= c.n_vocab)
        {
            return Err(self.err(ModelErrorKind::TokenOutOfRange {
                position,
                token,
                n_vocab: c.n_vocab,
            }));
        }
        Ok(())
    }

    pub(crate) fn check_lora(&self, lora: &Lora) -> Result<(), ModelError> {
        let bad = |why: String| {
            Err(self.err(ModelErrorKind::BadRequest(format!(
                "adapter does not fit this model: {why}"
            ))))
        };
        if lora.layers.len() != self.layers.len() {
            return bad(format!(
                "{} layers, the model has {}",
                lora.layers.len(),
                self.layers.len()
            ));
        }
        for (l, pairs) in lora.layers.iter().enumerate() {
            for (p, pair) in pairs {
                let (n_out, n_in) = crate::lora::proj_shape(self, l, *p);
                let r = lora.config.rank;
                if pair.n_in != n_in
                    || pair.n_out != n_out
                    || pair.a.len() != r * n_in
                    || pair.b.len() != n_out * r
                {
                    return bad(format!(
                        "blk.{l}.{} is {}x{} rank {r}, the model's is {n_out}x{n_in}",
                        p.gguf_name(),
                        pair.n_out,
                        pair.n_in
                    ));
                }
            }
        }
        Ok(())
    }

    /// Full forward pass over `tokens` (positions `0..n_tok`), with an optional
    /// adapter. `logits_for` selects positions whose full logits are also
    /// returned.
    pub fn forward(
        &self,
        tokens: &[u32],
        lora: Option<&Lora>,
        logits_for: Option<Range<usize>>,
    ) -> Result<ForwardOutput, ModelError> {
        self.check_tokens(tokens)?;
        if let Some(l) = lora {
            self.check_lora(l)?;
        }
        let n_tok = tokens.len();
        if let Some(r) = &logits_for {
            if r.start > r.end || r.end > n_tok {
                return Err(self.err(ModelErrorKind::BadRequest(format!(
                    "forward: logits range {r:?} is outside positions 0..{n_tok}"
                ))));
            }
        }
        let tape = self.run_forward(tokens, lora, None, Span::whole(tokens));
        let (logprobs, _, _) = self.tape_logprobs(&tape, false);
        let c = self.config();
        let logits = logits_for.map(|r| {
            let mut out = vec![0f32; r.len() * c.n_vocab];
            matmul_wt_in(
                self.precision(),
                &tape.h[r.start * c.n_embd..r.end * c.n_embd],
                r.len(),
                &self.weights(&self.output),
                &mut out,
            );
            out
        });
        Ok(ForwardOutput { logprobs, logits })
    }

    /// Training forward: log-probs plus the tape the backward pass needs,
    /// with per-block activation checkpointing (memory
    /// O(n_layer * n_tok * (n_embd + q_dim)); the backward pass recomputes
    /// each block's projections).
    pub fn forward_train(
        &self,
        tokens: &[u32],
        lora: &Lora,
    ) -> Result<(Vec<f32>, Tape), ModelError> {
        self.forward_train_keeping(tokens, lora, 0)
    }

    /// [`Transformer::forward_train`] that also keeps every intermediate of
    /// as many leading blocks as fit in `keep_bytes`, so the backward pass
    /// skips recomputing their projections (a third of a training step's
    /// matrix work) at the price of that memory, and then the logits if
    /// what is left holds them ([`kept_logits_bytes`]), so the backward
    /// skips the vocabulary product too. The gradients are bit-identical to
    /// those of the fully checkpointed pass.
    pub fn forward_train_keeping(
        &self,
        tokens: &[u32],
        lora: &Lora,
        keep_bytes: usize,
    ) -> Result<(Vec<f32>, Tape), ModelError> {
        self.check_tokens(tokens)?;
        self.forward_span(tokens, Some(lora), Some(keep_bytes), Span::whole(tokens))
    }

    /// The pass over `tokens` placed by `span` (tokens already checked):
    /// the adapter checked, then log-probs, with their log-sum-exps kept on
    /// the tape for the backward pass.
    pub(crate) fn forward_span(
        &self,
        tokens: &[u32],
        lora: Option<&Lora>,
        train: Option<usize>,
        span: Span,
    ) -> Result<(Vec<f32>, Tape), ModelError> {
        if let Some(l) = lora {
            self.check_lora(l)?;
        }
        let mut tape = self.run_forward(tokens, lora, train, span);
        // The blocks came first; the logits take what they left.
        let left = train.map_or(0, |bytes| bytes.saturating_sub(tape.kept_bytes()));
        let keep =
            train.is_some() && kept_logits_bytes(tape.targets.len(), self.config().n_vocab) <= left;
        let (logprobs, lse, logits) = self.tape_logprobs(&tape, keep);
        tape.lse = lse;
        tape.logits = logits;
        Ok((logprobs, tape))
    }

    /// Next-token log-probs and their log-sum-exps from the final hidden
    /// states, and the logits if `keep`.
    pub(crate) fn tape_logprobs(
        &self,
        tape: &Tape,
        keep: bool,
    ) -> (Vec<f32>, Vec<f32>, Option<KeptLogits>) {
        let _t = profile::span("vocabulary: log-probs");
        let n = tape.targets.len();
        let (mut lp, mut lse) = (vec![0f32; n], vec![0f32; n]);
        let (p, h, w) = (
            self.precision(),
            &tape.h[..n * self.config().n_embd],
            &self.weights(&self.output),
        );
        // Targets were checked against the vocabulary in check_tokens.
        let logits = if keep {
            token_logprobs_forward_keeping(p, h, n, w, &tape.targets, &mut lp, &mut lse).ok()
        } else {
            let _ = token_logprobs_forward(p, h, n, w, &tape.targets, &mut lp, &mut lse);
            None
        };
        (lp, lse, logits)
    }

    /// `train`: `None` for inference; `Some(bytes)` records the tape, with
    /// whole blocks kept up to `bytes`. `span` says where the tokens sit
    /// (after a shared prefix or not) and whether their K/V are kept.
    pub(crate) fn run_forward(
        &self,
        tokens: &[u32],
        lora: Option<&Lora>,
        train: Option<usize>,
        span: Span,
    ) -> Tape {
        let _t = profile::span("forward: the rest (residuals, copies)");
        let c = self.config();
        let (n_tok, n_embd) = (tokens.len(), c.n_embd);
        let embd = self.weights(&self.token_embd);
        let mut x = vec![0f32; n_tok * n_embd];
        for (row, &t) in x.chunks_exact_mut(n_embd).zip(tokens) {
            embd.dequantize_row(t as usize, row);
        }
        let start = span.past.map_or(0, Tape::n_tok);
        let positions: Vec<u32> = (start as u32..(start + n_tok) as u32).collect();
        let mut acts = BlockActs::new(self, n_tok, lora);
        let mut block_inputs = Vec::new();
        let mut attention = Vec::new();
        let mut kept = Vec::new();
        let mut kv = Vec::new();
        let mut keep_left = train.unwrap_or(0);
        for (i, layer) in self.layers.iter().enumerate() {
            if train.is_some() {
                block_inputs.push(x.clone());
            }
            let past = span.past.map(|p| past_kv(p, i));
            self.block_forward(i, layer, lora, &mut x, &positions, past, &mut acts, None);
            if span.keep_kv {
                kv.push((acts.k.clone(), acts.v.clone()));
            }
            if train.is_none() {
                continue;
            }
            let qk_norm = layer.q_norm.is_some();
            let bytes = acts.saved_bytes(qk_norm);
            if bytes <= keep_left {
                keep_left -= bytes;
                kept.push(Some(acts.keep(self, lora, qk_norm)));
                // The kept block holds its attention output already.
                attention.push((Vec::new(), Vec::new()));
            } else {
                kept.push(None);
                attention.push((acts.att.clone(), acts.lse.clone()));
            }
        }
        let mut h = vec![0f32; n_tok * n_embd];
        let mut rstd_final = vec![0f32; n_tok];
        rmsnorm(&x, &self.output_norm, c.rms_eps, &mut h, &mut rstd_final);
        Tape {
            tokens: tokens.to_vec(),
            start,
            targets: span.targets,
            kv,
            block_inputs,
            kept,
            attention,
            x_final: x,
            rstd_final,
            h,
            lse: Vec::new(),
            logits: None,
        }
    }

    /// The one choke point of every projection:
    /// `y = x W^T (+ b) + (alpha / rank) * (x A^T) B^T`, saving `u = x A^T`.
    /// `x: [n_tok, n_in]`, `y: [n_tok, n_out]`.
    pub(crate) fn linear(
        &self,
        x: &[f32],
        n_tok: usize,
        w: &MatrixRef,
        bias: Option<&[f32]>,
        lora: Option<(&LoraPair, f32, &mut Vec<f32>)>,
        y: &mut [f32],
    ) {
        // u = x A^T (kept for the backward), then the base product with
        // (alpha / r) u B^T riding along (see matmul_wt_plus_in).
        let scaled = lora.map(|(pair, scale, u)| {
            let _t = profile::span("LoRA x A^T");
            let rank = pair.a.len() / pair.n_in;
            matmul_wt(x, n_tok, &Weights::f32(&pair.a, rank, pair.n_in), u);
            let su: Vec<f32> = u.iter().map(|v| v * scale).collect();
            (pair, su, rank)
        });
        let low_rank = scaled.as_ref().map(|(pair, su, rank)| LowRank {
            act: su,
            factor: &pair.b,
            rank: *rank,
        });
        let _t = profile::span("x W^T, frozen weights (+ LoRA u B^T)");
        matmul_wt_plus_in(self.precision(), x, n_tok, &self.weights(w), low_rank, y);
        if let Some(b) = bias {
            for row in y.chunks_exact_mut(b.len()) {
                row.iter_mut().zip(b).for_each(|(v, &bb)| *v += bb);
            }
        }
    }

    pub(crate) fn rope(&self, n_head: usize) -> Rope {
        let c = self.config();
        Rope {
            n_head,
            head_dim: c.head_dim,
            n_rot: c.n_rot,
            freq_base: c.rope_freq_base,
            layout: c.rope_layout,
        }
    }

    /// One block: `x` in, `x` out (residuals added in place); intermediates
    /// land in `a`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn block_forward(
        &self,
        li: usize,
        l: &Layer,
        lora: Option<&Lora>,
        x: &mut [f32],
        positions: &[u32],
        past: Option<PastKv>,
        a: &mut BlockActs,
        saved_attention: Option<&(Vec<f32>, Vec<f32>)>,
    ) {
        let c = self.config();
        let n_tok = positions.len();
        let scale = lora.map_or(0.0, |l| l.scale());
        macro_rules! lin {
            ($input:expr, $w:expr, $bias:expr, $proj:expr, $out:expr) => {{
                let pair = lora.and_then(|l| l.pair(li, $proj));
                let mut u = a.u($proj).map(std::mem::take);
                let lo = match (pair, u.as_mut()) {
                    (Some(p), Some(u)) => Some((p, scale, u)),
                    _ => None,
                };
                self.linear($input, n_tok, $w, $bias, lo, $out);
                if let Some(u) = u {
                    *a.u($proj).expect("u buffer") = u;
                }
            }};
        }
        // Attention.
        let _t = profile::span("forward: the rest (residuals, copies)");
        rmsnorm(x, &l.attn_norm, c.rms_eps, &mut a.xn1, &mut a.rstd1);
        lin!(&a.xn1, &l.wq, l.bq.as_deref(), Proj::Q, &mut a.q_lin);
        lin!(&a.xn1, &l.wk, l.bk.as_deref(), Proj::K, &mut a.k_lin);
        lin!(&a.xn1, &l.wv, l.bv.as_deref(), Proj::V, &mut a.v);
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            // Qwen3: RMSNorm over each head ([n_tok * n_head, head_dim] rows).
            rmsnorm(&a.q_lin, qn, c.rms_eps, &mut a.q, &mut a.rstd_q);
            rmsnorm(&a.k_lin, kn, c.rms_eps, &mut a.k, &mut a.rstd_k);
        } else {
            a.q.copy_from_slice(&a.q_lin);
            a.k.copy_from_slice(&a.k_lin);
        }
        {
            let _t = profile::span("rope");
            self.rope(c.n_head).forward(&mut a.q, positions);
            self.rope(c.n_head_kv).forward(&mut a.k, positions);
        }
        let shape = AttnShape {
            n_tok,
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
        };
        match saved_attention {
            // Recomputing a block for the backward pass: the attention
            // output of the training forward is bit-identical, so reuse it.
            Some((att, lse)) => {
                a.att.copy_from_slice(att);
                a.lse.copy_from_slice(lse);
            }
            None => {
                let _t = profile::span("attention forward");
                self.attention_forward(shape, past, a)
            }
        }
        let mut proj = std::mem::take(&mut a.proj);
        lin!(&a.att, &l.wo, None, Proj::O, &mut proj);
        x.iter_mut().zip(&proj).for_each(|(v, &p)| *v += p);
        a.x_mid.copy_from_slice(x);
        // Feed-forward.
        rmsnorm(x, &l.ffn_norm, c.rms_eps, &mut a.xn2, &mut a.rstd2);
        lin!(&a.xn2, &l.w_gate, None, Proj::Gate, &mut a.gate);
        lin!(&a.xn2, &l.w_up, None, Proj::Up, &mut a.up);
        {
            let _t = profile::span("SwiGLU");
            swiglu_forward(&a.gate, &a.up, &mut a.act);
        }
        lin!(&a.act, &l.w_down, None, Proj::Down, &mut proj);
        x.iter_mut().zip(&proj).for_each(|(v, &p)| *v += p);
        a.proj = proj;
    }
}

/// `rmsnorm_forward` keeping the reciprocal RMS, timed as its own part.
fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32], rstd: &mut [f32]) {
    let _t = profile::span("RMSNorm");
    rmsnorm_forward(x, weight, eps, out, Some(rstd));
}
