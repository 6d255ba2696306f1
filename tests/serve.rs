//! `cleaner serve` end to end: a server on a free loopback port, in process,
//! with SmolLM2, driven by a real HTTP client (reqwest). Answers are checked
//! against the decoder driven directly on the same prompt tokens.

mod common;
#[path = "common/server.rs"]
mod server;
#[path = "serve/tools.rs"]
mod tools;

use std::time::{Duration, Instant};

use cleaner::chat::{ChatTemplate, Message};
use cleaner::serve::{ServeConfig, Server};
use cleaner::{Decoder, DecoderConfig, GenerateParams, SamplingParams, Token};
use serde_json::{json, Value as Json};
use server::InProcessServer;

const MODEL_ID: &str = "smollm2-test";
const SLOTS: u32 = 4;
const CTX: u32 = 1024;

struct TestServer {
    server: InProcessServer,
    client: reqwest::Client,
    key: Option<String>,
}

impl TestServer {
    fn start(api_key: Option<&str>) -> TestServer {
        Self::start_with(api_key, Duration::from_secs(2))
    }

    fn start_with(api_key: Option<&str>, shutdown_grace: Duration) -> TestServer {
        Self::start_model(common::model(), MODEL_ID, api_key, shutdown_grace)
    }

    /// With LoRA adapters loaded at start (`--adapter NAME=FILE`).
    fn start_with_adapters(adapters: Vec<(String, std::path::PathBuf)>) -> TestServer {
        Self::start_config(
            common::model(),
            MODEL_ID,
            None,
            Duration::from_secs(2),
            adapters,
        )
    }

    fn start_model(
        model: std::sync::Arc<cleaner::Model>,
        model_id: &str,
        api_key: Option<&str>,
        shutdown_grace: Duration,
    ) -> TestServer {
        Self::start_config(model, model_id, api_key, shutdown_grace, Vec::new())
    }

    fn start_config(
        model: std::sync::Arc<cleaner::Model>,
        model_id: &str,
        api_key: Option<&str>,
        shutdown_grace: Duration,
        adapters: Vec<(String, std::path::PathBuf)>,
    ) -> TestServer {
        let server = Server::new(
            model,
            ServeConfig {
                model_id: model_id.into(),
                slots: SLOTS,
                ctx_per_slot: CTX,
                threads: 2,
                api_key: api_key.map(str::to_string),
                max_body_bytes: 64 << 10,
                shutdown_grace,
                adapters,
            },
        )
        .expect("server");
        TestServer {
            server: InProcessServer::serve(server),
            client: reqwest::Client::new(),
            key: api_key.map(str::to_string),
        }
    }

    fn send(&self, req: reqwest::RequestBuilder) -> (u16, String) {
        let req = match &self.key {
            Some(k) => req.bearer_auth(k),
            None => req,
        };
        self.rt.block_on(async {
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            (status, resp.text().await.expect("body"))
        })
    }

    /// POSTs raw bytes; the status and the body.
    fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
        self.send(
            self.client
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body),
        )
    }

    fn post(&self, path: &str, body: &Json) -> (u16, Json) {
        let (status, text) = self.post_raw(path, body.to_string());
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, json)
    }

    fn chat(&self, body: &Json) -> Json {
        let (status, json) = self.post("/v1/chat/completions", body);
        assert_eq!(status, 200, "{json}");
        json
    }

    fn get(&self, path: &str) -> (u16, Json) {
        let (status, text) = self.send(self.client.get(self.url(path)));
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
        )
    }

    fn health(&self) -> Json {
        let (status, h) = self.get("/health");
        assert_eq!(status, 200);
        h
    }
}

/// The runtime, address, `url` and the stop handles are the in-process
/// server's; it stops the server when dropped.
impl std::ops::Deref for TestServer {
    type Target = InProcessServer;
    fn deref(&self) -> &InProcessServer {
        &self.server
    }
}

impl std::ops::DerefMut for TestServer {
    fn deref_mut(&mut self) -> &mut InProcessServer {
        &mut self.server
    }
}

const QUESTION: &str = "Name three colors.";

fn messages() -> Json {
    messages_for(QUESTION)
}

/// The prompt tokens the server must build for `messages()`.
fn prompt_tokens() -> Vec<Token> {
    prompt_for(QUESTION)
}

/// The decoder as the server configures it, driven directly.
fn reference_decoder() -> Decoder {
    Decoder::new(
        common::model(),
        &DecoderConfig {
            n_ctx: SLOTS * CTX,
            n_seq_max: SLOTS + 1,
            n_threads: 2,
            ..Default::default()
        },
    )
    .unwrap()
}

/// `n` choices of one prompt driven the way the server drives them: forks of
/// one prefilled root, each closed as soon as it finishes. (`generate_group`
/// keeps finished sequences open until all are done, so their last token is
/// still decoded and takes a cache cell; that moves later cells and, through
/// rounding, can change a sampled token.)
fn reference_group(prompt: &[Token], params: &[GenerateParams]) -> Vec<cleaner::Generation> {
    let mut d = reference_decoder();
    let root = d.open_with(prompt).unwrap();
    let seqs: Vec<_> = params.iter().map(|_| d.fork(root).unwrap()).collect();
    d.close(root);
    for (seq, p) in seqs.iter().zip(params) {
        d.start(*seq, p.clone()).unwrap();
    }
    let mut out: Vec<Option<cleaner::Generation>> = vec![None; params.len()];
    while d.n_generating() > 0 {
        for (seq, g) in d.step().unwrap() {
            d.close(seq);
            out[seqs.iter().position(|s| *s == seq).unwrap()] = Some(g);
        }
    }
    out.into_iter().map(Option::unwrap).collect()
}

