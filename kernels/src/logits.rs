//! Next-token log-probabilities through the output projection without ever
//! holding all `n_tok x n_vocab` logits: the vocabulary is processed in tiles
//! of rows of `W_out`, with a running (online) log-sum-exp per position.
//!
//! Shapes: `h: [n_tok, n_embd]` (final hidden states, normalized),
//! `W_out: [n_vocab, n_embd]`, `targets, logprob, lse: [n_tok]`.

use crate::matmul::{matmul_w_in, matmul_wt_in, Precision, Weights, NR};
use crate::softmax::{exp_approx, max, sum_exp_shifted};
use rayon::prelude::*;

/// Logits held at once, in values (16 MiB of f32): the tile is this divided by
/// `n_tok`, so memory stays bounded whatever the sequence length.
pub const LOGITS_TILE_VALUES: usize = 1 << 22;

/// Why targets are unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetOutOfVocab {
    /// Position of the bad target.
    pub position: usize,
    /// The target token.
    pub token: u32,
    /// Vocabulary size.
    pub n_vocab: usize,
}

impl std::fmt::Display for TargetOutOfVocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "target token {} at position {} is outside the vocabulary of {} tokens",
            self.token, self.position, self.n_vocab
        )
    }
}
impl std::error::Error for TargetOutOfVocab {}

/// Vocabulary rows per tile for `n_tok` positions.
pub fn vocab_tile(n_tok: usize, n_vocab: usize) -> usize {
    let t = (LOGITS_TILE_VALUES / n_tok.max(1)) / NR * NR;
    t.clamp(NR, n_vocab.max(NR))
}

/// `logprob[t] = logits[t, targets[t]] - lse[t]`, `lse[t] = logsumexp(logits[t])`,
/// the logits computed in precision `p`.
pub fn token_logprobs_forward(
    p: Precision,
    h: &[f32],
    n_tok: usize,
    w_out: &Weights,
    targets: &[u32],
    logprob: &mut [f32],
    lse: &mut [f32],
) -> Result<(), TargetOutOfVocab> {
    let tile = vocab_tile(n_tok, w_out.n_rows());
    token_logprobs_tiled(p, h, n_tok, w_out, targets, logprob, lse, tile)
}

#[allow(clippy::too_many_arguments)]
fn token_logprobs_tiled(
    p: Precision,
    h: &[f32],
    n_tok: usize,
    w_out: &Weights,
    targets: &[u32],
    logprob: &mut [f32],
    lse: &mut [f32],
    tile: usize,
) -> Result<(), TargetOutOfVocab> {
    let n_vocab = w_out.n_rows();
    assert!(
        targets.len() == n_tok && logprob.len() == n_tok && lse.len() == n_tok,
        "token_logprobs: shapes"
    );
    if let Some((position, &token)) = targets
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= n_vocab)
    {
        return Err(TargetOutOfVocab {
            position,
            token,
            n_vocab,
        });
    }
    let mut logits = vec![0f32; n_tok * tile];
    let mut run_max = vec![f32::NEG_INFINITY; n_tok];
    let mut run_sum = vec![0f64; n_tok];
    for v0 in (0..n_vocab).step_by(tile) {
        let v1 = (v0 + tile).min(n_vocab);
        let width = v1 - v0;
        let buf = &mut logits[..n_tok * width];
        matmul_wt_in(p, h, n_tok, &w_out.rows(v0, v1), buf);
        for t in 0..n_tok {
            let row = &buf[t * width..(t + 1) * width];
            let m = max(row);
            let m_new = run_max[t].max(m);
            if m_new.is_finite() {
                run_sum[t] =
                    run_sum[t] * ((run_max[t] - m_new) as f64).exp() + sum_exp_shifted(row, m_new);
            }
            run_max[t] = m_new;
            let target = targets[t] as usize;
            if (v0..v1).contains(&target) {
                logprob[t] = row[target - v0];
            }
        }
    }
    for t in 0..n_tok {
        lse[t] = run_max[t] + (run_sum[t] as f32).ln();
        logprob[t] -= lse[t];
    }
    Ok(())
}

