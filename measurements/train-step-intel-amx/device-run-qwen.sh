#!/usr/bin/env bash
# Ad hoc device-machine run for issue 21 (not committed): Qwen2.5-Coder-0.5B
# step against PyTorch + PEFT on the device's Intel CPU, 2 threads.
set -u
S=/tmp/stage; O=${OUT:-/tmp/out}; mkdir -p $S $O
cp .q9/* $S/
[ -x $S/cleaner ] || { xz -dc $S/cleaner.xz > $S/cleaner; chmod +x $S/cleaner; }
chmod +x $S/kernel-tests $S/train-kernels
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $S/gguf-*.whl && export PYTHONPATH=/tmp/site
mkdir -p /work; [ -e /work/main ] || ln -s "$PWD" /work/main
export CLEANER_HOME=/tmp/ch; mkdir -p $CLEANER_HOME/assets
m=$CLEANER_HOME/assets/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
cat $S/part0 $S/part1 $S/part2 $S/part3 $S/part4 $S/part5 $S/part6 $S/part7 $S/part8 $S/part9 > $m && cp $S/*.verified $CLEANER_HOME/assets/ && touch -d @1796348707.163187907 $m
sum=$O/summary.txt
note() { echo "$*" | tee -a $sum; }
two="taskset -c 0,1"; export RAYON_NUM_THREADS=2
sec() { local name=$1 lim=$2; shift 2; local s=$SECONDS; timeout $lim "$@" >> $O/$name.txt 2>&1; note "$name: rc $? $((SECONDS-s)) s"; }
note "commit $(cat $S/commit.txt); start $(date -u +%T); $(grep -m1 'model name' /proc/cpuinfo); model sha $(sha256sum $m | cut -c1-16) (want 1d9614638d180)"
sec kt 30 $S/kernel-tests --nocapture
CLEANER_BF16=avx512 sec kt 30 $S/kernel-tests
grep -E "AMX|test result|FAILED" $O/kt.txt | tee -a $sum
sec tk 30 $two $S/train-kernels --bench
grep -E '^(Kernel set|\| )' $O/tk.txt | tee -a $sum
q="--models qwen2.5-coder-0.5b --tokens 512 --backend cpu --keep-mib 2048 --python python3"
sec step-bf16 150 $two $S/cleaner bench train $q --precision bf16 --rounds 2
grep -E '^(ours:|\| (model|qwen))' $O/step-bf16.txt | tee -a $sum
sec step-f32 120 $two $S/cleaner bench train $q --precision f32
grep -E '^\| qwen' $O/step-f32.txt | tee -a $sum
CLEANER_BF16=avx512 sec step-avx512 50 $two $S/cleaner bench train ${q/python3/none} --precision bf16
grep -E '^(ours:|\| qwen)' $O/step-avx512.txt | tee -a $sum
note "end $(date -u +%T)"
