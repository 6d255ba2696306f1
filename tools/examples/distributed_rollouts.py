#!/usr/bin/env python3
"""Rollouts for an RL trainer from several `cleaner serve` workers, the way rLLM collects them.

rLLM's model gateway (PyPI `rllm-model-gateway`, its own classes, unmodified) sits between the
agents and the inference workers: it routes each session to a worker (sticky, least loaded),
asks every call for log-probs and token ids, and records one `TraceRecord` per call (prompt
ids, completion ids, per-token log-probs) that the trainer later reads back by session. This
script plays the trainer's side against N `cleaner serve` workers behind one gateway
(docs/distributed-rl.md; `distributed_rollouts.sh` starts everything):

1. registers the workers with the gateway (`AsyncGatewayClient.add_worker`, as rLLM's verl
   backend registers its vLLM servers);
2. runs a round of two-turn rollouts, every rollout a gateway session driven by the plain
   `openai` client (half of them streamed), all sessions at once so the gateway spreads them;
3. reads the traces back (`get_session_traces`) and checks what a trainer relies on;
4. after each "optimizer step" (one adapter file per step) loads the adapter on every worker
   (`/v1/load_lora_adapter`, `load_inplace`: the gateway proxies a call to one worker only, so
   the trainer fans control calls out itself) and runs the next round on it;
5. unloads the adapter everywhere and checks the name is gone.

It exits non-zero, naming what was wrong, if any check fails: a trace without token ids or
log-probs, a log-probability that is not finite or above 0, ids that do not decode to the text
the agent saw, a prompt whose ids do not survive detokenize -> tokenize, a second turn whose
prompt does not extend the first's, a worker that served nothing in a round, or worker
request counts (from each worker's /metrics) that do not add up to the traces recorded.
"""

import argparse
import asyncio
import json
import math
import re
import sys

import httpx
from openai import APIError, AsyncOpenAI, NotFoundError
from rllm_model_gateway import AsyncGatewayClient, TraceRecord

# Questions with a checkable answer, so each rollout gets a reward like a trainer's would.
TASKS = [
    ("What is 17 + 25? Reply with the number only.", "42"),
    ("What is 9 times 7? Reply with the number only.", "63"),
    ("What is 100 minus 58? Reply with the number only.", "42"),
    ("How many days are in a week? Reply with the number only.", "7"),
]
FOLLOW_UP = "Now say it again in one short sentence."
ADAPTER_NAME = "policy"


class CheckFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# ---------------------------------------------------------------- worker side (direct calls)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}, enough for counters and gauges."""
    values = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        values[key] = float(value)
    return values


async def scrape(http: httpx.AsyncClient, workers: list[str]) -> list[dict[str, float]]:
    responses = await asyncio.gather(*(http.get(f"{w}/metrics") for w in workers))
    for worker, r in zip(workers, responses):
        check(r.status_code == 200, f"{worker}/metrics answered {r.status_code}")
    return [parse_metrics(r.text) for r in responses]


def counter(metrics: dict[str, float], key: str) -> float:
    return metrics.get(key, 0.0)


async def detokenize(http: httpx.AsyncClient, worker: str, model: str, ids: list[int]) -> str:
    """Token ids -> text with the worker's own tokenizer (a trainer would use its HF tokenizer;
    here nothing can be downloaded). `echo` returns the prompt's text before one generated
    token, and that token's `text_offset` (bytes) is where the prompt's text ends."""
    r = await http.post(
        f"{worker}/v1/completions",
        json={
            "model": model,
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0,
            "echo": True,
            "logprobs": 0,
        },
    )
    check(r.status_code == 200, f"detokenize on {worker}: {r.status_code} {r.text}")
    choice = r.json()["choices"][0]
    end = choice["logprobs"]["text_offset"][0]
    return choice["text"].encode()[:end].decode()


