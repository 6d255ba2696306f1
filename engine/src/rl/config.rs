//! The one configuration of a GRPO run, read from TOML. Every field has a
//! default; unknown keys, wrong types and impossible values are rejected
//! with the key named. Shipped configs (`configs/*.toml`) are compiled in
//! and addressed by name.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::reward::MathReward;
use crate::agent::AgentConfig;
use crate::tasks::{Dataset, DatasetError, Fields, Item};
use crate::train::{AdamWConfig, BackendKind, DeviceKind, LossConfig, TrainerBackend};
use cleaner_models::{LoraConfig, Proj};

/// Configs shipped with the engine: (name, TOML text).
pub const SHIPPED: [(&str, &str); 3] = [
    (
        "quickstart",
        include_str!("../../../configs/quickstart.toml"),
    ),
    (
        "gsm8k-qwen0.5b",
        include_str!("../../../configs/gsm8k-qwen0.5b.toml"),
    ),
    (
        "paper-qwen3-4b",
        include_str!("../../../configs/paper-qwen3-4b.toml"),
    ),
];

/// Why a config was rejected; `origin` names the file or shipped config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{origin}: {error}")]
    Io {
        /// The config file (or shipped config name).
        origin: String,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A key is unknown, has the wrong type or an impossible value.
    #[error("{origin}: key `{key}`: {why}")]
    Invalid {
        /// The config file (or shipped config name).
        origin: String,
        /// The metadata key.
        key: String,
        /// What is wrong, in words.
        why: String,
    },
}

/// A LoRA target that names no projection.
#[derive(Debug, thiserror::Error)]
#[error("unknown target {target:?} (expected any of q k v o gate up down)")]
pub struct UnknownLoraTarget {
    /// The name as written.
    pub target: String,
}

/// A whole run: model, data, agent, GRPO, adapter, optimizer and loss.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Model short name (fetched on first use) or GGUF path.
    pub model: String,
    /// Where the problems come from.
    pub data: DataConfig,
    /// Size of the rollout engine.
    pub engine: EngineConfig,
    /// The GRPO loop.
    pub grpo: GrpoConfig,
    /// The built-in math reward.
    pub reward: MathReward,
    /// The tool-using agent and its purification.
    pub agent: AgentConfig,
    /// The adapter's shape.
    pub lora: LoraSection,
    /// The trainer's memory/compute trade-off.
    pub trainer: TrainerSection,
    /// AdamW and its schedule (steps count optimizer updates).
    pub optim: AdamWConfig,
    /// The clipped policy loss.
    pub loss: LossConfig,
}

/// Where the problems come from.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `gsm8k-train`, `gsm8k` (test), `aime24`, `amc23` or a `.jsonl` path.
    pub dataset: String,
    /// Directory of the named datasets (None: `$CLEANER_DATA` or the
    /// repository's `data/`).
    pub data_dir: Option<PathBuf>,
    /// Fields tried in order for the question.
    pub question_fields: Vec<String>,
    /// Field of the reference answer.
    pub answer_field: String,
    /// Field of the problem id (None: line numbers).
    pub id_field: Option<String>,
    /// Use only the first N problems (0: all).
    pub limit: usize,
}

/// The rollout engine's size.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Sequences decoded together (at least `grpo.group_size + 1`).
    pub slots: u32,
    /// llama.cpp threads (0: all cores).
    pub threads: i32,
    /// Prompts longer than this are skipped (counted in the metrics).
    pub max_prompt_tokens: usize,
    /// GPU (or host) memory for the KV cache, in GiB. Unset: room for every
    /// slot's longest trajectory at once. Set: the cache holds what fits and
    /// sequences beyond it wait for cells (docs/configuration.md).
    pub kv_cache_gib: Option<f64>,
}

impl EngineConfig {
    /// `kv_cache_gib` in bytes.
    pub fn kv_cache_bytes(&self) -> Option<u64> {
        self.kv_cache_gib.map(|g| (g * (1u64 << 30) as f64) as u64)
    }
}

