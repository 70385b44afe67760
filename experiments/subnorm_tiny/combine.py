"""results.md and eval_bpb.png of subnorm_tiny (b158 `tiny` with vs without BitNet's sub-norms), from
results.csv alone.

    python experiments/subnorm_tiny/combine.py [OUT_DIR]      # default: this directory
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from bitjax import stats, sweep

LABEL = {"False": "b158, no sub-norms (the tiny preset)", "True": "b158 + attn/ffn sub-norms"}


def main(out=HERE):
    rows = sweep.read_csv(os.path.join(HERE, "results.csv"))
    groups = sweep.group_rows(sorted(rows, key=lambda r: (r["sub_norm"], r["seed"])), ["sub_norm"])
    lines = [
        f"{len(rows)} runs; lr 3e-3; mean ± sample std over seeds {', '.join(sorted({r['seed'] for r in rows}))}.",
        "",
    ]
    lines += sweep.table(
        {(LABEL[k],): rs for (k,), rs in groups.items()},
        ["run"],
        [
            ("train_loss", "final train loss", ".4f"),
            ("eval_loss", "eval loss (nats/token)", ".4f"),
            ("eval_bpb", "eval bits/byte", ".4f"),
        ],
    )
    a, b = groups[("True",)], groups[("False",)]
    t = stats.welch(
        [r["eval_bpb"] for r in a], [r["eval_bpb"] for r in b], [r["seed"] for r in a], [r["seed"] for r in b]
    )
    lines += ["", f"- with − without sub-norms (eval bits/byte; Welch t, per-seed signs): {t.text()}"]
    sweep.write_markdown(out, lines)
    plt = sweep.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5, 4))
    keys = ["False", "True"]
    sweep.points_panel(
        ax,
        [LABEL[k].replace(" (", "\n(") for k in keys],
        [[r["eval_bpb"] for r in groups[(k,)]] for k in keys],
        [sweep.color("b158"), sweep.color("b158 + sub-norms", ["b158 + sub-norms"])],  # a spare colour: no method's
    )
    ax.set(xlabel="b158 tiny, lr 3e-3", ylabel="eval bits/byte (lower is better)")
    ax.set_title(f"sub-norms: mean ± std, dots = seeds (n={len(a)}/{len(b)})", fontsize=10)
    sweep.save_fig(fig, os.path.join(out, "eval_bpb.png"))


if __name__ == "__main__":
    main(*sys.argv[1:2])
