//! The built-in `code_interpreter`: a chat request with the `cleaner`
//! extension object runs the agent inside the server. The model's Python
//! calls execute in the sandbox, failed calls are purified as in training
//! (CLEANER's rollback and graft, `"purify": true`) or kept (`false`), and
//! the response carries the final assistant message of each choice and, when
//! asked, the whole trajectory with its purification events: what
//! `cleaner solve` writes and `cleaner show` renders.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value as Json};

use crate::agent::format::tool_schema;
use crate::agent::{Agent, AgentConfig, BatchStats, Finish, FormatKind, Problem, ToolFormat};
use crate::agent::{AgentError, Trajectory};
use crate::chat::Message;
use crate::rollout::RolloutError;
use crate::sandbox::Sandbox;
use crate::serve::error::ApiError;
use crate::serve::http::AppState;
use crate::serve::request::Checked;
use crate::serve::session_backend::{Admission, SessionBackend};

/// The request's `cleaner` object.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanerOptions {
    /// `true` (default), `false`, or the probability in [0, 1] that a
    /// choice is purified.
    pub purify: Option<Json>,
    /// Most assistant turns (tool calls and the answer); default 8.
    pub max_turns: Option<i64>,
    /// `hermes` (`<tool_call>` JSON, the default when the chat template
    /// renders tools) or `markdown` (```` ```python ```` blocks).
    pub format: Option<String>,
    /// Return each choice's trajectory (tokens, segments, tool calls,
    /// purification events).
    pub return_trajectory: Option<bool>,
}

/// Most turns a request may ask for.
const MAX_TURNS: i64 = 64;
/// The response budget when the request sets no `max_tokens`.
const DEFAULT_RESPONSE_TOKENS: usize = 1024;

/// A checked interpreter request.
pub struct Interpreter {
    /// The agent's settings for this request.
    pub config: AgentConfig,
    /// Its tool format, resolved for the model.
    pub format: ToolFormat,
    /// Return the trajectories.
    pub return_trajectory: bool,
}

impl CleanerOptions {
    /// Checks the options against the request's other fields and the model.
    pub fn check(self, c: &Checked, s: &AppState, seed: u64) -> Result<Interpreter, ApiError> {
        let refuse = |field: &str, why: &str| {
            Err(ApiError::invalid(
                field,
                format!("{field} cannot be used with the code interpreter (the `cleaner` object): {why}"),
            ))
        };
        if c.stream {
            return refuse("stream", "the answer is returned whole");
        }
        if c.logprobs.is_some() {
            return refuse(
                "logprobs",
                "ask for return_trajectory: its sampler_logprobs are per token",
            );
        }
        if !c.stop.is_empty() {
            return refuse("stop", "the agent sets each turn's stops itself");
        }
        if c.return_token_ids {
            return refuse(
                "return_token_ids",
                "ask for return_trajectory: it holds the tokens",
            );
        }
        if c.ignore_eos {
            return refuse("ignore_eos", "a turn ends at end-of-generation");
        }
        let rollback_probability = match &self.purify {
            None | Some(Json::Bool(true)) => 1.0,
            Some(Json::Bool(false)) => 0.0,
            Some(Json::Number(p)) if p.as_f64().is_some_and(|p| (0.0..=1.0).contains(&p)) => {
                p.as_f64().unwrap_or(1.0)
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    "cleaner.purify",
                    format!(
                    "cleaner.purify must be true, false or a probability in [0, 1], got {other}"
                ),
                ))
            }
        };
        let max_turns = self.max_turns.unwrap_or(8);
        if !(1..=MAX_TURNS).contains(&max_turns) {
            return Err(ApiError::invalid(
                "cleaner.max_turns",
                format!("cleaner.max_turns must be between 1 and {MAX_TURNS}, got {max_turns}"),
            ));
        }
        let hermes = ToolFormat::hermes(&s.template);
        let format = match self.format.as_deref() {
            None => hermes.unwrap_or_else(|_| ToolFormat::markdown()),
            Some("markdown") => ToolFormat::markdown(),
            Some("hermes") => hermes.map_err(|e| {
                ApiError::invalid("cleaner.format", format!("cleaner.format hermes: {e}"))
            })?,
            Some(other) => {
                return Err(ApiError::invalid(
                    "cleaner.format",
                    format!("cleaner.format must be hermes or markdown, got `{other}`"),
                ))
            }
        };
        let mut config = AgentConfig {
            format: format.kind,
            max_turns: max_turns as usize,
            max_response_tokens: c.max_tokens.unwrap_or(DEFAULT_RESPONSE_TOKENS),
            rollback_probability,
            ..Default::default()
        };
        config.sampling.temperature = c.temperature;
        config.sampling.top_p = c.top_p;
        config.sampling.top_k = c.top_k;
        config.sampling.seed = seed;
        config
            .validate()
            .map_err(|e| ApiError::invalid("cleaner", e.to_string()))?;
        Ok(Interpreter {
            config,
            format,
            return_trajectory: self.return_trajectory.unwrap_or(false),
        })
    }
}

