"""Gathers run.sh's finished runs into results.csv (one row per run), for combine.py.

    python experiments/quant_choice/collect.py WORKDIR OUT_CSV

Rows: every method × LR × seed of run.sh's grids that finished in WORKDIR, and the architecture-matched
fp controls (quant = fp+out_norm, fp+relu2). source = run.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
from bitjax import sweep

METHODS = ["fp", "b158", "bitnet", "a48", "fbi", "onebit", "pb_llm", "rtn2", "rtn3", "rtn4"]
CONTROLS = {
    "fp+out_norm": [("model.quant.rules", "*_proj:out_norm=layer")],
    "fp+relu2": [("model.activation", "relu2")],
}
LRS, SEEDS = ["3e-4", "1e-3", "3e-3", "1e-2"], ["0", "1", "2"]
COLS = ["size", "quant", "lr", "seed", "train_loss", "eval_loss", "eval_bpb", "source"]


def main(workdir, out_csv):
    os.chdir(ROOT)  # point names hold configs/transformer.py relative to the repository root
    rows = []
    for size in ("tiny", "mini"):
        for label in METHODS + list(CONTROLS):
            q, extra = ("fp", CONTROLS[label]) if label in CONTROLS else (label, [])
            for lr in LRS:
                grid = [("size", [size]), ("quant", [q]), *[(k, [v]) for k, v in extra], ("optim.lr", [lr])]
                for p in sweep.make_points("configs/transformer.py", grid + [("seed", SEEDS)]):
                    if not os.path.isdir(os.path.join(workdir, p.name)):
                        continue
                    r = sweep.point_result(p, workdir)
                    if r is not None:
                        rows.append(
                            dict(
                                size=size,
                                quant=label,
                                lr=lr,
                                seed=p.values["seed"],
                                source="run",
                                **{k: r[k] for k in ("train_loss", "eval_loss", "eval_bpb")},
                            )
                        )
    sweep.write_csv(out_csv, COLS, rows)


if __name__ == "__main__":
    main(*sys.argv[1:3])
