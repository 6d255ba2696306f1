//! Every SAAR branch, driven by a scripted backend (a test double emitting
//! predetermined turns through the same `Backend` interface as the llama.cpp
//! decoder) and the real sandbox. Tokens are bytes, so expected sequences are
//! written as text; roles and masks are checked token by token.

mod common;
use common::sandbox;

use cleaner::agent::trajectory::{PurifyResult, RepairKind, Role};
use cleaner::agent::{Agent, AgentConfig, Backend, Problem, ToolFormat, Trajectory};
use cleaner::rl::{AnswerMatch, MathReward, Reward};
use cleaner::rollout::{FinishReason, GenerateParams, Generation, RolloutError, SeqId};
use cleaner::Token;
use std::collections::{HashMap, VecDeque};

/// A backend that replays scripted assistant turns, one per `start`.
struct Scripted {
    seqs: HashMap<u32, Vec<Token>>,
    next_id: u32,
    script: VecDeque<String>,
    generating: Vec<(SeqId, String, GenerateParams)>,
    log: Vec<String>,
    /// The token limit of each generation started, in order.
    limits: Vec<usize>,
    /// When set, each turn is made from the sequence's text so far instead
    /// of taken from `script` (for many rollouts at once).
    responder: Option<fn(&str) -> String>,
    /// When set, `<tool_call>` and `</tool_call>` are single special tokens
    /// (as in Qwen's vocabulary) instead of bytes.
    special: bool,
}

/// Ids of the special tokens `<tool_call>` and `</tool_call>`.
const SPECIAL: [(Token, &str); 2] = [(1000, "<tool_call>"), (1001, "</tool_call>")];

impl Scripted {
    fn encode(&self, text: &str) -> Vec<Token> {
        if !self.special {
            return bytes(text);
        }
        let mut out = Vec::new();
        let mut rest = text;
        'outer: while !rest.is_empty() {
            for (id, marker) in SPECIAL {
                if let Some(after) = rest.strip_prefix(marker) {
                    out.push(id);
                    rest = after;
                    continue 'outer;
                }
            }
            out.push(Token::from(rest.as_bytes()[0]));
            rest = &rest[1..];
        }
        out
    }

    fn decode(&self, tokens: &[Token]) -> String {
        let bytes: Vec<u8> = tokens.iter().flat_map(|&t| self.piece(t)).collect();
        String::from_utf8(bytes).unwrap()
    }
}

impl Scripted {
    fn new(turns: &[&str]) -> Self {
        Scripted {
            seqs: HashMap::new(),
            next_id: 0,
            script: turns.iter().map(|s| s.to_string()).collect(),
            generating: vec![],
            log: vec![],
            limits: vec![],
            responder: None,
            special: false,
        }
    }

    fn responding(responder: fn(&str) -> String) -> Self {
        Scripted {
            responder: Some(responder),
            ..Scripted::new(&[])
        }
    }
}

fn bytes(s: &str) -> Vec<Token> {
    s.bytes().map(Token::from).collect()
}

