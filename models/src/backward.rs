//! The backward pass: gradients of `sum_t dlogprob[t] * logprob[t]` with
//! respect to every LoRA factor, through every op of the forward pass in
//! reverse. Each block is recomputed from its saved input (activation
//! checkpointing), except its attention, whose output and log-sum-exps the
//! training forward saved (the only op whose cost grows with `n_tok^2`).
//! Memory is O(n_layer * n_tok * (n_embd + q_dim)) plus one block's
//! intermediates. Blocks the forward kept whole (within the memory the
//! caller allowed) are not recomputed. Base weights are only read.

use crate::error::ModelError;
use crate::forward::{BlockActs, Tape};
use crate::lora::{Lora, Proj};
use crate::model::{Layer, MatrixRef, Transformer};
use crate::prefix::{KvLink, LayerLink};
use cleaner_kernels::activation::{swiglu_backward, swiglu_forward};
use cleaner_kernels::attention::AttnShape;
use cleaner_kernels::logits::token_logprobs_backward;
use cleaner_kernels::matmul::{
    lora_products, matmul_tn, matmul_w_plus_acc_in, LowRank, Outer, Project,
};
use cleaner_kernels::norm::rmsnorm_backward;
use cleaner_kernels::profile;

impl Transformer {
    /// Adds into `grads` (an adapter of the same shape, e.g. from
    /// [`Lora::zeros_like`]) the gradient of `sum_t dlogprob[t] * logprob[t]`,
    /// where `logprob` came from [`Transformer::forward_train`] with the same
    /// `lora`. `dlogprob: [n_tok - 1]`.
    pub fn backward(
        &self,
        tape: &Tape,
        lora: &Lora,
        dlogprob: &[f32],
        grads: &mut Lora,
    ) -> Result<(), ModelError> {
        self.backward_linked(tape, lora, dlogprob, grads, KvLink::Own)
    }

    /// [`Transformer::backward`] of a pass linked to a shared prefix through
    /// the K/V of its attention (see [`crate::prefix`]): a continuation adds
    /// its gradients of the prefix's K/V into the prefix's accumulator; the
    /// prefix adds the accumulated ones to its own.
    pub(crate) fn backward_linked(
        &self,
        tape: &Tape,
        lora: &Lora,
        dlogprob: &[f32],
        grads: &mut Lora,
        mut link: KvLink,
    ) -> Result<(), ModelError> {
        self.check_lora(lora)?;
        self.check_lora(grads)?;
        let n_tok = tape.n_tok();
        let n = tape.targets.len();
        if dlogprob.len() != n
            || tape.block_inputs.len() != self.layers.len()
            || tape.attention.len() != self.layers.len()
        {
            return Err(self.err(crate::error::ModelErrorKind::BadRequest(format!(
                "backward: {} log-prob gradients for a tape of {n_tok} tokens (expected {n})",
                dlogprob.len(),
            ))));
        }
        let _t = profile::span("backward: the rest (buffers, sums)");
        let c = self.config();
        let n_embd = c.n_embd;
        // Log-softmax over the vocabulary, then the final norm.
        let mut dh = vec![0f32; n_tok * n_embd];
        let vocab = profile::span("vocabulary: log-probs backward");
        token_logprobs_backward(
            self.precision(),
            &tape.h[..n * n_embd],
            n,
            &self.weights(&self.output),
            &tape.targets,
            &tape.lse,
            tape.logits.as_ref(),
            dlogprob,
            &mut dh[..n * n_embd],
        );
        drop(vocab);
        let mut dx = vec![0f32; n_tok * n_embd];
        rmsnorm_back(
            &tape.x_final,
            &self.output_norm,
            &tape.rstd_final,
            &dh,
            &mut dx,
            false,
        );
        // Blocks in reverse, each kept whole by the forward or recomputed
        // from its input.
        let positions = tape.positions();
        let mut recomputed = None;
        let mut scratch = Scratch::default();
        for (li, layer) in self.layers.iter().enumerate().rev() {
            let x_in = &tape.block_inputs[li];
            let past = link.past(li);
            let acts = match tape.kept.get(li).and_then(Option::as_ref) {
                Some(kept) => kept,
                None => {
                    let acts =
                        recomputed.get_or_insert_with(|| BlockActs::new(self, n_tok, Some(lora)));
                    let mut x = x_in.clone();
                    self.block_forward(
                        li,
                        layer,
                        Some(lora),
                        &mut x,
                        &positions,
                        past,
                        acts,
                        tape.attention.get(li),
                    );
                    &*acts
                }
            };
            let blk = BlockBackward {
                li,
                l: layer,
                lora,
                x_in,
                positions: &positions,
                a: acts,
            };
            self.block_backward(blk, link.layer(li), &mut dx, grads, &mut scratch);
        }
        Ok(())
    }

