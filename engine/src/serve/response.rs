//! Response bodies of `/v1/chat/completions`, whole and as stream chunks,
//! in OpenAI's shapes plus vLLM's `prompt_token_ids` / `token_ids`.

use serde_json::{json, Value as Json};

use crate::rollout::FinishReason;
use crate::serve::text::TextAssembler;
use crate::serve::tool_calls::{Piece, ToolCall, ToolCallReader};
use crate::serve::worker::Event;
use crate::{Model, Token};

/// What identifies one response: every chunk of a stream repeats it.
pub struct Header {
    /// `chatcmpl-...`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model id.
    pub model: String,
}

/// One choice as it is assembled.
pub struct Choice {
    text: TextAssembler,
    content: String,
    tokens: Vec<Token>,
    logprobs: Vec<Json>,
    finish: Option<FinishReason>,
    /// Reads tool calls out of the text, when the request has tools.
    calls_reader: Option<ToolCallReader>,
    calls: Vec<ToolCall>,
}

impl Choice {
    /// Takes text that became final: content, or (with tools) content and
    /// calls as the reader decides; what to send as `content` and as
    /// `delta.tool_calls`.
    fn take_text(&mut self, text: String, ended: bool) -> (String, Vec<Json>) {
        let Some(reader) = self.calls_reader.as_mut() else {
            self.content.push_str(&text);
            return (text, Vec::new());
        };
        let mut pieces = reader.push(&text);
        if ended {
            pieces.extend(reader.finish());
        }
        let mut content = String::new();
        let mut deltas = Vec::new();
        for p in pieces {
            match p {
                Piece::Text(t) => content.push_str(&t),
                Piece::Call(c) => {
                    deltas.push(c.to_delta_json(self.calls.len()));
                    self.calls.push(c);
                }
            }
        }
        self.content.push_str(&content);
        (content, deltas)
    }
}

/// What one event adds to a choice (the stream sends it as a delta).
pub struct Delta {
    /// The choice.
    pub index: usize,
    /// Text that became final.
    pub content: String,
    /// Tool calls that closed, as `delta.tool_calls` entries.
    pub tool_calls: Vec<Json>,
    /// Whether the choice has made a tool call so far (its finish reason
    /// is then `tool_calls`).
    pub called: bool,
    /// New tokens.
    pub tokens: Vec<Token>,
    /// Their log-probability entries (empty unless asked for).
    pub logprobs: Vec<Json>,
    /// Set when the choice ended with this event.
    pub finish: Option<FinishReason>,
}

/// The choices of one request, fed with the loop's events.
pub struct Choices {
    model: std::sync::Arc<Model>,
    list: Vec<Choice>,
    /// Log-probabilities asked for.
    logprobs: bool,
}

impl Choices {
    /// `n` empty choices cut at `stop`.
    pub fn new(model: std::sync::Arc<Model>, n: usize, stop: &[String], logprobs: bool) -> Self {
        let list = (0..n)
            .map(|_| Choice {
                text: TextAssembler::new(stop),
                content: String::new(),
                tokens: Vec::new(),
                logprobs: Vec::new(),
                finish: None,
                calls_reader: None,
                calls: Vec::new(),
            })
            .collect();
        Choices {
            model,
            list,
            logprobs,
        }
    }

    /// Reads every choice's text for tool calls with `reader`.
    pub fn reading_tool_calls(mut self, reader: &ToolCallReader) -> Self {
        for c in &mut self.list {
            c.calls_reader = Some(reader.clone());
        }
        self
    }

    /// Whether every choice ended.
    pub fn done(&self) -> bool {
        self.list.iter().all(|c| c.finish.is_some())
    }

    /// Tokens generated over all choices.
    pub fn completion_tokens(&self) -> usize {
        self.list.iter().map(|c| c.tokens.len()).sum()
    }

    /// Applies one event (not `Failed`, which the caller handles).
    pub fn apply(&mut self, event: Event) -> Option<Delta> {
        match event {
            Event::Tokens {
                index,
                tokens,
                logprobs,
                top,
            } => {
                let c = self.list.get_mut(index)?;
                let mut text = String::new();
                let mut entries = Vec::new();
                for (k, (&t, &lp)) in tokens.iter().zip(&logprobs).enumerate() {
                    // End-of-generation tokens end the turn; they are no text.
                    if !self.model.is_eog(t) {
                        text.push_str(&c.text.push(self.model.piece(t)));
                    }
                    if self.logprobs {
                        let alts = top.get(k).map(Vec::as_slice).unwrap_or(&[]);
                        entries.push(logprob_entry(&self.model, t, lp, alts));
                    }
                }
                let (content, tool_calls) = c.take_text(text, false);
                c.tokens.extend_from_slice(&tokens);
                c.logprobs.extend(entries.iter().cloned());
                Some(Delta {
                    index,
                    content,
                    tool_calls,
                    called: !c.calls.is_empty(),
                    tokens,
                    logprobs: entries,
                    finish: None,
                })
            }
            Event::Finished { index, finish } => {
                let c = self.list.get_mut(index)?;
                let text = c.text.finish();
                let (content, tool_calls) = c.take_text(text, true);
                c.finish = Some(finish.clone());
                Some(Delta {
                    index,
                    content,
                    tool_calls,
                    called: !c.calls.is_empty(),
                    tokens: Vec::new(),
                    logprobs: Vec::new(),
                    finish: Some(finish),
                })
            }
            Event::Failed(_) => None,
        }
    }

