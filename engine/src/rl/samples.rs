//! What a GRPO step trains on: the sequences of its trajectories with their
//! advantages and loss weights ([`Sample`]), their split into mini-batches,
//! and the log-probs of the policy that sampled them ([`StepLogprobs`]).

use crate::agent::{Role, Trajectory};

/// A trajectory ready to train on: token ids, and per next-token position
/// (`n - 1` of them) its advantage and loss weight (1 where the predicted
/// token is a kept model token).
pub struct Sample {
    /// The final (purified) sequence, prompt included.
    pub tokens: Vec<u32>,
    /// The trajectory's advantage, at every position.
    pub advantage: Vec<f32>,
    /// 1 where the predicted token is a model token, else 0.
    pub weight: Vec<f32>,
    /// From a group whose rewards are all equal: advantage 0, counted in the
    /// token-mean's denominator, no gradient.
    pub zero_signal: bool,
    /// Index of its trajectory in the step's (grouped by problem, so
    /// `trajectory / group_size` is its group even when samples before it
    /// were dropped).
    pub trajectory: usize,
}

impl Sample {
    /// `None` when there is nothing to train on: fewer than two tokens, or
    /// no model token to predict.
    pub fn new(t: &Trajectory, advantage: f32) -> Option<Sample> {
        if t.tokens.len() < 2 {
            return None;
        }
        let weight: Vec<f32> = t.roles[1..]
            .iter()
            .map(|r| (*r == Role::Model) as u8 as f32)
            .collect();
        if !weight.iter().any(|&w| w > 0.0) {
            return None;
        }
        Some(Sample {
            tokens: t.tokens.iter().map(|&x| x as u32).collect(),
            advantage: vec![advantage; weight.len()],
            weight,
            zero_signal: false,
            trajectory: 0,
        })
    }

    /// Positions trained on (weight above zero).
    pub fn trained_tokens(&self) -> usize {
        self.weight.iter().filter(|&&w| w > 0.0).count()
    }
}

/// The samples of `trajectories`, in order; those of a degenerate group
/// (advantage `None`) with advantage 0, marked [`Sample::zero_signal`].
pub fn samples_of(trajectories: &[Trajectory], advantages: &[Option<f32>]) -> Vec<Sample> {
    trajectories
        .iter()
        .zip(advantages)
        .enumerate()
        .filter_map(|(i, (t, a))| {
            let mut s = Sample::new(t, a.unwrap_or(0.0))?;
            s.zero_signal = a.is_none();
            s.trajectory = i;
            Some(s)
        })
        .collect()
}

/// Indices `0..n` cut into `count` consecutive mini-batches of equal size
/// (the last may be shorter; fewer batches when `n < count`).
pub fn mini_batches(n: usize, count: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return Vec::new();
    }
    let per = n.div_ceil(count.min(n));
    (0..n)
        .collect::<Vec<_>>()
        .chunks(per)
        .map(<[usize]>::to_vec)
        .collect()
}

/// Per sample, log-probs of the policy that sampled the step (`old`; filled
/// in as they are computed) and of the start of training (`reference`,
/// adapter off; only when the loss or the metrics need it).
pub struct StepLogprobs {
    /// Old log-probs, one vector per sample once known.
    pub old: Vec<Option<Vec<f32>>>,
    /// Reference log-probs, one vector per sample.
    pub reference: Option<Vec<Vec<f32>>>,
}

