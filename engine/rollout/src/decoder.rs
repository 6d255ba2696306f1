//! The rollout engine: many sequences in one llama.cpp context, advanced
//! together by continuous batching, with in-place rewriting of any sequence's
//! tail (`truncate` + `append`) and hot-swapped LoRA adapters.
//!
//! Each sequence is a list of tokens of which the first `n_cached` are in the
//! KV cache; the rest are pending and get prefilled by the next decode. A
//! sampled token is pending until the following step decodes it. This one
//! invariant makes rollback, grafting and prefix sharing plain list edits:
//! `truncate` cuts the list (and the cache if needed), `append` extends it.
//!
//! Sequences that are generating advance one token per [`Decoder::step`]; the
//! same decode call also prefills whatever other sequences have pending
//! (observations, grafts), so parked sequences never stall the batch.
//!
//! The cache may hold fewer cells than all open sequences could fill (it is
//! sized from a memory budget, not from slots x longest sequence). When a
//! decode finds no room, the sequence opened last gives its cells back and
//! waits: its tokens become pending again, so it is prefilled anew once
//! cells are free (a sequence closes or is cut back), and a generation in
//! progress continues from there. The sequence opened first is never the
//! one to wait, so the oldest always advances and every sequence finishes;
//! only a sequence that cannot fit even alone is an error
//! ([`LlamaError::KvCacheFull`]).

use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::llama::{BatchEntry, Context, ContextParams, LlamaError, LoraAdapter, Model, Token};
use crate::sampling::{self, Rng, SamplingParams};

/// Errors of the rollout engine.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// llama.cpp failed.
    #[error(transparent)]
    Llama(#[from] LlamaError),
    /// All sequence slots are open.
    #[error("all {0} sequence slots are in use (raise n_seq_max or close sequences)")]
    NoFreeSlot(u32),
    /// The sequence is not open.
    #[error("sequence {0} is not open")]
    NotOpen(u32),
    /// The sequence would not fit the context.
    #[error("sequence {seq} would hold {len} tokens, more than the context's {n_ctx} positions (prompt too long?)")]
    TooLong {
        /// The sequence.
        seq: u32,
        /// Tokens it would hold.
        len: usize,
        /// Context size in cells.
        n_ctx: u32,
    },
    /// Truncation past the sequence's end.
    #[error("cannot truncate sequence {seq} of {len} tokens to {pos}")]
    BadTruncate {
        /// The sequence.
        seq: u32,
        /// The requested length.
        pos: usize,
        /// Its current length.
        len: usize,
    },
    /// The sequence is generating.
    #[error("sequence {0} is generating; wait until it finishes")]
    Busy(u32),
    /// Parameters out of range, explained.
    #[error("invalid generation parameters: {0}")]
    Params(String),
    /// Sampling parameters out of range.
    #[error("invalid generation parameters: {0}")]
    Sampling(crate::sampling::SamplingError),
    /// Whoever ran the sequences stopped (a server's request was cancelled,
    /// or the server is shutting down).
    #[error("{0}")]
    Interrupted(String),
}

/// A sequence handle (a slot in the context).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeqId(pub u32);

/// What one generation should do.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerateParams {
    /// How tokens are drawn.
    pub sampling: SamplingParams,
    /// Most tokens to generate in this call.
    pub max_new_tokens: usize,
    /// Generation stops once the generated text contains any of these; the
    /// token that completed it is kept (e.g. the end of a tool call).
    pub stop: Vec<String>,
    /// Stop at end-of-generation tokens (EOS, `<|im_end|>`); the token is kept.
    pub stop_at_eog: bool,
    /// When set, stop strings count only in text after the first occurrence
    /// of this string (a Markdown tool call ends at the fence that closes a
    /// ```` ```python ```` block, not at any fence).
    pub stop_after: Option<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            sampling: SamplingParams::default(),
            max_new_tokens: 256,
            stop: Vec::new(),
            stop_at_eog: true,
            stop_after: None,
        }
    }
}

/// Why a generation ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FinishReason {
    /// An end-of-generation token was sampled.
    Eog,
    /// The text reached this stop string.
    Stop(String),
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The sequence reached the context's length.
    ContextLength,
}

