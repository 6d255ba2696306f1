//! Which problems a GRPO step draws: the dataset is walked in a seeded
//! shuffle, a new one each epoch, `prompts_per_step` problems a step. The
//! order is a function of the run seed and the step alone, so a resumed run
//! draws what the uninterrupted one would have.

use crate::sampling::Rng;
use crate::seeds;

/// Dataset indices of the problems of step `step` (0-based), for a dataset
/// of `dataset_len` problems (at least one) and `per_step` problems a step.
pub fn problems_of_step(
    dataset_len: usize,
    per_step: usize,
    run_seed: u64,
    step: u64,
) -> Vec<usize> {
    let (n, p) = (dataset_len as u64, per_step as u64);
    let order = |epoch| shuffled(dataset_len, seeds::problem_order(run_seed, epoch));
    let mut epoch = step * p / n;
    let mut shuffle = order(epoch);
    (step * p..(step + 1) * p)
        .map(|global| {
            if global / n != epoch {
                epoch = global / n;
                shuffle = order(epoch);
            }
            shuffle[(global % n) as usize]
        })
        .collect()
}

/// A Fisher-Yates shuffle of `0..n`.
pub(crate) fn shuffled(n: usize, seed: u64) -> Vec<usize> {
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

    #[test]
    fn steps_walk_each_epoch_shuffle_in_order() {
        // 5 problems, 2 a step: steps 0-1 and the first of step 2 are epoch 0.
        let epoch0 = shuffled(5, seeds::problem_order(9, 0));
        let epoch1 = shuffled(5, seeds::problem_order(9, 1));
        assert_eq!(problems_of_step(5, 2, 9, 0), epoch0[0..2]);
        assert_eq!(problems_of_step(5, 2, 9, 1), epoch0[2..4]);
        assert_eq!(problems_of_step(5, 2, 9, 2), vec![epoch0[4], epoch1[0]]);
        // More problems a step than the dataset holds: epochs wrap within it.
        let both: Vec<usize> = epoch0.iter().chain(&epoch1[..2]).copied().collect();
        assert_eq!(problems_of_step(5, 7, 9, 0), both);
    }
}
