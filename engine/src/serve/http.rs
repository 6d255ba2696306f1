//! The routes: authentication, body limit, `/health`, `/v1/models` and
//! `/v1/chat/completions` (whole or streamed). Handlers only translate: the
//! work happens in the decoding loop (`worker`), reached through channels.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json as JsonBody, Router};
use serde_json::{json, Value as Json};
use tokio::sync::mpsc::unbounded_channel;

use crate::chat::{ChatError, ChatTemplate};
use crate::rollout::GenerateParams;
use crate::sampling::SamplingParams;
use crate::serve::adapters::Adapters;
use crate::serve::error::ApiError;
use crate::serve::latency::TimedEvents;
use crate::serve::request::{self, Checked};
use crate::serve::response::{self, Choices, Header};
use crate::serve::worker::{Event, Job, WorkerHandle};
use crate::serve::ServeConfig;
use crate::{LoraAdapter, Model, Token};

/// What every handler shares.
pub struct AppState {
    /// The served model.
    pub model: Arc<Model>,
    /// Its chat template, compiled once.
    pub template: ChatTemplate,
    /// Whether the template takes tools (`tools::template_support`): why
    /// not, when it does not.
    pub tool_support: Result<(), String>,
    /// The server's settings.
    pub config: ServeConfig,
    /// The decoding loop.
    pub worker: WorkerHandle,
    /// Unix seconds at start (the model's `created`).
    pub started: u64,
    /// Request counters and durations (`GET /metrics`).
    pub metrics: crate::serve::metrics::Metrics,
    /// The code interpreter's sandbox, once whoever runs the server opened
    /// one (`Server::set_sandbox`); without it `cleaner` requests are refused.
    pub sandbox: crate::serve::interpreter::SandboxSlot,
    /// LoRA adapters requests may select by name.
    pub adapters: Adapters,
}

/// All routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route(
            "/v1/load_lora_adapter",
            post(crate::serve::adapter_routes::load),
        )
        .route(
            "/v1/unload_lora_adapter",
            post(crate::serve::adapter_routes::unload),
        )
        .route("/metrics", get(metrics))
        .fallback(|method: Method, uri: Uri| async move {
            ApiError::no_route(method.as_str(), uri.path())
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::serve::metrics::track,
        ))
        .with_state(state)
}

/// Liveness plus the loop's counters (what tests and operators watch).
async fn health(State(s): State<Arc<AppState>>) -> JsonBody<Json> {
    let st = s.worker.status();
    let load = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed);
    JsonBody(json!({
        "status": "ok",
        "model": s.config.model_id,
        "slots": s.config.slots,
        "cells": s.worker.cells(),
        "queued": load(&st.queued),
        "running": load(&st.running),
        "open_sequences": load(&st.open_sequences),
        "cached_positions": load(&st.cached_positions),
        "cancelled": st.cancelled.load(Ordering::Relaxed),
        "tokens_generated": st.tokens_generated.load(Ordering::Relaxed),
        "steps": st.steps.load(Ordering::Relaxed),
    }))
}

/// Prometheus text; no key needed, like /health.
async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let text = s
        .metrics
        .render(s.worker.status(), s.worker.cells(), s.adapters.len());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The base model, then every adapter as vLLM lists them: `root` the file
/// it came from, `parent` the base model's id.
async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s, &headers)?;
    let mut data = vec![json!({
        "id": s.config.model_id,
        "object": "model",
        "created": s.started,
        "owned_by": "cleaner",
        "root": s.model.path().display().to_string(),
        "parent": null,
        "max_model_len": s.config.ctx_per_slot,
    })];
    data.extend(s.adapters.list().into_iter().map(|a| {
        json!({
            "id": a.name,
            "object": "model",
            "created": a.created,
            "owned_by": "cleaner",
            "root": a.path.display().to_string(),
            "parent": s.config.model_id,
            "max_model_len": s.config.ctx_per_slot,
        })
    }));
    Ok(JsonBody(json!({"object": "list", "data": data})).into_response())
}

/// What a request's `model` selects: the base model or one adapter.
struct Selected {
    /// The id as the request gave it (and the response repeats it).
    id: String,
    adapter: Option<Arc<LoraAdapter>>,
}

