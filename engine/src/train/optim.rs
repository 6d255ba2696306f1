//! AdamW (Loshchilov & Hutter 2019: decoupled weight decay) over the LoRA
//! parameters, with global gradient-norm clipping and a warm-up + constant or
//! cosine learning-rate schedule. The state (moments, step) is saved as a GGUF
//! file of f32 tensors, so a resumed run continues bit for bit.

use cleaner_models::adapter_file::atomic_write;
use cleaner_models::{GgufFile, GgufWriter, Lora, Value};
use rayon::prelude::*;
use std::path::Path;

/// Shape of the learning-rate curve after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decay {
    /// Stay at `lr`.
    Constant,
    /// Cosine from `lr` to `lr * min_lr_ratio` at `total_steps`.
    Cosine,
}

/// Optimizer hyper-parameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// Peak learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the second moment's root.
    pub eps: f32,
    /// Decoupled weight decay per update (times lr).
    pub weight_decay: f32,
    /// Clip the global L2 norm of all gradients to this (0 disables).
    pub grad_clip: f32,
    /// Training steps of linear warm-up. A training step is what the caller
    /// passes to [`AdamW::update_at`] (a GRPO step, whose `mini_batches`
    /// updates share one learning rate); [`AdamW::update`] counts each
    /// update as a step.
    pub warmup_steps: u64,
    /// Shape after warm-up.
    pub decay: Decay,
    /// Training steps over which the cosine decays (ignored for constant).
    pub total_steps: u64,
    /// Cosine floor as a share of `lr`.
    pub min_lr_ratio: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 1.0,
            warmup_steps: 0,
            decay: Decay::Constant,
            total_steps: 0,
            min_lr_ratio: 0.1,
        }
    }
}

impl AdamWConfig {
    /// Learning rate of training step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f32 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f32 / self.warmup_steps as f32;
        }
        match self.decay {
            Decay::Constant => self.lr,
            Decay::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
                let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                (self.lr as f64
                    * (self.min_lr_ratio as f64 + (1.0 - self.min_lr_ratio as f64) * cos))
                    as f32
            }
        }
    }
}

/// What one update did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct UpdateStats {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate of this update.
    pub lr: f32,
    /// Whether the norm was clipped.
    pub clipped: bool,
}

/// AdamW state for one adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Updates taken so far.
    pub step: u64,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

/// Why optimizer state could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("optimizer state {path}: {why}")]
pub struct OptimStateError {
    /// The state file.
    pub path: String,
    /// What is wrong with it.
    pub why: String,
}

impl AdamW {
    /// Zero moments for `params`.
    pub fn new(config: AdamWConfig, params: &Lora) -> AdamW {
        let zeros: Vec<Vec<f32>> = params.tensors().map(|t| vec![0.0; t.len()]).collect();
        AdamW {
            config,
            step: 0,
            m: zeros.clone(),
            v: zeros,
        }
    }

    /// One update of `params` from `grads` (same shapes), at the learning
    /// rate of training step `self.step` (every update its own step).
    pub fn update(&mut self, params: &mut Lora, grads: &Lora) -> UpdateStats {
        self.update_at(params, grads, self.step)
    }

    /// One update of `params` from `grads` (same shapes) at the learning
    /// rate of training step `train_step` (0-based): the schedule counts
    /// training steps, so all updates of one step share its rate. Gradients
    /// are clipped to `grad_clip` by global norm first; Adam's bias
    /// correction counts updates.
    pub fn update_at(&mut self, params: &mut Lora, grads: &Lora, train_step: u64) -> UpdateStats {
        // Tensors in parallel (168 of them for a 24-layer model with all
        // seven projections), each summed in order, the sums added in
        // tensor order: the same norm whatever the thread count.
        let tensors: Vec<&[f32]> = grads.tensors().collect();
        let squares: Vec<f64> = tensors
            .par_iter()
            .map(|t| t.iter().map(|&g| g as f64 * g as f64).sum::<f64>())
            .collect();
        let norm = squares.iter().sum::<f64>().sqrt();
        let clip = self.config.grad_clip as f64;
        let factor = if clip > 0.0 && norm > clip {
            (clip / norm) as f32
        } else {
            1.0
        };
        let lr = self.config.lr_at(train_step);
        self.step += 1;
        let c = &self.config;
        let bc1 = 1.0 - (c.beta1 as f64).powi(self.step as i32);
        let bc2 = 1.0 - (c.beta2 as f64).powi(self.step as i32);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let work: Vec<_> = params
            .tensors_mut()
            .zip(tensors)
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
            .collect();
        work.into_par_iter().for_each(|(((p, g), m), v)| {
            for i in 0..p.len() {
                let gi = g[i] * factor;
                m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * gi;
                v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * gi * gi;
                // Decoupled weight decay, then the Adam step.
                p[i] -= lr * c.weight_decay * p[i];
                p[i] -= step_size * m[i] / (v[i].sqrt() / bc2_sqrt + c.eps);
            }
        });
        UpdateStats {
            grad_norm: norm,
            lr,
            clipped: factor < 1.0,
        }
    }