fn ids(v: &Json) -> Vec<Token> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Data lines of an SSE body, `[DONE]` included as a string.
fn events(body: &str) -> Vec<Json> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let data = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE event: {e:?}"));
            serde_json::from_str(data).unwrap_or_else(|_| Json::String(data.to_string()))
        })
        .collect()
}

#[test]
fn greedy_chat_equals_the_decoder_and_streams_the_same_text() {
    let _g = common::serial();
    let prompt = prompt_tokens();
    let want = reference_decoder()
        .generate(&[(
            prompt.clone(),
            GenerateParams {
                sampling: SamplingParams::greedy(),
                max_new_tokens: 40,
                ..Default::default()
            },
        )])
        .unwrap()
        .remove(0);
    let s = TestServer::start(None);
    let (status, models) = s.get("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], MODEL_ID);

    let request = json!({"model": MODEL_ID, "messages": messages(), "temperature": 0,
                         "max_tokens": 40, "return_token_ids": true});
    let r = s.chat(&request);
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(ids(&r["prompt_token_ids"]), prompt);
    let choice = &r["choices"][0];
    assert_eq!(
        ids(&choice["token_ids"]),
        want.tokens,
        "server vs decoder tokens"
    );
    let model = common::model();
    let visible: Vec<Token> = want
        .tokens
        .iter()
        .copied()
        .filter(|&t| !model.is_eog(t))
        .collect();
    assert_eq!(choice["message"]["content"], model.detokenize(&visible));
    let reason = if want.finish == cleaner::FinishReason::MaxTokens {
        "length"
    } else {
        "stop"
    };
    assert_eq!(choice["finish_reason"], reason);
    assert_eq!(r["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(r["usage"]["completion_tokens"], want.tokens.len());
    assert_eq!(r["usage"]["total_tokens"], prompt.len() + want.tokens.len());

    // The same request streamed: deltas concatenate to the same content and
    // token ids, and the usage chunk counts the same.
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (status, body) = s.post_raw("/v1/chat/completions", streamed.to_string());
    assert_eq!(status, 200, "{body}");
    let ev = events(&body);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(ids(&ev[0]["prompt_token_ids"]), prompt);
    let chunks = &ev[..ev.len() - 1];
    let mut content = String::new();
    let mut tokens = Vec::new();
    let mut finish = Json::Null;
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert!(c["usage"].is_null());
        let ch = &c["choices"][0];
        content.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
        if let Some(t) = ch.get("token_ids") {
            tokens.extend(ids(t));
        }
        if !ch["finish_reason"].is_null() {
            finish = ch["finish_reason"].clone();
        }
    }
    assert_eq!(content, choice["message"]["content"].as_str().unwrap());
    assert_eq!(tokens, want.tokens);
    assert_eq!(finish, reason);
    let usage = &chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], r["usage"]);
}

#[test]
fn n_choices_are_seeded_like_a_decoder_group_and_reproduce() {
    let _g = common::serial();
    let prompt = prompt_tokens();
    let params: Vec<GenerateParams> = (0..3)
        .map(|i| GenerateParams {
            sampling: SamplingParams {
                temperature: 1.0,
                top_p: 0.95,
                top_k: 50,
                seed: 7 + i,
            },
            max_new_tokens: 24,
            ..Default::default()
        })
        .collect();
    let want = reference_group(&prompt, &params);
    let s = TestServer::start(None);
    let request = json!({"model": MODEL_ID, "messages": messages(), "n": 3, "seed": 7,
                         "temperature": 1.0, "top_p": 0.95, "top_k": 50, "max_tokens": 24,
                         "return_token_ids": true});
    let a = s.chat(&request);
    let b = s.chat(&request);
    assert_eq!(a["choices"].as_array().unwrap().len(), 3);
    for i in 0..3 {
        let got = ids(&a["choices"][i]["token_ids"]);
        assert_eq!(
            got,
            want[i].tokens,
            "choice {i} vs the decoder's seed {}",
            7 + i
        );
        assert_eq!(a["choices"][i]["index"], i);
        assert_eq!(
            a["choices"][i]["message"], b["choices"][i]["message"],
            "seed reproduces"
        );
    }
    let total: usize = want.iter().map(|g| g.tokens.len()).sum();
    assert_eq!(a["usage"]["completion_tokens"], total);
    assert_ne!(
        want[0].tokens, want[1].tokens,
        "different seeds gave the same sample"
    );
}

#[test]
fn logprobs_are_the_decoders_with_sorted_alternatives() {
    let _g = common::serial();
    let prompt = prompt_tokens();
    let want = reference_decoder()
        .generate(&[(
            prompt.clone(),
            GenerateParams {
                sampling: SamplingParams::greedy(),
                max_new_tokens: 12,
                ..Default::default()
            },
        )])
        .unwrap()
        .remove(0);
    let s = TestServer::start(None);
    let r = s.chat(
        &json!({"model": MODEL_ID, "messages": messages(), "temperature": 0,
                           "max_tokens": 12, "logprobs": true, "top_logprobs": 3}),
    );
    let entries = r["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(entries.len(), want.tokens.len());
    let model = common::model();
    for (k, e) in entries.iter().enumerate() {
        let lp = e["logprob"].as_f64().unwrap();
        assert!(
            (lp - want.logprobs[k] as f64).abs() < 1e-6,
            "token {k}: {lp} vs {}",
            want.logprobs[k]
        );
        assert_eq!(e["bytes"], json!(model.piece(want.tokens[k])));
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely alternative.
        assert_eq!(top[0]["token"], e["token"]);
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-6);
        let lps: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(lps.windows(2).all(|w| w[0] >= w[1]), "not sorted: {lps:?}");
        assert!(lps.iter().map(|l| l.exp()).sum::<f64>() <= 1.0 + 1e-5);
    }
    // Without `logprobs` there are none.
    let r = s.chat(&json!({"model": MODEL_ID, "messages": messages(), "max_tokens": 2}));
    assert!(r["choices"][0]["logprobs"].is_null());
}

