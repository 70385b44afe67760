#!/usr/bin/env bash
# The exact commands behind experiments/quant_choice/README.md (from the repository root, ~4.5 h on 2 cores).
set -euo pipefail
W=${W:-workdirs/quant_choice}
# Single-threaded XLA, two runs at a time: 1.5× the throughput of one 2-thread run on 2 cores. Every run
# here uses these flags (a thread count changes float summation order, hence the last digits).
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
run2() { xargs -P 2 -I{} bash -c '{} > /dev/null'; }   # bitjax.main on a finished point returns at once
sweep() { python -m bitjax.sweep --config configs/transformer.py --workdir "$W" --print_commands "$@"; }

# 1. LR tuning at `tiny`, seed 0 (fp and b158: experiments/compare_tiny, 3 seeds over {1e-3, 3e-3, 1e-2}).
sweep --grid size=tiny --grid quant=bitnet,a48,fbi,onebit,pb_llm,rtn2,rtn3,rtn4 --grid optim.lr=1e-3,3e-3 \
    --grid seed=0 | run2
#    Then one LR further on the better side of each (1e-2 where 3e-3 won, 3e-4 where 1e-3 won or tied), and
#    fp at 3e-4 (compare_tiny's grid started at 1e-3). None of these won, so no further step was needed.
sweep --grid size=tiny --grid quant=bitnet,a48,fbi,pb_llm --grid optim.lr=1e-2 --grid seed=0 | run2
sweep --grid size=tiny --grid quant=onebit,rtn2,rtn3,rtn4,fp --grid optim.lr=3e-4 --grid seed=0 | run2
# 2. Each method's best LR of step 1 goes into CPU_LR (configs/transformer.py) by hand (they were already
#    there: the uncommitted seed-0 sweep of stop 21 had found the same). Then 3 seeds of every method at its
#    CPU_LR at `tiny` (seed 0 is step 1's run).
for q in fp b158 bitnet a48 fbi onebit pb_llm rtn2 rtn3 rtn4; do
  sweep --grid size=tiny --grid quant=$q --grid optim.lr=$(python experiments/quant_choice/lr.py $q) --grid seed=0,1,2
done | run2
# 3. LR tuning at `mini`, seed 0: every method at 1e-3 (onebit and rtn2/3/4 only there: at tiny they lost
#    at 3e-3, and every method that ran both at mini did better at 1e-3 but a48), 3e-3 for the others, and
#    3e-4 where 1e-3 won (fp and b158 first; the others as far as the session's time allowed).
{ sweep --grid size=mini --grid quant=fp,b158,bitnet,a48,fbi,onebit,pb_llm,rtn2,rtn3,rtn4 --grid optim.lr=1e-3 \
      --grid seed=0
  sweep --grid size=mini --grid quant=fp,b158,bitnet,a48,fbi,pb_llm --grid optim.lr=3e-3 --grid seed=0
  sweep --grid size=mini --grid quant=fp,b158 --grid optim.lr=3e-4 --grid seed=0; } | run2
# 4. Seeds 1 and 2 of every method at its best LR of step 3 at `mini` (combine.py reads that LR off step
#    3's runs and says which it took).
{ sweep --grid size=mini --grid quant=fp,b158,bitnet,fbi,onebit,pb_llm,rtn2,rtn3,rtn4 --grid optim.lr=1e-3 \
      --grid seed=1,2
  sweep --grid size=mini --grid quant=a48 --grid optim.lr=3e-3 --grid seed=1,2; } | run2
# 5. Architecture-matched FP controls at `mini`: fp with OneBit's output LayerNorm on every projection, and
#    fp with a4.8's ReLU² GLU, at fp's LR (3 seeds), and the ReLU² one at a48's LR too (seed 0).
{ sweep --grid size=mini --grid quant=fp --grid model.quant.rules='*_proj:out_norm=layer' --grid optim.lr=1e-3 \
      --grid seed=0,1,2
  sweep --grid size=mini --grid quant=fp --grid model.activation=relu2 --grid optim.lr=1e-3 --grid seed=0,1,2
  sweep --grid size=mini --grid quant=fp --grid model.activation=relu2 --grid optim.lr=3e-3 --grid seed=0; } | run2
# 6. One row per run, then the tables and plots from that csv alone.
python experiments/quant_choice/collect.py "$W" experiments/quant_choice/results.csv   # one row per run
python experiments/quant_choice/combine.py   # results.md and eval_bpb.png from that csv alone
