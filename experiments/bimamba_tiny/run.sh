#!/usr/bin/env bash
# The exact commands behind experiments/bimamba_tiny/README.md (from the repository root, ~45 min on 2 cores).
set -euo pipefail
W=${W:-workdirs/bimamba_tiny}
# 1. FP Mamba-2 and Bi-Mamba from scratch, 3 seeds each (configs/mamba2.py's get_sweep()).
python -m bitjax.sweep --config configs/mamba2.py:size=tiny --workdir "$W/scratch"
# 2. The teachers: the FP Mamba-2 of seed 0 above, and an FP transformer of the same size class.
ln -sfn "scratch/quant=fp,seed=0" "$W/teacher_mamba2"
python -m bitjax.main --config configs/transformer.py:quant=fp,size=tiny --workdir "$W/teacher_transformer"
# 3. Bi-Mamba distilled from each teacher (FBI-LLM's loss: CE to the teacher's softmax, no label term), 3 seeds.
python -m bitjax.sweep --config configs/mamba2.py:quant=bimamba,size=tiny \
    --grid "distill.teacher_workdir=$W/teacher_mamba2,$W/teacher_transformer" --grid seed=0,1,2 \
    --workdir "$W/distilled"
# 4. One row per run, then the table and the plot from that csv alone.
python experiments/bimamba_tiny/collect.py "$W" experiments/bimamba_tiny/results.csv   # one row per run
python experiments/bimamba_tiny/combine.py   # results.md and eval_bpb.png from that csv alone