#[test]
fn bad_requests_get_openai_shaped_errors_and_the_server_keeps_serving() {
    let _g = common::serial();
    let s = TestServer::start(None);
    let check = |status: u16, body: &str, want_status: u16, want_param: Json, want_code: Json| {
        assert_eq!(status, want_status, "{body}");
        let e: Json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        let err = &e["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(err["type"].is_string(), "{body}");
        assert_eq!(err["param"], want_param, "{body}");
        assert_eq!(err["code"], want_code, "{body}");
    };
    let base = json!({"model": MODEL_ID, "messages": messages(), "max_tokens": 4});
    let with = |k: &str, v: Json| {
        let mut b = base.clone();
        b[k] = v;
        b.to_string()
    };
    let path = "/v1/chat/completions";
    let (st, b) = s.post_raw(path, "{\"model\": ");
    check(st, &b, 400, Json::Null, Json::Null);
    let (st, b) = s.post_raw(path, with("temperature", json!("hot")));
    check(st, &b, 400, json!("temperature"), Json::Null);
    let (st, b) = s.post_raw(
        path,
        with("messages", json!([{"role": "user", "content": 5}])),
    );
    check(st, &b, 400, json!("messages[0].content"), Json::Null);
    let (st, b) = s.post_raw(path, with("n", json!(SLOTS + 1)));
    check(st, &b, 400, json!("n"), Json::Null);
    let (st, b) = s.post_raw(path, with("max_tokens", json!(0)));
    check(st, &b, 400, json!("max_tokens"), Json::Null);
    let (st, b) = s.post_raw(path, with("max_tokens", json!(CTX)));
    check(
        st,
        &b,
        400,
        json!("max_tokens"),
        json!("context_length_exceeded"),
    );
    let long = "word ".repeat(CTX as usize + 10);
    let (st, b) = s.post_raw(
        path,
        with("messages", json!([{"role": "user", "content": long}])),
    );
    check(
        st,
        &b,
        400,
        json!("messages"),
        json!("context_length_exceeded"),
    );
    let (st, b) = s.post_raw(path, with("model", json!("gpt-4o")));
    check(st, &b, 404, json!("model"), json!("model_not_found"));
    let (st, b) = s.post_raw(path, with("logit_bias", json!({})));
    check(st, &b, 400, json!("logit_bias"), Json::Null);
    assert!(b.contains("logit_bias"), "{b}");
    let (st, b) = s.post_raw(path, "x".repeat(70 << 10));
    check(st, &b, 413, Json::Null, json!("request_too_large"));
    let (st, b) = s.post_raw("/v1/nothing", "{}");
    check(st, &b, 404, Json::Null, json!("unknown_url"));
    // Still serving.
    let r = s.chat(&base);
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    // /metrics counted all of it: 10 refusals and 1 answer on the route, 1
    // unknown path, and the answer's tokens.
    let (st, text) = s.send(s.client.get(s.url("/metrics")));
    assert_eq!(st, 200);
    let value = |line: &str| -> f64 {
        let l = text
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no {line} in\n{text}"));
        l.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let route = "cleaner_requests_total{route=\"/v1/chat/completions\"";
    assert_eq!(value(&format!("{route},status=\"400\"}}")), 8.0, "{text}");
    assert_eq!(value(&format!("{route},status=\"404\"}}")), 1.0, "{text}");
    assert_eq!(value(&format!("{route},status=\"413\"}}")), 1.0, "{text}");
    assert_eq!(value(&format!("{route},status=\"200\"}}")), 1.0, "{text}");
    assert_eq!(
        value("cleaner_requests_total{route=\"other\",status=\"404\"}"),
        1.0
    );
    assert_eq!(
        value("cleaner_request_duration_seconds_count{route=\"/v1/chat/completions\"}"),
        11.0
    );
    assert_eq!(
        value("cleaner_completion_tokens_total "),
        r["usage"]["completion_tokens"].as_f64().unwrap()
    );
    assert_eq!(
        value("cleaner_prompt_tokens_total "),
        r["usage"]["prompt_tokens"].as_f64().unwrap()
    );
    // The latency histograms saw the one answer: one first token (the
    // refusals never reached the loop), and a gap for each later token.
    assert_eq!(value("cleaner_time_to_first_token_seconds_count "), 1.0);
    assert_eq!(
        value("cleaner_time_to_first_token_seconds_bucket{le=\"+Inf\"} "),
        1.0
    );
    assert_eq!(
        value("cleaner_time_per_output_token_seconds_count "),
        r["usage"]["completion_tokens"].as_f64().unwrap() - 1.0
    );
    assert_eq!(value("cleaner_open_sequences "), 0.0);
}

#[test]
fn an_api_key_is_required_on_v1_routes() {
    let _g = common::serial();
    let s = TestServer::start(Some("sekrit"));
    let body = json!({"model": MODEL_ID, "messages": messages(), "max_tokens": 2}).to_string();
    let url = s.url("/v1/chat/completions");
    let plain = |req: reqwest::RequestBuilder| {
        s.rt.block_on(async { req.send().await.unwrap().status().as_u16() })
    };
    assert_eq!(plain(s.client.post(&url).body(body.clone())), 401);
    assert_eq!(
        plain(s.client.post(&url).bearer_auth("wrong").body(body.clone())),
        401
    );
    assert_eq!(plain(s.client.get(s.url("/v1/models"))), 401);
    assert_eq!(plain(s.client.get(s.url("/health"))), 200);
    assert_eq!(
        plain(s.client.post(&url).bearer_auth("sekrit").body(body)),
        200
    );
}

#[test]
fn a_client_disconnect_cancels_its_sequences_and_frees_their_cells() {
    let _g = common::serial();
    let s = TestServer::start(None);
    let body = json!({"model": MODEL_ID, "messages": messages(), "stream": true,
                      "ignore_eos": true, "max_tokens": 900, "n": 2});
    let (mut resp, seen) = s.rt.block_on(async {
        let mut resp = s
            .client
            .post(s.url("/v1/chat/completions"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        // The role chunk, then a chunk with generated text.
        let mut seen = String::new();
        while seen.matches("data: ").count() < 3 {
            seen.push_str(&String::from_utf8_lossy(
                &resp.chunk().await.unwrap().unwrap(),
            ));
        }
        (Some(resp), seen)
    });
    let h = s.health();
    assert_eq!(h["running"], 1, "{h}\n{seen}");
    assert_eq!(h["open_sequences"], 2, "{h}");
    assert!(
        h["cached_positions"].as_u64().unwrap() > prompt_tokens().len() as u64,
        "{h}"
    );
    resp.take(); // the client goes away mid-stream
    let t0 = Instant::now();
    loop {
        let h = s.health();
        if h["open_sequences"] == 0 {
            assert_eq!(h["cached_positions"], 0, "cells still held: {h}");
            assert_eq!(h["running"], 0, "{h}");
            assert_eq!(h["cancelled"], 1, "{h}");
            assert!(
                h["tokens_generated"].as_u64().unwrap() < 2 * 900,
                "ran to the end: {h}"
            );
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "not cancelled: {h}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The freed slots serve the next request.
    let r = s.chat(
        &json!({"model": MODEL_ID, "messages": messages(), "max_tokens": 3,
                           "ignore_eos": true}),
    );
    assert_eq!(r["usage"]["completion_tokens"], 3);
}

/// The `openai` package's version the client test pins.
const OPENAI_PIN: &str = "openai==3.57.0";

/// A virtual environment in the cache with the pinned `openai` package,
/// made on first use (python3 -m venv, pip install), like the benches'.
fn openai_python() -> std::path::PathBuf {
    let dir = cleaner::assets::home_dir().join("venv-openai");
    let python = dir.join("bin").join("python");
    let stamp = dir.join("cleaner-pins.txt");
    if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == OPENAI_PIN) {
        return python;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ok = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success())
        && std::process::Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                OPENAI_PIN,
            ])
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok,
        "could not make {} with {OPENAI_PIN} (python3 -m venv and PyPI needed once)",
        dir.display()
    );
    std::fs::write(&stamp, OPENAI_PIN).unwrap();
    python
}

#[test]
fn the_official_openai_client_works_against_the_server() {
    let python = openai_python();
    let _g = common::serial();
    let s = TestServer::start(Some("client-key"));
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("tuned.gguf");
    write_trained_adapter(&adapter, 5);
    run_client_script(
        &python,
        "openai_client.py",
        &[
            s.url("/v1").as_ref(),
            MODEL_ID.as_ref(),
            "client-key".as_ref(),
            adapter.as_os_str(),
        ],
    );
}

/// Runs tests/serve/`script` with `python` and `args`; it must exit 0 and
/// end its output with its count of passed checks.
fn run_client_script(python: &std::path::Path, script: &str, args: &[&std::ffi::OsStr]) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/serve")
        .join(script);
    let out = std::process::Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .expect("run the client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.trim_end().ends_with("checks"), "{stdout}");
}

/// Streams a long answer, reads until generated text arrives, then stops the
/// server; returns the rest of the stream and how `run` ended.
fn stop_during_a_stream(s: &mut TestServer, max_tokens: usize) -> (String, std::io::Result<()>) {
    let body = json!({"model": MODEL_ID, "messages": messages(), "stream": true,
                      "ignore_eos": true, "max_tokens": max_tokens,
                      "stream_options": {"include_usage": true}});
    let stop = s.stop.take().unwrap();
    let done = s.done.take().unwrap();
    let url = s.url("/v1/chat/completions");
    let client = s.client.clone();
    s.rt.block_on(async move {
        let mut resp = client
            .post(url)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let mut seen = String::new();
        while seen.matches("data: ").count() < 3 {
            seen.push_str(&String::from_utf8_lossy(
                &resp.chunk().await.unwrap().unwrap(),
            ));
        }
        stop.send(()).unwrap();
        while let Ok(Some(c)) = resp.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&c));
        }
        (seen, done.await.unwrap())
    })
}

