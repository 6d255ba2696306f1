//! Next-token log-probabilities through the output projection without ever
//! holding all `n_tok x n_vocab` logits: the vocabulary is processed in tiles
//! of rows of `W_out`, with a running (online) log-sum-exp per position.
//!
//! Shapes: `h: [n_tok, n_embd]` (final hidden states, normalized),
//! `W_out: [n_vocab, n_embd]`, `targets, logprob, lse: [n_tok]`.

use crate::cpu::{call_twin, kernels, twin};
use crate::matmul::{matmul_w_plus_acc_in, matmul_wt_in, Precision, Weights, NR};
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

/// The logits of a forward pass, tile by tile as it computed them, kept
/// for the backward pass so that it need not compute them again: the
/// vocabulary product is the largest single product of a small model's
/// step (Qwen2.5-0.5B: 28 % of the forward's matrix work), and the
/// backward's copy of it is the only product a training step computes
/// twice when every block is kept. `n_tok x n_vocab` f32 values.
pub struct KeptLogits {
    tile: usize,
    tiles: Vec<Vec<f32>>,
}

impl KeptLogits {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.tiles.iter().map(Vec::len).sum::<usize>() * std::mem::size_of::<f32>()
    }
}

/// Bytes [`KeptLogits`] takes for `n_tok` positions over `n_vocab`.
pub fn kept_logits_bytes(n_tok: usize, n_vocab: usize) -> usize {
    n_tok * n_vocab * std::mem::size_of::<f32>()
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
    token_logprobs_tiled(p, h, n_tok, w_out, targets, logprob, lse, tile, false).map(|_| ())
}

/// [`token_logprobs_forward`] that also returns the logits, for a
/// [`token_logprobs_backward`] that then skips their product.
#[allow(clippy::too_many_arguments)]
pub fn token_logprobs_forward_keeping(
    p: Precision,
    h: &[f32],
    n_tok: usize,
    w_out: &Weights,
    targets: &[u32],
    logprob: &mut [f32],
    lse: &mut [f32],
) -> Result<KeptLogits, TargetOutOfVocab> {
    let tile = vocab_tile(n_tok, w_out.n_rows());
    let kept = token_logprobs_tiled(p, h, n_tok, w_out, targets, logprob, lse, tile, true)?;
    Ok(kept.expect("kept when asked"))
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
    keep: bool,
) -> Result<Option<KeptLogits>, TargetOutOfVocab> {
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
    // Without keeping, one tile's buffer serves every tile.
    let mut scratch = if keep {
        Vec::new()
    } else {
        vec![0f32; n_tok * tile]
    };
    let mut kept: Vec<Vec<f32>> = Vec::new();
    let mut run_max = vec![f32::NEG_INFINITY; n_tok];
    let mut run_sum = vec![0f64; n_tok];
    for v0 in (0..n_vocab).step_by(tile) {
        let v1 = (v0 + tile).min(n_vocab);
        let width = v1 - v0;
        let buf = if keep {
            kept.push(vec![0f32; n_tok * width]);
            &mut kept.last_mut().expect("just pushed")[..]
        } else {
            &mut scratch[..n_tok * width]
        };
        matmul_wt_in(p, h, n_tok, &w_out.rows(v0, v1), buf);
        // Each position's running log-sum-exp on its own: rows in parallel,
        // each row's sum in the same order as on one thread.
        buf.par_chunks(width)
            .zip(run_max.par_iter_mut())
            .zip(run_sum.par_iter_mut())
            .zip(logprob.par_iter_mut())
            .zip(targets.par_iter())
            .for_each(|((((row, run_max), run_sum), logprob), &target)| {
                let m_new = run_max.max(max(row));
                if m_new.is_finite() {
                    *run_sum =
                        *run_sum * ((*run_max - m_new) as f64).exp() + sum_exp_shifted(row, m_new);
                }
                *run_max = m_new;
                let target = target as usize;
                if (v0..v1).contains(&target) {
                    *logprob = row[target - v0];
                }
            });
    }
    for t in 0..n_tok {
        lse[t] = run_max[t] + (run_sum[t] as f32).ln();
        logprob[t] -= lse[t];
    }
    Ok(keep.then_some(KeptLogits { tile, tiles: kept }))
}

