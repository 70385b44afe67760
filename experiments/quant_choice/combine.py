"""The tables (results.md, results.csv) and plots (eval_bpb.png, loss_curves.png) of run.sh's runs.

    python experiments/quant_choice/combine.py WORKDIR OUT_DIR

Reads WORKDIR/<point> for run.sh's steps: the LR tuning at `tiny` (seed 0) and the 3 seeds of each method
at its CPU_LR (configs/transformer.py) there (all required); the LR tuning at `mini` (seed 0), the seeds of
each method at its best LR of that tuning, and the architecture-matched FP controls (those that finished;
the tables give n). Fails naming the first missing `tiny` point.
"""

import csv
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lr import ROOT, cpu_lr

sys.path.insert(0, ROOT)
from bitjax import sweep

METHODS = ["fp", "b158", "bitnet", "a48", "fbi", "onebit", "pb_llm", "rtn2", "rtn3", "rtn4"]
TUNING_LRS = ["3e-4", "1e-3", "3e-3", "1e-2"]  # run.sh step 1: {1e-3, 3e-3}, then one more past the better
MINI_LRS = ["3e-4", "1e-3", "3e-3"]  # run.sh step 3
SEEDS = ["0", "1", "2"]
# run.sh step 5: fp with one of OneBit's / a4.8's architecture changes: {label: (grid extras, what)}
CONTROLS = {
    "fp+out_norm": (
        [("model.quant.rules", "*_proj:out_norm=layer")],
        "fp + OneBit's affine-free LayerNorm on every projection's output",
    ),
    "fp+relu2": ([("model.activation", "relu2")], "fp + a4.8's ReLU² GLU"),
}
CONTROL_OF = {"onebit": "fp+out_norm", "a48": "fp+relu2"}
CONTROL_ROWS = [
    ("fp", "1e-3"),
    ("fp+out_norm", "1e-3"),
    ("onebit", "1e-3"),
    ("fp+relu2", "1e-3"),
    ("a48", "1e-3"),
    ("fp", "3e-3"),
    ("fp+relu2", "3e-3"),
    ("a48", "3e-3"),
]
WHAT = {
    "fp": "full precision",
    "b158": "ternary absmean W, int8 absmax acts",
    "bitnet": "sign(W − mean W)·β (β = mean abs W), int8 acts after a LayerNorm",
    "a48": "b158 → 4-bit absmean/sparse acts (ReLU² GLU)",
    "fbi": "α ⊙ sign W + β, learnable per input feature",
    "onebit": "g ⊙ sign W ⊙ h (SVID init), output LayerNorm",
    "pb_llm": "10% salient weights 8-bit (frozen), the rest α·sign W",
    "rtn2": "2-bit GPTQ grid (QAT)",
    "rtn3": "3-bit GPTQ grid (QAT)",
    "rtn4": "4-bit GPTQ grid (QAT)",
}


def results(workdir, grid, seeds, partial=False):
    """The finished points of `grid` ((key, value) pairs, run.sh's order) × seeds; a missing one is an
    error unless `partial` (then it is left out)."""
    points = sweep.make_points("configs/transformer.py", [(k, [v]) for k, v in grid] + [("seed", seeds)])
    out = []
    for p in points:
        r = sweep.point_result(p, workdir)
        if r is None and not partial:
            raise SystemExit(f"{os.path.join(workdir, p.name)} is not finished: run run.sh first")
        out += [r] if r is not None else []
    return out


def point(size, method, lr, extra=()):
    return [("size", size), ("quant", method), *extra, ("optim.lr", lr)]


def ms(xs, f=".4f"):
    return sweep._mean_std(xs, f)  # 'mean ± std', or the value alone for one run: as the sweep's tables


