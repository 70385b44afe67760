"""Gathers run.sh's PTQ results and quant_choice's QAT runs into results.csv, for combine.py.

    python experiments/ptq_vs_qat_tiny/collect.py QUANT_CHOICE_WORKDIR PTQ_WORKDIR OUT_CSV

PTQ_WORKDIR/seed=S/<method><bits>/ptq.json: the PTQ of the FP run of seed S (fp_eval_bpb: that FP run's
eval). QAT rows: experiments/quant_choice's `tiny` runs of rtn4/3/2, b158 and fbi at their tuned LRs.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
from bitjax import sweep

SEEDS = ["0", "1", "2"]
PTQ = {"rtn": (2, 3, 4), "gptq": (2, 3, 4), "billm": (1,)}
QAT = {
    "4": ("rtn4", "1e-3"),
    "3": ("rtn3", "1e-3"),
    "2": ("rtn2", "1e-3"),
    "1.58": ("b158", "3e-3"),
    "1": ("fbi", "3e-3"),
}
COLS = ["kind", "method", "bits", "seed", "eval_bpb", "eval_loss", "fp_eval_bpb"]


def main(qc_workdir, ptq_workdir, out_csv):
    os.chdir(ROOT)
    rows = []
    for m, bits in PTQ.items():
        for b in bits:
            for s in SEEDS:
                path = os.path.join(ptq_workdir, f"seed={s}", f"{m}{b}", "ptq.json")
                if not os.path.exists(path):
                    raise SystemExit(f"{path} is missing: run run.sh first")
                with open(path) as fh:
                    r = json.load(fh)
                rows.append(dict(kind="ptq", method=m, bits=b, seed=s, **{k: r[k] for k in COLS[4:]}))
    for b, (m, lr) in QAT.items():
        grid = [("size", ["tiny"]), ("quant", [m]), ("optim.lr", [lr]), ("seed", SEEDS)]
        for p in sweep.make_points("configs/transformer.py", grid):
            r = sweep.point_result(p, qc_workdir)
            if r is None:
                raise SystemExit(f"{os.path.join(qc_workdir, p.name)} is not finished: run quant_choice's run.sh")
            rows.append(
                dict(
                    kind="qat",
                    method=m,
                    bits=b,
                    seed=p.values["seed"],
                    eval_bpb=r["eval_bpb"],
                    eval_loss=r["eval_loss"],
                )
            )
    sweep.write_csv(out_csv, COLS, rows)


if __name__ == "__main__":
    main(*sys.argv[1:4])
