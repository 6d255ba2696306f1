//! SAAR's in-place cache edits on the real llama.cpp context are exact: the
//! agent purifies a trajectory (shallow and deep splices, truncating the live
//! KV cache and prefilling grafts), and the live context's logits after the
//! final token equal those of a fresh context that prefills the final
//! sequence directly. The turns are forced text (SmolLM2-135M seldom writes
//! tool calls by itself), appended through the real context; every rollback
//! and graft is the agent's own, on the real cache.

mod common;

use cleaner::agent::trajectory::{RepairKind, Role};
use cleaner::agent::{Agent, AgentConfig, Backend, Problem, ToolFormat};
use cleaner::rollout::{FinishReason, GenerateParams, Generation, RolloutError, SeqId};
use cleaner::{Decoder, DecoderConfig, Token};
use common::{max_abs_diff, sandbox, serial, tokens};
use std::collections::{HashMap, VecDeque};

/// The real decoder, with each generation replaced by forced text.
struct Forced {
    decoder: Decoder,
    script: VecDeque<String>,
    pending: Vec<(SeqId, String)>,
    /// Live next-token logits and tokens of each sequence when it was closed.
    at_close: HashMap<u32, (Vec<f32>, Vec<Token>)>,
}

impl Backend for Forced {
    fn open_with(&mut self, t: &[Token]) -> Result<SeqId, RolloutError> {
        self.decoder.open_with(t)
    }
    fn fork(&mut self, s: SeqId) -> Result<SeqId, RolloutError> {
        self.decoder.fork(s)
    }
    fn append(&mut self, s: SeqId, t: &[Token]) -> Result<(), RolloutError> {
        self.decoder.append(s, t)
    }
    fn truncate(&mut self, s: SeqId, pos: usize) -> Result<(), RolloutError> {
        self.decoder.truncate(s, pos)
    }
    fn start(&mut self, s: SeqId, _p: GenerateParams) -> Result<(), RolloutError> {
        let text = self.script.pop_front().expect("script exhausted");
        self.pending.push((s, text));
        Ok(())
    }
    fn step(&mut self) -> Result<Vec<(SeqId, Generation)>, RolloutError> {
        let mut out = Vec::new();
        for (s, text) in std::mem::take(&mut self.pending) {
            let toks = self.decoder.model().tokenize(&text, false, true)?;
            self.decoder.append(s, &toks)?;
            self.decoder.flush()?; // decoded into the live cache now, like sampled tokens
            let n = toks.len();
            let finish = if text.ends_with("\n```") {
                FinishReason::Stop("\n```".into())
            } else {
                FinishReason::Eog
            };
            out.push((
                s,
                Generation {
                    tokens: toks,
                    logprobs: vec![0.0; n],
                    sampler_logprobs: vec![0.0; n],
                    text,
                    finish,
                },
            ));
        }
        Ok(out)
    }
    fn n_generating(&self) -> usize {
        self.pending.len()
    }
    fn tokens(&self, s: SeqId) -> Result<Vec<Token>, RolloutError> {
        self.decoder.tokens(s).map(|t| t.to_vec())
    }
    fn close(&mut self, s: SeqId) {
        if let (Ok(toks), Ok(logits)) = (
            self.decoder.tokens(s).map(|t| t.to_vec()),
            self.decoder.next_logits(s).map(|l| l.to_vec()),
        ) {
            self.at_close.insert(s.0, (logits, toks));
        }
        self.decoder.close(s)
    }
    fn capacity(&self) -> usize {
        self.decoder.n_seq_max() as usize
    }
    fn tokenize(&self, text: &str) -> Result<Vec<Token>, RolloutError> {
        Ok(self.decoder.model().tokenize(text, false, true)?)
    }
    fn piece(&self, t: Token) -> Vec<u8> {
        self.decoder.model().piece(t).to_vec()
    }
}

#[test]
#[cfg_attr(
    any(feature = "cuda", feature = "metal", feature = "vulkan"),
    ignore = "GPU kernels are not batch-invariant: bit-exact rescoring holds on the CPU backend only"
)]
fn purified_sequence_rescored_fresh_matches_the_live_context() {
    let _serial = serial();
    let script = [
        // Shallow: same reasoning, fixed call.
        "I will multiply.\n```python\nprint(12 * )\n```",
        "Fix the syntax.\n```python\nprint(12 * 7)\n```",
        // Deep: a different approach after a NameError.
        "Now the sum.\n```python\nprint(totl)\n```",
        "Use a loop instead.\n```python\ns = 0\nfor k in range(1, 11):\n    s += k\nprint(s)\n```",
        "So the answers are 84 and 55: \\boxed{84}",
    ];
    // Flash attention off: every split of a sequence into decode calls then
    // gives bit-identical logits, so any difference would be the edits'.
    let exact = |n| {
        let cfg = DecoderConfig {
            n_ctx: 4096,
            n_seq_max: n,
            n_threads: 2,
            flash_attention: Some(false),
            ..Default::default()
        };
        Decoder::new(common::model(), &cfg).unwrap()
    };
    let mut backend = Forced {
        decoder: exact(4),
        script: script.iter().map(|s| s.to_string()).collect(),
        pending: vec![],
        at_close: HashMap::new(),
    };
    let problem = Problem {
        id: "p".into(),
        prompt: tokens("Compute 12 * 7 and the sum of 1..10 with Python.\n"),
    };
    let (ts, stats) = {
        let mut agent = Agent::new(
            &mut backend,
            sandbox(),
            ToolFormat::markdown(),
            AgentConfig::default(),
        )
        .unwrap();
        agent.run(&[problem], 1).unwrap()
    };
    let t = &ts[0];
    let repairs: Vec<_> = t.purification.iter().map(|e| e.repair).collect();
    assert_eq!(
        repairs,
        vec![Some(RepairKind::Shallow), Some(RepairKind::Deep)],
        "{:#?}",
        t.purification
    );
    assert_eq!(t.failures_kept(), 0);
    assert_eq!((stats.rollbacks_shallow, stats.rollbacks_deep), (1, 1));
    assert!(
        t.text
            .contains("I will multiply.\n```python\nprint(12 * 7)\n```")
            && !t.text.contains("print(totl)"),
        "{}",
        t.text
    );
    assert!(t
        .roles
        .iter()
        .zip(t.loss_mask())
        .all(|(r, m)| (m == 1) == (*r == Role::Model)));

    // The longest closed sequence is the rollout's (the other is the prompt root).
    let (live_logits, live_tokens) = backend
        .at_close
        .values()
        .max_by_key(|(_, t)| t.len())
        .expect("the rollout's sequence was closed")
        .clone();
    assert_eq!(
        live_tokens, t.tokens,
        "the agent's mirror and the live sequence disagree"
    );
    let mut fresh = exact(1);
    let (_, rows) = fresh.score(&t.tokens, true).unwrap();
    let d = max_abs_diff(&live_logits, rows.last().unwrap());
    assert_eq!(d, 0.0, "live vs fresh logits differ by {d}");
}
