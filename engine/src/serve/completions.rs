//! `POST /v1/completions`: a raw prompt (text or token ids, no chat
//! template), with the legacy response shape (`text`, `logprobs` as parallel
//! lists). Sampling options are checked by the chat request's rules, so the
//! two endpoints accept and refuse the same values.

use serde::Deserialize;
use serde_json::{json, Map, Value as Json};

use crate::serve::error::ApiError;
use crate::serve::request::{ChatRequest, Checked, Stop, StreamOptions};
use crate::{Model, Token};

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    /// The model id.
    pub model: String,
    /// Text, token ids, or a list holding one of them.
    pub prompt: Prompt,
    /// Sampling temperature in [0, 2]; default 1.
    pub temperature: Option<f32>,
    /// Nucleus mass in (0, 1].
    pub top_p: Option<f32>,
    /// vLLM's extension: top-k (0 or -1: all).
    pub top_k: Option<i64>,
    /// Most tokens per choice; default 16, as OpenAI's.
    pub max_tokens: Option<i64>,
    /// Choices.
    pub n: Option<i64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Seed; choice i uses seed + i.
    pub seed: Option<i64>,
    /// Log-probabilities with this many alternatives (0..=20).
    pub logprobs: Option<i64>,
    /// Put the prompt's text before each choice's text.
    pub echo: Option<bool>,
    /// Stream as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// vLLM's extension: prompt and completion token ids.
    pub return_token_ids: Option<bool>,
    /// vLLM's extension: generate past end-of-generation tokens.
    pub ignore_eos: Option<bool>,
    /// Accepted and ignored.
    pub user: Option<String>,
    /// Accepted when 0.
    pub frequency_penalty: Option<f32>,
    /// Accepted when 0.
    pub presence_penalty: Option<f32>,
}

/// `prompt`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Text, tokenized here.
    Text(String),
    /// Token ids.
    Tokens(Vec<i64>),
    /// Several texts (only one is supported).
    Texts(Vec<String>),
    /// Several token lists (only one is supported).
    TokenLists(Vec<Vec<i64>>),
}

/// Default `max_tokens` of the completions API.
pub const DEFAULT_MAX_TOKENS: usize = 16;

/// A checked request: the options, the prompt's tokens and what `echo`
/// puts before each choice's text.
pub struct CheckedCompletion {
    /// Sampling and output options.
    pub options: Checked,
    /// The prompt's tokens.
    pub prompt: Vec<Token>,
    /// With `echo`: the prompt's text as sent, or a token prompt rendered
    /// whole (special tokens included); empty without.
    pub echo: String,
}

/// Parses a body, naming the field of a type error.
pub fn parse(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    crate::serve::request::parse_as(body)
}

impl CompletionRequest {
    /// Checks the options by the chat rules and tokenizes the prompt.
    pub fn check(self, model: &Model, max_n: usize) -> Result<CheckedCompletion, ApiError> {
        let logprobs = self.logprobs;
        let as_chat = ChatRequest {
            model: self.model,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_tokens: Some(self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS as i64)),
            n: self.n,
            stop: self.stop,
            seed: self.seed,
            logprobs: logprobs.map(|_| true),
            top_logprobs: logprobs,
            stream: self.stream,
            stream_options: self.stream_options,
            return_token_ids: self.return_token_ids,
            ignore_eos: self.ignore_eos,
            user: self.user,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            ..Default::default()
        };
        let options = as_chat.check_options(max_n).map_err(|mut e| {
            // The chat rule is about top_logprobs; here the field is logprobs.
            if e.param.as_deref() == Some("top_logprobs") {
                e.param = Some("logprobs".into());
                e.message = e.message.replace("top_logprobs", "logprobs");
            }
            e
        })?;
        // The text echoes as sent: rendering the tokens back would have to
        // guess which BOS the tokenizer added (SmolLM2's BOS is also its
        // turn marker, so a chat prompt holds several).
        let (prompt, text) = match self.prompt {
            Prompt::Text(t) => (tokenize(model, &t)?, Some(t)),
            Prompt::Tokens(ids) => (token_ids(model, &ids, "prompt")?, None),
            Prompt::Texts(mut v) if v.len() == 1 => {
                let t = v.remove(0);
                (tokenize(model, &t)?, Some(t))
            }
            Prompt::TokenLists(v) if v.len() == 1 => (token_ids(model, &v[0], "prompt[0]")?, None),
            Prompt::Texts(v) => return Err(one_prompt(v.len())),
            Prompt::TokenLists(v) => return Err(one_prompt(v.len())),
        };
        if prompt.is_empty() {
            return Err(ApiError::invalid("prompt", "the prompt is empty"));
        }
        let echo = match (self.echo.unwrap_or(false), text) {
            (false, _) => String::new(),
            (true, Some(text)) => text,
            (true, None) => model.detokenize(&prompt),
        };
        Ok(CheckedCompletion {
            options,
            prompt,
            echo,
        })
    }
}

fn one_prompt(n: usize) -> ApiError {
    ApiError::invalid(
        "prompt",
        format!("one prompt per request is supported, got a list of {n}; send them as separate requests (they share the batch)"),
    )
}

/// Text as the model's tokenizer reads it, BOS added if the model wants one
/// and special tokens parsed (as Hugging Face tokenizers and vLLM do).
fn tokenize(model: &Model, text: &str) -> Result<Vec<Token>, ApiError> {
    model
        .tokenize(text, model.adds_bos(), true)
        .map_err(|e| ApiError::invalid("prompt", format!("the prompt could not be tokenized: {e}")))
}

fn token_ids(model: &Model, ids: &[i64], param: &str) -> Result<Vec<Token>, ApiError> {
    let n_vocab = model.n_vocab() as i64;
    ids.iter()
        .enumerate()
        .map(|(i, &t)| {
            if (0..n_vocab).contains(&t) {
                Ok(t as Token)
            } else {
                Err(ApiError::invalid(
                    format!("{param}[{i}]"),
                    format!("{param}[{i}] is token id {t}, outside the vocabulary of {n_vocab}"),
                ))
            }
        })
        .collect()
}

/// The legacy `logprobs` object of one choice (or chunk) from chat-style
/// entries: parallel lists of tokens, their log-probabilities, the
/// alternatives as `{token: logprob}` and each token's offset in the text.
pub fn legacy_logprobs(entries: &[Json], first_offset: usize) -> Json {
    let mut offset = first_offset;
    let mut tokens = Vec::new();
    let mut lps = Vec::new();
    let mut tops = Vec::new();
    let mut offsets = Vec::new();
    for e in entries {
        let token = e["token"].as_str().unwrap_or("");
        tokens.push(json!(token));
        lps.push(e["logprob"].clone());
        let mut top = Map::new();
        for alt in e["top_logprobs"].as_array().into_iter().flatten() {
            if let Some(t) = alt["token"].as_str() {
                top.insert(t.to_string(), alt["logprob"].clone());
            }
        }
        tops.push(Json::Object(top));
        offsets.push(json!(offset));
        offset += token.len();
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}