/// The GRPO loop.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoConfig {
    /// Updates of the policy (each: rollouts, then mini-batch updates).
    pub steps: u64,
    /// Problems sampled per step.
    pub prompts_per_step: usize,
    /// Rollouts per problem (G).
    pub group_size: usize,
    /// Optimizer updates per step (the step's sequences split evenly).
    pub mini_batches: usize,
    /// Seed of the prompt order, the rollouts and the adapter's init.
    pub seed: u64,
    /// Write a checkpoint every K steps (and after the last).
    pub checkpoint_every: u64,
    /// Checkpoints kept (older ones are removed once a newer one is complete).
    pub keep_checkpoints: usize,
    /// Compute the k3 KL of the policy to the start (adapter off) every step
    /// (one extra forward pass per sequence).
    pub kl_to_start: bool,
    /// Write every step's trajectories to `trajectories/step-N.jsonl`.
    pub save_trajectories: bool,
}

/// The LoRA adapter's shape.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSection {
    /// Rank r of A [r, n_in] and B [n_out, r].
    pub rank: usize,
    /// Scale numerator: the update is (alpha / r) B A.
    pub alpha: f32,
    /// Any of `q k v o gate up down`.
    pub targets: Vec<String>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            model: crate::assets::DEFAULT_MODEL.to_string(),
            data: DataConfig::default(),
            engine: EngineConfig::default(),
            grpo: GrpoConfig::default(),
            reward: MathReward::default(),
            agent: AgentConfig::default(),
            lora: LoraSection::default(),
            trainer: TrainerSection::default(),
            optim: AdamWConfig {
                lr: 2e-5,
                ..AdamWConfig::default()
            },
            loss: LossConfig::default(),
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        let f = Fields::default();
        DataConfig {
            dataset: "gsm8k-train".into(),
            data_dir: None,
            question_fields: f.question,
            answer_field: f.answer,
            id_field: f.id,
            limit: 0,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            slots: 17,
            threads: 0,
            max_prompt_tokens: 512,
            kv_cache_gib: None,
        }
    }
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            steps: 20,
            prompts_per_step: 8,
            group_size: 4,
            mini_batches: 2,
            seed: 0,
            checkpoint_every: 1,
            keep_checkpoints: 2,
            kl_to_start: true,
            save_trajectories: true,
        }
    }
}

/// Where the trainer runs and its memory/compute trade-off.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerSection {
    /// "auto" (ggml on the build's GPU when one is present, else "cpu"),
    /// "cpu" (our CPU kernels) or "ggml" (ggml graphs on `device`); see
    /// docs/training.md.
    pub backend: BackendKind,
    /// Where ggml runs: "auto" (the build's GPU if present, else the CPU),
    /// "cuda", "metal", "vulkan" or "cpu".
    pub device: DeviceKind,
    /// MiB of block intermediates one sequence's forward pass may keep so the
    /// backward pass need not recompute them, then of its logits if what
    /// the blocks left holds them (0: recompute everything, the least
    /// memory; the gradients are the same either way). Qwen2.5-0.5B
    /// needs 1.4 MiB per token to keep all 24 blocks. The CPU backend's
    /// setting (ggml plans its own memory).
    pub activation_memory_mib: usize,
    /// Compute the prompt a GRPO group's rollouts share once per group,
    /// forward and backward, instead of once per rollout (the same
    /// log-probs and gradients within rounding). The CPU backend's setting;
    /// ggml runs every sequence whole.
    pub shared_prefix: bool,
    /// Arithmetic of the products with the base weights: "f32" (the
    /// reference), "bf16" (operands rounded to bf16, f32 sums; f32 on CPUs
    /// without AVX-512 BF16) or "auto" (bf16 where it is the faster of the
    /// two: AMD Zen 4, about twice the f32 speed; f32 elsewhere, Intel
    /// Xeons included, and on the ggml backend). The CPU backend's setting:
    /// bf16 with backend "ggml" is an error.
    pub precision: MatmulPrecision,
    /// GiB the ggml backend may use for the weights, the adapter and one
    /// training step together (unset: the device memory free when it
    /// starts, after the rollout engine took its share). Every new longest
    /// sequence is planned against it before anything is allocated. No
    /// effect on the CPU kernels.
    pub memory_gib: Option<f64>,
}

