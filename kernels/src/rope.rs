//! Rotary position embedding (Su et al. 2021) in ggml's two layouts.
//!
//! Shapes: `x: [n_tok, n_head, head_dim]`, rotated in place; `positions:
//! [n_tok]`. The first `n_rot` dimensions of each head rotate, the rest pass
//! through. Pair `i` rotates by `theta = pos * freq_base^(-2i / n_rot)`:
//! - [`RopeLayout::Normal`] pairs `(2i, 2i + 1)` (llama.cpp's `LLAMA_ROPE_TYPE_NORM`:
//!   llama/SmolLM2, whose converter permuted q/k weights to match);
//! - [`RopeLayout::Neox`] pairs `(i, i + n_rot / 2)` (Qwen2, Qwen3).
//!
//! Angles are computed in f64; llama.cpp computes them in f32, a difference
//! far below the forward test's tolerance.

use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// The cosines and sines of one sequence's angles, `[n_tok][n_rot / 2]`
/// each. Every layer rotates q and k by the same angles, forward and
/// backward: 96 passes a training step on a 24-layer model, each of which
/// computed `n_tok * n_rot / 2` sines and cosines in f64 (0.5 % of a bf16
/// step's samples on Zen 5). The last table is kept and reused while the
/// positions and the frequencies stay the same.
struct Angles {
    positions: Vec<u32>,
    n_rot: usize,
    freq_base: u32,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Keeps the last table of [`Angles`]: the process's one is [`LAST_ANGLES`].
struct AngleCache(Mutex<Option<Arc<Angles>>>);

static LAST_ANGLES: AngleCache = AngleCache(Mutex::new(None));

impl AngleCache {
    /// The angles of `positions` under `rope`'s frequencies: the kept
    /// table when it is theirs, else a new one (then kept). The key is
    /// everything [`Rope::inv_freqs`] reads, and the positions.
    fn angles(&self, rope: &Rope, positions: &[u32]) -> Arc<Angles> {
        let same = |a: &Angles| {
            a.n_rot == rope.n_rot
                && a.freq_base == rope.freq_base.to_bits()
                && a.positions == positions
        };
        // A poisoned lock only means another thread panicked mid-swap of
        // an Arc: the value is whole either way.
        let last = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(a) = last.filter(|a| same(a)) {
            return a;
        }
        let half = rope.n_rot / 2;
        let inv_freqs = rope.inv_freqs();
        let n = positions.len() * half;
        let (mut cos, mut sin) = (vec![0f32; n], vec![0f32; n]);
        if half > 0 {
            cos.par_chunks_mut(half)
                .zip(sin.par_chunks_mut(half))
                .zip(positions.par_iter())
                .with_min_len(16)
                .for_each(|((c, s), &pos)| {
                    for (i, f) in inv_freqs.iter().enumerate() {
                        let (sn, cs) = (pos as f64 * f).sin_cos();
                        (c[i], s[i]) = (cs as f32, sn as f32);
                    }
                });
        }
        let a = Arc::new(Angles {
            positions: positions.to_vec(),
            n_rot: rope.n_rot,
            freq_base: rope.freq_base.to_bits(),
            cos,
            sin,
        });
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(a.clone());
        a
    }
}

/// Which dimensions form a rotating pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs adjacent dimensions (llama).
    Normal,
    /// Pairs dimension i with i + n_rot/2 (qwen2, qwen3).
    Neox,
}

/// Geometry of one rotation.
#[derive(Clone, Copy, Debug)]
pub struct Rope {
    /// Heads.
    pub n_head: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Dimensions rotated per head.
    pub n_rot: usize,
    /// theta base.
    pub freq_base: f32,
    /// Which dimensions pair up.
    pub layout: RopeLayout,
}

impl Rope {
    fn pair(&self, i: usize) -> (usize, usize) {
        match self.layout {
            RopeLayout::Normal => (2 * i, 2 * i + 1),
            RopeLayout::Neox => (i, i + self.n_rot / 2),
        }
    }

    /// `freq_base^(-2i / n_rot)` for each pair `i`, in f64.
    fn inv_freqs(&self) -> Vec<f64> {
        (0..self.n_rot / 2)
            .map(|i| (self.freq_base as f64).powf(-2.0 * i as f64 / self.n_rot as f64))
            .collect()
    }

    fn rotate(&self, x: &mut [f32], positions: &[u32], direction: f32) {
        let (hd, nh) = (self.head_dim, self.n_head);
        assert!(
            self.n_rot.is_multiple_of(2) && self.n_rot <= hd,
            "rope: n_rot {} vs head_dim {hd}",
            self.n_rot
        );
        assert_eq!(
            x.len(),
            positions.len() * nh * hd,
            "rope: x is not [n_tok, n_head, head_dim]"
        );
        if x.is_empty() {
            return;
        }
        let half = self.n_rot / 2;
        let angles = LAST_ANGLES.angles(self, positions);
        x.par_chunks_mut(nh * hd)
            .enumerate()
            .with_min_len(16)
            .for_each(|(t, row)| {
                let (cos, sin) = (
                    &angles.cos[t * half..][..half],
                    &angles.sin[t * half..][..half],
                );
                for head in row.chunks_exact_mut(hd) {
                    for i in 0..half {
                        let (a, b) = self.pair(i);
                        let (x0, x1) = (head[a], head[b]);
                        let s = direction * sin[i];
                        head[a] = x0 * cos[i] - x1 * s;
                        head[b] = x0 * s + x1 * cos[i];
                    }
                }
            });
    }

    /// Rotates every head of every token by its position's angles.
    pub fn forward(&self, x: &mut [f32], positions: &[u32]) {
        self.rotate(x, positions, 1.0)
    }

