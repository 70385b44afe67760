#!/usr/bin/env bash
# Study 16e: the FP vs b1.58 gap at three CPU sizes (nano 0.1M, tiny 0.9M, mini 4.7M parameters), equal
# data (300 steps × 16 × 128 bytes of the embedded corpus) and schedule, 3 seeds. LRs are the configs':
# at tiny each method's tuned LR (fp 1e-3, b158 3e-3), at nano and mini fp gets a third of b158's 3e-3.
# From the repository root; ~30 min on 2 cores.
set -euo pipefail
W=${W:-workdirs/scale_cpu}
python -m bitjax.sweep --config configs/transformer.py --grid size=nano,tiny,mini --grid quant=fp,b158 \
    --grid seed=0,1,2 --workdir "$W"
cp "$W/results.csv" experiments/scale_cpu/   # one row per run
python experiments/scale_cpu/combine.py   # results.md and eval_bpb.png from that csv alone
