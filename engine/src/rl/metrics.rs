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
    pub prompts: usize,
    /// Prompts skipped for being longer than `engine.max_prompt_tokens`.
    pub prompts_skipped: usize,
    pub rollouts: usize,
    pub reward_mean: f64,
    /// Share of rollouts the reward counts as solved.
    pub accuracy: f64,
    /// Groups whose rewards were all equal (no signal; skipped).
    pub degenerate_groups: usize,
    pub trained_sequences: usize,
    pub trained_tokens: usize,
    pub tool_calls_per_trajectory: f64,
    /// Failed calls per trajectory while collecting, and left after purification.
    pub failures_raw: f64,
    pub failures_kept: f64,
    pub rollbacks_shallow: usize,
    pub rollbacks_deep: usize,
    pub retries_exhausted: usize,
    /// Share of generated tokens spent on lookahead corrections.
    pub purification_overhead: f64,
    pub response_tokens_mean: f64,
    pub generated_tokens: usize,
    pub loss: f64,
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
    pub lr: f64,
    pub updates: usize,
    pub rollout_tokens_per_s: f64,
    pub train_tokens_per_s: f64,
    pub time_rollout_s: f64,
    /// Sandbox time summed over calls (they run in parallel with decoding).
    pub time_sandbox_s: f64,
    pub time_train_s: f64,
    pub time_swap_s: f64,
    /// The whole step (the checkpoint written after it excluded).
    pub time_step_s: f64,
}

/// The metrics file of a run.
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    pub fn new(run: &Path) -> MetricsLog {
        MetricsLog {
            path: run.join("metrics.jsonl"),
        }
    }

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