impl TrainerSection {
    /// The backend/device choice.
    pub fn backend(&self) -> TrainerBackend {
        TrainerBackend {
            backend: self.backend,
            device: self.device,
        }
    }
}

/// `[trainer] precision`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatmulPrecision {
    /// f32 operands and sums.
    #[default]
    F32,
    /// bf16 operands, f32 sums.
    Bf16,
    /// Whichever of the two is faster on this CPU
    /// ([`cleaner_kernels::matmul::Precision::auto`]); f32 on ggml.
    Auto,
}

impl MatmulPrecision {
    /// `auto` made concrete for a run on `backend`: ggml multiplies in
    /// f32, the CPU kernels take [`cleaner_kernels::matmul::Precision::auto`].
    /// A new run saves this, so a resumed one keeps its arithmetic on any
    /// CPU.
    pub fn resolve(self, backend: BackendKind) -> MatmulPrecision {
        match (self, backend) {
            (MatmulPrecision::Auto, BackendKind::Ggml) => MatmulPrecision::F32,
            (MatmulPrecision::Auto, _) => match cleaner_kernels::matmul::Precision::auto() {
                cleaner_kernels::matmul::Precision::Bf16 => MatmulPrecision::Bf16,
                cleaner_kernels::matmul::Precision::F32 => MatmulPrecision::F32,
            },
            (p, _) => p,
        }
    }
}

impl From<MatmulPrecision> for cleaner_kernels::matmul::Precision {
    fn from(p: MatmulPrecision) -> Self {
        match p {
            MatmulPrecision::F32 => cleaner_kernels::matmul::Precision::F32,
            MatmulPrecision::Bf16 => cleaner_kernels::matmul::Precision::Bf16,
            MatmulPrecision::Auto => cleaner_kernels::matmul::Precision::auto(),
        }
    }
}

impl Default for TrainerSection {
    fn default() -> Self {
        TrainerSection {
            backend: BackendKind::default(),
            device: DeviceKind::default(),
            activation_memory_mib: crate::train::DEFAULT_ACTIVATION_MEMORY >> 20,
            shared_prefix: true,
            precision: MatmulPrecision::default(),
            memory_gib: None,
        }
    }
}

