#!/usr/bin/env bash
# BitNet v2 (H-BitLinear: the online Hadamard transform before o_proj's and down_proj's activation
# quantizer) at `tiny`, 3 seeds, beside b158: its 8-bit stage alone (bitnet_v2_a8, all 300 steps) and the
# two-stage W1.58A4 method (bitnet_v2: a8 for 285 steps, then 4-bit activations everywhere). lr 3e-3 for
# all (b158's tuned LR; not re-tuned for v2). From the repository root; ~15 min on 2 cores (two shards).
set -euo pipefail
W=${W:-workdirs/bitnet_v2_tiny}
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
GRID=(--config configs/transformer.py:size=tiny --grid quant=b158,bitnet_v2_a8,bitnet_v2 --grid seed=0,1,2 --workdir "$W")
python -m bitjax.sweep "${GRID[@]}" --shard 0/2 & python -m bitjax.sweep "${GRID[@]}" --shard 1/2; wait
python -m bitjax.sweep "${GRID[@]}" --collect
cp "$W/results.csv" experiments/bitnet_v2_tiny/   # one row per run
python experiments/bitnet_v2_tiny/combine.py     # results.md and eval_bpb.png from that csv alone