#[test]
fn shutdown_lets_requests_finish_within_the_grace_and_cancels_them_after() {
    let _g = common::serial();
    // A long grace: the stream in flight ends normally, with all its tokens.
    let mut s = TestServer::start_with(None, Duration::from_secs(600));
    let (body, ended) = stop_during_a_stream(&mut s, 40);
    ended.expect("run ends cleanly");
    let ev = events(&body);
    assert_eq!(ev.last().unwrap(), "[DONE]", "{body}");
    assert_eq!(ev[ev.len() - 2]["usage"]["completion_tokens"], 40, "{body}");
    // The listener is closed.
    let refused = s.rt.block_on(s.client.get(s.url("/health")).send());
    assert!(refused.is_err(), "still accepting after shutdown");

    // No grace: the stream is cancelled with an error event, not completed.
    let mut s = TestServer::start_with(None, Duration::ZERO);
    let (body, ended) = stop_during_a_stream(&mut s, 900);
    ended.expect("run ends cleanly");
    let ev = events(&body);
    let last = ev.last().unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{body}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{body}"
    );
    assert!(!body.contains("[DONE]"), "{body}");
}

#[test]
fn completions_take_token_ids_or_text_and_answer_in_the_legacy_shape() {
    let _g = common::serial();
    let prompt = prompt_tokens();
    let want = reference_decoder()
        .generate(&[(
            prompt.clone(),
            GenerateParams {
                sampling: SamplingParams::greedy(),
                max_new_tokens: 20,
                ..Default::default()
            },
        )])
        .unwrap()
        .remove(0);
    let model = common::model();
    let s = TestServer::start(None);
    let request = json!({"model": MODEL_ID, "prompt": prompt, "temperature": 0, "max_tokens": 20,
                         "logprobs": 2, "return_token_ids": true});
    let (status, r) = s.post("/v1/completions", &request);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "text_completion");
    assert_eq!(ids(&r["prompt_token_ids"]), prompt);
    let c = &r["choices"][0];
    assert_eq!(ids(&c["token_ids"]), want.tokens);
    let visible: Vec<Token> = want
        .tokens
        .iter()
        .copied()
        .filter(|&t| !model.is_eog(t))
        .collect();
    assert_eq!(c["text"], model.detokenize(&visible));
    let lp = &c["logprobs"];
    let n = want.tokens.len();
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n);
    for k in 0..n {
        let got = lp["token_logprobs"][k].as_f64().unwrap();
        assert!(
            (got - want.logprobs[k] as f64).abs() < 1e-6,
            "token {k}: {got} vs {}",
            want.logprobs[k]
        );
        let top = lp["top_logprobs"][k].as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 2, "{top:?}");
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(
            (best - got).abs() < 1e-6,
            "greedy token is not the best alternative"
        );
    }
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));

    // Streamed: the chunks' text concatenates to the whole text.
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let (status, body) = s.post_raw("/v1/completions", streamed.to_string());
    assert_eq!(status, 200, "{body}");
    let ev = events(&body);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let text: String = ev[..ev.len() - 1]
        .iter()
        .inspect(|e| assert_eq!(e["object"], "text_completion"))
        .map(|e| e["choices"][0]["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(text, c["text"].as_str().unwrap());

    // A text prompt, echoed; tokenized as the model's tokenizer does.
    let text = "The capital of France is";
    let r = s
        .post(
            "/v1/completions",
            &json!({"model": MODEL_ID, "prompt": text, "echo": true,
        "temperature": 0, "ignore_eos": true, "return_token_ids": true}),
        )
        .1;
    assert_eq!(
        ids(&r["prompt_token_ids"]),
        model.tokenize(text, model.adds_bos(), true).unwrap()
    );
    assert!(
        r["choices"][0]["text"].as_str().unwrap().starts_with(text),
        "{r}"
    );
    assert_eq!(
        r["usage"]["completion_tokens"], 16,
        "the API's default max_tokens"
    );

    // A chat-formatted prompt echoes exactly as sent, though this model's
    // BOS is also its turn marker and so appears in it more than once.
    // return_token_ids comes in extra_body, as rLLM's gateway sends it.
    let text = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    let r = s
        .post(
            "/v1/completions",
            &json!({"model": MODEL_ID, "prompt": text, "echo": true, "max_tokens": 2,
                    "temperature": 0, "extra_body": {"return_token_ids": true}}),
        )
        .1;
    let prompt_ids = ids(&r["prompt_token_ids"]);
    assert!(
        prompt_ids
            .iter()
            .filter(|&&t| Some(t) == model.bos())
            .count()
            >= 2,
        "the test needs a BOS inside the prompt: {prompt_ids:?}"
    );
    assert!(
        r["choices"][0]["text"].as_str().unwrap().starts_with(text),
        "{r}"
    );
    let (st, e) = s.post(
        "/v1/completions",
        &json!({"model": MODEL_ID, "prompt": "x", "echo": true, "extra_body": {"echo": false}}),
    );
    assert_eq!(
        (st, &e["error"]["param"]),
        (400, &json!("extra_body.echo")),
        "{e}"
    );

    // Its own errors.
    let (st, e) = s.post(
        "/v1/completions",
        &json!({"model": MODEL_ID, "prompt": [1, 999999]}),
    );
    assert_eq!(
        (st, &e["error"]["param"]),
        (400, &json!("prompt[1]")),
        "{e}"
    );
    let (st, e) = s.post(
        "/v1/completions",
        &json!({"model": MODEL_ID, "prompt": ["a", "b"]}),
    );
    assert_eq!((st, &e["error"]["param"]), (400, &json!("prompt")), "{e}");
    let (st, e) = s.post(
        "/v1/completions",
        &json!({"model": MODEL_ID, "prompt": "a", "logprobs": 21}),
    );
    assert_eq!((st, &e["error"]["param"]), (400, &json!("logprobs")), "{e}");
    let (st, e) = s.post(
        "/v1/completions",
        &json!({"model": MODEL_ID, "prompt": "a", "suffix": "b"}),
    );
    assert_eq!((st, &e["error"]["param"]), (400, &json!("suffix")), "{e}");
}

// LoRA adapters: selected by `model`, loaded at start or over HTTP.

/// A rank-8 adapter on every projection of the test model, written the way
/// `cleaner train` exports one (`Lora::write_gguf`), with B filled from
/// `seed`: a fresh adapter has B = 0 and would change nothing.
fn write_trained_adapter(path: &std::path::Path, seed: u64) {
    use cleaner::models::{Lora, LoraConfig, Transformer};
    let model = Transformer::open(common::test_model_path()).unwrap();
    let config = LoraConfig {
        rank: 8,
        alpha: 16.0,
        ..Default::default()
    };
    let mut lora = Lora::new(&model, config, seed);
    let mut s = seed | 1;
    for (_, pair) in lora.layers.iter_mut().flatten() {
        for b in pair.b.iter_mut() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2;
        }
    }
    lora.write_gguf(&model, path).unwrap();
}

