//! Tasks: problems with reference answers read from JSONL, and rewards.
//! (Issue 7 extends the verifier; this one covers GSM8K/AIME/AMC answers.)

pub mod dataset;
pub mod verify;

pub use dataset::{Dataset, DatasetError, Fields, Item};
pub use verify::{math_equal, normalize_answer};
