//! Training passes over a group of sequences that share a prefix: a GRPO
//! group's rollouts all start with the same prompt (system prompt, tool
//! instructions, question), often as long as a response. On our CPU kernels
//! the prefix runs once, forward and backward, and every rollout attends to
//! its K/V ([`cleaner_models::prefix`]); the log-probs and summed gradients
//! equal the per-sequence passes' within rounding. The ggml backend runs the
//! sequences one by one.

use cleaner_models::PrefixGrad;

use super::trainer::{checked_gradient, TrainError, Trainer};

/// Tokens of the prefix a group's passes share: one less than their common
/// prefix, so every continuation starts with a token all sequences have and
/// every log-prob the prefix computes has the same target in all. 0 (no
/// sharing) for fewer than two sequences.
pub fn shared_prefix_len(seqs: &[&[u32]]) -> usize {
    let Some((first, rest)) = seqs.split_first() else {
        return 0;
    };
    if rest.is_empty() {
        return 0;
    }
    let common = rest.iter().fold(first.len(), |n, s| {
        n.min(first.iter().zip(*s).take_while(|(a, b)| a == b).count())
    });
    common.saturating_sub(1)
}

/// Shared prefixes shorter than this run per sequence: the saving would not
/// pay for the continuation's attention over the prefix's query rows.
const MIN_SHARED: usize = 16;

impl Trainer {
    /// Whether `seqs` go through one shared prefix: the CPU kernels, sharing
    /// on, and a prefix worth sharing. Its length if so.
    fn shared_prefix(&self, seqs: &[&[u32]]) -> Option<usize> {
        let p = shared_prefix_len(seqs);
        (self.shares_prefixes() && !self.on_ggml() && p >= MIN_SHARED).then_some(p)
    }

    /// [`Trainer::logprobs`] of every sequence of a group, the prefix they
    /// share computed once.
    pub fn logprobs_group(
        &self,
        seqs: &[&[u32]],
        adapter: bool,
    ) -> Result<Vec<Vec<f32>>, TrainError> {
        let Some(p) = self.shared_prefix(seqs) else {
            return seqs.iter().map(|s| self.logprobs(s, adapter)).collect();
        };
        let (model, lora) = (self.model(), adapter.then_some(self.adapter()));
        let (prefix_lp, prefix) = model.forward_prefix(&seqs[0][..p], seqs[0][p], lora, None)?;
        seqs.iter()
            .map(|s| {
                let (lp, _) = model.forward_continuation(&prefix, &s[p..], lora, None)?;
                Ok([&prefix_lp[..], &lp].concat())
            })
            .collect()
    }

    /// [`Trainer::accumulate`] over a group: `loss_grad(i, logprobs)` gives
    /// sequence `i`'s `d loss / d logprob`. The shared prefix runs forward
    /// once, backward once with the sum of the group's gradients. Returns
    /// each sequence's log-probs. On an error the pending gradients may hold
    /// part of the group (as a failed [`Trainer::accumulate`] in a batch
    /// leaves those before it): drop the batch rather than update.
    pub fn accumulate_group(
        &mut self,
        seqs: &[&[u32]],
        mut loss_grad: impl FnMut(usize, &[f32]) -> Vec<f32>,
    ) -> Result<Vec<Vec<f32>>, TrainError> {
        let Some(p) = self.shared_prefix(seqs) else {
            let mut out = Vec::with_capacity(seqs.len());
            for (i, s) in seqs.iter().enumerate() {
                out.push(self.accumulate(s, |lp| loss_grad(i, lp))?);
            }
            return Ok(out);
        };
        let keep = self.activation_memory();
        let (model, lora, grads) = self.parts_mut();
        let (prefix_lp, prefix) =
            model.forward_prefix(&seqs[0][..p], seqs[0][p], Some(lora), Some(keep))?;
        let keep_rest = keep.saturating_sub(prefix.kept_bytes());
        let mut acc = PrefixGrad::new(&prefix);
        let mut out = Vec::with_capacity(seqs.len());
        for (i, s) in seqs.iter().enumerate() {
            let (lp, tape) =
                model.forward_continuation(&prefix, &s[p..], Some(lora), Some(keep_rest))?;
            let logprobs = [&prefix_lp[..], &lp].concat();
            let dlogprob = checked_gradient(&logprobs, loss_grad(i, &logprobs))?;
            acc.add_logprob_grad(&dlogprob[..p]);
            // A continuation of one token (the shared next one) has no
            // log-prob of its own and nothing after it: its gradient is 0.
            if dlogprob.len() > p {
                model.backward_continuation(
                    &prefix,
                    &tape,
                    lora,
                    &dlogprob[p..],
                    grads,
                    &mut acc,
                )?;
            }
            out.push(logprobs);
        }
        model.backward_prefix(&prefix, lora, &acc, grads)?;
        self.add_pending(seqs.len());
        Ok(out)
    }
}