/// An adapter of the right architecture whose first projection's A is
/// wider than the model's (an adapter for another model of the family).
fn write_wrong_shape_adapter(path: &std::path::Path) {
    use cleaner::models::{Lora, LoraConfig, Transformer};
    let model = Transformer::open(common::test_model_path()).unwrap();
    let config = LoraConfig {
        rank: 2,
        alpha: 2.0,
        ..Default::default()
    };
    let mut lora = Lora::new(&model, config, 1);
    let pair = &mut lora.layers[0][0].1;
    pair.n_in += 64;
    pair.a = vec![0.01; pair.n_in * 2];
    lora.write_gguf(&model, path).unwrap();
}

fn messages_for(question: &str) -> Json {
    json!([{"role": "system", "content": "You are a helpful assistant."},
           {"role": "user", "content": question}])
}

fn prompt_for(question: &str) -> Vec<Token> {
    let model = common::model();
    ChatTemplate::from_model(&model)
        .unwrap()
        .tokenize(
            &model,
            &[
                Message::system("You are a helpful assistant."),
                Message::user(question),
            ],
            None,
        )
        .unwrap()
}

/// `reference_decoder` with the adapter at `adapter` set on it
/// (`set_adapter`), or the base model.
fn reference_decoder_with(adapter: Option<&std::path::Path>) -> Decoder {
    let mut d = reference_decoder();
    if let Some(path) = adapter {
        let a = cleaner::LoraAdapter::load(&common::model(), path).unwrap();
        d.set_adapter(Some(a)).unwrap();
    }
    d
}

