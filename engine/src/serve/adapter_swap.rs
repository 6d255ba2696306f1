//! Which LoRA adapter the decoding loop runs, and when it may change.
//!
//! The decoder applies one adapter to every sequence of a decode
//! ([`Decoder::set_adapter`]), so requests for different adapters cannot
//! share a batch: the loop runs the jobs of the adapter in force, and when
//! the job at the head of the queue wants another one it stops admitting,
//! lets the running jobs finish, swaps, and goes on. The head is never
//! skipped, so the queue stays first-come first-served and no adapter's
//! requests can starve another's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::rollout::Decoder;
use crate::LoraAdapter;

/// Whether the head of the queue may start now.
#[derive(Debug, PartialEq)]
pub enum Gate {
    /// The decoder runs the adapter it wants (swapped just now if need be).
    Open,
    /// It wants another adapter while sequences are still decoding: admit
    /// nothing until they have finished.
    Drain,
}

/// Makes `decoder` run `wanted` (`None`: the base model) if it can: at once
/// when it already does, by a swap when no sequence is open (none holds
/// cache entries computed with the old weights) and no agent session holds
/// the decoder (`sessions`: it may open sequences at any call), otherwise
/// not yet. Swaps are counted in `swaps`. Fails only if llama.cpp refuses
/// the adapter.
pub fn gate(
    decoder: &mut Decoder,
    wanted: Option<&Arc<LoraAdapter>>,
    sessions: bool,
    swaps: &AtomicU64,
) -> Result<Gate, String> {
    let same = match (decoder.adapter(), wanted) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    };
    if same {
        return Ok(Gate::Open);
    }
    if decoder.n_open() > 0 || sessions {
        return Ok(Gate::Drain);
    }
    decoder
        .set_adapter(wanted.cloned())
        .map_err(|e| format!("could not switch the LoRA adapter: {e}"))?;
    swaps.fetch_add(1, Ordering::Relaxed);
    Ok(Gate::Open)
}

/// On an idle loop: when the decoder is the only holder of its adapter (it
/// was unloaded and no request wants it any more), returns to the base model
/// so the adapter's memory is freed now rather than at the next swap.
pub fn release_unloaded(decoder: &mut Decoder) {
    if decoder.adapter().is_some_and(|a| Arc::strong_count(a) == 1) {
        if let Err(e) = decoder.set_adapter(None) {
            log::warn!("could not release an unloaded LoRA adapter: {e}");
        }
    }
}
