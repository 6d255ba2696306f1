#!/usr/bin/env bash
# Device run (issue 21, 2026-12-04, fourth loan): attention's bf16 products on AMX tiles (02aa6db) and
# AdamW in parallel (new) against 18600c0 (old: attention in f32 on Intel), the Qwen2.5-Coder-0.5B
# bf16 step with its profile, alternating; the kernel tests on the hardware first.
set -u
S=/tmp/stage; O=${OUT:-/tmp/out}; mkdir -p $S $O
cp .xf/* $S/
for b in cleaner-new cleaner-old kt; do [ -x $S/$b ] || { xz -dc $S/$b.xz > $S/$b; chmod +x $S/$b; }; done
mkdir -p /work; [ -e /work/main ] || ln -s "$PWD" /work/main
export CLEANER_HOME=/tmp/ch; mkdir -p $CLEANER_HOME/assets
m=$CLEANER_HOME/assets/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
[ -f $m ] || { cat $S/part?? > $m && cp $S/*.verified $CLEANER_HOME/assets/ && touch -d @1796348707.163187907 $m; }
sum=$O/summary.txt
note() { echo "$*" | tee -a $sum; }
two="taskset -c 0,1"; export RAYON_NUM_THREADS=2
sec() { local name=$1 lim=$2; shift 2; local s=$SECONDS; timeout $lim "$@" >> $O/$name.txt 2>&1; note "$name: rc $? $((SECONDS-s)) s"; }
note "new ${COMMIT:-?} vs old 18600c0; start $(date -u +%T); $(grep -m1 'model name' /proc/cpuinfo); family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2) model $(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2); model sha $(sha256sum $m | cut -c1-16) (want 1d9614638d18024d)"
sec kt 60 $two $S/kt --test-threads 2
grep -E "test result|FAILED|panicked" $O/kt.txt | tee -a $sum
q="--models qwen2.5-coder-0.5b --tokens 512 --backend cpu --keep-mib 2048 --precision bf16 --python none --reps 3 --profile"
for r in 1 2; do
  for v in new old; do
    sec step-$v-$r 60 $two $S/cleaner-$v bench train $q
    grep -E '^\| (qwen|attention|x W|dy W|vocab|AdamW|all)' $O/step-$v-$r.txt | tee -a $sum
  done
done
note "end $(date -u +%T)"
