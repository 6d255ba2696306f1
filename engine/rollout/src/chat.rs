//! Chat prompts rendered with the model's own Jinja template.
//!
//! llama.cpp's built-in template matcher is not Jinja: it drops SmolLM2's
//! default system prompt and cannot render tool definitions. The template
//! stored in the GGUF (`tokenizer.chat_template`) is rendered here with
//! minijinja, with `transformers`' `tojson` (`pyjson`: Python's spacing, key
//! order kept) so tools and calls read as they did in training.

use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::llama::{LlamaError, Model, Token};

/// One chat message. `tool_calls` follows the OpenAI shape the templates expect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
    /// Tool calls of an assistant message, as the template expects them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Json>,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message {
            role: role.to_string(),
            content: content.into(),
            tool_calls: None,
        }
    }
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
}

/// Why a prompt could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The model has no chat template.
    #[error("the model file has no chat template (tokenizer.chat_template)")]
    NoTemplate,
    /// The template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// Tokenizing failed.
    #[error(transparent)]
    Llama(#[from] LlamaError),
}

/// A compiled chat template plus the special tokens it refers to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// The template stored in `model`'s file.
    pub fn from_model(model: &Model) -> Result<Self, ChatError> {
        let source = model.chat_template().ok_or(ChatError::NoTemplate)?;
        let token_text = |key: &str| -> String {
            model
                .gguf()
                .get_u64(key)
                .ok()
                .map(|t| String::from_utf8_lossy(model.piece(t as Token)).into_owned())
                .unwrap_or_default()
        };
        Self::new(
            source,
            &token_text("tokenizer.ggml.bos_token_id"),
            &token_text("tokenizer.ggml.eos_token_id"),
        )
    }

    /// Compiles a template source.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |_fmt: String| -> String { String::new() });
        // transformers' `tojson`, which the templates are written for
        // (minijinja's is compact and HTML-escaped).
        env.add_filter("tojson", crate::pyjson::tojson_filter);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ChatError::Template(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// Renders `messages` (and `tools`, JSON schemas, when given), ending with
    /// the assistant header when `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[Message],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ChatError::Template(e.to_string()))?;
        let ctx = minijinja::context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        tmpl.render(ctx)
            .map_err(|e| ChatError::Template(format!("{e:#}")))
    }

    /// Renders and tokenizes a prompt (special tokens parsed; BOS added only if
    /// the model wants it and the template did not write it).
    pub fn tokenize(
        &self,
        model: &Model,
        messages: &[Message],
        tools: Option<&[Json]>,
    ) -> Result<Vec<Token>, ChatError> {
        self.tokenize_reply_started(model, messages, tools, "")
    }

    /// As [`tokenize`](Self::tokenize), with `reply_start` written after the
    /// assistant header: the reply then begins with it, which is how a
    /// server makes the model open a tool call it was asked to make.
    pub fn tokenize_reply_started(
        &self,
        model: &Model,
        messages: &[Message],
        tools: Option<&[Json]>,
        reply_start: &str,
    ) -> Result<Vec<Token>, ChatError> {
        let mut text = self.render(messages, tools, true)?;
        text.push_str(reply_start);
        let add_bos =
            model.adds_bos() && (self.bos_token.is_empty() || !text.starts_with(&self.bos_token));
        Ok(model.tokenize(&text, add_bos, true)?)
    }
}
