#!/usr/bin/env bash
# Study 16c: what one ternary scale γ covers in b1.58 at `tiny` (d_model 128, MLP 384): the whole matrix
# (the paper's), each output channel, groups of 128 input features (= the channel at d 128, 3 groups on
# down_proj's 384 inputs) and groups of 32; 3 seeds, lr 3e-3. From the repository root; ~15 min on 2 cores.
set -euo pipefail
W=${W:-workdirs/granularity_tiny}
python -m bitjax.sweep --config configs/transformer.py:quant=b158,size=tiny \
    --grid "model.quant.rules=*_proj: weight.granularity=tensor,*_proj: weight.granularity=channel,*_proj: weight.granularity=group128,*_proj: weight.granularity=group32" \
    --grid seed=0,1,2 --workdir "$W"
cp "$W/results.csv" experiments/granularity_tiny/   # one row per run
python experiments/granularity_tiny/combine.py   # results.md and eval_bpb.png from that csv alone
