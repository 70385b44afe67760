"""results.md and eval_bpb.png of the granularity study, from results.csv alone.

    python experiments/granularity_tiny/combine.py [OUT_DIR]      # default: this directory

Each granularity of b1.58's weight scale γ: mean ± sample std over the seeds, and against the paper's
per-tensor γ: Welch's t over the independently trained seeds, per-seed signs.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from bitjax import stats, sweep

METRICS = [
    ("train_loss", "final train loss", ".4f"),
    ("eval_loss", "eval loss (nats/token)", ".4f"),
    ("eval_bpb", "eval bits/byte", ".4f"),
]


def main(out=HERE):
    rows = sweep.read_csv(os.path.join(HERE, "results.csv"))
    for r in rows:  # '*_proj: weight.granularity=channel' → 'channel'
        r["granularity"] = r["model.quant.rules"].rpartition("=")[2]
    groups = sweep.group_rows(rows, ["granularity"])
    names = [g for (g,) in groups]
    bpb = {g: [r["eval_bpb"] for r in groups[(g,)]] for g in names}
    seeds = {g: [r["seed"] for r in groups[(g,)]] for g in names}
    lines = [f"{len(rows)} runs; mean ± sample std over seeds {', '.join(sorted({r['seed'] for r in rows}))}.", ""]
    lines += sweep.table(groups, ["granularity"], METRICS)
    lines += ["", "Each granularity − tensor (eval bits/byte; Welch t, per-seed signs in seed order):", ""]
    for g in names[1:]:
        lines.append(f"- {g} − tensor: {stats.welch(bpb[g], bpb['tensor'], seeds[g], seeds['tensor']).text()}")
    lines.append(f"- by eval bits/byte (groups that differ): {stats.ordering(bpb)}")
    sweep.write_markdown(out, lines)
    plt = sweep.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5.5, 4))
    sweep.points_panel(ax, names, [bpb[g] for g in names], [sweep.color("b158")] * len(names))
    ax.set(xlabel="what one ternary scale γ covers", ylabel="eval bits/byte (lower is better)")
    ax.set_title(f"b158 tiny: mean ± std, dots = seeds (n={len(bpb['tensor'])})", fontsize=10)
    sweep.save_fig(fig, os.path.join(out, "eval_bpb.png"))


if __name__ == "__main__":
    main(*sys.argv[1:2])
