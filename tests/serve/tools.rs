//! Tool calling through `cleaner serve`: `tools` checked and refused where
//! the model's template cannot show them (SmolLM2), and on Qwen2.5-Coder,
//! whose template renders Hermes tool calls: the prompt the server builds
//! from a conversation with calls, the calls read out of greedy replies,
//! whole and streamed, the forced and the disabled choices, and a round
//! trip through the official `openai` package.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cleaner::assets::{self, AssetStore};
use cleaner::chat::{ChatTemplate, Message};
use cleaner::{Model, ModelParams, Token};
use serde_json::{json, Value as Json};

use super::{common, events, ids, openai_python, run_client_script, TestServer, MODEL_ID};

const QWEN_ID: &str = "qwen-test";

/// Qwen2.5-Coder-0.5B, loaded once.
fn qwen() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = AssetStore::default()
                .fetch(
                    assets::find("qwen2.5-coder-0.5b").expect("catalog"),
                    &mut |l| eprintln!("{l}"),
                )
                .expect("the Qwen2.5 model could not be fetched; run `cleaner fetch qwen2.5-coder-0.5b`");
            Arc::new(Model::load(path, &ModelParams::default()).expect("load Qwen2.5"))
        })
        .clone()
}

fn weather_tool() -> Json {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "description": "The city's name"}},
                       "required": ["city"]}}})
}

fn paris() -> Json {
    json!([{"role": "user", "content": "What is the weather in Paris?"}])
}

#[test]
fn bad_tools_name_the_field_and_a_template_without_tools_refuses_them() {
    let _g = common::serial();
    let s = TestServer::start(None);
    let path = "/v1/chat/completions";
    let base = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 2});
    let refused = |patch: Json| -> Json {
        let mut body = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (st, e) = s.post(path, &body);
        assert_eq!(st, 400, "{body} gave {e}");
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
        e["error"].clone()
    };
    // Well-formed tools, but SmolLM2's template would not show them.
    let e = refused(json!({"tools": [weather_tool()]}));
    assert_eq!(e["param"], "tools");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("does not show the tools"),
        "{e}"
    );
    // Bad shapes are named before that.
    let cases = [
        (
            json!({"tools": [{"type": "function", "function": {"name": "get weather"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"tools": [weather_tool(), {"type": "function"}]}),
            "tools[1].function",
        ),
        (json!({"tools": {"get_weather": {}}}), "tools"),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (
            json!({"tools": [weather_tool()], "tool_choice": {"type": "function", "function": {"name": "other"}}}),
            "tool_choice.function.name",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{city: Paris}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]}),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi", "tool_calls": []}]}),
            "messages[0].tool_calls",
        ),
    ];
    for (patch, param) in cases {
        assert_eq!(refused(patch.clone())["param"], param, "{patch}");
    }
    // tool_choice none or auto without tools asks for nothing: served.
    let mut ok = base.clone();
    ok["tool_choice"] = json!("none");
    let r = s.chat(&ok);
    assert!(r["choices"][0]["message"]["tool_calls"].is_null(), "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "length");
}

