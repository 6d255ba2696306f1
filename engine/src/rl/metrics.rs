//! Per-step metrics of a run, one JSON object per line in `RUN/metrics.jsonl`
//! (appended and fsynced as each step ends; a resumed run first drops the
//! lines of steps after its checkpoint).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use cleaner_models::adapter_file::atomic_write;

/// What one GRPO step did. Times are wall seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepMetrics {
    /// 1-based number of the step.
    pub step: u64,
    /// Problems rolled out.
    pub prompts: usize,
    /// Prompts skipped for being longer than `engine.max_prompt_tokens`.
    pub prompts_skipped: usize,
    /// Trajectories collected.
    pub rollouts: usize,
    /// Mean reward over the step's trajectories.
    pub reward_mean: f64,
    /// Share of rollouts the reward counts as solved.
    pub accuracy: f64,
    /// Groups whose rewards were all equal (no signal; skipped).
    pub degenerate_groups: usize,
    /// Trajectories trained on (non-degenerate groups, with model tokens).
    pub trained_sequences: usize,
    /// Their loss-masked (model) tokens.
    pub trained_tokens: usize,
    /// Tool executions per trajectory, rolled back ones included.
    pub tool_calls_per_trajectory: f64,
    /// Failed calls per trajectory while collecting, and left after purification.
    pub failures_raw: f64,
    /// Failed calls per trajectory left after purification.
    pub failures_kept: f64,
    /// Rollbacks that kept the reasoning (similarity >= threshold).
    pub rollbacks_shallow: usize,
    /// Rollbacks that replaced reasoning and call.
    pub rollbacks_deep: usize,
    /// Positions whose retries ran out (error and note kept).
    pub retries_exhausted: usize,
    /// Share of generated tokens spent on lookahead corrections.
    pub purification_overhead: f64,
    /// Model tokens per trajectory counted against the budget.
    pub response_tokens_mean: f64,
    /// Tokens sampled, corrections included.
    pub generated_tokens: usize,
    /// Policy loss, mean over the step's mini-batches.
    pub loss: f64,
    /// Share of trained tokens whose ratio was clipped.
    pub clip_fraction: f64,
    /// Mean of old - new log-prob over trained tokens (KL to the sampling policy).
    pub approx_kl: f64,
    /// k3 KL of the policy (before this step's update) to the start (adapter off).
    pub kl_to_start: Option<f64>,
    /// Mean negative log-prob of the sampled tokens under the policy: an
    /// unbiased estimate of its entropy at temperature 1.
    pub entropy: Option<f64>,
    /// Global gradient norm before clipping, mean over the step's updates.
    pub grad_norm: f64,
    /// Learning rate of the last update.
    pub lr: f64,
    /// Optimizer updates applied.
    pub updates: usize,
    /// Generated tokens per second of rollout time.
    pub rollout_tokens_per_s: f64,
    /// Tokens of the trained sequences (prompt included) per second of
    /// training time (which includes the extra forward passes for old and
    /// reference log-probs).
    pub train_tokens_per_s: f64,
    /// Rollouts (decoding, sandbox waits, purification).
    pub time_rollout_s: f64,
    /// Sandbox time summed over calls (they run in parallel with decoding).
    pub time_sandbox_s: f64,
    /// Old/reference log-probs, forward and backward passes, updates.
    pub time_train_s: f64,
    /// Writing the adapter and swapping it into llama.cpp.
    pub time_swap_s: f64,
    /// The whole step (the checkpoint written after it excluded).
    pub time_step_s: f64,
}

/// The metrics file of a run.
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// The log of the run in `run`.
    pub fn new(run: &Path) -> MetricsLog {
        MetricsLog {
            path: run.join("metrics.jsonl"),
        }
    }

    /// Its file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one step's line and syncs it to disk.
    pub fn append(&self, m: &StepMetrics) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let line = serde_json::to_string(m).map_err(std::io::Error::other)?;
        writeln!(f, "{line}")?;
        f.sync_data()
    }

    /// Keeps only the lines of steps up to `step` (a resume from there).
    pub fn truncate_after(&self, step: u64) -> std::io::Result<()> {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Ok(());
        };
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| serde_json::from_str::<StepMetrics>(l).is_ok_and(|m| m.step <= step))
            .collect();
        let mut out = kept.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        atomic_write(&self.path, out.as_bytes())
    }

    /// Every step's metrics.
    pub fn read(path: &Path) -> std::io::Result<Vec<StepMetrics>> {
        let text = std::fs::read_to_string(path)?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    std::io::Error::other(format!("{} line {}: {e}", path.display(), i + 1))
                })
            })
            .collect()
    }
}
