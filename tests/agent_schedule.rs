//! The agent loop's batches do not depend on how long sandbox calls take.
//!
//! llama.cpp's rounding depends on the batch history (which sequences decode
//! together, which KV cells they take), so a seeded run reproduces its tokens
//! only if the agent builds the same batches every time. Two rollouts here
//! make one call each, at the same step, while a third is still decoding a
//! long answer; one call runs for hundreds of milliseconds,
//! the other for milliseconds. Swapping which rollout gets the slow call must
//! leave the batch history unchanged: when a result joins is set by the
//! tokens, not by the clock. (Before that rule, the fast rollout's
//! observation joined hundreds of steps before the slow one's, so the two
//! runs' histories differed.)
//!
//! The backend is a test double that decodes one byte-token per step for
//! every generating sequence and logs each step's batch; the sandbox is the
//! real one.

mod common;
use common::sandbox;

use cleaner::agent::{Agent, AgentConfig, Backend, Problem, ToolFormat};
use cleaner::rollout::{FinishReason, GenerateParams, Generation, RolloutError, SeqId};
use cleaner::Token;
use std::collections::HashMap;

/// Code of equal length, so both rollouts' turns end at the same step: the
/// slow one sums 3 million numbers in the sandbox's CPython (about a second
/// on the development machine), the fast one sums one.
const SLOW: &str = "x = sum(range(int(\"3000000\")))\nprint(7)";
const FAST: &str = "x = sum(range(int(\"0000001\")))\nprint(7)";
/// The prompt of a third rollout that answers without a call, in a turn
/// long enough to be still decoding when the other two's calls go out.
const THINKER: &str = "<c>";

/// Decodes one byte-token per step; `history` records every step's batch
/// and every append, in order.
struct OneTokenPerStep {
    seqs: HashMap<u32, Vec<Token>>,
    next_id: u32,
    /// Which prompt gets the slow call.
    slow_prompt: &'static str,
    /// (sequence, the whole turn, bytes of it emitted, its params).
    generating: Vec<(SeqId, Vec<Token>, usize, GenerateParams)>,
    history: Vec<String>,
}

impl OneTokenPerStep {
    fn new(slow_prompt: &'static str) -> Self {
        OneTokenPerStep {
            seqs: HashMap::new(),
            next_id: 0,
            slow_prompt,
            generating: vec![],
            history: vec![],
        }
    }

    fn turn_for(&self, text: &str) -> String {
        if text.contains("```output") {
            return "So the answer is \\boxed{7}.".into();
        }
        if text.starts_with(THINKER) {
            return format!("{}\\boxed{{7}}.", "Let me think. ".repeat(12));
        }
        let code = if text.starts_with(self.slow_prompt) {
            SLOW
        } else {
            FAST
        };
        format!("Compute it.\n```python\n{code}\n```")
    }
}

