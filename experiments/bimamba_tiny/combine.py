"""results.md and eval_bpb.png of the Bi-Mamba study, from results.csv alone.

    python experiments/bimamba_tiny/combine.py [OUT_DIR]      # default: this directory

results.csv holds each run's eval bits/byte as the README's prose gave them (3 decimals): the workdirs, and
with them the per-seed train/eval losses and tokens/s, are gone (`source` says so). When run.sh re-runs them,
collect.py rewrites results.csv from the workdirs with every metric (source = run).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from bitjax import stats, sweep

COMPARE = [
    ("Bi-Mamba, from scratch", "FP Mamba-2"),
    ("Bi-Mamba, distilled from FP Mamba-2", "Bi-Mamba, from scratch"),
    ("Bi-Mamba, distilled from FP transformer", "Bi-Mamba, from scratch"),
]


def main(out=HERE):
    rows = sweep.read_csv(os.path.join(HERE, "results.csv"))
    groups = sweep.group_rows(rows, ["setting"])
    names = [g for (g,) in groups]
    bpb = {g: [r["eval_bpb"] for r in groups[(g,)]] for g in names}
    seeds = {g: [r["seed"] for r in groups[(g,)]] for g in names}
    lines = [
        (
            f"{len(rows)} runs; mean ± sample std over seeds {', '.join(sorted({r['seed'] for r in rows}))} "
            "(per-run values recovered at 3 decimals)."
        ),
        "",
    ]
    lines += sweep.table(groups, ["setting"], [("eval_bpb", "eval bits/byte", ".4f")])
    lines += ["", "Comparisons (eval bits/byte; Welch t over independently trained seeds, per-seed signs):", ""]
    for a, b in COMPARE:
        lines.append(f"- {a} − {b}: {stats.welch(bpb[a], bpb[b], seeds[a], seeds[b]).text()}")
    sweep.write_markdown(out, lines)
    plt = sweep.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4.2))
    # FP in fp's grey; the Bi-Mamba settings in spare colours (not the transformer methods' own)
    colors = [sweep.color("fp") if n == "FP Mamba-2" else sweep.color(n, names) for n in names]
    labels = [n.replace(", ", ",\n") for n in names]
    sweep.points_panel(ax, labels, [bpb[n] for n in names], colors, fp=bpb["FP Mamba-2"])
    ax.set(xlabel="Mamba-2 tiny run", ylabel="eval bits/byte (lower is better)")
    ax.set_title(f"Bi-Mamba vs FP Mamba-2: mean ± std, dots = seeds (n={len(bpb[names[0]])})", fontsize=10)
    ax.legend(fontsize=8)
    sweep.save_fig(fig, os.path.join(out, "eval_bpb.png"))


if __name__ == "__main__":
    main(*sys.argv[1:2])