async def tokenize(http: httpx.AsyncClient, worker: str, model: str, text: str) -> list[int]:
    """Text -> token ids with the worker's tokenizer (special tokens parsed, as the chat
    template's text is), read from `prompt_token_ids`."""
    r = await http.post(
        f"{worker}/v1/completions",
        json={
            "model": model,
            "prompt": text,
            "max_tokens": 1,
            "temperature": 0,
            "return_token_ids": True,
        },
    )
    check(r.status_code == 200, f"tokenize on {worker}: {r.status_code} {r.text}")
    return r.json()["prompt_token_ids"]


async def sync_adapter(http: httpx.AsyncClient, workers: list[str], path: str) -> None:
    """After an optimizer step: the new adapter under one name on every worker. `load_inplace`
    replaces the weights behind the name; requests accepted before keep the old ones."""
    body = {"lora_name": ADAPTER_NAME, "lora_path": path, "load_inplace": True}
    responses = await asyncio.gather(
        *(http.post(f"{w}/v1/load_lora_adapter", json=body) for w in workers)
    )
    for worker, r in zip(workers, responses):
        check(r.status_code == 200, f"load_lora_adapter on {worker}: {r.status_code} {r.text}")
    for worker in workers:
        models = (await http.get(f"{worker}/v1/models")).json()["data"]
        roots = {m["id"]: m.get("root") for m in models}
        check(
            roots.get(ADAPTER_NAME) == path,
            f"{worker}/v1/models lists {ADAPTER_NAME!r} as {roots.get(ADAPTER_NAME)!r}, expected {path}",
        )


async def unload_adapter(http: httpx.AsyncClient, workers: list[str]) -> None:
    body = {"lora_name": ADAPTER_NAME}
    responses = await asyncio.gather(
        *(http.post(f"{w}/v1/unload_lora_adapter", json=body) for w in workers)
    )
    for worker, r in zip(workers, responses):
        check(r.status_code == 200, f"unload_lora_adapter on {worker}: {r.status_code} {r.text}")


# ---------------------------------------------------------------- agent side (through the gateway)


async def chat(client: AsyncOpenAI, model: str, messages: list, seed: int, args, stream: bool) -> str:
    """One agent call, as an agent framework makes it: nothing RL-specific (the gateway adds
    `logprobs` and `return_token_ids` to the body itself)."""
    common = dict(
        model=model,
        messages=messages,
        max_tokens=args.max_tokens,
        temperature=1.0,
        seed=seed,
    )
    if not stream:
        response = await client.chat.completions.create(**common)
        return response.choices[0].message.content or ""
    parts = []
    chunks = await client.chat.completions.create(
        **common, stream=True, stream_options={"include_usage": True}
    )
    async for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts)


async def rollout(gateway: AsyncGatewayClient, model: str, task: int, index: int, seed: int, args):
    """One two-turn episode in its own gateway session; returns the session id and the texts."""
    session = await gateway.create_session(metadata={"task": task, "rollout": index})
    client = AsyncOpenAI(base_url=gateway.get_session_url(session), api_key="unused", max_retries=0)
    question, _ = TASKS[task]
    messages = [{"role": "user", "content": question}]
    first = await chat(client, model, messages, seed, args, stream=index % 2 == 1)
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": FOLLOW_UP}]
    second = await chat(client, model, messages, seed + 1000, args, stream=index % 2 == 1)
    await client.close()
    return session, [first, second]


# ---------------------------------------------------------------- trainer side (reading traces)


