#!/usr/bin/env bash
# Device run (issue 21, 2026-12-04, fifth loan): the session's final state (ba5699b: the profile,
# attention on AMX tiles, AdamW in parallel, fewer zeroed buffers) on the Emerald Rapids Xeon:
# kernel tests on the hardware, the bf16 step against PyTorch + PEFT (2 rounds, with its profile),
# a step's products with the weights alone (weight_products), then the step under other tile settings.
set -u
S=/tmp/stage; O=${OUT:-/tmp/out}; mkdir -p $S $O
cp .xf/* $S/
for b in cleaner kt wp; do [ -x $S/$b ] || { xz -dc $S/$b.xz > $S/$b; chmod +x $S/$b; }; done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $S/gguf-*.whl && export PYTHONPATH=/tmp/site
mkdir -p /work; [ -e /work/main ] || ln -s "$PWD" /work/main
export CLEANER_HOME=/tmp/ch; mkdir -p $CLEANER_HOME/assets
m=$CLEANER_HOME/assets/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
[ -f $m ] || { cat $S/part?? > $m && cp $S/*.verified $CLEANER_HOME/assets/ && touch -d @1796348707.163187907 $m; }
sum=$O/summary.txt
note() { echo "$*" | tee -a $sum; }
two="taskset -c 0,1"; export RAYON_NUM_THREADS=2
sec() { local name=$1 lim=$2; shift 2; local s=$SECONDS; timeout $lim "$@" >> $O/$name.txt 2>&1; note "$name: rc $? $((SECONDS-s)) s"; }
note "commit ba5699b; start $(date -u +%T); $(grep -m1 'model name' /proc/cpuinfo); family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2) model $(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2); model sha $(sha256sum $m | cut -c1-16) (want 1d9614638d18024d)"
sec kt 60 $two $S/kt --test-threads 2
grep -E "test result|FAILED|panicked" $O/kt.txt | tee -a $sum
q="--models qwen2.5-coder-0.5b --tokens 512 --backend cpu --keep-mib 2048 --precision bf16"
sec step-bf16-torch 170 $two $S/cleaner bench train $q --rounds 2 --python python3 --profile
grep -E '^(ours:|\| (qwen|x W|dy W|vocab|attention|LoRA|all))' $O/step-bf16-torch.txt | tee -a $sum
sec wp 40 $two $S/wp --bench
grep -E '^(\| (q|k|gate|down|vocab)|One step|The kernel)' $O/wp.txt | tee -a $sum
for t in "CLEANER_AMX_CHUNK=512" "CLEANER_AMX_PREFETCH=ab" "CLEANER_AMX_COLS=256"; do
  [ $SECONDS -gt 215 ] && break
  sec "step-$t" 25 env $t $two $S/cleaner bench train $q --python none --reps 3 --profile
  note "$t: $(grep -E '^\| (qwen|x W|dy W)' "$O/step-$t.txt" | cut -c1-120 | tr '\n' ' ')"
done
note "end $(date -u +%T)"
