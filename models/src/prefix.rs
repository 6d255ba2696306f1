//! Shared-prefix training: the G rollouts of a GRPO group start with the
//! same prompt, so its forward pass runs once and every continuation attends
//! to its K/V, instead of recomputing it G times.
//!
//! ```text
//! forward:   prefix ──K/V──▶ continuation 1 .. G      (each: log-probs, loss)
//! backward:  continuation g ──dK/dV (summed over g)──▶ prefix ──▶ LoRA grads
//! ```
//!
//! The prefix's LoRA gradients are those of the per-sequence passes summed
//! over the group: the prefix's K/V feed every continuation's attention, and
//! its own log-probs (positions whose next token the group shares) get the
//! sum of the group's gradients. The split keeps the last shared token out
//! of the prefix: the prefix ends one token early, so each continuation
//! starts with a token every sequence has, and every log-prob the prefix
//! computes has the same target in all sequences.
//!
//! A continuation's attention runs the tiled kernels over prefix and
//! continuation together, with the prefix's query rows zero and masked out
//! of the backward (`lse = +inf`, `dout = 0`): exact, at the price of the
//! prefix's own triangle of scores.

use crate::error::{ModelError, ModelErrorKind};
use crate::forward::{BlockActs, Tape};
use crate::lora::Lora;
use crate::model::Transformer;
use cleaner_kernels::attention::{attention_backward_in, attention_forward_in, AttnShape};

/// Where a forward pass's tokens sit: after a shared prefix or from
/// position 0, whether their K/V are kept for continuations, and the next
/// token of each position whose log-prob is computed.
pub(crate) struct Span<'a> {
    pub past: Option<&'a Tape>,
    pub keep_kv: bool,
    pub targets: Vec<u32>,
}

impl Span<'_> {
    /// A whole sequence from position 0: log-probs of `tokens[1..]`.
    pub fn whole(tokens: &[u32]) -> Span<'static> {
        Span {
            past: None,
            keep_kv: false,
            targets: tokens[1..].to_vec(),
        }
    }
}

/// A prefix's K (after RoPE) and V at one layer, `[n_past, kv_dim]` each.
#[derive(Clone, Copy)]
pub(crate) struct PastKv<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub n_past: usize,
}

/// Layer `li`'s K/V of a prefix tape (recorded with `keep_kv`).
pub(crate) fn past_kv(prefix: &Tape, li: usize) -> PastKv<'_> {
    let (k, v) = &prefix.kv[li];
    PastKv {
        k,
        v,
        n_past: prefix.n_tok(),
    }
}

/// How a backward pass is linked to a shared prefix.
pub(crate) enum KvLink<'a> {
    /// A sequence on its own.
    Own,
    /// A continuation: attends to `prefix`'s K/V and adds its gradients of
    /// them into `dkv` (`[n_layer]` of (dK, dV)).
    After {
        prefix: &'a Tape,
        dkv: &'a mut [(Vec<f32>, Vec<f32>)],
    },
    /// A shared prefix: its continuations' summed gradients of its K/V.
    Prefix { dkv: &'a [(Vec<f32>, Vec<f32>)] },
}

/// [`KvLink`] at one layer.
pub(crate) enum LayerLink<'a> {
    Own,
    After {
        past: PastKv<'a>,
        dk: &'a mut [f32],
        dv: &'a mut [f32],
    },
    Prefix {
        dk: &'a [f32],
        dv: &'a [f32],
    },
}

impl<'a> KvLink<'a> {
    /// The prefix K/V layer `li` of a continuation attends to.
    pub fn past(&self, li: usize) -> Option<PastKv<'a>> {
        match self {
            KvLink::After { prefix, .. } => Some(past_kv(prefix, li)),
            _ => None,
        }
    }

    pub fn layer(&mut self, li: usize) -> LayerLink<'_> {
        match self {
            KvLink::Own => LayerLink::Own,
            KvLink::After { prefix, dkv } => {
                let (dk, dv) = &mut dkv[li];
                LayerLink::After {
                    past: past_kv(prefix, li),
                    dk,
                    dv,
                }
            }
            KvLink::Prefix { dkv } => LayerLink::Prefix {
                dk: &dkv[li].0,
                dv: &dkv[li].1,
            },
        }
    }
}

/// What the continuations of a shared prefix send back to it: the summed
/// gradients of its log-probs and of each layer's K/V.
pub struct PrefixGrad {
    dlogprob: Vec<f32>,
    dkv: Vec<(Vec<f32>, Vec<f32>)>,
}

impl PrefixGrad {
    /// Zero gradients for `prefix` (from [`Transformer::forward_prefix`]).
    pub fn new(prefix: &Tape) -> PrefixGrad {
        PrefixGrad {
            dlogprob: vec![0.0; prefix.targets.len()],
            dkv: prefix
                .kv
                .iter()
                .map(|(k, v)| (vec![0.0; k.len()], vec![0.0; v.len()]))
                .collect(),
        }
    }

