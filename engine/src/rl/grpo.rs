//! GRPO with purified trajectories, one step at a time:
//!
//! 1. draw `prompts_per_step` problems (a seeded shuffle per epoch);
//! 2. run the agent: `group_size` rollouts each, purified inline with
//!    probability `agent.rollback_probability` (1: CLEANER, 0: plain GRPO);
//! 3. score every trajectory with the reward;
//! 4. normalize rewards within each group (groups whose rewards are all
//!    equal carry no signal: advantage 0, their tokens count in the
//!    token-mean's denominator, their passes are skipped);
//! 5. recompute the old log-probs with the trainer on the final (purified)
//!    sequences, never the sampler's (spec: grafted tokens were sampled in
//!    another context);
//! 6. split the sequences into `mini_batches` and, for each, accumulate the
//!    clipped policy loss and apply one AdamW update;
//! 7. hot-swap the new adapter into the rollout engine;
//! 8. append the step's metrics, and checkpoint every `checkpoint_every`.
//!
//! [`Grpo::train_step`] runs these phases in this order, each a method of
//! its own (4 and 7 are one line).
//! Prompt order, rollout seeds and the adapter's init are functions of
//! `grpo.seed` and the step number ([`crate::seeds`]), so a run resumed from
//! a checkpoint draws exactly what the uninterrupted run would have (on the
//! CPU, where llama.cpp and our trainer are deterministic).

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::advantage::group_advantages;
use super::checkpoint::{self, CheckpointError, TrainState, STATE_VERSION};
use super::config::{ConfigError, MatmulPrecision, RunConfig, UnknownLoraTarget};
use super::metrics::{MetricsLog, StepMetrics};
use super::problem_index::{problem_index, ProblemIndexError};
use super::problem_order::problems_of_step;
use super::reward::{overlong_penalty, Reward};
use super::samples::{mini_batches, samples_of, Sample, StepLogprobs};
use crate::agent::trajectory::{write_jsonl, TrajectoryError};
use crate::agent::{Problem, Trajectory};
use crate::seeds;
use crate::session::{Session, SessionError, SessionOptions};
use crate::tasks::{DatasetError, Item};
use crate::train::{
    sequence_loss, BackendKind, BatchShape, LossStats, SeqLossInput, TrainError, Trainer,
    TrainerBackend,
};
use cleaner_kernels::matmul::Precision;
use cleaner_models::{ModelError, Transformer};

