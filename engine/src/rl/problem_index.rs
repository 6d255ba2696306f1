//! Which problem of a batch a trajectory answers: the index the agent
//! recorded when it built the trajectory, checked against the batch. A
//! trajectory without one, or with one the batch does not have, is an
//! error: scoring it against some other problem would train on a wrong
//! reward without a word.

use crate::agent::Trajectory;
use crate::tasks::Item;

/// Why a trajectory could not be matched to its problem.
#[derive(Debug, thiserror::Error)]
pub enum ProblemIndexError {
    /// The trajectory records no problem index (it was written before
    /// trajectories recorded one).
    #[error(
        "rollout {rollout} of problem {problem_id:?} records no problem index \
         (written before trajectories carried one), so it cannot be scored"
    )]
    Missing {
        /// The trajectory's problem id.
        problem_id: String,
        /// The rollout within its group.
        rollout: usize,
    },
    /// The index is past the end of the batch.
    #[error(
        "rollout {rollout} of problem {problem_id:?} has problem index {index}, \
         expected one below {problems} (the problems of its batch)"
    )]
    OutOfRange {
        /// The trajectory's problem id.
        problem_id: String,
        /// The rollout within its group.
        rollout: usize,
        /// The recorded index.
        index: usize,
        /// Problems in the batch.
        problems: usize,
    },
    /// The problem at the index has another id than the trajectory names.
    #[error(
        "rollout {rollout} of problem {problem_id:?} has problem index {index}, \
         but problem {index} of its batch is {expected:?}"
    )]
    Mismatch {
        /// The trajectory's problem id.
        problem_id: String,
        /// The rollout within its group.
        rollout: usize,
        /// The recorded index.
        index: usize,
        /// The id of the problem at that index.
        expected: String,
    },
}

/// The index in `items` (the batch the agent ran, in its order) of the
/// problem `t` answers.
pub fn problem_index(t: &Trajectory, items: &[Item]) -> Result<usize, ProblemIndexError> {
    let index = t.problem_index.ok_or_else(|| ProblemIndexError::Missing {
        problem_id: t.problem_id.clone(),
        rollout: t.rollout,
    })?;
    let item = items
        .get(index)
        .ok_or_else(|| ProblemIndexError::OutOfRange {
            problem_id: t.problem_id.clone(),
            rollout: t.rollout,
            index,
            problems: items.len(),
        })?;
    if item.id != t.problem_id {
        return Err(ProblemIndexError::Mismatch {
            problem_id: t.problem_id.clone(),
            rollout: t.rollout,
            index,
            expected: item.id.clone(),
        });
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::trajectory::{read_jsonl, test_trajectory as trajectory, write_jsonl};

    fn items(ids: &[&str]) -> Vec<Item> {
        ids.iter()
            .map(|id| Item {
                id: (*id).into(),
                question: String::new(),
                answer: String::new(),
            })
            .collect()
    }

    #[test]
    fn the_recorded_index_names_the_problem() {
        let batch = items(&["a", "b", "a"]);
        // A problem drawn twice in one batch: each copy keeps its own index.
        assert_eq!(problem_index(&trajectory("a", Some(2)), &batch).unwrap(), 2);
        assert_eq!(problem_index(&trajectory("b", Some(1)), &batch).unwrap(), 1);
    }

    #[test]
    fn a_missing_or_wrong_index_is_an_error_not_problem_zero() {
        let batch = items(&["a", "b"]);
        let e = problem_index(&trajectory("a", None), &batch).unwrap_err();
        assert!(
            matches!(e, ProblemIndexError::Missing { rollout: 1, .. }),
            "{e}"
        );
        let e = problem_index(&trajectory("b", Some(2)), &batch).unwrap_err();
        assert!(
            matches!(
                e,
                ProblemIndexError::OutOfRange {
                    index: 2,
                    problems: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("below 2"), "{e}");
        let e = problem_index(&trajectory("b", Some(0)), &batch).unwrap_err();
        assert!(
            matches!(e, ProblemIndexError::Mismatch { index: 0, .. }),
            "{e}"
        );
    }

    #[test]
    fn trajectories_written_before_the_index_still_load() {
        // A line as builds before the index wrote it: no `problem_index` key.
        let mut old = serde_json::to_value(trajectory("a", Some(0))).unwrap();
        old.as_object_mut().unwrap().remove("problem_index");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.jsonl");
        std::fs::write(&path, format!("{old}\n")).unwrap();
        let back = read_jsonl(&path).unwrap();
        assert_eq!(back, vec![trajectory("a", None)]);
        // And the index survives a round trip.
        let fresh = vec![trajectory("b", Some(3))];
        write_jsonl(&path, &fresh).unwrap();
        assert_eq!(read_jsonl(&path).unwrap(), fresh);
    }
}
