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
use crate::model::{Layer, MatrixRef, Transformer};
use cleaner_kernels::activation::swiglu_forward;
use cleaner_kernels::attention::{attention_forward, AttnShape};
use cleaner_kernels::logits::token_logprobs_forward;
use cleaner_kernels::matmul::matmul_wt;
use cleaner_kernels::norm::rmsnorm_forward;
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

/// Activation buffers of one block, reused across layers.
struct Scratch {
    xn: Vec<f32>,    // [n_tok, n_embd]
    q: Vec<f32>,     // [n_tok, q_dim]
    k: Vec<f32>,     // [n_tok, kv_dim]
    v: Vec<f32>,     // [n_tok, kv_dim]
    att: Vec<f32>,   // [n_tok, q_dim]
    lse: Vec<f32>,   // [n_head, n_tok]
    proj: Vec<f32>,  // [n_tok, n_embd]
    gate: Vec<f32>,  // [n_tok, n_ff]
    up: Vec<f32>,    // [n_tok, n_ff]
    act: Vec<f32>,   // [n_tok, n_ff]
}

impl Transformer {
    /// `log p(tokens[t + 1] | tokens[..=t])` for `t` in `0..n_tok - 1`.
    pub fn next_token_logprobs(&self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        Ok(self.forward(tokens, None)?.logprobs)
    }

    /// Full forward pass over `tokens` (positions `0..n_tok`). `logits_for`
    /// selects positions whose full logits are also returned.
    pub fn forward(&self, tokens: &[u32], logits_for: Option<Range<usize>>) -> Result<ForwardOutput, ModelError> {
        let c = self.config();
        let n_tok = tokens.len();
        if n_tok == 0 {
            return Err(self.err(ModelErrorKind::BadRequest("forward: no tokens".into())));
        }
        if n_tok > c.context_length {
            return Err(self.err(ModelErrorKind::BadRequest(format!(
                "forward: {n_tok} tokens exceed the model's context length {}",
                c.context_length
            ))));
        }
        if let Some((position, &token)) = tokens.iter().enumerate().find(|(_, &t)| t as usize >= c.n_vocab) {
            return Err(self.err(ModelErrorKind::TokenOutOfRange { position, token, n_vocab: c.n_vocab }));
        }
        if let Some(r) = &logits_for {
            if r.start > r.end || r.end > n_tok {
                return Err(self.err(ModelErrorKind::BadRequest(format!(
                    "forward: logits range {r:?} is outside positions 0..{n_tok}"
                ))));
            }
        }
        let h = self.final_hidden(tokens);
        let w_out = self.weights(&self.output);
        let n = n_tok - 1;
        let mut logprobs = vec![0f32; n];
        let mut lse = vec![0f32; n];
        token_logprobs_forward(&h[..n * c.n_embd], n, &w_out, &tokens[1..], &mut logprobs, &mut lse)
            .map_err(|e| self.err(ModelErrorKind::BadRequest(e.to_string())))?;
        let logits = logits_for.map(|r| {
            let mut out = vec![0f32; r.len() * c.n_vocab];
            matmul_wt(&h[r.start * c.n_embd..r.end * c.n_embd], r.len(), &w_out, &mut out);
            out
        });
        Ok(ForwardOutput { logprobs, logits })
    }

    /// `y = x W^T (+ b)`: every projection of the model goes through here.
    /// `x: [n_tok, n_in]`, `y: [n_tok, n_out]`.
    fn linear(&self, x: &[f32], n_tok: usize, w: &MatrixRef, bias: Option<&[f32]>, y: &mut [f32]) {
        matmul_wt(x, n_tok, &self.weights(w), y);
        if let Some(b) = bias {
            for row in y.chunks_exact_mut(b.len()) {
                row.iter_mut().zip(b).for_each(|(v, &bb)| *v += bb);
            }
        }
    }

    /// The final normalized hidden states, `[n_tok, n_embd]`.
    fn final_hidden(&self, tokens: &[u32]) -> Vec<f32> {
        let c = self.config();
        let (n_tok, n_embd) = (tokens.len(), c.n_embd);
        let embd = self.weights(&self.token_embd);
        let mut x = vec![0f32; n_tok * n_embd];
        for (row, &t) in x.chunks_exact_mut(n_embd).zip(tokens) {
            embd.dequantize_row(t as usize, row);
        }
        let positions: Vec<u32> = (0..n_tok as u32).collect();
        let mut s = Scratch {
            xn: vec![0f32; n_tok * n_embd],
            q: vec![0f32; n_tok * c.q_dim()],
            k: vec![0f32; n_tok * c.kv_dim()],
            v: vec![0f32; n_tok * c.kv_dim()],
            att: vec![0f32; n_tok * c.q_dim()],
            lse: vec![0f32; c.n_head * n_tok],
            proj: vec![0f32; n_tok * n_embd],
            gate: vec![0f32; n_tok * c.n_ff],
            up: vec![0f32; n_tok * c.n_ff],
            act: vec![0f32; n_tok * c.n_ff],
        };
        for layer in &self.layers {
            self.block_forward(layer, &mut x, &positions, &mut s);
        }
        let mut h = vec![0f32; n_tok * n_embd];
        rmsnorm_forward(&x, &self.output_norm, c.rms_eps, &mut h, None);
        h
    }

    fn block_forward(&self, l: &Layer, x: &mut [f32], positions: &[u32], s: &mut Scratch) {
        let c = self.config();
        let n_tok = positions.len();
        // Attention.
        rmsnorm_forward(x, &l.attn_norm, c.rms_eps, &mut s.xn, None);
        self.linear(&s.xn, n_tok, &l.wq, l.bq.as_deref(), &mut s.q);
        self.linear(&s.xn, n_tok, &l.wk, l.bk.as_deref(), &mut s.k);
        self.linear(&s.xn, n_tok, &l.wv, l.bv.as_deref(), &mut s.v);
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            // Qwen3: RMSNorm over each head ([n_tok * n_head, head_dim] rows).
            let q = s.q.clone();
            rmsnorm_forward(&q, qn, c.rms_eps, &mut s.q, None);
            let k = s.k.clone();
            rmsnorm_forward(&k, kn, c.rms_eps, &mut s.k, None);
        }
        let rope = |n_head| Rope { n_head, head_dim: c.head_dim, n_rot: c.n_rot, freq_base: c.rope_freq_base, layout: c.rope_layout };
        rope(c.n_head).forward(&mut s.q, positions);
        rope(c.n_head_kv).forward(&mut s.k, positions);
        let shape = AttnShape { n_tok, n_head: c.n_head, n_head_kv: c.n_head_kv, head_dim: c.head_dim };
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        attention_forward(&s.q, &s.k, &s.v, shape, scale, &mut s.att, &mut s.lse);
        self.linear(&s.att, n_tok, &l.wo, None, &mut s.proj);
        x.iter_mut().zip(&s.proj).for_each(|(a, &b)| *a += b);
        // Feed-forward.
        rmsnorm_forward(x, &l.ffn_norm, c.rms_eps, &mut s.xn, None);
        self.linear(&s.xn, n_tok, &l.w_gate, None, &mut s.gate);
        self.linear(&s.xn, n_tok, &l.w_up, None, &mut s.up);
        swiglu_forward(&s.gate, &s.up, &mut s.act);
        self.linear(&s.act, n_tok, &l.w_down, None, &mut s.proj);
        x.iter_mut().zip(&s.proj).for_each(|(a, &b)| *a += b);
    }
}
