#!/usr/bin/env bash
# b158 `tiny` with BitNet's sub-norms (attn_sub_norm, ffn_sub_norm) vs without (the tiny preset), at the
# preset's lr 3e-3, seeds 0–2. The runs without are experiments/scale_cpu's tiny b158 rows (same config but
# model.sub_norm). From the repository root; ~8 min on 2 cores.
set -euo pipefail
W=${W:-workdirs/subnorm_tiny}
python -m bitjax.sweep --config configs/transformer.py:quant=b158,size=tiny --grid model.sub_norm=True \
    --grid seed=0,1,2 --workdir "$W"
python experiments/subnorm_tiny/collect.py "$W" experiments/scale_cpu/results.csv experiments/subnorm_tiny/results.csv
python experiments/subnorm_tiny/combine.py experiments/subnorm_tiny
