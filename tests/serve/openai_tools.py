"""A tool-call round trip with the official `openai` package against
`cleaner serve` on Qwen2.5-Coder-0.5B (run by tests/serve.rs).

Usage: python openai_tools.py BASE_URL MODEL_ID
Greedy throughout, so the model's choices are fixed. Each check raises
AssertionError with what differed; the last line printed is "ok: N checks".
"""

import json
import sys

import openai

base_url, model = sys.argv[1:3]
client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=300)
checks = 0


def check(cond, what):
    global checks
    assert cond, what
    checks += 1


# `strict` because the client's stream helper parses only strict tools' arguments
# (the server does not constrain arguments by the schema; docs/serve.md).
tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}]
messages = [{"role": "user", "content": "What is the weather in Paris?"}]

# The model calls the tool; its arguments are valid JSON.
r = client.chat.completions.create(
    model=model, messages=messages, tools=tools, temperature=0, max_tokens=40)
c = r.choices[0]
check(c.finish_reason == "tool_calls", f"finish_reason: {c.finish_reason} ({c.message})")
check(c.message.content is None, f"content besides the call: {c.message.content!r}")
calls = c.message.tool_calls or []
check(len(calls) == 1, f"tool_calls: {calls}")
call = calls[0]
check(call.type == "function" and call.id.startswith("call_"), f"call: {call}")
check(call.function.name == "get_weather", f"name: {call.function.name}")
args = json.loads(call.function.arguments)
check(isinstance(args, dict) and "paris" in str(args.get("city", "")).lower(), f"arguments: {args}")

# The stream helper assembles the same call from the deltas.
with client.chat.completions.stream(
        model=model, messages=messages, tools=tools, temperature=0, max_tokens=40) as stream:
    done_events = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
    final = stream.get_final_completion()
fc = final.choices[0]
check(fc.finish_reason == "tool_calls", f"streamed finish_reason: {fc.finish_reason}")
streamed = fc.message.tool_calls or []
check([(t.function.name, t.function.arguments) for t in streamed]
      == [(t.function.name, t.function.arguments) for t in calls],
      f"streamed calls {streamed} vs {calls}")
check(streamed[0].function.parsed_arguments == args, f"parsed_arguments: {streamed[0].function.parsed_arguments}")
check(len(done_events) == 1 and done_events[0].name == "get_weather", f"done events: {done_events}")

# The tool's result goes back with the call as the client holds it. The
# server renders both (tests/serve/tools.rs checks the exact prompt); this
# 0.5B model then calls the tool again rather than answering (greedy, for
# every wording and result format tried), so what is checked is that the
# conversation is accepted, reaches the prompt, and gets a well-formed reply.
history = messages + [
    c.message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees Celsius."},
]
r2 = client.chat.completions.create(
    model=model, messages=history, tools=tools, temperature=0, max_tokens=24)
a = r2.choices[0]
check(r2.usage.prompt_tokens > r.usage.prompt_tokens + r.usage.completion_tokens,
      f"the call and its result are not in the prompt: {r2.usage} after {r.usage}")
check(a.finish_reason in ("stop", "length", "tool_calls"), f"finish_reason: {a.finish_reason}")
for t in a.message.tool_calls or []:
    check(isinstance(json.loads(t.function.arguments), dict), f"arguments: {t.function.arguments}")

# Bad tools arrive as BadRequestError naming the field.
for kwargs, param in [
    (dict(tools=[{"type": "function", "function": {"name": "bad name"}}]), "tools[0].function.name"),
    (dict(tools=tools, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice.function.name"),
]:
    try:
        client.chat.completions.create(model=model, messages=messages, max_tokens=4, **kwargs)
        check(False, f"{kwargs} was accepted")
    except openai.BadRequestError as e:
        check(e.body.get("param") == param, f"{kwargs}: {e.body}")

print(f"ok: {checks} checks")
