//! Per-batch statistics of the agent and of purification.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::trajectory::{CallStatus, Trajectory};

/// Statistics of one `Agent::run`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BatchStats {
    /// Problems run.
    pub problems: usize,
    /// Trajectories collected.
    pub rollouts: usize,
    /// Tool executions (including those rolled back).
    pub tool_calls: usize,
    /// Failed executions per trajectory while collecting, and left in the
    /// final trajectories.
    pub failures_per_trajectory_raw: f64,
    /// Failed executions per trajectory left after purification.
    pub failures_per_trajectory_kept: f64,
    /// Failed executions by class (all, including rolled back).
    pub failures_by_class: BTreeMap<String, usize>,
    /// Grafts that kept the old reasoning.
    pub rollbacks_shallow: usize,
    /// Grafts that replaced reasoning and call.
    pub rollbacks_deep: usize,
    /// Positions whose retries ran out.
    pub retries_exhausted: usize,
    /// Positions whose retries the tool-attempt cap cut short.
    #[serde(default)]
    pub attempt_cap_stops: usize,
    /// Lookaheads that answered without a call (purification stopped).
    pub no_tool_call_stops: usize,
    /// Tokens sampled in total, and for lookahead corrections.
    pub generated_tokens: usize,
    /// Tokens sampled in lookahead corrections.
    pub correction_tokens: usize,
    /// Tokens prefilled for grafts.
    pub graft_tokens: usize,
    /// Share of generated tokens spent on corrections.
    pub purification_overhead: f64,
    /// Sandbox time summed over executions.
    pub sandbox_ms: f64,
    /// Wall time of the run.
    pub wall_s: f64,
}

impl BatchStats {
    pub(crate) fn add_trajectories(&mut self, ts: &[Trajectory]) {
        let n = ts.len().max(1) as f64;
        self.failures_per_trajectory_raw =
            ts.iter().map(|t| t.failures_raw()).sum::<usize>() as f64 / n;
        self.failures_per_trajectory_kept =
            ts.iter().map(|t| t.failures_kept()).sum::<usize>() as f64 / n;
        for t in ts {
            for c in &t.tool_calls {
                if let CallStatus::Failed { class, .. } = &c.status {
                    *self
                        .failures_by_class
                        .entry(class.name().to_string())
                        .or_default() += 1;
                }
            }
        }
        self.purification_overhead = if self.generated_tokens > 0 {
            self.correction_tokens as f64 / self.generated_tokens as f64
        } else {
            0.0
        };
    }
}
