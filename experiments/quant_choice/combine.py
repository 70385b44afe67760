"""results.md and eval_bpb.png of the quantizer-choice study, from results.csv alone.

    python experiments/quant_choice/combine.py [OUT_DIR]      # default: this directory

results.csv: one row per run (size, quant, lr, seed); `quant` is a method or an fp control with one of a
method's architecture changes (fp+out_norm, fp+relu2). `source` says where a row comes from: `run` (the
run's metrics.jsonl, via the old combine.py) or the committed results.md the LR-tuning rows were recovered
from after their workdirs were gone (eval bits/byte at 4 decimals, no losses).

The LR of each method at each size was chosen on seed 0, and seed 0 is one of the three reported seeds:
the tables therefore also give the mean over seeds 1–2 alone (not used to choose) and seed 0 minus it.
"""

import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from bitjax import stats, sweep

METHODS = ["fp", "b158", "bitnet", "a48", "fbi", "onebit", "pb_llm", "rtn2", "rtn3", "rtn4"]
SIZES = ["tiny", "mini"]
LRS = ["3e-4", "1e-3", "3e-3", "1e-2"]
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
    "fp+out_norm": "fp + OneBit's affine-free LayerNorm on every projection's output",
    "fp+relu2": "fp + a4.8's ReLU² GLU",
}
# pairs of methods (each at its chosen LR) the README's reading compares, besides each method vs fp
READING = {
    "tiny": [
        ("rtn3", "rtn4"),
        ("rtn2", "rtn3"),
        ("rtn2", "rtn4"),
        ("rtn2", "b158"),
        ("rtn3", "b158"),
        ("a48", "b158"),
        ("fbi", "b158"),
        ("pb_llm", "b158"),
        ("onebit", "b158"),
        ("onebit", "rtn2"),
        ("bitnet", "onebit"),
    ],
    "mini": [("rtn3", "rtn4"), ("rtn2", "rtn3"), ("a48", "b158"), ("bitnet", "rtn2")],
}
# (method, its lr, control, the control's lr): the comparisons the reading makes at `mini`
CONTROLS = [
    ("fp+out_norm", "1e-3", "fp", "1e-3"),
    ("onebit", "1e-3", "fp+out_norm", "1e-3"),
    ("fp+relu2", "1e-3", "fp", "1e-3"),
    ("a48", "3e-3", "fp+relu2", "1e-3"),
    ("a48", "1e-3", "fp+relu2", "1e-3"),
    ("fp+relu2", "3e-3", "fp", "3e-3"),
]