impl Backend for Scripted {
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
        self.seqs
            .get_mut(&seq.0)
            .ok_or(RolloutError::NotOpen(seq.0))?
            .extend_from_slice(tokens);
        Ok(())
    }
    fn truncate(&mut self, seq: SeqId, pos: usize) -> Result<(), RolloutError> {
        self.log.push(format!("truncate {pos}"));
        self.seqs
            .get_mut(&seq.0)
            .ok_or(RolloutError::NotOpen(seq.0))?
            .truncate(pos);
        Ok(())
    }
    fn start(&mut self, seq: SeqId, params: GenerateParams) -> Result<(), RolloutError> {
        let turn = match self.responder {
            Some(respond) => respond(&String::from_utf8_lossy(
                &self.seqs[&seq.0]
                    .iter()
                    .map(|&t| t as u8)
                    .collect::<Vec<_>>(),
            )),
            None => self
                .script
                .pop_front()
                .expect("the agent asked for more turns than scripted"),
        };
        self.limits.push(params.max_new_tokens);
        self.generating.push((seq, turn, params));
        Ok(())
    }
    fn step(&mut self) -> Result<Vec<(SeqId, Generation)>, RolloutError> {
        let mut out = Vec::new();
        for (seq, mut text, params) in std::mem::take(&mut self.generating) {
            // The limits it is given are honoured: a turn longer than
            // `max_new_tokens` is cut there (tokens are bytes).
            let mut tokens = self.encode(&text);
            let cut = tokens.len() > params.max_new_tokens;
            tokens.truncate(params.max_new_tokens);
            text = self.decode(&tokens);
            self.seqs
                .get_mut(&seq.0)
                .unwrap()
                .extend_from_slice(&tokens);
            let stop = params.stop.iter().find(|s| text.ends_with(s.as_str()));
            let finish = match stop {
                _ if cut => FinishReason::MaxTokens,
                Some(s) => FinishReason::Stop(s.clone()),
                None => FinishReason::Eog,
            };
            let n = tokens.len();
            out.push((
                seq,
                Generation {
                    tokens,
                    logprobs: vec![-0.5; n],
                    sampler_logprobs: vec![-0.25; n],
                    text,
                    finish,
                },
            ));
        }
        Ok(out)
    }
    fn n_generating(&self) -> usize {
        self.generating.len()
    }
    fn tokens(&self, seq: SeqId) -> Result<Vec<Token>, RolloutError> {
        Ok(self.seqs[&seq.0].clone())
    }
    fn close(&mut self, seq: SeqId) {
        self.seqs.remove(&seq.0);
    }
    fn capacity(&self) -> usize {
        8
    }
    fn tokenize(&self, text: &str) -> Result<Vec<Token>, RolloutError> {
        Ok(self.encode(text))
    }
    fn piece(&self, token: Token) -> Vec<u8> {
        match SPECIAL.iter().find(|(id, _)| *id == token) {
            Some((_, marker)) => marker.as_bytes().to_vec(),
            None => vec![token as u8],
        }
    }
}

const PROMPT: &str = "<prompt>";

fn collect(turns: &[&str], config: AgentConfig) -> (Trajectory, Scripted) {
    collect_with(turns, config, ToolFormat::markdown())
}

fn collect_with(turns: &[&str], config: AgentConfig, format: ToolFormat) -> (Trajectory, Scripted) {
    let mut backend = Scripted::new(turns);
    let problem = Problem {
        id: "p".into(),
        prompt: bytes(PROMPT),
    };
    let (mut ts, _) = {
        let mut agent = Agent::new(&mut backend, sandbox(), format, config).unwrap();
        agent.run(&[problem], 1).unwrap()
    };
    assert!(
        backend.script.is_empty(),
        "unused script turns: {:?}",
        backend.script
    );
    (ts.remove(0), backend)
}

fn text_of(t: &Trajectory) -> String {
    String::from_utf8(t.tokens.iter().map(|&x| x as u8).collect()).unwrap()
}

/// Roles as a string: P prompt, M model, O observation, one char per token.
fn roles_of(t: &Trajectory) -> String {
    t.roles
        .iter()
        .map(|r| match r {
            Role::Prompt => 'P',
            Role::Model => 'M',
            Role::Observation => 'O',
        })
        .collect()
}

fn expect_roles(parts: &[(&str, char)]) -> String {
    parts
        .iter()
        .map(|(s, c)| std::iter::repeat_n(*c, s.len()).collect::<String>())
        .collect()
}

fn check_invariants(t: &Trajectory) {
    t.validate().unwrap();
    assert_eq!(
        t.roles[..PROMPT.len()]
            .iter()
            .filter(|r| **r != Role::Prompt)
            .count(),
        0
    );
    assert!(t.roles[PROMPT.len()..].iter().all(|r| *r != Role::Prompt));
    let mask = t.loss_mask();
    for (k, r) in t.roles.iter().enumerate() {
        assert_eq!(mask[k] == 1, *r == Role::Model, "token {k}");
    }
}