/// Resolves a request's `model`: the served id or a loaded adapter's name,
/// else a 404 `model_not_found` listing what is served.
fn select(s: &AppState, model: &str) -> Result<Selected, ApiError> {
    if model == s.config.model_id {
        return Ok(Selected {
            id: model.to_string(),
            adapter: None,
        });
    }
    match s.adapters.get(model) {
        Some(adapter) => Ok(Selected {
            id: model.to_string(),
            adapter: Some(adapter),
        }),
        None => {
            let mut served = vec![s.config.model_id.clone()];
            served.extend(s.adapters.list().into_iter().map(|a| a.name));
            Err(ApiError::unknown_model(model, &served))
        }
    }
}

/// `Authorization: Bearer KEY` when the server has a key.
pub(crate) fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &s.config.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.map(str::trim) == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

/// The body, refused beyond the configured size.
pub(crate) async fn read_body(s: &AppState, req: Request) -> Result<Bytes, ApiError> {
    let limit = s.config.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| ApiError::too_large(limit))
}

async fn chat_completions(
    State(s): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    authorize(&s, req.headers())?;
    let body = read_body(&s, req).await?;
    let mut parsed = request::parse(&body)?;
    let selected = select(&s, &parsed.model)?;
    let cleaner = parsed.cleaner.take();
    let checked = parsed.check(s.config.slots as usize)?;
    if let Some(options) = cleaner {
        if checked.tools.is_some() {
            return Err(ApiError::invalid(
                "tools",
                "tools cannot be used with the code interpreter (the `cleaner` object): its one tool is code_interpreter, described to the model by the server",
            ));
        }
        let seed = checked.seed.unwrap_or_else(fresh_seed);
        let interp = options.check(&checked, &s, seed)?;
        let prompt = crate::serve::interpreter::prompt(&s, &checked.messages, interp.format.kind)
            .map_err(template_error)?;
        let header = Header {
            id: format!("chatcmpl-{:016x}", fresh_seed()),
            created: unix_now(),
            model: selected.id.clone(),
        };
        s.metrics.count_model(&selected.id);
        let run = crate::serve::interpreter::Run {
            prompt,
            n: checked.n,
            adapter: selected.adapter,
            header,
        };
        return crate::serve::interpreter::run(s.clone(), run, interp).await;
    }
    let (schemas, reply_start) = match &checked.tools {
        Some(t) => {
            if let Err(why) = &s.tool_support {
                return Err(ApiError::invalid(
                    "tools",
                    format!(
                        "the model `{}` cannot take tools here: {why}",
                        s.config.model_id
                    ),
                ));
            }
            (Some(t.schemas.as_slice()), t.reply_start())
        }
        None => (None, String::new()),
    };
    let prompt = s
        .template
        .tokenize_reply_started(&s.model, &checked.messages, schemas, &reply_start)
        .map_err(template_error)?;
    generate(&s, selected, prompt, &checked, Shape::Chat).await
}

