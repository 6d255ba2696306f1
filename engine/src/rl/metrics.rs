//! Per-step metrics of a run, one JSON object per line in `RUN/metrics.jsonl`
//! (appended and fsynced as each step ends; a resumed run first drops the
//! lines of steps after its checkpoint).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agent::trajectory::CallStatus;
use crate::agent::{BatchStats, Trajectory};
use crate::train::LossStats;
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
    /// Groups whose rewards were all equal (zero signal: advantage 0, their
    /// tokens counted in the token-mean's denominator, no passes run).
    pub degenerate_groups: usize,
    /// Trajectories trained on (non-degenerate groups, with model tokens).
    pub trained_sequences: usize,
    /// Their loss-masked (model) tokens.
    pub trained_tokens: usize,
    /// Model tokens of the degenerate groups' trajectories: in the
    /// denominator, not in the gradient.
    #[serde(default)]
    pub zero_signal_tokens: usize,
    /// Tool executions per trajectory, rolled back ones included.
    pub tool_calls_per_trajectory: f64,
    /// Failed calls per trajectory while collecting, and left after purification.
    pub failures_raw: f64,
    /// Failed calls per trajectory left after purification.
    pub failures_kept: f64,
    /// Failed calls by class (`"SyntaxError"`, ..., `"format"`,
    /// `"timeout"`), summed over the step's trajectories: made while
    /// collecting, rolled back ones included.
    #[serde(default)]
    pub failures_by_class_raw: BTreeMap<String, usize>,
    /// The same, counting only the calls left after purification (the ones
    /// the loss sees).
    #[serde(default)]
    pub failures_by_class_kept: BTreeMap<String, usize>,
    /// Calls whose code writes the answer as `\boxed{...}` (a SyntaxError
    /// in Python: the answer format leaking into the code), made while
    /// collecting. Purification rolls them back out of the loss, so a
    /// policy can learn to write them more (issue 20's rerun did).
    #[serde(default)]
    pub boxed_in_code_raw: usize,
    /// Those left after purification.
    #[serde(default)]
    pub boxed_in_code_kept: usize,
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
    /// The part of `time_train_s` spent on the forward-only passes: old
    /// log-probs of later mini-batches and the reference's.
    pub time_logprobs_s: f64,
    /// The part of `time_train_s` spent on forward + backward passes and
    /// AdamW updates.
    pub time_update_s: f64,
    /// Writing the adapter and swapping it into llama.cpp.
    pub time_swap_s: f64,
    /// The whole step (the checkpoint written after it excluded).
    pub time_step_s: f64,
}

impl StepMetrics {
    /// Records a step's rollouts: their statistics and `seconds` of wall time.
    pub(crate) fn record_rollouts(
        &mut self,
        trajectories: &[Trajectory],
        stats: &BatchStats,
        seconds: f64,
    ) {
        self.time_rollout_s = seconds;
        self.time_sandbox_s = stats.sandbox_ms / 1e3;
        self.rollouts = trajectories.len();
        self.generated_tokens = stats.generated_tokens;
        self.rollout_tokens_per_s = stats.generated_tokens as f64 / seconds.max(1e-9);
        self.failures_raw = stats.failures_per_trajectory_raw;
        self.failures_kept = stats.failures_per_trajectory_kept;
        self.failures_by_class_raw = stats.failures_by_class.clone();
        self.failures_by_class_kept = BTreeMap::new();
        self.boxed_in_code_raw = 0;
        self.boxed_in_code_kept = 0;
        for call in trajectories.iter().flat_map(|t| &t.tool_calls) {
            let boxed = call.code.contains("\\boxed");
            self.boxed_in_code_raw += boxed as usize;
            if !call.kept {
                continue;
            }
            self.boxed_in_code_kept += boxed as usize;
            if let CallStatus::Failed { class, .. } = &call.status {
                *self
                    .failures_by_class_kept
                    .entry(class.name().to_string())
                    .or_default() += 1;
            }
        }
        self.rollbacks_shallow = stats.rollbacks_shallow;
        self.rollbacks_deep = stats.rollbacks_deep;
        self.retries_exhausted = stats.retries_exhausted;
        self.purification_overhead = stats.purification_overhead;
        let n = trajectories.len().max(1) as f64;
        self.tool_calls_per_trajectory = trajectories
            .iter()
            .map(|t| t.tool_calls.len())
            .sum::<usize>() as f64
            / n;
        self.response_tokens_mean = trajectories
            .iter()
            .map(|t| t.response_tokens)
            .sum::<usize>() as f64
            / n;
    }

