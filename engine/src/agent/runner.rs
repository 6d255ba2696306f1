//! The agent loop with inline purification (SAAR, `shared/docs/cleaner.md`).
//!
//! All rollouts of a batch live in one continuous-batching loop: a rollout
//! whose call runs in the sandbox is parked while the others keep decoding,
//! and sandbox calls run in parallel on their own threads.
//!
//! Each rollout mirrors its backend sequence token for token (`tokens`,
//! `roles`, `logprobs`, `kinds`), so a rollback is one `truncate` of both and
//! a graft one `append`: nothing before the splice point is recomputed.

use std::sync::mpsc;
use std::time::Instant;

use super::answer::last_boxed;
use super::backend::Backend;
use super::config::{AgentConfig, EXHAUSTED_NOTE};
use super::format::{truncate_middle, Call, ToolFormat};
use super::similarity::ratio;
use super::stats::BatchStats;
use super::trajectory::{
    CallStatus, PurificationEvent, PurifyResult, RepairKind, Role, Segment, SegmentKind,
    ToolCallRecord, Trajectory, FORMAT_VERSION,
};
use crate::llama::Token;
use crate::rollout::{FinishReason, GenerateParams, Generation, RolloutError, SeqId};
use crate::sampling::SamplingParams;
use crate::sandbox::{Execution, Outcome, Sandbox};
use crate::seeds;

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
    /// A setting cannot work, explained.
    #[error("invalid agent configuration: {0}")]
    Config(String),
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
    Done,
}

/// The failed position being purified.
struct Pending {
    /// Split token of the turn that failed last (R_old) and its call text.
    old_split: Option<usize>,
    old_call_text: String,
    failed_code: String,
    error: String,
    error_class: String,
    /// Lookahead corrections spent at this position.
    retries: usize,
    /// Where the lookahead turn starts (after the error observation).
    lookahead_start: usize,
}

struct Rollout {
    problem: usize,
    index: usize,
    seq: Option<SeqId>,
    prompt_len: usize,
    tokens: Vec<Token>,
    roles: Vec<Role>,
    logprobs: Vec<f32>,
    kinds: Vec<SegmentKind>,
    turn_start: usize,
    turns: usize,
    response_tokens: usize,
    correction_tokens: usize,
    rollback: bool,
    purified: bool,
    attempts: usize,
    seed: u64,
    generations: u64,
    phase: Phase,
    pending: Option<Pending>,
    tool_calls: Vec<ToolCallRecord>,
    events: Vec<PurificationEvent>,
    finish: String,
}

impl Rollout {
    fn push(&mut self, tokens: &[Token], role: Role, logprobs: Option<&[f32]>, kind: SegmentKind) {
        self.tokens.extend_from_slice(tokens);
        self.roles.extend(std::iter::repeat_n(role, tokens.len()));
        match logprobs {
            Some(l) => self.logprobs.extend_from_slice(l),
            None => self.logprobs.extend(std::iter::repeat_n(0.0, tokens.len())),
        }
        self.kinds.extend(std::iter::repeat_n(kind, tokens.len()));
    }

    fn cut(&mut self, len: usize) {
        self.tokens.truncate(len);
        self.roles.truncate(len);
        self.logprobs.truncate(len);
        self.kinds.truncate(len);
    }

