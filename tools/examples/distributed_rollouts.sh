#!/usr/bin/env bash
# Two `cleaner serve` workers on loopback behind rLLM's model gateway, and a trainer-side client
# that collects rollouts with token ids and log-probs through it and syncs a LoRA adapter to
# every worker after each optimizer step (docs/distributed-rl.md).
#
#   tools/examples/distributed_rollouts.sh
#
# Environment:
#   CLEANER   the cleaner binary (default: $CARGO_TARGET_DIR or ~/.cache/cleaner/target, release)
#   MODEL     catalog name or GGUF path the workers serve (default smollm2-135m)
#   ADAPTERS  space-separated adapter GGUFs, one per optimizer step, made for MODEL; when unset,
#             a two-step `cleaner train` run on GSM8K makes them (a few seconds with SmolLM2)
#   VENV      Python environment, made on first use from the pinned requirements
#             (default ~/.cache/cleaner/venv-dist)
#   THREADS   decode threads per worker (default 1)
#
# Exits non-zero if a worker or the gateway does not come up, or if any check of the client
# fails; the workers' and gateway's logs are then printed. Everything it starts is stopped on
# exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=tools/examples
C="${CLEANER:-${CARGO_TARGET_DIR:-$HOME/.cache/cleaner/target}/release/cleaner}"
MODEL="${MODEL:-smollm2-135m}"
VENV="${VENV:-$HOME/.cache/cleaner/venv-dist}"
THREADS="${THREADS:-1}"
[ -x "$C" ] || { echo "no cleaner binary at $C (set CLEANER or build with cargo build --release -p cleaner-cli)" >&2; exit 2; }

if ! "$VENV/bin/python" -c 'import rllm_model_gateway, openai' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet -r "$HERE/distributed_rollouts.requirements.txt" \
    || { echo "could not install $HERE/distributed_rollouts.requirements.txt into $VENV" >&2; exit 2; }
fi
PY="$VENV/bin/python"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
show_logs() { for f in "$WORK"/*.log; do echo "== $f"; tail -n 20 "$f"; done >&2; }

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_health() { # url name
  for _ in $(seq 1 600); do
    curl -sf "$1/health" > /dev/null && return 0
    sleep 0.2
  done
  echo "$2 at $1 did not answer /health within 120 s" >&2
  show_logs
  exit 1
}

# One adapter per optimizer step, as a trainer writes them (cleaner's own trainer here).
if [ -z "${ADAPTERS:-}" ]; then
  cat > "$WORK/train.toml" <<EOF
model = "$MODEL"
[data]
dataset = "gsm8k-train"
[engine]
slots = 5
threads = $THREADS
max_prompt_tokens = 384
[grpo]
steps = 2
prompts_per_step = 1
group_size = 4
seed = 0
[agent]
max_turns = 1
max_response_tokens = 48
rollback_probability = 0.0
[lora]
rank = 4
alpha = 8.0
EOF
  "$C" train --config "$WORK/train.toml" --run "$WORK/run" --data-dir "$ROOT/data" > "$WORK/train.log" 2>&1 \
    || { echo "cleaner train failed" >&2; show_logs; exit 1; }
  # Each checkpoint holds the adapter as that step left it (two are kept by default).
  ADAPTERS="$WORK/run/checkpoints/step-000001/adapter.gguf $WORK/run/checkpoints/step-000002/adapter.gguf"
fi

WORKER_ARGS=()
for i in 0 1; do
  port=$(free_port)
  "$C" serve --model "$MODEL" --served-model-name "$MODEL" --port "$port" --slots 4 \
    --ctx-per-slot 1024 --threads "$THREADS" --no-code-interpreter > "$WORK/worker-$i.log" 2>&1 &
  PIDS+=($!)
  wait_health "http://127.0.0.1:$port" "worker $i"
  WORKER_ARGS+=(--worker "http://127.0.0.1:$port")
done

# The gateway as rLLM launches it: its own CLI, workers registered later by the trainer.
# add_logprobs and add_return_token_ids: the gateway asks every worker for what the trainer
# needs (it sends return_token_ids both at the top and inside `extra_body`, which cleaner
# serve merges into the body as the openai client would).
GW_PORT=$(free_port)
cat > "$WORK/gateway.yaml" <<EOF
host: 127.0.0.1
port: $GW_PORT
store_worker: memory
add_logprobs: true
add_return_token_ids: true
sync_traces: true
health_check_interval: 2.0
log_level: WARNING
EOF
"$PY" -m rllm_model_gateway --config "$WORK/gateway.yaml" > "$WORK/gateway.log" 2>&1 &
PIDS+=($!)
wait_health "http://127.0.0.1:$GW_PORT" gateway

ADAPTER_ARGS=()
for a in $ADAPTERS; do ADAPTER_ARGS+=(--adapter "$(realpath "$a")"); done
"$PY" "$HERE/distributed_rollouts.py" --gateway "http://127.0.0.1:$GW_PORT" "${WORKER_ARGS[@]}" \
  --model "$MODEL" "${ADAPTER_ARGS[@]}" || { show_logs; exit 1; }
