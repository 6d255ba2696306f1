//! A raw output pointer shared by rayon tasks that write disjoint elements.

/// Shared mutable pointer. Whoever creates one promises that concurrent tasks
/// write disjoint elements and that the borrowed buffer outlives the tasks.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);

// SAFETY: see the type's contract: disjoint writes, buffer outlives the tasks.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(buf: &mut [f32]) -> Self {
        SharedOut(buf.as_mut_ptr())
    }
    /// A method, not `.0`: closures must capture the whole (Sync) wrapper.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Runs `task(i)` for every `i` in `0..n_tasks` on rayon's threads, the
/// calling thread among them.
///
/// From inside the pool this is a parallel iterator. From outside it (the
/// trainer's and the benchmarks' main thread), a parallel iterator hands
/// the whole job to the pool and puts the caller to sleep until it is done:
/// on the 2-vCPU VMs this project is measured on, that hand-over and the
/// wake-up cost about 20 us a call (a parallel loop over 14 empty tasks:
/// median 20-25 us, against 0.1 us from inside the pool), as much as a whole
/// one-token product with a 896 x 896 matrix. Here the caller takes tasks
/// too, and waits for the helpers it started by spinning, briefly, rather
/// than sleeping: they finish when the tasks run out, at about the same time.
pub(crate) fn for_each_task(n_tasks: usize, task: impl Fn(usize) + Sync) {
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let helpers = rayon::current_num_threads()
        .saturating_sub(1)
        .min(n_tasks.saturating_sub(1));
    if rayon::current_thread_index().is_some() || helpers == 0 {
        if helpers == 0 {
            (0..n_tasks).for_each(task);
        } else {
            (0..n_tasks).into_par_iter().for_each(&task);
        }
        return;
    }
    // One contiguous run of tasks per thread, each taken from its start
    // and, when a thread's own run is done, from the others': tasks handed
    // out in turn from one counter interleave the threads' memory, which
    // halved a one-token product with the 151936-row vocabulary matrix
    // (streamed from DRAM) against contiguous halves.
    let parts = helpers + 1;
    let ends: Vec<usize> = (1..=parts).map(|p| p * n_tasks / parts).collect();
    let next: Vec<AtomicUsize> = (0..parts)
        .map(|p| AtomicUsize::new(p * n_tasks / parts))
        .collect();
    let running = AtomicUsize::new(helpers);
    let take_tasks = |me: usize| {
        for r in (0..parts).map(|k| (me + k) % parts) {
            loop {
                let i = next[r].fetch_add(1, Ordering::Relaxed);
                if i >= ends[r] {
                    break;
                }
                task(i);
            }
        }
    };
    /// Counts a helper out however it ends, a panic included (the scope
    /// then re-raises the panic), so that the caller's wait ends.
    struct Done<'a>(&'a AtomicUsize);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Release);
        }
    }
    rayon::in_place_scope(|scope| {
        for helper in 1..=helpers {
            let (running, take_tasks) = (&running, &take_tasks);
            scope.spawn(move |_| {
                let _done = Done(running);
                take_tasks(helper);
            });
        }
        take_tasks(0);
        let mut spins = 0u32;
        while running.load(Ordering::Acquire) != 0 {
            if spins < 1 << 14 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                // A helper not yet started (the pool busy elsewhere): stop
                // burning the core it may need.
                std::thread::yield_now();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counts_after(n: usize) -> Vec<usize> {
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        for_each_task(n, |i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        hits.into_iter().map(|h| h.into_inner()).collect()
    }

    #[test]
    fn every_task_runs_once_from_outside_and_inside_the_pool() {
        for n in [0, 1, 2, 3, 14, 1000] {
            assert_eq!(
                counts_after(n),
                vec![1; n],
                "{n} tasks from outside the pool"
            );
            let inside = rayon::scope(|_| counts_after(n));
            assert_eq!(inside, vec![1; n], "{n} tasks from inside the pool");
        }
    }

    /// A task's panic reaches the caller (on a one-thread pool the caller
    /// runs the tasks itself, and the panic is its own).
    #[test]
    fn a_panicking_task_panics_the_caller_instead_of_hanging_it() {
        let caught = std::panic::catch_unwind(|| {
            for_each_task(64, |i| {
                if i == 40 {
                    panic!("task 40 failed");
                }
            })
        });
        assert!(caught.is_err());
    }
}