async def check_trace(http, worker, base_model, trace: TraceRecord, text: str, where: str) -> dict:
    ids, lps = trace.completion_token_ids, trace.logprobs or []
    check(len(trace.prompt_token_ids) > 0, f"{where}: no prompt_token_ids in the trace")
    check(len(ids) > 0, f"{where}: no completion token ids in the trace")
    check(len(lps) == len(ids), f"{where}: {len(lps)} log-probs for {len(ids)} tokens")
    bad = [x for x in lps if not math.isfinite(x) or x > 0]
    check(not bad, f"{where}: log-probabilities not finite or above 0: {bad[:5]}")
    check(
        trace.token_counts.get("prompt") == len(trace.prompt_token_ids)
        and trace.token_counts.get("completion") == len(ids),
        f"{where}: usage {trace.token_counts} disagrees with the ids "
        f"({len(trace.prompt_token_ids)} prompt, {len(ids)} completion)",
    )
    # The text the agent acted on is what the ids say: the content, then at most the
    # end-of-generation token (kept in the ids so ids and log-probs stay aligned).
    decoded = await detokenize(http, worker, base_model, ids)
    check(
        decoded.startswith(text),
        f"{where}: completion ids decode to {decoded!r}, the agent saw {text!r}",
    )
    tail = decoded[len(text):]
    check(
        tail == "" or trace.finish_reason == "stop",
        f"{where}: ids decode to {tail!r} past the content (finish {trace.finish_reason})",
    )
    # The prompt was rendered by the chat template and tokenized by the worker: its ids must
    # survive detokenize -> tokenize exactly, or the trainer's re-tokenized prompt would drift.
    prompt_ids = trace.prompt_token_ids
    prompt_text = await detokenize(http, worker, base_model, prompt_ids)
    back = await tokenize(http, worker, base_model, prompt_text)
    check(
        back == prompt_ids,
        f"{where}: prompt ids {prompt_ids} detokenize to {prompt_text!r}, which tokenizes to {back}",
    )
    # Sampled text need not: a model may sample a non-canonical split of a word, which is why
    # trainers take ids from the server. Counted, not failed.
    canonical = await tokenize(http, worker, base_model, decoded) == ids
    return {
        "prompt_ids": len(trace.prompt_token_ids),
        "completion_ids": len(ids),
        "finish": trace.finish_reason,
        "completion_retokenizes": canonical,
        "mean_logprob": sum(lps) / len(lps),
    }


async def session_traces(gateway: AsyncGatewayClient, session: str) -> list[TraceRecord]:
    """A session's traces in call order. The gateway stores a streamed call's trace in a task
    of its own once the stream has ended, which can be just after the client saw [DONE]; so
    wait briefly for both turns."""
    for _ in range(50):
        traces = await gateway.get_session_traces(session)
        if len(traces) >= 2:
            break
        await asyncio.sleep(0.1)
    return sorted(traces, key=lambda t: t.timestamp)


async def run_round(name, model, gateway, http, workers, base_model, args, counter_key, seed):
    before = await scrape(http, workers)
    plan = [(task, g) for task in range(args.prompts) for g in range(args.group)]
    episodes = await asyncio.gather(
        *(rollout(gateway, model, task, g, seed + 10 * task + g, args) for task, g in plan)
    )
    after = await scrape(http, workers)
    summaries, rewards = [], []
    for (session, texts), (task, _) in zip(episodes, plan):
        traces = await session_traces(gateway, session)
        check(len(traces) == 2, f"{name}: session {session} holds {len(traces)} traces, expected 2")
        for turn, (trace, text) in enumerate(zip(traces, texts)):
            check(trace.model == model, f"{name}: trace model {trace.model!r}, expected {model!r}")
            summaries.append(
                await check_trace(http, workers[0], base_model, trace, text, f"{name} {session} turn {turn + 1}")
            )
        first, second = traces
        check(
            second.prompt_token_ids[: len(first.prompt_token_ids)] == first.prompt_token_ids,
            f"{name} {session}: the second turn's prompt does not extend the first's",
        )
        n = len(first.prompt_token_ids) + len(first.completion_token_ids)
        summaries[-1]["extends_first_turn_ids"] = (
            second.prompt_token_ids[:n] == first.prompt_token_ids + first.completion_token_ids
        )
        answer = TASKS[task][1]
        rewards.append(1.0 if re.search(rf"\b{answer}\b", texts[0]) else 0.0)
    served = [counter(a, counter_key) - counter(b, counter_key) for a, b in zip(after, before)]
    for worker, count in zip(workers, served):
        check(count > 0, f"{name}: {worker} served no requests ({counter_key} did not move)")
    check(
        sum(served) == 2 * len(episodes),
        f"{name}: the workers counted {sum(served):.0f} requests ({counter_key}), "
        f"the gateway recorded {2 * len(episodes)} traces",
    )
    report = {
        "round": name,
        "model": model,
        "sessions": len(episodes),
        "traces": 2 * len(episodes),
        "requests_per_worker": {w: int(c) for w, c in zip(workers, served)},
        "tokens": sum(s["completion_ids"] for s in summaries),
        "completions_that_retokenize": sum(s["completion_retokenizes"] for s in summaries),
        "second_turns_extending_first_turn_ids": sum(
            s.get("extends_first_turn_ids", False) for s in summaries
        ),
        "mean_logprob": round(sum(s["mean_logprob"] for s in summaries) / len(summaries), 4),
        "reward_mean": sum(rewards) / len(rewards),
    }
    print(json.dumps(report), flush=True)
    return report


