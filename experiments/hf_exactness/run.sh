#!/usr/bin/env bash
# The exact commands behind experiments/hf_exactness/README.md and its committed output (results.md), from
# the repository root (~3 min on 2 cores). Needs torch and transformers (the `hf` extra).
set -euo pipefail
{
  echo "## Quantizers (check.py)"; echo
  python experiments/hf_exactness/check.py
  echo; echo "## Whole models (model_check.py)"; echo
  python experiments/hf_exactness/model_check.py
} > experiments/hf_exactness/results.md
