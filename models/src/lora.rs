//! LoRA adapters (Hu et al. 2021) on the frozen base: for each adapted
//! projection `W: [n_out, n_in]`, factors `A: [rank, n_in]` and
//! `B: [n_out, rank]`, and the one choke point (`Transformer::linear`)
//! `y = x W^T + (alpha / rank) * (x A^T) B^T`.
//!
//! A starts Kaiming-uniform (PEFT's `kaiming_uniform_(a = sqrt(5))`, bound
//! `1 / sqrt(n_in)`), B at zero, so a fresh adapter is exactly the base model.

use crate::model::{MatrixRef, Transformer};

/// A projection that can carry an adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    /// Attention query.
    Q,
    /// Attention key.
    K,
    /// Attention value.
    V,
    /// Attention output.
    O,
    /// Feed-forward gate.
    Gate,
    /// Feed-forward up.
    Up,
    /// Feed-forward down.
    Down,
}

impl Proj {
    /// Every projection, in order.
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// The GGUF tensor stem (`blk.N.<stem>.weight`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        }
    }

    /// The Hugging Face module path inside a decoder layer (PEFT files).
    pub fn hf_name(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }

    /// Short names used in configs: `q k v o gate up down` (also the HF
    /// `q_proj`... and GGUF `attn_q`... spellings).
    pub fn parse(s: &str) -> Option<Proj> {
        let s = s.trim();
        Proj::ALL.into_iter().find(|p| {
            let short = p.hf_name().rsplit('.').next().unwrap_or("");
            s == p.gguf_name() || s == short || s == short.trim_end_matches("_proj")
        })
    }
}

/// Shape of an adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank r.
    pub rank: usize,
    /// The update is scaled by alpha / r.
    pub alpha: f32,
    /// Adapted projections.
    pub targets: Vec<Proj>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 16,
            alpha: 32.0,
            targets: Proj::ALL.to_vec(),
        }
    }
}

/// One adapted projection's factors.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPair {
    /// Input features.
    pub n_in: usize,
    /// Output features.
    pub n_out: usize,
    /// `[rank, n_in]`
    pub a: Vec<f32>,
    /// `[n_out, rank]`
    pub b: Vec<f32>,
}

/// An adapter for every layer of one model.
#[derive(Clone, Debug, PartialEq)]
pub struct Lora {
    /// Its shape.
    pub config: LoraConfig,
    /// `layers[l]` holds the adapted projections of block `l`, in `Proj` order.
    pub layers: Vec<Vec<(Proj, LoraPair)>>,
}

/// The base matrix of projection `p` in block `layer` of `model`.
pub fn proj_matrix(model: &Transformer, layer: usize, p: Proj) -> &MatrixRef {
    let l = &model.layers[layer];
    match p {
        Proj::Q => &l.wq,
        Proj::K => &l.wk,
        Proj::V => &l.wv,
        Proj::O => &l.wo,
        Proj::Gate => &l.w_gate,
        Proj::Up => &l.w_up,
        Proj::Down => &l.w_down,
    }
}

/// (n_out, n_in) of a projection in `model`.
pub fn proj_shape(model: &Transformer, layer: usize, p: Proj) -> (usize, usize) {
    let m = proj_matrix(model, layer, p);
    (m.n_rows, m.n_cols)
}

impl Lora {
    /// A fresh adapter: A Kaiming-uniform from `seed`, B zero.
    pub fn new(model: &Transformer, config: LoraConfig, seed: u64) -> Lora {
        let mut targets = config.targets.clone();
        targets.sort();
        targets.dedup();
        let mut state = seed ^ 0x6a09_e667_f3bc_c908;
        let mut uniform = move || {
            let z = cleaner_kernels::rng::splitmix64(&mut state);
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        };
        let layers = (0..model.layers.len())
            .map(|l| {
                targets
                    .iter()
                    .map(|&p| {
                        let (n_out, n_in) = proj_shape(model, l, p);
                        let bound = 1.0 / (n_in as f64).sqrt();
                        let a = (0..config.rank * n_in)
                            .map(|_| (uniform() * bound) as f32)
                            .collect();
                        (
                            p,
                            LoraPair {
                                n_in,
                                n_out,
                                a,
                                b: vec![0.0; n_out * config.rank],
                            },
                        )
                    })
                    .collect()
            })
            .collect();
        Lora {
            config: LoraConfig { targets, ..config },
            layers,
        }
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f32 {
        self.config.alpha / self.config.rank as f32
    }

    /// The factors of projection `p` in block `layer`, if adapted.
    pub fn pair(&self, layer: usize, p: Proj) -> Option<&LoraPair> {
        self.layers
            .get(layer)?
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, pair)| pair)
    }

    /// The factors of `p` in `layer`, mutable.
    pub fn pair_mut(&mut self, layer: usize, p: Proj) -> Option<&mut LoraPair> {
        self.layers
            .get_mut(layer)?
            .iter_mut()
            .find(|(q, _)| *q == p)
            .map(|(_, pair)| pair)
    }

    /// Number of trainable values.
    pub fn n_params(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(_, p)| p.a.len() + p.b.len())
            .sum()
    }

    /// Every parameter tensor in a fixed order (layer, projection, A then B):
    /// the order optimizers and checkpoints use.
    pub fn tensors(&self) -> impl Iterator<Item = &[f32]> {
        self.layers
            .iter()
            .flatten()
            .flat_map(|(_, p)| [p.a.as_slice(), p.b.as_slice()])
    }

    /// The central difference `(loss(θ + h) - loss(θ - h)) / 2h` of `loss`
    /// in element `index` of tensor `tensor` (in [`Lora::tensors`] order):
    /// the numerical gradient finite-difference checks compare analytic
    /// gradients with. `None` when there is no such element.
    pub fn central_difference(
        &self,
        tensor: usize,
        index: usize,
        step: f32,
        loss: impl Fn(&Lora) -> f64,
    ) -> Option<f64> {
        let nudged = |delta: f32| {
            let mut moved = self.clone();
            *moved.tensors_mut().nth(tensor)?.get_mut(index)? += delta;
            Some(loss(&moved))
        };
        Some((nudged(step)? - nudged(-step)?) / (2.0 * step as f64))
    }

    /// Every factor, mutable, in a fixed order.
    pub fn tensors_mut(&mut self) -> impl Iterator<Item = &mut Vec<f32>> {
        self.layers
            .iter_mut()
            .flatten()
            .flat_map(|(_, p)| [&mut p.a, &mut p.b])
    }

    /// A zeroed adapter of the same shape (gradient buffers).
    pub fn zeros_like(&self) -> Lora {
        let mut z = self.clone();
        z.tensors_mut().for_each(|t| t.fill(0.0));
        z
    }
}
