//! Evaluation: pass@1 as the mean over K samples per problem, with a 95 %
//! confidence interval over problems, and the agent's tool statistics.

use serde::Serialize;

use super::problem_index::{problem_index, ProblemIndexError};
use super::reward::Reward;
use crate::agent::{BatchStats, Trajectory};
use crate::session::{Session, SessionError};
use crate::tasks::Item;

/// Why an evaluation failed (the session's error boxed: it is large).
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Model, sandbox or agent.
    #[error(transparent)]
    Session(Box<SessionError>),
    /// A trajectory that does not name its problem.
    #[error(transparent)]
    ProblemIndex(#[from] ProblemIndexError),
}

impl From<SessionError> for EvalError {
    fn from(e: SessionError) -> Self {
        EvalError::Session(Box::new(e))
    }
}

/// One problem's result.
#[derive(Clone, Debug, Serialize)]
pub struct ProblemResult {
    /// The problem id.
    pub id: String,
    /// Samples the reward counts as solved.
    pub solved: usize,
    /// Samples drawn.
    pub samples: usize,
}

/// What `cleaner eval` prints and saves.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// Problems evaluated.
    pub problems: usize,
    /// Samples drawn.
    pub samples: usize,
    /// Rollback probability the agent ran with (1: purification on).
    pub purify: f64,
    /// pass@1: mean over problems of the share of solved samples.
    pub accuracy: f64,
    /// Standard error over problems (samples of one problem are correlated).
    pub stderr: f64,
    /// 95 % interval: normal over problem means, or Wilson's over all
    /// samples when the problem means do not vary.
    pub ci95: (f64, f64),
    /// Tool executions per trajectory (rolled back ones included).
    pub tool_calls_per_trajectory: f64,
    /// The agent's statistics (failures raw and kept, rollbacks, wall time).
    pub stats: BatchStats,
    /// Per-problem results, in dataset order.
    pub per_problem: Vec<ProblemResult>,
}

/// Runs `samples` rollouts of every item and scores them with `reward`.
pub fn evaluate(
    session: &mut Session,
    items: &[Item],
    samples: usize,
    reward: &dyn Reward,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(EvalReport, Vec<Trajectory>), EvalError> {
    let problems = session.problems(items)?;
    let seed = session.agent_config().sampling.seed;
    let (mut trajectories, stats) = session.run_problems(&problems, samples, seed, progress)?;
    let mut per_problem: Vec<ProblemResult> = items
        .iter()
        .map(|i| ProblemResult {
            id: i.id.clone(),
            solved: 0,
            samples: 0,
        })
        .collect();
    for t in trajectories.iter_mut() {
        let k = problem_index(t, items)?;
        let ok = reward.solved(&items[k], t);
        t.reward = Some(reward.score(&items[k], t));
        per_problem[k].samples += 1;
        per_problem[k].solved += ok as usize;
    }
    let means: Vec<f64> = per_problem
        .iter()
        .map(|p| p.solved as f64 / p.samples.max(1) as f64)
        .collect();
    let n = means.len().max(1) as f64;
    let accuracy = means.iter().sum::<f64>() / n;
    let var = if means.len() > 1 {
        means.iter().map(|m| (m - accuracy).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    let stderr = (var / n).sqrt();
    let ci95 = if stderr > 0.0 {
        (
            (accuracy - 1.96 * stderr).max(0.0),
            (accuracy + 1.96 * stderr).min(1.0),
        )
    } else {
        wilson(accuracy, trajectories.len() as f64)
    };
    let report = EvalReport {
        problems: items.len(),
        samples,
        purify: session.agent_config().rollback_probability,
        accuracy,
        stderr,
        ci95,
        tool_calls_per_trajectory: trajectories
            .iter()
            .map(|t| t.tool_calls.len())
            .sum::<usize>() as f64
            / trajectories.len().max(1) as f64,
        stats,
        per_problem,
    };
    Ok((report, trajectories))
}

/// Wilson score interval of a proportion `p` over `n` trials.
pub fn wilson(p: f64, n: f64) -> (f64, f64) {
    if n <= 0.0 {
        return (0.0, 1.0);
    }
    let z = 1.96f64;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z * ((p * (1.0 - p) + z * z / (4.0 * n)) / n).sqrt() / (1.0 + z * z / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_contains_the_proportion_and_stays_in_bounds() {
        let (lo, hi) = wilson(0.0, 10.0);
        assert_eq!(lo, 0.0);
        assert!(hi > 0.2 && hi < 0.35, "{hi}");
        let (lo, hi) = wilson(0.5, 100.0);
        assert!(
            (lo - 0.404).abs() < 1e-3 && (hi - 0.596).abs() < 1e-3,
            "{lo} {hi}"
        );
    }
}
