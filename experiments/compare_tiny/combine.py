"""results.md and eval_bpb.png of compare_tiny (fp vs b158 at `tiny`, LRs chosen on an unreported seed),
from results.csv alone.

    python experiments/compare_tiny/combine.py [OUT_DIR]      # default: this directory

role = tune: seed 100 over {3e-4, 1e-3, 3e-3, 1e-2}; each method's LR is the lowest eval bits/byte there. role =
report: seeds 0–2 at the configs' LRs; if seed 100 chose another LR the table says so (it would need runs).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from bitjax import stats, sweep

METHODS, LRS = ["fp", "b158"], ["3e-4", "1e-3", "3e-3", "1e-2"]


def main(out=HERE):
    rows = sweep.read_csv(os.path.join(HERE, "results.csv"))
    tune = {(r["quant"], r["lr"]): r["eval_bpb"] for r in rows if r["role"] == "tune"}
    rep = sweep.group_rows([r for r in rows if r["role"] == "report"], ["quant", "lr"])
    chosen = {m: min(LRS, key=lambda lr: tune[(m, lr)]) for m in METHODS}
    tseed = sorted({r["seed"] for r in rows if r["role"] == "tune"})
    lines = [
        f"## LR tuning on seed {', '.join(tseed)} (not reported): eval bits/byte after 300 steps",
        "",
        "| method | " + " | ".join(f"lr {lr}" for lr in LRS) + " | chosen (lowest) | reported LR (configs) |",
        "|---|" + "---|" * (len(LRS) + 2),
    ]
    for m in METHODS:
        rlr = next(lr for q, lr in rep if q == m)
        same = "" if rlr == chosen[m] else " (differs: the reported seeds are not at the chosen LR)"
        lines.append(f"| {m} | " + " | ".join(f"{tune[(m, lr)]:.4f}" for lr in LRS) + f" | {chosen[m]} | {rlr}{same} |")
    lines += ["", "## Reported: seeds 0–2 at the chosen LRs", ""]
    lines += sweep.table(
        rep,
        ["method", "lr"],
        [
            ("train_loss", "final train loss", ".4f"),
            ("eval_loss", "eval loss (nats/token)", ".4f"),
            ("eval_bpb", "eval bits/byte", ".4f"),
        ],
    )
    b, f = rep[("b158", chosen["b158"])], rep[("fp", chosen["fp"])]
    t = stats.welch(
        [r["eval_bpb"] for r in b], [r["eval_bpb"] for r in f], [r["seed"] for r in b], [r["seed"] for r in f]
    )
    lines += ["", f"- b158 − fp, each at its chosen LR (Welch t, per-seed signs): {t.text()}"]
    for lr in LRS:
        t1 = tune[("b158", lr)] - tune[("fp", lr)]
        lines.append(f"- b158 − fp at one shared LR {lr}, seed {tseed[0]} (n = 1, untested): {t1:+.4f}")
    sweep.write_markdown(out, lines)
    plt = sweep.pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    for m in METHODS:
        ax.plot(
            [float(lr) for lr in LRS],
            [tune[(m, lr)] for lr in LRS],
            "o-",
            color=sweep.color(m),
            label=f"{m} (seed {tseed[0]})",
        )
    ax.set_xscale("log")
    ax.set(xlabel="peak learning rate (log scale)", ylabel="eval bits/byte (lower is better)")
    ax.set_title(f"LR tuning on seed {tseed[0]} (not reported)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    sweep.points_panel(
        ax,
        [f"{m} (lr {chosen[m]})" for m in METHODS],
        [[r["eval_bpb"] for r in rep[(m, chosen[m])]] for m in METHODS],
        [sweep.color(m) for m in METHODS],
        fp=[r["eval_bpb"] for r in f],
    )
    ax.set(xlabel="method at its chosen LR", ylabel="eval bits/byte (lower is better)")
    ax.set_title(f"reported seeds 0–2: mean ± std, dots = seeds (n={len(f)})", fontsize=10)
    ax.legend(fontsize=8)
    sweep.save_fig(fig, os.path.join(out, "eval_bpb.png"))


if __name__ == "__main__":
    main(*sys.argv[1:2])