/// A Qwen server and a request for it: `messages`, the weather tool,
/// greedy, `max_tokens`, token ids returned; `extra` merged in.
fn qwen_request(messages: Json, max_tokens: usize, extra: Json) -> Json {
    let mut body = json!({"model": QWEN_ID, "messages": messages, "tools": [weather_tool()],
                          "temperature": 0, "max_tokens": max_tokens, "return_token_ids": true});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn text(model: &Model, tokens: &[Token]) -> String {
    let shown: Vec<Token> = tokens
        .iter()
        .copied()
        .filter(|&t| !model.is_eog(t))
        .collect();
    model.detokenize(&shown)
}

#[test]
fn qwen_tool_calls_are_rendered_read_streamed_forced_and_disabled() {
    let _g = common::serial();
    let model = qwen();
    let s = TestServer::start_model(model.clone(), QWEN_ID, None, Duration::from_secs(2));

    // A conversation with an earlier call: the template gets the call's
    // arguments as the object the model wrote, not OpenAI's JSON string.
    let history = json!([
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_7", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_7", "content": "{\"temperature_c\": 21}"}]);
    let r = s.chat(&qwen_request(history, 1, json!({})));
    let prompt = ids(&r["prompt_token_ids"]);
    let call = json!([{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]);
    let want = ChatTemplate::from_model(&model)
        .unwrap()
        .tokenize(
            &model,
            &[
                Message::user("What is the weather in Paris?"),
                Message {
                    role: "assistant".into(),
                    content: String::new(),
                    tool_calls: Some(call),
                },
                Message::new("tool", "{\"temperature_c\": 21}"),
            ],
            Some(&[weather_tool()]),
        )
        .unwrap();
    assert_eq!(prompt, want);
    let shown = model.detokenize(&prompt);
    for part in [
        "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\"",
        "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>",
        "<|im_start|>user\n<tool_response>\n{\"temperature_c\": 21}\n</tool_response><|im_end|>",
    ] {
        assert!(shown.contains(part), "{part:?} not in\n{shown}");
    }

    // tool_choice auto: the model calls the tool, as a bare call object
    // (this small model leaves out the <tool_call> tags); the call is read
    // out of its text into tool_calls, with no content.
    let r = s.chat(&qwen_request(paris(), 40, json!({})));
    let choice = &r["choices"][0];
    let reply = text(&model, &ids(&choice["token_ids"]));
    assert_eq!(
        reply,
        "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"
    );
    assert_eq!(choice["finish_reason"], "tool_calls", "{r}");
    let message = &choice["message"];
    assert!(message["content"].is_null(), "{message}");
    let calls = message["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 1, "{message}");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(
        calls[0]["function"],
        json!({"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"})
    );

    // Streamed: one tool_calls delta with the whole call, no content after
    // the role chunk, the same tokens, and finish_reason tool_calls.
    let body = qwen_request(paris(), 40, json!({"stream": true}));
    let (st, sse) = s.post_raw("/v1/chat/completions", body.to_string());
    assert_eq!(st, 200, "{sse}");
    let chunks = events(&sse);
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let mut streamed_calls = Vec::new();
    let mut streamed_tokens = Vec::new();
    let mut finish = Json::Null;
    for c in &chunks[1..chunks.len() - 1] {
        let ch = &c["choices"][0];
        let delta = &ch["delta"];
        assert!(
            delta["content"].is_null() || delta["content"] == "",
            "content streamed: {c}"
        );
        if let Some(list) = delta["tool_calls"].as_array() {
            streamed_calls.extend(list.iter().cloned());
        }
        streamed_tokens.extend(ids(&ch["token_ids"]));
        if !ch["finish_reason"].is_null() {
            finish = ch["finish_reason"].clone();
        }
    }
    assert_eq!(streamed_tokens, ids(&choice["token_ids"]));
    assert_eq!(finish, "tool_calls");
    assert_eq!(streamed_calls.len(), 1, "{sse}");
    let d = &streamed_calls[0];
    assert_eq!(
        (&d["index"], &d["type"], &d["function"]),
        (&json!(0), &json!("function"), &calls[0]["function"])
    );
    assert!(d["id"].as_str().unwrap().starts_with("call_"), "{d}");

    // tool_choice naming the function, or required: the reply is made to
    // start inside a call (of it), even for a question no tool fits. The
    // model then ends its reply without </tool_call>; a whole call is
    // still a call. Under `required` the name is the model's: here it
    // makes one up (`sea`), and the server returns the call as written
    // (names are not checked, as vLLM does not in `auto`; docs/serve.md).
    let haiku = json!([{"role": "user", "content": "Write a haiku about the sea."}]);
    let named = json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
    for (choice, forced, name) in [
        (
            named,
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\":",
            "get_weather",
        ),
        (
            json!({"tool_choice": "required"}),
            "<|im_start|>assistant\n<tool_call>\n{\"name\":",
            "sea",
        ),
    ] {
        let r = s.chat(&qwen_request(haiku.clone(), 40, choice));
        let prompt_text = model.detokenize(&ids(&r["prompt_token_ids"]));
        assert!(prompt_text.ends_with(forced), "{prompt_text}");
        let c = &r["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{r}");
        let call = &c["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], name, "{r}");
        let args: Json = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert!(args["city"].is_string(), "{args}");
    }

    // tool_choice none: the tools are shown (vLLM's default) but the reply
    // is not read for calls; what the model wrote is the content.
    let r = s.chat(&qwen_request(paris(), 40, json!({"tool_choice": "none"})));
    let choice = &r["choices"][0];
    assert!(choice["message"]["tool_calls"].is_null(), "{r}");
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(
        choice["message"]["content"],
        json!(text(&model, &ids(&choice["token_ids"])))
    );

    // A call cut off by max_tokens is no call: its text is the content.
    let r = s.chat(&qwen_request(paris(), 6, json!({})));
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "length");
    assert!(choice["message"]["tool_calls"].is_null(), "{r}");
    let content = choice["message"]["content"].as_str().unwrap();
    assert!(content.starts_with("{\"name\""), "{content:?}");
    assert_eq!(content, text(&model, &ids(&choice["token_ids"])));
}

#[test]
fn the_official_openai_client_round_trips_a_tool_call() {
    let python = openai_python();
    let _g = common::serial();
    let s = TestServer::start_model(qwen(), QWEN_ID, None, Duration::from_secs(2));
    run_client_script(
        &python,
        "openai_tools.py",
        &[s.url("/v1").as_ref(), QWEN_ID.as_ref()],
    );
}
