#!/usr/bin/env bash
# Ad hoc device-machine CPU check for issue 21 (not committed): the model-free
# kernel benches, the SmolLM2 step against PyTorch + PEFT, AMX where it runs.
set -u
S=/tmp/stage; O=${OUT:-/tmp/out}; mkdir -p $S $O
cp .dev3/* $S/ 2>/dev/null
[ -x $S/cleaner ] || { xz -dc $S/cleaner.xz > $S/cleaner; chmod +x $S/cleaner; }
chmod +x $S/kernel-tests $S/train-kernels
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $S/gguf-*.whl && export PYTHONPATH=/tmp/site
mkdir -p /work; [ -e /work/main ] || ln -s "$PWD" /work/main
export CLEANER_HOME=/tmp/ch; mkdir -p $CLEANER_HOME/assets
m=$CLEANER_HOME/assets/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f $S/model.a ] && [ -f $S/model.b ] && [ -f $S/model.c ]; then
  cat $S/model.a $S/model.b $S/model.c > $m; cp $S/*.verified $CLEANER_HOME/assets/; touch -d @1796348699.703187613 $m
fi
sum=$O/summary.txt
note() { echo "$*" | tee -a $sum; }
two="taskset -c 0,1"; $two true || two=""
export RAYON_NUM_THREADS=2
sec() { local name=$1 lim=$2; shift 2; local s=$SECONDS; timeout $lim "$@" >> $O/$name.txt 2>&1; note "$name: rc $? $((SECONDS-s)) s: $*"; }
note "start $(date -u +%T); model $(sha256sum $m 2>/dev/null | cut -c1-12); taskset: ${two:-none}; AMX=${AMX:-0}"
sec train-kernels 60 $two $S/train-kernels --bench
[ "${AMX:-0}" = 1 ] && CLEANER_BF16=amx sec train-kernels 60 $two $S/train-kernels --bench
grep -E '^(Kernel set|\| )' $O/train-kernels.txt | tee -a $sum
if [ -f $m ]; then
  sec step 270 $two $S/cleaner bench train --models smollm2-135m --tokens 512 --backend cpu --keep-mib 2048 --precision f32,bf16 --rounds 2 --python python3
  grep -E '^\| (model|smol)' $O/step.txt | tee -a $sum
  if [ "${AMX:-0}" = 1 ]; then
    for r in 1 2; do for b in avx512 amx; do
      rate=$(CLEANER_BF16=$b timeout 40 $two $S/cleaner bench train --models smollm2-135m --tokens 512 --backend cpu --keep-mib 2048 --precision bf16 --python none --reps 3 2>&1 | tee -a $O/step.txt | grep -E '^\| smol' | cut -d'|' -f5)
      note "bf16 step round $r CLEANER_BF16=$b: $rate tok/s"
    done; done
  fi
fi
sec bench-kernels 150 $two $S/cleaner bench kernels --forward-models none --python python3 --rounds 1 --min-seconds 0.25
grep -E '^(\| |f32 micro)' $O/bench-kernels.txt | tee -a $sum
RAYON_NUM_THREADS=16 sec train-kernels-16 40 $S/train-kernels --bench
grep -E '^(Kernel set|\| )' $O/train-kernels-16.txt | tee -a $sum
note "end $(date -u +%T)"
