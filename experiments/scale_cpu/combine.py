"""results.md and eval_bpb.png of the CPU scale study, from results.csv alone.

    python experiments/scale_cpu/combine.py [OUT_DIR]      # default: this directory

Per size: fp and b158 eval bits/byte (mean ± sample std over seeds) and b158 − fp with Welch's t over
the independently trained seeds and per-seed signs; the plot has size on x and one line per method.
"""

import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from bitjax import stats, sweep

PARAMS = {"nano": 0.15, "tiny": 0.89, "mini": 4.92}  # millions (configs/transformer.py's presets)
METRICS = [
    ("train_loss", "final train loss", ".4f"),
    ("eval_loss", "eval loss (nats/token)", ".4f"),
    ("eval_bpb", "eval bits/byte", ".4f"),
    ("tokens_per_s", "tokens/s (shared cores)", ".0f"),
    ("step_time_vs_fp", "step time / fp's", ".3f"),
]


def main(out=HERE):
    rows = sweep.read_csv(os.path.join(HERE, "results.csv"))
    groups = sweep.group_rows(rows, ["size", "quant"])
    sizes = list(dict.fromkeys(s for s, _ in groups))
    methods = list(dict.fromkeys(q for _, q in groups))
    bpb = {k: [r["eval_bpb"] for r in rs] for k, rs in groups.items()}
    seeds = {k: [r["seed"] for r in rs] for k, rs in groups.items()}
    lines = [f"{len(rows)} runs; mean ± sample std over seeds {', '.join(sorted({r['seed'] for r in rows}))}.", ""]
    lines += sweep.table(groups, ["size", "quant"], METRICS)
    lines += [
        "",
        "b158 − fp per size (eval bits/byte; Welch t, per-seed signs in seed order):",
        "",
        "| size | params (M) | fp | b158 | b158 − fp |",
        "|---|---|---|---|---|",
    ]
    for s in sizes:
        t = stats.welch(bpb[(s, "b158")], bpb[(s, "fp")], seeds[(s, "b158")], seeds[(s, "fp")])
        lines.append(
            f"| {s} | {PARAMS[s]} | {stats.mean_std(bpb[(s, 'fp')])} | {stats.mean_std(bpb[(s, 'b158')])} | {t.text()} |"
        )
    sweep.write_markdown(out, lines)
    plt = sweep.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, q in enumerate(methods):
        xs = [PARAMS[s] * (1 + 0.04 * (i - 0.5)) for s in sizes]  # side by side, not on top of each other
        ys = [bpb[(s, q)] for s in sizes]
        ax.errorbar(
            xs,
            [statistics.mean(y) for y in ys],
            yerr=[statistics.stdev(y) for y in ys],
            color=sweep.color(q),
            marker="o",
            capsize=4,
            label=f"{q} (n={len(ys[0])} per size)",
        )
        for x, y in zip(xs, ys):
            ax.plot([x] * len(y), y, ".", color="k", ms=3)
    ax.set_xscale("log")
    ax.set_xticks([PARAMS[s] for s in sizes], [f"{s}\n{PARAMS[s]}M" for s in sizes])
    ax.minorticks_off()
    ax.set(xlabel="model size (parameters, log scale)", ylabel="eval bits/byte (lower is better)")
    ax.set_title("fp vs b158, 300 steps, mean ± std, dots = seeds", fontsize=10)
    ax.legend(fontsize=8)
    sweep.save_fig(fig, os.path.join(out, "eval_bpb.png"))


if __name__ == "__main__":
    main(*sys.argv[1:2])
