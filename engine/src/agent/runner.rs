//! The agent loop: generate a turn, parse its call, run it in the sandbox,
//! and on a failure let purification (SAAR, [`super::purify`]) decide what
//! follows: a lookahead correction, spliced over the failure when it comes
//! in. The rules live in `purify`; this file owns the sequences, the backend
//! and the sandbox threads.
//!
//! All rollouts of a batch live in one continuous-batching loop: a rollout
//! whose call runs in the sandbox is parked while the others keep decoding,
//! and sandbox calls run in parallel on their own threads.
//!
//! Each rollout mirrors its backend sequence token for token ([`Sequence`]),
//! so a splice is one `truncate` and one `append` of both: nothing before the
//! splice point is recomputed.

use std::sync::mpsc;
use std::time::Instant;

use super::backend::Backend;
use super::config::{AgentConfig, ConfigError};
use super::failure::FailureClass;
use super::finish::Finish;
use super::format::{truncate_middle, Call, ToolFormat};
use super::purify::{self, AfterFailure, CallStart, Failure, Purified};
use super::sequence::Sequence;
use super::stats::BatchStats;
use super::tool_result::{observation_text, status_of};
use super::trajectory::{
    CallStatus, PurificationEvent, PurifyResult, RepairKind, Role, Segment, SegmentKind,
    ToolCallRecord, Trajectory, FORMAT_VERSION,
};
use crate::llama::Token;
use crate::rollout::{FinishReason, GenerateParams, Generation, RolloutError, SeqId};
use crate::sampling::SamplingParams;
use crate::sandbox::{Execution, Sandbox};
use crate::seeds;
use crate::tasks::answer::last_boxed;

/// A problem with its prompt already tokenized.
#[derive(Clone, Debug)]
pub struct Problem {
    /// Problem id (copied into its trajectories).
    pub id: String,
    /// The rendered, tokenized prompt.
    pub prompt: Vec<Token>,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The rollout engine failed.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    /// A setting of the [`AgentConfig`] is out of range.
    #[error("invalid agent configuration")]
    Config(#[from] ConfigError),
    /// `Agent::run` was asked for no rollouts per problem.
    #[error("rollouts per problem must be at least 1")]
    NoRollouts,
    /// A group and the sequence that prefills its prompt do not fit the
    /// backend's sequence slots.
    #[error(
        "{group} rollouts per problem need {} sequence slots (one more prefills the prompt), \
         the context has {capacity}",
        group + 1
    )]
    TooFewSlots {
        /// Rollouts per problem asked for.
        group: usize,
        /// Sequences the backend holds at once.
        capacity: usize,
    },
    /// Every sandbox worker thread ended while calls were still out (a
    /// worker panicked): the rollouts waiting for them cannot go on.
    #[error("the sandbox's worker threads stopped with {0} calls still out")]
    SandboxStopped(usize),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum GenKind {
    Turn,
    Lookahead,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Queued,
    Generating(GenKind),
    /// Waiting for the sandbox; `true` when the call is a spliced correction.
    Sandbox(bool),
    Done(Finish),
}

/// A turn read back from its tokens (see `Agent::read_turn`).
struct TurnText {
    text: String,
    call: Option<CallStart>,
    call_text: String,
}

/// The failed position being purified: what failed, and where.
struct Pending {
    failure: Failure,
    /// End of the failed turn, where its error observation starts.
    call_end: usize,
}

struct Rollout {
    problem: usize,
    index: usize,
    /// The backend sequence (None before admission and once finished).
    id: Option<SeqId>,
    prompt_len: usize,
    seq: Sequence,
    turn_start: usize,
    turns: usize,
    response_tokens: usize,
    /// Token limit of the current turn when it started (a lookahead that
    /// corrects it gets the same).
    turn_budget: usize,
    correction_tokens: usize,
    /// Whether failures are still purified (off after spec steps 3, 7, 8).
    rollback: bool,
    /// Whether the trajectory was drawn for purification at all.
    purified: bool,
    attempts: usize,
    seed: u64,
    generations: u64,
    phase: Phase,
    pending: Option<Pending>,
    tool_calls: Vec<ToolCallRecord>,
    events: Vec<PurificationEvent>,
}

impl Rollout {
    fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done(_))
    }
}

