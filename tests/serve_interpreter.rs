//! The server's built-in code interpreter (the `cleaner` request object):
//! Qwen2.5-Coder-0.5B is asked to use numpy, which the sandbox's CPython
//! does not have, so its first call fails (ModuleNotFoundError) in the
//! sandbox inside the server and is purified. Each trajectory the server
//! returns must equal the one the agent collects the way `cleaner solve`
//! collects it (same prompt tokens, config and seed, on a decoder of its own
//! shaped like the server's): the server's loop decodes the agent's
//! sequences only when the agent asks while it is otherwise idle, so the
//! batches, and with them the tokens, are the same.

mod common;
#[path = "common/server.rs"]
mod server;

use std::sync::{Arc, OnceLock};

use cleaner::agent::trajectory::ToolCallRecord;
use cleaner::agent::{Agent, AgentConfig, FormatKind, Problem, ToolFormat, Trajectory};
use cleaner::assets::{self, AssetStore};
use cleaner::chat::{ChatTemplate, Message};
use cleaner::serve::{ServeConfig, Server};
use cleaner::{Decoder, DecoderConfig, Model, ModelParams};
use serde_json::{json, Value as Json};
use server::InProcessServer;

const MODEL_ID: &str = "qwen-test";
const SLOTS: u32 = 3;
const CTX: u32 = 2048;
const SEED: u64 = 5;
const MAX_TOKENS: usize = 160;
const MAX_TURNS: usize = 3;

/// A task whose natural code fails in the sandbox: numpy is not installed
/// there (measured: the first call of each of the 4 choices of seed 5 failed).
const ASK: &str = "Compute the standard deviation of [2, 4, 4, 4, 5, 5, 7, 9] with numpy: \
write code in a ```python block that starts with import numpy as np; it will be executed \
and its output shown to you. Then put the final answer in \\boxed{}.";

fn qwen() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = AssetStore::default()
                .resolve_model("qwen2.5-coder-0.5b", &mut |l| eprintln!("{l}"))
                .expect("fetch qwen2.5-coder-0.5b");
            Arc::new(Model::load(path, &ModelParams::default()).expect("load qwen"))
        })
        .clone()
}

fn new_sandbox() -> Arc<cleaner::sandbox::Sandbox> {
    let wasm = AssetStore::default()
        .fetch(
            assets::find("python-wasm").expect("python-wasm in catalog"),
            &mut |l| eprintln!("{l}"),
        )
        .expect("fetch python-wasm");
    Arc::new(
        cleaner::sandbox::Sandbox::new(cleaner::sandbox::SandboxConfig::new(
            wasm,
            cleaner::assets::sandbox_cache_dir(),
        ))
        .expect("sandbox"),
    )
}

/// Qwen served as `MODEL_ID`, with the code interpreter when `sandbox` is set.
fn start(sandbox: Option<Arc<cleaner::sandbox::Sandbox>>) -> InProcessServer {
    let server = Server::new(
        qwen(),
        ServeConfig {
            model_id: MODEL_ID.into(),
            slots: SLOTS,
            ctx_per_slot: CTX,
            threads: 2,
            ..Default::default()
        },
    )
    .expect("server");
    if let Some(s) = sandbox {
        assert!(server.set_sandbox(s));
    }
    InProcessServer::serve(server)
}

fn request(n: usize, cleaner: Json) -> Json {
    json!({
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": ASK}],
        "n": n,
        "seed": SEED,
        "temperature": 1.0,
        "max_tokens": MAX_TOKENS,
        "cleaner": cleaner,
    })
}

/// The agent run as `cleaner solve` runs it, on a decoder shaped like the
/// server's (slots + 1 sequences, slots x ctx cells, 512-token batches).
fn reference(
    sandbox: &cleaner::sandbox::Sandbox,
    n: usize,
    rollback_probability: f64,
) -> Vec<Trajectory> {
    let model = qwen();
    let template = ChatTemplate::from_model(&model).expect("template");
    let format = ToolFormat::markdown();
    let prompt = template
        .tokenize(&model, &[Message::user(ASK)], None)
        .expect("prompt");
    let mut config = AgentConfig {
        format: FormatKind::Markdown,
        max_turns: MAX_TURNS,
        max_response_tokens: MAX_TOKENS,
        rollback_probability,
        ..Default::default()
    };
    config.sampling.temperature = 1.0;
    config.sampling.seed = SEED;
    let mut decoder = Decoder::new(
        model,
        &DecoderConfig {
            n_ctx: SLOTS * CTX,
            n_seq_max: SLOTS + 1,
            n_batch: 512,
            n_threads: 2,
            ..Default::default()
        },
    )
    .expect("decoder");
    let mut agent = Agent::new(&mut decoder, sandbox, format, config).expect("agent");
    let problem = Problem {
        id: "reference".into(),
        prompt,
    };
    agent.run(&[problem], n).expect("agent run").0
}

