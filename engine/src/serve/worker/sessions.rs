//! Agent sessions: the loop's side of a server-side `code_interpreter`
//! request.
//!
//! Such a request runs the agent (engine/src/agent, the same code as
//! `cleaner solve` and training rollouts) on a thread of its own, over a
//! backend whose every call is one [`SessionOp`] sent here
//! (`serve::session_backend`). The loop owns the decoder, so the agent's
//! sequences share every decode with the other requests. A session holds the
//! slots and cells it was admitted with until it ends.
//!
//! The agent asks for a step when it needs its sequences to advance; the
//! loop decodes when some job is running or some session waits. When the
//! server is otherwise idle, the agent's sequences therefore advance only
//! when it asks, as over a decoder of its own, and it sees the same batches
//! (and trajectory) as `cleaner solve`. Under load they also advance in steps
//! taken for others; what finishes then is kept until the agent asks.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use super::Worker;
use crate::rollout::{GenerateParams, Generation, RolloutError, SeqId};
use crate::serve::adapter_swap::{self, Gate};
use crate::{LoraAdapter, Token};

/// A session's id in the loop.
pub type SessionId = u64;

/// A finished generation, as the agent's `step` returns it.
pub type Finished = Vec<(SeqId, Generation)>;

/// A request to open a session: the slots (sequences open at once) and
/// cache cells it may hold at most.
pub struct SessionRequest {
    /// Sequences the agent may have open at once.
    pub slots: usize,
    /// Cells its sequences may hold at most.
    pub cells: usize,
    /// The LoRA adapter its sequences decode with (`None`: the base model).
    pub adapter: Option<Arc<LoraAdapter>>,
    /// Set when the client went away: the session is ended by the loop.
    pub cancelled: Arc<AtomicBool>,
    /// Told the session's id once admitted, or why it cannot be.
    pub reply: Sender<Result<SessionId, String>>,
}

/// One call of the agent's backend.
pub enum SessionOp {
    /// `Backend::open_with`.
    OpenWith(Vec<Token>, Sender<Result<SeqId, RolloutError>>),
    /// `Backend::fork`.
    Fork(SeqId, Sender<Result<SeqId, RolloutError>>),
    /// `Backend::append`.
    Append(SeqId, Vec<Token>, Sender<Result<(), RolloutError>>),
    /// `Backend::truncate`.
    Truncate(SeqId, usize, Sender<Result<(), RolloutError>>),
    /// `Backend::start`.
    Start(SeqId, GenerateParams, Sender<Result<(), RolloutError>>),
    /// `Backend::tokens`.
    Tokens(SeqId, Sender<Result<Vec<Token>, RolloutError>>),
    /// `Backend::close`.
    Close(SeqId),
    /// `Backend::step`: answered after the next decode (or at once with
    /// what finished in decodes taken for others).
    Step(Sender<Result<Finished, RolloutError>>),
    /// The agent is done: close what is left, free the reservation.
    End,
}

/// A running session.
pub(super) struct Session {
    slots: usize,
    cells: usize,
    seqs: HashSet<SeqId>,
    /// Generations that finished while the agent was not waiting.
    finished: Finished,
    /// The agent's pending `step`.
    waiting: Option<Sender<Result<Finished, RolloutError>>>,
    cancelled: Arc<AtomicBool>,
    /// Held so an unloaded adapter stays alive until the session ends.
    adapter: Option<Arc<LoraAdapter>>,
}