/// The tokens one generation produced, with their log-probabilities.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The generated tokens.
    pub tokens: Vec<Token>,
    /// log p(token) under the model at temperature 1, one per token.
    pub logprobs: Vec<f32>,
    /// log p(token) under the sampling distribution, one per token.
    pub sampler_logprobs: Vec<f32>,
    /// The tokens' text (special tokens rendered).
    pub text: String,
    /// Why generation stopped.
    pub finish: FinishReason,
}

/// Context shape and threading of a [`Decoder`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecoderConfig {
    /// KV cells shared by all sequences; a shared prefix counts once.
    pub n_ctx: u32,
    /// Most sequences open at once.
    pub n_seq_max: u32,
    /// Most tokens per decode call.
    pub n_batch: u32,
    /// Decode threads (0: all cores).
    pub n_threads: i32,
    /// llama.cpp flash attention (`None`: llama.cpp decides, on for CPU).
    /// `Some(false)` makes every split of a sequence into decode calls give
    /// bit-identical logits (a rolled back and grafted sequence then equals a
    /// fresh decode of it exactly), at some cost in speed and in agreement
    /// across batch compositions; see `llama::ContextParams`.
    pub flash_attention: Option<bool>,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            n_ctx: 8192,
            n_seq_max: 16,
            n_batch: 512,
            n_threads: 0,
            flash_attention: None,
        }
    }
}

/// What a batch takes from one sequence: its slot, the batch index of its
/// last entry when that ends its pending run (logits are read there), and
/// the number of tokens.
type Taken = (usize, Option<usize>, usize);

struct Generating {
    params: GenerateParams,
    rng: Rng,
    out: Generation,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct Slot {
    open: bool,
    tokens: Vec<Token>,
    n_cached: usize,
    /// Logits after the last token, when it is cached and they are known.
    next_logits: Option<Vec<f32>>,
    /// Row of the last decode holding those logits (a generating sequence
    /// samples straight from the context's buffer, no copy).
    logits_row: Option<usize>,
    gen: Option<Generating>,
    /// Opening order: the sequence opened last is the first to wait.
    opened: u64,
    /// Gave its cells back for lack of room; decodes skip it until resumed.
    waiting: bool,
    /// Alternatives recorded per sampled token (0: none); see
    /// [`Decoder::set_top_logprobs`].
    top_n: usize,
    /// The `top_n` most likely tokens at each position sampled since the
    /// last `start`, kept after the generation finishes until the sequence
    /// is restarted or closed.
    top: Vec<Vec<(Token, f32)>>,
}

/// The rollout engine. See the module documentation.
pub struct Decoder {
    ctx: Context,
    slots: Vec<Slot>,
    stats: DecoderStats,
    /// Sequences opened so far (the next one's `Slot::opened`).
    opened: u64,
    /// Cells were freed since the last decode: a waiting sequence may resume.
    freed: bool,
}

/// Counters since the decoder was created.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct DecoderStats {
    /// llama_decode calls.
    pub decode_calls: u64,
    /// Tokens put through llama_decode (prefill and generation).
    pub tokens_decoded: u64,
    /// Tokens sampled.
    pub tokens_generated: u64,
    /// Times a sequence gave its cells back to wait for room (each is
    /// prefilled again when it resumes).
    #[serde(default)]
    pub preemptions: u64,
}