    /// Backward: the gradient rotates by the opposite angles (the rotation is
    /// orthogonal, so its transpose is its inverse).
    pub fn backward(&self, dx: &mut [f32], positions: &[u32]) {
        self.rotate(dx, positions, -1.0)
    }

    /// Scalar twin of [`Rope::forward`]: f64 throughout, angles recomputed per pair.
    pub fn forward_scalar(&self, x: &mut [f32], positions: &[u32]) {
        let (hd, nh) = (self.head_dim, self.n_head);
        for (t, &pos) in positions.iter().enumerate() {
            for h in 0..nh {
                let base = (t * nh + h) * hd;
                for i in 0..self.n_rot / 2 {
                    let theta = pos as f64
                        / (self.freq_base as f64).powf(2.0 * i as f64 / self.n_rot as f64);
                    let (a, b) = self.pair(i);
                    let (x0, x1) = (x[base + a] as f64, x[base + b] as f64);
                    x[base + a] = (x0 * theta.cos() - x1 * theta.sin()) as f32;
                    x[base + b] = (x0 * theta.sin() + x1 * theta.cos()) as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel_err, TestRng};

    /// Relative to the largest |x|: one f32 rotation of unit-norm pairs.
    pub const ROPE_TOL: f64 = 1e-6;

    /// A cache of its own (the process's is shared by tests running at
    /// once): the same positions and frequencies get the kept table itself;
    /// one changed position, another base or another n_rot a new table
    /// with their own angles.
    #[test]
    fn kept_angles_follow_positions_and_frequencies() {
        let cache = AngleCache(Mutex::new(None));
        let rope = |n_rot, freq_base| Rope {
            n_head: 1,
            head_dim: 16,
            n_rot,
            freq_base,
            layout: RopeLayout::Neox,
        };
        let check = |a: &Angles, r: &Rope, positions: &[u32]| {
            let half = r.n_rot / 2;
            assert_eq!(
                (a.cos.len(), a.sin.len()),
                (positions.len() * half, positions.len() * half)
            );
            for (t, &pos) in positions.iter().enumerate() {
                for (i, f) in r.inv_freqs().iter().enumerate() {
                    let theta = pos as f64 * f;
                    assert_eq!(a.cos[t * half + i], theta.cos() as f32, "cos t {t} i {i}");
                    assert_eq!(a.sin[t * half + i], theta.sin() as f32, "sin t {t} i {i}");
                }
            }
        };
        let mut positions: Vec<u32> = (0..40).collect();
        let base = rope(16, 10000.0);
        let first = cache.angles(&base, &positions);
        check(&first, &base, &positions);
        assert!(
            Arc::ptr_eq(&first, &cache.angles(&base, &positions)),
            "a hit"
        );
        positions[17] = 1000;
        let moved = cache.angles(&base, &positions);
        assert!(!Arc::ptr_eq(&first, &moved));
        check(&moved, &base, &positions);
        for other in [rope(16, 500.0), rope(8, 10000.0)] {
            let a = cache.angles(&other, &positions);
            assert!(!Arc::ptr_eq(&moved, &a));
            check(&a, &other, &positions);
        }
    }

    #[test]
    fn matches_scalar_twin_and_inverts() {
        let mut rng = TestRng(9);
        for layout in [RopeLayout::Normal, RopeLayout::Neox] {
            for &(n_tok, n_head, head_dim, n_rot) in &[
                (3, 2, 8, 8),
                (7, 3, 64, 64),
                (4, 1, 16, 8),
                (300, 2, 16, 16),
            ] {
                let rope = Rope {
                    n_head,
                    head_dim,
                    n_rot,
                    freq_base: 10000.0,
                    layout,
                };
                let x = rng.vec(n_tok * n_head * head_dim, 2.0);
                let positions: Vec<u32> = (0..n_tok as u32).map(|p| p * 37 + 3).collect();
                let (mut a, mut b) = (x.clone(), x.clone());
                rope.forward(&mut a, &positions);
                rope.forward_scalar(&mut b, &positions);
                assert!(
                    max_rel_err(&a, &b) <= ROPE_TOL,
                    "{layout:?} {n_tok}x{n_head}x{head_dim}"
                );
                rope.backward(&mut a, &positions);
                assert!(
                    max_rel_err(&a, &x) <= 4.0 * ROPE_TOL,
                    "backward inverts forward"
                );
                // Dimensions past n_rot are untouched.
                for t in 0..n_tok * n_head {
                    for d in n_rot..head_dim {
                        assert_eq!(b[t * head_dim + d], x[t * head_dim + d]);
                    }
                }
            }
        }
    }

    #[test]
    fn position_zero_is_identity_and_layouts_differ() {
        let x: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let normal = Rope {
            n_head: 1,
            head_dim: 8,
            n_rot: 8,
            freq_base: 10000.0,
            layout: RopeLayout::Normal,
        };
        let mut a = x.clone();
        normal.forward(&mut a, &[0]);
        assert_eq!(a, x);
        let neox = Rope {
            layout: RopeLayout::Neox,
            ..normal
        };
        let (mut p, mut q) = (x.clone(), x.clone());
        normal.forward(&mut p, &[5]);
        neox.forward(&mut q, &[5]);
        assert_ne!(p, q);
        // Pair 0 of Normal is (0, 1) rotated by 5 rad.
        assert!((p[0] - (0.0 * 5f32.cos() - 1.0 * 5f32.sin())).abs() < 1e-6);
        // Pair 0 of Neox is (0, 4).
        assert!((q[4] - (0.0 * 5f32.sin() + 4.0 * 5f32.cos())).abs() < 1e-6);
    }
}