/// The prompt of an interpreter request: the messages rendered with the
/// tool's schema when the format is Hermes (as the agent's own prompts are).
pub fn prompt(
    s: &AppState,
    messages: &[Message],
    kind: FormatKind,
) -> Result<Vec<crate::Token>, crate::chat::ChatError> {
    let tools = [tool_schema()];
    let tools = (kind == FormatKind::Hermes).then_some(&tools[..]);
    s.template.tokenize(&s.model, messages, tools)
}

/// The sandbox the interpreter's calls run in, once one is set. Dropping
/// the last handle of a [`Sandbox`] shuts its own async runtime down, which
/// tokio forbids on the server's runtime threads, where the server's state is
/// dropped: the handle goes to a thread of its own to be dropped there.
#[derive(Default)]
pub struct SandboxSlot(std::sync::OnceLock<Arc<Sandbox>>);

impl SandboxSlot {
    /// Sets the sandbox; false if one was set already.
    pub fn set(&self, sandbox: Arc<Sandbox>) -> bool {
        self.0.set(sandbox).is_ok()
    }

    /// The sandbox, if one was set.
    pub fn get(&self) -> Option<Arc<Sandbox>> {
        self.0.get().cloned()
    }
}

impl Drop for SandboxSlot {
    fn drop(&mut self) {
        if let Some(sandbox) = self.0.take() {
            let _ = std::thread::Builder::new()
                .name("cleaner-sandbox-drop".into())
                .spawn(move || drop(sandbox));
        }
    }
}

/// Sets a flag when dropped: the handler's future is dropped when its
/// client goes away, and the agent's next call then stops it.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What one interpreter request runs.
pub struct Run {
    /// The rendered prompt.
    pub prompt: Vec<crate::Token>,
    /// Choices (rollouts of the prompt).
    pub n: usize,
    /// The LoRA adapter the request's `model` selected.
    pub adapter: Option<Arc<crate::LoraAdapter>>,
    /// The response's id, time and model.
    pub header: crate::serve::response::Header,
}

