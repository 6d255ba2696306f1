#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, fetch the default model
# (Qwen2.5-Coder-0.5B-Instruct) and run it on a GSM8K problem with 4 rollouts
# sharing one prefill. Extra arguments go to `cleaner generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/setup.sh
question=$(head -n 1 ../shared/data/gsm8k/test.jsonl 2>/dev/null | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["question"])' 2>/dev/null \
  || echo "Janet has 16 eggs. She eats 3 and bakes muffins with 4. She sells the rest for \$2 each. How much does she make?")
exec cleaner generate --model qwen2.5-coder-0.5b -n 4 --max-tokens 256 --temperature 0.7 \
  --prompt "Solve step by step and put the final answer in \\boxed{}. $question" "$@"