/// Runs the agent over a batch of problems, `group` rollouts each.
pub struct Agent<'a, B: Backend> {
    backend: &'a mut B,
    sandbox: &'a Sandbox,
    format: ToolFormat,
    config: AgentConfig,
    /// Told (finished, total) each time rollouts finish.
    progress: Option<&'a mut dyn FnMut(usize, usize)>,
}

struct Job {
    rollout: usize,
    spliced: bool,
    code: String,
}

struct JobResult {
    rollout: usize,
    spliced: bool,
    code: String,
    exec: Result<Execution, String>,
}

impl<'a, B: Backend> Agent<'a, B> {
    /// An agent over `backend` and `sandbox`; the config is validated.
    pub fn new(
        backend: &'a mut B,
        sandbox: &'a Sandbox,
        format: ToolFormat,
        config: AgentConfig,
    ) -> Result<Self, AgentError> {
        config.validate()?;
        Ok(Agent {
            backend,
            sandbox,
            format,
            config,
            progress: None,
        })
    }

    /// Reports (finished, total) rollouts as they finish.
    pub fn with_progress(mut self, progress: &'a mut dyn FnMut(usize, usize)) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Collects `group` trajectories for every problem.
    pub fn run(
        &mut self,
        problems: &[Problem],
        group: usize,
    ) -> Result<(Vec<Trajectory>, BatchStats), AgentError> {
        if group == 0 {
            return Err(AgentError::NoRollouts);
        }
        let capacity = self.backend.capacity();
        if group + 1 > capacity {
            return Err(AgentError::TooFewSlots { group, capacity });
        }
        let t0 = Instant::now();
        let mut rollouts: Vec<Rollout> = Vec::new();
        for (p, problem) in problems.iter().enumerate() {
            for i in 0..group {
                let seed = seeds::rollout(self.config.sampling.seed, p as u64, i as u64);
                let purified = seeds::rollback_draw(seed) < self.config.rollback_probability;
                let mut r = Rollout {
                    problem: p,
                    index: i,
                    id: None,
                    prompt_len: problem.prompt.len(),
                    seq: Sequence::default(),
                    turn_start: problem.prompt.len(),
                    turns: 0,
                    response_tokens: 0,
                    turn_budget: 0,
                    correction_tokens: 0,
                    rollback: purified,
                    purified,
                    attempts: 0,
                    seed,
                    generations: 0,
                    phase: Phase::Queued,
                    pending: None,
                    tool_calls: Vec::new(),
                    events: Vec::new(),
                };
                r.seq
                    .push(&problem.prompt, Role::Prompt, None, SegmentKind::Prompt);
                rollouts.push(r);
            }
        }
        let n_workers = self.sandbox.config().warm.max(1);
        let sandbox = self.sandbox;
        let limits = self.config.limits.clone();
        let mut stats = BatchStats {
            problems: problems.len(),
            rollouts: rollouts.len(),
            ..BatchStats::default()
        };
        std::thread::scope(|scope| -> Result<(), AgentError> {
            let (job_tx, job_rx) = mpsc::channel::<Job>();
            let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
            let (res_tx, res_rx) = mpsc::channel::<JobResult>();
            for _ in 0..n_workers {
                let (rx, tx, limits) = (job_rx.clone(), res_tx.clone(), limits.clone());
                scope.spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => break,
                    };
                    let Ok(job) = job else { break };
                    let exec = sandbox.run(&job.code, &limits).map_err(|e| e.to_string());
                    if tx
                        .send(JobResult {
                            rollout: job.rollout,
                            spliced: job.spliced,
                            code: job.code,
                            exec,
                        })
                        .is_err()
                    {
                        break;
                    }
                });
            }
            drop(res_tx);
            let result = self.drive(problems, group, &mut rollouts, &job_tx, &res_rx, &mut stats);
            drop(job_tx);
            if result.is_err() {
                for r in &rollouts {
                    if let Some(id) = r.id {
                        self.backend.close(id);
                    }
                }
            }
            result
        })?;
        stats.wall_s = t0.elapsed().as_secs_f64();
        let trajectories: Vec<Trajectory> = rollouts
            .into_iter()
            .map(|r| self.finish(r, problems))
            .collect();
        stats.add_trajectories(&trajectories);
        Ok((trajectories, stats))
    }

    fn drive(
        &mut self,
        problems: &[Problem],
        group: usize,
        rollouts: &mut [Rollout],
        jobs: &mpsc::Sender<Job>,
        results: &mpsc::Receiver<JobResult>,
        stats: &mut BatchStats,
    ) -> Result<(), AgentError> {
        let mut next_problem = 0;
        let mut open = 0usize;
        // Results in from the sandbox, held until they are due.
        let mut ready: Vec<Option<JobResult>> = (0..rollouts.len()).map(|_| None).collect();
        loop {
            // Admit whole groups while slots allow: prompt prefilled once, forked.
            while next_problem < problems.len() && open + group < self.backend.capacity() {
                let root = self.backend.open_with(&problems[next_problem].prompt)?;
                for r in rollouts.iter_mut().filter(|r| r.problem == next_problem) {
                    r.id = Some(self.backend.fork(root)?);
                    open += 1;
                }
                self.backend.close(root);
                let ids: Vec<usize> = (0..rollouts.len())
                    .filter(|&k| rollouts[k].problem == next_problem)
                    .collect();
                for k in ids {
                    self.start_generation(&mut rollouts[k], GenKind::Turn)?;
                }
                next_problem += 1;
            }
            let sent_before_step: Vec<bool> = rollouts
                .iter()
                .map(|r| matches!(r.phase, Phase::Sandbox(_)))
                .collect();
            if self.backend.n_generating() > 0 {
                for (seq, generation) in self.backend.step()? {
                    if let Some(k) = rollouts.iter().position(|r| r.id == Some(seq)) {
                        self.on_generation(&mut rollouts[k], k, generation, jobs, stats)?;
                    }
                }
            }
            let due = self.due_results(rollouts, &sent_before_step, results, &mut ready)?;
            for (k, res) in due {
                self.on_result(&mut rollouts[k], res, stats)?;
            }
            // Free the slots of finished rollouts.
            let mut finished_now = 0;
            for r in rollouts.iter_mut() {
                if r.is_done() {
                    if let Some(id) = r.id.take() {
                        self.backend.close(id);
                        open -= 1;
                        finished_now += 1;
                    }
                }
            }
            if finished_now > 0 {
                if let Some(progress) = self.progress.as_mut() {
                    let done = rollouts.iter().filter(|r| r.is_done()).count();
                    progress(done, rollouts.len());
                }
            }
            if next_problem >= problems.len() && rollouts.iter().all(Rollout::is_done) {
                return Ok(());
            }
        }
    }

    /// The sandbox results that join the batch now, in rollout order.
    ///
    /// When a result joins is fixed by the tokens alone, never by how long
    /// its call ran: a call sent after one decode step is applied after the
    /// next (so it overlaps one step, and is waited for if it takes longer),
    /// or at once when nothing else is decoding. A seeded run therefore
    /// decodes the same batches, with the same KV cells, whatever the
    /// sandbox's timing (a loaded machine, a slow call), and so on the CPU
    /// the same tokens: batch history changes llama.cpp's rounding in
    /// attention, and a draw near a boundary between two tokens flips with
    /// it (docs/serve.md). The cost is a wait where a call outlasts a
    /// decode step; a GRPO step's calls take a fraction of a second in all.
    fn due_results(
        &self,
        rollouts: &[Rollout],
        sent_before_step: &[bool],
        results: &mpsc::Receiver<JobResult>,
        ready: &mut [Option<JobResult>],
    ) -> Result<Vec<(usize, JobResult)>, AgentError> {
        let decoding = self.backend.n_generating() > 0;
        let due: Vec<usize> = (0..rollouts.len())
            .filter(|&k| {
                matches!(rollouts[k].phase, Phase::Sandbox(_)) && (sent_before_step[k] || !decoding)
            })
            .collect();
        for res in results.try_iter() {
            let k = res.rollout;
            ready[k] = Some(res);
        }
        while due.iter().any(|&k| ready[k].is_none()) {
            let Ok(res) = results.recv() else {
                let out = due.iter().filter(|&&k| ready[k].is_none()).count();
                return Err(AgentError::SandboxStopped(out));
            };
            let k = res.rollout;
            ready[k] = Some(res);
        }
        Ok(due
            .into_iter()
            .filter_map(|k| ready[k].take().map(|res| (k, res)))
            .collect())
    }

    fn start_generation(&mut self, r: &mut Rollout, kind: GenKind) -> Result<(), AgentError> {
        let budget = match kind {
            GenKind::Turn => {
                r.turn_budget = self.config.turn_budget(r.response_tokens);
                r.turn_budget
            }
            // Corrections do not count against the response budget (spec
            // step 2): a lookahead gets the limit the turn it corrects had,
            // whatever that turn used of it.
            GenKind::Lookahead => r.turn_budget,
        };
        if budget == 0 {
            r.phase = Phase::Done(Finish::MaxTokens);
            return Ok(());
        }
        let (stop, stop_after) = self.format.stops();
        r.generations += 1;
        let params = GenerateParams {
            sampling: SamplingParams {
                seed: seeds::generation(r.seed, r.generations),
                ..self.config.sampling.clone()
            },
            max_new_tokens: budget,
            stop,
            stop_at_eog: true,
            stop_after,
        };
        let Some(id) = r.id else { return Ok(()) };
        match self.backend.start(id, params) {
            Ok(()) => r.phase = Phase::Generating(kind),
            Err(RolloutError::TooLong { .. }) => r.phase = Phase::Done(Finish::Context),
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// A turn's text and where its call marker is, found on the tokens'
    /// bytes; the call text is decoded from the marker's byte on.
    fn read_turn(&self, turn: &[Token]) -> TurnText {
        let pieces: Vec<Vec<u8>> = turn.iter().map(|&t| self.backend.piece(t)).collect();
        let call = purify::call_start(&pieces, self.format.marker());
        let bytes = pieces.concat();
        TurnText {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            call_text: call
                .map(|c| String::from_utf8_lossy(&bytes[c.byte..]).into_owned())
                .unwrap_or_default(),
            call,
        }
    }

    /// A turn or a lookahead is in: an answer ends the rollout, a call goes
    /// to the sandbox, a lookahead goes to purification first.
    fn on_generation(
        &mut self,
        r: &mut Rollout,
        k: usize,
        g: Generation,
        jobs: &mpsc::Sender<Job>,
        stats: &mut BatchStats,
    ) -> Result<(), AgentError> {
        let Phase::Generating(kind) = r.phase else {
            return Ok(());
        };
        let generated = r.seq.len();
        r.seq.push(
            &g.tokens,
            Role::Model,
            Some(&g.sampler_logprobs),
            SegmentKind::Answer,
        );
        stats.generated_tokens += g.tokens.len();
        // A lookahead turn is exactly the generation just pushed.
        let start = match kind {
            GenKind::Turn => r.turn_start,
            GenKind::Lookahead => generated,
        };
        let TurnText {
            text,
            call: call_at,
            call_text,
        } = self.read_turn(&r.seq.tokens[start..]);
        // A turn cut off by a length limit ends the trajectory before its
        // call is read: a call it opened is never run nor purified (the
        // reference stops on length before parsing).
        let cut = matches!(
            g.finish,
            FinishReason::MaxTokens | FinishReason::ContextLength
        );
        let call = if cut && kind == GenKind::Turn {
            Call::None
        } else {
            self.format.parse(&text)
        };
        r.seq
            .label_turn(start, call_at.map(|c| c.token), call != Call::None);
        match kind {
            GenKind::Turn => {
                r.response_tokens += g.tokens.len();
                if call == Call::None {
                    r.turns += 1;
                    r.phase = Phase::Done(match g.finish {
                        FinishReason::MaxTokens => Finish::MaxTokens,
                        FinishReason::ContextLength => Finish::Context,
                        FinishReason::Eog | FinishReason::Stop(_) => Finish::Answer,
                    });
                    return Ok(());
                }
                self.dispatch(r, k, call, false, jobs, stats)
            }
            GenKind::Lookahead => {
                stats.correction_tokens += g.tokens.len();
                r.correction_tokens += g.tokens.len();
                let lookahead = purify::Turn {
                    start,
                    len: g.tokens.len(),
                    text: &text,
                    call: call_at,
                    call_text: &call_text,
                    has_call: call != Call::None,
                };
                self.after_lookahead(r, k, &lookahead, call, jobs, stats)
            }
        }
    }

    /// Spec steps 3-5: purification decides on the failed turn and its
    /// lookahead; a splice is applied to the backend and to the mirror, and
    /// the grafted call runs next.
    fn after_lookahead(
        &mut self,
        r: &mut Rollout,
        k: usize,
        lookahead: &purify::Turn,
        call: Call,
        jobs: &mpsc::Sender<Job>,
        stats: &mut BatchStats,
    ) -> Result<(), AgentError> {
        let Some(pending) = r.pending.take() else {
            return Ok(());
        };
        let failed_turn = self.read_turn(&r.seq.tokens[r.turn_start..pending.call_end]);
        let failed = purify::Turn {
            start: r.turn_start,
            len: pending.call_end - r.turn_start,
            text: &failed_turn.text,
            call: failed_turn.call,
            call_text: &failed_turn.call_text,
            has_call: true,
        };
        let gamma = self.config.similarity_threshold;
        match purify::purify(&failed, lookahead, &pending.failure, gamma) {
            Purified::KeepAll(event) => {
                r.rollback = false;
                r.turns += 2; // the failed turn (kept, with its error) and the answer
                r.events.push(event);
                stats.no_tool_call_stops += 1;
                r.phase = Phase::Done(Finish::Answer);
                Ok(())
            }
            Purified::Splice(splice, event) => {
                let Some(id) = r.id else { return Ok(()) };
                self.backend.truncate(id, splice.cut)?;
                self.backend
                    .append(id, &r.seq.tokens[splice.graft.clone()])?;
                r.seq.splice(&splice);
                if let Some(last) = r.tool_calls.last_mut() {
                    last.kept = false;
                }
                match event.repair {
                    Some(RepairKind::Shallow) => stats.rollbacks_shallow += 1,
                    _ => stats.rollbacks_deep += 1,
                }
                stats.graft_tokens += splice.graft.len();
                r.events.push(event);
                // The spliced turn is the one purified next if its call fails.
                r.pending = Some(pending);
                self.dispatch(r, k, call, true, jobs, stats)
            }
        }
    }

    /// Sends a parsed call to the sandbox, or fails it at once when it could
    /// not be parsed (spec: an unparsable call is a failed call).
    fn dispatch(
        &mut self,
        r: &mut Rollout,
        k: usize,
        call: Call,
        spliced: bool,
        jobs: &mpsc::Sender<Job>,
        stats: &mut BatchStats,
    ) -> Result<(), AgentError> {
        match call {
            Call::None => Ok(()),
            Call::Code(code) => {
                self.submit(r, k, code, spliced, jobs);
                Ok(())
            }
            Call::Malformed(why) => {
                r.attempts += 1;
                let res = JobResult {
                    rollout: k,
                    spliced,
                    code: String::new(),
                    exec: Err(why),
                };
                self.on_result(r, res, stats)
            }
        }
    }

    fn submit(
        &mut self,
        r: &mut Rollout,
        k: usize,
        code: String,
        spliced: bool,
        jobs: &mpsc::Sender<Job>,
    ) {
        r.attempts += 1;
        r.phase = Phase::Sandbox(spliced);
        let _ = jobs.send(Job {
            rollout: k,
            spliced,
            code,
        });
    }

    /// A call's result is in: record it, then continue, or on a failure let
    /// purification say whether a lookahead follows (spec steps 2, 7, 8).
    fn on_result(
        &mut self,
        r: &mut Rollout,
        res: JobResult,
        stats: &mut BatchStats,
    ) -> Result<(), AgentError> {
        let (content, status, duration_ms) = match &res.exec {
            Ok(e) => (
                observation_text(e),
                status_of(e),
                e.wall.as_secs_f64() * 1e3,
            ),
            Err(why) => (
                format!("Error: the tool call could not be parsed: {why}"),
                CallStatus::Failed {
                    class: FailureClass::Format,
                    exception: "format".into(),
                },
                0.0,
            ),
        };
        stats.tool_calls += 1;
        stats.sandbox_ms += duration_ms;
        r.tool_calls.push(ToolCallRecord {
            turn: r.turns,
            code: res.code.clone(),
            status: status.clone(),
            duration_ms,
            kept: true,
        });
        let content = truncate_middle(&content, self.config.observation_chars);
        let Some(id) = r.id else { return Ok(()) };
        let CallStatus::Failed { class, .. } = status else {
            // A spliced call that ran: the purification at this position is done.
            if res.spliced && r.pending.take().is_some() {
                if let Some(last) = r.events.last_mut() {
                    last.result = PurifyResult::Grafted;
                }
            }
            return self.observe_and_continue(r, id, &content);
        };
        let retries = match r.pending.take() {
            Some(p) if res.spliced => p.failure.retries,
            _ => 0,
        };
        match purify::after_failure(r.rollback, r.attempts, retries, &self.config) {
            AfterFailure::Keep => {
                // Rollback still on means the attempt cap fired just now; on a
                // spliced call, in the middle of a position's retries: say so
                // on its event rather than leave it "retried".
                if r.rollback && res.spliced {
                    stats.attempt_cap_stops += 1;
                    if let Some(last) = r.events.last_mut() {
                        last.result = PurifyResult::AttemptCap;
                    }
                    log::debug!(
                        "rollout {}/{}: max_tool_attempts = {} reached during a retry; \
                         the failed correction stays",
                        r.problem,
                        r.index,
                        self.config.max_tool_attempts
                    );
                }
                r.rollback = false;
                self.observe_and_continue(r, id, &content)
            }
            AfterFailure::Exhausted { note } => {
                stats.retries_exhausted += 1;
                if let Some(last) = r.events.last_mut() {
                    last.result = PurifyResult::Exhausted;
                }
                r.rollback = false;
                self.observe_and_continue(r, id, &format!("{content}{note}"))
            }
            AfterFailure::Lookahead => {
                // Spec step 2: the error as an ordinary observation, then a lookahead.
                let call_end = r.seq.len();
                if !self.append_observation(r, id, &content)? {
                    return Ok(());
                }
                r.pending = Some(Pending {
                    failure: Failure {
                        turn: r.turns,
                        code: res.code,
                        error: content,
                        class,
                        retries: retries + 1,
                    },
                    call_end,
                });
                self.start_generation(r, GenKind::Lookahead)
            }
        }
    }

    fn observe_and_continue(
        &mut self,
        r: &mut Rollout,
        id: SeqId,
        content: &str,
    ) -> Result<(), AgentError> {
        if !self.append_observation(r, id, content)? {
            return Ok(());
        }
        r.turns += 1;
        r.turn_start = r.seq.len();
        if r.turns >= self.config.max_turns {
            r.phase = Phase::Done(Finish::MaxTurns);
            return Ok(());
        }
        self.start_generation(r, GenKind::Turn)
    }

    /// Appends the tool's reply after the current turn, tokenized once.
    /// Returns false when the context is full (the rollout is then finished).
    fn append_observation(
        &mut self,
        r: &mut Rollout,
        id: SeqId,
        content: &str,
    ) -> Result<bool, AgentError> {
        let turn_text = self.backend.detokenize(&r.seq.tokens[r.turn_start..]);
        let obs = self.format.observation(&turn_text, content);
        let obs_tokens = self.backend.tokenize(&obs)?;
        match self.backend.append(id, &obs_tokens) {
            Ok(()) => {}
            Err(RolloutError::TooLong { .. }) => {
                r.phase = Phase::Done(Finish::Context);
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
        r.seq.push(
            &obs_tokens,
            Role::Observation,
            None,
            SegmentKind::Observation,
        );
        Ok(true)
    }

    fn finish(&self, r: Rollout, problems: &[Problem]) -> Trajectory {
        let Phase::Done(finish) = r.phase else {
            unreachable!("trajectories are collected once every rollout is done")
        };
        let text = self.backend.detokenize(&r.seq.tokens[r.prompt_len..]);
        let mut segments: Vec<Segment> = Vec::new();
        for (i, &kind) in r.seq.kinds.iter().enumerate() {
            match segments.last_mut() {
                Some(s) if s.kind == kind && s.end == i => s.end = i + 1,
                _ => segments.push(Segment {
                    kind,
                    start: i,
                    end: i + 1,
                    text: String::new(),
                }),
            }
        }
        for s in &mut segments {
            s.text = self.backend.detokenize(&r.seq.tokens[s.start..s.end]);
        }
        let Sequence {
            tokens,
            roles,
            logprobs,
            ..
        } = r.seq;
        let mut t = Trajectory {
            format_version: FORMAT_VERSION,
            problem_id: problems[r.problem].id.clone(),
            problem_index: Some(r.problem),
            rollout: r.index,
            tokens,
            roles,
            sampler_logprobs: logprobs,
            segments,
            tool_calls: r.tool_calls,
            purification: r.events,
            purified: r.purified,
            turns: r.turns,
            response_tokens: r.response_tokens,
            correction_tokens: r.correction_tokens,
            text,
            answer: None,
            reward: None,
            finish,
        };
        t.answer = last_boxed(&t.final_turn());
        t
    }
}
