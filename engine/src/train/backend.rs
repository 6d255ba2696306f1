//! Where the trainer's forward and backward run: our x86 CPU kernels
//! (`cleaner_models::Transformer`, the reference and the fast path on x86),
//! or ggml graphs (`cleaner_ggml`) on one of llama.cpp's backends (CUDA,
//! Metal, Vulkan, or ggml's own CPU backend). Everything else the trainer
//! does (loss, AdamW on the host, checkpoints, export, hot swap) is shared,
//! so this file only says which engine computes log-probs and gradients.
//!
//! Chosen with `[trainer] backend` and `device` (or [`TrainerBackend`] in the
//! library). `auto` takes the GPU of the build when one is compiled in and
//! present, and the CPU trainer otherwise: on a machine without a GPU the
//! x86 kernels are faster than ggml's CPU backend (measured in
//! `measurements/`), so ggml on the CPU is only used when asked for.

use serde::{Deserialize, Serialize};

use std::cell::Cell;

use cleaner_ggml::{Backend, Checkpoints, Chunks, Device, DeviceLora, DeviceModel, GgmlError};
use cleaner_models::{Lora, Transformer};

/// `[trainer] backend`: which engine computes log-probs and gradients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// ggml on the build's GPU when one is compiled in and present, else
    /// the CPU trainer.
    #[default]
    Auto,
    /// Our CPU kernels (x86; the reference).
    Cpu,
    /// ggml graphs on `device`.
    Ggml,
}

impl BackendKind {
    /// The config and command-line name.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Auto => "auto",
            BackendKind::Cpu => "cpu",
            BackendKind::Ggml => "ggml",
        }
    }

    /// Parses a config or command-line name (`auto`, `cpu`, `ggml`).
    pub fn parse(s: &str) -> Option<BackendKind> {
        [BackendKind::Auto, BackendKind::Cpu, BackendKind::Ggml]
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s.trim()))
    }
}

/// `[trainer] device`: where the ggml backend runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The first GPU kind compiled in and present (CUDA, Metal, Vulkan),
    /// else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU (feature `cuda`).
    Cuda,
    /// An Apple GPU (feature `metal`).
    Metal,
    /// A Vulkan GPU (feature `vulkan`).
    Vulkan,
}

impl DeviceKind {
    /// The config and command-line name.
    pub fn name(self) -> &'static str {
        match self.device() {
            None => "auto",
            Some(d) => d.name(),
        }
    }

    /// Parses a config or command-line name (`auto`, `cpu`, `cuda`, `metal`,
    /// `vulkan`).
    pub fn parse(s: &str) -> Option<DeviceKind> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Some(DeviceKind::Auto);
        }
        Device::parse(s).map(DeviceKind::from)
    }

    /// The ggml device kind; `None` for `auto`.
    pub fn device(self) -> Option<Device> {
        match self {
            DeviceKind::Auto => None,
            DeviceKind::Cpu => Some(Device::Cpu),
            DeviceKind::Cuda => Some(Device::Cuda),
            DeviceKind::Metal => Some(Device::Metal),
            DeviceKind::Vulkan => Some(Device::Vulkan),
        }
    }
}

impl From<Device> for DeviceKind {
    fn from(d: Device) -> Self {
        match d {
            Device::Cpu => DeviceKind::Cpu,
            Device::Cuda => DeviceKind::Cuda,
            Device::Metal => DeviceKind::Metal,
            Device::Vulkan => DeviceKind::Vulkan,
        }
    }
}

/// Why a backend/device choice cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// `backend = "cpu"` with a GPU device: the CPU trainer runs nowhere else.
    #[error("backend = \"cpu\" runs on the CPU only, but device = \"{device}\" (use backend = \"ggml\" or \"auto\" for a GPU)")]
    CpuOnDevice {
        /// The device asked for.
        device: &'static str,
    },
    /// The ggml backend could not start: not compiled in, device absent, or
    /// it failed to initialize (the cause names which).
    #[error("trainer backend ggml on {device}: {source}")]
    Start {
        /// The device asked for.
        device: &'static str,
        /// ggml's typed error.
        source: GgmlError,
    },
    /// A trainer setting the ggml backend does not have.
    #[error("backend ggml: {0}")]
    Unsupported(String),
}

/// Which engine trains, on which device (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TrainerBackend {
    /// `auto`, `cpu` or `ggml`.
    pub backend: BackendKind,
    /// Where ggml runs (`auto`: the build's GPU if present, else the CPU).
    pub device: DeviceKind,
}

