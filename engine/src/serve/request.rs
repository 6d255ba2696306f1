//! `POST /v1/chat/completions` requests: parsed strictly (a wrong type or an
//! unknown field is a 400 naming the field) and checked against what this
//! server can do, before anything reaches the decoding loop.

use serde::Deserialize;
use serde_json::Value as Json;

use crate::chat::Message;
use crate::serve::error::ApiError;
use crate::serve::tools::{self, Tools};

/// The request body. Fields of the OpenAI API this server does not support
/// are absent, so sending one is a 400 rather than silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// The model id (GET /v1/models).
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature in [0, 2] (0: greedy); default 1.
    pub temperature: Option<f32>,
    /// Nucleus mass in (0, 1]; default 1.
    pub top_p: Option<f32>,
    /// vLLM's extension: keep the k most likely tokens (0 or -1: all).
    pub top_k: Option<i64>,
    /// Most tokens per choice (legacy name).
    pub max_tokens: Option<i64>,
    /// Most tokens per choice.
    pub max_completion_tokens: Option<i64>,
    /// Choices to sample; they share the prompt's prefill.
    pub n: Option<i64>,
    /// Up to 4 stop strings, excluded from the content.
    pub stop: Option<Stop>,
    /// Seed; choice i samples with seed + i.
    pub seed: Option<i64>,
    /// Return each token's log-probability.
    pub logprobs: Option<bool>,
    /// Also the 0..=20 most likely alternatives at each position.
    pub top_logprobs: Option<i64>,
    /// Stream the answer as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// vLLM's extension: return prompt and completion token ids.
    pub return_token_ids: Option<bool>,
    /// vLLM's extension: keep generating past end-of-generation tokens
    /// (until `max_tokens` or a stop string).
    pub ignore_eos: Option<bool>,
    /// An end-user id; accepted and ignored.
    pub user: Option<String>,
    /// Accepted when 0 (no penalty is implemented).
    pub frequency_penalty: Option<f32>,
    /// Accepted when 0 (no penalty is implemented).
    pub presence_penalty: Option<f32>,
    /// Functions the model may call (checked in `tools::check`).
    pub tools: Option<Json>,
    /// `none`, `auto`, `required` or a named function.
    pub tool_choice: Option<Json>,
    /// This server's extension: run the built-in code interpreter, with
    /// CLEANER purification (`serve::interpreter`).
    pub cleaner: Option<crate::serve::interpreter::CleanerOptions>,
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with the usage counts.
    pub include_usage: Option<bool>,
}

/// One message. Unknown fields are tolerated here: clients send back
/// assistant messages from earlier responses with fields such as `refusal`.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// system, developer, user, assistant or tool.
    pub role: String,
    /// Text, or a list of `{"type": "text", "text": ...}` parts.
    pub content: Option<Content>,
    /// Tool calls of an assistant message, passed to the chat template.
    pub tool_calls: Option<Json>,
    /// Which call a tool message answers (passed on; Qwen2.5's template
    /// matches replies to calls by order instead).
    pub tool_call_id: Option<String>,
    /// A participant name; accepted and ignored.
    pub name: Option<String>,
}

/// Message content.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// Only `text` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// What the server needs of a request once it is known to be valid.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    /// The messages for the chat template.
    pub messages: Vec<Message>,
    /// Sampling temperature (0: greedy).
    pub temperature: f32,
    /// Nucleus mass.
    pub top_p: f32,
    /// Top-k (0: all).
    pub top_k: usize,
    /// Most tokens per choice, if the request set it.
    pub max_tokens: Option<usize>,
    /// Choices.
    pub n: usize,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Seed, if given.
    pub seed: Option<u64>,
    /// Alternatives per position when log-probabilities are asked for.
    pub logprobs: Option<usize>,
    /// Stream.
    pub stream: bool,
    /// Final usage chunk in a stream.
    pub include_usage: bool,
    /// vLLM's `return_token_ids`.
    pub return_token_ids: bool,
    /// vLLM's `ignore_eos`.
    pub ignore_eos: bool,
    /// The request's tools, when it has any (chat only).
    pub tools: Option<Tools>,
}

/// Most stop strings, as OpenAI allows.
pub const MAX_STOPS: usize = 4;
/// Most alternatives per position, as OpenAI allows.
pub const MAX_TOP_LOGPROBS: i64 = 20;

/// Parses a body, naming the field of a type error.
pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    parse_as(body)
}

