#!/usr/bin/env bash
# Device run (issue 21, 2026-12-04, third loan): where the Qwen2.5-Coder-0.5B step's time goes on the
# Emerald Rapids Xeon with AMX (`bench train --profile`), bf16 and f32, and the bf16 step against
# PyTorch + PEFT in the same run. The model came in earlier calls (.xf/part00-part09 into /tmp/stage).
set -u
S=/tmp/stage; O=${OUT:-/tmp/out}; mkdir -p $S $O
cp .xf/* $S/
[ -x $S/cleaner ] || { xz -dc $S/cleaner.xz > $S/cleaner; chmod +x $S/cleaner; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $S/gguf-*.whl && export PYTHONPATH=/tmp/site
mkdir -p /work; [ -e /work/main ] || ln -s "$PWD" /work/main
export CLEANER_HOME=/tmp/ch; mkdir -p $CLEANER_HOME/assets
m=$CLEANER_HOME/assets/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
[ -f $m ] || { cat $S/part?? > $m && cp $S/*.verified $CLEANER_HOME/assets/ && touch -d @1796348707.163187907 $m; }
sum=$O/summary.txt
note() { echo "$*" | tee -a $sum; }
two="taskset -c 0,1"; export RAYON_NUM_THREADS=2
sec() { local name=$1 lim=$2; shift 2; local s=$SECONDS; timeout $lim "$@" >> $O/$name.txt 2>&1; note "$name: rc $? $((SECONDS-s)) s"; }
note "commit ${COMMIT:-?}; start $(date -u +%T); $(grep -m1 'model name' /proc/cpuinfo); family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2) model $(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2); amx: $(grep -m1 -o 'amx_bf16' /proc/cpuinfo); model sha $(sha256sum $m | cut -c1-16) (want 1d9614638d18024d)"
q="--models qwen2.5-coder-0.5b --tokens 512 --backend cpu --keep-mib 2048"
sec profile 120 $two $S/cleaner bench train $q --precision bf16,f32 --python none --reps 3 --profile
grep -E '^(ours:|\| (qwen|dy|x W|vocab|att|LoRA|all|Swi|RMS|AdamW|forward|backward|rope|step))|^Where' $O/profile.txt | tee -a $sum
sec step-bf16-torch 150 $two $S/cleaner bench train $q --precision bf16 --rounds 1 --python python3
grep -E '^(ours:|\| (model|qwen))' $O/step-bf16-torch.txt | tee -a $sum
note "end $(date -u +%T)"