/// Runs the agent for the request's choices and answers with the whole
/// response.
pub async fn run(s: Arc<AppState>, run: Run, interp: Interpreter) -> Result<Response, ApiError> {
    let Run {
        prompt,
        n,
        adapter,
        header,
    } = run;
    let Some(sandbox) = s.sandbox.get() else {
        return Err(ApiError::invalid(
            "cleaner",
            "this server runs no sandbox, so the code interpreter is off (start it without --no-code-interpreter)",
        ));
    };
    let per_sequence = interp.config.cells_per_sequence(prompt.len());
    let cells = per_sequence * n;
    if cells > s.worker.cells() {
        return Err(ApiError::invalid(
            "max_tokens",
            format!(
                "the code interpreter plans {per_sequence} cache cells per choice (the prompt's {}, the response budget of \
                 {} and room for corrections), {cells} for {n} choices, more than this server's {}; lower max_tokens or n",
                prompt.len(),
                interp.config.max_response_tokens,
                s.worker.cells()
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let cancelled = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancelled.clone());
    s.metrics
        .prompt_tokens
        .fetch_add(prompt.len() as u64, Ordering::Relaxed);
    let state = s.clone();
    let problem = Problem {
        id: header.id.clone(),
        prompt: prompt.clone(),
    };
    let return_trajectory = interp.return_trajectory;
    let rollback_probability = interp.config.rollback_probability;
    let kind = interp.format.kind;
    let ran = tokio::task::spawn_blocking(move || {
        let admission = Admission {
            slots: n + 1,
            cells,
            adapter,
            cancelled,
        };
        let mut backend = SessionBackend::open(&state.worker, state.model.clone(), admission)
            .map_err(|e| ApiError::engine(StatusCode::SERVICE_UNAVAILABLE, e))?;
        let mut agent = Agent::new(&mut backend, &sandbox, interp.format, interp.config)
            .map_err(|e| ApiError::invalid("cleaner", e.to_string()))?;
        agent.run(&[problem], n).map_err(agent_error)
    })
    .await
    .map_err(|e| ApiError::engine(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (trajectories, stats) = ran?;
    s.metrics.interpreter.record(&stats);
    let body = response(
        &header,
        &trajectories,
        &stats,
        prompt.len(),
        Summary {
            return_trajectory,
            rollback_probability,
            kind,
        },
    );
    Ok(axum::Json(body).into_response())
}

fn agent_error(e: AgentError) -> ApiError {
    match e {
        AgentError::Rollout(RolloutError::Interrupted(m)) => {
            ApiError::engine(StatusCode::SERVICE_UNAVAILABLE, m)
        }
        other => ApiError::engine(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// What the response says about the request as a whole.
struct Summary {
    return_trajectory: bool,
    rollback_probability: f64,
    kind: FormatKind,
}

/// A `chat.completion` whose choices are the trajectories' final turns.
fn response(
    h: &crate::serve::response::Header,
    trajectories: &[Trajectory],
    stats: &BatchStats,
    prompt_tokens: usize,
    summary: Summary,
) -> Json {
    let choices: Vec<Json> = trajectories
        .iter()
        .map(|t| {
            let mut extra = json!({
                "finish": t.finish,
                "turns": t.turns,
                "answer": t.answer,
                "tool_calls": t.tool_calls,
                "purification": t.purification,
            });
            if summary.return_trajectory {
                extra["trajectory"] = json!(t);
            }
            json!({
                "index": t.rollout,
                "message": {"role": "assistant", "content": final_text(t)},
                "logprobs": null,
                "finish_reason": match t.finish {
                    Finish::Answer => "stop",
                    _ => "length",
                },
                "cleaner": extra,
            })
        })
        .collect();
    json!({
        "id": h.id,
        "object": "chat.completion",
        "created": h.created,
        "model": h.model,
        "choices": choices,
        "usage": crate::serve::response::usage(prompt_tokens, stats.generated_tokens),
        "cleaner": {
            "format": summary.kind,
            "rollback_probability": summary.rollback_probability,
            "stats": stats,
        },
    })
}

/// The final assistant turn as a client shows it: without the
/// end-of-generation marker the decoder renders.
fn final_text(t: &Trajectory) -> String {
    let text = t.final_turn();
    let trimmed = text.trim_end();
    for marker in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"] {
        if let Some(head) = trimmed.strip_suffix(marker) {
            return head.to_string();
        }
    }
    text
}

/// Interpreter counters for `GET /metrics`.
#[derive(Default)]
pub struct InterpreterMetrics {
    /// Interpreter requests answered.
    pub requests: std::sync::atomic::AtomicU64,
    /// Tool executions in the sandbox, rolled back ones included.
    pub sandbox_calls: std::sync::atomic::AtomicU64,
    /// Executions that failed (before purification).
    pub failed_calls: std::sync::atomic::AtomicU64,
    /// Grafts (shallow and deep): failures purified away.
    pub grafts: std::sync::atomic::AtomicU64,
    /// Tokens sampled for corrections.
    pub correction_tokens: std::sync::atomic::AtomicU64,
}

impl InterpreterMetrics {
    fn record(&self, stats: &BatchStats) {
        let add = |a: &std::sync::atomic::AtomicU64, v: usize| {
            a.fetch_add(v as u64, Ordering::Relaxed);
        };
        add(&self.requests, 1);
        add(&self.sandbox_calls, stats.tool_calls);
        add(
            &self.failed_calls,
            (stats.failures_per_trajectory_raw * stats.rollouts as f64).round() as usize,
        );
        add(&self.grafts, stats.rollbacks_shallow + stats.rollbacks_deep);
        add(&self.correction_tokens, stats.correction_tokens);
    }

    /// Its lines of the exposition text.
    pub fn render(&self, w: &mut String) {
        use std::fmt::Write;
        for (name, help, v) in [
            (
                "cleaner_interpreter_requests_total",
                "code-interpreter requests answered",
                &self.requests,
            ),
            (
                "cleaner_sandbox_calls_total",
                "tool executions in the sandbox, rolled back ones included",
                &self.sandbox_calls,
            ),
            (
                "cleaner_sandbox_failed_calls_total",
                "tool executions that failed, before purification",
                &self.failed_calls,
            ),
            (
                "cleaner_purification_grafts_total",
                "failed calls purified away (shallow and deep grafts)",
                &self.grafts,
            ),
            (
                "cleaner_correction_tokens_total",
                "tokens sampled for purification lookaheads",
                &self.correction_tokens,
            ),
        ] {
            let _ = writeln!(
                w,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::serve::request::parse;
    use serde_json::json;

    fn body(cleaner: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                   "cleaner": cleaner}),
        )
        .unwrap()
    }

    #[test]
    fn options_name_their_field() {
        let e = parse(&body(json!({"purify": true, "turns": 3})))
            .err()
            .unwrap();
        assert_eq!(e.param.as_deref(), Some("cleaner.turns"));
        let e = parse(&body(json!({"max_turns": "six"}))).err().unwrap();
        assert_eq!(e.param.as_deref(), Some("cleaner.max_turns"));
        let o = parse(&body(
            json!({"purify": 0.5, "max_turns": 3, "return_trajectory": true}),
        ))
        .unwrap()
        .cleaner
        .unwrap();
        assert_eq!(o.purify, Some(json!(0.5)));
        assert_eq!((o.max_turns, o.return_trajectory), (Some(3), Some(true)));
    }
}
