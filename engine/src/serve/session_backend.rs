//! The agent's [`Backend`] inside the server: every call goes to the shared
//! decoding loop as one [`SessionOp`] and waits for its answer, so a
//! server-side `code_interpreter` request runs the very agent `cleaner solve`
//! runs, on the decoder every other request uses (worker/sessions.rs).
//!
//! Text work (tokenizing observations, token pieces) needs only the model
//! and is done here, without a round trip.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use crate::agent::Backend;
use crate::rollout::{GenerateParams, Generation, RolloutError, SeqId};
use crate::serve::worker::{SessionId, SessionOp, SessionRequest, WorkerHandle};
use crate::{Model, Token};

/// What a session asks the loop for.
pub struct Admission {
    /// Sequences the agent may have open at once.
    pub slots: usize,
    /// Cache cells its sequences may hold at most.
    pub cells: usize,
    /// The LoRA adapter to decode with (`None`: the base model).
    pub adapter: Option<Arc<crate::LoraAdapter>>,
    /// Set when the client went away.
    pub cancelled: Arc<AtomicBool>,
}

/// One admitted session, driven by one agent.
pub struct SessionBackend {
    worker: WorkerHandle,
    id: SessionId,
    model: Arc<Model>,
    capacity: usize,
    cancelled: Arc<AtomicBool>,
    /// Sequences started and not yet returned finished by `step`: what the
    /// agent's `n_generating` counts.
    generating: HashSet<SeqId>,
}

impl SessionBackend {
    /// Queues a session and blocks until the loop admits it, refuses it, or
    /// drops it because `admission.cancelled` was set.
    pub fn open(
        worker: &WorkerHandle,
        model: Arc<Model>,
        admission: Admission,
    ) -> Result<SessionBackend, String> {
        let (reply, admitted) = channel();
        let Admission {
            slots,
            cells,
            adapter,
            cancelled,
        } = admission;
        worker.open_session(SessionRequest {
            slots,
            cells,
            adapter,
            cancelled: cancelled.clone(),
            reply,
        })?;
        let id = admitted
            .recv()
            .map_err(|_| "the request was cancelled before it started".to_string())??;
        Ok(SessionBackend {
            worker: worker.clone(),
            id,
            model,
            capacity: slots,
            cancelled,
            generating: HashSet::new(),
        })
    }

    /// Sends `op` (built around a reply channel) and waits for the answer.
    fn call<T>(
        &self,
        op: impl FnOnce(Sender<Result<T, RolloutError>>) -> SessionOp,
    ) -> Result<T, RolloutError> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(RolloutError::Interrupted(
                "the request was cancelled".into(),
            ));
        }
        let (tx, rx) = channel();
        self.worker.session(self.id, op(tx));
        rx.recv().unwrap_or_else(|_| {
            Err(RolloutError::Interrupted(
                "the decoding loop stopped (the server is shutting down)".into(),
            ))
        })
    }
}

impl Backend for SessionBackend {
    fn open_with(&mut self, tokens: &[Token]) -> Result<SeqId, RolloutError> {
        let tokens = tokens.to_vec();
        self.call(|r| SessionOp::OpenWith(tokens, r))
    }
    fn fork(&mut self, seq: SeqId) -> Result<SeqId, RolloutError> {
        self.call(|r| SessionOp::Fork(seq, r))
    }
    fn append(&mut self, seq: SeqId, tokens: &[Token]) -> Result<(), RolloutError> {
        let tokens = tokens.to_vec();
        self.call(|r| SessionOp::Append(seq, tokens, r))
    }
    fn truncate(&mut self, seq: SeqId, pos: usize) -> Result<(), RolloutError> {
        self.call(|r| SessionOp::Truncate(seq, pos, r))
    }
    fn start(&mut self, seq: SeqId, params: GenerateParams) -> Result<(), RolloutError> {
        self.call(|r| SessionOp::Start(seq, params, r))?;
        self.generating.insert(seq);
        Ok(())
    }
    fn step(&mut self) -> Result<Vec<(SeqId, Generation)>, RolloutError> {
        let finished = self.call(SessionOp::Step)?;
        for (seq, _) in &finished {
            self.generating.remove(seq);
        }
        Ok(finished)
    }
    fn n_generating(&self) -> usize {
        self.generating.len()
    }
    fn tokens(&self, seq: SeqId) -> Result<Vec<Token>, RolloutError> {
        self.call(|r| SessionOp::Tokens(seq, r))
    }
    fn close(&mut self, seq: SeqId) {
        self.generating.remove(&seq);
        self.worker.session(self.id, SessionOp::Close(seq));
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn tokenize(&self, text: &str) -> Result<Vec<Token>, RolloutError> {
        Ok(self.model.tokenize(text, false, true)?)
    }
    fn piece(&self, token: Token) -> Vec<u8> {
        self.model.piece(token).to_vec()
    }
}

impl Drop for SessionBackend {
    /// Whatever happened to the agent, its sequences and reservation go.
    fn drop(&mut self) {
        self.worker.session(self.id, SessionOp::End);
    }
}