/// `d logprob_t / d logit_v = onehot(v = target) - softmax_v`, times `g`:
/// `out[v] = -g exp(logit_v - lse) (+ g at the target)`, for the tile of the
/// vocabulary that starts at `v0`. `logits` is `out` itself when `None`.
fn logit_grads(
    out: &mut [f32],
    logits: Option<&[f32]>,
    g: f32,
    lse: f32,
    target: usize,
    v0: usize,
) {
    call_twin!(
        kernels().exp,
        softmax_grads_body,
        softmax_grads_avx2,
        softmax_grads_avx512;
        out,
        logits,
        g,
        lse
    );
    if (v0..v0 + out.len()).contains(&target) {
        out[target - v0] += g;
    }
}

twin!(
    /// `out[v] = -g exp(logit_v - lse)`: one `exp` per logit, 78 million of
    /// them a step at T = 512 on a 152k vocabulary, so built for each
    /// vector width like the other `exp` loops.
    fn softmax_grads_body, softmax_grads_avx2, softmax_grads_avx512 (out: &mut [f32], logits: Option<&[f32]>, g: f32, lse: f32) {
    match logits {
        Some(src) => out
            .iter_mut()
            .zip(src)
            .for_each(|(o, &x)| *o = -g * exp_approx(x - lse)),
        None => out.iter_mut().for_each(|x| *x = -g * exp_approx(*x - lse)),
    }
});

/// Backward: given `dlogprob[t]` (the loss gradient of each position's
/// log-prob), adds `dh[t] = dlogprob[t] * (W[target_t] - sum_v p_tv W[v])` into
/// `dh` (`[n_tok, n_embd]`), from the logits the forward kept or, without
/// them, recomputing the logits tile by tile from `h`, and the `lse` saved by
/// the forward (which must have used the same precision). Kept or
/// recomputed, the logits and so `dh` are the same bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn token_logprobs_backward(
    p: Precision,
    h: &[f32],
    n_tok: usize,
    w_out: &Weights,
    targets: &[u32],
    lse: &[f32],
    kept: Option<&KeptLogits>,
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
    let tile = kept.map_or_else(|| vocab_tile(n_tok, n_vocab), |k| k.tile);
    backward_tiled(p, h, n_tok, w_out, targets, lse, kept, dlogprob, dh, tile);
}