fn same_adapter(a: Option<&Arc<LoraAdapter>>, b: Option<&Arc<LoraAdapter>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

fn gone(why: &str) -> RolloutError {
    RolloutError::Interrupted(why.to_string())
}

impl Worker {
    /// Admits queued sessions while slots, cells and the adapter in force
    /// allow (in arrival order; a session that does not fit waits, and so do
    /// the ones behind it).
    pub(super) fn admit_sessions(&mut self) {
        let cells = self.decoder.n_ctx() as usize;
        while let Some(front) = self.session_queue.front() {
            // Sessions of one adapter may run together, like jobs.
            let others = self
                .sessions
                .values()
                .any(|s| !same_adapter(s.adapter.as_ref(), front.adapter.as_ref()));
            match adapter_swap::gate(
                &mut self.decoder,
                front.adapter.as_ref(),
                others,
                &self.status.adapter_swaps,
            ) {
                Ok(Gate::Open) => {}
                Ok(Gate::Drain) => break,
                Err(e) => {
                    if let Some(r) = self.session_queue.pop_front() {
                        let _ = r.reply.send(Err(e));
                    }
                    continue;
                }
            }
            let fits = self.slots_taken() + front.slots <= self.decoder.n_seq_max() as usize
                && self.reserved + front.cells <= cells;
            let busy = !self.running.is_empty() || !self.sessions.is_empty();
            if !fits && busy {
                break;
            }
            let Some(req) = self.session_queue.pop_front() else {
                break;
            };
            if !fits {
                let _ = req.reply.send(Err(format!(
                    "the request needs {} sequences and {} cache cells, more than this server has",
                    req.slots, req.cells
                )));
                continue;
            }
            let id = self.next_session;
            self.next_session += 1;
            if req.reply.send(Ok(id)).is_err() {
                continue; // the request is gone already
            }
            self.reserved += req.cells;
            self.sessions.insert(
                id,
                Session {
                    slots: req.slots,
                    cells: req.cells,
                    seqs: HashSet::new(),
                    finished: Vec::new(),
                    waiting: None,
                    cancelled: req.cancelled,
                    adapter: req.adapter,
                },
            );
        }
    }

    /// Decoder slots held: every job's open sequences plus every session's
    /// whole reservation (open or not).
    pub(super) fn slots_taken(&self) -> usize {
        let session_open: usize = self.sessions.values().map(|s| s.seqs.len()).sum();
        let session_reserved: usize = self.sessions.values().map(|s| s.slots).sum();
        self.decoder.n_open() - session_open + session_reserved
    }

    /// Whether some session waits for a decode.
    pub(super) fn session_waits(&self) -> bool {
        self.sessions.values().any(|s| s.waiting.is_some())
    }

    /// Runs one call of session `id`'s agent.
    pub(super) fn session_op(&mut self, id: SessionId, op: SessionOp) {
        let Some(session) = self.sessions.get_mut(&id) else {
            reply_gone(op);
            return;
        };
        let owned = |s: &Session, seq: SeqId| {
            if s.seqs.contains(&seq) {
                Ok(())
            } else {
                Err(RolloutError::NotOpen(seq.0))
            }
        };
        let d = &mut self.decoder;
        match op {
            SessionOp::OpenWith(tokens, reply) => {
                let r = if session.seqs.len() < session.slots {
                    d.open_with(&tokens)
                } else {
                    Err(RolloutError::NoFreeSlot(session.slots as u32))
                };
                if let Ok(seq) = r {
                    session.seqs.insert(seq);
                }
                let _ = reply.send(r);
            }
            SessionOp::Fork(seq, reply) => {
                let r = owned(session, seq).and_then(|()| {
                    if session.seqs.len() < session.slots {
                        d.fork(seq)
                    } else {
                        Err(RolloutError::NoFreeSlot(session.slots as u32))
                    }
                });
                if let Ok(s) = r {
                    session.seqs.insert(s);
                }
                let _ = reply.send(r);
            }
            SessionOp::Append(seq, tokens, reply) => {
                let _ = reply.send(owned(session, seq).and_then(|()| d.append(seq, &tokens)));
            }
            SessionOp::Truncate(seq, pos, reply) => {
                let _ = reply.send(owned(session, seq).and_then(|()| d.truncate(seq, pos)));
            }
            SessionOp::Start(seq, params, reply) => {
                let _ = reply.send(owned(session, seq).and_then(|()| d.start(seq, params)));
            }
            SessionOp::Tokens(seq, reply) => {
                let r = owned(session, seq).and_then(|()| d.tokens(seq).map(|t| t.to_vec()));
                let _ = reply.send(r);
            }
            SessionOp::Close(seq) => {
                if session.seqs.remove(&seq) {
                    d.close(seq);
                    session.finished.retain(|(s, _)| *s != seq);
                }
            }
            SessionOp::Step(reply) => {
                let generating = session.seqs.iter().any(|&s| d.partial(s).is_some());
                if !session.finished.is_empty() || !generating {
                    let _ = reply.send(Ok(std::mem::take(&mut session.finished)));
                } else {
                    session.waiting = Some(reply);
                }
            }
            SessionOp::End => self.end_session(id, None),
        }
    }

    /// Closes session `id`'s sequences and frees its reservation; a pending
    /// step hears `why`.
    pub(super) fn end_session(&mut self, id: SessionId, why: Option<&str>) {
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        for seq in &s.seqs {
            self.decoder.close(*seq);
        }
        self.reserved -= s.cells;
        if let Some(w) = s.waiting {
            let _ = w.send(Err(gone(why.unwrap_or("the session ended"))));
        }
    }

    /// Ends every session whose client went away; returns how many.
    pub(super) fn drop_cancelled_sessions(&mut self) -> u64 {
        self.session_queue
            .retain(|r| !r.cancelled.load(Ordering::Relaxed));
        let gone: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.cancelled.load(Ordering::Relaxed))
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.end_session(*id, Some("the request was cancelled"));
        }
        gone.len() as u64
    }

    /// Ends every session and refuses queued ones (shutdown, or a failed
    /// decode when `why` says so).
    pub(super) fn end_all_sessions(&mut self, why: &str) {
        for r in self.session_queue.drain(..) {
            let _ = r.reply.send(Err(why.to_string()));
        }
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.end_session(id, Some(why));
        }
    }

    /// After a decode: what finished for sessions is kept for them (the
    /// jobs took theirs), and every waiting session hears its own.
    pub(super) fn deliver_to_sessions(&mut self, mut finished: Vec<(SeqId, Generation)>) {
        for s in self.sessions.values_mut() {
            let (mine, rest): (Vec<_>, Vec<_>) = finished
                .into_iter()
                .partition(|(seq, _)| s.seqs.contains(seq));
            s.finished.extend(mine);
            finished = rest;
            if let Some(w) = s.waiting.take() {
                let _ = w.send(Ok(std::mem::take(&mut s.finished)));
            }
        }
    }

    /// A failed decode: every waiting session hears it.
    pub(super) fn fail_waiting_sessions(&mut self, why: &str) {
        for s in self.sessions.values_mut() {
            if let Some(w) = s.waiting.take() {
                let _ = w.send(Err(gone(why)));
            }
        }
    }
}

/// Answers an op of a session the loop no longer has.
fn reply_gone(op: SessionOp) {
    let e = || gone("the request was cancelled or the server is shutting down");
    match op {
        SessionOp::OpenWith(_, r) | SessionOp::Fork(_, r) => drop(r.send(Err(e()))),
        SessionOp::Append(_, _, r) | SessionOp::Truncate(_, _, r) | SessionOp::Start(_, _, r) => {
            drop(r.send(Err(e())))
        }
        SessionOp::Tokens(_, r) => drop(r.send(Err(e()))),
        SessionOp::Step(r) => drop(r.send(Err(e()))),
        SessionOp::Close(_) | SessionOp::End => {}
    }
}