/// Why a run could not start or a step failed. The three large sources are
/// boxed so every `Result` of the loop stays small.
#[derive(Debug, thiserror::Error)]
pub enum GrpoError {
    /// Model, sandbox or agent.
    #[error(transparent)]
    Session(Box<SessionError>),
    /// Trainer (forward, backward, adapter files).
    #[error(transparent)]
    Train(Box<TrainError>),
    /// The model file for training.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Writing or reading a checkpoint.
    #[error(transparent)]
    Checkpoint(Box<CheckpointError>),
    /// The dataset.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// A run file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A new run was started in a directory that holds a checkpoint.
    #[error(
        "{} already holds a checkpoint: resume it, or choose another run directory",
        run_dir.display()
    )]
    RunDirTaken {
        /// The run directory.
        run_dir: PathBuf,
    },
    /// The config saved in the checkpoint being resumed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The adapter's target projections.
    #[error(transparent)]
    LoraTarget(#[from] UnknownLoraTarget),
    /// The dataset (or the caller) gave no problems.
    #[error("no problems to train on")]
    NoProblems,
    /// Saving a step's trajectories.
    #[error(transparent)]
    Trajectories(#[from] TrajectoryError),
    /// A trajectory that does not name its problem.
    #[error(transparent)]
    ProblemIndex(#[from] ProblemIndexError),
}

impl From<SessionError> for GrpoError {
    fn from(e: SessionError) -> Self {
        GrpoError::Session(Box::new(e))
    }
}

impl From<TrainError> for GrpoError {
    fn from(e: TrainError) -> Self {
        GrpoError::Train(Box::new(e))
    }
}

impl From<CheckpointError> for GrpoError {
    fn from(e: CheckpointError) -> Self {
        GrpoError::Checkpoint(Box::new(e))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GrpoError + '_ {
    move |source| GrpoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the loop is doing, for progress displays.
#[derive(Clone, Debug)]
pub enum Progress {
    /// Rollouts of `step`: `done` of `total` finished.
    Rollouts {
        /// The step (1-based).
        step: u64,
        /// Finished so far.
        done: usize,
        /// How many in all.
        total: usize,
    },
    /// Forward/backward passes of `step`: `done` of `total` sequences
    /// (old log-probs, then the updates).
    Training {
        /// The step (1-based).
        step: u64,
        /// Finished so far.
        done: usize,
        /// How many in all.
        total: usize,
    },
    /// A step ended.
    StepDone(Box<StepMetrics>),
}

/// A GRPO run in `run_dir`.
pub struct Grpo {
    config: RunConfig,
    run_dir: PathBuf,
    session: Session,
    trainer: Trainer,
    items: Vec<Item>,
    reward: Box<dyn Reward>,
    metrics: MetricsLog,
    step: u64,
    elapsed_s: f64,
    progress: Box<dyn FnMut(Progress)>,
}

impl Grpo {
    /// Starts a new run in `run_dir` (which must not hold a checkpoint yet)
    /// on the configured dataset, with the configured math reward.
    pub fn new(config: RunConfig, run_dir: &Path) -> Result<Grpo, GrpoError> {
        let items = config.data.load()?;
        Grpo::with_tasks(config, run_dir, items)
    }

    /// Starts a new run on the caller's problems.
    pub fn with_tasks(
        mut config: RunConfig,
        run_dir: &Path,
        items: Vec<Item>,
    ) -> Result<Grpo, GrpoError> {
        // The saved config names the arithmetic this machine picked for
        // `auto`, which a resume on another CPU keeps.
        config.trainer.precision = config.trainer.precision.resolve(config.trainer.backend);
        if checkpoint::find_latest(run_dir).is_ok() {
            return Err(GrpoError::RunDirTaken {
                run_dir: run_dir.to_path_buf(),
            });
        }
        std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
        let config_path = run_dir.join("config.toml");
        std::fs::write(&config_path, config.to_toml()).map_err(io(&config_path))?;
        let metrics = MetricsLog::new(run_dir);
        if metrics.path().exists() {
            std::fs::remove_file(metrics.path()).map_err(io(metrics.path()))?;
        }
        let session = open_session(&config)?;
        let lora = config.lora.to_config()?;
        let model = Transformer::open(session.model_path())?;
        let seed = seeds::adapter_init(config.grpo.seed);
        let trainer = Trainer::new(model, lora, config.optim.clone(), seed)?;
        Grpo::assemble(config, run_dir, session, trainer, items, 0, 0.0)
    }

    /// Continues the run in `run_dir` from its newest complete checkpoint,
    /// on the configured dataset; `steps` (if given) replaces the step budget.
    pub fn resume(run_dir: &Path, steps: Option<u64>) -> Result<Grpo, GrpoError> {
        let (config, dir) = Grpo::checkpoint_config(run_dir, steps)?;
        let items = config.data.load()?;
        Grpo::resume_with_tasks_at(config, run_dir, &dir, items)
    }

    /// Continues a run on the caller's problems (the same ones it started with).
    pub fn resume_with_tasks(
        run_dir: &Path,
        steps: Option<u64>,
        items: Vec<Item>,
    ) -> Result<Grpo, GrpoError> {
        let (config, dir) = Grpo::checkpoint_config(run_dir, steps)?;
        Grpo::resume_with_tasks_at(config, run_dir, &dir, items)
    }

    fn checkpoint_config(
        run_dir: &Path,
        steps: Option<u64>,
    ) -> Result<(RunConfig, PathBuf), GrpoError> {
        let dir = checkpoint::latest(run_dir)?;
        let state = checkpoint::read_state(&dir)?;
        let mut config =
            RunConfig::from_toml(&state.config, &dir.join("state.json").display().to_string())?;
        if let Some(s) = steps {
            config.grpo.steps = s;
        }
        Ok((config, dir))
    }

    fn resume_with_tasks_at(
        config: RunConfig,
        run_dir: &Path,
        dir: &Path,
        items: Vec<Item>,
    ) -> Result<Grpo, GrpoError> {
        let session = open_session(&config)?;
        let model = Transformer::open(session.model_path())?;
        let (trainer, state) = checkpoint::load(dir, model)?;
        let metrics = MetricsLog::new(run_dir);
        metrics
            .truncate_after(state.step)
            .map_err(io(metrics.path()))?;
        let mut grpo = Grpo::assemble(
            config,
            run_dir,
            session,
            trainer,
            items,
            state.step,
            state.elapsed_s,
        )?;
        if state.step > 0 {
            grpo.swap()?;
        }
        Ok(grpo)
    }

    fn assemble(
        config: RunConfig,
        run_dir: &Path,
        session: Session,
        mut trainer: Trainer,
        items: Vec<Item>,
        step: u64,
        elapsed_s: f64,
    ) -> Result<Grpo, GrpoError> {
        trainer.set_activation_memory(config.trainer.activation_memory_mib.saturating_mul(1 << 20));
        trainer.set_shared_prefix(config.trainer.shared_prefix);
        // (A backend `auto` that picks ggml makes bf16 f32 in set_backend.)
        let precision = config.trainer.precision.resolve(config.trainer.backend);
        trainer.set_precision(precision.into())?;
        trainer.set_backend(config.trainer.backend(), trainer_threads())?;
        if let Some(gib) = config.trainer.memory_gib {
            trainer.set_memory_budget((gib * (1u64 << 30) as f64) as usize);
        }
        log::info!("trainer: {}", trainer.backend_name());
        if items.is_empty() {
            return Err(GrpoError::NoProblems);
        }
        let reward = Box::new(config.reward);
        Ok(Grpo {
            config,
            run_dir: run_dir.to_path_buf(),
            session,
            trainer,
            items,
            reward,
            metrics: MetricsLog::new(run_dir),
            step,
            elapsed_s,
            progress: Box::new(|_| {}),
        })
    }

    /// Replaces the reward (the default is the math verifier's +1 / -1).
    pub fn with_reward(mut self, reward: impl Reward + 'static) -> Self {
        self.reward = Box::new(reward);
        self
    }

    /// Receives progress events.
    pub fn with_progress(mut self, progress: impl FnMut(Progress) + 'static) -> Self {
        self.progress = Box::new(progress);
        self
    }

    /// The run's config.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }
    /// Steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }
    /// The trainer (adapter, optimizer).
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }
    /// Moves the trainer to another backend/device (e.g. a run resumed on a
    /// machine with a GPU); the config saved with later checkpoints says so.
    /// ggml multiplies in f32, so a run in bf16 continues in f32 there.
    pub fn set_trainer_backend(&mut self, backend: TrainerBackend) -> Result<(), GrpoError> {
        if backend.backend == BackendKind::Ggml
            && self.config.trainer.precision != MatmulPrecision::F32
        {
            log::info!("trainer: ggml multiplies in f32; the run's bf16 products continue in f32");
            self.trainer.set_precision(Precision::F32)?;
            self.config.trainer.precision = MatmulPrecision::F32;
        }
        self.trainer.set_backend(backend, trainer_threads())?;
        if let Some(gib) = self.config.trainer.memory_gib {
            self.trainer
                .set_memory_budget((gib * (1u64 << 30) as f64) as usize);
        }
        self.config.trainer.backend = backend.backend;
        self.config.trainer.device = backend.device;
        log::info!("trainer: {}", self.trainer.backend_name());
        Ok(())
    }

    /// The rollout session (it samples from the current adapter).
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }
    /// Where checkpoints, metrics and trajectories go.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Runs steps until the budget (`grpo.steps`) is spent; returns the
    /// metrics of the steps run now.
    pub fn run(&mut self) -> Result<Vec<StepMetrics>, GrpoError> {
        let mut out = Vec::new();
        while self.step < self.config.grpo.steps {
            out.push(self.train_step()?);
        }
        Ok(out)
    }

    /// One GRPO step (see the module documentation), phase by phase.
    pub fn train_step(&mut self) -> Result<StepMetrics, GrpoError> {
        let t_step = Instant::now();
        let step = self.step;
        let mut m = StepMetrics {
            step: step + 1,
            ..Default::default()
        };

        let batch = self.draw_problems(step, &mut m)?;
        let rollout_seed = seeds::rollout_sampling(self.config.grpo.seed, step);
        let mut trajectories = self.roll_out(&batch, rollout_seed, &mut m)?;
        let rewards = self.score(&batch.items, &mut trajectories, &mut m)?;
        train_on(
            &mut self.trainer,
            &self.config,
            step,
            &trajectories,
            &rewards,
            &mut *self.progress,
            &mut m,
        )?;

        let t_swap = Instant::now();
        if m.updates > 0 {
            self.swap()?;
        }
        m.time_swap_s = t_swap.elapsed().as_secs_f64();

        self.save_trajectories(step, &trajectories)?;
        self.end_step(m, t_step)
    }

    /// Phase 1: the step's problems, tokenized; those whose prompt is longer
    /// than `engine.max_prompt_tokens` are skipped (and counted).
    fn draw_problems(&self, step: u64, m: &mut StepMetrics) -> Result<Batch, GrpoError> {
        let per_step = self.config.grpo.prompts_per_step;
        let drawn: Vec<Item> =
            problems_of_step(self.items.len(), per_step, self.config.grpo.seed, step)
                .into_iter()
                .map(|i| self.items[i].clone())
                .collect();
        let problems = self.session.problems(&drawn)?;
        let max_prompt = self.config.engine.max_prompt_tokens;
        let (items, problems): (Vec<Item>, Vec<Problem>) = drawn
            .into_iter()
            .zip(problems)
            .filter(|(_, p)| p.prompt.len() <= max_prompt)
            .unzip();
        m.prompts = items.len();
        m.prompts_skipped = per_step - items.len();
        Ok(Batch { items, problems })
    }

    /// Phase 2: `group_size` rollouts of every problem, from rollout seed
    /// `seed`, with their statistics.
    fn roll_out(
        &mut self,
        batch: &Batch,
        seed: u64,
        m: &mut StepMetrics,
    ) -> Result<Vec<Trajectory>, GrpoError> {
        let step = m.step;
        let t_roll = Instant::now();
        let (trajectories, stats) = {
            let progress = &mut self.progress;
            let mut report = |done, total| progress(Progress::Rollouts { step, done, total });
            self.session.run_problems(
                &batch.problems,
                self.config.grpo.group_size,
                seed,
                &mut report,
            )?
        };
        m.record_rollouts(&trajectories, &stats, t_roll.elapsed().as_secs_f64());
        Ok(trajectories)
    }

    /// Phase 3: every trajectory's reward (stored in it), against the
    /// problem it answers, plus the overlong shaping (`[reward]`
    /// `overlong_buffer`, off by default).
    fn score(
        &self,
        items: &[Item],
        trajectories: &mut [Trajectory],
        m: &mut StepMetrics,
    ) -> Result<Vec<f32>, GrpoError> {
        let mut rewards = Vec::with_capacity(trajectories.len());
        let mut solved = 0usize;
        for t in trajectories.iter_mut() {
            let item = &items[problem_index(t, items)?];
            let r = self.reward.score(item, t) + self.overlong(t);
            solved += self.reward.solved(item, t) as usize;
            t.reward = Some(r);
            rewards.push(r);
        }
        let n = trajectories.len().max(1) as f64;
        m.reward_mean = rewards.iter().map(|&r| r as f64).sum::<f64>() / n;
        m.accuracy = solved as f64 / n;
        Ok(rewards)
    }

    /// The overlong shaping of `t` (`[reward] overlong_buffer`; 0 when off).
    fn overlong(&self, t: &Trajectory) -> f32 {
        let r = &self.config.reward;
        overlong_penalty(
            t.response_tokens,
            self.config.agent.max_response_tokens,
            r.overlong_buffer,
            r.overlong_penalty_factor,
        )
    }

    /// The step's trajectories as `trajectories/step-NNNNNN.jsonl`, when the
    /// config asks for them.
    fn save_trajectories(&self, step: u64, trajectories: &[Trajectory]) -> Result<(), GrpoError> {
        if !self.config.grpo.save_trajectories {
            return Ok(());
        }
        let dir = self.run_dir.join("trajectories");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("step-{:06}.jsonl", step + 1));
        Ok(write_jsonl(&path, trajectories)?)
    }

    /// Phase 8: the step counted, its metrics appended, then the checkpoint
    /// (a resume drops metrics of steps after its checkpoint, so this order
    /// never loses a line it keeps).
    fn end_step(&mut self, mut m: StepMetrics, t_step: Instant) -> Result<StepMetrics, GrpoError> {
        self.step += 1;
        m.time_step_s = t_step.elapsed().as_secs_f64();
        self.elapsed_s += m.time_step_s;
        self.metrics.append(&m).map_err(io(self.metrics.path()))?;
        let every = self.config.grpo.checkpoint_every;
        if self.step.is_multiple_of(every) || self.step == self.config.grpo.steps {
            self.checkpoint()?;
        }
        (self.progress)(Progress::StepDone(Box::new(m.clone())));
        Ok(m)
    }

    /// Writes the adapter into the rollout engine.
    fn swap(&mut self) -> Result<(), GrpoError> {
        let dir = self.run_dir.join("adapters");
        self.trainer.hot_swap(self.session.decoder(), &dir)?;
        Ok(())
    }

    /// Writes a checkpoint of the current step.
    pub fn checkpoint(&self) -> Result<PathBuf, GrpoError> {
        let state = TrainState {
            format_version: STATE_VERSION,
            step: self.step,
            seed: self.config.grpo.seed,
            prompts_drawn: self.step * self.config.grpo.prompts_per_step as u64,
            next_rollout_seed: seeds::rollout_sampling(self.config.grpo.seed, self.step),
            elapsed_s: self.elapsed_s,
            config: self.config.to_toml(),
        };
        Ok(checkpoint::write(
            &self.run_dir,
            &self.trainer,
            &state,
            self.config.grpo.keep_checkpoints,
        )?)
    }
}

/// Phases 4 to 6 of step `step` (0-based) on scored `trajectories`
/// (`rewards` in the same order, groups of `grpo.group_size`): advantages,
/// old log-probs, one update per mini-batch; the step's training metrics go
/// into `m`. Groups whose rewards are all equal (zero signal) keep advantage
/// 0 and stay in their mini-batch's token count (the token-mean's
/// denominator), as in the reference; they add nothing to the gradient, so
/// their forward and backward passes are skipped (unless the loss has a KL
/// term, which they do feed).
pub fn train_on(
    trainer: &mut Trainer,
    config: &RunConfig,
    step: u64,
    trajectories: &[Trajectory],
    rewards: &[f32],
    progress: &mut dyn FnMut(Progress),
    m: &mut StepMetrics,
) -> Result<(), GrpoError> {
    let advantages = group_advantages(rewards, config.grpo.group_size);
    m.degenerate_groups = advantages.degenerate_groups;
    let t_train = Instant::now();
    let samples = samples_of(trajectories, &advantages.values);
    let runs = |s: &Sample| !s.zero_signal || config.loss.kl_coef > 0.0;
    m.trained_sequences = samples.iter().filter(|s| !s.zero_signal).count();
    m.trained_tokens = samples
        .iter()
        .filter(|s| !s.zero_signal)
        .map(Sample::trained_tokens)
        .sum();
    m.zero_signal_tokens = samples
        .iter()
        .filter(|s| s.zero_signal)
        .map(Sample::trained_tokens)
        .sum();
    let batches = mini_batches(samples.len(), config.grpo.mini_batches);
    let mut t = StepTrainer {
        trainer,
        config,
        progress,
        runs: samples.iter().map(runs).collect(),
    };
    let mut passes = t.training_passes(step, &batches);
    let t_logprobs = Instant::now();
    let mut logprobs = t.old_logprobs(&samples, &batches, &mut passes)?;
    m.time_logprobs_s = t_logprobs.elapsed().as_secs_f64();
    let t_update = Instant::now();
    t.update(step, &samples, &batches, &mut logprobs, &mut passes, m)?;
    m.time_update_s = t_update.elapsed().as_secs_f64();
    (m.entropy, m.kl_to_start) = logprobs.entropy_and_kl(&samples);
    m.time_train_s = t_train.elapsed().as_secs_f64();
    let sequence_tokens: usize = samples
        .iter()
        .zip(&t.runs)
        .filter(|(_, &r)| r)
        .map(|(s, _)| s.tokens.len())
        .sum();
    m.train_tokens_per_s = sequence_tokens as f64 / m.time_train_s.max(1e-9);
    Ok(())
}

/// The trainer, config and progress sink of one step's training phases, and
/// which samples get forward and backward passes.
struct StepTrainer<'a> {
    trainer: &'a mut Trainer,
    config: &'a RunConfig,
    progress: &'a mut dyn FnMut(Progress),
    runs: Vec<bool>,
}

