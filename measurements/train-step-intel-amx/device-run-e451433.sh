#!/usr/bin/env bash
# Device run E (issue 21): the Qwen2.5-Coder-0.5B step against PyTorch + PEFT in bf16 with the new tile driver, then new against old (3fcc82a) alternating, then a step's weight products alternating.
set -u
S=/tmp/stage; O=${OUT:-/tmp/out}; mkdir -p $S $O
cp .xf/* $S/
for b in cleaner-new cleaner-old; do [ -x $S/$b ] || { xz -dc $S/$b.xz > $S/$b; chmod +x $S/$b; }; done
chmod +x .d1/kt-new .d1/wp-new .d1/wp-old
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $S/gguf-*.whl && export PYTHONPATH=/tmp/site
mkdir -p /work; [ -e /work/main ] || ln -s "$PWD" /work/main
export CLEANER_HOME=/tmp/ch; mkdir -p $CLEANER_HOME/assets
m=$CLEANER_HOME/assets/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
cat $S/part0? > $m && cp $S/*.verified $CLEANER_HOME/assets/ && touch -d @1796348707.163187907 $m
sum=$O/summary.txt
note() { echo "$*" | tee -a $sum; }
two="taskset -c 0,1"; export RAYON_NUM_THREADS=2
sec() { local name=$1 lim=$2; shift 2; local s=$SECONDS; timeout $lim "$@" >> $O/$name.txt 2>&1; note "$name: rc $? $((SECONDS-s)) s"; }
note "commit e451433 (new) vs 3fcc82a (old); start $(date -u +%T); $(grep -m1 'model name' /proc/cpuinfo); family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2) model $(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2); model sha $(sha256sum $m | cut -c1-16) (want 1d9614638d18024d)"
sec kt 30 .d1/kt-new
grep -E "test result|FAILED" $O/kt.txt | tee -a $sum
q="--models qwen2.5-coder-0.5b --tokens 512 --backend cpu --keep-mib 2048"
sec step-bf16-torch 170 $two $S/cleaner-new bench train $q --precision bf16 --rounds 2 --python python3
grep -E '^(ours:|\| (model|qwen))' $O/step-bf16-torch.txt | tee -a $sum
for r in 1 2; do
  for v in new old; do
    sec step-$v-$r 50 $two $S/cleaner-$v bench train $q --precision bf16 --python none --reps 3
    grep -E '^\| qwen' $O/step-$v-$r.txt | tee -a $sum
  done
done
for r in 1 2 3 4; do
  for v in new old; do note "wp-$v: $($two .d1/wp-$v --bench | grep -E '^One step' | cut -c40-90)"; done
done
note "end $(date -u +%T)"