    /// `dx` holds the gradient of the block's output on entry and of its input
    /// on return.
    fn block_backward(
        &self,
        blk: BlockBackward,
        kv: LayerLink,
        dx: &mut [f32],
        grads: &mut Lora,
        scratch: &mut Scratch,
    ) {
        let BlockBackward {
            li,
            l,
            lora,
            x_in,
            positions,
            a,
        } = blk;
        let _t = profile::span("backward: the rest (buffers, sums)");
        let c = self.config();
        let n_tok = positions.len();
        let lin = LinearBackward {
            model: self,
            li,
            lora,
            n_tok,
        };
        // Feed-forward: out = x_mid + Wdown . swiglu(Wgate . xn2, Wup . xn2).
        // A block kept whole by the forward dropped its SwiGLU output.
        let Scratch { act, dgate, dup } = scratch;
        let act = if a.act.is_empty() {
            let _t = profile::span("SwiGLU");
            let act = sized(act, a.gate.len());
            swiglu_forward(&a.gate, &a.up, act);
            act
        } else {
            &a.act
        };
        let mut d_act = vec![0f32; n_tok * c.n_ff];
        lin.run(
            act,
            &l.w_down,
            Proj::Down,
            a.u_saved(Proj::Down),
            dx,
            &mut d_act,
            grads,
        );
        let (dgate, dup) = (sized(dgate, d_act.len()), sized(dup, d_act.len()));
        {
            let _t = profile::span("SwiGLU backward");
            swiglu_backward(&a.gate, &a.up, &d_act, dgate, dup);
        }
        let mut dxn = vec![0f32; n_tok * c.n_embd];
        lin.run(
            &a.xn2,
            &l.w_gate,
            Proj::Gate,
            a.u_saved(Proj::Gate),
            dgate,
            &mut dxn,
            grads,
        );
        lin.run(
            &a.xn2,
            &l.w_up,
            Proj::Up,
            a.u_saved(Proj::Up),
            dup,
            &mut dxn,
            grads,
        );
        rmsnorm_back(&a.x_mid, &l.ffn_norm, &a.rstd2, &dxn, dx, true);
        // Attention: x_mid = x_in + Wo . attention(q, k, v).
        let mut d_att = vec![0f32; n_tok * c.q_dim()];
        lin.run(
            &a.att,
            &l.wo,
            Proj::O,
            a.u_saved(Proj::O),
            dx,
            &mut d_att,
            grads,
        );
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; a.q.len()],
            vec![0f32; a.k.len()],
            vec![0f32; a.v.len()],
        );
        let shape = AttnShape {
            n_tok,
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
        };
        {
            let _t = profile::span("attention backward");
            self.attention_backward(shape, a, &d_att, kv, (&mut dq, &mut dk, &mut dv));
        }
        {
            let _t = profile::span("rope backward");
            self.rope(c.n_head).backward(&mut dq, positions);
            self.rope(c.n_head_kv).backward(&mut dk, positions);
        }
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            let (mut dq_lin, mut dk_lin) = (vec![0f32; dq.len()], vec![0f32; dk.len()]);
            rmsnorm_back(&a.q_lin, qn, &a.rstd_q, &dq, &mut dq_lin, false);
            rmsnorm_back(&a.k_lin, kn, &a.rstd_k, &dk, &mut dk_lin, false);
            dq = dq_lin;
            dk = dk_lin;
        }
        dxn.fill(0.0);
        lin.run(
            &a.xn1,
            &l.wq,
            Proj::Q,
            a.u_saved(Proj::Q),
            &dq,
            &mut dxn,
            grads,
        );
        lin.run(
            &a.xn1,
            &l.wk,
            Proj::K,
            a.u_saved(Proj::K),
            &dk,
            &mut dxn,
            grads,
        );
        lin.run(
            &a.xn1,
            &l.wv,
            Proj::V,
            a.u_saved(Proj::V),
            &dv,
            &mut dxn,
            grads,
        );
        rmsnorm_back(x_in, &l.attn_norm, &a.rstd1, &dxn, dx, true);
    }
}