    /// Whether this accumulator was made for `prefix` (same shapes).
    fn fits(&self, prefix: &Tape) -> bool {
        self.dlogprob.len() == prefix.targets.len()
            && self.dkv.len() == prefix.kv.len()
            && self
                .dkv
                .iter()
                .zip(&prefix.kv)
                .all(|(a, b)| a.0.len() == b.0.len() && a.1.len() == b.1.len())
    }

    /// Adds one sequence's gradient of the prefix's log-probs
    /// (`[prefix length]`, the first entries of its whole gradient).
    pub fn add_logprob_grad(&mut self, d: &[f32]) {
        assert_eq!(d.len(), self.dlogprob.len(), "prefix log-prob gradient");
        self.dlogprob.iter_mut().zip(d).for_each(|(a, &b)| *a += b);
    }
}

impl Transformer {
    /// Forward of a prefix shared by a group of sequences: `tokens` are its
    /// positions `0..P`, `next` the token at position `P` in every sequence
    /// of the group (so the prefix's `P` log-probs are the group's). The
    /// tape keeps each layer's K/V for [`Transformer::forward_continuation`];
    /// `train`: as in [`Transformer::forward_train_keeping`] (`None`:
    /// log-probs only, the tape cannot go backward).
    pub fn forward_prefix(
        &self,
        tokens: &[u32],
        next: u32,
        lora: Option<&Lora>,
        train: Option<usize>,
    ) -> Result<(Vec<f32>, Tape), ModelError> {
        let mut all = tokens.to_vec();
        all.push(next);
        self.check_tokens(&all)?;
        let span = Span {
            past: None,
            keep_kv: true,
            targets: all[1..].to_vec(),
        };
        self.forward_span(tokens, lora, train, span)
    }

    /// Forward of the positions after a shared prefix: `tokens[0]` is the
    /// prefix's `next` token; returns the log-probs of `tokens[1..]` (the
    /// sequence's log-probs are the prefix's followed by these). Same
    /// adapter and `train` as the prefix's pass.
    pub fn forward_continuation(
        &self,
        prefix: &Tape,
        tokens: &[u32],
        lora: Option<&Lora>,
        train: Option<usize>,
    ) -> Result<(Vec<f32>, Tape), ModelError> {
        self.check_continuation(prefix, tokens)?;
        let span = Span {
            past: Some(prefix),
            keep_kv: false,
            targets: tokens[1..].to_vec(),
        };
        self.forward_span(tokens, lora, train, span)
    }

    /// Backward of a continuation (recorded with `train`): its LoRA
    /// gradients go into `grads`, its gradients of the prefix's K/V and
    /// log-probs into `acc`. `dlogprob` is the continuation's part of the
    /// sequence's gradient.
    pub fn backward_continuation(
        &self,
        prefix: &Tape,
        tape: &Tape,
        lora: &Lora,
        dlogprob: &[f32],
        grads: &mut Lora,
        acc: &mut PrefixGrad,
    ) -> Result<(), ModelError> {
        self.check_continuation(prefix, &tape.tokens)?;
        if tape.start != prefix.n_tok() || !acc.fits(prefix) {
            return Err(self.err(ModelErrorKind::BadRequest(
                "backward_continuation: the tape or the accumulator belongs to another prefix"
                    .into(),
            )));
        }
        let link = KvLink::After {
            prefix,
            dkv: &mut acc.dkv,
        };
        self.backward_linked(tape, lora, dlogprob, grads, link)
    }

    /// Backward of the shared prefix, once every continuation has sent its
    /// gradients into `acc`.
    pub fn backward_prefix(
        &self,
        prefix: &Tape,
        lora: &Lora,
        acc: &PrefixGrad,
        grads: &mut Lora,
    ) -> Result<(), ModelError> {
        if prefix.kv.len() != self.layers.len() || !acc.fits(prefix) {
            return Err(self.err(ModelErrorKind::BadRequest(
                "backward_prefix: the tape is not a shared prefix's, or the accumulator another's"
                    .into(),
            )));
        }
        let link = KvLink::Prefix { dkv: &acc.dkv };
        self.backward_linked(prefix, lora, &acc.dlogprob, grads, link)
    }