#[allow(clippy::too_many_arguments)]
fn backward_tiled(
    p: Precision,
    h: &[f32],
    n_tok: usize,
    w_out: &Weights,
    targets: &[u32],
    lse: &[f32],
    kept: Option<&KeptLogits>,
    dlogprob: &[f32],
    dh: &mut [f32],
    tile: usize,
) {
    let n_vocab = w_out.n_rows();
    if let Some(k) = kept {
        assert!(
            k.tile == tile
                && k.tiles.len() == n_vocab.div_ceil(tile)
                && k.bytes() == kept_logits_bytes(n_tok, n_vocab),
            "token_logprobs_backward: kept logits of another shape"
        );
    }
    let mut dlogits = vec![0f32; n_tok * tile];
    for (i, v0) in (0..n_vocab).step_by(tile).enumerate() {
        let v1 = (v0 + tile).min(n_vocab);
        let width = v1 - v0;
        let w_tile = w_out.rows(v0, v1);
        let buf = &mut dlogits[..n_tok * width];
        let src = kept.map(|k| &k.tiles[i][..]);
        if src.is_none() {
            matmul_wt_in(p, h, n_tok, &w_tile, buf);
        }
        buf.par_chunks_mut(width).enumerate().for_each(|(t, row)| {
            let logits = src.map(|s| &s[t * width..(t + 1) * width]);
            logit_grads(row, logits, dlogprob[t], lse[t], targets[t] as usize, v0);
        });
        // Straight into dh: no tile-sized product to add afterwards.
        matmul_w_plus_acc_in(p, buf, n_tok, &w_tile, None, dh);
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

    /// Random hidden states `[n_tok, n_embd]`, an f32 output matrix
    /// `[n_vocab, n_embd]` and targets, all from `rng`.
    fn case(
        rng: &mut TestRng,
        n_tok: usize,
        n_embd: usize,
        n_vocab: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
        let h = rng.vec(n_tok * n_embd, 1.0);
        let w = rng.vec(n_vocab * n_embd, 1.0);
        let targets = (0..n_tok)
            .map(|_| (rng.next_u64() % n_vocab as u64) as u32)
            .collect();
        (h, w, targets)
    }

    #[test]
    fn tiled_matches_scalar_twin_over_many_tiles() {
        let mut rng = TestRng(21);
        let (n_tok, n_embd, n_vocab) = (37, 64, 1000);
        let (h, w, targets) = case(&mut rng, n_tok, n_embd, n_vocab);
        let w = Weights::f32(&w, n_vocab, n_embd);
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
                false,
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
        token_logprobs_backward(
            Precision::F32,
            &h,
            n_tok,
            &w,
            &targets,
            &lse,
            None,
            &g,
            &mut dh,
        );
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

        // The backward adds into dh, tile by tile, in both precisions: from
        // a dh of ones over 21 tiles it ends one above the one-tile result.
        for p in [Precision::F32, Precision::Bf16] {
            token_logprobs_forward(p, &h, n_tok, &w, &targets, &mut lp, &mut lse).unwrap();
            let mut one_tile = vec![0f32; h.len()];
            let whole = vocab_tile(n_tok, n_vocab);
            backward_tiled(
                p,
                &h,
                n_tok,
                &w,
                &targets,
                &lse,
                None,
                &g,
                &mut one_tile,
                whole,
            );
            let mut tiled = vec![1f32; h.len()];
            backward_tiled(p, &h, n_tok, &w, &targets, &lse, None, &g, &mut tiled, 48);
            for (i, (a, b)) in tiled.iter().zip(&one_tile).enumerate() {
                assert!(
                    (a - 1.0 - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{p:?} dh[{i}]: {a} - 1 against {b}"
                );
            }
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

    /// The backward from the logits the forward kept gives the gradients of
    /// the backward that recomputes them, bit for bit, in both precisions
    /// and over one tile or many; and the forward's log-probs do not change
    /// with keeping.
    #[test]
    fn kept_logits_give_bit_identical_gradients() {
        let mut rng = TestRng(22);
        let (n_tok, n_embd, n_vocab) = (29, 64, 1000);
        let (h, w, targets) = case(&mut rng, n_tok, n_embd, n_vocab);
        let w = Weights::f32(&w, n_vocab, n_embd);
        let g: Vec<f32> = (0..n_tok).map(|_| rng.uniform() - 0.5).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for p in [Precision::F32, Precision::Bf16] {
            for tile in [vocab_tile(n_tok, n_vocab), 48] {
                let (mut lp, mut lse) = (vec![0f32; n_tok], vec![0f32; n_tok]);
                let (mut lp_k, mut lse_k) = (vec![0f32; n_tok], vec![0f32; n_tok]);
                let run = |lp: &mut [f32], lse: &mut [f32], keep| {
                    token_logprobs_tiled(p, &h, n_tok, &w, &targets, lp, lse, tile, keep).unwrap()
                };
                assert!(run(&mut lp, &mut lse, false).is_none());
                let kept = run(&mut lp_k, &mut lse_k, true).expect("kept");
                assert_eq!(kept.bytes(), kept_logits_bytes(n_tok, n_vocab));
                assert_eq!(kept.tiles.len(), n_vocab.div_ceil(tile));
                assert_eq!((bits(&lp), bits(&lse)), (bits(&lp_k), bits(&lse_k)));
                let backward = |kept: Option<&KeptLogits>| {
                    let mut dh = vec![0f32; n_tok * n_embd];
                    backward_tiled(p, &h, n_tok, &w, &targets, &lse, kept, &g, &mut dh, tile);
                    dh
                };
                let (with, without) = (backward(Some(&kept)), backward(None));
                assert!(with.iter().any(|v| *v != 0.0));
                assert_eq!(bits(&with), bits(&without), "{p:?}, tile {tile}");
            }
        }
    }
}