impl Backend for OneTokenPerStep {
    fn open_with(&mut self, tokens: &[Token]) -> Result<SeqId, RolloutError> {
        self.next_id += 1;
        self.seqs.insert(self.next_id, tokens.to_vec());
        Ok(SeqId(self.next_id))
    }
    fn fork(&mut self, seq: SeqId) -> Result<SeqId, RolloutError> {
        let t = self.seqs[&seq.0].clone();
        self.open_with(&t)
    }
    fn append(&mut self, seq: SeqId, tokens: &[Token]) -> Result<(), RolloutError> {
        self.history
            .push(format!("append {} +{}", seq.0, tokens.len()));
        self.seqs
            .get_mut(&seq.0)
            .ok_or(RolloutError::NotOpen(seq.0))?
            .extend_from_slice(tokens);
        Ok(())
    }
    fn truncate(&mut self, seq: SeqId, pos: usize) -> Result<(), RolloutError> {
        self.history.push(format!("truncate {} {pos}", seq.0));
        self.seqs
            .get_mut(&seq.0)
            .ok_or(RolloutError::NotOpen(seq.0))?
            .truncate(pos);
        Ok(())
    }
    fn start(&mut self, seq: SeqId, params: GenerateParams) -> Result<(), RolloutError> {
        let text = String::from_utf8_lossy(
            &self.seqs[&seq.0]
                .iter()
                .map(|&t| t as u8)
                .collect::<Vec<_>>(),
        )
        .into_owned();
        let turn = self.turn_for(&text).bytes().map(Token::from).collect();
        self.generating.push((seq, turn, 0, params));
        Ok(())
    }
    fn step(&mut self) -> Result<Vec<(SeqId, Generation)>, RolloutError> {
        let batch: Vec<String> = self
            .generating
            .iter()
            .map(|(seq, _, _, _)| format!("{}@{}", seq.0, self.seqs[&seq.0].len()))
            .collect();
        self.history.push(format!("step {}", batch.join(" ")));
        let mut out = Vec::new();
        let mut still = Vec::new();
        for (seq, turn, emitted, params) in std::mem::take(&mut self.generating) {
            self.seqs.get_mut(&seq.0).unwrap().push(turn[emitted]);
            let emitted = emitted + 1;
            if emitted < turn.len() {
                still.push((seq, turn, emitted, params));
                continue;
            }
            let text = String::from_utf8(turn.iter().map(|&t| t as u8).collect()).unwrap();
            let finish = match params.stop.iter().find(|s| text.ends_with(s.as_str())) {
                Some(s) => FinishReason::Stop(s.clone()),
                None => FinishReason::Eog,
            };
            let n = turn.len();
            out.push((
                seq,
                Generation {
                    tokens: turn,
                    logprobs: vec![-0.5; n],
                    sampler_logprobs: vec![-0.25; n],
                    text,
                    finish,
                },
            ));
        }
        self.generating = still;
        Ok(out)
    }
    fn n_generating(&self) -> usize {
        self.generating.len()
    }
    fn tokens(&self, seq: SeqId) -> Result<Vec<Token>, RolloutError> {
        Ok(self.seqs[&seq.0].clone())
    }
    fn close(&mut self, seq: SeqId) {
        self.history.push(format!("close {}", seq.0));
        self.seqs.remove(&seq.0);
    }
    fn capacity(&self) -> usize {
        8
    }
    fn tokenize(&self, text: &str) -> Result<Vec<Token>, RolloutError> {
        Ok(text.bytes().map(Token::from).collect())
    }
    fn piece(&self, token: Token) -> Vec<u8> {
        vec![token as u8]
    }
}

/// The batch history of two rollouts (one problem each) whose calls differ
/// only in duration, `slow_prompt` naming the one that gets the slow call,
/// beside a third that answers without a call; with the sandbox's wall time
/// of the two calls, in rollout order.
fn history_with_slow(slow_prompt: &'static str) -> (Vec<String>, Vec<f64>) {
    let mut backend = OneTokenPerStep::new(slow_prompt);
    let problems: Vec<Problem> = ["<a>", "<b>", THINKER]
        .iter()
        .map(|p| Problem {
            id: p.to_string(),
            prompt: p.bytes().map(Token::from).collect(),
        })
        .collect();
    let mut agent = Agent::new(
        &mut backend,
        sandbox(),
        ToolFormat::markdown(),
        AgentConfig::default(),
    )
    .unwrap();
    let (ts, _) = agent.run(&problems, 1).unwrap();
    for t in &ts {
        assert_eq!(t.answer.as_deref(), Some("7"), "{}", t.problem_id);
        assert_eq!(t.tool_calls.len(), usize::from(t.problem_id != THINKER));
    }
    let ms = ts[..2]
        .iter()
        .map(|t| t.tool_calls[0].duration_ms)
        .collect();
    (backend.history, ms)
}

#[test]
fn batches_do_not_depend_on_how_long_sandbox_calls_take() {
    // Boot the warm interpreters first, so neither run pays for it.
    sandbox()
        .run("print(1)", &AgentConfig::default().limits)
        .unwrap();
    let (slow_a, ms_a) = history_with_slow("<a>");
    let (slow_b, ms_b) = history_with_slow("<b>");
    eprintln!("call durations, ms: {ms_a:?} and {ms_b:?}");
    // The calls did differ in duration, each way round (so the test can
    // tell): the slow call took over 5x the fast one (20-140x on the
    // development machine).
    assert!(ms_a[0] > 5.0 * ms_a[1], "durations {ms_a:?}");
    assert!(ms_b[1] > 5.0 * ms_b[0], "durations {ms_b:?}");
    assert_eq!(slow_a, slow_b);
    // Both observations joined together after the step after the one both
    // turns ended in: the thinker was still decoding, so the calls
    // overlapped one step.
    let turn = "Compute it.\n```python\n".len() + SLOW.len() + "\n```".len();
    let appends: Vec<usize> = slow_a
        .iter()
        .enumerate()
        .filter(|(_, e)| e.starts_with("append"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(appends.len(), 2, "{slow_a:#?}");
    assert_eq!(appends[1], appends[0] + 1, "{slow_a:#?}");
    let steps_before = slow_a[..appends[0]]
        .iter()
        .filter(|e| e.starts_with("step"))
        .count();
    assert_eq!(steps_before, turn + 1, "{slow_a:#?}");
}