/// Parses a body as `T`, naming the field of a type error. An
/// `extra_body` object is merged into the body first, as the official
/// client does before sending: clients that build the JSON themselves (rLLM's
/// gateway) send vLLM's extensions there, and vLLM reads them either way.
pub fn parse_as<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut value: Json = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_body(format!("the request body is not valid JSON: {e}")))?;
    merge_extra_body(&mut value)?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut path = e.path().to_string();
        let inner = e.into_inner();
        // An unknown field's error is reported at the object holding it:
        // name the field itself.
        let text = inner.to_string();
        if let Some(field) = text
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
        {
            if path == "." {
                path = field.to_string();
            } else if !path.ends_with(field) {
                path = format!("{path}.{field}");
            }
        }
        match inner.classify() {
            serde_json::error::Category::Data if path != "." => {
                ApiError::invalid(path.clone(), format!("{path}: {inner}"))
            }
            serde_json::error::Category::Data => {
                ApiError::bad_body(format!("the request body is not a valid request: {inner}"))
            }
            _ => ApiError::bad_body(format!("the request body is not valid JSON: {inner}")),
        }
    })
}

/// Moves the fields of a top-level `extra_body` object into the body. A
/// field given in both places must agree (rLLM's gateway sends
/// `return_token_ids` in both); differing values are refused rather than
/// one silently winning.
fn merge_extra_body(body: &mut Json) -> Result<(), ApiError> {
    let Some(object) = body.as_object_mut() else {
        return Ok(());
    };
    let Some(extra) = object.remove("extra_body") else {
        return Ok(());
    };
    let Json::Object(extra) = extra else {
        return Err(ApiError::invalid(
            "extra_body",
            "extra_body must be an object of request fields",
        ));
    };
    for (key, value) in extra {
        match object.get(&key) {
            Some(there) if *there != value => {
                return Err(ApiError::invalid(
                    format!("extra_body.{key}"),
                    format!("{key} is {there} in the body but {value} in extra_body"),
                ))
            }
            Some(_) => {}
            None => {
                object.insert(key, value);
            }
        }
    }
    Ok(())
}

impl ChatRequest {
    /// Checks ranges and support; `max_n` is the most choices one request
    /// may ask for (all of them decode at once).
    pub fn check(mut self, max_n: usize) -> Result<Checked, ApiError> {
        let list = std::mem::take(&mut self.messages);
        let tools = tools::check(self.tools.take(), self.tool_choice.take())?;
        let mut checked = self.check_options(max_n)?;
        checked.messages = messages(list)?;
        checked.tools = tools;
        Ok(checked)
    }

    /// Checks everything but the messages (shared with `/v1/completions`).
    pub fn check_options(self, max_n: usize) -> Result<Checked, ApiError> {
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature must be between 0 and 2, got {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {top_p}"),
            ));
        }
        let top_k = match self.top_k.unwrap_or(0) {
            -1 | 0 => 0,
            k if k > 0 => k as usize,
            k => {
                return Err(ApiError::invalid(
                    "top_k",
                    format!("top_k must be -1 or 0 (all tokens) or positive, got {k}"),
                ))
            }
        };
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => Some(("max_completion_tokens", v)),
            (None, Some(v)) => Some(("max_tokens", v)),
            (None, None) => None,
        };
        let max_tokens = match max_tokens {
            Some((field, v)) if v < 1 => {
                return Err(ApiError::invalid(
                    field,
                    format!("{field} must be at least 1, got {v}"),
                ))
            }
            Some((_, v)) => Some(v as usize),
            None => None,
        };
        let n = self.n.unwrap_or(1);
        if n < 1 || n as usize > max_n {
            return Err(ApiError::invalid(
                "n",
                format!("n must be between 1 and {max_n} (the server's --slots), got {n}"),
            ));
        }
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                "stop",
                format!("at most {MAX_STOPS} stop strings, got {}", stop.len()),
            ));
        }
        if stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::invalid("stop", "stop strings must not be empty"));
        }
        let logprobs = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (_, Some(k)) if !(0..=MAX_TOP_LOGPROBS).contains(&k) => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
                ))
            }
            (false, Some(k)) if k > 0 => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "top_logprobs needs logprobs set to true",
                ))
            }
            (true, k) => Some(k.unwrap_or(0) as usize),
            (false, _) => None,
        };
        for (field, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if let Some(v) = v.filter(|v| *v != 0.0) {
                return Err(ApiError::invalid(
                    field,
                    format!("{field} is not supported by this server (only 0), got {v}"),
                ));
            }
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::invalid(
                "stream_options",
                "stream_options is only allowed when stream is true",
            ));
        }
        let include_usage = self
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        Ok(Checked {
            messages: Vec::new(),
            temperature,
            top_p,
            top_k,
            max_tokens,
            n: n as usize,
            stop,
            seed: self.seed.map(|s| s as u64),
            logprobs,
            stream,
            include_usage,
            return_token_ids: self.return_token_ids.unwrap_or(false),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            tools: None,
        })
    }
}

