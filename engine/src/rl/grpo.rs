//! GRPO with purified trajectories, one step at a time:
//!
//! 1. draw `prompts_per_step` problems (a seeded shuffle per epoch);
//! 2. run the agent: `group_size` rollouts each, purified inline with
//!    probability `agent.rollback_probability` (1: CLEANER, 0: plain GRPO);
//! 3. score every trajectory with the reward;
//! 4. normalize rewards within each group (groups whose rewards are all
//!    equal carry no signal: counted and skipped);
//! 5. recompute the old log-probs with the trainer on the final (purified)
//!    sequences, never the sampler's (spec: grafted tokens were sampled in
//!    another context);
//! 6. split the sequences into `mini_batches` and, for each, accumulate the
//!    clipped policy loss and apply one AdamW update;
//! 7. hot-swap the new adapter into the rollout engine;
//! 8. append the step's metrics, and checkpoint every `checkpoint_every`.
//!
//! Prompt order, rollout seeds and the adapter's init are functions of
//! `grpo.seed` and the step number ([`crate::seeds`]), so a run resumed from a checkpoint
//! draws exactly what the uninterrupted run would have (on the CPU, where
//! llama.cpp and our trainer are deterministic).

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::advantage::group_advantages;
use super::checkpoint::{self, CheckpointError, TrainState, STATE_VERSION};
use super::config::{ConfigError, RunConfig, UnknownLoraTarget};
use super::metrics::{MetricsLog, StepMetrics};
use super::problem_index::{problem_index, ProblemIndexError};
use crate::agent::trajectory::{write_jsonl, TrajectoryError};
use crate::agent::{Role, Trajectory};
use crate::sampling::Rng;
use crate::seeds;
use crate::session::{Session, SessionError, SessionOptions};
use crate::tasks::{DatasetError, Item, Reward};
use crate::train::{sequence_loss, BatchShape, LossStats, SeqLossInput, TrainError, Trainer};
use cleaner_models::{ModelError, Transformer};