/// Greedy tokens from the decoder driven directly, with the adapter at
/// `adapter` set on it (`set_adapter`) or the base model.
fn reference_greedy(
    prompt: &[Token],
    adapter: Option<&std::path::Path>,
    max_new_tokens: usize,
    ignore_eos: bool,
) -> cleaner::Generation {
    let mut d = reference_decoder_with(adapter);
    d.generate(&[(
        prompt.to_vec(),
        GenerateParams {
            sampling: SamplingParams::greedy(),
            max_new_tokens,
            stop_at_eog: !ignore_eos,
            ..Default::default()
        },
    )])
    .unwrap()
    .remove(0)
}

/// For each token of `answer` after `prompt`: how far its logit is below
/// the largest, under the base model or the adapter at `adapter` (0 where
/// greedy decoding picks it).
fn greedy_gaps(prompt: &[Token], answer: &[Token], adapter: Option<&std::path::Path>) -> Vec<f32> {
    let mut d = reference_decoder_with(adapter);
    let all: Vec<Token> = prompt.iter().chain(answer).copied().collect();
    let (_, rows) = d.score(&all, true).unwrap();
    rows[prompt.len() - 1..all.len() - 1]
        .iter()
        .zip(answer)
        .map(|(row, &t)| row.iter().cloned().fold(f32::MIN, f32::max) - row[t as usize])
        .collect()
}

