//! The policy-gradient loss of the paper's recipe (docs/purification.md, "The RL recipe"),
//! built for RL: per-token advantages and weights, old log-probs for a
//! PPO-style clipped ratio with asymmetric clip and dual clip, an optional KL
//! penalty to the reference policy, token-mean or sequence-mean
//! aggregation. Plain NLL for SFT is the special case ratio-free, advantage 1.
//!
//! Everything is a pure function of per-token arrays: the model computes
//! `logprob`, this computes the loss and `d loss / d logprob`, which the
//! backward pass consumes.

/// How per-token losses become one number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregation {
    /// Sum over all trainable tokens of the batch / their count (DAPO's choice).
    TokenMean,
    /// Mean per sequence, then mean over sequences (GRPO's original).
    SequenceMean,
}

/// Loss hyper-parameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Ratio clipped below at `1 - clip_low` ...
    pub clip_low: f32,
    /// ... and above at `1 + clip_high` (asymmetric "clip-higher").
    pub clip_high: f32,
    /// Dual clip: for negative advantages the loss is bounded by
    /// `-dual_clip * A` (None disables).
    pub dual_clip: Option<f32>,
    /// Weight of the k3 KL estimator to the reference policy (0 disables).
    pub kl_coef: f32,
    /// How token losses are averaged.
    pub aggregation: Aggregation,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            clip_low: 0.2,
            clip_high: 0.28,
            dual_clip: Some(10.0),
            kl_coef: 0.0,
            aggregation: Aggregation::TokenMean,
        }
    }
}

/// One sequence's per-token inputs. All slices have the length of the
/// sequence's log-prob array (`n_tok - 1`); `weight` 0 marks tokens that do
/// not train (prompt, observations).
pub struct SeqLossInput<'a> {
    /// Log-probs under the policy being trained.
    pub logprob: &'a [f32],
    /// Log-probs under the policy that sampled (recomputed by the trainer).
    pub old_logprob: &'a [f32],
    /// Reference-policy log-probs, needed only when `kl_coef > 0`.
    pub ref_logprob: Option<&'a [f32]>,
    /// Advantage of each token (GRPO: its sequence's).
    pub advantage: &'a [f32],
    /// Loss weight (0 on prompt and observation tokens).
    pub weight: &'a [f32],
}

/// Summary statistics of a loss evaluation (over trainable tokens).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct LossStats {
    /// The aggregated loss.
    pub loss: f64,
    /// Trainable tokens (weights summed).
    pub tokens: f64,
    /// Fraction of tokens whose ratio was clipped (gradient zero).
    pub clip_fraction: f64,
    /// Mean of `old_logprob - logprob` (approximate KL to the sampling policy).
    pub approx_kl: f64,
    /// Mean k3 KL to the reference, when given.
    pub ref_kl: f64,
}

/// Per-token PPO loss and its derivative with respect to `logprob`.
/// Returns (loss, dloss/dlogprob, clipped).
pub fn token_loss(cfg: &LossConfig, lp: f32, old: f32, adv: f32) -> (f64, f64, bool) {
    let ratio = ((lp - old) as f64).exp();
    let adv = adv as f64;
    let clipped_ratio = ratio.clamp(1.0 - cfg.clip_low as f64, 1.0 + cfg.clip_high as f64);
    let unclipped = -adv * ratio;
    let clipped = -adv * clipped_ratio;
    // PPO: the larger (more pessimistic) of the two losses.
    let (mut loss, mut grad, mut was_clipped) = if unclipped >= clipped {
        (unclipped, -adv * ratio, false)
    } else {
        (clipped, 0.0, true)
    };
    if let Some(c) = cfg.dual_clip {
        let bound = -(c as f64) * adv;
        if adv < 0.0 && loss > bound {
            loss = bound;
            grad = 0.0;
            was_clipped = true;
        }
    }
    (loss, grad, was_clipped)
}

/// What a mini-batch's normalization needs to know before its sequences are
/// run one at a time: its trainable tokens and sequences.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchShape {
    /// Trainable tokens (weights summed).
    pub tokens: f64,
    /// Sequences with at least one trainable token.
    pub sequences: f64,
}

impl BatchShape {
    /// The shape of a batch of per-sequence weight arrays.
    pub fn of<'a>(weights: impl IntoIterator<Item = &'a [f32]>) -> BatchShape {
        let mut shape = BatchShape {
            tokens: 0.0,
            sequences: 0.0,
        };
        for w in weights {
            let t: f64 = w.iter().map(|&x| x as f64).sum();
            shape.tokens += t;
            shape.sequences += (t > 0.0) as u8 as f64;
        }
        shape
    }
}