    /// Saves moments and step (atomically) as a GGUF file.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut w = GgufWriter::new();
        w.set(
            "general.architecture",
            Value::String("cleaner-adamw".into()),
        )
        .set("cleaner.optimizer.format_version", Value::U32(1))
        .set("cleaner.optimizer.step", Value::U64(self.step))
        .set(
            "cleaner.optimizer.config",
            Value::String(serde_json::to_string(&self.config).unwrap_or_default()),
        );
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            w.add_f32(&format!("m.{i}"), &[m.len() as u64], m);
            w.add_f32(&format!("v.{i}"), &[v.len() as u64], v);
        }
        atomic_write(path, &w.to_bytes())
    }

    /// Loads state saved by [`AdamW::save`] for an adapter shaped like `params`.
    pub fn load(path: &Path, params: &Lora) -> Result<AdamW, OptimStateError> {
        let err = |why: String| OptimStateError {
            path: path.display().to_string(),
            why,
        };
        let f = GgufFile::open(path).map_err(|e| err(e.kind.to_string()))?;
        if f.get("cleaner.optimizer.format_version")
            .and_then(|v| v.as_u64())
            != Some(1)
        {
            return Err(err("not an optimizer state file of format version 1".into()));
        }
        let step = f
            .get_u64("cleaner.optimizer.step")
            .map_err(|e| err(e.kind.to_string()))?;
        let config: AdamWConfig = serde_json::from_str(
            f.get_str("cleaner.optimizer.config")
                .map_err(|e| err(e.kind.to_string()))?,
        )
        .map_err(|e| err(format!("config: {e}")))?;
        let read = |name: String, len: usize| -> Result<Vec<f32>, OptimStateError> {
            let bytes = f.tensor_bytes(&name).map_err(|e| err(e.kind.to_string()))?;
            if bytes.len() != len * 4 {
                return Err(err(format!(
                    "{name} holds {} values, the adapter needs {len}",
                    bytes.len() / 4
                )));
            }
            Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let (mut m, mut v) = (Vec::new(), Vec::new());
        for (i, t) in params.tensors().enumerate() {
            m.push(read(format!("m.{i}"), t.len())?);
            v.push(read(format!("v.{i}"), t.len())?);
        }
        if f.tensors().len() != 2 * m.len() {
            return Err(err(format!(
                "{} tensors for an adapter of {}",
                f.tensors().len() / 2,
                m.len()
            )));
        }
        Ok(AdamW { config, step, m, v })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_and_decays() {
        let c = AdamWConfig {
            lr: 1.0,
            warmup_steps: 4,
            decay: Decay::Cosine,
            total_steps: 14,
            min_lr_ratio: 0.0,
            ..Default::default()
        };
        assert_eq!(c.lr_at(0), 0.25);
        assert_eq!(c.lr_at(3), 1.0);
        assert!((c.lr_at(9) - 0.5).abs() < 1e-6);
        assert!(c.lr_at(14).abs() < 1e-6 && c.lr_at(100).abs() < 1e-6);
        let k = AdamWConfig {
            lr: 0.5,
            ..Default::default()
        };
        assert_eq!(k.lr_at(1000), 0.5);
    }
}