#[test]
fn shallow_repair_keeps_the_old_reasoning() {
    let (t, b) = collect(
        &[
            "I will compute it.\n```python\nprint(7 / 0)\n```",
            "Oops, fix the divisor.\n```python\nprint(7 / 1)\n```",
            "So the answer is \\boxed{7}.",
        ],
        AgentConfig::default(),
    );
    let call = "I will compute it.\n```python\nprint(7 / 1)\n```";
    let obs = "\n```output\n7.0\n```\n";
    let answer = "So the answer is \\boxed{7}.";
    assert_eq!(text_of(&t), format!("{PROMPT}{call}{obs}{answer}"));
    assert_eq!(
        roles_of(&t),
        expect_roles(&[(PROMPT, 'P'), (call, 'M'), (obs, 'O'), (answer, 'M')])
    );
    check_invariants(&t);
    assert_eq!(t.purification.len(), 1);
    let e = &t.purification[0];
    assert_eq!(
        (e.repair, e.result, e.retries),
        (Some(RepairKind::Shallow), PurifyResult::Grafted, 1)
    );
    assert!(e.similarity.unwrap() >= 0.5 && e.error_class.name() == "ZeroDivisionError");
    assert_eq!(e.position, PROMPT.len() + "I will compute it.\n".len());
    assert_eq!((t.failures_raw(), t.failures_kept()), (1, 0));
    assert_eq!(t.turns, 2);
    assert_eq!(t.answer.as_deref(), Some("7"));
    // The live sequence was cut back to the splice point, not recomputed.
    assert_eq!(b.log, vec![format!("truncate {}", e.position)]);
}

#[test]
fn deep_repair_replaces_the_reasoning() {
    let (t, _) = collect(
        &[
            "Let me think.\n```python\nresult = undefined_thing + 1\nprint(result)\n```",
            "A different way.\n```python\nfrom fractions import Fraction\ntotal = sum(Fraction(1, k) for k in range(1, 6))\nprint(total)\n```",
            "\\boxed{137/60}",
        ],
        AgentConfig::default(),
    );
    let turn = "A different way.\n```python\nfrom fractions import Fraction\ntotal = sum(Fraction(1, k) for k in range(1, 6))\nprint(total)\n```";
    let obs = "\n```output\n137/60\n```\n";
    assert_eq!(text_of(&t), format!("{PROMPT}{turn}{obs}\\boxed{{137/60}}"));
    assert_eq!(
        roles_of(&t),
        expect_roles(&[
            (PROMPT, 'P'),
            (turn, 'M'),
            (obs, 'O'),
            ("\\boxed{137/60}", 'M')
        ])
    );
    check_invariants(&t);
    let e = &t.purification[0];
    assert_eq!(
        (e.repair, e.result),
        (Some(RepairKind::Deep), PurifyResult::Grafted)
    );
    assert!(e.similarity.unwrap() < 0.5);
    assert_eq!(e.error_class.name(), "NameError");
}

#[test]
fn retry_exhaustion_keeps_the_last_error_and_the_note() {
    let (t, _) = collect(
        &[
            "Compute.\n```python\nprint(1 / 0)\n```",
            "Retry.\n```python\nprint(2 / 0)\n```",
            "Retry.\n```python\nprint(3 / 0)\n```",
            "Retry.\n```python\nprint(4 / 0)\n```",
            "I give up: \\boxed{0}",
        ],
        AgentConfig::default(),
    );
    let text = text_of(&t);
    assert!(
        text.starts_with(&format!(
            "{PROMPT}Compute.\n```python\nprint(4 / 0)\n```\n```output\n"
        )),
        "{text}"
    );
    assert!(
        text.contains("ZeroDivisionError") && text.contains("failed repeatedly"),
        "{text}"
    );
    assert!(text.ends_with("```\nI give up: \\boxed{0}"), "{text}");
    assert_eq!(
        text.matches("```python").count(),
        1,
        "only the last attempt stays: {text}"
    );
    check_invariants(&t);
    let results: Vec<_> = t.purification.iter().map(|e| e.result).collect();
    assert_eq!(
        results,
        vec![
            PurifyResult::Retried,
            PurifyResult::Retried,
            PurifyResult::Exhausted
        ]
    );
    assert_eq!((t.failures_raw(), t.failures_kept()), (4, 1));
}

#[test]
fn correction_without_a_tool_call_keeps_everything() {
    let (t, _) = collect(
        &["Try.\n```python\nprint(nope)\n```", "It is \\boxed{2}."],
        AgentConfig::default(),
    );
    let text = text_of(&t);
    assert!(
        text.starts_with(&format!(
            "{PROMPT}Try.\n```python\nprint(nope)\n```\n```output\nTraceback"
        )),
        "{text}"
    );
    assert!(
        text.ends_with(
            "NameError: name 'nope' is not defined. Did you mean: 'None'?\n```\nIt is \\boxed{2}."
        ),
        "{text}"
    );
    check_invariants(&t);
    assert_eq!(t.purification[0].result, PurifyResult::NoToolCall);
    assert_eq!(t.failures_kept(), 1);
    assert_eq!(t.answer.as_deref(), Some("2"));
}

