//! Causal self-attention with grouped-query heads, computed in tiles with an
//! online softmax (Milakov & Gimelshein 2018; FlashAttention's forward), so
//! memory stays O(n_tok * head_dim) per task instead of O(n_tok^2).
//!
//! Shapes: `q: [n_tok, n_head, head_dim]`, `k, v: [n_tok, n_head_kv, head_dim]`,
//! `out: [n_tok, n_head, head_dim]`, `lse: [n_head, n_tok]` (log-sum-exp of each
//! query's scaled scores, kept so the backward pass can recompute
//! probabilities tile by tile). Query head `h` reads key/value head
//! `h / (n_head / n_head_kv)`, as ggml broadcasts.

use crate::matmul::NR;
use rayon::prelude::*;

/// Query rows per task.
pub const ATTN_Q_TILE: usize = 64;
/// Keys per tile.
pub const ATTN_K_TILE: usize = 64;

/// Head geometry.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// Tokens (rows of q, k, v).
    pub n_tok: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (GQA: n_head is a multiple).
    pub n_head_kv: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl AttnShape {
    fn check(&self, q: &[f32], k: &[f32], v: &[f32], out: &[f32], lse: &[f32]) {
        let AttnShape {
            n_tok,
            n_head,
            n_head_kv,
            head_dim,
        } = *self;
        assert!(
            n_head_kv > 0 && n_head % n_head_kv == 0,
            "attention: {n_head} heads vs {n_head_kv} kv heads"
        );
        assert_eq!(q.len(), n_tok * n_head * head_dim, "attention: q shape");
        assert_eq!(out.len(), q.len(), "attention: out shape");
        assert_eq!(k.len(), n_tok * n_head_kv * head_dim, "attention: k shape");
        assert_eq!(v.len(), k.len(), "attention: v shape");
        assert_eq!(lse.len(), n_head * n_tok, "attention: lse shape");
    }
}

/// Per-head copies of a `[n_tok, n_heads, hd]` tensor laid out for tile
/// products, each padded with zeros to whole tiles (`n_pad` positions) and
/// whole panels (`hd_pad` dimensions) so the micro-kernel never reads past a
/// buffer: `rows` is `[n_heads][n_pad][hd_pad]`; `cols` is transposed per
/// tile of positions, `[n_heads][n_pad / tile][hd][tile]`, so each tile's
/// block is contiguous (16 KiB for 64 keys at hd = 64: it stays in L1 while a
/// tile product runs).
/// Built once per call, shared by every task.
#[derive(Clone, Copy)]
struct HeadLayout {
    n_pad: usize,
    hd_pad: usize,
    hd: usize,
}

impl HeadLayout {
    fn new(n_tok: usize, hd: usize) -> HeadLayout {
        HeadLayout {
            n_pad: n_tok.div_ceil(ATTN_K_TILE) * ATTN_K_TILE,
            hd_pad: hd.div_ceil(NR) * NR,
            hd,
        }
    }

    /// Tokens in a `[n_tok, n_heads, hd]` tensor.
    fn n_tok(&self, src: &[f32], n_heads: usize) -> usize {
        src.len() / (n_heads * self.hd).max(1)
    }

    /// Token `t`'s values of head `h` in a `[n_tok, n_heads, hd]` tensor.
    fn row<'a>(&self, src: &'a [f32], n_heads: usize, h: usize, t: usize) -> &'a [f32] {
        &src[(t * n_heads + h) * self.hd..][..self.hd]
    }

    fn rows(&self, src: &[f32], n_heads: usize) -> Vec<f32> {
        let (n_tok, hd_pad) = (self.n_tok(src, n_heads), self.hd_pad);
        per_head(n_heads, self.n_pad * hd_pad, |h, out| {
            for t in 0..n_tok {
                out[t * hd_pad..][..self.hd].copy_from_slice(self.row(src, n_heads, h, t));
            }
        })
    }

    /// `[n_heads][n_pad / tile][hd][tile]`: each tile of `tile` positions
    /// transposed into one contiguous block.
    fn cols(&self, src: &[f32], n_heads: usize, tile: usize) -> Vec<f32> {
        debug_assert!(self.n_pad.is_multiple_of(tile));
        let n_tok = self.n_tok(src, n_heads);
        per_head(n_heads, self.hd * self.n_pad, |h, out| {
            for t in 0..n_tok {
                let base = t / tile * self.hd * tile + t % tile;
                for (d, &x) in self.row(src, n_heads, h, t).iter().enumerate() {
                    out[base + d * tile] = x;
                }
            }
        })
    }
}

/// A zeroed `[n_heads][head_len]` buffer, each head's block filled by
/// `fill(h, block)` in parallel.
fn per_head<T: Copy + Default + Send>(
    n_heads: usize,
    head_len: usize,
    fill: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    let mut out = vec![T::default(); n_heads * head_len];
    if head_len > 0 {
        out.par_chunks_mut(head_len)
            .enumerate()
            .for_each(|(h, block)| fill(h, block));
    }
    out
}

mod backward;
mod forward;
mod scalar;
#[cfg(test)]
mod tests;
mod tiles;

pub use backward::{attention_backward, attention_backward_in};
pub use forward::{attention_forward, attention_forward_in};
pub use scalar::attention_forward_scalar;