/// A template that cannot render the messages is the request's fault.
fn template_error(e: ChatError) -> ApiError {
    match e {
        ChatError::Template(m) => ApiError::invalid(
            "messages",
            format!("the chat template refused the messages: {m}"),
        ),
        other => ApiError::engine(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

async fn completions(State(s): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    authorize(&s, req.headers())?;
    let body = read_body(&s, req).await?;
    let parsed = crate::serve::completions::parse(&body)?;
    let selected = select(&s, &parsed.model)?;
    let c = parsed.check(&s.model, s.config.slots as usize)?;
    generate(
        &s,
        selected,
        c.prompt,
        &c.options,
        Shape::Text { echo: c.echo },
    )
    .await
}

/// Which API's shapes a response takes.
#[derive(Clone)]
enum Shape {
    /// `chat.completion` / `chat.completion.chunk`.
    Chat,
    /// `text_completion`, the prompt's text first when `echo` is not empty.
    Text { echo: String },
}

/// Budgets, submits and answers one request, whole or streamed.
async fn generate(
    s: &AppState,
    selected: Selected,
    prompt: Vec<Token>,
    checked: &Checked,
    shape: Shape,
) -> Result<Response, ApiError> {
    let prompt_param = match shape {
        Shape::Chat => "messages",
        Shape::Text { .. } => "prompt",
    };
    let max_tokens = completion_budget(&s.config, prompt.len(), checked.max_tokens, prompt_param)?;
    let (tx, rx) = unbounded_channel();
    let job = Job {
        prompt: prompt.clone(),
        params: generate_params(checked, max_tokens),
        top_logprobs: checked.logprobs.unwrap_or(0),
        adapter: selected.adapter,
        events: tx,
    };
    s.metrics
        .prompt_tokens
        .fetch_add(prompt.len() as u64, Ordering::Relaxed);
    let rx = TimedEvents::new(rx, s.metrics.latency.clone());
    s.worker
        .submit(job)
        .map_err(|e| ApiError::engine(StatusCode::SERVICE_UNAVAILABLE, e))?;
    s.metrics.count_model(&selected.id);
    let prefix = match shape {
        Shape::Chat => "chatcmpl",
        Shape::Text { .. } => "cmpl",
    };
    let header = Header {
        id: format!("{prefix}-{:016x}", fresh_seed()),
        created: unix_now(),
        model: selected.id,
    };
    let mut choices = Choices::new(
        s.model.clone(),
        checked.n,
        &checked.stop,
        checked.logprobs.is_some(),
    );
    if let Some(reader) = checked.tools.as_ref().and_then(|t| t.reader()) {
        choices = choices.reading_tool_calls(&reader);
    }
    if checked.stream {
        Ok(stream(rx, header, choices, prompt, checked, shape))
    } else {
        whole(
            rx,
            header,
            choices,
            &prompt,
            checked.return_token_ids,
            shape,
        )
        .await
    }
}

/// How many tokens each choice may generate: what was asked, or the rest of
/// a sequence's context; a 400 if the prompt leaves too little room.
fn completion_budget(
    config: &ServeConfig,
    prompt: usize,
    asked: Option<usize>,
    prompt_param: &'static str,
) -> Result<usize, ApiError> {
    let ctx = config.ctx_per_slot as usize;
    let max = asked.unwrap_or(ctx.saturating_sub(prompt)).max(1);
    if prompt + max > ctx {
        // The messages alone fill the context, or the completion asked for
        // does not fit after them.
        let param = if prompt >= ctx || asked.is_none() {
            prompt_param
        } else {
            "max_tokens"
        };
        return Err(ApiError::invalid(
            param,
            format!(
                "this server's context is {ctx} tokens per sequence, but the request needs {} \
                 ({prompt} in the messages, {max} in the completion); shorten the messages or \
                 lower max_tokens",
                prompt + max
            ),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(max)
}

/// One generation per choice; choice i samples with seed + i.
fn generate_params(c: &Checked, max_tokens: usize) -> Vec<GenerateParams> {
    let seed = c.seed.unwrap_or_else(fresh_seed);
    (0..c.n as u64)
        .map(|i| GenerateParams {
            sampling: SamplingParams {
                temperature: c.temperature,
                top_p: c.top_p,
                top_k: c.top_k,
                seed: seed.wrapping_add(i),
            },
            max_new_tokens: max_tokens,
            stop: c.stop.clone(),
            stop_at_eog: !c.ignore_eos,
            stop_after: None,
        })
        .collect()
}

/// Collects every event, then answers with the whole completion.
async fn whole(
    mut rx: TimedEvents,
    header: Header,
    mut choices: Choices,
    prompt: &[Token],
    token_ids: bool,
    shape: Shape,
) -> Result<Response, ApiError> {
    while !choices.done() {
        match rx.recv().await {
            Some(Event::Failed(m)) => {
                return Err(ApiError::engine(StatusCode::INTERNAL_SERVER_ERROR, m))
            }
            Some(event) => {
                choices.apply(event);
            }
            None => return Err(shutting_down()),
        }
    }
    let body = match shape {
        Shape::Chat => response::completion(&header, &choices, prompt, token_ids),
        Shape::Text { echo } => {
            let mut body = json!({
                "id": header.id,
                "object": "text_completion",
                "created": header.created,
                "model": header.model,
                "choices": choices.to_text_json(&echo, token_ids),
                "usage": response::usage(prompt.len(), choices.completion_tokens()),
            });
            if token_ids {
                body["prompt_token_ids"] = json!(prompt);
            }
            body
        }
    };
    Ok(JsonBody(body).into_response())
}

fn shutting_down() -> ApiError {
    ApiError::engine(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server is shutting down and cancelled this request",
    )
}

/// The state of one server-sent-event stream.
struct Stream {
    rx: TimedEvents,
    header: Header,
    choices: Choices,
    prompt_len: usize,
    logprobs: bool,
    token_ids: bool,
    include_usage: bool,
    pending: std::collections::VecDeque<Bytes>,
    ended: bool,
    shape: Shape,
    /// Bytes of text sent per choice (the completions API's `text_offset`).
    offsets: Vec<usize>,
}

fn sse(data: &Json) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// Streams `chat.completion.chunk`s as events arrive: first the role, then
/// one chunk per step that produced text, log-probabilities or token ids,
/// a last chunk per choice with its `finish_reason`, the usage chunk when
/// asked, and `[DONE]`.
fn stream(
    rx: TimedEvents,
    header: Header,
    choices: Choices,
    prompt: Vec<Token>,
    c: &Checked,
    shape: Shape,
) -> Response {
    let mut pending = std::collections::VecDeque::new();
    // The first chunk: the assistant's role (chat) or the echoed prompt
    // (completions), and vLLM's prompt_token_ids.
    let firsts: Vec<Json> = (0..c.n)
        .map(|i| match &shape {
            Shape::Chat => json!({"index": i, "delta": {"role": "assistant", "content": ""},
                                  "logprobs": null, "finish_reason": null}),
            Shape::Text { echo } => json!({"index": i, "text": echo, "logprobs": null,
                                           "finish_reason": null}),
        })
        .collect();
    let mut first = response::chunk(&header, firsts, c.include_usage);
    if let Shape::Text { .. } = shape {
        first["object"] = json!("text_completion");
    }
    if c.return_token_ids {
        first["prompt_token_ids"] = json!(prompt);
    }
    pending.push_back(sse(&first));
    let echo_len = match &shape {
        Shape::Chat => 0,
        Shape::Text { echo } => echo.len(),
    };
    let state = Stream {
        rx,
        header,
        choices,
        prompt_len: prompt.len(),
        logprobs: c.logprobs.is_some(),
        token_ids: c.return_token_ids,
        include_usage: c.include_usage,
        pending,
        ended: false,
        shape,
        offsets: vec![echo_len; c.n],
    };
    let body = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(b) = s.pending.pop_front() {
                return Some((Ok::<_, Infallible>(b), s));
            }
            if s.ended {
                return None;
            }
            s.next_event().await;
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| {
            ApiError::engine(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        })
}

impl Stream {
    /// Waits for the loop's next event and queues what it turns into.
    async fn next_event(&mut self) {
        let event = match self.rx.recv().await {
            Some(Event::Failed(m)) => {
                let e = ApiError::engine(StatusCode::INTERNAL_SERVER_ERROR, m);
                return self.fail(e);
            }
            Some(e) => e,
            None => return self.fail(shutting_down()),
        };
        if let Some(d) = self.choices.apply(event) {
            let worth_sending = !d.content.is_empty()
                || !d.tool_calls.is_empty()
                || d.finish.is_some()
                || (self.logprobs && !d.logprobs.is_empty())
                || (self.token_ids && !d.tokens.is_empty());
            if worth_sending {
                let chunk = match self.shape {
                    Shape::Chat => {
                        let choice = response::chunk_choice(&d, self.logprobs, self.token_ids);
                        response::chunk(&self.header, vec![choice], self.include_usage)
                    }
                    Shape::Text { .. } => self.text_chunk(&d),
                };
                self.pending.push_back(sse(&chunk));
            }
        }
        if self.choices.done() {
            if self.include_usage {
                let mut last = response::chunk(&self.header, Vec::new(), false);
                last["usage"] = response::usage(self.prompt_len, self.choices.completion_tokens());
                self.pending.push_back(sse(&last));
            }
            self.pending
                .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
            self.ended = true;
        }
    }

    /// A completions-API chunk for one delta.
    fn text_chunk(&mut self, d: &response::Delta) -> Json {
        let offset = self.offsets.get(d.index).copied().unwrap_or(0);
        let mut choice = json!({
            "index": d.index,
            "text": d.content,
            "logprobs": if self.logprobs && !d.logprobs.is_empty() {
                crate::serve::completions::legacy_logprobs(&d.logprobs, offset)
            } else {
                Json::Null
            },
            "finish_reason": response::finish_reason(d.finish.as_ref()),
        });
        if self.token_ids {
            choice["token_ids"] = json!(d.tokens);
        }
        if let Some(o) = self.offsets.get_mut(d.index) {
            *o += d
                .logprobs
                .iter()
                .map(|e| e["token"].as_str().map_or(0, str::len))
                .sum::<usize>();
        }
        let mut chunk = response::chunk(&self.header, vec![choice], self.include_usage);
        chunk["object"] = json!("text_completion");
        chunk
    }

    /// An error mid-stream: the status is already sent, so it goes as an
    /// event (OpenAI's clients raise it), and the stream ends.
    fn fail(&mut self, e: ApiError) {
        self.pending.push_back(sse(&e.body()));
        self.ended = true;
    }
}

/// A seed for requests without one (also the response and tool-call ids).
pub(crate) fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64 of time and count: distinct per request.
    let mut z = t ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