/// The messages as the chat template takes them.
fn messages(list: Vec<ChatMessage>) -> Result<Vec<Message>, ApiError> {
    if list.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages must hold at least one message",
        ));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "user" | "assistant" | "tool" => m.role.clone(),
                // OpenAI's newer name for system instructions.
                "developer" => "system".to_string(),
                other => {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].role"),
                        format!("messages[{i}].role must be system, developer, user, assistant or tool, got `{other}`"),
                    ))
                }
            };
            let content = match m.content {
                None if role == "assistant" && m.tool_calls.is_some() => String::new(),
                None => {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].content"),
                        format!("messages[{i}].content is missing"),
                    ))
                }
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.into_iter().enumerate() {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    format!("messages[{i}].content[{j}]"),
                                    format!("messages[{i}].content[{j}]: only text parts with a `text` field are supported, got type `{kind}`"),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            let tool_calls = match m.tool_calls.filter(|t| !t.is_null()) {
                Some(_) if role != "assistant" => {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].tool_calls"),
                        format!("messages[{i}].tool_calls: only assistant messages hold tool calls, this one is `{role}`"),
                    ))
                }
                Some(calls) => Some(tools::for_template(i, calls)?),
                None => None,
            };
            Ok(Message {
                role,
                content,
                tool_calls,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ApiError {
        match parse(body.as_bytes()).and_then(|r| r.check(4)) {
            Ok(c) => panic!("accepted {body}: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(err("{not json").param, None);
        let e = err(r#"{"model": "m", "messages": [{"role": "user", "content": 3}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        let e = err(r#"{"model": "m", "messages": [], "temperature": "hot"}"#);
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = err(r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 5}"#);
        assert_eq!(e.param.as_deref(), Some("n"));
        assert!(e.message.contains("between 1 and 4"), "{}", e.message);
        let e = err(
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#,
        );
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = err(
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "logit_bias": {}}"#,
        );
        assert!(e.message.contains("logit_bias"), "{}", e.message);
        assert_eq!(e.param.as_deref(), Some("logit_bias"));
        let e = err(r#"{"model": "m", "messages": [{"role": "robot", "content": "x"}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = err(
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}"#,
        );
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
    }

    #[test]
    fn extra_body_fields_join_the_body_and_may_not_repeat_it() {
        let r = parse(
            br#"{"model": "m", "messages": [{"role": "user", "content": "x"}],
                 "extra_body": {"return_token_ids": true, "top_k": 5}}"#,
        )
        .unwrap();
        assert_eq!((r.return_token_ids, r.top_k), (Some(true), Some(5)));
        let r = parse(
            br#"{"model": "m", "messages": [{"role": "user", "content": "x"}],
                 "return_token_ids": true, "extra_body": {"return_token_ids": true}}"#,
        )
        .unwrap();
        assert_eq!(
            r.return_token_ids,
            Some(true),
            "the same value in both places"
        );
        let e = err(
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 1, "extra_body": {"n": 2}}"#,
        );
        assert_eq!(e.param.as_deref(), Some("extra_body.n"));
        let e = err(
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "extra_body": [1]}"#,
        );
        assert_eq!(e.param.as_deref(), Some("extra_body"));
        let e = err(
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "extra_body": {"nope": 1}}"#,
        );
        assert_eq!(e.param.as_deref(), Some("nope"));
    }

    #[test]
    fn a_full_request_is_understood() {
        let c = parse(
            br#"{"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
                {"role": "user", "content": "hi"}], "temperature": 0.5, "top_p": 0.9, "top_k": -1,
                "max_completion_tokens": 7, "max_tokens": 99, "n": 2, "stop": "\n", "seed": 3,
                "logprobs": true, "top_logprobs": 2, "stream": true, "stream_options": {"include_usage": true},
                "return_token_ids": true}"#,
        )
        .and_then(|r| r.check(4))
        .unwrap();
        assert_eq!(c.messages[0], Message::system("be brief"));
        assert_eq!(c.max_tokens, Some(7), "max_completion_tokens wins");
        assert_eq!((c.n, c.top_k, c.seed, c.logprobs), (2, 0, Some(3), Some(2)));
        assert_eq!(c.stop, vec!["\n".to_string()]);
        assert!(c.stream && c.include_usage && c.return_token_ids);
    }
}
