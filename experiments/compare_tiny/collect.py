"""One results.csv for compare_tiny: the seed-100 LR tuning (the sweep's own csv) and the reported seeds.

    python experiments/compare_tiny/collect.py SCALE_CPU_CSV OUT_CSV WORKDIR...

role = tune: each WORKDIR/results.csv (fp, b158 × {3e-4, 1e-3, 3e-3, 1e-2}, seed 100: run.sh's two sweeps);
role = report: the `tiny` rows of experiments/scale_cpu/results.csv (seeds 0–2 at the configs' LRs, fp 1e-3
and b158 3e-3).
"""

import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bitjax import sweep

COLS = ["role", "quant", "lr", "seed", "train_loss", "eval_loss", "eval_bpb"]
CONFIG_LR = {"fp": "1e-3", "b158": "3e-3"}  # configs/transformer.py's CPU_LR, what scale_cpu ran


def main(scale_csv, out_csv, *workdirs):
    rows = []
    for workdir in workdirs:
        with open(f"{workdir}/results.csv", newline="") as f:
            rows += [
                dict(role="tune", lr=r["optim.lr"], **{k: r[k] for k in COLS if k not in ("role", "lr")})
                for r in csv.DictReader(f)
            ]
    rows.sort(key=lambda r: (r["quant"] != "fp", float(r["lr"])))
    with open(scale_csv, newline="") as f:
        rows += [
            dict(role="report", lr=CONFIG_LR[r["quant"]], **{k: r[k] for k in COLS if k not in ("role", "lr")})
            for r in csv.DictReader(f)
            if r["size"] == "tiny"
        ]
    sweep.write_csv(out_csv, COLS, rows)


if __name__ == "__main__":
    main(*sys.argv[1:])
