"""The official `openai` package against `cleaner serve` (run by tests/serve.rs).

Usage: python openai_client.py BASE_URL MODEL_ID API_KEY ADAPTER_FILE
ADAPTER_FILE is a GGUF LoRA adapter for the model (the test writes one).
Each check raises AssertionError with what differed; the last line printed
is "ok: N checks".
"""

import sys

import openai

base_url, model, key, adapter_file = sys.argv[1:5]
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)
messages = [{"role": "user", "content": "Name three colors."}]
checks = 0


def check(cond, what):
    global checks
    assert cond, what
    checks += 1


# Models.
ids = [m.id for m in client.models.list().data]
check(ids == [model], f"models: {ids}")

# A whole chat completion, greedy.
r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=20)
c = r.choices[0]
check(c.message.role == "assistant" and c.message.content, f"content: {c.message}")
check(c.finish_reason in ("stop", "length"), f"finish_reason: {c.finish_reason}")
check(r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, f"usage: {r.usage}")

# Streaming gives the same text, and the usage chunk.
stream = client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=20,
    stream=True, stream_options={"include_usage": True})
text, usage = "", None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for ch in chunk.choices:
        text += ch.delta.content or ""
check(text == c.message.content, f"streamed {text!r} vs {c.message.content!r}")
check(usage is not None and usage.completion_tokens == r.usage.completion_tokens, f"stream usage: {usage}")

# n > 1 with a seed reproduces, choice by choice.
kw = dict(model=model, messages=messages, n=3, seed=11, temperature=1.0, max_tokens=16)
a = client.chat.completions.create(**kw)
b = client.chat.completions.create(**kw)
check(len(a.choices) == 3, f"n=3 gave {len(a.choices)} choices")
check([x.message.content for x in a.choices] == [x.message.content for x in b.choices], "seeded choices differ between runs")

# Log-probs with alternatives; vLLM's return_token_ids through extra_body.
r = client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=8, logprobs=True, top_logprobs=2,
    extra_body={"return_token_ids": True})
lp = r.choices[0].logprobs.content
check(len(lp) == r.usage.completion_tokens, f"{len(lp)} logprob entries for {r.usage.completion_tokens} tokens")
check(all(len(e.top_logprobs) == 2 and e.top_logprobs[0].token == e.token for e in lp), "greedy token is not the top alternative")
extra = r.model_extra or {}
check(len(extra.get("prompt_token_ids", [])) == r.usage.prompt_tokens, f"prompt_token_ids: {extra.keys()}")
check(len(r.choices[0].model_extra.get("token_ids", [])) == r.usage.completion_tokens, "token_ids")

# Errors arrive as the client's typed exceptions.
for kwargs, exc, param in [
    (dict(model="nope", messages=messages), openai.NotFoundError, "model"),
    (dict(model=model, messages=messages, n=99), openai.BadRequestError, "n"),
    (dict(model=model, messages=messages, max_tokens=0), openai.BadRequestError, "max_tokens"),
    (dict(model=model, messages=messages, temperature=7), openai.BadRequestError, "temperature"),
]:
    try:
        client.chat.completions.create(**kwargs)
        check(False, f"{kwargs} was accepted")
    except exc as e:
        check(e.body.get("param") == param, f"{kwargs}: param {e.body}")
# A LoRA adapter loaded at run time (vLLM's endpoint, which the client has no
# method for: a raw POST), listed by /v1/models with its parent, selected by
# `model`, and unloaded.
text = client.post("/load_lora_adapter", cast_to=str,
                   body={"lora_name": "tuned", "lora_path": adapter_file})
check("tuned" in text, f"load answered {text!r}")
cards = {m.id: m for m in client.models.list().data}
check(set(cards) == {model, "tuned"}, f"models after loading: {list(cards)}")
check((cards["tuned"].model_extra or {}).get("parent") == model, f"adapter card: {cards['tuned']}")
r = client.chat.completions.create(model="tuned", messages=messages, temperature=0, max_tokens=20)
check(r.model == "tuned", f"answered as {r.model}")
check(r.choices[0].message.content != c.message.content, "the adapter changed nothing")
again = client.chat.completions.create(model="tuned", messages=messages, temperature=0, max_tokens=20)
check(again.choices[0].message.content == r.choices[0].message.content, "greedy through the adapter is not reproducible")
try:
    client.post("/load_lora_adapter", cast_to=str,
                body={"lora_name": "broken", "lora_path": adapter_file + ".missing"})
    check(False, "a missing adapter file was accepted")
except openai.NotFoundError as e:
    check(e.body.get("param") == "lora_path", f"missing file: {e.body}")
client.post("/unload_lora_adapter", cast_to=str, body={"lora_name": "tuned"})
try:
    client.chat.completions.create(model="tuned", messages=messages, max_tokens=2)
    check(False, "an unloaded adapter still answered")
except openai.NotFoundError as e:
    check(e.body.get("code") == "model_not_found", f"unloaded: {e.body}")

bad_key = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
try:
    bad_key.models.list()
    check(False, "a wrong key was accepted")
except openai.AuthenticationError:
    checks += 1

print(f"ok: {checks} checks")