#[test]
fn tool_attempt_cap_turns_rollback_off() {
    let config = AgentConfig {
        max_tool_attempts: 2,
        ..AgentConfig::default()
    };
    let (t, _) = collect(
        &[
            "A.\n```python\nprint(1 / 0)\n```",
            "B.\n```python\nprint(2 / 0)\n```",
            "Next.\n```python\nprint(5 / 0)\n```",
            "\\boxed{5}",
        ],
        config,
    );
    let text = text_of(&t);
    // Attempt 2 (the spliced call) hit the cap: it stays with its error, and
    // the next failure is kept as collected.
    assert!(
        text.contains("A.\n```python\nprint(2 / 0)\n```\n```output\n"),
        "{text}"
    );
    assert!(
        text.contains("Next.\n```python\nprint(5 / 0)\n```\n```output\n"),
        "{text}"
    );
    assert!(!text.contains("print(1 / 0)"));
    check_invariants(&t);
    assert_eq!(t.failures_kept(), 2);
}

#[test]
fn probability_zero_leaves_trajectories_untouched() {
    let config = AgentConfig {
        rollback_probability: 0.0,
        ..AgentConfig::default()
    };
    let (t, b) = collect(
        &[
            "Go.\n```python\nprint(1 / 0)\n```",
            "Fixed.\n```python\nprint(1)\n```",
            "\\boxed{1}",
        ],
        config,
    );
    let text = text_of(&t);
    assert!(
        text.contains("Go.\n```python\nprint(1 / 0)\n```\n```output\nTraceback"),
        "{text}"
    );
    assert!(
        text.contains("Fixed.\n```python\nprint(1)\n```\n```output\n1\n```\n\\boxed{1}"),
        "{text}"
    );
    assert!(t.purification.is_empty() && !t.purified);
    assert!(b.log.is_empty(), "no truncation without purification");
    check_invariants(&t);
}

