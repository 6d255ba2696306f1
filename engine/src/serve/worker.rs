//! The one decoding loop every request shares.
//!
//! A dedicated thread owns the [`Decoder`]; HTTP handlers submit [`Job`]s
//! through a channel and receive [`Event`]s on a channel of their own. Each
//! turn of the loop admits queued jobs while sequence slots and cache cells
//! allow, then runs one `step`: one decode call for every live sequence of
//! every request (continuous batching). A job whose event receiver is gone
//! (the client disconnected, the handler was dropped) is cancelled and its
//! sequences closed, which frees their cache cells.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use crate::rollout::{Decoder, FinishReason, GenerateParams, SeqId};
use crate::serve::adapter_swap::{self, Gate};
use crate::{LoraAdapter, Token};

mod sessions;
pub use sessions::{Finished, SessionId, SessionOp, SessionRequest};

/// One request's generation: `params.len()` choices of one prompt.
pub struct Job {
    /// The prompt's tokens.
    pub prompt: Vec<Token>,
    /// One entry per choice (they differ by seed).
    pub params: Vec<GenerateParams>,
    /// Alternatives to record per token (0: none).
    pub top_logprobs: usize,
    /// The LoRA adapter to decode with (`None`: the base model); jobs of
    /// different adapters never share a decode (`adapter_swap`).
    pub adapter: Option<Arc<LoraAdapter>>,
    /// Where the job's events go; dropping the receiver cancels the job.
    pub events: UnboundedSender<Event>,
}

impl Job {
    /// Cache cells the job may hold at most: the prompt (prefilled once and
    /// shared by the choices) plus every choice's new tokens.
    fn cells(&self) -> usize {
        self.prompt.len() + self.params.iter().map(|p| p.max_new_tokens).sum::<usize>()
    }

    /// Slots needed while admitting: one per choice, and a root the choices
    /// are forked from when there are several.
    fn slots(&self) -> usize {
        self.params.len() + usize::from(self.params.len() > 1)
    }
}

/// What a job's handler hears.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Choice `index` sampled these tokens since the last event.
    Tokens {
        /// The choice.
        index: usize,
        /// The tokens.
        tokens: Vec<Token>,
        /// log p of each under the model at temperature 1.
        logprobs: Vec<f32>,
        /// The most likely alternatives at each position (empty unless asked).
        top: Vec<Vec<(Token, f32)>>,
    },
    /// Choice `index` ended.
    Finished {
        /// The choice.
        index: usize,
        /// Why.
        finish: FinishReason,
    },
    /// The engine failed; the job is over.
    Failed(String),
}

/// Counters the loop publishes after every turn (`GET /health`, tests).
#[derive(Debug, Default)]
pub struct Status {
    /// Jobs waiting for slots or cells.
    pub queued: AtomicUsize,
    /// Jobs generating.
    pub running: AtomicUsize,
    /// Sequences open in the decoder.
    pub open_sequences: AtomicUsize,
    /// Cache positions held, as llama.cpp's memory reports them.
    pub cached_positions: AtomicUsize,
    /// Jobs cancelled because their client went away.
    pub cancelled: AtomicU64,
    /// Tokens sampled since start.
    pub tokens_generated: AtomicU64,
    /// Decode steps since start.
    pub steps: AtomicU64,
    /// Times the loop switched LoRA adapter (or back to the base model).
    pub adapter_swaps: AtomicU64,
}

enum Command {
    Submit(Job),
    CancelAll,
    OpenSession(SessionRequest),
    Session(SessionId, SessionOp),
}

/// The handlers' side of the loop; cheap to clone.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: Sender<Command>,
    status: Arc<Status>,
    cells: usize,
}

impl WorkerHandle {
    /// Queues a job. Fails only once the loop has stopped.
    pub fn submit(&self, job: Job) -> Result<(), String> {
        self.tx
            .send(Command::Submit(job))
            .map_err(|_| "the decoding loop has stopped".to_string())
    }

    /// Queues an agent session (a server-side `code_interpreter` request);
    /// `request.reply` hears when it is admitted.
    pub fn open_session(&self, request: SessionRequest) -> Result<(), String> {
        self.tx
            .send(Command::OpenSession(request))
            .map_err(|_| "the decoding loop has stopped".to_string())
    }

    /// Sends one call of session `id`'s agent; false once the loop has
    /// stopped (the op's reply channel is then dropped unanswered).
    pub fn session(&self, id: SessionId, op: SessionOp) -> bool {
        self.tx.send(Command::Session(id, op)).is_ok()
    }

    /// Cancels every job, queued or running, and refuses new ones (the end
    /// of a graceful shutdown's deadline).
    pub fn cancel_all(&self) {
        let _ = self.tx.send(Command::CancelAll);
    }

    /// The loop's counters.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Cache cells shared by all requests.
    pub fn cells(&self) -> usize {
        self.cells
    }
}