impl StepTrainer<'_> {
    /// The forward and backward passes phases 5 and 6 will run, for progress.
    /// (Zero-signal samples without a KL term run none.)
    fn training_passes(&self, step: u64, batches: &[Vec<usize>]) -> Passes {
        let first = batches.first().map_or(0, Vec::len);
        let n = self.runs.iter().filter(|&&r| r).count();
        let later = self.runs.iter().skip(first).filter(|&&r| r).count();
        let reference = self.wants_reference() as usize;
        Passes {
            step: step + 1,
            done: 0,
            total: later + reference * n + n,
        }
    }

    /// Whether the loss or the metrics need the reference (adapter off).
    fn wants_reference(&self) -> bool {
        self.config.grpo.kl_to_start || self.config.loss.kl_coef > 0.0
    }

    /// Phase 5: old (and reference) log-probs of the final sequences, from
    /// the trainer (never the sampler's: grafted tokens were sampled in
    /// another context). The first mini-batch trains the policy that is
    /// current now, so its ratio is exactly 1 and its old log-probs are those
    /// of its own forward pass: only later mini-batches need them up front.
    fn old_logprobs(
        &mut self,
        samples: &[Sample],
        batches: &[Vec<usize>],
        passes: &mut Passes,
    ) -> Result<StepLogprobs, GrpoError> {
        let first = batches.first().map_or(0, Vec::len);
        let mut old = vec![None; samples.len()];
        let mut reference = self
            .wants_reference()
            .then(|| vec![Vec::new(); samples.len()]);
        let running: Vec<usize> = (0..samples.len()).filter(|&i| self.runs[i]).collect();
        for group in self.groups(samples, &running) {
            let later: Vec<usize> = group.iter().copied().filter(|&i| i >= first).collect();
            let lps = self
                .trainer
                .logprobs_group(&tokens_of(samples, &later), true)?;
            for (&i, lp) in later.iter().zip(lps) {
                old[i] = Some(lp);
            }
            passes.done += later.len();
            if let Some(reference) = &mut reference {
                let lps = self
                    .trainer
                    .logprobs_group(&tokens_of(samples, &group), false)?;
                for (&i, lp) in group.iter().zip(lps) {
                    reference[i] = lp;
                }
                passes.done += group.len();
            }
            (self.progress)(passes.progress());
        }
        Ok(StepLogprobs { old, reference })
    }

    /// `indices` (of samples, in order) split into their GRPO groups: a
    /// group's rollouts share its prompt, which the trainer computes once.
    fn groups(&self, samples: &[Sample], indices: &[usize]) -> Vec<Vec<usize>> {
        let size = self.config.grpo.group_size.max(1);
        let group = |i: usize| samples[i].trajectory / size;
        let mut out: Vec<Vec<usize>> = Vec::new();
        for &i in indices {
            match out.last_mut() {
                Some(g) if group(g[0]) == group(i) => g.push(i),
                _ => out.push(vec![i]),
            }
        }
        out
    }

    /// Phase 6: for each mini-batch, the clipped policy loss accumulated over
    /// its sequences, then one AdamW update. Old log-probs the first
    /// mini-batch lacked are filled in from its forward passes. Every update
    /// of the step takes the learning rate of training step `step` (0-based).
    fn update(
        &mut self,
        step: u64,
        samples: &[Sample],
        batches: &[Vec<usize>],
        logprobs: &mut StepLogprobs,
        passes: &mut Passes,
        m: &mut StepMetrics,
    ) -> Result<(), GrpoError> {
        let mut loss = LossStats::default();
        let mut grad_norms = Vec::new();
        for batch in batches {
            let shape = BatchShape::of(batch.iter().map(|&i| samples[i].weight.as_slice()));
            let running: Vec<usize> = batch.iter().copied().filter(|&i| self.runs[i]).collect();
            for group in self.groups(samples, &running) {
                let cfg = &self.config.loss;
                let old = &logprobs.old;
                let reference = logprobs.reference.as_ref();
                let lps = self
                    .trainer
                    .accumulate_group(&tokens_of(samples, &group), |k, lp| {
                        let (i, s) = (group[k], &samples[group[k]]);
                        let input = SeqLossInput {
                            logprob: lp,
                            old_logprob: old[i].as_deref().unwrap_or(lp),
                            ref_logprob: reference.map(|r| r[i].as_slice()),
                            advantage: &s.advantage,
                            weight: &s.weight,
                        };
                        let (share, grad) = sequence_loss(cfg, &input, shape);
                        loss.add(&share);
                        grad
                    })?;
                for (&i, lp) in group.iter().zip(lps) {
                    logprobs.old[i].get_or_insert(lp);
                }
                passes.done += group.len();
                (self.progress)(passes.progress());
            }
            let u = self.trainer.update_at(step)?;
            grad_norms.push(u.grad_norm);
            m.lr = u.lr as f64;
        }
        m.record_updates(&loss, &grad_norms);
        Ok(())
    }
}

