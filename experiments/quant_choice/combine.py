"""The tables (results.md, results.csv) and plots (eval_bpb.png, loss_curves.png) of run.sh's runs.

    python experiments/quant_choice/combine.py WORKDIR OUT_DIR

Reads WORKDIR/<point> for every point of run.sh's two steps: the LR tuning at `tiny` (seed 0) and the
three seeds of each method at its CPU_LR (configs/transformer.py) at `tiny` and `mini`. Fails naming the
first unfinished point.
"""

import csv
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lr import ROOT, cpu_lr  # noqa: E402

sys.path.insert(0, ROOT)
from bitjax import sweep  # noqa: E402

METHODS = ["fp", "b158", "bitnet", "a48", "fbi", "onebit", "pb_llm", "rtn2", "rtn3", "rtn4"]
TUNING_LRS = ["3e-4", "1e-3", "3e-3", "1e-2"]  # run.sh step 1: {1e-3, 3e-3}, then one more past the better
SIZES = ["tiny", "mini"]
SEEDS = ["0", "1", "2"]
WHAT = {"fp": "full precision", "b158": "ternary absmean W, int8 absmax acts",
        "bitnet": "sign(W − mean W)·mean|W|, int8 acts after a LayerNorm", "a48": "b158 → 4-bit absmean/sparse acts (ReLU² GLU)",
        "fbi": "α ⊙ sign W + β, learnable per input feature", "onebit": "g ⊙ sign W ⊙ h (SVID init), output LayerNorm",
        "pb_llm": "10% salient weights 8-bit (frozen), the rest α·sign W", "rtn2": "2-bit GPTQ grid (QAT)",
        "rtn3": "3-bit GPTQ grid (QAT)", "rtn4": "4-bit GPTQ grid (QAT)"}


def results(workdir, size, method, lr, seeds, partial=False):
    """The finished points' results; a missing one is an error unless `partial` (then it is left out)."""
    points = sweep.make_points("configs/transformer.py", [("size", [size]), ("quant", [method]),
                                                          ("optim.lr", [lr]), ("seed", seeds)])
    out = []
    for p in points:
        r = sweep.point_result(p, workdir)
        if r is None and not partial:
            raise SystemExit(f"{os.path.join(workdir, p.name)} is not finished: run run.sh first")
        out += [r] if r is not None else []
    return out


def ms(xs, f=".4f"):
    return f"{statistics.mean(xs):{f}} ± {statistics.stdev(xs):{f}}" if len(xs) > 1 else format(xs[0], f)


def main(workdir, out):
    os.chdir(ROOT)  # the point names hold configs/transformer.py relative to the repository root
    lines = ["## LR tuning at `tiny` (seed 0): eval bits/byte", "",
             "| method | " + " | ".join(f"lr {lr}" for lr in TUNING_LRS) + " | chosen (CPU_LR) |",
             "|---|" + "---|" * (len(TUNING_LRS) + 1)]
    for m in METHODS:
        cells = [f"{results(workdir, 'tiny', m, lr, ['0'])[0]['eval_bpb']:.4f}"
                 if os.path.isdir(os.path.join(workdir, f"size=tiny,quant={m},optim.lr={lr},seed=0")) else ""
                 for lr in TUNING_LRS]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {cpu_lr(m)} |")

    rows, groups = [], {}
    for size in SIZES:
        for m in METHODS:
            rs = results(workdir, size, m, cpu_lr(m), SEEDS, partial=size != "tiny")
            if not rs:
                raise SystemExit(f"no finished {size} run of {m} in {workdir}: run run.sh first")
            groups[(size, m)] = rs
            rows += [{"size": size, "quant": m, "lr": cpu_lr(m), "seed": r["seed"], "train_loss": r["train_loss"],
                      "eval_loss": r["eval_loss"], "eval_bpb": r["eval_bpb"], "tokens_per_s": r["tokens_per_s"]}
                     for r in rs]
    bpb = {k: [r["eval_bpb"] for r in rs] for k, rs in groups.items()}
    lines += ["", "## Each method at its tuned LR: eval bits/byte (mean ± std over n seeds; Δ = mean − fp's mean)",
              "", "| method | what | lr | " + " | ".join(f"{s} | n | Δ {s}" for s in SIZES) + " |",
              "|---|---|---|" + "---|---|---|" * len(SIZES)]
    for m in METHODS:
        cells = []
        for s in SIZES:
            d = statistics.mean(bpb[(s, m)]) - statistics.mean(bpb[(s, "fp")])
            cells += [ms(bpb[(s, m)]), str(len(bpb[(s, m)])), "" if m == "fp" else f"{d:+.3f}"]
        lines.append(f"| {m} | {WHAT[m]} | {cpu_lr(m)} | " + " | ".join(cells) + " |")
    lines += ["", "Final train loss and eval loss (nats/token), mean ± std over the same seeds:", "",
              "| method | " + " | ".join(f"{s} train | {s} eval" for s in SIZES) + " |",
              "|---|" + "---|---|" * len(SIZES)]
    for m in METHODS:
        cells = []
        for s in SIZES:
            cells += [ms([r["train_loss"] for r in groups[(s, m)]]), ms([r["eval_loss"] for r in groups[(s, m)]])]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("\n".join(lines))
    plot(groups, bpb, out)


def plot(groups, bpb, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SIZES), figsize=(11, 4.2))
    for ax, s in zip(axes, SIZES):
        means = [statistics.mean(bpb[(s, m)]) for m in METHODS]
        stds = [statistics.stdev(bpb[(s, m)]) if len(bpb[(s, m)]) > 1 else 0.0 for m in METHODS]
        ax.axhspan(means[0] - stds[0], means[0] + stds[0], color="grey", alpha=0.2, lw=0, label="fp ± std")
        ax.errorbar(range(len(METHODS)), means, yerr=stds, fmt="o", capsize=4)
        for i, m in enumerate(METHODS):  # the seeds themselves: 3 runs are too few to hide behind a bar
            ax.plot([i] * len(bpb[(s, m)]), bpb[(s, m)], ".", color="k", ms=3)
        ax.set_xticks(range(len(METHODS)), METHODS, rotation=30, ha="right")
        n = sorted({len(bpb[(s, m)]) for m in METHODS})
        ax.set(title=f"{s}: eval bits/byte (mean ± std, {'/'.join(map(str, n))} seeds)", ylabel="eval bits/byte")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "eval_bpb.png"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(SIZES), figsize=(11, 4.2), sharey=True)
    for ax, s in zip(axes, SIZES):
        for m in METHODS:
            curves = [dict(r["curve"]) for r in groups[(s, m)]]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            ax.plot(steps, [statistics.mean(c[t] for c in curves) for t in steps], lw=1.1, label=m,
                    ls="-" if m in ("fp", "b158") else "--")
        ax.set(title=f"{s}: train loss, mean over seeds", xlabel="step", ylabel="train loss (nats/token)",
               ylim=(1.5, 3.5))
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss_curves.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(*sys.argv[1:3])