def main(out=HERE):
    rows = sweep.read_csv(os.path.join(HERE, "results.csv"))
    runs = sweep.group_rows(rows, ["size", "quant", "lr"])
    seed0 = {k: next((r["eval_bpb"] for r in rs if r["seed"] == "0"), None) for k, rs in runs.items()}
    # the reported LR: the one that ran every seed (for a method, the argmin of its seed-0 tuning row)
    chosen = {
        (s, m): max(
            (lr for lr in LRS if (s, m, lr) in runs), key=lambda lr: (len(runs[(s, m, lr)]), -seed0[(s, m, lr)])
        )
        for s in SIZES
        for m in METHODS
    }
    bpb = lambda k: [r["eval_bpb"] for r in runs[k]]
    seeds = lambda k: [r["seed"] for r in runs[k]]
    lines = []
    for s in SIZES:
        lines += [f"## LR tuning at `{s}` (seed 0): eval bits/byte", ""]
        lines += [
            "| method | " + " | ".join(f"lr {lr}" for lr in LRS) + " | chosen (lowest) |",
            "|---|" + "---|" * (len(LRS) + 1),
        ]
        for m in METHODS:
            cells = ["" if seed0.get((s, m, lr)) is None else f"{seed0[(s, m, lr)]:.4f}" for lr in LRS]
            best = min((lr for lr in LRS if seed0.get((s, m, lr)) is not None), key=lambda lr: seed0[(s, m, lr)])
            assert best == chosen[(s, m)], (s, m, best, chosen[(s, m)])  # the seeds ran at the seed-0 winner
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {best} |")
        lines.append("")
    for s in SIZES:
        fpk = (s, "fp", chosen[(s, "fp")])
        lines += [
            f"## `{s}`: each method at its LR chosen at `{s}`: eval bits/byte",
            "",
            (
                "mean ± sample std over n seeds; − fp: Welch t over the independently trained seeds, per-seed signs "
                "(seeds 0, 1, 2); seeds 1–2: the mean without seed 0, which chose the LR; bias: seed 0 − that mean."
            ),
            "",
            "| method | what | lr | n | eval bits/byte | − fp | seeds 1–2 | seed 0 − seeds 1–2 | − fp, seeds 1–2 only |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m in METHODS:
            k = (s, m, chosen[(s, m)])
            t = "" if m == "fp" else stats.welch(bpb(k), bpb(fpk), seeds(k), seeds(fpk)).text()
            later = [r["eval_bpb"] for r in runs[k] if r["seed"] != "0"]
            fp_later = [r["eval_bpb"] for r in runs[fpk] if r["seed"] != "0"]
            t12 = "" if m == "fp" else stats.welch(later, fp_later).text()
            lines.append(
                f"| {m} | {WHAT[m]} | {k[2]} | {len(runs[k])} | {stats.mean_std(bpb(k))} | {t} | "
                f"{stats.mean_std(later)} | {seed0[k] - statistics.mean(later):+.4f} | {t12} |"
            )
        order = stats.ordering({m: bpb((s, m, chosen[(s, m)])) for m in METHODS})
        bias = [
            seed0[k] - statistics.mean(r["eval_bpb"] for r in runs[k] if r["seed"] != "0")
            for k in ((s, m, chosen[(s, m)]) for m in METHODS)
        ]
        lines += ["", f"Other comparisons the reading makes at `{s}` (Welch t, per-seed signs):", ""]
        for a, b in READING[s]:
            ka, kb = (s, a, chosen[(s, a)]), (s, b, chosen[(s, b)])
            lines.append(f"- {a} − {b}: {stats.welch(bpb(ka), bpb(kb), seeds(ka), seeds(kb)).text()}")
        lines += [
            "",
            f"Ordering at `{s}` (groups that differ, bitjax.stats.groups: Welch |t| ≥ 2 and p < 0.05): {order}",
            "",
            (
                f"Seed 0 − seeds 1–2 over the {len(METHODS)} methods: {stats.mean_std(bias)} (mean ± std): the "
                "reported means (seeds 0–2) include this third of it."
            ),
            "",
        ]
    lines += [
        "## Architecture-matched FP controls at `mini`: eval bits/byte",
        "",
        "| run | what | lr | n | eval bits/byte |",
        "|---|---|---|---|---|",
    ]
    shown = list(dict.fromkeys([(a, la) for a, la, _, _ in CONTROLS] + [(b, lb) for _, _, b, lb in CONTROLS]))
    for m, lr in sorted(shown, key=lambda x: (x[1], x[0] != "fp", x[0])):
        k = ("mini", m, lr)
        lines.append(f"| {m} | {WHAT[m]} | {lr} | {len(runs[k])} | {stats.mean_std(bpb(k))} |")
    lines += ["", "Comparisons (Welch t, per-seed signs):", ""]
    for a, la, b, lb in CONTROLS:
        ka, kb = ("mini", a, la), ("mini", b, lb)
        lines.append(f"- {a} ({la}) − {b} ({lb}): {stats.welch(bpb(ka), bpb(kb), seeds(ka), seeds(kb)).text()}")
    lines += [
        "",
        "## Final train loss and eval loss (nats/token), mean ± std over the same seeds",
        "",
        "| method | " + " | ".join(f"{s} train | {s} eval" for s in SIZES) + " |",
        "|---|" + "---|---|" * len(SIZES),
    ]
    for m in METHODS:
        cells = []
        for s in SIZES:
            rs = runs[(s, m, chosen[(s, m)])]
            cells += [stats.mean_std([r["train_loss"] for r in rs]), stats.mean_std([r["eval_loss"] for r in rs])]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    sweep.write_markdown(out, lines)

    plt = sweep.pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(SIZES) + 1, figsize=(17, 4.8))
    names = METHODS + ["fp+out_norm", "fp+relu2"]
    for ax, s in zip(axes, SIZES):
        ks = [(s, m, chosen[(s, m)]) for m in METHODS]
        sweep.points_panel(ax, METHODS, [bpb(k) for k in ks], [sweep.color(m, names) for m in METHODS], fp=bpb(ks[0]))
        ax.set(xlabel="method (each at its LR chosen at this size)", ylabel="eval bits/byte (lower is better)")
        ax.set_title(f"{s}: mean ± std, dots = seeds (n=3)", fontsize=10)
        ax.legend(fontsize=8)
    ax = axes[-1]
    ctl = [("fp", "1e-3"), ("fp+out_norm", "1e-3"), ("onebit", "1e-3"), ("fp+relu2", "1e-3"), ("a48", "3e-3")]
    sweep.points_panel(
        ax,
        [f"{m} (lr {lr}, n={len(runs[('mini', m, lr)])})" for m, lr in ctl],
        [bpb(("mini", m, lr)) for m, lr in ctl],
        [sweep.color(m, names) for m, _ in ctl],
        fp=bpb(("mini", "fp", "1e-3")),
    )
    ax.set(xlabel="run", ylabel="eval bits/byte (lower is better)")
    ax.set_title("mini: OneBit and a4.8 vs fp with their architecture", fontsize=10)
    ax.legend(fontsize=8)
    sweep.save_fig(fig, os.path.join(out, "eval_bpb.png"))


if __name__ == "__main__":
    main(*sys.argv[1:2])
