//! Where a step's time goes: named spans around the parts of a training step
//! (`let _t = profile::span("x W^T");`), timed only while a caller has turned
//! profiling on, and only on threads outside rayon's pool.
//!
//! The kernels run in parallel inside, but they are called one after another
//! from one thread, so the wall time between a span's start and end belongs
//! to that part alone. Spans nest: a span's own time leaves out the spans
//! opened inside it, so the parts add up to the time they cover. Spans opened
//! on rayon's workers (a kernel calling another inside its parallel loop)
//! are not timed: their wall time would count once per worker.
//!
//! Turned off (the default), a span costs one relaxed atomic load.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, Part>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// Per open span on this thread: the time its children took.
    static OPEN: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// The time one part took, summed over its spans.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Part {
    /// Seconds in the part's own spans, less the spans inside them.
    pub seconds: f64,
    /// How many spans of it ended.
    pub calls: u64,
}

/// Turns timing on or off for every thread (spans already open when it is
/// turned on are not timed).
pub fn set_enabled(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// The parts timed since the last call, by name, and starts afresh.
pub fn take() -> BTreeMap<&'static str, Part> {
    std::mem::take(&mut *TOTALS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Times the part `name` until the returned guard drops.
pub fn span(name: &'static str) -> Span {
    if !ON.load(Ordering::Relaxed) || rayon::current_thread_index().is_some() {
        return Span { open: None };
    }
    OPEN.with(|o| o.borrow_mut().push(0.0));
    Span {
        open: Some((name, Instant::now())),
    }
}

/// An open span; it is timed when it drops.
#[must_use = "the span ends when this guard drops"]
pub struct Span {
    open: Option<(&'static str, Instant)>,
}

impl Drop for Span {
    fn drop(&mut self) {
        let Some((name, start)) = self.open else {
            return;
        };
        let total = start.elapsed().as_secs_f64();
        let children = OPEN.with(|o| {
            let mut o = o.borrow_mut();
            let children = o.pop().unwrap_or(0.0);
            if let Some(parent) = o.last_mut() {
                *parent += total;
            }
            children
        });
        let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        let part = totals.entry(name).or_default();
        part.seconds += (total - children).max(0.0);
        part.calls += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::sleep;
    use std::time::Duration;

    // One test: the switch and the totals are process-wide.
    #[test]
    fn spans_add_their_own_time_and_nothing_when_off() {
        let _ = take();
        {
            let _off = span("off");
            sleep(Duration::from_millis(5));
        }
        assert!(take().is_empty(), "a span while off was timed");

        set_enabled(true);
        let wall = Instant::now();
        {
            let _outer = span("outer");
            sleep(Duration::from_millis(30));
            for _ in 0..2 {
                let _inner = span("inner");
                sleep(Duration::from_millis(20));
            }
        }
        let wall = wall.elapsed().as_secs_f64();
        // A span on a rayon worker is not timed.
        rayon::scope(|s| {
            s.spawn(|_| {
                let _w = span("worker");
                sleep(Duration::from_millis(5));
            })
        });
        set_enabled(false);
        let parts = take();
        let (outer, inner) = (parts["outer"], parts["inner"]);
        assert_eq!((outer.calls, inner.calls), (1, 2));
        assert!(!parts.contains_key("worker"), "{parts:?}");
        // Each part lasted at least its sleeps; together they cover the
        // outer span once (outer counting inner's time too would make the
        // sum at least 70 + 40 ms, past the wall time).
        assert!(inner.seconds >= 0.040, "inner {}", inner.seconds);
        assert!(outer.seconds >= 0.030, "outer {}", outer.seconds);
        assert!(
            outer.seconds + inner.seconds <= wall,
            "outer {} + inner {} > the block's wall time {wall}",
            outer.seconds,
            inner.seconds
        );
        assert!(take().is_empty(), "take starts afresh");
    }
}