async def main(args) -> int:
    workers = [w.rstrip("/") for w in args.worker]
    async with AsyncGatewayClient(args.gateway) as gateway, httpx.AsyncClient(timeout=600) as http:
        for worker in workers:
            await gateway.add_worker(url=worker, api_path="/v1")
        listed = await gateway.list_workers()
        check(
            sorted(w.url for w in listed) == sorted(workers),
            f"the gateway lists workers {[w.url for w in listed]}, expected {workers}",
        )
        base_model = args.model
        chat_key = 'cleaner_requests_total{route="/v1/chat/completions",status="200"}'
        await run_round("base", base_model, gateway, http, workers, base_model, args, chat_key, args.seed)
        adapter_key = f'cleaner_model_requests_total{{model="{ADAPTER_NAME}"}}'
        for step, path in enumerate(args.adapter, start=1):
            await sync_adapter(http, workers, path)
            for worker, metrics in zip(workers, await scrape(http, workers)):
                check(
                    counter(metrics, "cleaner_adapters_loaded") == 1,
                    f"{worker}: cleaner_adapters_loaded is {counter(metrics, 'cleaner_adapters_loaded')}, expected 1",
                )
            await run_round(
                f"step-{step}", ADAPTER_NAME, gateway, http, workers, base_model, args, adapter_key,
                args.seed + 100 * step,
            )
        if args.adapter:
            await unload_adapter(http, workers)
            session = await gateway.create_session()
            client = AsyncOpenAI(base_url=gateway.get_session_url(session), api_key="unused", max_retries=0)
            try:
                await client.chat.completions.create(
                    model=ADAPTER_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=1
                )
                raise CheckFailed(f"{ADAPTER_NAME!r} still answered after unloading it everywhere")
            except NotFoundError:
                pass
            finally:
                await client.close()
            print(json.dumps({"unloaded": ADAPTER_NAME, "then": "404 model_not_found"}))
    print("distributed rollouts: all checks passed")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", required=True, help="rllm-model-gateway URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--worker", action="append", required=True, help="a cleaner serve URL (repeat)")
    parser.add_argument("--model", required=True, help="the workers' served model id")
    parser.add_argument("--adapter", action="append", default=[], help="one adapter GGUF per optimizer step (repeat)")
    parser.add_argument("--prompts", type=int, default=2, help="tasks per round")
    parser.add_argument("--group", type=int, default=2, help="rollouts per task (a GRPO group)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if len(args.worker) < 2:
        parser.error("give at least two --worker URLs")
    if not 1 <= args.prompts <= len(TASKS):
        parser.error(f"--prompts must be 1 to {len(TASKS)}, got {args.prompts}")
    try:
        sys.exit(asyncio.run(main(args)))
    except CheckFailed as failure:
        print(f"distributed rollouts: FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
    except (APIError, httpx.HTTPError) as error:
        # A refused or failed call (through the gateway or to a worker): the server's message
        # names the field or the problem.
        print(f"distributed rollouts: FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
