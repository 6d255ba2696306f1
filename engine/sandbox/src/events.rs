//! What a run reports to the caller waiting for it: that its output
//! overflowed the cap, or how `_start` ended. Every other module of the
//! sandbox may use these; they use nothing of the sandbox.

/// How `_start` ended.
#[derive(Clone, Debug)]
pub(super) enum Exit {
    Code(i32),
    Trap(String),
}

/// What the waiting caller hears about its execution.
#[derive(Debug)]
pub(super) enum Event {
    OutputOverflow,
    Finished(Exit),
}