def seed0_bpb(workdir, size, method, lr):
    """Eval bits/byte of the seed-0 point, None if that point never started (or, at `mini`, is unfinished;
    a half-run `tiny` one is an error)."""
    name = sweep.safe_name({"size": size, "quant": method, "optim.lr": lr, "seed": "0"})
    if not os.path.isdir(os.path.join(workdir, name)):
        return None
    rs = results(workdir, point(size, method, lr), ["0"], partial=size != "tiny")
    return rs[0]["eval_bpb"] if rs else None


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
    # run.sh step 3: each method's best seed-0 LR at `mini`, where its seeds 1 and 2 ran
    mini_best = {
        m: min((lr for lr in MINI_LRS if mini0[(m, lr)] is not None), key=lambda lr: mini0[(m, lr)]) for m in METHODS
    }
    lines = ["## LR tuning at `tiny` (seed 0): eval bits/byte", ""]
    lines += lr_table(tiny0, TUNING_LRS, tuned)
    lines += ["", "## LR tuning at `mini` (seed 0): eval bits/byte", ""]
    lines += lr_table(mini0, MINI_LRS, mini_best)

    rows, groups = [], {}

    def collect(key, label, grid, seeds, partial, required=True):
        rs = results(workdir, grid, seeds, partial=partial)
        if not rs and not required:
            return
        if not rs:
            raise SystemExit(f"no finished run of {grid} in {workdir}: run run.sh first")
        groups[(key, label)] = rs
        g = dict(grid)  # label: the method, or the control's name (fp + an architecture change)
        rows.extend(
            {
                "size": g["size"],
                "quant": label,
                "lr": g["optim.lr"],
                "seed": r["seed"],
                "train_loss": r["train_loss"],
                "eval_loss": r["eval_loss"],
                "eval_bpb": r["eval_bpb"],
            }
            for r in rs
        )

    for m in METHODS:
        collect("tiny", m, point("tiny", m, tuned[m]), SEEDS, partial=False)
        collect("mini", m, point("mini", m, mini_best[m]), SEEDS, partial=True)
    for label, lr in CONTROL_ROWS:  # fp, its architecture variants, and the methods they are controls for
        extra = CONTROLS[label][0] if label in CONTROLS else []
        collect(
            ("controls", lr),
            label,
            point("mini", "fp" if label in CONTROLS else label, lr, extra),
            SEEDS,
            partial=True,
            required=False,
        )
    rows = list({(r["size"], r["quant"], r["lr"], r["seed"]): r for r in rows}.values())
    bpb = {k: [r["eval_bpb"] for r in rs] for k, rs in groups.items()}
    mean = lambda k, m: statistics.mean(bpb[(k, m)])
    keys = ["tiny", "mini"]
    lines += [
        "",
        "## Each method at its tuned LR: eval bits/byte (mean ± std over n seeds; Δ = mean − fp's mean)",
        "",
        "`tiny`: at CPU_LR (tuned at `tiny`); `mini`: at the LR tuned at `mini` (seed 0, table above).",
        "",
        "| method | what | tiny lr | tiny | n | Δ | mini lr | mini | n | Δ |",
        "|---|" + "---|" * 9,
    ]
    for m in METHODS:
        cells = []
        for k, lr in (("tiny", tuned[m]), ("mini", mini_best[m])):
            delta = "" if m == "fp" else f"{mean(k, m) - mean(k, 'fp'):+.3f}"
            cells += [lr, ms(bpb[(k, m)]), str(len(bpb[(k, m)])), delta]
        lines.append(f"| {m} | {WHAT[m]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        (
            "## Architecture-matched FP controls at `mini`: eval bits/byte (Δ fp: mean − fp's mean at the same "
            "lr; Δ control: the method's mean − its control's, fp with the same architecture, at the same lr)"
        ),
        "",
        "| run | what | lr | n | eval bits/byte | Δ fp | Δ control |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, lr in CONTROL_ROWS:
        k = ("controls", lr)
        if (k, label) not in bpb:
            continue
        what = CONTROLS[label][1] if label in CONTROLS else WHAT[label]
        d_fp = "" if label == "fp" else f"{mean(k, label) - mean(k, 'fp'):+.3f}"
        ctl = CONTROL_OF.get(label)
        d_ctl = f"{mean(k, label) - mean(k, ctl):+.3f} (vs {ctl})" if (k, ctl) in bpb else ""
        lines.append(f"| {label} | {what} | {lr} | {len(bpb[(k, label)])} | {ms(bpb[(k, label)])} | {d_fp} | {d_ctl} |")
    lines += [
        "",
        "Final train loss and eval loss (nats/token), mean ± std over the same seeds:",
        "",
        "| method | " + " | ".join(f"{k} train | {k} eval" for k in keys) + " |",
        "|---|" + "---|---|" * len(keys),
    ]
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

    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(16, 4.6))
    for ax, s in zip(axes, keys):
        means = [statistics.mean(bpb[(s, m)]) for m in METHODS]
        stds = [statistics.stdev(bpb[(s, m)]) if len(bpb[(s, m)]) > 1 else 0.0 for m in METHODS]
        ax.axhspan(means[0] - stds[0], means[0] + stds[0], color="grey", alpha=0.2, lw=0, label="fp ± std")
        ax.errorbar(range(len(METHODS)), means, yerr=stds, fmt="o", capsize=4)
        for i, m in enumerate(METHODS):  # the seeds themselves: 3 runs are too few to hide behind a bar
            ax.plot([i] * len(bpb[(s, m)]), bpb[(s, m)], ".", color="k", ms=3)
        ax.set_xticks(range(len(METHODS)), METHODS, rotation=30, ha="right")
        n = sorted({len(bpb[(s, m)]) for m in METHODS})
        ax.set(
            title=f"{s}, each at its {s}-tuned LR ({'/'.join(map(str, n))} seed{'s' if n != [1] else ''})",
            ylabel="eval bits/byte",
        )
        ax.legend(fontsize=8)
    ctl = [(label, lr) for label, lr in CONTROL_ROWS if (("controls", lr), label) in bpb]
    ax = axes[-1]
    for i, (label, lr) in enumerate(ctl):
        ys = bpb[(("controls", lr), label)]
        ax.errorbar(
            [i],
            [statistics.mean(ys)],
            yerr=[statistics.stdev(ys) if len(ys) > 1 else 0.0],
            fmt="o",
            capsize=4,
            color="C1" if label.startswith("fp") else "C0",
        )
        ax.plot([i] * len(ys), ys, ".", color="k", ms=3)
    ax.set_xticks(range(len(ctl)), [f"{label} {lr}" for label, lr in ctl], rotation=30, ha="right")
    ax.set(title="mini: methods vs fp with their architecture", ylabel="eval bits/byte")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "eval_bpb.png"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(keys), figsize=(15, 4.4), sharey=True)
    for ax, s in zip(axes, keys):
        for m in METHODS:
            steps, ys = sweep.seed_curves(groups[(s, m)])
            ax.plot(
                steps,
                [statistics.mean(col) for col in zip(*ys)],
                lw=1.1,
                label=m,
                ls="-" if m in ("fp", "b158") else "--",
            )
        ax.set(
            title=f"{s}, each at its {s}-tuned LR: train loss, mean over seeds",
            xlabel="step",
            ylabel="train loss (nats/token)",
            ylim=(1.5, 3.5),
        )
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss_curves.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(*sys.argv[1:3])