/// One sequence's share of the batch loss (normalized by the whole batch,
/// so shares add up) and its `d loss / d logprob`. This lets a trainer run
/// the sequences of a mini-batch one at a time.
pub fn sequence_loss(
    cfg: &LossConfig,
    s: &SeqLossInput,
    batch: BatchShape,
) -> (LossStats, Vec<f32>) {
    let total_tokens = batch.tokens.max(1.0);
    let seq_tokens: f64 = s.weight.iter().map(|&w| w as f64).sum();
    let norm = match cfg.aggregation {
        Aggregation::TokenMean => total_tokens,
        Aggregation::SequenceMean => seq_tokens.max(1.0) * batch.sequences.max(1.0),
    };
    let mut stats = LossStats {
        tokens: seq_tokens,
        ..Default::default()
    };
    let mut g = vec![0f32; s.logprob.len()];
    for t in 0..s.logprob.len() {
        let w = s.weight[t] as f64;
        if w == 0.0 {
            continue;
        }
        let (mut loss, mut d, clipped) =
            token_loss(cfg, s.logprob[t], s.old_logprob[t], s.advantage[t]);
        if cfg.kl_coef > 0.0 {
            if let Some(r) = s.ref_logprob {
                // k3 estimator: exp(ref - lp) - (ref - lp) - 1 >= 0.
                let x = (r[t] - s.logprob[t]) as f64;
                let kl = x.exp() - x - 1.0;
                loss += cfg.kl_coef as f64 * kl;
                d += cfg.kl_coef as f64 * (1.0 - x.exp());
                stats.ref_kl += w * kl / total_tokens;
            }
        }
        stats.loss += w * loss / norm;
        stats.clip_fraction += w * clipped as u8 as f64 / total_tokens;
        stats.approx_kl += w * (s.old_logprob[t] - s.logprob[t]) as f64 / total_tokens;
        g[t] = (w * d / norm) as f32;
    }
    (stats, g)
}

impl LossStats {
    /// Adds another sequence's share (from [`sequence_loss`]).
    pub fn add(&mut self, o: &LossStats) {
        self.loss += o.loss;
        self.tokens += o.tokens;
        self.clip_fraction += o.clip_fraction;
        self.approx_kl += o.approx_kl;
        self.ref_kl += o.ref_kl;
    }
}

/// The batch loss and `d loss / d logprob` for every sequence (same shapes as
/// the inputs).
pub fn policy_loss(cfg: &LossConfig, batch: &[SeqLossInput]) -> (LossStats, Vec<Vec<f32>>) {
    let shape = BatchShape::of(batch.iter().map(|s| s.weight));
    let mut stats = LossStats::default();
    let mut grads = Vec::with_capacity(batch.len());
    for s in batch {
        let (st, g) = sequence_loss(cfg, s, shape);
        stats.add(&st);
        grads.push(g);
    }
    (stats, grads)
}

/// Supervised fine-tuning: mean negative log-likelihood of the weighted
/// tokens, and its gradient.
pub fn nll_loss(logprob: &[f32], weight: &[f32]) -> (f64, Vec<f32>) {
    let n: f64 = weight.iter().map(|&w| w as f64).sum::<f64>().max(1e-12);
    let loss = -logprob
        .iter()
        .zip(weight)
        .map(|(&l, &w)| l as f64 * w as f64)
        .sum::<f64>()
        / n;
    (
        loss,
        weight.iter().map(|&w| (-(w as f64) / n) as f32).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_loss_clips_as_ppo_with_dual_clip() {
        let cfg = LossConfig::default();
        // Ratio 1: loss -A, gradient -A (d ratio / d lp = ratio).
        assert_eq!(token_loss(&cfg, -1.0, -1.0, 2.0), (-2.0, -2.0, false));
        // Positive advantage, ratio above 1.28: clipped, no gradient.
        let (l, g, c) = token_loss(&cfg, 0.5, 0.0, 1.0);
        assert!(c && g == 0.0 && (l + 1.28).abs() < 1e-6);
        // Positive advantage, ratio below 0.8: the unclipped loss is larger, keeps its gradient.
        let (_, g, c) = token_loss(&cfg, -1.0, 0.0, 1.0);
        assert!(!c && (g + (-1f64).exp()).abs() < 1e-9);
        // Negative advantage, huge ratio: dual clip bounds the loss at -c*A = 10 * |A|.
        let (l, g, c) = token_loss(&cfg, 5.0, 0.0, -1.0);
        assert!(c && g == 0.0 && (l - 10.0).abs() < 1e-9);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let cfg = LossConfig {
            kl_coef: 0.1,
            ..Default::default()
        };
        let lp = [-1.0f32, -0.5, -2.0, -0.1];
        let old = [-1.1f32, -0.5, -1.0, -0.3];
        let rf = [-1.2f32, -0.4, -2.2, -0.2];
        let adv = [1.0f32, -1.0, 0.5, -0.5];
        let w = [1.0f32, 1.0, 0.0, 1.0];
        for aggregation in [Aggregation::TokenMean, Aggregation::SequenceMean] {
            let cfg = LossConfig {
                aggregation,
                ..cfg.clone()
            };
            let eval = |lp: &[f32]| {
                let inputs = [SeqLossInput {
                    logprob: lp,
                    old_logprob: &old,
                    ref_logprob: Some(&rf),
                    advantage: &adv,
                    weight: &w,
                }];
                policy_loss(&cfg, &inputs)
            };
            let (_, g) = eval(&lp);
            for t in 0..4 {
                let h = 1e-3;
                let (mut p, mut m) = (lp, lp);
                p[t] += h;
                m[t] -= h;
                let fd = (eval(&p).0.loss - eval(&m).0.loss) / (2.0 * h as f64);
                assert!(
                    (g[0][t] as f64 - fd).abs() < 1e-3,
                    "{aggregation:?} t={t}: {} vs {fd}",
                    g[0][t]
                );
            }
        }
    }

    #[test]
    fn nll_is_mean_negative_logprob() {
        let (l, g) = nll_loss(&[-1.0, -3.0, -5.0], &[1.0, 1.0, 0.0]);
        assert_eq!(l, 2.0);
        assert_eq!(g, vec![-0.5, -0.5, 0.0]);
    }
}