impl TrainerBackend {
    /// The CPU trainer.
    pub const CPU: TrainerBackend = TrainerBackend {
        backend: BackendKind::Cpu,
        device: DeviceKind::Cpu,
    };

    /// The ggml trainer on `device`.
    pub fn ggml(device: DeviceKind) -> TrainerBackend {
        TrainerBackend {
            backend: BackendKind::Ggml,
            device,
        }
    }

    /// Checks what can be known without starting a device: a CPU trainer
    /// asked to run on a GPU, or a device kind this build lacks.
    pub fn check(&self) -> Result<(), BackendError> {
        match (self.backend, self.device.device()) {
            (BackendKind::Cpu, Some(d)) if d != Device::Cpu => {
                Err(BackendError::CpuOnDevice { device: d.name() })
            }
            (_, Some(d)) if !d.compiled() => Err(BackendError::Start {
                device: d.name(),
                source: GgmlError::NotCompiled {
                    device: d,
                    feature: d.name(),
                },
            }),
            _ => Ok(()),
        }
    }

    /// Resolves `auto` and starts the ggml backend where one is chosen
    /// (`None`: the CPU trainer). An explicit device that is absent is an
    /// error; `auto` only takes a GPU that starts.
    pub fn start(&self, n_threads: usize) -> Result<Option<Backend>, BackendError> {
        self.check()?;
        let start = |d: Device| {
            Backend::new(d, n_threads).map_err(|source| BackendError::Start {
                device: d.name(),
                source,
            })
        };
        let first_gpu = || {
            Device::ALL
                .into_iter()
                .filter(|&d| d != Device::Cpu && d.compiled())
                .find_map(|d| start(d).ok())
        };
        Ok(match (self.backend, self.device.device()) {
            (BackendKind::Cpu, _) => None,
            // auto with the CPU named: our x86 kernels are the faster CPU path.
            (BackendKind::Auto, Some(Device::Cpu)) => None,
            (BackendKind::Auto, None) => first_gpu(),
            (BackendKind::Ggml, None) => match first_gpu() {
                Some(b) => Some(b),
                None => Some(start(Device::Cpu)?),
            },
            (_, Some(d)) => Some(start(d)?),
        })
    }

    /// What this choice starts on this machine, in words (`cpu (x86
    /// kernels)`, `ggml on CUDA0`), or why it cannot.
    pub fn describe(&self) -> Result<String, BackendError> {
        Ok(match self.start(1)? {
            None => "cpu (our x86 kernels)".into(),
            Some(b) => format!("ggml on {}", b.name()),
        })
    }
}

/// The ggml engine of a trainer: a started backend, the base weights and
/// the adapter on it, and the memory budget each sequence is planned
/// against before anything is allocated for it.
pub(crate) struct GgmlEngine {
    // Field order is drop order: the adapter and weights before the
    // backend that allocated them.
    lora: DeviceLora,
    model: DeviceModel,
    backend: Backend,
    chunks: Chunks,
    /// Bytes the weights, adapter and one step's working memory may take.
    budget: usize,
    /// The longest sequence planned within the budget so far (a step's
    /// memory grows with its length, so shorter ones fit too).
    planned_up_to: Cell<usize>,
}

impl GgmlEngine {
    /// Uploads `model`'s weights and `lora` to `backend`. The budget is the
    /// device memory free before the upload (what the rollout engine left)
    /// unless [`GgmlEngine::set_budget`] says otherwise.
    pub(crate) fn new(
        backend: Backend,
        model: &Transformer,
        lora: &Lora,
    ) -> Result<GgmlEngine, GgmlError> {
        let (free, _) = backend.memory();
        let device_model = DeviceModel::upload(model, &backend)?;
        let device_lora = DeviceLora::upload(lora, &device_model, &backend)?;
        Ok(GgmlEngine {
            lora: device_lora,
            model: device_model,
            backend,
            chunks: Chunks::default(),
            budget: free,
            planned_up_to: Cell::new(0),
        })
    }

    /// Sets the memory budget (weights, adapter and one step together).
    pub(crate) fn set_budget(&mut self, bytes: usize) {
        self.budget = bytes;
        self.planned_up_to.set(0);
    }

    /// ggml's name of the backend (`CPU`, `CUDA0`).
    pub(crate) fn name(&self) -> &str {
        self.backend.name()
    }

