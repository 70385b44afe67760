"""The tables (results.md, results.csv) and plots (eval_bpb.png, loss_curves.png) of run.sh's runs.

    python experiments/quant_choice/combine.py WORKDIR OUT_DIR

Reads WORKDIR/<point> for run.sh's steps: the LR tuning at `tiny` (seed 0); the seeds of each method at
its CPU_LR (configs/transformer.py) at `tiny` (all three required) and `mini` (those that finished); the
seed-0 runs at 1e-3 and 3e-3 at `mini`. Fails naming the first missing `tiny` point.
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
MINI_LRS = ["1e-3", "3e-3"]  # run.sh step 3
SEEDS = ["0", "1", "2"]
WHAT = {"fp": "full precision", "b158": "ternary absmean W, int8 absmax acts",
        "bitnet": "sign(W − mean W)·β (β = mean abs W), int8 acts after a LayerNorm", "a48": "b158 → 4-bit absmean/sparse acts (ReLU² GLU)",
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
    return sweep._mean_std(xs, f)  # 'mean ± std', or the value alone for one run: as the sweep's tables


def seed0_bpb(workdir, size, method, lr):
    """Eval bits/byte of the seed-0 point, None if that point never started (a half-run one is an error)."""
    name = sweep.safe_name({"size": size, "quant": method, "optim.lr": lr, "seed": "0"})
    if not os.path.isdir(os.path.join(workdir, name)):
        return None
    return results(workdir, size, method, lr, ["0"])[0]["eval_bpb"]


def lr_table(bpb0, lrs, chosen):
    """Markdown rows: each method's seed-0 eval bits/byte at every LR of `lrs` that ran; chosen[m] last.

    bpb0: {(method, lr): eval bits/byte or None}."""
    lines = ["| method | " + " | ".join(f"lr {lr}" for lr in lrs) + " | chosen |", "|---|" + "---|" * (len(lrs) + 1)]
    for m in METHODS:
        cells = ["" if bpb0[(m, lr)] is None else f"{bpb0[(m, lr)]:.4f}" for lr in lrs]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {chosen[m]} |")
    return lines


def main(workdir, out):
    os.chdir(ROOT)  # the point names hold configs/transformer.py relative to the repository root
    tiny0 = {(m, lr): seed0_bpb(workdir, "tiny", m, lr) for m in METHODS for lr in TUNING_LRS}
    mini0 = {(m, lr): seed0_bpb(workdir, "mini", m, lr) for m in METHODS for lr in MINI_LRS}
    tuned = {m: cpu_lr(m) for m in METHODS}
    # run.sh step 3: the better of the LRs each method ran at `mini` with seed 0
    mini_best = {m: min((lr for lr in MINI_LRS if mini0[(m, lr)] is not None), key=lambda lr: mini0[(m, lr)])
                 for m in METHODS}
    lines = ["## LR tuning at `tiny` (seed 0): eval bits/byte", ""]
    lines += lr_table(tiny0, TUNING_LRS, tuned)
    lines += ["", "## The same two LRs at `mini` (seed 0): eval bits/byte", ""]
    lines += lr_table(mini0, MINI_LRS, mini_best)

    rows, groups = [], {}
    for key, size, lr_of, seeds in [("tiny", "tiny", tuned, SEEDS), ("mini", "mini", tuned, SEEDS),
                                    ("mini, best LR", "mini", mini_best, ["0"])]:
        for m in METHODS:
            rs = results(workdir, size, m, lr_of[m], seeds, partial=size != "tiny")
            if not rs:
                raise SystemExit(f"no finished {size} run of {m} in {workdir}: run run.sh first")
            groups[(key, m)] = rs
            rows += [{"size": size, "quant": m, "lr": lr_of[m], "seed": r["seed"], "train_loss": r["train_loss"],
                      "eval_loss": r["eval_loss"], "eval_bpb": r["eval_bpb"]} for r in rs]
    rows = list({(r["size"], r["quant"], r["lr"], r["seed"]): r for r in rows}.values())
    bpb = {k: [r["eval_bpb"] for r in rs] for k, rs in groups.items()}
    keys = ["tiny", "mini", "mini, best LR"]
    lines += ["", "## Each method: eval bits/byte (mean ± std over n seeds; Δ = mean − fp's mean in the same column)",
              "", "`tiny` and `mini`: each method at its LR tuned at `tiny` (CPU_LR); `mini, best LR`: at the "
              "better of 1e-3 and 3e-3 at `mini` (seed 0).", "",
              "| method | what | CPU_LR | tiny | n | Δ | mini | n | Δ | mini, best LR | lr | Δ |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in METHODS:
        cells = []
        for k in keys:
            d = statistics.mean(bpb[(k, m)]) - statistics.mean(bpb[(k, "fp")])
            delta = "" if m == "fp" else f"{d:+.3f}"
            cells += [ms(bpb[(k, m)]), mini_best[m] if k == "mini, best LR" else str(len(bpb[(k, m)])), delta]
        lines.append(f"| {m} | {WHAT[m]} | {tuned[m]} | " + " | ".join(cells) + " |")
    lines += ["", "Final train loss and eval loss (nats/token), mean ± std over the same seeds:", "",
              "| method | " + " | ".join(f"{k} train | {k} eval" for k in keys) + " |",
              "|---|" + "---|---|" * len(keys)]
    for m in METHODS:
        cells = []
        for k in keys:
            cells += [ms([r["train_loss"] for r in groups[(k, m)]]), ms([r["eval_loss"] for r in groups[(k, m)]])]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("\n".join(lines))
    plot(groups, bpb, keys, out)


def plot(groups, bpb, keys, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(15, 4.4))
    for ax, s in zip(axes, keys):
        means = [statistics.mean(bpb[(s, m)]) for m in METHODS]
        stds = [statistics.stdev(bpb[(s, m)]) if len(bpb[(s, m)]) > 1 else 0.0 for m in METHODS]
        ax.axhspan(means[0] - stds[0], means[0] + stds[0], color="grey", alpha=0.2, lw=0, label="fp ± std")
        ax.errorbar(range(len(METHODS)), means, yerr=stds, fmt="o", capsize=4)
        for i, m in enumerate(METHODS):  # the seeds themselves: 3 runs are too few to hide behind a bar
            ax.plot([i] * len(bpb[(s, m)]), bpb[(s, m)], ".", color="k", ms=3)
        ax.set_xticks(range(len(METHODS)), METHODS, rotation=30, ha="right")
        n = sorted({len(bpb[(s, m)]) for m in METHODS})
        ax.set(title=f"{s}: eval bits/byte ({'/'.join(map(str, n))} seed{'s' if n != [1] else ''})", ylabel="eval bits/byte")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "eval_bpb.png"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(keys), figsize=(15, 4.4), sharey=True)
    for ax, s in zip(axes, keys):
        for m in METHODS:
            steps, ys = sweep.seed_curves(groups[(s, m)])
            ax.plot(steps, [statistics.mean(col) for col in zip(*ys)], lw=1.1, label=m,
                    ls="-" if m in ("fp", "b158") else "--")
        ax.set(title=f"{s}: train loss, mean over seeds", xlabel="step", ylabel="train loss (nats/token)",
               ylim=(1.5, 3.5))
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss_curves.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(*sys.argv[1:3])