impl Decoder {
    /// A rollout engine with its own context for `model`.
    pub fn new(model: Arc<Model>, config: &DecoderConfig) -> Result<Decoder, RolloutError> {
        let ctx = Context::new(
            model,
            ContextParams {
                n_ctx: config.n_ctx,
                n_seq_max: config.n_seq_max,
                n_batch: config.n_batch.max(config.n_seq_max),
                n_threads: config.n_threads,
                flash_attention: config.flash_attention,
            },
        )?;
        let slots = (0..config.n_seq_max).map(|_| Slot::default()).collect();
        Ok(Decoder {
            ctx,
            slots,
            stats: DecoderStats::default(),
            opened: 0,
            freed: false,
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        self.ctx.model()
    }

    /// Counters since creation.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Positions available to one sequence.
    pub fn n_ctx(&self) -> u32 {
        self.ctx.n_ctx()
    }

    /// Sequence slots.
    pub fn n_seq_max(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Open sequences.
    pub fn n_open(&self) -> usize {
        self.slots.iter().filter(|s| s.open).count()
    }

    fn slot(&self, seq: SeqId) -> Result<&Slot, RolloutError> {
        self.slots
            .get(seq.0 as usize)
            .filter(|s| s.open)
            .ok_or(RolloutError::NotOpen(seq.0))
    }

    fn slot_mut(&mut self, seq: SeqId) -> Result<&mut Slot, RolloutError> {
        self.slots
            .get_mut(seq.0 as usize)
            .filter(|s| s.open)
            .ok_or(RolloutError::NotOpen(seq.0))
    }

    fn idle_slot_mut(&mut self, seq: SeqId) -> Result<&mut Slot, RolloutError> {
        let slot = self.slot_mut(seq)?;
        if slot.gen.is_some() {
            return Err(RolloutError::Busy(seq.0));
        }
        Ok(slot)
    }

    /// Opens an empty sequence.
    pub fn open(&mut self) -> Result<SeqId, RolloutError> {
        let n = self.slots.len() as u32;
        let i = self
            .slots
            .iter()
            .position(|s| !s.open)
            .ok_or(RolloutError::NoFreeSlot(n))?;
        self.opened += 1;
        self.slots[i] = Slot {
            open: true,
            opened: self.opened,
            ..Default::default()
        };
        Ok(SeqId(i as u32))
    }

    /// Opens a sequence holding `tokens` (prefilled by the next decode).
    pub fn open_with(&mut self, tokens: &[Token]) -> Result<SeqId, RolloutError> {
        let seq = self.open()?;
        if let Err(e) = self.append(seq, tokens) {
            self.close(seq);
            return Err(e);
        }
        Ok(seq)
    }

    /// Closes a sequence and frees its cache cells and slot. Closing a closed
    /// sequence does nothing.
    pub fn close(&mut self, seq: SeqId) {
        if let Some(slot) = self.slots.get_mut(seq.0 as usize) {
            if slot.open {
                self.ctx.seq_rm(seq.0 as i32, 0);
                *slot = Slot::default();
                self.freed = true;
            }
        }
    }

    /// Records, for every token `seq` samples from now on, the `n` most
    /// likely tokens and their log-probabilities at temperature 1 (an API's
    /// `top_logprobs`); 0 stops recording. Costs a partial selection over
    /// the vocabulary per token, so it is off unless asked for.
    pub fn set_top_logprobs(&mut self, seq: SeqId, n: usize) -> Result<(), RolloutError> {
        self.slot_mut(seq)?.top_n = n;
        Ok(())
    }

    /// The alternatives recorded for each token sampled since `seq`'s last
    /// `start` (see [`Decoder::set_top_logprobs`]); still there after the
    /// generation finished, until the sequence is restarted or closed.
    pub fn top_logprobs(&self, seq: SeqId) -> Result<&[Vec<(Token, f32)>], RolloutError> {
        Ok(&self.slot(seq)?.top)
    }

    /// What a generating sequence has produced so far (its `text` is filled
    /// in only when it finishes); `None` if it is not generating. A server
    /// streams tokens from this after every `step`.
    pub fn partial(&self, seq: SeqId) -> Option<&Generation> {
        self.slot(seq).ok()?.gen.as_ref().map(|g| &g.out)
    }

    /// Cache positions held, summed over every sequence id as llama.cpp's
    /// memory reports them (a prefix shared by forks counts once per
    /// sequence). 0 when nothing is cached: how a server checks that closed
    /// and cancelled sequences gave their cells back.
    pub fn cached_positions(&self) -> usize {
        (0..self.slots.len() as i32)
            .map(|s| (self.ctx.seq_pos_max(s) + 1).max(0) as usize)
            .sum()
    }

    /// Closes every sequence and empties the cache.
    pub fn reset(&mut self) {
        self.ctx.clear();
        for s in &mut self.slots {
            *s = Slot::default();
        }
    }

    /// All tokens of a sequence, cached and pending.
    pub fn tokens(&self, seq: SeqId) -> Result<&[Token], RolloutError> {
        Ok(&self.slot(seq)?.tokens)
    }

    /// Tokens in `seq`.
    pub fn len(&self, seq: SeqId) -> Result<usize, RolloutError> {
        Ok(self.slot(seq)?.tokens.len())
    }

    /// Whether `seq` is generating.
    pub fn is_generating(&self, seq: SeqId) -> bool {
        self.slot(seq).map(|s| s.gen.is_some()).unwrap_or(false)
    }

    /// Sequences generating now.
    pub fn n_generating(&self) -> usize {
        self.slots.iter().filter(|s| s.gen.is_some()).count()
    }

    /// Appends tokens to a sequence (an observation, a grafted correction).
    /// They are prefilled by the next `step` or `flush`, batched with other work.
    pub fn append(&mut self, seq: SeqId, tokens: &[Token]) -> Result<(), RolloutError> {
        let n_ctx = self.ctx.n_ctx();
        for &t in tokens {
            self.ctx.model().check_token(t)?;
        }
        let slot = self.idle_slot_mut(seq)?;
        let len = slot.tokens.len() + tokens.len();
        if len > n_ctx as usize {
            return Err(RolloutError::TooLong {
                seq: seq.0,
                len,
                n_ctx,
            });
        }
        if !tokens.is_empty() {
            slot.tokens.extend_from_slice(tokens);
            slot.next_logits = None;
            slot.logits_row = None;
        }
        Ok(())
    }

    /// Cuts a sequence back to its first `pos` tokens, dropping later cache
    /// entries; nothing before `pos` is recomputed.
    pub fn truncate(&mut self, seq: SeqId, pos: usize) -> Result<(), RolloutError> {
        let slot = self.idle_slot_mut(seq)?;
        let len = slot.tokens.len();
        if pos > len {
            return Err(RolloutError::BadTruncate {
                seq: seq.0,
                pos,
                len,
            });
        }
        if pos == len {
            return Ok(());
        }
        slot.tokens.truncate(pos);
        slot.next_logits = None;
        slot.logits_row = None;
        if slot.n_cached > pos {
            slot.n_cached = pos;
            self.ctx.seq_rm(seq.0 as i32, pos as i32);
            self.freed = true;
        }
        Ok(())
    }

    /// Opens a new sequence sharing `seq`'s tokens and cache: the prefix is
    /// prefilled once (now, if pending) and its cells are shared, not copied.
    pub fn fork(&mut self, seq: SeqId) -> Result<SeqId, RolloutError> {
        self.idle_slot_mut(seq)?;
        self.flush()?;
        let dst = self.open()?;
        self.ctx.seq_cp(seq.0 as i32, dst.0 as i32);
        let (tokens, n_cached, logits) = {
            let s = &self.slots[seq.0 as usize];
            (s.tokens.clone(), s.n_cached, s.next_logits.clone())
        };
        let d = &mut self.slots[dst.0 as usize];
        d.tokens = tokens;
        d.n_cached = n_cached;
        d.next_logits = logits;
        Ok(dst)
    }

    /// Prefills everything pending in all idle sequences (but those waiting
    /// for cells, which stay pending).
    pub fn flush(&mut self) -> Result<(), RolloutError> {
        while self
            .slots
            .iter()
            .any(|s| s.open && !s.waiting && s.gen.is_none() && s.n_cached < s.tokens.len())
        {
            if !self.decode_round(false)? {
                break;
            }
        }
        Ok(())
    }

    /// Sequences waiting for cells now.
    pub fn n_waiting(&self) -> usize {
        self.slots.iter().filter(|s| s.open && s.waiting).count()
    }

    /// Logits for the token after `seq`'s last one (prefilling if needed).
    pub fn next_logits(&mut self, seq: SeqId) -> Result<&[f32], RolloutError> {
        self.idle_slot_mut(seq)?;
        self.ensure_logits(seq)?;
        self.flush()?;
        let s = &mut self.slots[seq.0 as usize];
        if s.waiting {
            return Err(RolloutError::Llama(LlamaError::KvCacheFull {
                n_tokens: s.tokens.len(),
                n_ctx: self.ctx.n_ctx(),
            }));
        }
        if let Some(b) = s.logits_row.take() {
            s.next_logits = self.ctx.logits(b).map(|row| row.to_vec());
        }
        Ok(self.slots[seq.0 as usize]
            .next_logits
            .as_deref()
            .unwrap_or(&[]))
    }

    /// Makes sure the next decode will produce logits for `seq`'s last token:
    /// if it is cached but its logits were dropped, it is decoded again.
    fn ensure_logits(&mut self, seq: SeqId) -> Result<(), RolloutError> {
        let s = &mut self.slots[seq.0 as usize];
        if s.tokens.is_empty() {
            return Err(RolloutError::Params(format!(
                "sequence {} is empty: append a prompt first",
                seq.0
            )));
        }
        if s.next_logits.is_none() && s.logits_row.is_none() && s.n_cached == s.tokens.len() {
            s.n_cached -= 1;
            self.ctx.seq_rm(seq.0 as i32, s.n_cached as i32);
        }
        Ok(())
    }

    /// Starts generating on `seq`; tokens come with the following `step`s.
    pub fn start(&mut self, seq: SeqId, params: GenerateParams) -> Result<(), RolloutError> {
        params.sampling.validate().map_err(RolloutError::Sampling)?;
        if params.max_new_tokens == 0 {
            return Err(RolloutError::Params(
                "max_new_tokens must be at least 1".into(),
            ));
        }
        if params.stop.iter().any(|s| s.is_empty()) {
            return Err(RolloutError::Params(
                "stop strings must not be empty".into(),
            ));
        }
        self.idle_slot_mut(seq)?;
        self.ensure_logits(seq)?;
        let rng = Rng::new(params.sampling.seed);
        self.slots[seq.0 as usize].top.clear();
        self.slots[seq.0 as usize].gen = Some(Generating {
            params,
            rng,
            out: Generation {
                tokens: Vec::new(),
                logprobs: Vec::new(),
                sampler_logprobs: Vec::new(),
                text: String::new(),
                finish: FinishReason::MaxTokens,
            },
            bytes: Vec::new(),
        });
        Ok(())
    }

    /// One decode call: every generating sequence advances by one token and
    /// pending tokens of the others are prefilled alongside. Returns the
    /// generations that finished in this step.
    pub fn step(&mut self) -> Result<Vec<(SeqId, Generation)>, RolloutError> {
        // Sequences whose logits are already known sample without a decode.
        let mut finished = self.sample_ready()?;
        if self
            .slots
            .iter()
            .any(|s| s.open && s.n_cached < s.tokens.len())
        {
            self.decode_round(true)?;
            finished.extend(self.sample_ready()?);
        }
        Ok(finished)
    }

    /// Runs `step` until no sequence is generating.
    pub fn run_to_completion(&mut self) -> Result<Vec<(SeqId, Generation)>, RolloutError> {
        let mut done = Vec::new();
        while self.n_generating() > 0 {
            done.extend(self.step()?);
        }
        Ok(done)
    }

    /// Builds and decodes one batch. Generating sequences come first (one
    /// pending token each, normally), then prefill of pending tokens up to
    /// `n_batch`. Logits are requested only where a sequence's pending run ends.
    /// When the cache has no room for the batch, the sequence opened last
    /// waits (see the module documentation) and the batch is built again.
    /// Returns whether anything was decoded.
    fn decode_round(&mut self, include_generating: bool) -> Result<bool, RolloutError> {
        // Rows of the previous decode are about to be overwritten: keep any
        // that nobody consumed yet.
        for s in &mut self.slots {
            if let Some(b) = s.logits_row.take() {
                s.next_logits = self.ctx.logits(b).map(|row| row.to_vec());
            }
        }
        let has_work = |s: &Slot| {
            s.open
                && !s.waiting
                && s.n_cached < s.tokens.len()
                && (include_generating || s.gen.is_none())
        };
        // One waiting sequence resumes when cells were freed, or when nothing
        // else has work (its turn has come: it is then the only candidate).
        if self.freed || !self.slots.iter().any(has_work) {
            self.freed = false;
            if let Some(s) = self
                .slots
                .iter_mut()
                .filter(|s| s.open && s.waiting)
                .min_by_key(|s| s.opened)
            {
                s.waiting = false;
            }
        }
        loop {
            let (entries, taken) = self.build_batch(include_generating);
            if entries.is_empty() {
                return Ok(false);
            }
            match self.ctx.decode(&entries) {
                Ok(()) => {
                    self.stats.decode_calls += 1;
                    self.stats.tokens_decoded += entries.len() as u64;
                    for (i, logit_index, n) in taken {
                        let s = &mut self.slots[i];
                        s.n_cached += n;
                        s.next_logits = None;
                        match logit_index {
                            Some(b) if s.gen.is_some() => s.logits_row = Some(b),
                            Some(b) => s.next_logits = self.ctx.logits(b).map(|row| row.to_vec()),
                            None => {}
                        }
                    }
                    return Ok(true);
                }
                // llama.cpp left the cache as it was: make room and retry.
                Err(full @ LlamaError::KvCacheFull { .. }) => {
                    if !self.preempt_newest() {
                        return Err(full.into());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The open sequence opened last, unless it is the only one not waiting,
    /// gives its cells back and waits; its tokens become pending again.
    /// Returns false when no sequence could give way.
    fn preempt_newest(&mut self) -> bool {
        let active = self.slots.iter().filter(|s| s.open && !s.waiting).count();
        if active < 2 {
            return false;
        }
        let Some(i) = (0..self.slots.len())
            .filter(|&i| self.slots[i].open && !self.slots[i].waiting)
            .max_by_key(|&i| self.slots[i].opened)
        else {
            return false;
        };
        self.ctx.seq_rm(i as i32, 0);
        let s = &mut self.slots[i];
        s.n_cached = 0;
        s.next_logits = None;
        s.logits_row = None;
        s.waiting = true;
        self.stats.preemptions += 1;
        ::log::debug!(
            "KV cache full: sequence {i} waits for cells ({} tokens to prefill again)",
            s.tokens.len()
        );
        true
    }

    /// The next batch, and what it takes from each sequence.
    fn build_batch(&self, include_generating: bool) -> (Vec<BatchEntry>, Vec<Taken>) {
        let budget = self.ctx.params().n_batch as usize;
        let mut entries: Vec<BatchEntry> = Vec::new();
        // (slot, batch index of its last entry, tokens taken)
        let mut taken: Vec<Taken> = Vec::new();
        let order: Vec<usize> = {
            let mut gen: Vec<usize> = Vec::new();
            let mut idle: Vec<usize> = Vec::new();
            for (i, s) in self.slots.iter().enumerate() {
                if s.open && !s.waiting && s.n_cached < s.tokens.len() {
                    if s.gen.is_some() {
                        if include_generating {
                            gen.push(i);
                        }
                    } else {
                        idle.push(i);
                    }
                }
            }
            gen.extend(idle);
            gen
        };
        for i in order {
            let room = budget - entries.len();
            if room == 0 {
                break;
            }
            let s = &self.slots[i];
            let n = (s.tokens.len() - s.n_cached).min(room);
            let reaches_end = s.n_cached + n == s.tokens.len();
            for k in 0..n {
                let pos = s.n_cached + k;
                entries.push(BatchEntry {
                    token: s.tokens[pos],
                    pos: pos as i32,
                    seq: i as i32,
                    logits: reaches_end && k + 1 == n,
                });
            }
            taken.push((i, reaches_end.then(|| entries.len() - 1), n));
        }
        (entries, taken)
    }

    /// Samples one token for every generating sequence whose next logits are
    /// known; returns those that finished. On the CPU backend sequential on
    /// purpose: right after a decode llama.cpp's worker threads are still
    /// spinning, and a rayon fan-out over the same cores measured slower
    /// (bench rollout, B = 8: ratio 0.95 parallel vs 0.97 sequential). When
    /// the model runs on a GPU the cores are idle, and sampling B rows of the
    /// vocabulary one after another was most of each step (H100, Qwen2.5's
    /// 151,936 logits, B = 128: 0.13x of llama-batched-bench's tokens/s).
    fn sample_ready(&mut self) -> Result<Vec<(SeqId, Generation)>, RolloutError> {
        let n_ctx = self.ctx.n_ctx() as usize;
        let model = self.ctx.model().clone();
        let ctx = &self.ctx;
        let ready: Vec<_> = self
            .slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| {
                if s.n_cached != s.tokens.len() {
                    return None;
                }
                let g = s.gen.as_mut()?;
                let row = match (s.logits_row.take(), s.next_logits.as_deref()) {
                    (Some(b), _) => ctx.logits(b)?,
                    (None, Some(row)) => row,
                    (None, None) => return None,
                };
                Some((i, row, &g.params.sampling, &mut g.rng, s.top_n))
            })
            .collect::<Vec<_>>();
        let pick =
            |(i, row, params, rng, top_n): (usize, &[f32], &SamplingParams, &mut Rng, usize)| {
                let top = (top_n > 0).then(|| sampling::top_logprobs(row, top_n));
                (i, sampling::sample(row, params, rng), top)
            };
        let picks: Vec<_> = if model.offloaded() && ready.len() > 1 {
            ready.into_par_iter().map(pick).collect()
        } else {
            ready.into_iter().map(pick).collect()
        };
        let mut finished = Vec::new();
        for (i, pick, top) in picks {
            let s = &mut self.slots[i];
            let Some(g) = s.gen.as_mut() else { continue };
            s.top.extend(top);
            s.tokens.push(pick.token);
            s.next_logits = None;
            g.out.tokens.push(pick.token);
            g.out.logprobs.push(pick.logprob);
            g.out.sampler_logprobs.push(pick.sampler_logprob);
            let before = g.bytes.len();
            g.bytes.extend_from_slice(model.piece(pick.token));
            self.stats.tokens_generated += 1;
            let finish = if g.params.stop_at_eog && model.is_eog(pick.token) {
                Some(FinishReason::Eog)
            } else if let Some(stop) = armed_from(&g.bytes, g.params.stop_after.as_deref())
                .and_then(|armed| find_stop(&g.bytes, before.max(armed), &g.params.stop))
            {
                Some(FinishReason::Stop(stop))
            } else if g.out.tokens.len() >= g.params.max_new_tokens {
                Some(FinishReason::MaxTokens)
            } else if s.tokens.len() >= n_ctx {
                Some(FinishReason::ContextLength)
            } else {
                None
            };
            if let Some(reason) = finish {
                if let Some(mut g) = s.gen.take() {
                    g.out.finish = reason;
                    g.out.text = String::from_utf8_lossy(&g.bytes).into_owned();
                    finished.push((SeqId(i as u32), g.out));
                }
            }
        }
        Ok(finished)
    }

    /// Generates for many prompts with continuous batching: up to `n_seq_max`
    /// run at once and a finished sequence's slot goes to the next prompt.
    /// Results come back in input order. Sequences are closed afterwards.
    pub fn generate(
        &mut self,
        jobs: &[(Vec<Token>, GenerateParams)],
    ) -> Result<Vec<Generation>, RolloutError> {
        let mut results: Vec<Option<Generation>> = vec![None; jobs.len()];
        let mut running: Vec<(SeqId, usize)> = Vec::new();
        let mut next = 0;
        let out: Result<(), RolloutError> = (|| {
            while next < jobs.len() || !running.is_empty() {
                while next < jobs.len() && self.n_open() < self.slots.len() {
                    let (prompt, params) = &jobs[next];
                    let seq = self.open_with(prompt)?;
                    running.push((seq, next));
                    self.start(seq, params.clone())?;
                    next += 1;
                }
                for (seq, generation) in self.step()? {
                    if let Some(k) = running.iter().position(|(s, _)| *s == seq) {
                        let (_, job) = running.swap_remove(k);
                        results[job] = Some(generation);
                        self.close(seq);
                    }
                }
            }
            Ok(())
        })();
        for (seq, _) in running {
            self.close(seq);
        }
        out?;
        Ok(results.into_iter().flatten().collect())
    }

    /// Generates `params.len()` continuations of one prompt that share its
    /// prefill: the prompt is decoded once and forked. Sequences are closed
    /// afterwards.
    pub fn generate_group(
        &mut self,
        prompt: &[Token],
        params: &[GenerateParams],
    ) -> Result<Vec<Generation>, RolloutError> {
        let root = self.open_with(prompt)?;
        let mut seqs = Vec::new();
        let result = (|| {
            self.ensure_logits(root)?;
            self.flush()?;
            for p in params {
                let seq = self.fork(root)?;
                seqs.push(seq);
                self.start(seq, p.clone())?;
            }
            self.close(root);
            let mut done = self.run_to_completion()?;
            done.sort_by_key(|(s, _)| seqs.iter().position(|x| x == s));
            Ok(done.into_iter().map(|(_, g)| g).collect())
        })();
        self.close(root);
        for s in seqs {
            self.close(s);
        }
        result
    }

    /// Appends `tokens` to `seq` and prefills them now, returning the logits
    /// row at every appended position (row `k` predicts the token after
    /// `tokens[k]`). Anything pending before is prefilled first.
    pub fn append_with_logits(
        &mut self,
        seq: SeqId,
        tokens: &[Token],
    ) -> Result<Vec<Vec<f32>>, RolloutError> {
        self.append(seq, &[])?;
        self.flush()?;
        let start = self.slot(seq)?.tokens.len();
        self.append(seq, tokens)?;
        let budget = self.ctx.params().n_batch as usize;
        let mut rows = Vec::with_capacity(tokens.len());
        for (c, chunk) in tokens.chunks(budget).enumerate() {
            let base = start + c * budget;
            let entries: Vec<BatchEntry> = chunk
                .iter()
                .enumerate()
                .map(|(k, &token)| BatchEntry {
                    token,
                    pos: (base + k) as i32,
                    seq: seq.0 as i32,
                    logits: true,
                })
                .collect();
            if let Err(e) = self.ctx.decode(&entries) {
                // Keep the invariant: what was not decoded stays pending.
                return Err(e.into());
            }
            self.stats.decode_calls += 1;
            self.stats.tokens_decoded += entries.len() as u64;
            self.slots[seq.0 as usize].n_cached = base + chunk.len();
            for k in 0..chunk.len() {
                rows.push(self.ctx.logits(k).map(|r| r.to_vec()).unwrap_or_default());
            }
        }
        self.slots[seq.0 as usize].next_logits = rows.last().cloned();
        Ok(rows)
    }

    /// Per-position log-probabilities of `tokens[1..]` given their prefixes,
    /// and optionally the full logits rows, by prefilling a fresh sequence.
    /// Used to re-score trajectories and to check cache edits.
    pub fn score(
        &mut self,
        tokens: &[Token],
        want_logits: bool,
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>), RolloutError> {
        let seq = self.open()?;
        let rows = self.append_with_logits(seq, tokens);
        self.close(seq);
        let rows = rows?;
        let logprobs = rows
            .iter()
            .zip(tokens.iter().skip(1))
            .map(|(row, &next)| {
                row.get(next as usize).copied().unwrap_or(f32::NAN)
                    - cleaner_kernels::softmax::logsumexp(row)
            })
            .collect();
        Ok((logprobs, if want_logits { rows } else { Vec::new() }))
    }

    /// Applies `adapter` (scale 1) to every following decode, or returns to
    /// the base model with `None`. No reload of model or context; cache
    /// entries computed before belong to the previous weights.
    pub fn set_adapter(&mut self, adapter: Option<Arc<LoraAdapter>>) -> Result<(), RolloutError> {
        let list: Vec<(Arc<LoraAdapter>, f32)> = adapter.into_iter().map(|a| (a, 1.0)).collect();
        self.ctx.set_adapters(&list)?;
        Ok(())
    }

    /// The adapter now applied, if any.
    pub fn adapter(&self) -> Option<&Arc<LoraAdapter>> {
        self.ctx.adapters().first().map(|(a, _)| a)
    }
}

/// Where stop strings start to count: 0 without a marker, just after the
/// marker's first occurrence with one, `None` while the marker is absent.
fn armed_from(bytes: &[u8], marker: Option<&str>) -> Option<usize> {
    match marker {
        None => Some(0),
        Some(m) => bytes
            .windows(m.len().max(1))
            .position(|w| w == m.as_bytes())
            .map(|p| p + m.len()),
    }
}

/// The first stop string that now appears in `bytes` and did not end before
/// `new_from` (so each is found once, at the token that completes it).
fn find_stop(bytes: &[u8], new_from: usize, stops: &[String]) -> Option<String> {
    stops.iter().find_map(|s| {
        let s_bytes = s.as_bytes();
        let from = new_from.saturating_sub(s_bytes.len().saturating_sub(1));
        bytes[from..]
            .windows(s_bytes.len())
            .any(|w| w == s_bytes)
            .then(|| s.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::find_stop;

    #[test]
    fn stop_strings_found_across_token_boundaries() {
        let stops = vec!["</tool_call>".to_string(), "```\n".to_string()];
        assert_eq!(find_stop(b"abc</tool_", 3, &stops), None);
        assert_eq!(
            find_stop(b"abc</tool_call>", 10, &stops),
            Some("</tool_call>".into())
        );
        assert_eq!(
            find_stop(b"x = 1\n```\nmore", 8, &stops),
            Some("```\n".into())
        );
        assert_eq!(find_stop(b"```\nlater text", 10, &stops), None);
    }

    #[test]
    fn stop_after_marker() {
        use super::armed_from;
        assert_eq!(armed_from(b"text ```\n", Some("```python")), None);
        let t = b"```\nx\n```python\nprint(1)\n```\n";
        let armed = armed_from(t, Some("```python")).unwrap();
        assert_eq!(armed, 15);
        assert_eq!(
            find_stop(t, armed, &["```\n".to_string()]),
            Some("```\n".into())
        );
        assert_eq!(find_stop(&t[..20], armed, &["```\n".to_string()]), None);
    }
}
