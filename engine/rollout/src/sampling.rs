//! Token sampling with exact log-probabilities.
//!
//! llama.cpp's sampler returns no probability, and the trainer needs, for each
//! sampled token, its log-probability under the model at temperature 1, while
//! importance ratios need it under the distribution actually sampled from.
//! Sampling here is therefore done in Rust from the logits row: temperature,
//! then top-k, then top-p (nucleus), then a draw from a seeded generator, so a
//! sequence's tokens depend only on its own seed and logits.

use cleaner_kernels::softmax;
use serde::{Deserialize, Serialize};

use crate::llama::Token;

/// How one sequence samples. `temperature <= 0` means greedy (argmax).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// Logits are divided by it (0: greedy).
    pub temperature: f32,
    /// Keep the smallest set of most likely tokens whose mass reaches `top_p`
    /// (1.0 keeps all).
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens (0 keeps all).
    pub top_k: usize,
    /// Seed of the sequence's generator.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Checks the ranges; the error names the field.
    pub fn validate(&self) -> Result<(), SamplingError> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(SamplingError::Temperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplingError::TopP(self.top_p));
        }
        Ok(())
    }
}

/// A sampling parameter out of range: which one, and its value.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SamplingError {
    /// `temperature` is negative or not a number.
    #[error("temperature must be a finite number >= 0, got {0}")]
    Temperature(f32),
    /// `top_p` is outside (0, 1].
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f32),
}

/// One sampled token and its log-probabilities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampled {
    /// The token drawn.
    pub token: Token,
    /// log p(token) under the model at temperature 1 (the trainer's quantity).
    pub logprob: f32,
    /// log p(token) under the distribution sampled from (after temperature,
    /// top-k, top-p); 0 for greedy.
    pub sampler_logprob: f32,
}

/// The seeded generator sampling draws from (it lives in `cleaner-kernels`
/// so the sandbox seeds its guest's randomness the same way).
pub use cleaner_kernels::rng::Rng;

/// Samples one token from `logits` (one row, `n_vocab` long).
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> Sampled {
    if params.temperature <= 0.0 {
        let lse = softmax::logsumexp(logits);
        let token = argmax(logits);
        return Sampled {
            token: token as Token,
            logprob: logits[token] - lse,
            sampler_logprob: 0.0,
        };
    }
    let inv_t = 1.0 / params.temperature;
    let full = params.top_k == 0 || params.top_k >= logits.len();
    if full && params.top_p >= 1.0 {
        // Whole vocabulary: one pass writes the unnormalised probabilities and
        // their sum, a second draws from them; no sort.
        return WEIGHTS.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.resize(logits.len(), 0.0);
            let m = softmax::max(logits) * inv_t;
            let sum = softmax::exp_weights(logits, inv_t, m, Some(&mut buf[..]));
            let token = draw(&buf, sum, rng);
            let lse = if params.temperature == 1.0 {
                m + (sum as f32).ln()
            } else {
                softmax::logsumexp(logits)
            };
            Sampled {
                token: token as Token,
                logprob: logits[token] - lse,
                sampler_logprob: (buf[token] as f64 / sum).ln() as f32,
            }
        });
    }
    let lse = softmax::logsumexp(logits);
    // Candidate set: top-k by partial selection, then sorted for top-p.
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit_desc = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let m = softmax::max(logits) * inv_t;
    let weight = |i: u32| ((logits[i as usize] * inv_t - m) as f64).exp();
    if !full {
        idx.select_nth_unstable_by(params.top_k - 1, by_logit_desc);
        idx.truncate(params.top_k);
    }
    // The nucleus normally sits in the first few hundred candidates: sort a
    // head found by partial selection and fall back to a full sort only if the
    // head's mass is short of top_p. Same order, so the same result.
    let total: f64 = idx.iter().map(|&i| weight(i)).sum();
    const HEAD: usize = 512;
    if params.top_p < 1.0 && idx.len() > HEAD {
        let mut head = idx.clone();
        head.select_nth_unstable_by(HEAD - 1, by_logit_desc);
        head.truncate(HEAD);
        head.sort_unstable_by(by_logit_desc);
        let head_mass: f64 = head.iter().map(|&i| weight(i)).sum();
        if head_mass / total >= params.top_p as f64 {
            idx = head;
        } else {
            idx.sort_unstable_by(by_logit_desc);
        }
    } else {
        idx.sort_unstable_by(by_logit_desc);
    }
    let weights: Vec<f64> = idx.iter().map(|&i| weight(i)).collect();
    let mut keep = weights.len();
    if params.top_p < 1.0 {
        let mut acc = 0.0;
        for (n, w) in weights.iter().enumerate() {
            acc += w / total;
            if acc >= params.top_p as f64 {
                keep = n + 1;
                break;
            }
        }
    }
    let kept_total: f64 = weights[..keep].iter().sum();
    let mut u = rng.next_f64() * kept_total;
    let mut pick = keep - 1;
    for (n, w) in weights[..keep].iter().enumerate() {
        if u < *w {
            pick = n;
            break;
        }
        u -= w;
    }
    let token = idx[pick] as usize;
    Sampled {
        token: token as Token,
        logprob: logits[token] - lse,
        sampler_logprob: (weights[pick] / kept_total).ln() as f32,
    }
}