    /// Marks `[from, to)` as reasoning up to `split` and call from there (or
    /// all answer when there is no call).
    fn label_turn(&mut self, from: usize, split: Option<usize>, has_call: bool) {
        for k in from..self.kinds.len() {
            self.kinds[k] = match (has_call, split) {
                (false, _) => SegmentKind::Answer,
                (true, Some(s)) if k < from + s => SegmentKind::Reasoning,
                (true, _) => SegmentKind::Call,
            };
        }
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
        config.validate().map_err(AgentError::Config)?;
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
        if group == 0 || group + 1 > self.backend.capacity() {
            return Err(AgentError::Config(format!(
                "{group} rollouts per problem need {} sequence slots, the context has {}",
                group + 1,
                self.backend.capacity()
            )));
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
                    seq: None,
                    prompt_len: problem.prompt.len(),
                    tokens: Vec::new(),
                    roles: Vec::new(),
                    logprobs: Vec::new(),
                    kinds: Vec::new(),
                    turn_start: problem.prompt.len(),
                    turns: 0,
                    response_tokens: 0,
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
                    finish: String::new(),
                };
                r.push(&problem.prompt, Role::Prompt, None, SegmentKind::Prompt);
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
                    if let Some(seq) = r.seq {
                        self.backend.close(seq);
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
        loop {
            // Admit whole groups while slots allow: prompt prefilled once, forked.
            while next_problem < problems.len() && open + group < self.backend.capacity() {
                let root = self.backend.open_with(&problems[next_problem].prompt)?;
                for r in rollouts.iter_mut().filter(|r| r.problem == next_problem) {
                    let seq = self.backend.fork(root)?;
                    r.seq = Some(seq);
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
            if self.backend.n_generating() > 0 {
                for (seq, generation) in self.backend.step()? {
                    if let Some(k) = rollouts.iter().position(|r| r.seq == Some(seq)) {
                        self.on_generation(&mut rollouts[k], k, generation, jobs, stats)?;
                    }
                }
            }
            let waiting = rollouts
                .iter()
                .any(|r| matches!(r.phase, Phase::Sandbox(_)));
            let block = waiting && self.backend.n_generating() == 0;
            let mut got: Vec<JobResult> = Vec::new();
            if block {
                if let Ok(r) = results.recv() {
                    got.push(r);
                }
            }
            got.extend(results.try_iter());
            for res in got {
                let k = res.rollout;
                self.on_result(&mut rollouts[k], res, stats)?;
            }
            // Free the slots of finished rollouts.
            let mut finished_now = 0;
            for r in rollouts.iter_mut() {
                if r.phase == Phase::Done {
                    if let Some(seq) = r.seq.take() {
                        self.backend.close(seq);
                        open -= 1;
                        finished_now += 1;
                    }
                }
            }
            if finished_now > 0 {
                if let Some(progress) = self.progress.as_mut() {
                    let done = rollouts.iter().filter(|r| r.phase == Phase::Done).count();
                    progress(done, rollouts.len());
                }
            }
            if next_problem >= problems.len() && rollouts.iter().all(|r| r.phase == Phase::Done) {
                return Ok(());
            }
        }
    }

    fn start_generation(&mut self, r: &mut Rollout, kind: GenKind) -> Result<(), AgentError> {
        let budget = match kind {
            GenKind::Turn => self
                .config
                .max_response_tokens
                .saturating_sub(r.response_tokens)
                .min(self.config.max_turn_tokens),
            // Corrections do not count against the response budget (spec step 2).
            GenKind::Lookahead => self.config.max_turn_tokens,
        };
        if budget == 0 {
            r.finish = "max_tokens".into();
            r.phase = Phase::Done;
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
        let Some(seq) = r.seq else { return Ok(()) };
        match self.backend.start(seq, params) {
            Ok(()) => r.phase = Phase::Generating(kind),
            Err(RolloutError::TooLong { .. }) => {
                r.finish = "context".into();
                r.phase = Phase::Done;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Byte offset of the call marker in `text` and the index of the token
    /// that contains it (the splice point within the turn).
    fn split(&self, turn: &[Token], text: &str) -> Option<(usize, usize)> {
        let at = text.rfind(self.format.marker())?;
        let mut end = 0usize;
        for (k, &t) in turn.iter().enumerate() {
            end += self.backend.piece(t).len();
            if end > at {
                return Some((at, k));
            }
        }
        None
    }

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
        let from = r.tokens.len();
        r.push(
            &g.tokens,
            Role::Model,
            Some(&g.sampler_logprobs),
            SegmentKind::Answer,
        );
        stats.generated_tokens += g.tokens.len();
        let start = match kind {
            GenKind::Turn => r.turn_start,
            GenKind::Lookahead => r
                .pending
                .as_ref()
                .map(|p| p.lookahead_start)
                .unwrap_or(from),
        };
        let turn: Vec<Token> = r.tokens[start..].to_vec();
        let text = self.backend.detokenize(&turn);
        let call = self.format.parse(&text);
        let split = self.split(&turn, &text);
        r.label_turn(start, split.map(|s| s.1), call != Call::None);
        match kind {
            GenKind::Turn => {
                r.response_tokens += g.tokens.len();
                match call {
                    Call::None => {
                        r.turns += 1;
                        r.finish = match g.finish {
                            FinishReason::MaxTokens => "max_tokens",
                            FinishReason::ContextLength => "context",
                            _ => "answer",
                        }
                        .into();
                        r.phase = Phase::Done;
                    }
                    call => self.dispatch(r, k, call, false, jobs, stats)?,
                }
            }
            GenKind::Lookahead => {
                stats.correction_tokens += g.tokens.len();
                r.correction_tokens += g.tokens.len();
                let Some(mut p) = r.pending.take() else {
                    return Ok(());
                };
                if call == Call::None {
                    // Spec step 3: keep R_old, E, R_new; no more purification.
                    r.rollback = false;
                    r.turns += 2; // R_old (kept, with its error) and R_new (the answer)
                    r.events.push(event(
                        &p,
                        String::new(),
                        None,
                        None,
                        PurifyResult::NoToolCall,
                        g.tokens.len(),
                        0,
                        r.turn_start,
                    ));
                    stats.no_tool_call_stops += 1;
                    if let Some(e) = r.events.last_mut() {
                        e.turn = r.turns - 2;
                    }
                    r.finish = "answer".into();
                    r.phase = Phase::Done;
                    return Ok(());
                }
                // Spec steps 4-5: similarity of the call segments, then splice.
                let new_call_text = split
                    .map(|(at, _)| text[at..].to_string())
                    .unwrap_or_default();
                let both_split = split.is_some() && p.old_split.is_some();
                let similarity = both_split.then(|| ratio(&p.old_call_text, &new_call_text));
                let repair = match similarity {
                    Some(s) if s >= self.config.similarity_threshold => RepairKind::Shallow,
                    _ => RepairKind::Deep,
                };
                let (cut, graft_from) = match (repair, p.old_split, split) {
                    (RepairKind::Shallow, Some(old), Some((_, new))) => (r.turn_start + old, new),
                    _ => (r.turn_start, 0),
                };
                let graft: Vec<Token> = turn[graft_from..].to_vec();
                let graft_logprobs: Vec<f32> = r.logprobs[start + graft_from..].to_vec();
                let graft_kinds: Vec<SegmentKind> = r.kinds[start + graft_from..].to_vec();
                let Some(seq) = r.seq else { return Ok(()) };
                self.backend.truncate(seq, cut)?;
                self.backend.append(seq, &graft)?;
                r.cut(cut);
                r.tokens.extend_from_slice(&graft);
                r.roles
                    .extend(std::iter::repeat_n(Role::Model, graft.len()));
                r.logprobs.extend_from_slice(&graft_logprobs);
                r.kinds.extend_from_slice(&graft_kinds);
                if let Some(last) = r.tool_calls.last_mut() {
                    last.kept = false;
                }
                match repair {
                    RepairKind::Shallow => stats.rollbacks_shallow += 1,
                    RepairKind::Deep => stats.rollbacks_deep += 1,
                }
                stats.graft_tokens += graft.len();
                r.events.push(event(
                    &p,
                    text.clone(),
                    similarity,
                    Some(repair),
                    PurifyResult::Retried,
                    g.tokens.len(),
                    graft.len(),
                    cut,
                ));
                if let Some(e) = r.events.last_mut() {
                    e.turn = r.turns;
                }
                // The spliced turn becomes the one checked next (R_old on failure).
                let spliced: Vec<Token> = r.tokens[r.turn_start..].to_vec();
                let spliced_text = self.backend.detokenize(&spliced);
                let spliced_split = self.split(&spliced, &spliced_text);
                p.old_split = spliced_split.map(|s| s.1);
                p.old_call_text = spliced_split
                    .map(|(at, _)| spliced_text[at..].to_string())
                    .unwrap_or_default();
                r.pending = Some(p);
                self.dispatch(r, k, call, true, jobs, stats)?;
            }
        }
        Ok(())
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
                    class: "format".into(),
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
        let turn_text = self.backend.detokenize(&r.tokens[r.turn_start..]);
        let Some(seq) = r.seq else { return Ok(()) };
        let CallStatus::Failed { class, .. } = status else {
            // A spliced call that ran: the purification at this position is done.
            if res.spliced && r.pending.take().is_some() {
                if let Some(last) = r.events.last_mut() {
                    last.result = PurifyResult::Grafted;
                }
            }
            return self.observe_and_continue(r, seq, &turn_text, &content);
        };
        if r.attempts >= self.config.max_tool_attempts {
            r.rollback = false; // spec step 8
        }
        if !r.rollback {
            r.pending = None;
            return self.observe_and_continue(r, seq, &turn_text, &content);
        }
        let mut p = match r.pending.take() {
            Some(p) if res.spliced => p,
            _ => {
                let turn: Vec<Token> = r.tokens[r.turn_start..].to_vec();
                let split = self.split(&turn, &turn_text);
                Pending {
                    old_split: split.map(|s| s.1),
                    old_call_text: split
                        .map(|(at, _)| turn_text[at..].to_string())
                        .unwrap_or_default(),
                    failed_code: res.code.clone(),
                    error: content.clone(),
                    error_class: class.clone(),
                    retries: 0,
                    lookahead_start: 0,
                }
            }
        };
        p.failed_code = res.code.clone();
        p.error = content.clone();
        p.error_class = class;
        if p.retries >= self.config.max_retries {
            // Spec step 7: keep the last failure (with the note) and stop purifying.
            stats.retries_exhausted += 1;
            if let Some(last) = r.events.last_mut() {
                last.result = PurifyResult::Exhausted;
            }
            r.rollback = false;
            let note = if p.retries >= 2 { EXHAUSTED_NOTE } else { "" };
            return self.observe_and_continue(r, seq, &turn_text, &format!("{content}{note}"));
        }
        // Spec step 2: the error as an ordinary observation, then a lookahead turn.
        if !self.append_observation(r, seq, &turn_text, &content)? {
            return Ok(());
        }
        p.retries += 1;
        p.lookahead_start = r.tokens.len();
        r.pending = Some(p);
        self.start_generation(r, GenKind::Lookahead)
    }

    fn observe_and_continue(
        &mut self,
        r: &mut Rollout,
        seq: SeqId,
        turn_text: &str,
        content: &str,
    ) -> Result<(), AgentError> {
        if !self.append_observation(r, seq, turn_text, content)? {
            return Ok(());
        }
        r.turns += 1;
        r.turn_start = r.tokens.len();
        if r.turns >= self.config.max_turns {
            r.finish = "max_turns".into();
            r.phase = Phase::Done;
            return Ok(());
        }
        self.start_generation(r, GenKind::Turn)
    }

    /// Appends the tool's reply after the turn, tokenized once. Returns
    /// false when the context is full (the rollout is then finished).
    fn append_observation(
        &mut self,
        r: &mut Rollout,
        seq: SeqId,
        turn_text: &str,
        content: &str,
    ) -> Result<bool, AgentError> {
        let obs = self.format.observation(turn_text, content);
        let obs_tokens = self.backend.tokenize(&obs)?;
        if let Err(e) = self.backend.append(seq, &obs_tokens) {
            self.stop_on_context(r, e)?;
            return Ok(false);
        }
        r.push(
            &obs_tokens,
            Role::Observation,
            None,
            SegmentKind::Observation,
        );
        Ok(true)
    }

    fn stop_on_context(&mut self, r: &mut Rollout, e: RolloutError) -> Result<(), AgentError> {
        match e {
            RolloutError::TooLong { .. } => {
                r.finish = "context".into();
                r.phase = Phase::Done;
                Ok(())
            }
            e => Err(e.into()),
        }
    }

    fn finish(&self, r: Rollout, problems: &[Problem]) -> Trajectory {
        let text = self.backend.detokenize(&r.tokens[r.prompt_len..]);
        let answer = last_boxed(&text);
        let mut segments: Vec<Segment> = Vec::new();
        for (i, &kind) in r.kinds.iter().enumerate() {
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
            s.text = self.backend.detokenize(&r.tokens[s.start..s.end]);
        }
        Trajectory {
            format_version: FORMAT_VERSION,
            problem_id: problems[r.problem].id.clone(),
            problem_index: Some(r.problem),
            rollout: r.index,
            tokens: r.tokens,
            roles: r.roles,
            sampler_logprobs: r.logprobs,
            segments,
            tool_calls: r.tool_calls,
            purification: r.events,
            purified: r.purified,
            turns: r.turns,
            response_tokens: r.response_tokens,
            correction_tokens: r.correction_tokens,
            text,
            answer,
            reward: None,
            finish: r.finish,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn event(
    p: &Pending,
    correction: String,
    similarity: Option<f64>,
    repair: Option<RepairKind>,
    result: PurifyResult,
    generated: usize,
    grafted: usize,
    position: usize,
) -> PurificationEvent {
    PurificationEvent {
        turn: 0,
        position,
        failed_code: p.failed_code.clone(),
        error: p.error.clone(),
        error_class: p.error_class.clone(),
        correction,
        similarity,
        repair,
        retries: p.retries,
        result,
        tokens_generated: generated,
        tokens_grafted: grafted,
    }
}

/// What the model is shown for an execution.
fn observation_text(e: &Execution) -> String {
    let mut s = e.stdout.clone();
    match &e.outcome {
        Outcome::Ok => {
            if s.is_empty() {
                s = "(no output)".into();
            }
        }
        Outcome::Error { .. } | Outcome::Crashed { .. } => s.push_str(&e.stderr),
        Outcome::Timeout => s.push_str("TimeoutError: the code ran longer than the time limit"),
        Outcome::MemoryLimit => s.push_str(if e.stderr.is_empty() {
            "MemoryError: the code used more memory than allowed"
        } else {
            &e.stderr
        }),
        Outcome::OutputLimit => s.push_str("\n[output limit exceeded]"),
    }
    s.trim_end().to_string()
}

fn status_of(e: &Execution) -> CallStatus {
    let failed = |class: &str, exception: &str| CallStatus::Failed {
        class: class.into(),
        exception: exception.into(),
    };
    match &e.outcome {
        Outcome::Ok => CallStatus::Ok,
        Outcome::Error { class, exception } => failed(class.name(), exception),
        Outcome::Timeout => failed("timeout", "timeout"),
        Outcome::MemoryLimit => failed("memory", "MemoryError"),
        Outcome::OutputLimit => failed("other", "output limit"),
        Outcome::Crashed { .. } => failed("other", "crashed"),
    }
}
