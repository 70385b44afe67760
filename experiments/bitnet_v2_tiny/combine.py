"""results.md and eval_bpb.png of the BitNet v2 study, from results.csv alone.

    python experiments/bitnet_v2_tiny/combine.py [OUT_DIR]      # default: this directory

Each method (b158, bitnet_v2_a8, bitnet_v2) at `tiny`: mean ± sample std over the seeds; the comparisons
the paper makes (its 8-bit stage matches b1.58; 4-bit activations cost little), as Welch's t over
independently trained seeds with per-seed signs.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from bitjax import stats, sweep

METHODS = ["b158", "bitnet_v2_a8", "bitnet_v2"]
METRICS = [
    ("train_loss", "final train loss", ".4f"),
    ("eval_loss", "eval loss (nats/token)", ".4f"),
    ("eval_bpb", "eval bits/byte", ".4f"),
]  # step times: not here (two sweeps shared the cores); benchmarks/RESULTS.md measures them side by side
COMPARE = [
    ("bitnet_v2_a8", "b158", "the 8-bit stage (Hadamard on o/down inputs) vs b1.58"),
    ("bitnet_v2", "bitnet_v2_a8", "4-bit activations for the last 5% of steps vs staying at 8 bits"),
    ("bitnet_v2", "b158", "W1.58A4 BitNet v2 vs W1.58A8 b1.58"),
]


def main(out=HERE):
    rows = sweep.read_csv(os.path.join(HERE, "results.csv"))
    groups = sweep.group_rows(rows, ["quant"])
    bpb = {m: [r["eval_bpb"] for r in groups[(m,)]] for m in METHODS}
    seeds = {m: [r["seed"] for r in groups[(m,)]] for m in METHODS}
    lines = [f"{len(rows)} runs; mean ± sample std over seeds {', '.join(sorted({r['seed'] for r in rows}))}.", ""]
    lines += sweep.table(groups, ["method"], METRICS)
    lines += ["", "Comparisons (eval bits/byte; Welch t over independently trained seeds, per-seed signs):", ""]
    for a, b, what in COMPARE:
        lines.append(f"- {a} − {b} ({what}): {stats.welch(bpb[a], bpb[b], seeds[a], seeds[b]).text()}")
    lines.append(f"- by eval bits/byte (groups that differ): {stats.ordering(bpb)}")
    sweep.write_markdown(out, lines)
    plt = sweep.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5.5, 4))
    sweep.points_panel(ax, METHODS, [bpb[m] for m in METHODS], [sweep.color(m) for m in METHODS])
    ax.set(xlabel="method (tiny, lr 3e-3, 300 steps)", ylabel="eval bits/byte (lower is better)")
    ax.set_title(f"BitNet v2 vs b1.58: mean ± std, dots = seeds (n={len(bpb['b158'])})", fontsize=10)
    sweep.save_fig(fig, os.path.join(out, "eval_bpb.png"))


if __name__ == "__main__":
    main(*sys.argv[1:2])