/// The `n` most likely tokens of `logits` with their log-probabilities at
/// temperature 1, most likely first (lowest index on ties).
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(Token, f32)> {
    let n = n.min(logits.len());
    if n == 0 {
        return Vec::new();
    }
    let lse = softmax::logsumexp(logits);
    let by_logit_desc = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.select_nth_unstable_by(n - 1, by_logit_desc);
    idx.truncate(n);
    idx.sort_unstable_by(by_logit_desc);
    idx.into_iter()
        .map(|i| (i as Token, logits[i as usize] - lse))
        .collect()
}

/// Index of the largest logit (lowest index on ties).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

thread_local! {
    /// Per-thread scratch row for unnormalised probabilities (a vocabulary of
    /// 152k entries would otherwise be allocated per token).
    static WEIGHTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Index drawn with probability `w[i] / sum`. Whole blocks are skipped by
/// their sums (a vectorized pass), then one block is walked weight by weight:
/// a flat distribution over Qwen2.5's 151,936 tokens otherwise costs a
/// branchy walk over half of them per token.
fn draw(w: &[f32], sum: f64, rng: &mut Rng) -> usize {
    const BLOCK: usize = 1024;
    let mut u = rng.next_f64() * sum;
    let mut start = 0;
    for chunk in w.chunks(BLOCK) {
        let mass = block_sum(chunk);
        if u < mass {
            break;
        }
        u -= mass;
        start += chunk.len();
    }
    // The walk may run past the block by rounding; it continues to the end.
    for (i, &p) in w.iter().enumerate().skip(start) {
        let p = p as f64;
        if u < p {
            return i;
        }
        u -= p;
    }
    // Rounding left u above the total mass: take the last token with mass.
    w.iter().rposition(|&p| p > 0.0).unwrap_or(0)
}

/// Sum of one block in 16 f32 lanes (vectorizes), returned as f64.
fn block_sum(chunk: &[f32]) -> f64 {
    let mut lanes = [0f32; 16];
    let exact = chunk.chunks_exact(16);
    let tail: f32 = exact.remainder().iter().sum();
    for c in exact {
        for i in 0..16 {
            lanes[i] += c[i];
        }
    }
    lanes.iter().map(|&v| v as f64).sum::<f64>() + tail as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![2.0, 1.0, 0.5, -1.0, 3.0, 0.0]
    }

    #[test]
    fn greedy_takes_argmax() {
        let s = sample(&logits(), &SamplingParams::greedy(), &mut Rng::new(1));
        assert_eq!(s.token, 4);
        assert_eq!(s.sampler_logprob, 0.0);
        let lse = softmax::logsumexp_scalar(&logits()) as f32;
        assert!((s.logprob - (3.0 - lse)).abs() < 1e-6);
    }

    #[test]
    fn empirical_frequencies_match_the_distribution() {
        // 60k draws at T = 0.7, top-k 4, top-p 0.9: each kept token's frequency
        // must match exp(sampler_logprob) within 4 standard errors.
        let l = logits();
        let p = SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 4,
            seed: 0,
        };
        let mut rng = Rng::new(7);
        let mut counts = [0usize; 6];
        let mut probs = [0f32; 6];
        let n = 60_000;
        for _ in 0..n {
            let s = sample(&l, &p, &mut rng);
            counts[s.token as usize] += 1;
            probs[s.token as usize] = s.sampler_logprob.exp();
        }
        let total_p: f32 = probs.iter().sum();
        assert!((total_p - 1.0).abs() < 1e-5, "kept mass {total_p}");
        for t in 0..6 {
            let f = counts[t] as f64 / n as f64;
            let q = probs[t] as f64;
            let se = (q * (1.0 - q) / n as f64).sqrt().max(1e-9);
            assert!(
                (f - q).abs() < 4.0 * se + 1e-9,
                "token {t}: freq {f} vs p {q}"
            );
        }
        assert_eq!(counts[3] + counts[5], 0, "tokens outside top-k were drawn");
    }

    #[test]
    fn full_vocabulary_paths_agree_with_softmax() {
        let l = logits();
        for t in [1.0f32, 0.5] {
            let p = SamplingParams {
                temperature: t,
                ..Default::default()
            };
            let s = sample(&l, &p, &mut Rng::new(3));
            let scaled: Vec<f32> = l.iter().map(|v| v / t).collect();
            let want = scaled[s.token as usize] - softmax::logsumexp_scalar(&scaled) as f32;
            assert!((s.sampler_logprob - want).abs() < 1e-5);
        }
    }

    #[test]
    fn nucleus_head_shortcut_matches_full_sort() {
        // A large vocabulary with a peaked head (shortcut taken) and a flat one
        // (fallback): draws must follow the nucleus distribution computed by a
        // plain full sort.
        for peak in [8.0f32, 0.01] {
            let l: Vec<f32> = (0..5000)
                .map(|i| {
                    if i % 997 == 3 {
                        peak
                    } else {
                        ((i * 31 % 17) as f32) * 0.01
                    }
                })
                .collect();
            let p = SamplingParams {
                temperature: 1.0,
                top_p: 0.5,
                top_k: 0,
                seed: 0,
            };
            let mut sorted: Vec<usize> = (0..l.len()).collect();
            sorted.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
            let lse = softmax::logsumexp_scalar(&l);
            let mut acc = 0.0;
            let mut nucleus = Vec::new();
            for &i in &sorted {
                acc += (l[i] as f64 - lse).exp();
                nucleus.push(i);
                if acc >= 0.5 {
                    break;
                }
            }
            let mut rng = Rng::new(11);
            for _ in 0..200 {
                let s = sample(&l, &p, &mut rng);
                assert!(
                    nucleus.contains(&(s.token as usize)),
                    "peak {peak}: token {} outside the nucleus",
                    s.token
                );
                let want = (l[s.token as usize] as f64 - lse).exp() / acc;
                assert!((s.sampler_logprob.exp() as f64 - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn draw_across_blocks_follows_the_weights() {
        // Three blocks and a ragged tail, every seventh weight zero: bucket
        // frequencies within 5 standard deviations, zeros never drawn.
        let w: Vec<f32> = (0..3000)
            .map(|i| {
                if i % 7 == 0 {
                    0.0
                } else {
                    ((i * 31 % 97) + 1) as f32
                }
            })
            .collect();
        let sum: f64 = w.iter().map(|&v| v as f64).sum();
        let mut rng = Rng::new(3);
        let n = 200_000;
        let mut counts = [0usize; 30];
        for _ in 0..n {
            let i = draw(&w, sum, &mut rng);
            assert!(w[i] > 0.0, "drew token {i} of zero weight");
            counts[i / 100] += 1;
        }
        for (b, &c) in counts.iter().enumerate() {
            let p = w[b * 100..(b + 1) * 100]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>()
                / sum;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (c as f64 - n as f64 * p).abs() < 5.0 * sd,
                "tokens {}..{}: {c} draws, expected {:.0}",
                b * 100,
                (b + 1) * 100,
                n as f64 * p
            );
        }
    }

    #[test]
    fn top_logprobs_are_the_largest_in_order() {
        let l = logits();
        let lse = softmax::logsumexp_scalar(&l) as f32;
        let top = top_logprobs(&l, 3);
        let want = [(4, 3.0 - lse), (0, 2.0 - lse), (1, 1.0 - lse)];
        assert_eq!(top.len(), 3);
        for ((t, lp), (wt, wlp)) in top.iter().zip(want) {
            assert_eq!(*t, wt);
            assert!((lp - wlp).abs() < 1e-6, "token {t}: {lp} vs {wlp}");
        }
        assert_eq!(top_logprobs(&l, 100).len(), 6);
        assert!(top_logprobs(&l, 0).is_empty());
    }

    #[test]
    fn seeds_reproduce() {
        let l: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32) / 10.0).collect();
        let p = SamplingParams {
            seed: 5,
            ..Default::default()
        };
        let a: Vec<_> = {
            let mut r = Rng::new(5);
            (0..50).map(|_| sample(&l, &p, &mut r).token).collect()
        };
        let b: Vec<_> = {
            let mut r = Rng::new(5);
            (0..50).map(|_| sample(&l, &p, &mut r).token).collect()
        };
        assert_eq!(a, b);
    }
}
