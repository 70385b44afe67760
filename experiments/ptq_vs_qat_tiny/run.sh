#!/usr/bin/env bash
# The exact commands behind experiments/ptq_vs_qat_tiny/README.md (from the repository root).
# The FP sources and the QAT rows are experiments/quant_choice's `tiny` runs (3 seeds each, each method at
# its tuned LR): run experiments/quant_choice/run.sh first (same W). The PTQ part takes ~10 min on 2 cores.
set -euo pipefail
W=${W:-workdirs/quant_choice}
P=${P:-workdirs/ptq_vs_qat_tiny}
# Single-threaded XLA, two processes at a time: 1.5× the throughput of one 2-thread process on 2 cores.
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
lr=$(python experiments/quant_choice/lr.py fp)
for s in 0 1 2; do
  fp="$W/size=tiny,quant=fp,optim.lr=$lr,seed=$s"
  for m in rtn gptq; do for b in 2 3 4; do
    [ -f "$P/seed=$s/$m$b/ptq.json" ] || echo "python -m bitjax.ptq --workdir '$fp' --method $m --bits $b --out '$P/seed=$s/$m$b'"
  done; done
  [ -f "$P/seed=$s/billm1/ptq.json" ] || echo "python -m bitjax.ptq --workdir '$fp' --method billm --out '$P/seed=$s/billm1'"
done | xargs -P 2 -I{} bash -c '{} > /dev/null'
python experiments/ptq_vs_qat_tiny/collect.py "$W" "$P" experiments/ptq_vs_qat_tiny/results.csv
python experiments/ptq_vs_qat_tiny/combine.py   # results.md and ptq_vs_qat.png from that csv alone
