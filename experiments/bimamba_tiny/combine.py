"""One table (results.md) and plots (loss_curves.png, eval_bpb.png) over the two sweeps of run.sh.

    python experiments/bimamba_tiny/combine.py WORKDIR OUT_DIR

Settings: FP Mamba-2 and Bi-Mamba from scratch (WORKDIR/scratch), Bi-Mamba distilled from the FP Mamba-2
and from the FP transformer (WORKDIR/distilled); mean ± std over 3 seeds. Train loss is the label
cross-entropy for every run (a distilled run's objective is its distillation loss; bitjax.sweep reports
its label_loss), so the curves compare.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bitjax import sweep

TEACHERS = {
    "teacher_mamba2": "Bi-Mamba, distilled from FP Mamba-2",
    "teacher_transformer": "Bi-Mamba, distilled from FP transformer",
}


def setting(point: sweep.Point) -> str:
    if "quant" in point.values:
        return {"fp": "FP Mamba-2", "bimamba": "Bi-Mamba, from scratch"}[point.values["quant"]]
    return TEACHERS[os.path.basename(point.values["distill.teacher_workdir"])]


def main(workdir: str, out: str):
    W = workdir
    sweeps = [
        (
            os.path.join(W, "scratch"),
            sweep.make_points("configs/mamba2.py:size=tiny", [("quant", ["fp", "bimamba"]), ("seed", ["0", "1", "2"])]),
        ),
        (
            os.path.join(W, "distilled"),
            sweep.make_points(
                "configs/mamba2.py:quant=bimamba,size=tiny",
                [("distill.teacher_workdir", [os.path.join(W, t) for t in TEACHERS]), ("seed", ["0", "1", "2"])],
            ),
        ),
    ]
    groups: dict[tuple, list[dict]] = {}
    for wd, points in sweeps:
        for p in points:
            r = sweep.point_result(p, wd)
            if r is None:
                raise SystemExit(f"{os.path.join(wd, p.name)} is not finished: run run.sh first")
            groups.setdefault((setting(p),), []).append(r)
    ms = sweep._mean_std  # "mean ± std", as the sweep's own tables
    lines = [
        "| setting | runs | final train loss (label CE) | eval loss (nats/token) | eval bits/byte | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for (name,), rs in groups.items():
        lines.append(
            f"| {name} | {len(rs)} | {ms([r['train_loss'] for r in rs], '.4f')} | "
            f"{ms([r['eval_loss'] for r in rs], '.4f')} | {ms([r['eval_bpb'] for r in rs], '.4f')} | "
            f"{ms([r['tokens_per_s'] for r in rs], '.0f')} |"
        )
        for r in rs:
            print(f"{name:45s} seed {r.get('seed')}: eval bpb {r['eval_bpb']:.4f}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    sweep.plot([r for rs in groups.values() for r in rs], groups, ["setting"], out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
