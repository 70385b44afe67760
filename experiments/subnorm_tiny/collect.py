"""One results.csv for subnorm_tiny: b158 `tiny` with sub-norms (the sweep's csv) and without (scale_cpu's).

python experiments/subnorm_tiny/collect.py WORKDIR SCALE_CPU_CSV OUT_CSV
"""

import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bitjax import sweep

COLS = ["sub_norm", "seed", "train_loss", "eval_loss", "eval_bpb"]


def main(workdir, scale_csv, out_csv):
    with open(f"{workdir}/results.csv", newline="") as f:
        rows = [dict(sub_norm="True", **{k: r[k] for k in COLS[1:]}) for r in csv.DictReader(f)]
    with open(scale_csv, newline="") as f:
        rows += [
            dict(sub_norm="False", **{k: r[k] for k in COLS[1:]})
            for r in csv.DictReader(f)
            if r["size"] == "tiny" and r["quant"] == "b158"
        ]
    sweep.write_csv(out_csv, COLS, rows)


if __name__ == "__main__":
    main(*sys.argv[1:4])