    /// Fails with [`GgmlError::OverBudget`] when a step over `n_tok`
    /// tokens would not fit the budget (planned once per new longest
    /// length).
    fn check_fits(&self, n_tok: usize) -> Result<(), GgmlError> {
        if n_tok <= self.planned_up_to.get() {
            return Ok(());
        }
        let plan =
            cleaner_ggml::plan_step(&self.backend, &self.model, &self.lora, n_tok, self.chunks)?;
        cleaner_ggml::check_budget(&self.backend, &self.model, &self.lora, &plan, self.budget)?;
        self.planned_up_to.set(n_tok);
        Ok(())
    }

    /// Log-probs with the adapter on the device, or of the base model.
    pub(crate) fn logprobs(&self, tokens: &[u32], adapter: bool) -> Result<Vec<f32>, GgmlError> {
        let lora = adapter.then_some(&self.lora);
        cleaner_ggml::logprobs_chunked(&self.backend, &self.model, lora, tokens, self.chunks)
    }

    /// The forward of a training step: log-probs, and the block inputs the
    /// backward needs (held on the device until [`GgmlEngine::backward`]).
    pub(crate) fn forward_train(
        &self,
        tokens: &[u32],
    ) -> Result<(Vec<f32>, Checkpoints), GgmlError> {
        if tokens.len() >= 2 {
            self.check_fits(tokens.len())?;
        }
        cleaner_ggml::forward_train(&self.backend, &self.model, &self.lora, tokens, self.chunks)
    }

    /// Adds the LoRA gradients of `sum_t dlogprob[t] * logprob[t]` into
    /// `grads`, for the sequence `ckpt` holds.
    pub(crate) fn backward(
        &self,
        ckpt: &mut Checkpoints,
        dlogprob: &[f32],
        grads: &mut Lora,
    ) -> Result<(), GgmlError> {
        cleaner_ggml::backward_from(
            &self.backend,
            &self.model,
            &self.lora,
            ckpt,
            dlogprob,
            grads,
        )
    }

    /// Copies the host adapter's new values to the device.
    pub(crate) fn set_adapter(&self, lora: &Lora) -> Result<(), GgmlError> {
        self.lora.set(lora)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for b in [BackendKind::Auto, BackendKind::Cpu, BackendKind::Ggml] {
            assert_eq!(BackendKind::parse(b.name()), Some(b));
        }
        for d in [
            DeviceKind::Auto,
            DeviceKind::Cpu,
            DeviceKind::Cuda,
            DeviceKind::Metal,
            DeviceKind::Vulkan,
        ] {
            assert_eq!(DeviceKind::parse(d.name()), Some(d));
        }
        assert_eq!(BackendKind::parse("gpu"), None);
        assert_eq!(DeviceKind::parse("tpu"), None);
    }

    #[test]
    fn cpu_trainer_on_a_gpu_is_refused() {
        let e = TrainerBackend {
            backend: BackendKind::Cpu,
            device: DeviceKind::Cuda,
        }
        .check()
        .unwrap_err()
        .to_string();
        assert!(e.contains("backend = \"cpu\"") && e.contains("cuda"), "{e}");
    }

    #[test]
    fn a_device_the_build_lacks_names_its_feature() {
        for d in [Device::Cuda, Device::Metal, Device::Vulkan] {
            if d.compiled() {
                continue;
            }
            let e = TrainerBackend::ggml(d.into()).start(1).unwrap_err();
            let text = e.to_string();
            assert!(
                matches!(
                    e,
                    BackendError::Start {
                        source: GgmlError::NotCompiled { .. },
                        ..
                    }
                ) && text.contains("not compiled")
                    && text.contains(&format!("`{}` feature", d.name())),
                "{text}"
            );
        }
    }

    #[test]
    fn auto_without_a_gpu_is_the_cpu_trainer() {
        let gpu = [Device::Cuda, Device::Metal, Device::Vulkan]
            .into_iter()
            .any(|d| d.compiled());
        if !gpu {
            assert!(TrainerBackend::default().start(1).unwrap().is_none());
            let ggml = TrainerBackend::ggml(DeviceKind::Auto).start(1).unwrap();
            assert_eq!(ggml.map(|b| b.device()), Some(Device::Cpu));
        }
        // Whatever the build: auto with the CPU named is our kernels.
        let auto_cpu = TrainerBackend {
            backend: BackendKind::Auto,
            device: DeviceKind::Cpu,
        };
        assert!(auto_cpu.start(1).unwrap().is_none());
    }
}
