"""The table (results.md, results.csv) and plot (ptq_vs_qat.png) of run.sh: PTQ of 3 FP seeds vs QAT.

    python experiments/ptq_vs_qat_tiny/combine.py QUANT_CHOICE_WORKDIR PTQ_WORKDIR OUT_DIR

PTQ_WORKDIR/seed=S/<method><bits>/ptq.json are the PTQ results of the FP run of seed S; the QAT rows
are experiments/quant_choice's `tiny` points (each method at its CPU_LR, seeds 0–2).
"""

import csv
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "quant_choice"))
from combine import ms, point, results
from lr import ROOT, cpu_lr

SEEDS = ["0", "1", "2"]
PTQ = {"rtn": (2, 3, 4), "gptq": (2, 3, 4), "billm": (1,)}
QAT = {4: "rtn4", 3: "rtn3", 2: "rtn2", 1.58: "b158", 1: "fbi"}  # fbi: the best 1-bit QAT row of quant_choice


def main(qc_workdir, ptq_workdir, out):
    os.chdir(ROOT)
    rows, ptq, fp_by_seed = [], {}, {}
    for m, bits in PTQ.items():
        for b in bits:
            for s in SEEDS:
                path = os.path.join(ptq_workdir, f"seed={s}", f"{m}{b}", "ptq.json")
                if not os.path.exists(path):
                    raise SystemExit(f"{path} is missing: run run.sh first")
                with open(path) as fh:
                    r = json.load(fh)
                ptq.setdefault((m, b), []).append(r["eval_bpb"])
                fp_by_seed.setdefault(s, r["fp_eval_bpb"])  # the same FP eval in every ptq.json of seed s
                rows.append(
                    {
                        "kind": "ptq",
                        "method": m,
                        "bits": b,
                        "seed": s,
                        "eval_bpb": r["eval_bpb"],
                        "eval_loss": r["eval_loss"],
                        "fp_eval_bpb": r["fp_eval_bpb"],
                    }
                )
    qat = {}
    for b, m in QAT.items():
        for r in results(qc_workdir, point("tiny", m, cpu_lr(m)), SEEDS):
            qat.setdefault(b, []).append(r["eval_bpb"])
            rows.append(
                {
                    "kind": "qat",
                    "method": m,
                    "bits": b,
                    "seed": r["seed"],
                    "eval_bpb": r["eval_bpb"],
                    "eval_loss": r["eval_loss"],
                }
            )
    fp = [fp_by_seed[s] for s in SEEDS]  # each seed's FP run, as ptq.json evaluated it
    fp_train = [r["eval_bpb"] for r in results(qc_workdir, "tiny", "fp", cpu_lr("fp"), SEEDS)]
    lines = [
        f"FP source runs (3 seeds): eval bits/byte {ms(fp)} (the trainer's own final eval: {ms(fp_train)}).",
        "",
        "| weight bits | PTQ: RTN | PTQ: GPTQ | PTQ: BiLLM | QAT (method, its tuned LR) |",
        "|---|---|---|---|---|",
    ]
    cell = lambda k, b: ms(ptq[(k, b)]) if (k, b) in ptq else ""
    for b, m in QAT.items():
        lines.append(
            f"| {b} | {cell('rtn', b)} | {cell('gptq', b)} | {cell('billm', b)} | {m} ({cpu_lr(m)}): {ms(qat[b])} |"
        )
    lines += [
        "",
        "Increase over the FP source, mean ± std over the 3 seeds (PTQ: paired with its own FP run):",
        "",
        "| weight bits | RTN | GPTQ | BiLLM | QAT − mean FP |",
        "|---|---|---|---|---|",
    ]
    inc = lambda k, b: ms([q - f for q, f in zip(ptq[(k, b)], fp)]) if (k, b) in ptq else ""
    for b in QAT:
        lines.append(
            f"| {b} | {inc('rtn', b)} | {inc('gptq', b)} | {inc('billm', b)} | "
            f"{statistics.mean(qat[b]) - statistics.mean(fp):+.4f} |"
        )
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, ["kind", "method", "bits", "seed", "eval_bpb", "eval_loss", "fp_eval_bpb"])
        w.writeheader()
        w.writerows(rows)
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    f_mean, f_std = statistics.mean(fp), statistics.stdev(fp)
    ax.axhspan(f_mean - f_std, f_mean + f_std, color="grey", alpha=0.25, lw=0, label="FP (± std)")
    series = {
        "PTQ: RTN": {b: ptq[("rtn", b)] for b in PTQ["rtn"]},
        "PTQ: GPTQ": {b: ptq[("gptq", b)] for b in PTQ["gptq"]},
        "PTQ: BiLLM": {1: ptq[("billm", 1)]},
        "QAT": qat,
    }
    for (name, d), mk, dx in zip(series.items(), "osDv", (-0.06, -0.02, 0.02, 0.06)):
        bs = sorted(d)
        ax.errorbar(
            [b + dx for b in bs],
            [statistics.mean(d[b]) for b in bs],
            yerr=[statistics.stdev(d[b]) for b in bs],
            marker=mk,
            capsize=3,
            label=name,
            ls="-" if len(bs) > 1 and name != "QAT" else "none",
        )  # QAT rows are different methods
    for b, m in QAT.items():
        ax.annotate(m, (b + 0.06, statistics.mean(qat[b])), fontsize=7, xytext=(4, -3), textcoords="offset points")
    ax.set(
        xlabel="weight bits",
        ylabel="eval bits/byte (lower is better)",
        title="tiny: PTQ of a trained FP model vs QAT, mean ± std over 3 seeds",
    )
    ax.set_xticks([1, 1.58, 2, 3, 4], ["1", "1.58", "2", "3", "4"])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "ptq_vs_qat.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(*sys.argv[1:4])