/// The value of the `/metrics` line that starts with `series`, if any.
fn metric(s: &TestServer, series: &str) -> Option<f64> {
    let (status, text) = s.send(s.client.get(s.url("/metrics")));
    assert_eq!(status, 200);
    text.lines()
        .find(|l| l.starts_with(series))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

fn model_ids(s: &TestServer) -> Vec<String> {
    let (status, models) = s.get("/v1/models");
    assert_eq!(status, 200, "{models}");
    models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_adapter_named_as_model_decodes_like_the_decoder_with_it_set() {
    let _g = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sql.gguf");
    write_trained_adapter(&file, 3);
    let prompt = prompt_tokens();
    let base = reference_greedy(&prompt, None, 24, false);
    let want = reference_greedy(&prompt, Some(&file), 24, false);
    assert_ne!(
        want.tokens, base.tokens,
        "the adapter does not change the greedy answer"
    );
    let s = TestServer::start_with_adapters(vec![("sql".into(), file.clone())]);
    let (status, models) = s.get("/v1/models");
    assert_eq!(status, 200);
    let data = models["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{models}");
    assert_eq!(data[0]["id"], MODEL_ID);
    assert_eq!(data[1]["id"], "sql");
    assert_eq!(data[1]["parent"], MODEL_ID, "{models}");
    assert_eq!(data[1]["root"], file.display().to_string(), "{models}");

    let chat = |model: &str| {
        s.chat(
            &json!({"model": model, "messages": messages(), "temperature": 0,
                       "max_tokens": 24, "return_token_ids": true}),
        )
    };
    let r = chat("sql");
    assert_eq!(r["model"], "sql");
    assert_eq!(
        ids(&r["choices"][0]["token_ids"]),
        want.tokens,
        "the server through the adapter vs the decoder with it set"
    );
    // Back to the base model (a swap), then the adapter through /v1/completions.
    let r = chat(MODEL_ID);
    assert_eq!(ids(&r["choices"][0]["token_ids"]), base.tokens);
    let (st, r) = s.post(
        "/v1/completions",
        &json!({"model": "sql", "prompt": prompt, "temperature": 0, "max_tokens": 24,
                "return_token_ids": true}),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["model"], "sql");
    assert_eq!(ids(&r["choices"][0]["token_ids"]), want.tokens);

    assert_eq!(
        metric(&s, "cleaner_model_requests_total{model=\"sql\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &s,
            &format!("cleaner_model_requests_total{{model=\"{MODEL_ID}\"}}")
        ),
        Some(1.0)
    );
    // base -> sql, sql -> base, base -> sql.
    assert_eq!(metric(&s, "cleaner_adapter_swaps_total "), Some(3.0));
    assert_eq!(metric(&s, "cleaner_adapters_loaded "), Some(1.0));

    // A bad `--adapter` stops the server from starting, naming the file.
    let missing = dir.path().join("missing.gguf");
    let err = Server::new(
        common::model(),
        ServeConfig {
            model_id: MODEL_ID.into(),
            adapters: vec![("x".into(), missing.clone())],
            ..Default::default()
        },
    )
    .err()
    .expect("a missing adapter file was accepted")
    .to_string();
    assert!(
        err.contains("--adapter x=") && err.contains(&missing.display().to_string()),
        "{err}"
    );
}

#[test]
fn adapters_load_and_unload_over_http_and_bad_files_are_refused() {
    let _g = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tuned.gguf");
    write_trained_adapter(&file, 4);
    let s = TestServer::start(None);
    let load = |body: Json| s.post_raw("/v1/load_lora_adapter", body.to_string());
    let unload = |body: Json| s.post_raw("/v1/unload_lora_adapter", body.to_string());
    let refused = |(status, body): (u16, String), want_status: u16, want_param: &str| -> String {
        assert_eq!(status, want_status, "{body}");
        let e: Json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(e["error"]["param"], want_param, "{body}");
        assert!(e["error"]["type"].is_string(), "{body}");
        e["error"]["message"].as_str().unwrap().to_string()
    };

    let (st, text) = load(json!({"lora_name": "tuned", "lora_path": file}));
    assert_eq!(
        (st, text.as_str()),
        (200, "Success: LoRA adapter 'tuned' added successfully.")
    );
    assert_eq!(model_ids(&s), [MODEL_ID, "tuned"]);
    // The name is taken, unless the weights are replaced in place.
    refused(
        load(json!({"lora_name": "tuned", "lora_path": file})),
        400,
        "lora_name",
    );
    let (st, text) = load(json!({"lora_name": "tuned", "lora_path": file, "load_inplace": true}));
    assert_eq!(st, 200, "{text}");
    refused(load(json!({"lora_path": file})), 400, "lora_name");
    refused(load(json!({"lora_name": "x"})), 400, "lora_path");
    refused(
        load(json!({"lora_name": MODEL_ID, "lora_path": file})),
        400,
        "lora_name",
    );
    refused(
        load(json!({"lora_name": "x", "lora_path": file, "scale": 2})),
        400,
        "scale",
    );
    // Bad files, each refused naming lora_path and what is wrong with it.
    let missing = dir.path().join("nothing.gguf");
    let m = refused(
        load(json!({"lora_name": "x", "lora_path": missing})),
        404,
        "lora_path",
    );
    assert!(m.contains(&missing.display().to_string()), "{m}");
    let text_file = dir.path().join("notes.gguf");
    std::fs::write(&text_file, "not a GGUF file at all").unwrap();
    let m = refused(
        load(json!({"lora_name": "x", "lora_path": text_file})),
        400,
        "lora_path",
    );
    assert!(m.contains("notes.gguf"), "{m}");
    let m = refused(
        load(json!({"lora_name": "x", "lora_path": dir.path()})),
        400,
        "lora_path",
    );
    assert!(m.contains("not a file"), "{m}");
    let m = refused(
        load(json!({"lora_name": "x", "lora_path": common::test_model_path()})),
        400,
        "lora_path",
    );
    assert!(
        m.contains("general.type"),
        "the model itself as adapter: {m}"
    );
    let wrong = dir.path().join("wrong-shape.gguf");
    write_wrong_shape_adapter(&wrong);
    let m = refused(
        load(json!({"lora_name": "x", "lora_path": wrong})),
        400,
        "lora_path",
    );
    assert!(m.contains("do not fit"), "{m}");
    assert_eq!(
        model_ids(&s),
        [MODEL_ID, "tuned"],
        "a refused load was added"
    );

    // An adapter nobody loaded.
    let (st, e) = s.post(
        "/v1/chat/completions",
        &json!({"model": "nope", "messages": messages(), "max_tokens": 2}),
    );
    assert_eq!(st, 404, "{e}");
    assert_eq!(e["error"]["code"], "model_not_found");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("tuned"),
        "{e}"
    );
    refused(unload(json!({"lora_name": "nope"})), 404, "lora_name");

    // Unloading while a request uses the adapter: the name goes at once, the
    // request finishes with the adapter (all its tokens equal the decoder's).
    let max_tokens = 48;
    let want = reference_greedy(&prompt_tokens(), Some(&file), max_tokens, true);
    let body = json!({"model": "tuned", "messages": messages(), "stream": true, "temperature": 0,
                      "ignore_eos": true, "max_tokens": max_tokens, "return_token_ids": true});
    let (unloaded, streamed) = s.rt.block_on(async {
        let mut resp = s
            .client
            .post(s.url("/v1/chat/completions"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let mut seen = String::new();
        while seen.matches("data: ").count() < 3 {
            seen.push_str(&String::from_utf8_lossy(
                &resp.chunk().await.unwrap().unwrap(),
            ));
        }
        let unloaded = s
            .client
            .post(s.url("/v1/unload_lora_adapter"))
            .body(json!({"lora_name": "tuned"}).to_string())
            .send()
            .await
            .unwrap();
        let unloaded = (unloaded.status().as_u16(), unloaded.text().await.unwrap());
        while let Some(c) = resp.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&c));
        }
        (unloaded, seen)
    });
    assert_eq!(
        unloaded,
        (
            200,
            "Success: LoRA adapter 'tuned' removed successfully.".to_string()
        )
    );
    let ev = events(&streamed);
    assert_eq!(ev.last().unwrap(), "[DONE]", "{streamed}");
    let tokens: Vec<Token> = ev[..ev.len() - 1]
        .iter()
        .filter_map(|c| c["choices"][0].get("token_ids").map(ids))
        .flatten()
        .collect();
    assert_eq!(
        tokens, want.tokens,
        "the stream after its adapter was unloaded"
    );
    assert_eq!(model_ids(&s), [MODEL_ID]);
    let (st, e) = s.post(
        "/v1/chat/completions",
        &json!({"model": "tuned", "messages": messages(), "max_tokens": 2}),
    );
    assert_eq!((st, &e["error"]["code"]), (404, &json!("model_not_found")));
    // Still serving the base model.
    let r = s.chat(&json!({"model": MODEL_ID, "messages": messages(), "max_tokens": 2}));
    assert_eq!(r["model"], MODEL_ID);
}

