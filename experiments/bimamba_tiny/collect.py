"""Gathers run.sh's two sweeps into results.csv (one row per run), for combine.py.

    python experiments/bimamba_tiny/collect.py WORKDIR OUT_CSV

WORKDIR/scratch: FP Mamba-2 and Bi-Mamba from scratch; WORKDIR/distilled: Bi-Mamba distilled from each
teacher (WORKDIR/teacher_mamba2, WORKDIR/teacher_transformer). train_loss is the label cross-entropy.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
from bitjax import sweep

SEEDS = ["0", "1", "2"]
TEACHERS = {
    "teacher_mamba2": "Bi-Mamba, distilled from FP Mamba-2",
    "teacher_transformer": "Bi-Mamba, distilled from FP transformer",
}
COLS = ["setting", "quant", "teacher", "seed", "train_loss", "eval_loss", "eval_bpb", "tokens_per_s", "source"]


def main(workdir, out_csv):
    os.chdir(ROOT)
    scratch = sweep.make_points("configs/mamba2.py:size=tiny", [("quant", ["fp", "bimamba"]), ("seed", SEEDS)])
    distilled = sweep.make_points(
        "configs/mamba2.py:quant=bimamba,size=tiny",
        [("distill.teacher_workdir", [os.path.join(workdir, t) for t in TEACHERS]), ("seed", SEEDS)],
    )
    rows = []
    for sub, points in (("scratch", scratch), ("distilled", distilled)):
        for p in points:
            r = sweep.point_result(p, os.path.join(workdir, sub))
            if r is None:
                raise SystemExit(f"{os.path.join(workdir, sub, p.name)} is not finished: run run.sh first")
            if "quant" in p.values:
                setting = {"fp": "FP Mamba-2", "bimamba": "Bi-Mamba, from scratch"}[p.values["quant"]]
                quant, teacher = p.values["quant"], ""
            else:
                teacher = os.path.basename(p.values["distill.teacher_workdir"])
                setting, quant = TEACHERS[teacher], "bimamba"
            rows.append(
                dict(
                    setting=setting,
                    quant=quant,
                    teacher=teacher,
                    seed=p.values["seed"],
                    source="run",
                    **{k: r[k] for k in ("train_loss", "eval_loss", "eval_bpb", "tokens_per_s")},
                )
            )
    sweep.write_csv(out_csv, COLS, rows)


if __name__ == "__main__":
    main(*sys.argv[1:3])