impl Default for LoraSection {
    fn default() -> Self {
        let c = LoraConfig::default();
        LoraSection {
            rank: c.rank,
            alpha: c.alpha,
            targets: ["q", "k", "v", "o", "gate", "up", "down"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl DataConfig {
    /// The dataset field names.
    pub fn fields(&self) -> Fields {
        Fields {
            question: self.question_fields.clone(),
            answer: self.answer_field.clone(),
            id: self.id_field.clone(),
        }
    }

    /// The configured problems (the first `limit` of the dataset).
    pub fn load(&self) -> Result<Vec<Item>, DatasetError> {
        let mut items = Dataset::load(&self.dataset, &self.dir(), &self.fields())?.items;
        if self.limit > 0 {
            items.truncate(self.limit);
        }
        Ok(items)
    }

    /// The data directory: the configured one, `$CLEANER_DATA`, or the
    /// repository's `data/` (`tasks::dataset::default_data_dir`).
    pub fn dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(crate::tasks::dataset::default_data_dir)
    }
}

impl LoraSection {
    /// The adapter shape, target names checked.
    pub fn to_config(&self) -> Result<LoraConfig, UnknownLoraTarget> {
        let mut targets = Vec::new();
        for t in &self.targets {
            let p = Proj::parse(t).ok_or_else(|| UnknownLoraTarget { target: t.clone() })?;
            if !targets.contains(&p) {
                targets.push(p);
            }
        }
        targets.sort();
        Ok(LoraConfig {
            rank: self.rank,
            alpha: self.alpha,
            targets,
        })
    }
}

impl RunConfig {
    /// A shipped config by name, or a TOML file by path.
    pub fn load(name_or_path: &str) -> Result<RunConfig, ConfigError> {
        if let Some((name, text)) = SHIPPED.iter().find(|(n, _)| *n == name_or_path) {
            return RunConfig::from_toml(text, &format!("config {name}"));
        }
        let path = Path::new(name_or_path);
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            origin: format!(
                "{} (not a file, and not a shipped config: {})",
                path.display(),
                SHIPPED.map(|(n, _)| n).join(", ")
            ),
            error,
        })?;
        RunConfig::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates TOML; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<RunConfig, ConfigError> {
        let invalid = |key: String, why: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key,
            why,
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| invalid("(document)".into(), e.message().to_string()))?;
        let config: RunConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            invalid(key, e.into_inner().message().to_string())
        })?;
        config
            .validate()
            .map_err(|(key, why)| invalid(key.to_string(), why))?;
        Ok(config)
    }

    /// The config as TOML (saved next to every checkpoint).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# could not serialize: {e}"))
    }

    /// Checks values that parse but cannot work; the error names the key.
    // `!(a > b)` rather than `a <= b`: the negated comparisons reject NaN too.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let g = &self.grpo;
        let positive = |key: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err((key, format!("must be a positive number, got {v}")))
            }
        };
        if self.model.trim().is_empty() {
            return Err(("model", "must name a model or a GGUF file".into()));
        }
        if g.steps == 0 {
            return Err(("grpo.steps", "must be at least 1".into()));
        }
        if g.prompts_per_step == 0 {
            return Err(("grpo.prompts_per_step", "must be at least 1".into()));
        }
        if g.group_size < 2 {
            return Err((
                "grpo.group_size",
                format!(
                    "must be at least 2 (advantages are normalized within a group), got {}",
                    g.group_size
                ),
            ));
        }
        let sequences = g.prompts_per_step * g.group_size;
        if g.mini_batches == 0 || g.mini_batches > sequences {
            return Err((
                "grpo.mini_batches",
                format!(
                    "must be between 1 and prompts_per_step * group_size = {sequences}, got {}",
                    g.mini_batches
                ),
            ));
        }
        if g.checkpoint_every == 0 {
            return Err(("grpo.checkpoint_every", "must be at least 1".into()));
        }
        if g.keep_checkpoints == 0 {
            return Err(("grpo.keep_checkpoints", "must be at least 1".into()));
        }
        if (self.engine.slots as usize) < g.group_size + 1 {
            return Err((
                "engine.slots",
                format!(
                    "must be at least grpo.group_size + 1 = {} (one slot prefills the prompt), got {}",
                    g.group_size + 1,
                    self.engine.slots
                ),
            ));
        }
        if self.engine.max_prompt_tokens < 16 {
            return Err(("engine.max_prompt_tokens", "must be at least 16".into()));
        }
        if let Some(gib) = self.engine.kv_cache_gib {
            positive("engine.kv_cache_gib", gib)?;
        }
        if let Some(gib) = self.trainer.memory_gib {
            positive("trainer.memory_gib", gib)?;
        }
        if self.data.dataset.trim().is_empty() {
            return Err((
                "data.dataset",
                "must name a dataset or a .jsonl file".into(),
            ));
        }
        if self.data.question_fields.is_empty() {
            return Err((
                "data.question_fields",
                "must list at least one field".into(),
            ));
        }
        if !(self.reward.correct > self.reward.wrong) {
            return Err((
                "reward.correct",
                format!(
                    "must be greater than reward.wrong ({} vs {})",
                    self.reward.correct, self.reward.wrong
                ),
            ));
        }
        if self.reward.overlong_buffer > self.agent.max_response_tokens {
            return Err((
                "reward.overlong_buffer",
                format!(
                    "must be at most agent.max_response_tokens ({} vs {})",
                    self.reward.overlong_buffer, self.agent.max_response_tokens
                ),
            ));
        }
        if !(self.reward.overlong_penalty_factor >= 0.0) {
            return Err((
                "reward.overlong_penalty_factor",
                format!("must be >= 0, got {}", self.reward.overlong_penalty_factor),
            ));
        }
        self.agent
            .validate()
            .map_err(|why| ("agent", why.to_string()))?;
        if self.lora.rank == 0 {
            return Err(("lora.rank", "must be at least 1".into()));
        }
        positive("lora.alpha", self.lora.alpha as f64)?;
        let lora = self
            .lora
            .to_config()
            .map_err(|e| ("lora.targets", e.to_string()))?;
        if lora.targets.is_empty() {
            return Err(("lora.targets", "must name at least one projection".into()));
        }
        let o = &self.optim;
        positive("optim.lr", o.lr as f64)?;
        if !(0.0..1.0).contains(&o.beta1) {
            return Err(("optim.beta1", format!("must be in [0, 1), got {}", o.beta1)));
        }
        if !(0.0..1.0).contains(&o.beta2) {
            return Err(("optim.beta2", format!("must be in [0, 1), got {}", o.beta2)));
        }
        positive("optim.eps", o.eps as f64)?;
        if !(o.weight_decay >= 0.0) {
            return Err((
                "optim.weight_decay",
                format!("must be >= 0, got {}", o.weight_decay),
            ));
        }
        if !(o.grad_clip >= 0.0) {
            return Err((
                "optim.grad_clip",
                format!("must be >= 0 (0 disables), got {}", o.grad_clip),
            ));
        }
        if !(0.0..=1.0).contains(&o.min_lr_ratio) {
            return Err((
                "optim.min_lr_ratio",
                format!("must be in [0, 1], got {}", o.min_lr_ratio),
            ));
        }
        let l = &self.loss;
        if !(l.clip_low > 0.0 && l.clip_low < 1.0) {
            return Err((
                "loss.clip_low",
                format!("must be in (0, 1), got {}", l.clip_low),
            ));
        }
        positive("loss.clip_high", l.clip_high as f64)?;
        if let Some(c) = l.dual_clip {
            if !(c > 1.0) {
                return Err(("loss.dual_clip", format!("must be greater than 1, got {c}")));
            }
        }
        if !(l.kl_coef >= 0.0) {
            return Err(("loss.kl_coef", format!("must be >= 0, got {}", l.kl_coef)));
        }
        let t = &self.trainer;
        t.backend().check().map_err(|e| {
            let key = match e {
                crate::train::BackendError::CpuOnDevice { .. } => "trainer.backend",
                _ => "trainer.device",
            };
            (key, e.to_string())
        })?;
        if t.backend == BackendKind::Ggml && t.precision == MatmulPrecision::Bf16 {
            return Err((
                "trainer.precision",
                "bf16 is the CPU kernels' precision (ggml multiplies in f32); use \"f32\" with backend = \"ggml\"".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        RunConfig::from_toml(text, "test.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn shipped_configs_parse_and_validate() {
        for (name, _) in SHIPPED {
            RunConfig::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn every_file_in_configs_parses_validates_and_ships() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        assert_eq!(files.len(), SHIPPED.len(), "{files:?}");
        for path in &files {
            let config = RunConfig::load(path.to_str().unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path.file_stem().unwrap().to_str().unwrap();
            let (_, shipped) = SHIPPED
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("{name} is not in SHIPPED"));
            assert_eq!(*shipped, std::fs::read_to_string(path).unwrap());
            assert!(config.engine.kv_cache_gib.is_none_or(|g| g > 0.0));
        }
        // The paper's recipe: no per-turn cap, a KV cache sized from memory.
        let paper = RunConfig::load("paper-qwen3-4b").unwrap();
        assert_eq!(paper.agent.max_turn_tokens, None);
        assert_eq!(paper.engine.kv_cache_gib, Some(64.0));
        assert_eq!(paper.engine.kv_cache_bytes(), Some(64 << 30));
    }

    #[test]
    fn errors_name_the_key() {
        let e = err("[grpo]\nstepz = 3\n");
        assert!(
            e.contains("grpo.stepz") && e.contains("unknown field"),
            "{e}"
        );
        let e = err("[grpo]\nsteps = \"ten\"\n");
        assert!(
            e.contains("grpo.steps") && e.contains("invalid type"),
            "{e}"
        );
        let e = err("[optim]\nlr = -1.0\n");
        assert!(e.contains("optim.lr") && e.contains("positive"), "{e}");
        let e = err("[engine]\nkv_cache_gib = 0.0\n");
        assert!(
            e.contains("engine.kv_cache_gib") && e.contains("positive"),
            "{e}"
        );
        let e = err("[agent]\nmax_turn_tokens = 0\n");
        assert!(e.contains("max_turn_tokens"), "{e}");
        let e = err("[grpo]\ngroup_size = 1\n");
        assert!(e.contains("grpo.group_size"), "{e}");
        let e = err("[lora]\ntargets = [\"q\", \"qq\"]\n");
        assert!(e.contains("lora.targets") && e.contains("qq"), "{e}");
        let e = err("[agent]\nrollback_probability = 2.0\n");
        assert!(
            e.contains("`agent`") && e.contains("rollback_probability"),
            "{e}"
        );
        let e = err("[agent.sampling]\ntemperature = \"hot\"\n");
        assert!(e.contains("agent.sampling.temperature"), "{e}");
        let e = err("[engine]\nslots = 3\n[grpo]\ngroup_size = 4\n");
        assert!(e.contains("engine.slots"), "{e}");
        let e = err("model = ");
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn trainer_backend_errors_name_key_and_choices() {
        let e = err("[trainer]\nbackend = \"gpu\"\n");
        assert!(
            e.contains("trainer.backend")
                && e.contains("gpu")
                && ["auto", "cpu", "ggml"].iter().all(|v| e.contains(v)),
            "{e}"
        );
        let e = err("[trainer]\ndevice = \"tpu\"\n");
        assert!(
            e.contains("trainer.device")
                && ["auto", "cpu", "cuda", "metal", "vulkan"]
                    .iter()
                    .all(|v| e.contains(v)),
            "{e}"
        );
        let e = err("[trainer]\nbackend = \"cpu\"\ndevice = \"metal\"\n");
        assert!(e.contains("trainer.backend") && e.contains("metal"), "{e}");
        let e = err("[trainer]\nbackend = \"ggml\"\nprecision = \"bf16\"\n");
        assert!(e.contains("trainer.precision"), "{e}");
        if !cfg!(feature = "cuda") {
            let e = err("[trainer]\ndevice = \"cuda\"\n");
            assert!(
                e.contains("trainer.device")
                    && e.contains("not compiled")
                    && e.contains("`cuda` feature"),
                "{e}"
            );
        }
        let c =
            RunConfig::from_toml("[trainer]\nbackend = \"ggml\"\ndevice = \"cpu\"\n", "t").unwrap();
        assert_eq!(c.trainer.backend(), TrainerBackend::ggml(DeviceKind::Cpu));
        // "auto" is the CPU kernels' choice, so it goes with ggml (as f32).
        let c = RunConfig::from_toml("[trainer]\nbackend = \"ggml\"\nprecision = \"auto\"\n", "t")
            .unwrap();
        assert_eq!(c.trainer.precision, MatmulPrecision::Auto);
        assert_eq!(
            MatmulPrecision::Auto.resolve(BackendKind::Ggml),
            MatmulPrecision::F32
        );
        let on_cpu = MatmulPrecision::Auto.resolve(BackendKind::Cpu);
        assert_eq!(
            cleaner_kernels::matmul::Precision::from(on_cpu),
            cleaner_kernels::matmul::Precision::auto()
        );
        assert_eq!(
            MatmulPrecision::Bf16.resolve(BackendKind::Ggml),
            MatmulPrecision::Bf16
        );
        let e = err("[trainer]\nprecision = \"fp8\"\n");
        assert!(
            e.contains("trainer.precision")
                && ["f32", "bf16", "auto"].iter().all(|v| e.contains(v)),
            "{e}"
        );
    }

    #[test]
    fn round_trips_through_toml() {
        let c = RunConfig::load("quickstart").unwrap();
        let again = RunConfig::from_toml(&c.to_toml(), "saved").unwrap();
        assert_eq!(c.to_toml(), again.to_toml());
    }
}