#[test]
fn requests_for_the_base_and_two_adapters_interleave_and_each_is_greedy_under_its_own_model() {
    let _g = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let files = [dir.path().join("a.gguf"), dir.path().join("b.gguf")];
    write_trained_adapter(&files[0], 6);
    write_trained_adapter(&files[1], 7);
    let models = [MODEL_ID, "a", "b"];
    let questions = ["Name three colors.", "What is 2 + 3?"];
    let max_tokens = 16;
    // want[m][q]: model m's greedy answer to question q, from the decoder.
    let want: Vec<Vec<Vec<Token>>> = (0..3)
        .map(|m| {
            questions
                .iter()
                .map(|q| {
                    let file = (m > 0).then(|| files[m - 1].as_path());
                    reference_greedy(&prompt_for(q), file, max_tokens, false).tokens
                })
                .collect()
        })
        .collect();
    for (q, ((base, a), b)) in want[0].iter().zip(&want[1]).zip(&want[2]).enumerate() {
        assert!(
            base != a && base != b && a != b,
            "two of base, a, b give the same answer to question {q}: the test could not tell them apart"
        );
    }
    let s = TestServer::start_with_adapters(vec![
        ("a".into(), files[0].clone()),
        ("b".into(), files[1].clone()),
    ]);
    // All at once, alternating models, so the queue holds every adapter.
    let jobs: Vec<(usize, usize)> = (0..2).flat_map(|q| (0..3).map(move |m| (m, q))).collect();
    let answers = s.rt.block_on(async {
        let handles: Vec<_> = jobs
            .iter()
            .map(|&(m, q)| {
                let request = s.client.post(s.url("/v1/chat/completions")).body(
                    json!({"model": models[m], "messages": messages_for(questions[q]),
                           "temperature": 0, "max_tokens": max_tokens,
                           "return_token_ids": true})
                    .to_string(),
                );
                tokio::spawn(async move {
                    let resp = request.send().await.unwrap();
                    (resp.status().as_u16(), resp.text().await.unwrap())
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    });
    // The server batches whatever is queued for one adapter, so a request
    // may share its decodes with another question, and llama.cpp's
    // products then round differently; where two tokens are that close to
    // a tie the greedy answer may take the other one (seen in CI: adapter
    // a's answer to question 0 left the reference at token 8, where the
    // reference's own token is 0.088 below the server's when the answer is
    // re-scored in one prefill). So an answer that is not the reference's
    // must be greedy under its own model within GREEDY_TIE at every token
    // (a logit gap; tests/serve_rescore.rs measured llama.cpp's log-probs
    // of one sequence moving up to 0.55 between decode and prefill, mostly
    // far less), and clearly not greedy under the other two.
    const GREEDY_TIE: f32 = 0.3;
    let adapter_of = |m: usize| (m > 0).then(|| files[m - 1].as_path());
    for (&(m, q), (status, body)) in jobs.iter().zip(answers) {
        assert_eq!(status, 200, "{body}");
        let r: Json = serde_json::from_str(&body).unwrap();
        assert_eq!(r["model"], models[m]);
        let got = ids(&r["choices"][0]["token_ids"]);
        if got == want[m][q] {
            continue;
        }
        let prompt = prompt_for(questions[q]);
        let own = greedy_gaps(&prompt, &got, adapter_of(m));
        let worst = own.iter().cloned().fold(0.0f32, f32::max);
        assert!(
            worst <= GREEDY_TIE,
            "{} on question {q}: {got:?} is not greedy under its model (gaps {own:?}; reference {:?})",
            models[m],
            want[m][q]
        );
        for other in (0..3).filter(|&o| o != m) {
            let gaps = greedy_gaps(&prompt, &got, adapter_of(other));
            assert!(
                gaps.iter().any(|&g| g > 2.0 * GREEDY_TIE),
                "{} on question {q}: the answer is greedy under {} too (gaps {gaps:?})",
                models[m],
                models[other]
            );
        }
    }
    for m in models {
        assert_eq!(
            metric(
                &s,
                &format!("cleaner_model_requests_total{{model=\"{m}\"}}")
            ),
            Some(2.0),
            "{m}"
        );
    }
    // At least base -> a -> b or similar; at most one swap per request.
    let swaps = metric(&s, "cleaner_adapter_swaps_total ").unwrap();
    assert!((2.0..=6.0).contains(&swaps), "{swaps} swaps");
    let h = s.health();
    assert_eq!(h["open_sequences"], 0, "{h}");
}