/// The token sequences of samples `indices`.
fn tokens_of<'a>(samples: &'a [Sample], indices: &[usize]) -> Vec<&'a [u32]> {
    indices
        .iter()
        .map(|&i| samples[i].tokens.as_slice())
        .collect()
}

/// The problems of a step that are rolled out: dataset items and their
/// tokenized prompts, in the same order (a trajectory's problem index points
/// into both).
struct Batch {
    items: Vec<Item>,
    problems: Vec<Problem>,
}

/// Training passes of a step (old and reference log-probs, then forward and
/// backward per sequence), counted for progress displays.
struct Passes {
    /// The step (1-based).
    step: u64,
    done: usize,
    total: usize,
}

impl Passes {
    fn progress(&self) -> Progress {
        Progress::Training {
            step: self.step,
            done: self.done,
            total: self.total,
        }
    }
}

/// The session a run's config describes.
pub fn open_session(config: &RunConfig) -> Result<Session, SessionError> {
    Session::open(
        &config.model,
        SessionOptions {
            agent: config.agent.clone(),
            slots: config.engine.slots,
            max_prompt_tokens: config.engine.max_prompt_tokens,
            kv_cache_bytes: config.engine.kv_cache_bytes(),
            threads: config.engine.threads,
            asset_dir: None,
        },
    )
}

/// Threads of ggml's CPU backend when it trains: every core (rollouts and
/// training take turns, never run at once).
fn trainer_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