    /// The whole response's `choices`.
    pub fn to_json(&self, token_ids: bool) -> Vec<Json> {
        self.list
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut message = json!({"role": "assistant", "content": c.content});
                if !c.calls.is_empty() {
                    // OpenAI's shape: no text besides the calls is null.
                    if c.content.is_empty() {
                        message["content"] = Json::Null;
                    }
                    message["tool_calls"] = c.calls.iter().map(ToolCall::to_json).collect();
                }
                let mut choice = json!({
                    "index": i,
                    "message": message,
                    "logprobs": if self.logprobs { json!({"content": c.logprobs}) } else { Json::Null },
                    "finish_reason": chat_finish_reason(c.finish.as_ref(), !c.calls.is_empty()),
                });
                if token_ids {
                    choice["token_ids"] = json!(c.tokens);
                }
                choice
            })
            .collect()
    }
}

impl Choices {
    /// The whole response's `choices` in the completions shape: `text`
    /// (after `echo`, the prompt's text when asked) and legacy `logprobs`.
    pub fn to_text_json(&self, echo: &str, token_ids: bool) -> Vec<Json> {
        self.list
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut choice = json!({
                    "index": i,
                    "text": format!("{echo}{}", c.content),
                    "logprobs": if self.logprobs {
                        crate::serve::completions::legacy_logprobs(&c.logprobs, echo.len())
                    } else {
                        Json::Null
                    },
                    "finish_reason": finish_reason(c.finish.as_ref()),
                });
                if token_ids {
                    choice["token_ids"] = json!(c.tokens);
                }
                choice
            })
            .collect()
    }
}

/// OpenAI's name for why a choice ended.
pub fn finish_reason(f: Option<&FinishReason>) -> Json {
    match f {
        None => Json::Null,
        Some(FinishReason::Eog) | Some(FinishReason::Stop(_)) => "stop".into(),
        Some(FinishReason::MaxTokens) | Some(FinishReason::ContextLength) => "length".into(),
    }
}

/// A chat choice's finish reason: `tool_calls` when it made calls and
/// ended by itself (a reply cut at `max_tokens` stays `length`).
pub fn chat_finish_reason(f: Option<&FinishReason>, called: bool) -> Json {
    match f {
        Some(FinishReason::Eog) | Some(FinishReason::Stop(_)) if called => "tool_calls".into(),
        _ => finish_reason(f),
    }
}

/// One `logprobs.content` entry: the token's text, log-probability, UTF-8
/// bytes and alternatives.
fn logprob_entry(model: &Model, token: Token, logprob: f32, top: &[(Token, f32)]) -> Json {
    let piece = |t: Token| {
        let bytes = model.piece(t);
        (String::from_utf8_lossy(bytes).into_owned(), bytes.to_vec())
    };
    let (text, bytes) = piece(token);
    let alts: Vec<Json> = top
        .iter()
        .map(|&(t, lp)| {
            let (text, bytes) = piece(t);
            json!({"token": text, "logprob": lp, "bytes": bytes})
        })
        .collect();
    json!({"token": text, "logprob": logprob, "bytes": bytes, "top_logprobs": alts})
}

/// `usage`.
pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Json {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// A whole `chat.completion`.
pub fn completion(h: &Header, choices: &Choices, prompt: &[Token], token_ids: bool) -> Json {
    let mut body = json!({
        "id": h.id,
        "object": "chat.completion",
        "created": h.created,
        "model": h.model,
        "choices": choices.to_json(token_ids),
        "usage": usage(prompt.len(), choices.completion_tokens()),
    });
    if token_ids {
        body["prompt_token_ids"] = json!(prompt);
    }
    body
}

/// A `chat.completion.chunk` with these choices (and `usage: null` when the
/// stream will end with a usage chunk, as OpenAI sends it).
pub fn chunk(h: &Header, choices: Vec<Json>, include_usage: bool) -> Json {
    let mut body = json!({
        "id": h.id,
        "object": "chat.completion.chunk",
        "created": h.created,
        "model": h.model,
        "choices": choices,
    });
    if include_usage {
        body["usage"] = Json::Null;
    }
    body
}

/// One streamed choice delta.
pub fn chunk_choice(d: &Delta, logprobs: bool, token_ids: bool) -> Json {
    let mut delta = json!({});
    // Chunks sent only for their tokens or log-probs carry empty content,
    // as before tools; a call or the last chunk carries none.
    if !d.content.is_empty() || (d.tool_calls.is_empty() && d.finish.is_none()) {
        delta["content"] = json!(d.content);
    }
    if !d.tool_calls.is_empty() {
        delta["tool_calls"] = json!(d.tool_calls);
    }
    let mut c = json!({
        "index": d.index,
        "delta": delta,
        "logprobs": if logprobs && !d.logprobs.is_empty() { json!({"content": d.logprobs}) } else { Json::Null },
        "finish_reason": chat_finish_reason(d.finish.as_ref(), d.called),
    });
    if token_ids {
        c["token_ids"] = json!(d.tokens);
    }
    c
}
