"""results.md and eval_bpb.png of the gradient-rule study, from results.csv alone.

    python experiments/gradient_rule_tiny/combine.py [OUT_DIR]      # default: this directory

Per method (bitnet, b158): each rule's mean ± sample std over the seeds, and each rule against the
papers' plain STE (`identity`): Welch's t over the independently trained seeds, per-seed signs.
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
    ("tokens_per_s", "tokens/s (shared cores)", ".0f"),
]


def main(out=HERE):
    rows = sweep.read_csv(os.path.join(HERE, "results.csv"))
    groups = sweep.group_rows(rows, ["quant", "model.quant.grad"])
    methods = list(dict.fromkeys(q for q, _ in groups))
    rules = list(dict.fromkeys(g for _, g in groups))
    lines = [f"{len(rows)} runs; mean ± sample std over seeds {', '.join(sorted({r['seed'] for r in rows}))}.", ""]
    lines += sweep.table(groups, ["quant", "model.quant.grad"], METRICS)
    lines += ["", "Each rule − identity (eval bits/byte; Welch t over seeds, per-seed signs in seed order):", ""]
    for q in methods:
        ref = groups[(q, "identity")]
        for g in rules:
            if g == "identity":
                continue
            rs = groups[(q, g)]
            t = stats.welch(
                [r["eval_bpb"] for r in rs],
                [r["eval_bpb"] for r in ref],
                [r["seed"] for r in rs],
                [r["seed"] for r in ref],
            )
            lines.append(f"- {q}, {g} − identity: {t.text()}")
        order = stats.ordering({g: [r["eval_bpb"] for r in groups[(q, g)]] for g in rules})
        lines.append(f"- {q}, rules by eval bits/byte (groups that differ): {order}")
    sweep.write_markdown(out, lines)
    plt = sweep.pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 4), squeeze=False)
    for ax, q in zip(axes[0], methods):
        sweep.points_panel(
            ax, rules, [[r["eval_bpb"] for r in groups[(q, g)]] for g in rules], [sweep.color(q)] * len(rules)
        )
        n = len(groups[(q, rules[0])])
        ax.set(xlabel="gradient rule through the weight quantizer", ylabel="eval bits/byte (lower is better)")
        ax.set_title(f"{q}: mean ± std, dots = seeds (n={n})", fontsize=10)
    sweep.save_fig(fig, os.path.join(out, "eval_bpb.png"))


if __name__ == "__main__":
    main(*sys.argv[1:2])
