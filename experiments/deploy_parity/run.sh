#!/usr/bin/env bash
# The exact commands behind the README's "Parity, measured" table and this directory's results.md, from
# the repository root, after experiments/subnorm_tiny/run.sh (the b158 run with sub-norms, seed 0) and
# experiments/compare_tiny/run.sh (the fp run, lr 1e-3, seed 100). Needs torch + transformers. ~3 min.
# The text is 256 bytes of the README as of commit 65ac4c6 (never seen in training), from offset 4000.
set -euo pipefail
mkdir -p workdirs
T=workdirs/README_at_parity.md   # the path is printed in results.md
git show 65ac4c6:README.md > "$T"
{
  echo 'Output of `bash experiments/deploy_parity/run.sh` (2026-12-03; torch 2.13.0+cpu, transformers 5.24.0, jax 0.10.2; 2-core CPU VM). Runs: b158 `tiny` with sub-norms, lr 3e-3, seed 0 (`experiments/subnorm_tiny`), and fp `tiny`, lr 1e-3, seed 100 (`experiments/compare_tiny`), 300 steps each; text: 256 bytes of README.md at commit 65ac4c6 from offset 4000.'
  echo
  echo '```'
  python experiments/deploy_parity/parity.py --workdir "workdirs/subnorm_tiny/model.sub_norm=True,seed=0" --text "$T"
  python experiments/deploy_parity/parity.py --workdir "workdirs/compare_tiny/quant=fp,optim.lr=1e-3,seed=100" --text "$T"
  echo '```'
} > experiments/deploy_parity/results.md
