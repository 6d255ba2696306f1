#!/usr/bin/env bash
# Measures the CPU trainer on whatever CPU this is, for a per-CPU report
# (issue 21: Intel, AMD Zen 4 and Zen 5 differ in their FMA widths, bf16
# throughput and AMX):
#   tools/scripts/cpu-check.sh [OUT]        (default OUT: /tmp/cpu-check)
# Builds (tools/scripts/setup.sh), then writes to OUT: the CPU's facts, the
# kernel tests in every build this CPU runs (AMX tiles where usable), the
# training step against PyTorch + PEFT at the same precision (T = 512 and
# 2048), the AMX tiles against `vdpbf16ps` where AMX runs, `x W^T` against
# numpy/OpenBLAS sgemm, the per-kernel table, and a step's products with
# the weights (on AMX: with the products or the packing left out). About 25 minutes on
# 2 cores, more on the first run (the bench makes its PyTorch and numpy
# environments in the cache). Nothing else should run meanwhile: the
# benches compare timings. The files are raw output; a claim goes into
# measurements/ with its README.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/cpu-check}
mkdir -p "$out"
. tools/scripts/setup.sh
summary="$out/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
run() { # name, command...: output to OUT/name.txt, status to the summary
  local name=$1 start=$SECONDS
  shift
  "$@" >"$out/$name.txt" 2>&1
  note "$name: rc $?, $((SECONDS - start)) s"
}

cpu_field() { grep -m1 "^$1[[:space:]]*:" /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'; }
flags=$(cpu_field flags)
has() { case " $flags " in *" $1 "*) echo yes ;; *) echo no ;; esac; }
note "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u '+%F %T') UTC"
note "cpu: $(cpu_field 'model name'); vendor $(cpu_field vendor_id), family $(cpu_field 'cpu family') model $(cpu_field model)"
note "threads: $(nproc); memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
note "avx512f $(has avx512f), avx512_bf16 $(has avx512_bf16), amx_tile $(has amx_tile), amx_bf16 $(has amx_bf16)"

# The kernels in the builds this CPU picks (the bf16 products on AMX tiles
# where the CPU and the OS allow it; the hardware tests say why not
# otherwise), then the AVX2 ones (what CPUs without AVX-512 get), and on an
# AMX machine the bf16 products on `vdpbf16ps` as well.
run kernel-tests cargo test --release -p cleaner-kernels -- --nocapture
run kernel-tests-avx2 env CLEANER_GEMM_F32=avx2 CLEANER_ELEMENTWISE=avx2 \
  cargo test --release -p cleaner-kernels
grep -m1 "AMX not run here" "$out/kernel-tests.txt" | tee -a "$summary"
amx=no
[ "$(has amx_bf16)" = yes ] && ! grep -q "AMX not run here" "$out/kernel-tests.txt" && amx=yes
if [ "$amx" = yes ]; then
  run kernel-tests-avx512-bf16 env CLEANER_BF16=avx512 cargo test --release -p cleaner-kernels
fi

# The step against PyTorch + PEFT at the same precision, both lengths, with
# where each setting's time goes (its profile follows the table in the file).
for t in 512 2048; do
  run "bench-train-T$t" cleaner bench train --models qwen2.5-coder-0.5b --tokens "$t" \
    --backend cpu --keep-mib 2048 --precision f32,bf16 --rounds 2 --profile
  grep -E '^\| (model|qwen)' "$out/bench-train-T$t.txt" | tee -a "$summary"
done

# AMX tiles against vdpbf16ps on the bf16 step, alternating.
if [ "$amx" = yes ]; then
  for round in 1 2 3; do
    for bf16 in avx512 amx; do
      rate=$(CLEANER_BF16=$bf16 cleaner bench train --models qwen2.5-coder-0.5b --tokens 512 \
        --backend cpu --keep-mib 2048 --precision bf16 --python none --reps 3 2>&1 |
        grep -E '^\| qwen' | cut -d'|' -f5)
      note "bf16 step, round $round, CLEANER_BF16=$bf16: $rate tok/s"
    done
  done
fi

# x W^T against numpy/OpenBLAS sgemm (T = 1, 64, 512), and each kernel's
# share of a step's work.
run bench-kernels cleaner bench kernels --forward-models none
grep -E '^\| ' "$out/bench-kernels.txt" | tee -a "$summary"
run train-kernels cargo bench --bench train_kernels
grep -E '^(Kernel set|\| )' "$out/train-kernels.txt" | tee -a "$summary"

# A step's products with the weights, shape by shape, next to their
# decoding alone and the kernel on operands in L1; on AMX, the same with the
# products or the packing left out (what each costs), and under `perf stat`
# where the machine has it (why the tiles wait: issue 21's open question).
run weight-products cargo bench --bench weight_products
grep -E '^(\||One step|The kernel)' "$out/weight-products.txt" | tee -a "$summary"
if [ "$amx" = yes ]; then
  for skip in products packing; do
    run "weight-products-skip-$skip" env CLEANER_AMX_SKIP=$skip cargo bench --bench weight_products
    note "skip $skip: $(grep -E '^One step' "$out/weight-products-skip-$skip.txt")"
  done
  if command -v perf >/dev/null; then
    bin=$(cargo bench --bench weight_products --no-run 2>&1 | sed -n 's/.*(\(.*weight_products-[^)]*\)).*/\1/p')
    run weight-products-perf-stat env CLEANER_AMX_SKIP=packing perf stat -d "$bin" --bench
  fi
fi
note "files in $out"
