//! A rollout's copy of its backend sequence, token for token, with what the
//! trainer needs per token: who wrote it, its sampler log-probability and the
//! kind of segment it belongs to. The four vectors always have one entry per
//! token; only the methods here change them, so they cannot drift apart.

use super::purify::Splice;
use super::trajectory::{Role, SegmentKind};
use crate::llama::Token;

/// Tokens with their role, sampler log-probability and segment kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sequence {
    /// The token ids, prompt included.
    pub tokens: Vec<Token>,
    /// Who wrote each token.
    pub roles: Vec<Role>,
    /// Sampler log-probability of each token (0 for tokens not sampled).
    pub logprobs: Vec<f32>,
    /// Segment kind of each token.
    pub kinds: Vec<SegmentKind>,
}

impl Sequence {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether it holds no token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Appends `tokens`, all of one role and kind; `logprobs` None: zeros.
    pub fn push(
        &mut self,
        tokens: &[Token],
        role: Role,
        logprobs: Option<&[f32]>,
        kind: SegmentKind,
    ) {
        self.tokens.extend_from_slice(tokens);
        self.roles.extend(std::iter::repeat_n(role, tokens.len()));
        match logprobs {
            Some(l) => self.logprobs.extend_from_slice(l),
            None => self.logprobs.extend(std::iter::repeat_n(0.0, tokens.len())),
        }
        self.kinds.extend(std::iter::repeat_n(kind, tokens.len()));
    }

    /// Marks the turn `[from..]` as reasoning before the token `split` (an
    /// index within the turn) and call from there, or all answer when the
    /// turn holds no call.
    pub fn label_turn(&mut self, from: usize, split: Option<usize>, has_call: bool) {
        for k in from..self.kinds.len() {
            self.kinds[k] = match (has_call, split) {
                (false, _) => SegmentKind::Answer,
                (true, Some(s)) if k < from + s => SegmentKind::Reasoning,
                (true, _) => SegmentKind::Call,
            };
        }
    }

    /// Applies a splice: the tokens `[cut..graft.start]` go, the graft moves
    /// up to `cut` with its roles, log-probabilities and kinds.
    pub fn splice(&mut self, splice: &Splice) {
        debug_assert_eq!(splice.graft.end, self.len(), "a graft runs to the end");
        let dropped = splice.cut..splice.graft.start;
        self.tokens.drain(dropped.clone());
        self.roles.drain(dropped.clone());
        self.logprobs.drain(dropped.clone());
        self.kinds.drain(dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_keeps_the_head_and_moves_the_graft_up() {
        let mut s = Sequence::default();
        s.push(&[1, 2], Role::Prompt, None, SegmentKind::Prompt);
        s.push(&[3, 4], Role::Model, Some(&[-0.1, -0.2]), SegmentKind::Call);
        s.push(&[5], Role::Observation, None, SegmentKind::Observation);
        s.push(
            &[6, 7, 8],
            Role::Model,
            Some(&[-0.3, -0.4, -0.5]),
            SegmentKind::Answer,
        );
        s.label_turn(5, Some(1), true);
        s.splice(&Splice {
            cut: 3,
            graft: 6..8,
        });
        assert_eq!(s.tokens, [1, 2, 3, 7, 8]);
        assert_eq!(
            s.roles,
            [
                Role::Prompt,
                Role::Prompt,
                Role::Model,
                Role::Model,
                Role::Model
            ]
        );
        assert_eq!(s.logprobs, [0.0, 0.0, -0.1, -0.4, -0.5]);
        assert_eq!(
            s.kinds,
            [
                SegmentKind::Prompt,
                SegmentKind::Prompt,
                SegmentKind::Call,
                SegmentKind::Call,
                SegmentKind::Call
            ]
        );
    }

    #[test]
    fn labels_follow_the_call_split() {
        let mut s = Sequence::default();
        s.push(&[1, 2, 3, 4], Role::Model, None, SegmentKind::Answer);
        s.label_turn(1, Some(2), true);
        assert_eq!(
            s.kinds,
            [
                SegmentKind::Answer,
                SegmentKind::Reasoning,
                SegmentKind::Reasoning,
                SegmentKind::Call
            ]
        );
        s.label_turn(1, Some(2), false);
        assert_eq!(s.kinds[1..], [SegmentKind::Answer; 3]);
    }
}