    /// Records a step's updates: `loss` summed over them (clip fraction and
    /// KL are shares of their mini-batch, so the sums average over
    /// mini-batches) and each update's gradient norm.
    pub(crate) fn record_updates(&mut self, loss: &LossStats, grad_norms: &[f64]) {
        let updates = grad_norms.len().max(1) as f64;
        self.updates = grad_norms.len();
        self.loss = loss.loss / updates;
        self.clip_fraction = loss.clip_fraction / updates;
        self.approx_kl = loss.approx_kl / updates;
        self.grad_norm = grad_norms.iter().fold(0.0, |a, g| a + g) / updates;
    }
}

/// The metrics file of a run.
pub struct MetricsLog {
    path: PathBuf,
}

/// Appends one JSON line per item to `path` (created if missing) in one
/// write, and syncs it to disk: a crash leaves at most a torn last line.
pub(crate) fn append_jsonl_synced<T: Serialize>(path: &Path, items: &[T]) -> std::io::Result<()> {
    let mut text = String::new();
    for item in items {
        text += &serde_json::to_string(item).map_err(std::io::Error::other)?;
        text.push('\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()
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
        append_jsonl_synced(&self.path, std::slice::from_ref(m))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::trajectory::{test_trajectory, ToolCallRecord};
    use crate::agent::FailureClass;
    use crate::sandbox::ErrorClass;

    fn call(code: &str, failed: Option<FailureClass>, kept: bool) -> ToolCallRecord {
        ToolCallRecord {
            turn: 0,
            code: code.into(),
            status: match failed {
                None => CallStatus::Ok,
                Some(class) => CallStatus::Failed {
                    class,
                    exception: class.name().into(),
                },
            },
            duration_ms: 1.0,
            kept,
        }
    }

    fn trajectory(tool_calls: Vec<ToolCallRecord>) -> Trajectory {
        Trajectory {
            tool_calls,
            ..test_trajectory("p", Some(0))
        }
    }

    /// Raw counts take every call, kept counts only those left in the
    /// trajectories; the boxed counter matches the code, whatever its status.
    #[test]
    fn failures_by_class_and_boxed_calls_count_raw_and_kept() {
        let syntax = Some(FailureClass::Error(ErrorClass::of_exception("SyntaxError")));
        let name = Some(FailureClass::Error(ErrorClass::of_exception("NameError")));
        let trajectories = vec![
            trajectory(vec![
                call("print(\\boxed{4})", syntax, false),
                call("print(4)", None, true),
            ]),
            trajectory(vec![
                call("print(\\boxed{5})", syntax, true),
                call("print(y)", name, false),
                call("print(x)", name, true),
                call("print('\\\\boxed{6}')", None, true),
            ]),
        ];
        let mut stats = BatchStats::default();
        stats.add_trajectories(&trajectories);
        let mut m = StepMetrics::default();
        m.record_rollouts(&trajectories, &stats, 1.0);
        let counts = |pairs: &[(&str, usize)]| -> BTreeMap<String, usize> {
            pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect()
        };
        assert_eq!(
            m.failures_by_class_raw,
            counts(&[("SyntaxError", 2), ("NameError", 2)])
        );
        assert_eq!(
            m.failures_by_class_kept,
            counts(&[("SyntaxError", 1), ("NameError", 1)])
        );
        assert_eq!((m.boxed_in_code_raw, m.boxed_in_code_kept), (3, 2));
        assert_eq!((m.failures_raw, m.failures_kept), (2.0, 1.0));
    }
}
