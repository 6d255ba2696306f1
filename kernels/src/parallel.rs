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