/// Backward: given `dlogprob[t]` (the loss gradient of each position's
/// log-prob), adds `dh[t] = dlogprob[t] * (W[target_t] - sum_v p_tv W[v])` into
/// `dh` (`[n_tok, n_embd]`), recomputing the logits tile by tile from `h` and
/// the `lse` saved by the forward (which must have used the same precision).
#[allow(clippy::too_many_arguments)]
pub fn token_logprobs_backward(
    p: Precision,
    h: &[f32],
    n_tok: usize,
    w_out: &Weights,
    targets: &[u32],
    lse: &[f32],
    dlogprob: &[f32],
    dh: &mut [f32],
) {
    let (n_vocab, n_embd) = (w_out.n_rows(), w_out.n_cols());
    assert!(
        targets.len() == n_tok
            && lse.len() == n_tok
            && dlogprob.len() == n_tok
            && dh.len() == n_tok * n_embd,
        "token_logprobs_backward: shapes"
    );
    let tile = vocab_tile(n_tok, n_vocab);
    let mut dlogits = vec![0f32; n_tok * tile];
    let mut part = vec![0f32; n_tok * n_embd];
    for v0 in (0..n_vocab).step_by(tile) {
        let v1 = (v0 + tile).min(n_vocab);
        let width = v1 - v0;
        let w_tile = w_out.rows(v0, v1);
        let buf = &mut dlogits[..n_tok * width];
        matmul_wt_in(p, h, n_tok, &w_tile, buf);
        buf.par_chunks_mut(width).enumerate().for_each(|(t, row)| {
            let g = dlogprob[t];
            // d logprob_t / d logit_v = onehot(v = target) - softmax_v.
            for x in row.iter_mut() {
                *x = -g * exp_approx(*x - lse[t]);
            }
            let target = targets[t] as usize;
            if (v0..v1).contains(&target) {
                row[target - v0] += g;
            }
        });
        matmul_w_in(p, buf, n_tok, &w_tile, &mut part);
        dh.iter_mut().zip(&part).for_each(|(a, &b)| *a += b);
    }
}

/// Scalar twin: all logits at once in f64.
pub fn token_logprobs_forward_scalar(
    h: &[f32],
    n_tok: usize,
    w_out: &Weights,
    targets: &[u32],
    logprob: &mut [f32],
) {
    let n_vocab = w_out.n_rows();
    let mut logits = vec![0f32; n_tok * n_vocab];
    crate::matmul::matmul_wt_scalar(h, n_tok, w_out, &mut logits);
    for t in 0..n_tok {
        let row = &logits[t * n_vocab..(t + 1) * n_vocab];
        logprob[t] =
            (row[targets[t] as usize] as f64 - crate::softmax::logsumexp_scalar(row)) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestRng;

    /// Absolute, in nats: logits accumulate in a different order than the oracle.
    pub const LOGPROB_TOL: f32 = 1e-4;

    #[test]
    fn tiled_matches_scalar_twin_over_many_tiles() {
        let mut rng = TestRng(21);
        let (n_tok, n_embd, n_vocab) = (37, 64, 1000);
        let h = rng.vec(n_tok * n_embd, 1.0);
        let w = rng.vec(n_vocab * n_embd, 1.0);
        let w = Weights::f32(&w, n_vocab, n_embd);
        let targets: Vec<u32> = (0..n_tok)
            .map(|_| (rng.next_u64() % n_vocab as u64) as u32)
            .collect();
        let (mut lp, mut lse, mut lp_ref) =
            (vec![0f32; n_tok], vec![0f32; n_tok], vec![0f32; n_tok]);
        token_logprobs_forward_scalar(&h, n_tok, &w, &targets, &mut lp_ref);
        // The default tile (one tile here) and a small ragged tile that forces
        // the online log-sum-exp across 21 tiles.
        assert_eq!(vocab_tile(n_tok, n_vocab), n_vocab);
        for tile in [vocab_tile(n_tok, n_vocab), 48] {
            token_logprobs_tiled(
                Precision::F32,
                &h,
                n_tok,
                &w,
                &targets,
                &mut lp,
                &mut lse,
                tile,
            )
            .unwrap();
            for t in 0..n_tok {
                assert!(
                    (lp[t] - lp_ref[t]).abs() <= LOGPROB_TOL,
                    "tile {tile} t={t}: {} vs {}",
                    lp[t],
                    lp_ref[t]
                );
                assert!(lp[t] <= 0.0);
            }
        }
        // Backward vs finite differences of L = sum_t g_t logprob_t.
        let g: Vec<f32> = (0..n_tok).map(|_| rng.uniform()).collect();
        token_logprobs_forward(Precision::F32, &h, n_tok, &w, &targets, &mut lp, &mut lse).unwrap();
        let mut dh = vec![0f32; h.len()];
        token_logprobs_backward(Precision::F32, &h, n_tok, &w, &targets, &lse, &g, &mut dh);
        let loss = |h: &[f32]| -> f64 {
            let mut lp = vec![0f32; n_tok];
            token_logprobs_forward_scalar(h, n_tok, &w, &targets, &mut lp);
            lp.iter().zip(&g).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        for i in (0..h.len()).step_by(97) {
            let (mut p, mut m) = (h.clone(), h.clone());
            p[i] += 1e-2;
            m[i] -= 1e-2;
            let fd = (loss(&p) - loss(&m)) / 2e-2;
            assert!(
                (dh[i] as f64 - fd).abs() <= 1e-3 * (1.0 + fd.abs()),
                "dh[{i}] = {}, fd {fd}",
                dh[i]
            );
        }

        let bad = token_logprobs_forward(
            Precision::F32,
            &h[..n_embd],
            1,
            &w,
            &[1000],
            &mut lp[..1],
            &mut lse[..1],
        );
        assert_eq!(
            bad,
            Err(TargetOutOfVocab {
                position: 0,
                token: 1000,
                n_vocab: 1000
            })
        );
    }
}