/// Buffers every block's backward overwrites whole, made once per pass
/// rather than per block (a new allocation is zeroed: 30 MB per block of
/// Qwen2.5-0.5B at T = 512): the SwiGLU output a kept block dropped, and
/// the gate and up gradients.
#[derive(Default)]
struct Scratch {
    act: Vec<f32>,
    dgate: Vec<f32>,
    dup: Vec<f32>,
}

/// `buf` with `n` values (its old ones, or zeros where it grew).
fn sized(buf: &mut Vec<f32>, n: usize) -> &mut Vec<f32> {
    buf.resize(n, 0.0);
    buf
}

/// One block's part of the backward pass: which block, and what its
/// forward saw and computed.
struct BlockBackward<'a> {
    li: usize,
    l: &'a Layer,
    lora: &'a Lora,
    x_in: &'a [f32],
    positions: &'a [u32],
    a: &'a BlockActs,
}

/// The backward of `Transformer::linear`, the LoRA choke point.
struct LinearBackward<'a> {
    model: &'a Transformer,
    li: usize,
    lora: &'a Lora,
    n_tok: usize,
}

impl LinearBackward<'_> {
    /// For `y = x W^T + s (x A^T) B^T` with `u = x A^T` saved: adds `dy W + s (dy B) A`
    /// into `dx`, `s dy^T u` into dB and `s (dy B)^T x` into dA.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        x: &[f32],
        w: &MatrixRef,
        p: Proj,
        u: Option<&Vec<f32>>,
        dy: &[f32],
        dx: &mut [f32],
        grads: &mut Lora,
    ) {
        let n_tok = self.n_tok;
        let weights = self.model.weights(w);
        let precision = self.model.precision();
        let (Some(pair), Some(u)) = (self.lora.pair(self.li, p), u) else {
            let _t = profile::span(DY_W);
            matmul_w_plus_acc_in(precision, dy, n_tok, &weights, None, dx);
            return;
        };
        let (s, rank) = (self.lora.scale(), self.lora.config.rank);
        let gp = grads
            .pair_mut(self.li, p)
            .expect("grads shaped like the adapter (checked)");
        // g = s dy B: [n_tok, rank], and dB += dy^T (s u), in one pass over dy.
        let lora_dy = profile::span("LoRA dy B, dB");
        let su: Vec<f32> = u.iter().map(|v| v * s).collect();
        let mut g = vec![0f32; n_tok * rank];
        let project = Project {
            f: &pair.b,
            p: &mut g,
        };
        let outer = Outer {
            s: &su,
            o: &mut gp.b,
        };
        lora_products(dy, n_tok, rank, project, outer);
        g.iter_mut().for_each(|v| *v *= s);
        drop(lora_dy);
        // dx += dy W + g A, the low-rank term riding in the base product.
        let low_rank = LowRank {
            act: &g,
            factor: &pair.a,
            rank,
        };
        let dy_w = profile::span(DY_W);
        matmul_w_plus_acc_in(precision, dy, n_tok, &weights, Some(low_rank), dx);
        drop(dy_w);
        let _t = profile::span("LoRA dA");
        matmul_tn(&g, x, n_tok, &mut gp.a, true);
    }
}

/// The part that times `dy W` with the frozen weights.
const DY_W: &str = "dy W, frozen weights (+ LoRA g A)";

/// `rmsnorm_backward`, timed as its own part.
fn rmsnorm_back(x: &[f32], w: &[f32], rstd: &[f32], dy: &[f32], dx: &mut [f32], add: bool) {
    let _t = profile::span("RMSNorm backward");
    rmsnorm_backward(x, w, rstd, dy, dx, add);
}