/// What must match: everything but timings and the problem's id.
fn calls(t: &Trajectory) -> Vec<(usize, String, String, bool)> {
    t.tool_calls
        .iter()
        .map(|c: &ToolCallRecord| (c.turn, c.code.clone(), format!("{:?}", c.status), c.kept))
        .collect()
}

fn assert_same(server: &Trajectory, reference: &Trajectory) {
    assert_eq!(server.tokens, reference.tokens, "tokens");
    assert_eq!(server.roles, reference.roles, "roles");
    assert_eq!(server.segments, reference.segments, "segments");
    assert_eq!(
        server.purification, reference.purification,
        "purification events"
    );
    assert_eq!(calls(server), calls(reference), "tool calls");
    assert_eq!(server.finish, reference.finish, "finish");
    let max_diff = server
        .sampler_logprobs
        .iter()
        .zip(&reference.sampler_logprobs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max_diff <= 1e-5, "sampler log-probs differ by {max_diff}");
}

#[test]
fn a_failed_call_is_purified_in_the_server_as_the_agent_purifies_it() {
    let _serial = common::serial();
    let sandbox = new_sandbox();
    let served = start(Some(sandbox.clone()));
    let n = 2;
    let (status, body) = served.post(
        "/v1/chat/completions",
        &request(
            n,
            json!({"purify": true, "max_turns": MAX_TURNS, "format": "markdown",
                   "return_trajectory": true}),
        ),
    );
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), n);
    let got: Vec<Trajectory> = choices
        .iter()
        .map(|c| serde_json::from_value(c["cleaner"]["trajectory"].clone()).expect("trajectory"))
        .collect();
    let want = reference(&sandbox, n, 1.0);
    for (g, w) in got.iter().zip(&want) {
        assert_same(g, w);
    }
    // The request was built to fail: some call failed and was purified.
    let failed: usize = got
        .iter()
        .flat_map(|t| &t.tool_calls)
        .filter(|c| !matches!(c.status, cleaner::agent::trajectory::CallStatus::Ok))
        .count();
    let events: usize = got.iter().map(|t| t.purification.len()).sum();
    assert!(
        failed > 0 && events > 0,
        "no failure was purified: {body:#}"
    );
    // The response's message is the final turn, and the summary adds up.
    for (c, t) in choices.iter().zip(&got) {
        let content = c["message"]["content"].as_str().expect("content");
        assert!(t.final_turn().starts_with(content), "{content:?}");
        assert_eq!(c["cleaner"]["purification"], json!(t.purification));
    }
    assert_eq!(
        body["cleaner"]["stats"]["tool_calls"].as_u64(),
        Some(got.iter().map(|t| t.tool_calls.len() as u64).sum())
    );
    assert_eq!(
        body["usage"]["prompt_tokens"].as_u64().map(|p| p > 0),
        Some(true)
    );
    // Everything the session held is back.
    let h = served.get("/health");
    assert_eq!(
        (
            h["open_sequences"].as_u64(),
            h["cached_positions"].as_u64(),
            h["running"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{h}"
    );
}

#[test]
fn interpreter_requests_share_the_loop_and_bad_options_are_named() {
    let _serial = common::serial();
    let served = start(Some(new_sandbox()));
    // An interpreter request and a plain one at the same time both finish.
    let plain = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Say hi."}],
                       "max_tokens": 16, "seed": 1});
    let interp = request(1, json!({"purify": false, "max_turns": 2}));
    let url = served.url("/v1/chat/completions");
    let (a, b) = served.rt.block_on(async {
        let c = &reqwest::Client::new();
        let post = |body: &Json| {
            c.post(&url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
        };
        let a = post(&interp);
        let b = post(&plain);
        let (a, b) = tokio::join!(a, b);
        (
            a.expect("interp").status().as_u16(),
            b.expect("plain").status().as_u16(),
        )
    });
    assert_eq!((a, b), (200, 200));
    for (cleaner, extra, param) in [
        (json!({"purify": "yes"}), json!({}), "cleaner.purify"),
        (json!({"max_turns": 0}), json!({}), "cleaner.max_turns"),
        (json!({"format": "xml"}), json!({}), "cleaner.format"),
        (json!({"turns": 2}), json!({}), "cleaner.turns"),
        (json!({}), json!({"stream": true}), "stream"),
        (json!({}), json!({"logprobs": true}), "logprobs"),
        (json!({}), json!({"stop": "x"}), "stop"),
        (json!({}), json!({"max_tokens": 100000}), "max_tokens"),
    ] {
        let mut body = request(1, cleaner);
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (status, err) = served.post("/v1/chat/completions", &body);
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["error"]["param"], json!(param), "{err}");
    }
    let h = served.get("/health");
    assert_eq!(
        (h["open_sequences"].as_u64(), h["cached_positions"].as_u64()),
        (Some(0), Some(0)),
        "{h}"
    );
    // A server started without a sandbox refuses interpreter requests.
    drop(served);
    let bare = start(None);
    let (status, err) = bare.post("/v1/chat/completions", &request(1, json!({})));
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], json!("cleaner"));
}