/// Why a run could not start or a step failed.
#[derive(Debug, thiserror::Error)]
pub enum GrpoError {
    /// Model, sandbox or agent.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Trainer (forward, backward, adapter files).
    #[error(transparent)]
    Train(#[from] TrainError),
    /// The model file for training.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Writing or reading a checkpoint.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
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
        config: RunConfig,
        run_dir: &Path,
        items: Vec<Item>,
    ) -> Result<Grpo, GrpoError> {
        if checkpoint::latest(run_dir).is_ok() {
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
        trainer.set_precision(config.trainer.precision.into());
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

    /// The problems of step `step` (0-based): a seeded shuffle per epoch.
    fn prompts_for(&self, step: u64) -> Vec<Item> {
        let n = self.items.len() as u64;
        let p = self.config.grpo.prompts_per_step as u64;
        let mut cached: Option<(u64, Vec<usize>)> = None;
        (0..p)
            .map(|k| {
                let global = step * p + k;
                let (epoch, pos) = (global / n, global % n);
                if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    cached = Some((
                        epoch,
                        shuffled(
                            self.items.len(),
                            seeds::problem_order(self.config.grpo.seed, epoch),
                        ),
                    ));
                }
                let order = &cached.as_ref().expect("just set").1;
                self.items[order[pos as usize]].clone()
            })
            .collect()
    }

    /// One GRPO step (see the module documentation).
    pub fn train_step(&mut self) -> Result<StepMetrics, GrpoError> {
        let t_step = Instant::now();
        let step = self.step;
        let g = &self.config.grpo;
        let (group, mini_batches) = (g.group_size, g.mini_batches);
        let mut m = StepMetrics {
            step: step + 1,
            ..Default::default()
        };

        // 1-2. Problems and rollouts.
        let drawn = self.prompts_for(step);
        let problems = self.session.problems(&drawn)?;
        let max_prompt = self.config.engine.max_prompt_tokens;
        let (items, problems): (Vec<Item>, Vec<_>) = drawn
            .into_iter()
            .zip(problems)
            .filter(|(_, p)| p.prompt.len() <= max_prompt)
            .unzip();
        m.prompts = items.len();
        m.prompts_skipped = self.config.grpo.prompts_per_step - items.len();
        self.session.agent_config_mut().sampling.seed =
            seeds::rollout_sampling(self.config.grpo.seed, step);
        let t_roll = Instant::now();
        let (mut trajectories, stats) = {
            let progress = &mut self.progress;
            let mut report = |done, total| {
                progress(Progress::Rollouts {
                    step: step + 1,
                    done,
                    total,
                })
            };
            self.session.run_problems(&problems, group, &mut report)?
        };
        m.time_rollout_s = t_roll.elapsed().as_secs_f64();
        m.time_sandbox_s = stats.sandbox_ms / 1e3;
        m.rollouts = trajectories.len();
        m.generated_tokens = stats.generated_tokens;
        m.rollout_tokens_per_s = stats.generated_tokens as f64 / m.time_rollout_s.max(1e-9);
        m.failures_raw = stats.failures_per_trajectory_raw;
        m.failures_kept = stats.failures_per_trajectory_kept;
        m.rollbacks_shallow = stats.rollbacks_shallow;
        m.rollbacks_deep = stats.rollbacks_deep;
        m.retries_exhausted = stats.retries_exhausted;
        m.purification_overhead = stats.purification_overhead;
        let n = trajectories.len().max(1) as f64;
        m.tool_calls_per_trajectory = trajectories
            .iter()
            .map(|t| t.tool_calls.len())
            .sum::<usize>() as f64
            / n;
        m.response_tokens_mean = trajectories
            .iter()
            .map(|t| t.response_tokens)
            .sum::<usize>() as f64
            / n;

        // 3-4. Rewards and group-normalized advantages.
        let mut rewards = Vec::with_capacity(trajectories.len());
        let mut solved = 0usize;
        for t in trajectories.iter_mut() {
            let item = &items[problem_index(t, &items)?];
            let r = self.reward.score(item, t);
            solved += self.reward.solved(item, t) as usize;
            t.reward = Some(r);
            rewards.push(r);
        }
        m.reward_mean = rewards.iter().map(|&r| r as f64).sum::<f64>() / n;
        m.accuracy = solved as f64 / n;
        let adv = group_advantages(&rewards, group);
        m.degenerate_groups = adv.degenerate_groups;

        // 5. Old (and reference) log-probs on the final sequences.
        let t_train = Instant::now();
        let train: Vec<Sample> = trajectories
            .iter()
            .zip(&adv.values)
            .filter_map(|(t, a)| Sample::new(t, (*a)?))
            .collect();
        m.trained_sequences = train.len();
        m.trained_tokens = train
            .iter()
            .map(|s| s.weight.iter().filter(|&&w| w > 0.0).count())
            .sum();
        let want_ref = self.config.grpo.kl_to_start || self.config.loss.kl_coef > 0.0;
        let chunks: Vec<Vec<usize>> = if train.is_empty() {
            Vec::new()
        } else {
            let per = train.len().div_ceil(mini_batches.min(train.len()));
            (0..train.len())
                .collect::<Vec<_>>()
                .chunks(per)
                .map(<[usize]>::to_vec)
                .collect()
        };
        // The first mini-batch trains the policy that is current now, so its
        // ratio is exactly 1 and its old log-probs are those of its own
        // forward pass: only later mini-batches need them computed up front.
        let first = chunks.first().map_or(0, Vec::len);
        let passes = (train.len() - first) + want_ref as usize * train.len() + train.len();
        let mut done = 0;
        let mut old: Vec<Option<Vec<f32>>> = vec![None; train.len()];
        let mut refs = Vec::with_capacity(train.len());
        for (i, s) in train.iter().enumerate() {
            if i >= first {
                old[i] = Some(self.trainer.logprobs(&s.tokens, true)?);
                done += 1;
            }
            if want_ref {
                refs.push(self.trainer.logprobs(&s.tokens, false)?);
                done += 1;
            }
            (self.progress)(Progress::Training {
                step: step + 1,
                done,
                total: passes,
            });
        }

        // 6. Mini-batch updates with the clipped loss.
        let mut loss = LossStats::default();
        let mut grad_norms = Vec::new();
        for chunk in &chunks {
            let shape = BatchShape::of(chunk.iter().map(|&i| train[i].weight.as_slice()));
            for &i in chunk {
                let s = &train[i];
                let cfg = &self.config.loss;
                let (old_i, ref_i) = (old[i].as_deref(), refs.get(i));
                let mut share = LossStats::default();
                let lp = self.trainer.accumulate(&s.tokens, |lp| {
                    let input = SeqLossInput {
                        logprob: lp,
                        old_logprob: old_i.unwrap_or(lp),
                        ref_logprob: ref_i.map(|r| r.as_slice()),
                        advantage: &s.advantage,
                        weight: &s.weight,
                    };
                    let (st, grad) = sequence_loss(cfg, &input, shape);
                    share = st;
                    grad
                })?;
                if old[i].is_none() {
                    old[i] = Some(lp);
                }
                // Clip fraction and KL are shares of their mini-batch; averaged over batches below.
                loss.add(&share);
                done += 1;
                (self.progress)(Progress::Training {
                    step: step + 1,
                    done,
                    total: passes,
                });
            }
            let u = self.trainer.update();
            grad_norms.push(u.grad_norm);
            m.lr = u.lr as f64;
        }

        // Entropy and KL to the start of the policy that sampled this step.
        let (mut nll, mut kl, mut w_sum) = (0f64, 0f64, 0f64);
        for (i, s) in train.iter().enumerate() {
            let old_i = old[i].as_deref().unwrap_or_default();
            for (t, &w) in s.weight.iter().enumerate() {
                if w > 0.0 && t < old_i.len() {
                    nll -= old_i[t] as f64;
                    w_sum += 1.0;
                    if want_ref {
                        let x = (refs[i][t] - old_i[t]) as f64;
                        kl += x.exp() - x - 1.0;
                    }
                }
            }
        }
        if w_sum > 0.0 {
            m.entropy = Some(nll / w_sum);
            m.kl_to_start = want_ref.then(|| kl / w_sum);
        }
        let batches = grad_norms.len().max(1) as f64;
        m.updates = grad_norms.len();
        m.loss = loss.loss / batches;
        m.clip_fraction = loss.clip_fraction / batches;
        m.approx_kl = loss.approx_kl / batches;
        m.grad_norm = grad_norms.iter().fold(0.0, |a, g| a + g) / batches;
        m.time_train_s = t_train.elapsed().as_secs_f64();
        let sequence_tokens: usize = train.iter().map(|s| s.tokens.len()).sum();
        m.train_tokens_per_s = sequence_tokens as f64 / m.time_train_s.max(1e-9);

        // 7. Hot swap.
        let t_swap = Instant::now();
        if m.updates > 0 {
            self.swap()?;
        }
        m.time_swap_s = t_swap.elapsed().as_secs_f64();

        if self.config.grpo.save_trajectories {
            let dir = self.run_dir.join("trajectories");
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let path = dir.join(format!("step-{:06}.jsonl", step + 1));
            write_jsonl(&path, &trajectories)?;
        }

        // 8. Metrics, then the checkpoint (a resume drops metrics of steps
        // after its checkpoint, so this order never loses a line it keeps).
        self.step += 1;
        m.time_step_s = t_step.elapsed().as_secs_f64();
        self.elapsed_s += m.time_step_s;
        self.metrics.append(&m).map_err(io(self.metrics.path()))?;
        let every = self.config.grpo.checkpoint_every;
        if self.step % every == 0 || self.step == self.config.grpo.steps {
            self.checkpoint()?;
        }
        (self.progress)(Progress::StepDone(Box::new(m.clone())));
        Ok(m)
    }

    /// Writes the adapter into the rollout engine.
    fn swap(&mut self) -> Result<(), GrpoError> {
        let dir = self.run_dir.join("adapters");
        self.trainer.hot_swap(self.session.policy(), &dir)?;
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

/// A trajectory ready to train on: token ids, and per next-token position
/// (`n - 1` of them) its advantage and loss weight (1 where the predicted
/// token is a kept model token).
struct Sample {
    tokens: Vec<u32>,
    advantage: Vec<f32>,
    weight: Vec<f32>,
}

impl Sample {
    fn new(t: &Trajectory, advantage: f32) -> Option<Sample> {
        if t.tokens.len() < 2 {
            return None;
        }
        let weight: Vec<f32> = t.roles[1..]
            .iter()
            .map(|r| (*r == Role::Model) as u8 as f32)
            .collect();
        if !weight.iter().any(|&w| w > 0.0) {
            return None;
        }
        Some(Sample {
            tokens: t.tokens.iter().map(|&x| x as u32).collect(),
            advantage: vec![advantage; weight.len()],
            weight,
        })
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
            threads: config.engine.threads,
            asset_dir: None,
        },
    )
}

/// A Fisher-Yates shuffle of `0..n`.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_permutation_and_seeded() {
        let a = shuffled(100, 1);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, shuffled(100, 1));
        assert_ne!(a, shuffled(100, 2));
    }
}
