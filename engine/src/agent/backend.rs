//! What the agent needs from a rollout engine. [`Decoder`] implements it over
//! llama.cpp; tests drive the agent with a scripted implementation through
//! the same interface, so every SAAR branch can be checked token by token.

use crate::llama::Token;
use crate::rollout::{Decoder, GenerateParams, Generation, RolloutError, SeqId};

/// What the agent needs from a rollout engine (see the module documentation).
pub trait Backend {
    /// A new sequence holding `tokens` (prefilled by the next step).
    fn open_with(&mut self, tokens: &[Token]) -> Result<SeqId, RolloutError>;
    /// A new sequence sharing `seq`'s cached prefix.
    fn fork(&mut self, seq: SeqId) -> Result<SeqId, RolloutError>;
    /// Queues tokens (observation, graft) after `seq`'s last.
    fn append(&mut self, seq: SeqId, tokens: &[Token]) -> Result<(), RolloutError>;
    /// Drops everything from `pos` on, tokens and cache.
    fn truncate(&mut self, seq: SeqId, pos: usize) -> Result<(), RolloutError>;
    /// Starts generating on `seq`.
    fn start(&mut self, seq: SeqId, params: GenerateParams) -> Result<(), RolloutError>;
    /// One decode for all generating sequences; returns those that finished.
    fn step(&mut self) -> Result<Vec<(SeqId, Generation)>, RolloutError>;
    /// Sequences generating now.
    fn n_generating(&self) -> usize;
    /// The tokens of `seq`.
    fn tokens(&self, seq: SeqId) -> Result<Vec<Token>, RolloutError>;
    /// Frees `seq`'s slot and cache.
    fn close(&mut self, seq: SeqId);
    /// Most sequences open at once.
    fn capacity(&self) -> usize;
    /// Tokenizes text that follows model output (observations, special
    /// tokens parsed, no BOS).
    fn tokenize(&self, text: &str) -> Result<Vec<Token>, RolloutError>;
    /// The bytes of one token.
    fn piece(&self, token: Token) -> Vec<u8>;
    /// Text of tokens (invalid UTF-8 replaced).
    fn detokenize(&self, tokens: &[Token]) -> String {
        let bytes: Vec<u8> = tokens.iter().flat_map(|&t| self.piece(t)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Backend for Decoder {
    fn open_with(&mut self, tokens: &[Token]) -> Result<SeqId, RolloutError> {
        Decoder::open_with(self, tokens)
    }
    fn fork(&mut self, seq: SeqId) -> Result<SeqId, RolloutError> {
        Decoder::fork(self, seq)
    }
    fn append(&mut self, seq: SeqId, tokens: &[Token]) -> Result<(), RolloutError> {
        Decoder::append(self, seq, tokens)
    }
    fn truncate(&mut self, seq: SeqId, pos: usize) -> Result<(), RolloutError> {
        Decoder::truncate(self, seq, pos)
    }
    fn start(&mut self, seq: SeqId, params: GenerateParams) -> Result<(), RolloutError> {
        Decoder::start(self, seq, params)
    }
    fn step(&mut self) -> Result<Vec<(SeqId, Generation)>, RolloutError> {
        Decoder::step(self)
    }
    fn n_generating(&self) -> usize {
        Decoder::n_generating(self)
    }
    fn tokens(&self, seq: SeqId) -> Result<Vec<Token>, RolloutError> {
        Decoder::tokens(self, seq).map(|t| t.to_vec())
    }
    fn close(&mut self, seq: SeqId) {
        Decoder::close(self, seq)
    }
    fn capacity(&self) -> usize {
        self.n_seq_max() as usize
    }
    fn tokenize(&self, text: &str) -> Result<Vec<Token>, RolloutError> {
        Ok(self.model().tokenize(text, false, true)?)
    }
    fn piece(&self, token: Token) -> Vec<u8> {
        self.model().piece(token).to_vec()
    }
}