#[test]
fn trajectories_round_trip_through_jsonl_and_bad_files_are_rejected() {
    let (t, _) = collect(
        &["x\n```python\nprint(1)\n```", "\\boxed{1}"],
        AgentConfig::default(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    cleaner::agent::trajectory::write_jsonl(&path, std::slice::from_ref(&t)).unwrap();
    let back = cleaner::agent::trajectory::read_jsonl(&path).unwrap();
    assert_eq!(back, vec![t.clone()]);

    let mut bad = t.clone();
    bad.roles.pop();
    cleaner::agent::trajectory::write_jsonl(&path, &[t.clone(), bad]).unwrap();
    let e = cleaner::agent::trajectory::read_jsonl(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 2") && e.contains("roles"), "{e}");
    std::fs::write(&path, "{\"format_version\": 1}\n").unwrap();
    let e = cleaner::agent::trajectory::read_jsonl(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 1") && e.contains("missing field"), "{e}");
}

/// A ChatML template that renders tool calls as `<tool_call>` (Hermes).
const HERMES_TEMPLATE: &str = "{%- for m in messages %}<|im_start|>{% if m.role == 'tool' %}user\n<tool_response>\n{{ m.content }}\n</tool_response>{% else %}{{ m.role }}\n{{ m.content }}{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>\n{{ c.function | tojson }}\n</tool_call>{% endfor %}{% endif %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

fn hermes() -> ToolFormat {
    let template = cleaner::chat::ChatTemplate::new(HERMES_TEMPLATE, "", "<|im_end|>").unwrap();
    ToolFormat::hermes(&template).unwrap()
}

/// A first call runs; the second turn's call is cut off by the turn's token
/// limit: the trajectory ends there as `max_tokens`, the cut call neither
/// runs nor starts a lookahead (the script has no turn left for one).
fn cut_off_call_ends_the_trajectory(format: ToolFormat, first: &str, second: &str) {
    let limit = 100;
    assert!(first.len() < limit && second.len() > limit);
    let config = AgentConfig {
        max_turn_tokens: Some(limit),
        ..AgentConfig::default()
    };
    let (t, b) = collect_with(&[first, second], config, format.clone());
    let obs = format.observation(first, "2");
    assert_eq!(
        text_of(&t),
        format!("{PROMPT}{first}{obs}{}", &second[..limit])
    );
    check_invariants(&t);
    assert_eq!(t.finish, cleaner::agent::Finish::MaxTokens);
    assert!(t.purification.is_empty(), "{:?}", t.purification);
    assert_eq!(t.tool_calls.len(), 1, "only the first call ran");
    assert_eq!(t.answer, None);
    assert_eq!(b.limits.len(), 2, "no lookahead was started");
    assert!(b.log.is_empty(), "nothing was truncated");
}

#[test]
fn markdown_call_cut_off_at_the_limit_ends_the_trajectory() {
    cut_off_call_ends_the_trajectory(
        ToolFormat::markdown(),
        "Compute it.\n```python\nprint(2)\n```",
        "Now divide the two numbers, carefully and slowly, step by step.\n```python\nx = 7\ny = 0\nprint(x / y)\n```",
    );
}

#[test]
fn hermes_call_cut_off_at_the_limit_ends_the_trajectory() {
    cut_off_call_ends_the_trajectory(
        hermes(),
        "<tool_call>\n{\"name\": \"code_interpreter\", \"arguments\": {\"code\": \"print(2)\"}}\n</tool_call>",
        "Now divide.\n<tool_call>\n{\"name\": \"code_interpreter\", \"arguments\": {\"code\": \"x = 7\\ny = 0\\nprint(x / y)\"}}\n</tool_call>",
    );
}

#[test]
fn the_answer_is_read_from_the_final_turn_only() {
    // A box in an earlier turn and one in the tool's output: neither is the answer.
    let (t, _) = collect(
        &[
            "Maybe \\boxed{3}.\n```python\nprint('\\\\boxed{7}')\n```",
            "I am not sure.",
        ],
        AgentConfig::default(),
    );
    assert!(text_of(&t).contains("\\boxed{3}") && text_of(&t).contains("\\boxed{7}"));
    assert_eq!(t.final_turn(), "I am not sure.");
    assert_eq!(t.answer, None);
    let item = cleaner::tasks::Item {
        id: "p".into(),
        question: String::new(),
        answer: "7".into(),
    };
    for matching in [AnswerMatch::Math, AnswerMatch::Strict] {
        let reward = MathReward {
            matching,
            ..MathReward::default()
        };
        assert_eq!(reward.score(&item, &t), -1.0, "{matching:?}");
    }
}

#[test]
fn strict_and_math_rewards_on_the_same_answers() {
    let item = cleaner::tasks::Item {
        id: "p".into(),
        question: String::new(),
        answer: "\\frac{1}{2}".into(),
    };
    let padding = "x".repeat(300);
    let strict = MathReward {
        matching: AnswerMatch::Strict,
        ..MathReward::default()
    };
    let math = MathReward::default();
    // (final turn, strict, math)
    let cases = [
        ("So \\boxed{\\frac{1}{2}}.".to_string(), 1.0, 1.0),
        ("So \\boxed{\\dfrac{1}{2}}.".to_string(), 1.0, 1.0),
        ("So \\boxed{0.5}.".to_string(), -1.0, 1.0),
        ("So \\boxed{1/2}.".to_string(), -1.0, 1.0),
        ("So \\boxed{\\frac{1}{3}}.".to_string(), -1.0, -1.0),
        // The box is more than 300 characters before the end of the turn.
        (
            format!("So \\boxed{{\\frac{{1}}{{2}}}}.{padding}"),
            -1.0,
            1.0,
        ),
        ("No answer.".to_string(), -1.0, -1.0),
    ];
    for (turn, want_strict, want_math) in &cases {
        let (t, _) = collect(&[turn.as_str()], AgentConfig::default());
        assert_eq!(
            (strict.score(&item, &t), math.score(&item, &t)),
            (*want_strict, *want_math),
            "{turn:?}"
        );
    }
}

/// An empty code block: a malformed call, failed without the sandbox.
const EMPTY_CALL: &str = "Try.\n```python\n\n```";

/// Runs `problems` problems, `group` rollouts each, on a responding backend.
fn run_many(
    responder: fn(&str) -> String,
    config: AgentConfig,
    problems: usize,
    group: usize,
) -> (Vec<Trajectory>, cleaner::agent::BatchStats) {
    let mut backend = Scripted::responding(responder);
    let problems: Vec<Problem> = (0..problems)
        .map(|p| Problem {
            id: p.to_string(),
            prompt: bytes(PROMPT),
        })
        .collect();
    let mut agent = Agent::new(&mut backend, sandbox(), ToolFormat::markdown(), config).unwrap();
    agent.run(&problems, group).unwrap()
}

/// Rollback probability 0.5: each trajectory is drawn for purification from
/// its own seed, and the draw is what it gets. Every rollout makes one
/// failing call, then answers: a drawn one shows the error to a lookahead
/// (which answers: one `NoToolCall` event); the others keep the failure and
/// answer in the next turn. Over 1000 seeded rollouts the drawn count is
/// binomial(1000, 0.5): mean 500, standard deviation 15.8; the test allows
/// 4 deviations (+-63), which a fair draw leaves with probability 6e-5 (and
/// these seeds are fixed, so the outcome is too).
#[test]
fn rollback_probability_one_half_purifies_the_trajectories_it_draws() {
    fn respond(text: &str) -> String {
        if text.contains("```output") {
            "So \\boxed{1}.".into()
        } else {
            EMPTY_CALL.into()
        }
    }
    let config = AgentConfig {
        rollback_probability: 0.5,
        ..AgentConfig::default()
    };
    let (ts, stats) = run_many(respond, config, 250, 4);
    assert_eq!(ts.len(), 1000);
    let drawn = ts.iter().filter(|t| t.purified).count();
    assert!(
        (437..=563).contains(&drawn),
        "{drawn} of 1000 drawn at p = 0.5"
    );
    for t in &ts {
        check_invariants(t);
        assert_eq!(t.answer.as_deref(), Some("1"));
        assert_eq!(t.tool_calls.len(), 1);
        if t.purified {
            assert_eq!(t.purification.len(), 1, "{}", text_of(t));
            assert_eq!(t.purification[0].result, PurifyResult::NoToolCall);
            assert_eq!(t.correction_tokens, "So \\boxed{1}.".len());
        } else {
            assert!(t.purification.is_empty(), "{}", text_of(t));
            assert_eq!(t.correction_tokens, 0);
        }
    }
    assert_eq!(stats.no_tool_call_stops, drawn);
    // The draws differ between rollouts of one problem and between problems.
    let per_problem: Vec<usize> = ts
        .chunks(4)
        .map(|g| g.iter().filter(|t| t.purified).count())
        .collect();
    assert!(per_problem.iter().any(|&n| n > 0 && n < 4));
}

/// The default cap is 30 tool executions: with retries to spare, a call that
/// keeps failing is retried until the 30th execution, which turns rollback
/// off in the middle of the retries; its event says so, and the failed
/// correction stays. Later failures are kept as collected.
#[test]
fn the_default_tool_attempt_cap_of_30_stops_a_retry_midway() {
    fn respond(_: &str) -> String {
        EMPTY_CALL.into()
    }
    assert_eq!(AgentConfig::default().max_tool_attempts, 30);
    let config = AgentConfig {
        max_retries: 100,
        ..AgentConfig::default()
    };
    let max_turns = config.max_turns;
    let (ts, stats) = run_many(respond, config, 1, 1);
    let t = &ts[0];
    check_invariants(t);
    // Executions 2..=30 were lookaheads at the first position.
    assert_eq!(t.purification.len(), 29);
    assert!(t.purification[..28]
        .iter()
        .all(|e| e.result == PurifyResult::Retried && e.turn == 0));
    assert_eq!(t.purification[28].result, PurifyResult::AttemptCap);
    assert_eq!(stats.attempt_cap_stops, 1);
    assert_eq!(stats.retries_exhausted, 0);
    // Then one failing call per turn, kept, until max_turns.
    assert_eq!(t.tool_calls.len(), 30 + max_turns - 1);
    assert_eq!(t.failures_kept(), max_turns);
    assert_eq!(t.finish, cleaner::agent::Finish::MaxTurns);
    assert!(!text_of(t).contains("Try a different method"));
}

/// The response budget counts turns, not corrections, and a lookahead gets
/// the limit of the turn it corrects: with 80 tokens, the first turn and its
/// lookahead are both offered 80, and after the graft the answer turn is
/// offered 80 minus the first turn only.
#[test]
fn a_lookahead_gets_its_turns_limit_outside_the_budget() {
    let first = "A.\n```python\nprint(1 / 0)\n```";
    let fix = "B.\n```python\nprint(1 / 1)\n```";
    let config = AgentConfig {
        max_response_tokens: 80,
        ..AgentConfig::default()
    };
    let (t, b) = collect(&[first, fix, "\\boxed{1}"], config);
    assert_eq!(b.limits, [80, 80, 80 - first.len()]);
    assert_eq!(t.response_tokens, first.len() + "\\boxed{1}".len());
    assert_eq!(t.correction_tokens, fix.len());
    assert_eq!(t.answer.as_deref(), Some("1"));
    // A per-turn cap, where set, bounds both.
    let capped = AgentConfig {
        max_response_tokens: 80,
        max_turn_tokens: Some(40),
        ..AgentConfig::default()
    };
    let (_, b) = collect(&[first, fix, "\\boxed{1}"], capped);
    assert_eq!(b.limits, [40, 40, 40]);
}

/// Hermes end to end, with `<tool_call>` and `</tool_call>` as single special
/// tokens: a call whose JSON is malformed fails without running, is shown
/// its parse error, and the lookahead's corrected call is grafted after the
/// original reasoning (shallow: the split is the marker token itself), runs,
/// and the model answers from its output.
#[test]
fn hermes_malformed_json_is_purified_with_the_marker_as_a_special_token() {
    let format = hermes();
    let reasoning = "Let me compute.\n";
    let broken = "<tool_call>\n{\"name\": \"code_interpreter\", \"arguments\": {\"code\": \"print(6 * 7)\"}\n</tool_call>";
    let fixed = "<tool_call>\n{\"name\": \"code_interpreter\", \"arguments\": {\"code\": \"print(6 * 7)\"}}\n</tool_call>";
    let turns = [
        format!("{reasoning}{broken}"),
        format!("The JSON lacked a brace.\n{fixed}"),
        "So \\boxed{42}.".to_string(),
    ];
    let mut backend = Scripted::new(&turns.iter().map(String::as_str).collect::<Vec<_>>());
    backend.special = true;
    let problem = Problem {
        id: "p".into(),
        prompt: bytes(PROMPT),
    };
    let (ts, stats) = {
        let mut agent = Agent::new(
            &mut backend,
            sandbox(),
            format.clone(),
            AgentConfig::default(),
        )
        .unwrap();
        agent.run(&[problem], 1).unwrap()
    };
    let t = &ts[0];
    let call = format!("{reasoning}{fixed}");
    let obs = format.observation(&call, "42");
    assert_eq!(
        backend.decode(&t.tokens),
        format!("{PROMPT}{call}{obs}So \\boxed{{42}}.")
    );
    check_invariants(t);
    // One token per marker, and only the grafted call's are left.
    assert_eq!(t.tokens.iter().filter(|&&x| x == 1000).count(), 1);
    assert_eq!(t.tokens.iter().filter(|&&x| x == 1001).count(), 1);
    assert_eq!(t.purification.len(), 1);
    let e = &t.purification[0];
    assert_eq!(e.error_class.name(), "format");
    assert!(e.error.contains("could not be parsed"), "{}", e.error);
    assert_eq!(
        (e.repair, e.result),
        (Some(RepairKind::Shallow), PurifyResult::Grafted)
    );
    assert!(e.similarity.unwrap() >= 0.5);
    // The splice point is the marker token: the reasoning's bytes after the prompt.
    assert_eq!(e.position, PROMPT.len() + reasoning.len());
    assert_eq!(backend.log, vec![format!("truncate {}", e.position)]);
    assert_eq!((t.failures_raw(), t.failures_kept()), (1, 0));
    assert_eq!((stats.rollbacks_shallow, stats.tool_calls), (1, 2));
    assert_eq!(t.answer.as_deref(), Some("42"));
}