/// Starts the loop on its own thread; it ends when every handle is dropped.
/// At most `max_live` sequences generate at once (the server's `--slots`; the
/// decoder needs one slot more, for the root that a request's choices fork from).
pub fn spawn(
    decoder: Decoder,
    max_live: usize,
) -> std::io::Result<(WorkerHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let status = Arc::new(Status::default());
    let cells = decoder.n_ctx() as usize;
    let mut worker = Worker {
        decoder,
        rx,
        max_live,
        status: status.clone(),
        queue: VecDeque::new(),
        running: Vec::new(),
        reserved: 0,
        closing: false,
        sessions: HashMap::new(),
        session_queue: VecDeque::new(),
        next_session: 0,
    };
    let thread = std::thread::Builder::new()
        .name("cleaner-serve-decoder".into())
        .spawn(move || worker.run())?;
    Ok((WorkerHandle { tx, status, cells }, thread))
}

struct Running {
    job: Job,
    /// One per choice; `None` once it finished.
    seqs: Vec<Option<SeqId>>,
    /// Tokens already sent per choice.
    sent: Vec<usize>,
}

struct Worker {
    decoder: Decoder,
    rx: Receiver<Command>,
    max_live: usize,
    status: Arc<Status>,
    queue: VecDeque<Job>,
    running: Vec<Running>,
    /// Cells promised to running jobs and sessions.
    reserved: usize,
    /// Shutting down: new jobs are refused.
    closing: bool,
    /// Agent sessions admitted, by id (`sessions.rs`).
    sessions: HashMap<SessionId, sessions::Session>,
    /// Sessions waiting for slots or cells.
    session_queue: VecDeque<SessionRequest>,
    next_session: SessionId,
}