    fn check_continuation(&self, prefix: &Tape, tokens: &[u32]) -> Result<(), ModelError> {
        let bad = |why: String| Err(self.err(ModelErrorKind::BadRequest(why)));
        if prefix.kv.len() != self.layers.len() || prefix.start != 0 {
            return bad("continuation: the tape is not a shared prefix's".into());
        }
        let next = prefix.targets.last().copied();
        if tokens.first().copied() != next {
            return bad(format!(
                "continuation: starts with {:?}, the prefix's next token is {next:?}",
                tokens.first()
            ));
        }
        let n = prefix.n_tok() + tokens.len();
        if n > self.config().context_length {
            return bad(format!(
                "continuation: {n} tokens with the prefix exceed the model's context length {}",
                self.config().context_length
            ));
        }
        // Position 0 was checked with the prefix (its `next`).
        self.check_tokens(&[tokens[0], tokens[0]])?;
        if tokens.len() > 1 {
            self.check_tokens(tokens)?;
        }
        Ok(())
    }

    /// Causal attention of a block's queries, after `past`'s K/V if any.
    pub(crate) fn attention_forward(
        &self,
        shape: AttnShape,
        past: Option<PastKv>,
        a: &mut BlockActs,
    ) {
        let (p, scale) = (self.precision().for_attention(), self.attention_scale());
        let Some(past) = past else {
            attention_forward_in(p, &a.q, &a.k, &a.v, shape, scale, &mut a.att, &mut a.lse);
            return;
        };
        let (n, np) = (shape.n_tok, past.n_past);
        let q_dim = shape.n_head * shape.head_dim;
        let full = AttnShape {
            n_tok: np + n,
            ..shape
        };
        let q = [&vec![0f32; np * q_dim][..], &a.q].concat();
        let (k, v) = ([past.k, &a.k].concat(), [past.v, &a.v].concat());
        let mut out = vec![0f32; full.n_tok * q_dim];
        let mut lse = vec![0f32; shape.n_head * full.n_tok];
        attention_forward_in(p, &q, &k, &v, full, scale, &mut out, &mut lse);
        a.att.copy_from_slice(&out[np * q_dim..]);
        for (h, row) in a
            .lse
            .chunks_exact_mut(n.max(1))
            .enumerate()
            .take(shape.n_head)
        {
            row.copy_from_slice(&lse[h * full.n_tok + np..][..n]);
        }
    }

    /// The attention's backward: `dq`, `dk`, `dv` of the block's own
    /// positions; the prefix's K/V gradients as `kv` links them.
    pub(crate) fn attention_backward(
        &self,
        shape: AttnShape,
        a: &BlockActs,
        d_att: &[f32],
        kv: LayerLink,
        (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    ) {
        let (p, scale) = (self.precision().for_attention(), self.attention_scale());
        let add =
            |acc: &mut [f32], src: &[f32]| acc.iter_mut().zip(src).for_each(|(a, &b)| *a += b);
        let (past, pdk, pdv) = match kv {
            LayerLink::Own | LayerLink::Prefix { .. } => {
                attention_backward_in(
                    p, &a.q, &a.k, &a.v, &a.att, &a.lse, d_att, shape, scale, dq, dk, dv,
                );
                if let LayerLink::Prefix { dk: ek, dv: ev } = kv {
                    add(dk, ek);
                    add(dv, ev);
                }
                return;
            }
            LayerLink::After { past, dk, dv } => (past, dk, dv),
        };
        let (n, np) = (shape.n_tok, past.n_past);
        let (q_dim, kv_dim) = (
            shape.n_head * shape.head_dim,
            shape.n_head_kv * shape.head_dim,
        );
        let full = AttnShape {
            n_tok: np + n,
            ..shape
        };
        let zeros = vec![0f32; np * q_dim];
        let q = [&zeros[..], &a.q].concat();
        let (k, v) = ([past.k, &a.k].concat(), [past.v, &a.v].concat());
        let out = [&zeros[..], &a.att].concat();
        let dout = [&zeros[..], d_att].concat();
        // The prefix's query rows are not this pass's: p = 0 there.
        let mut lse = vec![f32::INFINITY; shape.n_head * full.n_tok];
        for (h, row) in a.lse.chunks_exact(n.max(1)).enumerate().take(shape.n_head) {
            lse[h * full.n_tok + np..][..n].copy_from_slice(row);
        }
        let (mut dq_f, mut dk_f, mut dv_f) = (
            vec![0f32; q.len()],
            vec![0f32; k.len()],
            vec![0f32; v.len()],
        );
        attention_backward_in(
            p, &q, &k, &v, &out, &lse, &dout, full, scale, &mut dq_f, &mut dk_f, &mut dv_f,
        );
        dq.copy_from_slice(&dq_f[np * q_dim..]);
        dk.copy_from_slice(&dk_f[np * kv_dim..]);
        dv.copy_from_slice(&dv_f[np * kv_dim..]);
        add(pdk, &dk_f[..np * kv_dim]);
        add(pdv, &dv_f[..np * kv_dim]);
    }

    fn attention_scale(&self) -> f32 {
        1.0 / (self.config().head_dim as f32).sqrt()
    }
}
