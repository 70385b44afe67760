#!/usr/bin/env bash
# Study 16b: the gradient rule through the weight quantizer (identity STE vs clipped STE vs Bi-Real's
# ApproxSign) for BitNet and BitNet b1.58 at `tiny`, 3 seeds, each method at its configs' LR (3e-3).
# From the repository root; ~25 min on 2 cores.
set -euo pipefail
W=${W:-workdirs/gradient_rule_tiny}
python -m bitjax.sweep --config configs/transformer.py:size=tiny --grid quant=bitnet,b158 \
    --grid model.quant.grad=identity,clipped,approx_sign --grid seed=0,1,2 --workdir "$W"
cp "$W/results.csv" experiments/gradient_rule_tiny/   # one row per run
python experiments/gradient_rule_tiny/combine.py   # results.md and eval_bpb.png from that csv alone