impl Worker {
    fn run(&mut self) {
        loop {
            loop {
                match self.rx.try_recv() {
                    Ok(c) => self.command(c),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.command(Command::CancelAll);
                        break;
                    }
                }
            }
            self.drop_disconnected();
            self.admit_sessions();
            self.admit();
            // Published before the step sends any token, so a client that
            // has seen its first tokens also sees its request counted.
            self.publish();
            if self.must_step() {
                self.step();
                self.publish();
                continue;
            }
            // Nothing to decode, and nothing queued can start until something
            // changes: wait for a command (a job, a session's call). Once
            // every handle is gone (after a shutdown drained what was sent),
            // stop.
            if self.sessions.is_empty() && self.running.is_empty() {
                adapter_swap::release_unloaded(&mut self.decoder);
            }
            match self.rx.recv() {
                Ok(c) => self.command(c),
                Err(_) => break,
            }
        }
    }

    /// Whether this turn decodes: a job is running or a session waits.
    fn must_step(&self) -> bool {
        !self.running.is_empty() || self.session_waits()
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Submit(job) if self.closing => {
                let _ = job
                    .events
                    .send(Event::Failed("the server is shutting down".into()));
            }
            Command::Submit(job) => self.queue.push_back(job),
            Command::OpenSession(r) if self.closing => {
                let _ = r.reply.send(Err("the server is shutting down".into()));
            }
            Command::OpenSession(r) => self.session_queue.push_back(r),
            Command::Session(id, op) => self.session_op(id, op),
            Command::CancelAll => {
                self.closing = true;
                self.queue.clear();
                for r in std::mem::take(&mut self.running) {
                    self.close(&r);
                }
                self.end_all_sessions("the server is shutting down and cancelled this request");
                self.reserved = 0;
            }
        }
    }

    fn close(&mut self, r: &Running) {
        for seq in r.seqs.iter().flatten() {
            self.decoder.close(*seq);
        }
    }

    /// Cancels jobs whose receiver is gone: queued ones are dropped, running
    /// ones have their sequences closed (freeing their cells).
    fn drop_disconnected(&mut self) {
        let before = self.queue.len();
        self.queue.retain(|j| !j.events.is_closed());
        let mut cancelled = (before - self.queue.len()) as u64;
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].job.events.is_closed() {
                let r = self.running.swap_remove(i);
                self.close(&r);
                self.reserved -= r.job.cells();
                cancelled += 1;
            } else {
                i += 1;
            }
        }
        cancelled += self.drop_cancelled_sessions();
        self.status
            .cancelled
            .fetch_add(cancelled, Ordering::Relaxed);
    }

    /// Starts queued jobs in arrival order while slots, cells and the
    /// adapter in force allow.
    fn admit(&mut self) {
        let cells = self.decoder.n_ctx() as usize;
        while let Some(front) = self.queue.front() {
            match adapter_swap::gate(
                &mut self.decoder,
                front.adapter.as_ref(),
                !self.sessions.is_empty(),
                &self.status.adapter_swaps,
            ) {
                Ok(Gate::Open) => {}
                Ok(Gate::Drain) => break,
                Err(e) => {
                    if let Some(job) = self.queue.pop_front() {
                        let _ = job.events.send(Event::Failed(e));
                    }
                    continue;
                }
            }
            // Sessions count with their whole reservation.
            let open = self.slots_taken();
            let free_slots = (self.decoder.n_seq_max() as usize).saturating_sub(open);
            let fits = front.slots() <= free_slots
                && open + front.params.len() <= self.max_live
                && self.reserved + front.cells() <= cells;
            if !fits && (!self.running.is_empty() || !self.sessions.is_empty()) {
                break;
            }
            let Some(job) = self.queue.pop_front() else {
                break;
            };
            if !fits {
                // It would never fit: the handlers' checks should have
                // refused it; fail it rather than wait forever.
                let _ = job.events.send(Event::Failed(format!(
                    "the request needs {} sequences and {} cache cells, more than this server has",
                    job.params.len(),
                    job.cells()
                )));
                continue;
            }
            match self.start(&job) {
                Ok(seqs) => {
                    self.reserved += job.cells();
                    let n = seqs.len();
                    self.running.push(Running {
                        job,
                        seqs: seqs.into_iter().map(Some).collect(),
                        sent: vec![0; n],
                    });
                }
                Err(e) => {
                    let _ = job.events.send(Event::Failed(e));
                }
            }
        }
    }

    /// Opens a job's sequences and starts them; on failure nothing stays open.
    fn start(&mut self, job: &Job) -> Result<Vec<SeqId>, String> {
        let mut opened = Vec::new();
        let result = (|| {
            let root = self.decoder.open_with(&job.prompt)?;
            opened.push(root);
            let seqs = if job.params.len() == 1 {
                vec![root]
            } else {
                // Forks share the root's prefilled cells; the root goes.
                let mut forks = Vec::new();
                for _ in &job.params {
                    let s = self.decoder.fork(root)?;
                    opened.push(s);
                    forks.push(s);
                }
                self.decoder.close(root);
                forks
            };
            for (seq, p) in seqs.iter().zip(&job.params) {
                self.decoder.start(*seq, p.clone())?;
                self.decoder.set_top_logprobs(*seq, job.top_logprobs)?;
            }
            Ok::<_, crate::RolloutError>(seqs)
        })();
        result.map_err(|e| {
            for s in &opened {
                self.decoder.close(*s);
            }
            e.to_string()
        })
    }

    /// One decode for every live sequence, then each job hears its tokens.
    fn step(&mut self) {
        let finished = match self.decoder.step() {
            Ok(f) => f,
            Err(e) => {
                // The batch failed as a whole: fail every running job, keep
                // serving the next ones.
                let msg = format!("the decoding step failed: {e}");
                log::error!("{msg}");
                for r in std::mem::take(&mut self.running) {
                    let _ = r.job.events.send(Event::Failed(msg.clone()));
                    self.close(&r);
                    self.reserved -= r.job.cells();
                }
                self.fail_waiting_sessions(&msg);
                return;
            }
        };
        self.status.steps.fetch_add(1, Ordering::Relaxed);
        let order: Vec<SeqId> = finished.iter().map(|(seq, _)| *seq).collect();
        let mut finished: HashMap<SeqId, _> = finished.into_iter().collect();
        // Events go out after the counters are published, so what a client
        // has heard (its request finished) is already in /health and /metrics.
        let mut outbox: Vec<(UnboundedSender<Event>, Event)> = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            let r = &mut self.running[i];
            for (index, slot) in r.seqs.iter_mut().enumerate() {
                let Some(seq) = *slot else { continue };
                let done = finished.remove(&seq);
                let Some(gen) = done.as_ref().or_else(|| self.decoder.partial(seq)) else {
                    continue;
                };
                let from = r.sent[index];
                if gen.tokens.len() > from {
                    let top = self
                        .decoder
                        .top_logprobs(seq)
                        .map(|t| t.get(from..).unwrap_or(&[]).to_vec())
                        .unwrap_or_default();
                    let new = gen.tokens.len() - from;
                    self.status
                        .tokens_generated
                        .fetch_add(new as u64, Ordering::Relaxed);
                    outbox.push((
                        r.job.events.clone(),
                        Event::Tokens {
                            index,
                            tokens: gen.tokens[from..].to_vec(),
                            logprobs: gen.logprobs[from..].to_vec(),
                            top,
                        },
                    ));
                    r.sent[index] = gen.tokens.len();
                }
                if let Some(gen) = done {
                    outbox.push((
                        r.job.events.clone(),
                        Event::Finished {
                            index,
                            finish: gen.finish,
                        },
                    ));
                    self.decoder.close(seq);
                    *slot = None;
                }
            }
            if r.seqs.iter().all(Option::is_none) {
                let r = self.running.swap_remove(i);
                self.reserved -= r.job.cells();
            } else {
                i += 1;
            }
        }
        // What the jobs did not take is the sessions', in the decoder's order.
        let rest = order
            .into_iter()
            .filter_map(|seq| finished.remove(&seq).map(|g| (seq, g)))
            .collect();
        self.deliver_to_sessions(rest);
        self.publish();
        for (to, event) in outbox {
            let _ = to.send(event);
        }
    }

    fn publish(&self) {
        let s = &self.status;
        s.running
            .store(self.running.len() + self.sessions.len(), Ordering::Relaxed);
        s.queued.store(
            self.queue.len() + self.session_queue.len(),
            Ordering::Relaxed,
        );
        s.open_sequences
            .store(self.decoder.n_open(), Ordering::Relaxed);
        s.cached_positions
            .store(self.decoder.cached_positions(), Ordering::Relaxed);
    }
}