impl StepLogprobs {
    /// Entropy of the sampling policy (mean negative log-prob of the
    /// trained tokens) and its k3 KL to the reference, over all samples;
    /// `(None, None)` when no token is trained on.
    pub fn entropy_and_kl(&self, samples: &[Sample]) -> (Option<f64>, Option<f64>) {
        let (mut nll, mut kl, mut w_sum) = (0f64, 0f64, 0f64);
        for (i, s) in samples.iter().enumerate() {
            let old_i = self.old[i].as_deref().unwrap_or_default();
            for (t, &w) in s.weight.iter().enumerate() {
                if w > 0.0 && t < old_i.len() {
                    nll -= old_i[t] as f64;
                    w_sum += 1.0;
                    if let Some(reference) = &self.reference {
                        let x = (reference[i][t] - old_i[t]) as f64;
                        kl += x.exp() - x - 1.0;
                    }
                }
            }
        }
        if w_sum > 0.0 {
            (
                Some(nll / w_sum),
                self.reference.is_some().then(|| kl / w_sum),
            )
        } else {
            (None, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{trajectory::FORMAT_VERSION, Finish};

    /// A trajectory with these roles; token `k` is `100 + k`.
    fn with_roles(rollout: usize, roles: &str) -> Trajectory {
        let roles: Vec<Role> = roles
            .chars()
            .map(|c| match c {
                'P' => Role::Prompt,
                'M' => Role::Model,
                _ => Role::Observation,
            })
            .collect();
        let n = roles.len();
        Trajectory {
            format_version: FORMAT_VERSION,
            problem_id: "p".into(),
            problem_index: Some(0),
            rollout,
            tokens: (0..n as u32).map(|k| 100 + k as crate::Token).collect(),
            roles,
            sampler_logprobs: vec![0.0; n],
            segments: Vec::new(),
            tool_calls: Vec::new(),
            purification: Vec::new(),
            purified: false,
            turns: 1,
            response_tokens: 0,
            correction_tokens: 0,
            text: String::new(),
            answer: None,
            reward: None,
            finish: Finish::Answer,
        }
    }

    /// Log-prob position `t` scores token `t + 1` (the trainer's log-probs
    /// are shifted by one), so the weight at `t` is 1 exactly when token
    /// `t + 1` is a model token: the prompt's first token is never scored,
    /// and an observation token right after a model token gets weight 0.
    #[test]
    fn weights_are_shifted_by_one_onto_the_predicted_tokens() {
        let t = with_roles(0, "PPMMOOMM");
        let s = Sample::new(&t, 1.0).unwrap();
        assert_eq!(s.tokens, (100..108).collect::<Vec<u32>>());
        assert_eq!(s.weight, [0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
        assert_eq!(s.trained_tokens(), 4);
        // Nothing to predict: no sample.
        assert!(Sample::new(&with_roles(0, "PPOO"), 1.0).is_none());
        assert!(Sample::new(&with_roles(0, "M"), 1.0).is_none());
    }

    /// Each trajectory's advantage reaches every position of its own sample
    /// and no other; a degenerate group's trajectories get 0 and are marked.
    #[test]
    fn each_advantage_reaches_its_own_trajectory() {
        let ts = [
            with_roles(0, "PMM"),
            with_roles(1, "PMMMM"),
            with_roles(2, "PM"),
            with_roles(3, "PMMM"),
        ];
        let samples = samples_of(&ts, &[Some(0.5), Some(-0.5), None, None]);
        let got: Vec<(Vec<f32>, bool)> = samples
            .iter()
            .map(|s| (s.advantage.clone(), s.zero_signal))
            .collect();
        assert_eq!(
            got,
            [
                (vec![0.5; 2], false),
                (vec![-0.5; 4], false),
                (vec![0.0; 1], true),
                (vec![0.0; 3], true),
            ]
        );
        for (s, t) in samples.iter().zip(&ts) {
            assert_eq!(s.tokens.len(), t.tokens.len());
        }
    }

    #[test]
    fn mini_batches_cover_every_index_once_in_order() {
        assert!(mini_batches(0, 2).is_empty());
        assert_eq!(mini_batches(5, 2), vec![vec![0, 1, 2], vec![3, 4]]);
        assert_eq!(mini_batches(2, 4), vec![vec![0], vec![1]]);
        assert_eq!(mini_batches(3, 1), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn entropy_and_kl_average_over_trained_tokens() {
        let sample = Sample {
            tokens: vec![1, 2, 3],
            advantage: vec![1.0; 2],
            weight: vec![0.0, 1.0],
            zero_signal: false,
            trajectory: 0,
        };
        let mut lp = StepLogprobs {
            old: vec![Some(vec![-9.0, -0.5])],
            reference: None,
        };
        assert_eq!(lp.entropy_and_kl(&[sample]), (Some(0.5), None));
        lp.reference = Some(vec![vec![0.0, -0.5]]);
        let sample = Sample {
            tokens: vec![1, 2, 3],
            advantage: vec![1.0; 2],
            weight: vec![0.0, 1.0],
            zero_signal: false,
            trajectory: 0,
        };
        assert_eq!(lp.entropy_and_kl(&[sample]), (Some(0.5), Some(0.0)));
    }
}
